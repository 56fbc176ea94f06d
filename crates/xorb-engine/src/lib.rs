//! xorb-engine: executes a rollback [`Plan`](xorb_model::plan::Plan) step by step with a durable journal, so that a
//! run killed at any moment can be resumed with no side effect done twice.
//!
//! - [`journal`]: the SQLite journal (WAL, `synchronous=FULL`) of runs, steps and events.
//! - [`runner`]: the [`StepRunner`] trait a target implements (probe, run, emergency).
//! - [`events`]: the [`Event`]s of a run and the [`EventSink`] trait for output.
//! - [`executor`]: the [`Engine`]: start, resume; intent → act → outcome per step; timeouts, retries, emergencies.
//! - [`lock`]: one rollback at a time per state directory (`flock`).
//! - [`logfile`]: the runbook's `rollback-YYYYMMDD-HHMMSS.log`.
//! - [`approvals`]: governance records of a run (gate, approvals, checklist ticks, release tag) in the journal.
//! - [`outbox`]: stakeholder notifications waiting for delivery, in the journal's file.
//! - [`crash`]: the `XORB_CRASH_AFTER_JOURNAL_WRITES` test hook.
//! - [`private`]: owner-only directories and files, created so.
//! - [`pause`]: the `XORB_PAUSE_IN_STEP` test hook (fault injection inside a step).
//!
//! Plugging a target in:
//! ```no_run
//! # use xorb_engine::*;
//! # use xorb_model::plan::*;
//! struct MyTarget;
//! impl StepRunner for MyTarget {
//!     async fn probe(&self, _step: &StepSpec, _ctx: &StepContext<'_>) -> Result<Probe, StepError> {
//!         Ok(Probe::Unknown { why: "no probe yet".into() })
//!     }
//!     async fn run(&self, step: &StepSpec, _ctx: &StepContext<'_>) -> Result<StepOutcome, StepError> {
//!         Ok(StepOutcome::succeeded(format!("did {}", step.action)))
//!     }
//!     async fn emergency(&self, p: EmergencyProcedure, _ctx: &StepContext<'_>) -> Result<String, StepError> {
//!         Ok(format!("applied {}", p.name()))
//!     }
//! }
//! # async fn demo(plan: Plan) -> Result<(), EngineError> {
//! let mut engine = Engine::new("/var/lib/xorb", MyTarget, PlainSink(std::io::stdout()))?;
//! let end = engine.start(plan).await?;
//! println!("{}: {}", end.status, end.next);
//! # Ok(()) }
//! ```

pub mod approvals;
pub mod audit_checkpoint;
pub mod compat;
pub mod crash;
pub mod disk_runs;
pub mod emergency;
pub mod events;
pub mod executor;
pub mod journal;
pub mod lock;
pub mod logfile;
pub mod outbox;
pub mod pause;
pub mod planner;
pub mod private;
pub mod runner;

use std::path::Path;

use serde::{Deserialize, Serialize};
use xorb_model::plan::RunStatus;

pub use events::{
    Confirmation, Event, EventRecord, EventSink, FnSink, JsonLinesSink, MemorySink, NullSink,
    PlainSink, format_duration_ms,
};
pub use executor::{
    Engine, EngineError, ResumeOptions, RunEnd, check_stored_plan, new_run_id, next_action, run_dir,
};
pub use journal::{Journal, JournalError, RunRecord, RunSummary, StepRecord, StepState};
pub use lock::{Holder, LockError, RollbackLock};
pub use logfile::LogFileSink;
pub use runner::{Probe, StepContext, StepError, StepRunner};

/// A run in `xorbctl runs`: its journaled summary, and whether a process is executing it right now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunListing {
    #[serde(flatten)]
    pub run: RunSummary,
    /// A live process holds the rollback lock for this run.
    pub active: bool,
    /// Journaled as running but no process executes it: it crashed or was killed; resume it.
    pub interrupted: bool,
}

fn is_active(state_dir: &Path, run_id: &str) -> Result<bool, EngineError> {
    Ok(lock::current_holder(state_dir)?.is_some_and(|h| h.run_id.as_deref() == Some(run_id)))
}

/// Every run of the state directory, most recent first (`xorbctl runs`).
pub fn list_runs(state_dir: &Path) -> Result<Vec<RunListing>, EngineError> {
    let journal = Journal::open_read_only(state_dir)?;
    let holder = lock::current_holder(state_dir)?;
    Ok(journal
        .list_runs()?
        .into_iter()
        .map(|run| {
            let active = holder
                .as_ref()
                .is_some_and(|h| h.run_id.as_deref() == Some(run.id.as_str()));
            let interrupted = run.status == RunStatus::Running && !active;
            RunListing {
                run,
                active,
                interrupted,
            }
        })
        .collect())
}

/// One run in full (`xorbctl show RUN`, `xorbctl report RUN`); `run` is an id, a unique prefix or `latest`.
pub fn load_run(state_dir: &Path, run: &str) -> Result<RunRecord, EngineError> {
    let journal = Journal::open_read_only(state_dir)?;
    let id = resolve(state_dir, &journal, run)?;
    Ok(journal.load_run(&id)?)
}

/// A run id from what the operator typed; a run that has a directory on disk but no record in the journal is
/// named as such, not as an unknown run (see `disk_runs`).
fn resolve(state_dir: &Path, journal: &Journal, run: &str) -> Result<String, EngineError> {
    match journal.resolve_run_id(run) {
        Err(JournalError::RunNotFound(text))
            if !text.is_empty()
                && !text.contains('/')
                && !text.starts_with('.')
                && run_dir(state_dir, &text).is_dir() =>
        {
            Err(EngineError::NotInJournal {
                run_id: text.clone(),
                dir: run_dir(state_dir, &text),
            })
        }
        other => Ok(other?),
    }
}

/// What `abort` did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AbortResult {
    pub run_id: String,
    /// The run's status afterwards.
    pub status: RunStatus,
    /// This call aborted it (false: it had already succeeded or been aborted).
    pub aborted: bool,
    /// A process was executing the run: it stops before its next step (the step in progress is not interrupted).
    pub running_pid: Option<u32>,
}

/// Aborts a run (`xorbctl abort RUN`): final, it cannot be resumed afterwards. A process executing the run notices
/// at its next step boundary and stops there.
pub fn abort_run(state_dir: &Path, run: &str, by: &str) -> Result<AbortResult, EngineError> {
    let mut journal = Journal::open(state_dir)?;
    let run_id = resolve(state_dir, &journal, run)?;
    let (status, aborted) = journal.abort_run(&run_id, by)?;
    let running_pid = if is_active(state_dir, &run_id)? {
        lock::current_holder(state_dir)?.and_then(|h| h.pid)
    } else {
        None
    };
    Ok(AbortResult {
        run_id,
        status,
        aborted,
        running_pid,
    })
}
