//! The files of phase 3's integrity snapshot in a run's directory: the row snapshot and its checksums, taken by
//! `3.db.backup` with the dump, read by `3.db.proof` and by phase 5's loss assessment (`crate::integrity`).

use std::path::{Path, PathBuf};

use xorb_engine::runner::StepError;

use crate::context::failed;
use crate::files::write_file;

/// `<run>/db/snapshot`: the row snapshot (outside the database) the loss assessment compares with.
pub fn snapshot_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("db").join("snapshot")
}

/// `<run>/db/integrity-full.json`: the per-table checksums taken with the snapshot.
pub fn full_report_path(run_dir: &Path) -> PathBuf {
    run_dir.join("db").join("integrity-full.json")
}

/// Moves a finished row snapshot from `tmp` into place and records its checksums (`3.db.backup` takes it, with
/// the dump, from one PostgreSQL snapshot).
pub(crate) fn install_snapshot(
    run_dir: &Path,
    tmp: &Path,
    mut report: xorb_integrity::FullReport,
) -> Result<(), StepError> {
    let dir = snapshot_dir(run_dir);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(tmp, &dir).map_err(failed)?;
    report.snapshot_dir = Some(dir);
    write_file(
        &full_report_path(run_dir),
        &serde_json::to_string_pretty(&report).unwrap_or_default(),
    )
    .map_err(failed)
}

/// The row snapshot and checksums of the run are whole and are the ones taken at `taken_at` (with the dump).
pub(crate) fn snapshot_of(run_dir: &Path, taken_at: Option<&str>) -> Result<(), String> {
    let report = read_full_report(run_dir)?;
    if !snapshot_dir(run_dir).join("manifest.json").exists() {
        return Err(format!(
            "the row snapshot {} is incomplete",
            snapshot_dir(run_dir).display()
        ));
    }
    match taken_at {
        Some(t) if t == report.taken_at => Ok(()),
        _ => Err(format!(
            "{} was not taken with the dump (its snapshot is of {}, the dump's of {})",
            full_report_path(run_dir).display(),
            report.taken_at,
            taken_at.unwrap_or("an unknown moment")
        )),
    }
}

/// `integrity-full.json`: the checksums taken with the dump.
pub(crate) fn read_full_report(run_dir: &Path) -> Result<xorb_integrity::FullReport, String> {
    let path = full_report_path(run_dir);
    let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| format!("{} is not a full scan: {e}", path.display()))
}
