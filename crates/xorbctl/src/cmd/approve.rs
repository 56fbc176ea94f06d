//! `xorbctl approve RUN --as NAME --role ROLE --reason TEXT [--resume]`: an approval of a run waiting at its gate,
//! checked, journaled and audited; with `--resume`, the run goes on at once if the gate opens.

use serde_json::json;
use xorb_engine::approvals::GovernanceStore;
use xorb_governance::{Approval, ApprovalGate, ApprovalSource, GateDecision, Role, Severity};
use xorb_model::exit::Exit;
use xorb_model::redact::Redactor;

use crate::errors::{bad, refused};
use crate::governance::clock::now;
use crate::governance::gate::{from_record, missing_text, to_record};
use crate::governance::policies::Policies;
use crate::governance::trail::Trail;
use crate::output::Reporter;
use crate::settings::Approve;

pub async fn run(a: &Approve, out: &Reporter, red: &Redactor) -> anyhow::Result<Exit> {
    let state_dir = &a.run.locations.state_dir;
    let trail = Trail::new(state_dir, red);
    let run = xorb_engine::load_run(state_dir, &a.id)?;
    let run_id = run.id.clone();
    if run.status.is_final() {
        return Err(refused(format!(
            "run {run_id} is {}: there is nothing left to approve",
            run.status
        )));
    }
    let mut store = GovernanceStore::open(state_dir)?;
    let rec = store.load(&run_id)?;
    let (Some(gate), Some(sev)) = (
        &rec.gate,
        rec.gate.as_ref().and_then(|g| g.severity.clone()),
    ) else {
        return Err(refused(format!(
            "run {run_id} was started without --severity: it has no approval gate"
        )));
    };
    let sev: Severity = sev.parse().map_err(bad)?;
    let policies = Policies::load(&a.run.policies)?;
    let role: Role = a
        .role
        .parse()
        .map_err(|e: String| bad(format!("--role: {e}")))?;
    let at = now()?;
    let approval = Approval {
        name: a.name.clone(),
        role,
        at,
        reason: a.reason.clone(),
        source: ApprovalSource::Approve,
    };
    let gatekeeper = ApprovalGate::new(&policies.matrix, &policies.operators);
    if let Err(why) = gatekeeper.check(sev, &approval, &gate.initiator, at) {
        trail.append(
            &a.name,
            "governance.approval_refused",
            Some(&run_id),
            json!({"approval": approval, "why": why}),
        );
        return Err(refused(format!(
            "the approval of run {run_id} by {} as {role}: {why}. It was not recorded",
            a.name
        )));
    }
    store.add_approval(&run_id, &to_record(&approval))?;
    trail.append(
        &a.name,
        "governance.approval",
        Some(&run_id),
        serde_json::to_value(&approval).unwrap_or_default(),
    );
    let mut approvals: Vec<Approval> = rec
        .approvals
        .iter()
        .map(from_record)
        .collect::<anyhow::Result<_>>()?;
    approvals.push(approval);
    let decision = gatekeeper.evaluate(sev, &approvals, &gate.initiator, at);
    let open = matches!(decision, GateDecision::Open { .. });
    out.result(
        &json!({"run_id": run_id, "severity": sev.to_string(), "recorded": true, "gate": decision}),
        |_| {
            if let GateDecision::Refused { why } = &decision {
                format!(
                    "Approval recorded, but run {run_id} ({sev}) cannot open its gate: {why}.\n"
                )
            } else if open {
                format!(
                    "Approval recorded. Run {run_id} ({sev}): its approval gate is open{}.\n",
                    if a.resume {
                        ""
                    } else {
                        "; continue it with `xorbctl resume`"
                    }
                )
            } else {
                format!(
                    "Approval recorded. Run {run_id} ({sev}) still waits: it needs {}.\n",
                    missing_text(&decision)
                )
            }
        },
    );
    if !open {
        return Ok(Exit::WaitingForApproval);
    }
    if a.resume {
        return crate::execution::resume(&a.run, out, red, &run_id, &[], &[]).await;
    }
    Ok(Exit::Ok)
}
