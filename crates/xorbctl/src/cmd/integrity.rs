//! `xorbctl integrity --quick | --full [--snapshot DIR] | --critical [--report]`: the stack's database checked,
//! through xorb-integrity (and the target's critical-data check). Design: docs/design/integrity-and-loss.md.

use std::fmt::Write as _;

use xorb_model::exit::Exit;

use crate::output::Reporter;
use crate::scan::{options, print_report_path, write_report};
use crate::settings::{Integrity, IntegrityKind};
use crate::target;

pub async fn run(a: &Integrity, out: &Reporter) -> anyhow::Result<Exit> {
    let state_dir = &a.state_dir;
    if a.kind == IntegrityKind::Critical {
        let r = target::critical_check(state_dir).await?;
        out.result(&r, |r| format!("{}\n", r.summary()));
        if a.report {
            print_report_path(out, &write_report(state_dir, "critical", &r)?);
        }
        return Ok(if r.ok { Exit::Ok } else { Exit::Unhealthy });
    }
    let db = target::database(state_dir)?;
    if a.kind == IntegrityKind::Quick {
        let client = db.connect().await?;
        let r = xorb_integrity::quick(&client).await?;
        out.result(&r, render_quick);
        if a.report {
            print_report_path(out, &write_report(state_dir, "quick", &r)?);
        }
    } else {
        let mut opts = options(&a.scan);
        opts.snapshot_dir = a.snapshot.clone();
        let r = xorb_integrity::full(&db.config(), &opts).await?;
        out.result(&r, render_full);
        if a.report {
            print_report_path(out, &write_report(state_dir, "full", &r)?);
        }
    }
    Ok(Exit::Ok)
}

fn render_quick(r: &xorb_integrity::QuickReport) -> String {
    let mut s = format!("Schema fingerprint {}\n", r.schema_fingerprint);
    let _ = writeln!(s, "{:<32} {:>12}", "TABLE", "ROWS");
    for (t, n) in &r.tables {
        let _ = writeln!(s, "{t:<32} {n:>12}");
    }
    s
}

fn render_full(r: &xorb_integrity::FullReport) -> String {
    let mut s = format!(
        "Full integrity scan as of {} ({} tables, {} rows, parallelism {}):\n",
        r.taken_at,
        r.tables.len(),
        r.tables.iter().map(|t| t.rows).sum::<u64>(),
        r.parallelism
    );
    let _ = writeln!(s, "{:<32} {:>12}  CHECKSUM", "TABLE", "ROWS");
    for t in &r.tables {
        let _ = writeln!(s, "{:<32} {:>12}  {}", t.table, t.rows, t.checksum);
    }
    if let Some(d) = &r.snapshot_dir {
        let _ = writeln!(
            s,
            "Row snapshot: {} (compare later with `xorbctl loss --before {}`)",
            d.display(),
            d.display()
        );
    }
    s
}
