//! `xorbctl restore RUN`: the runbook's "restore from last known good backup" as a run of its own (journaled,
//! resumable, under the rollback lock, through the same governance as a rollback). Design: docs/design/restore.md.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::Context;
use xorb_engine::RollbackLock;
use xorb_engine::planner::{BackupToRestore, plan_restore};
use xorb_model::exit::Exit;
use xorb_model::plan::{Plan, RunStatus};
use xorb_model::redact::Redactor;
use xorb_model::release::Release;

use crate::errors::{GovernanceError, UsageError};
use crate::execution::{Op, end_exit, execute, print_end};
use crate::governance::gate::RollbackGov;
use crate::governance::trail::Trail;
use crate::output::Reporter;
use crate::planning::{load_policy, render_plan};
use crate::settings::Restore;
use crate::target;

fn confirm(out: &Reporter, plan: &Plan, source: &str, yes: bool) -> anyhow::Result<bool> {
    if yes {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        return Err(UsageError(
            "refusing to restore without confirmation: stdin is not a terminal; review the plan and pass --yes"
                .into(),
        )
        .into());
    }
    out.line(render_plan(plan));
    print!(
        "Replace the live database with run {source}'s backup now (the live one is kept under another name)? \
         Type 'yes' to go on: "
    );
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(answer.trim() == "yes")
}

pub async fn run(s: &Restore, out: &Reporter, red: &Redactor) -> anyhow::Result<Exit> {
    if s.gov.release_repo.is_some() {
        return Err(UsageError(
            "--release-repo: a restore tags no release (the services keep the release they run)"
                .into(),
        )
        .into());
    }
    let state_dir = &s.run.locations.state_dir;
    // The lock first, as for a rollback: no restore while a run acts, and no run while this one does.
    let mut lock = RollbackLock::acquire(state_dir, None)?;
    let source = xorb_engine::load_run(state_dir, &s.id)?;
    if source.status == RunStatus::Running {
        return Err(GovernanceError::Refused(format!(
            "run {} is still marked running: resume or abort it before restoring its backup",
            source.id
        ))
        .into());
    }
    let record_path = source.run_dir.join("db").join("backup.json");
    let rec: xorb_adapters::pg::BackupRecord = match std::fs::read(&record_path) {
        Ok(b) => serde_json::from_slice(&b).with_context(|| {
            format!(
                "cannot read run {}'s backup record {}",
                source.id,
                record_path.display()
            )
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(GovernanceError::Refused(format!(
                "run {} took no backup (its plan had no phase-3 backup, or it stopped before it): nothing to \
                 restore. `xorbctl runs` lists the runs; `xorbctl show RUN` shows which took one",
                source.id
            ))
            .into());
        }
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read {}", record_path.display()));
        }
    };
    let revision = rec.revision.clone().ok_or_else(|| {
        GovernanceError::Refused(format!(
            "run {}'s backup was taken from a database Alembic never migrated: nothing the services run on",
            source.id
        ))
    })?;
    let paths = target::paths(&s.run.locations)?;
    let policy = load_policy(s.runbook.as_deref())?;
    let live = target::open(&s.run.locations).await?.observe().await?;
    let release = Release::load_named(&paths.releases_root, &live.release)
        .with_context(|| format!("the live stack's release {}", live.release))?;
    let backup = BackupToRestore {
        source_run: source.id.clone(),
        revision,
    };
    let mut plan = plan_restore(&live, &release, &policy, &backup)?;
    plan.release_digests = crate::release_drift::digests(&[&release])
        .context("cannot read the release files to record their digests")?;

    let trail = Trail::new(state_dir, red);
    let gov = RollbackGov::prepare(state_dir, &s.run.policies, trail.clone(), &s.gov, &plan)?;
    if !confirm(out, &plan, &source.id, s.yes)? {
        out.line("Not confirmed: nothing was done.");
        return Ok(Exit::BadInput);
    }
    out.line(format!(
        "Restoring run {}'s backup (revision {}, taken {}) under {} ({} steps)…",
        source.id,
        backup.revision,
        rec.created_at,
        plan.to,
        plan.steps.len()
    ));
    let end = execute(&s.run, out, red, release, &mut lock, Op::Start(plan, &gov)).await?;
    print_end(out, &end);
    crate::governance::checklists::after_run(&s.run.policies, &trail, out, &end.run_id)?;
    Ok(end_exit(&end))
}
