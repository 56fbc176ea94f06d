//! Test binary for the crash tests (`tests/crash.rs`); not part of xorbctl.
//!
//! Runs a fixed plan of 7 steps whose target appends one line per side effect to an effects file and whose probe
//! looks for that line. Kill it (SIGKILL, or `XORB_CRASH_AFTER_JOURNAL_WRITES=N`) anywhere, resume it, and the
//! effects file must end with every step exactly once. Two pairs of steps run at the same time (phases 1 and 5);
//! `--slow STEP` holds a step 40 ms before its effect, so a test chooses which of a pair finishes first, and
//! `--sleep-ms` varies each step's time by process, so random kills find the pairs in every order.
//!
//! ```text
//! xorb-engine-crashtest STATE_DIR EFFECTS_FILE start  [--sleep-ms N] [--slow STEP]...
//! xorb-engine-crashtest STATE_DIR EFFECTS_FILE resume [--sleep-ms N] [--slow STEP]... [--confirm STEP]...
//!                                                     [--mark-done STEP]...
//! ```
//! Prints one JSON line: `{"run_id", "status", "journal_writes"}`; exits 0 when the engine returned, 2 on an
//! engine error.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use xorb_engine::{
    Confirmation, Engine, NullSink, Probe, ResumeOptions, StepContext, StepError, StepRunner,
};
use xorb_model::access::{Access, Resource};
use xorb_model::plan::{Action, EmergencyProcedure, Phase, Plan, Safety, StepOutcome, StepSpec};

struct EffectsTarget {
    effects: PathBuf,
    sleep_ms: u64,
    slow: Vec<String>,
}

impl EffectsTarget {
    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.effects)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl StepRunner for EffectsTarget {
    async fn probe(&self, step: &StepSpec, _ctx: &StepContext<'_>) -> Result<Probe, StepError> {
        Ok(if self.lines().contains(&step.id) {
            Probe::Done {
                detail: "effect recorded".into(),
            }
        } else {
            Probe::NotDone
        })
    }

    async fn run(&self, step: &StepSpec, _ctx: &StepContext<'_>) -> Result<StepOutcome, StepError> {
        // Each step's time differs by step and by process (1 to 2 times --sleep-ms), so steps in flight together
        // finish in either order from one process to the next.
        let spread = step.id.bytes().fold(u64::from(std::process::id()), |h, b| {
            h.wrapping_mul(31).wrapping_add(u64::from(b))
        });
        let sleep_ms = self.sleep_ms + self.sleep_ms * (spread % 4) / 4;
        if self.slow.contains(&step.id) {
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        // Half of the step's time before its side effect, half after: a random kill lands on either side.
        tokio::time::sleep(Duration::from_millis(sleep_ms / 2)).await;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.effects)
            .map_err(|e| StepError::fatal(format!("cannot open the effects file: {e}")))?;
        // One write(2) of one short line: it is in the file or not, whatever kills the process.
        f.write_all(format!("{}\n", step.id).as_bytes())
            .map_err(|e| StepError::fatal(e.to_string()))?;
        tokio::time::sleep(Duration::from_millis(sleep_ms - sleep_ms / 2)).await;
        Ok(StepOutcome::succeeded(format!("{} applied", step.id)))
    }

    async fn emergency(
        &self,
        procedure: EmergencyProcedure,
        _ctx: &StepContext<'_>,
    ) -> Result<String, StepError> {
        Ok(format!("{} (test target: nothing to do)", procedure.name()))
    }
}

/// The crash-test plan: the runbook's shape, every safety class, and steps that run together (the capture
/// beside the target's verification, two phase-5 checks beside each other).
fn crash_plan() -> Plan {
    let mut plan = plan_steps();
    for s in &mut plan.steps {
        s.access = Some(match s.id.as_str() {
            "1.capture" => Access::reads(&[Resource::Services]),
            "1.verify-target" => Access::default(),
            "5.health" => Access::reads(&[Resource::Services]),
            "5.loss" => Access::reads(&[Resource::Database]),
            _ => Access::writes(&[Resource::Services], &[]),
        });
    }
    plan
}

fn plan_steps() -> Plan {
    let image = |service: &str| {
        StepSpec::new(
            format!("2.{service}.image"),
            Phase::Services,
            format!("Roll {service} back"),
            Action::SetImage {
                service: service.into(),
                image: format!("xorb/{service}:v2025.07-stable"),
                release: "v2025.07-stable".into(),
            },
            Safety::Probed,
        )
    };
    Plan::new("v2025.08-rc1", "v2025.07-stable")
        .with_step(StepSpec::new(
            "1.capture",
            Phase::Assessment,
            "Capture state",
            Action::CaptureState,
            Safety::Idempotent,
        ))
        .with_step(StepSpec::new(
            "1.verify-target",
            Phase::Assessment,
            "Verify target",
            Action::VerifyTargetAvailable,
            Safety::Idempotent,
        ))
        .with_step(image("api"))
        .with_step(image("worker"))
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
        .with_step(StepSpec::new(
            "5.loss",
            Phase::Verification,
            "Loss",
            Action::Check {
                name: "loss".into(),
                params: None,
            },
            Safety::Idempotent,
        ))
}

fn usage() -> ! {
    eprintln!(
        "usage: xorb-engine-crashtest STATE_DIR EFFECTS_FILE start|resume [--sleep-ms N] [--slow STEP] \
         [--confirm STEP] [--mark-done STEP]"
    );
    std::process::exit(64)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        usage();
    }
    let state_dir = PathBuf::from(&args[0]);
    let effects = PathBuf::from(&args[1]);
    let command = args[2].clone();
    let mut sleep_ms = 0;
    let mut slow = Vec::new();
    let mut options = ResumeOptions::default();
    let mut rest = args[3..].iter();
    while let Some(flag) = rest.next() {
        let value = rest.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--sleep-ms" => sleep_ms = value.parse().unwrap_or_else(|_| usage()),
            "--slow" => slow.push(value.clone()),
            "--confirm" => options = options.confirm(value, Confirmation::Rerun),
            "--mark-done" => options = options.confirm(value, Confirmation::MarkDone),
            _ => usage(),
        }
    }
    let target = EffectsTarget {
        effects,
        sleep_ms,
        slow,
    };
    let mut engine = match Engine::new(&state_dir, target, NullSink) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2)
        }
    };
    let result = match command.as_str() {
        "start" => engine.start(crash_plan()).await,
        "resume" => engine.resume("latest", options).await,
        _ => usage(),
    };
    match result {
        Ok(end) => {
            let line = serde_json::json!({
                "run_id": end.run_id,
                "status": end.status,
                "journal_writes": xorb_engine::crash::journal_writes(),
            });
            println!("{line}");
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2)
        }
    }
}
