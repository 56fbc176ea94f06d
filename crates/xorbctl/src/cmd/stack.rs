//! `xorbctl stack up|down`: start the local stack or the Kubernetes one (or find it running), stop exactly what
//! `stack up` started.

use std::fmt::Write as _;

use anyhow::Context;
use xorb_model::exit::Exit;

use crate::cli::TargetKind;
use crate::errors::UsageError;
use crate::output::Reporter;
use crate::settings::{StackUp, StateDir};
use crate::target;

/// Whether `stack up` is asked for the Kubernetes stack: `--target kubernetes`, or a state directory bound to
/// one with no `--target` given.
fn kubernetes(s: &StackUp) -> anyhow::Result<bool> {
    Ok(match s.locations.target.target {
        Some(k) => k == TargetKind::Kubernetes,
        None => target::select::bound(&s.locations.state_dir)?.is_some(),
    })
}

async fn up_kubernetes(s: &StackUp, out: &Reporter) -> anyhow::Result<Exit> {
    let t = &s.locations.target;
    let unsupported = [
        (s.bulk_sessions > 0, "--bulk-sessions"),
        (s.scale > 0, "--scale"),
        (s.grafana_dashboards.is_some(), "--grafana-dashboards"),
        (s.scrape_interval.is_some(), "--scrape-interval"),
        (
            t.target_file.is_some(),
            "--target-file (the stack writes its own)",
        ),
        (
            t.kubeconfig.is_some(),
            "--kubeconfig (the stack's control plane has its own)",
        ),
        (t.context.is_some(), "--context"),
        (t.namespace.is_some(), "--namespace"),
    ];
    if let Some((_, flag)) = unsupported.iter().find(|(given, _)| *given) {
        return Err(
            UsageError(format!("stack up --target kubernetes does not take {flag}")).into(),
        );
    }
    let (state_dir, release) = (&s.locations.state_dir, &s.release);
    let paths = target::paths(&s.locations)?;
    out.line(format!(
        "Starting a Kubernetes control plane, its node and the release {release} at {}…",
        state_dir.display()
    ));
    let (state, rel, demo) = (state_dir.clone(), release.clone(), s.demo_data);
    let report =
        tokio::task::spawn_blocking(move || target::kube_stack::up(&state, &paths, &rel, demo))
            .await?
            .with_context(|| format!("stack up --target kubernetes --release {release} failed"))?;
    out.result(&report, |r| {
        let mut s = String::new();
        if r.already_running {
            let _ = writeln!(
                s,
                "The Kubernetes stack already runs {}: nothing to do.",
                r.release
            );
        }
        let _ = writeln!(
            s,
            "Kubernetes stack up: {} in namespace {} (state in {}; bound to it).",
            r.release,
            r.namespace,
            state_dir.display()
        );
        let _ = writeln!(
            s,
            "  kubectl:     kubectl --kubeconfig {} -n {} get deployments",
            r.kubeconfig.display(),
            r.namespace
        );
        let _ = writeln!(s, "  api:         {}", r.api);
        let _ = writeln!(s, "  target file: {}", r.target_file.display());
        let _ = writeln!(s, "  log:         {}", r.log.display());
        if let Some(d) = &r.demo {
            let _ = writeln!(
                s,
                "{}",
                demo_line(&d.tenants, d.sessions_completed, d.findings, d.evidence)
            );
        }
        s
    });
    Ok(Exit::Ok)
}

pub async fn up(s: &StackUp, out: &Reporter) -> anyhow::Result<Exit> {
    if kubernetes(s)? {
        return up_kubernetes(s, out).await;
    }
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
                "{}",
                demo_line(&d.tenants, d.sessions_completed, d.findings, d.evidence)
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
    if target::kube_stack::recorded(state_dir) {
        let dir = state_dir.clone();
        let entries = tokio::task::spawn_blocking(move || target::kube_stack::down(&dir)).await??;
        print_down(out, entries);
        return Ok(Exit::Ok);
    }
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
    print_down(out, entries);
    Ok(Exit::Ok)
}

fn print_down(out: &Reporter, entries: Vec<target::DownEntry>) {
    out.result(&entries, |entries| {
        let mut s = String::new();
        for e in entries {
            let what = target::stop_result_text(e);
            let _ = writeln!(s, "{:<14} pid {:<8} {what}", e.name, e.pid);
        }
        s
    });
}

/// What the demo data created, in one line (the local stack's and the Kubernetes stack's alike).
fn demo_line(tenants: &[String], sessions: usize, findings: i64, evidence: Option<i64>) -> String {
    format!(
        "Demo data: tenants {}, {sessions} sessions completed, {findings} findings{}.",
        tenants.join(", "),
        evidence
            .map(|e| format!(", {e} evidence records"))
            .unwrap_or_default()
    )
}
