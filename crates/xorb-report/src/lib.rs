//! xorb-report: the post-rollback report of a journaled run (`xorbctl report RUN --format md|json`).
//!
//! Everything comes from the journal's [`RunRecord`]: the timeline with durations per phase and step, each step's
//! outcome and attempts, the versions before and after (the plan's `from` / `to`, and the image changes), the
//! checks, the incidents (retries, resumes, confirmations, emergency procedures), where the artifacts are, and the
//! runbook's completion message ("✅ ROLLBACK COMPLETE / Duration / Status / Impact / Next / Report") filled in.
//!
//! Rendering has no side effect; [`write_reports`] writes `report.md` and `report.json` into the run's directory.

pub mod escape;
pub mod html;
pub mod model;
pub mod svg;
pub mod timeline;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Serialize;
use xorb_engine::journal::{RunRecord, StepRecord, StepState};
use xorb_engine::logfile::log_file_name;
use xorb_engine::{Event, EventRecord, format_duration_ms, next_action};
use xorb_model::plan::{Action, ChangeKind, Phase, RunStatus, StepOutcome};

/// The report's file names in the run's directory.
pub const REPORT_MD: &str = "report.md";
pub const REPORT_JSON: &str = "report.json";

/// The runbook's completion message, filled in.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Completion {
    /// "✅ ROLLBACK COMPLETE", "❌ ROLLBACK STOPPED", …
    pub headline: String,
    pub duration: String,
    pub status: String,
    pub impact: String,
    pub next: String,
    pub report: String,
}

impl Completion {
    /// The message as the runbook's template lays it out.
    pub fn text(&self) -> String {
        format!(
            "{}\nDuration: {}\nStatus: {}\nImpact: {}\nNext: {}\nReport: {}",
            self.headline, self.duration, self.status, self.impact, self.next, self.report
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepReport {
    pub id: String,
    pub title: String,
    pub action: String,
    pub safety: String,
    pub state: StepState,
    pub attempts: u32,
    /// First start of the step (across attempts and resumes).
    pub started_at: Option<DateTime<Utc>>,
    /// When its final outcome was journaled.
    pub finished_at: Option<DateTime<Utc>>,
    /// Time spent executing the step: the sum of its attempts' durations.
    pub duration_ms: Option<u64>,
    pub outcome: Option<StepOutcome>,
    pub changes: Vec<String>,
    pub checks: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseReport {
    pub phase: Phase,
    pub label: String,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Wall time from the phase's first step start to its last step end.
    pub duration_ms: Option<u64>,
    pub steps_done: usize,
    pub steps_total: usize,
    pub steps: Vec<StepReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckReport {
    pub name: String,
    pub step: String,
    /// "passed", "skipped", "failed", "not run".
    pub result: String,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VersionReport {
    /// "release", or a service name for an image change.
    pub component: String,
    pub before: String,
    pub after: String,
    /// The step that changes it and whether it is done.
    pub step: Option<String>,
    pub applied: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Incident {
    pub at: DateTime<Utc>,
    pub message: String,
}

/// The whole report, as data (`--format json` is this, serialized).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub run_id: String,
    pub from: String,
    pub to: String,
    pub scope: Option<String>,
    pub status: RunStatus,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Wall time from the run's creation to its end (or last journal write), resumes included.
    pub duration_ms: u64,
    /// Time the engine spent executing (the sum of every execution, start and resumes).
    pub executing_ms: u64,
    pub executions: usize,
    pub artifacts_dir: PathBuf,
    pub log_file: PathBuf,
    pub report_file: PathBuf,
    pub completion: Completion,
    pub versions: Vec<VersionReport>,
    pub phases: Vec<PhaseReport>,
    pub checks: Vec<CheckReport>,
    pub incidents: Vec<Incident>,
    /// Where the run stands and what to do next.
    pub next: String,
}

pub(crate) fn ms_between(a: DateTime<Utc>, b: DateTime<Utc>) -> u64 {
    u64::try_from((b - a).num_milliseconds()).unwrap_or(0)
}

fn step_report(step: &StepRecord, events: &[EventRecord]) -> StepReport {
    let mut first_start = None;
    let mut last_end = None;
    let mut executed_ms: Option<u64> = None;
    for e in events {
        match &e.event {
            Event::StepStarted { step: id, .. } if *id == step.spec.id => {
                first_start.get_or_insert(e.at);
            }
            Event::StepFinished {
                step: id,
                duration_ms,
                ..
            } if *id == step.spec.id => {
                last_end = Some(e.at);
                executed_ms = Some(executed_ms.unwrap_or(0) + duration_ms);
            }
            _ => {}
        }
    }
    StepReport {
        id: step.spec.id.clone(),
        title: step.spec.title.clone(),
        action: step.spec.action.to_string(),
        safety: step.spec.safety.to_string(),
        state: step.state,
        attempts: step.attempts,
        started_at: first_start.or(step.started_at),
        finished_at: last_end.or(step.finished_at),
        duration_ms: executed_ms.or_else(|| step.duration_ms()),
        outcome: step.outcome.clone(),
        changes: step.spec.changes.iter().map(ToString::to_string).collect(),
        checks: step.spec.checks.clone(),
    }
}

fn check_result(step: &StepRecord) -> (&'static str, String) {
    match (&step.outcome, step.state) {
        (Some(StepOutcome::Succeeded { detail, .. }), _)
        | (Some(StepOutcome::AlreadyDone { detail }), _) => ("passed", detail.clone()),
        (Some(StepOutcome::Skipped { reason }), _) => ("skipped", reason.clone()),
        (Some(StepOutcome::Failed { error, .. }), _) => ("failed", error.clone()),
        (None, StepState::InFlight) => ("not run", "interrupted".into()),
        (None, _) => ("not run", String::new()),
    }
}

fn incidents(events: &[EventRecord]) -> Vec<Incident> {
    events
        .iter()
        .filter(|e| {
            matches!(
                &e.event,
                Event::RunResumed { .. }
                    | Event::StepProbed { .. }
                    | Event::StepRetry { .. }
                    | Event::ConfirmationUsed { .. }
                    | Event::EmergencyStarted { .. }
                    | Event::EmergencyFinished { .. }
                    | Event::AbortRequested { .. }
            ) || matches!(&e.event, Event::StepFinished { outcome: StepOutcome::Failed { .. }, .. })
                || matches!(&e.event, Event::RunFinished { status, .. } if *status != RunStatus::Succeeded)
        })
        .map(|e| Incident { at: e.at, message: e.message() })
        .collect()
}

/// Builds the report of a run from its journal record.
pub fn build(record: &RunRecord) -> Report {
    let plan = &record.plan;
    let report_file = record.run_dir.join(REPORT_MD);
    let log_file = record
        .events
        .iter()
        .find_map(|e| match &e.event {
            Event::RunStarted { log_file, .. } if !log_file.is_empty() => {
                Some(PathBuf::from(log_file))
            }
            _ => None,
        })
        .unwrap_or_else(|| record.run_dir.join(log_file_name(record.created_at)));
    let end = record.finished_at.unwrap_or(record.updated_at);
    let duration_ms = ms_between(record.created_at, end);
    let (mut executing_ms, mut executions) = (0, 0);
    for e in &record.events {
        if let Event::RunFinished { duration_ms, .. } = &e.event {
            executing_ms += duration_ms;
            executions += 1;
        }
    }

    let mut phases = Vec::new();
    for (phase, _) in plan.phases() {
        let steps: Vec<StepReport> = record
            .steps
            .iter()
            .filter(|s| s.spec.phase == phase)
            .map(|s| step_report(s, &record.events))
            .collect();
        let started_at = steps.iter().filter_map(|s| s.started_at).min();
        let finished_at = if steps.iter().all(|s| s.state.is_done()) {
            steps.iter().filter_map(|s| s.finished_at).max()
        } else {
            None
        };
        let last_activity = steps.iter().filter_map(|s| s.finished_at).max();
        phases.push(PhaseReport {
            phase,
            label: phase.label(),
            duration_ms: started_at
                .zip(finished_at.or(last_activity))
                .map(|(s, f)| ms_between(s, f)),
            started_at,
            finished_at,
            steps_done: steps.iter().filter(|s| s.state.is_done()).count(),
            steps_total: steps.len(),
            steps,
        });
    }

    let mut checks = Vec::new();
    for step in &record.steps {
        // Only what ran, with its own result: a phase-5 check is its step; a gate after a service step is listed
        // when the runner says it ran (a step found already done, or that failed, ran none of its gates).
        if let Action::Check { name, .. } = &step.spec.action {
            let (result, detail) = check_result(step);
            checks.push(CheckReport {
                name: name.clone(),
                step: step.spec.id.clone(),
                result: result.into(),
                detail,
            });
        }
        for run in step.outcome.iter().flat_map(|o| o.checks_run()) {
            checks.push(CheckReport {
                name: run.check.clone(),
                step: step.spec.id.clone(),
                result: if run.passed { "passed" } else { "failed" }.into(),
                detail: run.detail.clone(),
            });
        }
    }

    let succeeded = record.status == RunStatus::Succeeded;
    let mut versions = vec![VersionReport {
        component: "release".into(),
        before: plan.from.clone(),
        after: plan.to.clone(),
        step: None,
        applied: succeeded,
    }];
    for step in &record.steps {
        for change in &step.spec.changes {
            if matches!(
                change.kind,
                ChangeKind::Image
                    | ChangeKind::ServiceRemoved
                    | ChangeKind::ServiceAdded
                    | ChangeKind::Schema
            ) {
                let absent = || "(absent)".to_string();
                versions.push(VersionReport {
                    component: match change.kind {
                        ChangeKind::Schema => format!("schema {}", change.subject),
                        _ => change.subject.clone(),
                    },
                    before: change.before.clone().unwrap_or_else(absent),
                    after: change.after.clone().unwrap_or_else(absent),
                    step: Some(step.spec.id.clone()),
                    applied: step.state.is_done(),
                });
            }
        }
    }

    let next = next_action(&record.id, plan, &record.status);
    let completion = completion(record, &checks, duration_ms, &report_file, &next);
    Report {
        run_id: record.id.clone(),
        from: plan.from.clone(),
        to: plan.to.clone(),
        // A restore's whole scope is the backup it puts back.
        scope: match &plan.restore_of {
            Some(source) => Some(format!("restore of run {source}'s backup")),
            None => plan.scope.clone(),
        },
        status: record.status.clone(),
        started_at: record.created_at,
        finished_at: record.finished_at,
        duration_ms,
        executing_ms,
        executions,
        artifacts_dir: record.run_dir.clone(),
        log_file,
        report_file,
        completion,
        versions,
        phases,
        checks,
        incidents: incidents(&record.events),
        next,
    }
}

fn completion(
    record: &RunRecord,
    checks: &[CheckReport],
    duration_ms: u64,
    report: &Path,
    next: &str,
) -> Completion {
    let plan = &record.plan;
    let where_ = |step: &str| {
        plan.step(step)
            .map(|s| s.locate())
            .unwrap_or_else(|| format!("step {step}"))
    };
    let duration = format_duration_ms(duration_ms);
    let report = report.display().to_string();
    let (headline, status, impact, next) = match &record.status {
        RunStatus::Succeeded => {
            let skipped: Vec<&CheckReport> =
                checks.iter().filter(|c| c.result == "skipped").collect();
            let passed = checks.iter().filter(|c| c.result == "passed").count();
            let status = if checks.is_empty() {
                "All steps completed".to_string()
            } else if skipped.is_empty() {
                format!("All services healthy ({passed} checks passed)")
            } else {
                let names: Vec<String> = skipped
                    .iter()
                    .map(|c| format!("{}: {}", c.name, c.detail))
                    .collect();
                format!(
                    "All services healthy ({passed} checks passed; skipped: {})",
                    names.join("; ")
                )
            };
            (
                "✅ ROLLBACK COMPLETE",
                status,
                "Resolved".to_string(),
                "Post-rollback monitoring for 2 hours".to_string(),
            )
        }
        RunStatus::Aborted { by, step } => (
            "⛔ ROLLBACK ABORTED",
            format!(
                "Aborted by {by}{}",
                step.as_deref()
                    .map(|s| format!(" at {}", where_(s)))
                    .unwrap_or_default()
            ),
            "Not resolved: the stack may be partly rolled back; check it".to_string(),
            next.to_string(),
        ),
        RunStatus::Running => (
            "🔄 ROLLBACK IN PROGRESS (or interrupted)",
            "Running".to_string(),
            "Not resolved yet".to_string(),
            next.to_string(),
        ),
        RunStatus::WaitingForConfirmation { step, .. } => (
            "⏸ ROLLBACK WAITING FOR CONFIRMATION",
            format!("Waiting for a person to confirm {}", where_(step)),
            "Not resolved: the rollback is paused".to_string(),
            next.to_string(),
        ),
        RunStatus::WaitingForApproval { severity, missing } => (
            "⏸ ROLLBACK WAITING FOR APPROVAL",
            format!(
                "A {severity} rollback waiting at its approval gate for {missing}; nothing done yet"
            ),
            "Not resolved: the rollback has not started acting".to_string(),
            next.to_string(),
        ),
        RunStatus::Failed { step, error } => (
            "❌ ROLLBACK STOPPED",
            format!("Failed at {}: {error}", where_(step)),
            "Not resolved: the stack is partly rolled back".to_string(),
            next.to_string(),
        ),
        RunStatus::EmergencyStopped {
            step,
            error,
            procedure,
            emergency_ok,
            ..
        } => (
            "🚨 ROLLBACK STOPPED — EMERGENCY PROCEDURE",
            format!(
                "Failed at {}: {error}; emergency procedure {} {}",
                where_(step),
                procedure.name(),
                if *emergency_ok { "applied" } else { "FAILED" }
            ),
            format!("Degraded: {}", procedure.describe()),
            next.to_string(),
        ),
    };
    Completion {
        headline: headline.to_string(),
        duration,
        status,
        impact,
        next,
        report,
    }
}

fn fmt_ts(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn offset(start: DateTime<Utc>, t: Option<DateTime<Utc>>) -> String {
    t.map(|t| format!("+{}", format_duration_ms(ms_between(start, t))))
        .unwrap_or_else(|| "—".into())
}

fn dur(ms: Option<u64>) -> String {
    ms.map(format_duration_ms).unwrap_or_else(|| "—".into())
}

/// Escapes a table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn outcome_cell(step: &StepReport) -> String {
    let mark = match step.state {
        StepState::Succeeded => "✅",
        StepState::AlreadyDone => "✅",
        StepState::Skipped => "⏭",
        StepState::Failed => "❌",
        StepState::InFlight => "⚠️",
        StepState::Pending => "·",
    };
    match &step.outcome {
        Some(o) => format!("{mark} {}", cell(&o.to_string())),
        None if step.state == StepState::InFlight => format!("{mark} in flight (interrupted)"),
        None => format!("{mark} not run"),
    }
}

/// The report as Markdown.
pub fn render_markdown(record: &RunRecord) -> String {
    markdown(&build(record))
}

/// The whole document as Markdown: the run's report, then the data-loss account when phase 5 assessed it.
pub fn render_markdown_document(doc: &model::Document) -> String {
    let mut md = markdown(&doc.report);
    if let Some(l) = &doc.loss {
        md.push_str(&format!(
            "\n## Data-loss account\n\n{} rows lost, {} changed, {} added since phase 3's snapshot{}.\n\n",
            l.report.lost,
            l.report.changed,
            l.report.added,
            if l.unaccounted.is_empty() {
                "; every loss is accounted for".to_string()
            } else {
                format!("; NOT accounted for: {}", cell(&l.unaccounted.join("; ")))
            }
        ));
        md.push_str("| Table | State | Rows before | Rows after | Lost | Changed | Added |\n|---|---|---|---|---|---|---|\n");
        for t in &l.report.tables {
            md.push_str(&format!(
                "| `{}` | {} | {} | {} | {} | {} | {} |\n",
                cell(&t.table),
                cell(&t.state),
                t.rows_before,
                t.rows_after,
                t.lost,
                t.changed,
                t.added
            ));
        }
    }
    if !doc.monitors.is_empty() {
        md.push_str("\n## Post-rollback monitoring\n\n| Metric | Verdict | Why |\n|---|---|---|\n");
        for m in &doc.monitors {
            md.push_str(&format!(
                "| `{}` | {} {} | {} |\n",
                cell(&m.metric),
                m.verdict.symbol(),
                m.verdict.word(),
                cell(&m.reason)
            ));
        }
    }
    for w in &doc.warnings {
        md.push_str(&format!("\n> warning: {}\n", cell(w)));
    }
    md
}

fn markdown(r: &Report) -> String {
    let mut md = String::new();
    let mut line = |s: &str| {
        md.push_str(s);
        md.push('\n');
    };
    line(&format!("# XORB rollback report — run {}", r.run_id));
    line("");
    line("```text");
    line(&r.completion.text());
    line("```");
    line("");
    line("## Summary");
    line("");
    line("| | |");
    line("|---|---|");
    line(&format!(
        "| Rollback | {} → {} |",
        cell(&r.from),
        cell(&r.to)
    ));
    line(&format!(
        "| Scope | {} |",
        r.scope
            .as_deref()
            .map(cell)
            .unwrap_or_else(|| "full rollback".into())
    ));
    line(&format!("| Status | {} |", cell(&r.status.to_string())));
    line(&format!("| Started | {} |", fmt_ts(r.started_at)));
    line(&format!(
        "| Finished | {} |",
        r.finished_at.map(fmt_ts).unwrap_or_else(|| "—".into())
    ));
    line(&format!(
        "| Duration | {} |",
        format_duration_ms(r.duration_ms)
    ));
    line(&format!(
        "| Executing | {} in {} execution{} |",
        format_duration_ms(r.executing_ms),
        r.executions,
        if r.executions == 1 {
            ""
        } else {
            "s (start and resumes)"
        }
    ));
    line(&format!("| Artifacts | `{}` |", r.artifacts_dir.display()));
    line(&format!("| Log file | `{}` |", r.log_file.display()));
    line("");
    if r.status != RunStatus::Succeeded {
        line("## Where it stopped");
        line("");
        line(&r.next);
        line("");
    }
    line("## Versions");
    line("");
    line("| Component | Before | After | Step | Applied |");
    line("|---|---|---|---|---|");
    for v in &r.versions {
        line(&format!(
            "| {} | {} | {} | {} | {} |",
            cell(&v.component),
            cell(&v.before),
            cell(&v.after),
            v.step.as_deref().map(cell).unwrap_or_else(|| "—".into()),
            if v.applied { "yes" } else { "no" }
        ));
    }
    line("");
    line("## Timeline");
    line("");
    line("| Phase | Started | Duration | Steps done |");
    line("|---|---|---|---|");
    for p in &r.phases {
        line(&format!(
            "| {} | {} | {} | {}/{} |",
            p.label,
            offset(r.started_at, p.started_at),
            dur(p.duration_ms),
            p.steps_done,
            p.steps_total
        ));
    }
    for p in &r.phases {
        line("");
        line(&format!("### {}", p.label));
        line("");
        line("| Step | Title | Started | Duration | Attempts | Outcome |");
        line("|---|---|---|---|---|---|");
        for s in &p.steps {
            line(&format!(
                "| `{}` | {} | {} | {} | {} | {} |",
                s.id,
                cell(&s.title),
                offset(r.started_at, s.started_at),
                dur(s.duration_ms),
                s.attempts,
                outcome_cell(s)
            ));
        }
        let changes: Vec<String> = p
            .steps
            .iter()
            .flat_map(|s| {
                s.changes
                    .iter()
                    .map(move |c| format!("- `{}`: {}", s.id, c))
            })
            .collect();
        if !changes.is_empty() {
            line("");
            line("Changes:");
            line("");
            for c in changes {
                line(&c);
            }
        }
    }
    line("");
    line("## Checks");
    line("");
    if r.checks.is_empty() {
        line("No checks in this plan.");
    } else {
        line("| Check | Step | Result | Detail |");
        line("|---|---|---|---|");
        for c in &r.checks {
            line(&format!(
                "| {} | `{}` | {} | {} |",
                cell(&c.name),
                c.step,
                c.result,
                cell(&c.detail)
            ));
        }
    }
    line("");
    line("## Incidents");
    line("");
    if r.incidents.is_empty() {
        line("None: every step succeeded on its first attempt, without interruption.");
    } else {
        for i in &r.incidents {
            line(&format!("- {} {}", fmt_ts(i.at), i.message));
        }
    }
    md
}

/// The report as JSON (the [`Report`] structure).
pub fn render_json(record: &RunRecord) -> serde_json::Value {
    serde_json::to_value(build(record))
        .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }))
}

/// Writes `report.md` and `report.json` into the run's directory; returns their paths.
pub fn write_reports(record: &RunRecord) -> std::io::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(&record.run_dir)?;
    let md = record.run_dir.join(REPORT_MD);
    let json = record.run_dir.join(REPORT_JSON);
    std::fs::write(&md, render_markdown(record))?;
    let text = serde_json::to_string_pretty(&render_json(record)).map_err(std::io::Error::other)?;
    std::fs::write(&json, text + "\n")?;
    Ok((md, json))
}

/// Per-phase wall durations, for benchmarks and summaries: phase → milliseconds.
pub fn phase_durations(record: &RunRecord) -> BTreeMap<Phase, u64> {
    build(record)
        .phases
        .into_iter()
        .filter_map(|p| Some((p.phase, p.duration_ms?)))
        .collect()
}
