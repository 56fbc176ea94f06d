//! The durable journal: one SQLite database for all runs of a state directory, `<state_dir>/journal.sqlite`.
//!
//! WAL mode with `synchronous=FULL`: a transaction is on disk when its commit returns, so after a crash (of the
//! process or of the machine) the journal holds every write that completed and nothing half-written. Every write
//! is its own transaction; each commit is a *journal boundary* (the crash hook counts them, see [`crate::crash`]).
//!
//! Tables:
//! - `runs`: one row per run (plan as JSON, status, run directory, timestamps);
//! - `steps`: one row per step of a run (state, attempts, start/finish, outcome as JSON);
//! - `events`: every event of every run, in order (`seq`), as JSON.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use serde::{Deserialize, Serialize};
use xorb_model::plan::{Plan, RunStatus, StepOutcome, StepSpec};

use xorb_model::redact::Redactor;

use crate::crash;
use crate::events::{Event, EventRecord};

/// The journal's file name inside the state directory.
pub const JOURNAL_FILE: &str = "journal.sqlite";
/// Schema version stored in `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot create the state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the rollback journal {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "the rollback journal {path} cannot use write-ahead logging (journal_mode stays {mode:?}); put the state \
         directory on a local file system"
    )]
    NotWal { path: PathBuf, mode: String },
    #[error(
        "the rollback journal {path} was written by a newer xorbctl (journal schema {found}, this xorbctl knows \
         {known}); use the newer xorbctl"
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error(
        "rollback journal {path}: could not {op}: {source}{}",
        refusal.as_deref().map(|r| format!(" ({r})")).unwrap_or_default()
    )]
    Sql {
        path: PathBuf,
        op: &'static str,
        source: rusqlite::Error,
        /// Why the journal's directory refuses writes, when SQLite's error was an I/O one and it does (see
        /// [`JournalError::sql`]).
        /// (Boxed: a `String` would make every `Result<_, JournalError>` larger than clippy's bound.)
        refusal: Option<Box<str>>,
    },
    #[error(
        "no rollback state in {0}: there is no journal.sqlite there (no run was ever started in it); check \
         --state-dir or XORB_STATE_DIR"
    )]
    NoJournal(PathBuf),
    #[error("no run {0:?} in the rollback journal; `xorbctl runs` lists the runs")]
    RunNotFound(String),
    #[error("{prefix:?} matches several runs ({}); give more of the run id", matches.join(", "))]
    Ambiguous {
        prefix: String,
        matches: Vec<String>,
    },
    #[error(
        "rollback journal {path}: the {what} cannot be read ({message}); was it written by another version?"
    )]
    Corrupt {
        path: PathBuf,
        what: String,
        message: String,
    },
}

impl JournalError {
    /// A failed operation on the journal at `path`. SQLite reports any failed write as "disk I/O error", which sends
    /// an operator after a failing disk when the file system turned read-only (or the directory became
    /// unwritable): after an I/O error the journal's directory is asked, and the error says why it refuses writes.
    pub(crate) fn sql(path: &Path, op: &'static str, source: rusqlite::Error) -> JournalError {
        JournalError::Sql {
            refusal: write_refusal(path, &source).map(String::into_boxed_str),
            path: path.to_path_buf(),
            op,
            source,
        }
    }

    /// This error's exit code (`docs/exit-codes.md`).
    pub fn exit(&self) -> xorb_model::exit::Exit {
        use xorb_model::exit::Exit;
        match self {
            JournalError::RunNotFound(_) | JournalError::Ambiguous { .. } => Exit::BadInput,
            JournalError::NoJournal(_) => Exit::Refused,
            JournalError::StateDir { .. }
            | JournalError::Open { .. }
            | JournalError::NotWal { .. }
            | JournalError::NewerSchema { .. }
            | JournalError::Sql { .. }
            | JournalError::Corrupt { .. } => Exit::Other,
        }
    }
}

/// Why the directory of the journal at `path` refuses a new file, if it does and `e` is an I/O error. Asked with
/// an unnamed temporary file (O_TMPFILE: nothing to clean up), never by opening the journal's own files: closing
/// a descriptor of the database would drop the locks SQLite holds on it.
fn write_refusal(path: &Path, e: &rusqlite::Error) -> Option<String> {
    use rusqlite::ErrorCode as C;
    use std::os::unix::fs::OpenOptionsExt;
    if !matches!(
        e.sqlite_error_code(),
        Some(C::SystemIoFailure | C::ReadOnly | C::CannotOpen)
    ) {
        return None;
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let refused = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_TMPFILE)
        .mode(0o600)
        .open(dir)
        .err()?;
    // A file system without unnamed temporary files tells nothing either way.
    let unsupported = [nix::libc::EOPNOTSUPP, nix::libc::EISDIR, nix::libc::EINVAL];
    if refused
        .raw_os_error()
        .is_some_and(|c| unsupported.contains(&c))
    {
        return None;
    }
    Some(format!(
        "its directory {} refuses writes: {refused}",
        dir.display()
    ))
}

/// A read-only connection to `<state_dir>/journal.sqlite`. Where the directory is read-only and the journal's
/// `-shm` file is gone (its last writer closed it cleanly, checkpointing the WAL into the database file), a WAL
/// reader cannot create the `-shm` it needs: the journal is then opened as immutable, which reads the database
/// file alone, and that file then holds everything.
pub fn connect_read_only(state_dir: &Path) -> Result<(Connection, PathBuf), JournalError> {
    use rusqlite::OpenFlags;
    let path = state_dir.join(JOURNAL_FILE);
    if !path.is_file() {
        return Err(JournalError::NoJournal(state_dir.to_path_buf()));
    }
    let open_err = |source| JournalError::Open {
        path: path.clone(),
        source,
    };
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let readable = |c: &Connection| {
        c.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
            r.get::<_, i64>(0)
        })
    };
    let conn = Connection::open_with_flags(&path, flags).map_err(open_err)?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(open_err)?;
    if readable(&conn).is_ok() {
        return Ok((conn, path));
    }
    let wal_pending =
        std::fs::metadata(state_dir.join(format!("{JOURNAL_FILE}-wal"))).is_ok_and(|m| m.len() > 0);
    if wal_pending {
        // Immutable would silently skip the WAL's committed transactions: say so rather than show stale runs.
        return Err(open_err(readable(&conn).unwrap_err()));
    }
    let uri = format!("file:{}?immutable=1", uri_path(&path));
    let conn = Connection::open_with_flags(uri, flags).map_err(open_err)?;
    readable(&conn).map_err(open_err)?;
    Ok((conn, path))
}

/// `path` for a `file:` URI: the characters a URI gives a meaning to are escaped.
fn uri_path(path: &Path) -> String {
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        match c {
            '%' => out.push_str("%25"),
            '?' => out.push_str("%3f"),
            '#' => out.push_str("%23"),
            c => out.push(c),
        }
    }
    out
}

/// A step's state in the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Not started.
    Pending,
    /// Intent journaled, outcome not: the step was acting when the run stopped (or is acting now).
    InFlight,
    Succeeded,
    AlreadyDone,
    Skipped,
    Failed,
}

impl StepState {
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Pending => "pending",
            StepState::InFlight => "in_flight",
            StepState::Succeeded => "succeeded",
            StepState::AlreadyDone => "already_done",
            StepState::Skipped => "skipped",
            StepState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<StepState> {
        Some(match s {
            "pending" => StepState::Pending,
            "in_flight" => StepState::InFlight,
            "succeeded" => StepState::Succeeded,
            "already_done" => StepState::AlreadyDone,
            "skipped" => StepState::Skipped,
            "failed" => StepState::Failed,
            _ => return None,
        })
    }

    /// Succeeded, already done or skipped: nothing more to do for this step.
    pub fn is_done(self) -> bool {
        matches!(
            self,
            StepState::Succeeded | StepState::AlreadyDone | StepState::Skipped
        )
    }

    pub fn from_outcome(outcome: &StepOutcome) -> StepState {
        match outcome {
            StepOutcome::Succeeded { .. } => StepState::Succeeded,
            StepOutcome::AlreadyDone { .. } => StepState::AlreadyDone,
            StepOutcome::Skipped { .. } => StepState::Skipped,
            StepOutcome::Failed { .. } => StepState::Failed,
        }
    }
}

/// A step of a run as journaled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub index: usize,
    pub spec: StepSpec,
    pub state: StepState,
    /// How many times the step was started (intents journaled), across resumes.
    pub attempts: u32,
    /// Start of the latest attempt.
    pub started_at: Option<DateTime<Utc>>,
    /// When the latest outcome was journaled.
    pub finished_at: Option<DateTime<Utc>>,
    /// The latest outcome.
    pub outcome: Option<StepOutcome>,
}

impl StepRecord {
    /// Duration of the latest attempt, when it has finished.
    pub fn duration_ms(&self) -> Option<u64> {
        let (s, f) = (self.started_at?, self.finished_at?);
        Some(u64::try_from((f - s).num_milliseconds()).unwrap_or(0))
    }
}

/// A run in the list of runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub id: String,
    pub from: String,
    pub to: String,
    pub scope: Option<String>,
    pub status: RunStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub steps_total: usize,
    pub steps_done: usize,
    pub run_dir: PathBuf,
}

/// Everything the journal knows about a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: String,
    pub plan: Plan,
    pub status: RunStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When the run last reached a final or stopped status (succeeded, failed, aborted…).
    pub finished_at: Option<DateTime<Utc>>,
    /// The run's artifacts directory.
    pub run_dir: PathBuf,
    pub steps: Vec<StepRecord>,
    pub events: Vec<EventRecord>,
}

impl RunRecord {
    /// The index of the first step that is not done, if any.
    pub fn first_open_step(&self) -> Option<usize> {
        self.steps.iter().position(|s| !s.state.is_done())
    }

    pub fn step(&self, id: &str) -> Option<&StepRecord> {
        self.steps.iter().find(|s| s.spec.id == id)
    }

    pub fn summary(&self) -> RunSummary {
        RunSummary {
            id: self.id.clone(),
            from: self.plan.from.clone(),
            to: self.plan.to.clone(),
            scope: self.plan.scope.clone(),
            status: self.status.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
            finished_at: self.finished_at,
            steps_total: self.steps.len(),
            steps_done: self.steps.iter().filter(|s| s.state.is_done()).count(),
            run_dir: self.run_dir.clone(),
        }
    }
}

/// `value` as JSON with every string redacted: done on the value, not the text, so the stored JSON stays valid
/// whatever characters the secret has.
fn redacted_json<T: Serialize>(red: &Redactor, value: &T) -> Result<String, serde_json::Error> {
    let mut v = serde_json::to_value(value)?;
    red.redact_json_in_place(&mut v);
    serde_json::to_string(&v)
}

/// The current time at the journal's precision (microseconds), so that what is journaled reads back identical.
///
/// Strictly increasing within a process: two events journaled in the same microsecond would otherwise share a
/// stamp, and their order (the timeline, a step's duration, which attempt came first) would then depend on how
/// fast the machine was. A wall clock stepped back by NTP stalls the stamps a little instead of reordering them.
pub fn now() -> DateTime<Utc> {
    use std::sync::atomic::{AtomicI64, Ordering};
    static LAST: AtomicI64 = AtomicI64::new(i64::MIN);
    let wall = Utc::now().timestamp_micros();
    let mut last = LAST.load(Ordering::Relaxed);
    let stamp = loop {
        let next = wall.max(last.saturating_add(1));
        match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => break next,
            Err(seen) => last = seen,
        }
    };
    DateTime::from_timestamp_micros(stamp).unwrap_or_else(|| Utc::now().trunc_subsecs(6))
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The journal of a state directory. Writes take `&mut self`: one connection, one writer.
pub struct Journal {
    conn: Connection,
    /// Everything written goes through it: the journal never holds a secret (see `set_redactor`).
    redactor: Redactor,
    path: PathBuf,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("path", &self.path).finish()
    }
}

impl Journal {
    /// Opens (creating if needed) `<state_dir>/journal.sqlite`.
    pub fn open(state_dir: &Path) -> Result<Journal, JournalError> {
        crate::private::create_dir_all(state_dir).map_err(|source| JournalError::StateDir {
            path: state_dir.to_path_buf(),
            source,
        })?;
        Self::open_file(&state_dir.join(JOURNAL_FILE))
    }

    /// Opens `<state_dir>/journal.sqlite` for reading only, creating nothing (not even the directory): what
    /// `runs`, `show` and `report` use, so they work on a read-only state directory and do not leave a journal
    /// behind in a directory that had none.
    pub fn open_read_only(state_dir: &Path) -> Result<Journal, JournalError> {
        let (conn, path) = connect_read_only(state_dir)?;
        let journal = Journal {
            conn,
            path,
            redactor: Redactor::new(),
        };
        if journal.schema_version()? < SCHEMA_VERSION {
            // Created but never given its tables (its creator was killed first): it holds no run. Read it as
            // an empty journal, without writing to it.
            let empty = Journal {
                conn: Connection::open_in_memory().map_err(|source| JournalError::Open {
                    path: journal.path.clone(),
                    source,
                })?,
                path: journal.path,
                redactor: Redactor::new(),
            };
            empty.migrate()?;
            return Ok(empty);
        }
        Ok(journal)
    }

    /// Opens (creating if needed) a journal database at `path`.
    pub fn open_file(path: &Path) -> Result<Journal, JournalError> {
        let open_err = |source| JournalError::Open {
            path: path.to_path_buf(),
            source,
        };
        // Created 0600 before SQLite opens it: SQLite gives the -wal and -shm files the database file's mode.
        crate::private::create_file(path).map_err(|source| JournalError::StateDir {
            path: path.to_path_buf(),
            source,
        })?;
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(open_err)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(JournalError::NotWal {
                path: path.to_path_buf(),
                mode,
            });
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        let journal = Journal {
            conn,
            path: path.to_path_buf(),
            redactor: Redactor::new(),
        };
        journal.migrate()?;
        Ok(journal)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Redacts everything this journal writes from now on (plans, outcomes, statuses, events) with `redactor`.
    /// A plan read back from a redacted journal holds `[REDACTED]` where a secret was: the runner must take
    /// such values from their source again (the local runner does, from the target release).
    pub fn set_redactor(&mut self, redactor: Redactor) {
        self.redactor = redactor;
    }

    fn sql(&self, op: &'static str) -> impl FnOnce(rusqlite::Error) -> JournalError + '_ {
        move |source| JournalError::sql(&self.path, op, source)
    }

    fn corrupt(&self, what: impl Into<String>, message: impl ToString) -> JournalError {
        JournalError::Corrupt {
            path: self.path.clone(),
            what: what.into(),
            message: message.to_string(),
        }
    }

    /// The journal's schema version; one written by a newer xorbctl is refused.
    fn schema_version(&self) -> Result<i64, JournalError> {
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(self.sql("read the schema version"))?;
        if version > SCHEMA_VERSION {
            return Err(JournalError::NewerSchema {
                path: self.path.clone(),
                found: version,
                known: SCHEMA_VERSION,
            });
        }
        Ok(version)
    }

    fn migrate(&self) -> Result<(), JournalError> {
        let version = self.schema_version()?;
        if version == SCHEMA_VERSION {
            return Ok(());
        }
        // Schema creation is not a journal boundary (no run data): it does not count for the crash hook.
        self.conn
            .execute_batch(
                "BEGIN IMMEDIATE;
                 CREATE TABLE IF NOT EXISTS runs (
                     id TEXT PRIMARY KEY,
                     from_release TEXT NOT NULL,
                     to_release TEXT NOT NULL,
                     scope TEXT,
                     plan_json TEXT NOT NULL,
                     status TEXT NOT NULL,
                     status_json TEXT NOT NULL,
                     run_dir TEXT NOT NULL,
                     created_at TEXT NOT NULL,
                     updated_at TEXT NOT NULL,
                     finished_at TEXT
                 );
                 CREATE TABLE IF NOT EXISTS steps (
                     run_id TEXT NOT NULL REFERENCES runs(id),
                     idx INTEGER NOT NULL,
                     step_id TEXT NOT NULL,
                     state TEXT NOT NULL,
                     attempts INTEGER NOT NULL DEFAULT 0,
                     started_at TEXT,
                     finished_at TEXT,
                     outcome_json TEXT,
                     PRIMARY KEY (run_id, idx)
                 );
                 CREATE TABLE IF NOT EXISTS events (
                     seq INTEGER PRIMARY KEY AUTOINCREMENT,
                     run_id TEXT NOT NULL REFERENCES runs(id),
                     ts TEXT NOT NULL,
                     kind TEXT NOT NULL,
                     data_json TEXT NOT NULL
                 );
                 CREATE INDEX IF NOT EXISTS events_by_run ON events(run_id, seq);
                 PRAGMA user_version = 1;
                 COMMIT;",
            )
            .map_err(self.sql("create the journal tables"))
    }

    /// Runs `f` in its own IMMEDIATE transaction and commits it: one journal boundary.
    fn write<T>(
        &mut self,
        op: &'static str,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, rusqlite::Error>,
    ) -> Result<T, JournalError> {
        let path = self.path.clone();
        let err = |source| JournalError::sql(&path, op, source);
        let tx = Transaction::new(&mut self.conn, TransactionBehavior::Immediate).map_err(err)?;
        let value = f(&tx).map_err(err)?;
        tx.commit().map_err(err)?;
        crash::after_commit();
        Ok(value)
    }

    fn insert_event(
        tx: &Transaction<'_>,
        red: &Redactor,
        run_id: &str,
        at: DateTime<Utc>,
        event: &Event,
    ) -> rusqlite::Result<i64> {
        let data = redacted_json(red, event)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        tx.prepare_cached(
            "INSERT INTO events (run_id, ts, kind, data_json) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![run_id, ts(at), event.kind(), data])?;
        Ok(tx.last_insert_rowid())
    }

    fn record(seq: i64, run_id: &str, at: DateTime<Utc>, event: Event) -> EventRecord {
        EventRecord {
            seq,
            run_id: run_id.to_string(),
            at,
            event,
        }
    }

    /// Journals a new run: its plan, every step pending, status `Running`, and `event` (RunStarted), all at
    /// `created_at`.
    pub fn create_run(
        &mut self,
        run_id: &str,
        plan: &Plan,
        run_dir: &Path,
        created_at: DateTime<Utc>,
        event: Event,
    ) -> Result<EventRecord, JournalError> {
        let now = created_at;
        let plan_json = redacted_json(&self.redactor, plan).map_err(|e| self.corrupt("plan", e))?;
        let status_json = redacted_json(&self.redactor, &RunStatus::Running)
            .map_err(|e| self.corrupt("status", e))?;
        let red = self.redactor.clone();
        let seq = self.write("create the run", |tx| {
            tx.prepare_cached(
                "INSERT INTO runs (id, from_release, to_release, scope, plan_json, status, status_json, run_dir,
                                   created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'running', ?6, ?7, ?8, ?8)")?.execute(
                params![
                    run_id,
                    plan.from,
                    plan.to,
                    plan.scope,
                    plan_json,
                    status_json,
                    run_dir.to_string_lossy(),
                    ts(now)
                ],
            )?;
            {
                let mut stmt = tx.prepare(
                    "INSERT INTO steps (run_id, idx, step_id, state, attempts) VALUES (?1, ?2, ?3, 'pending', 0)",
                )?;
                for (i, step) in plan.steps.iter().enumerate() {
                    stmt.execute(params![run_id, i as i64, step.id])?;
                }
            }
            Self::insert_event(tx, &red, run_id, now, &event)
        })?;
        Ok(Self::record(seq, run_id, now, event))
    }

    /// Journals a step's intent: attempt `attempt` is about to act.
    pub fn record_intent(
        &mut self,
        run_id: &str,
        index: usize,
        attempt: u32,
        event: Event,
    ) -> Result<EventRecord, JournalError> {
        let now = now();
        let red = self.redactor.clone();
        let seq = self.write("journal the step's intent", |tx| {
            let n = tx.prepare_cached(
                "UPDATE steps SET state = 'in_flight', attempts = ?3, started_at = ?4, finished_at = NULL
                 WHERE run_id = ?1 AND idx = ?2")?.execute(
                params![run_id, index as i64, attempt, ts(now)],
            )?;
            if n != 1 {
                return Err(rusqlite::Error::QueryReturnedNoRows);
            }
            tx.prepare_cached("UPDATE runs SET updated_at = ?2 WHERE id = ?1")?.execute( params![run_id, ts(now)])?;
            Self::insert_event(tx, &red, run_id, now, &event)
        })?;
        Ok(Self::record(seq, run_id, now, event))
    }

    /// Journals a step's outcome.
    pub fn record_outcome(
        &mut self,
        run_id: &str,
        index: usize,
        outcome: &StepOutcome,
        event: Event,
    ) -> Result<EventRecord, JournalError> {
        let now = now();
        let outcome_json =
            redacted_json(&self.redactor, outcome).map_err(|e| self.corrupt("outcome", e))?;
        let state = StepState::from_outcome(outcome).as_str();
        let red = self.redactor.clone();
        let seq = self.write("journal the step's outcome", |tx| {
            let n = tx
                .prepare_cached(
                    "UPDATE steps SET state = ?3, finished_at = ?4, outcome_json = ?5,
                                  started_at = COALESCE(started_at, ?4)
                 WHERE run_id = ?1 AND idx = ?2",
                )?
                .execute(params![run_id, index as i64, state, ts(now), outcome_json])?;
            if n != 1 {
                return Err(rusqlite::Error::QueryReturnedNoRows);
            }
            tx.prepare_cached("UPDATE runs SET updated_at = ?2 WHERE id = ?1")?
                .execute(params![run_id, ts(now)])?;
            Self::insert_event(tx, &red, run_id, now, &event)
        })?;
        Ok(Self::record(seq, run_id, now, event))
    }

    /// Journals an event that changes no state.
    pub fn append_event(
        &mut self,
        run_id: &str,
        event: Event,
    ) -> Result<EventRecord, JournalError> {
        let now = now();
        let red = self.redactor.clone();
        let seq = self.write("journal an event", |tx| {
            tx.prepare_cached("UPDATE runs SET updated_at = ?2 WHERE id = ?1")?
                .execute(params![run_id, ts(now)])?;
            Self::insert_event(tx, &red, run_id, now, &event)
        })?;
        Ok(Self::record(seq, run_id, now, event))
    }

    /// Sets the run's status (with `event`), unless the run was aborted meanwhile: an abort is final and is never
    /// overwritten. Returns `None` (and journals nothing) in that case.
    pub fn set_status(
        &mut self,
        run_id: &str,
        status: &RunStatus,
        event: Event,
    ) -> Result<Option<EventRecord>, JournalError> {
        let now = now();
        let status_json =
            redacted_json(&self.redactor, status).map_err(|e| self.corrupt("status", e))?;
        let finished = if matches!(status, RunStatus::Running) {
            None
        } else {
            Some(ts(now))
        };
        let red = self.redactor.clone();
        let seq = self.write("journal the run's status", |tx| {
            let n = tx.prepare_cached(
                "UPDATE runs SET status = ?2, status_json = ?3, updated_at = ?4, finished_at = ?5
                 WHERE id = ?1 AND status <> 'aborted'")?.execute(
                params![run_id, status.kind(), status_json, ts(now), finished],
            )?;
            if n == 0 {
                return Ok(None);
            }
            Self::insert_event(tx, &red, run_id, now, &event).map(Some)
        })?;
        Ok(seq.map(|seq| Self::record(seq, run_id, now, event)))
    }

    /// Marks a run aborted by `by` (final), unless it already succeeded or was aborted; returns the status the
    /// run has afterwards and whether this call aborted it.
    pub fn abort_run(&mut self, run_id: &str, by: &str) -> Result<(RunStatus, bool), JournalError> {
        let now = now();
        let current = self.status(run_id)?;
        if current.is_final() {
            return Ok((current, false));
        }
        let step = current
            .stopped_at()
            .map(str::to_string)
            .or_else(|| self.in_flight_step(run_id).ok().flatten());
        let status = RunStatus::Aborted {
            by: by.to_string(),
            step,
        };
        let status_json =
            redacted_json(&self.redactor, &status).map_err(|e| self.corrupt("status", e))?;
        let event = Event::AbortRequested { by: by.to_string() };
        let red = self.redactor.clone();
        let done = self.write("journal the abort", |tx| {
            let n = tx.prepare_cached(
                "UPDATE runs SET status = 'aborted', status_json = ?2, updated_at = ?3, finished_at = ?3
                 WHERE id = ?1 AND status NOT IN ('aborted', 'succeeded')")?.execute(
                params![run_id, status_json, ts(now)],
            )?;
            if n == 1 {
                Self::insert_event(tx, &red, run_id, now, &event)?;
            }
            Ok(n == 1)
        })?;
        if done {
            Ok((status, true))
        } else {
            Ok((self.status(run_id)?, false))
        }
    }

    fn in_flight_step(&self, run_id: &str) -> Result<Option<String>, JournalError> {
        self.conn
            .query_row(
                "SELECT step_id FROM steps WHERE run_id = ?1 AND state IN ('in_flight', 'failed') ORDER BY idx LIMIT 1",
                [run_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sql("read the steps"))
    }

    /// The run's current status (one small read; the executor checks it between steps to notice an abort).
    pub fn status(&self, run_id: &str) -> Result<RunStatus, JournalError> {
        let json: Option<String> = self
            .conn
            .prepare_cached("SELECT status_json FROM runs WHERE id = ?1")
            .and_then(|mut stmt| stmt.query_row([run_id], |r| r.get(0)).optional())
            .map_err(self.sql("read the run's status"))?;
        let json = json.ok_or_else(|| JournalError::RunNotFound(run_id.to_string()))?;
        serde_json::from_str(&json).map_err(|e| self.corrupt(format!("status of run {run_id}"), e))
    }

    /// Finds a run by exact id, by unique prefix, or `latest` / `last` for the most recent run.
    pub fn resolve_run_id(&self, text: &str) -> Result<String, JournalError> {
        let text = text.trim();
        if text == "latest" || text == "last" {
            return self
                .conn
                .query_row(
                    "SELECT id FROM runs ORDER BY created_at DESC, id DESC LIMIT 1",
                    [],
                    |r| r.get(0),
                )
                .optional()
                .map_err(self.sql("list the runs"))?
                .ok_or_else(|| JournalError::RunNotFound(text.to_string()));
        }
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id FROM runs WHERE id = ?1 OR substr(id, 1, length(?1)) = ?1 ORDER BY id",
            )
            .map_err(self.sql("list the runs"))?;
        let ids: Vec<String> = stmt
            .query_map([text], |r| r.get(0))
            .map_err(self.sql("list the runs"))?
            .collect::<Result<_, _>>()
            .map_err(self.sql("list the runs"))?;
        if ids.iter().any(|i| i == text) {
            return Ok(text.to_string());
        }
        match ids.len() {
            0 => Err(JournalError::RunNotFound(text.to_string())),
            1 => Ok(ids.into_iter().next().unwrap_or_default()),
            _ => Err(JournalError::Ambiguous {
                prefix: text.to_string(),
                matches: ids,
            }),
        }
    }

    fn parse_ts(&self, what: &str, s: &str) -> Result<DateTime<Utc>, JournalError> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| self.corrupt(what, e))
    }

    fn parse_opt_ts(
        &self,
        what: &str,
        s: Option<String>,
    ) -> Result<Option<DateTime<Utc>>, JournalError> {
        s.map(|s| self.parse_ts(what, &s)).transpose()
    }

    /// Every run, most recent first.
    pub fn list_runs(&self) -> Result<Vec<RunSummary>, JournalError> {
        type Row = (
            String,
            String,
            String,
            Option<String>,
            String,
            String,
            String,
            Option<String>,
            String,
            i64,
            i64,
        );
        let mut stmt = self
            .conn
            .prepare(
                "SELECT r.id, r.from_release, r.to_release, r.scope, r.status_json, r.created_at, r.updated_at,
                        r.finished_at, r.run_dir,
                        (SELECT COUNT(*) FROM steps s WHERE s.run_id = r.id),
                        (SELECT COUNT(*) FROM steps s WHERE s.run_id = r.id
                            AND s.state IN ('succeeded', 'already_done', 'skipped'))
                 FROM runs r ORDER BY r.created_at DESC, r.id DESC",
            )
            .map_err(self.sql("list the runs"))?;
        let rows: Vec<Row> = stmt
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                    r.get(9)?,
                    r.get(10)?,
                ))
            })
            .map_err(self.sql("list the runs"))?
            .collect::<Result<_, _>>()
            .map_err(self.sql("list the runs"))?;
        rows.into_iter()
            .map(
                |(
                    id,
                    from,
                    to,
                    scope,
                    status,
                    created,
                    updated,
                    finished,
                    run_dir,
                    total,
                    done,
                )| {
                    Ok(RunSummary {
                        status: serde_json::from_str(&status)
                            .map_err(|e| self.corrupt(format!("status of run {id}"), e))?,
                        created_at: self.parse_ts("run timestamp", &created)?,
                        updated_at: self.parse_ts("run timestamp", &updated)?,
                        finished_at: self.parse_opt_ts("run timestamp", finished)?,
                        steps_total: usize::try_from(total).unwrap_or(0),
                        steps_done: usize::try_from(done).unwrap_or(0),
                        run_dir: PathBuf::from(run_dir),
                        id,
                        from,
                        to,
                        scope,
                    })
                },
            )
            .collect()
    }

    /// Everything about one run: plan, status, steps and events.
    pub fn load_run(&self, run_id: &str) -> Result<RunRecord, JournalError> {
        type Row = (String, String, String, String, Option<String>, String);
        let row: Option<Row> = self
            .conn
            .query_row(
                "SELECT plan_json, status_json, created_at, updated_at, finished_at, run_dir FROM runs WHERE id = ?1",
                [run_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
            )
            .optional()
            .map_err(self.sql("read the run"))?;
        let (plan_json, status_json, created, updated, finished, run_dir) =
            row.ok_or_else(|| JournalError::RunNotFound(run_id.to_string()))?;
        let plan: Plan = serde_json::from_str(&plan_json)
            .map_err(|e| self.corrupt(format!("plan of run {run_id}"), e))?;
        let status: RunStatus = serde_json::from_str(&status_json)
            .map_err(|e| self.corrupt(format!("status of run {run_id}"), e))?;

        type StepRow = (
            i64,
            String,
            String,
            i64,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let mut stmt = self
            .conn
            .prepare(
                "SELECT idx, step_id, state, attempts, started_at, finished_at, outcome_json
                 FROM steps WHERE run_id = ?1 ORDER BY idx",
            )
            .map_err(self.sql("read the steps"))?;
        let rows: Vec<StepRow> = stmt
            .query_map([run_id], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            })
            .map_err(self.sql("read the steps"))?
            .collect::<Result<_, _>>()
            .map_err(self.sql("read the steps"))?;
        if rows.len() != plan.steps.len() {
            return Err(self.corrupt(
                format!("steps of run {run_id}"),
                format!(
                    "{} steps journaled for a plan of {}",
                    rows.len(),
                    plan.steps.len()
                ),
            ));
        }
        let mut steps = Vec::with_capacity(rows.len());
        for ((idx, step_id, state, attempts, started, finished_s, outcome), spec) in
            rows.into_iter().zip(&plan.steps)
        {
            if step_id != spec.id || usize::try_from(idx).ok() != Some(steps.len()) {
                return Err(self.corrupt(
                    format!("steps of run {run_id}"),
                    format!("step #{idx} is {step_id:?}, the plan says {:?}", spec.id),
                ));
            }
            let state = StepState::parse(&state).ok_or_else(|| {
                self.corrupt(format!("step {step_id}"), format!("state {state:?}"))
            })?;
            let outcome: Option<StepOutcome> = outcome
                .map(|o| serde_json::from_str(&o))
                .transpose()
                .map_err(|e| self.corrupt(format!("outcome of step {step_id}"), e))?;
            steps.push(StepRecord {
                index: steps.len(),
                spec: spec.clone(),
                state,
                attempts: u32::try_from(attempts).unwrap_or(0),
                started_at: self.parse_opt_ts("step timestamp", started)?,
                finished_at: self.parse_opt_ts("step timestamp", finished_s)?,
                outcome,
            });
        }

        let mut stmt = self
            .conn
            .prepare("SELECT seq, ts, data_json FROM events WHERE run_id = ?1 ORDER BY seq")
            .map_err(self.sql("read the events"))?;
        let rows: Vec<(i64, String, String)> = stmt
            .query_map([run_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(self.sql("read the events"))?
            .collect::<Result<_, _>>()
            .map_err(self.sql("read the events"))?;
        let mut events = Vec::with_capacity(rows.len());
        for (seq, at, data) in rows {
            let event: Event = serde_json::from_str(&data)
                .map_err(|e| self.corrupt(format!("event #{seq}"), e))?;
            events.push(EventRecord {
                seq,
                run_id: run_id.to_string(),
                at: self.parse_ts("event timestamp", &at)?,
                event,
            });
        }

        Ok(RunRecord {
            id: run_id.to_string(),
            plan,
            status,
            created_at: self.parse_ts("run timestamp", &created)?,
            updated_at: self.parse_ts("run timestamp", &updated)?,
            finished_at: self.parse_opt_ts("run timestamp", finished)?,
            run_dir: PathBuf::from(run_dir),
            steps,
            events,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xorb_model::plan::{Action, Phase, Safety};

    #[test]
    fn stamps_never_tie_even_from_many_threads_in_the_same_microsecond() {
        let stamps: Vec<DateTime<Utc>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..2000).map(|_| now()).collect::<Vec<_>>()))
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let mut sorted = stamps.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), stamps.len(), "two calls shared a stamp");
        assert!(
            stamps
                .iter()
                .all(|t| t.timestamp_subsec_nanos() % 1000 == 0)
        );
    }

    fn plan() -> Plan {
        Plan::new("v2025.08-rc1", "v2025.07-stable")
            .with_step(StepSpec::new(
                "1.capture",
                Phase::Assessment,
                "Capture",
                Action::CaptureState,
                Safety::Idempotent,
            ))
            .with_step(StepSpec::new(
                "2.api.image",
                Phase::Services,
                "api",
                Action::SetImage {
                    service: "api".into(),
                    image: "xorb/api:s".into(),
                    release: "s".into(),
                },
                Safety::Probed,
            ))
    }

    fn started(p: &Plan) -> Event {
        Event::RunStarted {
            from: p.from.clone(),
            to: p.to.clone(),
            scope: None,
            restore_of: None,
            steps: p.steps.len(),
            run_dir: "d".into(),
            log_file: "l".into(),
        }
    }

    #[test]
    fn journal_is_wal_with_full_sync() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let mode: String = j
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        let sync: i64 = j
            .conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(sync, 2, "synchronous=FULL");
        assert!(dir.path().join(JOURNAL_FILE).exists());
    }

    #[test]
    fn a_run_is_journaled_step_by_step_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path()).unwrap();
        let p = plan();
        j.create_run(
            "r1",
            &p,
            &dir.path().join("runs/r1"),
            Utc::now(),
            started(&p),
        )
        .unwrap();
        let rec = j.load_run("r1").unwrap();
        assert_eq!(rec.status, RunStatus::Running);
        assert_eq!(rec.steps.len(), 2);
        assert!(
            rec.steps
                .iter()
                .all(|s| s.state == StepState::Pending && s.attempts == 0)
        );
        assert_eq!(rec.first_open_step(), Some(0));

        j.record_intent(
            "r1",
            0,
            1,
            Event::StepStarted {
                index: 0,
                step: "1.capture".into(),
                title: "t".into(),
                attempt: 1,
            },
        )
        .unwrap();
        let rec = j.load_run("r1").unwrap();
        assert_eq!(rec.steps[0].state, StepState::InFlight);
        assert_eq!(rec.steps[0].attempts, 1);
        assert!(rec.steps[0].started_at.is_some() && rec.steps[0].finished_at.is_none());

        let ok = StepOutcome::succeeded("captured");
        j.record_outcome(
            "r1",
            0,
            &ok,
            Event::StepFinished {
                index: 0,
                step: "1.capture".into(),
                attempt: 1,
                outcome: ok.clone(),
                duration_ms: 3,
            },
        )
        .unwrap();
        let rec = j.load_run("r1").unwrap();
        assert_eq!(rec.steps[0].state, StepState::Succeeded);
        assert_eq!(rec.steps[0].outcome, Some(ok));
        assert_eq!(rec.first_open_step(), Some(1));
        assert_eq!(rec.events.len(), 3);
        assert!(rec.events.windows(2).all(|w| w[0].seq < w[1].seq));

        let runs = j.list_runs().unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!((runs[0].steps_total, runs[0].steps_done), (2, 1));
    }

    #[test]
    fn abort_is_final_and_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path()).unwrap();
        let p = plan();
        j.create_run("r1", &p, dir.path(), Utc::now(), started(&p))
            .unwrap();
        let (status, changed) = j.abort_run("r1", "alice").unwrap();
        assert!(changed);
        assert_eq!(
            status,
            RunStatus::Aborted {
                by: "alice".into(),
                step: None
            }
        );
        let fin = Event::RunFinished {
            status: RunStatus::Succeeded,
            duration_ms: 1,
            next: String::new(),
        };
        assert!(
            j.set_status("r1", &RunStatus::Succeeded, fin)
                .unwrap()
                .is_none()
        );
        assert_eq!(j.status("r1").unwrap().kind(), "aborted");
        let (_, changed) = j.abort_run("r1", "bob").unwrap();
        assert!(!changed);
        assert!(j.load_run("r1").unwrap().finished_at.is_some());
    }

    #[test]
    fn runs_are_found_by_prefix_and_latest() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path()).unwrap();
        let p = plan();
        j.create_run(
            "20250814-100000-aaaa",
            &p,
            dir.path(),
            Utc::now(),
            started(&p),
        )
        .unwrap();
        j.create_run(
            "20250814-100000-aabb",
            &p,
            dir.path(),
            Utc::now(),
            started(&p),
        )
        .unwrap();
        assert_eq!(
            j.resolve_run_id("20250814-100000-aaaa").unwrap(),
            "20250814-100000-aaaa"
        );
        assert_eq!(
            j.resolve_run_id("20250814-100000-aab").unwrap(),
            "20250814-100000-aabb"
        );
        assert!(matches!(
            j.resolve_run_id("20250814"),
            Err(JournalError::Ambiguous { .. })
        ));
        assert!(matches!(
            j.resolve_run_id("nope"),
            Err(JournalError::RunNotFound(_))
        ));
        assert_eq!(j.resolve_run_id("latest").unwrap(), "20250814-100000-aabb");
        let msg = j.load_run("nope").unwrap_err().to_string();
        assert!(msg.contains("xorbctl runs"), "{msg}");
    }

    #[test]
    fn a_second_connection_sees_committed_writes() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Journal::open(dir.path()).unwrap();
        let b = Journal::open(dir.path()).unwrap();
        let p = plan();
        a.create_run("r1", &p, dir.path(), Utc::now(), started(&p))
            .unwrap();
        assert_eq!(b.status("r1").unwrap(), RunStatus::Running);
        let mut b = b;
        b.abort_run("r1", "ops").unwrap();
        assert_eq!(a.status("r1").unwrap().kind(), "aborted");
    }

    #[test]
    fn the_journal_and_its_wal_are_owner_only_and_the_state_dir_too() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let mut j = Journal::open(&state).unwrap();
        let p = plan();
        j.create_run("r1", &p, &state.join("runs/r1"), now(), started(&p))
            .unwrap();
        let mode = |f: &str| {
            std::fs::metadata(state.join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(""), 0o700);
        assert_eq!(mode(JOURNAL_FILE), 0o600);
        assert_eq!(mode("journal.sqlite-wal"), 0o600);
        assert_eq!(mode("journal.sqlite-shm"), 0o600);
    }

    #[test]
    fn reading_creates_nothing_and_sees_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nothing-here");
        assert!(matches!(
            Journal::open_read_only(&missing),
            Err(JournalError::NoJournal(_))
        ));
        assert!(!missing.exists());
        // A journal file whose creator died before it had tables holds no run.
        std::fs::write(dir.path().join(JOURNAL_FILE), b"").unwrap();
        assert!(
            Journal::open_read_only(dir.path())
                .unwrap()
                .list_runs()
                .unwrap()
                .is_empty()
        );
        let mut j = Journal::open(dir.path()).unwrap();
        let p = plan();
        j.create_run("r1", &p, &dir.path().join("runs/r1"), now(), started(&p))
            .unwrap();
        let r = Journal::open_read_only(dir.path()).unwrap();
        assert_eq!(r.list_runs().unwrap().len(), 1);
        assert!(r.conn.execute("DELETE FROM events", []).is_err());
        drop(j);
        // After the last writer is gone, the read-only journal still reads (immutable when it must).
        let r = Journal::open_read_only(dir.path()).unwrap();
        assert_eq!(r.load_run("r1").unwrap().steps.len(), p.steps.len());
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        j.conn.pragma_update(None, "user_version", 99).unwrap();
        drop(j);
        let err = Journal::open(dir.path()).unwrap_err();
        assert!(
            matches!(err, JournalError::NewerSchema { found: 99, .. }),
            "{err}"
        );
    }

    #[test]
    fn an_io_error_says_why_the_journal_s_directory_refuses_writes() {
        let io = || {
            rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR_WRITE),
                Some("disk I/O error".into()),
            )
        };
        // A directory that takes new files: SQLite's words alone.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JOURNAL_FILE);
        let e = JournalError::sql(&path, "journal the step's outcome", io());
        assert_eq!(
            e.to_string(),
            format!(
                "rollback journal {}: could not journal the step's outcome: disk I/O error",
                path.display()
            )
        );
        // One that refuses them (here: gone; a read-only file system in tests/it/faults.rs): why, and where.
        let gone = dir.path().join("gone").join(JOURNAL_FILE);
        let msg = JournalError::sql(&gone, "journal the step's outcome", io()).to_string();
        assert!(
            msg.ends_with(&format!(
                "disk I/O error (its directory {} refuses writes: No such file or directory (os error 2))",
                dir.path().join("gone").display()
            )),
            "{msg}"
        );
        // Not an I/O error: the directory is not asked.
        let e = JournalError::sql(&gone, "read the run", rusqlite::Error::QueryReturnedNoRows);
        assert!(matches!(e, JournalError::Sql { refusal: None, .. }), "{e}");
    }
}
