//! The run's timeline as data, from the journal's events: each step attempt as a span on a time axis (failed,
//! retried, interrupted by a crash), each execution of the run (start and resumes), the gaps between them, and the
//! wait at the approval gate. The HTML report and the dashboard draw it to scale (`svg::timeline`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use xorb_engine::journal::RunRecord;
use xorb_engine::{Event, EventRecord};
use xorb_model::plan::{RunStatus, StepOutcome};

/// How a span ended, in words people read without colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SpanEnd {
    Ok,
    Skipped,
    Failed,
    /// The process died (or was killed) while the step was in flight.
    Interrupted,
    /// Still going (a live run).
    Open,
}

impl SpanEnd {
    pub fn word(self) -> &'static str {
        match self {
            SpanEnd::Ok => "done",
            SpanEnd::Skipped => "skipped",
            SpanEnd::Failed => "failed",
            SpanEnd::Interrupted => "interrupted",
            SpanEnd::Open => "running",
        }
    }
    pub fn symbol(self) -> &'static str {
        match self {
            SpanEnd::Ok => "✓",
            SpanEnd::Skipped => "»",
            SpanEnd::Failed => "✗",
            SpanEnd::Interrupted => "⚡",
            SpanEnd::Open => "…",
        }
    }
}

/// One attempt of one step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attempt {
    pub attempt: u32,
    pub start_ms: u64,
    pub end_ms: u64,
    pub end: SpanEnd,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepLane {
    pub step: String,
    pub phase: u8,
    pub attempts: Vec<Attempt>,
}

/// One execution of the run: the first start or a resume, until it finished or its process died.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Execution {
    pub start_ms: u64,
    pub end_ms: u64,
    pub resumed: bool,
    /// "crashed" when the journal has no end for it (the process died), else the status it ended with.
    pub ended: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Wait {
    pub what: String,
    pub start_ms: u64,
    pub end_ms: u64,
    /// Still waiting when the report was made.
    pub open: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Timeline {
    pub start: DateTime<Utc>,
    /// Length of the axis.
    pub total_ms: u64,
    pub executions: Vec<Execution>,
    pub waits: Vec<Wait>,
    pub steps: Vec<StepLane>,
}

fn ms(start: DateTime<Utc>, t: DateTime<Utc>) -> u64 {
    u64::try_from((t - start).num_milliseconds()).unwrap_or(0)
}

/// The approval gate's wait, when the run has one: (created, opened) from the governance record.
pub type GateWindow = (DateTime<Utc>, Option<DateTime<Utc>>);

/// Builds the timeline; `now` ends whatever is still open (a live run, a gate not yet opened).
pub fn build(record: &RunRecord, gate: Option<GateWindow>, now: DateTime<Utc>) -> Timeline {
    let start = gate
        .map(|(c, _)| c.min(record.created_at))
        .unwrap_or(record.created_at);
    let live = record.status == RunStatus::Running;
    let last_event = record
        .events
        .last()
        .map(|e| e.at)
        .unwrap_or(record.created_at);
    let end = if live {
        now.max(last_event)
    } else {
        record
            .finished_at
            .unwrap_or(record.updated_at)
            .max(last_event)
    };
    let mut executions = executions(&record.events, start, live, end);
    let mut steps: Vec<StepLane> = record
        .steps
        .iter()
        .map(|s| StepLane {
            step: s.spec.id.clone(),
            phase: s.spec.phase.number(),
            attempts: vec![],
        })
        .collect();
    let index: BTreeMap<&str, usize> = record
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.spec.id.as_str(), i))
        .collect();
    // A step started but never finished: it ends where its execution ended (the crash, or now if live).
    let mut open: BTreeMap<String, (u32, u64)> = BTreeMap::new();
    let close_open = |open: &mut BTreeMap<String, (u32, u64)>,
                      steps: &mut Vec<StepLane>,
                      at: u64,
                      end: SpanEnd| {
        for (step, (attempt, s)) in std::mem::take(open) {
            if let Some(&i) = index.get(step.as_str()) {
                steps[i].attempts.push(Attempt {
                    attempt,
                    start_ms: s,
                    end_ms: at.max(s),
                    end,
                });
            }
        }
    };
    let mut last_ms = 0;
    for e in &record.events {
        let t = ms(start, e.at);
        match &e.event {
            Event::RunResumed { .. } => {
                close_open(&mut open, &mut steps, last_ms, SpanEnd::Interrupted)
            }
            Event::StepStarted { step, attempt, .. } => {
                open.insert(step.clone(), (*attempt, t));
            }
            Event::StepFinished {
                step,
                attempt,
                outcome,
                ..
            } => {
                let s = open.remove(step).map(|(_, s)| s).unwrap_or(t);
                if let Some(&i) = index.get(step.as_str()) {
                    steps[i].attempts.push(Attempt {
                        attempt: *attempt,
                        start_ms: s,
                        end_ms: t,
                        end: match outcome {
                            StepOutcome::Failed { .. } => SpanEnd::Failed,
                            StepOutcome::Skipped { .. } => SpanEnd::Skipped,
                            _ => SpanEnd::Ok,
                        },
                    });
                }
            }
            _ => {}
        }
        last_ms = t;
    }
    let total_ms = ms(start, end).max(1);
    close_open(
        &mut open,
        &mut steps,
        if live { total_ms } else { last_ms },
        if live {
            SpanEnd::Open
        } else {
            SpanEnd::Interrupted
        },
    );
    let mut waits = vec![];
    if let Some((created, opened)) = gate {
        waits.push(Wait {
            what: "approval gate".into(),
            start_ms: ms(start, created),
            end_ms: opened.map(|o| ms(start, o)).unwrap_or(total_ms),
            open: opened.is_none(),
        });
    }
    if let RunStatus::WaitingForConfirmation { step, .. } = &record.status {
        waits.push(Wait {
            what: format!("confirmation of {step}"),
            start_ms: executions.last().map(|x| x.end_ms).unwrap_or(0),
            end_ms: total_ms,
            open: true,
        });
    }
    executions
        .iter_mut()
        .for_each(|x| x.end_ms = x.end_ms.min(total_ms));
    Timeline {
        start,
        total_ms,
        executions,
        waits,
        steps,
    }
}

fn executions(
    events: &[EventRecord],
    start: DateTime<Utc>,
    live: bool,
    end: DateTime<Utc>,
) -> Vec<Execution> {
    let mut out: Vec<Execution> = vec![];
    let mut current: Option<(u64, bool)> = None;
    let mut last = 0;
    for e in events {
        let t = ms(start, e.at);
        match &e.event {
            Event::RunStarted { .. } | Event::RunResumed { .. } => {
                if let Some((s, resumed)) = current.take() {
                    out.push(Execution {
                        start_ms: s,
                        end_ms: last,
                        resumed,
                        ended: "crashed".into(),
                    });
                }
                current = Some((t, matches!(e.event, Event::RunResumed { .. })));
            }
            Event::RunFinished { status, .. } => {
                if let Some((s, resumed)) = current.take() {
                    out.push(Execution {
                        start_ms: s,
                        end_ms: t,
                        resumed,
                        ended: status.kind().replace('_', " "),
                    });
                }
            }
            _ => {}
        }
        last = t;
    }
    if let Some((s, resumed)) = current {
        out.push(Execution {
            start_ms: s,
            end_ms: if live { ms(start, end) } else { last },
            resumed,
            ended: if live {
                "running".into()
            } else {
                "crashed".into()
            },
        });
    }
    out
}
