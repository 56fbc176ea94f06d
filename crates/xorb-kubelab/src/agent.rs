//! The node agent (test and demo support, not product): a kubelet small enough to read. It registers a Node,
//! binds the unscheduled Pods of one namespace to it, runs each container as a local process from an image map,
//! and reports honest Pod status: phase, the PodScheduled, Initialized, ContainersReady and Ready conditions with
//! their transition times, container states (waiting, running, terminated, the last termination), restart counts.
//! A crashed container restarts with a back-off as its Pod's restartPolicy says; a deleted Pod's containers get
//! SIGTERM, then SIGKILL when the grace period ends, and the Pod is then removed for good. An image the map does
//! not know stays waiting (`ErrImagePull`, then `ImagePullBackOff`), as a bad image does in a real cluster.
//!
//! Not yet (issue #9's next steps, refused honestly rather than faked): volumes (a Pod that has any stays
//! `CreateContainerConfigError`), container ports on free loopback ports, readiness probes (a container that has
//! one is reported not ready), liveness probes (not run). Env: literal values, `fieldRef` (metadata.name,
//! metadata.namespace, metadata.uid, spec.nodeName, status.podIP, status.hostIP), `configMapKeyRef`,
//! `secretKeyRef`, and `envFrom` ConfigMaps and Secrets; `$(VAR)` in command and args is expanded.
//!
//! Each container is a process group of its own: SIGTERM goes to its main process (as a container runtime sends
//! it to PID 1), SIGKILL to the whole group, and the group is killed when the main process ends. It gets a clean
//! environment (PATH, HOSTNAME and what the Pod gives it) and its output is appended to
//! `WORK_DIR/NAMESPACE/POD-UID/CONTAINER.log`. Being in groups of their own, containers do not get a terminal's
//! Ctrl-C: [`NodeAgent::stop`] or dropping the agent stops them; a test process killed outright leaves them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Node, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::watcher;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

/// How an image runs: a program and its default arguments (the image's ENTRYPOINT and CMD).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entrypoint {
    pub program: PathBuf,
    pub args: Vec<String>,
}

/// Which images the agent can run, and how.
#[derive(Debug, Clone, Default)]
pub struct ImageMap {
    xorb_svc: Option<PathBuf>,
    exact: BTreeMap<String, Entrypoint>,
}

impl ImageMap {
    pub fn new() -> Self {
        Self::default()
    }

    /// `xorb/<role>:<release>` runs as `XORB_SVC --role ROLE --release RELEASE`.
    pub fn xorb_svc(mut self, program: impl Into<PathBuf>) -> Self {
        self.xorb_svc = Some(program.into());
        self
    }

    /// `image` (exactly, tag included) runs as `program args…`.
    pub fn image(
        mut self,
        image: &str,
        program: impl Into<PathBuf>,
        args: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        self.exact.insert(
            image.to_string(),
            Entrypoint {
                program: program.into(),
                args: args.into_iter().map(Into::into).collect(),
            },
        );
        self
    }

    /// The entrypoint of `image`, or None when this agent cannot "pull" it.
    pub fn resolve(&self, image: &str) -> Option<Entrypoint> {
        if let Some(e) = self.exact.get(image) {
            return Some(e.clone());
        }
        let svc = self.xorb_svc.as_ref()?;
        let (role, release) = image.strip_prefix("xorb/")?.split_once(':')?;
        let ok = |s: &str, extra: &[char]| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || extra.contains(&c))
        };
        if !ok(role, &[]) || !ok(release, &['.', '_']) {
            return None;
        }
        Some(Entrypoint {
            program: svc.clone(),
            args: vec![
                "--role".into(),
                role.into(),
                "--release".into(),
                release.into(),
            ],
        })
    }
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The namespace whose Pods this agent runs (it binds every unscheduled one).
    pub namespace: String,
    /// The Node it registers and binds Pods to.
    pub node_name: String,
    pub images: ImageMap,
    /// Container logs and working directories.
    pub work_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("registering the Node {node}: {source}")]
    Register {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// One running container process, as tests can look at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentProcess {
    pub pod: String,
    pub pod_uid: String,
    pub container: String,
    pub pid: u32,
}

/// The running processes and their waiters' control channels, for `processes()` and `Drop`.
type Shared = Arc<Mutex<Vec<(AgentProcess, mpsc::UnboundedSender<Ctl>)>>>;

/// A container's environment, in order.
type Env = Vec<(String, String)>;

/// A running agent. [`NodeAgent::stop`] stops every container it runs (SIGTERM, the Pod's grace period up to
/// 10 s, SIGKILL) and the watch; dropping it without `stop` SIGKILLs the containers' process groups.
pub struct NodeAgent {
    task: Option<tokio::task::JoinHandle<()>>,
    stop: Option<oneshot::Sender<()>>,
    processes: Shared,
}

impl NodeAgent {
    /// Registers the Node (or takes it over), then runs in the background on the current tokio runtime.
    pub async fn start(client: kube::Client, config: AgentConfig) -> Result<Self, AgentError> {
        // kube's TLS is rustls; with more than one provider in the build rustls cannot pick one itself.
        let _ = rustls::crypto::ring::default_provider().install_default();
        std::fs::create_dir_all(&config.work_dir).map_err(|e| AgentError::Io {
            what: format!("cannot create {}", config.work_dir.display()),
            source: e,
        })?;
        register_node(&client, &config.node_name)
            .await
            .map_err(|source| AgentError::Register {
                node: config.node_name.clone(),
                source,
            })?;
        let processes: Shared = Arc::default();
        let (stop_tx, stop_rx) = oneshot::channel();
        let (exit_tx, exit_rx) = mpsc::unbounded_channel();
        let agent = Agent {
            pods: Api::namespaced(client.clone(), &config.namespace),
            config_maps: Api::namespaced(client.clone(), &config.namespace),
            secrets: Api::namespaced(client, &config.namespace),
            config,
            runs: HashMap::new(),
            exit_tx,
            shared: processes.clone(),
            next_instance: 0,
        };
        let task = tokio::spawn(agent.run(stop_rx, exit_rx));
        Ok(Self {
            task: Some(task),
            stop: Some(stop_tx),
            processes,
        })
    }

    /// The container processes running now.
    pub fn processes(&self) -> Vec<AgentProcess> {
        self.processes
            .lock()
            .map(|p| p.iter().map(|(p, _)| p.clone()).collect())
            .unwrap_or_default()
    }

    /// Stops every container (SIGTERM, up to each Pod's grace period capped at 10 s, SIGKILL) and the agent. The
    /// Pods stay in the API as they are: a node that went away.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        // Each process's waiter (a task of its own) kills its group, if the process still runs; when the runtime
        // itself is gone, kill_on_drop has already killed the leaders.
        if let Ok(list) = self.processes.lock() {
            for (_, ctl) in list.iter() {
                let _ = ctl.send(Ctl::Kill);
            }
        }
    }
}

async fn register_node(client: &kube::Client, name: &str) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": std::env::consts::ARCH,
                "xorb.dev/node-agent": "true",
            },
        },
    }))
    .map_err(kube::Error::SerdeError)?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e),
    }
    let now = now();
    let ready = |t: &str, status: &str, reason: &str, message: &str| {
        json!({"type": t, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    let status = json!({"status": {
        "conditions": [
            ready("Ready", "True", "XorbNodeAgentReady", "the xorb node agent runs Pods as local processes"),
            ready("MemoryPressure", "False", "XorbNodeAgent", "not measured"),
            ready("DiskPressure", "False", "XorbNodeAgent", "not measured"),
            ready("PIDPressure", "False", "XorbNodeAgent", "not measured"),
        ],
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": name}],
        "capacity": {"cpu": "2", "memory": "4Gi", "pods": "110"},
        "allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"},
        "nodeInfo": {
            "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "",
            "osImage": "local processes", "containerRuntimeVersion": "xorb-node-agent://0.1",
            "kubeletVersion": "v1.20.2-xorb", "kubeProxyVersion": "",
            "operatingSystem": "linux", "architecture": std::env::consts::ARCH,
        },
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

fn time_json(t: &Time) -> Value {
    serde_json::to_value(t).unwrap_or(Value::Null)
}

// ----------------------------------------------------------------------------------------------------------------
// The agent's loop: one task owns all state. Pod events come from the watch, process exits from one waiter task
// per process, and a 200 ms tick drives restarts, grace periods and status updates.

/// What the agent asks of a process's waiter.
enum Ctl {
    /// SIGTERM to the container's main process only, as a container runtime does.
    Term,
    /// SIGKILL to the container's whole process group.
    Kill,
}

struct Exit {
    uid: String,
    container: String,
    instance: u64,
    code: Option<i32>,
    signal: Option<i32>,
}

#[derive(Clone)]
struct Terminated {
    exit_code: i32,
    signal: Option<i32>,
    reason: String,
    message: Option<String>,
    started_at: Option<Time>,
    finished_at: Time,
    container_id: String,
}

enum State {
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

struct ContainerRun {
    spec: Container,
    state: State,
    restart_count: i32,
    last: Option<Terminated>,
    /// When the next start is due (back-off), if one is.
    next_start: Option<Instant>,
    backoff: Duration,
    /// Image not resolvable: "pull" attempts so far (ErrImagePull on the first, ImagePullBackOff after).
    pull_failures: u32,
    started_once: bool,
}

struct Condition {
    status: bool,
    since: Time,
    reason: Option<String>,
    message: Option<String>,
}

struct PodRun {
    name: String,
    uid: String,
    pod: Pod,
    dir: PathBuf,
    start_time: Time,
    containers: Vec<ContainerRun>,
    conditions: BTreeMap<&'static str, Condition>,
    /// Set once deletion began: SIGKILL after this instant.
    kill_at: Option<Instant>,
    /// The Pod is gone from the API (deleted without grace): stop and forget.
    gone: bool,
    dirty: bool,
    /// Unsupported features: the reason every container stays in CreateContainerConfigError.
    refused: Option<String>,
}

struct Agent {
    pods: Api<Pod>,
    config_maps: Api<ConfigMap>,
    secrets: Api<Secret>,
    config: AgentConfig,
    runs: HashMap<String, PodRun>,
    exit_tx: mpsc::UnboundedSender<Exit>,
    shared: Shared,
    next_instance: u64,
}

const TICK: Duration = Duration::from_millis(200);
const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
const STOP_GRACE_CAP: Duration = Duration::from_secs(10);

impl Agent {
    async fn run(
        mut self,
        mut stop: oneshot::Receiver<()>,
        mut exits: mpsc::UnboundedReceiver<Exit>,
    ) {
        let watch = watcher(self.pods.clone(), watcher::Config::default());
        let mut watch = std::pin::pin!(watch);
        let mut tick = tokio::time::interval(TICK);
        let mut listing: Option<HashSet<String>> = None;
        loop {
            tokio::select! {
                _ = &mut stop => break,
                ev = watch.next() => match ev {
                    Some(Ok(watcher::Event::Init)) => listing = Some(HashSet::new()),
                    Some(Ok(watcher::Event::InitApply(pod))) => {
                        if let Some(seen) = listing.as_mut()
                            && let Some(uid) = pod.metadata.uid.clone()
                        {
                            seen.insert(uid);
                        }
                        self.on_pod(pod).await;
                    }
                    Some(Ok(watcher::Event::InitDone)) => {
                        // A relist: what was running and is not listed any more is gone.
                        if let Some(seen) = listing.take() {
                            for (uid, run) in self.runs.iter_mut() {
                                if !seen.contains(uid) {
                                    run.gone = true;
                                }
                            }
                        }
                    }
                    Some(Ok(watcher::Event::Apply(pod))) => self.on_pod(pod).await,
                    Some(Ok(watcher::Event::Delete(pod))) => {
                        if let Some(run) = pod.metadata.uid.as_ref().and_then(|u| self.runs.get_mut(u)) {
                            run.gone = true;
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!("node agent: watch error: {e}");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    None => break,
                },
                Some(exit) = exits.recv() => self.on_exit(exit),
                _ = tick.tick() => self.on_tick().await,
            }
        }
        self.shutdown(&mut exits).await;
    }

    /// Stops every container: SIGTERM, each Pod's grace period (capped), SIGKILL; waits for the exits.
    async fn shutdown(&mut self, exits: &mut mpsc::UnboundedReceiver<Exit>) {
        let mut deadline = Instant::now();
        for run in self.runs.values_mut() {
            let grace = grace_of(&run.pod).min(STOP_GRACE_CAP);
            deadline = deadline.max(Instant::now() + grace);
            for c in &mut run.containers {
                signal(c, Ctl::Term);
                c.next_start = None;
            }
        }
        let mut killed = false;
        while self.runs.values().any(|r| {
            r.containers
                .iter()
                .any(|c| matches!(c.state, State::Running { .. }))
        }) {
            if !killed && Instant::now() >= deadline {
                for run in self.runs.values_mut() {
                    for c in &mut run.containers {
                        signal(c, Ctl::Kill);
                    }
                }
                killed = true;
            }
            if let Ok(Some(exit)) = tokio::time::timeout(TICK, exits.recv()).await {
                self.on_exit(exit);
            }
        }
        self.publish();
    }

    async fn on_pod(&mut self, pod: Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        let name = pod.metadata.name.clone().unwrap_or_default();
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let deleting = pod.metadata.deletion_timestamp.is_some();
        match node {
            None if !deleting => {
                self.bind(&name, &uid).await;
                return;
            }
            Some(n) if n == self.config.node_name => {}
            _ => return,
        }
        let finished = matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded") | Some("Failed")
        );
        if !self.runs.contains_key(&uid) {
            if deleting {
                // Never started here (or the agent restarted): nothing to stop, finish the deletion.
                self.finalize_delete(&name, &uid).await;
                return;
            }
            if finished {
                return;
            }
            let run = self.new_run(&name, &uid, pod.clone());
            self.runs.insert(uid.clone(), run);
        }
        let Some(run) = self.runs.get_mut(&uid) else {
            return;
        };
        run.pod = pod;
        if deleting && run.kill_at.is_none() {
            let grace = grace_of(&run.pod);
            run.kill_at = Some(Instant::now() + grace);
            for c in &mut run.containers {
                c.next_start = None;
                signal(c, Ctl::Term);
            }
            run.dirty = true;
        }
    }

    fn new_run(&mut self, name: &str, uid: &str, pod: Pod) -> PodRun {
        let spec = pod.spec.clone().unwrap_or_default();
        let refused = if spec.volumes.as_ref().is_some_and(|v| !v.is_empty()) {
            Some("volumes are not supported by the xorb node agent yet".to_string())
        } else if spec.init_containers.as_ref().is_some_and(|v| !v.is_empty()) {
            Some("init containers are not supported by the xorb node agent yet".to_string())
        } else {
            None
        };
        let short_uid: String = uid.chars().take(8).collect();
        let dir = self
            .config
            .work_dir
            .join(&self.config.namespace)
            .join(format!("{name}-{short_uid}"));
        let t = now();
        let mut conditions = BTreeMap::new();
        for (ty, status) in [
            ("PodScheduled", true),
            ("Initialized", true),
            ("ContainersReady", false),
            ("Ready", false),
        ] {
            conditions.insert(
                ty,
                Condition {
                    status,
                    since: t.clone(),
                    reason: None,
                    message: None,
                },
            );
        }
        let now_i = Instant::now();
        PodRun {
            name: name.to_string(),
            uid: uid.to_string(),
            dir,
            start_time: t,
            containers: spec
                .containers
                .iter()
                .map(|c| ContainerRun {
                    spec: c.clone(),
                    state: State::Waiting {
                        reason: "ContainerCreating".into(),
                        message: String::new(),
                    },
                    restart_count: 0,
                    last: None,
                    next_start: Some(now_i),
                    backoff: BACKOFF_START,
                    pull_failures: 0,
                    started_once: false,
                })
                .collect(),
            conditions,
            kill_at: None,
            gone: false,
            dirty: true,
            refused,
            pod,
        }
    }

    async fn bind(&self, name: &str, uid: &str) {
        let binding = json!({
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name, "uid": uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.config.node_name},
        });
        match self
            .pods
            .create_subresource::<Value, Value>("binding", name, &PostParams::default(), &binding)
            .await
        {
            Ok(_) => {}
            // Bound meanwhile (409), or gone (404): the watch tells what happened.
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {}
            Err(e) => tracing::warn!("node agent: binding {name}: {e}"),
        }
    }

    fn on_exit(&mut self, exit: Exit) {
        let Some(run) = self.runs.get_mut(&exit.uid) else {
            return;
        };
        let Some(c) = run
            .containers
            .iter_mut()
            .find(|c| c.spec.name == exit.container)
        else {
            return;
        };
        let State::Running {
            started_at,
            instance,
            ..
        } = &c.state
        else {
            return;
        };
        if *instance != exit.instance {
            return;
        }
        let code = exit.code.unwrap_or_else(|| 128 + exit.signal.unwrap_or(0));
        let reason = if code == 0 { "Completed" } else { "Error" };
        let t = Terminated {
            exit_code: code,
            signal: exit.signal,
            reason: reason.to_string(),
            message: None,
            started_at: Some(started_at.clone()),
            finished_at: now(),
            container_id: container_id(&exit.uid, &exit.container, exit.instance),
        };
        let policy = run
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into());
        let restart = run.kill_at.is_none()
            && !run.gone
            && (policy == "Always" || (policy == "OnFailure" && code != 0));
        if restart {
            c.last = Some(t);
            c.next_start = Some(Instant::now() + c.backoff);
            c.state = State::Waiting {
                reason: "CrashLoopBackOff".into(),
                message: format!(
                    "back-off {}s restarting failed container={} pod={}",
                    c.backoff.as_secs(),
                    c.spec.name,
                    run.name
                ),
            };
            c.backoff = (c.backoff * 2).min(BACKOFF_MAX);
        } else {
            c.state = State::Terminated(t);
        }
        run.dirty = true;
        self.publish();
    }

    async fn on_tick(&mut self) {
        let uids: Vec<String> = self.runs.keys().cloned().collect();
        for uid in uids {
            self.drive(&uid).await;
        }
        self.publish();
    }

    /// One step for one Pod: starts due containers, enforces the grace period, finishes deletions, reports.
    async fn drive(&mut self, uid: &str) {
        let Some(run) = self.runs.get_mut(uid) else {
            return;
        };
        let any_running = run
            .containers
            .iter()
            .any(|c| matches!(c.state, State::Running { .. }));
        if run.gone || run.kill_at.is_some() {
            if any_running {
                if run.gone && run.kill_at.is_none() {
                    run.kill_at = Some(Instant::now() + Duration::from_secs(2));
                    for c in &mut run.containers {
                        signal(c, Ctl::Term);
                    }
                }
                if run.kill_at.is_some_and(|k| Instant::now() >= k) {
                    for c in &mut run.containers {
                        signal(c, Ctl::Kill);
                    }
                }
                if run.dirty && !run.gone {
                    self.report(uid).await;
                }
                return;
            }
            // Every container has ended.
            if run.gone {
                self.runs.remove(uid);
            } else {
                let (name, uid) = (run.name.clone(), run.uid.clone());
                self.report(&uid).await;
                self.finalize_delete(&name, &uid).await;
            }
            return;
        }
        let due: Vec<usize> = run
            .containers
            .iter()
            .enumerate()
            .filter(|(_, c)| {
                !matches!(c.state, State::Running { .. })
                    && c.next_start.is_some_and(|t| Instant::now() >= t)
            })
            .map(|(i, _)| i)
            .collect();
        for i in due {
            self.start_container(uid, i).await;
        }
        if self.runs.get(uid).is_some_and(|r| r.dirty) {
            self.report(uid).await;
        }
    }

    async fn start_container(&mut self, uid: &str, index: usize) {
        let instance = self.next_instance;
        self.next_instance += 1;
        // Everything that needs the API first (env from ConfigMaps and Secrets), then the process.
        let (spec, pod) = match self.runs.get(uid) {
            Some(run) => (run.containers[index].spec.clone(), run.pod.clone()),
            None => return,
        };
        let refused = self.runs.get(uid).and_then(|r| r.refused.clone());
        let image = spec.image.clone().unwrap_or_default();
        let outcome: Result<(Entrypoint, Env), (&'static str, String)> =
            match (&refused, self.config.images.resolve(&image)) {
                (Some(why), _) => Err(("CreateContainerConfigError", why.clone())),
                (None, None) => Err((
                    "ErrImagePull",
                    format!("image {image:?} is not in the xorb node agent's image map"),
                )),
                (None, Some(entry)) => match self.environment(&spec, &pod).await {
                    Ok(env) => Ok((entry, env)),
                    Err(why) => Err(("CreateContainerConfigError", why)),
                },
            };
        let Some(run) = self.runs.get_mut(uid) else {
            return;
        };
        run.dirty = true;
        let c = &mut run.containers[index];
        let (entry, env) = match outcome {
            Ok(ok) => ok,
            Err((reason, message)) => {
                let reason = if reason == "ErrImagePull" {
                    c.pull_failures += 1;
                    if c.pull_failures > 1 {
                        "ImagePullBackOff"
                    } else {
                        "ErrImagePull"
                    }
                } else {
                    reason
                };
                c.state = State::Waiting {
                    reason: reason.into(),
                    message,
                };
                c.next_start = Some(Instant::now() + c.backoff);
                c.backoff = (c.backoff * 2).min(BACKOFF_MAX);
                return;
            }
        };
        let (program, args) = command_line(&spec, &entry, &env);
        let spawned = spawn_process(
            &run.dir,
            &spec,
            &run.name,
            program,
            args,
            env,
            &run.uid,
            instance,
            self.exit_tx.clone(),
        );
        let c = &mut run.containers[index];
        match spawned {
            Ok((pid, ctl)) => {
                if c.started_once {
                    c.restart_count += 1;
                }
                c.started_once = true;
                c.next_start = None;
                c.state = State::Running {
                    started_at: now(),
                    pid,
                    instance,
                    ctl,
                };
            }
            Err(message) => {
                c.state = State::Waiting {
                    reason: "RunContainerError".into(),
                    message,
                };
                c.next_start = Some(Instant::now() + c.backoff);
                c.backoff = (c.backoff * 2).min(BACKOFF_MAX);
            }
        }
        self.publish();
    }

    /// The container's environment, in Kubernetes' order: `envFrom` sources, then `env` (later wins).
    async fn environment(
        &self,
        spec: &Container,
        pod: &Pod,
    ) -> Result<Vec<(String, String)>, String> {
        let mut env: Vec<(String, String)> = Vec::new();
        fn set(env: &mut Vec<(String, String)>, k: String, v: String) {
            env.retain(|(e, _)| *e != k);
            env.push((k, v));
        }
        for from in spec.env_from.iter().flatten() {
            let prefix = from.prefix.clone().unwrap_or_default();
            if let Some(r) = &from.config_map_ref {
                match self.config_map(&r.name).await? {
                    Some(data) => {
                        for (k, v) in data {
                            set(&mut env, format!("{prefix}{k}"), v);
                        }
                    }
                    None if r.optional == Some(true) => {}
                    None => return Err(format!("configmap {:?} not found", r.name)),
                }
            }
            if let Some(r) = &from.secret_ref {
                match self.secret(&r.name).await? {
                    Some(data) => {
                        for (k, v) in data {
                            set(&mut env, format!("{prefix}{k}"), v);
                        }
                    }
                    None if r.optional == Some(true) => {}
                    None => return Err(format!("secret {:?} not found", r.name)),
                }
            }
        }
        for e in spec.env.iter().flatten() {
            if let Some(v) = &e.value {
                let expanded = expand(v, &env);
                set(&mut env, e.name.clone(), expanded);
                continue;
            }
            let Some(from) = &e.value_from else {
                set(&mut env, e.name.clone(), String::new());
                continue;
            };
            let value = if let Some(f) = &from.field_ref {
                let meta = &pod.metadata;
                match f.field_path.as_str() {
                    "metadata.name" => meta.name.clone(),
                    "metadata.namespace" => meta.namespace.clone(),
                    "metadata.uid" => meta.uid.clone(),
                    "spec.nodeName" => Some(self.config.node_name.clone()),
                    "status.podIP" | "status.hostIP" => Some("127.0.0.1".into()),
                    other => {
                        return Err(format!(
                            "fieldRef {other} is not supported by the xorb node agent"
                        ));
                    }
                }
            } else if let Some(r) = &from.config_map_key_ref {
                let v = self
                    .config_map(&r.name)
                    .await?
                    .and_then(|d| d.get(&r.key).cloned());
                if v.is_none() && r.optional != Some(true) {
                    return Err(format!(
                        "key {:?} of configmap {:?} not found",
                        r.key, r.name
                    ));
                }
                v
            } else if let Some(r) = &from.secret_key_ref {
                let v = self
                    .secret(&r.name)
                    .await?
                    .and_then(|d| d.get(&r.key).cloned());
                if v.is_none() && r.optional != Some(true) {
                    return Err(format!("key {:?} of secret {:?} not found", r.key, r.name));
                }
                v
            } else {
                return Err(format!(
                    "env {}: this valueFrom is not supported by the xorb node agent",
                    e.name
                ));
            };
            if let Some(v) = value {
                set(&mut env, e.name.clone(), v);
            }
        }
        Ok(env)
    }

    async fn config_map(&self, name: &str) -> Result<Option<BTreeMap<String, String>>, String> {
        match self.config_maps.get_opt(name).await {
            Ok(Some(cm)) => Ok(Some(cm.data.unwrap_or_default())),
            Ok(None) => Ok(None),
            Err(e) => Err(format!("reading configmap {name:?}: {e}")),
        }
    }

    async fn secret(&self, name: &str) -> Result<Option<BTreeMap<String, String>>, String> {
        match self.secrets.get_opt(name).await {
            Ok(Some(s)) => Ok(Some(
                s.data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                    .collect(),
            )),
            Ok(None) => Ok(None),
            Err(e) => Err(format!("reading secret {name:?}: {e}")),
        }
    }

    /// Sends the Pod's status (a merge patch of the whole status the agent owns).
    async fn report(&mut self, uid: &str) {
        let Some(run) = self.runs.get_mut(uid) else {
            return;
        };
        let body = status_of(run);
        match self
            .pods
            .patch_status(&run.name, &PatchParams::default(), &Patch::Merge(&body))
            .await
        {
            Ok(_) => run.dirty = false,
            Err(kube::Error::Api(s)) if s.code == 404 => {
                run.dirty = false;
                run.gone = true;
            }
            Err(e) => tracing::warn!("node agent: status of {}: {e}", run.name),
        }
    }

    /// The kubelet's last word on a Pod whose containers have all stopped: delete it for good (grace 0, this
    /// very Pod by uid).
    async fn finalize_delete(&mut self, name: &str, uid: &str) {
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match self.pods.delete(name, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => {
                tracing::warn!("node agent: deleting {name}: {e}");
                return;
            }
        }
        if let Some(run) = self.runs.get_mut(uid) {
            run.gone = true;
        }
        self.runs.remove(uid);
    }

    fn publish(&self) {
        let mut list = Vec::new();
        for run in self.runs.values() {
            for c in &run.containers {
                if let State::Running { pid, ctl, .. } = &c.state {
                    let p = AgentProcess {
                        pod: run.name.clone(),
                        pod_uid: run.uid.clone(),
                        container: c.spec.name.clone(),
                        pid: *pid,
                    };
                    list.push((p, ctl.clone()));
                }
            }
        }
        if let Ok(mut shared) = self.shared.lock() {
            *shared = list;
        }
    }
}

fn grace_of(pod: &Pod) -> Duration {
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

fn signal(c: &ContainerRun, what: Ctl) {
    if let State::Running { ctl, .. } = &c.state {
        let _ = ctl.send(what);
    }
}

fn container_id(uid: &str, container: &str, instance: u64) -> String {
    format!("xorb://{uid}/{container}/{instance}")
}

/// `$(NAME)` replaced by NAME's value when defined; `$$` is a literal `$`; anything else is left as written.
fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
            && let Some((_, v)) = env.iter().rev().find(|(k, _)| *k == inner[..end])
        {
            out.push_str(v);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Kubernetes' rule: `command` replaces the image's entrypoint (and its default args), `args` replace the
/// default args.
fn command_line(
    spec: &Container,
    entry: &Entrypoint,
    env: &[(String, String)],
) -> (PathBuf, Vec<String>) {
    let x = |v: &Vec<String>| v.iter().map(|s| expand(s, env)).collect::<Vec<_>>();
    match (&spec.command, &spec.args) {
        (Some(cmd), args) if !cmd.is_empty() => {
            let cmd = x(cmd);
            let mut all: Vec<String> = cmd[1..].to_vec();
            all.extend(args.as_ref().map(x).unwrap_or_default());
            (PathBuf::from(&cmd[0]), all)
        }
        (_, Some(args)) => (entry.program.clone(), x(args)),
        _ => (entry.program.clone(), entry.args.clone()),
    }
}

#[allow(clippy::too_many_arguments)]
fn spawn_process(
    dir: &Path,
    spec: &Container,
    pod_name: &str,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    uid: &str,
    instance: u64,
    exits: mpsc::UnboundedSender<Exit>,
) -> Result<(u32, mpsc::UnboundedSender<Ctl>), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let log_path = dir.join(format!("{}.log", spec.name));
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
    let err = log
        .try_clone()
        .map_err(|e| format!("cannot duplicate a log handle: {e}"))?;
    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(&args)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("HOSTNAME", pod_name)
        .envs(env)
        .current_dir(spec.working_dir.as_deref().map(Path::new).unwrap_or(dir))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
    let pid = child.id().ok_or("the process ended at once")?;
    let (ctl_tx, mut ctl_rx) = mpsc::unbounded_channel::<Ctl>();
    let (uid, container) = (uid.to_string(), spec.name.clone());
    tokio::spawn(async move {
        use std::os::unix::process::ExitStatusExt;
        loop {
            tokio::select! {
                status = child.wait() => {
                    let (code, signal) = match status {
                        Ok(s) => (s.code(), s.signal()),
                        Err(_) => (None, None),
                    };
                    // The group may outlive its leader (a child of a shell): it ends with the container. The
                    // group's id stays allocated while any member lives, so this reaches only its own members
                    // (if none is left, nothing; a new process would need that exact pid within microseconds).
                    let _ = kill(Pid::from_raw(-(pid as i32)), Signal::SIGKILL);
                    let _ = exits.send(Exit { uid, container, instance, code, signal });
                    return;
                }
                Some(ctl) = ctl_rx.recv() => {
                    // The leader is not reaped yet (we would have left the loop), so its pid and group are ours.
                    if child.id().is_some() {
                        let _ = match ctl {
                            Ctl::Term => kill(Pid::from_raw(pid as i32), Signal::SIGTERM),
                            Ctl::Kill => kill(Pid::from_raw(-(pid as i32)), Signal::SIGKILL),
                        };
                    }
                }
            }
        }
    });
    Ok((pid, ctl_tx))
}

/// The status the agent owns, as a merge patch body.
fn status_of(run: &mut PodRun) -> Value {
    let mut statuses = Vec::new();
    let mut all_ready = !run.containers.is_empty();
    let (mut pending, mut running, mut restarting, mut failed, mut succeeded) = (0, 0, 0, 0, 0);
    let mut not_ready = Vec::new();
    for c in &run.containers {
        let has_probe = c.spec.readiness_probe.is_some();
        let ready = matches!(c.state, State::Running { .. }) && !has_probe && run.kill_at.is_none();
        if !ready {
            all_ready = false;
            not_ready.push(c.spec.name.clone());
        }
        let (state, started) = match &c.state {
            State::Waiting { reason, message } => {
                if c.started_once {
                    restarting += 1;
                } else {
                    pending += 1;
                }
                let mut w = json!({"reason": reason});
                if !message.is_empty() {
                    w["message"] = json!(message);
                }
                (json!({"waiting": w}), false)
            }
            State::Running { started_at, .. } => {
                running += 1;
                (
                    json!({"running": {"startedAt": time_json(started_at)}}),
                    true,
                )
            }
            State::Terminated(t) => {
                if t.exit_code == 0 {
                    succeeded += 1;
                } else {
                    failed += 1;
                }
                (json!({"terminated": terminated_json(t)}), false)
            }
        };
        let image = c.spec.image.clone().unwrap_or_default();
        let mut s = json!({
            "name": c.spec.name,
            "image": image,
            "imageID": format!("xorb-node-agent://{image}"),
            "ready": ready,
            "started": started,
            "restartCount": c.restart_count,
            "state": state,
            "lastState": c.last.as_ref().map(|t| json!({"terminated": terminated_json(t)})).unwrap_or(json!({})),
        });
        if let State::Running { instance, .. } = &c.state {
            s["containerID"] = json!(container_id(&run.uid, &c.spec.name, *instance));
        } else if let State::Terminated(t) = &c.state {
            s["containerID"] = json!(t.container_id);
        }
        statuses.push(s);
    }
    let policy = run
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.clone())
        .unwrap_or_else(|| "Always".into());
    let phase = if pending > 0 {
        "Pending"
    } else if running > 0 || restarting > 0 {
        "Running"
    } else {
        match policy.as_str() {
            "Never" if failed > 0 => "Failed",
            "Never" => "Succeeded",
            "OnFailure" if failed == 0 && succeeded > 0 => "Succeeded",
            _ => "Running",
        }
    };
    let probe_note = run
        .containers
        .iter()
        .any(|c| c.spec.readiness_probe.is_some())
        .then_some("readiness probes are not run by the xorb node agent yet");
    let message = if all_ready {
        None
    } else {
        Some(format!(
            "containers with unready status: [{}]{}",
            not_ready.join(" "),
            probe_note.map(|n| format!(" ({n})")).unwrap_or_default()
        ))
    };
    let reason = (!all_ready).then(|| "ContainersNotReady".to_string());
    for ty in ["ContainersReady", "Ready"] {
        set_condition(run, ty, all_ready, reason.clone(), message.clone());
    }
    let conditions: Vec<Value> = run
        .conditions
        .iter()
        .map(|(ty, c)| {
            let mut v = json!({
                "type": ty,
                "status": if c.status { "True" } else { "False" },
                "lastProbeTime": null,
                "lastTransitionTime": time_json(&c.since),
            });
            if let Some(r) = &c.reason {
                v["reason"] = json!(r);
            }
            if let Some(m) = &c.message {
                v["message"] = json!(m);
            }
            v
        })
        .collect();
    json!({"status": {
        "phase": phase,
        "conditions": conditions,
        "containerStatuses": statuses,
        "hostIP": "127.0.0.1",
        "podIP": "127.0.0.1",
        "podIPs": [{"ip": "127.0.0.1"}],
        "startTime": time_json(&run.start_time),
    }})
}

fn set_condition(
    run: &mut PodRun,
    ty: &'static str,
    status: bool,
    reason: Option<String>,
    message: Option<String>,
) {
    let c = run.conditions.entry(ty).or_insert_with(|| Condition {
        status: !status,
        since: now(),
        reason: None,
        message: None,
    });
    if c.status != status {
        c.status = status;
        c.since = now();
    }
    c.reason = reason;
    c.message = message;
}

fn terminated_json(t: &Terminated) -> Value {
    let mut v = json!({
        "exitCode": t.exit_code,
        "reason": t.reason,
        "finishedAt": time_json(&t.finished_at),
        "containerID": t.container_id,
    });
    if let Some(s) = t.signal {
        v["signal"] = json!(s);
    }
    if let Some(m) = &t.message {
        v["message"] = json!(m);
    }
    if let Some(s) = &t.started_at {
        v["startedAt"] = time_json(s);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_map_runs_xorb_images_as_xorb_svc() {
        let m = ImageMap::new().xorb_svc("/bin/xorb-svc").image(
            "redis:7",
            "/usr/bin/redis-server",
            ["--port", "0"],
        );
        assert_eq!(
            m.resolve("xorb/api:v2025.07-stable").unwrap(),
            Entrypoint {
                program: "/bin/xorb-svc".into(),
                args: vec![
                    "--role".into(),
                    "api".into(),
                    "--release".into(),
                    "v2025.07-stable".into()
                ]
            }
        );
        assert_eq!(
            m.resolve("redis:7").unwrap().program,
            PathBuf::from("/usr/bin/redis-server")
        );
        for bad in [
            "redis:6",
            "xorb/api",
            "xorb/:x",
            "xorb/a b:x",
            "xorb/api:v1;rm",
            "other/api:v1",
        ] {
            assert!(m.resolve(bad).is_none(), "{bad}");
        }
        assert!(ImageMap::new().resolve("xorb/api:v1").is_none());
    }

    #[test]
    fn expands_variables_as_kubernetes_does() {
        let env = vec![
            ("A".to_string(), "1".to_string()),
            ("B".to_string(), "x y".to_string()),
        ];
        assert_eq!(expand("$(A)-$(B)", &env), "1-x y");
        assert_eq!(expand("$(C) $$(A) $ $(", &env), "$(C) $(A) $ $(");
    }

    #[test]
    fn command_replaces_the_entrypoint_and_args_replace_its_arguments() {
        let entry = Entrypoint {
            program: "/usr/bin/sleep".into(),
            args: vec!["3600".into()],
        };
        let mut c = Container {
            name: "c".into(),
            ..Container::default()
        };
        assert_eq!(
            command_line(&c, &entry, &[]),
            ("/usr/bin/sleep".into(), vec!["3600".to_string()])
        );
        c.args = Some(vec!["$(T)".into()]);
        let env = vec![("T".to_string(), "5".to_string())];
        assert_eq!(
            command_line(&c, &entry, &env),
            ("/usr/bin/sleep".into(), vec!["5".to_string()])
        );
        c.command = Some(vec!["/bin/sh".into(), "-c".into()]);
        c.args = Some(vec!["exit 3".into()]);
        assert_eq!(
            command_line(&c, &entry, &env),
            (
                "/bin/sh".into(),
                vec!["-c".to_string(), "exit 3".to_string()]
            )
        );
    }
}
