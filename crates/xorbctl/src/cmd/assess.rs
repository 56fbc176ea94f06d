//! `xorbctl assess`: the decision matrix against the live stack: availability, phase 5's checks as a rollback runs
//! them, Prometheus' latency, error rate and scrape targets; the severity, the approver and the evidence.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use xorb_governance::{Assessment, Comparison, Evidence, FailedCheck, ServiceDown};
use xorb_model::exit::Exit;
use xorb_model::redact::Redactor;

use crate::errors::bad;
use crate::governance::clock::now;
use crate::governance::policies::Policies;
use crate::governance::trail::{Trail, user};
use crate::output::Reporter;
use crate::settings::Assess;
use crate::target;

#[derive(Debug, Serialize)]
struct AssessReport {
    assessed_at: DateTime<Utc>,
    release: String,
    state_dir: PathBuf,
    #[serde(flatten)]
    assessment: Assessment,
    evidence: Evidence,
    /// How Prometheus's figures in `evidence` were measured.
    measured: Measured,
    notes: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Measured {
    scrape_interval: String,
    window: String,
    baseline_offset: String,
    routes_excluded: &'static str,
}

/// Prometheus's own scrapes and the supervisor's health probes: traffic no regression touches, which would dilute
/// every ratio (docs/design/monitor.md).
const SHARED_ROUTES: &str = "/metrics|/api/v1/health|/api/v1/info";

/// The default rate window in scrape intervals: 5m at the releases' 15 s, as `assess` always used.
const WINDOW_SCRAPES: u32 = 20;

const OBSERVED_DOWN: &str = "governance/observed-down.json";

pub async fn run(args: &Assess, out: &Reporter, red: &Redactor) -> anyhow::Result<Exit> {
    let policies = Policies::load(&args.policies)?;
    let state_dir = &args.locations.state_dir;
    let trail = Trail::new(state_dir, red);
    let st = target::stack_state(state_dir)?;
    let paths = target::paths(&args.locations)?;
    let release = xorb_model::release::Release::load_named(&paths.releases_root, &st.release)?;
    let measured = measured(args, &st, &release)?;
    let at = now()?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let prom = st.prometheus_url();
    let mut ev = Evidence::default();
    let mut notes = Vec::new();
    for d in &args.declare {
        match d.as_str() {
            "data-corruption" => ev.data_corruption = true,
            "security-breach" => ev.security_breach = true,
            other => {
                return Err(bad(format!(
                    "--declare {other:?}: expected data-corruption or security-breach"
                )));
            }
        }
    }
    ev.reported_bugs = args.bugs.clone();

    // Availability: the process and its /api/v1/health; for how long, from Prometheus' `up` history when it has
    // a failed scrape, else from when an assessment first saw it down (kept in the state directory).
    let obs_path = state_dir.join(OBSERVED_DOWN);
    let mut observed: BTreeMap<String, DateTime<Utc>> = std::fs::read(&obs_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    for s in &st.services {
        let alive = s.proc.as_ref().is_some_and(|p| p.is_alive());
        let why = if !alive {
            Some("process not running".to_string())
        } else {
            match target::probe_service(&http, s.port).await {
                Ok(None) => None,
                Ok(Some(detail)) => Some(format!("unhealthy: {detail}")),
                Err(e) => Some(format!("/api/v1/health: {e}")),
            }
        };
        match why {
            None => {
                observed.remove(&s.name);
            }
            Some(why) => {
                let first_seen = *observed.entry(s.name.clone()).or_insert(at);
                let (since, source) = match prom_down_since(&http, &prom, &s.name).await {
                    Some(t) => (t.min(first_seen), "Prometheus up history"),
                    None => (first_seen, "first seen down by xorbctl assess"),
                };
                let secs = u64::try_from((at - since).num_seconds()).unwrap_or(0);
                notes.push(format!(
                    "{}: {why}; down since {} ({source})",
                    s.name,
                    since.to_rfc3339()
                ));
                ev.services_unavailable.push(ServiceDown {
                    service: s.name.clone(),
                    down_for_secs: secs,
                });
            }
        }
    }
    if let Some(parent) = obs_path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let _ = std::fs::write(&obs_path, serde_json::to_vec_pretty(&observed)?);

    // Functionality: phase 5's checks that make sense on a live stack, exactly as a rollback runs them.
    let runner = target::runner(state_dir, paths, release);
    let scratch = tempfile_dir(state_dir)?;
    for name in ["health", "smoke", "tenant-isolation"] {
        let res =
            tokio::time::timeout(Duration::from_secs(90), runner.run_check(name, &scratch)).await;
        match res {
            Ok(Ok(_)) => {}
            Ok(Err(detail)) => ev.checks_failed.push(FailedCheck {
                name: name.into(),
                detail,
            }),
            Err(_) => ev.checks_failed.push(FailedCheck {
                name: name.into(),
                detail: "no answer within 90 s".into(),
            }),
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);

    // Monitoring, latency and error rate: Prometheus, "no data" being evidence too.
    match target::prometheus_targets(&http, &prom).await {
        Err(e) => ev
            .monitoring_issues
            .push(format!("Prometheus does not answer: {e}")),
        Ok(targets) => {
            // A target down because its service is down is that service's unavailability, already evidenced;
            // a monitoring issue is a scrape failing for a service that answers.
            let down: Vec<String> = ev
                .services_unavailable
                .iter()
                .map(|s| format!("xorb-{}", s.service))
                .collect();
            for (job, _) in targets
                .iter()
                .filter(|(job, health)| health == "down" && !down.contains(job))
            {
                ev.monitoring_issues
                    .push(format!("scrape target {job} is down"));
            }
            let (w, offset) = (&measured.window, &measured.baseline_offset);
            let sel = format!("route!~\"{SHARED_ROUTES}\"");
            let p99 = format!(
                "histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket{{{sel}}}[{w}]%O)))"
            );
            // No 5xx series at all is a ratio of 0, not "no data"; no requests at all stays no data.
            let err = format!(
                "(sum(rate(http_requests_total{{status=~\"5..\",{sel}}}[{w}]%O)) or vector(0)) / sum(rate(http_requests_total{{{sel}}}[{w}]%O))"
            );
            for (q, slot) in [(p99, &mut ev.p99_latency_secs), (err, &mut ev.error_rate)] {
                let now_v = prom_scalar(&http, &prom, &q.replace("%O", "")).await;
                let base_v =
                    prom_scalar(&http, &prom, &q.replace("%O", &format!(" offset {offset}"))).await;
                *slot = now_v.map(|now| Comparison {
                    now,
                    baseline: base_v,
                });
            }
        }
    }

    let assessment = policies.matrix.assess(&ev);
    trail.append(
        &user(),
        "governance.assess",
        None,
        json!({"severity": assessment.severity.map(|s| s.to_string()), "evidence": ev}),
    );
    let warranted = assessment.rollback_warranted();
    let report = AssessReport {
        assessed_at: at,
        release: st.release.clone(),
        state_dir: state_dir.clone(),
        assessment,
        evidence: ev,
        measured,
        notes,
    };
    out.result(&report, |r| {
        let mut s = format!(
            "Assessment of {} (release {}) at {} against {}\n",
            r.state_dir.display(),
            r.release,
            r.assessed_at.to_rfc3339(),
            policies.matrix.source
        );
        s.push_str(&r.assessment.to_string());
        if r.assessment.severity.is_none() {
            s.push_str("No rollback needed.\n");
        }
        let m = &r.measured;
        let _ = writeln!(
            s,
            "  note: latency and error rate over {} windows, now against {} before, scraped every {}, without {}",
            m.window, m.baseline_offset, m.scrape_interval, m.routes_excluded
        );
        for n in &r.notes {
            let _ = writeln!(s, "  note: {n}");
        }
        s
    });
    Ok(if warranted { Exit::Unhealthy } else { Exit::Ok })
}

/// The scrape interval, rate window and baseline offset, checked before they go into PromQL: a window under two
/// scrapes holds one sample and has no rate.
fn measured(
    args: &Assess,
    st: &target::StackState,
    release: &xorb_model::release::Release,
) -> anyhow::Result<Measured> {
    let every = match &st.scrape_interval {
        Some(d) => target::parse_prometheus_duration(d)
            .map_err(|e| bad(format!("the stack's scrape interval {e}")))?,
        None => target::release_scrape_interval(release)?,
    };
    let offset = target::parse_prometheus_duration(&args.baseline_offset)
        .map_err(|e| bad(format!("--baseline-offset {e}")))?;
    let window = match &args.window {
        None => every * WINDOW_SCRAPES,
        Some(w) => {
            target::parse_prometheus_duration(w).map_err(|e| bad(format!("--window {e}")))?
        }
    };
    if window < every * 2 {
        return Err(bad(format!(
            "--window {}: at least two scrape intervals ({}), or a rate has one sample",
            target::prometheus_duration(window),
            target::prometheus_duration(every * 2)
        )));
    }
    Ok(Measured {
        scrape_interval: target::prometheus_duration(every),
        window: target::prometheus_duration(window),
        baseline_offset: target::prometheus_duration(offset),
        routes_excluded: SHARED_ROUTES,
    })
}

fn tempfile_dir(state_dir: &Path) -> anyhow::Result<PathBuf> {
    let d = state_dir
        .join("governance")
        .join(format!("assess-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

async fn prom_get(http: &reqwest::Client, url: &str, params: &[(&str, String)]) -> Option<Value> {
    let endpoint = url;
    let url =
        reqwest::Url::parse_with_params(url, params.iter().map(|(k, v)| (*k, v.as_str()))).ok()?;
    // The assessment goes on without Prometheus's figures, but says why they are missing, and a silent
    // Prometheus costs one short wait per query rather than the client's 10 s.
    match target::prometheus_get(http, endpoint, url, PROM_TIMEOUT).await {
        Ok(v) => (v["status"] == "success").then_some(v),
        Err(e) => {
            eprintln!("warning: {e}");
            None
        }
    }
}

/// One Prometheus query during `assess`.
const PROM_TIMEOUT: Duration = Duration::from_secs(3);

/// A PromQL expression's single value now; `None` when Prometheus has no data (or the value is not a number).
async fn prom_scalar(http: &reqwest::Client, base: &str, q: &str) -> Option<f64> {
    let v = prom_get(
        http,
        &format!("{base}/api/v1/query"),
        &[("query", q.to_string())],
    )
    .await?;
    let x: f64 = v["data"]["result"][0]["value"][1].as_str()?.parse().ok()?;
    x.is_finite().then_some(x)
}

/// When the service's scrape target went down, from the last 6 hours of `up`: the first failed scrape after the
/// last good one. `None` when Prometheus has no failed scrape of it (not scraped since it went down).
async fn prom_down_since(
    http: &reqwest::Client,
    base: &str,
    service: &str,
) -> Option<DateTime<Utc>> {
    let end = Utc::now();
    let start = end - chrono::Duration::hours(6);
    let v = prom_get(
        http,
        &format!("{base}/api/v1/query_range"),
        &[
            ("query", format!("up{{job=\"xorb-{service}\"}}")),
            ("start", start.timestamp().to_string()),
            ("end", end.timestamp().to_string()),
            ("step", "5".to_string()),
        ],
    )
    .await?;
    let values = v["data"]["result"][0]["values"].as_array()?;
    let samples: Vec<(f64, bool)> = values
        .iter()
        .filter_map(|p| Some((p[0].as_f64()?, p[1].as_str()? == "1")))
        .collect();
    let (_, last_up) = *samples.last()?;
    if last_up {
        return None;
    }
    let first_down = samples
        .iter()
        .rposition(|(_, up)| *up)
        .map(|i| i + 1)
        .unwrap_or(0);
    let t = samples.get(first_down)?.0;
    DateTime::from_timestamp(t as i64, 0)
}
