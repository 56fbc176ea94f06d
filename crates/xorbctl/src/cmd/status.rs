//! `xorbctl status`: each service's release and health, the schema revision, streams, Redis databases and
//! Prometheus targets; exit 5 when something is unhealthy.

use std::fmt::Write as _;

use xorb_model::exit::Exit;

use crate::output::Reporter;
use crate::settings::Located;
use crate::target;

pub async fn run(s: &Located, out: &Reporter) -> anyhow::Result<Exit> {
    let st = target::stack_status(&s.locations).await?;
    out.result(&st, render_status);
    let all_ok = st.services.iter().all(|s| s.healthy)
        && st.servers.values().all(|s| s.running)
        && st.problems.is_empty();
    Ok(if all_ok { Exit::Ok } else { Exit::Unhealthy })
}

fn render_status(st: &target::StackStatus) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Stack: {}   release {}   schema {}",
        st.state_dir.display(),
        st.release,
        st.schema_revision.as_deref().unwrap_or("none")
    );
    let _ = writeln!(
        s,
        "{:<14} {:<34} {:<18} {:<7} HEALTH",
        "SERVICE", "IMAGE", "REPORTS", "PORT"
    );
    for svc in &st.services {
        let health = if !svc.running {
            "not running"
        } else if svc.healthy {
            "healthy"
        } else {
            "UNHEALTHY"
        };
        let _ = writeln!(
            s,
            "{:<14} {:<34} {:<18} {:<7} {health}",
            svc.name,
            svc.image,
            svc.reported_release.as_deref().unwrap_or("-"),
            svc.port
        );
    }
    for (name, srv) in &st.servers {
        let _ = writeln!(
            s,
            "{name:<14} port {:<6} {}",
            srv.port,
            if srv.running {
                "running"
            } else {
                "NOT RUNNING"
            }
        );
    }
    let _ = writeln!(
        s,
        "Streams: {}",
        if st.streams.is_empty() {
            "none".into()
        } else {
            st.streams.join(", ")
        }
    );
    let dbs: Vec<String> = st
        .redis_databases
        .iter()
        .map(|(db, n)| format!("db{db} ({n} keys)"))
        .collect();
    let _ = writeln!(
        s,
        "Redis databases in use: {}",
        if dbs.is_empty() {
            "none".into()
        } else {
            dbs.join(", ")
        }
    );
    for p in &st.problems {
        let _ = writeln!(s, "PROBLEM: {p}");
    }
    let targets: Vec<String> = st
        .prometheus_targets
        .iter()
        .map(|t| format!("{} {}", t.job, t.health))
        .collect();
    let _ = writeln!(
        s,
        "Prometheus targets: {}",
        if targets.is_empty() {
            "none".into()
        } else {
            targets.join(", ")
        }
    );
    s
}
