//! The platform's services as local processes: start one, where it logs, wait until it reports healthy.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::LocalError;
use crate::process::{ProcRecord, poll_until, spawn_detached};
use crate::state::{Secrets, ServiceState, StackState};
pub use xorb_adapters::Paths;
use xorb_adapters::files::mkdir;
use xorb_adapters::services::probe_service;

pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(90);

/// Variables of our own environment a service inherits: not part of its configuration.
pub const PASSTHROUGH_ENV: [&str; 5] = ["PATH", "HOME", "LANG", "RUST_LOG", "RUST_BACKTRACE"];

/// Starts one service process (`xorb/ROLE:RELEASE` is `xorb-svc --role ROLE --release RELEASE` here).
pub fn start_service(
    paths: &Paths,
    state_dir: &Path,
    stack: &StackState,
    secrets: &Secrets,
    svc: &ServiceState,
) -> Result<ProcRecord, LocalError> {
    let dir = state_dir.join("services").join(&svc.name);
    mkdir(&dir, 0o700)?;
    let mut cmd = Command::new(&paths.svc_bin);
    cmd.args(["--role", &svc.name, "--release", &svc.release]);
    cmd.env_clear();
    for k in PASSTHROUGH_ENV {
        if let Ok(v) = std::env::var(k) {
            cmd.env(k, v);
        }
    }
    cmd.envs(stack.service_env(state_dir, secrets, svc));
    spawn_detached(cmd, &service_log(state_dir, &svc.name))
}

pub fn service_log(state_dir: &Path, name: &str) -> PathBuf {
    state_dir
        .join("services")
        .join(name)
        .join(format!("{name}.log"))
}

/// The last lines of a log, to say why a process died without sending the operator digging.
fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join(" | ")
}

/// Waits until the service answers healthy on `release`; fails early if its process died.
pub async fn wait_healthy(
    state_dir: &Path,
    svc: &ServiceState,
    release: &str,
    within: Duration,
) -> Result<(), LocalError> {
    let log = service_log(state_dir, &svc.name);
    let http = reqwest::Client::new();
    let last = std::sync::Mutex::new(String::from("no answer yet"));
    let set = |s: String| *last.lock().unwrap_or_else(|e| e.into_inner()) = s;
    let ok = poll_until(within, || {
        let http = http.clone();
        let set = &set;
        let log = &log;
        async move {
            if let Some(p) = &svc.proc
                && !p.is_alive()
            {
                set(format!(
                    "its process exited; {}: {}",
                    log.display(),
                    log_tail(log, 3)
                ));
                return Some(false);
            }
            match probe_service(&http, &format!("http://127.0.0.1:{}", svc.port)).await {
                Ok(h) if h.healthy && h.release.as_deref() == Some(release) => Some(true),
                Ok(h) => {
                    set(format!("health says {}", h.detail));
                    None
                }
                Err(e) => {
                    set(e);
                    None
                }
            }
        }
    })
    .await;
    match ok {
        Some(true) => Ok(()),
        _ => Err(LocalError::Unhealthy {
            service: svc.name.clone(),
            secs: within.as_secs(),
            why: last.into_inner().unwrap_or_else(|e| e.into_inner()),
        }),
    }
}
