//! Governance on real runs: the approval gate of each severity, `xorbctl approve`, expiry, self-approval,
//! checklists ticked by steps and by people, the release repository's tag, `xorbctl assess` against a live stack,
//! and the audit trail of all of it (tampering with any single entry is caught by `xorbctl audit verify`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::common::*;

const RC1: &str = "v2025.08-rc1";
const STABLE: &str = "v2025.07-stable";

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn rollback(st: &Stack, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = st.cmd();
    c.args([
        "rollback", "--from", RC1, "--to", STABLE, "--only", "api", "--yes",
    ])
    .args(extra);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn show(st: &Stack, run: &str) -> Value {
    let out = st.xorbctl(&["show", run, "--output", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn runs(st: &Stack) -> Vec<Value> {
    let out = st.xorbctl(&["runs", "--output", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", text(&out));
    stdout(&out).trim().to_string()
}

/// A release repository with stable and rc1 tagged (rc1 on top), and a bare remote `origin` on disk.
/// Returns (repo, remote, stable's commit).
fn release_repo(root: &Path, tag_stable: bool) -> (PathBuf, PathBuf, String) {
    let repo = root.join("release");
    let remote = root.join("remote.git");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("RELEASE"), STABLE).unwrap();
    git(&repo, &["add", "RELEASE"]);
    git(&repo, &["commit", "-q", "-m", "stable"]);
    let stable = git(&repo, &["rev-parse", "HEAD"]);
    if tag_stable {
        git(&repo, &["tag", STABLE]);
    }
    std::fs::write(repo.join("RELEASE"), RC1).unwrap();
    git(&repo, &["commit", "-q", "-am", "rc1"]);
    git(&repo, &["tag", RC1]);
    git(root, &["init", "-q", "--bare", "remote.git"]);
    git(
        &repo,
        &["remote", "add", "origin", remote.to_str().unwrap()],
    );
    (repo, remote, stable)
}

/// Replaces what differs from one run to the next (run ids, times, digits) so a message can be snapshotted.
fn stable_text(s: &str, run: Option<&str>) -> String {
    let s = match run {
        Some(r) => s.replace(r, "RUN"),
        None => s.to_string(),
    };
    let mut out = String::new();
    let mut in_digits = false;
    for c in s.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('N');
            }
            in_digits = true;
        } else {
            in_digits = false;
            out.push(c);
        }
    }
    out
}

fn rfc3339(offset: chrono::Duration) -> String {
    (chrono::Utc::now() + offset).to_rfc3339()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_p2_rollback_waits_at_its_gate_until_an_engineering_manager_approves_then_tags_the_release()
 {
    let st = Stack::up(RC1, false);
    let work = tempfile::tempdir().unwrap();
    // bob may approve as an engineering manager here: so that self-approval, not a missing role, is what refuses him.
    let ops = work.path().join("operators.toml");
    std::fs::write(
        &ops,
        xorb_governance_operators().replace(
            "[operators.bob]\nroles = [\"on-call-engineer\", \"team-lead\"]",
            "[operators.bob]\nroles = [\"on-call-engineer\", \"team-lead\", \"engineering-manager\"]",
        ),
    )
    .unwrap();
    let ops_env = ("XORB_OPERATORS", ops.to_str().unwrap());
    let (repo, remote, stable_commit) = release_repo(work.path(), true);
    let repo_s = repo.to_str().unwrap();
    let api_before = api_pid(&st);

    // P1 cannot be approved on the rollback's command line: refused before anything is journaled.
    let out = rollback(
        &st,
        &["--severity", "P1", "--approve", "bob:team-lead"],
        &[],
    );
    assert_eq!(code(&out), 3, "{}", text(&out));
    insta::assert_snapshot!(
        "p1_command_line_approval_refused",
        stable_text(&stderr(&out), None)
    );
    // A release repository without the target release's tag is refused before anything is journaled too.
    let (bad_repo, _, _) = release_repo(&work.path().join("untagged"), false);
    let out = rollback(
        &st,
        &[
            "--severity",
            "P2",
            "--release-repo",
            bad_repo.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code(&out), 3, "{}", text(&out));
    assert!(
        stderr(&out).contains(&format!("has no tag {STABLE}")),
        "{}",
        text(&out)
    );
    assert!(runs(&st).is_empty(), "refusals journal no run");

    // P2 with nobody's approval: the run is journaled, waits at its gate, exit 9, nothing acted.
    let out = rollback(
        &st,
        &[
            "--severity",
            "P2",
            "--as",
            "bob",
            "--release-repo",
            repo_s,
            "--push",
            "origin",
        ],
        &[ops_env],
    );
    assert_eq!(code(&out), 9, "{}", text(&out));
    let listed = runs(&st);
    assert_eq!(listed.len(), 1);
    let run = listed[0]["id"].as_str().unwrap().to_string();
    let rec = show(&st, &run);
    assert!(
        rec["status"].to_string().contains("waiting_for_approval"),
        "{rec:#}"
    );
    assert!(
        rec["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["state"] == "pending"),
        "no step acted: {rec:#}"
    );
    assert_eq!(api_pid(&st), api_before, "the api was not touched");

    // The initiator may not approve his own P2 rollback, even holding the role.
    let out = st
        .cmd()
        .args([
            "approve",
            &run,
            "--as",
            "bob",
            "--role",
            "engineering-manager",
            "--reason",
            "mine",
        ])
        .env(ops_env.0, ops_env.1)
        .output()
        .unwrap();
    assert_eq!(code(&out), 3, "{}", text(&out));
    insta::assert_snapshot!(
        "p2_self_approval_refused",
        stable_text(&stderr(&out), Some(&run))
    );

    // An engineering manager's approval given three hours ago (P2's decision time is 2h) no longer counts.
    let three_hours_ago = rfc3339(chrono::Duration::hours(-3));
    let out = st
        .cmd()
        .args([
            "approve",
            &run,
            "--as",
            "carol",
            "--role",
            "engineering-manager",
            "--reason",
            "an old decision",
        ])
        .env(ops_env.0, ops_env.1)
        .env("XORB_NOW", &three_hours_ago)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    let out = st
        .cmd()
        .args(["resume", &run])
        .env(ops_env.0, ops_env.1)
        .output()
        .unwrap();
    assert_eq!(code(&out), 9, "{}", text(&out));
    assert!(stdout(&out).contains("expired: carol"), "{}", text(&out));
    assert_eq!(
        api_pid(&st),
        api_before,
        "an expired approval did not let the run act"
    );

    // An on-call engineer ranks too low for P2: still waiting.
    let out = st
        .cmd()
        .args([
            "approve",
            &run,
            "--as",
            "alice",
            "--role",
            "on-call-engineer",
            "--reason",
            "p99 doubled",
        ])
        .env(ops_env.0, ops_env.1)
        .output()
        .unwrap();
    assert_eq!(code(&out), 9, "{}", text(&out));
    assert!(
        stdout(&out).contains("ranked too low: alice as on-call-engineer"),
        "{}",
        text(&out)
    );
    assert_eq!(api_pid(&st), api_before);

    // An engineering manager, now: the gate opens and the run goes on to the end.
    let out = st
        .cmd()
        .args([
            "approve",
            &run,
            "--as",
            "carol",
            "--role",
            "engineering-manager",
            "--reason",
            "error rate tripled since the release",
            "--resume",
        ])
        .env(ops_env.0, ops_env.1)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    let api = st.status()["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "api")
        .unwrap()
        .clone();
    assert_eq!(api["reported_release"], STABLE, "{api:#}");

    // The tag: annotated, on stable's commit, naming the run, pushed to the bare remote.
    let tag = "v2025.08-rollback";
    assert_eq!(
        git(&repo, &["rev-parse", &format!("{tag}^{{commit}}")]),
        stable_commit
    );
    assert_eq!(git(&repo, &["cat-file", "-t", tag]), "tag", "annotated");
    assert!(git(&repo, &["tag", "-l", "--format=%(contents)", tag]).contains(&run));
    assert_eq!(
        git(&remote, &["rev-parse", &format!("{tag}^{{commit}}")]),
        stable_commit
    );

    // Checklists: the steps ticked theirs; a person confirms one; a proved item cannot be confirmed by hand.
    let out = st.xorbctl(&["check", &run, "pre.maintenance-window", "--by", "dave"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = st.xorbctl(&["check", &run, "post.services-healthy", "--by", "dave"]);
    assert_eq!(code(&out), 3, "{}", text(&out));
    let out = st.xorbctl(&["check", &run, "no.such-item", "--by", "dave"]);
    assert_eq!(code(&out), 2, "{}", text(&out));

    let rec = show(&st, &run);
    let gov = &rec["governance"];
    assert_eq!(gov["gate"]["severity"], "P2");
    assert_eq!(gov["gate"]["initiator"], "bob");
    assert_eq!(gov["gate"]["opened_by"], "carol as engineering-manager");
    let approvals: Vec<(String, String, String)> = gov["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["name"].as_str().unwrap().to_string(),
                a["role"].as_str().unwrap().to_string(),
                a["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        approvals,
        [
            (
                "carol".into(),
                "engineering-manager".into(),
                "an old decision".into()
            ),
            (
                "alice".into(),
                "on-call-engineer".into(),
                "p99 doubled".into()
            ),
            (
                "carol".into(),
                "engineering-manager".into(),
                "error rate tripled since the release".into()
            ),
        ],
        "the refused self-approval was not recorded"
    );
    let tick = |item: &str| -> (String, String) {
        let t = gov["ticks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["item"] == item)
            .unwrap_or_else(|| panic!("{item} not ticked: {gov:#}"));
        (
            t["by_kind"].as_str().unwrap().to_string(),
            t["by_name"].as_str().unwrap().to_string(),
        )
    };
    assert_eq!(tick("pre.approved"), ("proof".into(), "gate.open".into()));
    assert_eq!(
        tick("pre.state-captured"),
        ("proof".into(), "1.state.capture".into())
    );
    assert_eq!(
        tick("during.services-ordered"),
        ("proof".into(), "phase.2".into())
    );
    assert_eq!(
        tick("post.services-healthy"),
        ("proof".into(), "5.check.health".into())
    );
    assert_eq!(
        tick("pre.maintenance-window"),
        ("person".into(), "dave".into())
    );
    let open: Vec<&str> = gov["open_items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        open.contains(&"during.migrations"),
        "--only api does not roll the schema back: {open:?}"
    );
    assert!(open.contains(&"follow-up.rca"));

    // The report shows who approved, in which role, when and why, and each item's ticker.
    let out = st.xorbctl(&["report", &run]);
    assert!(out.status.success(), "{}", text(&out));
    let md = stdout(&out);
    for want in [
        "| carol | engineering-manager |",
        "error rate tripled since the release",
        "proved by 1.state.capture",
        "Maintenance window scheduled (if applicable) — confirmed by dave",
        "Post-rollback report generated — proved by report.written",
        "v2025.08-rollback →",
    ] {
        assert!(md.contains(want), "report lacks {want:?}:\n{md}");
    }

    // The audit trail holds the approvals, the refusal, the ticks and the tag, and verifies.
    let audit_path = st.dir.join("audit/audit.jsonl");
    let audit = std::fs::read_to_string(&audit_path).unwrap();
    for want in [
        "governance.gate",
        "governance.approval_refused",
        "error rate tripled since the release",
        "governance.gate_open",
        "governance.checklist_tick",
        "governance.release_tag",
    ] {
        assert!(audit.contains(want), "audit lacks {want}");
    }
    let out = st.xorbctl(&["audit", "verify"]);
    assert!(out.status.success(), "{}", text(&out));
    tampering_with_any_single_entry_is_named(&st.dir.join("audit"));
    st.xorbctl(&["stack", "down"]);
}

fn xorb_governance_operators() -> String {
    std::fs::read_to_string(repo().join("policies/operators.toml")).unwrap()
}

/// On a copy of a real run's audit directory: changing, deleting or swapping any single entry makes
/// `xorbctl audit verify` exit 8 and name the line where the chain breaks.
fn tampering_with_any_single_entry_is_named(audit_dir: &Path) {
    let lines: Vec<String> = std::fs::read_to_string(audit_dir.join("audit.jsonl"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert!(lines.len() > 20, "a real run writes many entries");
    let copy = tempfile::tempdir().unwrap();
    let dir = copy.path().join("audit");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        audit_dir.join("audit-signing-key.pub.pem"),
        dir.join("audit-signing-key.pub.pem"),
    )
    .unwrap();
    let verify = |variant: &[String]| -> (i32, String) {
        std::fs::write(dir.join("audit.jsonl"), variant.join("\n") + "\n").unwrap();
        let out = Command::new(xorbctl_bin())
            .args(["audit", "verify"])
            .env("XORB_STATE_DIR", copy.path())
            .output()
            .unwrap();
        (code(&out), stderr(&out))
    };
    assert_eq!(verify(&lines).0, 0, "the untouched copy verifies");
    for i in 0..lines.len() {
        let line = i + 1;
        // Changed: one character of the entry's content.
        let mut changed = lines.clone();
        changed[i] = changed[i].replacen("\"actor\":\"", "\"actor\":\"x", 1);
        assert_ne!(changed[i], lines[i]);
        let (c, msg) = verify(&changed);
        assert_eq!(c, 8, "changed line {line}: {msg}");
        assert!(
            msg.contains(&format!("line {line}")),
            "changed line {line}: {msg}"
        );
        // Swapped with the next one.
        if i + 1 < lines.len() {
            let mut swapped = lines.clone();
            swapped.swap(i, i + 1);
            let (c, msg) = verify(&swapped);
            assert_eq!(c, 8, "swapped lines {line},{}: {msg}", line + 1);
            assert!(
                msg.contains(&format!("line {line}")),
                "swapped line {line}: {msg}"
            );
        }
        // Deleted. The last entry's removal leaves a shorter, whole chain: only the checkpoint kept in the
        // journal shows it, which the copy does not have yet (tested after this loop).
        if i + 1 < lines.len() {
            let mut deleted = lines.clone();
            deleted.remove(i);
            let (c, msg) = verify(&deleted);
            assert_eq!(c, 8, "deleted line {line}: {msg}");
            assert!(
                msg.contains(&format!("entry seq {line} is")),
                "deleted line {line}: {msg}"
            );
        }
    }
    // The run recorded the trail's last entry in its journal; with that checkpoint, cutting the last entry off
    // is caught too.
    let state_dir = audit_dir.parent().unwrap();
    let (seq, hash) = xorb_engine::audit_checkpoint::latest(state_dir)
        .unwrap()
        .expect("every append records the trail's last entry in the journal");
    assert_eq!(
        seq as usize,
        lines.len(),
        "the checkpoint is the last entry"
    );
    xorb_engine::audit_checkpoint::record(copy.path(), seq, &hash).unwrap();
    assert_eq!(
        verify(&lines).0,
        0,
        "the untouched copy verifies against its checkpoint"
    );
    let mut cut = lines.clone();
    cut.pop();
    let (c, msg) = verify(&cut);
    assert_eq!(c, 8, "last entry deleted: {msg}");
    assert!(
        msg.contains(&seq.to_string()),
        "names the missing entry: {msg}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn assess_reports_no_rollback_on_a_healthy_stack_and_p0_once_a_service_is_down_for_5_minutes()
{
    let st = Stack::up(RC1, false);
    let assess = |env: &[(&str, &str)]| -> (i32, Value, String) {
        let mut c = st.cmd();
        c.args(["assess", "--output", "json"]);
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("assess json: {e}\n{}", text(&out)));
        (code(&out), v, text(&out))
    };
    let fired = |v: &Value| -> Vec<String> {
        v["triggers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["fired"] == true)
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect()
    };

    let (c, v, all) = assess(&[]);
    assert_eq!(c, 0, "{all}");
    assert_eq!(v["severity"], Value::Null, "{v:#}");
    assert!(fired(&v).is_empty(), "{v:#}");
    let text_out = st.xorbctl(&["assess"]);
    assert!(
        stdout(&text_out).contains("No rollback needed."),
        "{}",
        text(&text_out)
    );

    // Stop one role: kill the api's pid from stack.json.
    let pid = api_pid(&st);
    nix_kill(pid);
    let (c, v, all) = eventually(
        "assess to see the api down",
        Duration::from_secs(30),
        || {
            let r = assess(&[]);
            async move {
                (r.1["evidence"]["services_unavailable"]
                    .as_array()
                    .is_some_and(|a| !a.is_empty()))
                .then_some(r)
            }
        },
    )
    .await;
    // Down for seconds: the health check fails (P1, major functionality), not yet P0's "longer than 5m".
    assert_eq!(c, 5, "{all}");
    assert_eq!(v["severity"], "P1", "{v:#}");
    assert_eq!(v["approver_role"], "team-lead");
    assert!(
        fired(&v).contains(&"major-functionality-broken".to_string()),
        "{v:#}"
    );
    assert!(
        !fired(&v).contains(&"service-unavailable".to_string()),
        "{v:#}"
    );

    // Six minutes later by the governance clock: P0, immediate, the on-call engineer, with the evidence.
    let later = rfc3339(chrono::Duration::minutes(6));
    let (c, v, all) = assess(&[("XORB_NOW", &later)]);
    assert_eq!(c, 5, "{all}");
    assert_eq!(v["severity"], "P0", "{v:#}");
    assert_eq!(v["decision_time"], "immediate");
    assert_eq!(v["approver_role"], "on-call-engineer");
    let su = v["triggers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "service-unavailable")
        .unwrap();
    assert_eq!(su["fired"], true, "{v:#}");
    assert!(
        su["evidence"].as_str().unwrap().starts_with("api down 6m"),
        "{su:#}"
    );
    let out = st
        .cmd()
        .args(["assess"])
        .env("XORB_NOW", &later)
        .output()
        .unwrap();
    let lines: Vec<String> = stdout(&out)
        .lines()
        .filter(|l| {
            l.starts_with("severity")
                || l.starts_with("decision")
                || l.starts_with("approver")
                || l.starts_with("  [")
        })
        .map(|l| stable_text(l, None))
        // Whether Prometheus has latency figures yet depends on its scrapes; this line's verdict (not fired) stays.
        .map(|l| match l.split_once("performance-degradation:") {
            Some((head, _)) => {
                format!("{head}performance-degradation: (figures depend on scrape timing)")
            }
            None => l,
        })
        .collect();
    insta::assert_snapshot!("assess_one_service_down_6m", lines.join("\n"));

    // P0: the on-call engineer approves on the command line and the run acts at once.
    let out = rollback(
        &st,
        &[
            "--severity",
            "P0",
            "--as",
            "alice",
            "--approve",
            "alice:on-call-engineer",
            "--reason",
            "api down",
        ],
        &[],
    );
    assert_eq!(code(&out), 0, "{}", text(&out));
    let run = runs(&st)[0]["id"].as_str().unwrap().to_string();
    let gov = &show(&st, &run)["governance"];
    assert_eq!(
        gov["gate"]["opened_by"], "alice as on-call-engineer",
        "{gov:#}"
    );
    assert_eq!(gov["approvals"][0]["source"], "command-line");
    let (c, v, all) = assess(&[]);
    assert_eq!(c, 0, "after the rollback the stack is healthy again: {all}");
    assert_eq!(v["severity"], Value::Null);
    st.xorbctl(&["stack", "down"]);
}

fn nix_kill(pid: i64) {
    let out = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}
