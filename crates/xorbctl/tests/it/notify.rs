//! Stakeholder notifications on a real rollback: a webhook receiver on loopback gets every expected message once
//! (deduplicated by `X-Xorb-Delivery-Id`), across a killed and resumed run; failing receivers never fail the run.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::process::Output;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::common::*;

const RC1: &str = "v2025.08-rc1";
const STABLE: &str = "v2025.07-stable";

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Hit {
    pub path: String,
    pub id: Option<String>,
    pub body: String,
}

/// A Slack-compatible incoming webhook on 127.0.0.1 (axum), answering every POST with `status`.
pub struct Receiver {
    pub base: String,
    hits: Arc<Mutex<Vec<Hit>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start(status: u16) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        Self::serve(listener, base, status)
    }

    /// Serves the receiver on `listener` (plain TCP, or TLS in `crate::https`), reachable at `base`.
    pub fn serve<L: axum::serve::Listener>(listener: L, base: String, status: u16) -> Receiver
    where
        L::Addr: std::fmt::Debug,
    {
        use axum::http::{HeaderMap, StatusCode, Uri};
        let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
        let h = hits.clone();
        let code = StatusCode::from_u16(status).unwrap();
        let app =
            axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: String| {
                let h = h.clone();
                async move {
                    h.lock().unwrap().push(Hit {
                        path: uri.path().to_string(),
                        id: headers
                            .get("x-xorb-delivery-id")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string),
                        body,
                    });
                    code
                }
            });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { base, hits, task }
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// Requests per delivery id.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for h in self.hits() {
            *m.entry(h.id.unwrap_or_default()).or_insert(0) += 1;
        }
        m
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A loopback URL nobody listens on.
pub fn closed_port_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}/services/T0/B0/closed")
}

pub fn token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Runs xorbctl off the async workers, so the receivers keep answering meanwhile.
pub async fn run(st: &Stack, args: &[&str], env: &[(&str, String)]) -> Output {
    let mut cmd = st.cmd();
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn rollback_api<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "rollback", "--from", RC1, "--to", STABLE, "--only", "api", "--yes",
    ];
    a.extend_from_slice(extra);
    a
}

fn show(st: &Stack) -> Value {
    let out = st.xorbctl(&["show", "latest", "--output", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The messages a successful `--only api` run owes (phases 1, 2 and 5 exist in its plan).
fn expected_ids(run: &str) -> BTreeSet<String> {
    [
        "initiation",
        "progress/phase-1",
        "progress/phase-2",
        "progress/phase-5",
        "completion",
    ]
    .iter()
    .map(|k| format!("{run}/{k}"))
    .collect()
}

/// (id, sink) → state of the run's notifications, from `show`.
fn states(show: &Value) -> BTreeMap<(String, String), String> {
    show["notifications"]
        .as_array()
        .unwrap_or_else(|| panic!("show has no notifications: {show:#}"))
        .iter()
        .map(|n| {
            (
                (
                    n["id"].as_str().unwrap().to_string(),
                    n["sink"].as_str().unwrap().to_string(),
                ),
                n["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Checklist item → the proof that ticked it, from `show`'s governance record.
fn ticks(show: &Value) -> BTreeMap<String, String> {
    show["governance"]["ticks"]
        .as_array()
        .unwrap_or_else(|| panic!("show has no checklist ticks: {show:#}"))
        .iter()
        .map(|t| {
            (
                t["item"].as_str().unwrap().to_string(),
                t["by_name"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Defect 5 of issue 11: "Stakeholders notified" and "Stakeholders notified of completion" were never ticked,
/// even when every message was delivered. They are proved by the delivery of the initiation and the completion
/// message to every webhook (and only then: see the test above, where two of three webhooks fail).
#[tokio::test(flavor = "multi_thread")]
async fn the_stakeholders_notified_items_are_ticked_once_the_messages_are_delivered() {
    let st = Stack::up(RC1, false);
    let ok = Receiver::start(200).await;
    let url = format!("{}/services/T4/B4/{}", ok.base, token());
    let out = run(
        &st,
        &rollback_api(&[]),
        &[
            ("XORB_NOTIFY_URLS", url),
            ("XORB_NOTIFY_GRACE_SECS", "5".into()),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let shown = show(&st);
    let run_id = shown["id"].as_str().unwrap().to_string();
    let delivered: BTreeSet<String> = ok.counts().into_keys().collect();
    assert!(
        delivered.contains(&format!("{run_id}/initiation"))
            && delivered.contains(&format!("{run_id}/completion")),
        "{delivered:?}"
    );
    let ticked = ticks(&shown);
    assert_eq!(
        ticked.get("pre.notified").map(String::as_str),
        Some("notify.initiation"),
        "{ticked:?}"
    );
    assert_eq!(
        ticked.get("post.notified").map(String::as_str),
        Some("notify.completion"),
        "{ticked:?}"
    );
    let md = String::from_utf8_lossy(&st.xorbctl(&["report", "latest", "--format", "md"]).stdout)
        .into_owned();
    assert!(
        md.contains("[x] Stakeholders notified — proved by notify.initiation")
            && md.contains("[x] Stakeholders notified of completion — proved by notify.completion"),
        "{md}"
    );
    let _ = st.xorbctl(&["stack", "down"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_gets_every_message_once_and_failing_webhooks_do_not_fail_the_run() {
    let st = Stack::up(RC1, false);
    let ok = Receiver::start(200).await;
    let failing = Receiver::start(500).await;
    let ok_url = format!("{}/services/T1/B1/{}", ok.base, token());
    let failing_url = format!("{}/services/T2/B2/{}", failing.base, token());
    let closed = closed_port_url();
    // One URL on the command line, two from the environment: both sources are used.
    let out = run(
        &st,
        &rollback_api(&["--notify", &ok_url]),
        &[
            ("XORB_NOTIFY_URLS", format!("{failing_url}, {closed}")),
            ("XORB_NOTIFY_GRACE_SECS", "2".into()),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ROLLBACK INITIATED") && stdout.contains("ROLLBACK COMPLETE"),
        "terminal sink: {stdout}"
    );
    assert!(
        stdout.contains("still pending"),
        "the command says what it left queued: {stdout}"
    );

    let shown = show(&st);
    let run_id = shown["id"].as_str().unwrap().to_string();
    let want = expected_ids(&run_id);
    let counts = ok.counts();
    assert_eq!(
        counts.keys().cloned().collect::<BTreeSet<_>>(),
        want,
        "{:#?}",
        ok.hits()
    );
    assert!(
        counts.values().all(|n| *n == 1),
        "each message exactly once: {counts:?}"
    );
    for h in ok.hits() {
        assert!(h.path.starts_with("/services/T1/B1/"), "{}", h.path);
        let v: Value = serde_json::from_str(&h.body).unwrap();
        assert_eq!(
            v.as_object().unwrap().len(),
            1,
            "Slack-compatible: only text: {v}"
        );
        assert!(v["text"].as_str().unwrap().contains(&run_id), "{v}");
    }
    let first_progress = ok
        .hits()
        .into_iter()
        .find(|h| h.id.as_deref() == Some(&format!("{run_id}/progress/phase-1")))
        .unwrap();
    assert!(
        first_progress.body.contains("Phase 1 of 5 complete"),
        "{}",
        first_progress.body
    );

    // The failing receiver was retried with backoff, never acknowledged, and did not stop the run.
    assert!(!failing.hits().is_empty());
    let failing_ids: BTreeSet<String> = failing.hits().into_iter().filter_map(|h| h.id).collect();
    assert!(failing_ids.is_subset(&want), "{failing_ids:?}");
    assert!(
        failing.counts().values().any(|n| *n >= 2),
        "retried: {:?}",
        failing.counts()
    );

    // show lists every message per sink with its state: delivered to the good one and the terminal, pending
    // (with the reason) on the others. The URLs never appear, only their fingerprints.
    let st_map = states(&shown);
    let sinks: BTreeSet<&String> = st_map.keys().map(|(_, s)| s).collect();
    assert_eq!(sinks.len(), 4, "terminal and three webhooks: {sinks:?}");
    for id in &want {
        assert_eq!(st_map[&(id.clone(), "terminal".to_string())], "delivered");
        let by_state: Vec<&String> = st_map
            .iter()
            .filter(|((i, s), _)| i == id && s.starts_with("webhook:"))
            .map(|(_, state)| state)
            .collect();
        assert_eq!(
            by_state.iter().filter(|s| **s == "delivered").count(),
            1,
            "{id}: {by_state:?}"
        );
        assert_eq!(
            by_state.iter().filter(|s| **s == "pending").count(),
            2,
            "{id}: {by_state:?}"
        );
    }
    let errors: Vec<&str> = shown["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["last_error"].as_str())
        .collect();
    assert!(errors.iter().any(|e| e.contains("HTTP 500")), "{errors:?}");
    // Two of the three webhooks never got the messages: the stakeholders were not all notified.
    let ticked = ticks(&shown);
    assert!(
        !ticked.contains_key("pre.notified") && !ticked.contains_key("post.notified"),
        "{ticked:?}"
    );
    let doc = shown.to_string();
    for url in [&ok_url, &failing_url, &closed] {
        assert!(
            !doc.contains(url.as_str()),
            "a webhook URL leaked into show"
        );
    }
    let report = st.xorbctl(&["report", "latest", "--format", "md"]);
    let md = String::from_utf8_lossy(&report.stdout);
    assert!(
        md.contains("## Notifications") && md.contains(&format!("{run_id}/completion")),
        "{md}"
    );
    let _ = st.xorbctl(&["stack", "down"]);
}

/// Kills the run with the engine's crash hook `(var, value)`, reads which messages were delivered before the
/// kill, resumes, and checks every message arrived, none delivered before the kill was sent again, and at most
/// the one in flight at the kill was sent twice (receivers drop it by its id).
async fn killed_and_resumed(var: &str, value: &str) {
    let st = Stack::up(RC1, false);
    let ok = Receiver::start(200).await;
    let url = format!("{}/services/T3/B3/{}", ok.base, token());
    let env = vec![
        ("XORB_NOTIFY_URLS", url.clone()),
        ("XORB_NOTIFY_GRACE_SECS", "5".into()),
    ];
    let mut crash_env = env.clone();
    crash_env.push((var, value.to_string()));
    let out = run(&st, &rollback_api(&[]), &crash_env).await;
    assert_eq!(
        out.status.signal(),
        Some(9),
        "{var}={value} did not kill the run: {}",
        text(&out)
    );
    let before = show(&st);
    let run_id = before["id"].as_str().unwrap().to_string();
    assert_eq!(
        before["status"]["state"], "running",
        "{:#}",
        before["status"]
    );
    let delivered_before: BTreeSet<String> = states(&before)
        .into_iter()
        .filter(|((_, sink), state)| sink.starts_with("webhook:") && state == "delivered")
        .map(|((id, _), _)| id)
        .collect();
    let hits_before = ok.hits().len();

    let out = run(&st, &["resume", "latest"], &env).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let after = show(&st);
    let counts = ok.counts();
    assert_eq!(
        counts.keys().cloned().collect::<BTreeSet<_>>(),
        expected_ids(&run_id),
        "{:#?}",
        ok.hits()
    );
    for id in &delivered_before {
        assert_eq!(
            counts[id], 1,
            "{id} was delivered before the kill and sent again after it"
        );
    }
    let total: usize = counts.values().sum();
    assert!(
        total <= counts.len() + 1,
        "more than the one in-flight message sent twice: {counts:?}"
    );
    assert!(
        states(&after)
            .iter()
            .filter(|((_, s), _)| s.starts_with("webhook:"))
            .all(|(_, state)| state == "delivered"),
        "{:#}",
        after["notifications"]
    );
    eprintln!(
        "{var}={value}: {} delivered before the kill ({hits_before} requests), {total} requests in all",
        delivered_before.len()
    );
    let _ = st.xorbctl(&["stack", "down"]);
    let _ = std::fs::remove_dir_all(&st.dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_and_resumed_run_sends_every_message_once() {
    // In the middle of phase 2 (phase 1's progress is owed, maybe not yet sent), then right after an early
    // journal write (only the initiation is owed).
    killed_and_resumed("XORB_CRASH_BEFORE_STEP", "2.api.config").await;
    killed_and_resumed("XORB_CRASH_AFTER_JOURNAL_WRITES", "3").await;
}
