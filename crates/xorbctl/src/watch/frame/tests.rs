//! Frames of one small run in each state a person can find it in.

use chrono::{DateTime, TimeZone, Utc};
use xorb_engine::{Event, EventRecord, RunRecord, StepRecord, StepState};
use xorb_model::plan::{Action, Phase, Plan, RunStatus, Safety, StepOutcome, StepSpec};

use super::*;

fn t(s: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 30, 11, 0, 0).unwrap() + chrono::Duration::seconds(s)
}

fn plan() -> Plan {
    Plan::new("v2025.08-rc1", "v2025.07-stable")
        .with_step(StepSpec::new(
            "1.state.capture",
            Phase::Assessment,
            "Capture the live state",
            Action::CaptureState,
            Safety::Idempotent,
        ))
        .with_step(StepSpec::new(
            "2.api.image",
            Phase::Services,
            "Roll api back to v2025.07-stable",
            Action::SetImage {
                service: "api".into(),
                image: "xorb/api:v2025.07-stable".into(),
                release: "v2025.07-stable".into(),
            },
            Safety::Idempotent,
        ))
        .with_step(StepSpec::new(
            "5.health",
            Phase::Verification,
            "Every service is healthy",
            Action::Check {
                name: "health".into(),
                params: None,
            },
            Safety::Idempotent,
        ))
}

fn ev(seq: i64, at: i64, event: Event) -> EventRecord {
    EventRecord {
        seq,
        run_id: "20261130-110000-ab12".into(),
        at: t(at),
        event,
    }
}

/// The run with step 1 done (took 4 s), started at t(0).
fn base() -> RunRecord {
    let plan = plan();
    let steps = plan
        .steps
        .iter()
        .enumerate()
        .map(|(index, spec)| StepRecord {
            index,
            spec: spec.clone(),
            state: StepState::Pending,
            attempts: 0,
            started_at: None,
            finished_at: None,
            outcome: None,
        })
        .collect();
    let mut rec = RunRecord {
        id: "20261130-110000-ab12".into(),
        plan,
        status: RunStatus::Running,
        created_at: t(0),
        updated_at: t(0),
        finished_at: None,
        run_dir: "/tmp/runs/x".into(),
        steps,
        events: vec![],
    };
    finish(&mut rec, 0, 1, 5, 1);
    rec
}

fn start(rec: &mut RunRecord, i: usize, at: i64, seq: i64) {
    let s = &mut rec.steps[i];
    s.state = StepState::InFlight;
    s.attempts += 1;
    s.started_at = Some(t(at));
    let e = Event::StepStarted {
        index: i,
        step: s.spec.id.clone(),
        title: s.spec.title.clone(),
        attempt: s.attempts,
    };
    rec.events.push(ev(seq, at, e));
}

fn finish(rec: &mut RunRecord, i: usize, from: i64, to: i64, seq: i64) {
    start(rec, i, from, seq);
    let s = &mut rec.steps[i];
    s.state = StepState::Succeeded;
    s.finished_at = Some(t(to));
    let outcome = StepOutcome::succeeded(String::new());
    s.outcome = Some(outcome.clone());
    let e = Event::StepFinished {
        index: i,
        step: s.spec.id.clone(),
        attempt: s.attempts,
        outcome,
        duration_ms: ((to - from) * 1000) as u64,
    };
    rec.events.push(ev(seq + 1, to, e));
}

fn text(f: &Frame) -> String {
    format!("{}\n--- change line ---\n{}", f.lines.join("\n"), f.change)
}

#[test]
fn a_step_waiting_for_its_rollout() {
    let mut rec = base();
    start(&mut rec, 1, 6, 3);
    insta::assert_snapshot!(text(&render(&rec, Executor::Alive, t(14))));
}

#[test]
fn a_retry_backing_off() {
    let mut rec = base();
    start(&mut rec, 1, 6, 3);
    rec.events.push(ev(
        4,
        10,
        Event::StepRetry {
            step: "2.api.image".into(),
            attempt: 1,
            next_attempt: 2,
            backoff_ms: 8000,
            error: "api answered 503".into(),
        },
    ));
    let f = render(&rec, Executor::Alive, t(13));
    insta::assert_snapshot!(text(&f));
    // The countdown moves the view, not the change line.
    assert_eq!(f.change, render(&rec, Executor::Alive, t(15)).change);
    assert_ne!(f.lines, render(&rec, Executor::Alive, t(15)).lines);
}

#[test]
fn the_approval_gate() {
    let mut rec = base();
    // The gate stops a run before its first step.
    rec.steps[0] = StepRecord {
        state: StepState::Pending,
        attempts: 0,
        started_at: None,
        finished_at: None,
        outcome: None,
        ..rec.steps[0].clone()
    };
    rec.events.clear();
    rec.status = RunStatus::WaitingForApproval {
        severity: "P1".into(),
        missing: "one approval by incident-commander".into(),
    };
    rec.finished_at = Some(t(5));
    let f = render(&rec, Executor::Gone, t(60));
    insta::assert_snapshot!(text(&f));
    assert_eq!(exit_code(&rec.status), Some(9));
}

#[test]
fn a_persons_confirmation() {
    let mut rec = base();
    rec.steps[1].state = StepState::InFlight;
    rec.steps[1].attempts = 1;
    rec.steps[1].started_at = Some(t(6));
    rec.status = RunStatus::WaitingForConfirmation {
        step: "2.api.image".into(),
        reason: "the probe cannot tell whether api runs the target".into(),
    };
    rec.finished_at = Some(t(9));
    let f = render(&rec, Executor::Gone, t(30));
    insta::assert_snapshot!(text(&f));
    assert_eq!(exit_code(&rec.status), Some(7));
}

#[test]
fn an_interrupted_run_says_nobody_executes_it() {
    let mut rec = base();
    start(&mut rec, 1, 6, 3);
    let f = render(&rec, Executor::Gone, t(20));
    assert!(
        f.lines
            .iter()
            .any(|l| l.starts_with("Waiting for: nobody") && l.contains("xorbctl resume")),
        "{}",
        text(&f)
    );
    assert_eq!(exit_code(&rec.status), None);
}

#[test]
fn a_failed_run() {
    let mut rec = base();
    start(&mut rec, 1, 6, 3);
    rec.steps[1].state = StepState::Failed;
    rec.steps[1].finished_at = Some(t(16));
    rec.status = RunStatus::Failed {
        step: "2.api.image".into(),
        error: "api did not report v2025.07-stable within 10s".into(),
    };
    rec.finished_at = Some(t(16));
    let f = render(&rec, Executor::Gone, t(100));
    insta::assert_snapshot!(text(&f));
    assert_eq!(exit_code(&rec.status), Some(6));
}

#[test]
fn a_succeeded_run() {
    let mut rec = base();
    finish(&mut rec, 1, 6, 20, 3);
    finish(&mut rec, 2, 21, 22, 5);
    rec.status = RunStatus::Succeeded;
    rec.finished_at = Some(t(23));
    let f = render(&rec, Executor::Gone, t(500));
    insta::assert_snapshot!(text(&f));
    assert_eq!(exit_code(&rec.status), Some(0));
}

#[test]
fn durations_read_in_whole_seconds() {
    assert_eq!(secs(-3), "0s");
    assert_eq!(secs(59), "59s");
    assert_eq!(secs(62), "1m 02s");
    assert_eq!(secs(3720), "1h 02m");
}

#[test]
fn steps_in_flight_together_are_named_beside_the_current_one() {
    let mut rec = base();
    start(&mut rec, 1, 6, 3);
    let alone = text(&render(&rec, Executor::Alive, t(8)));
    assert!(!alone.contains("in flight with it"), "{alone}");
    start(&mut rec, 2, 7, 4);
    let both = text(&render(&rec, Executor::Alive, t(8)));
    assert!(
        both.contains("Current step: 2.api.image") && both.contains("in flight with it: 5.health"),
        "{both}"
    );
}
