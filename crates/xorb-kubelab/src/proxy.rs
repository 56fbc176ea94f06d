//! A userspace Service proxy (kube-proxy's old userspace mode, test support): each port of each Service of one
//! namespace gets a loopback port of its own, kept for the Service's lifetime and recorded on the Service as the
//! annotation [`PROXY_ANNOTATION`], that forwards TCP to the Service's backends:
//!
//! - a Service with a selector: the Ready Pods it selects (not being deleted), through the loopback port the node
//!   agent mapped the target port to (the Pod's `xorb.dev/container-ports` annotation);
//! - a Service without one: the addresses of its Endpoints object (how a PostgreSQL outside the cluster is reached).
//!   The API server refuses loopback addresses in Endpoints, so the lab writes this machine as [`HOST_ALIAS_IP`]
//!   (192.0.2.1, TEST-NET-1, reserved for documentation and never routed) and the proxy connects to 127.0.0.1 for
//!   it. Any other address is skipped: the proxy never sends traffic off loopback.
//!
//! Connections are spread round robin; a backend that refuses is skipped for the next one, as kube-proxy's
//! userspace mode did. The backends are refreshed by listing Services, Pods and Endpoints every 300 ms, so the
//! endpoint survives a rolling update: the old Pods leave the list as they stop being Ready, the new ones join as
//! they become Ready. A connection already forwarded stays with its backend until either side closes it.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Endpoints, Pod, Service, ServicePort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

use crate::agent::PORTS_ANNOTATION;

/// The annotation on a Service: a JSON object from the Service port's name (or its number, when unnamed) to the
/// proxy's `127.0.0.1:PORT`.
pub const PROXY_ANNOTATION: &str = "xorb.dev/proxy-ports";

/// The stable ports the proxy recorded on `svc` (port name or number → loopback port); empty before it has.
pub(crate) fn proxy_ports(svc: &Service) -> BTreeMap<String, String> {
    svc.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(PROXY_ANNOTATION))
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_default()
}

/// How an Endpoints object names this machine (the API server refuses 127.0.0.0/8 there).
pub const HOST_ALIAS_IP: &str = "192.0.2.1";

const REFRESH: Duration = Duration::from_millis(300);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("listing the Services of namespace {namespace}: {source}")]
    List {
        namespace: String,
        #[source]
        source: kube::Error,
    },
}

type Backends = Arc<RwLock<Vec<SocketAddr>>>;

struct Listener {
    port: u16,
    backends: Backends,
    task: JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Dropping the accept task's JoinSet aborts its forwarded connections too.
        self.task.abort();
    }
}

/// A running proxy; [`ServiceProxy::stop`] or dropping it closes every listener and forwarded connection.
pub struct ServiceProxy {
    task: Option<JoinHandle<()>>,
    stop: Option<oneshot::Sender<()>>,
    ports: Arc<RwLock<BTreeMap<(String, String), u16>>>,
}

impl ServiceProxy {
    /// Starts proxying the Services of `namespace` on the current tokio runtime. Fails when the namespace's
    /// Services cannot be listed (wrong credentials, no API server).
    pub async fn start(client: kube::Client, namespace: &str) -> Result<Self, ProxyError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut proxy = Proxy {
            services: Api::namespaced(client.clone(), namespace),
            pods: Api::namespaced(client.clone(), namespace),
            endpoints: Api::namespaced(client, namespace),
            listeners: HashMap::new(),
            ports: Arc::default(),
        };
        proxy.refresh().await.map_err(|source| ProxyError::List {
            namespace: namespace.to_string(),
            source,
        })?;
        let ports = proxy.ports.clone();
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(REFRESH);
            loop {
                tokio::select! {
                    _ = &mut stop_rx => break,
                    _ = tick.tick() => {
                        if let Err(e) = proxy.refresh().await {
                            tracing::warn!("service proxy: {e}");
                        }
                    }
                }
            }
        });
        Ok(Self {
            task: Some(task),
            stop: Some(stop_tx),
            ports,
        })
    }

    /// The loopback port of `service`'s port `port` (its name, or its number when unnamed), once it is proxied.
    pub fn port(&self, service: &str, port: &str) -> Option<u16> {
        self.ports
            .read()
            .ok()?
            .get(&(service.to_string(), port.to_string()))
            .copied()
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ServiceProxy {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

struct Proxy {
    services: Api<Service>,
    pods: Api<Pod>,
    endpoints: Api<Endpoints>,
    /// By Service uid and port key: a recreated Service (new uid) gets new listeners.
    listeners: HashMap<(String, String), Listener>,
    ports: Arc<RwLock<BTreeMap<(String, String), u16>>>,
}

fn port_key(p: &ServicePort) -> String {
    p.name
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| p.port.to_string())
}

impl Proxy {
    async fn refresh(&mut self) -> Result<(), kube::Error> {
        let lp = ListParams::default();
        let services = self.services.list(&lp).await?.items;
        let pods = self.pods.list(&lp).await?.items;
        let endpoints = self.endpoints.list(&lp).await?.items;
        let mut seen = Vec::new();
        let mut by_name = BTreeMap::new();
        for svc in &services {
            let (Some(name), Some(uid)) = (&svc.metadata.name, &svc.metadata.uid) else {
                continue;
            };
            if svc.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let recorded = proxy_ports(svc);
            let mut annotation = BTreeMap::new();
            for sp in svc.spec.iter().flat_map(|s| s.ports.iter().flatten()) {
                if sp.protocol.as_deref().is_some_and(|p| p != "TCP") {
                    continue;
                }
                let key = port_key(sp);
                let id = (uid.clone(), key.clone());
                seen.push(id.clone());
                if !self.listeners.contains_key(&id) {
                    // The port recorded on the Service is kept when it can be bound again (a restarted proxy).
                    let wanted = recorded
                        .get(&key)
                        .and_then(|a| a.rsplit_once(':'))
                        .and_then(|(_, p)| p.parse::<u16>().ok());
                    match listen(wanted).await {
                        Ok(l) => {
                            self.listeners.insert(id.clone(), l);
                        }
                        Err(e) => {
                            tracing::warn!("service proxy: no port for {name}/{key}: {e}");
                            continue;
                        }
                    }
                }
                let l = &self.listeners[&id];
                let backends = backends_of(svc, sp, &pods, &endpoints);
                if let Ok(mut b) = l.backends.write() {
                    *b = backends;
                }
                annotation.insert(key.clone(), format!("127.0.0.1:{}", l.port));
                by_name.insert((name.clone(), key), l.port);
            }
            if annotation != recorded {
                let body = json!({"metadata": {"annotations": {
                    PROXY_ANNOTATION: serde_json::to_string(&annotation).unwrap_or_default()
                }}});
                if let Err(e) = self
                    .services
                    .patch(name, &PatchParams::default(), &Patch::Merge(&body))
                    .await
                {
                    tracing::warn!("service proxy: recording the ports of {name}: {e}");
                }
            }
        }
        self.listeners.retain(|id, _| seen.contains(id));
        if let Ok(mut p) = self.ports.write() {
            *p = by_name;
        }
        Ok(())
    }
}

async fn listen(wanted: Option<u16>) -> std::io::Result<Listener> {
    let listener = match wanted {
        Some(p) => match TcpListener::bind(("127.0.0.1", p)).await {
            Ok(l) => l,
            Err(_) => bind_free().await?,
        },
        None => bind_free().await?,
    };
    let port = listener.local_addr()?.port();
    let backends: Backends = Arc::default();
    let task = tokio::spawn(accept_loop(listener, backends.clone()));
    Ok(Listener {
        port,
        backends,
        task,
    })
}

async fn bind_free() -> std::io::Result<TcpListener> {
    let port = xorb_local::process::free_port().map_err(std::io::Error::other)?;
    TcpListener::bind(("127.0.0.1", port)).await
}

async fn accept_loop(listener: TcpListener, backends: Backends) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut conns = JoinSet::new();
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        while conns.try_join_next().is_some() {}
        let (backends, next) = (backends.clone(), next.clone());
        conns.spawn(async move {
            let list = backends.read().map(|b| b.clone()).unwrap_or_default();
            let start = next.fetch_add(1, Ordering::Relaxed);
            for i in 0..list.len() {
                let addr = list[(start + i) % list.len()];
                let Ok(Ok(mut upstream)) =
                    tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await
                else {
                    continue;
                };
                let mut client = client;
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                return;
            }
            // No backend: the client sees its connection closed, as with kube-proxy's userspace mode.
        });
    }
}

/// Where a Service port's connections go now.
fn backends_of(
    svc: &Service,
    sp: &ServicePort,
    pods: &[Pod],
    endpoints: &[Endpoints],
) -> Vec<SocketAddr> {
    let selector = svc
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default();
    if selector.is_empty() {
        return endpoint_addresses(svc, sp, endpoints);
    }
    let target = sp.target_port.clone().unwrap_or(IntOrString::Int(sp.port));
    let mut out = Vec::new();
    for pod in pods {
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        if !selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            || pod.metadata.deletion_timestamp.is_some()
            || !pod_ready(pod)
        {
            continue;
        }
        let declared = match &target {
            IntOrString::Int(n) => Some(*n),
            IntOrString::String(name) => pod
                .spec
                .iter()
                .flat_map(|s| s.containers.iter())
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| p.container_port),
        };
        let Some(declared) = declared else {
            continue;
        };
        let mapped: BTreeMap<String, String> = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(PORTS_ANNOTATION))
            .and_then(|v| serde_json::from_str(v).ok())
            .unwrap_or_default();
        let addr = mapped
            .get(&declared.to_string())
            .cloned()
            .unwrap_or_else(|| format!("127.0.0.1:{declared}"));
        if let Ok(a) = addr.parse() {
            out.push(a);
        }
    }
    out.sort();
    out
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The ready addresses of the Endpoints object named as the Service, on the port named as the Service port
/// (or its only port).
fn endpoint_addresses(svc: &Service, sp: &ServicePort, endpoints: &[Endpoints]) -> Vec<SocketAddr> {
    let Some(ep) = endpoints
        .iter()
        .find(|e| e.metadata.name == svc.metadata.name)
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for subset in ep.subsets.iter().flatten() {
        let ports = subset.ports.clone().unwrap_or_default();
        let port = if ports.len() == 1 {
            Some(ports[0].port)
        } else {
            ports
                .iter()
                .find(|p| p.name.as_deref().unwrap_or("") == sp.name.as_deref().unwrap_or(""))
                .map(|p| p.port)
        };
        let Some(port) = port else {
            continue;
        };
        for a in subset.addresses.iter().flatten() {
            if a.ip != HOST_ALIAS_IP {
                tracing::warn!(
                    "service proxy: endpoint {}:{port} of {:?} is not this machine ({HOST_ALIAS_IP}): skipped",
                    a.ip,
                    svc.metadata.name
                );
                continue;
            }
            out.push(SocketAddr::from((
                [127, 0, 0, 1],
                u16::try_from(port).unwrap_or(0),
            )));
        }
    }
    out
}
