//! xorbctl's own error types, each saying its exit code (`docs/exit-codes.md`); `main` asks them along an error's
//! chain, as it asks the libraries' error types.

use xorb_model::exit::Exit;

/// The command line, or a file or value it names, cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl UsageError {
    pub fn exit(&self) -> Exit {
        Exit::BadInput
    }
}

/// What governance refuses or cannot use.
#[derive(Debug, thiserror::Error)]
pub enum GovernanceError {
    #[error("{0}")]
    BadInput(String),
    #[error("refused: {0}")]
    Refused(String),
}

impl GovernanceError {
    pub fn exit(&self) -> Exit {
        match self {
            GovernanceError::BadInput(_) => Exit::BadInput,
            GovernanceError::Refused(_) => Exit::Refused,
        }
    }
}

/// A governance input that cannot be used (exit 2).
pub fn bad(msg: impl Into<String>) -> anyhow::Error {
    GovernanceError::BadInput(msg.into()).into()
}

/// Governance refuses (exit 3).
pub fn refused(msg: impl Into<String>) -> anyhow::Error {
    GovernanceError::Refused(msg.into()).into()
}

/// `watch` without a run to watch.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(
        "no rollback is running in {0}: name the run to watch (`xorbctl runs` lists them), or check --state-dir"
    )]
    NoActiveRun(String),
}

impl WatchError {
    pub fn exit(&self) -> Exit {
        Exit::Refused
    }
}

/// `perf` and `load`: what stops a measurement, or keeps it from becoming a baseline.
#[derive(Debug, thiserror::Error)]
pub enum PerfError {
    /// The stack is not the release asked for.
    #[error("{0}")]
    WrongRelease(String),
    /// The api answered too much of the load with errors for its figures to be anyone's baseline.
    #[error("{0}")]
    Unhealthy(String),
    /// The api or the database did not answer.
    #[error("{0}")]
    Unreachable(String),
}

impl PerfError {
    pub fn exit(&self) -> Exit {
        match self {
            PerfError::WrongRelease(_) => Exit::Refused,
            PerfError::Unhealthy(_) => Exit::Unhealthy,
            PerfError::Unreachable(_) => Exit::DependencyFailed,
        }
    }
}
