//! What every step of the shared adapters works with: the target, where the tool's files are, the release rolled
//! to, one HTTP client. The `StepRunner` over it is in `runner.rs`; the steps in their modules take it.

use std::path::PathBuf;

use xorb_engine::runner::StepError;
use xorb_model::release::Release;

use crate::Paths;
use crate::conn::PgConn;
use crate::target::{Endpoints, Target};

/// A failure worth trying again (the dependency may answer next time).
pub fn failed(e: impl std::fmt::Display) -> StepError {
    StepError::retryable(e.to_string())
}

pub struct TargetRunner<T> {
    pub target: T,
    pub paths: Paths,
    /// The tool's state directory: the runs of earlier rollbacks (their preserved data) are under `runs/`.
    pub state_dir: PathBuf,
    pub to: Release,
    pub http: reqwest::Client,
}

impl<T: Target> TargetRunner<T> {
    pub fn new(target: T, paths: Paths, state_dir: PathBuf, to: Release) -> Self {
        Self {
            target,
            paths,
            state_dir,
            to,
            http: crate::deps::http_client(),
        }
    }

    pub fn endpoints(&self) -> Result<Endpoints, StepError> {
        self.target.endpoints()
    }

    pub fn pg(&self) -> Result<PgConn, StepError> {
        Ok(self.target.endpoints()?.postgres)
    }

    /// A release by name from the releases root (the target one without reading it again).
    pub fn release(&self, name: &str) -> Result<Release, StepError> {
        if name == self.to.name() {
            return Ok(self.to.clone());
        }
        Release::load_named(&self.paths.releases_root, name)
            .map_err(|e| StepError::fatal(e.to_string()))
    }
}
