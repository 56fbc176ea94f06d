//! `plan`'s live diff on Kubernetes (`kubectl diff`): what each step would change on the live objects, field by
//! field, as the API server computes it in a dry run (`dryRun=All`), so defaults and admission are the server's.
//! Nothing is written. The changes are worked out by the same functions the steps write with.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use xorb_engine::runner::StepError;
use xorb_kube::KubeError;
use xorb_kube::workload;
use xorb_model::release::Release;

use super::{KubeTarget, config_stamp, names, objects, own_changes, params, step};

/// One object's changes: `configmap/xorb-config`, and its lines (`data.LOG_LEVEL: debug → info`).
pub type ObjectDiff = (String, Vec<String>);

fn shown(v: &Value) -> String {
    match v {
        Value::Null => "(absent)".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn lines(diff: Vec<(String, Value, Value)>) -> Vec<String> {
    diff.into_iter()
        .map(|(path, before, after)| format!("{path}: {} → {}", shown(&before), shown(&after)))
        .collect()
}

impl KubeTarget {
    /// What a service step setting `image` would change on the service's Deployment. The configuration stays
    /// the live one, as the step keeps it.
    pub async fn preview_image(
        &self,
        service: &str,
        image: &str,
    ) -> Result<Vec<String>, StepError> {
        let config = self
            .config_of(&self.shared_config().await?, service)
            .await?;
        self.preview_template(service, image, &config).await
    }

    async fn preview_template(
        &self,
        service: &str,
        image: &str,
        config: &BTreeMap<String, String>,
    ) -> Result<Vec<String>, StepError> {
        let dep = names::deployment(service);
        let stamp = BTreeMap::from([(names::CONFIG_STAMP.to_string(), config_stamp(config))]);
        let cause = self.change_cause(service, image, config).await?;
        Ok(lines(
            self.work
                .preview_template(&dep, &dep, image, &stamp, &cause)
                .await
                .map_err(step)?,
        ))
    }

    /// What phase 2.2's object step would create, change and delete (`networkpolicy/NAME`: field paths, or
    /// `created`, `deleted`).
    pub async fn preview_objects(
        &self,
        from: &Release,
        to: &Release,
    ) -> Result<Vec<ObjectDiff>, StepError> {
        objects::apply(&self.applier(), from, to, true).await
    }

    /// What phase 2.2's configuration step would change: `xorb-config` (when every running service is
    /// configured), each service's own ConfigMap, and each Deployment whose configuration stamp moves (the
    /// restart). Values as they are: ConfigMaps hold no secrets (those are in Secrets), and the output goes
    /// through the invocation's redactor. `removed_before`: the services the plan removes before this step
    /// (rc1's control plane), which decide whether `xorb-config` changes; otherwise each object is compared as
    /// it is now.
    pub async fn preview_configuration(
        &self,
        services: &BTreeMap<String, BTreeMap<String, String>>,
        removed_before: &[String],
    ) -> Result<Vec<ObjectDiff>, StepError> {
        let mut out = Vec::new();
        let mut shared = self.shared_config().await?;
        if let Some(changes) = self.shared_changes(services, removed_before).await? {
            out.push((
                format!("configmap/{}", names::SHARED_CONFIG),
                self.cm_preview(names::SHARED_CONFIG, &changes).await?,
            ));
            for (k, v) in changes {
                match v {
                    Some(v) => shared.insert(k, v),
                    None => shared.remove(&k),
                };
            }
        }
        for (service, config) in services {
            let dep = names::deployment(service);
            let Some(d) = self.deployment(service).await? else {
                continue;
            };
            let own = names::config_map(service);
            let live_own = self.cm_data(&own).await?.unwrap_or_default();
            let changes = own_changes(&shared, &live_own, config);
            out.push((
                format!("configmap/{own}"),
                self.cm_preview(&own, &changes).await?,
            ));
            let image = workload::container_image(&d, &dep).unwrap_or_default();
            out.push((
                format!("deployment/{dep}"),
                self.preview_template(service, &image, config).await?,
            ));
        }
        out.retain(|(_, changes)| !changes.is_empty());
        Ok(out)
    }

    /// `cm_merge`'s dry run: the ConfigMap's changes as the server would write them.
    async fn cm_preview(
        &self,
        name: &str,
        changes: &BTreeMap<String, Option<String>>,
    ) -> Result<Vec<String>, StepError> {
        let Some(live) = self
            .config_maps()
            .get_opt(name)
            .await
            .map_err(|e| step(KubeError::from_kube(self.site("get", "configmap", name), e)))?
        else {
            return Ok(changes
                .iter()
                .filter_map(|(k, v)| v.as_ref().map(|v| format!("data.{k}: (absent) → {v}")))
                .collect());
        };
        if super::holds(&live.data.clone().unwrap_or_default(), changes) {
            return Ok(Vec::new());
        }
        let pp = PatchParams {
            dry_run: true,
            ..params()
        };
        let after: ConfigMap = self
            .config_maps()
            .patch(name, &pp, &Patch::Merge(&json!({ "data": changes })))
            .await
            .map_err(|e| {
                step(KubeError::from_kube(
                    self.site("dry-run patch", "configmap", name),
                    e,
                ))
            })?;
        Ok(lines(xorb_kube::diff::diff_values(
            &serde_json::to_value(&live).unwrap_or(Value::Null),
            &serde_json::to_value(&after).unwrap_or(Value::Null),
        )))
    }
}
