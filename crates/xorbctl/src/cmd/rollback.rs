//! `xorbctl rollback`: plan, check governance, confirm, then execute the run under the rollback lock.

use std::io::{BufRead, IsTerminal, Write};

use xorb_engine::RollbackLock;
use xorb_model::exit::Exit;
use xorb_model::plan::Plan;
use xorb_model::redact::Redactor;

use crate::errors::UsageError;
use crate::execution::{Op, end_exit, execute, print_end};
use crate::governance::gate::RollbackGov;
use crate::governance::trail::Trail;
use crate::output::Reporter;
use crate::planning::{compute_plan, render_plan};
use crate::settings::Rollback;

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

pub async fn run(s: &Rollback, out: &Reporter, red: &Redactor) -> anyhow::Result<Exit> {
    let state_dir = &s.run.locations.state_dir;
    // The lock first: a second rollback is refused before anything else is looked at.
    let mut lock = RollbackLock::acquire(state_dir, None)?;
    let (plan, to_rel, _) = compute_plan(&s.run.locations, &s.request, red).await?;
    // Approvals, policies and the release repository are checked before anything is journaled.
    let trail = Trail::new(state_dir, red);
    let gov = RollbackGov::prepare(state_dir, &s.run.policies, trail.clone(), &s.gov, &plan)?;
    if !confirm(out, &plan, s.yes)? {
        out.line("Not confirmed: nothing was done.");
        return Ok(Exit::BadInput);
    }
    out.line(format!(
        "Rolling back {} → {} ({} steps)…",
        plan.from,
        plan.to,
        plan.steps.len()
    ));
    let end = execute(&s.run, out, red, to_rel, &mut lock, Op::Start(plan, &gov)).await?;
    print_end(out, &end);
    crate::governance::checklists::after_run(&s.run.policies, &trail, out, &end.run_id)?;
    Ok(end_exit(&end))
}
