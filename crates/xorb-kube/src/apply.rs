//! `kubectl apply --server-side --force-conflicts --field-manager=xorbctl` of ConfigMaps, Secrets and
//! NetworkPolicies, and its `--dry-run=server` twin for a plan's diff (`kubectl diff`): the API server computes
//! the merged object, so the diff is what the apply would write, defaults and all.
//!
//! Conflicts are forced: the release's manifests are the truth a rollback restores, whoever last wrote a field
//! (a person with `kubectl edit`, a client-side `kubectl apply`).

use kube::Api;
use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::Value;

use crate::diff::diff;
use crate::error::{KubeError, Site};
use crate::workload::FIELD_MANAGER;

/// The kinds a rollback applies, and nothing else (the Role grants exactly these).
const KINDS: [(&str, &str, &str); 3] = [
    ("", "v1", "ConfigMap"),
    ("", "v1", "Secret"),
    ("networking.k8s.io", "v1", "NetworkPolicy"),
];

/// What applying one object did (or, in a dry run, would do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub kind: String,
    pub name: String,
    /// The object did not exist.
    pub created: bool,
    /// Paths of the fields whose value changes (`data.LOG_LEVEL`, `spec.ingress[0].from`); never values, since a
    /// Secret's are secret.
    pub changed: Vec<String>,
}

impl Applied {
    pub fn changes(&self) -> bool {
        self.created || !self.changed.is_empty()
    }
}

pub struct Applier {
    client: kube::Client,
    namespace: String,
}

fn resource(kind: &str) -> Option<ApiResource> {
    KINDS
        .iter()
        .find(|(_, _, k)| *k == kind)
        .map(|(g, v, k)| ApiResource::from_gvk(&GroupVersionKind::gvk(g, v, k)))
}

fn static_kind(kind: &str) -> &'static str {
    match kind {
        "ConfigMap" => "configmap",
        "Secret" => "secret",
        "NetworkPolicy" => "networkpolicy",
        _ => "object",
    }
}

impl Applier {
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        Applier {
            client,
            namespace: namespace.into(),
        }
    }

    /// Applies each object in order (or only asks the server what it would do, `dry_run`); stops at the first
    /// error, which names the object.
    pub async fn apply(&self, objects: &[Value], dry_run: bool) -> Result<Vec<Applied>, KubeError> {
        let mut out = Vec::with_capacity(objects.len());
        for o in objects {
            out.push(self.apply_one(o, dry_run).await?);
        }
        Ok(out)
    }

    /// Deletes `kind` `name` (or, in a dry run, only reads whether it is there); Ok(false) when it was already
    /// gone, so a resumed run removes nothing twice.
    pub async fn remove(&self, kind: &str, name: &str, dry_run: bool) -> Result<bool, KubeError> {
        let verb = if dry_run { "dry-run delete" } else { "delete" };
        let site = Site::new(verb, static_kind(kind), &self.namespace, name.to_string());
        let Some(ar) = resource(kind) else {
            return Err(KubeError::Invalid {
                site,
                message: format!("kind {kind:?} is not one a rollback removes"),
            });
        };
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &self.namespace, &ar);
        if dry_run {
            return api
                .get_opt(name)
                .await
                .map(|o| o.is_some())
                .map_err(|e| KubeError::from_kube(site, e));
        }
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => Ok(true),
            Err(e) => {
                let e = KubeError::from_kube(site, e);
                if e.is_not_found() { Ok(false) } else { Err(e) }
            }
        }
    }

    async fn apply_one(&self, object: &Value, dry_run: bool) -> Result<Applied, KubeError> {
        let kind = object["kind"].as_str().unwrap_or("").to_string();
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let verb = if dry_run { "dry-run apply" } else { "apply" };
        let site = Site::new(verb, static_kind(&kind), &self.namespace, name.clone());
        let Some(ar) = resource(&kind) else {
            return Err(KubeError::Invalid {
                site,
                message: format!(
                    "kind {kind:?} is not one a rollback applies (ConfigMap, Secret, NetworkPolicy)"
                ),
            });
        };
        if name.is_empty() {
            return Err(KubeError::Invalid {
                site,
                message: "the manifest has no metadata.name".into(),
            });
        }
        if let Some(ns) = object["metadata"]["namespace"].as_str()
            && ns != self.namespace
        {
            return Err(KubeError::Invalid {
                site,
                message: format!(
                    "the manifest names namespace {ns}, the target is {}",
                    self.namespace
                ),
            });
        }
        let mut body = object.clone();
        // Apply configurations never carry server-owned fields (a resourceVersion would make it a precondition).
        if let Some(meta) = body["metadata"].as_object_mut() {
            for k in [
                "resourceVersion",
                "uid",
                "creationTimestamp",
                "managedFields",
                "generation",
            ] {
                meta.remove(k);
            }
            meta.insert("namespace".into(), Value::String(self.namespace.clone()));
        }
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &self.namespace, &ar);
        let live = api.get_opt(&name).await.map_err(|e| {
            KubeError::from_kube(
                Site::new("get", static_kind(&kind), &self.namespace, name.clone()),
                e,
            )
        })?;
        let mut pp = PatchParams::apply(FIELD_MANAGER).force();
        pp.dry_run = dry_run;
        let result = api
            .patch(&name, &pp, &Patch::Apply(&body))
            .await
            .map_err(|e| KubeError::from_kube(site, e))?;
        let after = serde_json::to_value(&result).unwrap_or(Value::Null);
        let changed = match &live {
            Some(l) => diff(&serde_json::to_value(l).unwrap_or(Value::Null), &after),
            None => Vec::new(),
        };
        Ok(Applied {
            kind,
            name,
            created: live.is_none(),
            changed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_rollbacks_kinds_have_a_resource() {
        assert_eq!(resource("NetworkPolicy").unwrap().plural, "networkpolicies");
        assert_eq!(resource("ConfigMap").unwrap().plural, "configmaps");
        assert!(resource("ClusterRole").is_none());
    }
}
