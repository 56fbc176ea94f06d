//! Planning a rollback (no side effects): the releases, the runbook policy, the live observation of the target
//! (services, and the database when the plan touches it), the plan, and its text.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use xorb_engine::planner::{self, PlanOptions, Scope};
use xorb_model::plan::Plan;
use xorb_model::policy::Policy;
use xorb_model::redact::Redactor;
use xorb_model::release::Release;

use crate::settings::{Locations, PlanRequest};
use crate::target;

pub fn load_policy(file: Option<&Path>) -> anyhow::Result<Policy> {
    match file {
        None => Ok(Policy::embedded()),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read runbook policy {}", p.display()))?;
            Ok(Policy::parse(&text, &p.display().to_string())?)
        }
    }
}

/// Loading (no side effects): releases, policy, live observation (services, and the database when the plan
/// touches it), plan.
pub async fn compute_plan(
    loc: &Locations,
    a: &PlanRequest,
    red: &Redactor,
) -> anyhow::Result<(Plan, Release, target::Opened)> {
    let (from, to) = (a.from.as_str(), a.to.as_str());
    let paths = target::paths(loc)?;
    let scope = a
        .only
        .as_deref()
        .map(Scope::parse)
        .transpose()?
        .unwrap_or(Scope::All);
    let touches_database = matches!(scope, Scope::All | Scope::Database);
    if touches_database {
        // Alembic's imports take longer than the rest of planning: they run while the releases are read and the
        // target observed.
        xorb_adapters::pg::python::warm(&paths.venv);
    }
    let policy = load_policy(a.runbook.as_deref())?;
    let from_rel = Release::load_named(&paths.releases_root, from)
        .with_context(|| format!("--from {from}"))?;
    let to_rel =
        Release::load_named(&paths.releases_root, to).with_context(|| format!("--to {to}"))?;
    let origin = a
        .runbook
        .as_deref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "(embedded runbooks/rollback.toml)".into());
    policy.check_service_order(&origin, &[&from_rel, &to_rel])?;
    let opened = target::open(loc).await?;
    red.add_all(opened.secrets());
    let mut live = opened.observe().await?;
    if touches_database {
        target::check_migrations_dir(&from_rel)?;
        let db = opened
            .observe_database(&from_rel)
            .await
            .map_err(|e| planner::PlanError::NoDatabase(e.to_string()))?;
        live.database = Some(db);
    }
    live.streams = opened.observe_streams().await;
    let opts = PlanOptions {
        scope: Some(scope),
        to_revision: a.to_revision.clone(),
        migration: a.migration.clone(),
        reimport_from: opened.pending_reimports(),
        one_at_a_time: a.one_at_a_time,
    };
    let mut plan = planner::plan_with(&live, &from_rel, &to_rel, &policy, &opts)?;
    plan.release_digests = crate::release_drift::digests(&[&from_rel, &to_rel])
        .context("cannot read the release files to record their digests")?;
    Ok((plan, to_rel, opened))
}

pub fn render_plan(plan: &Plan) -> String {
    let mut s = String::new();
    if let Some(source) = &plan.restore_of {
        let _ = writeln!(
            s,
            "Restore plan: run {source}'s backup, services on {}  ({} steps)",
            plan.to,
            plan.steps.len()
        );
    } else {
        let _ = writeln!(
            s,
            "Rollback plan: {} → {}{}  ({} steps)",
            plan.from,
            plan.to,
            plan.scope
                .as_deref()
                .map(|o| format!("  [--only {o}]"))
                .unwrap_or_default(),
            plan.steps.len()
        );
    }
    let mut phase = None;
    for step in &plan.steps {
        if phase != Some(step.phase) {
            phase = Some(step.phase);
            let _ = writeln!(s, "\n{}", step.phase);
        }
        let _ = writeln!(
            s,
            "  {:<22} {}  [{:?}, timeout {} s]",
            step.id, step.title, step.safety, step.timeout_secs
        );
        for c in &step.changes {
            let _ = writeln!(
                s,
                "      {:<10} {:<36} {} → {}",
                format!("{:?}", c.kind).to_lowercase(),
                c.subject,
                c.before.as_deref().unwrap_or("(absent)"),
                c.after.as_deref().unwrap_or("(removed)")
            );
        }
        if !step.checks.is_empty() && step.phase != xorb_model::plan::Phase::Verification {
            let _ = writeln!(s, "      then checks: {}", step.checks.join(", "));
        }
    }
    let together: Vec<Vec<usize>> = xorb_model::access::waves(&plan.steps)
        .into_iter()
        .filter(|w| w.len() > 1)
        .collect();
    if !together.is_empty() {
        let _ = writeln!(
            s,
            "\nRun at the same time (none changes what another of them reads or changes):"
        );
        for wave in together {
            let ids: Vec<&str> = wave.iter().map(|&i| plan.steps[i].id.as_str()).collect();
            let _ = writeln!(s, "  {}", ids.join(", "));
        }
    }
    s
}
