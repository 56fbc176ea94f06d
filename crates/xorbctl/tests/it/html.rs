//! The HTML report and the dashboard in a real browser (headless Chromium through chromedriver): real rollbacks
//! of real stacks, every section there, the timeline's phases in order, nothing fetched from the network, the
//! dashboard following a run without a reload. Screenshots are kept in target/browser-artifacts/.

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

mod browser;

use crate::common::*;
use browser::{Browser, artifacts_dir, file_url};

const RC1: &str = "v2025.08-rc1";
const STABLE: &str = "v2025.07-stable";

use xorb_report::html::SECTIONS;

/// A running `xorbctl dashboard` on a free loopback port; stopped (by its pid) when dropped.
pub struct Dashboard {
    child: Child,
    pub url: String,
}

impl Dashboard {
    pub fn start(st: &Stack) -> Dashboard {
        let mut child = st
            .cmd()
            .args(["dashboard", "--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://127.0.0.1:"))
            .unwrap_or_else(|| panic!("no URL in the dashboard's first line: {line:?}"))
            .to_string();
        Dashboard { child, url }
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let r = reqwest::get(format!("{}{}", self.url, path.trim_start_matches('/')))
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rollback_cmd(st: &Stack, extra: &[&str]) -> Command {
    let mut c = st.cmd();
    c.args(["rollback", "--from", RC1, "--to", STABLE, "--yes"])
        .args(extra);
    c
}

/// `report latest --format html`, written where people can open it; its path.
fn html_report(st: &Stack, name: &str) -> PathBuf {
    let out = st.xorbctl(&["report", "latest", "--format", "html"]);
    assert!(out.status.success(), "{}", text(&out));
    let path = artifacts_dir().join(format!("{name}.html"));
    std::fs::write(&path, &out.stdout).unwrap();
    eprintln!("report: {}", path.display());
    path
}

/// Opens the report in the browser and checks what every report must have: the sections, the timeline's phase
/// lanes in order, no request but the file itself, no policy violation. Returns the phase lanes.
async fn check_report(
    b: &Browser,
    page: &std::path::Path,
    status: &str,
    shot: &str,
) -> Vec<String> {
    let url = file_url(page);
    // Drain the log of earlier pages' requests.
    b.requests().await;
    b.goto(&url).await;
    let ids = b
        .js("return Array.from(document.querySelectorAll('main > section[id]')).map(s => s.id);")
        .await;
    for id in SECTIONS {
        assert!(
            ids.as_array().unwrap().iter().any(|v| v == id),
            "section {id} missing: {ids}"
        );
    }
    assert_eq!(
        b.js("return document.querySelector('#verdict').dataset.status;")
            .await,
        status
    );
    // Readable without colour: the verdict is words.
    let verdict = b
        .js("return document.querySelector('#verdict .verdict').textContent;")
        .await;
    assert!(
        verdict
            .as_str()
            .unwrap()
            .chars()
            .any(|c| c.is_ascii_uppercase()),
        "{verdict}"
    );
    let lanes: Vec<String> = serde_json::from_value(
        b.js("return Array.from(document.querySelectorAll('svg.timeline text.lane.phase')).map(t => t.textContent);")
            .await,
    )
    .unwrap();
    assert_eq!(lanes.first().map(String::as_str), Some("Run"), "{lanes:?}");
    let numbers: Vec<u32> = lanes[1..]
        .iter()
        .map(|l| {
            l["Phase ".len()..]
                .split(':')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(
        !numbers.is_empty() && numbers.windows(2).all(|w| w[0] < w[1]),
        "{lanes:?}"
    );
    let svg_title = b
        .js("return document.querySelector('svg.timeline title').textContent;")
        .await;
    assert!(
        svg_title.as_str().unwrap().contains("to scale"),
        "{svg_title}"
    );
    // The stylesheet applied (its hash matches the policy): the banner has its border.
    let border = b
        .js("return getComputedStyle(document.querySelector('#verdict')).borderLeftWidth;")
        .await;
    assert_eq!(border, "10px", "the style block was blocked");
    // Nothing fetched: the only request is the file itself, no resource loaded, no policy violation.
    let requests: Vec<String> = b
        .requests()
        .await
        .into_iter()
        .filter(|(doc, _)| *doc == url)
        .map(|(_, r)| r)
        .collect();
    assert_eq!(
        requests,
        std::slice::from_ref(&url),
        "the page requested more than its own file"
    );
    assert_eq!(
        b.js("return performance.getEntriesByType('resource').length;")
            .await,
        0
    );
    let console = b.console().await;
    assert!(
        !console
            .iter()
            .any(|m| m.contains("Content Security Policy") || m.contains("Refused")),
        "{console:?}"
    );
    b.screenshot(shot).await;
    lanes
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_follows_a_full_rollback_live_and_its_html_report_shows_every_section() {
    let st = Stack::up(RC1, true);
    let dash = Dashboard::start(&st);
    let b = Browser::start().await;
    b.goto(&dash.url).await;
    assert_eq!(
        b.js("return document.querySelector('#verdict').dataset.status;")
            .await,
        "none",
        "no run yet"
    );
    b.js("window.__xorbMarker = 'kept'; return true;").await;
    let mut run = rollback_cmd(&st, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The page follows the run as it goes: at least two different phases seen in progress, no reload.
    let mut seen: Vec<String> = vec![];
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    let finished = loop {
        let done = run.try_wait().unwrap();
        let now = b
            .js("return window.__xorbMarker + '|' + document.querySelector('#verdict').dataset.status + '|' + Array.from(document.querySelectorAll('details[data-phase]')).filter(d => d.querySelector('.pstate').textContent.includes('in progress')).map(d => d.dataset.phase).join(',');")
            .await;
        let now = now.as_str().unwrap().to_string();
        assert!(now.starts_with("kept|"), "the page was reloaded: {now}");
        let phase = now.rsplit('|').next().unwrap().to_string();
        if !phase.is_empty() && seen.last() != Some(&phase) {
            seen.push(phase);
            if seen.len() == 2 {
                b.screenshot("dashboard-during-rollback").await;
            }
        }
        if let Some(status) = done {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the rollback did not end in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(finished.success(), "the rollback failed");
    assert!(seen.len() >= 2, "the page showed no phase change: {seen:?}");
    b.wait_for(
        "the dashboard to show the final state",
        Duration::from_secs(30),
        "return document.querySelector('#verdict').dataset.status === 'succeeded' && window.__xorbMarker === 'kept';",
    )
    .await;
    let current = b
        .js("return document.querySelector('#current-step').textContent;")
        .await;
    assert_eq!(current, "none: every step is done");
    b.screenshot("dashboard-final").await;
    drop(dash);

    let page = html_report(&st, "report-full-rollback");
    let lanes = check_report(&b, &page, "succeeded", "report-full-rollback").await;
    assert_eq!(lanes.len(), 6, "Run and the five phases: {lanes:?}");
    // The data-loss account: one row per table, from phase 5's loss check.
    let rows = b
        .js("return document.querySelectorAll('#loss tbody tr').length;")
        .await;
    assert!(rows.as_u64().unwrap() >= 3, "loss rows: {rows}");
    let _ = st.xorbctl(&["stack", "down"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_html_report_of_a_run_that_crashed_failed_and_was_resumed_shows_it_on_its_timeline() {
    let st = Stack::up(RC1, false);
    // Killed before the orchestrator's step, then resumed into a broken worker image (fails after its retry), then
    // resumed once more with the image fixed.
    let crashed = rollback_cmd(&st, &[])
        .env("XORB_CRASH_BEFORE_STEP", "2.orchestrator.image")
        .output()
        .unwrap();
    assert!(!crashed.status.success(), "{}", text(&crashed));
    let wrapper = broken_image(&st, "worker", STABLE);
    let failed = st
        .cmd()
        .args(["resume", "latest"])
        .env("XORB_SVC_BIN", &wrapper)
        .output()
        .unwrap();
    assert_eq!(failed.status.code(), Some(6), "{}", text(&failed));
    let resumed = st.xorbctl(&["resume", "latest"]);
    assert!(resumed.status.success(), "{}", text(&resumed));

    let page = html_report(&st, "report-crashed-failed-resumed");
    let b = Browser::start().await;
    check_report(&b, &page, "succeeded", "report-crashed-failed-resumed").await;
    // The run's lane: a crashed execution, a failed one, then the one that succeeded.
    let runs: Vec<String> = serde_json::from_value(
        b.js("return Array.from(document.querySelectorAll('svg.timeline g > title')).map(t => t.textContent).filter(t => /^(start|resume) \\d/.test(t));")
            .await,
    )
    .unwrap();
    assert_eq!(runs.len(), 3, "{runs:?}");
    assert!(
        runs[0].starts_with("start 1") && runs[0].ends_with("(crashed)"),
        "{runs:?}"
    );
    assert!(
        runs[1].starts_with("resume 2") && !runs[1].ends_with("(succeeded)"),
        "{runs:?}"
    );
    assert!(
        runs[2].starts_with("resume 3") && runs[2].ends_with("(succeeded)"),
        "{runs:?}"
    );
    let worker: Vec<String> = serde_json::from_value(
        b.js("return Array.from(document.querySelectorAll('svg.timeline g > title')).map(t => t.textContent).filter(t => t.startsWith('2.worker.image attempt'));")
            .await,
    )
    .unwrap();
    assert!(
        worker.iter().filter(|t| t.contains("failed")).count() >= 2,
        "{worker:?}"
    );
    assert!(worker.last().unwrap().contains("done"), "{worker:?}");
    let incidents = b
        .js("return document.querySelectorAll('#incidents li').length;")
        .await;
    assert!(incidents.as_u64().unwrap() >= 4, "{incidents}");
    let _ = st.xorbctl(&["stack", "down"]);
}

/// A run waiting at its approval gate (exit 9), started by an "operator" whose name is markup: the report shows
/// the wait and the name as text; the dashboard serves the same and refuses foreign host names.
#[tokio::test(flavor = "multi_thread")]
async fn the_html_report_of_a_run_waiting_at_its_approval_gate_shows_the_wait_and_escapes_names() {
    let st = Stack::up(RC1, false);
    let evil = "<img src=x onerror=alert(1)>";
    let out = rollback_cmd(&st, &["--only", "api", "--severity", "P2", "--as", evil])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(9), "{}", text(&out));
    let page = html_report(&st, "report-waiting-for-approval");
    let raw = std::fs::read_to_string(&page).unwrap();
    assert!(
        !raw.contains("<img"),
        "the operator's name reached the page unescaped"
    );
    assert!(raw.contains("&lt;img src=x onerror=alert(1)&gt;"));
    let b = Browser::start().await;
    check_report(
        &b,
        &page,
        "waiting_for_approval",
        "report-waiting-for-approval",
    )
    .await;
    let verdict = b
        .js("return document.querySelector('#verdict .verdict').textContent;")
        .await;
    assert!(
        verdict.as_str().unwrap().contains("WAITING FOR APPROVAL"),
        "{verdict}"
    );
    let gate = b
        .js("return document.querySelector('#approvals').textContent;")
        .await;
    let gate = gate.as_str().unwrap();
    assert!(
        gate.contains("Severity: P2") && gate.contains("not open"),
        "{gate}"
    );
    assert!(gate.contains(evil), "the name is shown as text: {gate}");
    assert_eq!(
        b.js("return document.querySelectorAll('img').length;")
            .await,
        0
    );
    let wait = b
        .js("return Array.from(document.querySelectorAll('svg.timeline g > title')).map(t => t.textContent).find(t => t.startsWith('waiting for approval gate')) || null;")
        .await;
    assert!(wait.as_str().unwrap().contains("still waiting"), "{wait}");
    let open = b
        .js("return document.querySelectorAll('#checklists li.open').length;")
        .await;
    assert!(open.as_u64().unwrap() > 0);

    let dash = Dashboard::start(&st);
    let (code, body) = dash.get("/api/latest").await;
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "waiting_for_approval");
    assert!(!v["fragment"].as_str().unwrap().contains("<img"));
    // A page elsewhere rebinding its name to 127.0.0.1 is refused.
    let r = reqwest::Client::new()
        .get(&dash.url)
        .header("Host", "attacker.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let (code, body) = dash.get("/api/run/no-such-run").await;
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("no-such-run"), "{body}");
    let _ = st.xorbctl(&["stack", "down"]);
}
