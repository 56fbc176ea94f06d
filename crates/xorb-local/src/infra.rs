//! Phase 4 on the local target: NATS streams, Redis, monitoring (Prometheus, Alertmanager, Grafana dashboards).
//! Design: docs/design/rollback-semantics.md ("Phase 4").

use xorb_engine::runner::{Probe, StepContext, StepError};

use crate::rollback::LocalRunner;

pub async fn nats_save(
    _r: &LocalRunner,
    _release: &str,
    _ctx: &StepContext<'_>,
) -> Result<String, StepError> {
    Err(StepError::fatal("nats save: not implemented yet"))
}

pub async fn nats_apply(
    _r: &LocalRunner,
    _release: &str,
    _ctx: &StepContext<'_>,
) -> Result<String, StepError> {
    Err(StepError::fatal("nats apply: not implemented yet"))
}

pub async fn probe_nats_apply(
    _r: &LocalRunner,
    _release: &str,
    _ctx: &StepContext<'_>,
) -> Result<Probe, StepError> {
    Ok(Probe::Unknown {
        why: "not implemented yet".into(),
    })
}

pub async fn redis_backup(_r: &LocalRunner, _ctx: &StepContext<'_>) -> Result<String, StepError> {
    Err(StepError::fatal("redis backup: not implemented yet"))
}

pub async fn redis_apply(
    _r: &LocalRunner,
    _release: &str,
    _ctx: &StepContext<'_>,
) -> Result<String, StepError> {
    Err(StepError::fatal("redis apply: not implemented yet"))
}

pub async fn probe_redis_apply(
    _r: &LocalRunner,
    _release: &str,
    _ctx: &StepContext<'_>,
) -> Result<Probe, StepError> {
    Ok(Probe::Unknown {
        why: "not implemented yet".into(),
    })
}

pub async fn monitoring_validate(
    _r: &LocalRunner,
    _release: &str,
    _ctx: &StepContext<'_>,
) -> Result<String, StepError> {
    Err(StepError::fatal("monitoring validate: not implemented yet"))
}

pub async fn monitoring_apply(
    _r: &LocalRunner,
    _release: &str,
    _ctx: &StepContext<'_>,
) -> Result<String, StepError> {
    Err(StepError::fatal("monitoring apply: not implemented yet"))
}

pub async fn probe_monitoring_apply(
    _r: &LocalRunner,
    _release: &str,
    _ctx: &StepContext<'_>,
) -> Result<Probe, StepError> {
    Ok(Probe::Unknown {
        why: "not implemented yet".into(),
    })
}
