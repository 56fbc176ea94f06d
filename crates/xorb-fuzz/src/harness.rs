//! Runs a target over its seeds, then over mutations of them and random bytes until the time budget is spent.
//! Each input runs on a worker thread so that a panic is caught and an input that takes too long is reported
//! (with the input saved) instead of hanging the test.
//!
//! Environment: `XORB_FUZZ_SECS` (budget per target, default 3), `XORB_FUZZ_SEED` (reproduce a run; default from
//! the clock, printed), `XORB_FUZZ_INPUT_SECS` (the most one input may take, default 10: generous, a hang is
//! minutes or forever). A stack overflow aborts the whole process: the input is then in
//! `target/fuzz-crashes/<target>/current`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::mutate::mutate;
use crate::rng::Rng;

pub struct Target {
    pub name: &'static str,
    /// Real inputs: the shipped files, then `fuzz/corpus/<name>/*`.
    pub seeds: Vec<Vec<u8>>,
    /// Words worth inserting (the format's keys).
    pub dict: &'static [&'static str],
    pub run: fn(&[u8]),
}

#[derive(Debug, Clone, Copy)]
pub struct Report {
    pub seeds: usize,
    pub execs: u64,
    pub seed: u64,
    pub elapsed: Duration,
}

fn env_secs(name: &str, default: f64) -> Duration {
    let secs = std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .unwrap_or(default);
    Duration::from_secs_f64(secs.min(30.0 * 24.0 * 3600.0))
}

/// Where a failing input is written: `target/fuzz-crashes/<target>/`.
pub fn crash_dir(target: &str) -> PathBuf {
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target_dir.join("fuzz-crashes").join(target)
}

fn save(target: &str, input: &[u8]) -> PathBuf {
    // FNV-1a: a stable name, so the same crash found twice is one file.
    let h = input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    let dir = crash_dir(target);
    let path = dir.join(format!("{h:016x}"));
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(&path, input);
    path
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string panic)".into())
}

/// Fuzzes `t` for the budget; panics (failing the test) on the first input that panics or takes too long.
pub fn fuzz(t: &Target) -> Report {
    let budget = env_secs("XORB_FUZZ_SECS", 3.0);
    let per_input = env_secs("XORB_FUZZ_INPUT_SECS", 10.0);
    let seed = std::env::var("XORB_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!(
        "fuzz {}: seed {seed} (XORB_FUZZ_SEED={seed} reproduces), budget {:?}",
        t.name, budget
    );
    let (to_worker, inputs) = mpsc::channel::<Vec<u8>>();
    let (to_main, results) = mpsc::channel::<Result<(), String>>();
    let run = t.run;
    let worker = std::thread::spawn(move || {
        for input in inputs {
            let r = catch_unwind(AssertUnwindSafe(|| run(&input))).map_err(|p| panic_text(&*p));
            if to_main.send(r).is_err() {
                break;
            }
        }
    });
    let current = crash_dir(t.name).join("current");
    let _ = std::fs::create_dir_all(crash_dir(t.name));
    let mut rng = Rng::new(seed);
    let start = Instant::now();
    let mut execs = 0u64;
    let mut i = 0usize;
    loop {
        let input = if i < t.seeds.len() {
            t.seeds[i].clone()
        } else if start.elapsed() >= budget {
            break;
        } else if rng.chance(8) || t.seeds.is_empty() {
            let n = rng.below(512);
            (0..n).map(|_| rng.next() as u8).collect()
        } else {
            let base = rng.pick(&t.seeds).clone();
            mutate(&mut rng, &base, &t.seeds, t.dict)
        };
        i += 1;
        // A stack overflow aborts the process before any report: the input it died on is left here.
        let _ = std::fs::write(&current, &input);
        to_worker
            .send(input.clone())
            .expect("the fuzz worker is alive");
        match results.recv_timeout(per_input) {
            Ok(Ok(())) => execs += 1,
            Ok(Err(msg)) => {
                let path = save(t.name, &input);
                panic!(
                    "fuzz {}: the parser panicked ({msg}) on the input saved in {} (seed {seed}). Fix it, add a \
                     regression unit test, and copy the input to fuzz/corpus/{}/",
                    t.name,
                    path.display(),
                    t.name
                );
            }
            Err(_) => {
                let path = save(t.name, &input);
                panic!(
                    "fuzz {}: one input took more than {:?} (a hang?), saved in {} (seed {seed})",
                    t.name,
                    per_input,
                    path.display()
                );
            }
        }
    }
    drop(to_worker);
    let _ = worker.join();
    let _ = std::fs::remove_file(&current);
    let r = Report {
        seeds: t.seeds.len(),
        execs,
        seed,
        elapsed: start.elapsed(),
    };
    eprintln!(
        "fuzz {}: {} inputs ({} seeds) in {:.1?}, no panic, no hang",
        t.name, r.execs, r.seeds, r.elapsed
    );
    r
}
