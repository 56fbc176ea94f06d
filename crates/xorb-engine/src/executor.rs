//! The executor: runs a plan step by step with the journal's intent/outcome protocol, per-step timeouts, retries,
//! emergency procedures, and resumes a run that stopped.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::{Deserialize, Serialize};
use xorb_model::plan::{Plan, PlanError, RunStatus, Safety, StepOutcome, StepSpec};

use crate::events::{Confirmation, Event, EventRecord, EventSink};
use crate::journal::{Journal, JournalError, RunRecord, StepState};
use crate::lock::{LOCK_FILE, LockError, RollbackLock};
use crate::logfile::LogFileSink;
use crate::runner::{Probe, StepContext, StepRunner};

mod schedule;
use xorb_model::redact::Redactor;

/// Why the engine itself could not go on (a failing *step* is not an error: it is a run status).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("the plan cannot be run: {0}")]
    Plan(#[from] PlanError),
    #[error("cannot create the run's directory {path}: {source}")]
    RunDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the rollback log file in {path}: {source}")]
    LogFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "run {run_id} has already succeeded; there is nothing to resume (`xorbctl report {run_id}` shows it)"
    )]
    AlreadySucceeded { run_id: String },
    #[error(
        "run {run_id} was aborted by {by}; an aborted run cannot be resumed: start a new rollback"
    )]
    RunAborted { run_id: String, by: String },
    #[error(
        "run {run_id} is not in the journal, but its directory {dir} exists: the journal was deleted, emptied or \
         replaced. Its plan is lost with it, so it cannot be resumed; its artifacts (backup, captured state, \
         preserved data) are kept, and a roll-forward re-imports its preserved data. Start a new rollback: it \
         observes the live stack and plans from there"
    )]
    NotInJournal { run_id: String, dir: PathBuf },
    #[error(
        "run {run_id} cannot be resumed: its journaled plan has a value out of range ({source}). Nothing was done \
         by this command. Check the stack (`xorbctl status`), give the run up with `xorbctl abort {run_id}`, fix \
         the runbook policy and plan the rollback again"
    )]
    StoredPlan { run_id: String, source: PlanError },
    #[error("step {step:?} is not in run {run_id}; `xorbctl show {run_id}` lists its steps")]
    UnknownStep { run_id: String, step: String },
    #[error(
        "the lock given to the engine is {given}, but this state directory's lock is {expected}"
    )]
    WrongLock { given: PathBuf, expected: PathBuf },
}

impl EngineError {
    /// This error's exit code (`docs/exit-codes.md`).
    pub fn exit(&self) -> xorb_model::exit::Exit {
        use xorb_model::exit::Exit;
        match self {
            EngineError::Journal(j) => j.exit(),
            EngineError::Lock(l) => l.exit(),
            EngineError::AlreadySucceeded { .. }
            | EngineError::RunAborted { .. }
            | EngineError::NotInJournal { .. } => Exit::Refused,
            EngineError::UnknownStep { .. } | EngineError::StoredPlan { .. } => Exit::BadInput,
            EngineError::Plan(_)
            | EngineError::RunDir { .. }
            | EngineError::LogFile { .. }
            | EngineError::WrongLock { .. } => Exit::Other,
        }
    }
}

/// Options of `resume`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeOptions {
    /// A person's decisions for steps the engine cannot prove safe to repeat (`--confirm STEP`,
    /// `--mark-done STEP`).
    pub confirmations: BTreeMap<String, Confirmation>,
}

impl ResumeOptions {
    pub fn confirm(mut self, step: impl Into<String>, confirmation: Confirmation) -> Self {
        self.confirmations.insert(step.into(), confirmation);
        self
    }
}

/// How one execution (start or resume) of a run ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunEnd {
    pub run_id: String,
    pub status: RunStatus,
    /// The run's artifacts directory.
    pub run_dir: PathBuf,
    /// The runbook's log file of the run.
    pub log_file: PathBuf,
    /// Where the run stopped and what to do next, for people.
    pub next: String,
}

impl RunEnd {
    pub fn succeeded(&self) -> bool {
        self.status == RunStatus::Succeeded
    }
}

/// A new run id: `YYYYMMDD-HHMMSS-xxxx` (UTC, then 4 random hex digits).
pub fn new_run_id() -> String {
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!("{}-{}", Utc::now().format("%Y%m%d-%H%M%S"), &rand[..4])
}

/// The artifacts directory of a run: `<state_dir>/runs/<run_id>`.
pub fn run_dir(state_dir: &Path, run_id: &str) -> PathBuf {
    state_dir.join("runs").join(run_id)
}

/// Where a run stands and what to do next, in words an on-call engineer can act on.
pub fn next_action(run_id: &str, plan: &Plan, status: &RunStatus) -> String {
    let locate = |step: &str| {
        plan.step(step)
            .map(StepSpec::locate)
            .unwrap_or_else(|| format!("step {step}"))
    };
    match status {
        RunStatus::Running => format!(
            "run {run_id} is running, or was interrupted if no xorbctl process holds the rollback lock; \
             to continue an interrupted run: `xorbctl resume {run_id}`"
        ),
        RunStatus::Succeeded => {
            format!("post-rollback monitoring for 2 hours; full report: `xorbctl report {run_id}`")
        }
        RunStatus::Failed { step, error } => format!(
            "stopped at {}: {error}. Fix the cause, then run `xorbctl resume {run_id}` \
             (or `xorbctl abort {run_id}` to give the run up)",
            locate(step)
        ),
        RunStatus::EmergencyStopped {
            step,
            error,
            procedure,
            emergency_ok,
            detail,
        } => {
            // The runner's detail is what it observed afterwards; the runbook's description is only what the
            // procedure aims at, and may not be what runs.
            let emergency = if *emergency_ok {
                format!(
                    "The emergency procedure \"{}\" ran ({detail}): the stack stays in emergency mode until the \
                     rollback completes",
                    procedure.name()
                )
            } else {
                format!(
                    "The emergency procedure \"{}\" FAILED too ({detail}): apply it by hand as the runbook says ({})",
                    procedure.name(),
                    procedure.describe()
                )
            };
            format!(
                "stopped at {}: {error}. {emergency}. Fix the cause, then run `xorbctl resume {run_id}`",
                locate(step)
            )
        }
        RunStatus::WaitingForConfirmation { step, reason } => format!(
            "stopped before running {} again: {reason}. Check the live state, then run \
             `xorbctl resume {run_id} --confirm {step}` to run it again, or \
             `xorbctl resume {run_id} --mark-done {step}` if it is already done",
            locate(step)
        ),
        RunStatus::WaitingForApproval { severity, missing } => format!(
            "a {severity} rollback: nothing has been done yet; it needs {missing}. Give it with \
             `xorbctl approve {run_id} --as NAME --role ROLE --reason TEXT --resume`, or give the run up with \
             `xorbctl abort {run_id}`"
        ),
        RunStatus::Aborted { by, step } => {
            let at = step
                .as_deref()
                .map(|s| format!(" at {}", locate(s)))
                .unwrap_or_default();
            format!(
                "aborted by {by}{at}; an aborted run cannot be resumed: check the stack and start a new rollback \
                 if needed"
            )
        }
    }
}

/// Refuses a journaled run whose plan carries a number no policy file may give (journaled before the files were
/// checked at load): resuming it would overflow a deadline or sleep for centuries.
pub fn check_stored_plan(record: &RunRecord) -> Result<(), EngineError> {
    record
        .plan
        .validate()
        .map_err(|source| EngineError::StoredPlan {
            run_id: record.id.clone(),
            source,
        })
}

/// Runs `fut` with the step timeout (`0`: no limit). `None` when it ran out. Clamped, so that a value that got
/// past validation still gives a deadline rather than an overflow.
async fn bounded<F: Future>(secs: u64, fut: F) -> Option<F::Output> {
    if secs == 0 {
        Some(fut.await)
    } else {
        let secs = xorb_model::limits::clamp_timeout_secs(secs);
        tokio::time::timeout(Duration::from_secs(secs), fut)
            .await
            .ok()
    }
}

fn ms_since(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Probes the live state; a probe that errs or runs out of time "cannot tell".
async fn probe_with<R: StepRunner>(runner: &R, ctx: &StepContext<'_>, step: &StepSpec) -> Probe {
    match bounded(step.timeout_secs, runner.probe(step, ctx)).await {
        Some(Ok(p)) => p,
        Some(Err(e)) => Probe::Unknown {
            why: format!("the probe failed: {e}"),
        },
        None => Probe::Unknown {
            why: format!("the probe did not answer within {} s", step.timeout_secs),
        },
    }
}

/// The run being executed.
struct Active {
    run_id: String,
    plan: Plan,
    run_dir: PathBuf,
    log: LogFileSink,
}

impl Active {
    fn ctx(&self, index: usize, attempt: u32) -> StepContext<'_> {
        StepContext {
            run_id: &self.run_id,
            step_id: &self.plan.steps[index].id,
            run_dir: &self.run_dir,
            from: &self.plan.from,
            to: &self.plan.to,
            index,
            attempt,
        }
    }
}

/// A step's journaled progress when an execution begins.
#[derive(Debug, Clone)]
struct Progress {
    state: StepState,
    attempts: u32,
    outcome: Option<StepOutcome>,
}

enum Resolution {
    /// Recorded as done; go on.
    Done,
    /// Run it (again).
    Run,
    /// A person must decide.
    Wait(String),
}

/// Executes plans against a target. `R` does the work, `S` receives every event after it is journaled
/// (the run's log file always receives them too).
pub struct Engine<R, S> {
    state_dir: PathBuf,
    journal: Journal,
    runner: R,
    sink: S,
    /// Applied to the journal and the log file (the caller's sink redacts on its own).
    redactor: Redactor,
}

impl<R: StepRunner, S: EventSink> Engine<R, S> {
    /// Opens the journal of `state_dir` (creating the directory and the journal if needed).
    pub fn new(state_dir: impl Into<PathBuf>, runner: R, sink: S) -> Result<Self, EngineError> {
        let state_dir = state_dir.into();
        let journal = Journal::open(&state_dir)?;
        Ok(Engine {
            state_dir,
            journal,
            runner,
            sink,
            redactor: Redactor::new(),
        })
    }

    /// Writes the journal and the run's log file through `redactor` (clones share its registry, so secrets
    /// registered later are redacted too).
    pub fn with_redactor(mut self, redactor: Redactor) -> Self {
        self.journal.set_redactor(redactor.clone());
        self.redactor = redactor;
        self
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    pub fn runner(&self) -> &R {
        &self.runner
    }

    pub fn sink(&self) -> &S {
        &self.sink
    }

    pub fn sink_mut(&mut self) -> &mut S {
        &mut self.sink
    }

    pub fn into_parts(self) -> (R, S) {
        (self.runner, self.sink)
    }

    /// Takes the rollback lock (refusing if another rollback holds it), journals the plan as a new run and
    /// executes it.
    pub async fn start(&mut self, plan: Plan) -> Result<RunEnd, EngineError> {
        plan.validate()?;
        let mut lock = RollbackLock::acquire(&self.state_dir, None)?;
        self.start_locked(&mut lock, plan).await
    }

    /// As [`Engine::start`], with a lock the caller took earlier (e.g. before asking for confirmation).
    pub async fn start_locked(
        &mut self,
        lock: &mut RollbackLock,
        plan: Plan,
    ) -> Result<RunEnd, EngineError> {
        self.start_locked_gated(lock, plan, |_| Ok(None)).await
    }

    /// As [`Engine::start_locked`], with a gate between journaling the run and its first step: `gate` gets the
    /// new run id (to record approvals against it) and returns `Some(status)` to end this execution there
    /// without acting (the run waits for approval), `None` to go on.
    pub async fn start_locked_gated(
        &mut self,
        lock: &mut RollbackLock,
        plan: Plan,
        gate: impl FnOnce(&str) -> Result<Option<RunStatus>, EngineError>,
    ) -> Result<RunEnd, EngineError> {
        self.start_locked_gated_as(lock, plan, new_run_id(), gate)
            .await
    }

    /// As [`Engine::start_locked_gated`], under a run id the caller chose (from [`new_run_id`]): a target that
    /// guards the run with something outside this machine (the Kubernetes Lease) takes it in the run's name
    /// before the run is journaled, so a refused run leaves nothing behind.
    pub async fn start_locked_gated_as(
        &mut self,
        lock: &mut RollbackLock,
        plan: Plan,
        run_id: String,
        gate: impl FnOnce(&str) -> Result<Option<RunStatus>, EngineError>,
    ) -> Result<RunEnd, EngineError> {
        self.check_lock(lock)?;
        plan.validate()?;
        let dir = run_dir(&self.state_dir, &run_id);
        crate::private::create_dir_all(&dir).map_err(|source| EngineError::RunDir {
            path: dir.clone(),
            source,
        })?;
        let created_at = crate::journal::now();
        let log = LogFileSink::open(&dir, created_at)
            .map_err(|source| EngineError::LogFile {
                path: dir.clone(),
                source,
            })?
            .with_redactor(self.redactor.clone());
        let event = Event::RunStarted {
            from: plan.from.clone(),
            to: plan.to.clone(),
            scope: plan.scope.clone(),
            restore_of: plan.restore_of.clone(),
            steps: plan.steps.len(),
            run_dir: dir.to_string_lossy().into_owned(),
            log_file: log.path().to_string_lossy().into_owned(),
        };
        let session = Instant::now();
        let rec = self
            .journal
            .create_run(&run_id, &plan, &dir, created_at, event)?;
        // Named in the lock only once the journal has it: a second invocation is told to resume this run, and a
        // process killed before this point leaves no run to resume (the lock said "a run that is starting").
        lock.set_run_id(Some(&run_id))?;
        let progress = vec![
            Progress {
                state: StepState::Pending,
                attempts: 0,
                outcome: None
            };
            plan.steps.len()
        ];
        let mut active = Active {
            run_id,
            plan,
            run_dir: dir,
            log,
        };
        self.publish(&mut active, &rec);
        if let Some(status) = gate(&active.run_id)? {
            return self.finish(&mut active, status, session);
        }
        let status = self.drive(&mut active, progress, &BTreeMap::new()).await?;
        self.finish(&mut active, status, session)
    }

    /// Takes the rollback lock and continues run `run` (an id, a unique prefix of one, or `latest`) from its first
    /// step not done. A step that was in flight or had failed is probed first: found done, it is recorded as
    /// already done; not done, it runs again if its safety class allows; otherwise the run stops and waits for a
    /// person's confirmation (see [`ResumeOptions`]).
    pub async fn resume(
        &mut self,
        run: &str,
        options: ResumeOptions,
    ) -> Result<RunEnd, EngineError> {
        let run_id = self.journal.resolve_run_id(run)?;
        let mut lock = RollbackLock::acquire(&self.state_dir, Some(&run_id))?;
        self.resume_locked(&mut lock, &run_id, options).await
    }

    /// As [`Engine::resume`], with a lock the caller took earlier.
    pub async fn resume_locked(
        &mut self,
        lock: &mut RollbackLock,
        run: &str,
        options: ResumeOptions,
    ) -> Result<RunEnd, EngineError> {
        self.check_lock(lock)?;
        let run_id = self.journal.resolve_run_id(run)?;
        lock.set_run_id(Some(&run_id))?;
        let record = self.journal.load_run(&run_id)?;
        check_stored_plan(&record)?;
        match &record.status {
            RunStatus::Succeeded => return Err(EngineError::AlreadySucceeded { run_id }),
            RunStatus::Aborted { by, .. } => {
                return Err(EngineError::RunAborted {
                    run_id,
                    by: by.clone(),
                });
            }
            _ => {}
        }
        for step in options.confirmations.keys() {
            if record.step(step).is_none() {
                return Err(EngineError::UnknownStep {
                    run_id,
                    step: step.clone(),
                });
            }
        }
        let RunRecord {
            plan,
            run_dir: dir,
            steps,
            created_at,
            ..
        } = record;
        crate::private::create_dir_all(&dir).map_err(|source| EngineError::RunDir {
            path: dir.clone(),
            source,
        })?;
        let log = LogFileSink::open(&dir, created_at)
            .map_err(|source| EngineError::LogFile {
                path: dir.clone(),
                source,
            })?
            .with_redactor(self.redactor.clone());
        let progress: Vec<Progress> = steps
            .iter()
            .map(|s| Progress {
                state: s.state,
                attempts: s.attempts,
                outcome: s.outcome.clone(),
            })
            .collect();
        let at_step = steps
            .iter()
            .find(|s| !s.state.is_done())
            .map(|s| s.spec.id.clone());
        let session = Instant::now();
        let mut active = Active {
            run_id: run_id.clone(),
            plan,
            run_dir: dir,
            log,
        };
        let event = Event::RunResumed {
            at_step,
            confirmations: options.confirmations.clone(),
        };
        match self
            .journal
            .set_status(&run_id, &RunStatus::Running, event)?
        {
            Some(rec) => self.publish(&mut active, &rec),
            None => {
                // Aborted between our read and our write.
                let by = match self.journal.status(&run_id)? {
                    RunStatus::Aborted { by, .. } => by,
                    _ => String::from("someone"),
                };
                return Err(EngineError::RunAborted { run_id, by });
            }
        }
        let status = self
            .drive(&mut active, progress, &options.confirmations)
            .await?;
        self.finish(&mut active, status, session)
    }

    fn check_lock(&self, lock: &RollbackLock) -> Result<(), EngineError> {
        let expected = self.state_dir.join(LOCK_FILE);
        if lock.path() != expected {
            return Err(EngineError::WrongLock {
                given: lock.path().to_path_buf(),
                expected,
            });
        }
        Ok(())
    }

    fn recorder<'a>(&'a mut self, active: &'a mut Active) -> schedule::Recorder<'a, S> {
        schedule::Recorder {
            journal: &mut self.journal,
            sink: &mut self.sink,
            log: &mut active.log,
            run_id: &active.run_id,
        }
    }

    /// Hands a journaled event to the log file and the caller's sink.
    fn publish(&mut self, active: &mut Active, rec: &EventRecord) {
        self.recorder(active).publish(rec);
    }

    fn journal_event(&mut self, active: &mut Active, event: Event) -> Result<(), EngineError> {
        self.recorder(active).event(event)
    }

    fn journal_outcome(
        &mut self,
        active: &mut Active,
        index: usize,
        attempt: u32,
        outcome: StepOutcome,
        duration_ms: u64,
    ) -> Result<(), EngineError> {
        let step = active.plan.steps[index].id.clone();
        self.recorder(active)
            .outcome(index, &step, attempt, outcome, duration_ms)
    }

    /// Probes the live state; a probe that errs or runs out of time "cannot tell".
    async fn probe(&self, active: &Active, index: usize, step: &StepSpec, attempt: u32) -> Probe {
        probe_with(&self.runner, &active.ctx(index, attempt), step).await
    }

    /// Decides what to do with a step that was started before (in flight when the run stopped, or failed).
    async fn reprobe(
        &mut self,
        active: &mut Active,
        index: usize,
        step: &StepSpec,
        progress: &Progress,
        confirmation: Option<Confirmation>,
    ) -> Result<Resolution, EngineError> {
        let probe = self.probe(active, index, step, progress.attempts).await;
        self.journal_event(
            active,
            Event::StepProbed {
                step: step.id.clone(),
                probe: probe.clone(),
            },
        )?;
        if let Probe::Done { detail } = &probe {
            let outcome = StepOutcome::AlreadyDone {
                detail: format!("found done by the probe: {detail}"),
            };
            self.journal_outcome(active, index, progress.attempts, outcome, 0)?;
            return Ok(Resolution::Done);
        }
        let in_flight = progress.state == StepState::InFlight;
        // A failure the runner reported as retryable left nothing half-done.
        let clean_failure = !in_flight
            && matches!(
                progress.outcome,
                Some(StepOutcome::Failed {
                    retryable: true,
                    ..
                })
            );
        let safe = match (step.safety, &probe) {
            (Safety::Idempotent, _) => true,
            (Safety::Probed, Probe::NotDone) => true,
            (Safety::NotRepeatable, Probe::NotDone) => clean_failure,
            _ => false,
        };
        if safe {
            return Ok(Resolution::Run);
        }
        if confirmation == Some(Confirmation::Rerun) {
            self.journal_event(
                active,
                Event::ConfirmationUsed {
                    step: step.id.clone(),
                    confirmation: Confirmation::Rerun,
                },
            )?;
            return Ok(Resolution::Run);
        }
        let how = if in_flight {
            "it was in flight when the run stopped"
        } else {
            "its last attempt failed"
        };
        let reason = match (&probe, step.safety) {
            (Probe::Unknown { why }, _) => {
                format!(
                    "{how} and the probe cannot tell whether it is done ({why}); it is {}",
                    step.safety
                )
            }
            (_, Safety::NotRepeatable) => {
                format!(
                    "{how}, the probe found it not done, and it is not repeatable: it may have partly run"
                )
            }
            _ => format!("{how} and it cannot be proven safe to repeat"),
        };
        Ok(Resolution::Wait(reason))
    }

    /// A step definitely failed: run the policy's emergency procedure, if any, and say how the run stops.
    async fn fail(
        &mut self,
        active: &mut Active,
        index: usize,
        step: &StepSpec,
        attempt: u32,
        error: String,
    ) -> Result<RunStatus, EngineError> {
        let Some(procedure) = step.policy.emergency() else {
            return Ok(RunStatus::Failed {
                step: step.id.clone(),
                error,
            });
        };
        self.journal_event(
            active,
            Event::EmergencyStarted {
                step: step.id.clone(),
                procedure,
            },
        )?;
        let result = {
            let ctx = active.ctx(index, attempt);
            bounded(step.timeout_secs, self.runner.emergency(procedure, &ctx)).await
        };
        let (ok, detail) = match result {
            Some(Ok(detail)) => (true, detail),
            Some(Err(e)) => (false, e.to_string()),
            None => (
                false,
                format!("did not finish within {} s", step.timeout_secs),
            ),
        };
        let event = Event::EmergencyFinished {
            step: step.id.clone(),
            procedure,
            ok,
            detail: detail.clone(),
        };
        self.journal_event(active, event)?;
        Ok(RunStatus::EmergencyStopped {
            step: step.id.clone(),
            error,
            procedure,
            emergency_ok: ok,
            detail,
        })
    }

    fn finish(
        &mut self,
        active: &mut Active,
        status: RunStatus,
        session: Instant,
    ) -> Result<RunEnd, EngineError> {
        let duration_ms = ms_since(session);
        let next = next_action(&active.run_id, &active.plan, &status);
        let event = Event::RunFinished {
            status: status.clone(),
            duration_ms,
            next: next.clone(),
        };
        let (status, next) = match self.journal.set_status(&active.run_id, &status, event)? {
            Some(rec) => {
                self.publish(active, &rec);
                (status, next)
            }
            None => {
                // Aborted by a person meanwhile: the abort stands.
                let status = self.journal.status(&active.run_id)?;
                let next = next_action(&active.run_id, &active.plan, &status);
                let event = Event::RunFinished {
                    status: status.clone(),
                    duration_ms,
                    next: next.clone(),
                };
                self.journal_event(active, event)?;
                (status, next)
            }
        };
        Ok(RunEnd {
            run_id: active.run_id.clone(),
            status,
            run_dir: active.run_dir.clone(),
            log_file: active.log.path().to_path_buf(),
            next,
        })
    }
}
