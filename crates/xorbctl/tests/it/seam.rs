//! Issue #11's defects of shape, on a real rc1 stack: the plan looks at NATS for streams, a check the policy names
//! runs (`integrity-full` had no runner case), the gates after service steps run and the report lists only what
//! ran, a check no target can run is refused when the policy loads.

use serde_json::Value;

use crate::common::*;

const RC1: &str = "v2025.08-rc1";
const STABLE: &str = "v2025.07-stable";

fn json(out: &std::process::Output) -> Value {
    assert!(out.status.success(), "{}", text(out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_plan_reads_streams_from_nats_and_every_check_named_runs_and_is_reported_only_when_it_ran() {
    let st = Stack::up(RC1, true);
    let work = tempfile::tempdir().unwrap();
    let shipped = std::fs::read_to_string(repo().join("runbooks/rollback.toml")).unwrap();
    let verification = "verification = [\"health\", \"info\", \"monitoring\", \"smoke\", \"tenant-isolation\", \"evidence-legacy\", \"quota\", \"performance\", \"integrity-quick\", \"loss\", \"audit-log\"]";
    assert!(shipped.contains(verification), "the shipped policy changed");
    let with_full = work.path().join("with-full.toml");
    std::fs::write(
        &with_full,
        shipped.replace(
            verification,
            &verification.replace("\"loss\"", "\"integrity-full\", \"loss\""),
        ),
    )
    .unwrap();
    let unknown = work.path().join("unknown.toml");
    std::fs::write(
        &unknown,
        shipped.replace(
            "\"loss\", \"audit-log\"]",
            "\"loss\", \"audit-log\", \"latency\"]",
        ),
    )
    .unwrap();

    // A check no target can run is refused when the policy loads, naming it.
    let out = st.xorbctl(&[
        "plan",
        "--from",
        RC1,
        "--to",
        STABLE,
        "--runbook",
        unknown.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("unknown check \"latency\": no target can run it"),
        "{}",
        text(&out)
    );

    // Defect 4: the plan says which of stable's streams exist (rc1 has xorb-events) instead of "absent" for all.
    let plan = json(&st.xorbctl(&["plan", "--from", RC1, "--to", STABLE, "--output", "json"]));
    let expand = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "1.streams.expand")
        .expect("a 1.streams.expand step");
    let events = expand["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["subject"] == "xorb-events")
        .expect("xorb-events among the stream changes");
    assert_eq!(events["before"], "present", "{events:#}");

    // Defects 1 and 2: integrity-full runs, and the gates after service steps run and are what the report lists.
    let out = st.xorbctl(&[
        "rollback",
        "--from",
        RC1,
        "--to",
        STABLE,
        "--yes",
        "--runbook",
        with_full.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let run = json(&st.xorbctl(&["show", "latest", "--output", "json"]));
    let full = run_step(&run, "5.check.integrity-full");
    assert_eq!(full["state"], "succeeded", "{full:#}");
    assert!(
        full["outcome"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("rows checksummed")),
        "{full:#}"
    );
    let api = run_step(&run, "2.api.image");
    let gates: Vec<&str> = api["outcome"]["checks"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["check"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(gates, ["health", "release"], "{api:#}");
    assert!(
        api["outcome"]["checks"][1]["detail"]
            .as_str()
            .is_some_and(|d| d.contains(STABLE)),
        "{api:#}"
    );
    let report = json(&st.xorbctl(&["report", "latest", "--format", "json"]));
    let listed: Vec<(String, String)> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["step"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        listed.contains(&("release".into(), "2.api.image".into()))
            && listed.contains(&("integrity-full".into(), "5.check.integrity-full".into())),
        "{listed:?}"
    );
    for c in report["checks"].as_array().unwrap() {
        assert_ne!(
            c["result"], "not run",
            "the report claims a check that did not run: {c:#}"
        );
    }
}
