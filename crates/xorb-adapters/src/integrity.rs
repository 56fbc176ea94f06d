//! Phase 3's integrity snapshot and phase 5's loss assessment on the local target: what changed between the
//! moment before the first downgrade and now, with the data the downgrades destroyed accounted for by what was
//! preserved and verified. Design: docs/design/integrity-and-loss.md.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use xorb_engine::runner::{StepContext, StepError};
use xorb_integrity::{LossReport, ScanOptions, TableState};
use xorb_model::plan::Preserve;

use crate::context::{TargetRunner, failed};
use crate::files::write_file;
use crate::pg::Manifest;
pub use crate::pg::snapshot::{full_report_path, snapshot_dir};
use crate::target::Target;

/// One table's loss, and what accounts for it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Accounted {
    pub lost: u64,
    pub preserved: u64,
    pub verified: bool,
    pub by: String,
}

/// `<run>/loss.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LossAssessment {
    pub report: LossReport,
    /// Table (or table.column) → the preserved export that accounts for its loss.
    pub accounted: BTreeMap<String, Accounted>,
    /// Losses nothing accounts for: the check fails on any.
    pub unaccounted: Vec<String>,
    /// For people and the report, one line per table that differs.
    pub lines: Vec<String>,
}

fn manifests(run_dir: &Path) -> BTreeMap<&'static str, Manifest> {
    let mut out = BTreeMap::new();
    for p in [
        Preserve::Evidence,
        Preserve::ControlPlane,
        Preserve::IsolationModes,
        Preserve::AuditChain,
    ] {
        let f = run_dir
            .join("preserved")
            .join(p.name())
            .join("manifest.json");
        if let Some(m) = std::fs::read(&f)
            .ok()
            .and_then(|b| serde_json::from_slice::<Manifest>(&b).ok())
        {
            out.insert(p.name(), m);
        }
    }
    out
}

/// Compares the phase-3 snapshot with the live database and accounts for every row lost.
pub fn assess(report: LossReport, run_dir: &Path) -> LossAssessment {
    let preserved = manifests(run_dir);
    let find = |table: &str| -> Option<(&'static str, u64, bool)> {
        preserved
            .iter()
            .find_map(|(kind, m)| m.rows.get(table).map(|n| (*kind, *n as u64, m.verified)))
    };
    let mut accounted = BTreeMap::new();
    let mut unaccounted = Vec::new();
    let mut lines = Vec::new();
    for t in &report.tables {
        // Alembic's bookkeeping: the migrations change it by design, and 3.db.verify checks its value.
        if t.table == "alembic_version" {
            if t.differs() {
                lines.push(format!(
                    "alembic_version: {} → {} (the migrations; checked by 3.db.verify)",
                    t.lost_keys.join(", "),
                    t.added_keys.join(", ")
                ));
            }
            continue;
        }
        if t.lost > 0 {
            match find(&t.table) {
                Some((kind, n, verified)) if verified && n >= t.lost => {
                    let how = if t.state == TableState::Dropped {
                        "dropped by the downgrade"
                    } else {
                        "lost"
                    };
                    lines.push(if t.table == "audit_chain" {
                        format!(
                            "advanced audit logs (audit_chain): {} chain entries {how}, {n} preserved and verified \
                             (5.check.audit-log verifies the audit log against them)",
                            t.lost
                        )
                    } else {
                        format!(
                            "{}: {} {} rows {how}, {n} preserved and verified",
                            t.table, t.lost, t.table
                        )
                    });
                    accounted.insert(
                        t.table.clone(),
                        Accounted {
                            lost: t.lost,
                            preserved: n,
                            verified,
                            by: format!("preserved/{kind}"),
                        },
                    );
                }
                other => {
                    let why = match other {
                        Some((kind, n, verified)) => format!(
                            "preserved/{kind} holds {n} rows{}",
                            if verified { "" } else { " (not verified)" }
                        ),
                        None => "nothing preserved it".into(),
                    };
                    let keys = if t.lost_keys.is_empty() {
                        String::new()
                    } else {
                        format!(" (keys {})", t.lost_keys.join(", "))
                    };
                    unaccounted.push(format!("{}: {} rows lost{keys}; {why}", t.table, t.lost));
                }
            }
        }
        for c in &t.columns_dropped {
            let name = format!("{}.{}", t.table, c.name);
            match preserved.get(Preserve::IsolationModes.name()) {
                Some(m) if name == "tenants.isolation_mode" && m.verified => {
                    let n = m.rows.values().map(|n| *n as u64).max().unwrap_or(0);
                    lines.push(format!(
                        "{name}: column dropped by the downgrade, {} values; {n} preserved and verified",
                        c.non_null_values
                    ));
                    accounted.insert(
                        name,
                        Accounted {
                            lost: c.non_null_values,
                            preserved: n,
                            verified: true,
                            by: "preserved/isolation-modes".into(),
                        },
                    );
                }
                _ if c.non_null_values == 0 => {
                    lines.push(format!("{name}: column dropped, it held no values"));
                }
                _ => unaccounted.push(format!(
                    "{name}: column dropped with {} values; nothing preserved it",
                    c.non_null_values
                )),
            }
        }
        if t.changed > 0 || t.added > 0 {
            lines.push(format!(
                "{}: {} rows changed, {} added since the snapshot (the running services, or the migrations)",
                t.table, t.changed, t.added
            ));
        }
    }
    LossAssessment {
        report,
        accounted,
        unaccounted,
        lines,
    }
}

/// Phase 5's `loss` check: writes `<run>/loss.json`; fails on any loss nothing accounts for.
pub async fn check_loss<T: Target>(
    r: &TargetRunner<T>,
    ctx: &StepContext<'_>,
) -> Result<String, StepError> {
    let dir = snapshot_dir(ctx.run_dir);
    if !dir.join("manifest.json").exists() {
        return Err(StepError::fatal(format!(
            "no phase 3 snapshot in {}: the loss assessment has nothing to compare with",
            dir.display()
        )));
    }
    let cfg = r.pg()?.config();
    let report = xorb_integrity::loss(&cfg, &dir, &ScanOptions::default())
        .await
        .map_err(failed)?;
    let mut a = assess(report, ctx.run_dir);
    tenant_metrics(r, ctx.run_dir, &mut a).await?;
    write_file(
        &ctx.run_dir.join("loss.json"),
        &serde_json::to_string_pretty(&a).unwrap_or_default(),
    )
    .map_err(failed)?;
    if !a.unaccounted.is_empty() {
        return Err(StepError::fatal(format!(
            "data lost that nothing preserved: {}",
            a.unaccounted.join("; ")
        )));
    }
    let mut detail = if a.lines.is_empty() {
        "nothing lost, changed or added since phase 3's snapshot".to_string()
    } else {
        a.lines.join("; ")
    };
    if a.accounted.is_empty() {
        detail.push_str("; no rows lost");
    }
    Ok(detail)
}

/// rc1's per-tenant metrics, preserved beside the audit chain: accounted for when every tenant still has, in
/// `ptaas_sessions`, at least the sessions the preserved series counted (the metrics are a count of that table,
/// so they can be recounted from it); a tenant with fewer is a loss nothing accounts for.
async fn tenant_metrics<T: Target>(
    r: &TargetRunner<T>,
    run_dir: &Path,
    a: &mut LossAssessment,
) -> Result<(), StepError> {
    let dir = run_dir.join("preserved").join(Preserve::AuditChain.name());
    let Some(m) = manifests(run_dir).remove(Preserve::AuditChain.name()) else {
        return Ok(());
    };
    let kept: crate::pg::audit::TenantMetrics =
        match std::fs::read(dir.join(crate::pg::audit::METRICS_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
        {
            Some(k) if m.verified => k,
            _ => {
                a.unaccounted.push(format!(
                    "tenant metrics: no verified export in {}",
                    dir.display()
                ));
                return Ok(());
            }
        };
    let client = r.pg()?.connect().await.map_err(failed)?;
    let live = crate::pg::audit::tenant_series(&client).await?;
    let short = crate::pg::audit::tenants_short(&kept, &live);
    let series = kept.series.len() as u64;
    if short.is_empty() {
        let per = kept.per_tenant();
        a.lines.push(format!(
            "rc1 tenant metrics ({}): {series} series over {} tenants ({} sessions) preserved and verified: \
             recounted from ptaas_sessions now, every tenant still has its sessions",
            kept.metric,
            per.len(),
            per.values().sum::<i64>()
        ));
        a.accounted.insert(
            "tenant_metrics".into(),
            Accounted {
                lost: series,
                preserved: series,
                verified: true,
                by: format!("preserved/{}", Preserve::AuditChain.name()),
            },
        );
    } else {
        a.unaccounted.push(format!(
            "tenant metrics: sessions the preserved series counted are gone ({})",
            short.join(", ")
        ));
    }
    Ok(())
}

/// Phase 5's `integrity-full` check: every table checksummed again (`<run>/db/integrity-after-full.json`) and
/// compared with phase 3's full scan. A table the target schema keeps must not hold fewer rows than it did; tables
/// the downgrades dropped, and changed checksums, are reported (the `loss` check accounts for them).
pub async fn check_full<T: Target>(
    r: &TargetRunner<T>,
    ctx: &StepContext<'_>,
) -> Result<String, StepError> {
    let before_path = full_report_path(ctx.run_dir);
    let before: xorb_integrity::FullReport = std::fs::read(&before_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| {
            StepError::fatal(format!(
                "{} is missing: phase 3's full scan did not run, so there is nothing to compare with",
                before_path.display()
            ))
        })?;
    let cfg = r.pg()?.config();
    let after = xorb_integrity::full(&cfg, &ScanOptions::default())
        .await
        .map_err(failed)?;
    write_file(
        &ctx.run_dir.join("db").join("integrity-after-full.json"),
        &serde_json::to_string_pretty(&after).unwrap_or_default(),
    )
    .map_err(failed)?;
    let c = compare_full(&before, &after);
    if !c.lost.is_empty() {
        return Err(StepError::fatal(format!(
            "rows lost since phase 3's full scan: {}",
            c.lost.join(", ")
        )));
    }
    let rows: u64 = after.tables.iter().map(|t| t.rows).sum();
    let mut detail = format!(
        "{} tables, {rows} rows checksummed; {} unchanged since phase 3",
        after.tables.len(),
        c.unchanged
    );
    if !c.changed.is_empty() {
        detail.push_str(&format!("; changed: {}", c.changed.join(", ")));
    }
    if !c.dropped.is_empty() {
        detail.push_str(&format!("; dropped: {}", c.dropped.join(", ")));
    }
    Ok(detail)
}

/// How two full scans differ, table by table.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FullComparison {
    pub unchanged: usize,
    /// Tables with the same or more rows and another checksum.
    pub changed: Vec<String>,
    /// Tables with fewer rows ("table: before → after").
    pub lost: Vec<String>,
    /// Tables of the first scan absent from the second.
    pub dropped: Vec<String>,
}

pub fn compare_full(
    before: &xorb_integrity::FullReport,
    after: &xorb_integrity::FullReport,
) -> FullComparison {
    let mut c = FullComparison::default();
    for b in &before.tables {
        match after.tables.iter().find(|a| a.table == b.table) {
            None => c.dropped.push(b.table.clone()),
            Some(a) if a.rows < b.rows => {
                c.lost.push(format!("{}: {} → {}", b.table, b.rows, a.rows))
            }
            Some(a) if a.checksum == b.checksum && a.columns == b.columns => c.unchanged += 1,
            Some(_) => c.changed.push(b.table.clone()),
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use xorb_integrity::{FullReport, TableChecksum};

    fn scan(tables: &[(&str, u64, &str)]) -> FullReport {
        FullReport {
            taken_at: String::new(),
            parallelism: 1,
            tables: tables
                .iter()
                .map(|(t, rows, sum)| TableChecksum {
                    table: t.to_string(),
                    rows: *rows,
                    checksum: sum.to_string(),
                    columns: 3,
                    primary_key: vec!["id".into()],
                })
                .collect(),
            snapshot_dir: None,
            elapsed_ms: 0,
        }
    }

    #[test]
    fn full_scans_compare_table_by_table() {
        let before = scan(&[
            ("a", 3, "x"),
            ("b", 5, "y"),
            ("c", 2, "z"),
            ("evidence", 4, "e"),
        ]);
        let after = scan(&[("a", 3, "x"), ("b", 6, "y2"), ("c", 1, "z2")]);
        let c = compare_full(&before, &after);
        assert_eq!(c.unchanged, 1);
        assert_eq!(c.changed, vec!["b"]);
        assert_eq!(c.lost, vec!["c: 2 → 1"]);
        assert_eq!(c.dropped, vec!["evidence"]);
    }
}
