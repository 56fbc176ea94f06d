//! The local target's two safety nets around what runs: the guard before a destructive step (no schema
//! downgrade, stream removal, Redis flush or control-plane removal while a service that cannot run on its result
//! is up) and the emergency procedures (which never make the stack worse). Both look at the live processes, not
//! at stack.json or the plan: what runs may have changed since either was written.

use std::time::Duration;

use nix::sys::signal::Signal;
use xorb_engine::emergency::{self, Observed};
use xorb_engine::runner::StepError;
use xorb_model::plan::{Action, EmergencyProcedure, StepSpec};
use xorb_model::release::Release;

use crate::rollback::{LiveProc, LocalRunner, live_service_procs};
use crate::stack;

/// Refuses `step` when a live service could not run on its result. Called right before acting.
pub fn guard_destructive(runner: &LocalRunner, step: &StepSpec) -> Result<(), StepError> {
    if !xorb_engine::compat::is_destructive(&step.action) {
        return Ok(());
    }
    let removed = match &step.action {
        Action::RemoveService { service } => Some(service.as_str()),
        _ => None,
    };
    for p in live_service_procs(&runner.state_dir) {
        if Some(p.role.as_str()) == removed {
            continue;
        }
        let loaded;
        let rel = if p.release == runner.to.name() {
            &runner.to
        } else {
            // A release we cannot read cannot vouch for its services: refuse rather than guess.
            loaded = Release::load_named(&runner.paths.releases_root, &p.release).map_err(|e| {
                StepError::fatal(format!(
                    "not running {}: {} (pid {}) runs {}, whose compatibility cannot be read ({e}); nothing was done",
                    step.id, p.role, p.proc.pid, p.release
                ))
            })?;
            &loaded
        };
        if let Some(why) =
            xorb_engine::compat::cannot_run_after(&step.action, &p.role, rel, &runner.to)
        {
            return Err(StepError::fatal(format!(
                "not running {}: {} (pid {}) still runs {}, and {why}. Nothing was done. Roll {} to {} first \
                 (or stop that process if it should not run), then resume",
                step.id,
                p.role,
                p.proc.pid,
                p.release,
                p.role,
                runner.to.name()
            )));
        }
    }
    Ok(())
}

fn port_of(p: &LiveProc) -> Option<u16> {
    p.env
        .get("XORB_LISTEN_ADDR")
        .and_then(|a| a.rsplit_once(':'))
        .and_then(|(_, port)| port.parse().ok())
}

async fn observe(runner: &LocalRunner) -> Vec<(LiveProc, Observed)> {
    let mut out = Vec::new();
    for p in live_service_procs(&runner.state_dir) {
        let healthy = match port_of(&p) {
            Some(port) => stack::probe_service(&runner.http, port)
                .await
                .is_ok_and(|h| h.healthy),
            None => false,
        };
        let o = Observed {
            role: p.role.clone(),
            release: p.release.clone(),
            healthy,
        };
        out.push((p, o));
    }
    out
}

/// Applies `procedure` as far as it helps (see `xorb_engine::emergency`) and reports what runs afterwards.
pub async fn emergency(
    runner: &LocalRunner,
    procedure: EmergencyProcedure,
) -> Result<String, StepError> {
    let st = runner.stack()?;
    let before = observe(runner).await;
    let seen: Vec<Observed> = before.iter().map(|(_, o)| o.clone()).collect();
    let decision = emergency::decide(procedure, &seen);
    for (p, _) in before
        .iter()
        .filter(|(p, _)| decision.stop.contains(&p.role))
    {
        tokio::task::block_in_place(|| p.proc.stop(Signal::SIGTERM, Duration::from_secs(20)));
    }
    let mut did = Vec::new();
    if let Some(why) = &decision.held_back {
        did.push(why.clone());
    } else if !decision.stop.is_empty() {
        did.push(format!("stopped {}", decision.stop.join(", ")));
    }
    if decision.circuit_breaker
        && let Some(api) = st.service("api").cloned()
    {
        let mut cfg = api.config.clone();
        cfg.insert("CIRCUIT_BREAKER_ENABLED".into(), "true".into());
        runner
            .converge_service("api", &api.image, &cfg, Duration::from_secs(120))
            .await?;
        did.push("api restarted with CIRCUIT_BREAKER_ENABLED=true".into());
    }
    let roles: Vec<String> = st.services.iter().map(|s| s.name.clone()).collect();
    let after: Vec<Observed> = observe(runner).await.into_iter().map(|(_, o)| o).collect();
    if did.is_empty() {
        did.push("nothing to stop".into());
    }
    Ok(format!(
        "{}; {}",
        did.join("; "),
        emergency::describe(&roles, &after)
    ))
}
