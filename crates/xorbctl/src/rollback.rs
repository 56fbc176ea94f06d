//! `plan`, `rollback`, `resume`, `abort`, `runs`, `show`, `report`: wiring the engine to the local target.

use std::fmt::Write as _;
use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use xorb_engine::planner::{self, PlanOptions, Scope};
use xorb_engine::{Confirmation, Engine, ResumeOptions, RollbackLock, RunEnd};
use xorb_local::target::{LocalRunner, observe};
use xorb_model::plan::{Plan, RunStatus};
use xorb_model::policy::Policy;
use xorb_model::release::Release;

use crate::cli::{Cli, PlanArgs, UsageError, paths};
use crate::output::Reporter;

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
pub async fn compute_plan(cli: &Cli, a: &PlanArgs) -> anyhow::Result<(Plan, Release)> {
    let (from, to) = (a.from.as_str(), a.to.as_str());
    let paths = paths(cli)?;
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
    let scope = a
        .only
        .as_deref()
        .map(Scope::parse)
        .transpose()?
        .unwrap_or(Scope::All);
    let mut live = observe(&cli.state_dir)?;
    if matches!(scope, Scope::All | Scope::Database) {
        xorb_adapters::pg::check_migrations_dir(&from_rel)?;
        let db = xorb_adapters::pg::observe_database(&stack_pg(&cli.state_dir)?, &paths, &from_rel)
            .await
            .map_err(|e| planner::PlanError::NoDatabase(e.to_string()))?;
        live.database = Some(db);
    }
    // The streams NATS has now, so that the plan says which the rollback creates (an unreachable NATS leaves the
    // plan as it would be without looking; the run itself reports it).
    if let Ok(ep) = xorb_adapters::Target::endpoints(&xorb_local::target::LocalTarget::new(
        &cli.state_dir,
        paths.clone(),
    )) {
        live.streams = xorb_adapters::nats::list_streams(&ep.nats).await.ok();
    }
    let opts = PlanOptions {
        scope: Some(scope),
        to_revision: a.to_revision.clone(),
        migration: a.migration.clone(),
        reimport_from: xorb_adapters::pg::pending_reimports(&cli.state_dir),
    };
    let mut plan = planner::plan_with(&live, &from_rel, &to_rel, &policy, &opts)?;
    plan.release_digests = crate::release_drift::digests(&[&from_rel, &to_rel])
        .context("cannot read the release files to record their digests")?;
    Ok((plan, to_rel))
}

pub fn render_plan(plan: &Plan) -> String {
    let mut s = String::new();
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
    s
}

fn confirm(out: &Reporter, plan: &Plan, yes: bool) -> anyhow::Result<bool> {
    if yes {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        return Err(UsageError("refusing to roll back without confirmation: stdin is not a terminal; review `xorbctl plan` and pass --yes".into()).into());
    }
    out.line(render_plan(plan));
    print!(
        "Roll {} back to {} now? Type 'yes' to go on: ",
        plan.from, plan.to
    );
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(answer.trim() == "yes")
}

fn end_code(end: &RunEnd) -> ExitCode {
    match end.status {
        RunStatus::Succeeded => ExitCode::SUCCESS,
        RunStatus::WaitingForConfirmation { .. } => ExitCode::from(7),
        RunStatus::WaitingForApproval { .. } => {
            ExitCode::from(crate::governance::EXIT_WAITING_FOR_APPROVAL)
        }
        _ => ExitCode::from(6),
    }
}

fn print_end(out: &Reporter, end: &RunEnd) {
    out.result(end, |e| {
        format!(
            "\nRun {}: {}\nNext: {}\nLog: {}\nArtifacts: {}\n",
            e.run_id,
            e.status,
            e.next,
            e.log_file.display(),
            e.run_dir.display()
        )
    });
}

enum Op<'a> {
    Start(Plan, &'a crate::governance::RollbackGov),
    Resume(&'a str, ResumeOptions),
}

async fn execute(
    cli: &Cli,
    out: &Reporter,
    to: Release,
    lock: &mut RollbackLock,
    op: Op<'_>,
) -> anyhow::Result<RunEnd> {
    let paths = paths(cli)?;
    // One redactor for the whole invocation: the terminal, the journal, the log file, the audit trail and the
    // notifications all go through it.
    let urls = crate::notify::webhook_urls(&cli.state_dir, &cli.notify)?;
    let redactor = crate::sinks::redactor(&cli.state_dir, Some(&paths.releases_root), &urls);
    let config = crate::notify::NotifyConfig::load(&cli.state_dir, &cli.notify, urls)?;
    let notifier = crate::notify::Notifier::new(&cli.state_dir, config, redactor.clone());
    let runner = xorb_local::target::runner(&cli.state_dir, paths, to);
    let sink = crate::sinks::RunSink::new(
        out.format,
        &cli.state_dir,
        redactor.clone(),
        Some(notifier.clone()),
    )?;
    let engine = Engine::new(&cli.state_dir, runner, sink)?.with_redactor(redactor.clone());
    let end = run_op(engine, lock, op).await;
    // A slow or failing webhook never holds the rollback: a short grace, then what is left stays queued.
    if let Some((delivered, pending)) = notifier.finish().await
        && pending > 0
    {
        out.line(format!(
            "Notifications: {delivered} delivered, {pending} still pending (`xorbctl show` lists them; \
             `xorbctl resume` of an unfinished run delivers them)"
        ));
    }
    let end = end?;
    let redacted = redactor.redact_json(&serde_json::to_value(&end)?);
    Ok(serde_json::from_value(redacted).unwrap_or(end))
}

async fn run_op<S: xorb_engine::EventSink>(
    mut engine: Engine<LocalRunner, S>,
    lock: &mut RollbackLock,
    op: Op<'_>,
) -> Result<RunEnd, xorb_engine::EngineError> {
    match op {
        Op::Start(plan, gov) => {
            let state_dir = engine.state_dir().to_path_buf();
            engine
                .start_locked_gated(lock, plan, |run_id| gov.at_start(&state_dir, run_id))
                .await
        }
        Op::Resume(run, opts) => engine.resume_locked(lock, run, opts).await,
    }
}

pub async fn rollback(
    cli: &Cli,
    out: &Reporter,
    a: &PlanArgs,
    yes: bool,
    gov: &crate::governance::RollbackGovArgs,
) -> anyhow::Result<ExitCode> {
    // The lock first: a second rollback is refused before anything else is looked at.
    let mut lock = RollbackLock::acquire(&cli.state_dir, None)?;
    let (plan, to_rel) = compute_plan(cli, a).await?;
    // Approvals, policies and the release repository are checked before anything is journaled.
    let gov = crate::governance::RollbackGov::prepare(cli, gov, &plan)?;
    if !confirm(out, &plan, yes)? {
        out.line("Not confirmed: nothing was done.");
        return Ok(ExitCode::from(2));
    }
    out.line(format!(
        "Rolling back {} → {} ({} steps)…",
        plan.from,
        plan.to,
        plan.steps.len()
    ));
    let end = execute(cli, out, to_rel, &mut lock, Op::Start(plan, &gov)).await?;
    print_end(out, &end);
    crate::governance::after_run(cli, out, &end.run_id)?;
    Ok(end_code(&end))
}

pub async fn resume(
    cli: &Cli,
    out: &Reporter,
    run: &str,
    confirm_steps: &[String],
    mark_done: &[String],
) -> anyhow::Result<ExitCode> {
    let mut lock = RollbackLock::acquire(&cli.state_dir, None)?;
    let record = xorb_engine::load_run(&cli.state_dir, run)?;
    xorb_engine::check_stored_plan(&record)?;
    let paths = paths(cli)?;
    let to_rel = Release::load_named(&paths.releases_root, &record.plan.to)?;
    let from_rel = Release::load_named(&paths.releases_root, &record.plan.from)?;
    let now = crate::release_drift::digests(&[&from_rel, &to_rel])
        .context("cannot read the release files to compare them with the plan's")?;
    let drift = crate::release_drift::changed(&record.plan.release_digests, &now);
    if !drift.is_empty() {
        return Err(
            crate::governance::GovernanceError::Refused(crate::release_drift::refusal(
                &record.id,
                &record.plan.from,
                &record.plan.to,
                &drift,
            ))
            .into(),
        );
    }
    let mut opts = ResumeOptions::default();
    for s in confirm_steps {
        opts = opts.confirm(s.clone(), Confirmation::Rerun);
    }
    for s in mark_done {
        opts = opts.confirm(s.clone(), Confirmation::MarkDone);
    }
    if let Some(code) = crate::governance::gate_for_resume(cli, out, &record.id)? {
        return Ok(code);
    }
    out.line(format!("Resuming run {}…", record.id));
    let id = record.id.clone();
    let end = execute(cli, out, to_rel, &mut lock, Op::Resume(&id, opts)).await?;
    print_end(out, &end);
    crate::governance::after_run(cli, out, &end.run_id)?;
    Ok(end_code(&end))
}

/// The stack's database connection (its password stays inside this process).
fn stack_pg(state_dir: &std::path::Path) -> anyhow::Result<xorb_adapters::pg::PgConn> {
    let st = xorb_local::stack::StackState::load(state_dir)?;
    let secrets = xorb_local::stack::Secrets::load(state_dir)?;
    Ok(st.pg(&secrets))
}
