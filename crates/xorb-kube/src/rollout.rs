//! `kubectl rollout status`, pure: what a Deployment's or StatefulSet's live object says about its rollout, with
//! the line kubectl would print. Judged on the whole object each time (never on an event), so a resumed run reads
//! the same answer from the same object.
//!
//! The API server leaves status zero values out (`updatedReplicas: 0` comes back absent): absent counts as 0.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};

/// Where a rollout stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rollout {
    /// Every replica runs the new template and is available: nothing left to wait for.
    Complete(String),
    /// Still moving: poll again.
    Waiting(String),
    /// It will not finish by waiting: the Deployment controller gave up (`ProgressDeadlineExceeded`).
    Failed(String),
}

impl Rollout {
    /// kubectl's line.
    pub fn message(&self) -> &str {
        match self {
            Rollout::Complete(m) | Rollout::Waiting(m) | Rollout::Failed(m) => m,
        }
    }

    pub fn is_complete(&self) -> bool {
        matches!(self, Rollout::Complete(_))
    }
}

/// The reason the Deployment controller puts on the `Progressing` condition when the progress deadline passed.
pub const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";

/// As `kubectl rollout status deployment/NAME`.
pub fn deployment(d: &Deployment) -> Rollout {
    let name = d.metadata.name.as_deref().unwrap_or("");
    let generation = d.metadata.generation.unwrap_or(0);
    let status = d.status.clone().unwrap_or_default();
    // Until the controller has seen the latest spec, every count below describes the previous one.
    if status.observed_generation.unwrap_or(0) < generation {
        return Rollout::Waiting("Waiting for deployment spec update to be observed...".into());
    }
    let timed_out = status.conditions.iter().flatten().any(|c| {
        c.type_ == "Progressing" && c.reason.as_deref() == Some(PROGRESS_DEADLINE_EXCEEDED)
    });
    if timed_out {
        return Rollout::Failed(format!(
            "deployment {name:?} exceeded its progress deadline"
        ));
    }
    let updated = status.updated_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    // kubectl skips this check when spec.replicas is absent; the API server defaults it to 1, so it never is.
    if let Some(wanted) = d.spec.as_ref().and_then(|s| s.replicas)
        && updated < wanted
    {
        return Rollout::Waiting(format!(
            "Waiting for deployment {name:?} rollout to finish: {updated} out of {wanted} new replicas have been updated..."
        ));
    }
    if total > updated {
        return Rollout::Waiting(format!(
            "Waiting for deployment {name:?} rollout to finish: {} old replicas are pending termination...",
            total - updated
        ));
    }
    if available < updated {
        return Rollout::Waiting(format!(
            "Waiting for deployment {name:?} rollout to finish: {available} of {updated} updated replicas are available..."
        ));
    }
    Rollout::Complete(format!("deployment {name:?} successfully rolled out"))
}

/// As `kubectl rollout status statefulset/NAME`. A StatefulSet with the `OnDelete` strategy has no rollout to
/// watch: that is reported as failed, as kubectl refuses it.
///
/// 1.20 has no `availableReplicas` in StatefulSet status; kubectl counts ready replicas, and so does this. When a
/// newer server does report `availableReplicas` (it differs from ready only with `minReadySeconds`), it must cover
/// every replica too.
pub fn stateful_set(s: &StatefulSet) -> Rollout {
    let spec = s.spec.clone().unwrap_or_default();
    let strategy = spec.update_strategy.clone().unwrap_or_default();
    // RollingUpdate is the default the API server fills in.
    if strategy.type_.as_deref().unwrap_or("RollingUpdate") != "RollingUpdate" {
        return Rollout::Failed(
            "rollout status is only available for RollingUpdate strategy type".into(),
        );
    }
    let status = s.status.clone().unwrap_or_default();
    let observed = status.observed_generation.unwrap_or(0);
    if observed == 0 || s.metadata.generation.unwrap_or(0) > observed {
        return Rollout::Waiting("Waiting for statefulset spec update to be observed...".into());
    }
    let ready = status.ready_replicas.unwrap_or(0);
    if let Some(wanted) = spec.replicas {
        if ready < wanted {
            return Rollout::Waiting(format!(
                "Waiting for {} pods to be ready...",
                wanted - ready
            ));
        }
        if let Some(available) = status.available_replicas
            && available < wanted
        {
            return Rollout::Waiting(format!(
                "Waiting for {} pods to be available...",
                wanted - available
            ));
        }
    }
    let updated = status.updated_replicas.unwrap_or(0);
    // 1.20 fills in `rollingUpdate: {partition: 0}` by default, so this is the usual path there.
    if let Some(rolling) = &strategy.rolling_update {
        if let (Some(wanted), Some(partition)) = (spec.replicas, rolling.partition)
            && updated < wanted - partition
        {
            return Rollout::Waiting(format!(
                "Waiting for partitioned roll out to finish: {updated} out of {} new pods have been updated...",
                wanted - partition
            ));
        }
        return Rollout::Complete(format!(
            "partitioned roll out complete: {updated} new pods have been updated..."
        ));
    }
    let update_revision = status.update_revision.unwrap_or_default();
    if status.current_revision.as_deref() != Some(update_revision.as_str()) {
        return Rollout::Waiting(format!(
            "waiting for statefulset rolling update to complete {updated} pods at revision {update_revision}..."
        ));
    }
    Rollout::Complete(format!(
        "statefulset rolling update complete {} pods at revision {update_revision}...",
        status.current_replicas.unwrap_or(0)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deploy(v: serde_json::Value) -> Deployment {
        serde_json::from_value(v).unwrap()
    }

    fn d(generation: i64, replicas: i32, status: serde_json::Value) -> Deployment {
        deploy(serde_json::json!({
            "metadata": {"name": "xorb-api", "generation": generation},
            "spec": {"replicas": replicas, "selector": {}, "template": {}},
            "status": status,
        }))
    }

    #[test]
    fn a_spec_the_controller_has_not_seen_waits_whatever_the_counts() {
        let r = deployment(&d(
            3,
            2,
            serde_json::json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}),
        ));
        assert_eq!(
            r,
            Rollout::Waiting("Waiting for deployment spec update to be observed...".into())
        );
        // A brand-new object: no status at all yet.
        let r = deployment(&deploy(serde_json::json!({
            "metadata": {"name": "x", "generation": 1}, "spec": {"replicas": 1, "selector": {}, "template": {}}
        })));
        assert!(matches!(r, Rollout::Waiting(_)), "{r:?}");
    }

    #[test]
    fn progress_deadline_exceeded_fails_at_once() {
        let r = deployment(&d(
            2,
            2,
            serde_json::json!({
                "observedGeneration": 2, "replicas": 3, "updatedReplicas": 1, "availableReplicas": 2,
                "conditions": [
                    {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                    {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
                ]
            }),
        ));
        assert_eq!(
            r,
            Rollout::Failed("deployment \"xorb-api\" exceeded its progress deadline".into())
        );
    }

    #[test]
    fn an_old_deadline_condition_does_not_fail_a_spec_not_yet_observed() {
        let r = deployment(&d(
            3,
            1,
            serde_json::json!({
                "observedGeneration": 2,
                "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]
            }),
        ));
        assert!(matches!(r, Rollout::Waiting(_)), "{r:?}");
    }

    #[test]
    fn new_replicas_not_all_updated() {
        let r = deployment(&d(
            2,
            3,
            serde_json::json!({"observedGeneration": 2, "replicas": 4, "updatedReplicas": 1, "availableReplicas": 3,
                "conditions": [{"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"}]}),
        ));
        assert_eq!(
            r.message(),
            "Waiting for deployment \"xorb-api\" rollout to finish: 1 out of 3 new replicas have been updated..."
        );
    }

    #[test]
    fn updated_counts_absent_mean_zero() {
        let r = deployment(&d(2, 1, serde_json::json!({"observedGeneration": 2})));
        assert_eq!(
            r.message(),
            "Waiting for deployment \"xorb-api\" rollout to finish: 0 out of 1 new replicas have been updated..."
        );
    }

    #[test]
    fn old_replicas_pending_termination() {
        let r = deployment(&d(
            2,
            2,
            serde_json::json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 2, "availableReplicas": 3}),
        ));
        assert_eq!(
            r.message(),
            "Waiting for deployment \"xorb-api\" rollout to finish: 1 old replicas are pending termination..."
        );
    }

    #[test]
    fn updated_replicas_not_yet_available() {
        let r = deployment(&d(
            2,
            2,
            serde_json::json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 1}),
        ));
        assert_eq!(
            r.message(),
            "Waiting for deployment \"xorb-api\" rollout to finish: 1 of 2 updated replicas are available..."
        );
    }

    #[test]
    fn complete_when_observed_updated_and_available() {
        let r = deployment(&d(
            5,
            2,
            serde_json::json!({"observedGeneration": 5, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}),
        ));
        assert_eq!(
            r,
            Rollout::Complete("deployment \"xorb-api\" successfully rolled out".into())
        );
        assert!(r.is_complete());
    }

    #[test]
    fn scaled_to_zero_is_complete_with_every_count_absent() {
        let r = deployment(&d(4, 0, serde_json::json!({"observedGeneration": 4})));
        assert!(r.is_complete(), "{r:?}");
    }

    fn sts(
        generation: i64,
        replicas: i32,
        strategy: serde_json::Value,
        status: serde_json::Value,
    ) -> StatefulSet {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "nats-cluster", "generation": generation},
            "spec": {"replicas": replicas, "selector": {}, "serviceName": "nats", "template": {},
                     "updateStrategy": strategy},
            "status": status,
        }))
        .unwrap()
    }

    fn rolling(partition: i32) -> serde_json::Value {
        serde_json::json!({"type": "RollingUpdate", "rollingUpdate": {"partition": partition}})
    }

    #[test]
    fn statefulset_on_delete_has_no_rollout_status() {
        let r = sts(
            1,
            3,
            serde_json::json!({"type": "OnDelete"}),
            serde_json::json!({"observedGeneration": 1}),
        );
        assert!(matches!(r_of(&r), Rollout::Failed(m) if m.contains("RollingUpdate")));
    }

    fn r_of(s: &StatefulSet) -> Rollout {
        stateful_set(s)
    }

    #[test]
    fn statefulset_waits_for_its_spec_to_be_observed() {
        // observedGeneration absent (0) is never observed, even at generation 0.
        let r = sts(1, 3, rolling(0), serde_json::json!({}));
        assert_eq!(
            r_of(&r).message(),
            "Waiting for statefulset spec update to be observed..."
        );
        let r = sts(
            3,
            3,
            rolling(0),
            serde_json::json!({"observedGeneration": 2, "readyReplicas": 3}),
        );
        assert!(matches!(r_of(&r), Rollout::Waiting(_)));
    }

    #[test]
    fn statefulset_on_1_20_counts_ready_replicas_without_available_replicas() {
        let r = sts(
            2,
            3,
            rolling(0),
            serde_json::json!({"observedGeneration": 2, "replicas": 3, "readyReplicas": 2, "updatedReplicas": 1}),
        );
        assert_eq!(r_of(&r).message(), "Waiting for 1 pods to be ready...");
        let r = sts(
            2,
            3,
            rolling(0),
            serde_json::json!({"observedGeneration": 2, "replicas": 3, "readyReplicas": 3, "updatedReplicas": 3,
                               "currentRevision": "a", "updateRevision": "b"}),
        );
        assert_eq!(
            r_of(&r),
            Rollout::Complete(
                "partitioned roll out complete: 3 new pods have been updated...".into()
            )
        );
    }

    #[test]
    fn statefulset_on_a_newer_server_also_needs_available_replicas() {
        let r = sts(
            2,
            3,
            rolling(0),
            serde_json::json!({"observedGeneration": 2, "replicas": 3, "readyReplicas": 3, "availableReplicas": 2,
                               "updatedReplicas": 3}),
        );
        assert_eq!(r_of(&r).message(), "Waiting for 1 pods to be available...");
    }

    #[test]
    fn statefulset_partitioned_rollout_waits_for_the_pods_above_the_partition() {
        let r = sts(
            2,
            5,
            rolling(2),
            serde_json::json!({"observedGeneration": 2, "replicas": 5, "readyReplicas": 5, "updatedReplicas": 2}),
        );
        assert_eq!(
            r_of(&r).message(),
            "Waiting for partitioned roll out to finish: 2 out of 3 new pods have been updated..."
        );
        let r = sts(
            2,
            5,
            rolling(2),
            serde_json::json!({"observedGeneration": 2, "replicas": 5, "readyReplicas": 5, "updatedReplicas": 3}),
        );
        assert!(r_of(&r).is_complete());
    }

    #[test]
    fn statefulset_without_rolling_update_parameters_compares_revisions() {
        let strategy = serde_json::json!({"type": "RollingUpdate"});
        let r = sts(
            2,
            2,
            strategy.clone(),
            serde_json::json!({"observedGeneration": 2, "replicas": 2, "readyReplicas": 2, "updatedReplicas": 1,
                               "currentReplicas": 1, "currentRevision": "nats-1", "updateRevision": "nats-2"}),
        );
        assert_eq!(
            r_of(&r).message(),
            "waiting for statefulset rolling update to complete 1 pods at revision nats-2..."
        );
        let r = sts(
            2,
            2,
            strategy,
            serde_json::json!({"observedGeneration": 2, "replicas": 2, "readyReplicas": 2, "updatedReplicas": 2,
                               "currentReplicas": 2, "currentRevision": "nats-2", "updateRevision": "nats-2"}),
        );
        assert_eq!(
            r_of(&r),
            Rollout::Complete(
                "statefulset rolling update complete 2 pods at revision nats-2...".into()
            )
        );
    }
}
