//! One function per parser a user feeds. Each takes arbitrary bytes and must return (an `Err` is fine); a panic
//! or a hang is the bug. Text formats get the bytes as lossy UTF-8 (the CLI reads them with `read_to_string`,
//! which refuses invalid UTF-8 earlier: lossy keeps the rest of the input interesting).

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use xorb_governance::{Checklists, DecisionMatrix, NotifyFile, Operators, Templates};
use xorb_model::policy::Policy;

use crate::seeds;

fn text(b: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(b)
}

/// The rows of a backup as `pg_restore --data-only --file=-` prints them: the backup's proof reads a file on disk.
pub fn dump_script(b: &[u8]) {
    let _ = xorb_integrity::dump_checksums(b);
}

pub fn release_toml(b: &[u8]) {
    let _ = xorb_model::release::parse_manifest(&text(b));
}

pub fn streams_yaml(b: &[u8]) {
    let _ = xorb_model::release::parse_streams(&text(b));
}

pub fn env_file(b: &[u8]) {
    let _ = xorb_model::release::parse_env_file(&text(b));
}

/// A run keeps the plan made from its policy: a policy that parses must give numbers a plan accepts.
pub fn runbook_policy(b: &[u8]) {
    if let Ok(p) = Policy::parse(&text(b), "fuzz.toml") {
        for sp in [&p.services, &p.config, &p.stateful] {
            let step = xorb_model::plan::StepSpec::new(
                "2.api.image",
                xorb_model::plan::Phase::Services,
                "fuzz",
                xorb_model::plan::Action::Noop,
                xorb_model::plan::Safety::Idempotent,
            )
            .with_timeout_secs(p.timeouts.rollout_secs)
            .with_policy(Policy::failure_policy(sp));
            assert_eq!(
                step.check_numbers(),
                Ok(()),
                "a policy that loads made a plan that does not"
            );
        }
    }
}

pub fn decision_matrix(b: &[u8]) {
    if let Ok(m) = DecisionMatrix::parse("fuzz.toml", &text(b)) {
        // What the gate computes from it must not overflow either.
        for s in xorb_governance::Severity::ALL {
            let _ = m.approval_validity(s);
        }
        let _ = m.assess(&xorb_governance::Evidence::default());
    }
}

pub fn operators(b: &[u8]) {
    let _ = Operators::parse("fuzz.toml", &text(b));
}

pub fn checklists(b: &[u8]) {
    if let Ok(c) = Checklists::parse("fuzz.toml", &text(b)) {
        let _ = xorb_governance::Checklist::new(c).render();
    }
}

pub fn notify_toml(b: &[u8]) {
    let _ = NotifyFile::parse("notify.toml", &text(b));
}

/// The input as each of the four templates in turn (the others shipped); loading renders them all.
pub fn templates(b: &[u8]) {
    let t = text(b);
    for kind in ["initiation", "progress", "completion", "failure"] {
        let _ = Templates::from_sources(|k| {
            Ok(if k == kind {
                t.to_string()
            } else {
                seeds::builtin_template(k).to_string()
            })
        });
    }
}

struct AuditFixture {
    dir: tempfile::TempDir,
    key: xorb_audit::VerifyingKey,
}

fn audit_fixture() -> &'static AuditFixture {
    static F: OnceLock<AuditFixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let log = seeds::audit_log(dir.path());
        AuditFixture {
            key: log.public_key(),
            dir,
        }
    })
}

/// `audit.jsonl` as `xorbctl audit verify` reads it (with and without `--since`), as the display reads it, and as
/// the writer reads its tail when it opens the log.
pub fn audit_jsonl(b: &[u8]) {
    let f = audit_fixture();
    let path = f.dir.path().join(xorb_audit::LOG_FILE);
    std::fs::write(&path, b).expect("write the fuzzed audit log");
    let _ = xorb_audit::verify(&path, &f.key, None);
    let since = chrono::Utc::now() - chrono::Duration::hours(1);
    let _ = xorb_audit::verify(&path, &f.key, Some(since));
    let _ = xorb_audit::read_entries(&path);
    if let Ok(log) = xorb_audit::AuditLog::open(f.dir.path()) {
        let _ = log.head();
    }
}

fn read_journal(dir: &Path) {
    let Ok(j) = xorb_engine::Journal::open(dir) else {
        return;
    };
    let Ok(runs) = j.list_runs() else { return };
    for r in runs {
        if let Ok(rec) = j.load_run(&r.id) {
            let _ = xorb_engine::check_stored_plan(&rec);
            let _ = xorb_engine::next_action(&rec.id, &rec.plan, &rec.status);
            let _ = rec.summary();
        }
    }
}

fn scratch() -> &'static PathBuf {
    static D: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &D.get_or_init(|| {
        let t = tempfile::tempdir().expect("a temporary directory");
        let p = t.path().to_path_buf();
        (t, p)
    })
    .1
}

/// One directory per target: the tests of the two journal targets run in parallel in one process.
fn fresh_state_dir(target: &str) -> PathBuf {
    let dir = scratch().join(target);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch state directory");
    dir
}

/// A damaged `journal.sqlite`: the whole file fuzzed.
pub fn journal_file(b: &[u8]) {
    let dir = fresh_state_dir("journal_file");
    std::fs::write(dir.join(xorb_engine::journal::JOURNAL_FILE), b)
        .expect("write the fuzzed journal");
    read_journal(&dir);
}

/// Damaged rows in a sound file: the input is the row fields separated by [`seeds::ROW_SEPARATOR`] (see
/// [`seeds::journal_rows`]), written over the fixture run's rows.
pub fn journal_rows(b: &[u8]) {
    let dir = fresh_state_dir("journal_rows");
    let path = dir.join(xorb_engine::journal::JOURNAL_FILE);
    std::fs::write(&path, seeds::journal_bytes()).expect("write the fixture journal");
    let t = text(b);
    let f: Vec<&str> = t.split(seeds::ROW_SEPARATOR).collect();
    let get = |i: usize| f.get(i).copied().unwrap_or("");
    {
        let Ok(c) = rusqlite::Connection::open(&path) else {
            return;
        };
        // An integer column may hold text in SQLite: store what parses as a number as one, the rest as text.
        let attempts: rusqlite::types::Value = match get(4).trim().parse::<i64>() {
            Ok(n) => n.into(),
            Err(_) => get(4).to_string().into(),
        };
        let _ = c.execute(
            "UPDATE runs SET plan_json = ?1, status_json = ?2, created_at = ?3, finished_at = ?4",
            rusqlite::params![get(0), get(1), get(5), get(6)],
        );
        let _ = c.execute(
            "UPDATE steps SET state = ?1, outcome_json = ?2, attempts = ?3, started_at = ?4 WHERE idx = 0",
            rusqlite::params![get(2), get(3), attempts, get(5)],
        );
        let _ = c.execute(
            "UPDATE events SET kind = ?1, data_json = ?2, ts = ?3 WHERE seq = (SELECT MAX(seq) FROM events)",
            rusqlite::params![get(7), get(8), get(6)],
        );
    }
    read_journal(&dir);
}
