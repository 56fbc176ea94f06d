//! `plan` and `rollback` on the real local stack: the full rollback, refusals, `--only`, and crashes at every
//! journal boundary.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::process::Output;

use serde_json::Value;

use crate::common::*;

const RC1: &str = "v2025.08-rc1";
const STABLE: &str = "v2025.07-stable";

fn rollback(st: &Stack, extra: &[&str]) -> Output {
    let mut args = vec!["rollback", "--from", RC1, "--to", STABLE, "--yes"];
    args.extend_from_slice(extra);
    st.xorbctl(&args)
}

/// How many times each role was started on `release` (each start logs one "starting" line).
fn starts(st: &Stack, release: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for role in [
        "api",
        "orchestrator",
        "control-plane",
        "worker",
        "scheduler",
    ] {
        let log = std::fs::read_to_string(st.dir.join(format!("services/{role}/{role}.log")))
            .unwrap_or_default();
        let n = log
            .lines()
            .filter(|l| {
                l.contains("starting role=") && l.contains(&format!("release=\"{release}\""))
            })
            .count();
        out.insert(role.to_string(), n);
    }
    out
}

fn assert_on_stable(st: &Stack) {
    let status = st.status();
    let services = status["services"].as_array().unwrap();
    let names: Vec<&str> = services
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["api", "orchestrator", "worker", "scheduler"],
        "{status:#}"
    );
    for s in services {
        assert_eq!(s["reported_release"], STABLE, "{s:#}");
        assert_eq!(s["healthy"], true, "{s:#}");
    }
    assert_eq!(status["release"], STABLE);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_rollback_ends_on_stable_with_every_phase_5_check_green() {
    // Scraped every second: the short monitor below judges `up` on the scrapes inside its 4 s, and the
    // releases' 15 s interval leaves a 4 s window without any scrape about a third of the time.
    let st = Stack::up_with(Stack::new_dir(), RC1, true, &["--scrape-interval", "1s"]);
    let out = rollback(&st, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for phase in [
        "Phase 1 of 5",
        "Phase 2 of 5",
        "Phase 5 of 5",
        "Rollback completed successfully",
    ] {
        assert!(
            stdout.contains(phase),
            "{phase} missing from the output:\n{stdout}"
        );
    }
    assert_on_stable(&st);
    let run = last_run(&st);
    assert_eq!(run["status"]["state"], "succeeded", "{:#}", run["status"]);
    let checks: Vec<&Value> = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["spec"]["phase"] == 5 || s["spec"]["id"].as_str().unwrap().starts_with("5."))
        .collect();
    assert_eq!(
        checks.len(),
        11,
        "the nine checks, the loss assessment and the platform audit log"
    );
    // Stable's performance was never measured on this stack: the check says how to, and proves nothing.
    let perf = checks
        .iter()
        .find(|c| c["spec"]["id"] == "5.check.performance")
        .expect("5.check.performance");
    assert_eq!(perf["state"], "skipped", "{perf:#}");
    assert!(
        perf["outcome"]["reason"]
            .as_str()
            .is_some_and(|d| d.contains("xorbctl perf --release v2025.07-stable")),
        "{perf:#}"
    );
    let monitoring = checks
        .iter()
        .find(|c| c["spec"]["id"] == "5.check.monitoring")
        .expect("5.check.monitoring");
    assert!(
        monitoring["outcome"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("Prometheus scrapes all") && d.contains("rule groups")),
        "{monitoring:#}"
    );
    let report = text(&st.xorbctl(&["report", "latest", "--format", "md"]));
    assert!(
        report.contains("[x] Monitoring restored"),
        "the check proves the checklist item:\n{report}"
    );
    assert!(
        report.contains("[ ] Performance baselines met"),
        "a skipped check proves nothing:\n{report}"
    );

    // A short monitor after the run: stable never ran before it on this stack, so there is no baseline and
    // nothing but the up gate can judge. INCONCLUSIVE (exit 10), and the run's report carries the verdicts.
    let out = st.xorbctl(&[
        "monitor",
        "--run",
        "latest",
        "--baseline",
        STABLE,
        "--duration",
        "4s",
        "--step",
        "2s",
        "--report-interval",
        "2s",
    ]);
    assert_eq!(out.status.code(), Some(10), "{}", text(&out));
    assert!(
        text(&out).contains("only the up gate can judge"),
        "{}",
        text(&out)
    );
    let report = text(&st.xorbctl(&["report", "latest", "--format", "md"]));
    assert!(report.contains("## Post-rollback monitoring"), "{report}");
    assert!(report.contains("| `up` | ✓ PASS |"), "{report}");
    assert!(
        report.contains("| `latency_p99` | ? INCONCLUSIVE |"),
        "{report}"
    );
    let page = text(&st.xorbctl(&["report", "latest", "--format", "html"]));
    assert!(
        page.contains("<section id=\"monitors\">"),
        "the HTML report draws them"
    );
    for c in checks {
        assert!(
            matches!(c["state"].as_str(), Some("succeeded" | "skipped")),
            "{c:#}"
        );
    }
    // The runbook's log file, one timestamped line per action.
    let run_dir = std::path::PathBuf::from(run["run_dir"].as_str().unwrap());
    let log = std::fs::read_dir(&run_dir)
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().starts_with("rollback-"))
        .unwrap();
    let log = std::fs::read_to_string(log.path()).unwrap();
    assert!(log.lines().all(|l| l.starts_with("[20")), "{log}");
    // Captured secrets are encrypted, never in the clear.
    let captured = std::fs::read(run_dir.join("capture/secrets.json.age")).unwrap();
    assert!(captured.starts_with(b"age-encryption.org/v1"));
    let db_pw = st.secret("db-password");
    for entry in walk(&run_dir) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(&db_pw),
            "{} holds the database password",
            entry.display()
        );
    }
    // Every action is in the signed audit trail, which verifies; one changed byte is found and named.
    let verify = st.xorbctl(&["audit", "verify"]);
    assert!(verify.status.success(), "{}", text(&verify));
    let audit_path = st.dir.join("audit/audit.jsonl");
    let audit = std::fs::read_to_string(&audit_path).unwrap();
    assert!(audit.lines().count() > 30 && audit.contains("rollback.step_finished"));
    assert!(!audit.contains(&db_pw) && !String::from_utf8_lossy(&out.stdout).contains(&db_pw));
    let tampered = audit.replacen("2.api.image", "2.api.imagE", 1);
    std::fs::write(&audit_path, tampered).unwrap();
    let bad = st.xorbctl(&["audit", "verify"]);
    assert_eq!(bad.status.code(), Some(8), "{}", text(&bad));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("line"),
        "{}",
        text(&bad)
    );
    std::fs::write(&audit_path, audit).unwrap();
    let report = st.xorbctl(&["report", "latest"]);
    assert!(String::from_utf8_lossy(&report.stdout).contains("ROLLBACK COMPLETE"));
    // Now on stable: rolling back "from rc1" again is refused.
    let again = rollback(&st, &[]);
    assert_eq!(again.status.code(), Some(3), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stderr)
            .contains("is on v2025.07-stable, not on v2025.08-rc1"),
        "{}",
        text(&again)
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().filter_map(Result::ok) {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p))
        } else {
            out.push(p)
        }
    }
    out
}

/// Everything observable about a stack, for "plan changes nothing".
fn observable(st: &Stack) -> (Value, String, Vec<String>) {
    let mut status = st.status();
    for s in status["services"].as_array_mut().unwrap() {
        s["health"] = Value::Null; // carries uptimes
    }
    status["prometheus_targets"] = Value::Null; // scrape health changes on its own
    status["redis_databases"] = Value::Null; // the control plane's cache keys expire on their own (TTL)
    let mut files: Vec<String> = walk(&st.dir)
        .into_iter()
        .map(|p| p.strip_prefix(&st.dir).unwrap().display().to_string())
        .filter(|p| {
            !p.starts_with("postgres/")
                && !p.starts_with("nats/")
                && !p.starts_with("prometheus/")
                && !p.ends_with(".log")
                && !p.starts_with("redis/")
        })
        .collect();
    files.sort();
    (
        status,
        std::fs::read_to_string(st.dir.join("stack.json")).unwrap(),
        files,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_changes_nothing() {
    // Its own stack: on the shared one, other tests change Redis and the database while this one compares.
    let own = Stack::up(RC1, true);
    let st = &own;
    let before = observable(st);
    let out = st.xorbctl(&["plan", "--from", RC1, "--to", STABLE, "--output", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<&str> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"2.control-plane.remove") && ids.contains(&"2.api.image"),
        "{ids:?}"
    );
    let api = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "2.api.image")
        .unwrap();
    assert_eq!(api["changes"][0]["before"], "xorb/api:v2025.08-rc1");
    assert_eq!(api["changes"][0]["after"], "xorb/api:v2025.07-stable");
    let text_out = st.xorbctl(&["plan", "--from", RC1, "--to", STABLE]);
    assert!(String::from_utf8_lossy(&text_out.stdout).contains("TENANT_ISOLATION_MODE"));
    assert_eq!(observable(st), before, "plan must not change anything");
    assert!(!st.dir.join("journal.sqlite").exists() && !st.dir.join("runs").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_from_an_unknown_release_and_a_second_rollback_are_refused_before_anything_happens()
{
    let st = rc1();
    let before = observable(st);
    let wrong = st.xorbctl(&["rollback", "--from", STABLE, "--to", RC1, "--yes"]);
    assert_eq!(wrong.status.code(), Some(3), "{}", text(&wrong));
    let unknown = st.xorbctl(&["rollback", "--from", RC1, "--to", "v2024.01-gone", "--yes"]);
    assert_eq!(unknown.status.code(), Some(2), "{}", text(&unknown));
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("not found"),
        "{}",
        text(&unknown)
    );
    let no_yes = st
        .cmd()
        .args(["rollback", "--from", RC1, "--to", STABLE])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        no_yes.status.code(),
        Some(2),
        "a closed stdin never waits: {}",
        text(&no_yes)
    );
    // Another rollback holds the stack's lock.
    let lock = xorb_engine::RollbackLock::acquire(&st.dir, Some("other-run")).unwrap();
    let second = rollback(st, &[]);
    assert_eq!(second.status.code(), Some(3), "{}", text(&second));
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("another rollback is in progress"),
        "{}",
        text(&second)
    );
    drop(lock);
    assert_eq!(observable(st).1, before.1, "stack.json untouched");
}

#[tokio::test(flavor = "multi_thread")]
async fn only_api_rolls_back_only_the_api() {
    let st = Stack::up(RC1, false);
    let pids_before = service_pids(&st);
    let out = rollback(&st, &["--only", "api"]);
    assert!(out.status.success(), "{}", text(&out));
    let status = st.status();
    for s in status["services"].as_array().unwrap() {
        let name = s["name"].as_str().unwrap();
        let want = if name == "api" { STABLE } else { RC1 };
        assert_eq!(s["reported_release"], want, "{name}");
        assert_eq!(s["healthy"], true, "{name}");
    }
    let pids_after = service_pids(&st);
    for (name, pid) in &pids_before {
        if name != "api" {
            assert_eq!(pids_after[name], *pid, "{name} was not touched");
        }
    }
    let info: Value = reqwest::get(format!("{}/api/v1/info", st.url("api")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["features"]["tenant_isolation_mode"], "basic");
}

/// Defect 6 of issue 11: `resume` of a run that already succeeded exited 3; nothing left to do is success. And
/// `resume` takes `--yes` as `rollback` does (it asks nothing: the run was confirmed when it started).
#[tokio::test(flavor = "multi_thread")]
async fn resuming_a_run_that_already_succeeded_exits_0_and_resume_takes_yes() {
    let st = Stack::up(RC1, false);
    let out = rollback(&st, &["--only", "api"]);
    assert!(out.status.success(), "{}", text(&out));
    let run = last_run(&st);
    let id = run["id"].as_str().unwrap();
    for args in [
        vec!["resume", "latest"],
        vec!["resume", id, "--yes"],
        vec!["resume", "--yes", "latest", "--output", "json"],
    ] {
        let out = st.xorbctl(&args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        if args.contains(&"json") {
            let v: Value = serde_json::from_str(&stdout).unwrap();
            assert_eq!(v["run_id"], id, "{v}");
            assert_eq!(v["status"]["state"], "succeeded", "{v}");
        } else {
            assert!(
                stdout.contains(&format!(
                    "Run {id} has already succeeded: nothing to resume"
                )),
                "{args:?}: {}",
                text(&out)
            );
        }
    }
    let after = last_run(&st);
    assert_eq!(after["status"], run["status"]);
    assert_eq!(after["events"], run["events"], "nothing was journaled");
    let _ = st.xorbctl(&["stack", "down"]);
}

/// Runs a rollback killed (SIGKILL, by the engine's own test hook) right after journal write `k`, then resumes it
/// until it ends. Returns false when the rollback finished before write `k` (k is past the last boundary).
fn crash_then_resume(k: usize) -> bool {
    let st = Stack::up(RC1, false);
    let out = st
        .cmd()
        .args(["rollback", "--from", RC1, "--to", STABLE, "--yes"])
        .env("XORB_CRASH_AFTER_JOURNAL_WRITES", k.to_string())
        .output()
        .unwrap();
    let crashed = out.status.signal() == Some(9);
    if !crashed {
        assert!(out.status.success(), "k={k}: {}", text(&out));
    } else {
        let resumed = st.xorbctl(&["resume", "latest"]);
        // Killed after the run's last write: it had finished, and resume says so without acting.
        let finished_before =
            String::from_utf8_lossy(&resumed.stderr).contains("has already succeeded");
        assert!(
            resumed.status.success() || finished_before,
            "k={k}: resume failed: {}",
            text(&resumed)
        );
    }
    assert_on_stable(&st);
    let run = last_run(&st);
    assert!(
        run["steps"].as_array().unwrap().iter().all(|s| matches!(
            s["state"].as_str(),
            Some("succeeded" | "skipped" | "already_done")
        )),
        "k={k}: {:#}",
        run["steps"]
    );
    // No side effect twice: each role started on stable exactly as often as in an uninterrupted run
    // (once for its image, once for the configuration), and the control plane never on stable.
    let want: BTreeMap<String, usize> = [
        ("api", 2),
        ("orchestrator", 2),
        ("control-plane", 0),
        ("worker", 2),
        ("scheduler", 2),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(starts(&st, STABLE), want, "k={k}");
    let down = st.xorbctl(&["stack", "down"]);
    assert!(down.status.success());
    let _ = std::fs::remove_dir_all(&st.dir);
    crashed
}

#[test]
fn killed_at_every_journal_boundary_and_resumed_ends_as_if_never_interrupted() {
    // Two at a time: each iteration has its own stack.
    let next = std::sync::atomic::AtomicUsize::new(1);
    let done = std::sync::atomic::AtomicBool::new(false);
    let crashes = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    let k = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if crash_then_resume(k) {
                        crashes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    } else {
                        done.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                }
            });
        }
    });
    let crashes = crashes.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        crashes >= 30,
        "a full rollback has many journal boundaries; crashed at {crashes}"
    );
    eprintln!("killed and resumed at {crashes} journal boundaries");
}

#[test]
fn killed_at_random_moments_inside_steps_and_resumed_ends_the_same() {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    for _ in 0..4 {
        let st = Stack::up(RC1, false);
        let mut child = st
            .cmd()
            .args(["rollback", "--from", RC1, "--to", STABLE, "--yes"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(rng.gen_range(50..1800))); // the random moment itself, not a synchronisation
        let _ = child.kill();
        let status = child.wait().unwrap();
        if !status.success() {
            let resumed = st.xorbctl(&["resume", "latest"]);
            // Killed before the run was journaled: no such run (2), or no journal at all yet (3).
            let nothing_to_resume = matches!(resumed.status.code(), Some(2 | 3));
            assert!(
                resumed.status.success() || nothing_to_resume,
                "resume failed: {}",
                text(&resumed)
            );
            if nothing_to_resume {
                // Nothing to resume; a new rollback must go through.
                let again = rollback(&st, &[]);
                assert!(again.status.success(), "{}", text(&again));
            }
        }
        assert_on_stable(&st);
        let s = starts(&st, STABLE);
        for role in ["api", "orchestrator", "worker", "scheduler"] {
            assert_eq!(s[role], 2, "{role} started on stable once per step: {s:?}");
        }
        st.xorbctl(&["stack", "down"]);
        let _ = std::fs::remove_dir_all(&st.dir);
    }
}

#[test]
fn a_failing_service_step_retries_runs_the_emergency_procedure_and_resumes_once_fixed() {
    let st = Stack::up(RC1, false);
    let wrapper = broken_image(&st, "worker", STABLE);
    let out = st
        .cmd()
        .args(["rollback", "--from", RC1, "--to", STABLE, "--yes"])
        .env("XORB_SVC_BIN", &wrapper)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(6), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("2.worker.image"),
        "the output names the step: {stdout}"
    );
    assert!(
        stdout.contains("resume"),
        "and says what to do next: {stdout}"
    );
    let run = last_run(&st);
    assert_eq!(
        run["status"]["state"], "emergency_stopped",
        "{:#}",
        run["status"]
    );
    let worker = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["spec"]["id"] == "2.worker.image")
        .unwrap();
    assert_eq!(worker["attempts"], 2, "the policy retried once: {worker:#}");
    // Minimal service: only the api still runs.
    let status = st.status();
    let running: Vec<&str> = status["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["running"] == true)
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(running, ["api"], "{status:#}");
    // The image is fixed: resume finishes the run and every service is back, on stable.
    let resumed = st.xorbctl(&["resume", "latest"]);
    assert!(resumed.status.success(), "{}", text(&resumed));
    assert_on_stable(&st);
    st.xorbctl(&["stack", "down"]);
}

/// Service name → pid, as stack.json records it.
fn service_pids(st: &Stack) -> BTreeMap<String, i64> {
    st.stack_json()["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["proc"]["pid"].as_i64().unwrap(),
            )
        })
        .collect()
}
