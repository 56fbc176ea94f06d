//! The shipped Role is enough for every call of this crate, and no more: a token bound to exactly it (a
//! ServiceAccount token from the TokenRequest API) does a rollback's operations, and the API server refuses a
//! verb outside it with 403.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Secret};
use kube::Api;
use kube::api::{DeleteParams, ListParams};
use serde_json::json;
use xorb_kube::apply::Applier;
use xorb_kube::lease::{Holder, RollbackLease};
use xorb_kube::workload::{Kind, Workloads};
use xorb_kube::{KubeError, Site};

const ROLLOUT: Duration = Duration::from_secs(120);

fn role_file(release: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../releases")
        .join(release)
        .join("k8s/rbac/xorbctl.yaml")
}

const WORKLOADS: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 2
      containers: [{name: app, image: "xorb-test/sleep:1"}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 8080}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: nats-cluster}
spec:
  replicas: 1
  serviceName: nats-cluster
  selector: {matchLabels: {app: nats}}
  template:
    metadata: {labels: {app: nats}}
    spec:
      terminationGracePeriodSeconds: 2
      containers: [{name: nats, image: "xorb-test/sleep:1"}]
---
apiVersion: v1
kind: Secret
metadata: {name: unrelated}
stringData: {K: v}
"#;

#[test]
fn every_release_ships_the_same_role() {
    let a = std::fs::read_to_string(role_file("v2025.07-stable")).unwrap();
    let b = std::fs::read_to_string(role_file("v2025.08-rc1")).unwrap();
    assert_eq!(a, b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_bound_to_the_shipped_role_does_a_rollbacks_calls_and_nothing_else() {
    let lab = common::start_with_agent().await;
    lab.ok(&[
        "apply",
        "-f",
        role_file("v2025.07-stable").to_str().unwrap(),
    ]);
    lab.apply(WORKLOADS);
    let token = lab
        .lab
        .mint_service_account_token("default", "xorbctl", Duration::from_secs(600))
        .unwrap();
    let kubeconfig = lab.dir.path().join("xorbctl.kubeconfig");
    lab.lab
        .write_kubeconfig(&kubeconfig, "system:serviceaccount:default:xorbctl", &token)
        .unwrap();
    let me = xorb_kube::client::from_kubeconfig(&kubeconfig, None, None)
        .await
        .unwrap();
    assert_eq!(me.namespace, "default");
    let w = Workloads::new(me.client.clone(), "default");
    w.wait_rollout(Kind::Deployment, "web", ROLLOUT)
        .await
        .unwrap();
    w.wait_rollout(Kind::StatefulSet, "nats-cluster", ROLLOUT)
        .await
        .unwrap();

    let holder = Holder::for_this_process("r1", "alice");
    let mut lease = RollbackLease::acquire(
        me.client.clone(),
        "default",
        holder,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    lease.renew().await.unwrap();

    let objects = vec![
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "xorb-config"}, "data": {"A": "1"}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "xorb-secrets"}, "stringData": {"T": "x"}}),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "deny"},
               "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}),
    ];
    let applier = Applier::new(me.client.clone(), "default");
    applier.apply(&objects, true).await.unwrap();
    let done = applier.apply(&objects, false).await.unwrap();
    assert!(done.iter().all(|a| a.created), "{done:?}");
    applier.apply(&objects, false).await.unwrap();
    let data = BTreeMap::from([("CIRCUIT_BREAKER_ENABLED".to_string(), "true".to_string())]);
    w.patch_config_map("xorb-config", &data).await.unwrap();

    w.set_image("web", "app", "xorb-test/sleep:2", "rbac test")
        .await
        .unwrap();
    w.wait_rollout(Kind::Deployment, "web", ROLLOUT)
        .await
        .unwrap();
    w.restart(Kind::Deployment, "web", "2026-11-30T18:00:00Z")
        .await
        .unwrap();
    w.wait_rollout(Kind::Deployment, "web", ROLLOUT)
        .await
        .unwrap();
    w.restart(Kind::StatefulSet, "nats-cluster", "2026-11-30T18:00:00Z")
        .await
        .unwrap();
    w.wait_rollout(Kind::StatefulSet, "nats-cluster", ROLLOUT)
        .await
        .unwrap();
    w.scale("web", 0).await.unwrap();
    w.delete_deployment_and_service("web").await.unwrap();
    assert!(w.removed("web").await.unwrap());
    lease.release().await.unwrap();

    // Outside the Role: deleting a Secret, listing Nodes (cluster scope). The API server says 403.
    let secrets: Api<Secret> = Api::namespaced(me.client.clone(), "default");
    let e = secrets
        .delete("unrelated", &DeleteParams::default())
        .await
        .unwrap_err();
    let e = KubeError::from_kube(Site::new("delete", "secret", "default", "unrelated"), e);
    assert!(matches!(e, KubeError::Forbidden { .. }), "{e:?}");
    lab.ok(&["get", "secret", "unrelated"]);
    let nodes: Api<Node> = Api::all(me.client.clone());
    let e = nodes.list(&ListParams::default()).await.unwrap_err();
    let e = KubeError::from_kube(Site::new("list", "node", "", ""), e);
    assert!(matches!(e, KubeError::Forbidden { .. }), "{e:?}");
    // Nor may it list Secrets (it reads them by name only) or touch another Lease.
    assert!(secrets.list(&ListParams::default()).await.is_err());
    lab.stop().await;
}
