//! `xorbctl perf` and `load`, and phase 5's `performance` check (issue #13, item 3) on a stack of its own: a
//! baseline is kept only for the release the stack runs; the check replays its load and passes on the same
//! stack, and fails, with both figures, when the api stalls for a second during it (SIGSTOP, then SIGCONT).

use crate::common::*;
use serde_json::Value;
use std::process::Command;
use std::time::Duration;
use xorb_model::release::Release;

const STABLE: &str = "v2025.07-stable";

fn json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(out)))
}

fn signal(sig: &str, pid: &str) {
    let s = Command::new("kill").args([sig, pid]).status().unwrap();
    assert!(s.success(), "kill {sig} {pid}");
}

#[tokio::test(flavor = "multi_thread")]
async fn perf_keeps_a_baseline_and_phase_5_fails_a_stalled_api_against_it() {
    let st = Stack::up(STABLE, false);
    let kept = st.dir.join("perf").join(format!("{STABLE}.json"));

    // Refusals before anything is sent: another release (3), numbers out of range and unknown releases (2).
    for (args, code, says) in [
        (
            &["perf", "--release", "v2025.08-rc1"][..],
            3,
            "runs v2025.07-stable, not v2025.08-rc1",
        ),
        (&["perf", "--release", "v9"][..], 2, "v9"),
        (
            &["load", "--rate", "0"][..],
            2,
            "--rate = 0 is out of range",
        ),
        (&["load", "--duration", "2 fortnights"][..], 2, "--duration"),
        (&["load", "--duration", "2h"][..], 2, "from 1s to 1h"),
    ] {
        let out = st.xorbctl(args);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(says), "{args:?}: {}", text(&out));
    }
    assert!(!kept.exists());

    // `load` sends what it says and keeps nothing.
    let out = st.xorbctl(&[
        "--output",
        "json",
        "load",
        "--rate",
        "20",
        "--duration",
        "2s",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let l = json(&out);
    assert_eq!(l["figures"]["due"], 40, "{l:#}");
    assert_eq!(l["figures"]["ok"], 40, "{l:#}");
    assert_eq!(l["baseline"], Value::Null);
    assert!(!kept.exists());

    // `perf` keeps the figures, owner-only, and says where.
    let out = st.xorbctl(&[
        "perf",
        "--release",
        STABLE,
        "--rate",
        "20",
        "--duration",
        "3s",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("Kept as the performance baseline of v2025.07-stable"),
        "{}",
        text(&out)
    );
    let b: Value = serde_json::from_slice(&std::fs::read(&kept).unwrap()).unwrap();
    assert_eq!(b["release"], STABLE);
    assert_eq!(b["figures"]["due"], 60);
    assert_eq!(b["figures"]["rate"], 20.0);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&kept).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // The check replays the baseline's load: the same healthy stack passes.
    let releases_root = repo().join("releases");
    let runner = xorb_local::target::runner(
        &st.dir,
        xorb_local::stack::Paths {
            releases_root: releases_root.clone(),
            venv: venv(),
            svc_bin: svc_bin(),
        },
        Release::load_named(&releases_root, STABLE).unwrap(),
    );
    let scratch = st.dir.join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let detail = runner
        .run_check("performance", &scratch)
        .await
        .unwrap_or_else(|e| panic!("the same stack fails its own baseline: {e}"));
    assert!(detail.contains("within the limit"), "{detail}");
    let rec: Value =
        serde_json::from_slice(&std::fs::read(scratch.join("performance.json")).unwrap()).unwrap();
    assert_eq!(rec["measured"]["figures"]["due"], 60, "{rec:#}");
    assert_eq!(rec["judgement"]["passed"], true, "{rec:#}");

    // A one-second stall of the api during the check: every request due in that second waits for it, and the
    // corrected p99 says so.
    let pid = api_pid(&st).to_string();
    let stall = {
        let pid = pid.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1000)).await;
            signal("-STOP", &pid);
            tokio::time::sleep(Duration::from_millis(1000)).await;
            signal("-CONT", &pid);
        })
    };
    let res = runner.run_check("performance", &scratch).await;
    stall.await.unwrap();
    let e = res.expect_err("a stalled api passed its performance baseline");
    assert!(
        e.contains("slower than v2025.07-stable's baseline") && e.contains("OVER the limit"),
        "{e}"
    );
    let rec: Value =
        serde_json::from_slice(&std::fs::read(scratch.join("performance.json")).unwrap()).unwrap();
    let p99 = rec["judgement"]["p99_ms"]["now"].as_f64().unwrap();
    assert!(p99 > 700.0, "the stall is missing from the p99: {rec:#}");

    // A baseline that does not parse is an error that names the file, not a skipped check.
    std::fs::write(&kept, "{}").unwrap();
    let e = runner.run_check("performance", &scratch).await.unwrap_err();
    assert!(
        e.contains(&kept.display().to_string()) && e.contains("xorbctl perf --release"),
        "{e}"
    );
}
