//! The audit chain end to end: every single-byte change, deletion, adjacent swap, truncation and re-signing
//! with another key is caught and the right entry named; the `--since` window; restarts, concurrent writers,
//! torn tails, redaction; and verification of one entry with the `openssl` command line.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::Utc;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::{Signer, SigningKey};
use serde_json::json;
use xorb_audit::{
    AuditError, AuditLog, Checkpoint, EntryRef, GENESIS_PREV, KEY_FILE, NewEntry, PUBLIC_KEY_FILE,
    VerifyError, VerifyOptions, VerifyingKey, load_public_key, public_key_fingerprint,
    read_entries, sha256_hex, verify, verify_with,
};
use xorb_model::redact::Redactor;

const N: usize = 6;

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    log: PathBuf,
    key: VerifyingKey,
    refs: Vec<EntryRef>,
}

fn entry(i: usize) -> NewEntry {
    let e = NewEntry::new(
        if i.is_multiple_of(2) {
            "alice"
        } else {
            "xorbctl"
        },
        format!("step.{i}"),
    )
    .detail(json!({
        "i": i,
        "text": "quotes \" backslash \\ newline \n tab \t unicode é 日本 😀",
        "nested": {"list": [1, 2.5, null, true], "empty": {}},
    }));
    if i.is_multiple_of(3) {
        e
    } else {
        e.run(format!("run-{}", i / 3))
    }
}

fn fixture(n: usize) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let mut log = AuditLog::open(&dir).unwrap();
    let refs = (0..n).map(|i| log.append(entry(i)).unwrap()).collect();
    Fixture {
        log: log.log_path().to_path_buf(),
        key: load_public_key(&log.public_key_path()).unwrap(),
        dir,
        _tmp: tmp,
        refs,
    }
}

/// The lines of a file, each with its newline (if it has one).
fn lines(path: &Path) -> Vec<Vec<u8>> {
    fs::read(path)
        .unwrap()
        .split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

fn write_lines(path: &Path, lines: &[Vec<u8>]) {
    fs::write(path, lines.concat()).unwrap();
}

fn err(f: &Fixture) -> VerifyError {
    verify(&f.log, &f.key, None).expect_err("verification must fail")
}

/// Re-signs a line (given with its newline) with `key`, after editing its signed prefix and setting `prev`.
fn resign(line: &[u8], key: &SigningKey, prev: &str, edit: impl Fn(String) -> String) -> Vec<u8> {
    let s = std::str::from_utf8(line).unwrap().trim_end_matches('\n');
    let idx = s.rfind(",\"sig\":\"").unwrap();
    let mut prefix = edit(s[..idx].to_string());
    let n = prefix.len();
    assert_eq!(
        &prefix[n - 74..n - 65],
        ",\"prev\":\"",
        "prev is the last signed field"
    );
    prefix.replace_range(n - 65..n - 1, prev);
    let sig = key.sign(prefix.as_bytes());
    format!(
        "{prefix},\"sig\":\"{}\"}}\n",
        STANDARD.encode(sig.to_bytes())
    )
    .into_bytes()
}

/// Re-signs lines `from..` with `key`, fixing every `prev` so the hash links hold.
fn rechain(
    lines: &mut [Vec<u8>],
    from: usize,
    key: &SigningKey,
    edit_first: impl Fn(String) -> String,
) {
    for i in from..lines.len() {
        let prev = if i == 0 {
            GENESIS_PREV.to_string()
        } else {
            sha256_hex(&lines[i - 1])
        };
        lines[i] = if i == from {
            resign(&lines[i], key, &prev, &edit_first)
        } else {
            resign(&lines[i], key, &prev, |s| s)
        };
    }
}

fn own_private_key(dir: &Path) -> SigningKey {
    SigningKey::from_pkcs8_pem(&fs::read_to_string(dir.join(KEY_FILE)).unwrap()).unwrap()
}

#[test]
fn clean_log_verifies() {
    let f = fixture(N);
    let report = verify(&f.log, &f.key, None).unwrap();
    assert_eq!(report.entries, N as u64);
    assert_eq!(report.signatures_checked, N as u64);
    assert_eq!(report.head.as_ref(), f.refs.last());
    assert_eq!(report.anchor, None);
    assert_eq!(
        f.refs.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..=N as u64).collect::<Vec<_>>()
    );
    let text = report.to_string();
    assert!(text.starts_with("audit log OK: 6 entries"), "{text}");
    // Entries read back as written.
    let entries = read_entries(&f.log).unwrap();
    assert_eq!(entries[1].detail, entry(1).detail);
    assert_eq!(entries[1].run_id.as_deref(), Some("run-0"));
    assert_eq!(entries[0].run_id, None);
    assert_eq!(entries[0].prev, GENESIS_PREV);
    // A checkpoint of any entry is found intact.
    for r in &f.refs {
        let opts = VerifyOptions {
            since: None,
            checkpoint: Some(r.checkpoint()),
        };
        assert!(verify_with(&f.log, &f.key, &opts).is_ok());
    }
}

#[test]
fn empty_log_verifies_and_missing_log_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let log = AuditLog::open(tmp.path()).unwrap();
    fs::write(log.log_path(), b"").unwrap();
    let r = verify(log.log_path(), &log.public_key(), None).unwrap();
    assert_eq!(r.entries, 0);
    assert!(r.to_string().contains("empty"));
    let missing = verify(&tmp.path().join("nope.jsonl"), &log.public_key(), None).unwrap_err();
    assert!(matches!(missing, VerifyError::Io { .. }), "{missing}");
}

/// Every byte of every entry, changed two ways (low bit flipped; replaced by another printable character), must
/// make verification fail at that entry. Signature checks are slow in an unoptimized build, so this uses three
/// short entries (still every field of the format) and the second change on every third byte.
#[test]
fn changing_any_single_byte_of_any_entry_is_caught_at_that_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let mut log = AuditLog::open(tmp.path()).unwrap();
    for i in 0..3 {
        let e = NewEntry::new("al", format!("a{i}")).detail(json!({"k": "é\"\n", "n": i}));
        log.append(if i == 1 { e.run("r1") } else { e }).unwrap();
    }
    let (path, key) = (log.log_path().to_path_buf(), log.public_key());
    let original = lines(&path);
    let mut tried = 0;
    for (k, line) in original.iter().enumerate() {
        for pos in 0..line.len() {
            let mut changes = vec![line[pos] ^ 0x01];
            if pos % 3 == 0 {
                changes.push(if line[pos] == b'A' { b'B' } else { b'A' });
            }
            for replacement in changes {
                let mut changed = original.clone();
                changed[k][pos] = replacement;
                write_lines(&path, &changed);
                let e =
                    verify(&path, &key, None).expect_err("a changed byte must fail verification");
                assert_eq!(
                    e.line(),
                    Some(k + 1),
                    "byte {pos} of line {} changed to {replacement:#x}: {e}",
                    k + 1
                );
                tried += 1;
            }
        }
    }
    assert!(tried > 700, "{tried}");
    write_lines(&path, &original);
    verify(&path, &key, None).unwrap();
}

#[test]
fn a_changed_entry_is_reported_in_words() {
    let f = fixture(N);
    let mut l = lines(&f.log);
    let s = String::from_utf8(l[2].clone())
        .unwrap()
        .replace("\"alice\"", "\"mallory\"");
    l[2] = s.into_bytes();
    write_lines(&f.log, &l);
    let e = err(&f);
    assert_eq!(e, VerifyError::Changed { line: 3, seq: 3 });
    let msg = e.to_string();
    assert!(
        msg.contains("line 3") && msg.contains("seq 3") && msg.contains("changed"),
        "{msg}"
    );
}

#[test]
fn deleting_any_single_entry_is_caught_at_its_place() {
    let f = fixture(N);
    let original = lines(&f.log);
    for k in 0..N - 1 {
        let mut l = original.clone();
        l.remove(k);
        write_lines(&f.log, &l);
        let e = err(&f);
        assert_eq!(
            e,
            VerifyError::Removed {
                line: k + 1,
                first_missing: k as u64 + 1,
                last_missing: k as u64 + 1,
                found_seq: k as u64 + 2
            },
            "deleting line {}: {e}",
            k + 1
        );
        assert_eq!(e.seq(), Some(k as u64 + 1));
        assert!(
            e.to_string().contains(&format!("entry seq {} is", k + 1)),
            "{e}"
        );
    }
    // Deleting the last entry leaves a valid shorter chain: only an external checkpoint can tell.
    let mut l = original.clone();
    l.pop();
    write_lines(&f.log, &l);
    let report = verify(&f.log, &f.key, None).unwrap();
    assert_eq!(report.head.unwrap().seq, N as u64 - 1);
    let opts = VerifyOptions {
        since: None,
        checkpoint: Some(f.refs[N - 1].checkpoint()),
    };
    let e = verify_with(&f.log, &f.key, &opts).unwrap_err();
    assert_eq!(
        e,
        VerifyError::Truncated {
            last_line: N - 1,
            last_seq: N as u64 - 1,
            expected_seq: N as u64
        }
    );
    assert_eq!(e.line(), Some(N));
    assert!(e.to_string().contains("cut off the end"), "{e}");
    // Several entries removed in the middle.
    let mut l = original.clone();
    l.drain(1..4);
    write_lines(&f.log, &l);
    assert_eq!(
        err(&f),
        VerifyError::Removed {
            line: 2,
            first_missing: 2,
            last_missing: 4,
            found_seq: 5
        }
    );
}

#[test]
fn swapping_any_two_adjacent_entries_is_caught_at_the_first() {
    let f = fixture(N);
    let original = lines(&f.log);
    for k in 0..N - 1 {
        let mut l = original.clone();
        l.swap(k, k + 1);
        write_lines(&f.log, &l);
        let e = err(&f);
        assert_eq!(
            e,
            VerifyError::Reordered {
                line: k + 1,
                seq: k as u64 + 2,
                expected_seq: k as u64 + 1,
                expected_at_line: Some(k + 2)
            },
            "swapping lines {} and {}: {e}",
            k + 1,
            k + 2
        );
        assert!(e.to_string().contains("REORDERED"), "{e}");
    }
}

#[test]
fn inserted_entries_are_caught() {
    let f = fixture(N);
    let original = lines(&f.log);
    // A copy of an earlier entry (replay).
    let mut l = original.clone();
    l.insert(4, original[1].clone());
    write_lines(&f.log, &l);
    assert_eq!(
        err(&f),
        VerifyError::Duplicate {
            line: 5,
            seq: 2,
            first_line: 2
        }
    );
    // A forged entry with the right number and link, signed by someone else's key.
    let forger = SigningKey::from_bytes(&[42u8; 32]);
    let mut l = original.clone();
    let forged = resign(&original[3], &forger, &sha256_hex(&original[3]), |s| {
        s.replace("\"seq\":4,", "\"seq\":5,")
    });
    l.insert(4, forged);
    write_lines(&f.log, &l);
    assert_eq!(err(&f), VerifyError::Changed { line: 5, seq: 5 });
}

#[test]
fn truncating_the_last_entry_is_caught() {
    let f = fixture(N);
    let data = fs::read(&f.log).unwrap();
    let last_len = lines(&f.log).last().unwrap().len();
    for cut in [1, 2, 3, last_len / 2, last_len - 1] {
        fs::write(&f.log, &data[..data.len() - cut]).unwrap();
        let e = err(&f);
        assert_eq!(
            e,
            VerifyError::Incomplete {
                line: N,
                after_seq: Some(N as u64 - 1)
            },
            "cut {cut} bytes: {e}"
        );
        assert!(e.to_string().contains("TRUNCATED at line 6"), "{e}");
    }
}

#[test]
fn re_signing_with_a_different_key_is_caught() {
    let f = fixture(N);
    let original = lines(&f.log);
    let other = SigningKey::from_bytes(&[9u8; 32]);
    // The whole log re-signed by another key, links intact.
    let mut l = original.clone();
    rechain(&mut l, 0, &other, |s| s);
    write_lines(&f.log, &l);
    assert_eq!(err(&f), VerifyError::Changed { line: 1, seq: 1 });
    // One entry edited, it and everything after re-signed with another key and re-linked.
    for k in 0..N {
        let mut l = original.clone();
        rechain(&mut l, k, &other, |s| s.replace("step.", "STEP."));
        write_lines(&f.log, &l);
        assert_eq!(
            err(&f),
            VerifyError::Changed {
                line: k + 1,
                seq: k as u64 + 1
            }
        );
    }
}

#[test]
fn rewriting_with_the_signing_key_is_caught_by_a_checkpoint() {
    // Whoever holds the private key can rewrite history; a checkpoint kept outside the log detects it.
    let f = fixture(N);
    let own = own_private_key(&f.dir);
    let mut l = lines(&f.log);
    rechain(&mut l, 2, &own, |s| s.replace("step.2", "step.X"));
    write_lines(&f.log, &l);
    verify(&f.log, &f.key, None).unwrap();
    let opts = VerifyOptions {
        since: None,
        checkpoint: Some(f.refs[4].checkpoint()),
    };
    let e = verify_with(&f.log, &f.key, &opts).unwrap_err();
    assert!(
        matches!(
            e,
            VerifyError::CheckpointMismatch {
                line: 5,
                seq: 5,
                ..
            }
        ),
        "{e}"
    );
    // A checkpoint before the rewrite is still intact.
    let ok = VerifyOptions {
        since: None,
        checkpoint: Some(f.refs[1].checkpoint()),
    };
    verify_with(&f.log, &f.key, &ok).unwrap();
    let bogus = VerifyOptions {
        since: None,
        checkpoint: Some(Checkpoint {
            seq: 0,
            hash: String::new(),
        }),
    };
    assert!(verify_with(&f.log, &f.key, &bogus).is_err());
}

/// Six entries: three, a pause, the window start, three more.
fn windowed() -> (Fixture, chrono::DateTime<Utc>) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let mut log = AuditLog::open(&dir).unwrap();
    let mut refs: Vec<EntryRef> = (0..3).map(|i| log.append(entry(i)).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(5));
    let since = Utc::now();
    std::thread::sleep(Duration::from_millis(5));
    refs.extend((3..6).map(|i| log.append(entry(i)).unwrap()));
    let f = Fixture {
        log: log.log_path().to_path_buf(),
        key: log.public_key(),
        dir,
        _tmp: tmp,
        refs,
    };
    (f, since)
}

#[test]
fn since_window_is_anchored_on_the_entry_before_it() {
    let (f, since) = windowed();
    let original = lines(&f.log);
    let r = verify(&f.log, &f.key, Some(since)).unwrap();
    assert_eq!(r.in_window, 3);
    assert_eq!(r.signatures_checked, 4);
    assert_eq!(r.anchor.as_ref().map(|a| a.seq), Some(3));
    assert!(
        r.to_string().contains("signatures checked from seq 3"),
        "{r}"
    );

    let check = |l: &[Vec<u8>], want_line: usize, what: &str| {
        write_lines(&f.log, l);
        let e = verify(&f.log, &f.key, Some(since)).expect_err(what);
        assert_eq!(e.line(), Some(want_line), "{what}: {e}");
    };
    // Changed inside the window.
    let mut l = original.clone();
    l[4] = String::from_utf8(l[4].clone())
        .unwrap()
        .replace("step.4", "step.0")
        .into_bytes();
    check(&l, 5, "entry changed in the window");
    // The window's first entry removed: the next one no longer links to the anchor.
    let mut l = original.clone();
    l.remove(3);
    check(&l, 4, "first entry of the window removed");
    // The window's first entry moved out of the window by rewriting its time.
    let mut l = original.clone();
    let ts_at = |s: &str| s.find("\"ts\":\"").unwrap() + 6;
    let first = String::from_utf8(l[0].clone()).unwrap();
    let old_ts = first[ts_at(&first)..ts_at(&first) + 27].to_string();
    let s = String::from_utf8(l[3].clone()).unwrap();
    let at = ts_at(&s);
    l[3] = format!("{}{}{}", &s[..at], old_ts, &s[at + 27..]).into_bytes();
    check(&l, 4, "first entry of the window back-dated");
    // Changed before the window: the links break, and the full re-check names the entry itself.
    let mut l = original.clone();
    l[1] = String::from_utf8(l[1].clone())
        .unwrap()
        .replace("step.1", "step.9")
        .into_bytes();
    check(&l, 2, "entry changed before the window");
    // Changed before the window with every later `prev` rewritten (no key): the anchor's signature breaks, and
    // the full re-check names the first changed entry.
    let mut l = original.clone();
    l[1] = String::from_utf8(l[1].clone())
        .unwrap()
        .replace("step.1", "step.9")
        .into_bytes();
    for i in 2..l.len() {
        let prev = sha256_hex(&l[i - 1]);
        let s = String::from_utf8(l[i].clone()).unwrap();
        let at = s.find(",\"prev\":\"").unwrap() + 9;
        l[i] = format!("{}{}{}", &s[..at], prev, &s[at + 64..]).into_bytes();
    }
    check(&l, 2, "entry changed before the window, links forged");
    // Swapped across the window boundary.
    let mut l = original.clone();
    l.swap(2, 3);
    check(&l, 3, "swap across the boundary");

    // A window after the last entry still checks the last entry's signature.
    write_lines(&f.log, &original);
    let r = verify(
        &f.log,
        &f.key,
        Some(Utc::now() + chrono::Duration::hours(1)),
    )
    .unwrap();
    assert_eq!((r.in_window, r.signatures_checked), (0, 1));
    assert_eq!(r.anchor.map(|a| a.seq), Some(6));
    // A window before the first entry is a full verification.
    let r = verify(
        &f.log,
        &f.key,
        Some(Utc::now() - chrono::Duration::hours(1)),
    )
    .unwrap();
    assert_eq!((r.in_window, r.signatures_checked, r.anchor), (6, 6, None));
    assert_eq!(f.refs.len(), 6);
}

#[test]
fn restart_continues_the_chain() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let mut log = AuditLog::open(tmp.path()).unwrap();
        log.append(entry(0)).unwrap();
        log.append(entry(1)).unwrap();
    }
    let mut log = AuditLog::open(tmp.path()).unwrap();
    assert_eq!(log.head().unwrap().unwrap().seq, 2);
    let r = log.append(entry(2)).unwrap();
    assert_eq!(r.seq, 3);
    let report = verify(log.log_path(), &log.public_key(), None).unwrap();
    assert_eq!(report.head, Some(r));
}

#[test]
fn concurrent_writers_keep_one_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    AuditLog::open(&dir).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let dir = dir.clone();
            std::thread::spawn(move || {
                // Each writer opens its own descriptor, as separate processes would.
                let mut log = AuditLog::open(&dir).unwrap();
                for i in 0..15 {
                    log.append(NewEntry::new(format!("writer-{t}"), "x").detail(json!({ "i": i })))
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let key = load_public_key(&dir.join(PUBLIC_KEY_FILE)).unwrap();
    let report = verify(&dir.join("audit.jsonl"), &key, None).unwrap();
    assert_eq!(report.entries, 60);
}

#[test]
fn lock_held_by_another_writer_times_out_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let mut log = AuditLog::open(tmp.path())
        .unwrap()
        .with_lock_timeout(Duration::from_millis(50));
    log.append(entry(0)).unwrap();
    let holder = fs::OpenOptions::new()
        .append(true)
        .open(log.log_path())
        .unwrap();
    holder.lock().unwrap();
    let e = log.append(entry(1)).unwrap_err();
    assert!(matches!(e, AuditError::LockTimeout { .. }), "{e}");
    assert!(e.to_string().contains("another xorbctl"), "{e}");
    drop(holder);
    assert_eq!(log.append(entry(1)).unwrap().seq, 2);
}

#[test]
fn key_files_modes_and_formats() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let log = AuditLog::open(&dir).unwrap();
    let key_path = dir.join(KEY_FILE);
    let meta = fs::metadata(&key_path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(
        fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert!(
        fs::read_to_string(&key_path)
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----\n")
    );
    let pub_pem = fs::read_to_string(dir.join(PUBLIC_KEY_FILE)).unwrap();
    assert!(pub_pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
    assert_eq!(pub_pem, log.public_key_pem());
    // Reopening keeps the same key.
    let again = AuditLog::open(&dir).unwrap();
    assert_eq!(again.public_key(), log.public_key());
    assert!(!format!("{again:?}").contains("PRIVATE"));

    // A key other users can read is refused.
    fs::set_permissions(&key_path, fs::Permissions::from_mode(0o640)).unwrap();
    let e = AuditLog::open(&dir).unwrap_err();
    assert!(
        matches!(e, AuditError::KeyPermissions { mode: 0o640, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("chmod 600"), "{e}");
    fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600)).unwrap();

    // A log with entries whose key disappeared is not silently given a new key.
    let mut w = AuditLog::open(&dir).unwrap();
    w.append(entry(0)).unwrap();
    let saved = fs::read(&key_path).unwrap();
    fs::remove_file(&key_path).unwrap();
    let e = AuditLog::open(&dir).unwrap_err();
    assert!(matches!(e, AuditError::KeyMissing { .. }), "{e}");
    assert!(!key_path.exists());

    // A key replaced under an existing log: refused before anything is appended.
    let other = tempfile::tempdir().unwrap();
    AuditLog::open(other.path()).unwrap();
    fs::copy(other.path().join(KEY_FILE), &key_path).unwrap();
    let e = AuditLog::open(&dir).unwrap_err();
    assert!(matches!(e, AuditError::TailInvalid { .. }), "{e}");
    assert!(e.to_string().contains("key was replaced"), "{e}");
    fs::write(&key_path, saved).unwrap();
    AuditLog::open(&dir).unwrap();
}

#[test]
fn a_torn_tail_is_set_aside_and_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let mut log = AuditLog::open(tmp.path()).unwrap();
    for i in 0..3 {
        log.append(entry(i)).unwrap();
    }
    let torn = b"{\"v\":1,\"seq\":4,\"ts\":\"2025-";
    let mut data = fs::read(log.log_path()).unwrap();
    data.extend_from_slice(torn);
    fs::write(log.log_path(), &data).unwrap();
    assert_eq!(
        verify(log.log_path(), &log.public_key(), None).unwrap_err(),
        VerifyError::Incomplete {
            line: 4,
            after_seq: Some(3)
        }
    );
    let mut log = AuditLog::open(tmp.path()).unwrap();
    assert_eq!(log.head().unwrap().unwrap().seq, 3);
    let r = log.append(entry(3)).unwrap();
    assert_eq!(r.seq, 5);
    verify(log.log_path(), &log.public_key(), None).unwrap();
    let entries = read_entries(log.log_path()).unwrap();
    assert_eq!(entries[3].action, "audit.torn_tail_discarded");
    assert_eq!(entries[3].detail["bytes"], torn.len());
    assert_eq!(entries[3].detail["sha256"], sha256_hex(torn));
    let side = tmp
        .path()
        .join(entries[3].detail["saved_to"].as_str().unwrap());
    assert_eq!(fs::read(side).unwrap(), torn);
}

#[test]
fn secrets_are_redacted_before_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let redactor = Redactor::with_secrets(["hunter2-db-password", "postgres://app:pg-S3cret@db/x"]);
    let mut log = AuditLog::open(tmp.path())
        .unwrap()
        .with_redactor(redactor.clone());
    log.append(
        NewEntry::new("alice", "config.loaded")
            .run("run-1")
            .detail(json!({"db": "postgres://app:pg-S3cret@db/x", "note": "pw hunter2-db-password", "other": "redis://u:unregistered@r/0"})),
    )
    .unwrap();
    let text = fs::read_to_string(log.log_path()).unwrap();
    assert!(!redactor.contains_secret(&text), "{text}");
    assert!(!text.contains("unregistered"), "{text}");
    assert!(text.contains("\"db\":\"[REDACTED]\""), "{text}");
    assert!(text.contains("redis://u:[REDACTED]@r/0"), "{text}");
    verify(log.log_path(), &log.public_key(), None).unwrap();
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        || Command::new(tool)
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
}

/// A shell block of docs/design/audit-chain.md, found by the marker on its first line, so that the procedure
/// tested here is the one documented.
fn doc_block(marker: &str) -> String {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/design/audit-chain.md");
    let text = fs::read_to_string(&doc).unwrap();
    let start = text
        .find(&format!("```sh\n# [audit-chain:{marker}]"))
        .unwrap_or_else(|| panic!("block {marker} not found in {}", doc.display()));
    let body = &text[start + "```sh\n".len()..];
    body[..body.find("\n```").unwrap()].to_string()
}

fn bash(script: &str, dir: &Path) -> (bool, String) {
    let out = Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn openssl_cli_verifies_an_entry_as_documented() {
    for tool in ["openssl", "jq", "sha256sum", "base64", "sed"] {
        if !have(tool) {
            eprintln!("SKIPPED: `{tool}` is not installed");
            return;
        }
    }
    let f = fixture(3);
    let one = doc_block("verify-entry");
    assert!(one.contains("\nN=2\n"), "{one}");
    let run = |n: usize| bash(&one.replace("\nN=2\n", &format!("\nN={n}\n")), &f.dir);
    for n in 1..=3 {
        let (ok, out) = run(n);
        assert!(ok, "entry {n}: {out}");
        assert!(out.contains("Signature Verified Successfully"), "{out}");
        assert!(out.contains("link OK") && out.contains("seq OK"), "{out}");
    }
    let all = doc_block("verify-all");
    let (ok, out) = bash(&all, &f.dir);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "OK: 3 entries; head seq 3 hash {}",
            f.refs[2].hash
        )),
        "{out}"
    );
    // openssl reads the private key too (PKCS#8), and derives the same public key.
    let derived = Command::new("openssl")
        .args(["pkey", "-in", KEY_FILE, "-pubout"])
        .current_dir(&f.dir)
        .output()
        .unwrap();
    assert!(derived.status.success());
    assert_eq!(
        String::from_utf8(derived.stdout).unwrap(),
        fs::read_to_string(f.dir.join(PUBLIC_KEY_FILE)).unwrap()
    );
    // The fingerprint is the one openssl computes.
    let (ok, out) = bash(
        "openssl pkey -pubin -in audit-signing-key.pub.pem -outform DER | sha256sum",
        &f.dir,
    );
    assert!(ok, "{out}");
    assert_eq!(
        out.split_whitespace().next(),
        Some(public_key_fingerprint(&f.key).as_str())
    );
    // A changed entry fails the same openssl check.
    let mut l = lines(&f.log);
    l[1] = String::from_utf8(l[1].clone())
        .unwrap()
        .replace("step.1", "step.7")
        .into_bytes();
    write_lines(&f.log, &l);
    let (ok, out) = run(2);
    assert!(!ok);
    assert!(out.contains("Signature Verification Failure"), "{out}");
    let (ok, out) = bash(&all, &f.dir);
    assert!(!ok);
    assert!(out.contains("line 2: BAD SIGNATURE"), "{out}");
    // ... and so does a removed entry.
    l.remove(1);
    write_lines(&f.log, &l);
    let (ok, out) = bash(&all, &f.dir);
    assert!(!ok);
    assert!(out.contains("line 2: seq is not 2"), "{out}");
}
