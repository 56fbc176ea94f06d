//! Workload operations on a real control plane: the Deployment controller rolls out, the lab's node agent runs
//! the Pods, and Debian's kubectl checks what our calls did.

mod common;

use std::time::Duration;

use xorb_kube::KubeError;
use xorb_kube::workload::{Kind, Workloads};

const ROLLOUT: Duration = Duration::from_secs(120);

fn web(image: &str, progress_deadline: u32) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  progressDeadlineSeconds: {progress_deadline}
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
        - name: app
          image: {image}
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {{app: web}}
  ports:
    - port: 8080
"#
    )
}

fn replica_sets(lab: &common::Lab) -> usize {
    lab.json(&["get", "replicasets", "-l", "app=web"])["items"]
        .as_array()
        .unwrap()
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_image_restart_scale_and_delete_are_each_done_once() {
    let lab = common::start_with_agent().await;
    let w = Workloads::new(lab.admin().await.client, "default");
    lab.apply(&web("xorb-test/sleep:1", 600));
    let done = w
        .wait_rollout(Kind::Deployment, "web", ROLLOUT)
        .await
        .unwrap();
    assert_eq!(done, "deployment \"web\" successfully rolled out");
    assert_eq!(replica_sets(&lab), 1);

    // set image --record, twice: one new ReplicaSet, the change-cause in the rollout history.
    let cause = "xorbctl rollback run r1: xorb-test/sleep:2";
    let first = w
        .set_image("web", "app", "xorb-test/sleep:2", cause)
        .await
        .unwrap();
    assert!(first.changed(), "{first:?}");
    w.wait_rollout(Kind::Deployment, "web", ROLLOUT)
        .await
        .unwrap();
    let again = w
        .set_image("web", "app", "xorb-test/sleep:2", cause)
        .await
        .unwrap();
    assert!(!again.changed(), "{again:?}");
    assert_eq!(replica_sets(&lab), 2);
    let history = lab.ok(&["rollout", "history", "deployment/web"]);
    assert!(history.contains(cause), "{history}");
    let image = lab.ok(&[
        "get",
        "deployment",
        "web",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image}",
    ]);
    assert_eq!(image, "xorb-test/sleep:2");
    // kubectl's own rollout status agrees with ours.
    lab.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);

    // A missing container is a clear error, not a patch that adds one.
    let e = w.set_image("web", "nope", "x", cause).await.unwrap_err();
    assert!(matches!(e, KubeError::Invalid { .. }), "{e:?}");

    // rollout restart with the run's stamp: a new ReplicaSet once, not on a second call.
    let stamp = "2026-11-30T18:00:00Z";
    assert!(
        w.restart(Kind::Deployment, "web", stamp)
            .await
            .unwrap()
            .changed()
    );
    w.wait_rollout(Kind::Deployment, "web", ROLLOUT)
        .await
        .unwrap();
    assert!(
        !w.restart(Kind::Deployment, "web", stamp)
            .await
            .unwrap()
            .changed()
    );
    assert_eq!(replica_sets(&lab), 3);
    let restarted = lab.ok(&[
        "get",
        "deployment",
        "web",
        "-o",
        r#"jsonpath={.spec.template.metadata.annotations.kubectl\.kubernetes\.io/restartedAt}"#,
    ]);
    assert_eq!(restarted, stamp);

    // scale (the emergency procedures) through the scale subresource; waits like any rollout.
    assert!(w.scale("web", 0).await.unwrap().changed());
    assert!(!w.scale("web", 0).await.unwrap().changed());
    w.wait_rollout(Kind::Deployment, "web", ROLLOUT)
        .await
        .unwrap();
    let pods = common::eventually(
        Duration::from_secs(60),
        "pods gone after scale to 0",
        || async {
            let n = lab.json(&["get", "pods", "-l", "app=web"])["items"]
                .as_array()
                .unwrap()
                .len();
            if n == 0 {
                Ok(n)
            } else {
                Err(format!("{n} pods"))
            }
        },
    )
    .await;
    assert_eq!(pods, 0);
    assert_eq!(
        lab.ok(&[
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.spec.replicas}"
        ]),
        "0"
    );

    // delete deployment and service; again: already gone.
    assert!(!w.removed("web").await.unwrap());
    assert!(
        w.delete_deployment_and_service("web")
            .await
            .unwrap()
            .changed()
    );
    assert!(
        !w.delete_deployment_and_service("web")
            .await
            .unwrap()
            .changed()
    );
    assert!(w.removed("web").await.unwrap());
    let (ok, _, err) = lab.kubectl(&["get", "deployment", "web"]);
    assert!(!ok && err.contains("NotFound"), "{err}");
    let (ok, _, err) = lab.kubectl(&["get", "service", "web"]);
    assert!(!ok && err.contains("NotFound"), "{err}");

    // Waiting on a Deployment that is not there says so.
    let e = w
        .wait_rollout(Kind::Deployment, "web", ROLLOUT)
        .await
        .unwrap_err();
    assert!(e.is_not_found(), "{e:?}");
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_the_node_cannot_run_fails_on_the_progress_deadline() {
    let lab = common::start_with_agent().await;
    let w = Workloads::new(lab.admin().await.client, "default");
    lab.apply(&web("xorb-test/sleep:1", 5));
    w.wait_rollout(Kind::Deployment, "web", ROLLOUT)
        .await
        .unwrap();

    w.set_image("web", "app", "xorb-test/missing:1", "bad image")
        .await
        .unwrap();
    // Long enough for the 5 s deadline, far shorter than ours: the failure comes from the condition.
    let e = w
        .wait_rollout(Kind::Deployment, "web", ROLLOUT)
        .await
        .unwrap_err();
    match &e {
        KubeError::RolloutFailed { message, .. } => {
            assert_eq!(message, "deployment \"web\" exceeded its progress deadline")
        }
        other => panic!("expected the progress deadline, got {other:?}"),
    }
    assert_eq!(e.exit(), xorb_model::exit::Exit::DependencyFailed);
    let reason = lab.ok(&[
        "get",
        "deployment",
        "web",
        "-o",
        r#"jsonpath={.status.conditions[?(@.type=="Progressing")].reason}"#,
    ]);
    assert_eq!(reason, "ProgressDeadlineExceeded");

    // Fixed image: the rollout completes again (what `resume` relies on).
    w.set_image("web", "app", "xorb-test/sleep:2", "fixed")
        .await
        .unwrap();
    w.wait_rollout(Kind::Deployment, "web", ROLLOUT)
        .await
        .unwrap();

    // Our own timeout, distinct from the controller's verdict.
    w.set_image("web", "app", "xorb-test/missing:2", "bad again")
        .await
        .unwrap();
    let e = w
        .wait_rollout(Kind::Deployment, "web", Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, KubeError::Timeout { last, .. } if last.starts_with("Waiting")),
        "{e:?}"
    );
    lab.stop().await;
}
