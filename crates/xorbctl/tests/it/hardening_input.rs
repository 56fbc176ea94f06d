//! Issue 12, input hardening, at the command line: numbers out of range in a runbook policy, a release or a
//! checklist are refused at load (exit 2, file, key and range named, nothing done), and a run journaled with such a
//! value is refused by `resume` instead of panicking.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use xorb_engine::{Event, Journal};
use xorb_model::plan::{Action, FailurePolicy, Phase, Plan, RunStatus, Safety, StepSpec};

use crate::common::*;

const RC1: &str = "v2025.08-rc1";
const STABLE: &str = "v2025.07-stable";

/// xorbctl on a fresh state directory with no stack: loading comes before anything needs one.
fn xorbctl_in(state: &Path, args: &[&str]) -> Output {
    Command::new(xorbctl_bin())
        .env("XORB_STATE_DIR", state)
        .env("XORB_RELEASES", repo().join("releases"))
        .current_dir(repo())
        .args(args)
        .output()
        .unwrap()
}

fn policy_with(dir: &Path, from: &str, to: &str) -> PathBuf {
    let shipped = std::fs::read_to_string(repo().join("runbooks/rollback.toml")).unwrap();
    let text = shipped.replacen(from, to, 1);
    assert_ne!(text, shipped, "{from} is in the shipped policy");
    let p = dir.join("x.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn assert_bad_input(out: &Output, wants: &[&str]) {
    let t = text(out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(!t.contains("panicked"), "{t}");
    for w in wants {
        assert!(t.contains(w), "missing {w:?} in:\n{t}");
    }
}

#[test]
fn plan_refuses_runbook_numbers_out_of_range_naming_file_key_and_range() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    for (from, to, want) in [
        (
            "rollout_secs = 300",
            "rollout_secs = 18446744073709551615",
            "timeouts.rollout_secs = 18446744073709551615 is out of range: allowed 1..=3600 seconds",
        ),
        (
            "rollout_secs = 300",
            "rollout_secs = 0",
            "timeouts.rollout_secs = 0 is out of range: allowed 1..=3600 seconds",
        ),
        (
            "backoff_ms = 1000",
            "backoff_ms = 18446744073709551615",
            "services.backoff_ms = 18446744073709551615 is out of range: allowed 0..=300000 milliseconds",
        ),
    ] {
        let p = policy_with(dir.path(), from, to);
        let out = xorbctl_in(
            &state,
            &[
                "plan",
                "--from",
                RC1,
                "--to",
                STABLE,
                "--runbook",
                p.to_str().unwrap(),
            ],
        );
        assert_bad_input(&out, &[&p.display().to_string(), want]);
    }
}

fn releases_with(dir: &Path, file: &str, from: &str, to: &str) -> PathBuf {
    let root = dir.join("releases");
    let ok = Command::new("cp")
        .args(["-r"])
        .arg(repo().join("releases"))
        .arg(&root)
        .status()
        .unwrap();
    assert!(ok.success());
    let p = root.join(STABLE).join(file);
    let text = std::fs::read_to_string(&p).unwrap();
    let edited = text.replacen(from, to, 1);
    assert_ne!(edited, text, "{from} is in {file}");
    std::fs::write(&p, edited).unwrap();
    root
}

#[test]
fn a_release_with_replicas_or_stream_limits_out_of_range_is_refused() {
    for (file, from, to, want) in [
        (
            "release.toml",
            "replicas = 2",
            "replicas = 4000000000",
            "services.api.replicas = 4000000000 is out of range: allowed 1..=100 replicas",
        ),
        (
            "nats/streams.yaml",
            "max_msgs: -1",
            "max_msgs: 0",
            "max_msgs (stream \"xorb-jobs\") = 0 is out of range: allowed -1 (no limit) or 1..=1000000000",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let releases = releases_with(dir.path(), file, from, to);
        let out = Command::new(xorbctl_bin())
            .env("XORB_STATE_DIR", dir.path().join("state"))
            .env("XORB_RELEASES", &releases)
            .args(["plan", "--from", RC1, "--to", STABLE])
            .output()
            .unwrap();
        assert_bad_input(&out, &[file, want]);
    }
}

#[test]
fn a_checklist_item_proved_by_nothing_that_can_exist_is_refused_with_item_and_name() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::fs::read_to_string(repo().join("policies/checklists.toml")).unwrap();
    let p = dir.path().join("checklists.toml");
    std::fs::write(
        &p,
        shipped.replacen(
            "proved_by = \"1.target.verify\"",
            "proved_by = \"1.target.verfy\"",
            1,
        ),
    )
    .unwrap();
    // `check` loads the checklists after the run: journal one, no stack needed.
    let state = dir.path().join("state");
    let run = journal_a_run_with(&state, 300, 1000);
    let out = Command::new(xorbctl_bin())
        .env("XORB_STATE_DIR", &state)
        .env("XORB_CHECKLISTS", &p)
        .args(["check", &run, "pre.maintenance-window", "--by", "alice"])
        .output()
        .unwrap();
    assert_bad_input(
        &out,
        &[
            &p.display().to_string(),
            "item \"pre.target-verified\"",
            "\"1.target.verfy\"",
        ],
    );
}

/// A failed run as a journal from before this fix could hold it: the api step's timeout and backoff at u64::MAX.
fn journal_a_run_with(state: &Path, timeout_secs: u64, backoff_ms: u64) -> String {
    let plan = Plan::new(RC1, STABLE).with_step(
        StepSpec::new(
            "2.api.image",
            Phase::Services,
            "Roll api back",
            Action::Noop,
            Safety::Idempotent,
        )
        .with_timeout_secs(timeout_secs)
        .with_policy(FailurePolicy::Retry {
            attempts: 2,
            backoff_ms,
            then: None,
        }),
    );
    let run = "20260101-000000-0bad";
    let run_dir = state.join("runs").join(run);
    let mut j = Journal::open(state).unwrap();
    let started = Event::RunStarted {
        from: RC1.into(),
        to: STABLE.into(),
        scope: None,
        restore_of: None,
        steps: 1,
        run_dir: run_dir.display().to_string(),
        log_file: String::new(),
    };
    j.create_run(run, &plan, &run_dir, chrono::Utc::now(), started)
        .unwrap();
    let failed = RunStatus::Failed {
        step: "2.api.image".into(),
        error: "api did not come up".into(),
    };
    let end = Event::RunFinished {
        status: failed.clone(),
        duration_ms: 1,
        next: String::new(),
    };
    j.set_status(run, &failed, end).unwrap();
    run.to_string()
}

#[test]
fn resume_refuses_a_journaled_run_with_a_value_out_of_range_instead_of_panicking() {
    for (timeout, backoff, want) in [
        (
            u64::MAX,
            1000,
            "timeout_secs = 18446744073709551615 is out of range",
        ),
        (
            300,
            u64::MAX,
            "policy.backoff_ms = 18446744073709551615 is out of range",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let run = journal_a_run_with(&state, timeout, backoff);
        let events_before = Journal::open(&state)
            .unwrap()
            .load_run(&run)
            .unwrap()
            .events
            .len();
        let out = xorbctl_in(&state, &["resume", &run]);
        assert_bad_input(
            &out,
            &[
                &format!("run {run} cannot be resumed"),
                "step 2.api.image",
                want,
                &format!("xorbctl abort {run}"),
            ],
        );
        let after = Journal::open(&state).unwrap().load_run(&run).unwrap();
        assert_eq!(after.events.len(), events_before, "nothing journaled");
        assert!(matches!(after.status, RunStatus::Failed { .. }));
    }
}

#[test]
fn a_since_beyond_the_calendar_is_a_usage_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let out = xorbctl_in(
        &dir.path().join("state"),
        &["audit", "verify", "--since", "99999999999999d"],
    );
    assert_bad_input(&out, &["--since \"99999999999999d\""]);
}

/// On a real stack: the bad policy is refused before the api moves, and no run is journaled.
#[test]
fn rollback_with_an_out_of_range_policy_changes_nothing_on_the_stack() {
    let st = Stack::up(RC1, false);
    let dir = tempfile::tempdir().unwrap();
    let p = policy_with(
        dir.path(),
        "rollout_secs = 300",
        "rollout_secs = 18446744073709551615",
    );
    let out = st.xorbctl(&[
        "rollback",
        "--from",
        RC1,
        "--to",
        STABLE,
        "--yes",
        "--runbook",
        p.to_str().unwrap(),
    ]);
    assert_bad_input(&out, &["timeouts.rollout_secs = 18446744073709551615"]);
    let status = st.status();
    for s in status["services"].as_array().unwrap() {
        assert_eq!(s["reported_release"], RC1, "{s:#}");
    }
    let runs = st.xorbctl(&["runs", "--output", "json"]);
    assert!(runs.status.success(), "{}", text(&runs));
    let listed: serde_json::Value = serde_json::from_slice(&runs.stdout).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed:#}");
}
