//! `stack up --demo-data --bulk-sessions N`: the demo's platform history (a third tenant's completed sessions, the
//! rows rc1's recount of every tenant's sessions is slow over), topped up to N and never beyond.

use crate::common::*;

async fn bulk_sessions(st: &Stack) -> i64 {
    st.pg()
        .await
        .query_one(
            "SELECT count(*) FROM ptaas_sessions s JOIN tenants t ON t.id = s.tenant_id \
             WHERE t.slug = 'bulk' AND s.status = 'completed'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn bulk_sessions_are_topped_up_to_n_and_no_more() {
    let release = "v2025.07-stable";
    let st = Stack::up_with(
        Stack::new_dir(),
        release,
        true,
        &["--bulk-sessions", "1000"],
    );
    assert_eq!(bulk_sessions(&st).await, 1000);
    // Nobody logs in as the bulk tenant: it has no token among the stack's secrets.
    let tokens = std::fs::read_to_string(st.dir.join("secrets").join("tenants.json")).unwrap();
    let tokens: serde_json::Value = serde_json::from_str(&tokens).unwrap();
    assert!(
        tokens.get("bulk").is_none(),
        "{:?}",
        tokens.as_object().map(|o| o.keys().collect::<Vec<_>>())
    );

    // Again on the running stack, asking for more: topped up, and said so.
    let out = st.xorbctl(&[
        "stack",
        "up",
        "--release",
        release,
        "--demo-data",
        "--bulk-sessions",
        "1500",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("Bulk history: 1500 completed sessions of tenant bulk."),
        "{}",
        text(&out)
    );
    assert_eq!(bulk_sessions(&st).await, 1500);
    // Asking for fewer deletes nothing.
    let out = st.xorbctl(&[
        "stack",
        "up",
        "--release",
        release,
        "--demo-data",
        "--bulk-sessions",
        "10",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(bulk_sessions(&st).await, 1500);

    // Without the demo data it means nothing: bad input, before anything is done.
    let out = st.xorbctl(&["stack", "up", "--release", release, "--bulk-sessions", "10"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--demo-data"), "{}", text(&out));
    st.xorbctl(&["stack", "down"]);
}
