//! `xorbctl stack up|down`: start the local stack (or find it running), stop exactly what `stack up` started.

use std::fmt::Write as _;

use anyhow::Context;
use xorb_model::exit::Exit;

use crate::errors::UsageError;
use crate::output::Reporter;
use crate::settings::{StackUp, StateDir};
use crate::target;

pub async fn up(s: &StackUp, out: &Reporter) -> anyhow::Result<Exit> {
    let (state_dir, release) = (&s.locations.state_dir, &s.release);
    let scrape_interval = s
        .scrape_interval
        .as_deref()
        .map(|d| {
            target::parse_prometheus_duration(d)
                .map_err(|e| UsageError(format!("--scrape-interval {e}")))
        })
        .transpose()?;
    let paths = target::paths(&s.locations)?;
    out.line(format!(
        "Starting the local stack at {} on release {release}…",
        state_dir.display()
    ));
    let report = target::stack_up(
        &paths,
        state_dir,
        release,
        s.demo_data,
        s.grafana_dashboards.as_deref(),
        scrape_interval,
        target::DemoSize {
            bulk_sessions: s.bulk_sessions,
            scale: s.scale,
        },
    )
    .await
    .with_context(|| format!("stack up --release {release} failed"))?;
    out.result(&report, |r| {
        let mut s = String::new();
        if r.already_running {
            let _ = writeln!(
                s,
                "The stack already runs {} and every process is alive: nothing to do.",
                r.release
            );
        } else if !r.restarted.is_empty() {
            let _ = writeln!(
                s,
                "Found a half-gone stack ({} had stopped): restarted it with its data.",
                r.restarted.join(", ")
            );
        }
        let _ = writeln!(
            s,
            "Stack up: {} (state in {}).",
            r.release,
            state_dir.display()
        );
        if let Some(d) = &r.demo {
            let _ = writeln!(
                s,
                "Demo data: tenants {}, {} sessions completed, {} findings{}.",
                d.tenants.join(", "),
                d.sessions_completed,
                d.findings,
                d.evidence
                    .map(|e| format!(", {e} evidence records"))
                    .unwrap_or_default()
            );
            if let Some(n) = d.bulk_sessions {
                let _ = writeln!(s, "Bulk history: {n} completed sessions of tenant bulk.");
            }
            if let Some(sc) = &d.scale {
                let rows: Vec<String> = sc.rows.iter().map(|(t, n)| format!("{t} {n}")).collect();
                let _ = writeln!(
                    s,
                    "Scale data (--scale {}): {} findings added in {:.1} s; rows: {}; database {:.1} MB.",
                    sc.requested,
                    sc.findings_added,
                    sc.seconds,
                    rows.join(", "),
                    sc.database_bytes as f64 / 1e6
                );
            }
        }
        s
    });
    Ok(Exit::Ok)
}

pub async fn down(s: &StateDir, out: &Reporter) -> anyhow::Result<Exit> {
    let state_dir = &s.state_dir;
    if let Some(why) = target::unreadable_stack_record(state_dir) {
        out.line(why);
    }
    let Some(entries) = target::stack_down(state_dir).await? else {
        out.line(format!(
            "No stack recorded in {}: nothing to stop.",
            state_dir.display()
        ));
        return Ok(Exit::Ok);
    };
    out.result(&entries, |entries| {
        let mut s = String::new();
        for e in entries {
            let what = target::stop_result_text(e);
            let _ = writeln!(s, "{:<14} pid {:<8} {what}", e.name, e.pid);
        }
        s
    });
    Ok(Exit::Ok)
}
