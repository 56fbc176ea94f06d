//! Governance records of a run, kept in the run's journal (`journal.sqlite`) beside its steps and events: the
//! approval gate (severity, initiator), the approvals given, the checklist ticks and the release tag.
//!
//! The types are plain strings and timestamps: the policy that gives them meaning (roles, ranking, checklists)
//! lives in `xorb-governance`, which the engine does not depend on. Tables are created on first use
//! (`CREATE TABLE IF NOT EXISTS`), so a journal written before governance existed opens unchanged.
//!
//! - `gates`: one row per governed run: severity (none: the run was started without `--severity`), initiator,
//!   the release repository to tag, and when the gate opened (once open it stays open for that run: a resumed run
//!   does not need a fresh approval to finish what was approved).
//! - `approvals`: every approval recorded for a run, in order.
//! - `checklist_ticks`: one row per ticked item; the first tick stands (`INSERT OR IGNORE`), so a resumed run or a
//!   repeated `xorbctl check` never rewrites who ticked it.
//! - `release_tags`: the tag created in the release repository after the run succeeded.
//! - `run_policies`: the policy files (decision matrix, operators, checklists) a run was started with, by kind,
//!   source and text: `show`, `report`, `check` and `approve` judge the run by them, not by whatever flags they
//!   are given later.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::journal::{JOURNAL_FILE, Journal, JournalError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateRecord {
    /// `P0`..`P3`; `None`: the run was started without a severity, so it had no approval gate.
    pub severity: Option<String>,
    /// Who started the run (`--as NAME`, else $USER): the one who may not approve where a second person is needed.
    pub initiator: String,
    /// `--release-repo PATH`: tag the rolled-back-to commit there once the run succeeds.
    pub release_repo: Option<String>,
    /// `--push REMOTE`: push that tag.
    pub push_remote: Option<String>,
    pub created_at: DateTime<Utc>,
    pub opened_at: Option<DateTime<Utc>>,
    /// The approval that opened the gate, in words ("alice as on-call-engineer").
    pub opened_by: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRecord {
    pub name: String,
    pub role: String,
    /// When the approval was given (what expiry counts from).
    pub at: DateTime<Utc>,
    pub reason: String,
    /// `command-line` (`--approve` on the rollback) or `approve` (`xorbctl approve`).
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TickRecord {
    pub item: String,
    /// `proof` (ticked by the run) or `person` (`xorbctl check`).
    pub by_kind: String,
    /// The proof (step id, `phase.2`, `check.health`, `gate.open`…) or the person's name.
    pub by_name: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagRecord {
    pub repo: String,
    pub tag: String,
    pub commit: String,
    pub pushed_to: Option<String>,
    pub at: DateTime<Utc>,
}

/// Everything governance recorded about one run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GovernanceRecord {
    pub gate: Option<GateRecord>,
    pub approvals: Vec<ApprovalRecord>,
    pub ticks: Vec<TickRecord>,
    pub tags: Vec<TagRecord>,
}

/// A policy file as a run was started with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRecord {
    /// `decision-matrix`, `operators` or `checklists`.
    pub kind: String,
    /// The file it came from (or `builtin:…`), for messages.
    pub source: String,
    pub text: String,
}

/// The governance tables of a state directory's journal.
pub struct GovernanceStore {
    conn: Connection,
    path: PathBuf,
    /// Opened read-only on a journal that never had governance tables: every run reads as ungoverned.
    no_tables: bool,
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

impl GovernanceStore {
    /// Opens the journal of `state_dir` (creating it and the governance tables if needed).
    pub fn open(state_dir: &Path) -> Result<Self, JournalError> {
        // The journal's own tables first: ours reference `runs`.
        drop(Journal::open(state_dir)?);
        let path = state_dir.join(JOURNAL_FILE);
        let open_err = |source| JournalError::Open {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        let store = GovernanceStore {
            conn,
            path,
            no_tables: false,
        };
        store
            .conn
            .execute_batch(
                "CREATE TABLE IF NOT EXISTS gates (
                     run_id TEXT PRIMARY KEY REFERENCES runs(id),
                     severity TEXT,
                     initiator TEXT NOT NULL,
                     release_repo TEXT,
                     push_remote TEXT,
                     created_at TEXT NOT NULL,
                     opened_at TEXT,
                     opened_by TEXT
                 );
                 CREATE TABLE IF NOT EXISTS approvals (
                     seq INTEGER PRIMARY KEY AUTOINCREMENT,
                     run_id TEXT NOT NULL REFERENCES runs(id),
                     name TEXT NOT NULL,
                     role TEXT NOT NULL,
                     at TEXT NOT NULL,
                     reason TEXT NOT NULL,
                     source TEXT NOT NULL
                 );
                 CREATE TABLE IF NOT EXISTS checklist_ticks (
                     run_id TEXT NOT NULL REFERENCES runs(id),
                     item TEXT NOT NULL,
                     by_kind TEXT NOT NULL,
                     by_name TEXT NOT NULL,
                     at TEXT NOT NULL,
                     PRIMARY KEY (run_id, item)
                 );
                 CREATE TABLE IF NOT EXISTS run_policies (
                     run_id TEXT NOT NULL REFERENCES runs(id),
                     kind TEXT NOT NULL,
                     source TEXT NOT NULL,
                     text TEXT NOT NULL,
                     PRIMARY KEY (run_id, kind)
                 );
                 CREATE TABLE IF NOT EXISTS release_tags (
                     seq INTEGER PRIMARY KEY AUTOINCREMENT,
                     run_id TEXT NOT NULL REFERENCES runs(id),
                     repo TEXT NOT NULL,
                     tag TEXT NOT NULL,
                     commit_id TEXT NOT NULL,
                     pushed_to TEXT,
                     at TEXT NOT NULL
                 );",
            )
            .map_err(store.sql("create the governance tables"))?;
        Ok(store)
    }

    /// Opens the governance records of `state_dir` for reading only, creating nothing (`show`, `report`).
    pub fn open_read_only(state_dir: &Path) -> Result<Self, JournalError> {
        let (conn, path) = crate::journal::connect_read_only(state_dir)?;
        let mut store = GovernanceStore {
            conn,
            path,
            no_tables: false,
        };
        store.no_tables = !store.has_table("gates")?;
        Ok(store)
    }

    fn has_table(&self, name: &str) -> Result<bool, JournalError> {
        self.conn
            .query_row(
                "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [name],
                |r| r.get(0),
            )
            .map_err(self.sql("list the journal's tables"))
    }

    /// Records the policies a new run starts with (once: a second call keeps the first).
    pub fn save_policies(
        &mut self,
        run_id: &str,
        policies: &[PolicyRecord],
    ) -> Result<(), JournalError> {
        for p in policies {
            self.conn
                .execute(
                    "INSERT OR IGNORE INTO run_policies (run_id, kind, source, text) VALUES (?1, ?2, ?3, ?4)",
                    params![run_id, p.kind, p.source, p.text],
                )
                .map_err(self.sql("record the run's policies"))?;
        }
        Ok(())
    }

    /// The policies `run_id` was started with; empty for a run started before they were recorded.
    pub fn policies(&self, run_id: &str) -> Result<Vec<PolicyRecord>, JournalError> {
        if self.no_tables || !self.has_table("run_policies")? {
            return Ok(vec![]);
        }
        let mut stmt = self
            .conn
            .prepare("SELECT kind, source, text FROM run_policies WHERE run_id = ?1 ORDER BY kind")
            .map_err(self.sql("read the run's policies"))?;
        stmt.query_map([run_id], |r| {
            Ok(PolicyRecord {
                kind: r.get(0)?,
                source: r.get(1)?,
                text: r.get(2)?,
            })
        })
        .map_err(self.sql("read the run's policies"))?
        .collect::<Result<_, _>>()
        .map_err(self.sql("read the run's policies"))
    }

    fn sql(&self, op: &'static str) -> impl FnOnce(rusqlite::Error) -> JournalError + '_ {
        move |source| JournalError::sql(&self.path, op, source)
    }

    fn parse_ts(&self, what: &str, s: &str) -> Result<DateTime<Utc>, JournalError> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| JournalError::Corrupt {
                path: self.path.clone(),
                what: what.to_string(),
                message: e.to_string(),
            })
    }

    /// Records the gate of a new run (once: a second call keeps the first).
    pub fn create_gate(&mut self, run_id: &str, g: &GateRecord) -> Result<(), JournalError> {
        self.conn
            .execute(
                "INSERT OR IGNORE INTO gates (run_id, severity, initiator, release_repo, push_remote, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    run_id,
                    g.severity,
                    g.initiator,
                    g.release_repo,
                    g.push_remote,
                    ts(g.created_at)
                ],
            )
            .map_err(self.sql("record the approval gate"))?;
        Ok(())
    }

    /// Marks the gate open; returns false when it was already open (the first opening stands).
    pub fn open_gate(
        &mut self,
        run_id: &str,
        at: DateTime<Utc>,
        by: &str,
    ) -> Result<bool, JournalError> {
        let n = self
            .conn
            .execute(
                "UPDATE gates SET opened_at = ?2, opened_by = ?3 WHERE run_id = ?1 AND opened_at IS NULL",
                params![run_id, ts(at), by],
            )
            .map_err(self.sql("record the opening of the approval gate"))?;
        Ok(n > 0)
    }

    pub fn add_approval(&mut self, run_id: &str, a: &ApprovalRecord) -> Result<(), JournalError> {
        self.conn
            .execute(
                "INSERT INTO approvals (run_id, name, role, at, reason, source) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![run_id, a.name, a.role, ts(a.at), a.reason, a.source],
            )
            .map_err(self.sql("record the approval"))?;
        Ok(())
    }

    /// Ticks a checklist item; returns false when it was already ticked (the first tick stands).
    pub fn tick(&mut self, run_id: &str, t: &TickRecord) -> Result<bool, JournalError> {
        let n = self
            .conn
            .execute(
                "INSERT OR IGNORE INTO checklist_ticks (run_id, item, by_kind, by_name, at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![run_id, t.item, t.by_kind, t.by_name, ts(t.at)],
            )
            .map_err(self.sql("record the checklist tick"))?;
        Ok(n > 0)
    }

    pub fn add_tag(&mut self, run_id: &str, t: &TagRecord) -> Result<(), JournalError> {
        self.conn
            .execute(
                "INSERT INTO release_tags (run_id, repo, tag, commit_id, pushed_to, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![run_id, t.repo, t.tag, t.commit, t.pushed_to, ts(t.at)],
            )
            .map_err(self.sql("record the release tag"))?;
        Ok(())
    }

    pub fn load(&self, run_id: &str) -> Result<GovernanceRecord, JournalError> {
        if self.no_tables {
            return Ok(GovernanceRecord::default());
        }
        type GateRow = (
            Option<String>,
            String,
            Option<String>,
            Option<String>,
            String,
            Option<String>,
            Option<String>,
        );
        let row: Option<GateRow> = self
            .conn
            .query_row(
                "SELECT severity, initiator, release_repo, push_remote, created_at, opened_at, opened_by
                 FROM gates WHERE run_id = ?1",
                [run_id],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                    ))
                },
            )
            .optional()
            .map_err(self.sql("read the approval gate"))?;
        let gate = match row {
            None => None,
            Some((severity, initiator, release_repo, push_remote, created, opened, opened_by)) => {
                Some(GateRecord {
                    severity,
                    initiator,
                    release_repo,
                    push_remote,
                    created_at: self.parse_ts("gate timestamp", &created)?,
                    opened_at: opened
                        .map(|o| self.parse_ts("gate timestamp", &o))
                        .transpose()?,
                    opened_by,
                })
            }
        };

        let mut stmt = self
            .conn
            .prepare(
                "SELECT name, role, at, reason, source FROM approvals WHERE run_id = ?1 ORDER BY seq",
            )
            .map_err(self.sql("read the approvals"))?;
        let rows: Vec<(String, String, String, String, String)> = stmt
            .query_map([run_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .map_err(self.sql("read the approvals"))?
            .collect::<Result<_, _>>()
            .map_err(self.sql("read the approvals"))?;
        let mut approvals = Vec::new();
        for (name, role, at, reason, source) in rows {
            approvals.push(ApprovalRecord {
                at: self.parse_ts("approval timestamp", &at)?,
                name,
                role,
                reason,
                source,
            });
        }

        let mut stmt = self
            .conn
            .prepare(
                "SELECT item, by_kind, by_name, at FROM checklist_ticks WHERE run_id = ?1 ORDER BY at, item",
            )
            .map_err(self.sql("read the checklist ticks"))?;
        let rows: Vec<(String, String, String, String)> = stmt
            .query_map([run_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .map_err(self.sql("read the checklist ticks"))?
            .collect::<Result<_, _>>()
            .map_err(self.sql("read the checklist ticks"))?;
        let mut ticks = Vec::new();
        for (item, by_kind, by_name, at) in rows {
            ticks.push(TickRecord {
                at: self.parse_ts("tick timestamp", &at)?,
                item,
                by_kind,
                by_name,
            });
        }

        let mut stmt = self
            .conn
            .prepare(
                "SELECT repo, tag, commit_id, pushed_to, at FROM release_tags WHERE run_id = ?1 ORDER BY seq",
            )
            .map_err(self.sql("read the release tags"))?;
        let rows: Vec<(String, String, String, Option<String>, String)> = stmt
            .query_map([run_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .map_err(self.sql("read the release tags"))?
            .collect::<Result<_, _>>()
            .map_err(self.sql("read the release tags"))?;
        let mut tags = Vec::new();
        for (repo, tag, commit, pushed_to, at) in rows {
            tags.push(TagRecord {
                at: self.parse_ts("tag timestamp", &at)?,
                repo,
                tag,
                commit,
                pushed_to,
            });
        }
        Ok(GovernanceRecord {
            gate,
            approvals,
            ticks,
            tags,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Event;
    use xorb_model::plan::Plan;

    fn run(dir: &Path, id: &str) {
        let mut j = Journal::open(dir).unwrap();
        let p = Plan::new("a", "b");
        let ev = Event::RunStarted {
            from: "a".into(),
            to: "b".into(),
            scope: None,
            restore_of: None,
            steps: 0,
            run_dir: "d".into(),
            log_file: "l".into(),
        };
        j.create_run(id, &p, dir, Utc::now(), ev).unwrap();
    }

    #[test]
    fn a_run_keeps_the_policies_it_started_with_and_readers_see_them() {
        let dir = tempfile::tempdir().unwrap();
        run(dir.path(), "r1");
        // A journal without governance tables reads as ungoverned, read-only, creating nothing.
        let ro = GovernanceStore::open_read_only(dir.path()).unwrap();
        assert_eq!(ro.load("r1").unwrap(), GovernanceRecord::default());
        assert!(ro.policies("r1").unwrap().is_empty());
        let mut g = GovernanceStore::open(dir.path()).unwrap();
        let first = PolicyRecord {
            kind: "checklists".into(),
            source: "/tmp/mine.toml".into(),
            text: "[[checklist]]".into(),
        };
        g.save_policies("r1", std::slice::from_ref(&first)).unwrap();
        let later = PolicyRecord {
            source: "/tmp/other.toml".into(),
            ..first.clone()
        };
        g.save_policies("r1", &[later]).unwrap();
        let ro = GovernanceStore::open_read_only(dir.path()).unwrap();
        assert_eq!(ro.policies("r1").unwrap(), vec![first]);
        assert!(ro.policies("r2").unwrap().is_empty());
    }

    #[test]
    fn gate_approvals_ticks_and_tags_read_back_and_first_tick_stands() {
        let dir = tempfile::tempdir().unwrap();
        run(dir.path(), "r1");
        let mut g = GovernanceStore::open(dir.path()).unwrap();
        let t0 = crate::journal::now();
        g.create_gate(
            "r1",
            &GateRecord {
                severity: Some("P2".into()),
                initiator: "bob".into(),
                release_repo: None,
                push_remote: None,
                created_at: t0,
                opened_at: None,
                opened_by: None,
            },
        )
        .unwrap();
        g.add_approval(
            "r1",
            &ApprovalRecord {
                name: "carol".into(),
                role: "engineering-manager".into(),
                at: t0,
                reason: "p99 tripled".into(),
                source: "approve".into(),
            },
        )
        .unwrap();
        assert!(
            g.open_gate("r1", t0, "carol as engineering-manager")
                .unwrap()
        );
        assert!(!g.open_gate("r1", t0, "someone else").unwrap());
        let tick = |by: &str| TickRecord {
            item: "pre.maintenance-window".into(),
            by_kind: "person".into(),
            by_name: by.into(),
            at: t0,
        };
        assert!(g.tick("r1", &tick("alice")).unwrap());
        assert!(!g.tick("r1", &tick("mallory")).unwrap());
        let rec = g.load("r1").unwrap();
        let gate = rec.gate.unwrap();
        assert_eq!(
            gate.opened_by.as_deref(),
            Some("carol as engineering-manager")
        );
        assert_eq!(gate.opened_at, Some(t0));
        assert_eq!(rec.approvals.len(), 1);
        assert_eq!(rec.approvals[0].at, t0);
        assert_eq!(rec.ticks.len(), 1);
        assert_eq!(rec.ticks[0].by_name, "alice");
        // A second connection (another xorbctl process) sees the same.
        let other = GovernanceStore::open(dir.path()).unwrap();
        assert_eq!(other.load("r1").unwrap().ticks.len(), 1);
        assert_eq!(other.load("nope").unwrap(), GovernanceRecord::default());
    }

    #[test]
    fn records_need_a_journaled_run() {
        let dir = tempfile::tempdir().unwrap();
        let mut g = GovernanceStore::open(dir.path()).unwrap();
        let err = g
            .add_approval(
                "ghost",
                &ApprovalRecord {
                    name: "a".into(),
                    role: "team-lead".into(),
                    at: Utc::now(),
                    reason: "r".into(),
                    source: "approve".into(),
                },
            )
            .unwrap_err();
        assert!(matches!(err, JournalError::Sql { .. }), "{err}");
    }
}
