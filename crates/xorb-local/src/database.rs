//! Phase 3 on the local target: database backup, compatibility check, schema and data migrations (with what a
//! downgrade destroys preserved first), verification, and re-import of preserved data on roll-forward.
//! Design: docs/design/rollback-semantics.md ("Phase 3").
//!
//! Every child process (pg_dump, pg_restore, alembic) gets the password through its environment (PGPASSWORD,
//! DATABASE_URL), never through its arguments, and whatever it prints is redacted before it is kept.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use xorb_engine::planner::ReimportSource;
use xorb_engine::runner::{Probe, StepContext, StepError};
use xorb_model::plan::{MigrationDirection, Preserve};
use xorb_model::release::Release;
use xorb_model::schema::{LiveDatabase, RevisionInfo};

use crate::LocalError;
use crate::evidence::{self, Verifier, bytea_from_text, sha256, sha256_file};
use crate::rollback::{LocalRunner, failed};
use crate::servers::{PgConn, mkdir, write_private};
use crate::stack::{self, Paths, Secrets, StackState};

/// One `Action::Migrate`, borrowed from the step.
pub struct MigrateStep<'a> {
    pub revision: &'a str,
    pub to_revision: &'a str,
    pub direction: MigrationDirection,
    pub data_migration: Option<&'a str>,
    pub preserve: &'a [Preserve],
    pub timeout: Duration,
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const SCRATCH_PREFIX: &str = "xorb_verify_";

// ---------------------------------------------------------------------------------------------------------------
// Small helpers

fn fatal(e: impl std::fmt::Display) -> StepError {
    StepError::fatal(e.to_string())
}

/// The server's own major version of a client tool when installed (pg_dump refuses a newer server).
fn pg_tool(name: &str) -> PathBuf {
    let p = Path::new(PG_BIN).join(name);
    if p.exists() { p } else { PathBuf::from(name) }
}

fn pg_conn(r: &LocalRunner) -> Result<PgConn, StepError> {
    Ok(r.stack()?.pg(&r.secrets()?))
}

fn redact(text: &str, conn: &PgConn) -> String {
    if conn.password.is_empty() {
        text.to_string()
    } else {
        text.replace(&conn.password, "[REDACTED]")
    }
}

/// What an error quotes of a tool's output: its verdict line, sanitised and capped (never the whole output,
/// which can repeat a file's content; see `toolout`).
fn last_line(text: &str) -> String {
    crate::toolout::last_line(text)
}

/// libpq's environment for the client tools: everything but the program's own options.
fn pg_env(cmd: &mut tokio::process::Command, conn: &PgConn) {
    cmd.env("PGHOST", "127.0.0.1")
        .env("PGPORT", conn.port.to_string())
        .env("PGUSER", &conn.user)
        .env("PGDATABASE", &conn.dbname)
        .env("PGPASSWORD", &conn.password)
        .env("PGCONNECT_TIMEOUT", "10");
}

async fn output(mut cmd: tokio::process::Command, what: &str) -> Result<Output, StepError> {
    // The engine drops a step's future at its timeout: the child must not outlive it.
    cmd.kill_on_drop(true).stdin(std::process::Stdio::null());
    cmd.output()
        .await
        .map_err(|e| fatal(format!("cannot run {what}: {e}")))
}

fn write_json(path: &Path, v: &impl Serialize) -> Result<(), StepError> {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    write_atomic(path, text.as_bytes())
}

/// Write-then-rename, 0600: a reader never sees half a manifest.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StepError> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    write_private(&tmp, bytes).map_err(failed)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        failed(format!(
            "cannot rename {} to {}: {e}",
            tmp.display(),
            path.display()
        ))
    })
}

fn set_private(path: &Path) -> Result<(), StepError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| failed(format!("cannot set mode of {}: {e}", path.display())))
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

async fn live_revision(conn: &PgConn) -> Result<Option<String>, StepError> {
    stack::schema_revision(conn)
        .await
        .map_err(|e| failed(format!("cannot read alembic_version: {e}")))
}

async fn connect(conn: &PgConn) -> Result<tokio_postgres::Client, StepError> {
    conn.connect().await.map_err(failed)
}

fn db(what: &'static str) -> impl Fn(tokio_postgres::Error) -> StepError {
    move |e| failed(format!("database: {what}: {e}"))
}

// ---------------------------------------------------------------------------------------------------------------
// Migration scripts: xorb_meta.py and alembic

/// A revision as xorb_meta.py prints it, with the module's file (for error messages).
#[derive(Debug, Clone)]
pub struct ScriptRevision {
    pub info: RevisionInfo,
    pub path: String,
}

/// The release's Alembic project must be there before anything asks the database about it: a missing
/// directory is an installation problem to name with its path, not a database that does not answer.
pub fn check_migrations_dir(release: &Release) -> Result<(), LocalError> {
    let dir = release.migrations_dir();
    if dir.join("alembic.ini").is_file() {
        return Ok(());
    }
    let what = if dir.is_dir() {
        "has no alembic.ini"
    } else {
        "is missing"
    };
    Err(LocalError::Config(format!(
        "the migrations directory {} (schema.migrations of {}'s release.toml) {what}: restore the project's \
         migrations/ beside releases/",
        dir.display(),
        release.name()
    )))
}

/// Runs `<migrations>/xorb_meta.py` with the venv's python.
pub async fn script_revisions(
    paths: &Paths,
    migrations: &Path,
) -> Result<Vec<ScriptRevision>, LocalError> {
    let script = migrations.join("xorb_meta.py");
    if !script.is_file() {
        return Err(LocalError::Config(format!(
            "{} is missing: cannot list the revisions of the migrations in {}",
            script.display(),
            migrations.display()
        )));
    }
    let python = paths.venv.join("bin/python");
    let mut cmd = tokio::process::Command::new(&python);
    cmd.arg(&script)
        .kill_on_drop(true)
        .env_remove("DATABASE_URL");
    let out = cmd.output().await.map_err(|e| LocalError::Alembic {
        what: format!("{}", script.display()),
        why: format!(
            "cannot run {}: {e} (run ./scripts/setup-python)",
            python.display()
        ),
    })?;
    if !out.status.success() {
        return Err(LocalError::Alembic {
            what: format!("{}", script.display()),
            why: last_line(&String::from_utf8_lossy(&out.stderr)),
        });
    }
    let v: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).map_err(|e| {
        LocalError::Config(format!("{} printed malformed JSON: {e}", script.display()))
    })?;
    v.into_iter()
        .map(|item| {
            let path = item["path"].as_str().unwrap_or_default().to_string();
            let info: RevisionInfo = serde_json::from_value(item).map_err(|e| {
                LocalError::Config(format!(
                    "{} printed an unexpected revision: {e}",
                    script.display()
                ))
            })?;
            Ok(ScriptRevision { info, path })
        })
        .collect()
}

/// Runs `alembic ARGS` of the project in `migrations` against `conn`; the password reaches it only through
/// `DATABASE_URL` in its environment. Returns stdout and stderr, redacted.
async fn alembic(
    paths: &Paths,
    migrations: &Path,
    conn: &PgConn,
    args: &[&str],
    statement_timeout: Option<Duration>,
) -> Result<(String, String), StepError> {
    let bin = paths.venv.join("bin/alembic");
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.arg("-c")
        .arg(migrations.join("alembic.ini"))
        .args(args)
        .env("DATABASE_URL", conn.url())
        // libpq (under psycopg2) bounds its connect by this: a stopped server must not hold alembic forever.
        .env("PGCONNECT_TIMEOUT", "10");
    match statement_timeout {
        Some(t) => cmd.env(
            "XORB_STATEMENT_TIMEOUT_MS",
            t.as_millis().max(1).to_string(),
        ),
        None => cmd.env_remove("XORB_STATEMENT_TIMEOUT_MS"),
    };
    let what = format!("alembic {}", args.join(" "));
    let out = output(
        cmd,
        &format!("{what} ({}; run ./scripts/setup-python)", bin.display()),
    )
    .await?;
    let stdout = redact(&String::from_utf8_lossy(&out.stdout), conn);
    let stderr = redact(&String::from_utf8_lossy(&out.stderr), conn);
    if !out.status.success() {
        // Alembic runs all revisions of one call in one transaction: a failure left the schema as it was, so a
        // retry is safe.
        return Err(failed(format!(
            "{what} with the migrations in {} failed: {}",
            migrations.display(),
            last_line(&stderr)
        )));
    }
    Ok((stdout, stderr))
}

/// The live revision and the revisions of `from`'s migration scripts (for the planner).
pub async fn observe_database(
    state_dir: &Path,
    paths: &Paths,
    from: &Release,
) -> Result<LiveDatabase, LocalError> {
    let st = StackState::load(state_dir)?;
    let secrets = Secrets::load(state_dir)?;
    let revision = stack::schema_revision(&st.pg(&secrets))
        .await?
        .ok_or_else(|| {
            LocalError::Config(format!(
                "the database of the stack in {} has no alembic_version: it was never migrated",
                state_dir.display()
            ))
        })?;
    let revisions = script_revisions(paths, &from.migrations_dir())
        .await?
        .into_iter()
        .map(|r| r.info)
        .collect();
    Ok(LiveDatabase {
        revision,
        revisions,
    })
}

// ---------------------------------------------------------------------------------------------------------------
// Backup

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
}

/// The dump is intact (its SHA-256 is the recorded one) and `pg_restore --list` reads it; returns the listing.
async fn check_dump(dump: &Path, rec: &BackupRecord) -> Result<String, String> {
    let sha = tokio::task::block_in_place(|| sha256_file(dump)).map_err(|e| e.to_string())?;
    if sha != rec.sha256 {
        return Err(format!(
            "{} has SHA-256 {sha}, not the recorded {}",
            dump.display(),
            rec.sha256
        ));
    }
    pg_restore_list(dump).await
}

async fn pg_restore_list(dump: &Path) -> Result<String, String> {
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

fn list_entries(list: &str) -> usize {
    list.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with(';'))
        .count()
}

pub async fn backup(r: &LocalRunner, ctx: &StepContext<'_>) -> Result<String, StepError> {
    let dir = ctx.run_dir.join("db");
    mkdir(&dir, 0o700).map_err(failed)?;
    let dump = backup_path(ctx.run_dir);
    let record_path = dir.join("backup.json");
    let conn = pg_conn(r)?;
    let revision = live_revision(&conn).await?;

    if let Some(rec) = std::fs::read(&record_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<BackupRecord>(&b).ok())
    {
        match check_dump(&dump, &rec).await {
            Ok(_) => {
                return Ok(format!(
                    "kept the existing backup {} (SHA-256 {} still matches, pg_restore --list reads {} entries; taken at revision {})",
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

    let partial = dir.join("xorb.dump.partial");
    let _ = std::fs::remove_file(&partial);
    let mut cmd = tokio::process::Command::new(pg_tool("pg_dump"));
    cmd.arg("--format=custom")
        .arg("--no-password")
        .arg("--file")
        .arg(&partial);
    pg_env(&mut cmd, &conn);
    let out = output(cmd, "pg_dump").await?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&partial);
        return Err(failed(format!(
            "pg_dump of database {} on 127.0.0.1:{} failed: {}",
            conn.dbname,
            conn.port,
            last_line(&redact(&String::from_utf8_lossy(&out.stderr), &conn))
        )));
    }
    set_private(&partial)?;
    let sha = tokio::task::block_in_place(|| sha256_file(&partial)).map_err(failed)?;
    let bytes = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
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
    let rec = BackupRecord {
        file: "xorb.dump".into(),
        sha256: sha.clone(),
        bytes,
        revision: revision.clone(),
        created_at: now(),
        entries: list_entries(&list),
        list: "xorb.dump.list".into(),
        pg_dump: version,
    };
    // The record first, then the dump into place: a crash in between leaves a record whose dump is missing,
    // which the next attempt redoes (the schema cannot have moved: migrations run after this step).
    write_json(&record_path, &rec)?;
    std::fs::rename(&partial, &dump)
        .map_err(|e| failed(format!("cannot rename {}: {e}", partial.display())))?;

    // What alembic itself says, with the scripts that know the live revision (the release rolled back from).
    let from = Release::load_named(&r.paths.releases_root, ctx.from).map_err(fatal)?;
    let migrations = from.migrations_dir();
    let (current, _) = alembic(&r.paths, &migrations, &conn, &["current"], None).await?;
    write_private(&dir.join("alembic-current.txt"), current.as_bytes()).map_err(failed)?;
    let (history, _) = alembic(
        &r.paths,
        &migrations,
        &conn,
        &["history", "--verbose"],
        None,
    )
    .await?;
    write_private(&dir.join("alembic-history.txt"), history.as_bytes()).map_err(failed)?;

    Ok(format!(
        "pg_dump (custom format) into {}: {} bytes, SHA-256 {}, {} entries readable by pg_restore --list; alembic current: {}",
        dump.display(),
        bytes,
        short(&sha),
        rec.entries,
        last_line(&current).trim()
    ))
}

// ---------------------------------------------------------------------------------------------------------------
// Compatibility

#[derive(Debug, Clone, Serialize)]
struct CompatibilityRecord {
    live: Option<String>,
    from_revision: String,
    to_revision: String,
    direction: &'static str,
    migrations: String,
    revisions: Vec<String>,
    destroys: Vec<String>,
    target_release: String,
    target_runs_on: Vec<String>,
}

pub async fn compatibility(
    r: &LocalRunner,
    from_revision: &str,
    to_revision: &str,
    release: &str,
    ctx: &StepContext<'_>,
) -> Result<String, StepError> {
    let from = Release::load_named(&r.paths.releases_root, ctx.from).map_err(fatal)?;
    let migrations = from.migrations_dir();
    let scripts = script_revisions(&r.paths, &migrations)
        .await
        .map_err(fatal)?;
    let conn = pg_conn(r)?;
    let live = live_revision(&conn).await?;
    if live.as_deref() != Some(from_revision) && live.as_deref() != Some(to_revision) {
        return Err(fatal(format!(
            "the live database is at revision {}, not at {from_revision} (nor already at {to_revision})",
            live.as_deref().unwrap_or("(none: no alembic_version)")
        )));
    }
    let file_of = |rev: &str| {
        scripts
            .iter()
            .find(|s| s.info.revision == rev)
            .map(|s| s.path.clone())
            .unwrap_or_default()
    };
    let db = LiveDatabase {
        revision: from_revision.to_string(),
        revisions: scripts.iter().map(|s| s.info.clone()).collect(),
    };
    let (direction, path) = match db.downgrade_path(to_revision) {
        Some(p) => ("down", p),
        None => match db.upgrade_path(to_revision) {
            Some(p) => ("up", p),
            None => {
                return Err(fatal(format!(
                    "the migrations of {} ({}) lead neither down nor up from {from_revision} to {to_revision}",
                    ctx.from,
                    migrations.display()
                )));
            }
        },
    };
    if direction == "down" {
        let missing: Vec<String> = path
            .iter()
            .filter(|rv| !rv.has_downgrade)
            .map(|rv| format!("{} ({})", rv.revision, file_of(&rv.revision)))
            .collect();
        if !missing.is_empty() {
            return Err(fatal(format!(
                "cannot downgrade {from_revision} -> {to_revision}: no downgrade() that does anything in {}",
                missing.join(", ")
            )));
        }
    }
    let destroys: Vec<String> = if direction == "down" {
        path.iter()
            .flat_map(|rv| {
                rv.destroys.iter().map(move |d| {
                    format!(
                        "{} drops {} {} ({})",
                        rv.revision, d.kind, d.object, d.description
                    )
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    let target = Release::load_named(&r.paths.releases_root, release).map_err(fatal)?;
    if !target
        .manifest
        .schema
        .runs_on
        .iter()
        .any(|r| r == to_revision)
    {
        return Err(fatal(format!(
            "{release} cannot run on revision {to_revision}: its schema.runs_on is [{}] ({})",
            target.manifest.schema.runs_on.join(", "),
            target.dir.join("release.toml").display()
        )));
    }
    let record = CompatibilityRecord {
        live: live.clone(),
        from_revision: from_revision.into(),
        to_revision: to_revision.into(),
        direction,
        migrations: migrations.display().to_string(),
        revisions: path.iter().map(|r| r.revision.clone()).collect(),
        destroys: destroys.clone(),
        target_release: release.into(),
        target_runs_on: target.manifest.schema.runs_on.clone(),
    };
    let dir = ctx.run_dir.join("db");
    mkdir(&dir, 0o700).map_err(failed)?;
    write_json(&dir.join("compatibility.json"), &record)?;
    let already = if live.as_deref() == Some(to_revision) {
        " (the database is already there)"
    } else {
        ""
    };
    let what = if destroys.is_empty() {
        "nothing destroyed".to_string()
    } else {
        format!("destroys: {}", destroys.join("; "))
    };
    Ok(format!(
        "{from_revision} -> {to_revision}{already}: {} revision(s) {direction}, every downgrade present; {what}; {release} runs on {to_revision}",
        path.len()
    ))
}

// ---------------------------------------------------------------------------------------------------------------
// Preservation

/// `<run>/preserved/<kind>/manifest.json`: written last, once the export has been verified.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub kind: String,
    pub verified: bool,
    pub verified_at: String,
    /// Row count per exported table (as the table had them when exported).
    pub rows: BTreeMap<String, usize>,
    /// SHA-256 of every file of the export but the manifest, by path relative to the export's directory.
    pub files: BTreeMap<String, String>,
    #[serde(default)]
    pub notes: Vec<String>,
    #[serde(default)]
    pub key_id: Option<String>,
}

fn preserved_dir(run_dir: &Path, p: Preserve) -> PathBuf {
    run_dir.join("preserved").join(p.name())
}

fn read_manifest(dir: &Path) -> Option<Manifest> {
    let m: Manifest =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).ok()?).ok()?;
    m.verified.then_some(m)
}

/// Every file's SHA-256 is still the manifest's.
fn check_hashes(dir: &Path, m: &Manifest) -> Result<(), String> {
    for (rel, want) in &m.files {
        let got = sha256_file(&dir.join(rel)).map_err(|e| e.to_string())?;
        if &got != want {
            return Err(format!(
                "{} has SHA-256 {got}, not the {want} its manifest recorded",
                dir.join(rel).display()
            ));
        }
    }
    Ok(())
}

async fn table_exists(client: &tokio_postgres::Client, table: &str) -> Result<bool, StepError> {
    let row = client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&format!("public.{table}")],
        )
        .await
        .map_err(db("look up a table"))?;
    Ok(row.get(0))
}

async fn column_exists(
    client: &tokio_postgres::Client,
    table: &str,
    column: &str,
) -> Result<bool, StepError> {
    Ok(client
        .query_opt(
            "SELECT 1 FROM information_schema.columns WHERE table_schema = 'public' AND table_name = $1 AND column_name = $2",
            &[&table, &column],
        )
        .await
        .map_err(db("look up a column"))?
        .is_some())
}

/// Every row of `table` as `row_to_json` text (bytea as `\x…`, timestamps to the microsecond), ordered, so that
/// `json_populate_record` gives back exactly the same values.
async fn export_rows(
    tx: &tokio_postgres::Transaction<'_>,
    table: &str,
) -> Result<Vec<String>, StepError> {
    let rows = tx
        .query(
            &format!("SELECT row_to_json(t)::text FROM public.{table} t ORDER BY 1"),
            &[],
        )
        .await
        .map_err(|e| failed(format!("database: export {table}: {e}")))?;
    Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
}

fn jsonl(lines: &[String]) -> String {
    let mut s = lines.join("\n");
    if !s.is_empty() {
        s.push('\n');
    }
    s
}

/// A fresh `<kind>.partial` directory beside the final one: an export is built and verified there, then renamed.
fn staging(final_dir: &Path) -> Result<PathBuf, StepError> {
    let tmp = final_dir.with_extension("partial");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)
            .map_err(|e| failed(format!("cannot remove {}: {e}", tmp.display())))?;
    }
    if let Some(parent) = final_dir.parent() {
        mkdir(parent, 0o700).map_err(failed)?;
    }
    mkdir(&tmp, 0o700).map_err(failed)?;
    Ok(tmp)
}

fn publish(tmp: &Path, final_dir: &Path) -> Result<(), StepError> {
    if final_dir.exists() {
        let old = final_dir.with_extension("old");
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(final_dir, &old)
            .map_err(|e| failed(format!("cannot move {} aside: {e}", final_dir.display())))?;
        let _ = std::fs::remove_dir_all(&old);
    }
    std::fs::rename(tmp, final_dir).map_err(|e| {
        failed(format!(
            "cannot rename {} to {}: {e}",
            tmp.display(),
            final_dir.display()
        ))
    })
}

/// A preserved evidence row, read back from `rows.jsonl`.
struct EvidenceRow {
    id: String,
    finding_id: String,
    payload: Vec<u8>,
    signature: Vec<u8>,
    line: String,
}

fn parse_evidence_line(line: &str) -> Result<EvidenceRow, String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not JSON ({e})"))?;
    let s = |k: &str| v[k].as_str().map(str::to_string).ok_or(format!("no {k}"));
    Ok(EvidenceRow {
        id: s("id")?,
        finding_id: s("finding_id")?,
        payload: bytea_from_text(&s("payload")?).ok_or("payload is not \\x hex")?,
        signature: bytea_from_text(&s("signature")?).ok_or("signature is not \\x hex")?,
        line: line.to_string(),
    })
}

fn read_evidence_rows(dir: &Path) -> Result<Vec<EvidenceRow>, String> {
    let p = dir.join("rows.jsonl");
    let text =
        std::fs::read_to_string(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            parse_evidence_line(l).map_err(|e| format!("{} line {}: {e}", p.display(), i + 1))
        })
        .collect()
}

/// Verifies an evidence export using only what it holds: every row's signature verifies with the exported public
/// key, every row's files hold its exact bytes, every pair of files verifies, and (when given) the counts are
/// those of the table and of the live records directory. Returns the manifest to write.
fn verify_evidence_export(
    dir: &Path,
    table_rows: Option<usize>,
    live_files: Option<usize>,
) -> Result<Manifest, String> {
    let v =
        Verifier::from_pem_file(&dir.join(evidence::PUBLIC_KEY_FILE)).map_err(|e| e.to_string())?;
    let rows = read_evidence_rows(dir)?;
    if let Some(n) = table_rows
        && n != rows.len()
    {
        return Err(format!(
            "the export holds {} evidence rows but the table has {n}",
            rows.len()
        ));
    }
    let records = dir.join(evidence::RECORDS_DIR);
    let mut notes = Vec::new();
    let mut without_files = 0usize;
    for row in &rows {
        if !v.verify(&row.payload, &row.signature) {
            return Err(format!(
                "evidence row {}: its signature does not verify with key {}",
                row.id,
                v.key_id()
            ));
        }
        let json = records.join(format!("{}.json", row.id));
        let sig = records.join(format!("{}.sig", row.id));
        match (std::fs::read(&json), std::fs::read(&sig)) {
            (Ok(j), Ok(s)) => {
                if j != row.payload || s != row.signature {
                    return Err(format!(
                        "evidence record {}: the storage files differ from the database row",
                        row.id
                    ));
                }
            }
            _ => without_files += 1,
        }
    }
    if without_files > 0 {
        notes.push(format!(
            "{without_files} rows had no storage files (the rows carry the payload and signature)"
        ));
    }
    let check = evidence::verify_dir(&records, &v).map_err(|e| e.to_string())?;
    if let Some(p) = check.problems.first() {
        return Err(p.clone());
    }
    if let Some(n) = live_files
        && n != check.files
    {
        return Err(format!(
            "the export holds {} storage files but the evidence directory has {n}",
            check.files
        ));
    }
    let row_ids: BTreeSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    let orphans = evidence::list_records(&records)
        .map_err(|e| e.to_string())?
        .keys()
        .filter(|id| !row_ids.contains(id.as_str()))
        .count();
    if orphans > 0 {
        notes.push(format!("{orphans} storage records had no row"));
    }
    let mut files = BTreeMap::new();
    files.insert(
        "rows.jsonl".to_string(),
        sha256_file(&dir.join("rows.jsonl")).map_err(|e| e.to_string())?,
    );
    files.insert(
        evidence::PUBLIC_KEY_FILE.to_string(),
        sha256_file(&dir.join(evidence::PUBLIC_KEY_FILE)).map_err(|e| e.to_string())?,
    );
    for (id, f) in evidence::list_records(&records).map_err(|e| e.to_string())? {
        for (ext, p) in [("json", f.json), ("sig", f.sig)] {
            if let Some(p) = p {
                files.insert(
                    format!("{}/{id}.{ext}", evidence::RECORDS_DIR),
                    sha256_file(&p).map_err(|e| e.to_string())?,
                );
            }
        }
    }
    let mut counts = BTreeMap::new();
    counts.insert("evidence".to_string(), rows.len());
    counts.insert("files".to_string(), check.files);
    Ok(Manifest {
        kind: Preserve::Evidence.name().into(),
        verified: true,
        verified_at: now(),
        rows: counts,
        files,
        notes,
        key_id: Some(v.key_id().to_string()),
    })
}

/// A kept export is re-checked in full: hashes against its manifest and every signature again.
fn recheck_evidence(dir: &Path) -> Result<Manifest, String> {
    let m =
        read_manifest(dir).ok_or_else(|| format!("no verified manifest in {}", dir.display()))?;
    check_hashes(dir, &m)?;
    let again = verify_evidence_export(dir, m.rows.get("evidence").copied(), None)?;
    if again.files.len() != m.files.len() {
        return Err(format!(
            "{} holds {} files, its manifest {}",
            dir.display(),
            again.files.len(),
            m.files.len()
        ));
    }
    Ok(m)
}

async fn preserve_evidence(
    r: &LocalRunner,
    client: &mut tokio_postgres::Client,
    run_dir: &Path,
) -> Result<String, StepError> {
    let dir = preserved_dir(run_dir, Preserve::Evidence);
    if !table_exists(client, "evidence").await? {
        return match tokio::task::block_in_place(|| recheck_evidence(&dir)) {
            Ok(m) => Ok(format!(
                "evidence: table already gone; kept the verified export of {} records in {}",
                m.rows.get("evidence").copied().unwrap_or(0),
                dir.display()
            )),
            Err(why) => Err(fatal(format!(
                "the evidence table is gone and there is no verified export of it ({why}): its data can only come \
                 back from the phase-3 backup"
            ))),
        };
    }
    let tmp = staging(&dir)?;
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(db("begin the evidence export"))?;
    let lines = export_rows(&tx, "evidence").await?;
    tx.commit().await.map_err(db("end the evidence export"))?;
    write_private(&tmp.join("rows.jsonl"), jsonl(&lines).as_bytes()).map_err(failed)?;

    let ev_dir = r.state_dir.join("evidence");
    let pubkey = ev_dir.join(evidence::PUBLIC_KEY_FILE);
    std::fs::copy(&pubkey, tmp.join(evidence::PUBLIC_KEY_FILE)).map_err(|e| {
        fatal(format!(
            "cannot copy the evidence public key {}: {e}",
            pubkey.display()
        ))
    })?;
    let records = tmp.join(evidence::RECORDS_DIR);
    mkdir(&records, 0o700).map_err(failed)?;
    let live = evidence::list_records(&ev_dir.join(evidence::RECORDS_DIR)).map_err(failed)?;
    let mut live_files = 0usize;
    for (id, f) in &live {
        for (ext, p) in [("json", &f.json), ("sig", &f.sig)] {
            if let Some(p) = p {
                let bytes = evidence::read(p).map_err(failed)?;
                write_private(&records.join(format!("{id}.{ext}")), &bytes).map_err(failed)?;
                live_files += 1;
            }
        }
    }
    let manifest = tokio::task::block_in_place(|| {
        verify_evidence_export(&tmp, Some(lines.len()), Some(live_files))
    })
    .map_err(|why| {
        fatal(format!(
            "the evidence export in {} does not verify: {why}",
            tmp.display()
        ))
    })?;
    write_json(&tmp.join("manifest.json"), &manifest)?;
    publish(&tmp, &dir)?;
    Ok(format!(
        "evidence: {} records and {} storage files preserved in {}, every signature verified (key {}){}",
        lines.len(),
        live_files,
        dir.display(),
        manifest.key_id.as_deref().unwrap_or(""),
        if manifest.notes.is_empty() {
            String::new()
        } else {
            format!(" ({})", manifest.notes.join("; "))
        }
    ))
}

const CONTROL_PLANE_TABLES: [&str; 2] = ["tenant_quotas", "usage_records"];

fn verify_table_export(
    dir: &Path,
    counts: &BTreeMap<String, usize>,
) -> Result<BTreeMap<String, String>, String> {
    let mut files = BTreeMap::new();
    for (table, n) in counts {
        let p = dir.join(format!("{table}.jsonl"));
        let text =
            std::fs::read_to_string(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        let mut got = 0usize;
        for (i, l) in text.lines().enumerate() {
            let v: serde_json::Value = serde_json::from_str(l)
                .map_err(|e| format!("{} line {}: {e}", p.display(), i + 1))?;
            if !v.is_object() {
                return Err(format!("{} line {}: not a row", p.display(), i + 1));
            }
            got += 1;
        }
        if got != *n {
            return Err(format!("{} holds {got} rows, the table {n}", p.display()));
        }
        files.insert(format!("{table}.jsonl"), sha256(text.as_bytes()));
    }
    Ok(files)
}

async fn preserve_control_plane(
    client: &mut tokio_postgres::Client,
    run_dir: &Path,
) -> Result<String, StepError> {
    let dir = preserved_dir(run_dir, Preserve::ControlPlane);
    let mut present = 0;
    for t in CONTROL_PLANE_TABLES {
        present += usize::from(table_exists(client, t).await?);
    }
    if present < CONTROL_PLANE_TABLES.len() {
        let kept =
            read_manifest(&dir).ok_or_else(|| format!("no verified manifest in {}", dir.display()));
        return match kept.and_then(|m| {
            check_hashes(&dir, &m)?;
            verify_table_export(&dir, &m.rows)?;
            Ok(m)
        }) {
            Ok(m) => Ok(format!(
                "control plane: tables already gone; kept the verified export ({}) in {}",
                counts_text(&m.rows),
                dir.display()
            )),
            Err(why) => Err(fatal(format!(
                "the control-plane tables are (partly) gone and there is no verified export of them ({why})"
            ))),
        };
    }
    let tmp = staging(&dir)?;
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(db("begin the control-plane export"))?;
    let mut counts = BTreeMap::new();
    for t in CONTROL_PLANE_TABLES {
        let lines = export_rows(&tx, t).await?;
        write_private(&tmp.join(format!("{t}.jsonl")), jsonl(&lines).as_bytes()).map_err(failed)?;
        counts.insert(t.to_string(), lines.len());
    }
    tx.commit()
        .await
        .map_err(db("end the control-plane export"))?;
    let files = verify_table_export(&tmp, &counts)
        .map_err(|why| fatal(format!("the control-plane export does not verify: {why}")))?;
    let m = Manifest {
        kind: Preserve::ControlPlane.name().into(),
        verified: true,
        verified_at: now(),
        rows: counts.clone(),
        files,
        notes: vec![],
        key_id: None,
    };
    write_json(&tmp.join("manifest.json"), &m)?;
    publish(&tmp, &dir)?;
    Ok(format!(
        "control plane: {} preserved and verified in {}",
        counts_text(&counts),
        dir.display()
    ))
}

fn counts_text(counts: &BTreeMap<String, usize>) -> String {
    counts
        .iter()
        .map(|(t, n)| format!("{n} {t}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TenantMode {
    slug: String,
    isolation_mode: String,
}

async fn preserve_isolation_modes(
    client: &mut tokio_postgres::Client,
    run_dir: &Path,
) -> Result<String, StepError> {
    let dir = preserved_dir(run_dir, Preserve::IsolationModes);
    let file = dir.join("modes.json");
    let kept: Option<BTreeMap<String, TenantMode>> = read_manifest(&dir)
        .filter(|m| check_hashes(&dir, m).is_ok())
        .and_then(|_| serde_json::from_slice(&std::fs::read(&file).ok()?).ok());
    if !column_exists(client, "tenants", "isolation_mode").await? {
        return match kept {
            Some(modes) => Ok(format!(
                "isolation modes: column already gone; kept the verified export of {} tenants",
                modes.len()
            )),
            None => Err(fatal(format!(
                "tenants.isolation_mode is gone and there is no verified export of it in {}",
                dir.display()
            ))),
        };
    }
    // Modes already exported win over the live ones: a retry after tenants were set to basic must not record
    // "basic" as what they had.
    let mut modes = kept.unwrap_or_default();
    let rows = client
        .query(
            "SELECT id::text, slug, isolation_mode FROM tenants ORDER BY slug",
            &[],
        )
        .await
        .map_err(db("read tenants' isolation modes"))?;
    for row in &rows {
        modes.entry(row.get(0)).or_insert(TenantMode {
            slug: row.get(1),
            isolation_mode: row.get(2),
        });
    }
    let tmp = staging(&dir)?;
    let text = serde_json::to_string_pretty(&modes).unwrap_or_default();
    write_private(&tmp.join("modes.json"), text.as_bytes()).map_err(failed)?;
    let back: BTreeMap<String, TenantMode> =
        serde_json::from_slice(&std::fs::read(tmp.join("modes.json")).map_err(failed)?)
            .map_err(fatal)?;
    let missing: Vec<String> = rows
        .iter()
        .map(|r| r.get::<_, String>(0))
        .filter(|id| !back.contains_key(id))
        .collect();
    if !missing.is_empty() {
        return Err(fatal(format!(
            "the isolation-mode export lacks tenants {}",
            missing.join(", ")
        )));
    }
    let mut counts = BTreeMap::new();
    counts.insert("tenants".to_string(), back.len());
    let mut files = BTreeMap::new();
    files.insert("modes.json".to_string(), sha256(text.as_bytes()));
    let m = Manifest {
        kind: Preserve::IsolationModes.name().into(),
        verified: true,
        verified_at: now(),
        rows: counts,
        files,
        notes: vec![],
        key_id: None,
    };
    write_json(&tmp.join("manifest.json"), &m)?;
    publish(&tmp, &dir)?;
    // The runbook's G6 rollback: tenants return to basic isolation before the column goes.
    let n = client
        .execute(
            "UPDATE tenants SET isolation_mode = 'basic' WHERE isolation_mode <> 'basic'",
            &[],
        )
        .await
        .map_err(db("set tenants to basic isolation"))?;
    let advanced = back
        .values()
        .filter(|m| m.isolation_mode != "basic")
        .count();
    Ok(format!(
        "isolation modes of {} tenants preserved ({advanced} not basic); {n} set to basic",
        back.len()
    ))
}

// ---------------------------------------------------------------------------------------------------------------
// Migrate

/// The scripts to run: for a downgrade, the release rolled back from (the older release lacks the newer
/// revisions' files, helm/helm#5825); for an upgrade, the release rolled forward to. In both cases the newer one.
fn scripts_release(
    r: &LocalRunner,
    ctx: &StepContext<'_>,
    direction: MigrationDirection,
) -> Result<Release, StepError> {
    match direction {
        MigrationDirection::Down => {
            Release::load_named(&r.paths.releases_root, ctx.from).map_err(fatal)
        }
        MigrationDirection::Up => Ok(r.to.clone()),
    }
}

pub async fn migrate(
    r: &LocalRunner,
    m: &MigrateStep<'_>,
    ctx: &StepContext<'_>,
) -> Result<String, StepError> {
    let conn = pg_conn(r)?;
    let live = live_revision(&conn).await?;
    if live.as_deref() == Some(m.to_revision) {
        return Ok(format!(
            "alembic_version is already {} (nothing to migrate)",
            m.to_revision
        ));
    }
    if live.as_deref() != Some(m.revision) {
        return Err(fatal(format!(
            "alembic_version is {}, expected {} before {} {} -> {}",
            live.as_deref().unwrap_or("(none)"),
            m.revision,
            match m.direction {
                MigrationDirection::Down => "downgrading",
                MigrationDirection::Up => "upgrading",
            },
            m.revision,
            m.to_revision
        )));
    }
    let mut parts = Vec::new();
    if m.direction == MigrationDirection::Down && !m.preserve.is_empty() {
        let mut client = connect(&conn).await?;
        for p in m.preserve {
            parts.push(match p {
                Preserve::Evidence => preserve_evidence(r, &mut client, ctx.run_dir).await?,
                Preserve::ControlPlane => preserve_control_plane(&mut client, ctx.run_dir).await?,
                Preserve::IsolationModes => {
                    preserve_isolation_modes(&mut client, ctx.run_dir).await?
                }
            });
        }
    }
    let rel = scripts_release(r, ctx, m.direction)?;
    let migrations = rel.migrations_dir();
    // A statement may use 90% of the step's time: it then fails inside PostgreSQL (and alembic's transaction
    // rolls back) rather than being cut off with the step.
    // The runner turns a step timeout of 0 ("no limit") into 1 s: no migration step is really that short, so
    // that means no statement timeout either.
    let statement_timeout = (m.timeout > Duration::from_secs(1))
        .then(|| (m.timeout * 9 / 10).max(Duration::from_secs(1)));
    let verb = match m.direction {
        MigrationDirection::Down => "downgrade",
        MigrationDirection::Up => "upgrade",
    };
    let result = alembic(
        &r.paths,
        &migrations,
        &conn,
        &[verb, m.to_revision],
        statement_timeout,
    )
    .await;
    let dir = ctx.run_dir.join("db");
    mkdir(&dir, 0o700).map_err(failed)?;
    let log = dir.join(format!("{verb}-{}-{}.log", m.revision, m.to_revision));
    let text = match &result {
        Ok((o, e)) => format!("{o}{e}"),
        Err(e) => e.to_string(),
    };
    write_private(&log, text.as_bytes()).map_err(failed)?;
    result?;
    let after = live_revision(&conn).await?;
    if after.as_deref() != Some(m.to_revision) {
        return Err(fatal(format!(
            "alembic {verb} {} finished but alembic_version is {} (see {})",
            m.to_revision,
            after.as_deref().unwrap_or("(none)"),
            log.display()
        )));
    }
    let name = m
        .data_migration
        .map(|d| format!("{d}: "))
        .unwrap_or_default();
    parts.push(format!(
        "{verb}d {} -> {} with the migrations of {} ({}); alembic_version is {}",
        m.revision,
        m.to_revision,
        rel.name(),
        statement_timeout.map_or("no statement timeout".to_string(), |t| format!(
            "statement timeout {} s",
            t.as_secs()
        )),
        m.to_revision
    ));
    Ok(format!("{name}{}", parts.join("; ")))
}

pub async fn probe_migrate(
    r: &LocalRunner,
    to_revision: &str,
    _ctx: &StepContext<'_>,
) -> Result<Probe, StepError> {
    let conn = pg_conn(r)?;
    match stack::schema_revision(&conn).await {
        Ok(Some(rev)) if rev == to_revision => Ok(Probe::Done {
            detail: format!("alembic_version is {rev}"),
        }),
        Ok(_) => Ok(Probe::NotDone),
        Err(e) => Ok(Probe::Unknown {
            why: format!("the database does not answer: {e}"),
        }),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Verify

/// The schema of `public` as a set of comparable lines: columns with their types and nullability, indexes,
/// constraints, row-level security and its policies.
pub async fn schema_fingerprint(
    client: &tokio_postgres::Client,
) -> Result<BTreeSet<String>, tokio_postgres::Error> {
    let queries = [
        "SELECT 'column ' || table_name || '.' || column_name || ' ' || data_type || ' (' || udt_name || ')' || \
         CASE WHEN is_nullable = 'YES' THEN ' null' ELSE ' not null' END \
         FROM information_schema.columns WHERE table_schema = 'public'",
        "SELECT 'table ' || tablename FROM pg_tables WHERE schemaname = 'public'",
        "SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = 'public'",
        "SELECT 'constraint ' || c.conrelid::regclass::text || ' ' || c.conname || ' ' || pg_get_constraintdef(c.oid) \
         FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = 'public'",
        "SELECT 'row level security on ' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'public' AND c.relrowsecurity",
        "SELECT 'policy ' || tablename || '.' || policyname || ' using ' || coalesce(qual, '') || ' check ' || \
         coalesce(with_check, '') FROM pg_policies WHERE schemaname = 'public'",
    ];
    let mut out = BTreeSet::new();
    for q in queries {
        for row in client.query(q, &[]).await? {
            out.insert(row.get::<_, String>(0));
        }
    }
    Ok(out)
}

async fn drop_scratch(
    admin: &tokio_postgres::Client,
    name: &str,
) -> Result<(), tokio_postgres::Error> {
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await
}

pub async fn verify(
    r: &LocalRunner,
    revision: &str,
    ctx: &StepContext<'_>,
) -> Result<String, StepError> {
    let conn = pg_conn(r)?;
    let live = live_revision(&conn).await?;
    if live.as_deref() != Some(revision) {
        return Err(fatal(format!(
            "alembic_version is {}, not {revision}",
            live.as_deref().unwrap_or("(none)")
        )));
    }
    // The scripts that know the revision: the release rolled back from first, then the target.
    let mut migrations = None;
    let from = Release::load_named(&r.paths.releases_root, ctx.from).ok();
    for rel in from.iter().chain(std::iter::once(&r.to)) {
        let dir = rel.migrations_dir();
        if let Ok(revs) = script_revisions(&r.paths, &dir).await
            && revs.iter().any(|s| s.info.revision == revision)
        {
            migrations = Some(dir);
            break;
        }
    }
    let migrations = migrations.ok_or_else(|| {
        fatal(format!(
            "neither {} nor {} has a migration script for revision {revision}",
            ctx.from,
            r.to.name()
        ))
    })?;

    let admin = connect(&conn.with_db("postgres")).await?;
    // Scratch databases of an earlier attempt that was cut off.
    let stale = admin
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE 'xorb\\_verify\\_%'",
            &[],
        )
        .await
        .map_err(db("list scratch databases"))?;
    for row in stale {
        drop_scratch(&admin, &row.get::<_, String>(0))
            .await
            .map_err(db("drop an old scratch database"))?;
    }
    let scratch = format!(
        "{SCRATCH_PREFIX}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    admin
        .batch_execute(&format!("CREATE DATABASE \"{scratch}\""))
        .await
        .map_err(db("create a scratch database"))?;
    let compared = async {
        alembic(
            &r.paths,
            &migrations,
            &conn.with_db(&scratch),
            &["upgrade", revision],
            None,
        )
        .await?;
        let expected = schema_fingerprint(&connect(&conn.with_db(&scratch)).await?)
            .await
            .map_err(db("read the scratch schema"))?;
        let actual = schema_fingerprint(&connect(&conn).await?)
            .await
            .map_err(db("read the live schema"))?;
        Ok::<_, StepError>((expected, actual))
    }
    .await;
    let dropped = drop_scratch(&admin, &scratch).await;
    let (expected, actual) = compared?;
    dropped.map_err(db("drop the scratch database"))?;

    let missing: Vec<&String> = expected.difference(&actual).collect();
    let extra: Vec<&String> = actual.difference(&expected).collect();
    let dir = ctx.run_dir.join("db");
    mkdir(&dir, 0o700).map_err(failed)?;
    write_json(
        &dir.join(format!("verify-{revision}.json")),
        &serde_json::json!({
            "revision": revision,
            "migrations": migrations.display().to_string(),
            "missing": missing,
            "unexpected": extra,
            "items": actual.len(),
        }),
    )?;
    if !missing.is_empty() || !extra.is_empty() {
        let mut d: Vec<String> = missing.iter().map(|m| format!("missing {m}")).collect();
        d.extend(extra.iter().map(|m| format!("unexpected {m}")));
        let more = d.len().saturating_sub(12);
        d.truncate(12);
        return Err(fatal(format!(
            "the live schema is not what revision {revision} defines: {}{}",
            d.join("; "),
            if more > 0 {
                format!("; and {more} more")
            } else {
                String::new()
            }
        )));
    }
    let count = |p: &str| actual.iter().filter(|l| l.starts_with(p)).count();
    Ok(format!(
        "alembic_version is {revision} and the schema equals a fresh `alembic upgrade {revision}`: {} tables, {} columns, {} indexes, {} constraints, {} policies",
        count("table "),
        count("column "),
        count("index "),
        count("constraint "),
        count("policy ")
    ))
}

// ---------------------------------------------------------------------------------------------------------------
// Re-import on roll-forward

const PRESERVED_KINDS: [Preserve; 3] = [
    Preserve::Evidence,
    Preserve::ControlPlane,
    Preserve::IsolationModes,
];

/// What one re-import recorded (`<run>/reimport-<source>.json`; before kinds were recorded, `reimport.json` meant
/// every kind of its source).
#[derive(Debug, Deserialize)]
struct ReimportRecord {
    source_run: String,
    #[serde(default)]
    kinds: Option<Vec<String>>,
}

/// The preserved data a roll-forward must re-import: every verified export under `runs/*/preserved/` that no
/// re-import has taken yet, grouped by run, oldest first. Never "the newest run" alone: after a lost journal, two
/// rollbacks may each hold part of what the schema lost (G8's control plane in one, G7's evidence in the other).
pub fn pending_reimports(state_dir: &Path) -> Vec<ReimportSource> {
    let runs_dir = state_dir.join("runs");
    let runs = xorb_engine::disk_runs::run_dirs(state_dir);
    let mut done: BTreeSet<(String, String)> = BTreeSet::new();
    for run in &runs {
        let Ok(rd) = std::fs::read_dir(runs_dir.join(run)) else {
            continue;
        };
        for e in rd.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            if !(name == "reimport.json"
                || name.starts_with("reimport-") && name.ends_with(".json"))
            {
                continue;
            }
            let Some(rec) = std::fs::read(e.path())
                .ok()
                .and_then(|b| serde_json::from_slice::<ReimportRecord>(&b).ok())
            else {
                continue;
            };
            let kinds = rec.kinds.unwrap_or_else(|| {
                PRESERVED_KINDS
                    .iter()
                    .map(|k| k.name().to_string())
                    .collect()
            });
            for k in kinds {
                done.insert((rec.source_run.clone(), k));
            }
        }
    }
    // (oldest verification, run, pending kinds, every kind the run holds)
    let mut pending: Vec<(String, String, Vec<Preserve>, usize)> = Vec::new();
    for run in &runs {
        let pres = runs_dir.join(run).join("preserved");
        let mut oldest: Option<String> = None;
        let mut kinds = Vec::new();
        let mut held = 0;
        for k in PRESERVED_KINDS {
            let Some(m) = read_manifest(&pres.join(k.name())) else {
                continue;
            };
            held += 1;
            if done.contains(&(run.clone(), k.name().to_string())) {
                continue;
            }
            if oldest.as_ref().is_none_or(|o| m.verified_at < *o) {
                oldest = Some(m.verified_at.clone());
            }
            kinds.push(k);
        }
        if let Some(at) = oldest {
            pending.push((at, run.clone(), kinds, held));
        }
    }
    pending.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    pending
        .into_iter()
        .map(|(_, run, kinds, held)| ReimportSource {
            run,
            kinds: if kinds.len() == held {
                Vec::new()
            } else {
                kinds
            },
        })
        .collect()
}

async fn reimport_evidence(
    r: &LocalRunner,
    client: &mut tokio_postgres::Client,
    dir: &Path,
) -> Result<String, StepError> {
    tokio::task::block_in_place(|| recheck_evidence(dir)).map_err(|why| {
        fatal(format!(
            "the preserved evidence in {} does not verify: {why}",
            dir.display()
        ))
    })?;
    if !table_exists(client, "evidence").await? {
        return Err(fatal(
            "the database has no evidence table: re-import needs the newer schema (upgrade first)",
        ));
    }
    let rows = read_evidence_rows(dir).map_err(fatal)?;
    let ev_dir = r.state_dir.join("evidence");
    let live_key = ev_dir.join(evidence::PUBLIC_KEY_FILE);
    let preserved_key =
        std::fs::read_to_string(dir.join(evidence::PUBLIC_KEY_FILE)).map_err(fatal)?;
    let v = Verifier::from_pem(&preserved_key).map_err(fatal)?;
    match std::fs::read_to_string(&live_key) {
        Ok(k) if k != preserved_key => {
            return Err(fatal(format!(
                "the evidence public key {} is not the one the preserved records were signed with (key {}): \
                 re-importing them would leave records that do not verify with the live key",
                live_key.display(),
                v.key_id()
            )));
        }
        Ok(_) => {}
        Err(_) => {
            mkdir(&ev_dir, 0o700).map_err(failed)?;
            std::fs::write(&live_key, &preserved_key).map_err(failed)?;
        }
    }
    let records = ev_dir.join(evidence::RECORDS_DIR);
    mkdir(&records, 0o700).map_err(failed)?;
    let src = dir.join(evidence::RECORDS_DIR);
    let mut files_written = 0;
    for (id, f) in evidence::list_records(&src).map_err(failed)? {
        for (ext, p) in [("json", f.json), ("sig", f.sig)] {
            let Some(p) = p else { continue };
            let bytes = evidence::read(&p).map_err(failed)?;
            let target = records.join(format!("{id}.{ext}"));
            match std::fs::read(&target) {
                Ok(existing) if existing == bytes => {}
                Ok(_) => {
                    return Err(fatal(format!(
                        "{} exists with other bytes than the preserved record: left as it is, re-import stopped",
                        target.display()
                    )));
                }
                Err(_) => {
                    // Same mode as the platform's own record files.
                    let tmp = records.join(format!(".reimport-{id}.{ext}"));
                    std::fs::write(&tmp, &bytes).map_err(failed)?;
                    std::fs::rename(&tmp, &target).map_err(failed)?;
                    files_written += 1;
                }
            }
        }
    }
    let tx = client
        .transaction()
        .await
        .map_err(db("begin the evidence re-import"))?;
    let mut inserted = 0u64;
    let mut orphaned = Vec::new();
    for row in &rows {
        let n = tx
            .execute(
                "INSERT INTO evidence SELECT * FROM json_populate_record(NULL::evidence, $1::text::json) \
                 WHERE EXISTS (SELECT 1 FROM findings WHERE id = $2::text::uuid) ON CONFLICT (id) DO NOTHING",
                &[&row.line, &row.finding_id],
            )
            .await
            .map_err(db("re-import an evidence row"))?;
        inserted += n;
        if n == 0 {
            let present = tx
                .query_opt(
                    "SELECT 1 FROM evidence WHERE id = $1::text::uuid",
                    &[&row.id],
                )
                .await
                .map_err(db("look up an evidence row"))?
                .is_some();
            if !present {
                orphaned.push(row.id.clone());
            }
        }
    }
    tx.commit()
        .await
        .map_err(db("commit the evidence re-import"))?;
    // After: what is in the database now verifies and is byte for byte what was preserved.
    let mut bad = Vec::new();
    for row in rows.iter().filter(|r| !orphaned.contains(&r.id)) {
        let got = client
            .query_one(
                "SELECT payload, signature FROM evidence WHERE id = $1::text::uuid",
                &[&row.id],
            )
            .await
            .map_err(db("read back an evidence row"))?;
        let (p, s): (Vec<u8>, Vec<u8>) = (got.get(0), got.get(1));
        if p != row.payload || s != row.signature || !v.verify(&p, &s) {
            bad.push(row.id.clone());
        }
    }
    if !bad.is_empty() {
        return Err(fatal(format!(
            "evidence rows differ from the preserved ones or do not verify after re-import: {}",
            bad.join(", ")
        )));
    }
    let check = evidence::verify_dir(&records, &v).map_err(failed)?;
    if let Some(p) = check.problems.first() {
        return Err(fatal(format!("after re-import: {p}")));
    }
    let mut s = format!(
        "evidence: {} of {} preserved rows inserted ({} already present), {files_written} files restored; every record verifies",
        inserted,
        rows.len(),
        rows.len() as u64 - inserted - orphaned.len() as u64
    );
    if !orphaned.is_empty() {
        s.push_str(&format!(
            "; {} not re-imported because their findings no longer exist: {}",
            orphaned.len(),
            orphaned.join(", ")
        ));
    }
    Ok(s)
}

async fn reimport_control_plane(
    client: &mut tokio_postgres::Client,
    dir: &Path,
) -> Result<String, StepError> {
    let m = read_manifest(dir)
        .ok_or_else(|| fatal(format!("no verified manifest in {}", dir.display())))?;
    check_hashes(dir, &m)
        .and_then(|_| verify_table_export(dir, &m.rows))
        .map_err(|why| {
            fatal(format!(
                "the preserved control-plane data does not verify: {why}"
            ))
        })?;
    for t in CONTROL_PLANE_TABLES {
        if !table_exists(client, t).await? {
            return Err(fatal(format!(
                "the database has no {t} table: re-import needs the newer schema (upgrade first)"
            )));
        }
    }
    let tx = client
        .transaction()
        .await
        .map_err(db("begin the control-plane re-import"))?;
    let mut parts = Vec::new();
    for t in CONTROL_PLANE_TABLES {
        let text = std::fs::read_to_string(dir.join(format!("{t}.jsonl"))).map_err(fatal)?;
        let (fk, key) = match t {
            "tenant_quotas" => ("tenant_id", "tenant_id"),
            _ => ("tenant_id", "id"),
        };
        // Quotas reference tenants; usage records carry a tenant id without a foreign key but are kept only for
        // tenants that still exist, the same rule.
        let sql = format!(
            "INSERT INTO {t} SELECT * FROM json_populate_record(NULL::{t}, $1::text::json) r \
             WHERE EXISTS (SELECT 1 FROM tenants WHERE id = r.{fk}) ON CONFLICT ({key}) DO NOTHING"
        );
        let mut n = 0u64;
        let total = text.lines().count();
        for line in text.lines() {
            n += tx
                .execute(&sql, &[&line])
                .await
                .map_err(db("re-import a control-plane row"))?;
        }
        parts.push(format!("{n} of {total} {t}"));
    }
    // usage_records.id is a bigserial: the sequence must not hand out ids that were re-imported.
    tx.batch_execute(
        "SELECT setval(pg_get_serial_sequence('usage_records', 'id'), \
         greatest((SELECT max(id) FROM usage_records), 1))",
    )
    .await
    .map_err(db("advance the usage_records sequence"))?;
    tx.commit()
        .await
        .map_err(db("commit the control-plane re-import"))?;
    Ok(format!("control plane: inserted {}", parts.join(", ")))
}

async fn reimport_isolation_modes(
    client: &mut tokio_postgres::Client,
    dir: &Path,
) -> Result<String, StepError> {
    let m = read_manifest(dir)
        .ok_or_else(|| fatal(format!("no verified manifest in {}", dir.display())))?;
    check_hashes(dir, &m).map_err(fatal)?;
    let modes: BTreeMap<String, TenantMode> =
        serde_json::from_slice(&std::fs::read(dir.join("modes.json")).map_err(fatal)?)
            .map_err(fatal)?;
    if !column_exists(client, "tenants", "isolation_mode").await? {
        return Err(fatal(
            "tenants.isolation_mode does not exist: re-import needs the newer schema (upgrade first)",
        ));
    }
    let tx = client
        .transaction()
        .await
        .map_err(db("begin restoring isolation modes"))?;
    let mut restored = 0;
    for (id, mode) in &modes {
        restored += tx
            .execute(
                "UPDATE tenants SET isolation_mode = $2 WHERE id = $1::text::uuid",
                &[id, &mode.isolation_mode],
            )
            .await
            .map_err(db("restore an isolation mode"))?;
    }
    tx.commit()
        .await
        .map_err(db("commit the isolation modes"))?;
    Ok(format!(
        "isolation modes: {restored} of {} tenants restored",
        modes.len()
    ))
}

pub async fn reimport(
    r: &LocalRunner,
    source_run: &str,
    kinds: &[Preserve],
    ctx: &StepContext<'_>,
) -> Result<String, StepError> {
    let wanted = |k: Preserve| kinds.is_empty() || kinds.contains(&k);
    if source_run.is_empty() || source_run.contains('/') || source_run.starts_with('.') {
        return Err(fatal(format!("{source_run:?} is not a run id")));
    }
    let src = r.state_dir.join("runs").join(source_run).join("preserved");
    if !src.is_dir() {
        return Err(fatal(format!(
            "run {source_run} preserved nothing: {} does not exist",
            src.display()
        )));
    }
    let conn = pg_conn(r)?;
    let mut client = connect(&conn).await?;
    let mut parts = Vec::new();
    // Control plane before evidence is irrelevant to foreign keys; isolation modes last so that a failure earlier
    // leaves tenants on basic (which every release supports) rather than half restored.
    let mut taken = Vec::new();
    let ev = preserved_dir_in(&src, Preserve::Evidence);
    if wanted(Preserve::Evidence) && ev.is_dir() {
        parts.push(reimport_evidence(r, &mut client, &ev).await?);
        taken.push(Preserve::Evidence.name());
    }
    let cp = preserved_dir_in(&src, Preserve::ControlPlane);
    if wanted(Preserve::ControlPlane) && cp.is_dir() {
        parts.push(reimport_control_plane(&mut client, &cp).await?);
        taken.push(Preserve::ControlPlane.name());
    }
    let im = preserved_dir_in(&src, Preserve::IsolationModes);
    if wanted(Preserve::IsolationModes) && im.is_dir() {
        parts.push(reimport_isolation_modes(&mut client, &im).await?);
        taken.push(Preserve::IsolationModes.name());
    }
    if parts.is_empty() {
        return Err(fatal(format!("{} holds no preserved data", src.display())));
    }
    mkdir(ctx.run_dir, 0o700).map_err(failed)?;
    // One record per source: a run may re-import from several, and the next plan skips what is recorded here.
    write_json(
        &ctx.run_dir.join(format!("reimport-{source_run}.json")),
        &serde_json::json!({"source_run": source_run, "kinds": taken, "results": parts, "at": now()}),
    )?;
    Ok(format!("from run {source_run}: {}", parts.join("; ")))
}

fn preserved_dir_in(preserved: &Path, p: Preserve) -> PathBuf {
    preserved.join(p.name())
}

// ---------------------------------------------------------------------------------------------------------------
// Critical data (`xorbctl integrity --critical`)

#[derive(Debug, Clone, Serialize)]
pub struct EvidenceCritical {
    /// Whether the schema has the evidence table (rc1); on stable only the files remain.
    pub table: bool,
    pub rows: Option<i64>,
    pub records_on_disk: usize,
    pub verified: usize,
    pub key_id: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CriticalReport {
    pub ok: bool,
    pub schema_revision: Option<String>,
    pub tenants: i64,
    pub sessions: i64,
    pub findings: i64,
    pub evidence: EvidenceCritical,
    /// One line per problem, naming the record.
    pub problems: Vec<String>,
}

impl CriticalReport {
    /// One paragraph for people.
    pub fn summary(&self) -> String {
        let ev = &self.evidence;
        let rows = ev
            .rows
            .map(|n| format!("{n} evidence rows, "))
            .unwrap_or_else(|| "no evidence table, ".into());
        let head = format!(
            "critical data {}: {} tenants, {} sessions, {} findings; {rows}{} evidence records on disk, {} verified",
            if self.ok { "OK" } else { "NOT OK" },
            self.tenants,
            self.sessions,
            self.findings,
            ev.records_on_disk,
            ev.verified
        );
        if self.problems.is_empty() {
            head
        } else {
            let shown: Vec<&str> = self.problems.iter().take(10).map(String::as_str).collect();
            let more = self.problems.len().saturating_sub(shown.len());
            format!(
                "{head}\n{} problem(s):\n  {}{}",
                self.problems.len(),
                shown.join("\n  "),
                if more > 0 {
                    format!("\n  … and {more} more")
                } else {
                    String::new()
                }
            )
        }
    }
}

async fn ids(
    client: &tokio_postgres::Client,
    sql: &str,
    what: &str,
) -> Result<Vec<String>, LocalError> {
    Ok(client
        .query(sql, &[])
        .await
        .map_err(|e| LocalError::db(what.to_string(), e))?
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect())
}

/// The runbook's critical data: tenants, sessions and findings with their references, evidence rows against
/// their storage files, and every evidence signature.
pub async fn critical_check(state_dir: &Path) -> Result<CriticalReport, LocalError> {
    let st = StackState::load(state_dir)?;
    let secrets = Secrets::load(state_dir)?;
    let conn = st.pg(&secrets);
    let revision = stack::schema_revision(&conn).await?;
    let client = conn.connect().await?;
    let count = |t: &'static str| {
        let client = &client;
        async move {
            client
                .query_one(&format!("SELECT count(*) FROM {t}"), &[])
                .await
                .map(|r| r.get::<_, i64>(0))
                .map_err(|e| LocalError::db(format!("count {t}"), e))
        }
    };
    let tenants = count("tenants").await?;
    let sessions = count("ptaas_sessions").await?;
    let findings = count("findings").await?;
    let mut problems = Vec::new();
    for (sql, what, line) in [
        (
            "SELECT s.id::text FROM ptaas_sessions s LEFT JOIN tenants t ON t.id = s.tenant_id WHERE t.id IS NULL ORDER BY 1",
            "sessions without tenant",
            "session {} belongs to no tenant",
        ),
        (
            "SELECT f.id::text FROM findings f LEFT JOIN ptaas_sessions s ON s.id = f.session_id WHERE s.id IS NULL ORDER BY 1",
            "findings without session",
            "finding {} belongs to no session",
        ),
        (
            "SELECT f.id::text FROM findings f JOIN ptaas_sessions s ON s.id = f.session_id WHERE f.tenant_id <> s.tenant_id ORDER BY 1",
            "findings of another tenant",
            "finding {} has another tenant than its session",
        ),
    ] {
        for id in ids(&client, sql, what).await? {
            problems.push(line.replace("{}", &id));
        }
    }

    let ev_dir = state_dir.join("evidence");
    let key_path = ev_dir.join(evidence::PUBLIC_KEY_FILE);
    let records_dir = ev_dir.join(evidence::RECORDS_DIR);
    let files = evidence::list_records(&records_dir)?;
    let verifier = if key_path.exists() {
        Some(Verifier::from_pem_file(&key_path)?)
    } else {
        None
    };
    let has_table = client
        .query_one("SELECT to_regclass('public.evidence') IS NOT NULL", &[])
        .await
        .map_err(|e| LocalError::db("look up table evidence", e))?
        .get::<_, bool>(0);
    let mut verified = 0usize;
    let mut rows_n = None;
    let mut row_ids = BTreeSet::new();
    if has_table {
        let rows = client
            .query(
                "SELECT e.id::text, e.tenant_id::text, e.session_id::text, e.finding_id::text, e.payload, e.signature, \
                 f.id IS NOT NULL AND f.tenant_id = e.tenant_id AND f.session_id = e.session_id \
                 FROM evidence e LEFT JOIN findings f ON f.id = e.finding_id ORDER BY e.id",
                &[],
            )
            .await
            .map_err(|e| LocalError::db("read evidence", e))?;
        rows_n = Some(rows.len() as i64);
        for row in &rows {
            let id: String = row.get(0);
            let (tenant, session, finding): (String, String, String) =
                (row.get(1), row.get(2), row.get(3));
            let payload: Vec<u8> = row.get(4);
            let signature: Vec<u8> = row.get(5);
            if !row.get::<_, bool>(6) {
                problems.push(format!(
                    "evidence record {id}: its finding {finding} is missing or of another tenant or session"
                ));
            }
            // The signed payload must speak of the same finding, session and tenant as the row.
            let p: serde_json::Value = serde_json::from_slice(&payload).unwrap_or_default();
            if p["finding_id"] != finding.as_str()
                || p["session_id"] != session.as_str()
                || p["tenant_id"] != tenant.as_str()
            {
                problems.push(format!(
                    "evidence record {id}: its signed payload names another finding, session or tenant than the row"
                ));
            }
            let ok = verifier
                .as_ref()
                .is_some_and(|v| v.verify(&payload, &signature));
            if !ok {
                problems.push(format!(
                    "evidence record {id}: the database row's signature does not verify"
                ));
            }
            match files.get(&id) {
                Some(f) => {
                    let j = f.json.as_deref().map(evidence::read).transpose()?;
                    let s = f.sig.as_deref().map(evidence::read).transpose()?;
                    if j.as_deref() != Some(payload.as_slice())
                        || s.as_deref() != Some(signature.as_slice())
                    {
                        problems.push(format!(
                            "evidence record {id}: the files in {} differ from the database row",
                            records_dir.display()
                        ));
                    }
                }
                None => problems.push(format!(
                    "evidence record {id}: no storage files in {}",
                    records_dir.display()
                )),
            }
            row_ids.insert(id);
        }
        for id in files.keys().filter(|id| !row_ids.contains(*id)) {
            problems.push(format!(
                "evidence record {id}: storage files in {} but no database row",
                records_dir.display()
            ));
        }
    }
    match &verifier {
        Some(v) => {
            let check = evidence::verify_dir(&records_dir, v)?;
            verified = check.verified;
            problems.extend(check.problems);
        }
        None if !files.is_empty() || rows_n.is_some_and(|n| n > 0) => problems.push(format!(
            "evidence exists but the public key {} is missing: no signature can be checked",
            key_path.display()
        )),
        None => {}
    }
    Ok(CriticalReport {
        ok: problems.is_empty(),
        schema_revision: revision,
        tenants,
        sessions,
        findings,
        evidence: EvidenceCritical {
            table: has_table,
            rows: rows_n,
            records_on_disk: files.len(),
            verified,
            key_id: verifier.map(|v| v.key_id().to_string()),
        },
        problems,
    })
}
