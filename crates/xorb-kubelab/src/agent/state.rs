//! What the agent knows of each Pod and container it runs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tokio::sync::mpsc;

use super::ports::PortMap;
use super::probes::{ProbeTarget, Prober};
use super::spawn::Ctl;

pub(super) const BACKOFF_START: Duration = Duration::from_secs(1);
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub(super) struct Terminated {
    pub(super) exit_code: i32,
    pub(super) signal: Option<i32>,
    pub(super) reason: String,
    pub(super) message: Option<String>,
    pub(super) started_at: Option<Time>,
    pub(super) finished_at: Time,
    pub(super) container_id: String,
}

pub(super) enum State {
    Waiting {
        reason: String,
        message: String,
    },
    Running {
        started_at: Time,
        pid: u32,
        instance: u64,
        ctl: mpsc::UnboundedSender<Ctl>,
    },
    Terminated(Terminated),
}

pub(super) struct ContainerRun {
    pub(super) spec: Container,
    pub(super) state: State,
    pub(super) restart_count: i32,
    pub(super) last: Option<Terminated>,
    /// When the next start is due (back-off), if one is.
    pub(super) next_start: Option<Instant>,
    pub(super) backoff: Duration,
    /// Image not resolvable: "pull" attempts so far (ErrImagePull on the first, ImagePullBackOff after).
    pub(super) pull_failures: u32,
    pub(super) started_once: bool,
    /// Probes of the running instance (none while it is not running).
    pub(super) readiness: Option<Prober>,
    pub(super) liveness: Option<Prober>,
    pub(super) probe_target: Option<ProbeTarget>,
    /// A failed liveness probe sent SIGTERM: SIGKILL at this instant if the process is still there.
    pub(super) liveness_kill_at: Option<Instant>,
}

impl ContainerRun {
    pub(super) fn new(spec: Container) -> Self {
        Self {
            spec,
            state: State::Waiting {
                reason: "ContainerCreating".into(),
                message: String::new(),
            },
            restart_count: 0,
            last: None,
            next_start: Some(Instant::now()),
            backoff: BACKOFF_START,
            pull_failures: 0,
            started_once: false,
            readiness: None,
            liveness: None,
            probe_target: None,
            liveness_kill_at: None,
        }
    }

    /// Ready as a kubelet says it: running, not being deleted, and its readiness probe (if any) passed.
    pub(super) fn ready(&self) -> bool {
        matches!(self.state, State::Running { .. })
            && (self.spec.readiness_probe.is_none()
                || self.readiness.as_ref().is_some_and(|p| p.ok))
    }
}

pub(super) struct Condition {
    pub(super) status: bool,
    pub(super) since: Time,
    pub(super) reason: Option<String>,
    pub(super) message: Option<String>,
}

pub(super) struct PodRun {
    pub(super) name: String,
    pub(super) uid: String,
    pub(super) pod: Pod,
    pub(super) dir: PathBuf,
    pub(super) start_time: Time,
    pub(super) containers: Vec<ContainerRun>,
    pub(super) conditions: BTreeMap<&'static str, Condition>,
    /// Set once deletion began: SIGKILL after this instant.
    pub(super) kill_at: Option<Instant>,
    /// Set once deletion began, cleared once the containers are sent SIGTERM ([`DRAIN`] later).
    pub(super) term_at: Option<Instant>,
    /// The Pod is gone from the API (deleted without grace): stop and forget.
    pub(super) gone: bool,
    pub(super) dirty: bool,
    /// The Pod's containerPorts on loopback, recorded on the Pod once `annotated`.
    pub(super) ports: PortMap,
    pub(super) annotated: bool,
    /// Unsupported features: the reason every container stays in CreateContainerConfigError.
    pub(super) refused: Option<String>,
}

/// How long a Pod being deleted keeps running before its containers get SIGTERM, as if every Pod had a preStop
/// sleep: the Service proxy lists Pods every 300 ms and stops sending new connections to one being deleted only
/// when it sees it. Signalled at once, a Pod would drop the connections forwarded meanwhile (a rolling update then
/// loses requests, which the proxy's test caught under load). Never longer than the Pod's grace period.
pub(super) const DRAIN: Duration = Duration::from_secs(1);

pub(super) fn grace_of(pod: &Pod) -> Duration {
    let secs = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30);
    Duration::from_secs(secs.max(0) as u64)
}

pub(super) fn signal(c: &ContainerRun, what: Ctl) {
    if let State::Running { ctl, .. } = &c.state {
        let _ = ctl.send(what);
    }
}

pub(super) fn container_id(uid: &str, container: &str, instance: u64) -> String {
    format!("xorb://{uid}/{container}/{instance}")
}
