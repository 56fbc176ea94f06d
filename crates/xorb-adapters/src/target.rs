//! The seam between the shared steps and a target: what differs from one way of running XORB to another.
//!
//! Everything stateful that has a network API (PostgreSQL, NATS, Redis, Prometheus, Alertmanager, the services'
//! own HTTP) is reached through [`Endpoints`] by the shared adapters of this crate. A target implements only what
//! has no network API: its workloads (observe, set image, apply configuration, wait for the rollout, remove,
//! stop), the configuration files its servers read, the evidence storage, and how it captures its own state.
//! See docs/design/architecture.md ("Adding a target").

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use xorb_engine::planner::LiveState;
use xorb_engine::runner::StepError;
use xorb_model::release::Release;

use crate::conn::PgConn;

/// Where the dependencies answer. Every address is one this machine reaches (loopback on the local target, a
/// proxied Service port on Kubernetes).
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub postgres: PgConn,
    pub redis: RedisEndpoint,
    /// `nats://host:port`
    pub nats: String,
    /// `http://host:port`
    pub prometheus: String,
    /// None: the target runs no Alertmanager.
    pub alertmanager: Option<String>,
    /// Service name → `http://host:port` of its API (checks talk to them as a client would).
    pub services: BTreeMap<String, String>,
}

impl Endpoints {
    pub fn service(&self, name: &str) -> Option<&str> {
        self.services.get(name).map(String::as_str)
    }
}

#[derive(Debug, Clone)]
pub struct RedisEndpoint {
    pub host: String,
    pub port: u16,
    /// A secret: travels inside this process only (to the client, or a child's environment).
    pub password: String,
}

impl RedisEndpoint {
    /// The URL for the redis crate: never print it, never hand it to a child's arguments.
    pub fn url(&self, db: u8) -> String {
        format!(
            "redis://:{}@{}:{}/{db}",
            self.password, self.host, self.port
        )
    }
}

/// One live instance of a workload (a process, a pod), as the target sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub service: String,
    pub release: String,
    /// How an operator finds it ("pid 4242", "pod xorb-api-5d9c…").
    pub id: String,
    /// None: the target could not ask it.
    pub healthy: Option<bool>,
}

/// A set of configuration files a dependency reads from disk (no network API to hand them over).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConfigSet {
    /// `prometheus.yml` and the rule files beside it.
    Prometheus,
    /// `alertmanager.yml`.
    Alertmanager,
    /// `release.conf`, included by the server's own redis.conf so settings survive a restart.
    Redis,
    /// Grafana's dashboards (`*.json`); a target without Grafana has none.
    Dashboards,
}

/// A stateful server phase 4 reconfigures, which a target may restart afterwards (the runbook's `kubectl rollout
/// restart statefulset/nats-cluster` and `deployment/redis`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Nats,
    Redis,
}

impl ConfigSet {
    pub fn name(self) -> &'static str {
        match self {
            ConfigSet::Prometheus => "Prometheus",
            ConfigSet::Alertmanager => "Alertmanager",
            ConfigSet::Redis => "Redis",
            ConfigSet::Dashboards => "Grafana dashboards",
        }
    }
}

/// What a target provides. Errors are step errors: the target says whether trying again may help.
///
/// Workload operations converge: called again after a crash, they adopt what an earlier attempt left running
/// rather than starting it twice.
pub trait Target {
    /// The target's short name for messages ("local", "kubernetes").
    fn kind(&self) -> &'static str;

    /// Where each dependency answers now (a restart may have moved one).
    fn endpoints(&self) -> Result<Endpoints, StepError>;

    /// The services as the target records them: release, image, configuration.
    fn observe(&self) -> impl Future<Output = Result<LiveState, StepError>>;

    /// Every live instance of every service, with its health.
    fn instances(&self) -> impl Future<Output = Result<Vec<Instance>, StepError>>;

    /// `service` runs exactly `release` (and `config` when given), once, as recorded: nothing left to do.
    fn converged(
        &self,
        service: &str,
        release: &str,
        config: Option<&BTreeMap<String, String>>,
    ) -> impl Future<Output = Result<bool, StepError>>;

    /// `service` neither runs nor is recorded.
    fn removed(&self, service: &str) -> impl Future<Output = Result<bool, StepError>>;

    /// Makes `service` run `image` with `config` (a rollout when either changed) and waits until it is ready.
    /// Returns what was done, in words.
    fn set_workload(
        &self,
        service: &str,
        image: &str,
        config: &BTreeMap<String, String>,
        timeout: Duration,
    ) -> impl Future<Output = Result<String, StepError>>;

    /// Creates `service` (running `image` of `release` with `config`) unless it exists, and waits until ready.
    fn add_workload(
        &self,
        service: &str,
        image: &str,
        release: &str,
        config: &BTreeMap<String, String>,
        timeout: Duration,
    ) -> impl Future<Output = Result<String, StepError>>;

    /// Before each service of `services` is run with exactly its configuration (phase 2's configuration step):
    /// a target whose services read a shared configuration (Kubernetes' ConfigMap `xorb-config`) puts there what
    /// they all have in common, as the runbook's `kubectl patch configmap xorb-config` does. Changes nothing a
    /// running instance sees; the services are restarted one by one afterwards, as their configuration differs.
    fn share_configuration(
        &self,
        services: &BTreeMap<String, BTreeMap<String, String>>,
    ) -> impl Future<Output = Result<(), StepError>> {
        let _ = services;
        async { Ok(()) }
    }

    /// Puts `to`'s cluster objects in place as its manifests write them, and removes those only `from` has (the
    /// runbook's `kubectl apply -f secrets/ network-policies/`). Planned only where `observe` says the target has
    /// cluster objects (`LiveState::cluster_objects`); a target without them refuses.
    fn apply_objects(
        &self,
        from: &Release,
        to: &Release,
    ) -> impl Future<Output = Result<String, StepError>> {
        let (_, _) = (from, to);
        async move {
            Err(StepError::Unsupported {
                action: "apply_objects".into(),
                why: format!("the {} target has no cluster objects", self.kind()),
            })
        }
    }

    /// Stops and forgets `service` (the runbook's `kubectl delete deployment`).
    fn remove_workload(&self, service: &str) -> impl Future<Output = Result<String, StepError>>;

    /// Stops every instance of `service` and keeps it recorded (scale to zero: an emergency procedure).
    fn stop_workload(&self, service: &str) -> impl Future<Output = Result<(), StepError>>;

    /// Called after each workload step: when every service runs `to`, the target records `to` as its release.
    fn settle(&self, to: &Release) -> Result<(), StepError>;

    /// Puts `bytes` as file `name` of `set` where the server reads it (atomically: a reader never sees half).
    fn write_config(&self, set: ConfigSet, name: &str, bytes: &[u8]) -> Result<(), StepError>;

    /// File `name` of `set` as the server would read it now; None when absent.
    fn read_config(&self, set: ConfigSet, name: &str) -> Option<Vec<u8>>;

    /// Removes file `name` of `set`; Ok(false) when it was not there.
    fn remove_config(&self, set: ConfigSet, name: &str) -> Result<bool, StepError>;

    /// The files of `set` were written: make its server see them before it is asked to reload. A local file is
    /// seen at once; a ConfigMap mounted in a Pod is not (the kubelet refreshes it when it likes), so the
    /// Kubernetes target restarts the server's workload. Returns once the server answers again.
    fn config_written(&self, set: ConfigSet) -> impl Future<Output = Result<(), StepError>> {
        let _ = set;
        async { Ok(()) }
    }

    /// After phase 4 reconfigured `server`: a target whose server runs as the release defines it only after a
    /// restart restarts it (once per `stamp`: a resumed step does not restart it again) and returns what it did
    /// once the restart is rolled out; None: nothing to restart (the local stack takes the changes live). The
    /// caller then checks that the server answers with the data it had.
    fn restart_server(
        &self,
        server: Server,
        stamp: &str,
    ) -> impl Future<Output = Result<Option<String>, StepError>> {
        let _ = (server, stamp);
        async { Ok(None) }
    }

    /// Whether the target has `set` at all (a target without Grafana has no dashboards).
    fn has_config(&self, set: ConfigSet) -> bool;

    /// `release`'s Prometheus configuration as this target runs it (scrape targets at its workloads, alerting to
    /// its Alertmanager), with the rule files named as they are read from `rules_dir`.
    fn prometheus_config(
        &self,
        release: &Release,
        rules_dir: &Path,
    ) -> Result<serde_json::Value, StepError>;

    /// Where the live Prometheus reads its rule files.
    fn prometheus_rules_dir(&self) -> PathBuf;

    /// Where the services keep evidence files (signed records and the public key).
    fn evidence_dir(&self) -> PathBuf;

    /// Saves what a failed rollback needs to undo it (workload specs; secrets encrypted) into `dir`.
    fn capture(&self, dir: &Path) -> impl Future<Output = Result<String, StepError>>;

    /// Whether `release`'s images can run on this target.
    fn verify_available(
        &self,
        release: &Release,
    ) -> impl Future<Output = Result<String, StepError>>;

    /// The bearer token of the tool's own check tenant `slug`, created once and kept privately by the target.
    fn check_token(&self, slug: &str) -> Result<String, StepError>;

    /// Where an operator reads `what`'s log ("Redis", "Prometheus"), for messages; None when unknown.
    fn log_hint(&self, what: &str) -> Option<String>;
}
