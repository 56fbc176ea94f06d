//! Phase 3's backup: `pg_dump` in custom format of one exported PostgreSQL snapshot, and the full integrity scan with
//! its row snapshot taken from the rows `pg_dump` writes (`dump_pipe`), so the dump and the checksums describe
//! exactly the same data and the database is read once (`3.db.proof` then proves the file by reading its rows
//! back and comparing checksums). Kept once valid.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use xorb_engine::runner::{StepContext, StepError};
use xorb_model::release::Release;

use super::dump_pipe::PipeError;
use super::scripts::alembic;
use super::snapshot;
use super::*;
use crate::context::{TargetRunner, failed};
use crate::evidence::sha256_file;
use crate::files::{mkdir, write_private};
use crate::target::Target;

/// Where the phase-3 dump of a run is.
pub fn backup_path(run_dir: &Path) -> PathBuf {
    run_dir.join("db").join("xorb.dump")
}

/// `<run>/db/backup.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupRecord {
    pub file: String,
    pub sha256: String,
    pub bytes: u64,
    /// alembic_version when the dump was taken.
    pub revision: Option<String>,
    pub created_at: String,
    /// Entries `pg_restore --list` found in it.
    pub entries: usize,
    pub list: String,
    pub pg_dump: String,
    /// `taken_at` of the integrity scan that read the same exported snapshot as the dump (`integrity-full.json`);
    /// absent in records of older runs, whose dump and scan read the database at different moments.
    #[serde(default)]
    pub snapshot_taken_at: Option<String>,
}

/// The dump is intact (its SHA-256 is the recorded one) and `pg_restore --list` reads it; returns the listing.
pub(crate) async fn check_dump(dump: &Path, rec: &BackupRecord) -> Result<String, String> {
    // On a blocking thread, not in place: the proof reads the dump's rows at the same time.
    let file = dump.to_path_buf();
    let sha = tokio::task::spawn_blocking(move || sha256_file(&file))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    if sha != rec.sha256 {
        return Err(format!(
            "{} has SHA-256 {sha}, not the recorded {}",
            dump.display(),
            rec.sha256
        ));
    }
    pg_restore_list(dump).await
}

pub(crate) async fn pg_restore_list(dump: &Path) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new(pg_tool("pg_restore"));
    cmd.arg("--list").arg(dump);
    let out = output(cmd, "pg_restore --list")
        .await
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "pg_restore --list {} failed: {}",
            dump.display(),
            last_line(&String::from_utf8_lossy(&out.stderr))
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn list_entries(list: &str) -> usize {
    list.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with(';'))
        .count()
}

pub async fn backup<T: Target>(
    r: &TargetRunner<T>,
    ctx: &StepContext<'_>,
) -> Result<String, StepError> {
    let dir = ctx.run_dir.join("db");
    mkdir(&dir, 0o700).map_err(failed)?;
    let dump = backup_path(ctx.run_dir);
    let record_path = dir.join("backup.json");
    let conn = r.pg()?;
    let revision = live_revision(&conn).await?;

    if let Some(rec) = std::fs::read(&record_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<BackupRecord>(&b).ok())
    {
        let whole = match check_dump(&dump, &rec).await {
            Ok(_) => snapshot::snapshot_of(ctx.run_dir, rec.snapshot_taken_at.as_deref()),
            Err(why) => Err(why),
        };
        match whole {
            Ok(()) => {
                return Ok(format!(
                    "kept the existing backup {} and its integrity snapshot (SHA-256 {} still matches,                      pg_restore --list reads {} entries; taken at revision {})",
                    dump.display(),
                    short(&rec.sha256),
                    rec.entries,
                    rec.revision.as_deref().unwrap_or("none")
                ));
            }
            // Re-dumping now would record the *migrated* database as the pre-rollback backup.
            Err(why) if rec.revision != revision => {
                return Err(fatal(format!(
                    "the pre-rollback backup is damaged ({why}) and the database has moved on since it was taken \
                     (alembic_version {} then, {} now): a new dump would not be a pre-rollback backup. \
                     Keep {} for inspection and restore from another backup",
                    rec.revision.as_deref().unwrap_or("none"),
                    revision.as_deref().unwrap_or("none"),
                    dir.display()
                )));
            }
            Err(_) => {}
        }
    }

    // Both are written beside and moved into place once whole; the record comes after the snapshot and before the
    // dump, so a crash anywhere leaves a pair that the check above refuses, and this step takes both again.
    let partial = dir.join("xorb.dump.partial");
    let _ = std::fs::remove_file(&partial);
    let snapshot_tmp = dir.join("snapshot.partial");
    let _ = std::fs::remove_dir_all(&snapshot_tmp);
    let from = Release::load_named(&r.paths.releases_root, ctx.from).map_err(fatal)?;
    let migrations = from.migrations_dir();
    let alembic_says = async {
        let (current, history) = tokio::join!(
            alembic(&r.paths, &migrations, &conn, &["current"], None),
            alembic(
                &r.paths,
                &migrations,
                &conn,
                &["history", "--verbose"],
                None
            )
        );
        Ok::<_, StepError>((current?.0, history?.0))
    };
    // One read of the database: the scan takes its rows from the dump as it is written (`dump_pipe`).
    let scan = xorb_integrity::DumpScan::begin(&conn.config(), Some(snapshot_tmp.clone()))
        .await
        .map_err(failed)?;
    let (script, pipe) = super::dump_pipe::start(&conn, &partial, scan.snapshot_id())?;
    // pg_dump runs and fills its pipe while this waits: a test can stop it in the middle of a dump.
    xorb_engine::pause::inside(ctx.step_id, "dumping").await;
    let (scanned, dumped, said) = tokio::join!(scan.read(script), pipe.run(), alembic_says);
    let reading = |e| format!("reading the rows of the dump as it was taken: {e}");
    let report = match (scanned, dumped) {
        (Ok(report), Ok(dumped)) => Ok((report, dumped)),
        // pg_dump failing ends the rows early: its own error is the cause.
        (_, Err(PipeError::Dump(e))) => Err(e),
        (Ok(_), Err(PipeError::Pipe(e))) => Err(e),
        (Err(e), Ok(_)) => Err(failed(reading(e))),
        // Either can end the other (a reader that stops breaks the pipe; a broken pipe cuts the rows): say both.
        (Err(e), Err(PipeError::Pipe(p))) => Err(failed(format!("{}; the pipe: {p}", reading(e)))),
    };
    let (report, dumped) = report.inspect_err(|_| {
        let _ = std::fs::remove_file(&partial);
    })?;
    let (current, history) = said?;
    let scan_ms = report.elapsed_ms;
    let taken_at = report.taken_at.clone();
    let rows: u64 = report.tables.iter().map(|t| t.rows).sum();
    let tables = report.tables.len();
    snapshot::install_snapshot(ctx.run_dir, &snapshot_tmp, report)?;

    let (sha, bytes) = (dumped.sha256, dumped.bytes);
    let list = pg_restore_list(&partial).await.map_err(failed)?;
    let list_path = dir.join("xorb.dump.list");
    write_private(&list_path, list.as_bytes()).map_err(failed)?;
    let version = {
        let mut cmd = tokio::process::Command::new(pg_tool("pg_dump"));
        cmd.arg("--version");
        output(cmd, "pg_dump --version")
            .await
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    // The cluster roles the database refers to, which pg_dump leaves out: a restore creates them again.
    let roles = super::restore::read_roles(&connect(&conn).await?).await?;
    write_json(&super::restore::roles_path(ctx.run_dir), &roles)?;
    let rec = BackupRecord {
        file: "xorb.dump".into(),
        sha256: sha.clone(),
        bytes,
        revision: revision.clone(),
        created_at: now(),
        entries: list_entries(&list),
        list: "xorb.dump.list".into(),
        pg_dump: version,
        snapshot_taken_at: Some(taken_at.clone()),
    };
    write_json(&record_path, &rec)?;
    std::fs::rename(&partial, &dump)
        .map_err(|e| failed(format!("cannot rename {}: {e}", partial.display())))?;

    write_private(&dir.join("alembic-current.txt"), current.as_bytes()).map_err(failed)?;
    write_private(&dir.join("alembic-history.txt"), history.as_bytes()).map_err(failed)?;

    Ok(format!(
        "pg_dump (custom format, uncompressed) into {}: {} bytes, SHA-256 {}, {} entries readable by pg_restore --list; \
         its {tables} tables and {rows} rows checksummed and snapshotted from the rows it wrote, as the database \
         held them at {taken_at} (every table's rows equal to its count there), in {scan_ms} ms; alembic \
         current: {}",
        dump.display(),
        bytes,
        short(&sha),
        rec.entries,
        last_line(&current).trim()
    ))
}

// ---------------------------------------------------------------------------------------------------------------
