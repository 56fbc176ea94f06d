//! What the engine tells the world while it runs. Every event is journaled first and then handed to the
//! [`EventSink`]s (the run's log file, and the caller's: progress bars, plain lines, JSON lines).

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Local, Utc};
use serde::{Deserialize, Serialize};
use xorb_model::plan::{EmergencyProcedure, Phase, RunStatus, StepOutcome};

use crate::runner::Probe;

/// How a person resolved a step that the engine could not prove safe to repeat (`xorbctl resume --confirm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Confirmation {
    /// "I checked the live state: run the step again."
    Rerun,
    /// "I checked the live state: the step is already done; record it as done and go on."
    MarkDone,
}

/// One thing that happened in a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A new run was created and journaled with its plan.
    RunStarted {
        from: String,
        to: String,
        scope: Option<String>,
        /// A restore of this run's backup (`xorbctl restore`) rather than a rollback.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        restore_of: Option<String>,
        steps: usize,
        run_dir: String,
        /// The runbook's log file of the run.
        #[serde(default)]
        log_file: String,
    },
    /// A process took over a run that had stopped (crash, failure, confirmation needed).
    RunResumed {
        /// The first step not yet done.
        at_step: Option<String>,
        confirmations: BTreeMap<String, Confirmation>,
    },
    PhaseStarted {
        phase: Phase,
        steps: usize,
    },
    /// The step's intent: it is about to act (journaled before acting).
    StepStarted {
        index: usize,
        step: String,
        title: String,
        attempt: u32,
    },
    /// On resume or before a retry: what the probe of the live state found.
    StepProbed {
        step: String,
        probe: Probe,
    },
    /// The step's outcome (journaled after acting).
    StepFinished {
        index: usize,
        step: String,
        attempt: u32,
        outcome: StepOutcome,
        duration_ms: u64,
    },
    /// The step failed and its policy tries it again after `backoff_ms`.
    StepRetry {
        step: String,
        attempt: u32,
        next_attempt: u32,
        backoff_ms: u64,
        error: String,
    },
    /// A person's confirmation was applied to a step.
    ConfirmationUsed {
        step: String,
        confirmation: Confirmation,
    },
    EmergencyStarted {
        step: String,
        procedure: EmergencyProcedure,
    },
    EmergencyFinished {
        step: String,
        procedure: EmergencyProcedure,
        ok: bool,
        detail: String,
    },
    /// `abort` was requested by a person (from this or another process).
    AbortRequested {
        by: String,
    },
    /// This execution of the run ended (the run may be resumable: see `status`).
    RunFinished {
        status: RunStatus,
        /// Duration of this execution (not counting time before a resume).
        duration_ms: u64,
        /// What to do next, in words.
        next: String,
    },
}

impl Event {
    /// The event's name as serialized ("step_finished").
    pub fn kind(&self) -> &'static str {
        match self {
            Event::RunStarted { .. } => "run_started",
            Event::RunResumed { .. } => "run_resumed",
            Event::PhaseStarted { .. } => "phase_started",
            Event::StepStarted { .. } => "step_started",
            Event::StepProbed { .. } => "step_probed",
            Event::StepFinished { .. } => "step_finished",
            Event::StepRetry { .. } => "step_retry",
            Event::ConfirmationUsed { .. } => "confirmation_used",
            Event::EmergencyStarted { .. } => "emergency_started",
            Event::EmergencyFinished { .. } => "emergency_finished",
            Event::AbortRequested { .. } => "abort_requested",
            Event::RunFinished { .. } => "run_finished",
        }
    }

    /// One line for people (the log file, plain progress output).
    pub fn message(&self, run_id: &str) -> String {
        match self {
            Event::RunStarted {
                to,
                restore_of: Some(source),
                steps,
                ..
            } => format!(
                "Starting the restore of run {source}'s backup under {to} (run {run_id}, {steps} steps)"
            ),
            Event::RunStarted {
                from,
                to,
                scope,
                steps,
                ..
            } => {
                let scope = scope
                    .as_deref()
                    .map(|s| format!(", only {s}"))
                    .unwrap_or_default();
                format!(
                    "Starting rollback from {from} to {to} (run {run_id}, {steps} steps{scope})"
                )
            }
            Event::RunResumed {
                at_step,
                confirmations,
            } => {
                let at = at_step
                    .as_deref()
                    .map(|s| format!(" at step {s}"))
                    .unwrap_or_default();
                let conf = if confirmations.is_empty() {
                    String::new()
                } else {
                    let list: Vec<String> = confirmations
                        .iter()
                        .map(|(s, c)| format!("{s}={}", confirmation_name(*c)))
                        .collect();
                    format!(" with confirmations {}", list.join(", "))
                };
                format!("Resuming rollback run {run_id}{at}{conf}")
            }
            Event::PhaseStarted { phase, steps } => format!("{phase} ({steps} steps)"),
            Event::StepStarted {
                step,
                title,
                attempt,
                ..
            } => {
                if *attempt > 1 {
                    format!("Step {step}: {title} (attempt {attempt})")
                } else {
                    format!("Step {step}: {title}")
                }
            }
            Event::StepProbed { step, probe } => {
                format!("Step {step}: probe of the live state: {probe}")
            }
            Event::StepFinished {
                step,
                outcome,
                duration_ms,
                ..
            } => {
                format!(
                    "Step {step} {outcome} ({})",
                    format_duration_ms(*duration_ms)
                )
            }
            Event::StepRetry {
                step,
                attempt,
                next_attempt,
                backoff_ms,
                error,
            } => format!(
                "Step {step} attempt {attempt} failed ({error}); retrying (attempt {next_attempt}) in {}",
                format_duration_ms(*backoff_ms)
            ),
            Event::ConfirmationUsed { step, confirmation } => match confirmation {
                Confirmation::Rerun => format!("Step {step}: operator confirmed it may run again"),
                Confirmation::MarkDone => {
                    format!("Step {step}: operator confirmed it is already done")
                }
            },
            Event::EmergencyStarted { step, procedure } => {
                format!("EMERGENCY after step {step} failed: {procedure}")
            }
            Event::EmergencyFinished {
                procedure,
                ok,
                detail,
                ..
            } => {
                if *ok {
                    format!("Emergency procedure {} applied: {detail}", procedure.name())
                } else {
                    format!("Emergency procedure {} FAILED: {detail}", procedure.name())
                }
            }
            Event::AbortRequested { by } => format!("Abort requested by {by}"),
            Event::RunFinished {
                status: RunStatus::Succeeded,
                duration_ms,
                ..
            } => {
                format!(
                    "Rollback completed successfully ({})",
                    format_duration_ms(*duration_ms)
                )
            }
            Event::RunFinished { status, next, .. } => {
                format!("Rollback stopped: {status}. Next: {next}")
            }
        }
    }
}

fn confirmation_name(c: Confirmation) -> &'static str {
    match c {
        Confirmation::Rerun => "rerun",
        Confirmation::MarkDone => "mark-done",
    }
}

/// "850 ms", "12.3 s", "4m 12s", "1h 02m".
pub fn format_duration_ms(ms: u64) -> String {
    if ms < 1_000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{}m {:02}s", ms / 60_000, (ms / 1000) % 60)
    } else {
        format!("{}h {:02}m", ms / 3_600_000, (ms / 60_000) % 60)
    }
}

/// An event as journaled: its sequence number in the journal, its run and when it happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub seq: i64,
    pub run_id: String,
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub event: Event,
}

impl EventRecord {
    pub fn message(&self) -> String {
        self.event.message(&self.run_id)
    }
}

/// Where events go once journaled. Implement it for progress bars, plain lines, JSON lines…
/// A sink must not fail the run: it handles (or ignores) its own output errors.
pub trait EventSink {
    fn emit(&mut self, event: &EventRecord);
}

/// Discards events.
#[derive(Debug, Default, Clone, Copy)]
pub struct NullSink;

impl EventSink for NullSink {
    fn emit(&mut self, _event: &EventRecord) {}
}

impl<S: EventSink + ?Sized> EventSink for &mut S {
    fn emit(&mut self, event: &EventRecord) {
        (**self).emit(event);
    }
}

impl<S: EventSink + ?Sized> EventSink for Box<S> {
    fn emit(&mut self, event: &EventRecord) {
        (**self).emit(event);
    }
}

impl<A: EventSink, B: EventSink> EventSink for (A, B) {
    fn emit(&mut self, event: &EventRecord) {
        self.0.emit(event);
        self.1.emit(event);
    }
}

impl<S: EventSink> EventSink for Option<S> {
    fn emit(&mut self, event: &EventRecord) {
        if let Some(s) = self {
            s.emit(event);
        }
    }
}

impl EventSink for Vec<EventRecord> {
    fn emit(&mut self, event: &EventRecord) {
        self.push(event.clone());
    }
}

/// Collects events in memory behind a shared handle (tests; UIs that poll).
#[derive(Debug, Default, Clone)]
pub struct MemorySink(pub Arc<Mutex<Vec<EventRecord>>>);

impl MemorySink {
    pub fn events(&self) -> Vec<EventRecord> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl EventSink for MemorySink {
    fn emit(&mut self, event: &EventRecord) {
        if let Ok(mut v) = self.0.lock() {
            v.push(event.clone());
        }
    }
}

/// Calls a closure for every event.
pub struct FnSink<F: FnMut(&EventRecord)>(pub F);

impl<F: FnMut(&EventRecord)> EventSink for FnSink<F> {
    fn emit(&mut self, event: &EventRecord) {
        (self.0)(event);
    }
}

/// One JSON object per line (`--output json`): the [`EventRecord`] with its fields flattened.
pub struct JsonLinesSink<W: Write>(pub W);

impl<W: Write> EventSink for JsonLinesSink<W> {
    fn emit(&mut self, event: &EventRecord) {
        if let Ok(line) = serde_json::to_string(event) {
            let _ = writeln!(self.0, "{line}");
            let _ = self.0.flush();
        }
    }
}

/// Plain progress lines, `[YYYY-MM-DD HH:MM:SS] message` in local time (output that is not a terminal).
pub struct PlainSink<W: Write>(pub W);

impl<W: Write> EventSink for PlainSink<W> {
    fn emit(&mut self, event: &EventRecord) {
        let _ = writeln!(self.0, "{}", log_line(event));
        let _ = self.0.flush();
    }
}

/// The runbook's `log_action` line: `[YYYY-MM-DD HH:MM:SS] message`, local time.
pub fn log_line(event: &EventRecord) -> String {
    format!(
        "[{}] {}",
        event.at.with_timezone(&Local).format("%Y-%m-%d %H:%M:%S"),
        event.message()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(format_duration_ms(850), "850 ms");
        assert_eq!(format_duration_ms(12_340), "12.3 s");
        assert_eq!(format_duration_ms(252_000), "4m 12s");
        assert_eq!(format_duration_ms(3_720_000), "1h 02m");
    }

    #[test]
    fn event_records_round_trip_as_flat_json() {
        let rec = EventRecord {
            seq: 7,
            run_id: "r1".into(),
            at: Utc::now(),
            event: Event::StepFinished {
                index: 1,
                step: "2.api.image".into(),
                attempt: 1,
                outcome: StepOutcome::succeeded("api on v2025.07-stable"),
                duration_ms: 1200,
            },
        };
        let v = serde_json::to_value(&rec).unwrap();
        assert_eq!(v["event"], "step_finished");
        assert_eq!(v["step"], "2.api.image");
        assert_eq!(v["outcome"]["result"], "succeeded");
        let back: EventRecord = serde_json::from_value(v).unwrap();
        assert_eq!(back, rec);
        assert_eq!(
            rec.message(),
            "Step 2.api.image succeeded: api on v2025.07-stable (1.2 s)"
        );
    }
}
