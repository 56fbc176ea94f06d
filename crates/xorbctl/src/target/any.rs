//! One type for whichever target the state directory is bound to. The seam's methods return `impl Future`, so
//! `dyn Target` is not possible; an enum that forwards each call is the one place that knows both targets.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use xorb_adapters::target::{ConfigSet, Endpoints, Instance, Server, Target};
use xorb_engine::planner::LiveState;
use xorb_engine::runner::StepError;
use xorb_kube_target::KubeTarget;
use xorb_local::target::LocalTarget;
use xorb_model::release::Release;

pub enum AnyTarget {
    Local(LocalTarget),
    Kube(Box<KubeTarget>),
}

/// Forwards one call to whichever target this is.
macro_rules! each {
    ($self:ident, $t:ident => $call:expr) => {
        match $self {
            AnyTarget::Local($t) => $call,
            AnyTarget::Kube($t) => $call,
        }
    };
}

impl Target for AnyTarget {
    fn kind(&self) -> &'static str {
        each!(self, t => t.kind())
    }

    fn endpoints(&self) -> Result<Endpoints, StepError> {
        each!(self, t => t.endpoints())
    }

    async fn observe(&self) -> Result<LiveState, StepError> {
        each!(self, t => t.observe().await)
    }

    async fn instances(&self) -> Result<Vec<Instance>, StepError> {
        each!(self, t => t.instances().await)
    }

    async fn converged(
        &self,
        service: &str,
        release: &str,
        config: Option<&BTreeMap<String, String>>,
    ) -> Result<bool, StepError> {
        each!(self, t => t.converged(service, release, config).await)
    }

    async fn removed(&self, service: &str) -> Result<bool, StepError> {
        each!(self, t => t.removed(service).await)
    }

    async fn set_workload(
        &self,
        service: &str,
        image: &str,
        config: &BTreeMap<String, String>,
        timeout: Duration,
    ) -> Result<String, StepError> {
        each!(self, t => t.set_workload(service, image, config, timeout).await)
    }

    async fn add_workload(
        &self,
        service: &str,
        image: &str,
        release: &str,
        config: &BTreeMap<String, String>,
        timeout: Duration,
    ) -> Result<String, StepError> {
        each!(self, t => t.add_workload(service, image, release, config, timeout).await)
    }

    async fn share_configuration(
        &self,
        services: &BTreeMap<String, BTreeMap<String, String>>,
    ) -> Result<(), StepError> {
        each!(self, t => t.share_configuration(services).await)
    }

    async fn apply_objects(&self, from: &Release, to: &Release) -> Result<String, StepError> {
        each!(self, t => t.apply_objects(from, to).await)
    }

    async fn remove_workload(&self, service: &str) -> Result<String, StepError> {
        each!(self, t => t.remove_workload(service).await)
    }

    async fn stop_workload(&self, service: &str) -> Result<(), StepError> {
        each!(self, t => t.stop_workload(service).await)
    }

    fn settle(&self, to: &Release) -> Result<(), StepError> {
        each!(self, t => t.settle(to))
    }

    fn write_config(&self, set: ConfigSet, name: &str, bytes: &[u8]) -> Result<(), StepError> {
        each!(self, t => t.write_config(set, name, bytes))
    }

    fn read_config(&self, set: ConfigSet, name: &str) -> Option<Vec<u8>> {
        each!(self, t => t.read_config(set, name))
    }

    fn remove_config(&self, set: ConfigSet, name: &str) -> Result<bool, StepError> {
        each!(self, t => t.remove_config(set, name))
    }

    async fn restart_server(
        &self,
        server: Server,
        stamp: &str,
    ) -> Result<Option<String>, StepError> {
        each!(self, t => t.restart_server(server, stamp).await)
    }

    async fn config_written(&self, set: ConfigSet) -> Result<(), StepError> {
        each!(self, t => t.config_written(set).await)
    }

    fn has_config(&self, set: ConfigSet) -> bool {
        each!(self, t => t.has_config(set))
    }

    fn prometheus_config(
        &self,
        release: &Release,
        rules_dir: &Path,
    ) -> Result<serde_json::Value, StepError> {
        each!(self, t => t.prometheus_config(release, rules_dir))
    }

    fn prometheus_rules_dir(&self) -> PathBuf {
        each!(self, t => t.prometheus_rules_dir())
    }

    fn evidence_dir(&self) -> PathBuf {
        each!(self, t => t.evidence_dir())
    }

    async fn capture(&self, dir: &Path) -> Result<String, StepError> {
        each!(self, t => t.capture(dir).await)
    }

    async fn verify_available(&self, release: &Release) -> Result<String, StepError> {
        each!(self, t => t.verify_available(release).await)
    }

    fn check_token(&self, slug: &str) -> Result<String, StepError> {
        each!(self, t => t.check_token(slug))
    }

    fn log_hint(&self, what: &str) -> Option<String> {
        each!(self, t => t.log_hint(what))
    }
}
