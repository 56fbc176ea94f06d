//! `xorbctl perf --release R` and `xorbctl load`: an open-model load against the stack's api as the tool's check
//! tenant (`xorb_adapters::performance`). `perf` keeps the figures as R's performance baseline, which phase 5's
//! `performance` check replays and compares with; `load` only prints them (traffic for a demo or a test).
//!
//! A baseline is what "healthy" means for a later rollback, so `perf` refuses to keep one measured on another
//! release, or one whose load the api answered with errors beyond the runbook's tolerance.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use xorb_model::exit::Exit;
use xorb_model::limits;
use xorb_model::release::Release;
use xorb_monitor::load::{Figures, Percentiles};
use xorb_monitor::perf::{Baseline, error_ratio};

use crate::errors::{PerfError, UsageError};
use crate::output::Reporter;
use crate::settings::Perf;
use crate::{flags, planning, target};

#[derive(Serialize)]
struct PerfReport {
    release: String,
    api_version: String,
    path: &'static str,
    figures: Figures,
    /// Where the figures were kept (`perf`); None for `load`.
    baseline: Option<PathBuf>,
}

pub async fn run(s: &Perf, out: &Reporter) -> anyhow::Result<Exit> {
    let policy = planning::load_policy(s.args.runbook.as_deref())?.performance;
    let rate = s.args.rate.unwrap_or(policy.rate);
    limits::PERF_RATE
        .check("--rate", rate)
        .map_err(UsageError)?;
    let duration = match &s.args.duration {
        Some(d) => Duration::from_millis(flags::duration_ms("--duration", d)? as u64),
        None => Duration::from_secs(policy.duration_secs),
    };
    if duration < Duration::from_secs(1) || duration > Duration::from_secs(3600) {
        return Err(UsageError(format!(
            "--duration {:?}: a load lasts from 1s to 1h",
            s.args.duration.as_deref().unwrap_or_default()
        ))
        .into());
    }
    let state_dir = &s.locations.state_dir;
    let paths = target::paths(&s.locations)?;
    let st = target::stack_state(state_dir)?;
    let name = s.release.clone().unwrap_or_else(|| st.release.clone());
    // An unknown release is bad input before anything is sent.
    let release = Release::load_named(&paths.releases_root, &name)?;
    if st.release != name {
        return Err(PerfError::WrongRelease(format!(
            "the stack in {} runs {}, not {name}: a baseline of {name} is measured on a healthy {name}",
            state_dir.display(),
            st.release
        ))
        .into());
    }
    out.line(format!(
        "Sending {} requests at {rate}/s for {} to the api ({name}), latency counted from each request's due time…",
        (f64::from(rate) * duration.as_secs_f64()).floor(),
        xorb_engine::format_duration_ms(duration.as_millis() as u64)
    ));
    let runner = target::runner(state_dir, paths, release);
    let measured = runner
        .measure(f64::from(rate), duration)
        .await
        .map_err(|e| PerfError::Unreachable(format!("the load could not be sent: {e}")))?;
    if measured.api_release != name {
        return Err(PerfError::WrongRelease(format!(
            "the api answered as {} during the load, not {name}: nothing kept",
            measured.api_release
        ))
        .into());
    }
    let errors = error_ratio(&measured.figures);
    let mut report = PerfReport {
        release: name.clone(),
        api_version: measured.api_version.clone(),
        path: xorb_adapters::performance::LOAD_PATH,
        figures: measured.figures,
        baseline: None,
    };
    let unhealthy = errors > f64::from(policy.error_increase_permille) / 1000.0;
    if s.release.is_some() && !unhealthy {
        let b = Baseline {
            release: name.clone(),
            measured_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            api_version: report.api_version.clone(),
            path: report.path.to_string(),
            figures: report.figures.clone(),
        };
        report.baseline = Some(xorb_adapters::performance::save_baseline(state_dir, &b)?);
    }
    out.result(&report, text);
    if s.release.is_some() && unhealthy {
        return Err(PerfError::Unhealthy(format!(
            "{name} answered {:.2}% of the load with errors (5xx, no answer in 10 s, or more than 512 in flight): \
             not kept as its baseline",
            errors * 100.0
        ))
        .into());
    }
    Ok(Exit::Ok)
}

fn line(label: &str, p: &Percentiles) -> String {
    format!(
        "  {label:<24} p50 {:>8.1} ms   p90 {:>8.1}   p99 {:>8.1}   p99.9 {:>8.1}   max {:>8.1}\n",
        p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.max_ms
    )
}

fn text(r: &PerfReport) -> String {
    let f = &r.figures;
    let mut t = format!(
        "{} (version {}): GET {} {} times at {}/s over {}\n  answered {}, errors {} ({:.2}%)\n",
        r.release,
        r.api_version,
        r.path,
        f.due,
        f.rate,
        xorb_engine::format_duration_ms(f.duration_ms),
        f.ok,
        f.errors,
        error_ratio(f) * 100.0
    );
    t.push_str(&line("from due time (users):", &f.response));
    t.push_str(&line("from send:", &f.service));
    if let Some(p) = &r.baseline {
        t.push_str(&format!(
            "Kept as the performance baseline of {}: {} (phase 5's `performance` check sends this load again and \
             compares)\n",
            r.release,
            p.display()
        ));
    }
    t
}
