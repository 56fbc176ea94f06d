//! Workload operations with kubectl's semantics, each idempotent: called again after a crash, it reads the live
//! object and does only what is left (a resumed run never sets an image or restarts twice).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};

use crate::error::{KubeError, Site};
use crate::rollout::{self, Rollout};

/// The annotation `kubectl … --record` writes; the Deployment controller copies it onto the new ReplicaSet, where
/// `kubectl rollout history` reads it.
pub const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";
/// The template annotation `kubectl rollout restart` sets.
pub const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";
/// The field manager of every write (server-side apply and patches), so `managedFields` names us.
pub const FIELD_MANAGER: &str = "xorbctl";

/// How many times a write guarded by the resourceVersion is read and tried again after a conflict. The
/// Deployment controller writes the status (and so the resourceVersion) again and again while a rollout or a
/// scale is under way, so a write right after another one meets a conflict or two; it backs off a little more
/// each time (`conflict_pause`), about 4 s in all.
const CONFLICT_TRIES: u32 = 8;

async fn conflict_pause(attempt: u32) {
    if attempt > 0 {
        tokio::time::sleep(Duration::from_millis(50u64 << attempt.min(4))).await;
    }
}

/// A workload kind `rollout restart` and `rollout status` know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Deployment,
    StatefulSet,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Deployment => "deployment",
            Kind::StatefulSet => "statefulset",
        }
    }
}

/// What an operation did, for the step's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    Changed(String),
    Unchanged(String),
}

impl Done {
    pub fn message(&self) -> &str {
        match self {
            Done::Changed(m) | Done::Unchanged(m) => m,
        }
    }

    pub fn changed(&self) -> bool {
        matches!(self, Done::Changed(_))
    }
}

/// The workloads of one namespace.
#[derive(Clone)]
pub struct Workloads {
    client: kube::Client,
    namespace: String,
}

fn params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    }
}

impl Workloads {
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        Workloads {
            client,
            namespace: namespace.into(),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn site(&self, verb: &'static str, kind: &'static str, name: &str) -> Site {
        Site::new(verb, kind, &self.namespace, name)
    }

    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn stateful_sets(&self) -> Api<StatefulSet> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    pub async fn deployment(&self, name: &str) -> Result<Option<Deployment>, KubeError> {
        self.deployments()
            .get_opt(name)
            .await
            .map_err(|e| KubeError::from_kube(self.site("get", "deployment", name), e))
    }

    /// The image of `container` in the Deployment's template; None when the Deployment or container is absent.
    pub async fn deployment_image(
        &self,
        name: &str,
        container: &str,
    ) -> Result<Option<String>, KubeError> {
        Ok(self
            .deployment(name)
            .await?
            .and_then(|d| container_image(&d, container)))
    }

    /// `kubectl set image deployment/NAME CONTAINER=IMAGE --record`: the template's image and the change-cause
    /// annotation, in one strategic-merge patch preconditioned on the resourceVersion read (a 409 re-reads and
    /// decides again). Nothing is written when the image is already set, so a resumed run creates no second
    /// ReplicaSet.
    pub async fn set_image(
        &self,
        name: &str,
        container: &str,
        image: &str,
        change_cause: &str,
    ) -> Result<Done, KubeError> {
        self.set_template(name, container, image, &BTreeMap::new(), change_cause)
            .await
    }

    /// As [`Workloads::set_image`], with template annotations set in the same patch: an image and a
    /// configuration stamp change together in one rollout (one new ReplicaSet), and nothing is written when
    /// both already hold.
    pub async fn set_template(
        &self,
        name: &str,
        container: &str,
        image: &str,
        annotations: &BTreeMap<String, String>,
        change_cause: &str,
    ) -> Result<Done, KubeError> {
        let site = || self.site("patch", "deployment", name);
        for attempt in 0..CONFLICT_TRIES {
            conflict_pause(attempt).await;
            let d = self
                .deployment(name)
                .await?
                .ok_or(KubeError::NotFound { site: site() })?;
            let Some(current) = container_image(&d, container) else {
                return Err(KubeError::Invalid {
                    site: site(),
                    message: format!("the Deployment has no container named {container}"),
                });
            };
            let live = template_annotations(&d);
            let stamped = annotations.iter().all(|(k, v)| live.get(k) == Some(v));
            if current == image && stamped {
                return Ok(Done::Unchanged(format!(
                    "deployment {name}: {container} already runs {image}"
                )));
            }
            let patch = template_patch(&d, container, image, annotations, change_cause);
            match self
                .deployments()
                .patch(name, &params(), &Patch::Strategic(&patch))
                .await
            {
                Ok(_) if current == image => {
                    return Ok(Done::Changed(format!(
                        "deployment {name}: template annotations set ({container} stays on {image})"
                    )));
                }
                Ok(_) => {
                    return Ok(Done::Changed(format!(
                        "deployment {name}: {container} set to {image}"
                    )));
                }
                Err(e) => {
                    let e = KubeError::from_kube(site(), e);
                    if !e.is_conflict() {
                        return Err(e);
                    }
                }
            }
        }
        Err(KubeError::Conflict {
            site: site(),
            reason: format!(
                "Conflict ({CONFLICT_TRIES} times in a row over about 4 s: another writer keeps changing it)"
            ),
        })
    }

    /// What [`Workloads::set_template`] would change, field by field with the values before and after, as the API
    /// server computes it (the same patch with `dryRun=All`, as `kubectl diff` does): nothing is written.
    pub async fn preview_template(
        &self,
        name: &str,
        container: &str,
        image: &str,
        annotations: &BTreeMap<String, String>,
        change_cause: &str,
    ) -> Result<Vec<(String, Value, Value)>, KubeError> {
        let site = || self.site("dry-run patch", "deployment", name);
        let d = self
            .deployment(name)
            .await?
            .ok_or(KubeError::NotFound { site: site() })?;
        let live = template_annotations(&d);
        if container_image(&d, container).as_deref() == Some(image)
            && annotations.iter().all(|(k, v)| live.get(k) == Some(v))
        {
            return Ok(Vec::new());
        }
        let patch = template_patch(&d, container, image, annotations, change_cause);
        let pp = PatchParams {
            dry_run: true,
            ..params()
        };
        let after = self
            .deployments()
            .patch(name, &pp, &Patch::Strategic(&patch))
            .await
            .map_err(|e| KubeError::from_kube(site(), e))?;
        Ok(crate::diff::diff_values(
            &serde_json::to_value(&d).unwrap_or(Value::Null),
            &serde_json::to_value(&after).unwrap_or(Value::Null),
        ))
    }

    /// `kubectl rollout status KIND/NAME --timeout`: polls the live object until the rollout completes, fails at
    /// once on `ProgressDeadlineExceeded`, or `timeout` passes.
    pub async fn wait_rollout(
        &self,
        kind: Kind,
        name: &str,
        timeout: Duration,
    ) -> Result<String, KubeError> {
        let what = format!(
            "rollout of {} {name} in namespace {}",
            kind.name(),
            self.namespace
        );
        let t0 = Instant::now();
        let mut pause = Duration::from_millis(100);
        loop {
            let state = match kind {
                Kind::Deployment => self
                    .deployment(name)
                    .await?
                    .map(|d| rollout::deployment(&d)),
                Kind::StatefulSet => self
                    .stateful_sets()
                    .get_opt(name)
                    .await
                    .map_err(|e| KubeError::from_kube(self.site("get", "statefulset", name), e))?
                    .map(|s| rollout::stateful_set(&s)),
            };
            let state = state.ok_or_else(|| KubeError::NotFound {
                site: self.site("get", kind.name(), name),
            })?;
            match state {
                Rollout::Complete(m) => return Ok(m),
                Rollout::Failed(message) => return Err(KubeError::RolloutFailed { what, message }),
                Rollout::Waiting(last) if t0.elapsed() >= timeout => {
                    return Err(KubeError::Timeout {
                        what,
                        seconds: timeout.as_secs(),
                        last,
                    });
                }
                Rollout::Waiting(_) => {}
            }
            tokio::time::sleep(pause.min(timeout.saturating_sub(t0.elapsed()))).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// `kubectl rollout restart KIND/NAME`, made idempotent: `stamp` (say, when the run decided to restart) is
    /// the `restartedAt` value, and a template that already carries it is left alone.
    pub async fn restart(&self, kind: Kind, name: &str, stamp: &str) -> Result<Done, KubeError> {
        let site = self.site("patch", kind.name(), name);
        let template_annotations = match kind {
            Kind::Deployment => self
                .deployment(name)
                .await?
                .ok_or(KubeError::NotFound { site: site.clone() })?
                .spec
                .and_then(|s| s.template.metadata)
                .and_then(|m| m.annotations),
            Kind::StatefulSet => self
                .stateful_sets()
                .get_opt(name)
                .await
                .map_err(|e| KubeError::from_kube(self.site("get", "statefulset", name), e))?
                .ok_or(KubeError::NotFound { site: site.clone() })?
                .spec
                .and_then(|s| s.template.metadata)
                .and_then(|m| m.annotations),
        };
        if template_annotations
            .as_ref()
            .and_then(|a| a.get(RESTARTED_AT))
            .map(String::as_str)
            == Some(stamp)
        {
            return Ok(Done::Unchanged(format!(
                "{} {name}: already restarted at {stamp}",
                kind.name()
            )));
        }
        let patch =
            json!({"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: stamp}}}}});
        let patch = Patch::Strategic(&patch);
        let result = match kind {
            Kind::Deployment => self
                .deployments()
                .patch(name, &params(), &patch)
                .await
                .map(|_| ()),
            Kind::StatefulSet => self
                .stateful_sets()
                .patch(name, &params(), &patch)
                .await
                .map(|_| ()),
        };
        result.map_err(|e| KubeError::from_kube(site, e))?;
        Ok(Done::Changed(format!(
            "{} {name}: restarted at {stamp}",
            kind.name()
        )))
    }

    /// `kubectl scale deployment NAME --replicas=N` through the scale subresource (idempotent by nature).
    pub async fn scale(&self, name: &str, replicas: i32) -> Result<Done, KubeError> {
        let site = self.site("patch", "deployment/scale", name);
        let d = self
            .deployment(name)
            .await?
            .ok_or(KubeError::NotFound { site: site.clone() })?;
        if d.spec.as_ref().and_then(|s| s.replicas) == Some(replicas) {
            return Ok(Done::Unchanged(format!(
                "deployment {name}: already {replicas} replicas"
            )));
        }
        let patch = json!({"spec": {"replicas": replicas}});
        self.deployments()
            .patch_scale(name, &params(), &Patch::Merge(&patch))
            .await
            .map_err(|e| KubeError::from_kube(site, e))?;
        Ok(Done::Changed(format!(
            "deployment {name}: scaled to {replicas}"
        )))
    }

    /// Scales Deployment `name` to 0 and notes on it (annotation `note`) how many replicas it had, in one write
    /// guarded by its resourceVersion: an emergency stop that [`Workloads::scale_back`] undoes exactly. A
    /// Deployment at 0 already keeps the note it has (a second stop must not record 0 as the count to restore).
    pub async fn scale_down_noted(&self, name: &str, note: &str) -> Result<Done, KubeError> {
        self.patch_guarded(name, |d| {
            let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            if replicas == 0 {
                return Edit::Done(Done::Unchanged(format!(
                    "deployment {name}: already 0 replicas"
                )));
            }
            Edit::Merge(
                json!({"metadata": {"annotations": {note: replicas.to_string()}}, "spec": {"replicas": 0}}),
                format!("deployment {name}: scaled from {replicas} to 0"),
            )
        })
        .await
    }

    /// Undoes [`Workloads::scale_down_noted`]: the noted replica count back, the note removed, in one write. Nothing
    /// when the Deployment carries no note (or someone scaled it up since: their count stands, the note goes).
    pub async fn scale_back(&self, name: &str, note: &str) -> Result<Done, KubeError> {
        self.patch_guarded(name, |d| {
            let Some(noted) = d.metadata.annotations.as_ref().and_then(|a| a.get(note)) else {
                return Edit::Done(Done::Unchanged(format!(
                    "deployment {name}: nothing to scale back"
                )));
            };
            let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let back = match noted.parse::<i32>() {
                Ok(n) if replicas == 0 && n > 0 => n,
                _ => replicas,
            };
            Edit::Merge(
                json!({"metadata": {"annotations": {note: null}}, "spec": {"replicas": back}}),
                format!("deployment {name}: scaled back from {replicas} to {back}"),
            )
        })
        .await
    }

    /// Reads Deployment `name`, asks `edit` what to write, and merge-patches it under the resourceVersion just
    /// read; on a conflict (someone wrote in between) reads and decides again (`CONFLICT_TRIES`).
    async fn patch_guarded(
        &self,
        name: &str,
        edit: impl Fn(&Deployment) -> Edit,
    ) -> Result<Done, KubeError> {
        let site = || self.site("patch", "deployment", name);
        for attempt in 0..CONFLICT_TRIES {
            conflict_pause(attempt).await;
            let d = self
                .deployment(name)
                .await?
                .ok_or(KubeError::NotFound { site: site() })?;
            let (mut patch, message) = match edit(&d) {
                Edit::Done(done) => return Ok(done),
                Edit::Merge(patch, message) => (patch, message),
            };
            patch["metadata"]["resourceVersion"] = json!(d.metadata.resource_version);
            match self
                .deployments()
                .patch(name, &params(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return Ok(Done::Changed(message)),
                Err(e) => {
                    let e = KubeError::from_kube(site(), e);
                    if !e.is_conflict() {
                        return Err(e);
                    }
                }
            }
        }
        Err(KubeError::Conflict {
            site: site(),
            reason: format!(
                "Conflict ({CONFLICT_TRIES} times in a row over about 4 s: another writer keeps changing it)"
            ),
        })
    }

    /// `kubectl patch configmap NAME -p '{"data":{…}}'`: a merge patch of `data` keys (idempotent by nature).
    pub async fn patch_config_map(
        &self,
        name: &str,
        data: &BTreeMap<String, String>,
    ) -> Result<Done, KubeError> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        let site = self.site("patch", "configmap", name);
        let live = api
            .get_opt(name)
            .await
            .map_err(|e| KubeError::from_kube(self.site("get", "configmap", name), e))?
            .ok_or(KubeError::NotFound { site: site.clone() })?;
        let current = live.data.unwrap_or_default();
        if data.iter().all(|(k, v)| current.get(k) == Some(v)) {
            return Ok(Done::Unchanged(format!(
                "configmap {name}: already as asked"
            )));
        }
        let keys: Vec<&str> = data.keys().map(String::as_str).collect();
        api.patch(name, &params(), &Patch::Merge(&json!({"data": data})))
            .await
            .map_err(|e| KubeError::from_kube(site, e))?;
        Ok(Done::Changed(format!(
            "configmap {name}: set {}",
            keys.join(", ")
        )))
    }

    /// `kubectl delete deployment NAME` then `kubectl delete service NAME`; each 404 means already gone.
    pub async fn delete_deployment_and_service(&self, name: &str) -> Result<Done, KubeError> {
        // Background propagation, kubectl's default: the garbage collector removes the ReplicaSets and Pods.
        let dp = DeleteParams::background();
        let mut gone = Vec::new();
        match self.deployments().delete(name, &dp).await {
            Ok(_) => gone.push("deployment"),
            Err(e) => {
                let e = KubeError::from_kube(self.site("delete", "deployment", name), e);
                if !e.is_not_found() {
                    return Err(e);
                }
            }
        }
        let services: Api<Service> = Api::namespaced(self.client.clone(), &self.namespace);
        match services.delete(name, &dp).await {
            Ok(_) => gone.push("service"),
            Err(e) => {
                let e = KubeError::from_kube(self.site("delete", "service", name), e);
                if !e.is_not_found() {
                    return Err(e);
                }
            }
        }
        Ok(if gone.is_empty() {
            Done::Unchanged(format!("{name}: no deployment or service left"))
        } else {
            Done::Changed(format!("{name}: deleted {}", gone.join(" and ")))
        })
    }

    /// Whether neither the Deployment nor the Service `name` exists.
    pub async fn removed(&self, name: &str) -> Result<bool, KubeError> {
        let services: Api<Service> = Api::namespaced(self.client.clone(), &self.namespace);
        let svc = services
            .get_opt(name)
            .await
            .map_err(|e| KubeError::from_kube(self.site("get", "service", name), e))?;
        Ok(self.deployment(name).await?.is_none() && svc.is_none())
    }
}

pub fn container_image(d: &Deployment, container: &str) -> Option<String> {
    d.spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == container)
        .map(|c| c.image.clone().unwrap_or_default())
}

/// The annotations of the Deployment's pod template (empty when none).
pub fn template_annotations(d: &Deployment) -> BTreeMap<String, String> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default()
}

/// The patch of [`Workloads::set_template`]: the container's image, the template's annotations and the change-cause,
/// preconditioned on the resourceVersion read.
fn template_patch(
    d: &Deployment,
    container: &str,
    image: &str,
    annotations: &BTreeMap<String, String>,
    change_cause: &str,
) -> Value {
    let mut template = json!({"spec": {"containers": [{"name": container, "image": image}]}});
    if !annotations.is_empty() {
        template["metadata"] = json!({"annotations": annotations});
    }
    json!({
        "metadata": {
            "resourceVersion": d.metadata.resource_version,
            "annotations": {CHANGE_CAUSE: change_cause},
        },
        "spec": {"template": template},
    })
}

/// What [`Workloads::patch_guarded`] is to do with the Deployment it read.
enum Edit {
    /// Nothing to write.
    Done(Done),
    /// This merge patch (the resourceVersion is added), and what it does in words.
    Merge(Value, String),
}
