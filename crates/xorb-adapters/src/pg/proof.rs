//! Phase 3's proof of the backup by its data, before anything destructive: `pg_restore --list` reads only a dump's
//! table of contents, so a dump whose data is damaged or incomplete would pass it. Every row the dump holds
//! (`pg_restore --data-only --file=-`) is hashed as the scan hashed the rows `3.db.backup` read from the same
//! PostgreSQL snapshot (`xorb_integrity::dump_checksums`): every table must have the same rows, columns and
//! checksum, and no table may be missing or extra. Beside that read, the dump's table definitions (`--section=
//! pre-data`, no rows) are restored into a scratch database: a dump whose rows are whole but whose tables cannot be
//! created again is no backup either.

use serde::{Deserialize, Serialize};
use xorb_engine::runner::{StepContext, StepError};
use xorb_integrity::{FullReport, TableChecksum};

use super::backup::{BackupRecord, backup_path, check_dump};
use super::schema::{create_scratch, drop_scratch};
use super::snapshot;
use super::*;
use crate::context::TargetRunner;
use crate::target::Target;

/// `<run>/db/backup-proof.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackupProof {
    pub dump_sha256: String,
    /// The snapshot the dump was compared with (`integrity-full.json`'s `taken_at`).
    pub snapshot_taken_at: String,
    pub tables: usize,
    pub rows: u64,
    /// Time to read and hash every row of the dump.
    #[serde(default)]
    pub read_ms: u64,
    /// Empty when proven.
    pub differences: Vec<String>,
}

/// Where the snapshot and the restored dump differ, table by table; empty when the dump holds exactly the snapshot.
pub fn compare(snapshot: &FullReport, dumped: &[TableChecksum]) -> Vec<String> {
    let mut out = Vec::new();
    for s in &snapshot.tables {
        match dumped.iter().find(|r| r.table == s.table) {
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
    for r in dumped {
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
    let unproven = |why: String| fatal(format!("the backup cannot be proven: {why}"));
    snapshot::snapshot_of(ctx.run_dir, rec.snapshot_taken_at.as_deref()).map_err(unproven)?;
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
        check_dump(&dump, &rec).await.map_err(unproven)?;
        return Ok(format!(
            "kept the proof of {}: {} tables, {} rows in it with the snapshot's checksums",
            dump.display(),
            done.tables,
            done.rows
        ));
    }

    let conn = r.pg()?;
    let started = std::time::Instant::now();
    // The file's SHA-256 and table of contents, its rows and its definitions, read at the same time; a file that
    // is not the one recorded is the first thing to say.
    let (intact, dumped, defined) = tokio::join!(
        check_dump(&dump, &rec),
        async {
            let dumped = read_dump(&dump).await;
            (dumped, started.elapsed().as_millis() as u64)
        },
        restore_definitions(&conn, &dump)
    );
    intact.map_err(unproven)?;
    let (dumped, read_ms) = dumped;
    let dumped = dumped?;
    defined?;
    let differences = compare(&snapshot, &dumped);
    let proof = BackupProof {
        dump_sha256: rec.sha256.clone(),
        snapshot_taken_at: snapshot.taken_at.clone(),
        tables: dumped.len(),
        rows: dumped.iter().map(|t| t.rows).sum(),
        read_ms,
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
        "the backup holds the snapshot's data: every row of {} read and hashed in {read_ms} ms, {} tables and {} \
         rows with the same checksums as the snapshot of {}; its table definitions restore (scratch database \
         dropped)",
        dump.display(),
        proof.tables,
        proof.rows,
        proof.snapshot_taken_at
    ))
}

/// The dump's table definitions (no rows, no indexes) restored into a scratch database, dropped after.
async fn restore_definitions(conn: &PgConn, dump: &std::path::Path) -> Result<(), StepError> {
    let admin = connect(&conn.with_db("postgres")).await?;
    let scratch = create_scratch(
        &admin,
        "create a scratch database to restore the backup's tables into",
    )
    .await?;
    let target = conn.with_db(&scratch);
    let mut cmd = tokio::process::Command::new(pg_tool("pg_restore"));
    // Owners and grants are the cluster's business: the definitions are restored as the connecting role.
    cmd.args([
        "--no-owner",
        "--no-privileges",
        "--exit-on-error",
        "--section=pre-data",
    ])
    .arg(format!("--dbname={}", target.dbname))
    .arg(dump);
    target.env(&mut cmd);
    let out = output(cmd, "pg_restore").await;
    let dropped = drop_scratch(&admin, &scratch).await;
    let out = out?;
    if !out.status.success() {
        return Err(fatal(format!(
            "the backup {} does not restore: its table definitions fail in a scratch database: {}",
            dump.display(),
            last_line(&target.redact(&String::from_utf8_lossy(&out.stderr)))
        )));
    }
    dropped.map_err(db("drop the scratch database"))
}

/// The checksums of every table `dump` holds, from its rows as `pg_restore` prints them (no database needed).
async fn read_dump(dump: &std::path::Path) -> Result<Vec<TableChecksum>, StepError> {
    let dump = dump.to_path_buf();
    let joined = tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new(pg_tool("pg_restore"))
            .args(["--data-only", "--file=-"])
            .arg(&dump)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run pg_restore: {e}"))?;
        let stdout = child.stdout.take().expect("piped");
        let read =
            xorb_integrity::dump_checksums(std::io::BufReader::with_capacity(1 << 20, stdout));
        // Reading stops at the first malformed line: end pg_restore rather than wait for it to fill the pipe.
        if read.is_err() {
            let _ = child.kill();
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("pg_restore: {e}"))?;
        if !out.status.success() && read.is_ok() {
            return Err(format!(
                "pg_restore cannot read the rows of {}: {}",
                dump.display(),
                last_line(&String::from_utf8_lossy(&out.stderr))
            ));
        }
        read.map_err(|e| format!("{}: {e}", dump.display()))
    })
    .await
    .map_err(|e| fatal(format!("the proof's reader stopped: {e}")))?;
    joined.map_err(|why| fatal(format!("the backup cannot be proven: {why}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tables(tables: &[(&str, u64, usize, &str)]) -> Vec<TableChecksum> {
        tables
            .iter()
            .map(|(t, rows, columns, sum)| TableChecksum {
                table: t.to_string(),
                rows: *rows,
                checksum: sum.to_string(),
                columns: *columns,
                primary_key: vec!["id".into()],
            })
            .collect()
    }

    fn scan(t: &[(&str, u64, usize, &str)]) -> FullReport {
        FullReport {
            taken_at: "t0".into(),
            parallelism: 1,
            tables: tables(t),
            snapshot_dir: None,
            elapsed_ms: 0,
        }
    }

    #[test]
    fn a_dump_proves_only_with_every_table_equal_and_nothing_extra() {
        let snap = scan(&[("evidence", 3, 4, "aa"), ("tenants", 2, 5, "bb")]);
        assert!(compare(&snap, &snap.tables).is_empty());

        let other_data = tables(&[("evidence", 3, 4, "ab"), ("tenants", 2, 5, "bb")]);
        let d = compare(&snap, &other_data);
        assert_eq!(d.len(), 1);
        assert!(
            d[0].starts_with("evidence: the same 3 rows but other data"),
            "{d:?}"
        );

        let fewer = tables(&[("evidence", 2, 4, "aa"), ("tenants", 2, 5, "bb")]);
        assert_eq!(
            compare(&snap, &fewer),
            ["evidence: 3 rows in the snapshot, 2 in the dump"]
        );

        let column = tables(&[("evidence", 3, 3, "aa"), ("tenants", 2, 5, "bb")]);
        assert_eq!(
            compare(&snap, &column),
            ["evidence: 4 columns in the snapshot, 3 in the dump"]
        );

        let missing_and_extra = tables(&[("evidence", 3, 4, "aa"), ("tenant", 2, 5, "bb")]);
        assert_eq!(
            compare(&snap, &missing_and_extra),
            [
                "tenants: in the snapshot, not in the dump",
                "tenant: in the dump, not in the snapshot"
            ]
        );
    }
}
