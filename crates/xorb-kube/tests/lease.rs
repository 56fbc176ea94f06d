//! The rollback Lease on a real API server: two runs, expiry, take-over by the same run, release.

mod common;

use std::time::Duration;

use xorb_kube::KubeError;
use xorb_kube::lease::{Holder, RollbackLease};

fn holder(run: &str, operator: &str, instance: &str) -> Holder {
    Holder {
        run: run.into(),
        operator: operator.into(),
        instance: instance.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_rollback_per_namespace_with_takeover_by_the_same_run_after_expiry() {
    let lab = common::start();
    let a = lab.admin().await;
    let b = lab.admin().await;
    let ttl = Duration::from_secs(2);

    let mut first = RollbackLease::acquire(
        a.client.clone(),
        "default",
        holder("r1", "alice", "i-1"),
        ttl,
    )
    .await
    .unwrap();
    let shown = lab.ok(&[
        "get",
        "lease",
        "xorbctl-rollback",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    assert_eq!(shown, "run r1 by alice");

    // Another run from another client is refused with the holder's name.
    let e = RollbackLease::acquire(b.client.clone(), "default", holder("r2", "bob", "i-2"), ttl)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, KubeError::LeaseHeld { holder, .. } if holder == "run r1 by alice"),
        "{e:?}"
    );

    // Renewal moves renewTime forward and is a new resourceVersion.
    let before = lab.json(&["get", "lease", "xorbctl-rollback"]);
    first.renew().await.unwrap();
    let after = lab.json(&["get", "lease", "xorbctl-rollback"]);
    assert_ne!(
        before["metadata"]["resourceVersion"],
        after["metadata"]["resourceVersion"]
    );

    // The same run resumed in another process: refused while the first instance's Lease runs, taken once it has
    // expired (the first instance stopped renewing).
    let e = RollbackLease::acquire(
        b.client.clone(),
        "default",
        holder("r1", "alice", "i-resumed"),
        ttl,
    )
    .await
    .unwrap_err();
    assert!(matches!(e, KubeError::LeaseHeld { .. }), "{e:?}");
    let resumed = common::eventually(Duration::from_secs(20), "take-over after expiry", || {
        let client = b.client.clone();
        async move {
            RollbackLease::acquire(client, "default", holder("r1", "alice", "i-resumed"), ttl)
                .await
                .map_err(|e| e.to_string())
        }
    })
    .await;
    let transitions = lab.ok(&[
        "get",
        "lease",
        "xorbctl-rollback",
        "-o",
        "jsonpath={.spec.leaseTransitions}",
    ]);
    assert_eq!(transitions, "1");

    // The first instance finds out it lost the Lease when it next renews (a 409 on its stale resourceVersion).
    let e = first.renew().await.unwrap_err();
    assert!(matches!(e, KubeError::LeaseLost { .. }), "{e:?}");

    // Another run is still refused, even though the other run's Lease will expire: only released frees it.
    let rv = lab.ok(&[
        "get",
        "lease",
        "xorbctl-rollback",
        "-o",
        "jsonpath={.metadata.resourceVersion}",
    ]);
    let held = resumed.keep_renewed();
    // Renewed in the background past its 2 s duration: still held, by the resumed instance.
    common::eventually(Duration::from_secs(10), "a background renewal", || {
        let now = lab.ok(&[
            "get",
            "lease",
            "xorbctl-rollback",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ]);
        let rv = rv.clone();
        async move {
            if now != rv {
                Ok(())
            } else {
                Err(format!("resourceVersion still {now}"))
            }
        }
    })
    .await;
    let e = RollbackLease::acquire(b.client.clone(), "default", holder("r2", "bob", "i-2"), ttl)
        .await
        .unwrap_err();
    assert!(matches!(e, KubeError::LeaseHeld { .. }), "{e:?}");
    assert!(held.lost().is_none());
    held.release().await.unwrap();
    let shown = lab.ok(&[
        "get",
        "lease",
        "xorbctl-rollback",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    assert_eq!(shown, "");
    let next = RollbackLease::acquire(b.client.clone(), "default", holder("r2", "bob", "i-2"), ttl)
        .await
        .unwrap();
    next.release().await.unwrap();
}
