//! What `watch` shows of a run, computed from its journal record and the time alone (no I/O), so every state can
//! be rendered in a unit test.

use chrono::{DateTime, Utc};
use xorb_engine::{Event, RunRecord, StepRecord, StepState};
use xorb_model::plan::{Action, Phase, RunStatus};

/// One view of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The full view, one entry a line.
    pub lines: Vec<String>,
    /// One line that changes only when something other than elapsed time changes (the non-terminal output).
    pub change: String,
}

/// Whether a process is executing the run, as far as the lock file tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Executor {
    Alive,
    Gone,
}

/// Whole seconds, the way a live view counts: "8s", "1m 02s", "1h 02m".
pub fn secs(s: i64) -> String {
    let s = s.max(0);
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m {:02}s", s / 60, s % 60)
    } else {
        format!("{}h {:02}m", s / 3600, (s / 60) % 60)
    }
}

fn since(from: DateTime<Utc>, to: DateTime<Utc>) -> i64 {
    (to - from).num_seconds()
}

/// The exit status of `watch` for a run in `status`, as `rollback` exits: None while it runs.
pub fn exit_code(status: &RunStatus) -> Option<u8> {
    xorb_model::exit::Exit::of_run(status).map(xorb_model::exit::Exit::code)
}

/// The step the run is at: the one acting, else (running) the next to act.
fn current_step(rec: &RunRecord) -> Option<&StepRecord> {
    rec.steps
        .iter()
        .find(|s| s.state == StepState::InFlight)
        .or_else(|| match rec.status {
            RunStatus::Running => rec.first_open_step().map(|i| &rec.steps[i]),
            _ => None,
        })
}

/// A retry's backoff the step is sleeping through: the step's latest event is a retry, not a new start.
fn backoff(rec: &RunRecord, step: &str, now: DateTime<Utc>) -> Option<String> {
    let last = rec.events.iter().rev().find(|e| match &e.event {
        Event::StepRetry { step: s, .. } | Event::StepStarted { step: s, .. } => s == step,
        _ => false,
    })?;
    let Event::StepRetry {
        next_attempt,
        backoff_ms,
        error,
        ..
    } = &last.event
    else {
        return None;
    };
    let due = last.at + chrono::Duration::milliseconds(*backoff_ms as i64);
    Some(format!(
        "a retry's backoff: attempt {next_attempt} in {} (after: {error})",
        secs(((due - now).num_milliseconds().max(0) + 999) / 1000)
    ))
}

/// What an acting step waits on, from what it does.
fn action_wait(step: &StepRecord) -> Option<String> {
    match &step.spec.action {
        Action::SetImage {
            service, release, ..
        }
        | Action::AddService {
            service, release, ..
        } => Some(format!("the rollout of {service} to {release}")),
        Action::RemoveService { service } => Some(format!("{service} to stop")),
        Action::Migrate {
            revision,
            to_revision,
            ..
        } => Some(format!("alembic: {revision} → {to_revision}")),
        _ => None,
    }
}

fn waiting_for(
    rec: &RunRecord,
    current: Option<&StepRecord>,
    executor: Executor,
    now: DateTime<Utc>,
) -> Option<String> {
    match &rec.status {
        RunStatus::WaitingForApproval { severity, missing } => Some(format!(
            "the approval gate ({severity}): missing {missing} — xorbctl approve {} --as NAME --role ROLE --reason TEXT",
            rec.id
        )),
        RunStatus::WaitingForConfirmation { step, reason } => Some(format!(
            "a person's confirmation of {step}: {reason} — xorbctl resume {} --confirm {step} (or --mark-done {step})",
            rec.id
        )),
        RunStatus::Running if executor == Executor::Gone => Some(format!(
            "nobody: no process executes this run (interrupted) — xorbctl resume {}",
            rec.id
        )),
        RunStatus::Running => {
            let step = current?;
            backoff(rec, &step.spec.id, now).or_else(|| {
                (step.state == StepState::InFlight)
                    .then(|| action_wait(step))
                    .flatten()
            })
        }
        _ => None,
    }
}

fn status_text(status: &RunStatus) -> String {
    match status {
        RunStatus::Failed { step, error } => format!("FAILED at {step}: {error}"),
        RunStatus::EmergencyStopped {
            step,
            procedure,
            emergency_ok,
            ..
        } => format!(
            "EMERGENCY STOP at {step}: {} {}",
            procedure.name(),
            if *emergency_ok { "applied" } else { "FAILED" }
        ),
        RunStatus::Aborted { by, .. } => format!("aborted by {by}"),
        other => other.kind().replace('_', " "),
    }
}

fn phase_lines(rec: &RunRecord, current: Option<&StepRecord>, now: DateTime<Utc>) -> Vec<String> {
    let mut phases: Vec<Phase> = Vec::new();
    for s in &rec.steps {
        if !phases.contains(&s.spec.phase) {
            phases.push(s.spec.phase);
        }
    }
    let width = phases
        .iter()
        .map(|p| p.to_string().chars().count())
        .max()
        .unwrap_or(0);
    phases
        .iter()
        .map(|phase| {
            let steps: Vec<&StepRecord> = rec
                .steps
                .iter()
                .filter(|s| s.spec.phase == *phase)
                .collect();
            let done = steps.iter().filter(|s| s.state.is_done()).count();
            let all_done = done == steps.len();
            let is_current = current.is_some_and(|c| c.spec.phase == *phase);
            let mark = if steps.iter().any(|s| s.state == StepState::Failed) {
                "FAILED "
            } else if all_done {
                "done   "
            } else if is_current || steps.iter().any(|s| s.state != StepState::Pending) {
                "current"
            } else {
                "pending"
            };
            let started = steps.iter().filter_map(|s| s.started_at).min();
            let ended = if all_done {
                steps.iter().filter_map(|s| s.finished_at).max()
            } else {
                Some(now)
            };
            let took = match (started, ended) {
                (Some(a), Some(b)) if mark != "pending" => format!("  {}", secs(since(a, b))),
                _ => String::new(),
            };
            format!(
                "  {mark}  {:<width$}  {done}/{} steps{took}",
                phase.to_string(),
                steps.len()
            )
        })
        .collect()
}

fn last_finished(rec: &RunRecord) -> Option<String> {
    rec.events.iter().rev().find_map(|e| match &e.event {
        Event::StepFinished {
            step,
            outcome,
            duration_ms,
            ..
        } => Some(format!(
            "{step} {} ({})",
            outcome,
            secs((*duration_ms as i64).div_euclid(1000))
        )),
        _ => None,
    })
}

/// The view of `rec` at `now`.
pub fn render(rec: &RunRecord, executor: Executor, now: DateTime<Utc>) -> Frame {
    let current = current_step(rec);
    // A stopped run's clocks stop with it.
    let running = rec.status == RunStatus::Running;
    let clock = match rec.finished_at {
        Some(end) if !running => end,
        _ => now,
    };
    let elapsed = secs(since(rec.created_at, clock));
    let done = rec.steps.iter().filter(|s| s.state.is_done()).count();
    let scope = match &rec.plan.scope {
        Some(s) => format!("only {s}"),
        None => "whole stack".to_string(),
    };
    let status = status_text(&rec.status);
    let mut lines = vec![
        format!(
            "Run {}  {} → {}  ({scope})",
            rec.id, rec.plan.from, rec.plan.to
        ),
        format!(
            "Status: {status}   elapsed {elapsed}   {done} of {} steps done",
            rec.steps.len()
        ),
        String::new(),
    ];
    lines.extend(phase_lines(rec, current, clock));
    lines.push(String::new());
    let mut change_step = String::from("-");
    if let Some(c) = current {
        let state = match c.state {
            StepState::InFlight => {
                let took = c
                    .started_at
                    .map(|t| format!(" for {}", secs(since(t, clock))))
                    .unwrap_or_default();
                let doing = if running {
                    "running"
                } else {
                    "stopped after running"
                };
                format!("attempt {}, {doing}{took}", c.attempts)
            }
            _ => "next".to_string(),
        };
        let limit = match c.spec.timeout_secs {
            0 => String::new(),
            t => format!(" (timeout {})", secs(t as i64)),
        };
        lines.push(format!("Current step: {}  {}", c.spec.id, c.spec.title));
        lines.push(format!("  {state}{limit}"));
        // Steps that touch nothing in common run together (docs/design/concurrent-steps.md).
        let also: Vec<&str> = rec
            .steps
            .iter()
            .filter(|s| s.state == StepState::InFlight && s.spec.id != c.spec.id)
            .map(|s| s.spec.id.as_str())
            .collect();
        if !also.is_empty() {
            lines.push(format!("  in flight with it: {}", also.join(", ")));
        }
        change_step = format!(
            "{} {}",
            c.spec.id,
            match (c.state, running) {
                (StepState::InFlight, true) => "running",
                (StepState::InFlight, false) => "stopped",
                _ => "next",
            }
        );
    }
    let waiting = waiting_for(rec, current, executor, now);
    if let Some(w) = &waiting {
        lines.push(format!("Waiting for: {w}"));
    }
    if let Some(last) = last_finished(rec) {
        lines.push(format!("Last: {last}"));
    }
    if exit_code(&rec.status).is_some() {
        lines.push(format!(
            "Next: {}",
            xorb_engine::next_action(&rec.id, &rec.plan, &rec.status)
        ));
    }
    // Elapsed times move every second; the change line must not, or it would print a line a second.
    let waiting_key = waiting
        .as_deref()
        .map(|w| match w.find(" in ") {
            Some(i) if w.starts_with("a retry's backoff") => w[..i].to_string(),
            _ => w.to_string(),
        })
        .map(|w| format!("; waiting for {w}"))
        .unwrap_or_default();
    let change = format!(
        "{}: {status}; step {change_step}; {done}/{} done{waiting_key}",
        rec.id,
        rec.steps.len()
    );
    Frame { lines, change }
}

#[cfg(test)]
mod tests;
