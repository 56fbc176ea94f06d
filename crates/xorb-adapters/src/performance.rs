//! The performance baseline check (the runbook's `performance_test.py --baseline v2025.07-stable`) and the
//! measurement behind `xorbctl perf`/`load`: an open-model load against the api as the tool's check tenant
//! (`xorb_monitor::load`), a release's figures kept in `<state>/perf/<release>.json`, and phase 5's comparison at
//! the same load (`xorb_monitor::perf`). See docs/design/monitor.md.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use xorb_engine::runner::{StepContext, StepError};
use xorb_model::plan::StepOutcome;
use xorb_model::policy::Performance;
use xorb_monitor::load::{self, Figures};
use xorb_monitor::perf::{Baseline, Judgement};

use crate::AdapterError;
use crate::context::{TargetRunner, failed};
use crate::target::Target;

/// What the load asks for: the listing a tenant's dashboard polls, a database query per request.
pub const LOAD_PATH: &str = "/api/v1/ptaas/sessions";
/// A request not answered by then is an error at this latency.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// More in flight than this and the generator counts the request as an error rather than queue behind a
/// dead api.
const MAX_IN_FLIGHT: usize = 512;

/// A load's figures and what the api said it ran while it was measured.
#[derive(Clone, Debug, Serialize)]
pub struct Measured {
    pub api_release: String,
    pub api_version: String,
    pub figures: Figures,
}

pub fn baseline_path(state_dir: &Path, release: &str) -> PathBuf {
    state_dir.join("perf").join(format!("{release}.json"))
}

/// `release`'s kept figures, if `xorbctl perf` measured them. A file that does not parse is an error naming it:
/// a baseline silently ignored would turn the check into a skip.
pub fn load_baseline(state_dir: &Path, release: &str) -> Result<Option<Baseline>, AdapterError> {
    let path = baseline_path(state_dir, release);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(AdapterError::io(
                format!("cannot read {}", path.display()),
                e,
            ));
        }
    };
    let b: Baseline = serde_json::from_slice(&bytes).map_err(|e| {
        AdapterError::Config(format!(
            "{}: not a performance baseline ({e}); measure it again with `xorbctl perf --release {release}`",
            path.display()
        ))
    })?;
    if b.release != release {
        return Err(AdapterError::Config(format!(
            "{}: holds the figures of {}, not {release}",
            path.display(),
            b.release
        )));
    }
    Ok(Some(b))
}

pub fn save_baseline(state_dir: &Path, b: &Baseline) -> Result<PathBuf, AdapterError> {
    crate::files::private_dir(&state_dir.join("perf"))?;
    let path = baseline_path(state_dir, &b.release);
    crate::files::write_json(&path, b)?;
    Ok(path)
}

/// What the check writes to the run directory, for the report.
#[derive(Serialize)]
struct Record<'a> {
    baseline: &'a Baseline,
    measured: &'a Measured,
    judgement: &'a Judgement,
}

impl<T: Target> TargetRunner<T> {
    /// Sends `rate` requests a second for `duration` to the api as the tool's check tenant.
    pub async fn measure(&self, rate: f64, duration: Duration) -> Result<Measured, StepError> {
        let ep = self.endpoints()?;
        let api = ep
            .service("api")
            .ok_or_else(|| StepError::fatal("no api service"))?;
        let info = self.api_info(&ep).await?;
        let token = self.check_tenant(&ep, "xorbctl-check-a").await?;
        let spec = load::Spec {
            url: format!("{api}{LOAD_PATH}"),
            token,
            rate,
            duration,
            timeout: REQUEST_TIMEOUT,
            max_in_flight: MAX_IN_FLIGHT,
        };
        let figures = load::run(&spec)
            .await
            .map_err(|e| StepError::fatal(e.to_string()))?;
        Ok(Measured {
            api_release: info["release"].as_str().unwrap_or("").to_string(),
            api_version: info["version"].as_str().unwrap_or("").to_string(),
            figures,
        })
    }

    /// Phase 5: the target release's kept figures, the same load again, judged by the runbook's tolerance.
    /// Without kept figures the check is skipped at once and says how to measure them: a load with nothing
    /// to compare with proves nothing, so "Performance baselines met" stays unticked, and it would cost every
    /// run (and every resume of it) the load's seconds for a figure nobody judges.
    pub(crate) async fn check_performance(
        &self,
        policy: &Performance,
        ctx: &StepContext<'_>,
    ) -> Result<StepOutcome, StepError> {
        let to = self.to.name();
        let Some(b) =
            load_baseline(&self.state_dir, to).map_err(|e| StepError::fatal(e.to_string()))?
        else {
            return Ok(StepOutcome::Skipped {
                reason: format!(
                    "no performance baseline of {to} to compare with: measure one on a healthy {to} with \
                     `xorbctl perf --release {to}` (then this check sends that load again)"
                ),
            });
        };
        let measured = self
            .measure(b.figures.rate, Duration::from_millis(b.figures.duration_ms))
            .await?;
        let j = xorb_monitor::perf::judge(&b.figures, &measured.figures, policy);
        crate::files::write_json(
            &ctx.run_dir.join("performance.json"),
            &Record {
                baseline: &b,
                measured: &measured,
                judgement: &j,
            },
        )
        .map_err(failed)?;
        if j.passed {
            Ok(StepOutcome::succeeded(format!(
                "{} (baseline of {to} measured {})",
                j.summary, b.measured_at
            )))
        } else {
            Err(failed(format!(
                "slower than {to}'s baseline (measured {}): {}",
                b.measured_at, j.summary
            )))
        }
    }
}
