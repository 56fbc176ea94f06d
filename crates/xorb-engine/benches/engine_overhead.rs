//! Engine overhead per journaled step: a plan of 1,000 no-op steps run by the engine (journal intent + outcome in
//! SQLite WAL with synchronous=FULL, log file line, events) against a baseline loop making the same no-op runner
//! calls without any journaling, measured in the same process, one after the other, several rounds.
//!
//! `cargo bench -p xorb-engine --bench engine_overhead` (set `XORB_BENCH_DIR` to put the journal on another file
//! system; `XORB_BENCH_STEPS`, `XORB_BENCH_ROUNDS` to change the sizes).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use xorb_engine::{Engine, NullSink, Probe, StepContext, StepError, StepRunner};
use xorb_model::plan::{Action, EmergencyProcedure, Phase, Plan, Safety, StepOutcome, StepSpec};

struct Noop;

impl StepRunner for Noop {
    async fn probe(&self, _step: &StepSpec, _ctx: &StepContext<'_>) -> Result<Probe, StepError> {
        Ok(Probe::NotDone)
    }
    async fn run(&self, step: &StepSpec, _ctx: &StepContext<'_>) -> Result<StepOutcome, StepError> {
        Ok(StepOutcome::succeeded(
            std::hint::black_box(step.id.len()).to_string(),
        ))
    }
    async fn emergency(
        &self,
        _p: EmergencyProcedure,
        _ctx: &StepContext<'_>,
    ) -> Result<String, StepError> {
        Ok(String::new())
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn plan(steps: usize) -> Plan {
    let mut plan = Plan::new("v2025.08-rc1", "v2025.07-stable");
    for i in 0..steps {
        let phase = Phase::ALL[i * Phase::ALL.len() / steps];
        plan.steps.push(StepSpec::new(
            format!("{}.noop.{i:04}", phase.number()),
            phase,
            "no-op",
            Action::Noop,
            Safety::Idempotent,
        ));
    }
    plan
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn us_per(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e6 / n as f64
}

/// The floor: `n` bare committed transactions (WAL, synchronous=FULL) of one small insert each, nothing else.
fn floor(base_dir: &std::path::Path, n: u64) -> Duration {
    let dir = tempfile::tempdir_in(base_dir).unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("floor.sqlite")).unwrap();
    let _: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.execute_batch("CREATE TABLE t (x INTEGER, s TEXT)")
        .unwrap();
    let t = Instant::now();
    for i in 0..n {
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        conn.execute(
            "INSERT INTO t (x, s) VALUES (?1, ?2)",
            rusqlite::params![i as i64, "x".repeat(200)],
        )
        .unwrap();
        conn.execute_batch("COMMIT").unwrap();
    }
    t.elapsed()
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let steps = env_usize("XORB_BENCH_STEPS", 1000);
    let rounds = env_usize("XORB_BENCH_ROUNDS", 5);
    let base_dir: PathBuf = std::env::var_os("XORB_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let plan = plan(steps);
    let run_dir = base_dir.join("bench-run");
    let (mut engine_times, mut baseline_times, mut floor_times) =
        (Vec::new(), Vec::new(), Vec::new());
    let mut writes = 0;

    for _ in 0..rounds {
        // baseline: the same runner calls, no journal
        let t = Instant::now();
        rt.block_on(async {
            for (index, step) in plan.steps.iter().enumerate() {
                let ctx = StepContext {
                    run_id: "bench",
                    step_id: &step.id,
                    run_dir: &run_dir,
                    from: &plan.from,
                    to: &plan.to,
                    index,
                    attempt: 1,
                };
                let out = Noop.run(step, &ctx).await.unwrap();
                std::hint::black_box(out);
            }
        });
        baseline_times.push(t.elapsed());

        // engine: a fresh state directory per round
        let dir = tempfile::tempdir_in(&base_dir).unwrap();
        let mut engine = Engine::new(dir.path(), Noop, NullSink).unwrap();
        let before = xorb_engine::crash::journal_writes();
        let t = Instant::now();
        let end = rt.block_on(engine.start(plan.clone())).unwrap();
        engine_times.push(t.elapsed());
        writes = xorb_engine::crash::journal_writes() - before;
        assert!(end.succeeded());
        floor_times.push(floor(&base_dir, writes));
    }

    let floor = median(floor_times);

    let engine = median(engine_times.clone());
    let baseline = median(baseline_times.clone());
    let overhead = engine.saturating_sub(baseline);
    println!(
        "engine overhead per journaled step ({steps} no-op steps, {rounds} rounds, median; journal in {})",
        base_dir.display()
    );
    println!(
        "  engine run          : {:>10.3} ms total, {:>9.2} µs/step ({writes} journal commits, {:.2} per step)",
        engine.as_secs_f64() * 1e3,
        us_per(engine, steps),
        writes as f64 / steps as f64
    );
    println!(
        "  baseline loop       : {:>10.3} ms total, {:>9.3} µs/step",
        baseline.as_secs_f64() * 1e3,
        us_per(baseline, steps)
    );
    println!(
        "  overhead            : {:>9.2} µs/step",
        us_per(overhead, steps)
    );
    println!(
        "  floor: {writes} bare fsync'd commits: {:>9.2} µs per step-equivalent ({:.0}% of the engine's time)",
        us_per(floor, steps),
        100.0 * floor.as_secs_f64() / engine.as_secs_f64()
    );
    println!(
        "  ratio engine/baseline: {:.0}x",
        engine.as_secs_f64() / baseline.as_secs_f64().max(1e-12)
    );
    println!(
        "  per round (engine ms): {:?}",
        engine_times
            .iter()
            .map(|d| (d.as_secs_f64() * 1e3).round())
            .collect::<Vec<_>>()
    );
}
