//! `xorbctl monitor` on a real Prometheus scraping a real api every 500 ms (issue 13). Each test has
//! its own api (against the shared stable stack's datastores), its own Prometheus and its own
//! traffic: a baseline window of traffic first, pinned with `--baseline-window`, then the monitor
//! over what follows. Every request carries 200 ms of injected latency, so the p99 compared is that
//! sleep and not the machine's load.

use crate::common::*;
use crate::monitor::{Svc, list, start_api, start_api_on};
use nix::sys::signal::Signal;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use xorb_local::servers::Server;

const STEP: &str = "2s";
const BASELINE: Duration = Duration::from_secs(32);

struct Lab {
    api: Svc,
    prom: Option<Server>,
    prom_dir: PathBuf,
    prom_cfg: PathBuf,
    token: String,
    traffic: Arc<AtomicBool>,
    dir: PathBuf,
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.traffic.store(false, Ordering::Relaxed);
        if let Some(p) = self.prom.take() {
            p.proc.stop(Signal::SIGTERM, Duration::from_secs(10));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Lab {
    /// An api with 200 ms of latency, Prometheus scraping it, traffic, and a baseline window of it.
    async fn up(tag: &str) -> (Lab, String) {
        let st = stable();
        let token = st
            .add_tenant(&format!(
                "{tag}-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ))
            .await;
        let api = start_api(st).await;
        api.set_faults("XORB_FAULT_LATENCY_MS=200\n");
        let dir = Stack::new_dir();
        let prom_dir = dir.join("prometheus");
        std::fs::create_dir_all(&prom_dir).unwrap();
        let prom_cfg = dir.join("prometheus.yml");
        let target = api.base.trim_start_matches("http://").to_string();
        let cfg = serde_json::json!({
            "global": {"scrape_interval": "500ms", "scrape_timeout": "400ms", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "xorb-api", "static_configs": [{"targets": [target]}]}]
        });
        std::fs::write(&prom_cfg, cfg.to_string()).unwrap();
        let prom = xorb_local::servers::start_prometheus(&prom_dir, &prom_cfg)
            .await
            .unwrap();
        let mut lab = Lab {
            api,
            prom: Some(prom),
            prom_dir,
            prom_cfg,
            token,
            traffic: Arc::new(AtomicBool::new(false)),
            dir,
        };
        lab.start_traffic();
        // The latency fault is in force once a request takes its 200 ms.
        let http = reqwest::Client::new();
        eventually("the latency fault", Duration::from_secs(10), || {
            let (http, base, token) = (http.clone(), lab.api.base.clone(), lab.token.clone());
            async move {
                let t = std::time::Instant::now();
                (list(&http, &base, &token).await.0 == 200
                    && t.elapsed() >= Duration::from_millis(200))
                .then_some(())
            }
        })
        .await;
        let from = chrono::Utc::now() + chrono::Duration::seconds(1);
        tokio::time::sleep(BASELINE).await;
        let window = format!("{},{}", rfc3339(from), rfc3339(chrono::Utc::now()));
        (lab, window)
    }

    /// Sixteen clients, each sending its next request when the last is answered.
    fn start_traffic(&mut self) {
        self.traffic.store(true, Ordering::Relaxed);
        for _ in 0..16 {
            let (on, base, token) = (
                self.traffic.clone(),
                self.api.base.clone(),
                self.token.clone(),
            );
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                while on.load(Ordering::Relaxed) {
                    if http
                        .get(format!("{base}/api/v1/ptaas/sessions"))
                        .bearer_auth(&token)
                        .send()
                        .await
                        .is_err()
                    {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            });
        }
    }

    fn prom_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.prom.as_ref().unwrap().port)
    }

    fn out(&self) -> PathBuf {
        self.dir.join("monitor")
    }

    fn monitor(&self, window: &str, duration: &str) -> Child {
        Command::new(xorbctl_bin())
            .env("XORB_STATE_DIR", self.dir.join("state"))
            .args([
                "monitor",
                "--baseline",
                "v2025.07-stable",
                "--baseline-window",
                window,
                "--duration",
                duration,
                "--step",
                STEP,
                "--report-interval",
                "4s",
                "--alert-threshold",
                "10%",
                "--jobs",
                "xorb-api",
                "--prometheus",
                &self.prom_url(),
                "--out",
            ])
            .arg(self.out())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Until the monitor has written its first evaluation.
    async fn first_evaluation(&self) {
        let first = self.out().join("monitor.json");
        eventually("a first evaluation", Duration::from_secs(30), || {
            let r = first.clone();
            async move { r.exists().then_some(()) }
        })
        .await;
    }

    fn report(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.out().join("monitor.json")).unwrap()).unwrap()
    }
}

fn finish(child: Child) -> (i32, String) {
    let out = child.wait_with_output().unwrap();
    (out.status.code().unwrap_or(-1), text(&out))
}

fn metric<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    &report["latest"]["metrics"][name]
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_behaviour_before_and_after_passes_and_replays_byte_for_byte() {
    let (lab, window) = Lab::up("aa").await;
    let (code, out) = finish(lab.monitor(&window, "24s"));
    let report = lab.report();
    assert_eq!(code, 0, "{out}\n{report:#}");
    assert_eq!(report["verdict"], "PASS");
    assert_eq!(report["finished"], true);
    for m in [
        "up",
        "error_ratio",
        "latency_p99",
        "postgres_connections_active",
    ] {
        assert_eq!(metric(&report, m)["verdict"], "PASS", "{m}: {report:#}");
    }
    let lat = metric(&report, "latency_p99");
    let base_median = lat["baseline"]["median"].as_f64().unwrap();
    assert!(
        (0.2..0.3).contains(&base_median),
        "the p99 is the injected 200 ms: {lat:#}"
    );
    assert!(
        lat["query"]
            .as_str()
            .unwrap()
            .contains("histogram_quantile(0.99")
    );
    let reports = std::fs::read_dir(lab.out())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("report-")
        })
        .count();
    assert!(
        reports >= 5,
        "an interim report every 4 s of 24 s: {reports}"
    );

    let replay = Command::new(xorbctl_bin())
        .args(["monitor", "--replay"])
        .arg(lab.out())
        .output()
        .unwrap();
    assert_eq!(replay.status.code(), Some(0), "{}", text(&replay));
    assert!(
        replay.stdout == std::fs::read(lab.out().join("monitor.json")).unwrap(),
        "the replay differs from the live report"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_5xx_burst_fails_at_once_with_both_ratios() {
    let (lab, window) = Lab::up("burst").await;
    let child = lab.monitor(&window, "60s");
    lab.api
        .set_faults("XORB_FAULT_LATENCY_MS=200\nXORB_FAULT_ERROR_RATIO=0.5\n");
    let (code, out) = finish(child);
    let report = lab.report();
    assert_eq!(code, 5, "FAIL exits 5 (Unhealthy): {out}\n{report:#}");
    assert_eq!(report["verdict"], "FAIL");
    let err = metric(&report, "error_ratio");
    assert_eq!(err["verdict"], "FAIL", "{err:#}");
    let reason = err["reason"].as_str().unwrap();
    assert!(
        reason.contains("error ratio") && reason.contains("against the baseline's 0.00%"),
        "{reason}"
    );
    // Two scrape intervals and one evaluation (a 2 s step, and its 0.5 s lag) after the start.
    let s = &report["settings"];
    let took = report["latest"]["at_ms"].as_i64().unwrap() - s["start_ms"].as_i64().unwrap();
    assert!(took <= 2 * 2000, "FAIL after {took} ms: {report:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_service_fails_the_up_gate_at_the_next_evaluation() {
    let (mut lab, window) = Lab::up("kill").await;
    let child = lab.monitor(&window, "60s");
    lab.first_evaluation().await;
    lab.api.child.kill().unwrap();
    let killed_ms = chrono::Utc::now().timestamp_millis();
    let (code, out) = finish(child);
    let report = lab.report();
    assert_eq!(code, 5, "{out}\n{report:#}");
    let up = metric(&report, "up");
    assert_eq!(up["verdict"], "FAIL", "{up:#}");
    assert!(
        up["reason"].as_str().unwrap().contains("failed scrape"),
        "{up:#}"
    );
    let took = report["latest"]["at_ms"].as_i64().unwrap() - killed_ms;
    assert!(
        took <= 2 * 2000 + 1000,
        "the up gate failed {took} ms after the kill"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_stopped_is_an_error_the_monitor_survives_and_no_traffic_is_inconclusive() {
    let (mut lab, window) = Lab::up("gap").await;
    let child = lab.monitor(&window, "40s");
    lab.first_evaluation().await;
    let report = lab.out().join("monitor.json");
    let prom = lab.prom.take().unwrap();
    let port = prom.port;
    prom.proc.stop(Signal::SIGTERM, Duration::from_secs(10));
    eventually("an ERROR evaluation", Duration::from_secs(30), || {
        let r = report.clone();
        async move {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&r).ok()?).ok()?;
            (v["latest"]["verdict"] == "ERROR").then_some(())
        }
    })
    .await;
    lab.prom = Some(
        xorb_local::servers::start_prometheus_on(&lab.prom_dir, &lab.prom_cfg, Some(port))
            .await
            .unwrap(),
    );
    let (code, out) = finish(child);
    let v = lab.report();
    assert_ne!(
        code, 4,
        "the monitor resumed once Prometheus was back: {out}\n{v:#}"
    );
    assert_ne!(v["verdict"], "ERROR", "{v:#}");
    let history: Vec<&str> = v["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["verdict"].as_str().unwrap())
        .collect();
    let first_error = history.iter().position(|h| *h == "ERROR").unwrap();
    assert!(
        history[first_error..].iter().any(|h| *h != "ERROR"),
        "{history:?}"
    );
    assert!(
        v["history"][first_error]["metrics"]
            .as_object()
            .unwrap()
            .is_empty(),
        "an ERROR evaluation judges nothing"
    );

    // No traffic: never PASS.
    lab.traffic.store(false, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    std::fs::remove_dir_all(lab.out()).unwrap();
    let (code, out) = finish(lab.monitor(&window, "8s"));
    let v = lab.report();
    assert_eq!(code, 10, "INCONCLUSIVE exits 10: {out}\n{v:#}");
    let reason = metric(&v, "error_ratio")["reason"].as_str().unwrap();
    assert!(reason.contains("too little traffic"), "{reason}");
}

/// The baseline at 200 ms of injected latency, the current window at `ms`.
async fn latency_case(tag: &str, ms: u64) -> (i32, String, serde_json::Value) {
    let (lab, window) = Lab::up(tag).await;
    // The monitor's window starts at the step before it, so a moment of the old latency is in it:
    // that only makes a slowdown harder to find, never easier.
    lab.api.set_faults(&format!("XORB_FAULT_LATENCY_MS={ms}\n"));
    let (code, out) = finish(lab.monitor(&window, "24s"));
    let report = lab.report();
    (code, out, report)
}

#[tokio::test(flavor = "multi_thread")]
async fn thirty_percent_slower_fails_on_latency() {
    let (code, out, report) = latency_case("slow30", 260).await;
    let lat = metric(&report, "latency_p99");
    assert_eq!(code, 5, "{out}\n{report:#}");
    assert_eq!(lat["verdict"], "FAIL", "{lat:#}");
    let reason = lat["reason"].as_str().unwrap();
    assert!(reason.contains("more than the allowed"), "{reason}");
    assert!(
        lat["effect"]["lower"].as_f64().unwrap() > lat["effect"]["allowed"].as_f64().unwrap(),
        "{lat:#}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn five_percent_slower_passes_a_ten_percent_threshold() {
    let (code, out, report) = latency_case("slow5", 210).await;
    let lat = metric(&report, "latency_p99");
    assert_eq!(lat["verdict"], "PASS", "{lat:#}");
    assert_eq!(code, 0, "{out}\n{report:#}");
    let shift = lat["effect"]["estimate"].as_f64().unwrap();
    assert!(shift > 0.0, "the 10 ms are seen, and allowed: {lat:#}");
}

/// What a closed loop measures (ab, hey, wrk without its own correction): one connection sending its
/// next request when the last is answered, each latency from its send. Its 99th percentile, in ms.
async fn closed_loop_p99_ms(url: String, token: String, for_: Duration) -> (f64, usize) {
    let http = reqwest::Client::new();
    let end = std::time::Instant::now() + for_;
    let mut ms = Vec::new();
    while std::time::Instant::now() < end {
        let t = std::time::Instant::now();
        let r = http.get(&url).bearer_auth(&token).send().await.unwrap();
        let _ = r.bytes().await;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    (ms[(ms.len() * 99 / 100).min(ms.len() - 1)], ms.len())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_one_second_stall_shows_in_the_corrected_p99_and_a_closed_loop_hides_it() {
    let st = stable();
    let token = st
        .add_tenant(&format!(
            "perf-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ))
        .await;
    let api = start_api(st).await;
    let url = format!("{}/api/v1/ptaas/sessions", api.base);
    let closed = tokio::spawn(closed_loop_p99_ms(
        url.clone(),
        token.clone(),
        Duration::from_secs(20),
    ));
    let spec = xorb_monitor::load::Spec {
        url,
        token,
        rate: 100.0,
        duration: Duration::from_secs(20),
        timeout: Duration::from_secs(10),
        max_in_flight: 1000,
    };
    let load = tokio::spawn(async move { xorb_monitor::load::run(&spec).await });
    // The stimulus, on a schedule: every request arriving in this second waits one second more.
    tokio::time::sleep(Duration::from_secs(8)).await;
    api.set_faults("XORB_FAULT_LATENCY_MS=1000\n");
    tokio::time::sleep(Duration::from_secs(1)).await;
    api.set_faults("\n");
    let ours = load.await.unwrap().unwrap();
    let (closed_p99, closed_n) = closed.await.unwrap();
    assert_eq!(ours.due, 2000);
    assert!(ours.ok >= 1990, "{ours:#?}");
    assert!(
        ours.response.p99_ms >= 900.0,
        "the users arriving in the stall waited a second: {ours:#?}"
    );
    assert!(
        closed_p99 < 300.0,
        "a closed loop sends nothing while it waits, so its p99 hides the stall: {closed_p99} ms over {closed_n} requests"
    );
}

/// Fifty A/A monitors on what one real Prometheus scraped of one steady api: each pins 20 s of history as its
/// baseline and judges the 20 s after it, every 2 s as `xorbctl monitor --step 2s` does. The monitor is a fold
/// over fetched samples, so a monitor started in the past is the same fold as a live one, fed at once: the 50
/// runs need four minutes of history rather than fifty times forty seconds. Consecutive runs start 4 s apart,
/// so neighbours share data; what the test can show is that one stretch of steady traffic, cut fifty ways,
/// raises at most one false alarm.
#[tokio::test(flavor = "multi_thread")]
async fn fifty_a_a_monitors_on_real_scrapes_raise_at_most_one_false_fail() {
    use xorb_monitor::baseline::Window;
    use xorb_monitor::judge::Verdict;
    use xorb_monitor::live;
    use xorb_monitor::monitor::{Monitor, Settings};
    use xorb_monitor::prom::Prometheus;
    use xorb_monitor::queries::Queries;

    const RUNS: i64 = 50;
    const STEP_MS: i64 = 2_000;
    const HALF_MS: i64 = 20_000;
    const SLIDE_MS: i64 = 4_000;
    let (lab, _) = Lab::up("aa50").await;
    // Lab::up returns after its baseline of steady traffic; Prometheus's first seconds of it lack the points a
    // rate needs (runs starting there were INCONCLUSIVE: too few points), so the history starts 8 s later.
    let t0 = (live::now_ms() - BASELINE.as_millis() as i64 + 8_000).div_euclid(STEP_MS) * STEP_MS;
    let end = t0 + (RUNS - 1) * SLIDE_MS + 2 * HALF_MS;
    // The history has to be lived through; the last point is in once the scrape after it is.
    while live::now_ms() < end + STEP_MS {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let prom = Prometheus::new(&lab.prom_url(), Duration::from_secs(10)).unwrap();
    let queries = Queries::new("xorb-api", STEP_MS);
    let mut verdicts = std::collections::BTreeMap::<String, usize>::new();
    let mut fails = Vec::new();
    for i in 0..RUNS {
        let base = Window {
            start_ms: t0 + i * SLIDE_MS,
            end_ms: t0 + i * SLIDE_MS + HALF_MS,
        };
        let baseline = live::fetch_baseline(&prom, &queries, &[base], STEP_MS)
            .await
            .unwrap();
        let settings = Settings {
            baseline_release: "v2025.07-stable".into(),
            baseline_source: "pinned by the operator".into(),
            baseline_windows: vec![base],
            start_ms: base.end_ms,
            duration_ms: HALF_MS,
            step_ms: STEP_MS,
            report_interval_ms: 4_000,
            threshold: 0.10,
            // As `xorbctl monitor` sets them (cmd/monitor.rs).
            alpha: 0.05,
            min_points: 10,
            min_requests: 100,
            queries: queries.clone(),
        };
        let mut m = Monitor::new(settings, baseline);
        live::run(&prom, &mut m, Duration::ZERO, |_| Ok(()), |_| Ok(()))
            .await
            .unwrap();
        let last = m.evaluations.last().expect("an evaluation");
        assert_eq!(
            last.at_ms,
            base.end_ms + HALF_MS,
            "run {i} ended early without a FAIL"
        );
        *verdicts.entry(format!("{:?}", last.verdict)).or_default() += 1;
        if last.verdict == Verdict::Fail {
            fails.push(serde_json::to_string(&m.report()).unwrap());
        }
        if last.verdict != Verdict::Pass {
            let why: Vec<String> = last
                .metrics
                .iter()
                .filter(|(_, r)| r.judgement.verdict != Verdict::Pass)
                .map(|(n, r)| format!("{n}: {}", r.judgement.reason))
                .collect();
            eprintln!("run {i} ({:?}): {why:?}", last.verdict);
        }
    }
    eprintln!("50 A/A monitors on real scrapes: {verdicts:?}");
    assert!(fails.len() <= 1, "{verdicts:?}: {fails:#?}");
    assert!(
        verdicts.get("Pass").copied().unwrap_or(0) + fails.len() == RUNS as usize,
        "every run must be judged (no INCONCLUSIVE or ERROR on steady traffic): {verdicts:?}"
    );
}

/// A restarted api starts its counters from zero under the same series (same instance, same labels): the
/// monitor's request and error counts over a window with the restart must be the traffic that was served, not
/// a spike (the counter's whole value counted again) nor a loss (a negative increase). The up gate fails on the
/// scrapes the restart missed, which `a_killed_service…` shows; here the counts are checked on their own.
#[tokio::test(flavor = "multi_thread")]
async fn a_counter_reset_after_a_restart_is_no_spike() {
    use xorb_monitor::judge::{self, Look, Verdict};
    use xorb_monitor::live;
    use xorb_monitor::prom::{Prometheus, Range};
    use xorb_monitor::queries::Queries;

    const STEP_MS: i64 = 2_000;
    let (mut lab, window) = Lab::up("reset").await;
    let port: u16 = lab.api.base.rsplit(':').next().unwrap().parse().unwrap();
    lab.api.child.kill().unwrap();
    lab.api.child.wait().unwrap();
    let restarted = start_api_on(stable(), port).await;
    restarted.set_faults("XORB_FAULT_LATENCY_MS=200\n");
    drop(std::mem::replace(&mut lab.api, restarted));
    let restart_ms = live::now_ms();
    // Two windows' worth of traffic after the restart have to be lived through.
    let range = Range {
        start_ms: (restart_ms - 10_000).div_euclid(STEP_MS) * STEP_MS,
        end_ms: (restart_ms + 20_000).div_euclid(STEP_MS) * STEP_MS,
        step_ms: STEP_MS,
    };
    while live::now_ms() < range.end_ms + STEP_MS {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let prom = Prometheus::new(&lab.prom_url(), Duration::from_secs(10)).unwrap();
    let q = Queries::new("xorb-api", STEP_MS);
    let cur = live::fetch(&prom, &q, range).await.unwrap();
    // The counter did reset under the same series: a point lower than the one before it.
    let reset = cur.requests.values().any(|c| {
        c.points
            .windows(2)
            .any(|w| w[1].v.is_finite() && w[0].v.is_finite() && w[1].v < w[0].v)
    });
    assert!(reset, "no counter went down across the restart: {cur:#?}");

    let w = flags_window(&window);
    let base = live::fetch_baseline(&prom, &q, &[w], STEP_MS)
        .await
        .unwrap();
    let base_counts = base.counts(w.start_ms, STEP_MS);
    let cur_counts = cur.counts(range.start_ms, STEP_MS);
    let base_rate = base_counts.requests as f64 / (w.end_ms - w.start_ms) as f64;
    let cur_rate = cur_counts.requests as f64 / (range.end_ms - range.start_ms) as f64;
    // A reset read as a new counter's whole value would double the rate at least; read as a drop, it would lose
    // the window. The restart itself costs a second or two of traffic.
    assert!(
        (0.6..1.3).contains(&(cur_rate / base_rate)),
        "requests a millisecond: {cur_rate} across the restart against {base_rate} before ({cur_counts:?} vs \
         {base_counts:?})"
    );
    assert_eq!(cur_counts.errors, 0, "{cur_counts:?}");
    let look = Look {
        alpha: 0.05,
        previous_fraction: 0.0,
        fraction: 1.0,
        threshold: 0.10,
        min_points: 10,
        min_requests: 100,
    };
    let j = judge::errors(base_counts, cur_counts, &look);
    assert_eq!(j.verdict, Verdict::Pass, "{}", j.reason);
}

/// The lab's pinned baseline ("START,END" in RFC 3339) as a window.
fn flags_window(w: &str) -> xorb_monitor::baseline::Window {
    let (a, b) = w.split_once(',').unwrap();
    let t = |s: &str| {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .timestamp_millis()
    };
    xorb_monitor::baseline::Window {
        start_ms: t(a),
        end_ms: t(b),
    }
}
