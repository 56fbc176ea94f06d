//! PostgreSQL through its endpoint: the client tools (pg_dump, pg_restore, alembic), preservation, verification,
//! re-import and the critical-data check. Design: docs/design/rollback-semantics.md ("Phase 3").
//!
//! Every child process gets the password through its environment (PGPASSWORD, DATABASE_URL), never through its
//! arguments, and whatever it prints is redacted before it is kept.

pub mod audit;
pub mod audit_check;
pub mod backup;
mod chain_file;
pub mod compat;
pub mod critical;
mod dump_pipe;
pub mod export;
pub mod migrate;
pub mod preserve;
pub mod proof;
pub mod python;
pub mod reimport;
pub mod restore;
pub mod schema;
pub mod scripts;
pub mod snapshot;

use std::path::{Path, PathBuf};
use std::process::Output;

use xorb_engine::runner::StepError;

use crate::AdapterError;
use crate::context::failed;

pub use backup::{BackupRecord, backup, backup_path};
pub use compat::compatibility;
pub use critical::{CriticalReport, critical_check};
pub use export::Manifest;
pub use migrate::{MigrateStep, migrate, probe_migrate};
pub use reimport::{pending_reimports, reimport};
pub use schema::verify;
pub use scripts::{ScriptRevision, check_migrations_dir, observe_database, script_revisions};

/// The server's major version's client tools, when installed (pg_dump refuses a newer server).
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
pub(crate) const SCRATCH_PREFIX: &str = "xorb_verify_";

pub use crate::conn::PgConn;

/// The live Alembic revision; None when the database was never migrated.
pub async fn schema_revision(conn: &PgConn) -> Result<Option<String>, AdapterError> {
    let client = conn.connect().await?;
    let exists = client
        .query_opt(
            "SELECT 1 FROM information_schema.tables WHERE table_name = 'alembic_version'",
            &[],
        )
        .await
        .map_err(|e| AdapterError::db("look up alembic_version", e))?
        .is_some();
    if !exists {
        return Ok(None);
    }
    let row = client
        .query_opt("SELECT version_num FROM alembic_version", &[])
        .await
        .map_err(|e| AdapterError::db("read alembic_version", e))?;
    Ok(row.map(|r| r.get(0)))
}

// ---------------------------------------------------------------------------------------------------------------
// Small helpers of the submodules

pub(crate) fn fatal(e: impl std::fmt::Display) -> StepError {
    StepError::fatal(e.to_string())
}

pub(crate) fn pg_tool(name: &str) -> PathBuf {
    let p = Path::new(PG_BIN).join(name);
    if p.exists() { p } else { PathBuf::from(name) }
}

/// What an error quotes of a tool's output: its verdict line, sanitised and capped (never the whole output,
/// which can repeat a file's content; see `toolout`).
pub(crate) fn last_line(text: &str) -> String {
    crate::toolout::last_line(text)
}

pub(crate) async fn output(
    mut cmd: tokio::process::Command,
    what: &str,
) -> Result<Output, StepError> {
    // The engine drops a step's future at its timeout: the child must not outlive it.
    cmd.kill_on_drop(true).stdin(std::process::Stdio::null());
    cmd.output()
        .await
        .map_err(|e| fatal(format!("cannot run {what}: {e}")))
}

pub(crate) fn write_json(path: &Path, v: &impl serde::Serialize) -> Result<(), StepError> {
    crate::files::write_json(path, v).map_err(failed)
}

pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

pub(crate) fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

pub(crate) async fn live_revision(conn: &PgConn) -> Result<Option<String>, StepError> {
    schema_revision(conn)
        .await
        .map_err(|e| failed(format!("cannot read alembic_version: {e}")))
}

pub(crate) async fn connect(conn: &PgConn) -> Result<tokio_postgres::Client, StepError> {
    conn.connect().await.map_err(failed)
}

pub(crate) fn db(what: &'static str) -> impl Fn(tokio_postgres::Error) -> StepError {
    // tokio-postgres says only "db error"; the server's own message is the cause.
    move |e| match e.as_db_error() {
        Some(d) => failed(format!("database: {what}: {}", d.message())),
        None => failed(format!("database: {what}: {e}")),
    }
}

/// A read-only transaction on one snapshot (repeatable read): an export or a check reads its tables as of one
/// instant while the services keep writing. `what` names it in an error ("begin the evidence export").
pub(crate) async fn read_snapshot<'a>(
    client: &'a mut tokio_postgres::Client,
    what: &'static str,
) -> Result<tokio_postgres::Transaction<'a>, StepError> {
    client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(db(what))
}
