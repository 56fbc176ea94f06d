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
    let opened = target::open(&s.locations).await?;
    redactor.add_all(opened.secrets());
    // The invocation's one redactor goes to the terminal, the journal, the log file, the audit trail and the
    // notifications. The webhook URLs are read again here, strictly: one that is not usable stops the command.
    let urls = crate::notify::webhook_urls(state_dir, &s.notify)?;
    let config = crate::notify::NotifyConfig::load(state_dir, &s.notify, urls)?;
    let notifier = crate::notify::Notifier::new(state_dir, config, redactor.clone());
    // On Kubernetes the run holds the namespace's Lease while it acts: taken in the run's name before anything is
    // journaled, so a refused run leaves nothing behind.
    let (run_id, resuming) = match &op {
        Op::Start(..) => (xorb_engine::new_run_id(), false),
        // `resume` resolved the id already (a prefix or `latest` became the run's id).
        Op::Resume(run, _) => (run.to_string(), true),
    };
    let lease = match opened.cluster() {
        None => None,
        Some((choice, cluster)) => {
            let operator = match &op {
                Op::Start(_, gov) => gov.initiator().to_string(),
                Op::Resume(..) => crate::governance::trail::user(),
            };
            let held = target::lease::take(
                cluster.client.clone(),
                &cluster.namespace,
                &run_id,
                &operator,
                resuming,
                |line| out.line(line),
            )
            .await?;
            // Bound only once this run may act: a later `resume` finds the same cluster without flags.
            target::select::bind(state_dir, choice)?;
            Some(held)
        }
    };
    let runner = opened.runner(to, lease.as_ref());
    let sink = crate::sinks::RunSink::new(
        out.format,
        state_dir,
        redactor.clone(),
        Some(notifier.clone()),
    )?;
    let engine = Engine::new(state_dir, runner, sink)?.with_redactor(redactor.clone());
    let end = run_op(engine, lock, op, run_id).await;
    if let Some(lease) = lease {
        let status = end.as_ref().ok().map(|e| &e.status);
        if let Err(e) = target::lease::finish(lease, status).await {
            out.line(format!(
                "The rollback Lease could not be let go ({e}); it expires by itself in {} s",
                target::lease::LEASE_DURATION.as_secs()
            ));
        }
    }
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
    run_id: String,
) -> Result<RunEnd, xorb_engine::EngineError> {
    match op {
        Op::Start(plan, gov) => {
            let state_dir = engine.state_dir().to_path_buf();
            engine
                .start_locked_gated_as(lock, plan, run_id, |run_id| {
                    gov.at_start(&state_dir, run_id)
                })
                .await
        }
        Op::Resume(_, opts) => engine.resume_locked(lock, &run_id, opts).await,
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
