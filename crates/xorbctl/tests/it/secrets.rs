//! Secrets by value: a planted configuration secret, a webhook URL's token and the stack's own database password
//! are really used by a real rollback, and appear (raw, base64 or URL-encoded) in nothing the tool writes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;

use crate::common::*;
use crate::notify::{Receiver, token};

const RC1: &str = "v2025.08-rc1";
const STABLE: &str = "v2025.07-stable";

/// The forms a secret takes on its way into a file: as is, base64 (with and without padding, URL-safe) and
/// percent-encoded.
fn forms(secret: &str) -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let pct: String = secret
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let mut v = vec![
        secret.to_string(),
        STANDARD.encode(secret),
        STANDARD_NO_PAD.encode(secret),
        URL_SAFE_NO_PAD.encode(secret),
        pct,
    ];
    v.sort();
    v.dedup();
    v
}

/// Names (never values) of the secrets found in `bytes`, in any of their forms.
pub fn leaks(bytes: &[u8], secrets: &[(&str, String)]) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let mut found = Vec::new();
    for (name, s) in secrets {
        for f in forms(s) {
            if text.contains(&f) {
                found.push(format!(
                    "{name} ({})",
                    if f == *s { "raw" } else { "encoded" }
                ));
            }
        }
    }
    found
}

/// A copy of the releases where stable's api configuration carries `XORB_PLANTED_SECRET_TOKEN=<planted>`.
/// `releases/` sits beside a link to the project's migrations, as the release manifests expect.
pub fn releases_with_planted_secret(planted: &str) -> (tempfile::TempDir, PathBuf) {
    let (tmp, root) = releases_copy();
    let api_env = root.join(STABLE).join("config/api.env");
    let mut text = std::fs::read_to_string(&api_env).unwrap();
    text.push_str(&format!("XORB_PLANTED_SECRET_TOKEN={planted}\n"));
    std::fs::write(&api_env, text).unwrap();
    (tmp, root)
}

/// Every process's command line right now (pid, arguments).
fn all_cmdlines() -> Vec<(u32, Vec<u8>)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(b) = std::fs::read(e.path().join("cmdline")) {
            v.push((pid, b));
        }
    }
    v
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_planted_secret_appears_in_nothing_the_tool_writes() {
    let st = Stack::up(RC1, false);
    let planted = format!("planted-{}", token());
    let (_tmp, releases) = releases_with_planted_secret(&planted);
    let hook = Receiver::start(200).await;
    let hook_token = token();
    let hook_url = format!("{}/services/T9/B9/{hook_token}", hook.base);
    let db_password = st.secret("db-password");
    let secrets = vec![
        ("planted config token", planted.clone()),
        ("webhook token", hook_token.clone()),
        ("webhook URL", hook_url.clone()),
        ("database password", db_password.clone()),
    ];

    // The rollback, while every process's arguments are sampled until it ends.
    let mut cmd = st.cmd();
    cmd.args([
        "rollback", "--from", RC1, "--to", STABLE, "--only", "api", "--yes",
    ])
    .env("XORB_RELEASES", &releases)
    .env("XORB_NOTIFY_URLS", &hook_url)
    .env("XORB_NOTIFY_GRACE_SECS", "5");
    let child = tokio::task::spawn_blocking(move || cmd.output().unwrap());
    let mut argv_leaks = BTreeSet::new();
    let mut samples = 0;
    while !child.is_finished() {
        for (pid, argv) in all_cmdlines() {
            for l in leaks(&argv, &secrets) {
                argv_leaks.insert(format!("pid {pid}: {l}"));
            }
        }
        samples += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = child.await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(samples > 0);

    // Sanity: each secret was really used, so its absence below means something.
    let api_pid = api_pid(&st);
    let environ = std::fs::read(format!("/proc/{api_pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        environ.contains(&format!("XORB_PLANTED_SECRET_TOKEN={planted}")),
        "the rolled-back api does not run with the planted secret"
    );
    assert!(
        environ.contains(&db_password),
        "the api runs without the database password"
    );
    let hits = hook.hits();
    assert!(!hits.is_empty() && hits.iter().all(|h| h.path.ends_with(&hook_token)));
    let shown: Value =
        serde_json::from_slice(&st.xorbctl(&["show", "latest", "--output", "json"]).stdout)
            .unwrap();
    let change = shown["plan"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["changes"].as_array().unwrap().iter())
        .find(|c| c["subject"] == "api/XORB_PLANTED_SECRET_TOKEN")
        .unwrap_or_else(|| panic!("the plan does not set the planted key: {:#}", shown["plan"]));
    assert_eq!(
        change["after"], "[REDACTED]",
        "journaled by key, not by value"
    );

    // Process arguments, sampled during the run and once more now (the whole stack runs).
    for (pid, argv) in all_cmdlines() {
        for l in leaks(&argv, &secrets) {
            argv_leaks.insert(format!("pid {pid}: {l}"));
        }
    }
    assert!(
        argv_leaks.is_empty(),
        "secrets in process arguments: {argv_leaks:?}"
    );

    let mut places: Vec<(String, Vec<u8>)> = vec![
        ("rollback stdout".into(), out.stdout.clone()),
        ("rollback stderr".into(), out.stderr.clone()),
        ("show --output json".into(), shown.to_string().into_bytes()),
    ];
    let run_dir = PathBuf::from(shown["run_dir"].as_str().unwrap());
    let logs: Vec<PathBuf> = files_under(&run_dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    assert_eq!(logs.len(), 1, "{logs:?}");
    places.push(("run log".into(), std::fs::read(&logs[0]).unwrap()));
    for format in ["md", "json", "html"] {
        let r = st.xorbctl(&["report", "latest", "--format", format]);
        assert!(r.status.success(), "{}", text(&r));
        assert!(r.stdout.len() > 200);
        places.push((format!("report {format}"), r.stdout));
    }
    // The dashboard's page and JSON endpoints (what a browser on this machine reads).
    {
        let dash = crate::html::Dashboard::start(&st);
        let run = shown["id"].as_str().unwrap();
        for path in [
            "/",
            "/api/latest",
            "/api/runs",
            &format!("/run/{run}"),
            &format!("/api/run/{run}"),
        ] {
            let (code, body) = dash.get(path).await;
            assert_eq!(code, 200, "dashboard {path}: {body}");
            places.push((format!("dashboard {path}"), body.into_bytes()));
        }
    }
    for h in &hits {
        places.push((
            format!("webhook body {:?}", h.id),
            h.body.clone().into_bytes(),
        ));
    }
    for f in files_under(&st.dir.join("audit")) {
        places.push((f.display().to_string(), std::fs::read(&f).unwrap()));
    }
    // The journal: the database file and its write-ahead log, before and after a checkpoint.
    let journal = st.dir.join("journal.sqlite");
    let wal = st.dir.join("journal.sqlite-wal");
    places.push((
        "journal -wal before checkpoint".into(),
        std::fs::read(&wal).unwrap_or_default(),
    ));
    {
        let c = rusqlite::Connection::open(&journal).unwrap();
        let _: (i64, i64, i64) = c
            .query_row("PRAGMA wal_checkpoint(FULL)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
    }
    places.push(("journal.sqlite".into(), std::fs::read(&journal).unwrap()));
    places.push((
        "journal -wal".into(),
        std::fs::read(&wal).unwrap_or_default(),
    ));
    assert!(
        places
            .iter()
            .any(|(n, b)| n == "journal.sqlite" && b.len() > 4096)
    );

    let mut found = Vec::new();
    for (name, bytes) in &places {
        for l in leaks(bytes, &secrets) {
            found.push(format!("{name}: {l}"));
        }
    }
    assert!(found.is_empty(), "secrets written out: {found:#?}");
    // The marker shows redaction happened where the planted value would have been.
    let md = &places.iter().find(|(n, _)| n == "report md").unwrap().1;
    assert!(String::from_utf8_lossy(md).contains("[REDACTED]"));
    let _ = st.xorbctl(&["stack", "down"]);
}

/// Defect 3 of issue 11: governance's audit entries went through a redactor of their own, built from the stack's
/// secrets only, so a configuration secret or a webhook URL in an approval's reason was appended in the clear,
/// where a run's entries hide them. Every command now builds its one redactor in one place.
#[tokio::test(flavor = "multi_thread")]
async fn governance_audit_entries_hide_what_run_entries_hide() {
    let st = Stack::up(RC1, false);
    let planted = format!("planted-{}", token());
    let (_tmp, releases) = releases_with_planted_secret(&planted);
    let hook = Receiver::start(200).await;
    let hook_token = token();
    let hook_url = format!("{}/services/T8/B8/{hook_token}", hook.base);
    let secrets = vec![
        ("planted config token", planted.clone()),
        ("webhook token", hook_token.clone()),
        ("webhook URL", hook_url.clone()),
    ];
    let run = |args: &[&str]| {
        let mut cmd = st.cmd();
        cmd.args(args)
            .env("XORB_RELEASES", &releases)
            .env("XORB_NOTIFY_URLS", &hook_url)
            .env("XORB_NOTIFY_GRACE_SECS", "2");
        async move {
            tokio::task::spawn_blocking(move || cmd.output().unwrap())
                .await
                .unwrap()
        }
    };
    // A P1 run waits at its gate (exit 9) before any step acts.
    let out = run(&[
        "rollback",
        "--from",
        RC1,
        "--to",
        STABLE,
        "--only",
        "api",
        "--yes",
        "--severity",
        "P1",
        "--as",
        "alice",
    ])
    .await;
    assert_eq!(out.status.code(), Some(9), "{}", text(&out));
    // An operator pastes what failed into the reason: the webhook and the configuration value.
    let reason = format!("webhook {hook_url} answered 500; the api runs with {planted}");
    let approved = run(&[
        "approve",
        "latest",
        "--as",
        "bob",
        "--role",
        "team-lead",
        "--reason",
        &reason,
    ])
    .await;
    assert_eq!(approved.status.code(), Some(0), "{}", text(&approved));
    let refused = run(&[
        "approve",
        "latest",
        "--as",
        "mallory",
        "--role",
        "team-lead",
        "--reason",
        &reason,
    ])
    .await;
    assert_eq!(refused.status.code(), Some(3), "{}", text(&refused));

    let trail = std::fs::read_to_string(st.dir.join("audit/audit.jsonl")).unwrap();
    let governance: Vec<&str> = trail
        .lines()
        .filter(|l| l.contains("\"governance.approval"))
        .collect();
    assert_eq!(governance.len(), 2, "an approval and a refusal: {trail}");
    assert!(
        governance.iter().all(|l| l.contains("answered 500")),
        "the reasons are recorded: {governance:?}"
    );
    let found = leaks(trail.as_bytes(), &secrets);
    assert!(
        found.is_empty(),
        "secrets in the audit trail's governance entries: {found:?}"
    );
    // And the trail still verifies: redaction happens before the entry is signed.
    let verify = st.xorbctl(&["audit", "verify"]);
    assert!(verify.status.success(), "{}", text(&verify));
    let _ = st.xorbctl(&["stack", "down"]);
}
