//! Phase 3's verification: the live schema equals the target's, fingerprinted against a scratch database.

use std::collections::BTreeSet;

use xorb_engine::runner::{StepContext, StepError};
use xorb_model::release::Release;

use super::scripts::alembic;
use super::*;
use crate::context::{TargetRunner, failed};
use crate::files::mkdir;
use crate::target::Target;

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

pub(crate) async fn drop_scratch(
    admin: &tokio_postgres::Client,
    name: &str,
) -> Result<(), tokio_postgres::Error> {
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await
}

/// A new empty scratch database (dropped by [`drop_scratch`]; an earlier one cut off is dropped by `verify`).
pub(crate) async fn create_scratch(
    admin: &tokio_postgres::Client,
    what: &'static str,
) -> Result<String, StepError> {
    let scratch = format!(
        "{SCRATCH_PREFIX}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    admin
        .batch_execute(&format!("CREATE DATABASE \"{scratch}\""))
        .await
        .map_err(db(what))?;
    Ok(scratch)
}

pub async fn verify<T: Target>(
    r: &TargetRunner<T>,
    revision: &str,
    ctx: &StepContext<'_>,
) -> Result<String, StepError> {
    let conn = r.pg()?;
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
    let scratch = create_scratch(&admin, "create a scratch database").await?;
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
