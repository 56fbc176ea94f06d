//! A whole release on the lab (test and demo support): the control plane, the node agent and the Service proxy, a
//! PostgreSQL outside the cluster, the namespace, the generated Secrets, the release's manifests, the schema at the
//! release's head, the release's JetStream streams, and every workload ready. What `xorbctl stack up --target
//! kubernetes` calls. Design: docs/design/kubernetes-lab.md, "A whole release".

pub mod daemon;
mod secrets;
mod target_file;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Endpoints, Namespace, Secret};
use kube::api::{Api, PostParams};
use serde_json::json;
use xorb_adapters::conn::PgConn;
use xorb_model::release::Release;

use crate::agent::{AgentConfig, ImageMap, NodeAgent};
use crate::proxy::{HOST_ALIAS_IP, PROXY_ANNOTATION, ServiceProxy};
use crate::{KubeLab, LabError};
use secrets::Addresses;
use target_file::TargetPorts;
pub use target_file::target_file_text;

const READY_DEADLINE: Duration = Duration::from_secs(300);
const NODE: &str = "xorb-node";

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("release {name}: {why}")]
    Release { name: String, why: String },
    #[error("the Kubernetes lab: {0}")]
    Lab(#[from] LabError),
    #[error("{what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("the node agent: {0}")]
    Agent(#[from] crate::agent::AgentError),
    #[error("the Service proxy: {0}")]
    Proxy(#[from] crate::proxy::ProxyError),
    #[error("{what}: {why}")]
    Start { what: String, why: String },
    #[error("kubectl {args}: {stderr}")]
    Kubectl { args: String, stderr: String },
    #[error("{what} not ready after {}s: {detail}", waited.as_secs())]
    NotReady {
        what: String,
        waited: Duration,
        detail: String,
    },
}

fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> StackError {
    let what = what.into();
    move |source| StackError::Kube { what, source }
}

/// What a stack needs from the repository and the build.
#[derive(Debug, Clone)]
pub struct StackConfig {
    /// `releases/` of the repository.
    pub releases_root: PathBuf,
    pub release: String,
    /// The platform's service binary (`target/…/xorb-svc`).
    pub svc_bin: PathBuf,
    /// The Python virtual environment that has Alembic.
    pub venv: PathBuf,
    pub namespace: String,
    /// Everything the stack writes: the lab, the node's work directory, PostgreSQL's data.
    pub dir: PathBuf,
}

/// Images the lab runs: the platform's roles as `xorb-svc`, the dependencies as Debian's binaries.
pub fn lab_images(svc_bin: &Path) -> ImageMap {
    ImageMap::new()
        .xorb_svc(svc_bin)
        .image(
            "redis:7.0.15",
            "/usr/bin/redis-server",
            Vec::<String>::new(),
        )
        .image("nats:2.9.10", "/usr/sbin/nats-server", Vec::<String>::new())
        .image(
            "prom/prometheus:v2.42.0",
            "/usr/bin/prometheus",
            Vec::<String>::new(),
        )
        .image(
            "prom/alertmanager:v0.25.0",
            "/usr/bin/prometheus-alertmanager",
            Vec::<String>::new(),
        )
}

/// A running stack. [`KubeStack::down`] stops exactly what it started.
pub struct KubeStack {
    agent: Option<NodeAgent>,
    proxy: Option<ServiceProxy>,
    postgres: xorb_local::servers::Server,
    lab: KubeLab,
    namespace: String,
    release: String,
    dir: PathBuf,
    /// Kept for [`KubeStack::database`]; never printed (the type has no Debug).
    db_password: String,
    /// The proxy's ports the target file names, known once `up` has waited for each.
    ports: TargetPorts,
}

impl KubeStack {
    /// Starts everything and returns once every Deployment and StatefulSet of the release is rolled out.
    pub async fn up(config: StackConfig) -> Result<Self, StackError> {
        let release = Release::load_named(&config.releases_root, &config.release).map_err(|e| {
            StackError::Release {
                name: config.release.clone(),
                why: e.to_string(),
            }
        })?;
        let lab_dir = config.dir.join("lab");
        let lab = tokio::task::spawn_blocking(move || KubeLab::start(&lab_dir))
            .await
            .map_err(|e| StackError::Start {
                what: "the Kubernetes lab".into(),
                why: e.to_string(),
            })??;
        let db_password = secrets::password();
        let postgres =
            xorb_local::servers::start_postgres(&config.dir.join("postgres"), &db_password)
                .await
                .map_err(|e| StackError::Start {
                    what: "PostgreSQL".into(),
                    why: e.to_string(),
                })?;
        let mut stack = Self {
            agent: None,
            proxy: None,
            postgres,
            lab,
            namespace: config.namespace.clone(),
            release: config.release.clone(),
            dir: config.dir.clone(),
            db_password: db_password.clone(),
            ports: TargetPorts::default(),
        };
        // On failure, `stack` is dropped, which stops what was started so far.
        stack.bring_up(&config, &release, &db_password).await?;
        Ok(stack)
    }

    async fn bring_up(
        &mut self,
        config: &StackConfig,
        release: &Release,
        db_password: &str,
    ) -> Result<(), StackError> {
        let client = lab_client(&self.lab).await?;
        let ns = &config.namespace;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let body: Namespace =
            serde_json::from_value(json!({"metadata": {"name": ns}})).map_err(|e| {
                StackError::Start {
                    what: format!("namespace {ns}"),
                    why: e.to_string(),
                }
            })?;
        match namespaces.create(&PostParams::default(), &body).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(kube_err(format!("creating namespace {ns}"))(e)),
        }
        self.proxy = Some(ServiceProxy::start(client.clone(), ns).await?);
        self.agent = Some(
            NodeAgent::start(
                client.clone(),
                AgentConfig {
                    namespace: ns.clone(),
                    node_name: NODE.into(),
                    images: lab_images(&config.svc_bin),
                    work_dir: config.dir.join("node"),
                },
            )
            .await?,
        );
        let k8s = config.releases_root.join(&config.release).join("k8s");
        let secrets_api: Api<Secret> = Api::namespaced(client.clone(), ns);
        let redis_password = secrets::password();
        create_or_replace(&secrets_api, secrets::redis_auth(&redis_password)).await?;
        create_or_replace(&secrets_api, secrets::db_auth(db_password)).await?;

        // The dependencies first: Redis, NATS, Prometheus, Alertmanager, and PostgreSQL's Endpoints. Not
        // Prometheus's configuration as the release writes it: its targets are Service names, which this
        // machine would ask its own resolver about, off loopback (written below, once the ports are known; the
        // Prometheus Pod waits for it).
        for file in manifest_files(&k8s.join("datastores"))? {
            if !file.ends_with(PROMETHEUS_CONFIG_FILE) {
                self.kubectl(&["apply", "-f"], &file)?;
            }
        }
        let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), ns);
        let ep: Endpoints = serde_json::from_value(json!({
            "metadata": {"name": "postgres"},
            "subsets": [{"addresses": [{"ip": HOST_ALIAS_IP}],
                         "ports": [{"name": "postgres", "port": self.postgres.port}]}],
        }))
        .map_err(|e| StackError::Start {
            what: "the Endpoints of postgres".into(),
            why: e.to_string(),
        })?;
        match endpoints.create(&PostParams::default(), &ep).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(kube_err("creating the Endpoints of postgres")(e)),
        }
        // The roles' Services, so the control plane's address is known before the Secret is written.
        self.kubectl(&["apply", "-f"], &k8s.join("services"))?;
        let control_plane = release.manifest.features.control_plane;
        let addresses = Addresses {
            postgres: self.proxied(&client, "postgres", "postgres").await?,
            redis: self.proxied(&client, "redis", "redis").await?,
            nats: self.proxied(&client, "nats-cluster", "client").await?,
            control_plane: if control_plane {
                Some(self.proxied(&client, "xorb-control-plane", "http").await?)
            } else {
                None
            },
        };
        let svc_secret = secrets::xorb_secrets(&addresses, db_password, &redis_password);
        create_or_replace(&secrets_api, svc_secret).await?;
        self.prometheus_config(&client, release).await?;

        // The schema at the release's head, as the local target does it, straight to PostgreSQL.
        let paths = xorb_adapters::Paths {
            releases_root: config.releases_root.clone(),
            venv: config.venv.clone(),
            svc_bin: config.svc_bin.clone(),
        };
        let conn = PgConn {
            host: "127.0.0.1".into(),
            port: self.postgres.port,
            user: "xorb".into(),
            password: db_password.to_string(),
            dbname: "xorb".into(),
        };
        xorb_adapters::pg::scripts::alembic(
            &paths,
            &release.migrations_dir(),
            &conn,
            &["upgrade", &release.manifest.schema.head],
            None,
        )
        .await
        .map_err(|e| StackError::Start {
            what: format!("the schema at {}", release.manifest.schema.head),
            why: e.to_string(),
        })?;
        self.rollout("statefulset/nats-cluster")?;
        // Through the proxy, as the services reach NATS. A rollout that is complete does not mean the Service
        // forwards yet: the proxy learns of the Ready Pod on its next refresh (kube-proxy's lag, in small), and
        // until then a connection is closed unanswered. So this polls, with the rollout's deadline.
        let nats_url = format!("nats://{}", addresses.nats);
        let t0 = Instant::now();
        loop {
            match xorb_adapters::nats::ensure_streams(&nats_url, &release.streams).await {
                Ok(_) => break,
                Err(e) if t0.elapsed() >= READY_DEADLINE => {
                    return Err(StackError::Start {
                        what: format!(
                            "the release's JetStream streams (tried for {}s)",
                            t0.elapsed().as_secs()
                        ),
                        why: e.to_string(),
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }

        for dir in ["configmaps", "network-policies", "deployments"] {
            self.kubectl(&["apply", "-f"], &k8s.join(dir))?;
        }
        for d in ["redis", "prometheus", "alertmanager"] {
            self.rollout(&format!("deployment/{d}"))?;
        }
        for s in &release.services {
            self.rollout(&format!("deployment/xorb-{}", s.name))?;
        }
        self.ports = self.target_ports(&client, release).await?;
        Ok(())
    }

    /// Every port the target file names, each waited for (the proxy records a Service's ports on its next
    /// refresh): the datastores', and each of the release's services' in the runbook's order.
    async fn target_ports(
        &self,
        client: &kube::Client,
        release: &Release,
    ) -> Result<TargetPorts, StackError> {
        let port = |addr: String| {
            addr.rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .ok_or_else(|| StackError::Start {
                    what: "the proxy's address".into(),
                    why: format!("{addr:?} has no port"),
                })
        };
        // `release.services` is in the runbook's order (xorb_model::release::SERVICE_ORDER).
        let mut services = Vec::new();
        for s in &release.services {
            let addr = self
                .proxied(client, &format!("xorb-{}", s.name), "http")
                .await?;
            services.push((s.name.clone(), port(addr)?));
        }
        Ok(TargetPorts {
            nats: port(self.proxied(client, "nats-cluster", "client").await?)?,
            prometheus: port(self.proxied(client, "prometheus", "http").await?)?,
            alertmanager: port(self.proxied(client, "alertmanager", "http").await?)?,
            postgres: port(self.proxied(client, "postgres", "postgres").await?)?,
            redis: port(self.proxied(client, "redis", "redis").await?)?,
            services,
        })
    }

    /// The ConfigMap `prometheus-config` as the release has it, with every target at the proxy's port of its
    /// Service (as the local target rewrites them for its processes) and rule files relative to the
    /// configuration, as they are mounted side by side.
    async fn prometheus_config(
        &self,
        client: &kube::Client,
        release: &Release,
    ) -> Result<(), StackError> {
        let t = self.target_ports(client, release).await?;
        let ports: BTreeMap<String, u16> = t.services.into_iter().collect();
        let alertmanager = t.alertmanager;
        let cfg = xorb_local::servers::prometheus_config(
            release,
            Path::new(""),
            &ports,
            Some(alertmanager),
            None,
        )
        .map_err(|e| StackError::Start {
            what: "Prometheus's configuration".into(),
            why: e.to_string(),
        })?;
        let mut data = BTreeMap::from([(
            "prometheus.yml".to_string(),
            serde_json::to_string_pretty(&cfg).unwrap_or_default(),
        )]);
        for rule in &release.manifest.monitoring.rules {
            let src = release.path(rule);
            let name = rule
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let text = std::fs::read_to_string(&src).map_err(|e| StackError::Start {
                what: format!("reading {}", src.display()),
                why: e.to_string(),
            })?;
            data.insert(name, text);
        }
        let cm: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "prometheus-config", "labels": {"app.kubernetes.io/part-of": "xorb"}},
            "data": data,
        }))
        .map_err(|e| StackError::Start {
            what: "the ConfigMap prometheus-config".into(),
            why: e.to_string(),
        })?;
        let api: Api<k8s_openapi::api::core::v1::ConfigMap> =
            Api::namespaced(client.clone(), &self.namespace);
        match api.create(&PostParams::default(), &cm).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(kube_err("creating the ConfigMap prometheus-config")(e)),
        }
    }

    /// The proxy's `127.0.0.1:PORT` of a Service port, once recorded on the Service.
    async fn proxied(
        &self,
        client: &kube::Client,
        service: &str,
        port: &str,
    ) -> Result<String, StackError> {
        let api: Api<k8s_openapi::api::core::v1::Service> =
            Api::namespaced(client.clone(), &self.namespace);
        let t0 = Instant::now();
        loop {
            let svc = api
                .get(service)
                .await
                .map_err(kube_err(format!("reading service {service}")))?;
            let addr = svc
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(PROXY_ANNOTATION))
                .and_then(|v| serde_json::from_str::<BTreeMap<String, String>>(v).ok())
                .and_then(|m| m.get(port).cloned());
            if let Some(a) = addr {
                return Ok(a);
            }
            if t0.elapsed() > Duration::from_secs(30) {
                return Err(StackError::NotReady {
                    what: format!("the proxy port of service {service} ({port})"),
                    waited: t0.elapsed(),
                    detail: "no annotation on the Service".into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn kubectl(&self, args: &[&str], path: &Path) -> Result<String, StackError> {
        let out = self
            .lab
            .kubectl()
            .args(["--namespace", &self.namespace])
            .args(args)
            .arg(path)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| StackError::Kubectl {
                args: args.join(" "),
                stderr: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(StackError::Kubectl {
                args: format!("{} {}", args.join(" "), path.display()),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `kubectl rollout status`: the same judgement an operator's kubectl makes.
    fn rollout(&self, what: &str) -> Result<(), StackError> {
        let t0 = Instant::now();
        let out = self
            .lab
            .kubectl()
            .args(["--namespace", &self.namespace, "rollout", "status", what])
            .arg(format!("--timeout={}s", READY_DEADLINE.as_secs()))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| StackError::Kubectl {
                args: format!("rollout status {what}"),
                stderr: e.to_string(),
            })?;
        if out.status.success() {
            return Ok(());
        }
        Err(StackError::NotReady {
            what: what.to_string(),
            waited: t0.elapsed(),
            detail: format!(
                "{}; the node's container logs are under {}",
                String::from_utf8_lossy(&out.stderr).trim(),
                self.lab
                    .dir()
                    .parent()
                    .unwrap_or(self.lab.dir())
                    .join("node")
                    .display()
            ),
        })
    }

    pub fn lab(&self) -> &KubeLab {
        &self.lab
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn release(&self) -> &str {
        &self.release
    }

    /// The directory given in [`StackConfig::dir`].
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The platform's database, at the PostgreSQL outside the cluster, with its password: for a client in this
    /// process (demo data, checks). Hand it to nothing that prints it.
    pub fn database(&self) -> PgConn {
        PgConn {
            host: "127.0.0.1".into(),
            port: self.postgres.port,
            user: "xorb".into(),
            password: self.db_password.clone(),
            dbname: "xorb".into(),
        }
    }

    /// The PostgreSQL outside the cluster, as a pid with its start time.
    pub fn postgres_process(&self) -> &xorb_local::process::ProcRecord {
        &self.postgres.proc
    }

    pub fn agent(&self) -> Option<&NodeAgent> {
        self.agent.as_ref()
    }

    /// The pid of the PostgreSQL outside the cluster.
    pub fn postgres_pid(&self) -> i32 {
        self.postgres.proc.pid
    }

    /// The proxy's loopback port of a Service port (by name, or number when unnamed).
    pub fn service_port(&self, service: &str, port: &str) -> Option<u16> {
        self.proxy.as_ref()?.port(service, port)
    }

    /// Stops the containers (SIGTERM, grace, SIGKILL), the proxy, PostgreSQL, then the control plane.
    pub async fn down(mut self) {
        if let Some(agent) = self.agent.take() {
            agent.stop().await;
        }
        if let Some(proxy) = self.proxy.take() {
            proxy.stop().await;
        }
        self.postgres
            .proc
            .stop(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(10));
        // Dropping self drops the lab, which stops its three processes.
    }
}

impl Drop for KubeStack {
    fn drop(&mut self) {
        // Without `down` (a failed `up`, a panicking test): the agent's own Drop kills its containers.
        self.agent.take();
        self.proxy.take();
        self.postgres
            .proc
            .stop(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(10));
    }
}

/// The release's Prometheus ConfigMap, which the lab writes itself (see `prometheus_config`).
const PROMETHEUS_CONFIG_FILE: &str = "configmaps/prometheus-config.yaml";

/// Every `.yaml` under `dir`, in path order (what `kubectl apply -R -f dir` would read).
fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>, StackError> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let rd = std::fs::read_dir(&d).map_err(|e| StackError::Start {
            what: format!("reading {}", d.display()),
            why: e.to_string(),
        })?;
        for e in rd.filter_map(Result::ok) {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

async fn create_or_replace(api: &Api<Secret>, secret: Secret) -> Result<(), StackError> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let live = api
                .get(&name)
                .await
                .map_err(kube_err(format!("reading secret {name}")))?;
            let mut next = secret;
            next.metadata.resource_version = live.metadata.resource_version;
            api.replace(&name, &PostParams::default(), &next)
                .await
                .map(drop)
                .map_err(kube_err(format!("replacing secret {name}")))
        }
        Err(e) => Err(kube_err(format!("creating secret {name}"))(e)),
    }
}

/// A kube client on the lab, as its admin.
pub async fn lab_client(lab: &KubeLab) -> Result<kube::Client, StackError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc = kube::config::Kubeconfig::read_from(lab.kubeconfig_path()).map_err(|e| {
        StackError::Start {
            what: format!("reading {}", lab.kubeconfig_path().display()),
            why: e.to_string(),
        }
    })?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|e| StackError::Start {
            what: "the lab's kubeconfig".into(),
            why: e.to_string(),
        })?;
    kube::Client::try_from(cfg).map_err(kube_err("a client for the lab"))
}
