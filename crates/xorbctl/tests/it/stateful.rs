//! Phases 3 and 4 end to end (issue #4): a full rollback from rc1 with demo data loses nothing it does not account
//! for, its backups are real, a roll-forward gets the preserved data back, a bad target stops the run before it
//! touches anything, and PostgreSQL going away in the middle of phase 3 leaves a run that resumes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::common::*;

const RC1: &str = "v2025.08-rc1";
const STABLE: &str = "v2025.07-stable";

fn run_dir(st: &Stack) -> PathBuf {
    let run = last_run(st);
    st.dir.join("runs").join(run["id"].as_str().unwrap())
}

async fn alembic_version(st: &Stack) -> String {
    st.pg()
        .await
        .query_one("SELECT version_num FROM alembic_version", &[])
        .await
        .unwrap()
        .get(0)
}

async fn count(st: &Stack, table: &str) -> i64 {
    st.pg()
        .await
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

fn pg_env(cmd: &mut Command, st: &Stack) {
    cmd.env("PGHOST", "127.0.0.1")
        .env("PGPORT", st.pg_port().to_string())
        .env("PGUSER", "xorb")
        .env("PGPASSWORD", st.secret("db-password"));
}

fn psql(st: &Stack, db: &str, sql: &str) {
    let mut c = Command::new("psql");
    pg_env(&mut c, st);
    let out = c
        .args(["-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql])
        .output()
        .unwrap();
    assert!(out.status.success(), "psql {sql}: {}", text(&out));
}

fn step_ids(run: &Value) -> Vec<String> {
    run["plan"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    let out = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

/// Every evidence record: id, payload, signature.
async fn evidence_rows(st: &Stack) -> Vec<(String, Vec<u8>, Vec<u8>)> {
    st.pg()
        .await
        .query(
            "SELECT id::text, payload, signature FROM evidence ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

fn rule_groups(file: &Path) -> Vec<String> {
    let v: Value = serde_saphyr::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    let mut g: Vec<String> = v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap().to_string())
        .collect();
    g.sort();
    g
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_rollback_from_rc1_accounts_for_every_row_and_a_roll_forward_brings_the_evidence_back()
 {
    let st = Stack::up(RC1, true);
    let evidence_before = count(&st, "evidence").await;
    let evidence_ids = evidence_rows(&st).await;
    let quotas_before = count(&st, "tenant_quotas").await;
    let usage_before = count(&st, "usage_records").await;
    assert!(evidence_before > 0, "the demo data has evidence");

    // `plan` predicts what the downgrades destroy and what is preserved first.
    let plan = st.xorbctl(&["plan", "--from", RC1, "--to", STABLE]);
    let p = text(&plan);
    assert!(plan.status.success(), "{p}");
    for want in [
        "3.db.backup",
        "3.g8.downgrade.8d9a2c3",
        "3.g7.downgrade.7c8f1b2",
        "3.g6.downgrade.6b7e0a1",
        "table evidence",
        "column tenants.isolation_mode",
        "dropped (preserved and verified first)",
        "4.nats.apply",
        "xorb-tenant-streams",
        "db 1",
        "db 2",
        "4.monitoring.apply",
        "5.check.loss",
    ] {
        assert!(p.contains(want), "the plan lacks {want:?}:\n{p}");
    }

    let out = st.xorbctl(&["rollback", "--from", RC1, "--to", STABLE, "--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(alembic_version(&st).await, "1a5be11");
    let dir = run_dir(&st);

    // The phase 3 dump, restored into a new database, has exactly the checksums taken before the downgrade.
    let dump = dir.join("db/xorb.dump");
    let backup: Value =
        serde_json::from_slice(&std::fs::read(dir.join("db/backup.json")).unwrap()).unwrap();
    let recorded_sha = backup.to_string();
    assert!(
        recorded_sha.contains(&hex_sha256(&std::fs::read(&dump).unwrap())),
        "backup.json records the dump's SHA-256: {backup}"
    );
    psql(&st, "postgres", "CREATE DATABASE restored");
    let mut restore = Command::new("pg_restore");
    pg_env(&mut restore, &st);
    let out = restore
        .args(["--no-owner", "--no-privileges", "-d", "restored"])
        .arg(&dump)
        .output()
        .unwrap();
    assert!(out.status.success(), "pg_restore: {}", text(&out));
    let before: Value =
        serde_json::from_slice(&std::fs::read(dir.join("db/integrity-full.json")).unwrap())
            .unwrap();
    let cfg = {
        let s = xorb_local::stack::StackState::load(&st.dir).unwrap();
        let secrets = xorb_local::stack::Secrets::load(&st.dir).unwrap();
        s.pg(&secrets).with_db("restored").config()
    };
    let restored = xorb_integrity::full(&cfg, &xorb_integrity::ScanOptions::default())
        .await
        .unwrap();
    let restored = serde_json::to_value(&restored).unwrap();
    let want = table_checksums(&before);
    assert!(want.contains_key("evidence") && want["evidence"].0 == evidence_before as u64);
    assert_eq!(
        table_checksums(&restored),
        want,
        "restored dump vs phase 3's checksums"
    );

    // The Redis backup is a valid RDB.
    let out = Command::new("redis-check-rdb")
        .arg(dir.join("redis/dump.rdb"))
        .output()
        .unwrap();
    assert!(out.status.success(), "redis-check-rdb: {}", text(&out));

    // NATS streams are the stable release's.
    let s = xorb_local::stack::StackState::load(&st.dir).unwrap();
    let mut live = xorb_adapters::nats::list_streams(&s.nats_url())
        .await
        .unwrap();
    live.sort();
    let stable_rel =
        xorb_model::release::Release::load_named(&repo().join("releases"), STABLE).unwrap();
    let mut want_streams: Vec<String> = stable_rel.streams.iter().map(|s| s.name.clone()).collect();
    want_streams.sort();
    assert_eq!(live, want_streams);

    // Prometheus serves stable's rule groups.
    let rules: Value = reqwest::get(format!("{}/api/v1/rules", s.prometheus_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut groups: Vec<String> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap().to_string())
        .collect();
    groups.sort();
    assert_eq!(
        groups,
        rule_groups(
            &repo()
                .join("releases")
                .join(STABLE)
                .join("monitoring/alert-rules.yml")
        )
    );

    // The loss assessment: every evidence row lost to the downgrade, every one preserved and verified.
    let loss: Value =
        serde_json::from_slice(&std::fs::read(dir.join("loss.json")).unwrap()).unwrap();
    let ev = &loss["accounted"]["evidence"];
    assert_eq!(ev["lost"], evidence_before, "{loss:#}");
    assert_eq!(ev["preserved"], evidence_before, "{loss:#}");
    let lost = |t: &str| loss["accounted"][t]["lost"].as_i64().unwrap_or(0);
    assert_eq!(lost("tenant_quotas"), quotas_before, "{loss:#}");
    assert_eq!(lost("usage_records"), usage_before, "{loss:#}");
    assert!(usage_before > 0, "the demo data meters usage");
    assert!(lost("tenants.isolation_mode") > 0, "{loss:#}");
    assert_eq!(
        loss["unaccounted"].as_array().map(Vec::len),
        Some(0),
        "{loss:#}"
    );
    let report = st.xorbctl(&["report", "latest"]);
    let r = text(&report);
    assert!(
        r.contains(&format!(
            "{evidence_before} evidence rows dropped by the downgrade, {evidence_before} preserved and verified"
        )),
        "{r}"
    );

    // Rolled forward again, rc1 gets its evidence and control-plane data back.
    let out = st.xorbctl(&["rollback", "--from", STABLE, "--to", RC1, "--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(alembic_version(&st).await, "8d9a2c3");
    // Every record is back byte for byte (the smoke check of phase 5 may have added new ones since).
    let after = evidence_rows(&st).await;
    for row in &evidence_ids {
        assert!(after.contains(row), "evidence {} is back as it was", row.0);
    }
    assert_eq!(count(&st, "tenant_quotas").await, quotas_before);
    let ids = step_ids(&last_run(&st));
    let up = ids
        .iter()
        .position(|i| i.starts_with("1.") && i.contains("upgrade"))
        .unwrap();
    let first_service = ids.iter().position(|i| i.starts_with("2.")).unwrap();
    assert!(
        up < first_service,
        "the schema goes up before the services: {ids:?}"
    );
    assert!(ids.contains(&"1.data.reimport".to_string()), "{ids:?}");
    let critical = st.xorbctl(&["integrity", "--critical"]);
    assert!(critical.status.success(), "{}", text(&critical));

    st.xorbctl(&["stack", "down"]);
    let _ = std::fs::remove_dir_all(&st.dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_target_rule_file_stops_the_run_before_anything_is_touched() {
    let st = Stack::up(RC1, false);
    // A tree like the repository's (paths a release names stay inside it): releases/ and migrations/.
    let tree = Stack::new_dir();
    let root = tree.join("releases");
    copy_dir(&repo().join("migrations"), &tree.join("migrations"));
    std::fs::create_dir_all(&root).unwrap();
    copy_dir(&repo().join("releases").join(RC1), &root.join(RC1));
    copy_dir(&repo().join("releases").join(STABLE), &root.join(STABLE));
    let rules = root.join(STABLE).join("monitoring/alert-rules.yml");
    std::fs::write(
        &rules,
        std::fs::read_to_string(&rules)
            .unwrap()
            .replacen("expr:", "expr: ((", 1),
    )
    .unwrap();
    let s = xorb_local::stack::StackState::load(&st.dir).unwrap();
    let config_before: Value = reqwest::get(format!("{}/api/v1/status/config", s.prometheus_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let version_before = alembic_version(&st).await;
    let out = st
        .cmd()
        .env("XORB_RELEASES", &root)
        .args(["rollback", "--from", RC1, "--to", STABLE, "--yes"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(6), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("1.monitoring.validate"), "{t}");
    assert!(
        t.contains("alert-rules.yml"),
        "promtool's message names the file: {t}"
    );
    let config_after: Value = reqwest::get(format!("{}/api/v1/status/config", s.prometheus_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(config_before, config_after, "Prometheus untouched");
    assert_eq!(
        alembic_version(&st).await,
        version_before,
        "schema untouched"
    );
    for svc in st.status()["services"].as_array().unwrap() {
        assert_eq!(svc["reported_release"], RC1, "services untouched: {svc}");
    }
    st.xorbctl(&["stack", "down"]);
    let _ = std::fs::remove_dir_all(&st.dir);
    let _ = std::fs::remove_dir_all(&tree);
}

/// The postmaster's pid, from stack.json.
fn postgres_pid(st: &Stack) -> i32 {
    st.stack_json()["postgres"]["proc"]["pid"].as_i64().unwrap() as i32
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_gone_in_the_middle_of_phase_3_leaves_a_run_that_resumes_once_it_is_back() {
    let st = Stack::up(RC1, true);
    let evidence_before = count(&st, "evidence").await;
    // Stop the run right before G7's downgrade (G8's has run), then take PostgreSQL away.
    let out = st
        .cmd()
        .env("XORB_CRASH_BEFORE_STEP", "3.g7.downgrade.7c8f1b2")
        .args(["rollback", "--from", RC1, "--to", STABLE, "--yes"])
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(9), "{}", text(&out));
    assert_eq!(alembic_version(&st).await, "7c8f1b2");
    let pid = postgres_pid(&st);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    eventually("postgres stopped", Duration::from_secs(60), || async {
        (!Path::new(&format!("/proc/{pid}")).exists()).then_some(())
    })
    .await;

    let resumed = st.xorbctl(&["resume", "latest"]);
    assert_eq!(resumed.status.code(), Some(6), "{}", text(&resumed));
    let show = st.xorbctl(&["show", "latest"]);
    let s = text(&show);
    assert!(
        s.contains("3.g7.downgrade.7c8f1b2"),
        "the run says where it stopped: {s}"
    );
    let run = last_run(&st);
    let g7 = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["spec"]["id"] == "3.g7.downgrade.7c8f1b2")
        .unwrap()
        .clone();
    assert_eq!(g7["state"], "failed", "{g7:#}");

    // PostgreSQL back (stack up restarts what is missing, with its data), and the run ends where it should.
    let up = st.xorbctl(&["stack", "up", "--release", STABLE]); // the services are on stable by now
    assert!(up.status.success(), "{}", text(&up));
    let resumed = st.xorbctl(&["resume", "latest"]);
    assert!(resumed.status.success(), "{}", text(&resumed));
    assert_eq!(alembic_version(&st).await, "1a5be11");
    let dir = run_dir(&st);
    let loss: Value =
        serde_json::from_slice(&std::fs::read(dir.join("loss.json")).unwrap()).unwrap();
    assert_eq!(
        loss["accounted"]["evidence"]["preserved"], evidence_before,
        "{loss:#}"
    );
    st.xorbctl(&["stack", "down"]);
    let _ = std::fs::remove_dir_all(&st.dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_only_rollback_goes_one_revision_or_one_named_data_migration_at_a_time() {
    let st = Stack::up(RC1, true);
    // rc1's services cannot run below their head: refused with the way out.
    let out = st.xorbctl(&[
        "plan",
        "--from",
        RC1,
        "--to",
        STABLE,
        "--only",
        "database",
        "--to-revision",
        "-1",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("--only services"), "{}", text(&out));
    // Services (and their configuration) first, then the database one step at a time.
    for only in ["services", "config"] {
        let out = st.xorbctl(&[
            "rollback", "--from", RC1, "--to", STABLE, "--only", only, "--yes",
        ]);
        assert!(out.status.success(), "{only}: {}", text(&out));
    }
    let g7_first = st.xorbctl(&[
        "plan",
        "--from",
        RC1,
        "--to",
        STABLE,
        "--only",
        "database",
        "--migration",
        "G7",
    ]);
    assert_eq!(g7_first.status.code(), Some(3), "{}", text(&g7_first));
    assert!(text(&g7_first).contains("8d9a2c3"), "{}", text(&g7_first));
    let out = st.xorbctl(&[
        "rollback",
        "--from",
        RC1,
        "--to",
        STABLE,
        "--only",
        "database",
        "--to-revision",
        "-1",
        "--yes",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(alembic_version(&st).await, "7c8f1b2");
    let out = st.xorbctl(&[
        "rollback",
        "--from",
        RC1,
        "--to",
        STABLE,
        "--only",
        "database",
        "--migration",
        "G7",
        "--yes",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(alembic_version(&st).await, "6b7e0a1");
    let ids = step_ids(&last_run(&st));
    assert!(
        ids.contains(&"3.g7.downgrade.7c8f1b2".to_string()),
        "{ids:?}"
    );
    assert!(
        !ids.iter()
            .any(|i| i.starts_with("2.") || i.starts_with("4.")),
        "{ids:?}"
    );
    st.xorbctl(&["stack", "down"]);
    let _ = std::fs::remove_dir_all(&st.dir);
}
