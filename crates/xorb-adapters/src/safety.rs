//! Two safety nets around what runs, for every target: the guard before a destructive step (no schema downgrade,
//! stream removal, Redis flush or control-plane removal while a service that cannot run on its result is up) and
//! the emergency procedures (which never make the stack worse). Both look at the live instances the target
//! reports, not at the plan: what runs may have changed since it was written.

use std::time::Duration;

use xorb_engine::emergency::{self, Observed};
use xorb_engine::runner::StepError;
use xorb_model::plan::{Action, EmergencyProcedure, StepSpec};

use crate::context::TargetRunner;
use crate::target::Target;

/// Refuses `step` when a live service could not run on its result. Called right before acting.
pub async fn guard_destructive<T: Target>(
    runner: &TargetRunner<T>,
    step: &StepSpec,
) -> Result<(), StepError> {
    if !xorb_engine::compat::is_destructive(&step.action) {
        return Ok(());
    }
    let removed = match &step.action {
        Action::RemoveService { service } => Some(service.as_str()),
        _ => None,
    };
    for p in runner.target.instances().await? {
        if Some(p.service.as_str()) == removed {
            continue;
        }
        let loaded;
        let rel = if p.release == runner.to.name() {
            &runner.to
        } else {
            // A release we cannot read cannot vouch for its services: refuse rather than guess.
            loaded = runner.release(&p.release).map_err(|e| {
                StepError::fatal(format!(
                    "not running {}: {} ({}) runs {}, whose compatibility cannot be read ({e}); nothing was done",
                    step.id, p.service, p.id, p.release
                ))
            })?;
            &loaded
        };
        if let Some(why) =
            xorb_engine::compat::cannot_run_after(&step.action, &p.service, rel, &runner.to)
        {
            return Err(StepError::fatal(format!(
                "not running {}: {} ({}) still runs {}, and {why}. Nothing was done. Roll {} to {} first \
                 (or stop that process if it should not run), then resume",
                step.id,
                p.service,
                p.id,
                p.release,
                p.service,
                runner.to.name()
            )));
        }
    }
    Ok(())
}

async fn observe<T: Target>(runner: &TargetRunner<T>) -> Result<Vec<Observed>, StepError> {
    Ok(runner
        .target
        .instances()
        .await?
        .into_iter()
        .map(|p| Observed {
            role: p.service,
            release: p.release,
            healthy: p.healthy == Some(true),
        })
        .collect())
}

/// Applies `procedure` as far as it helps (see `xorb_engine::emergency`) and reports what runs afterwards.
pub async fn emergency<T: Target>(
    runner: &TargetRunner<T>,
    procedure: EmergencyProcedure,
) -> Result<String, StepError> {
    let live = runner.target.observe().await?;
    let seen = observe(runner).await?;
    let decision = emergency::decide(procedure, &seen);
    for role in &decision.stop {
        if seen.iter().any(|o| &o.role == role) {
            runner.target.stop_workload(role).await?;
        }
    }
    let mut did = Vec::new();
    if let Some(why) = &decision.held_back {
        did.push(why.clone());
    } else if !decision.stop.is_empty() {
        did.push(format!("stopped {}", decision.stop.join(", ")));
    }
    if decision.circuit_breaker
        && let Some(api) = live.services.iter().find(|s| s.name == "api")
    {
        let mut cfg = api.config.clone();
        cfg.insert("CIRCUIT_BREAKER_ENABLED".into(), "true".into());
        runner
            .target
            .set_workload("api", &api.image, &cfg, Duration::from_secs(120))
            .await?;
        did.push("api restarted with CIRCUIT_BREAKER_ENABLED=true".into());
    }
    let roles: Vec<String> = live.services.iter().map(|s| s.name.clone()).collect();
    let after = observe(runner).await?;
    if did.is_empty() {
        did.push("nothing to stop".into());
    }
    Ok(format!(
        "{}; {}",
        did.join("; "),
        emergency::describe(&roles, &after)
    ))
}
