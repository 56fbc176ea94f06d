//! Running a plan's steps, those of a phase that do not conflict at the same time (issue #14; design:
//! docs/design/concurrent-steps.md). Each step keeps the journal's protocol as when steps ran one by one: its
//! intent is committed before it acts, its outcome after; the writes of steps in flight together interleave in
//! the journal in the order they happen, so a crash between any two leaves each step either not started, in
//! flight, or finished, and `resume` probes every step in flight as it always has.
//!
//! Which step waits for which comes from `xorb_model::access::waits_for`: the phases one after the other, and in
//! a phase the steps that touch the same thing (one changing it) in plan order. A step that definitely fails
//! stops the run: nothing new starts, the steps in flight finish and are journaled, then its emergency procedure
//! runs as before.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use xorb_model::plan::{FailurePolicy, Phase, RunStatus, Safety, StepOutcome, StepSpec};

use super::{Active, Engine, EngineError, Progress, Resolution, bounded, ms_since, probe_with};
use crate::events::{Confirmation, Event, EventRecord, EventSink};
use crate::journal::Journal;
use crate::logfile::LogFileSink;
use crate::runner::{Probe, StepContext, StepRunner};

/// Journals a run's events and hands each to the log file and the caller's sink: the part of the engine a
/// completion needs while other steps still hold the runner.
pub(super) struct Recorder<'a, S> {
    pub journal: &'a mut Journal,
    pub sink: &'a mut S,
    pub log: &'a mut LogFileSink,
    pub run_id: &'a str,
}

impl<S: EventSink> Recorder<'_, S> {
    pub fn publish(&mut self, rec: &EventRecord) {
        self.log.emit(rec);
        self.sink.emit(rec);
    }

    pub fn event(&mut self, event: Event) -> Result<(), EngineError> {
        let rec = self.journal.append_event(self.run_id, event)?;
        self.publish(&rec);
        Ok(())
    }

    fn intent(&mut self, index: usize, step: &StepSpec, attempt: u32) -> Result<(), EngineError> {
        crate::crash::before_step(&step.id);
        let event = Event::StepStarted {
            index,
            step: step.id.clone(),
            title: step.title.clone(),
            attempt,
        };
        let rec = self
            .journal
            .record_intent(self.run_id, index, attempt, event)?;
        self.publish(&rec);
        Ok(())
    }

    pub fn outcome(
        &mut self,
        index: usize,
        step: &str,
        attempt: u32,
        outcome: StepOutcome,
        duration_ms: u64,
    ) -> Result<(), EngineError> {
        let event = Event::StepFinished {
            index,
            step: step.to_string(),
            attempt,
            outcome: outcome.clone(),
            duration_ms,
        };
        let rec = self
            .journal
            .record_outcome(self.run_id, index, &outcome, event)?;
        self.publish(&rec);
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Pending,
    Running,
    Done,
    /// Failed for good in this execution (the run stops once the steps in flight have finished).
    Failed,
}

/// What finished in flight.
enum Finished {
    /// A step acted, with this outcome.
    Ran {
        index: usize,
        attempt: u32,
        started: Instant,
        outcome: StepOutcome,
    },
    /// A retry's backoff is over; for a step not safe to repeat blindly, what its probe found.
    BackedOff { index: usize, probe: Option<Probe> },
}

type InFlight<'a> = FuturesUnordered<Pin<Box<dyn Future<Output = Finished> + 'a>>>;

fn ready(index: usize, waits: &[Vec<usize>], slots: &[Slot]) -> bool {
    slots[index] == Slot::Pending && waits[index].iter().all(|&i| slots[i] == Slot::Done)
}

impl<R: StepRunner, S: EventSink> Engine<R, S> {
    /// Runs every step not done yet; returns how the run stands when nothing more can run.
    pub(super) async fn drive(
        &mut self,
        active: &mut Active,
        progress: Vec<Progress>,
        confirmations: &BTreeMap<String, Confirmation>,
    ) -> Result<RunStatus, EngineError> {
        let waits = xorb_model::access::waits_for(&active.plan.steps);
        let mut slots: Vec<Slot> = progress
            .iter()
            .map(|p| {
                if p.state.is_done() {
                    Slot::Done
                } else {
                    Slot::Pending
                }
            })
            .collect();
        // Steps started before this execution (in flight when the run stopped, or failed) are probed before they
        // run again, one at a time and with nothing else in flight, as they always were.
        let mut unsettled: Vec<bool> = progress.iter().map(|p| p.attempts > 0).collect();
        let mut attempts: Vec<u32> = progress.iter().map(|p| p.attempts).collect();
        let mut announced = BTreeSet::new();
        loop {
            let now: Vec<usize> = (0..slots.len())
                .filter(|&j| ready(j, &waits, &slots))
                .collect();
            if now.is_empty() {
                return Ok(RunStatus::Succeeded);
            }
            // A person may have aborted the run from another process: stop at the step boundary.
            let current = self.journal.status(&active.run_id)?;
            if matches!(current, RunStatus::Aborted { .. }) {
                return Ok(current);
            }
            let mut settled_one = false;
            for j in now {
                let step = active.plan.steps[j].clone();
                let confirmation = confirmations.get(&step.id).copied();
                if confirmation != Some(Confirmation::MarkDone) && !unsettled[j] {
                    continue;
                }
                settled_one = true;
                self.announce(active, &mut announced, step.phase)?;
                if confirmation == Some(Confirmation::MarkDone) {
                    self.journal_event(
                        active,
                        Event::ConfirmationUsed {
                            step: step.id.clone(),
                            confirmation: Confirmation::MarkDone,
                        },
                    )?;
                    let outcome = StepOutcome::AlreadyDone {
                        detail: "confirmed done by the operator".into(),
                    };
                    self.journal_outcome(active, j, attempts[j], outcome, 0)?;
                    slots[j] = Slot::Done;
                    continue;
                }
                match self
                    .reprobe(active, j, &step, &progress[j], confirmation)
                    .await?
                {
                    Resolution::Done => slots[j] = Slot::Done,
                    Resolution::Run => unsettled[j] = false,
                    Resolution::Wait(reason) => {
                        return Ok(RunStatus::WaitingForConfirmation {
                            step: step.id.clone(),
                            reason,
                        });
                    }
                }
            }
            if settled_one {
                // What was found done may let other steps start: look again.
                continue;
            }
            let stop = self
                .run_together(
                    active,
                    &waits,
                    &mut slots,
                    &mut attempts,
                    &unsettled,
                    confirmations,
                    &mut announced,
                )
                .await?;
            if let Some(status) = stop {
                return Ok(status);
            }
        }
    }

    /// Journals the start of `phase` the first time one of its steps starts in this execution.
    fn announce(
        &mut self,
        active: &mut Active,
        announced: &mut BTreeSet<Phase>,
        phase: Phase,
    ) -> Result<(), EngineError> {
        let phases = step_phases(active);
        announce(&mut self.recorder(active), &phases, announced, phase)
    }

    /// Starts every ready step that needs no probe or confirmation first, and the steps that become ready as
    /// others finish, until nothing is in flight. Returns the run's status when it must stop.
    #[allow(clippy::too_many_arguments)]
    async fn run_together(
        &mut self,
        active: &mut Active,
        waits: &[Vec<usize>],
        slots: &mut [Slot],
        attempts: &mut [u32],
        unsettled: &[bool],
        confirmations: &BTreeMap<String, Confirmation>,
        announced: &mut BTreeSet<Phase>,
    ) -> Result<Option<RunStatus>, EngineError> {
        let phases = step_phases(active);
        let Engine {
            journal,
            runner,
            sink,
            state_dir,
            ..
        } = self;
        let runner: &R = runner;
        let state_dir: &std::path::Path = state_dir;
        let Active {
            run_id,
            plan,
            run_dir,
            log,
        } = active;
        let (run_id, plan, run_dir): (&str, &_, &std::path::Path) = (run_id, plan, run_dir);
        let mut rec = Recorder {
            journal,
            sink,
            log,
            run_id,
        };
        let mut flight: InFlight<'_> = FuturesUnordered::new();
        let mut tries = vec![0u32; slots.len()];
        let mut failed: Option<(usize, u32, String)> = None;
        let mut aborted: Option<RunStatus> = None;
        let ctx = |index: usize, attempt: u32| StepContext {
            run_id,
            step_id: &plan.steps[index].id,
            run_dir,
            from: &plan.from,
            to: &plan.to,
            index,
            attempt,
        };
        loop {
            if failed.is_none() && aborted.is_none() {
                let current = rec.journal.status(run_id)?;
                if matches!(current, RunStatus::Aborted { .. }) {
                    aborted = Some(current);
                }
            }
            if failed.is_none() && aborted.is_none() {
                for j in 0..slots.len() {
                    let step = &plan.steps[j];
                    if !ready(j, waits, slots)
                        || unsettled[j]
                        || confirmations.get(&step.id) == Some(&Confirmation::MarkDone)
                    {
                        continue;
                    }
                    announce(&mut rec, &phases, announced, step.phase)?;
                    attempts[j] = attempts[j].saturating_add(1);
                    tries[j] = tries[j].saturating_add(1);
                    rec.intent(j, step, attempts[j])?;
                    slots[j] = Slot::Running;
                    flight.push(Box::pin(act(runner, step, ctx(j, attempts[j]))));
                }
            }
            let Some(finished) = flight.next().await else {
                break;
            };
            match finished {
                Finished::Ran {
                    index,
                    attempt,
                    started,
                    outcome,
                } => {
                    let step = &plan.steps[index];
                    let outcome = flushed(outcome, &[run_dir, state_dir]);
                    rec.outcome(index, &step.id, attempt, outcome.clone(), ms_since(started))?;
                    let StepOutcome::Failed { error, retryable } = outcome else {
                        slots[index] = Slot::Done;
                        continue;
                    };
                    // Saturating: the attempt count comes from the journal, which a damaged file may fill with
                    // anything.
                    let max_tries = step
                        .policy
                        .max_attempts()
                        .min(u32::try_from(xorb_model::limits::ATTEMPTS.max).unwrap_or(u32::MAX));
                    if retryable
                        && tries[index] < max_tries
                        && failed.is_none()
                        && aborted.is_none()
                    {
                        let backoff = xorb_model::limits::clamp_backoff(match step.policy {
                            FailurePolicy::Retry { backoff_ms, .. } => backoff_ms,
                            _ => 0,
                        });
                        rec.event(Event::StepRetry {
                            step: step.id.clone(),
                            attempt,
                            next_attempt: attempt.saturating_add(1),
                            backoff_ms: u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                            error,
                        })?;
                        let probe_ctx = ctx(index, attempt);
                        flight.push(Box::pin(async move {
                            tokio::time::sleep(backoff).await;
                            let probe = if step.safety == Safety::Idempotent {
                                None
                            } else {
                                Some(probe_with(runner, &probe_ctx, step).await)
                            };
                            Finished::BackedOff { index, probe }
                        }));
                        continue;
                    }
                    slots[index] = Slot::Failed;
                    if failed.as_ref().is_none_or(|(i, _, _)| index < *i) {
                        failed = Some((index, attempt, error));
                    }
                }
                Finished::BackedOff { index, probe } => {
                    let step = &plan.steps[index];
                    if let Some(probe) = probe {
                        rec.event(Event::StepProbed {
                            step: step.id.clone(),
                            probe: probe.clone(),
                        })?;
                        if let Probe::Done { detail } = probe {
                            let outcome = StepOutcome::AlreadyDone {
                                detail: format!("found done by the probe: {detail}"),
                            };
                            rec.outcome(index, &step.id, attempts[index], outcome, 0)?;
                            slots[index] = Slot::Done;
                            continue;
                        }
                    }
                    if failed.is_some() || aborted.is_some() {
                        // The run stops for another step: this one stays failed (retryable) in the journal,
                        // and `resume` probes it.
                        slots[index] = Slot::Pending;
                        continue;
                    }
                    attempts[index] = attempts[index].saturating_add(1);
                    tries[index] = tries[index].saturating_add(1);
                    rec.intent(index, step, attempts[index])?;
                    flight.push(Box::pin(act(runner, step, ctx(index, attempts[index]))));
                }
            }
        }
        drop(flight);
        if let Some(status) = aborted {
            return Ok(Some(status));
        }
        let Some((index, attempt, error)) = failed else {
            return Ok(None);
        };
        let step = active.plan.steps[index].clone();
        Ok(Some(self.fail(active, index, &step, attempt, error).await?))
    }
}

/// Each step's phase, in plan order: `announce` counts a phase's steps from it (what `PhaseStarted` says).
fn step_phases(active: &Active) -> Vec<Phase> {
    active.plan.steps.iter().map(|s| s.phase).collect()
}

fn announce<S: EventSink>(
    rec: &mut Recorder<'_, S>,
    phases: &[Phase],
    announced: &mut BTreeSet<Phase>,
    phase: Phase,
) -> Result<(), EngineError> {
    if !announced.insert(phase) {
        return Ok(());
    }
    let steps = phases.iter().filter(|p| **p == phase).count();
    rec.event(Event::PhaseStarted { phase, steps })
}

/// One attempt of a step: the test hook that pauses it, then the runner under the step's timeout.
async fn act<'a, R: StepRunner>(
    runner: &'a R,
    step: &'a StepSpec,
    ctx: StepContext<'a>,
) -> Finished {
    crate::pause::in_step(&step.id).await;
    let started = Instant::now();
    let outcome = match bounded(step.timeout_secs, runner.run(step, &ctx)).await {
        Some(Ok(outcome)) => outcome,
        Some(Err(e)) => e.into_outcome(),
        None => StepOutcome::Failed {
            error: format!(
                "did not finish within its timeout of {} s",
                step.timeout_secs
            ),
            // cancelled half-way: only a step that is safe to repeat may be retried blindly
            retryable: step.safety != Safety::NotRepeatable,
        },
    };
    Finished::Ran {
        index: ctx.index,
        attempt: ctx.attempt,
        started,
        outcome,
    }
}

/// What the step wrote (its artifacts in the run directory, the stack's records) is on disk before the journal
/// says it is done: a crash after the outcome's commit must not find a backup the journal vouches for missing or
/// empty.
fn flushed(outcome: StepOutcome, dirs: &[&std::path::Path]) -> StepOutcome {
    if matches!(outcome, StepOutcome::Failed { .. }) {
        return outcome;
    }
    match crate::private::sync_file_systems(dirs) {
        Ok(()) => outcome,
        Err((path, e)) => StepOutcome::Failed {
            error: format!(
                "acted, but what it wrote cannot be flushed to disk (syncfs of the file system of {}: {e}); check \
                 that disk before resuming",
                path.display()
            ),
            retryable: false,
        },
    }
}
