//! Phase 3's proof of the backup by its data, before anything destructive: `pg_restore --list` reads only a dump's
//! table of contents, so a dump whose data is damaged or incomplete would pass it. The dump is restored into a
//! scratch database and checksummed with the same scan as the snapshot `3.db.backup` took from the same PostgreSQL
//! snapshot: every table must have the same rows, columns and checksum, and no table may be missing or extra.

use serde::{Deserialize, Serialize};
use xorb_engine::runner::{StepContext, StepError};
use xorb_integrity::FullReport;

use super::backup::{BackupRecord, backup_path, check_dump};
use super::schema::{create_scratch, drop_scratch};
use super::snapshot;
use super::*;
use crate::context::{TargetRunner, failed};
use crate::target::Target;

/// `<run>/db/backup-proof.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackupProof {
    pub dump_sha256: String,
    /// The snapshot the dump was compared with (`integrity-full.json`'s `taken_at`).
    pub snapshot_taken_at: String,
    pub tables: usize,
    pub rows: u64,
    pub restore_ms: u64,
    pub scan_ms: u64,
    /// Empty when proven.
    pub differences: Vec<String>,
}

/// Where the snapshot and the restored dump differ, table by table; empty when the dump holds exactly the snapshot.
pub fn compare(snapshot: &FullReport, restored: &FullReport) -> Vec<String> {
    let mut out = Vec::new();
    for s in &snapshot.tables {
        match restored.tables.iter().find(|r| r.table == s.table) {
            None => out.push(format!("{}: in the snapshot, not in the dump", s.table)),
            Some(r) if r.rows != s.rows => out.push(format!(
                "{}: {} rows in the snapshot, {} in the dump",
                s.table, s.rows, r.rows
            )),
            Some(r) if r.columns != s.columns => out.push(format!(
                "{}: {} columns in the snapshot, {} in the dump",
                s.table, s.columns, r.columns
            )),
            Some(r) if r.checksum != s.checksum => out.push(format!(
                "{}: the same {} rows but other data (checksum {} in the snapshot, {} in the dump)",
                s.table, s.rows, s.checksum, r.checksum
            )),
            Some(_) => {}
        }
    }
    for r in &restored.tables {
        if !snapshot.tables.iter().any(|s| s.table == r.table) {
            out.push(format!("{}: in the dump, not in the snapshot", r.table));
        }
    }
    out
}

pub async fn prove<T: Target>(
    r: &TargetRunner<T>,
    ctx: &StepContext<'_>,
) -> Result<String, StepError> {
    let dir = ctx.run_dir.join("db");
    let proof_path = dir.join("backup-proof.json");
    let record_path = dir.join("backup.json");
    let rec: BackupRecord = std::fs::read(&record_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| {
            fatal(format!(
                "there is no backup to prove: {} is missing or unreadable (3.db.backup records it)",
                record_path.display()
            ))
        })?;
    let dump = backup_path(ctx.run_dir);
    check_dump(&dump, &rec)
        .await
        .map_err(|why| fatal(format!("the backup cannot be proven: {why}")))?;
    snapshot::snapshot_of(ctx.run_dir, rec.snapshot_taken_at.as_deref())
        .map_err(|why| fatal(format!("the backup cannot be proven: {why}")))?;
    let snapshot = snapshot::read_full_report(ctx.run_dir).map_err(fatal)?;

    if let Some(done) = std::fs::read(&proof_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<BackupProof>(&b).ok())
        .filter(|p| {
            p.differences.is_empty()
                && p.dump_sha256 == rec.sha256
                && p.snapshot_taken_at == snapshot.taken_at
        })
    {
        return Ok(format!(
            "kept the proof of {}: {} tables, {} rows restored with the snapshot's checksums",
            dump.display(),
            done.tables,
            done.rows
        ));
    }

    let conn = r.pg()?;
    let admin = connect(&conn.with_db("postgres")).await?;
    let scratch = create_scratch(
        &admin,
        "create a scratch database to restore the backup into",
    )
    .await?;
    let restored = restore_and_scan(&conn.with_db(&scratch), &dump).await;
    let dropped = drop_scratch(&admin, &scratch).await;
    let (restore_ms, restored) = restored?;
    dropped.map_err(db("drop the scratch database"))?;

    let differences = compare(&snapshot, &restored);
    let proof = BackupProof {
        dump_sha256: rec.sha256.clone(),
        snapshot_taken_at: snapshot.taken_at.clone(),
        tables: restored.tables.len(),
        rows: restored.tables.iter().map(|t| t.rows).sum(),
        restore_ms,
        scan_ms: restored.elapsed_ms,
        differences,
    };
    write_json(&proof_path, &proof)?;
    if !proof.differences.is_empty() {
        let more = proof.differences.len().saturating_sub(8);
        return Err(fatal(format!(
            "the backup {} does not hold the data the snapshot saw before the rollback: {}{}. Nothing has been \
             destroyed yet; take a new backup (rerun with a new run) or find out what altered the dump \
             (proof: {})",
            dump.display(),
            proof.differences[..proof.differences.len().min(8)].join("; "),
            if more > 0 {
                format!("; and {more} more")
            } else {
                String::new()
            },
            proof_path.display()
        )));
    }
    Ok(format!(
        "the backup holds the snapshot's data: restored into a scratch database in {restore_ms} ms, {} tables and \
         {} rows with the same checksums as the snapshot of {} (scanned in {} ms); scratch database dropped",
        proof.tables, proof.rows, proof.snapshot_taken_at, proof.scan_ms
    ))
}

/// Restores `dump` into `scratch` (an empty database) and checksums it.
async fn restore_and_scan(
    scratch: &PgConn,
    dump: &std::path::Path,
) -> Result<(u64, FullReport), StepError> {
    let started = std::time::Instant::now();
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut cmd = tokio::process::Command::new(pg_tool("pg_restore"));
    // Owners and grants are the cluster's business, not the data's: the proof restores as the connecting role.
    // Only the tables and their rows: indexes, constraints, triggers and policies (post-data) do not change a
    // checksum, and building them is most of a restore's time at production size.
    cmd.args(["--no-owner", "--no-privileges", "--exit-on-error"])
        .args(["--section=pre-data", "--section=data"])
        .arg(format!("--jobs={jobs}"))
        .arg(format!("--dbname={}", scratch.dbname))
        .arg(dump);
    scratch.env(&mut cmd);
    let out = output(cmd, "pg_restore").await?;
    if !out.status.success() {
        return Err(fatal(format!(
            "the backup {} does not restore: pg_restore into a scratch database failed: {}",
            dump.display(),
            last_line(&scratch.redact(&String::from_utf8_lossy(&out.stderr)))
        )));
    }
    let restore_ms = started.elapsed().as_millis() as u64;
    let restored = xorb_integrity::full(&scratch.config(), &xorb_integrity::ScanOptions::default())
        .await
        .map_err(failed)?;
    Ok((restore_ms, restored))
}

#[cfg(test)]
mod tests {
    use super::*;
    use xorb_integrity::TableChecksum;

    fn scan(tables: &[(&str, u64, usize, &str)]) -> FullReport {
        FullReport {
            taken_at: "t0".into(),
            parallelism: 1,
            tables: tables
                .iter()
                .map(|(t, rows, columns, sum)| TableChecksum {
                    table: t.to_string(),
                    rows: *rows,
                    checksum: sum.to_string(),
                    columns: *columns,
                    primary_key: vec!["id".into()],
                })
                .collect(),
            snapshot_dir: None,
            elapsed_ms: 0,
        }
    }

    #[test]
    fn a_dump_proves_only_with_every_table_equal_and_nothing_extra() {
        let snap = scan(&[("evidence", 3, 4, "aa"), ("tenants", 2, 5, "bb")]);
        assert!(compare(&snap, &snap).is_empty());

        let other_data = scan(&[("evidence", 3, 4, "ab"), ("tenants", 2, 5, "bb")]);
        let d = compare(&snap, &other_data);
        assert_eq!(d.len(), 1);
        assert!(
            d[0].starts_with("evidence: the same 3 rows but other data"),
            "{d:?}"
        );

        let fewer = scan(&[("evidence", 2, 4, "aa"), ("tenants", 2, 5, "bb")]);
        assert_eq!(
            compare(&snap, &fewer),
            ["evidence: 3 rows in the snapshot, 2 in the dump"]
        );

        let column = scan(&[("evidence", 3, 3, "aa"), ("tenants", 2, 5, "bb")]);
        assert_eq!(
            compare(&snap, &column),
            ["evidence: 4 columns in the snapshot, 3 in the dump"]
        );

        let missing_and_extra = scan(&[("evidence", 3, 4, "aa"), ("tenant", 2, 5, "bb")]);
        assert_eq!(
            compare(&snap, &missing_and_extra),
            [
                "tenants: in the snapshot, not in the dump",
                "tenant: in the dump, not in the snapshot"
            ]
        );
    }
}
