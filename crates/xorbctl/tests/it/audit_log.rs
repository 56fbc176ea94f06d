//! The platform's own audit log (#13 item 6): rc1 chains every audit entry, the rollback preserves the chain and
//! rc1's tenant metrics before the downgrade, phase 5's `audit-log` check verifies the log against the chain over
//! its window, and the loss assessment names both as preserved and verified.

use serde_json::Value;

use crate::common::*;

const RC1: &str = "v2025.08-rc1";
const STABLE: &str = "v2025.07-stable";

/// Phase 5's check as the rollback runs it, on the stack as it is now (`xorbctl audit platform`): `Ok` with its
/// line on exit 0, `Err` with it on exit 5.
fn audit_check(st: &Stack) -> Result<String, String> {
    let out = st.xorbctl(&["audit", "platform", "--since", "1h"]);
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match out.status.code() {
        Some(0) => Ok(line),
        Some(5) => Err(line),
        other => panic!("audit platform exited {other:?}: {}", text(&out)),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_platform_audit_log_check_names_an_altered_or_deleted_chained_entry() {
    let st = Stack::up(RC1, true);
    let pg = st.pg().await;
    // Audit entries as the services write them (the trigger chains whatever inserts them), one of them as the
    // tenant role rc1's api uses, which has no right on audit_chain itself.
    for i in 0..4 {
        pg.execute(
            "INSERT INTO audit_log (tenant_id, actor, action, detail) \
             VALUES (NULL, 'svc:test', 'test.entry', jsonb_build_object('i', $1::int, 'note', 'é|\"x\"'))",
            &[&i],
        )
        .await
        .unwrap();
    }
    let tenant: String = pg
        .query_one("SELECT id::text FROM tenants ORDER BY slug LIMIT 1", &[])
        .await
        .unwrap()
        .get(0);
    pg.batch_execute(&format!(
        "BEGIN; SET LOCAL ROLE xorb_tenant; SELECT set_config('xorb.tenant_id', '{tenant}', true); \
         INSERT INTO audit_log (tenant_id, actor, action) VALUES ('{tenant}', 'tenant:t', 'test.as_tenant'); COMMIT"
    ))
    .await
    .unwrap();
    // An insert rolled back burns an id that neither audit_log nor the chain holds: a forger's slot, later.
    pg.batch_execute(
        "BEGIN; INSERT INTO audit_log (actor, action) VALUES ('svc:test', 'test.rolled_back'); ROLLBACK",
    )
    .await
    .unwrap();
    let burnt: i64 = pg
        .query_one("SELECT currval('audit_log_id_seq')", &[])
        .await
        .unwrap()
        .get(0);
    // Concurrent writers, each in transactions of two inserts: the advisory lock makes them one chain.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let url = st.database_url("xorb");
            tokio::spawn(async move {
                let mut c = pg_connect(&url).await;
                for i in 0..5 {
                    let tx = c.transaction().await.unwrap();
                    for _ in 0..2 {
                        tx.execute(
                            "INSERT INTO audit_log (actor, action, detail) \
                             VALUES ('svc:writer', 'test.concurrent', jsonb_build_object('w', $1::int, 'i', $2::int))",
                            &[&w, &i],
                        )
                        .await
                        .unwrap();
                    }
                    tx.commit().await.unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let unchained: i64 = pg
        .query_one(
            "SELECT count(*) FROM audit_log a WHERE a.action = 'test.concurrent' \
             AND NOT EXISTS (SELECT 1 FROM audit_chain c WHERE c.audit_id = a.id)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(unchained, 0, "every concurrent insert is chained");
    let chained: i64 = pg
        .query_one("SELECT count(*) FROM audit_chain", &[])
        .await
        .unwrap()
        .get(0);
    let rows: i64 = pg
        .query_one("SELECT count(*) FROM audit_log", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        chained >= 45,
        "every insert since rc1's migration is chained: {chained}"
    );
    // On rc1, the check reads the live chain.
    let live = audit_check(&st);
    assert!(
        live.as_ref()
            .is_ok_and(|d| d.contains("the live audit_chain") && d.contains("links intact")),
        "{live:?} ({rows} rows)"
    );

    let out = st.xorbctl(&["rollback", "--from", RC1, "--to", STABLE, "--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    let show = st.xorbctl(&["show", "latest", "--output", "json"]);
    let run: Value = serde_json::from_slice(&show.stdout).unwrap();

    let g8 = run_step(&run, "3.g8.downgrade.8d9a2c3");
    let detail = g8["outcome"]["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("advanced audit logs:")
            && detail.contains("every link and hash verified")
            && detail.contains("tenant metrics:"),
        "{g8:#}"
    );
    let check = run_step(&run, "5.check.audit-log");
    assert_eq!(check["state"], "succeeded", "{check:#}");
    let detail = check["outcome"]["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("audit log over the last 1h")
            && detail.contains(&format!("chain of {chained}"))
            && detail.contains("the chain preserved in"),
        "{check:#}"
    );

    // The loss assessment names both as preserved and verified.
    let loss = run_step(&run, "5.check.loss");
    let detail = loss["outcome"]["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(&format!(
            "advanced audit logs (audit_chain): {chained} chain entries dropped by the downgrade, {chained} preserved and verified"
        )),
        "{loss:#}"
    );
    assert!(
        detail.contains("rc1 tenant metrics (xorb_tenant_sessions)")
            && detail.contains("preserved and verified"),
        "{loss:#}"
    );
    // The stack's one run.
    let run_dir = std::fs::read_dir(st.dir.join("runs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("loss.json").exists())
        .expect("a run with loss.json");
    let assessment: Value =
        serde_json::from_slice(&std::fs::read(run_dir.join("loss.json")).unwrap()).unwrap();
    for key in ["audit_chain", "tenant_metrics"] {
        assert_eq!(
            assessment["accounted"][key]["verified"], true,
            "{key}: {:#}",
            assessment["accounted"]
        );
    }
    let report = text(&st.xorbctl(&["report", "latest", "--format", "md"]));
    assert!(
        report.contains("advanced audit logs (audit_chain)")
            && report.contains("rc1 tenant metrics"),
        "{report}"
    );

    // Stable writes plain entries after the chain (phase 5's smoke test did, and this one): they pass.
    pg.execute(
        "INSERT INTO audit_log (actor, action) VALUES ('svc:stable', 'test.plain')",
        &[],
    )
    .await
    .unwrap();
    let again = audit_check(&st);
    assert!(
        again
            .as_ref()
            .is_ok_and(|d| d.contains("plain entries after it") && !d.contains(" 0 plain entries")),
        "{again:?}"
    );

    // One chained entry of the window altered: named.
    let ids: Vec<i64> = pg
        .query(
            "SELECT id FROM audit_log WHERE action = 'test.entry' ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    altered_is_named(
        &st,
        &pg,
        ids[1],
        "UPDATE audit_log SET actor = 'svc:someone-else' WHERE id = $1",
        "UPDATE audit_log SET actor = 'svc:test' WHERE id = $1",
    )
    .await;
    // One moved out of the window by its time: its chain entry, in the window, still names it.
    altered_is_named(
        &st,
        &pg,
        ids[1],
        "UPDATE audit_log SET created_at = created_at - interval '48 hours' WHERE id = $1",
        "UPDATE audit_log SET created_at = created_at + interval '48 hours' WHERE id = $1",
    )
    .await;

    // One deleted: named.
    pg.execute("DELETE FROM audit_log WHERE id = $1", &[&ids[2]])
        .await
        .unwrap();
    let e = audit_check(&st).unwrap_err();
    assert!(
        e.contains(&format!("audit entry {} is gone (deleted)", ids[2])),
        "{e}"
    );

    // A row forged into the chain's span (the id the rolled-back insert burnt): named as unchained.
    pg.execute(
        "INSERT INTO audit_log (id, actor, action) VALUES ($1, 'svc:test', 'test.forged')",
        &[&burnt],
    )
    .await
    .unwrap();
    let e = audit_check(&st).unwrap_err();
    assert!(
        e.contains(&format!("audit entry {burnt} has no chain entry")),
        "{e}"
    );

    let bad = st.xorbctl(&["audit", "platform", "--since", "1 hour ago"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
}

/// `change` (an UPDATE of audit entry `id`) makes the check name the entry as altered; `undo` makes it pass again.
async fn altered_is_named(
    st: &Stack,
    pg: &tokio_postgres::Client,
    id: i64,
    change: &str,
    undo: &str,
) {
    pg.execute(change, &[&id]).await.unwrap();
    let e = audit_check(st).unwrap_err();
    assert!(e.contains(&format!("audit entry {id} was altered")), "{e}");
    pg.execute(undo, &[&id]).await.unwrap();
    assert!(audit_check(st).is_ok(), "restored: {undo}");
}
