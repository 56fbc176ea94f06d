//! Issue #12, operations: a policy or plan that would pull the ground from under a running service, an
//! emergency procedure that must not make things worse, a resume over changed release files, and an approval
//! gate that a plain rollback must not sidestep.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

const RC1: &str = "v2025.08-rc1";
const STABLE: &str = "v2025.07-stable";

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

/// The ids of the runs of the stack, most recent first.
fn run_ids(st: &Stack) -> Vec<String> {
    let out = st.xorbctl(&["runs", "--output", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["id"].as_str().map(str::to_string))
        .collect()
}

fn running(st: &Stack) -> Vec<String> {
    st.status()["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["running"] == true)
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

fn service_pid(st: &Stack, name: &str) -> i64 {
    st.stack_json()["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap()["proc"]["pid"]
        .as_i64()
        .unwrap()
}

#[test]
fn a_service_order_that_leaves_out_a_service_or_a_plan_that_strands_one_is_refused_before_anything_runs()
 {
    let st = rc1();
    let work = tempfile::tempdir().unwrap();
    let embedded = std::fs::read_to_string(repo().join("runbooks/rollback.toml")).unwrap();
    let order =
        "service_order = [\"api\", \"orchestrator\", \"control-plane\", \"worker\", \"scheduler\"]";
    assert!(embedded.contains(order));
    for (name, replacement, missing) in [
        (
            "empty.toml",
            "service_order = []",
            "api, orchestrator, control-plane, worker, scheduler",
        ),
        (
            "partial.toml",
            "service_order = [\"api\"]",
            "orchestrator, control-plane, worker, scheduler",
        ),
    ] {
        let file = work.path().join(name);
        std::fs::write(&file, embedded.replace(order, replacement)).unwrap();
        let out = st.xorbctl(&[
            "rollback",
            "--from",
            RC1,
            "--to",
            STABLE,
            "--yes",
            "--runbook",
            file.to_str().unwrap(),
        ]);
        assert_eq!(code(&out), 2, "{}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(file.to_str().unwrap()) && err.contains(&format!("leaves out {missing}")),
            "names the file and the services: {}",
            text(&out)
        );
    }
    assert!(run_ids(st).is_empty(), "a refused policy journals no run");
    // Phase 4 alone while rc1's services run would remove their streams: the planner refuses, naming both.
    let out = st.xorbctl(&[
        "plan",
        "--from",
        RC1,
        "--to",
        STABLE,
        "--only",
        "infrastructure",
    ]);
    assert_eq!(code(&out), 3, "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("4.nats.apply")
            && err.contains("still runs v2025.08-rc1")
            && err.contains("xorb-tenant-streams"),
        "{}",
        text(&out)
    );
    assert_eq!(st.status()["release"], RC1);
}

/// A process this test started by hand: killed when the test ends, however it ends (the stack's watchdog only
/// knows the stack's own processes).
struct Stray(std::process::Child);

impl Drop for Stray {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts, by hand, an rc1 `role` beside the stack's own (same environment, its own port), as a stray
/// deployment would; returns it once it answers healthy.
async fn stray_rc1(st: &Stack, role: &str) -> Stray {
    let pid = service_pid(st, role);
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new(svc_bin());
    cmd.env_clear();
    for kv in environ.split(|b| *b == 0) {
        if let Some((k, v)) = String::from_utf8_lossy(kv).split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.env("XORB_LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .args(["--role", role, "--release", RC1])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = Stray(cmd.spawn().unwrap());
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = http
            .get(format!("http://127.0.0.1:{port}/api/v1/health"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            return child;
        }
        assert!(
            Instant::now() < deadline,
            "the stray rc1 {role} never became healthy"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_downgrade_does_not_run_while_a_service_that_cannot_run_on_its_result_is_up() {
    let st = Stack::up(RC1, false);
    let g8 = "3.g8.downgrade.8d9a2c3";
    // Stop the run right before the first downgrade (phase 2 done: everything on stable, as planned)…
    let out = st
        .cmd()
        .args(["rollback", "--from", RC1, "--to", STABLE, "--yes"])
        .env("XORB_CRASH_BEFORE_STEP", g8)
        .output()
        .unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(9),
        "{}",
        text(&out)
    );
    // …then an rc1 worker shows up again, which runs only on 8d9a2c3.
    let stray = stray_rc1(&st, "worker").await;
    let out = st.xorbctl(&["resume", "latest"]);
    assert_eq!(code(&out), 6, "{}", text(&out));
    let all = text(&out);
    assert!(
        all.contains(g8)
            && all.contains(&format!("worker (pid {}) still runs {RC1}", stray.0.id()))
            && all.contains("runs only on schema revision(s) 8d9a2c3"),
        "names the step, the service and why: {all}"
    );
    assert_eq!(
        st.status()["schema_revision"],
        "8d9a2c3",
        "nothing was done"
    );
    // The stray gone, the same run carries on to the end.
    drop(stray);
    let out = st.xorbctl(&["resume", "latest"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(st.status()["schema_revision"], "1a5be11");
    st.xorbctl(&["stack", "down"]);
}

#[test]
fn with_the_api_down_the_emergency_stops_nothing_and_a_resume_over_changed_release_files_is_refused()
 {
    let st = Stack::up(RC1, false);
    // The releases as the operator's checkout has them: a copy this test may edit.
    let (work, releases) = releases_copy();
    let broken = broken_image_in(&work.path().join("bin"), "api", STABLE);
    let out = st
        .cmd()
        .args(["rollback", "--from", RC1, "--to", STABLE, "--yes"])
        .env("XORB_RELEASES", &releases)
        .env("XORB_SVC_BIN", &broken)
        .output()
        .unwrap();
    assert_eq!(code(&out), 6, "{}", text(&out));
    let run = last_run(&st);
    let id = run["id"].as_str().unwrap().to_string();
    assert_eq!(
        run["status"]["state"], "emergency_stopped",
        "{:#}",
        run["status"]
    );
    // The api is down; the four other roles still run and serve: the procedure took nothing more away.
    assert_eq!(
        running(&st),
        ["orchestrator", "control-plane", "worker", "scheduler"],
        "{}",
        text(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("api is not running")
            && stdout.contains("nothing was stopped")
            && stdout.contains(&format!("orchestrator on {RC1} (healthy)"))
            && stdout.contains("not running: api"),
        "says what really runs: {stdout}"
    );
    assert!(!stdout.contains("api at one instance"), "{stdout}");

    // Someone "fixes" the release file; resuming the old plan would mix it with the new files: refused.
    let toml = releases.join(STABLE).join("release.toml");
    let mut text_now = std::fs::read_to_string(&toml).unwrap();
    text_now.push_str("# api image fixed\n");
    std::fs::write(&toml, text_now).unwrap();
    let out = st
        .cmd()
        .args(["resume", &id])
        .env("XORB_RELEASES", &releases)
        .output()
        .unwrap();
    assert_eq!(code(&out), 3, "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{STABLE}/release.toml"))
            && err.contains(&format!("xorbctl abort {id} --by NAME")),
        "{}",
        text(&out)
    );
    assert_eq!(last_run(&st)["status"]["state"], "emergency_stopped");
    // Given up on the record, a new run plans from the files as they are and finishes.
    let out = st
        .cmd()
        .args(["abort", &id, "--by", "carol"])
        .env("XORB_RELEASES", &releases)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    let audit = std::fs::read_to_string(st.dir.join("audit/audit.jsonl")).unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"run.abort\"") && l.contains("carol") && l.contains(&id)),
        "the abort is on the audit trail"
    );
    let out = st
        .cmd()
        .args(["rollback", "--from", RC1, "--to", STABLE, "--yes"])
        .env("XORB_RELEASES", &releases)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(st.status()["release"], STABLE);
    st.xorbctl(&["stack", "down"]);
}

#[test]
fn a_run_waiting_at_its_gate_cannot_be_sidestepped_by_a_weaker_gate_until_it_is_aborted_on_the_record()
 {
    let st = Stack::up(RC1, false);
    let only_api = [
        "rollback", "--from", RC1, "--to", STABLE, "--only", "api", "--yes",
    ];
    let with = |extra: &[&str]| {
        let mut args = only_api.to_vec();
        args.extend_from_slice(extra);
        st.xorbctl(&args)
    };
    let out = with(&["--severity", "P1", "--as", "alice"]);
    assert_eq!(code(&out), 9, "{}", text(&out));
    let waiting = run_ids(&st).remove(0);
    let api_before = service_pid(&st, "api");
    for extra in [
        vec![],
        vec![
            "--severity",
            "P0",
            "--as",
            "alice",
            "--approve",
            "alice:on-call-engineer",
        ],
    ] {
        let out = with(&extra);
        assert_eq!(code(&out), 3, "{extra:?}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("run {waiting} waits at its P1 approval gate"))
                && err.contains(&format!("xorbctl abort {waiting} --by NAME"))
                && err.contains("--severity P1"),
            "{extra:?}: {}",
            text(&out)
        );
    }
    assert_eq!(
        run_ids(&st),
        std::slice::from_ref(&waiting),
        "the refusals journaled nothing"
    );
    assert_eq!(service_pid(&st, "api"), api_before, "nothing acted");
    // Aborted on the record, a plain run may go.
    let out = st.xorbctl(&["abort", &waiting, "--by", "bob"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let audit = std::fs::read_to_string(st.dir.join("audit/audit.jsonl")).unwrap();
    assert!(
        audit.lines().any(|l| l.contains("\"run.abort\"")
            && l.contains("bob")
            && l.contains("waiting_for_approval")),
        "{audit}"
    );
    let out = with(&[]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_ne!(service_pid(&st, "api"), api_before);
    st.xorbctl(&["stack", "down"]);
}
