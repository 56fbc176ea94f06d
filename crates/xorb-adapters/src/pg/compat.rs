//! Phase 3's compatibility check: the live revision, the scripts' chain and the target's head agree.

use serde::Serialize;
use xorb_engine::runner::{StepContext, StepError};
use xorb_model::release::Release;
use xorb_model::schema::LiveDatabase;

use super::*;
use crate::context::{TargetRunner, failed};
use crate::files::mkdir;
use crate::target::Target;

#[derive(Debug, Clone, Serialize)]
pub(crate) struct CompatibilityRecord {
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

pub async fn compatibility<T: Target>(
    r: &TargetRunner<T>,
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
    let conn = r.pg()?;
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
