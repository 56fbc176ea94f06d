//! A journal lost in the middle of a rollback (issue #12, items 7 and 8): the run directories still hold what the
//! journal lost, so the tool names those runs, a later roll-forward re-imports the preserved data of every run that
//! holds some (not only the newest), and `audit verify` fails on a trail or journal that was erased.

use std::os::unix::process::ExitStatusExt;

use serde_json::Value;

use crate::common::*;

const RC1: &str = "v2025.08-rc1";
const STABLE: &str = "v2025.07-stable";

async fn count(st: &Stack, sql: &str) -> i64 {
    st.pg().await.query_one(sql, &[]).await.unwrap().get(0)
}

async fn usage_record_ids(st: &Stack) -> Vec<i64> {
    st.pg()
        .await
        .query("SELECT id FROM usage_records ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn empty_the_journal(st: &Stack) {
    let j = st.dir.join("journal.sqlite");
    std::fs::write(&j, b"").unwrap();
    for side in ["journal.sqlite-wal", "journal.sqlite-shm"] {
        let _ = std::fs::remove_file(st.dir.join(side));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_journal_hides_no_run_and_loses_no_preserved_data() {
    let st = Stack::up(RC1, true);
    // Usage the control plane recorded (it records one per session created): what G8's downgrade drops.
    st.pg()
        .await
        .batch_execute(
            "INSERT INTO usage_records (tenant_id, kind, amount, recorded_at) \
             SELECT id, 'ptaas_session', 1, now() FROM tenants ORDER BY id LIMIT 4",
        )
        .await
        .unwrap();
    let usage = "SELECT count(*) FROM usage_records";
    let quotas = "SELECT count(*) FROM tenant_quotas";
    let evidence = "SELECT count(*) FROM evidence";
    let (usage_before, quotas_before, evidence_before) = (
        count(&st, usage).await,
        count(&st, quotas).await,
        count(&st, evidence).await,
    );
    assert!(
        usage_before >= 4 && evidence_before > 0,
        "{usage_before} {evidence_before}"
    );
    let ids_before = usage_record_ids(&st).await;

    // Run A: killed right after G8's downgrade preserved and dropped the control plane.
    let out = st
        .cmd()
        .env("XORB_CRASH_BEFORE_STEP", "3.g7.downgrade.7c8f1b2")
        .args(["rollback", "--from", RC1, "--to", STABLE, "--yes"])
        .output()
        .unwrap();
    assert_eq!(out.status.signal(), Some(9), "{}", text(&out));
    let shown: Value =
        serde_json::from_slice(&st.xorbctl(&["show", "latest", "--output", "json"]).stdout)
            .unwrap();
    let run_a = shown["id"].as_str().unwrap().to_string();
    assert!(
        st.dir
            .join("runs")
            .join(&run_a)
            .join("preserved/control-plane/manifest.json")
            .is_file()
    );

    empty_the_journal(&st);

    // `runs` names the run the journal lost, with its preserved data, and says the state is not healthy.
    let runs = st.xorbctl(&["runs"]);
    assert_eq!(runs.status.code(), Some(5), "{}", text(&runs));
    let t = text(&runs);
    assert!(
        t.contains(&run_a) && t.contains("control-plane") && t.contains("not in the journal"),
        "{t}"
    );
    // Resuming it says why it cannot be, rather than "no such run".
    let resume = st.xorbctl(&["resume", &run_a]);
    assert_eq!(resume.status.code(), Some(3), "{}", text(&resume));
    assert!(
        text(&resume).contains("is not in the journal"),
        "{}",
        text(&resume)
    );
    // The trail verifies as a chain, but the journal no longer records its end: that is a failure.
    let verify = st.xorbctl(&["audit", "verify"]);
    assert_eq!(verify.status.code(), Some(8), "{}", text(&verify));
    assert!(text(&verify).contains("ERASED"), "{}", text(&verify));

    // Run B finishes the schema's rollback (the services are on stable already); it preserves the evidence and
    // isolation modes.
    let out = st.xorbctl(&[
        "rollback", "--from", RC1, "--to", STABLE, "--only", "database", "--yes",
    ]);
    assert!(out.status.success(), "{}", text(&out));

    // The roll-forward re-imports from both runs, oldest first: nothing stays behind in A's directory.
    let plan = st.xorbctl(&["plan", "--from", STABLE, "--to", RC1, "--output", "json"]);
    assert!(plan.status.success(), "{}", text(&plan));
    let plan: Value = serde_json::from_slice(&plan.stdout).unwrap();
    let reimports: Vec<&Value> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| {
            s["action"]["kind"] == "reimport_preserved"
                || s["id"].as_str().unwrap().contains(".data.reimport")
        })
        .collect();
    assert_eq!(reimports.len(), 2, "{:#}", plan["steps"]);
    assert!(
        reimports[0].to_string().contains(&run_a),
        "A's control plane first: {:#?}",
        reimports
    );
    let out = st.xorbctl(&["rollback", "--from", STABLE, "--to", RC1, "--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    // Every record is back (the phase-5 smoke checks of the roll-forward record a few new ones).
    let ids_after = usage_record_ids(&st).await;
    let missing: Vec<&i64> = ids_before
        .iter()
        .filter(|i| !ids_after.contains(i))
        .collect();
    assert!(
        missing.is_empty(),
        "usage records not re-imported: {missing:?}"
    );
    assert!(count(&st, usage).await >= usage_before);
    assert_eq!(count(&st, quotas).await, quotas_before);
    assert!(count(&st, evidence).await >= evidence_before);
    // Nothing is left to re-import: a second look plans none.
    let plan = st.xorbctl(&["plan", "--from", STABLE, "--to", RC1, "--output", "json"]);
    assert!(!text(&plan).contains(".data.reimport"), "{}", text(&plan));

    st.xorbctl(&["stack", "down"]);
    let _ = std::fs::remove_dir_all(&st.dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_verify_fails_on_an_erased_trail_and_on_an_erased_journal() {
    let st = Stack::up(RC1, false);
    // A database-free rollback is enough to write a trail: the api alone.
    let out = st.xorbctl(&[
        "rollback", "--from", RC1, "--to", STABLE, "--only", "api", "--yes",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let ok = st.xorbctl(&["audit", "verify"]);
    assert!(ok.status.success(), "{}", text(&ok));

    let trail = st.dir.join("audit/audit.jsonl");
    let saved_trail = std::fs::read(&trail).unwrap();
    let journal = st.dir.join("journal.sqlite");

    // The trail alone erased: the journal's runs and checkpoint witness it.
    std::fs::write(&trail, b"").unwrap();
    let v = st.xorbctl(&["audit", "verify"]);
    assert_eq!(v.status.code(), Some(8), "{}", text(&v));
    std::fs::write(&trail, &saved_trail).unwrap();
    assert!(st.xorbctl(&["audit", "verify"]).status.success());

    // The journal alone erased: the trail verifies as a chain, but its end is no longer recorded anywhere.
    let saved_journal = std::fs::read(&journal).unwrap();
    let _ = std::fs::remove_file(st.dir.join("journal.sqlite-wal"));
    std::fs::write(&journal, b"").unwrap();
    let v = st.xorbctl(&["audit", "verify"]);
    assert_eq!(v.status.code(), Some(8), "{}", text(&v));
    assert!(text(&v).contains("ERASED"), "{}", text(&v));

    // Both erased: the run directories still witness.
    std::fs::write(&trail, b"").unwrap();
    let v = st.xorbctl(&["audit", "verify"]);
    assert_eq!(v.status.code(), Some(8), "{}", text(&v));
    assert!(
        text(&v).contains("the audit trail is empty, but this stack has 1 run"),
        "{}",
        text(&v)
    );

    std::fs::write(&journal, saved_journal).unwrap();
    std::fs::write(&trail, saved_trail).unwrap();
    st.xorbctl(&["stack", "down"]);
    let _ = std::fs::remove_dir_all(&st.dir);
}
