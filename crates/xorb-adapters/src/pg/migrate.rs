//! The schema migration itself (with the *from* release's scripts on a downgrade) and its probe.

use std::time::Duration;

use xorb_engine::runner::{Probe, StepContext, StepError};
use xorb_model::plan::{MigrationDirection, Preserve};
use xorb_model::release::Release;

use super::preserve::{preserve_control_plane, preserve_evidence, preserve_isolation_modes};
use super::scripts::alembic;
use super::*;
use crate::context::{TargetRunner, failed};
use crate::files::{mkdir, write_private};
use crate::target::Target;

/// One `Action::Migrate`, borrowed from the step.
pub struct MigrateStep<'a> {
    pub revision: &'a str,
    pub to_revision: &'a str,
    pub direction: MigrationDirection,
    pub data_migration: Option<&'a str>,
    pub preserve: &'a [Preserve],
    pub timeout: Duration,
}

/// The scripts to run: for a downgrade, the release rolled back from (the older release lacks the newer
/// revisions' files, helm/helm#5825); for an upgrade, the release rolled forward to. In both cases the newer one.
pub(crate) fn scripts_release<T: Target>(
    r: &TargetRunner<T>,
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

pub async fn migrate<T: Target>(
    r: &TargetRunner<T>,
    m: &MigrateStep<'_>,
    ctx: &StepContext<'_>,
) -> Result<String, StepError> {
    let conn = r.pg()?;
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
        let started = std::time::Instant::now();
        // Each export reads its own snapshot on its own connection, all at once: the server's work for one
        // overlaps xorbctl's for another (G8's audit chain and control plane, 400,000 rows each at 1 GB).
        let exports = m.preserve.iter().map(|p| async {
            let mut client = connect(&conn).await?;
            match p {
                Preserve::Evidence => preserve_evidence(r, &mut client, ctx.run_dir).await,
                Preserve::ControlPlane => preserve_control_plane(&mut client, ctx.run_dir).await,
                Preserve::IsolationModes => {
                    preserve_isolation_modes(&mut client, ctx.run_dir).await
                }
                Preserve::AuditChain => {
                    super::audit::preserve_audit_chain(r, &mut client, ctx.run_dir).await
                }
            }
        });
        parts.extend(futures::future::try_join_all(exports).await?);
        parts.push(format!("exported in {} ms", started.elapsed().as_millis()));
        parts.push(flush_exports(ctx.run_dir).await?);
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
    let started = std::time::Instant::now();
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
    xorb_engine::pause::inside(ctx.step_id, "migrated").await;
    let name = m
        .data_migration
        .map(|d| format!("{d}: "))
        .unwrap_or_default();
    let took = started.elapsed().as_millis();
    parts.push(format!(
        "{verb}d {} -> {} in {took} ms with the migrations of {} ({}); alembic_version is {}",
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

/// The exports are on disk before the downgrade that drops their data commits. The engine flushes a step's files
/// only once it ends (journal-and-resume.md, FLUSH): a power loss between this commit and that flush would keep
/// the downgrade (PostgreSQL's WAL is synced) and lose the only copy of what it dropped outside the backup. One
/// syncfs of the run directory's file system, not an fsync per file (G7 alone exports 4,032 evidence files).
async fn flush_exports(run_dir: &std::path::Path) -> Result<String, StepError> {
    let dir = run_dir.to_path_buf();
    let started = std::time::Instant::now();
    tokio::task::spawn_blocking(move || xorb_engine::private::sync_file_systems(&[&dir]))
        .await
        .map_err(|e| fatal(format!("the flush of the exports did not finish: {e}")))?
        .map_err(|(path, e)| {
            fatal(format!(
                "the exports cannot be flushed to disk (syncfs of the file system of {}: {e}), so the downgrade \
                 did not run: check that disk before resuming",
                path.display()
            ))
        })?;
    Ok(format!(
        "exports flushed to disk in {} ms",
        started.elapsed().as_millis()
    ))
}

pub async fn probe_migrate<T: Target>(
    r: &TargetRunner<T>,
    to_revision: &str,
    _ctx: &StepContext<'_>,
) -> Result<Probe, StepError> {
    let conn = r.pg()?;
    match crate::pg::schema_revision(&conn).await {
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
