//! Governance wired to runs: `xorbctl assess` (the decision matrix against the live stack), the approval gate of
//! `rollback --severity`, `xorbctl approve`, the checklists (`xorbctl check`, and ticks by the steps that prove
//! items), and the release repository's rollback tag. Policy is `xorb-governance` (pure); what it decides is
//! journaled (`xorb_engine::approvals`) and appended to the signed audit trail. See `docs/design/governance.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, ExitCode};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use xorb_engine::approvals::{
    ApprovalRecord, GateRecord, GovernanceRecord, GovernanceStore, PolicyRecord, TagRecord,
    TickRecord,
};
use xorb_engine::{EngineError, RunRecord, StepState};
use xorb_governance::{
    Approval, ApprovalGate, ApprovalSource, Assessment, Checklist, Checklists, Comparison,
    DecisionMatrix, Evidence, FailedCheck, GateDecision, Operators, Role, ServiceDown, Severity,
    Tick, Ticker,
};
use xorb_model::plan::{Plan, RunStatus};
use xorb_model::redact::Redactor;

use crate::cli::Cli;
use crate::output::Reporter;

/// Exit code of a run that waits at its approval gate (distinct from 7, a step waiting for a confirmation).
pub const EXIT_WAITING_FOR_APPROVAL: u8 = 9;

/// What governance refuses or cannot use. `BadInput` exits 2, `Refused` 3 (see `main.rs`).
#[derive(Debug, thiserror::Error)]
pub enum GovernanceError {
    #[error("{0}")]
    BadInput(String),
    #[error("refused: {0}")]
    Refused(String),
}

fn bad(msg: impl Into<String>) -> anyhow::Error {
    GovernanceError::BadInput(msg.into()).into()
}

fn refused(msg: impl Into<String>) -> anyhow::Error {
    GovernanceError::Refused(msg.into()).into()
}

/// The governance options of `rollback`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RollbackGovArgs {
    /// The incident's severity (P0..P3): the run does not act until the approvals it requires are given.
    #[arg(long)]
    pub severity: Option<String>,
    /// An approval on the command line, NAME:ROLE (only where the severity allows it: P0, by the on-call engineer).
    #[arg(long = "approve", value_name = "NAME:ROLE")]
    pub approve: Vec<String>,
    /// Who starts the run (default: $USER); may not approve it where a second person is required.
    #[arg(long = "as", value_name = "NAME")]
    pub as_name: Option<String>,
    /// Why (recorded with the command-line approvals).
    #[arg(long)]
    pub reason: Option<String>,
    /// The release repository: once the run succeeds, tag the rolled-back-to commit `v<yyyy.mm>-rollback`.
    #[arg(long, value_name = "PATH")]
    pub release_repo: Option<PathBuf>,
    /// Push that tag to this remote of the release repository.
    #[arg(long, value_name = "REMOTE", requires = "release_repo")]
    pub push: Option<String>,
}

/// The three policy files, from `--decision-matrix`/`--operators`/`--checklists` (or their env) or built in.
pub struct Policies {
    pub matrix: DecisionMatrix,
    pub operators: Operators,
    pub checklists: Checklists,
    /// The texts they were parsed from: a new run journals them, so that later commands judge it by them.
    pub records: Vec<PolicyRecord>,
}

const MATRIX: &str = "decision-matrix";
const OPERATORS: &str = "operators";
const CHECKLISTS: &str = "checklists";

/// A policy's (source, text): the file given, or the built-in one.
fn policy_text(file: Option<&Path>, kind: &str, builtin: &str) -> anyhow::Result<PolicyRecord> {
    Ok(match file {
        Some(p) => PolicyRecord {
            kind: kind.into(),
            source: p.display().to_string(),
            text: std::fs::read_to_string(p).map_err(|e| xorb_governance::PolicyError::Read {
                file: p.display().to_string(),
                message: e.to_string(),
            })?,
        },
        None => PolicyRecord {
            kind: kind.into(),
            source: format!("builtin:policies/{kind}.toml"),
            text: builtin.into(),
        },
    })
}

impl Policies {
    pub fn load(cli: &Cli) -> anyhow::Result<Self> {
        use xorb_governance::builtin;
        Self::parse(vec![
            policy_text(
                cli.decision_matrix.as_deref(),
                MATRIX,
                builtin::DECISION_MATRIX,
            )?,
            policy_text(cli.operators.as_deref(), OPERATORS, builtin::OPERATORS)?,
            policy_text(cli.checklists.as_deref(), CHECKLISTS, builtin::CHECKLISTS)?,
        ])
    }

    fn parse(records: Vec<PolicyRecord>) -> anyhow::Result<Self> {
        let find = |kind: &str| records.iter().find(|r| r.kind == kind);
        let (Some(m), Some(o), Some(c)) = (find(MATRIX), find(OPERATORS), find(CHECKLISTS)) else {
            return Err(bad("a run's journaled policies are incomplete"));
        };
        Ok(Policies {
            matrix: DecisionMatrix::parse(&m.source, &m.text)?,
            operators: Operators::parse(&o.source, &o.text)?,
            checklists: Checklists::parse(&c.source, &c.text)?,
            records,
        })
    }

    /// The policies `run_id` was started with (journaled with it); for a run journaled before runs kept their
    /// policies, the command line's.
    pub fn for_run(cli: &Cli, store: &GovernanceStore, run_id: &str) -> anyhow::Result<Self> {
        let mut stored = store.policies(run_id)?;
        if stored.is_empty() {
            return Self::load(cli);
        }
        // A kind the run did not record (none today) comes from the command line.
        for r in Self::load(cli)?.records {
            if !stored.iter().any(|s| s.kind == r.kind) {
                stored.push(r);
            }
        }
        Self::parse(stored)
    }
}

/// The clock governance decides by. `XORB_NOW` (RFC 3339) exists for tests of expiry and "down for how long";
/// it is not an operator setting.
pub fn now() -> anyhow::Result<DateTime<Utc>> {
    match std::env::var("XORB_NOW") {
        Ok(s) if !s.trim().is_empty() => DateTime::parse_from_rfc3339(s.trim())
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| bad(format!("XORB_NOW={s:?} is not an RFC 3339 time: {e}"))),
        _ => Ok(xorb_engine::journal::now()),
    }
}

fn user() -> String {
    std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "xorbctl".into())
}

fn redactor(state_dir: &Path) -> Redactor {
    let r = Redactor::new();
    if let Ok(s) = xorb_local::stack::Secrets::load(state_dir) {
        r.add_all(s.values());
    }
    r
}

/// Appends to the signed audit trail; like the run's sink, a failure warns and does not stop governance.
fn audit(state_dir: &Path, actor: &str, action: &str, run_id: Option<&str>, detail: Value) {
    let res = xorb_audit::AuditLog::open(state_dir.join("audit")).and_then(|log| {
        let mut log = log.with_redactor(redactor(state_dir));
        let mut e = xorb_audit::NewEntry::new(actor, action).detail(detail);
        if let Some(r) = run_id {
            e = e.run(r);
        }
        log.append(e)
    });
    match res {
        Ok(at) => {
            if let Err(e) = xorb_engine::audit_checkpoint::record(state_dir, at.seq, &at.hash) {
                eprintln!("warning: audit checkpoint: {e}");
            }
        }
        Err(e) => eprintln!("warning: audit trail: {e}"),
    }
}

fn to_record(a: &Approval) -> ApprovalRecord {
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

fn from_record(r: &ApprovalRecord) -> anyhow::Result<Approval> {
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

fn describe(a: &Approval) -> String {
    format!("{} as {}", a.name, a.role)
}

fn missing_text(d: &GateDecision) -> String {
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

// ---------------------------------------------------------------------------------------------------------------
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
}

struct PlannedTag {
    repo: PathBuf,
    name: String,
    commit: String,
}

impl RollbackGov {
    pub fn prepare(cli: &Cli, args: &RollbackGovArgs, plan: &Plan) -> anyhow::Result<Self> {
        let policies = Policies::load(cli)?;
        let severity: Option<Severity> = args
            .severity
            .as_deref()
            .map(|s| {
                s.parse()
                    .map_err(|e: String| bad(format!("--severity: {e}")))
            })
            .transpose()?;
        for (run, waiting) in crate::waiting_gate::waiting_runs(&cli.state_dir)? {
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
        })
    }

    /// Called by the engine once the run is journaled, before its first step: records the gate and the
    /// command-line approvals, and says whether the run may act.
    pub fn at_start(
        &self,
        state_dir: &Path,
        run_id: &str,
    ) -> Result<Option<RunStatus>, EngineError> {
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
        audit(
            state_dir,
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
            audit(
                state_dir,
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
                open_gate(&mut store, state_dir, &self.policies, run_id, sev, by, at)?;
                Ok(None)
            }
            other => {
                audit(
                    state_dir,
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

/// `xorbctl abort`: giving a run up is a decision, on the signed record like the approvals it may void.
pub fn audit_abort(state_dir: &Path, run_id: &str, by: &str, status_before: &RunStatus) {
    audit(
        state_dir,
        by,
        "run.abort",
        Some(run_id),
        json!({"by": by, "status_before": status_before.kind()}),
    );
}

fn open_gate(
    store: &mut GovernanceStore,
    state_dir: &Path,
    policies: &Policies,
    run_id: &str,
    sev: Severity,
    by: &Approval,
    at: DateTime<Utc>,
) -> Result<(), xorb_engine::JournalError> {
    if store.open_gate(run_id, at, &describe(by))? {
        audit(
            state_dir,
            &by.name,
            "governance.gate_open",
            Some(run_id),
            json!({"severity": sev.to_string(), "by": by}),
        );
        prove(
            store,
            state_dir,
            policies,
            run_id,
            &[("gate.open".into(), at)],
        )?;
    }
    Ok(())
}

/// Before `resume` acts: a governed run whose gate is not open yet needs valid approvals now. Returns the exit
/// code to stop with, or `None` to go on.
pub fn gate_for_resume(
    cli: &Cli,
    out: &Reporter,
    run_id: &str,
) -> anyhow::Result<Option<ExitCode>> {
    let mut store = GovernanceStore::open(&cli.state_dir)?;
    let rec = store.load(run_id)?;
    let Some(gate) = &rec.gate else {
        return Ok(None);
    };
    let (Some(sev), None) = (&gate.severity, gate.opened_at) else {
        return Ok(None);
    };
    let sev: Severity = sev.parse().map_err(bad)?;
    let policies = Policies::load(cli)?;
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
            open_gate(&mut store, &cli.state_dir, &policies, run_id, sev, by, at)?;
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
            Ok(Some(ExitCode::from(EXIT_WAITING_FOR_APPROVAL)))
        }
        GateDecision::Refused { why } => Err(refused(format!(
            "run {run_id}'s approvals are not acceptable under the current policy: {why}"
        ))),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Checklists

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
        if let (xorb_model::plan::Action::Check { name }, StepState::Succeeded) =
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

fn checklist_of(policies: &Policies, rec: &GovernanceRecord) -> Checklist {
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
fn prove(
    store: &mut GovernanceStore,
    state_dir: &Path,
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
                audit(
                    state_dir,
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
pub fn after_run(cli: &Cli, out: &Reporter, run_id: &str) -> anyhow::Result<()> {
    let run = xorb_engine::load_run(&cli.state_dir, run_id)?;
    let mut store = GovernanceStore::open(&cli.state_dir)?;
    let policies = Policies::for_run(cli, &store, run_id)?;
    prove(
        &mut store,
        &cli.state_dir,
        &policies,
        run_id,
        &proofs_of(&run),
    )?;
    let rec = store.load(run_id)?;
    if run.status == RunStatus::Succeeded
        && rec.tags.is_empty()
        && let Some(gate) = &rec.gate
        && let Some(repo) = &gate.release_repo
    {
        let planned = plan_tag(Path::new(repo), &run.plan, gate.push_remote.as_deref())?;
        let t = create_tag(&planned, &run, &gate.initiator, gate.push_remote.as_deref())?;
        store.add_tag(run_id, &t)?;
        audit(
            &cli.state_dir,
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

/// Longest operator name `check --by` accepts (names are recorded in the journal and the audit trail).
const MAX_OPERATOR_NAME: usize = 64;

/// A checklist item is confirmed by a person the operators policy knows, by name.
fn check_operator(operators: &Operators, by: &str) -> anyhow::Result<()> {
    let n = by.chars().count();
    if n == 0 || n > MAX_OPERATOR_NAME {
        return Err(bad(format!(
            "--by: an operator's name has 1 to {MAX_OPERATOR_NAME} characters, this one {n}"
        )));
    }
    if !operators.operators.contains_key(by) {
        let known: Vec<&str> = operators.operators.keys().map(String::as_str).collect();
        return Err(bad(format!(
            "--by {by:?} is not an operator in {} (operators: {}); add them there first",
            operators.source,
            known.join(", ")
        )));
    }
    Ok(())
}

pub fn check(
    cli: &Cli,
    out: &Reporter,
    run: &str,
    item: &str,
    by: &str,
) -> anyhow::Result<ExitCode> {
    let rec = xorb_engine::load_run(&cli.state_dir, run)?;
    let mut store = GovernanceStore::open(&cli.state_dir)?;
    let policies = Policies::for_run(cli, &store, &rec.id)?;
    check_operator(&policies.operators, by)?;
    let g = store.load(&rec.id)?;
    let mut list = checklist_of(&policies, &g);
    let at = now()?;
    match list.tick(item, Ticker::Person(by.to_string()), at) {
        Err(xorb_governance::ChecklistError::UnknownItem(i)) => {
            let ids: Vec<&str> = policies
                .checklists
                .lists
                .iter()
                .flat_map(|l| &l.items)
                .map(|i| i.id.as_str())
                .collect();
            return Err(bad(format!(
                "no checklist item {i:?} in {}; items: {}",
                policies.checklists.source,
                ids.join(", ")
            )));
        }
        Err(e) => return Err(refused(format!("{e}"))),
        Ok(false) => {
            let t = list.tick_of(item).cloned();
            out.line(format!(
                "{item} was already ticked{}: the first tick stands.",
                t.map(|t| format!(
                    " by {} at {}",
                    match t.by {
                        Ticker::Person(n) | Ticker::Proof(n) => n,
                    },
                    t.at.to_rfc3339()
                ))
                .unwrap_or_default()
            ));
        }
        Ok(true) => {
            let t = TickRecord {
                item: item.to_string(),
                by_kind: "person".into(),
                by_name: by.to_string(),
                at,
            };
            store.tick(&rec.id, &t)?;
            audit(
                &cli.state_dir,
                by,
                "governance.checklist_tick",
                Some(&rec.id),
                serde_json::to_value(&t).unwrap_or_default(),
            );
        }
    }
    out.result(
        &json!({"run_id": rec.id, "item": item, "checklist": serde_json::to_value(store.load(&rec.id)?.ticks)?}),
        |_| list.render(),
    );
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------------------------
// approve

pub struct ApproveArgs<'a> {
    pub run: &'a str,
    pub name: &'a str,
    pub role: &'a str,
    pub reason: &'a str,
    pub resume: bool,
}

pub async fn approve(cli: &Cli, out: &Reporter, a: ApproveArgs<'_>) -> anyhow::Result<ExitCode> {
    let run = xorb_engine::load_run(&cli.state_dir, a.run)?;
    let run_id = run.id.clone();
    if run.status.is_final() {
        return Err(refused(format!(
            "run {run_id} is {}: there is nothing left to approve",
            run.status
        )));
    }
    let mut store = GovernanceStore::open(&cli.state_dir)?;
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
    let policies = Policies::load(cli)?;
    let role: Role = a
        .role
        .parse()
        .map_err(|e: String| bad(format!("--role: {e}")))?;
    let at = now()?;
    let approval = Approval {
        name: a.name.to_string(),
        role,
        at,
        reason: a.reason.to_string(),
        source: ApprovalSource::Approve,
    };
    let gatekeeper = ApprovalGate::new(&policies.matrix, &policies.operators);
    if let Err(why) = gatekeeper.check(sev, &approval, &gate.initiator, at) {
        audit(
            &cli.state_dir,
            a.name,
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
    audit(
        &cli.state_dir,
        a.name,
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
        return Ok(ExitCode::from(EXIT_WAITING_FOR_APPROVAL));
    }
    if a.resume {
        return crate::rollback::resume(cli, out, &run_id, &[], &[]).await;
    }
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------------------------
// show and report

/// The governance part of `show` and `report`, in Markdown.
pub fn render_markdown(cli: &Cli, run_id: &str) -> anyhow::Result<String> {
    let store = GovernanceStore::open_read_only(&cli.state_dir)?;
    let rec = store.load(run_id)?;
    let policies = Policies::for_run(cli, &store, run_id)?;
    let mut s = String::new();
    let _ = writeln!(s, "## Approvals\n");
    match &rec.gate {
        None => {
            let _ = writeln!(
                s,
                "No governance record (run started before governance was wired)."
            );
        }
        Some(g) => {
            match &g.severity {
                None => {
                    let _ = writeln!(
                        s,
                        "Severity: none given (no approval gate). Initiator: {}.",
                        g.initiator
                    );
                }
                Some(sev) => {
                    let _ = writeln!(
                        s,
                        "Severity: {sev}. Initiator: {}. Gate: {}.",
                        g.initiator,
                        match (&g.opened_at, &g.opened_by) {
                            (Some(at), Some(by)) =>
                                format!("opened at {} by {by}", at.to_rfc3339()),
                            _ => "not open (waiting for approval)".into(),
                        }
                    );
                }
            }
            if !rec.approvals.is_empty() {
                let _ = writeln!(
                    s,
                    "\n| Who | Role | When | Why | How |\n|---|---|---|---|---|"
                );
                for a in &rec.approvals {
                    let _ = writeln!(
                        s,
                        "| {} | {} | {} | {} | {} |",
                        a.name,
                        a.role,
                        a.at.to_rfc3339(),
                        a.reason.replace('|', "\\|"),
                        a.source
                    );
                }
            }
        }
    }
    let _ = writeln!(s, "\n## Checklists\n");
    for line in checklist_of(&policies, &rec).render().lines() {
        let _ = writeln!(
            s,
            "{}",
            if line.starts_with("  ") {
                format!("-{}", &line[1..])
            } else {
                line.to_string()
            }
        );
    }
    if !rec.tags.is_empty() {
        let _ = writeln!(s, "\n## Release tag\n");
        for t in &rec.tags {
            let _ = writeln!(
                s,
                "{} → {} in {} at {}{}",
                t.tag,
                t.commit,
                t.repo,
                t.at.to_rfc3339(),
                t.pushed_to
                    .as_deref()
                    .map(|r| format!(", pushed to {r}"))
                    .unwrap_or_default()
            );
        }
    }
    Ok(s)
}

pub fn to_json(cli: &Cli, run_id: &str) -> anyhow::Result<Value> {
    let store = GovernanceStore::open_read_only(&cli.state_dir)?;
    let rec = store.load(run_id)?;
    let policies = Policies::for_run(cli, &store, run_id)?;
    let list = checklist_of(&policies, &rec);
    let open: Vec<&str> = list.open_items().iter().map(|i| i.id.as_str()).collect();
    let mut v = serde_json::to_value(&rec)?;
    v["open_items"] = json!(open);
    Ok(v)
}

/// The governance part of the report's shared model.
pub fn view(cli: &Cli, run_id: &str) -> anyhow::Result<xorb_report::model::GovernanceView> {
    // Read-only (a report of a read-only state directory), with the policies the run started with.
    let store = GovernanceStore::open_read_only(&cli.state_dir)?;
    let rec = store.load(run_id)?;
    let policies = Policies::for_run(cli, &store, run_id)?;
    let list = checklist_of(&policies, &rec);
    Ok(xorb_report::model::GovernanceView::new(
        &rec,
        &policies.checklists,
        &list,
    ))
}

/// `xorbctl report` proves the checklist's "report generated" item before rendering, so the report shows it.
pub fn report_written(cli: &Cli, run_id: &str) -> anyhow::Result<()> {
    let mut store = GovernanceStore::open(&cli.state_dir)?;
    let policies = Policies::for_run(cli, &store, run_id)?;
    if store.load(run_id)?.gate.is_some() {
        prove(
            &mut store,
            &cli.state_dir,
            &policies,
            run_id,
            &[("report.written".into(), now()?)],
        )?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// The release repository's tag

/// `v2025.08-rc1` → `v2025.08-rollback`: the runbook's tag for rolling back the `yyyy.mm` release.
pub fn rollback_tag_name(from: &str) -> Result<String, String> {
    let ym = from
        .strip_prefix('v')
        .and_then(|r| r.split('-').next())
        .filter(|ym| {
            ym.split_once('.').is_some_and(|(y, m)| {
                y.len() == 4
                    && m.len() == 2
                    && y.bytes().all(|b| b.is_ascii_digit())
                    && m.bytes().all(|b| b.is_ascii_digit())
            })
        })
        .ok_or_else(|| {
            format!("release {from:?} is not named v<yyyy.mm>-…: cannot derive its rollback tag")
        })?;
    Ok(format!("v{ym}-rollback"))
}

fn git(repo: &Path, args: &[&str]) -> Result<String, String> {
    let out = Process::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        // git may echo a remote's URL with credentials in it.
        Err(xorb_model::redact::redact_url(
            String::from_utf8_lossy(&out.stderr).trim(),
        ))
    }
}

/// Checks, before the run acts, that the tag can be made: the repository, the target release's tag, the remote,
/// and no rollback tag already naming another commit.
fn plan_tag(repo: &Path, plan: &Plan, push: Option<&str>) -> anyhow::Result<PlannedTag> {
    let name = rollback_tag_name(&plan.from).map_err(bad)?;
    if !repo.is_dir() {
        return Err(bad(format!(
            "--release-repo {}: no such directory",
            repo.display()
        )));
    }
    git(repo, &["rev-parse", "--git-dir"]).map_err(|e| {
        bad(format!(
            "--release-repo {}: not a git repository ({e})",
            repo.display()
        ))
    })?;
    let commit = git(
        repo,
        &["rev-parse", "--verify", "--quiet", &format!("refs/tags/{}^{{commit}}", plan.to)],
    )
    .map_err(|_| {
        refused(format!(
            "the release repository {} has no tag {}: cannot tag the rolled-back-to commit. Nothing was done",
            repo.display(),
            plan.to
        ))
    })?;
    if let Ok(existing) = git(
        repo,
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("refs/tags/{name}^{{commit}}"),
        ],
    ) && existing != commit
    {
        return Err(refused(format!(
            "the release repository {} already has {name} on {existing}, not on {} ({commit}). Nothing was done",
            repo.display(),
            plan.to
        )));
    }
    if let Some(remote) = push {
        git(repo, &["remote", "get-url", remote]).map_err(|_| {
            bad(format!(
                "--push {remote}: the release repository {} has no such remote",
                repo.display()
            ))
        })?;
    }
    Ok(PlannedTag {
        repo: repo.to_path_buf(),
        name,
        commit,
    })
}

fn create_tag(
    t: &PlannedTag,
    run: &RunRecord,
    initiator: &str,
    push: Option<&str>,
) -> anyhow::Result<TagRecord> {
    let exists = git(
        &t.repo,
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("refs/tags/{}", t.name),
        ],
    )
    .is_ok();
    if !exists {
        let msg = format!(
            "Rollback of {} to {} by xorbctl run {} (initiated by {initiator})",
            run.plan.from, run.plan.to, run.id
        );
        let mut cmd = Process::new("git");
        cmd.arg("-C")
            .arg(&t.repo)
            .args(["tag", "-a", &t.name, &t.commit, "-m", &msg])
            .env("GIT_TERMINAL_PROMPT", "0");
        // An annotated tag needs a tagger; a host without a git identity still gets one, named after the initiator.
        if git(&t.repo, &["config", "user.email"]).is_err() {
            cmd.env("GIT_COMMITTER_NAME", initiator).env(
                "GIT_COMMITTER_EMAIL",
                format!("{initiator}@xorbctl.invalid"),
            );
        }
        let out = cmd
            .output()
            .map_err(|e| anyhow::anyhow!("cannot run git: {e}"))?;
        if !out.status.success() {
            anyhow::bail!(
                "the run succeeded but tagging {} in {} failed: {}",
                t.name,
                t.repo.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    if let Some(remote) = push {
        git(&t.repo, &["push", remote, &format!("refs/tags/{}", t.name)]).map_err(|e| {
            anyhow::anyhow!(
                "the run succeeded and {} is tagged in {}, but pushing it to {remote} failed: {e}",
                t.name,
                t.repo.display()
            )
        })?;
    }
    Ok(TagRecord {
        repo: t.repo.display().to_string(),
        tag: t.name.clone(),
        commit: t.commit.clone(),
        pushed_to: push.map(str::to_string),
        at: xorb_engine::journal::now(),
    })
}

// ---------------------------------------------------------------------------------------------------------------
// assess

#[derive(Debug, Clone, clap::Args)]
pub struct AssessArgs {
    /// The baseline for latency and error rate: the same measure this long before now (Prometheus `offset`).
    #[arg(long, default_value = "1h")]
    pub baseline_offset: String,
    /// Declare what the stack cannot show: `data-corruption` or `security-breach`.
    #[arg(long = "declare", value_name = "WHAT")]
    pub declare: Vec<String>,
    /// A non-critical bug an operator reports (P3 evidence).
    #[arg(long = "bug", value_name = "TEXT")]
    pub bugs: Vec<String>,
}

#[derive(Debug, Serialize)]
struct AssessReport {
    assessed_at: DateTime<Utc>,
    release: String,
    state_dir: PathBuf,
    #[serde(flatten)]
    assessment: Assessment,
    evidence: Evidence,
    notes: Vec<String>,
}

const OBSERVED_DOWN: &str = "governance/observed-down.json";

pub async fn assess(cli: &Cli, out: &Reporter, args: &AssessArgs) -> anyhow::Result<ExitCode> {
    let policies = Policies::load(cli)?;
    let state_dir = &cli.state_dir;
    let st = xorb_local::stack::StackState::load(state_dir)?;
    let at = now()?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let prom = st.prometheus_url();
    let mut ev = Evidence::default();
    let mut notes = Vec::new();
    for d in &args.declare {
        match d.as_str() {
            "data-corruption" => ev.data_corruption = true,
            "security-breach" => ev.security_breach = true,
            other => {
                return Err(bad(format!(
                    "--declare {other:?}: expected data-corruption or security-breach"
                )));
            }
        }
    }
    ev.reported_bugs = args.bugs.clone();

    // Availability: the process and its /api/v1/health; for how long, from Prometheus' `up` history when it has
    // a failed scrape, else from when an assessment first saw it down (kept in the state directory).
    let obs_path = state_dir.join(OBSERVED_DOWN);
    let mut observed: BTreeMap<String, DateTime<Utc>> = std::fs::read(&obs_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    for s in &st.services {
        let alive = s.proc.as_ref().is_some_and(|p| p.is_alive());
        let why = if !alive {
            Some("process not running".to_string())
        } else {
            match xorb_adapters::services::probe_service(
                &http,
                &format!("http://127.0.0.1:{}", s.port),
            )
            .await
            {
                Ok(h) if h.healthy => None,
                Ok(h) => Some(format!("unhealthy: {}", h.detail)),
                Err(e) => Some(format!("/api/v1/health: {e}")),
            }
        };
        match why {
            None => {
                observed.remove(&s.name);
            }
            Some(why) => {
                let first_seen = *observed.entry(s.name.clone()).or_insert(at);
                let (since, source) = match prom_down_since(&http, &prom, &s.name).await {
                    Some(t) => (t.min(first_seen), "Prometheus up history"),
                    None => (first_seen, "first seen down by xorbctl assess"),
                };
                let secs = u64::try_from((at - since).num_seconds()).unwrap_or(0);
                notes.push(format!(
                    "{}: {why}; down since {} ({source})",
                    s.name,
                    since.to_rfc3339()
                ));
                ev.services_unavailable.push(ServiceDown {
                    service: s.name.clone(),
                    down_for_secs: secs,
                });
            }
        }
    }
    if let Some(parent) = obs_path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let _ = std::fs::write(&obs_path, serde_json::to_vec_pretty(&observed)?);

    // Functionality: phase 5's checks that make sense on a live stack, exactly as a rollback runs them.
    let paths = crate::cli::paths(cli)?;
    let release = xorb_model::release::Release::load_named(&paths.releases_root, &st.release)?;
    let runner = xorb_local::target::runner(state_dir, paths, release);
    let scratch = tempfile_dir(state_dir)?;
    for name in ["health", "smoke", "tenant-isolation"] {
        let res =
            tokio::time::timeout(Duration::from_secs(90), runner.run_check(name, &scratch)).await;
        match res {
            Ok(Ok(_)) => {}
            Ok(Err(detail)) => ev.checks_failed.push(FailedCheck {
                name: name.into(),
                detail,
            }),
            Err(_) => ev.checks_failed.push(FailedCheck {
                name: name.into(),
                detail: "no answer within 90 s".into(),
            }),
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);

    // Monitoring, latency and error rate: Prometheus, "no data" being evidence too.
    match xorb_adapters::monitoring::prometheus_targets(&http, &prom).await {
        Err(e) => ev
            .monitoring_issues
            .push(format!("Prometheus does not answer: {e}")),
        Ok(targets) => {
            // A target down because its service is down is that service's unavailability, already evidenced;
            // a monitoring issue is a scrape failing for a service that answers.
            let down: Vec<String> = ev
                .services_unavailable
                .iter()
                .map(|s| format!("xorb-{}", s.service))
                .collect();
            for t in targets
                .iter()
                .filter(|t| t.health == "down" && !down.contains(&t.job))
            {
                ev.monitoring_issues
                    .push(format!("scrape target {} is down", t.job));
            }
            let offset = &args.baseline_offset;
            let p99 = "histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket[5m]%O)))";
            let err = "sum(rate(http_requests_total{status=~\"5..\"}[5m]%O)) / sum(rate(http_requests_total[5m]%O))";
            for (q, slot) in [(p99, &mut ev.p99_latency_secs), (err, &mut ev.error_rate)] {
                let now_v = prom_scalar(&http, &prom, &q.replace("%O", "")).await;
                let base_v =
                    prom_scalar(&http, &prom, &q.replace("%O", &format!(" offset {offset}"))).await;
                *slot = now_v.map(|now| Comparison {
                    now,
                    baseline: base_v,
                });
            }
        }
    }

    let assessment = policies.matrix.assess(&ev);
    audit(
        state_dir,
        &user(),
        "governance.assess",
        None,
        json!({"severity": assessment.severity.map(|s| s.to_string()), "evidence": ev}),
    );
    let warranted = assessment.rollback_warranted();
    let report = AssessReport {
        assessed_at: at,
        release: st.release.clone(),
        state_dir: state_dir.clone(),
        assessment,
        evidence: ev,
        notes,
    };
    out.result(&report, |r| {
        let mut s = format!(
            "Assessment of {} (release {}) at {} against {}\n",
            r.state_dir.display(),
            r.release,
            r.assessed_at.to_rfc3339(),
            policies.matrix.source
        );
        s.push_str(&r.assessment.to_string());
        if r.assessment.severity.is_none() {
            s.push_str("No rollback needed.\n");
        }
        for n in &r.notes {
            let _ = writeln!(s, "  note: {n}");
        }
        s
    });
    Ok(if warranted {
        ExitCode::from(5)
    } else {
        ExitCode::SUCCESS
    })
}

fn tempfile_dir(state_dir: &Path) -> anyhow::Result<PathBuf> {
    let d = state_dir
        .join("governance")
        .join(format!("assess-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

async fn prom_get(http: &reqwest::Client, url: &str, params: &[(&str, String)]) -> Option<Value> {
    use xorb_adapters::deps::{self, Dep};
    let dep = Dep::http("Prometheus", url);
    let url =
        reqwest::Url::parse_with_params(url, params.iter().map(|(k, v)| (*k, v.as_str()))).ok()?;
    let what = format!("GET {}", url.path());
    // The assessment goes on without Prometheus's figures, but says why they are missing, and a silent
    // Prometheus costs one short wait per query rather than the client's 10 s.
    let get = async {
        http.get(url)
            .timeout(PROM_TIMEOUT)
            .send()
            .await?
            .json::<Value>()
            .await
    };
    match deps::call(&dep, &what, PROM_TIMEOUT, get).await {
        Ok(v) => (v["status"] == "success").then_some(v),
        Err(e) => {
            eprintln!("warning: {e}");
            None
        }
    }
}

/// One Prometheus query during `assess`.
const PROM_TIMEOUT: Duration = Duration::from_secs(3);

/// A PromQL expression's single value now; `None` when Prometheus has no data (or the value is not a number).
async fn prom_scalar(http: &reqwest::Client, base: &str, q: &str) -> Option<f64> {
    let v = prom_get(
        http,
        &format!("{base}/api/v1/query"),
        &[("query", q.to_string())],
    )
    .await?;
    let x: f64 = v["data"]["result"][0]["value"][1].as_str()?.parse().ok()?;
    x.is_finite().then_some(x)
}

/// When the service's scrape target went down, from the last 6 hours of `up`: the first failed scrape after the
/// last good one. `None` when Prometheus has no failed scrape of it (not scraped since it went down).
async fn prom_down_since(
    http: &reqwest::Client,
    base: &str,
    service: &str,
) -> Option<DateTime<Utc>> {
    let end = Utc::now();
    let start = end - chrono::Duration::hours(6);
    let v = prom_get(
        http,
        &format!("{base}/api/v1/query_range"),
        &[
            ("query", format!("up{{job=\"xorb-{service}\"}}")),
            ("start", start.timestamp().to_string()),
            ("end", end.timestamp().to_string()),
            ("step", "5".to_string()),
        ],
    )
    .await?;
    let values = v["data"]["result"][0]["values"].as_array()?;
    let samples: Vec<(f64, bool)> = values
        .iter()
        .filter_map(|p| Some((p[0].as_f64()?, p[1].as_str()? == "1")))
        .collect();
    let (_, last_up) = *samples.last()?;
    if last_up {
        return None;
    }
    let first_down = samples
        .iter()
        .rposition(|(_, up)| *up)
        .map(|i| i + 1)
        .unwrap_or(0);
    let t = samples.get(first_down)?.0;
    DateTime::from_timestamp(t as i64, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollback_tag_is_derived_from_the_from_release() {
        assert_eq!(
            rollback_tag_name("v2025.08-rc1").unwrap(),
            "v2025.08-rollback"
        );
        assert_eq!(
            rollback_tag_name("v2025.07-stable").unwrap(),
            "v2025.07-rollback"
        );
        assert!(rollback_tag_name("latest").is_err());
        assert!(rollback_tag_name("v25.8-rc1").is_err());
    }
}
