//! Phase 3 on the local target: database backup, compatibility check, schema and data migrations (with what a
//! downgrade destroys preserved first), verification, and re-import of preserved data on roll-forward.
//! Design: docs/design/rollback-semantics.md ("Phase 3").

use std::path::Path;
use std::time::Duration;

use xorb_engine::runner::{Probe, StepContext, StepError};
use xorb_model::plan::{MigrationDirection, Preserve};
use xorb_model::release::Release;
use xorb_model::schema::LiveDatabase;

use crate::LocalError;
use crate::rollback::LocalRunner;
use crate::stack::Paths;

/// One `Action::Migrate`, borrowed from the step.
pub struct MigrateStep<'a> {
    pub revision: &'a str,
    pub to_revision: &'a str,
    pub direction: MigrationDirection,
    pub data_migration: Option<&'a str>,
    pub preserve: &'a [Preserve],
    pub timeout: Duration,
}

/// The live revision and the revisions of `from`'s migration scripts (for the planner).
pub async fn observe_database(
    _state_dir: &Path,
    _paths: &Paths,
    _from: &Release,
) -> Result<LiveDatabase, LocalError> {
    Err(LocalError::Config(
        "observe_database: not implemented yet".into(),
    ))
}

pub async fn backup(_r: &LocalRunner, _ctx: &StepContext<'_>) -> Result<String, StepError> {
    Err(StepError::fatal("db backup: not implemented yet"))
}

pub async fn compatibility(
    _r: &LocalRunner,
    _from_revision: &str,
    _to_revision: &str,
    _release: &str,
    _ctx: &StepContext<'_>,
) -> Result<String, StepError> {
    Err(StepError::fatal("db compatibility: not implemented yet"))
}

pub async fn migrate(
    _r: &LocalRunner,
    _m: &MigrateStep<'_>,
    _ctx: &StepContext<'_>,
) -> Result<String, StepError> {
    Err(StepError::fatal("migrate: not implemented yet"))
}

pub async fn probe_migrate(
    _r: &LocalRunner,
    _to_revision: &str,
    _ctx: &StepContext<'_>,
) -> Result<Probe, StepError> {
    Ok(Probe::Unknown {
        why: "not implemented yet".into(),
    })
}

pub async fn verify(
    _r: &LocalRunner,
    _revision: &str,
    _ctx: &StepContext<'_>,
) -> Result<String, StepError> {
    Err(StepError::fatal("db verify: not implemented yet"))
}

pub async fn reimport(
    _r: &LocalRunner,
    _source_run: &str,
    _ctx: &StepContext<'_>,
) -> Result<String, StepError> {
    Err(StepError::fatal("reimport: not implemented yet"))
}
