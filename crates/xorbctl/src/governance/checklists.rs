//! The checklists of a run: what its journal proves (steps, checks, phases), what the delivery of its messages
//! proves (`notify.*`), what the gate and the report prove, ticked, journaled and audited; the person-confirmed items are ticked by `xorbctl check` (`crate::cmd::check`).

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use xorb_engine::approvals::{GovernanceRecord, GovernanceStore, TickRecord};
use xorb_engine::{RunRecord, StepState};
use xorb_governance::{Checklist, Tick, Ticker};
use xorb_model::plan::RunStatus;

use crate::governance::clock::now;
use crate::governance::policies::Policies;
use crate::governance::release_tag::{create_tag, plan_tag};
use crate::governance::trail::Trail;
use crate::output::Reporter;
use crate::settings::PolicyFiles;

/// What the journaled steps prove: each step that succeeded or was already done, `check.NAME` for the checks
/// those steps ran, and `phase.N` when every step of phase N is done. Derived from the journal, so a killed and
/// resumed run ticks the same items at the same times.
fn proofs_of(run: &RunRecord) -> Vec<(String, DateTime<Utc>)> {
    let mut out = Vec::new();
    let mut phases: BTreeMap<u8, (bool, Option<DateTime<Utc>>)> = BTreeMap::new();
    for s in &run.steps {
        let done = s.state.is_done();
        let entry = phases.entry(s.spec.phase.number()).or_insert((true, None));
        entry.0 &= done;
        if done {
            entry.1 = entry.1.max(s.finished_at);
        }
        if !matches!(s.state, StepState::Succeeded | StepState::AlreadyDone) {
            continue;
        }
        let Some(at) = s.finished_at else { continue };
        out.push((s.spec.id.clone(), at));
        // Only checks that ran and passed: a phase-5 check step that succeeded, and the gates the runner says ran.
        if let (xorb_model::plan::Action::Check { name, .. }, StepState::Succeeded) =
            (&s.spec.action, s.state)
        {
            out.push((format!("check.{name}"), at));
        }
        for c in s
            .outcome
            .iter()
            .flat_map(|o| o.checks_run())
            .filter(|c| c.passed)
        {
            out.push((format!("check.{}", c.check), at));
        }
    }
    for (n, (all_done, at)) in phases {
        if let (true, Some(at)) = (all_done, at) {
            out.push((format!("phase.{n}"), at));
        }
    }
    out.sort_by_key(|(_, at)| *at);
    out
}

pub fn checklist_of(policies: &Policies, rec: &GovernanceRecord) -> Checklist {
    let ticks = rec
        .ticks
        .iter()
        .map(|t| {
            let by = if t.by_kind == "person" {
                Ticker::Person(t.by_name.clone())
            } else {
                Ticker::Proof(t.by_name.clone())
            };
            (t.item.clone(), Tick { by, at: t.at })
        })
        .collect();
    Checklist::resume(policies.checklists.clone(), ticks)
}

/// Ticks what `proofs` prove, journals and audits each new tick.
pub fn prove(
    store: &mut GovernanceStore,
    trail: &Trail,
    policies: &Policies,
    run_id: &str,
    proofs: &[(String, DateTime<Utc>)],
) -> Result<(), xorb_engine::JournalError> {
    let rec = store.load(run_id)?;
    let mut list = checklist_of(policies, &rec);
    for (proof, at) in proofs {
        for item in list.prove(proof, *at) {
            let t = TickRecord {
                item: item.clone(),
                by_kind: "proof".into(),
                by_name: proof.clone(),
                at: *at,
            };
            if store.tick(run_id, &t)? {
                trail.append(
                    "xorbctl",
                    "governance.checklist_tick",
                    Some(run_id),
                    serde_json::to_value(&t).unwrap_or_default(),
                );
            }
        }
    }
    Ok(())
}

/// After an execution of a run (start or resume): tick what its steps proved, and tag the release repository
/// once it has succeeded.
pub fn after_run(
    files: &PolicyFiles,
    trail: &Trail,
    out: &Reporter,
    run_id: &str,
) -> anyhow::Result<()> {
    let run = xorb_engine::load_run(trail.state_dir(), run_id)?;
    let mut store = GovernanceStore::open(trail.state_dir())?;
    let policies = Policies::for_run(files, &store, run_id)?;
    // The journal's proofs, and the deliveries of the run's messages (the sender has finished by now).
    let mut proofs = proofs_of(&run);
    proofs.extend(crate::notify::delivery_proofs(&crate::notify::listing(
        trail.state_dir(),
        run_id,
    )));
    proofs.sort_by_key(|(_, at)| *at);
    prove(&mut store, trail, &policies, run_id, &proofs)?;
    let rec = store.load(run_id)?;
    if run.status == RunStatus::Succeeded
        && rec.tags.is_empty()
        && let Some(gate) = &rec.gate
        && let Some(repo) = &gate.release_repo
    {
        let planned = plan_tag(Path::new(repo), &run.plan, gate.push_remote.as_deref())?;
        let t = create_tag(&planned, &run, &gate.initiator, gate.push_remote.as_deref())?;
        store.add_tag(run_id, &t)?;
        trail.append(
            &gate.initiator,
            "governance.release_tag",
            Some(run_id),
            serde_json::to_value(&t).unwrap_or_default(),
        );
        out.line(format!(
            "Tagged {} in {} as {}{}.",
            &t.commit[..12.min(t.commit.len())],
            t.repo,
            t.tag,
            t.pushed_to
                .as_deref()
                .map(|r| format!(", pushed to {r}"))
                .unwrap_or_default()
        ));
    }
    Ok(())
}

/// `xorbctl report` proves the checklist's "report generated" item before rendering, so the report shows it.
pub fn report_written(files: &PolicyFiles, trail: &Trail, run_id: &str) -> anyhow::Result<()> {
    let mut store = GovernanceStore::open(trail.state_dir())?;
    let policies = Policies::for_run(files, &store, run_id)?;
    if store.load(run_id)?.gate.is_some() {
        prove(
            &mut store,
            trail,
            &policies,
            run_id,
            &[("report.written".into(), now()?)],
        )?;
    }
    Ok(())
}
