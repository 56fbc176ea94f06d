//! The stack in a process of its own, for `xorbctl stack up --target kubernetes`.
//!
//! The lab's node agent and Service proxy are tokio tasks of the process that calls [`KubeStack::up`]: when that
//! process ends, no Pod runs and no Service forwards. A stack that must outlive the command that starts it
//! therefore runs in a long-lived process: xorbctl spawns itself with a hidden subcommand that calls [`serve`].
//! The two sides meet in a record file ([`ServeRecord`], JSON, 0600), written once the stack is up:
//!
//! - the spawner: [`prepare`] (is one already running? clears what a previous process left), [`spawn`] (its own
//!   process group, output to a log), [`wait_ready`] (until the record appears, the process dies, or a deadline);
//! - the stopper: [`stop`] (SIGTERM, the stack's own `down`, SIGKILL after a grace; never a pid whose start time
//!   is not the recorded one).
//!
//! Design: docs/design/kubernetes-lab.md, "The stack's own process".
//!
//! [`KubeStack::up`]: super::KubeStack::up

mod client;
mod record;
mod serve;

use std::path::PathBuf;
use std::time::Duration;

pub use client::{StopOutcome, prepare, spawn, stop, wait_ready};
pub use record::{DemoFigures, ServeRecord, failed_path};
pub use serve::{ServeConfig, serve};
pub use xorb_local::process::{ProcRecord, StopResult};
pub use xorb_local::stack::DownEntry;

/// The target file's name in the stack's directory.
pub const TARGET_FILE: &str = "target.toml";

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{} is not a stack record ({why}); if no stack process runs for it, remove it",
        path.display()
    )]
    CorruptRecord { path: PathBuf, why: String },
    #[error("the Kubernetes stack did not start: {why}")]
    StartFailed { why: String },
    #[error(
        "the Kubernetes stack's process exited ({status}) before the stack was ready; last lines of {}:\n{tail}",
        log.display()
    )]
    Exited {
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error(
        "the Kubernetes stack was not ready after {}s, so its process was stopped; last lines of {}:\n{tail}",
        waited.as_secs(),
        log.display()
    )]
    NotReady {
        waited: Duration,
        log: PathBuf,
        tail: String,
    },
    #[error("no Kubernetes stack to stop: {} does not exist", record.display())]
    NothingToStop { record: PathBuf },
    #[error(
        "the process of the stack recorded in {} is gone, but {running} of the processes it started still run: \
         stop them first (xorbctl stack down)",
        record.display()
    )]
    Leftovers { record: PathBuf, running: usize },
    #[error("the stack's process: {0}")]
    Args(String),
}

impl DaemonError {
    fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}

/// The last `lines` lines of a log, for error messages.
fn tail(log: &std::path::Path, lines: usize) -> String {
    crate::process::tail(log, lines)
}
