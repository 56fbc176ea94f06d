//! `xorbctl integrity` and `xorbctl loss`: the stack's database checked and compared, through xorb-integrity.
//! Design: docs/design/integrity-and-loss.md.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use serde::Serialize;
use xorb_integrity::ScanOptions;
use xorb_local::stack::{Secrets, StackState};

use crate::cli::{Cli, UsageError};
use crate::output::{Format, Reporter};

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("kind").required(true).args(["quick", "full", "critical"])))]
pub struct IntegrityArgs {
    /// Row counts of every table and a fingerprint of the schema.
    #[arg(long)]
    pub quick: bool,
    /// A content checksum of every table, computed as the rows stream (tables and page ranges in parallel).
    #[arg(long)]
    pub full: bool,
    /// The runbook's critical data: tenants, sessions, findings, evidence and its signatures.
    #[arg(long)]
    pub critical: bool,
    /// Also write the JSON report under `<state-dir>/integrity/` and print its path.
    #[arg(long)]
    pub report: bool,
    /// With --full: write a row snapshot (key and per-column hashes of every row) into DIR, for `xorbctl loss`.
    #[arg(long, value_name = "DIR", requires = "full")]
    pub snapshot: Option<PathBuf>,
    /// Connections scanning at once (default: the number of CPUs).
    #[arg(long)]
    pub parallelism: Option<usize>,
    /// Only this table (repeatable).
    #[arg(long = "table", value_name = "TABLE")]
    pub tables: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct LossArgs {
    /// A snapshot directory (from `integrity --full --snapshot DIR`), or a run id (or `latest`) meaning that run's
    /// `runs/RUN/db/snapshot`.
    #[arg(long, value_name = "SNAPSHOT")]
    pub before: String,
    /// What to compare with: only `current` (the live database) for now.
    #[arg(long, default_value = "current")]
    pub after: String,
    /// Keys listed per table and class of difference (the counts are always exact).
    #[arg(long, default_value_t = 20)]
    pub list_limit: usize,
    /// Connections scanning at once (default: the number of CPUs).
    #[arg(long)]
    pub parallelism: Option<usize>,
    /// Only this table (repeatable).
    #[arg(long = "table", value_name = "TABLE")]
    pub tables: Vec<String>,
    /// Also write the JSON report under `<state-dir>/integrity/` and print its path.
    #[arg(long)]
    pub report: bool,
}

fn options(parallelism: Option<usize>, tables: &[String]) -> ScanOptions {
    let mut o = ScanOptions::default();
    if let Some(p) = parallelism {
        o.parallelism = p.max(1);
    }
    if !tables.is_empty() {
        o.tables = Some(tables.to_vec());
    }
    o
}

fn stack_db(state_dir: &Path) -> anyhow::Result<xorb_adapters::pg::PgConn> {
    let st = StackState::load(state_dir)?;
    let secrets = Secrets::load(state_dir)?;
    Ok(st.pg(&secrets))
}

/// Writes `value` as `<state>/integrity/<kind>-<UTC time>.json` and returns the path.
fn write_report<T: Serialize>(state_dir: &Path, kind: &str, value: &T) -> anyhow::Result<PathBuf> {
    let dir = state_dir.join("integrity");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(format!(
        "{kind}-{}.json",
        chrono::Utc::now().format("%Y%m%d-%H%M%S%.3f")
    ));
    std::fs::write(&path, serde_json::to_string_pretty(value)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

fn print_report_path(out: &Reporter, path: &Path) {
    // In JSON mode stdout holds one document: the path goes to stderr there.
    match out.format {
        Format::Text => println!("Report: {}", path.display()),
        Format::Json => eprintln!("Report: {}", path.display()),
    }
}

pub async fn integrity(cli: &Cli, out: &Reporter, a: &IntegrityArgs) -> anyhow::Result<ExitCode> {
    let state_dir = &cli.state_dir;
    if a.critical {
        let r =
            xorb_adapters::pg::critical_check(&stack_db(state_dir)?, &state_dir.join("evidence"))
                .await?;
        out.result(&r, |r| format!("{}\n", r.summary()));
        if a.report {
            print_report_path(out, &write_report(state_dir, "critical", &r)?);
        }
        return Ok(if r.ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(5)
        });
    }
    let db = stack_db(state_dir)?;
    if a.quick {
        let client = db.connect().await?;
        let r = xorb_integrity::quick(&client).await?;
        out.result(&r, render_quick);
        if a.report {
            print_report_path(out, &write_report(state_dir, "quick", &r)?);
        }
    } else {
        let mut opts = options(a.parallelism, &a.tables);
        opts.snapshot_dir = a.snapshot.clone();
        let r = xorb_integrity::full(&db.config(), &opts).await?;
        out.result(&r, render_full);
        if a.report {
            print_report_path(out, &write_report(state_dir, "full", &r)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn loss(cli: &Cli, out: &Reporter, a: &LossArgs) -> anyhow::Result<ExitCode> {
    let state_dir = &cli.state_dir;
    if a.after != "current" {
        return Err(UsageError(format!(
            "--after {:?}: only `current` (the live database) can be compared for now",
            a.after
        ))
        .into());
    }
    let before = resolve_snapshot(state_dir, &a.before)?;
    let db = stack_db(state_dir)?;
    let mut opts = options(a.parallelism, &a.tables);
    opts.list_limit = a.list_limit;
    let r = xorb_integrity::loss(&db.config(), &before, &opts).await?;
    out.result(&r, xorb_integrity::LossReport::render_text);
    if a.report {
        print_report_path(out, &write_report(state_dir, "loss", &r)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// A directory as given, or a run's phase-3 snapshot.
fn resolve_snapshot(state_dir: &Path, before: &str) -> anyhow::Result<PathBuf> {
    let as_path = PathBuf::from(before);
    if as_path.is_dir() || before.contains('/') {
        return Ok(as_path);
    }
    if !state_dir.join("journal.sqlite").exists() {
        return Err(UsageError(format!(
            "--before {before:?} is neither a snapshot directory nor a run of {} (it has no runs)",
            state_dir.display()
        ))
        .into());
    }
    let run = xorb_engine::load_run(state_dir, before)?;
    let dir = state_dir
        .join("runs")
        .join(&run.id)
        .join("db")
        .join("snapshot");
    if !dir.is_dir() {
        return Err(UsageError(format!(
            "run {} has no row snapshot ({} is missing)",
            run.id,
            dir.display()
        ))
        .into());
    }
    Ok(dir)
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
