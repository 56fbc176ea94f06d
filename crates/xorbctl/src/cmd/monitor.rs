//! `xorbctl monitor`: the runbook's post-rollback monitoring. Every flag is parsed and checked before
//! anything is read; then the baseline is found (or pinned), and the monitor evaluates once per step
//! until its duration is over or a metric FAILs. Each evaluation's samples are appended to
//! `recording.jsonl` before they are judged, `monitor.json` is the report as it stands, and an interim
//! `report-NNN.json` is kept every report interval. `--replay` recomputes `monitor.json` from a
//! recording, byte for byte.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use xorb_model::exit::Exit;
use xorb_monitor::judge::Verdict;
use xorb_monitor::monitor::{Monitor, Settings};
use xorb_monitor::prom::Prometheus;
use xorb_monitor::queries::Queries;
use xorb_monitor::{live, record};

use crate::errors::UsageError;
use crate::output::Reporter;
use crate::settings;

use crate::flags as parse;

const RECORDING: &str = "recording.jsonl";
const REPORT: &str = "monitor.json";

pub async fn run(s: &settings::Monitor, out: &Reporter) -> anyhow::Result<Exit> {
    if let Some(path) = &s.args.replay {
        return replay(path, out);
    }
    let a = &s.args;
    let baseline_release = a.baseline.clone().unwrap_or_default();
    let duration_ms = parse::duration_ms("--duration", &a.duration)?;
    let step_ms = parse::duration_ms("--step", &a.step)?;
    let report_interval_ms = parse::duration_ms("--report-interval", &a.report_interval)?;
    let lookback_ms = parse::duration_ms("--lookback", &a.lookback)?;
    let threshold = parse::percent("--alert-threshold", &a.alert_threshold)?;
    if step_ms < 1000 || duration_ms < step_ms {
        return Err(UsageError(format!(
            "--step {} and --duration {}: the step must be at least 1s and no longer than the duration",
            a.step, a.duration
        ))
        .into());
    }
    let pinned = a
        .baseline_window
        .as_deref()
        .map(|w| parse::window("--baseline-window", w))
        .transpose()?;
    let run = a
        .run
        .as_deref()
        .map(|r| xorb_engine::load_run(&s.state_dir, r))
        .transpose()?;
    let prom_url = match &a.prometheus {
        Some(u) => u.clone(),
        None => crate::target::stack_state(&s.state_dir)?.prometheus_url(),
    };
    let prom = Prometheus::new(&prom_url, Duration::from_secs(10))?;

    let now = live::now_ms();
    // The next step boundary, never the last one: a window starting before now would judge scrapes made
    // before the monitor began (after a rollback, the failed scrapes of the service it just removed).
    let start_ms = (now + step_ms - 1).div_euclid(step_ms) * step_ms;
    // A whole number of steps: the last evaluation falls on the end.
    let duration_ms = (duration_ms + step_ms - 1) / step_ms * step_ms;
    let queries = Queries::new(&a.jobs, step_ms);
    let (baseline_windows, baseline_source) = match pinned {
        Some(w) => (vec![w], "pinned by the operator".to_string()),
        None => {
            // After a rollback the baseline release runs again: its history is what ran before the run began.
            let cutoff = run
                .as_ref()
                .map_or(start_ms, |r| r.created_at.timestamp_millis());
            let ws = live::find_baseline(
                &prom,
                &baseline_release,
                cutoff,
                duration_ms,
                step_ms,
                lookback_ms,
            )
            .await?;
            (ws, format!("xorb_build_info history before {cutoff} ms"))
        }
    };
    if baseline_windows.is_empty() {
        out.line(format!(
            "note: Prometheus has no window in which {baseline_release} ran (over {}): only the up gate can judge",
            a.lookback
        ));
    }
    let baseline = live::fetch_baseline(&prom, &queries, &baseline_windows, step_ms).await?;
    let settings = Settings {
        baseline_release,
        baseline_source,
        baseline_windows,
        start_ms,
        duration_ms,
        step_ms,
        report_interval_ms,
        threshold,
        alpha: 0.05,
        min_points: 10,
        min_requests: 100,
        queries,
    };
    let dir = output_dir(s, run.as_ref().map(|r| r.run_dir.as_path()), start_ms)?;
    let mut rec = std::fs::OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(dir.join(RECORDING))
        .with_context(|| format!("cannot create {}", dir.join(RECORDING).display()))?;
    writeln!(rec, "{}", record::head_line(&settings, &baseline))?;
    rec.sync_data()?;
    out.line(format!(
        "monitoring for {} against {} ({} window(s) of baseline), every {}; reports in {}",
        a.duration,
        settings.baseline_release,
        settings.baseline_windows.len(),
        a.step,
        dir.display()
    ));

    let mut monitor = Monitor::new(settings, baseline);
    let mut next_report = start_ms + report_interval_ms;
    let mut reports = 0usize;
    live::run(
        &prom,
        &mut monitor,
        Duration::from_millis(500),
        |inc| {
            writeln!(rec, "{}", record::increment_line(inc))?;
            rec.sync_data()
        },
        |m| {
            let text = report_text(m);
            xorb_adapters::files::write_atomic(&dir.join(REPORT), text.as_bytes())
                .map_err(std::io::Error::other)?;
            let e = m
                .evaluations
                .last()
                .expect("an evaluation was just applied");
            if e.at_ms >= next_report || m.finished() {
                reports += 1;
                next_report += report_interval_ms;
                let name = format!("report-{reports:03}.json");
                xorb_adapters::files::write_atomic(&dir.join(&name), text.as_bytes())
                    .map_err(std::io::Error::other)?;
                out.line(progress_line(m));
            }
            Ok(())
        },
    )
    .await
    .context("writing the monitor's recording or reports")?;
    finish(&monitor, &dir, out)
}

fn report_text(m: &Monitor) -> String {
    format!(
        "{}\n",
        serde_json::to_string_pretty(&m.report()).unwrap_or_default()
    )
}

fn progress_line(m: &Monitor) -> String {
    let e = m.evaluations.last().expect("called after an evaluation");
    let s = m.settings();
    let mut line = format!("+{}s {}", (e.at_ms - s.start_ms) / 1000, e.verdict);
    if let Some(err) = &e.error {
        line.push_str(&format!(": {err}"));
    }
    for (name, r) in &e.metrics {
        line.push_str(&format!(
            "\n  {name}: {}: {}",
            r.judgement.verdict, r.judgement.reason
        ));
    }
    line
}

fn finish(m: &Monitor, dir: &Path, out: &Reporter) -> anyhow::Result<Exit> {
    let report = m.report();
    out.result(&report, |r| {
        format!("{}: see {}\n", r.verdict, dir.join(REPORT).display())
    });
    Ok(exit_of(report.verdict))
}

pub fn exit_of(v: Verdict) -> Exit {
    match v {
        Verdict::Pass => Exit::Ok,
        Verdict::Fail => Exit::Unhealthy,
        Verdict::Error => Exit::DependencyFailed,
        Verdict::Inconclusive => Exit::Inconclusive,
    }
}

fn replay(path: &Path, out: &Reporter) -> anyhow::Result<Exit> {
    let file = if path.is_dir() {
        path.join(RECORDING)
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read_to_string(&file)
        .map_err(|e| UsageError(format!("cannot read the recording {}: {e}", file.display())))?;
    let m = record::replay(&text).with_context(|| format!("in {}", file.display()))?;
    // The report's own bytes, whatever --output says: replay is compared with monitor.json.
    let _ = out;
    print!("{}", report_text(&m));
    Ok(exit_of(m.report().verdict))
}

fn output_dir(
    s: &settings::Monitor,
    run_dir: Option<&Path>,
    start_ms: i64,
) -> anyhow::Result<PathBuf> {
    let dir = match (&s.args.out, run_dir) {
        (Some(d), _) => d.clone(),
        (None, Some(r)) => r.join("monitor").join(start_ms.to_string()),
        (None, None) => s.state_dir.join("monitor").join(start_ms.to_string()),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}
