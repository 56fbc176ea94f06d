//! Appending: one signed line per action, fsynced, under an exclusive lock, continuing the chain from the last
//! line on disk (so a restarted process, or another process, continues it correctly).

use std::fs::{self, DirBuilder, File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use xorb_model::redact::Redactor;

use crate::AuditError;
use crate::format::{GENESIS_PREV, LineFields, build_line, line_hash, parse_line, sha256_hex};
use crate::key;

/// The log file inside the directory given to [`AuditLog::open`].
pub const LOG_FILE: &str = "audit.jsonl";
/// The private signing key (PKCS#8 PEM, mode 0600).
pub const KEY_FILE: &str = "audit-signing-key.pem";
/// The exported public key (SPKI PEM): give this to whoever verifies.
pub const PUBLIC_KEY_FILE: &str = "audit-signing-key.pub.pem";

const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(30);

/// What to record; `seq`, `ts`, `prev` and `sig` are added by [`AuditLog::append`].
#[derive(Debug, Clone, PartialEq)]
pub struct NewEntry {
    pub run_id: Option<String>,
    /// Who acted: an operator's name, or `xorbctl` for the tool itself.
    pub actor: String,
    /// What happened, dotted: `rollback.start`, `approval.granted`, `step.done`, …
    pub action: String,
    /// Anything else, as JSON (`null` when there is nothing).
    pub detail: Value,
}

impl NewEntry {
    pub fn new(actor: impl Into<String>, action: impl Into<String>) -> Self {
        NewEntry {
            run_id: None,
            actor: actor.into(),
            action: action.into(),
            detail: Value::Null,
        }
    }

    pub fn run(mut self, run_id: impl Into<String>) -> Self {
        self.run_id = Some(run_id.into());
        self
    }

    pub fn detail(mut self, detail: Value) -> Self {
        self.detail = detail;
        self
    }
}

/// The last entry known to a run: keep it outside the log (run journal, report) so that [`crate::verify_with`]
/// can prove that no entry up to it was cut off the end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub seq: u64,
    /// SHA-256 (hex) of the entry's line, newline included: what the next entry's `prev` holds.
    pub hash: String,
}

/// An entry as written: its number, time and chain hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryRef {
    pub seq: u64,
    pub ts: DateTime<Utc>,
    /// SHA-256 (hex) of the entry's line, newline included.
    pub hash: String,
}

impl EntryRef {
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            seq: self.seq,
            hash: self.hash.clone(),
        }
    }
}

/// The audit log of one installation: a directory holding [`LOG_FILE`], [`KEY_FILE`] and [`PUBLIC_KEY_FILE`].
pub struct AuditLog {
    dir: PathBuf,
    log_path: PathBuf,
    key: SigningKey,
    verifying: VerifyingKey,
    redactor: Option<Redactor>,
    lock_timeout: Duration,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("log_path", &self.log_path)
            .field("public_key", &hex::encode(self.verifying.as_bytes()))
            .finish_non_exhaustive()
    }
}

/// Where the last complete line is, and whether a partial line follows it.
struct Tail {
    last_line: Option<Vec<u8>>,
    /// Offset of the first byte after the last newline, when the file does not end with one.
    torn_from: Option<u64>,
}

/// Reads backwards from the end until the last complete line is in hand.
fn read_tail(file: &File, len: u64) -> io::Result<Tail> {
    if len == 0 {
        return Ok(Tail {
            last_line: None,
            torn_from: None,
        });
    }
    let mut start = len;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let chunk = (64 * 1024).min(start);
        let new_start = start - chunk;
        let mut tmp = vec![0u8; chunk as usize];
        file.read_exact_at(&mut tmp, new_start)?;
        tmp.extend_from_slice(&buf);
        buf = tmp;
        start = new_start;
        if start == 0 || buf.iter().filter(|&&b| b == b'\n').count() >= 2 {
            break;
        }
    }
    let (complete_end, torn_from) = if buf.last() == Some(&b'\n') {
        (buf.len(), None)
    } else {
        match buf.iter().rposition(|&b| b == b'\n') {
            Some(p) => (p + 1, Some(start + p as u64 + 1)),
            None => (0, Some(start)),
        }
    };
    if complete_end == 0 {
        return Ok(Tail {
            last_line: None,
            torn_from,
        });
    }
    let body = &buf[..complete_end - 1];
    let line_start = body.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    Ok(Tail {
        last_line: Some(body[line_start..].to_vec()),
        torn_from,
    })
}

impl AuditLog {
    /// Opens (creating if needed, mode 0700) the audit directory `dir`: loads the signing key or creates it on
    /// first use, exports the public key, and checks that the last entry on disk is signed by this key (so that a
    /// replaced key or a tampered tail is reported now, not in the middle of a rollback).
    pub fn open(dir: impl AsRef<Path>) -> Result<AuditLog, AuditError> {
        let dir = dir.as_ref().to_path_buf();
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| AuditError::Io {
                what: "create the audit directory",
                path: dir.clone(),
                source,
            })?;
        let log_path = dir.join(LOG_FILE);
        let log_has_entries = fs::metadata(&log_path).is_ok_and(|m| m.len() > 0);
        let key = key::load_or_create(&dir.join(KEY_FILE), !log_has_entries, &log_path)?;
        let verifying = key.verifying_key();
        key::export_public(&dir.join(PUBLIC_KEY_FILE), &verifying)?;
        let log = AuditLog {
            dir,
            log_path,
            key,
            verifying,
            redactor: None,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
        };
        log.head()?;
        Ok(log)
    }

    /// Redacts run id, actor, action and detail with `redactor` before anything is written.
    pub fn with_redactor(mut self, redactor: Redactor) -> Self {
        self.redactor = Some(redactor);
        self
    }

    /// How long [`AuditLog::append`] waits for another writer's lock (default 30 s).
    pub fn with_lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn public_key(&self) -> VerifyingKey {
        self.verifying
    }

    pub fn public_key_path(&self) -> PathBuf {
        self.dir.join(PUBLIC_KEY_FILE)
    }

    pub fn public_key_pem(&self) -> String {
        key::public_key_pem(&self.verifying)
    }

    /// The last complete entry on disk (`None` for an empty log), after checking that it is signed by this key.
    pub fn head(&self) -> Result<Option<EntryRef>, AuditError> {
        let file = match File::open(&self.log_path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(AuditError::Io {
                    what: "open the audit log",
                    path: self.log_path.clone(),
                    source,
                });
            }
        };
        let len = file
            .metadata()
            .map_err(self.io("read the audit log"))?
            .len();
        let tail = read_tail(&file, len).map_err(self.io("read the audit log"))?;
        tail.last_line.map(|l| self.check_tail(&l)).transpose()
    }

    fn io(&self, what: &'static str) -> impl FnOnce(io::Error) -> AuditError + '_ {
        move |source| AuditError::Io {
            what,
            path: self.log_path.clone(),
            source,
        }
    }

    /// Parses the last line and checks its signature against this log's key.
    fn check_tail(&self, line: &[u8]) -> Result<EntryRef, AuditError> {
        let invalid = |reason: String| AuditError::TailInvalid {
            path: self.log_path.clone(),
            reason,
        };
        let p =
            parse_line(line).map_err(|r| invalid(format!("is not a valid audit entry ({r})")))?;
        self.verifying.verify_strict(p.signed, &p.sig).map_err(|_| {
            invalid(format!(
                "(seq {}) is not signed by the key in {}: the entry was changed, or the key was replaced",
                p.entry.seq,
                self.dir.join(KEY_FILE).display()
            ))
        })?;
        Ok(EntryRef {
            seq: p.entry.seq,
            ts: p.ts,
            hash: line_hash(line),
        })
    }

    /// Opens the log for appending and takes the exclusive lock, waiting up to the lock timeout.
    fn lock(&self) -> Result<File, AuditError> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.log_path)
            .map_err(self.io("open the audit log"))?;
        let started = Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(file),
                Err(TryLockError::WouldBlock) if started.elapsed() < self.lock_timeout => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(TryLockError::WouldBlock) => {
                    return Err(AuditError::LockTimeout {
                        path: self.log_path.clone(),
                        waited: started.elapsed(),
                    });
                }
                Err(TryLockError::Error(source)) => {
                    return Err(AuditError::Io {
                        what: "lock the audit log",
                        path: self.log_path.clone(),
                        source,
                    });
                }
            }
        }
    }

    /// Appends one entry: takes the exclusive lock, reads the last line on disk to continue the chain, writes the
    /// signed line, fsyncs, releases the lock. Returns the new entry's number, time and hash.
    ///
    /// A partial last line (a write cut short by a crash or a full disk) is moved aside to
    /// `audit.jsonl.torn-<time>` and the chain continues from the last complete entry; an entry
    /// `audit.torn_tail_discarded` recording the discarded bytes' length and SHA-256 is appended first.
    pub fn append(&mut self, entry: NewEntry) -> Result<EntryRef, AuditError> {
        let entry = match &self.redactor {
            Some(r) => NewEntry {
                run_id: entry.run_id.map(|s| r.redact_string(&s)),
                actor: r.redact_string(&entry.actor),
                action: r.redact_string(&entry.action),
                detail: r.redact_json(&entry.detail),
            },
            None => entry,
        };
        let file = self.lock()?;
        let len = file
            .metadata()
            .map_err(self.io("read the audit log"))?
            .len();
        let created = len == 0;
        let tail = read_tail(&file, len).map_err(self.io("read the audit log"))?;
        let mut head = tail
            .last_line
            .as_deref()
            .map(|l| self.check_tail(l))
            .transpose()?;
        if let Some(from) = tail.torn_from {
            let discarded = self.discard_torn_tail(&file, from, len)?;
            head = Some(self.write_entry(&file, head.as_ref(), &discarded)?);
        }
        let written = self.write_entry(&file, head.as_ref(), &entry)?;
        if created {
            key::sync_dir(&self.dir)?;
        }
        drop(file); // closing the descriptor releases the lock
        Ok(written)
    }

    /// Saves the bytes after the last newline to a side file, truncates them away, and returns the entry that
    /// records it.
    fn discard_torn_tail(&self, file: &File, from: u64, len: u64) -> Result<NewEntry, AuditError> {
        let mut torn = vec![0u8; (len - from) as usize];
        file.read_exact_at(&mut torn, from)
            .map_err(self.io("read the audit log"))?;
        let stamp = Utc::now().format("%Y%m%dT%H%M%S%.6fZ");
        let side = self.dir.join(format!("{LOG_FILE}.torn-{stamp}"));
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&side)
            .map_err(|source| AuditError::Io {
                what: "save the partial last line of the audit log to",
                path: side.clone(),
                source,
            })?;
        f.write_all(&torn)
            .and_then(|()| f.sync_all())
            .map_err(|source| AuditError::Io {
                what: "save the partial last line of the audit log to",
                path: side.clone(),
                source,
            })?;
        file.set_len(from)
            .and_then(|()| file.sync_all())
            .map_err(self.io("truncate the partial last line of the audit log"))?;
        Ok(NewEntry::new("xorb-audit", "audit.torn_tail_discarded").detail(json!({
            "reason": "the log ended with a partial line (a write cut short by a crash or a full disk)",
            "offset": from,
            "bytes": len - from,
            "sha256": sha256_hex(&torn),
            "saved_to": side.file_name().map(|n| n.to_string_lossy().into_owned()),
        })))
    }

    fn write_entry(
        &self,
        file: &File,
        head: Option<&EntryRef>,
        e: &NewEntry,
    ) -> Result<EntryRef, AuditError> {
        let seq = head.map_or(1, |h| h.seq + 1);
        let prev = head.map_or(GENESIS_PREV, |h| h.hash.as_str());
        let now = Utc::now();
        let ts = now.to_rfc3339_opts(SecondsFormat::Micros, true);
        let line = build_line(
            &self.key,
            &LineFields {
                seq,
                ts: &ts,
                run_id: e.run_id.as_deref(),
                actor: &e.actor,
                action: &e.action,
                detail: &e.detail,
                prev,
            },
        )?;
        let before = file
            .metadata()
            .map_err(self.io("read the audit log"))?
            .len();
        let mut w = file;
        if let Err(source) = w.write_all(&line).and_then(|()| file.sync_data()) {
            // Never leave a partial line behind (a full disk writes part of it): cut back to where we started.
            let _ = file.set_len(before);
            let _ = file.sync_data();
            return Err(AuditError::Io {
                what: "append to the audit log",
                path: self.log_path.clone(),
                source,
            });
        }
        Ok(EntryRef {
            seq,
            ts: DateTime::parse_from_rfc3339(&ts)
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or(now),
            hash: line_hash(&line[..line.len() - 1]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_tail_finds_the_last_complete_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        type Case<'a> = (&'a [u8], Option<&'a [u8]>, Option<u64>);
        let cases: &[Case<'_>] = &[
            (b"", None, None),
            (b"a\n", Some(b"a"), None),
            (b"a\nbb\n", Some(b"bb"), None),
            (b"a\nbb\ncc", Some(b"bb"), Some(5)),
            (b"cc", None, Some(0)),
            (b"a\n\n", Some(b""), None),
        ];
        for (content, last, torn) in cases {
            fs::write(&p, content).unwrap();
            let f = File::open(&p).unwrap();
            let t = read_tail(&f, content.len() as u64).unwrap();
            assert_eq!(t.last_line.as_deref(), *last, "{content:?}");
            assert_eq!(t.torn_from, *torn, "{content:?}");
        }
        // Longer than one read chunk.
        let long = "x".repeat(200_000);
        fs::write(&p, format!("{long}\n{long}y\n")).unwrap();
        let f = File::open(&p).unwrap();
        let t = read_tail(&f, f.metadata().unwrap().len()).unwrap();
        assert_eq!(t.last_line.unwrap().len(), 200_001);
    }
}
