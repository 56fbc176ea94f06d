//! `KubeTarget`: workloads are the Deployments `xorb-<service>`, a service's configuration is what its Pods
//! read through `envFrom` (the shared ConfigMap `xorb-config`, then its own `xorb-<service>-config`), and the
//! configuration files of Prometheus, Alertmanager and Redis are keys of their ConfigMaps.
//!
//! Every operation reads the live objects and writes only what is left, so a run killed at any moment resumes
//! without doing anything twice. The Role `releases/*/k8s/rbac/xorbctl.yaml` grants no `list`: objects are read by
//! name.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use xorb_adapters::conn::PgConn;
use xorb_adapters::files::{write_json, write_private};
use xorb_adapters::target::{ConfigSet, Endpoints, Instance, RedisEndpoint, Server, Target};
use xorb_engine::planner::{LiveService, LiveState};
use xorb_engine::runner::StepError;
use xorb_kube::KubeError;
use xorb_kube::error::Site;
use xorb_kube::rollout;
use xorb_kube::workload::{self, FIELD_MANAGER, Kind, Workloads};
use xorb_model::exit::Exit;
use xorb_model::release::{Release, SERVICE_ORDER};

use crate::spec::{SecretRef, TargetFile};

mod objects;
mod preview;

/// Object names the target reads and writes.
pub mod names {
    /// The shared configuration of every role (the runbook's `kubectl patch configmap xorb-config`).
    pub const SHARED_CONFIG: &str = "xorb-config";
    /// Where the target records the release the namespace was last fully rolled to.
    pub const STATE: &str = "xorbctl-state";
    /// Pod-template annotation: the SHA-256 of the configuration the Pods were started with. A change rolls
    /// the Deployment (as `kubectl rollout restart` would), and the same configuration never rolls it twice.
    pub const CONFIG_STAMP: &str = "xorb.dev/config-sha256";
    /// On a Deployment an emergency procedure scaled to 0: how many replicas it had (its next service step scales
    /// it back).
    pub const EMERGENCY_SCALE: &str = "xorb.dev/replicas-before-emergency";

    pub fn deployment(service: &str) -> String {
        format!("xorb-{service}")
    }

    pub fn config_map(service: &str) -> String {
        format!("xorb-{service}-config")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KubeTargetError {
    #[error(transparent)]
    Kube(#[from] KubeError),
    #[error("secret {secret} in namespace {namespace} has no key {key} (the target file names it)")]
    MissingKey {
        namespace: String,
        secret: String,
        key: String,
    },
}

impl KubeTargetError {
    pub fn exit(&self) -> Exit {
        match self {
            KubeTargetError::Kube(e) => e.exit(),
            KubeTargetError::MissingKey { .. } => Exit::BadInput,
        }
    }
}

/// How long a dependency restarted for new configuration files may take to be ready again.
const CONFIG_ROLLOUT: Duration = Duration::from_secs(120);

pub(crate) fn step(e: KubeError) -> StepError {
    if e.retryable() {
        StepError::retryable(e.to_string())
    } else {
        StepError::fatal(e.to_string())
    }
}

/// Runs `f` to completion from a synchronous method of the trait. Needs the multi-threaded runtime xorbctl runs
/// on (the thread blocks, its tasks move to another worker).
///
/// `f` runs on a thread of its own: a `block_on` nested on this thread would share its parker with the
/// `block_on` that drives the engine, which may have other steps in flight.
fn block<F>(f: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    let handle = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| {
        std::thread::scope(|s| {
            s.spawn(|| handle.block_on(f))
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    })
}

/// Whether a ConfigMap's `data` already holds `changes` (a key mapped to None: absent).
fn holds(data: &BTreeMap<String, String>, changes: &BTreeMap<String, Option<String>>) -> bool {
    changes.iter().all(|(k, v)| data.get(k) == v.as_ref())
}

fn release_of_image(image: &str) -> &str {
    image.rsplit_once(':').map_or(image, |(_, tag)| tag)
}

/// The stamp of a configuration: its keys and values in order, hashed.
pub fn config_stamp(config: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    for (k, v) in config {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

fn params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    }
}

pub struct KubeTarget {
    client: kube::Client,
    spec: TargetFile,
    work: Workloads,
    state_dir: PathBuf,
    pg_password: String,
    redis_password: String,
}

impl KubeTarget {
    /// What `rollout history` says of the revision a service step makes: a new image, or the same image
    /// restarted for its configuration.
    async fn change_cause(
        &self,
        service: &str,
        image: &str,
        config: &BTreeMap<String, String>,
    ) -> Result<String, StepError> {
        let dep = names::deployment(service);
        let same_image = self
            .deployment(service)
            .await?
            .and_then(|d| workload::container_image(&d, &dep))
            .is_some_and(|i| i == image);
        Ok(if same_image {
            format!(
                "xorbctl: configuration of deployment/{dep} ({} and {}, sha256 {})",
                names::SHARED_CONFIG,
                names::config_map(service),
                &config_stamp(config)[..12]
            )
        } else {
            format!("xorbctl: set image deployment/{dep} {dep}={image}")
        })
    }

    pub(crate) fn applier(&self) -> xorb_kube::apply::Applier {
        xorb_kube::apply::Applier::new(self.client.clone(), &self.spec.namespace)
    }

    /// Reads the passwords the target file names, once: a missing Secret or key is an error now, not mid-run.
    pub async fn connect(
        client: kube::Client,
        spec: TargetFile,
        state_dir: &Path,
    ) -> Result<Self, KubeTargetError> {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &spec.namespace);
        let read = |r: SecretRef| {
            let secrets = secrets.clone();
            let ns = spec.namespace.clone();
            async move {
                let s = secrets.get(&r.secret).await.map_err(|e| {
                    KubeError::from_kube(Site::new("get", "secret", &ns, &r.secret), e)
                })?;
                s.data
                    .and_then(|d| {
                        d.get(&r.key)
                            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                    })
                    .ok_or(KubeTargetError::MissingKey {
                        namespace: ns,
                        secret: r.secret,
                        key: r.key,
                    })
            }
        };
        let pg_password = read(spec.postgres.password.clone()).await?;
        let redis_password = read(spec.redis.password.clone()).await?;
        Ok(KubeTarget {
            work: Workloads::new(client.clone(), &spec.namespace),
            client,
            spec,
            state_dir: state_dir.to_path_buf(),
            pg_password,
            redis_password,
        })
    }

    pub fn namespace(&self) -> &str {
        &self.spec.namespace
    }

    fn config_maps(&self) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), &self.spec.namespace)
    }

    fn site(&self, verb: &'static str, kind: &'static str, name: &str) -> Site {
        Site::new(verb, kind, &self.spec.namespace, name)
    }

    /// A ConfigMap's `data`; None when the ConfigMap does not exist.
    async fn cm_data(&self, name: &str) -> Result<Option<BTreeMap<String, String>>, StepError> {
        let cm = self
            .config_maps()
            .get_opt(name)
            .await
            .map_err(|e| step(KubeError::from_kube(self.site("get", "configmap", name), e)))?;
        Ok(cm.map(|c| c.data.unwrap_or_default()))
    }

    /// What phase 2's configuration step writes to `xorb-config` (None: nothing). It is read by every service,
    /// so it changes only when every running service is being configured (a rollback `--only api` must not hand
    /// the api's values to the worker at its next restart). Then what they all share goes there, and a key no
    /// service wants any more leaves it. Keys the services no longer share but still use stay until each
    /// service's own ConfigMap has them (`set_workload` writes those).
    ///
    /// `gone`: services taken for removed already (a plan's preview, where an earlier step removes them).
    async fn shared_changes(
        &self,
        services: &BTreeMap<String, BTreeMap<String, String>>,
        gone: &[String],
    ) -> Result<Option<BTreeMap<String, Option<String>>>, StepError> {
        let live: Vec<String> = self
            .deployments()
            .await?
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| !gone.contains(n))
            .collect();
        if !live.iter().all(|n| services.contains_key(n)) {
            return Ok(None);
        }
        let mut changes: BTreeMap<String, Option<String>> = shared_part(services.values())
            .into_iter()
            .map(|(k, v)| (k, Some(v)))
            .collect();
        for k in self.shared_config().await?.keys() {
            if services.values().all(|c| !c.contains_key(k)) {
                changes.insert(k.clone(), None);
            }
        }
        Ok((!changes.is_empty()).then_some(changes))
    }

    /// Sets (Some) and removes (None) keys of a ConfigMap, creating it when absent. Writes nothing when the
    /// keys already hold.
    async fn cm_merge(
        &self,
        name: &str,
        changes: &BTreeMap<String, Option<String>>,
    ) -> Result<bool, StepError> {
        let live = self.cm_data(name).await?;
        if live.as_ref().is_some_and(|data| holds(data, changes)) {
            return Ok(false);
        }
        if live.is_none() {
            let data: BTreeMap<String, String> = changes
                .iter()
                .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
                .collect();
            let cm: ConfigMap = serde_json::from_value(json!({
                "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "xorb"}},
                "data": data,
            }))
            .map_err(|e| StepError::fatal(format!("configmap {name}: {e}")))?;
            let pp = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            };
            match self.config_maps().create(&pp, &cm).await {
                Ok(_) => return Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => {} // created meanwhile: merge below
                Err(e) => {
                    return Err(step(KubeError::from_kube(
                        self.site("create", "configmap", name),
                        e,
                    )));
                }
            }
        }
        self.config_maps()
            .patch(name, &params(), &Patch::Merge(&json!({"data": changes})))
            .await
            .map_err(|e| {
                step(KubeError::from_kube(
                    self.site("patch", "configmap", name),
                    e,
                ))
            })?;
        Ok(true)
    }

    /// What a service's Pods read: `shared` (the data of `xorb-config`), then its own ConfigMap over it.
    async fn config_of(
        &self,
        shared: &BTreeMap<String, String>,
        service: &str,
    ) -> Result<BTreeMap<String, String>, StepError> {
        let mut config = shared.clone();
        config.extend(
            self.cm_data(&names::config_map(service))
                .await?
                .unwrap_or_default(),
        );
        Ok(config)
    }

    async fn shared_config(&self) -> Result<BTreeMap<String, String>, StepError> {
        Ok(self
            .cm_data(names::SHARED_CONFIG)
            .await?
            .unwrap_or_default())
    }

    async fn deployment(&self, service: &str) -> Result<Option<Deployment>, StepError> {
        self.work
            .deployment(&names::deployment(service))
            .await
            .map_err(step)
    }

    /// The services that have a Deployment, in the runbook's order.
    async fn deployments(&self) -> Result<Vec<(String, Deployment)>, StepError> {
        let mut out = Vec::new();
        for s in SERVICE_ORDER {
            if let Some(d) = self.deployment(s).await? {
                out.push((s.to_string(), d));
            }
        }
        Ok(out)
    }

    /// Until the service's address answers healthy on `release`: a complete rollout does not mean its Service
    /// forwards to the new Pods yet (kube-proxy learns of them a moment later), and the checks after a step ask
    /// the Service. A service the target file gives no address for is not waited for.
    async fn wait_serving(
        &self,
        service: &str,
        release: &str,
        within: Duration,
    ) -> Result<(), StepError> {
        let Some(base) = self.spec.services.get(service) else {
            return Ok(());
        };
        // Scaled to zero (an emergency procedure did it): nothing serves, and nothing should.
        let replicas = self
            .deployment(service)
            .await?
            .and_then(|d| d.spec)
            .and_then(|s| s.replicas)
            .unwrap_or(1);
        if replicas == 0 {
            return Ok(());
        }
        let http = xorb_adapters::deps::http_client();
        let last = std::sync::Mutex::new(String::from("no answer yet"));
        let ok = xorb_adapters::poll::poll_until(within.max(Duration::from_secs(1)), || async {
            match xorb_adapters::services::probe_service(&http, base).await {
                Ok(h) if h.healthy && h.release.as_deref() == Some(release) => Some(()),
                Ok(h) => {
                    *last.lock().unwrap_or_else(|p| p.into_inner()) = format!(
                        "{} on {}",
                        if h.healthy { "healthy" } else { "unhealthy" },
                        h.release.as_deref().unwrap_or("no release")
                    );
                    None
                }
                Err(e) => {
                    *last.lock().unwrap_or_else(|p| p.into_inner()) = e;
                    None
                }
            }
        })
        .await;
        ok.ok_or_else(|| {
            StepError::retryable(format!(
                "{service} rolled out, but {base} does not answer healthy on {release} ({})",
                last.into_inner().unwrap_or_else(|p| p.into_inner())
            ))
        })
    }

    /// The release recorded in `xorbctl-state`, if any.
    async fn recorded_release(&self) -> Result<Option<String>, StepError> {
        Ok(self
            .cm_data(names::STATE)
            .await?
            .and_then(|d| d.get("release").cloned()))
    }

    /// Before the first change to a namespace nothing of ours recorded its release: record it now, while every
    /// service still runs one release, so that a namespace caught between two releases still says which one it
    /// came from.
    async fn record_release_before_acting(&self) -> Result<(), StepError> {
        if self.recorded_release().await?.is_some() {
            return Ok(());
        }
        let live = self.observe().await?;
        if live.release.is_empty() {
            return Err(StepError::fatal(format!(
                "namespace {} runs services of several releases and has no record of its own (configmap {}): \
                 set it to the release it was deployed as (data.release) before acting on it",
                self.namespace(),
                names::STATE
            )));
        }
        self.cm_merge(
            names::STATE,
            &BTreeMap::from([("release".to_string(), Some(live.release))]),
        )
        .await
        .map(drop)
    }

    fn config_map_of(set: ConfigSet) -> Option<&'static str> {
        match set {
            ConfigSet::Prometheus => Some("prometheus-config"),
            ConfigSet::Alertmanager => Some("alertmanager-config"),
            ConfigSet::Redis => Some("redis-config"),
            ConfigSet::Dashboards => None,
        }
    }

    fn config_key(set: ConfigSet, name: &str) -> Result<&'static str, StepError> {
        // A ConfigMap key: letters, digits, '-', '_' and '.'; never a path.
        let ok = !name.is_empty()
            && name != "."
            && name != ".."
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !ok {
            return Err(StepError::fatal(format!(
                "{name:?} is not a file name of the {} configuration",
                set.name()
            )));
        }
        Self::config_map_of(set)
            .ok_or_else(|| StepError::fatal(format!("this target has no {}", set.name())))
    }
}

impl Target for KubeTarget {
    fn kind(&self) -> &'static str {
        "kubernetes"
    }

    fn endpoints(&self) -> Result<Endpoints, StepError> {
        let s = &self.spec;
        Ok(Endpoints {
            postgres: PgConn {
                host: s.postgres.host.clone(),
                port: s.postgres.port,
                user: s.postgres.user.clone(),
                password: self.pg_password.clone(),
                dbname: s.postgres.database.clone(),
            },
            redis: RedisEndpoint {
                host: s.redis.host.clone(),
                port: s.redis.port,
                password: self.redis_password.clone(),
            },
            nats: s.nats.clone(),
            prometheus: s.prometheus.clone(),
            alertmanager: s.alertmanager.clone(),
            services: s.services.clone(),
        })
    }

    async fn observe(&self) -> Result<LiveState, StepError> {
        let mut services = Vec::new();
        // Read once: every service reads the same xorb-config.
        let shared = self.shared_config().await?;
        for (name, d) in self.deployments().await? {
            let dep = names::deployment(&name);
            let image = workload::container_image(&d, &dep).ok_or_else(|| {
                StepError::fatal(format!(
                    "deployment {dep} in namespace {} has no container named {dep}",
                    self.namespace()
                ))
            })?;
            services.push(LiveService {
                release: release_of_image(&image).to_string(),
                image,
                config: self.config_of(&shared, &name).await?,
                name,
            });
        }
        let release = match self.recorded_release().await? {
            Some(r) => r,
            None => services
                .first()
                .filter(|f| services.iter().all(|s| s.release == f.release))
                .map(|f| f.release.clone())
                .unwrap_or_default(),
        };
        Ok(LiveState {
            release,
            services,
            database: None,
            streams: None,
            cluster_objects: true,
        })
    }

    async fn instances(&self) -> Result<Vec<Instance>, StepError> {
        // From each Deployment's status (the Role reads no Pods): its updated replicas run the template's
        // release; the others, while a rollout is under way, an earlier one the status does not name.
        let mut out = Vec::new();
        for (name, d) in self.deployments().await? {
            let dep = names::deployment(&name);
            let release = workload::container_image(&d, &dep)
                .map(|i| release_of_image(&i).to_string())
                .unwrap_or_default();
            let st = d.status.clone().unwrap_or_default();
            let total = st.replicas.unwrap_or(0).max(0);
            let complete = rollout::deployment(&d).is_complete();
            let updated = if complete {
                total
            } else {
                st.updated_replicas.unwrap_or(0).clamp(0, total)
            };
            let ready = st.ready_replicas.unwrap_or(0).max(0);
            for i in 0..total {
                out.push(Instance {
                    service: name.clone(),
                    release: if i < updated {
                        release.clone()
                    } else {
                        "(an earlier template)".to_string()
                    },
                    id: format!("deployment {dep}, replica {} of {total}", i + 1),
                    healthy: Some(i < ready),
                });
            }
        }
        Ok(out)
    }

    async fn converged(
        &self,
        service: &str,
        release: &str,
        config: Option<&BTreeMap<String, String>>,
    ) -> Result<bool, StepError> {
        let dep = names::deployment(service);
        let Some(d) = self.deployment(service).await? else {
            return Ok(false);
        };
        let on_release =
            workload::container_image(&d, &dep).is_some_and(|i| release_of_image(&i) == release);
        if !on_release || !rollout::deployment(&d).is_complete() {
            return Ok(false);
        }
        // Scaled down by an emergency procedure: the next service step scales it back.
        if d.metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(names::EMERGENCY_SCALE))
        {
            return Ok(false);
        }
        let Some(want) = config else {
            return Ok(true);
        };
        let stamped = workload::template_annotations(&d).get(names::CONFIG_STAMP)
            == Some(&config_stamp(want));
        Ok(stamped
            && &self
                .config_of(&self.shared_config().await?, service)
                .await?
                == want)
    }

    async fn removed(&self, service: &str) -> Result<bool, StepError> {
        self.work
            .removed(&names::deployment(service))
            .await
            .map_err(step)
    }

    async fn set_workload(
        &self,
        service: &str,
        image: &str,
        config: &BTreeMap<String, String>,
        timeout: Duration,
    ) -> Result<String, StepError> {
        self.record_release_before_acting().await?;
        let dep = names::deployment(service);
        let shared = self.shared_config().await?;
        if let Some(k) = shared.keys().find(|k| !config.contains_key(*k)) {
            return Err(StepError::fatal(format!(
                "{service}'s configuration has no {k}, which configmap {} sets for every service: one service \
                 cannot drop a shared key",
                names::SHARED_CONFIG
            )));
        }
        // The service's own ConfigMap holds what differs from the shared one, and nothing else.
        let own = names::config_map(service);
        let live_own = self.cm_data(&own).await?.unwrap_or_default();
        let changes = own_changes(&shared, &live_own, config);
        let config_changed = self.cm_merge(&own, &changes).await?;
        // A service an emergency procedure scaled down runs again once it is rolled: the procedure protected the
        // stack while the run was stopped, and the run going on is the way out of it.
        let scaled = self
            .work
            .scale_back(&dep, names::EMERGENCY_SCALE)
            .await
            .map_err(step)?;
        let stamp = BTreeMap::from([(names::CONFIG_STAMP.to_string(), config_stamp(config))]);
        let cause = self.change_cause(service, image, config).await?;
        let done = self
            .work
            .set_template(&dep, &dep, image, &stamp, &cause)
            .await
            .map_err(step)?;
        let t0 = std::time::Instant::now();
        let rolled = self
            .work
            .wait_rollout(Kind::Deployment, &dep, timeout)
            .await
            .map_err(step)?;
        self.wait_serving(
            service,
            release_of_image(image),
            timeout.saturating_sub(t0.elapsed()),
        )
        .await?;
        let mut how = match (done.changed(), config_changed) {
            (true, _) => done.message().to_string(),
            (false, true) => format!("configmap {own} updated"),
            (false, false) => "nothing to change".to_string(),
        };
        if scaled.changed() {
            how = format!("{how}; {}", scaled.message());
        }
        Ok(format!("{service} runs {image} ({how}); {rolled}"))
    }

    async fn add_workload(
        &self,
        service: &str,
        image: &str,
        release: &str,
        config: &BTreeMap<String, String>,
        timeout: Duration,
    ) -> Result<String, StepError> {
        // The Role creates no Deployments: a workload the namespace lacks is the release's manifests' job
        // (`kubectl apply -f deployments/`), not a rollback's.
        if self.deployment(service).await?.is_none() {
            return Err(StepError::fatal(format!(
                "deployment {} does not exist in namespace {}: apply {release}'s k8s/deployments and k8s/services \
                 first (xorbctl's Role may not create Deployments)",
                names::deployment(service),
                self.namespace()
            )));
        }
        self.set_workload(service, image, config, timeout).await
    }

    async fn share_configuration(
        &self,
        services: &BTreeMap<String, BTreeMap<String, String>>,
    ) -> Result<(), StepError> {
        let Some(changes) = self.shared_changes(services, &[]).await? else {
            return Ok(());
        };
        self.record_release_before_acting().await?;
        self.cm_merge(names::SHARED_CONFIG, &changes)
            .await
            .map(drop)
    }

    async fn apply_objects(&self, from: &Release, to: &Release) -> Result<String, StepError> {
        let wanted = objects::release_objects(to)?.len();
        self.record_release_before_acting().await?;
        let done = objects::apply(&self.applier(), from, to, false).await?;
        Ok(objects::describe(to, wanted, &done))
    }

    async fn remove_workload(&self, service: &str) -> Result<String, StepError> {
        self.record_release_before_acting().await?;
        let done = self
            .work
            .delete_deployment_and_service(&names::deployment(service))
            .await
            .map_err(step)?;
        Ok(done.message().to_string())
    }

    async fn stop_workload(&self, service: &str) -> Result<(), StepError> {
        self.record_release_before_acting().await?;
        self.work
            .scale_down_noted(&names::deployment(service), names::EMERGENCY_SCALE)
            .await
            .map(drop)
            .map_err(step)
    }

    fn settle(&self, to: &Release) -> Result<(), StepError> {
        block(async {
            let live = self.observe().await?;
            let all_on = live.services.len() == to.services.len()
                && live.services.iter().all(|s| s.release == to.name());
            if all_on && live.release != to.name() {
                self.cm_merge(
                    names::STATE,
                    &BTreeMap::from([("release".to_string(), Some(to.name().to_string()))]),
                )
                .await?;
            }
            Ok(())
        })
    }

    fn write_config(&self, set: ConfigSet, name: &str, bytes: &[u8]) -> Result<(), StepError> {
        let cm = Self::config_key(set, name)?;
        let text = std::str::from_utf8(bytes).map_err(|_| {
            StepError::fatal(format!(
                "{name} of the {} configuration is not UTF-8",
                set.name()
            ))
        })?;
        block(self.cm_merge(
            cm,
            &BTreeMap::from([(name.to_string(), Some(text.to_string()))]),
        ))
        .map(drop)
    }

    fn read_config(&self, set: ConfigSet, name: &str) -> Option<Vec<u8>> {
        let cm = Self::config_key(set, name).ok()?;
        block(self.cm_data(cm))
            .ok()
            .flatten()
            .and_then(|d| d.get(name).map(|v| v.clone().into_bytes()))
    }

    fn remove_config(&self, set: ConfigSet, name: &str) -> Result<bool, StepError> {
        let cm = Self::config_key(set, name)?;
        block(async {
            let had = self
                .cm_data(cm)
                .await?
                .is_some_and(|d| d.contains_key(name));
            if had {
                self.cm_merge(cm, &BTreeMap::from([(name.to_string(), None)]))
                    .await?;
            }
            Ok(had)
        })
    }

    async fn restart_server(
        &self,
        server: Server,
        stamp: &str,
    ) -> Result<Option<String>, StepError> {
        // The runbook restarts both after phase 4 changed them; their data lives on their volumes.
        let (kind, name) = match server {
            Server::Nats => (Kind::StatefulSet, "nats-cluster"),
            Server::Redis => (Kind::Deployment, "redis"),
        };
        let done = self.work.restart(kind, name, stamp).await.map_err(step)?;
        let rolled = self
            .work
            .wait_rollout(kind, name, CONFIG_ROLLOUT)
            .await
            .map_err(step)?;
        Ok(Some(format!(
            "{} {name} {} ({rolled})",
            kind.name(),
            if done.changed() {
                "restarted"
            } else {
                "already restarted by this run"
            }
        )))
    }

    async fn config_written(&self, set: ConfigSet) -> Result<(), StepError> {
        // Redis takes its settings live (CONFIG SET); its file only has to survive a restart.
        let (workload, url) = match set {
            ConfigSet::Prometheus => ("prometheus", Some(self.spec.prometheus.clone())),
            ConfigSet::Alertmanager => ("alertmanager", self.spec.alertmanager.clone()),
            ConfigSet::Redis | ConfigSet::Dashboards => return Ok(()),
        };
        let cm = Self::config_map_of(set).unwrap_or_default();
        let data = self.cm_data(cm).await?.unwrap_or_default();
        // The stamp is the files' hash, so the same files never restart the server twice (a resumed step).
        self.work
            .restart(Kind::Deployment, workload, &config_stamp(&data))
            .await
            .map_err(step)?;
        self.work
            .wait_rollout(Kind::Deployment, workload, CONFIG_ROLLOUT)
            .await
            .map_err(step)?;
        // Its Service forwards to the new Pod once the proxy (kube-proxy, in a cluster) has caught up.
        if let Some(base) = url {
            let ready = format!("{base}/-/ready");
            let http = xorb_adapters::deps::http_client();
            let ok = xorb_adapters::poll::poll_until(CONFIG_ROLLOUT, || async {
                http.get(&ready)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
                    .map(drop)
            })
            .await;
            if ok.is_none() {
                return Err(StepError::retryable(format!(
                    "{workload} restarted with its new configuration, but {ready} did not answer within {}s",
                    CONFIG_ROLLOUT.as_secs()
                )));
            }
        }
        Ok(())
    }

    fn has_config(&self, set: ConfigSet) -> bool {
        Self::config_map_of(set).is_some()
    }

    fn prometheus_config(&self, release: &Release, rules_dir: &Path) -> Result<Value, StepError> {
        // In the cluster Prometheus scrapes the Services by name, as the release writes them; only the rule
        // files move to where the ConfigMap is mounted.
        let src = release.path(&release.manifest.monitoring.prometheus);
        let text = std::fs::read_to_string(&src)
            .map_err(|e| StepError::fatal(format!("cannot read {}: {e}", src.display())))?;
        let mut cfg: Value = serde_saphyr::from_str(&text)
            .map_err(|e| StepError::fatal(format!("{} is not valid YAML: {e}", src.display())))?;
        let rules: Vec<Value> = release
            .manifest
            .monitoring
            .rules
            .iter()
            .filter_map(|r| r.file_name())
            .map(|n| Value::String(rules_dir.join(n).display().to_string()))
            .collect();
        cfg["rule_files"] = Value::Array(rules);
        Ok(with_targets(
            cfg,
            &self.spec.scrape_targets,
            self.spec.alerting_target.as_deref(),
        ))
    }

    fn prometheus_rules_dir(&self) -> PathBuf {
        // Empty: rule files named relative to prometheus.yml, which Prometheus resolves against the directory the
        // ConfigMap is mounted at, wherever that is (/etc/prometheus in the releases' Deployment).
        PathBuf::new()
    }

    fn evidence_dir(&self) -> PathBuf {
        self.spec
            .evidence_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("evidence"))
    }

    async fn capture(&self, dir: &Path) -> Result<String, StepError> {
        let live = self.observe().await?;
        write_json(&dir.join("services.json"), &live)?;
        let mut objects: Vec<Value> = Vec::new();
        let services: Api<Service> = Api::namespaced(self.client.clone(), self.namespace());
        for (name, d) in self.deployments().await? {
            objects.push(serde_json::to_value(&d).unwrap_or_default());
            let dep = names::deployment(&name);
            if let Some(s) = services
                .get_opt(&dep)
                .await
                .map_err(|e| step(KubeError::from_kube(self.site("get", "service", &dep), e)))?
            {
                objects.push(serde_json::to_value(&s).unwrap_or_default());
            }
        }
        let mut cms: Vec<String> = vec![names::SHARED_CONFIG.to_string(), names::STATE.to_string()];
        cms.extend(SERVICE_ORDER.iter().map(|s| names::config_map(s)));
        cms.extend(
            [
                ConfigSet::Prometheus,
                ConfigSet::Alertmanager,
                ConfigSet::Redis,
            ]
            .into_iter()
            .filter_map(Self::config_map_of)
            .map(str::to_string),
        );
        for name in &cms {
            if let Some(cm) =
                self.config_maps().get_opt(name).await.map_err(|e| {
                    step(KubeError::from_kube(self.site("get", "configmap", name), e))
                })?
            {
                objects.push(serde_json::to_value(&cm).unwrap_or_default());
            }
        }
        write_json(&dir.join("objects.json"), &objects)?;
        // The Secrets only encrypted: what a failed rollback needs to put them back.
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), self.namespace());
        let mut sealed = serde_json::Map::new();
        let mut wanted = vec!["xorb-secrets".to_string()];
        wanted.push(self.spec.postgres.password.secret.clone());
        wanted.push(self.spec.redis.password.secret.clone());
        wanted.sort();
        wanted.dedup();
        for name in &wanted {
            if let Some(s) = secrets
                .get_opt(name)
                .await
                .map_err(|e| step(KubeError::from_kube(self.site("get", "secret", name), e)))?
            {
                sealed.insert(name.clone(), serde_json::to_value(&s).unwrap_or_default());
            }
        }
        xorb_adapters::sealed::seal(
            &self.state_dir,
            &dir.join("secrets.json.age"),
            Value::Object(sealed).to_string().as_bytes(),
        )?;
        Ok(format!(
            "{} services and {} objects captured into {} ({} Secrets encrypted)",
            live.services.len(),
            objects.len(),
            dir.display(),
            wanted.len()
        ))
    }

    async fn verify_available(&self, release: &Release) -> Result<String, StepError> {
        // Images are pulled by the cluster, not here: what can be checked is that the release's manifests run
        // the images its release.toml names.
        let dir = release.dir.join("k8s").join("deployments");
        for s in &release.services {
            let file = dir.join(format!("{}.yaml", names::deployment(&s.name)));
            let text = std::fs::read_to_string(&file).map_err(|e| {
                StepError::fatal(format!(
                    "{} is missing from the release: {e}",
                    file.display()
                ))
            })?;
            if !text.contains(&format!("image: {}", s.image)) {
                return Err(StepError::fatal(format!(
                    "{} does not run {} as release.toml says",
                    file.display(),
                    s.image
                )));
            }
        }
        Ok(format!(
            "{} available: {} services with their Deployments, schema head {}",
            release.name(),
            release.services.len(),
            release.manifest.schema.head
        ))
    }

    fn check_token(&self, slug: &str) -> Result<String, StepError> {
        let dir = xorb_adapters::files::private_dir(&self.state_dir.join("secrets"))?;
        let path = dir.join("check-tenants.json");
        let mut tokens: BTreeMap<String, String> = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let token = tokens
            .entry(slug.to_string())
            .or_insert_with(xorb_adapters::sealed::random_secret)
            .clone();
        write_private(&path, &serde_json::to_vec(&tokens).unwrap_or_default())?;
        Ok(token)
    }

    fn log_hint(&self, what: &str) -> Option<String> {
        let object = match what {
            "Redis" => "deployment/redis",
            "Prometheus" => "deployment/prometheus",
            "Alertmanager" => "deployment/alertmanager",
            "NATS" => "statefulset/nats-cluster",
            _ => return None,
        };
        Some(format!(
            "kubectl --namespace {} logs {object}",
            self.namespace()
        ))
    }
}

/// What a service's own ConfigMap must change to hold exactly the keys of `config` that differ from `shared`.
fn own_changes(
    shared: &BTreeMap<String, String>,
    live_own: &BTreeMap<String, String>,
    config: &BTreeMap<String, String>,
) -> BTreeMap<String, Option<String>> {
    let mut changes: BTreeMap<String, Option<String>> = config
        .iter()
        .filter(|(k, v)| shared.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), Some(v.clone())))
        .collect();
    for k in live_own.keys() {
        if !changes.contains_key(k) {
            changes.insert(k.clone(), None);
        }
    }
    changes
}

/// The keys every configuration has, with the same value.
fn shared_part<'a>(
    mut configs: impl Iterator<Item = &'a BTreeMap<String, String>>,
) -> BTreeMap<String, String> {
    let Some(first) = configs.next() else {
        return BTreeMap::new();
    };
    let mut shared = first.clone();
    for c in configs {
        shared.retain(|k, v| c.get(k) == Some(v));
    }
    shared
}

/// The release's Prometheus configuration with the target file's addresses for the jobs it names and for
/// Alertmanager; everything else as the release wrote it.
fn with_targets(
    mut cfg: Value,
    scrape_targets: &BTreeMap<String, String>,
    alerting: Option<&str>,
) -> Value {
    if let Some(jobs) = cfg["scrape_configs"].as_array_mut() {
        for job in jobs {
            let name = job["job_name"].as_str().unwrap_or_default().to_string();
            if let Some(addr) = scrape_targets.get(&name) {
                job["static_configs"] = json!([{ "targets": [addr] }]);
            }
        }
    }
    if let Some(addr) = alerting {
        cfg["alerting"] = json!({"alertmanagers": [{"static_configs": [{"targets": [addr]}]}]});
    }
    cfg
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hang of steps in flight together on Kubernetes (`concurrent-steps.md`). The engine's future, polled by
    /// `Runtime::block_on`, woke itself (FuturesUnordered yielding, or tokio's budget running out) and then, in
    /// the same poll, a step called a synchronous method of the target. A `block_on` nested on that thread parks
    /// on the same thread parker, takes the wake-up for its own, and the outer `block_on` then parks with nobody
    /// left to wake it. With `block`'s own thread the wake-up reaches the engine.
    #[test]
    fn a_synchronous_call_after_a_self_wake_leaves_the_wake_to_the_engine() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut polls = 0;
            let polled = rt.block_on(std::future::poll_fn(|cx| {
                polls += 1;
                if polls > 1 {
                    return std::task::Poll::Ready(polls);
                }
                cx.waker().wake_by_ref();
                // A nested wait on the runtime's driver, as a Kubernetes call waits on its connection.
                block(tokio::time::sleep(std::time::Duration::from_millis(20)));
                std::task::Poll::Pending
            }));
            let _ = tx.send(polled);
        });
        let polled = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the engine's block_on was never polled again: its wake-up was taken by the nested call");
        assert_eq!(polled, 2);
    }

    #[test]
    fn the_stamp_changes_with_any_key_or_value_and_only_then() {
        let a = BTreeMap::from([
            ("A".to_string(), "1".to_string()),
            ("B".to_string(), "2".to_string()),
        ]);
        let mut b = a.clone();
        assert_eq!(config_stamp(&a), config_stamp(&b));
        b.insert("B".into(), "3".into());
        assert_ne!(config_stamp(&a), config_stamp(&b));
        // Key and value boundaries count: {"AB": ""} is not {"A": "B"}.
        let c = BTreeMap::from([("AB".to_string(), String::new())]);
        let d = BTreeMap::from([("A".to_string(), "B".to_string())]);
        assert_ne!(config_stamp(&c), config_stamp(&d));
    }

    #[test]
    fn named_jobs_and_alertmanager_move_and_the_rest_stays() {
        let cfg = json!({
            "scrape_configs": [
                {"job_name": "xorb-api", "static_configs": [{"targets": ["xorb-api:8000"]}]},
                {"job_name": "xorb-worker", "static_configs": [{"targets": ["xorb-worker:8000"]}]},
            ],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": ["alertmanager:9093"]}]}]},
        });
        let map = BTreeMap::from([("xorb-api".to_string(), "127.0.0.1:1".to_string())]);
        let out = with_targets(cfg.clone(), &map, Some("127.0.0.1:2"));
        assert_eq!(
            out["scrape_configs"][0]["static_configs"][0]["targets"][0],
            "127.0.0.1:1"
        );
        assert_eq!(out["scrape_configs"][1], cfg["scrape_configs"][1]);
        assert_eq!(
            out["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"][0],
            "127.0.0.1:2"
        );
        assert_eq!(with_targets(cfg.clone(), &BTreeMap::new(), None), cfg);
    }

    #[test]
    fn the_shared_part_is_what_every_service_has_alike() {
        let m = |kv: &[(&str, &str)]| -> BTreeMap<String, String> {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let a = m(&[("MODE", "basic"), ("LOG", "info"), ("ONLY_A", "1")]);
        let b = m(&[("MODE", "basic"), ("LOG", "debug")]);
        assert_eq!(shared_part([&a, &b].into_iter()), m(&[("MODE", "basic")]));
        assert_eq!(shared_part([&a].into_iter()), a);
        assert!(shared_part(std::iter::empty()).is_empty());
    }

    #[test]
    fn configuration_names_are_keys_never_paths() {
        assert!(KubeTarget::config_key(ConfigSet::Prometheus, "alert-rules.yml").is_ok());
        for bad in ["", "..", "../x", "a/b", "a b"] {
            assert!(
                KubeTarget::config_key(ConfigSet::Prometheus, bad).is_err(),
                "{bad:?}"
            );
        }
        assert!(KubeTarget::config_key(ConfigSet::Dashboards, "x.json").is_err());
    }
}
