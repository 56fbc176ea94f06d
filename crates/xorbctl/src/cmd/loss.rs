//! `xorbctl loss --before RUN|SNAPSHOT_DIR --after current`: rows lost, changed and added per table between a row
//! snapshot and the live database. Design: docs/design/integrity-and-loss.md.

use std::path::{Path, PathBuf};

use xorb_model::exit::Exit;

use crate::errors::UsageError;
use crate::output::Reporter;
use crate::scan::{options, print_report_path, write_report};
use crate::settings::Loss;
use crate::target;

pub async fn run(a: &Loss, out: &Reporter) -> anyhow::Result<Exit> {
    let state_dir = &a.state_dir;
    if a.after != "current" {
        return Err(UsageError(format!(
            "--after {:?}: only `current` (the live database) can be compared for now",
            a.after
        ))
        .into());
    }
    let before = resolve_snapshot(state_dir, &a.before)?;
    let db = target::database(state_dir)?;
    let mut opts = options(&a.scan);
    opts.list_limit = a.list_limit;
    let r = xorb_integrity::loss(&db.config(), &before, &opts).await?;
    out.result(&r, xorb_integrity::LossReport::render_text);
    if a.report {
        print_report_path(out, &write_report(state_dir, "loss", &r)?);
    }
    Ok(Exit::Ok)
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
