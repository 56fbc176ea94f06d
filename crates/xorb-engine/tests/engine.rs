//! State-machine tests of the executor against a scripted in-memory target.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use xorb_engine::*;
use xorb_model::plan::*;

#[derive(Debug, Clone)]
enum Script {
    Fail {
        retryable: bool,
    },
    Error(StepError),
    Hang,
    /// Abort the run from "another process" (another journal connection) while this step runs, then succeed.
    AbortRun(PathBuf),
}

#[derive(Default)]
struct Fake {
    script: Mutex<HashMap<String, VecDeque<Script>>>,
    probes: Mutex<HashMap<String, Probe>>,
    calls: Mutex<Vec<String>>,
    done: Mutex<HashSet<String>>,
    emergency_fails: bool,
}

impl Fake {
    fn script(&self, step: &str, items: impl IntoIterator<Item = Script>) {
        self.script
            .lock()
            .unwrap()
            .entry(step.into())
            .or_default()
            .extend(items);
    }
    fn probe_says(&self, step: &str, p: Probe) {
        self.probes.lock().unwrap().insert(step.into(), p);
    }
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
    fn runs_of(&self, step: &str) -> usize {
        self.calls()
            .iter()
            .filter(|c| **c == format!("run:{step}"))
            .count()
    }
}

impl StepRunner for Fake {
    async fn probe(&self, step: &StepSpec, _ctx: &StepContext<'_>) -> Result<Probe, StepError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("probe:{}", step.id));
        if let Some(p) = self.probes.lock().unwrap().get(&step.id) {
            return Ok(p.clone());
        }
        Ok(if self.done.lock().unwrap().contains(&step.id) {
            Probe::Done {
                detail: "effect present".into(),
            }
        } else {
            Probe::NotDone
        })
    }

    async fn run(&self, step: &StepSpec, ctx: &StepContext<'_>) -> Result<StepOutcome, StepError> {
        self.calls.lock().unwrap().push(format!("run:{}", step.id));
        let next = self
            .script
            .lock()
            .unwrap()
            .get_mut(&step.id)
            .and_then(VecDeque::pop_front);
        match next {
            None => {}
            Some(Script::Fail { retryable }) => {
                return Ok(StepOutcome::Failed {
                    error: format!("{} is not healthy", step.id),
                    retryable,
                });
            }
            Some(Script::Error(e)) => return Err(e),
            Some(Script::Hang) => std::future::pending::<()>().await,
            Some(Script::AbortRun(state_dir)) => {
                let r = abort_run(&state_dir, ctx.run_id, "alice").unwrap();
                assert!(r.aborted);
            }
        }
        self.done.lock().unwrap().insert(step.id.clone());
        Ok(StepOutcome::succeeded(format!(
            "{} done (attempt {})",
            step.id, ctx.attempt
        )))
    }

    async fn emergency(
        &self,
        procedure: EmergencyProcedure,
        _ctx: &StepContext<'_>,
    ) -> Result<String, StepError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("emergency:{}", procedure.name()));
        if self.emergency_fails {
            Err(StepError::fatal("cannot reach the api"))
        } else {
            Ok(format!("{} applied", procedure.name()))
        }
    }
}

fn image(service: &str, safety: Safety) -> StepSpec {
    StepSpec::new(
        format!("2.{service}.image"),
        Phase::Services,
        format!("Roll {service} back to v2025.07-stable"),
        Action::SetImage {
            service: service.into(),
            image: format!("xorb/{service}:v2025.07-stable"),
            release: "v2025.07-stable".into(),
        },
        safety,
    )
}

fn plan() -> Plan {
    Plan::new("v2025.08-rc1", "v2025.07-stable")
        .with_step(StepSpec::new(
            "1.capture",
            Phase::Assessment,
            "Capture system state",
            Action::CaptureState,
            Safety::Idempotent,
        ))
        .with_step(image("api", Safety::Probed))
        .with_step(image("worker", Safety::Probed))
        .with_step(StepSpec::new(
            "2.control-plane.remove",
            Phase::Services,
            "Remove control-plane",
            Action::RemoveService {
                service: "control-plane".into(),
            },
            Safety::NotRepeatable,
        ))
        .with_step(StepSpec::new(
            "5.health",
            Phase::Verification,
            "Health",
            Action::Check {
                name: "health".into(),
                params: None,
            },
            Safety::Idempotent,
        ))
}

fn engine<'a>(dir: &Path, fake: &'a Fake) -> Engine<&'a Fake, MemorySink> {
    Engine::new(dir, fake, MemorySink::default()).unwrap()
}

fn states(dir: &Path, run: &str) -> Vec<(String, StepState, u32)> {
    load_run(dir, run)
        .unwrap()
        .steps
        .iter()
        .map(|s| (s.spec.id.clone(), s.state, s.attempts))
        .collect()
}

#[tokio::test]
async fn a_plan_runs_in_order_and_is_journaled_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    let mut e = engine(dir.path(), &fake);
    let end = e.start(plan()).await.unwrap();
    assert_eq!(end.status, RunStatus::Succeeded, "{}", end.next);
    assert_eq!(
        fake.calls(),
        [
            "run:1.capture",
            "run:2.api.image",
            "run:2.worker.image",
            "run:2.control-plane.remove",
            "run:5.health"
        ]
    );
    let rec = load_run(dir.path(), &end.run_id).unwrap();
    assert!(
        rec.steps
            .iter()
            .all(|s| s.state == StepState::Succeeded && s.attempts == 1)
    );
    assert!(rec.finished_at.is_some());
    assert_eq!(rec.run_dir, run_dir(dir.path(), &end.run_id));

    // events: journaled in order, the same ones the sink saw
    let kinds: Vec<&str> = rec.events.iter().map(|e| e.event.kind()).collect();
    assert_eq!(kinds.first(), Some(&"run_started"));
    assert_eq!(kinds.last(), Some(&"run_finished"));
    assert_eq!(kinds.iter().filter(|k| **k == "phase_started").count(), 3);
    assert_eq!(kinds.iter().filter(|k| **k == "step_started").count(), 5);
    assert_eq!(e.sink().events(), rec.events);

    // the runbook's log file: one "[YYYY-MM-DD HH:MM:SS] message" line per event
    let name = end
        .log_file
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        name.starts_with("rollback-")
            && name.ends_with(".log")
            && name.len() == "rollback-20250814-101500.log".len(),
        "{name}"
    );
    assert_eq!(end.log_file.parent().unwrap(), end.run_dir);
    let log = std::fs::read_to_string(&end.log_file).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), rec.events.len());
    for l in &lines {
        let b = l.as_bytes();
        assert!(b[0] == b'[' && b[20] == b']' && b[21] == b' ', "{l}");
    }
    assert!(
        lines[0].contains("Starting rollback from v2025.08-rc1 to v2025.07-stable"),
        "{}",
        lines[0]
    );
    assert!(
        log.contains("Phase 2 of 5: service rollback (3 steps)"),
        "{log}"
    );
    assert!(
        lines
            .last()
            .unwrap()
            .contains("Rollback completed successfully"),
        "{log}"
    );

    // listing
    let runs = list_runs(dir.path()).unwrap();
    assert_eq!(runs.len(), 1);
    assert!(!runs[0].active && !runs[0].interrupted);
    assert_eq!((runs[0].run.steps_done, runs[0].run.steps_total), (5, 5));

    // nothing to resume
    assert!(matches!(
        e.resume(&end.run_id, ResumeOptions::default()).await,
        Err(EngineError::AlreadySucceeded { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn retry_policy_retries_then_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    fake.script(
        "2.api.image",
        [
            Script::Fail { retryable: true },
            Script::Error(StepError::retryable("timeout")),
        ],
    );
    let mut p = plan();
    p.steps[1].policy = FailurePolicy::Retry {
        attempts: 3,
        backoff_ms: 5_000,
        then: None,
    };
    let end = engine(dir.path(), &fake).start(p).await.unwrap();
    assert_eq!(end.status, RunStatus::Succeeded);
    assert_eq!(fake.runs_of("2.api.image"), 3);
    // a probed step is probed before each retry
    assert_eq!(
        fake.calls()
            .iter()
            .filter(|c| *c == "probe:2.api.image")
            .count(),
        2
    );
    let rec = load_run(dir.path(), &end.run_id).unwrap();
    assert_eq!(rec.steps[1].attempts, 3);
    assert_eq!(rec.steps[1].state, StepState::Succeeded);
    let retries: Vec<_> = rec
        .events
        .iter()
        .filter_map(|e| {
            if let Event::StepRetry {
                attempt,
                next_attempt,
                backoff_ms,
                ..
            } = &e.event
            {
                Some((*attempt, *next_attempt, *backoff_ms))
            } else {
                None
            }
        })
        .collect();
    assert_eq!(retries, [(1, 2, 5_000), (2, 3, 5_000)]);
}

#[tokio::test(start_paused = true)]
async fn a_retry_finds_the_step_done_by_the_probe() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    fake.script("2.api.image", [Script::Fail { retryable: true }]);
    fake.probe_says(
        "2.api.image",
        Probe::Done {
            detail: "api on v2025.07-stable".into(),
        },
    );
    let mut p = plan();
    p.steps[1].policy = FailurePolicy::Retry {
        attempts: 3,
        backoff_ms: 10,
        then: None,
    };
    let end = engine(dir.path(), &fake).start(p).await.unwrap();
    assert_eq!(end.status, RunStatus::Succeeded);
    assert_eq!(fake.runs_of("2.api.image"), 1);
    assert_eq!(
        states(dir.path(), &end.run_id)[1],
        ("2.api.image".into(), StepState::AlreadyDone, 1)
    );
}

#[tokio::test]
async fn a_failure_stops_the_run_and_says_where_and_what_next() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    fake.script("2.worker.image", [Script::Fail { retryable: false }]);
    let mut e = engine(dir.path(), &fake);
    let end = e.start(plan()).await.unwrap();
    assert_eq!(
        end.status,
        RunStatus::Failed {
            step: "2.worker.image".into(),
            error: "2.worker.image is not healthy".into()
        }
    );
    assert!(
        end.next.starts_with("stopped at step 2.worker.image (Phase 2 of 5: service rollback): 2.worker.image is not healthy."),
        "{}",
        end.next
    );
    assert!(
        end.next
            .contains(&format!("`xorbctl resume {}`", end.run_id)),
        "{}",
        end.next
    );
    assert_eq!(
        fake.runs_of("2.control-plane.remove"),
        0,
        "nothing after the failed step runs"
    );
    let log = std::fs::read_to_string(&end.log_file).unwrap();
    assert!(
        log.contains("Rollback stopped: failed at step 2.worker.image"),
        "{log}"
    );

    // fixed: resume continues at the failed step (probed: not done → run again) and finishes
    let end2 = e
        .resume(&end.run_id, ResumeOptions::default())
        .await
        .unwrap();
    assert_eq!(end2.status, RunStatus::Succeeded);
    assert_eq!(
        end2.log_file, end.log_file,
        "a resumed run appends to its log file"
    );
    assert_eq!(fake.runs_of("1.capture"), 1);
    assert_eq!(fake.runs_of("2.api.image"), 1);
    assert_eq!(fake.runs_of("2.worker.image"), 2);
    let s = states(dir.path(), &end.run_id);
    assert_eq!(s[2], ("2.worker.image".into(), StepState::Succeeded, 2));
    let log = std::fs::read_to_string(&end.log_file).unwrap();
    assert!(log.contains("Resuming rollback run"), "{log}");
}

#[tokio::test(start_paused = true)]
async fn exhausted_retries_run_the_emergency_procedure() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    fake.script(
        "2.worker.image",
        [
            Script::Fail { retryable: true },
            Script::Fail { retryable: true },
        ],
    );
    let mut p = plan();
    p.steps[2].policy = FailurePolicy::Retry {
        attempts: 2,
        backoff_ms: 100,
        then: Some(EmergencyProcedure::CascadePrevention),
    };
    let end = engine(dir.path(), &fake).start(p).await.unwrap();
    match &end.status {
        RunStatus::EmergencyStopped {
            step,
            procedure,
            emergency_ok,
            ..
        } => {
            assert_eq!(step, "2.worker.image");
            assert_eq!(*procedure, EmergencyProcedure::CascadePrevention);
            assert!(*emergency_ok);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        fake.calls()
            .contains(&"emergency:cascade prevention".to_string())
    );
    assert!(end.next.contains("emergency mode"), "{}", end.next);
    // What the runner reported doing, not the runbook's description of what the procedure aims at.
    assert!(
        end.next.contains("(cascade prevention applied)")
            && !end.next.contains("CIRCUIT_BREAKER_ENABLED=true"),
        "{}",
        end.next
    );
}

#[tokio::test]
async fn emergency_policy_runs_at_once_and_reports_its_own_failure() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake {
        emergency_fails: true,
        ..Fake::default()
    };
    fake.script(
        "2.control-plane.remove",
        [Script::Error(StepError::fatal("docker rm failed"))],
    );
    let mut p = plan();
    p.steps[3].policy = FailurePolicy::Emergency {
        procedure: EmergencyProcedure::MinimalService,
    };
    let end = engine(dir.path(), &fake).start(p).await.unwrap();
    assert!(
        matches!(&end.status, RunStatus::EmergencyStopped { emergency_ok: false, error, .. } if error == "docker rm failed"),
        "{:?}",
        end.status
    );
    assert_eq!(fake.runs_of("2.control-plane.remove"), 1);
    assert!(end.next.contains("FAILED too"), "{}", end.next);
}

#[tokio::test(start_paused = true)]
async fn a_step_that_runs_out_of_time_fails_with_its_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    fake.script("2.api.image", [Script::Hang]);
    let mut p = plan();
    p.steps[1].timeout_secs = 300;
    let end = engine(dir.path(), &fake).start(p).await.unwrap();
    assert_eq!(
        end.status,
        RunStatus::Failed {
            step: "2.api.image".into(),
            error: "did not finish within its timeout of 300 s".into()
        }
    );
}

/// Starts a run whose step `hang_at` never returns and drops the engine future while that step is in flight:
/// exactly what a crash leaves in the journal (intent without outcome). (Time is paused: the 60 s pass at once,
/// and before the step's own 300 s timeout.)
async fn crash_in_flight(dir: &Path, fake: &Fake, p: Plan, hang_at: &str) -> String {
    fake.script(hang_at, [Script::Hang]);
    let mut e = engine(dir, fake);
    let r = tokio::time::timeout(Duration::from_secs(60), e.start(p)).await;
    assert!(r.is_err(), "the run should still be in flight");
    let runs = list_runs(dir).unwrap();
    assert!(
        runs[0].interrupted,
        "journaled as running with no process: interrupted"
    );
    let id = runs[0].run.id.clone();
    let s = states(dir, &id);
    let i = s.iter().position(|(id, ..)| id == hang_at).unwrap();
    assert_eq!(s[i].1, StepState::InFlight);
    id
}

#[tokio::test(start_paused = true)]
async fn resume_records_an_in_flight_step_found_done_without_repeating_it() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    let id = crash_in_flight(dir.path(), &fake, plan(), "2.api.image").await;
    fake.probe_says(
        "2.api.image",
        Probe::Done {
            detail: "api on v2025.07-stable".into(),
        },
    );
    let end = engine(dir.path(), &fake)
        .resume(&id, ResumeOptions::default())
        .await
        .unwrap();
    assert_eq!(end.status, RunStatus::Succeeded);
    assert_eq!(fake.runs_of("2.api.image"), 1, "only the run that hung");
    let rec = load_run(dir.path(), &id).unwrap();
    assert_eq!(rec.steps[1].state, StepState::AlreadyDone);
    assert_eq!(
        rec.steps[1].outcome,
        Some(StepOutcome::AlreadyDone {
            detail: "found done by the probe: api on v2025.07-stable".into()
        })
    );
}

#[tokio::test(start_paused = true)]
async fn resume_reruns_a_probed_step_found_not_done() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    let id = crash_in_flight(dir.path(), &fake, plan(), "2.worker.image").await;
    let end = engine(dir.path(), &fake)
        .resume(&id, ResumeOptions::default())
        .await
        .unwrap();
    assert_eq!(end.status, RunStatus::Succeeded);
    assert_eq!(fake.runs_of("2.worker.image"), 2);
    assert_eq!(
        states(dir.path(), &id)[2],
        ("2.worker.image".into(), StepState::Succeeded, 2)
    );
}

#[tokio::test(start_paused = true)]
async fn resume_reruns_an_idempotent_step_even_when_the_probe_cannot_tell() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    let id = crash_in_flight(dir.path(), &fake, plan(), "1.capture").await;
    fake.probe_says(
        "1.capture",
        Probe::Unknown {
            why: "no probe".into(),
        },
    );
    let end = engine(dir.path(), &fake)
        .resume(&id, ResumeOptions::default())
        .await
        .unwrap();
    assert_eq!(end.status, RunStatus::Succeeded);
    assert_eq!(fake.runs_of("1.capture"), 2);
}

#[tokio::test(start_paused = true)]
async fn resume_waits_for_a_person_when_a_probed_step_cannot_be_probed() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    let id = crash_in_flight(dir.path(), &fake, plan(), "2.api.image").await;
    fake.probe_says(
        "2.api.image",
        Probe::Unknown {
            why: "api does not answer".into(),
        },
    );
    let mut e = engine(dir.path(), &fake);
    let end = e.resume(&id, ResumeOptions::default()).await.unwrap();
    assert!(
        matches!(&end.status, RunStatus::WaitingForConfirmation { step, reason } if step == "2.api.image" && reason.contains("api does not answer")),
        "{:?}",
        end.status
    );
    assert!(
        end.next
            .contains(&format!("xorbctl resume {id} --confirm 2.api.image")),
        "{}",
        end.next
    );
    assert_eq!(fake.runs_of("2.api.image"), 1);

    let end = e
        .resume(
            &id,
            ResumeOptions::default().confirm("2.api.image", Confirmation::Rerun),
        )
        .await
        .unwrap();
    assert_eq!(end.status, RunStatus::Succeeded);
    assert_eq!(fake.runs_of("2.api.image"), 2);
    let rec = load_run(dir.path(), &id).unwrap();
    assert!(rec.events.iter().any(|e| matches!(&e.event, Event::ConfirmationUsed { step, confirmation: Confirmation::Rerun } if step == "2.api.image")));
}

#[tokio::test(start_paused = true)]
async fn a_not_repeatable_step_in_flight_needs_confirmation_and_can_be_marked_done() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    let id = crash_in_flight(dir.path(), &fake, plan(), "2.control-plane.remove").await;
    let mut e = engine(dir.path(), &fake);
    let end = e.resume(&id, ResumeOptions::default()).await.unwrap();
    assert!(
        matches!(&end.status, RunStatus::WaitingForConfirmation { step, reason } if step == "2.control-plane.remove" && reason.contains("not repeatable")),
        "{:?}",
        end.status
    );
    let end = e
        .resume(
            &id,
            ResumeOptions::default().confirm("2.control-plane.remove", Confirmation::MarkDone),
        )
        .await
        .unwrap();
    assert_eq!(end.status, RunStatus::Succeeded);
    assert_eq!(
        fake.runs_of("2.control-plane.remove"),
        1,
        "marked done, not run again"
    );
    assert_eq!(states(dir.path(), &id)[3].1, StepState::AlreadyDone);
}

#[tokio::test]
async fn a_not_repeatable_step_that_failed_cleanly_runs_again_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    fake.script("2.control-plane.remove", [Script::Fail { retryable: true }]);
    let mut e = engine(dir.path(), &fake);
    let end = e.start(plan()).await.unwrap();
    assert_eq!(end.status.kind(), "failed");
    let end = e
        .resume(&end.run_id, ResumeOptions::default())
        .await
        .unwrap();
    assert_eq!(end.status, RunStatus::Succeeded);
    assert_eq!(fake.runs_of("2.control-plane.remove"), 2);
}

#[tokio::test]
async fn a_second_rollback_is_refused_while_the_lock_is_held() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    let held = RollbackLock::acquire(dir.path(), Some("20250814-101500-abcd")).unwrap();
    let err = engine(dir.path(), &fake).start(plan()).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, EngineError::Lock(LockError::Held { .. })),
        "{msg}"
    );
    assert!(
        msg.contains("another rollback is in progress: run 20250814-101500-abcd"),
        "{msg}"
    );
    assert!(fake.calls().is_empty(), "refused before touching anything");
    assert!(
        list_runs(dir.path()).unwrap().is_empty(),
        "nothing journaled"
    );
    drop(held);
    assert!(
        engine(dir.path(), &fake)
            .start(plan())
            .await
            .unwrap()
            .succeeded()
    );
}

#[tokio::test]
async fn an_abort_from_elsewhere_stops_the_run_at_the_next_step() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    fake.script("2.api.image", [Script::AbortRun(dir.path().to_path_buf())]);
    let mut e = engine(dir.path(), &fake);
    let end = e.start(plan()).await.unwrap();
    assert_eq!(
        end.status,
        RunStatus::Aborted {
            by: "alice".into(),
            step: Some("2.api.image".into())
        }
    );
    assert_eq!(fake.runs_of("2.worker.image"), 0);
    let s = states(dir.path(), &end.run_id);
    assert_eq!(
        s[1].1,
        StepState::Succeeded,
        "the step in progress was not interrupted"
    );
    let rec = load_run(dir.path(), &end.run_id).unwrap();
    assert_eq!(rec.events.last().unwrap().event.kind(), "run_finished");
    assert!(matches!(
        e.resume(&end.run_id, ResumeOptions::default()).await,
        Err(EngineError::RunAborted { .. })
    ));
}

#[tokio::test]
async fn abort_of_a_stopped_run_is_final() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    fake.script("2.worker.image", [Script::Fail { retryable: false }]);
    let end = engine(dir.path(), &fake).start(plan()).await.unwrap();
    // a unique prefix of the id is enough
    let r = abort_run(dir.path(), &end.run_id[..12], "bob").unwrap();
    assert_eq!(r.run_id, end.run_id);
    assert!(r.aborted);
    assert_eq!(
        r.status,
        RunStatus::Aborted {
            by: "bob".into(),
            step: Some("2.worker.image".into())
        }
    );
    assert_eq!(r.running_pid, None);
    assert!(!abort_run(dir.path(), &end.run_id, "carol").unwrap().aborted);
}

#[tokio::test]
async fn bad_input_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    let mut e = engine(dir.path(), &fake);
    let dup = plan().with_step(image("api", Safety::Probed));
    let err = e.start(dup).await.unwrap_err();
    assert!(err.to_string().contains("appears twice"), "{err}");
    assert!(list_runs(dir.path()).unwrap().is_empty());

    fake.script("2.api.image", [Script::Fail { retryable: false }]);
    let end = e.start(plan()).await.unwrap();
    let err = e
        .resume(
            &end.run_id,
            ResumeOptions::default().confirm("9.nope", Confirmation::Rerun),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::UnknownStep { .. }), "{err}");
    let err = e
        .resume("does-not-exist", ResumeOptions::default())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("no run \"does-not-exist\""),
        "{err}"
    );
}

#[tokio::test]
async fn an_empty_plan_succeeds_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    let end = engine(dir.path(), &fake)
        .start(Plan::new("a", "b"))
        .await
        .unwrap();
    assert!(end.succeeded());
}
