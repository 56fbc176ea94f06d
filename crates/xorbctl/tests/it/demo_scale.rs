//! `stack up --demo-data --scale N`: production-sized history in every table of the release, generated in
//! PostgreSQL, topped up to N findings and never beyond; rc1's evidence verifies with the stack's key and the
//! audit chain its trigger appended holds.

use crate::common::*;

const N: i64 = 20_000;

async fn scalar(st: &Stack, sql: &str) -> i64 {
    st.pg().await.query_one(sql, &[]).await.unwrap().get(0)
}

async fn scale_findings(st: &Stack) -> i64 {
    scalar(
        st,
        "SELECT count(*) FROM findings WHERE tenant_id IN (SELECT id FROM tenants WHERE slug LIKE 'scale-%')",
    )
    .await
}

fn up_json(st: &Stack, n: &str) -> serde_json::Value {
    let out = st.xorbctl(&[
        "stack",
        "up",
        "--release",
        &st.release,
        "--demo-data",
        "--scale",
        n,
        "--output",
        "json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
}

#[tokio::test(flavor = "multi_thread")]
async fn rc1_scale_fills_every_table_verifies_and_tops_up() {
    let release = "v2025.08-rc1";
    let n = N.to_string();
    let st = Stack::up_with(Stack::new_dir(), release, true, &["--scale", &n]);
    assert_eq!(scale_findings(&st).await, N);
    // Every table of the release holds rows.
    for t in [
        "tenants",
        "ptaas_sessions",
        "findings",
        "audit_log",
        "evidence",
        "tenant_quotas",
        "usage_records",
        "audit_chain",
    ] {
        let rows = scalar(&st, &format!("SELECT count(*) FROM {t}")).await;
        assert!(rows >= 10, "{t}: {rows} rows");
    }
    // Realistic shapes: several tenants, skewed; all three states; several findings a session; only terminal
    // sessions (nothing for the services to pick up).
    assert!(
        scalar(
            &st,
            "SELECT count(*) FROM tenants WHERE slug LIKE 'scale-%'"
        )
        .await
            >= 10
    );
    assert_eq!(
        scalar(&st, "SELECT count(DISTINCT state) FROM findings").await,
        3
    );
    assert_eq!(
        scalar(
            &st,
            "SELECT count(*) FROM ptaas_sessions WHERE status IN ('queued', 'running')"
        )
        .await,
        0
    );
    let sessions = scalar(
        &st,
        "SELECT count(*) FROM ptaas_sessions WHERE tenant_id IN (SELECT id FROM tenants WHERE slug LIKE 'scale-%')",
    )
    .await;
    assert!(sessions > N / 12 && sessions < N / 4, "{sessions} sessions");
    let top = scalar(
        &st,
        "SELECT max(c) FROM (SELECT count(*) c FROM ptaas_sessions GROUP BY tenant_id) x",
    )
    .await;
    assert!(top > 2 * sessions / 10, "top tenant {top} of {sessions}");
    // One audit entry and one usage record a session.
    assert!(scalar(&st, "SELECT count(*) FROM audit_log").await >= sessions);
    assert!(scalar(&st, "SELECT count(*) FROM usage_records").await >= sessions);

    // The audit chain the trigger appended over multi-row inserts: numbered without a hole, each entry linked
    // to the one before and hashing its row (the canonical form of migrations' 8d9a2c3).
    assert_eq!(
        scalar(&st, "SELECT count(*) FROM audit_chain").await,
        scalar(&st, "SELECT coalesce(max(seq), 0) FROM audit_chain").await
    );
    let broken = scalar(
        &st,
        "SELECT count(*) FROM audit_chain c LEFT JOIN audit_chain p ON p.seq = c.seq - 1 \
         LEFT JOIN audit_log r ON r.id = c.audit_id \
         WHERE c.prev_hash <> coalesce(p.entry_hash, decode(repeat('00', 32), 'hex')) \
            OR c.entry_hash <> sha256(c.prev_hash || c.row_hash) \
            OR r.id IS NULL \
            OR c.row_hash <> sha256(convert_to(jsonb_build_array(r.id, r.tenant_id, r.actor, r.action, r.detail, \
               to_char(r.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'))::text, 'UTF8'))",
    )
    .await;
    assert_eq!(broken, 0, "broken audit chain entries");

    // Evidence: signed with the stack's key, rows and files agree, every signature verifies.
    let out = st.xorbctl(&["integrity", "--critical"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("critical data OK"), "{}", text(&out));
    let evidence = scalar(&st, "SELECT count(*) FROM evidence").await;
    assert!(evidence >= 2_000, "{evidence} evidence rows");

    // Again with the same N: nothing added to the scale tenants (the demo's own sessions run again), and the
    // report says what is there.
    let of_scale = |t: &str| {
        format!(
            "SELECT count(*) FROM {t} WHERE tenant_id IN (SELECT id FROM tenants WHERE slug LIKE 'scale-%')"
        )
    };
    let tables = ["ptaas_sessions", "audit_log", "evidence", "usage_records"];
    let mut before = Vec::new();
    for t in tables {
        before.push(scalar(&st, &of_scale(t)).await);
    }
    let v = up_json(&st, &n);
    let sc = &v["demo"]["scale"];
    assert_eq!(sc["findings_added"], 0, "{v}");
    assert!(sc["database_bytes"].as_i64().unwrap() > 1_000_000, "{v}");
    assert!(sc["rows"]["findings"].as_i64().unwrap() >= N, "{v}");
    assert_eq!(scale_findings(&st).await, N);
    for (t, b) in tables.iter().zip(before) {
        assert_eq!(scalar(&st, &of_scale(t)).await, b, "{t}");
    }

    // A larger N adds the difference, and its evidence still verifies.
    let v = up_json(&st, "25000");
    assert_eq!(v["demo"]["scale"]["findings_added"], 5_000, "{v}");
    assert_eq!(scale_findings(&st).await, 25_000);
    let out = st.xorbctl(&["integrity", "--critical"]);
    assert!(out.status.success(), "{}", text(&out));
    st.xorbctl(&["stack", "down"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn stable_scale_fills_its_tables_and_nonsense_is_refused() {
    let release = "v2025.07-stable";
    let st = Stack::up_with(Stack::new_dir(), release, true, &["--scale", "20000"]);
    assert_eq!(scale_findings(&st).await, N);
    let v = up_json(&st, "20000");
    let rows = &v["demo"]["scale"]["rows"];
    for t in ["tenants", "ptaas_sessions", "findings", "audit_log"] {
        assert!(rows[t].as_i64().unwrap() > 1_000 || t == "tenants", "{v}");
    }
    // Stable has none of rc1's tables, and the report names none.
    assert!(rows.get("evidence").is_none(), "{v}");
    assert!(rows.get("usage_records").is_none(), "{v}");
    assert_eq!(v["demo"]["scale"]["findings_added"], 0, "{v}");

    // Bad input, before anything is done: 0, above the maximum, without --demo-data.
    for args in [
        &["--demo-data", "--scale", "0"][..],
        &["--demo-data", "--scale", "50000001"],
        &["--demo-data", "--scale", "many"],
        &["--scale", "10"],
    ] {
        let mut a = vec!["stack", "up", "--release", release];
        a.extend_from_slice(args);
        let out = st.xorbctl(&a);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(
            text(&out).contains("--scale") || text(&out).contains("--demo-data"),
            "{}",
            text(&out)
        );
    }
    assert_eq!(scale_findings(&st).await, N);
    st.xorbctl(&["stack", "down"]);
}
