//! The notification outbox: stakeholder messages waiting for (or done with) delivery, in the journal's SQLite
//! file (`outbox` table), so that a crash loses none and a resumed run sends none twice.
//!
//! One row per message and sink. A message's id is deterministic (`RUN/initiation`, `RUN/progress/phase-2`,
//! `RUN/completion`, `RUN/failure/phase-2/SEQ`), so enqueueing is `INSERT OR IGNORE`: whoever notices an event first
//! (the live run, or the resumed run reconciling what the journal says happened) inserts it, every later attempt is
//! a no-op. A sender marks rows delivered; delivered rows are never handed out again. Delivery is at least once:
//! a process killed between a successful POST and its `delivered` commit sends that message again on resume with
//! the same id, which receivers use to deduplicate (`X-Xorb-Delivery-Id`).
//!
//! Outbox writes are not journal boundaries (the crash hook does not count them): they never change what the
//! rollback does.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use xorb_model::redact::Redactor;

use crate::journal::JOURNAL_FILE;

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("notification outbox in {path}: could not {op}: {source}")]
    Sql {
        path: PathBuf,
        op: &'static str,
        source: rusqlite::Error,
    },
}

/// Where a message stands for one sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    Pending,
    Delivered,
    /// Refused for a reason retrying cannot fix (the receiver's TLS certificate is not trusted): never handed
    /// out again; `last_error` says why and what to change.
    Failed,
}

impl DeliveryState {
    fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }
}

/// A message to enqueue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// Deterministic: `RUN/KIND[/phase-N[/SEQ]]`.
    pub id: String,
    pub run_id: String,
    /// initiation, progress, completion, failure.
    pub kind: String,
    pub phase: Option<u8>,
    /// The rendered text (redacted again on insert).
    pub body: String,
}

/// One message for one sink, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    pub id: String,
    pub run_id: String,
    pub kind: String,
    pub phase: Option<u8>,
    /// `terminal`, or `webhook:<fingerprint>` (never the URL: it carries a token).
    pub sink: String,
    pub body: String,
    pub state: DeliveryState,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    /// Not before this time (backoff after a failed attempt).
    pub next_attempt_at: DateTime<Utc>,
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_ts(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

/// The outbox of a state directory (its own connection to the journal's file).
pub struct Outbox {
    conn: Connection,
    path: PathBuf,
    redactor: Redactor,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("path", &self.path).finish()
    }
}

const COLUMNS: &str = "id, run_id, kind, phase, sink, body, state, attempts, last_error, created_at, \
                       delivered_at, next_attempt_at";

impl Outbox {
    /// Opens the outbox in `<state_dir>/journal.sqlite`, creating its table if needed.
    pub fn open(state_dir: &Path) -> Result<Outbox, OutboxError> {
        let path = state_dir.join(JOURNAL_FILE);
        let err = |op| {
            let path = path.clone();
            move |source| OutboxError::Sql { path, op, source }
        };
        let conn = Connection::open(&path).map_err(err("open the journal file"))?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(err("set a busy timeout"))?;
        let _: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(err("switch to write-ahead logging"))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err("set synchronous=FULL"))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS outbox (
                 id TEXT NOT NULL,
                 run_id TEXT NOT NULL,
                 kind TEXT NOT NULL,
                 phase INTEGER,
                 sink TEXT NOT NULL,
                 body TEXT NOT NULL,
                 state TEXT NOT NULL,
                 attempts INTEGER NOT NULL DEFAULT 0,
                 last_error TEXT,
                 created_at TEXT NOT NULL,
                 delivered_at TEXT,
                 next_attempt_at TEXT NOT NULL,
                 PRIMARY KEY (id, sink)
             );
             CREATE INDEX IF NOT EXISTS outbox_by_run ON outbox(run_id, state);",
        )
        .map_err(err("create the outbox table"))?;
        Ok(Outbox {
            conn,
            path,
            redactor: Redactor::new(),
        })
    }

    /// Bodies and errors are redacted with `redactor` before they are stored.
    pub fn with_redactor(mut self, redactor: Redactor) -> Self {
        self.redactor = redactor;
        self
    }

    fn sql(&self, op: &'static str) -> impl FnOnce(rusqlite::Error) -> OutboxError + '_ {
        move |source| OutboxError::Sql {
            path: self.path.clone(),
            op,
            source,
        }
    }

    /// Enqueues `msg` for `sink` unless it is there already (`INSERT OR IGNORE`). `delivered`: the sink took it
    /// at once (the terminal). True when this call inserted it.
    pub fn enqueue(
        &self,
        msg: &NewMessage,
        sink: &str,
        delivered: bool,
        now: DateTime<Utc>,
    ) -> Result<bool, OutboxError> {
        let state = if delivered {
            DeliveryState::Delivered
        } else {
            DeliveryState::Pending
        };
        let body = self.redactor.redact(&msg.body);
        let n = self
            .conn
            .prepare_cached(
                "INSERT OR IGNORE INTO outbox (id, run_id, kind, phase, sink, body, state, attempts, created_at,
                                               delivered_at, next_attempt_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, ?8, ?9, ?8)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    msg.id,
                    msg.run_id,
                    msg.kind,
                    msg.phase,
                    sink,
                    body,
                    state.as_str(),
                    ts(now),
                    delivered.then(|| ts(now)),
                ])
            })
            .map_err(self.sql("enqueue a notification"))?;
        Ok(n == 1)
    }

    fn query(&self, sql: &str, p: impl rusqlite::Params) -> Result<Vec<Notification>, OutboxError> {
        let mut stmt = self
            .conn
            .prepare_cached(sql)
            .map_err(self.sql("read notifications"))?;
        let rows = stmt
            .query_map(p, |r| {
                let state: String = r.get(6)?;
                let delivered_at: Option<String> = r.get(10)?;
                Ok(Notification {
                    id: r.get(0)?,
                    run_id: r.get(1)?,
                    kind: r.get(2)?,
                    phase: r.get(3)?,
                    sink: r.get(4)?,
                    body: r.get(5)?,
                    state: match state.as_str() {
                        "delivered" => DeliveryState::Delivered,
                        "failed" => DeliveryState::Failed,
                        _ => DeliveryState::Pending,
                    },
                    attempts: r.get(7)?,
                    last_error: r.get(8)?,
                    created_at: parse_ts(&r.get::<_, String>(9)?),
                    delivered_at: delivered_at.as_deref().map(parse_ts),
                    next_attempt_at: parse_ts(&r.get::<_, String>(11)?),
                })
            })
            .map_err(self.sql("read notifications"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.sql("read notifications"))?;
        Ok(rows)
    }

    /// Every notification of a run, in the order they were enqueued.
    pub fn list(&self, run_id: &str) -> Result<Vec<Notification>, OutboxError> {
        self.query(
            &format!(
                "SELECT {COLUMNS} FROM outbox WHERE run_id = ?1 ORDER BY created_at, id, sink"
            ),
            [run_id],
        )
    }

    /// The run's pending messages for `sink`, oldest first, whose backoff has passed at `now`.
    pub fn due(
        &self,
        run_id: &str,
        sink: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<Notification>, OutboxError> {
        self.query(
            &format!(
                "SELECT {COLUMNS} FROM outbox WHERE run_id = ?1 AND sink = ?2 AND state = 'pending'
                 AND next_attempt_at <= ?3 ORDER BY created_at, id"
            ),
            params![run_id, sink, ts(now)],
        )
    }

    /// How many of the run's messages are still pending for `sink`.
    pub fn pending(&self, run_id: &str, sink: &str) -> Result<u64, OutboxError> {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM outbox WHERE run_id = ?1 AND sink = ?2 AND state = 'pending'",
                params![run_id, sink],
                |r| r.get(0),
            )
            .map_err(self.sql("count pending notifications"))
    }

    /// The earliest time a pending message of the run for `sink` may be tried again.
    pub fn next_due(&self, run_id: &str, sink: &str) -> Result<Option<DateTime<Utc>>, OutboxError> {
        let t: Option<String> = self
            .conn
            .query_row(
                "SELECT MIN(next_attempt_at) FROM outbox WHERE run_id = ?1 AND sink = ?2 AND state = 'pending'",
                params![run_id, sink],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sql("read the next delivery time"))?
            .flatten();
        Ok(t.as_deref().map(parse_ts))
    }

    /// The sink acknowledged the message: it is never handed out again.
    pub fn mark_delivered(
        &self,
        id: &str,
        sink: &str,
        now: DateTime<Utc>,
    ) -> Result<(), OutboxError> {
        self.conn
            .execute(
                "UPDATE outbox SET state = 'delivered', delivered_at = ?3, attempts = attempts + 1,
                                   last_error = NULL
                 WHERE id = ?1 AND sink = ?2 AND state = 'pending'",
                params![id, sink, ts(now)],
            )
            .map_err(self.sql("mark a notification delivered"))?;
        Ok(())
    }

    /// An attempt failed: count it, keep the (redacted) error, and wait until `retry_at`.
    pub fn record_failure(
        &self,
        id: &str,
        sink: &str,
        error: &str,
        retry_at: DateTime<Utc>,
    ) -> Result<(), OutboxError> {
        let error = self.redactor.redact(error);
        self.conn
            .execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?3, next_attempt_at = ?4
                 WHERE id = ?1 AND sink = ?2 AND state = 'pending'",
                params![id, sink, error, ts(retry_at)],
            )
            .map_err(self.sql("record a failed delivery"))?;
        Ok(())
    }

    /// An attempt failed for good: count it, keep the (redacted) reason, and never hand it out again.
    pub fn mark_failed(&self, id: &str, sink: &str, error: &str) -> Result<(), OutboxError> {
        let error = self.redactor.redact(error);
        self.conn
            .execute(
                "UPDATE outbox SET state = 'failed', attempts = attempts + 1, last_error = ?3
                 WHERE id = ?1 AND sink = ?2 AND state = 'pending'",
                params![id, sink, error],
            )
            .map_err(self.sql("record a refused delivery"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: &str, body: &str) -> NewMessage {
        NewMessage {
            id: id.into(),
            run_id: "r1".into(),
            kind: "progress".into(),
            phase: Some(2),
            body: body.into(),
        }
    }

    #[test]
    fn a_message_is_enqueued_once_and_delivered_once() {
        let dir = tempfile::tempdir().unwrap();
        let _journal = crate::Journal::open(dir.path()).unwrap();
        let o = Outbox::open(dir.path()).unwrap();
        let now = Utc::now();
        assert!(
            o.enqueue(&msg("r1/progress/phase-2", "a"), "webhook:x", false, now)
                .unwrap()
        );
        assert!(
            !o.enqueue(&msg("r1/progress/phase-2", "b"), "webhook:x", false, now)
                .unwrap()
        );
        assert!(
            o.enqueue(&msg("r1/progress/phase-2", "a"), "terminal", true, now)
                .unwrap()
        );
        assert_eq!(o.pending("r1", "webhook:x").unwrap(), 1);
        assert_eq!(o.pending("r1", "terminal").unwrap(), 0);
        let due = o.due("r1", "webhook:x", now).unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].body, "a", "the first insert stands");

        o.record_failure(
            "r1/progress/phase-2",
            "webhook:x",
            "HTTP 500",
            now + chrono::Duration::seconds(5),
        )
        .unwrap();
        assert!(
            o.due("r1", "webhook:x", now).unwrap().is_empty(),
            "backing off"
        );
        let later = now + chrono::Duration::seconds(6);
        assert_eq!(o.due("r1", "webhook:x", later).unwrap().len(), 1);
        o.mark_delivered("r1/progress/phase-2", "webhook:x", later)
            .unwrap();
        assert!(
            o.due("r1", "webhook:x", later + chrono::Duration::hours(1))
                .unwrap()
                .is_empty()
        );
        // Reopened (a resumed run): still delivered, and a late re-enqueue changes nothing.
        let o = Outbox::open(dir.path()).unwrap();
        assert!(
            !o.enqueue(&msg("r1/progress/phase-2", "a"), "webhook:x", false, later)
                .unwrap()
        );
        let all = o.list("r1").unwrap();
        let hook = all.iter().find(|n| n.sink == "webhook:x").unwrap();
        assert_eq!(hook.state, DeliveryState::Delivered);
        assert_eq!(hook.attempts, 2);
        assert_eq!(hook.last_error, None);
    }

    #[test]
    fn bodies_and_errors_are_stored_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let r = Redactor::with_secrets(["hunter2hunter2"]);
        let o = Outbox::open(dir.path()).unwrap().with_redactor(r);
        let now = Utc::now();
        o.enqueue(&msg("r1/x", "pw hunter2hunter2"), "webhook:x", false, now)
            .unwrap();
        o.record_failure("r1/x", "webhook:x", "refused hunter2hunter2", now)
            .unwrap();
        let n = &o.list("r1").unwrap()[0];
        assert_eq!(n.body, "pw [REDACTED]");
        assert_eq!(n.last_error.as_deref(), Some("refused [REDACTED]"));
    }

    #[test]
    fn a_refused_message_is_kept_with_its_reason_and_never_handed_out_again() {
        let dir = tempfile::tempdir().unwrap();
        let o = Outbox::open(dir.path()).unwrap();
        let now = Utc::now();
        o.enqueue(&msg("r1/x", "a"), "webhook:x", false, now)
            .unwrap();
        o.mark_failed("r1/x", "webhook:x", "certificate not trusted")
            .unwrap();
        let later = now + chrono::Duration::hours(1);
        assert!(o.due("r1", "webhook:x", later).unwrap().is_empty());
        assert_eq!(o.pending("r1", "webhook:x").unwrap(), 0);
        // Reopened: still failed, and a late re-enqueue does not revive it.
        let o = Outbox::open(dir.path()).unwrap();
        assert!(
            !o.enqueue(&msg("r1/x", "a"), "webhook:x", false, later)
                .unwrap()
        );
        let n = &o.list("r1").unwrap()[0];
        assert_eq!(n.state, DeliveryState::Failed);
        assert_eq!(n.attempts, 1);
        assert_eq!(n.last_error.as_deref(), Some("certificate not trusted"));
    }
}
