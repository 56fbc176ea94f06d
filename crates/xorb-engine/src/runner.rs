//! The interface between the engine and a target (the local stack, Kubernetes, a test double).
//!
//! The engine decides *when* and *whether* a step runs and journals everything; the target's [`StepRunner`] does
//! the work. A runner never journals and never retries by itself.

use std::fmt;
use std::future::Future;
use std::path::Path;

use serde::{Deserialize, Serialize};
use xorb_model::plan::{EmergencyProcedure, StepOutcome, StepSpec};

/// What a probe of the live state found about a step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "probe", rename_all = "snake_case")]
pub enum Probe {
    /// The step's effect is in place (e.g. the service already runs the target image).
    Done { detail: String },
    /// The step's effect is not in place.
    NotDone,
    /// The probe cannot tell (no probe for this action, the target does not answer…).
    Unknown { why: String },
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Probe::Done { detail } => write!(f, "already done ({detail})"),
            Probe::NotDone => f.write_str("not done"),
            Probe::Unknown { why } => write!(f, "cannot tell ({why})"),
        }
    }
}

/// Why a runner could not carry out a step (as opposed to a step that ran and reported `StepOutcome::Failed`).
/// The engine treats both as a failure of the step and applies its policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// The action failed; `retryable`: trying again may succeed and is safe.
    #[error("{message}")]
    Failed { message: String, retryable: bool },
    /// This target does not know how to do this action.
    #[error("this target cannot do {action}: {why}")]
    Unsupported { action: String, why: String },
}

impl StepError {
    pub fn retryable(message: impl Into<String>) -> Self {
        StepError::Failed {
            message: message.into(),
            retryable: true,
        }
    }

    pub fn fatal(message: impl Into<String>) -> Self {
        StepError::Failed {
            message: message.into(),
            retryable: false,
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StepError::Failed {
                retryable: true,
                ..
            }
        )
    }

    /// The outcome journaled for this error.
    pub fn into_outcome(self) -> StepOutcome {
        let retryable = self.is_retryable();
        StepOutcome::Failed {
            error: self.to_string(),
            retryable,
        }
    }
}

/// What a runner knows about the run a step belongs to.
#[derive(Debug, Clone, Copy)]
pub struct StepContext<'a> {
    pub run_id: &'a str,
    /// The step's id in the plan (`3.db.backup`).
    pub step_id: &'a str,
    /// The run's artifacts directory (`<state_dir>/runs/<run_id>`): captured state, backups, reports.
    pub run_dir: &'a Path,
    /// Release rolled back from / to.
    pub from: &'a str,
    pub to: &'a str,
    /// Index of the step in the plan.
    pub index: usize,
    /// 1 for the first try of the step, counting across resumes.
    pub attempt: u32,
}

/// A target's implementation of the plan's actions.
///
/// Implement it with `async fn`s. The futures need not be `Send`: the engine drives them on the caller's task.
/// Every call is bounded by the step's `timeout_secs` (the future is dropped when it runs out).
pub trait StepRunner {
    /// Looks at the live state, without changing it, to tell whether `step`'s effect is already in place.
    /// Called on resume for a step that was in flight or had failed, and before retrying a step that is not
    /// idempotent. Return `Probe::Unknown` when there is no way to tell.
    fn probe(
        &self,
        step: &StepSpec,
        ctx: &StepContext<'_>,
    ) -> impl Future<Output = Result<Probe, StepError>>;

    /// Carries out `step`. Return `StepOutcome::Failed` (or a `StepError`) when it did not work; say whether a
    /// retry is safe.
    fn run(
        &self,
        step: &StepSpec,
        ctx: &StepContext<'_>,
    ) -> impl Future<Output = Result<StepOutcome, StepError>>;

    /// Carries out one of the runbook's emergency procedures after `ctx`'s step definitely failed.
    /// Returns what was done, in words.
    fn emergency(
        &self,
        procedure: EmergencyProcedure,
        ctx: &StepContext<'_>,
    ) -> impl Future<Output = Result<String, StepError>>;
}

impl<R: StepRunner + ?Sized> StepRunner for &R {
    fn probe(
        &self,
        step: &StepSpec,
        ctx: &StepContext<'_>,
    ) -> impl Future<Output = Result<Probe, StepError>> {
        (**self).probe(step, ctx)
    }

    fn run(
        &self,
        step: &StepSpec,
        ctx: &StepContext<'_>,
    ) -> impl Future<Output = Result<StepOutcome, StepError>> {
        (**self).run(step, ctx)
    }

    fn emergency(
        &self,
        procedure: EmergencyProcedure,
        ctx: &StepContext<'_>,
    ) -> impl Future<Output = Result<String, StepError>> {
        (**self).emergency(procedure, ctx)
    }
}
