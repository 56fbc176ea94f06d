//! The approval gate of `rollback --severity`: checked before anything is journaled, recorded when the run is,
//! opened by approvals (`xorbctl approve`, or the command line where the severity allows it) and re-evaluated by
//! `resume`.

use std::path::Path;

use chrono::{DateTime, Utc};
use serde_json::json;
use xorb_engine::EngineError;
use xorb_engine::approvals::{ApprovalRecord, GateRecord, GovernanceStore};
use xorb_governance::{Approval, ApprovalGate, ApprovalSource, GateDecision, Role, Severity};
use xorb_model::exit::Exit;
use xorb_model::plan::{Plan, RunStatus};

use crate::errors::{bad, refused};
use crate::governance::checklists::prove;
use crate::governance::clock::now;
use crate::governance::policies::Policies;
use crate::governance::release_tag::{PlannedTag, plan_tag};
use crate::governance::trail::{Trail, user};
use crate::output::Reporter;
use crate::settings::{GovRequest, PolicyFiles};

pub fn to_record(a: &Approval) -> ApprovalRecord {
    ApprovalRecord {
        name: a.name.clone(),
        role: a.role.to_string(),
        at: a.at,
        reason: a.reason.clone(),
        source: match a.source {
            ApprovalSource::CommandLine => "command-line",
            ApprovalSource::Approve => "approve",
        }
        .into(),
    }
}

pub fn from_record(r: &ApprovalRecord) -> anyhow::Result<Approval> {
    Ok(Approval {
        name: r.name.clone(),
        role: r.role.parse().map_err(bad)?,
        at: r.at,
        reason: r.reason.clone(),
        source: if r.source == "command-line" {
            ApprovalSource::CommandLine
        } else {
            ApprovalSource::Approve
        },
    })
}

pub fn describe(a: &Approval) -> String {
    format!("{} as {}", a.name, a.role)
}

pub fn missing_text(d: &GateDecision) -> String {
    match d {
        GateDecision::Waiting { missing } => missing
            .iter()
            .map(|m| m.to_string())
            .collect::<Vec<_>>()
            .join("; "),
        GateDecision::Refused { why } => why.clone(),
        GateDecision::Open { by } => format!("nothing: opened by {}", describe(by)),
    }
}

// The gate of `rollback`

/// A rollback's governance, checked before the run is created: nothing is journaled if any of it is refused.
pub struct RollbackGov {
    policies: Policies,
    severity: Option<Severity>,
    initiator: String,
    approvals: Vec<Approval>,
    tag: Option<PlannedTag>,
    push: Option<String>,
    /// The governance clock when the rollback was requested: command-line approvals are given then.
    at: DateTime<Utc>,
    trail: Trail,
}

impl RollbackGov {
    /// Who starts the run.
    pub fn initiator(&self) -> &str {
        &self.initiator
    }

    pub fn prepare(
        state_dir: &Path,
        files: &PolicyFiles,
        trail: Trail,
        args: &GovRequest,
        plan: &Plan,
    ) -> anyhow::Result<Self> {
        let policies = Policies::load(files)?;
        let severity: Option<Severity> = args
            .severity
            .as_deref()
            .map(|s| {
                s.parse()
                    .map_err(|e: String| bad(format!("--severity: {e}")))
            })
            .transpose()?;
        for (run, waiting) in crate::waiting_gate::waiting_runs(state_dir)? {
            if let Some(why) = crate::waiting_gate::refusal(
                &policies.matrix,
                &policies.operators,
                severity,
                &run,
                &waiting,
            ) {
                return Err(refused(why));
            }
        }
        let initiator = args.as_name.clone().unwrap_or_else(user);
        let at = now()?;
        let mut approvals = Vec::new();
        for text in &args.approve {
            let (name, role) = text.split_once(':').ok_or_else(|| {
                bad(format!(
                    "--approve {text:?}: write NAME:ROLE, e.g. alice:on-call-engineer"
                ))
            })?;
            let role: Role = role
                .parse()
                .map_err(|e: String| bad(format!("--approve {text:?}: {e}")))?;
            approvals.push(Approval {
                name: name.trim().to_string(),
                role,
                at,
                reason: args
                    .reason
                    .clone()
                    .unwrap_or_else(|| "approved on the rollback's command line".into()),
                source: ApprovalSource::CommandLine,
            });
        }
        let Some(sev) = severity else {
            if !approvals.is_empty() {
                return Err(bad(
                    "--approve needs --severity: an approval is for the severity it was given for",
                ));
            }
            return Ok(RollbackGov {
                tag: args
                    .release_repo
                    .as_deref()
                    .map(|r| plan_tag(r, plan, args.push.as_deref()))
                    .transpose()?,
                policies,
                severity,
                initiator,
                approvals,
                push: args.push.clone(),
                at,
                trail,
            });
        };
        let gate = ApprovalGate::new(&policies.matrix, &policies.operators);
        for a in &approvals {
            if let Err(why) = gate.check(sev, a, &initiator, at) {
                return Err(refused(format!(
                    "--approve {}:{}: {why}. Nothing was done",
                    a.name, a.role
                )));
            }
        }
        let tag = args
            .release_repo
            .as_deref()
            .map(|r| plan_tag(r, plan, args.push.as_deref()))
            .transpose()?;
        Ok(RollbackGov {
            policies,
            severity,
            initiator,
            approvals,
            tag,
            push: args.push.clone(),
            at,
            trail,
        })
    }

    /// Called by the engine once the run is journaled, before its first step: records the gate and the
    /// command-line approvals, and says whether the run may act.
    pub fn at_start(
        &self,
        state_dir: &Path,
        run_id: &str,
    ) -> Result<Option<RunStatus>, EngineError> {
        let trail = &self.trail;
        let mut store = GovernanceStore::open(state_dir)?;
        store.save_policies(run_id, &self.policies.records)?;
        let created_at = xorb_engine::journal::now();
        store.create_gate(
            run_id,
            &GateRecord {
                severity: self.severity.map(|s| s.to_string()),
                initiator: self.initiator.clone(),
                release_repo: self.tag.as_ref().map(|t| t.repo.display().to_string()),
                push_remote: self.push.clone(),
                created_at,
                opened_at: None,
                opened_by: None,
            },
        )?;
        trail.append(
            &self.initiator,
            "governance.gate",
            Some(run_id),
            json!({
                "severity": self.severity.map(|s| s.to_string()),
                "initiator": self.initiator,
                "release_tag": self.tag.as_ref().map(|t| json!({"tag": t.name, "commit": t.commit})),
            }),
        );
        for a in &self.approvals {
            store.add_approval(run_id, &to_record(a))?;
            trail.append(
                &a.name,
                "governance.approval",
                Some(run_id),
                serde_json::to_value(a).unwrap_or_default(),
            );
        }
        let Some(sev) = self.severity else {
            return Ok(None);
        };
        let at = self.at;
        let decision = ApprovalGate::new(&self.policies.matrix, &self.policies.operators).evaluate(
            sev,
            &self.approvals,
            &self.initiator,
            at,
        );
        match &decision {
            GateDecision::Open { by } => {
                open_gate(&mut store, trail, &self.policies, run_id, sev, by, at)?;
                Ok(None)
            }
            other => {
                trail.append(
                    &self.initiator,
                    "governance.gate_waiting",
                    Some(run_id),
                    serde_json::to_value(other).unwrap_or_default(),
                );
                Ok(Some(RunStatus::WaitingForApproval {
                    severity: sev.to_string(),
                    missing: missing_text(other),
                }))
            }
        }
    }
}

pub fn open_gate(
    store: &mut GovernanceStore,
    trail: &Trail,
    policies: &Policies,
    run_id: &str,
    sev: Severity,
    by: &Approval,
    at: DateTime<Utc>,
) -> Result<(), xorb_engine::JournalError> {
    if store.open_gate(run_id, at, &describe(by))? {
        trail.append(
            &by.name,
            "governance.gate_open",
            Some(run_id),
            json!({"severity": sev.to_string(), "by": by}),
        );
        prove(store, trail, policies, run_id, &[("gate.open".into(), at)])?;
    }
    Ok(())
}

/// Before `resume` acts: a governed run whose gate is not open yet needs valid approvals now. Returns the exit
/// code to stop with, or `None` to go on.
pub fn gate_for_resume(
    files: &PolicyFiles,
    trail: &Trail,
    out: &Reporter,
    run_id: &str,
) -> anyhow::Result<Option<Exit>> {
    let mut store = GovernanceStore::open(trail.state_dir())?;
    let rec = store.load(run_id)?;
    let Some(gate) = &rec.gate else {
        return Ok(None);
    };
    let (Some(sev), None) = (&gate.severity, gate.opened_at) else {
        return Ok(None);
    };
    let sev: Severity = sev.parse().map_err(bad)?;
    let policies = Policies::load(files)?;
    let approvals: Vec<Approval> = rec
        .approvals
        .iter()
        .map(from_record)
        .collect::<anyhow::Result<_>>()?;
    let at = now()?;
    let decision = ApprovalGate::new(&policies.matrix, &policies.operators).evaluate(
        sev,
        &approvals,
        &gate.initiator,
        at,
    );
    match &decision {
        GateDecision::Open { by } => {
            open_gate(&mut store, trail, &policies, run_id, sev, by, at)?;
            out.line(format!(
                "Approval gate ({sev}) open: approved by {}.",
                describe(by)
            ));
            Ok(None)
        }
        GateDecision::Waiting { .. } => {
            out.result(
                &json!({"run_id": run_id, "status": "waiting_for_approval", "severity": sev.to_string(), "gate": decision}),
                |_| {
                    format!(
                        "Run {run_id} ({sev}) still waits at its approval gate: it needs {}.\nNothing was done. Give it with `xorbctl approve {run_id} --as NAME --role ROLE --reason TEXT --resume`.\n",
                        missing_text(&decision)
                    )
                },
            );
            Ok(Some(Exit::WaitingForApproval))
        }
        GateDecision::Refused { why } => Err(refused(format!(
            "run {run_id}'s approvals are not acceptable under the current policy: {why}"
        ))),
    }
}
