//! Crash tests: the crash-test binary is killed with SIGKILL at every journal boundary in turn
//! (`XORB_CRASH_AFTER_JOURNAL_WRITES=k`) and at random moments inside steps, then resumed in fresh processes until
//! the run is done. The end state must equal an uninterrupted run's, with every side effect exactly once. The plan
//! has steps in flight together (a pair in phase 1, a pair in phase 5), and the boundary sweep runs once with each
//! of a pair finishing first, so the kills land in both interleavings.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use xorb_engine::crash::CRASH_ENV;
use xorb_engine::{RunRecord, StepState};
use xorb_model::plan::RunStatus;

const BIN: &str = env!("CARGO_BIN_EXE_xorb-engine-crashtest");
const DEADLINE: Duration = Duration::from_secs(60);

struct Dirs {
    _tmp: tempfile::TempDir,
    state: PathBuf,
    effects: PathBuf,
}

fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let effects = tmp.path().join("effects.txt");
    Dirs {
        _tmp: tmp,
        state,
        effects,
    }
}

fn spawn(d: &Dirs, args: &[&str], crash_after: Option<u64>) -> Child {
    let mut cmd = Command::new(BIN);
    cmd.arg(&d.state)
        .arg(&d.effects)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.env_remove(CRASH_ENV);
    if let Some(k) = crash_after {
        cmd.env(CRASH_ENV, k.to_string());
    }
    cmd.spawn().unwrap()
}

/// Polls until the child exits, failing the test past the deadline.
fn wait(child: &mut Child) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("crash-test process did not finish within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn output(child: Child) -> (ExitStatus, String, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn latest(d: &Dirs) -> Option<RunRecord> {
    if !d.state.join("journal.sqlite").exists() {
        return None;
    }
    let runs = xorb_engine::list_runs(&d.state).unwrap();
    let id = &runs.first()?.run.id;
    Some(xorb_engine::load_run(&d.state, id).unwrap())
}

fn effects(d: &Dirs) -> Vec<String> {
    std::fs::read_to_string(&d.effects)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// What must be equal between an interrupted-and-resumed run and an uninterrupted one.
fn normalized(rec: &RunRecord) -> (RunStatus, Vec<(String, bool)>) {
    (
        rec.status.clone(),
        rec.steps
            .iter()
            .map(|s| (s.spec.id.clone(), s.state.is_done()))
            .collect(),
    )
}

/// Runs `start` (with `extra` flags) without interruption and returns (journal writes, record, effects).
fn reference_with(extra: &[&str]) -> (u64, RunRecord, Vec<String>) {
    let d = dirs();
    let mut args = vec!["start"];
    args.extend_from_slice(extra);
    let (status, stdout, stderr) = output(spawn(&d, &args, None));
    assert!(status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["status"]["state"], "succeeded", "{stdout}");
    let writes = v["journal_writes"].as_u64().unwrap();
    let rec = latest(&d).unwrap();
    assert!(
        rec.steps
            .iter()
            .all(|s| s.state == StepState::Succeeded && s.attempts == 1)
    );
    (writes, rec, effects(&d))
}

fn reference() -> (u64, RunRecord, Vec<String>) {
    reference_with(&[])
}

/// The order in which the journal saw steps start (`started`) or finish.
fn journal_order(rec: &RunRecord, finished: bool) -> Vec<String> {
    rec.events
        .iter()
        .filter_map(|e| match &e.event {
            xorb_engine::Event::StepStarted { step, .. } if !finished => Some(step.clone()),
            xorb_engine::Event::StepFinished { step, .. } if finished => Some(step.clone()),
            _ => None,
        })
        .collect()
}

/// Drives the run to completion as an operator would: resume; when the engine waits for a confirmation, look at
/// the live state (the effects file) and confirm a re-run or mark the step done.
/// Returns (processes started, processes killed).
fn resume_until_done(
    d: &Dirs,
    extra: &[&str],
    mut kill_after: impl FnMut() -> Option<Duration>,
) -> (usize, usize) {
    let mut confirm: Vec<String> = Vec::new();
    let mut killed = 0;
    for round in 1..=60 {
        let rec = latest(d);
        if rec
            .as_ref()
            .is_some_and(|r| r.status == RunStatus::Succeeded)
        {
            return (round - 1, killed);
        }
        let mut args: Vec<&str> = vec![if rec.is_none() { "start" } else { "resume" }];
        args.extend_from_slice(extra);
        for c in &confirm {
            args.push(c);
        }
        let mut child = spawn(d, &args, None);
        if let Some(after) = kill_after() {
            std::thread::sleep(after); // the random moment of the kill (not a synchronisation)
            let _ = child.kill();
        }
        let status = wait(&mut child);
        let (_, stdout, stderr) = output(child);
        if status.signal() == Some(9) {
            killed += 1;
            continue;
        }
        assert!(status.success(), "resume failed: {stderr}");
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        confirm.clear();
        if v["status"]["state"] == "waiting_for_confirmation" {
            let step = v["status"]["step"].as_str().unwrap().to_string();
            let done = effects(d).contains(&step);
            confirm.push(if done {
                "--mark-done".into()
            } else {
                "--confirm".into()
            });
            confirm.push(step);
        } else {
            assert!(
                v["status"]["state"] == "succeeded",
                "unexpected end: {stdout}"
            );
        }
    }
    panic!("the run did not complete after 60 resumes");
}

fn assert_same_as_reference(d: &Dirs, reference: &RunRecord, ref_effects: &[String], label: &str) {
    let rec = latest(d).unwrap();
    assert_eq!(
        normalized(&rec),
        normalized(reference),
        "{label}: journal differs from an uninterrupted run"
    );
    assert_eq!(rec.plan, reference.plan, "{label}");
    // Every side effect exactly once, and each after those of the steps it waits for (steps in flight together
    // may leave theirs in either order).
    let got = effects(d);
    let (mut a, mut b) = (got.clone(), ref_effects.to_vec());
    a.sort();
    b.sort();
    assert_eq!(a, b, "{label}: every side effect exactly once");
    let waits = xorb_model::access::waits_for(&rec.plan.steps);
    for (j, step) in rec.plan.steps.iter().enumerate() {
        let at = |id: &str| got.iter().position(|e| e == id).unwrap();
        for &i in &waits[j] {
            let before = &rec.plan.steps[i].id;
            assert!(
                at(before) < at(&step.id),
                "{label}: {} before {before}, which it waits for: {got:?}",
                step.id
            );
        }
    }
    let started = rec
        .events
        .iter()
        .filter(|e| e.event.kind() == "run_started")
        .count();
    assert_eq!(started, 1, "{label}: one run");
    assert!(matches!(
        &rec.events.last().unwrap().event,
        xorb_engine::Event::RunFinished {
            status: RunStatus::Succeeded,
            ..
        }
    ));
    // the lock was released by the kernel after each kill: nobody holds it now
    assert!(
        xorb_engine::list_runs(&d.state)
            .unwrap()
            .iter()
            .all(|r| !r.active)
    );
}

#[test]
fn sigkill_at_every_journal_boundary_then_resume() {
    // Each configuration holds back one step of each pair, so the other finishes first: both interleavings.
    let configs: [&[&str]; 2] = [
        &["--slow", "1.verify-target", "--slow", "5.loss"],
        &["--slow", "1.capture", "--slow", "5.health"],
    ];
    let mut orders = Vec::new();
    for extra in configs {
        let (writes, reference, ref_effects) = reference_with(extra);
        assert_eq!(ref_effects.len(), 7);
        // 1 run + 3 phases + 7 × (intent + outcome) + 1 finish
        assert_eq!(writes, 19, "journal writes of an uninterrupted run");
        // The pairs ran together: both started before either finished.
        let events: Vec<String> = reference
            .events
            .iter()
            .map(|e| match &e.event {
                xorb_engine::Event::StepStarted { step, .. } => format!("start {step}"),
                xorb_engine::Event::StepFinished { step, .. } => format!("end {step}"),
                other => other.kind().to_string(),
            })
            .collect();
        let at = |e: &str| events.iter().position(|x| x == e).unwrap();
        for (x, y) in [("1.capture", "1.verify-target"), ("5.health", "5.loss")] {
            assert!(
                at(&format!("start {y}")) < at(&format!("end {x}"))
                    && at(&format!("start {x}")) < at(&format!("end {y}")),
                "{x} and {y} in flight together: {events:?}"
            );
        }
        orders.push(journal_order(&reference, true));
        let mut confirmations = 0;
        for k in 1..=writes {
            let d = dirs();
            let mut args = vec!["start"];
            args.extend_from_slice(extra);
            let mut child = spawn(&d, &args, Some(k));
            let status = wait(&mut child);
            let (_, _, stderr) = output(child);
            assert_eq!(
                status.signal(),
                Some(9),
                "k={k}: the hook must SIGKILL the process ({stderr})"
            );
            let rec = latest(&d).expect("the first write creates the run");
            let journaled = rec.events.len() as u64;
            assert_eq!(
                journaled, k,
                "k={k}: exactly k writes (one event each) reached the journal"
            );
            let (rounds, _) = resume_until_done(&d, extra, || None);
            assert!(rounds <= 2, "k={k}: {rounds} resumes");
            if rounds == 2 {
                confirmations += 1;
            }
            assert_same_as_reference(&d, &reference, &ref_effects, &format!("{extra:?} k={k}"));
        }
        // killed right after the intent of the not-repeatable step, resume must have asked a person once
        assert_eq!(confirmations, 1, "{extra:?}");
    }
    assert_ne!(
        orders[0], orders[1],
        "the two configurations finish the pairs in opposite orders"
    );
}

/// A small deterministic PRNG (xorshift64*), seeded per test run and printed for reproduction.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[test]
fn sigkill_at_random_moments_inside_steps_then_resume() {
    let (_, reference, ref_effects) = reference();
    let seed = std::env::var("XORB_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("random kill seed: {seed} (XORB_CRASH_SEED={seed} to replay)");
    let mut rng = Rng(seed);
    let (mut processes, mut kills) = (0, 0);
    for iteration in 0..12 {
        let d = dirs();
        let mut remaining_kills = 1 + rng.next() % 4;
        let (rounds, killed) = resume_until_done(&d, &["--sleep-ms", "20"], || {
            if remaining_kills == 0 {
                return None;
            }
            remaining_kills -= 1;
            // 7 steps of 20 to 40 ms, two pairs together, + process start: kill somewhere in the first ~160 ms
            Some(Duration::from_micros(rng.next() % 160_000))
        });
        processes += rounds;
        kills += killed;
        assert_same_as_reference(
            &d,
            &reference,
            &ref_effects,
            &format!("seed {seed}, iteration {iteration}"),
        );
    }
    eprintln!("{processes} processes, {kills} of them killed by SIGKILL at a random moment");
    assert!(
        kills >= 6,
        "too few kills landed ({kills}): the random window is off"
    );
}

#[test]
fn sigkill_releases_the_lock_and_a_second_rollback_is_refused_while_one_runs() {
    let d = dirs();
    let mut first = spawn(&d, &["start", "--sleep-ms", "2000"], None);
    // poll until the first process holds the lock for its run
    let start = Instant::now();
    let holder = loop {
        if let Some(h) = xorb_engine::lock::current_holder(&d.state).unwrap()
            && h.run_id.is_some()
        {
            break h;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the first rollback never took the lock"
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    assert_eq!(holder.pid, Some(first.id()));
    let second = spawn(&d, &["start"], None);
    let (status, _, stderr) = output(second);
    assert_eq!(status.code(), Some(2));
    assert!(
        stderr.contains("another rollback is in progress"),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("pid {}", first.id())), "{stderr}");

    first.kill().unwrap();
    let status = wait(&mut first);
    assert_eq!(status.signal(), Some(9));
    assert_eq!(
        xorb_engine::lock::current_holder(&d.state).unwrap(),
        None,
        "the kernel released the lock"
    );
    let runs = xorb_engine::list_runs(&d.state).unwrap();
    assert!(runs[0].interrupted);
    resume_until_done(&d, &[], || None);
    assert_eq!(effects(&d).len(), 7);
}
