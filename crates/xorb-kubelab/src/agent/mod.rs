//! The node agent (test and demo support, not product): a kubelet small enough to read. It registers a Node,
//! binds the unscheduled Pods of one namespace to it, runs each container as a local process from an image map,
//! and reports honest Pod status: phase, the PodScheduled, Initialized, ContainersReady and Ready conditions with
//! their transition times, container states (waiting, running, terminated, the last termination), restart counts.
//! A crashed container restarts with a back-off as its Pod's restartPolicy says; a deleted Pod's containers get
//! SIGTERM, then SIGKILL when the grace period ends, and the Pod is then removed for good. An image the map does
//! not know stays waiting (`ErrImagePull`, then `ImagePullBackOff`), as a bad image does in a real cluster.
//!
//! Each declared containerPort gets a loopback port of its own, which the process learns by translation of its
//! env and args (`ports.rs`); readiness and liveness probes run on it (`probes.rs`). Not yet (refused honestly
//! rather than faked): init containers and volume kinds other than configMap, secret, emptyDir and
//! persistentVolumeClaim (`volumes.rs`; paths translated like ports). Env: literal values, `fieldRef` (metadata.name,
//! metadata.namespace, metadata.uid, spec.nodeName, status.podIP, status.hostIP), `configMapKeyRef`,
//! `secretKeyRef`, and `envFrom` ConfigMaps and Secrets; `$(VAR)` in command and args is expanded.
//!
//! Each container is a process group of its own: SIGTERM goes to its main process (as a container runtime sends
//! it to PID 1), SIGKILL to the whole group, and the group is killed when the main process ends. It gets a clean
//! environment (PATH, HOSTNAME and what the Pod gives it) and its output is appended to
//! `WORK_DIR/NAMESPACE/POD-UID/CONTAINER.log`. Being in groups of their own, containers do not get a terminal's
//! Ctrl-C: [`NodeAgent::stop`] or dropping the agent stops them; a test process killed outright leaves them.

mod driver;
mod env;
mod images;
mod ports;
mod probes;
mod spawn;
mod state;
mod status;
mod volumes;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use driver::Agent;
pub use images::{Entrypoint, ImageMap};
pub use ports::PORTS_ANNOTATION;
use spawn::Ctl;

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
            secrets: Api::namespaced(client.clone(), &config.namespace),
            services: Api::namespaced(client.clone(), &config.namespace),
            claims: Api::namespaced(client.clone(), &config.namespace),
            volumes: Api::all(client),
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
