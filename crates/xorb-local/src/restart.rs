//! Bringing back what died in a running stack, in place: each missing server on the port it had, with its data and
//! the configuration it last had, then each missing service on its recorded release and configuration.
//!
//! Why in place: a server can die in the middle of a rollback (phase 3 or 4), when the services already run the
//! target release and phase 4 may have changed Redis's or Prometheus's configuration. Restarting the whole stack
//! from a release would undo that, and new ports would cut the services off. `xorbctl stack up` on a stack that
//! is half gone calls this; `resume` then finishes the run.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::LocalError;
use crate::process::ProcRecord;
use crate::servers;
use crate::services;
use crate::state::{Paths, Secrets, StackState};

/// What is not running in the stack, by name (servers first, then services).
pub fn missing(st: &StackState) -> Vec<String> {
    let mut out: Vec<String> = servers_of(st)
        .into_iter()
        .filter(|(_, p)| !p.is_alive())
        .map(|(n, _)| n.to_string())
        .collect();
    out.extend(
        st.services
            .iter()
            .filter(|s| !s.proc.as_ref().is_some_and(ProcRecord::is_alive))
            .map(|s| s.name.clone()),
    );
    out
}

fn servers_of(st: &StackState) -> Vec<(&'static str, &ProcRecord)> {
    let mut v = vec![
        ("postgres", &st.postgres.proc),
        ("redis", &st.redis.proc),
        ("nats", &st.nats.server.proc),
        ("prometheus", &st.prometheus.proc),
    ];
    if let Some(am) = &st.alertmanager {
        v.push(("alertmanager", &am.proc));
    }
    v
}

/// Restarts every server and service of the stack that is not running; returns their names. What runs is left
/// alone. Each restart is recorded in stack.json as soon as it runs, so `stack down` stops exactly it.
pub async fn restart_missing(paths: &Paths, state_dir: &Path) -> Result<Vec<String>, LocalError> {
    let mut st = StackState::load(state_dir)?;
    let secrets = Secrets::load(state_dir)?;
    let mut done = Vec::new();
    if !st.postgres.proc.is_alive() {
        // A postmaster killed alone leaves backends that keep its shared memory: they must be gone first.
        kill_group(&st.postgres.proc);
        st.postgres = servers::start_postgres_on(
            &state_dir.join("postgres"),
            &secrets.db_password,
            Some(st.postgres.port),
        )
        .await?;
        st.save(state_dir)?;
        done.push("postgres".to_string());
    }
    if !st.redis.proc.is_alive() {
        kill_group(&st.redis.proc);
        st.redis = servers::restart_redis(
            &state_dir.join("redis"),
            st.redis.port,
            &secrets.redis_password,
        )
        .await?;
        st.save(state_dir)?;
        done.push("redis".to_string());
    }
    if !st.nats.server.proc.is_alive() {
        kill_group(&st.nats.server.proc);
        st.nats = servers::restart_nats(&state_dir.join("nats"), &st.nats).await?;
        st.save(state_dir)?;
        done.push("nats".to_string());
    }
    if !st.prometheus.proc.is_alive() {
        kill_group(&st.prometheus.proc);
        let dir = state_dir.join("prometheus");
        st.prometheus = servers::start_prometheus_on(
            &dir,
            &dir.join("prometheus.yml"),
            Some(st.prometheus.port),
        )
        .await?;
        st.save(state_dir)?;
        done.push("prometheus".to_string());
    }
    if let Some(am) = st.alertmanager.clone()
        && !am.proc.is_alive()
    {
        kill_group(&am.proc);
        let dir = state_dir.join("alertmanager");
        st.alertmanager = Some(
            servers::start_alertmanager_on(&dir, &dir.join("alertmanager.yml"), Some(am.port))
                .await?,
        );
        st.save(state_dir)?;
        done.push("alertmanager".to_string());
    }
    // A service whose server came back may not reconnect by itself (its Redis connection stays broken): one that
    // does not answer healthy is restarted too, on its recorded release and configuration.
    let servers_restarted = !done.is_empty();
    let http = xorb_adapters::deps::http_client();
    for i in 0..st.services.len() {
        let svc = st.services[i].clone();
        if let Some(p) = svc.proc.as_ref().filter(|p| p.is_alive()) {
            if !servers_restarted
                || xorb_adapters::services::probe_service(
                    &http,
                    &format!("http://127.0.0.1:{}", svc.port),
                )
                .await
                .is_ok_and(|h| h.healthy)
            {
                continue;
            }
            tokio::task::block_in_place(|| p.stop(Signal::SIGTERM, Duration::from_secs(20)));
        }
        let proc = services::start_service(paths, state_dir, &st, &secrets, &svc)?;
        st.services[i].proc = Some(proc);
        st.save(state_dir)?;
        services::wait_healthy(
            state_dir,
            &st.services[i],
            &svc.release,
            services::HEALTH_TIMEOUT,
        )
        .await?;
        done.push(svc.name.clone());
    }
    Ok(done)
}

/// SIGKILLs what is left of a dead server's process group (we start each server as the leader of its own group),
/// and waits until it is gone. Only when the leader is gone: a live pid may belong to someone else by now.
fn kill_group(leader: &ProcRecord) {
    if leader.is_alive() {
        return;
    }
    let pgid = nix::unistd::Pid::from_raw(leader.pid);
    if nix::sys::signal::killpg(pgid, Signal::SIGKILL).is_err() {
        return;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while nix::sys::signal::killpg(pgid, None).is_ok() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}
