//! The release's migration scripts: listing their revisions (xorb_meta.py) and running Alembic.

use std::path::Path;
use std::time::Duration;

use xorb_engine::runner::StepError;
use xorb_model::release::Release;
use xorb_model::schema::{LiveDatabase, RevisionInfo};

use super::python;
use super::*;
use crate::context::failed;
use crate::{AdapterError, Paths};

/// A revision as xorb_meta.py prints it, with the module's file (for error messages).
#[derive(Debug, Clone)]
pub struct ScriptRevision {
    pub info: RevisionInfo,
    pub path: String,
}

/// The release's Alembic project must be there before anything asks the database about it: a missing
/// directory is an installation problem to name with its path, not a database that does not answer.
pub fn check_migrations_dir(release: &Release) -> Result<(), AdapterError> {
    let dir = release.migrations_dir();
    if dir.join("alembic.ini").is_file() {
        return Ok(());
    }
    let what = if dir.is_dir() {
        "has no alembic.ini"
    } else {
        "is missing"
    };
    Err(AdapterError::Config(format!(
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
) -> Result<Vec<ScriptRevision>, AdapterError> {
    let script = migrations.join("xorb_meta.py");
    if !script.is_file() {
        return Err(AdapterError::Config(format!(
            "{} is missing: cannot list the revisions of the migrations in {}",
            script.display(),
            migrations.display()
        )));
    }
    let out = python::script(&paths.venv, &script)
        .await
        .map_err(|e| AdapterError::Alembic {
            what: format!("{}", script.display()),
            why: format!("{e} (run ./scripts/setup-python)"),
        })?;
    if out.code != 0 {
        return Err(AdapterError::Alembic {
            what: format!("{}", script.display()),
            why: last_line(&out.stderr),
        });
    }
    let v: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).map_err(|e| {
        AdapterError::Config(format!("{} printed malformed JSON: {e}", script.display()))
    })?;
    v.into_iter()
        .map(|item| {
            let path = item["path"].as_str().unwrap_or_default().to_string();
            let info: RevisionInfo = serde_json::from_value(item).map_err(|e| {
                AdapterError::Config(format!(
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
pub async fn alembic(
    paths: &Paths,
    migrations: &Path,
    conn: &PgConn,
    args: &[&str],
    statement_timeout: Option<Duration>,
) -> Result<(String, String), StepError> {
    let mut argv = vec![
        "-c".to_string(),
        migrations.join("alembic.ini").display().to_string(),
    ];
    argv.extend(args.iter().map(|a| a.to_string()));
    let env = vec![
        ("DATABASE_URL", Some(conn.url())),
        // libpq (under psycopg2) bounds its connect by this: a stopped server must not hold alembic forever.
        ("PGCONNECT_TIMEOUT", Some("10".to_string())),
        (
            "XORB_STATEMENT_TIMEOUT_MS",
            statement_timeout.map(|t| t.as_millis().max(1).to_string()),
        ),
    ];
    let what = format!("alembic {}", args.join(" "));
    let out = python::alembic(&paths.venv, argv, env)
        .await
        .map_err(|e| match e {
            python::WorkerError::Start(e) => fatal(format!(
                "cannot run {what}: {e} (run ./scripts/setup-python)"
            )),
            // Whatever it ran was one transaction, rolled back when its connection went away.
            python::WorkerError::Lost(e) => failed(format!("{what}: {e}")),
        })?;
    let stdout = conn.redact(&out.stdout);
    let stderr = conn.redact(&out.stderr);
    if out.code != 0 {
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
    conn: &PgConn,
    paths: &Paths,
    from: &Release,
) -> Result<LiveDatabase, AdapterError> {
    let revision = crate::pg::schema_revision(conn).await?.ok_or_else(|| {
        AdapterError::Config(format!(
            "the database {} on port {} has no alembic_version: it was never migrated",
            conn.dbname, conn.port
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
