//! Executing a run (`rollback`, `resume`, `approve --resume`): the engine wired to the target's runner, the run's
//! sink (terminal, audit trail, notifications) and the invocation's one redactor; then the checklist ticks and the
//! release tag, and the exit code of how the run ended.

use anyhow::Context;
use xorb_engine::{Confirmation, Engine, ResumeOptions, RollbackLock, RunEnd};
use xorb_model::exit::Exit;
use xorb_model::plan::{Plan, RunStatus};
use xorb_model::redact::Redactor;
use xorb_model::release::Release;

use crate::errors::GovernanceError;
use crate::governance::gate::{RollbackGov, gate_for_resume};
use crate::governance::trail::Trail;
use crate::output::Reporter;
use crate::settings::RunSettings;
use crate::target;

/// How a command that executed a run exits: as the run ended (a run cannot end "running").
pub fn end_exit(end: &RunEnd) -> Exit {
    Exit::of_run(&end.status).unwrap_or(Exit::RunFailed)
}

pub fn print_end(out: &Reporter, end: &RunEnd) {
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

pub enum Op<'a> {
    Start(Plan, &'a RollbackGov),
    Resume(&'a str, ResumeOptions),
}

/// Runs `op` under `lock`, to release `to`, through the engine.
pub async fn execute(
    s: &RunSettings,
    out: &Reporter,
    redactor: &Redactor,
    to: Release,
    lock: &mut RollbackLock,
    op: Op<'_>,
) -> anyhow::Result<RunEnd> {
    let state_dir = &s.locations.state_dir;
    let paths = target::paths(&s.locations)?;
    // The invocation's one redactor goes to the terminal, the journal, the log file, the audit trail and the
    // notifications. The webhook URLs are read again here, strictly: one that is not usable stops the command.
    let urls = crate::notify::webhook_urls(state_dir, &s.notify)?;
    let config = crate::notify::NotifyConfig::load(state_dir, &s.notify, urls)?;
    let notifier = crate::notify::Notifier::new(state_dir, config, redactor.clone());
    let runner = target::runner(state_dir, paths, to);
    let sink = crate::sinks::RunSink::new(
        out.format,
        state_dir,
        redactor.clone(),
        Some(notifier.clone()),
    )?;
    let engine = Engine::new(state_dir, runner, sink)?.with_redactor(redactor.clone());
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
    mut engine: Engine<target::Runner, S>,
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

/// Continues run `run` (`resume`, `approve --resume`): a run that already succeeded has nothing left to do (exit 0);
/// refused when the release files changed since its plan; stops at a closed approval gate.
pub async fn resume(
    s: &RunSettings,
    out: &Reporter,
    redactor: &Redactor,
    run: &str,
    confirm_steps: &[String],
    mark_done: &[String],
) -> anyhow::Result<Exit> {
    let state_dir = &s.locations.state_dir;
    let mut lock = RollbackLock::acquire(state_dir, None)?;
    let record = xorb_engine::load_run(state_dir, run)?;
    // Nothing left to do is success: say so, change nothing.
    if record.status == RunStatus::Succeeded {
        let next = xorb_engine::next_action(&record.id, &record.plan, &record.status);
        out.result(
            &serde_json::json!({"run_id": record.id, "status": record.status, "next": next}),
            |_| {
                format!(
                    "Run {} has already succeeded: nothing to resume (`xorbctl report {}` shows it).\n",
                    record.id, record.id
                )
            },
        );
        return Ok(Exit::Ok);
    }
    xorb_engine::check_stored_plan(&record)?;
    let paths = target::paths(&s.locations)?;
    let to_rel = Release::load_named(&paths.releases_root, &record.plan.to)?;
    let from_rel = Release::load_named(&paths.releases_root, &record.plan.from)?;
    let now = crate::release_drift::digests(&[&from_rel, &to_rel])
        .context("cannot read the release files to compare them with the plan's")?;
    let drift = crate::release_drift::changed(&record.plan.release_digests, &now);
    if !drift.is_empty() {
        return Err(GovernanceError::Refused(crate::release_drift::refusal(
            &record.id,
            &record.plan.from,
            &record.plan.to,
            &drift,
        ))
        .into());
    }
    let mut opts = ResumeOptions::default();
    for st in confirm_steps {
        opts = opts.confirm(st.clone(), Confirmation::Rerun);
    }
    for st in mark_done {
        opts = opts.confirm(st.clone(), Confirmation::MarkDone);
    }
    let trail = Trail::new(state_dir, redactor);
    if let Some(code) = gate_for_resume(&s.policies, &trail, out, &record.id)? {
        return Ok(code);
    }
    out.line(format!("Resuming run {}…", record.id));
    let id = record.id.clone();
    let end = execute(s, out, redactor, to_rel, &mut lock, Op::Resume(&id, opts)).await?;
    print_end(out, &end);
    crate::governance::checklists::after_run(&s.policies, &trail, out, &end.run_id)?;
    Ok(end_exit(&end))
}
