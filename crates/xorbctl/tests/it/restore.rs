//! "Restore from last known good backup" on real servers: `xorbctl restore RUN` after a full rollback, killed at
//! every journal boundary, and the emergency procedure `restore-backup` after a phase-3 failure.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde_json::{Value, json};

use crate::common::*;

const RC1: &str = "v2025.08-rc1";
const STABLE: &str = "v2025.07-stable";

/// Table → (rows, checksum), as a run's `db/integrity-full.json` recorded it with the backup.
fn snapshot_checksums(run_dir: &Path) -> BTreeMap<String, (u64, String)> {
    table_checksums(
        &serde_json::from_slice(
            &std::fs::read(run_dir.join("db").join("integrity-full.json")).unwrap(),
        )
        .unwrap(),
    )
}

/// The same, scanned from database `db` now.
async fn live_checksums(st: &Stack, db: &str) -> BTreeMap<String, (u64, String)> {
    let cfg = tokio_postgres::Config::from_str(&st.database_url(db)).unwrap();
    xorb_integrity::full(&cfg, &xorb_integrity::ScanOptions::default())
        .await
        .unwrap()
        .tables
        .into_iter()
        .map(|t| (t.table, (t.rows, t.checksum)))
        .collect()
}

async fn revision(st: &Stack, db: &str) -> String {
    pg_connect(&st.database_url(db))
        .await
        .query_one("SELECT version_num FROM alembic_version", &[])
        .await
        .unwrap()
        .get(0)
}

async fn databases(st: &Stack) -> Vec<String> {
    pg_connect(&st.database_url("postgres"))
        .await
        .query(
            "SELECT datname::text FROM pg_database WHERE datname LIKE 'xorb%' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn run_dir(st: &Stack, id: &str) -> PathBuf {
    st.dir.join("runs").join(id)
}

fn sanitized(id: &str) -> String {
    id.replace('-', "_")
}

/// Every service healthy on `release`, and a scan through the api completes on the database it now uses.
async fn services_run_on_it(st: &Stack, release: &str, slug: &str) {
    let status = st.status();
    for s in status["services"].as_array().unwrap() {
        assert_eq!(s["running"], true, "{status:#}");
        assert_eq!(s["release"], release, "{status:#}");
    }
    let token = st.add_tenant(slug).await;
    let api = Api::new(st.url("api"));
    let (code, v) = api
        .create_session(
            &token,
            json!({"targets": [{"host": "127.0.0.1", "ports": [9]}]}),
        )
        .await;
    assert_eq!(code, 201, "{v}");
    let done = api.wait_completed(&token, v["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "completed", "{done}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restore_after_a_full_rollback_gives_the_pre_rollback_checksums_and_the_services_run_on_it()
 {
    let st = Stack::up(RC1, true);
    let out = st.xorbctl(&["rollback", "--from", RC1, "--to", STABLE, "--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    let source = last_run(&st)["id"].as_str().unwrap().to_string();
    assert_eq!(revision(&st, "xorb").await, "1a5be11");
    let before = snapshot_checksums(&run_dir(&st, &source));
    assert!(
        before.contains_key("evidence") && before.contains_key("audit_chain"),
        "{before:?}"
    );

    // Another run holds the lock: refused, nothing done.
    let lock = xorb_engine::RollbackLock::acquire(&st.dir, None).unwrap();
    let out = st.xorbctl(&["restore", &source, "--yes"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    drop(lock);
    assert_eq!(revision(&st, "xorb").await, "1a5be11");

    let out = st.xorbctl(&["restore", &source, "--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    let run = last_run(&st);
    let id = run["id"].as_str().unwrap().to_string();
    assert_ne!(id, source);
    assert_eq!(
        run["plan"]["restore_of"],
        source.as_str(),
        "{:#}",
        run["plan"]
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("created role xorb_tenant"),
        "G6's downgrade dropped the cluster role; the restore creates it again: {stdout}"
    );

    // Exactly the pre-rollback data, rc1's schema, stable's services on it.
    assert_eq!(live_checksums(&st, "xorb").await, before);
    assert_eq!(revision(&st, "xorb").await, "8d9a2c3");
    let replaced = format!("xorb_replaced_{}", sanitized(&id));
    assert_eq!(
        databases(&st).await,
        vec!["xorb".to_string(), replaced.clone()],
        "the restored database took the live one's name; the replaced one is kept"
    );
    assert_eq!(revision(&st, &replaced).await, "1a5be11");
    let proof: Value = serde_json::from_slice(
        &std::fs::read(run_dir(&st, &id).join("db").join("restore-proof.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(proof["differences"], json!([]), "{proof:#}");
    assert_eq!(proof["source_run"], source.as_str());
    services_run_on_it(&st, STABLE, "after-restore").await;
    // What the rollback preserved is back in the database: a roll-forward must not re-import it a second time.
    let plan = st.xorbctl(&["plan", "--from", STABLE, "--to", RC1, "--output", "json"]);
    assert!(plan.status.success(), "{}", text(&plan));
    let plan = String::from_utf8_lossy(&plan.stdout);
    assert!(
        plan.contains("2.api.image") && !plan.contains("reimport"),
        "{plan}"
    );
    let report = st.xorbctl(&["report", &id]);
    assert!(
        String::from_utf8_lossy(&report.stdout)
            .contains(&format!("restore of run {source}'s backup")),
        "{}",
        text(&report)
    );

    // A run with no backup has nothing to restore: refused, and says why.
    let out = st.xorbctl(&["restore", &id, "--yes"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("took no backup"),
        "{}",
        text(&out)
    );
    let _ = st.xorbctl(&["stack", "down"]);
}

#[test]
fn a_restore_killed_at_every_journal_boundary_resumes_to_the_same_end() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let st = Stack::up(RC1, true);
    let out = st.xorbctl(&["rollback", "--from", RC1, "--to", STABLE, "--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    let source = last_run(&st)["id"].as_str().unwrap().to_string();
    let before = snapshot_checksums(&run_dir(&st, &source));
    let mut crashes = 0;
    for k in 1.. {
        let out = st
            .cmd()
            .args(["restore", &source, "--yes"])
            .env("XORB_CRASH_AFTER_JOURNAL_WRITES", k.to_string())
            .output()
            .unwrap();
        let crashed = out.status.signal() == Some(9);
        if crashed {
            crashes += 1;
            let resumed = st.xorbctl(&["resume", "latest"]);
            assert!(
                resumed.status.success()
                    || String::from_utf8_lossy(&resumed.stderr).contains("has already succeeded"),
                "k={k}: {}",
                text(&resumed)
            );
        } else {
            assert!(out.status.success(), "k={k}: {}", text(&out));
        }
        let run = last_run(&st);
        assert_eq!(
            run["status"]["state"], "succeeded",
            "k={k}: {:#}",
            run["status"]
        );
        let id = run["id"].as_str().unwrap();
        rt.block_on(async {
            assert_eq!(live_checksums(&st, "xorb").await, before, "k={k}");
            let dbs = databases(&st).await;
            assert!(
                dbs.contains(&format!("xorb_replaced_{}", sanitized(id))),
                "k={k}: {dbs:?}"
            );
            assert!(
                !dbs.iter().any(|d| d.contains("_restored_")),
                "k={k}: nothing left half-way: {dbs:?}"
            );
        });
        let status = st.status();
        assert!(
            status["services"]
                .as_array()
                .unwrap()
                .iter()
                .all(|s| s["running"] == true),
            "k={k}: {status:#}"
        );
        if !crashed {
            break;
        }
    }
    assert!(
        crashes >= 8,
        "a restore has at least eight journal boundaries: {crashes}"
    );
    let _ = st.xorbctl(&["stack", "down"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_phase_3_failure_with_the_restore_policy_ends_with_the_database_as_before_the_run() {
    let st = Stack::up(RC1, true);
    // The releases as an operator's checkout has them, with rc1's G6 downgrade broken after it began.
    let (work, releases) = releases_copy();
    let g6 = work
        .path()
        .join("migrations/versions/6b7e0a1_g6_enhanced_tenant_isolation.py");
    let script = std::fs::read_to_string(&g6).unwrap();
    let broken = script.replacen(
        "def downgrade() -> None:\n",
        "def downgrade() -> None:\n    op.execute(\"DROP POLICY IF EXISTS tenant_isolation ON findings\")\n    op.execute(\"SELECT 1/0\")\n",
        1,
    );
    assert_ne!(broken, script);
    std::fs::write(&g6, broken).unwrap();
    let runbook = work.path().join("rollback.toml");
    let policy = std::fs::read_to_string(repo().join("runbooks/rollback.toml")).unwrap();
    let stateful = policy
        .split_once("[stateful]")
        .map(|(a, b)| {
            format!(
                "{a}[stateful]{}",
                b.replacen("emergency = \"none\"", "emergency = \"restore-backup\"", 1)
            )
        })
        .unwrap();
    std::fs::write(&runbook, stateful).unwrap();

    let out = st
        .cmd()
        .args([
            "rollback",
            "--from",
            RC1,
            "--to",
            STABLE,
            "--yes",
            "--runbook",
        ])
        .arg(&runbook)
        .env("XORB_RELEASES", &releases)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(6), "{}", text(&out));
    let run = last_run(&st);
    let id = run["id"].as_str().unwrap().to_string();
    assert_eq!(
        run["status"]["state"], "emergency_stopped",
        "{:#}",
        run["status"]
    );
    assert!(
        run["status"]["step"].as_str().unwrap().contains("6b7e0a1"),
        "{:#}",
        run["status"]
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("restored run") && stdout.contains("start a new rollback"),
        "the emergency says what it did and what next: {stdout}"
    );
    // The G8 and G7 downgrades had run; the database is back as the backup saw it, before the run touched it.
    assert_eq!(revision(&st, "xorb").await, "8d9a2c3");
    assert_eq!(
        live_checksums(&st, "xorb").await,
        snapshot_checksums(&run_dir(&st, &id))
    );
    let replaced = format!("xorb_replaced_{}", sanitized(&id));
    // Set aside where the failure left it: G8 and G7 downgraded, G6 not.
    assert_eq!(revision(&st, &replaced).await, "6b7e0a1");
    services_run_on_it(&st, STABLE, "after-emergency").await;

    // Resuming the run is refused by its next migration, which finds the schema elsewhere: nothing is downgraded
    // without its preservation.
    let out = st
        .cmd()
        .args(["resume", &id])
        .env("XORB_RELEASES", &releases)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert_eq!(revision(&st, "xorb").await, "8d9a2c3");
    let _ = st.xorbctl(&["stack", "down"]);
}
