//! What `integrity` and `loss` share: their scan options, and the JSON reports they write under
//! `<state-dir>/integrity/`. Design: docs/design/integrity-and-loss.md.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;
use xorb_integrity::ScanOptions;

use crate::output::{Format, Reporter};
use crate::settings::ScanSettings;

pub fn options(scan: &ScanSettings) -> ScanOptions {
    let (parallelism, tables) = (scan.parallelism, &scan.tables);
    let mut o = ScanOptions::default();
    if let Some(p) = parallelism {
        o.parallelism = p.max(1);
    }
    if !tables.is_empty() {
        o.tables = Some(tables.to_vec());
    }
    o
}

/// Writes `value` as `<state>/integrity/<kind>-<UTC time>.json` and returns the path.
pub fn write_report<T: Serialize>(
    state_dir: &Path,
    kind: &str,
    value: &T,
) -> anyhow::Result<PathBuf> {
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

pub fn print_report_path(out: &Reporter, path: &Path) {
    // In JSON mode stdout holds one document: the path goes to stderr there.
    match out.format {
        Format::Text => println!("Report: {}", path.display()),
        Format::Json => eprintln!("Report: {}", path.display()),
    }
}
