use super::*;
use crate::testing::{Reply, scripted};

const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/xorb/leases/xorbctl-rollback";
const COLLECTION: &str = "/apis/coordination.k8s.io/v1/namespaces/xorb/leases";
const TTL: Duration = Duration::from_secs(30);

fn me() -> Holder {
    Holder {
        run: "r1".into(),
        operator: "alice".into(),
        instance: "i-me".into(),
    }
}

fn lease(rv: &str, holder: Option<(&str, &str, &str)>, renewed_secs_ago: i64) -> serde_json::Value {
    let renew = Timestamp::now() - SignedDuration::from_secs(renewed_secs_ago);
    let (ann, spec) = match holder {
        Some((run, op, inst)) => (
            serde_json::json!({RUN_ANNOTATION: run, OPERATOR_ANNOTATION: op, INSTANCE_ANNOTATION: inst}),
            serde_json::json!({"holderIdentity": format!("run {run} by {op}"), "leaseDurationSeconds": 30,
                               "renewTime": renew.to_string(), "acquireTime": renew.to_string(),
                               "leaseTransitions": 2}),
        ),
        None => (
            serde_json::json!({}),
            serde_json::json!({"leaseDurationSeconds": 30, "leaseTransitions": 2}),
        ),
    };
    serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": LEASE_NAME, "namespace": "xorb", "resourceVersion": rv, "annotations": ann},
        "spec": spec,
    })
}

fn not_found() -> Reply {
    Reply::status(
        404,
        "NotFound",
        "leases.coordination.k8s.io \"xorbctl-rollback\" not found",
    )
}

/// Echo of a write as the API server would answer it, with a new resourceVersion.
fn written(body: serde_json::Value, rv: &str) -> Reply {
    let mut b = body;
    b["metadata"]["resourceVersion"] = serde_json::json!(rv);
    Reply::Json(200, b)
}

#[tokio::test]
async fn a_missing_lease_is_created_without_a_resource_version() {
    let mut created = lease("1", Some(("r1", "alice", "i-me")), 0);
    created["spec"]["leaseTransitions"] = serde_json::json!(0);
    let (client, server) = scripted(vec![
        ("GET", PATH, not_found()),
        ("POST", COLLECTION, Reply::Json(201, created)),
    ]);
    let l = RollbackLease::acquire(client, "xorb", me(), TTL)
        .await
        .unwrap();
    assert_eq!(l.holder().run, "r1");
    let seen = server.await.unwrap();
    let body = &seen[1].body;
    assert!(body["metadata"].get("resourceVersion").is_none(), "{body}");
    assert_eq!(body["spec"]["holderIdentity"], "run r1 by alice");
    assert_eq!(body["spec"]["leaseDurationSeconds"], 30);
    assert_eq!(body["spec"]["leaseTransitions"], 0);
    assert_eq!(body["metadata"]["annotations"][INSTANCE_ANNOTATION], "i-me");
    assert!(body["spec"]["renewTime"].is_string(), "{body}");
}

#[tokio::test]
async fn losing_the_create_race_names_the_winner() {
    let (client, server) = scripted(vec![
        ("GET", PATH, not_found()),
        (
            "POST",
            COLLECTION,
            Reply::status(409, "AlreadyExists", "already exists"),
        ),
        (
            "GET",
            PATH,
            Reply::Json(200, lease("7", Some(("r2", "bob", "i-bob")), 1)),
        ),
    ]);
    let e = RollbackLease::acquire(client, "xorb", me(), TTL)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, KubeError::LeaseHeld { holder, .. } if holder == "run r2 by bob"),
        "{e:?}"
    );
    assert!(e.to_string().contains("xorb/xorbctl-rollback"), "{e}");
    server.await.unwrap();
}

#[tokio::test]
async fn a_free_lease_is_updated_with_its_resource_version_and_a_409_rereads() {
    let (client, server) = scripted(vec![
        ("GET", PATH, Reply::Json(200, lease("5", None, 0))),
        (
            "PUT",
            PATH,
            Reply::status(409, "Conflict", "the object has been modified"),
        ),
        (
            "GET",
            PATH,
            Reply::Json(200, lease("6", Some(("r2", "bob", "i-bob")), 0)),
        ),
    ]);
    let e = RollbackLease::acquire(client, "xorb", me(), TTL)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, KubeError::LeaseHeld { holder, .. } if holder == "run r2 by bob"),
        "{e:?}"
    );
    let seen = server.await.unwrap();
    assert_eq!(seen[1].body["metadata"]["resourceVersion"], "5");
    assert_eq!(seen[1].body["spec"]["holderIdentity"], "run r1 by alice");
    // Taking a free Lease is a transition.
    assert_eq!(seen[1].body["spec"]["leaseTransitions"], 3);
}

#[tokio::test]
async fn another_runs_lease_is_refused_without_writing_even_when_expired() {
    let (client, server) = scripted(vec![(
        "GET",
        PATH,
        Reply::Json(200, lease("5", Some(("r2", "bob", "i-bob")), 5)),
    )]);
    let e = RollbackLease::acquire(client, "xorb", me(), TTL)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, KubeError::LeaseHeld { holder, .. } if holder == "run r2 by bob"),
        "{e:?}"
    );
    assert_eq!(server.await.unwrap().len(), 1);

    let (client, server) = scripted(vec![(
        "GET",
        PATH,
        Reply::Json(200, lease("5", Some(("r2", "bob", "i-bob")), 120)),
    )]);
    let e = RollbackLease::acquire(client, "xorb", me(), TTL)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("run r2 by bob, whose Lease expired"),
        "{e}"
    );
    assert_eq!(server.await.unwrap().len(), 1);
}

#[tokio::test]
async fn the_same_run_takes_over_its_own_lease_only_once_expired() {
    let (client, server) = scripted(vec![(
        "GET",
        PATH,
        Reply::Json(200, lease("5", Some(("r1", "alice", "i-crashed")), 5)),
    )]);
    let e = RollbackLease::acquire(client, "xorb", me(), TTL)
        .await
        .unwrap_err();
    assert!(matches!(e, KubeError::LeaseHeld { .. }), "{e:?}");
    server.await.unwrap();

    let old = lease("5", Some(("r1", "alice", "i-crashed")), 60);
    let mut after = old.clone();
    after["metadata"]["annotations"][INSTANCE_ANNOTATION] = serde_json::json!("i-me");
    let (client, server) = scripted(vec![
        ("GET", PATH, Reply::Json(200, old)),
        ("PUT", PATH, written(after, "6")),
    ]);
    RollbackLease::acquire(client, "xorb", me(), TTL)
        .await
        .unwrap();
    let seen = server.await.unwrap();
    assert_eq!(seen[1].body["metadata"]["resourceVersion"], "5");
    assert_eq!(
        seen[1].body["metadata"]["annotations"][INSTANCE_ANNOTATION],
        "i-me"
    );
    assert_eq!(seen[1].body["spec"]["leaseTransitions"], 3);
}

#[tokio::test]
async fn renewal_after_a_409_is_lost_when_another_run_took_it() {
    let mine = lease("5", Some(("r1", "alice", "i-me")), 0);
    let (client, server) = scripted(vec![
        ("GET", PATH, Reply::Json(200, mine.clone())),
        ("PUT", PATH, written(mine.clone(), "6")),
        ("PUT", PATH, Reply::status(409, "Conflict", "modified")),
        (
            "GET",
            PATH,
            Reply::Json(200, lease("9", Some(("r2", "bob", "i-bob")), 0)),
        ),
    ]);
    let mut l = RollbackLease::acquire(client, "xorb", me(), TTL)
        .await
        .unwrap();
    let e = l.renew().await.unwrap_err();
    assert!(
        matches!(&e, KubeError::LeaseLost { holder, .. } if holder == "run r2 by bob"),
        "{e:?}"
    );
    let seen = server.await.unwrap();
    // Renewal carries the resourceVersion of our last write.
    assert_eq!(seen[2].body["metadata"]["resourceVersion"], "6");
}

#[tokio::test]
async fn renewal_after_a_409_retries_when_the_lease_is_still_ours() {
    let mine = lease("5", Some(("r1", "alice", "i-me")), 0);
    let (client, server) = scripted(vec![
        ("GET", PATH, Reply::Json(200, mine.clone())),
        ("PUT", PATH, written(mine.clone(), "6")),
        ("PUT", PATH, Reply::status(409, "Conflict", "modified")),
        (
            "GET",
            PATH,
            Reply::Json(200, lease("8", Some(("r1", "alice", "i-me")), 0)),
        ),
        ("PUT", PATH, written(mine, "9")),
    ]);
    let mut l = RollbackLease::acquire(client, "xorb", me(), TTL)
        .await
        .unwrap();
    l.renew().await.unwrap();
    let seen = server.await.unwrap();
    assert_eq!(seen[4].body["metadata"]["resourceVersion"], "8");
}

#[tokio::test]
async fn release_clears_the_holder() {
    let mine = lease("5", Some(("r1", "alice", "i-me")), 0);
    let (client, server) = scripted(vec![
        ("GET", PATH, Reply::Json(200, mine.clone())),
        ("PUT", PATH, written(mine.clone(), "6")),
        ("PUT", PATH, written(lease("7", None, 0), "7")),
    ]);
    let l = RollbackLease::acquire(client, "xorb", me(), TTL)
        .await
        .unwrap();
    l.release().await.unwrap();
    let seen = server.await.unwrap();
    assert!(
        seen[2].body["spec"].get("holderIdentity").is_none(),
        "{}",
        seen[2].body
    );
    assert_eq!(seen[2].body["metadata"]["resourceVersion"], "6");
}

#[test]
fn an_instance_is_dead_only_when_it_is_of_this_machine_and_its_process_is_gone() {
    let me = Holder::for_this_process("r", "alice").instance;
    assert!(!instance_is_dead(&me), "this process is alive: {me}");
    let parts: Vec<&str> = me.split('/').collect();
    assert_eq!(parts.len(), 4, "{me}");
    // The same pid with another start time is another process: the one named is gone.
    let reused = format!("{}/{}/{}/1", parts[0], parts[1], parts[2]);
    assert!(instance_is_dead(&reused));
    // A pid that cannot exist.
    assert!(instance_is_dead(&format!(
        "{}/{}/4294967295/1",
        parts[0], parts[1]
    )));
    // Another machine, another boot, or an instance in another form: never taken for dead.
    assert!(!instance_is_dead(&format!(
        "elsewhere/{}/4294967295/1",
        parts[1]
    )));
    assert!(!instance_is_dead(&format!(
        "{}/another-boot/4294967295/1",
        parts[0]
    )));
    assert!(!instance_is_dead("i-me"));
}
