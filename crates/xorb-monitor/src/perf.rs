//! The performance baseline: a release's figures under a known load (`xorbctl perf --release R`), kept, and the
//! judgement of a later measurement at the same load against them (phase 5's `performance` check). Pure: the
//! file lives where the target's state does (`xorb-adapters`), the load is `load.rs`.

use serde::{Deserialize, Serialize};
use xorb_model::policy::Performance;

use crate::load::Figures;

/// A release's kept figures and how they were measured. `rate` and `duration_ms` are the load a later check
/// sends again, so that both are measured the same way.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baseline {
    pub release: String,
    /// RFC 3339, when the measurement ended.
    pub measured_at: String,
    /// What the api reported as its version while it was measured.
    pub api_version: String,
    /// `GET` path the load sent, as the tool's check tenant.
    pub path: String,
    pub figures: Figures,
}

/// One figure, before and now, and the most it may be now.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Compared {
    pub baseline: f64,
    pub now: f64,
    pub limit: f64,
}

impl Compared {
    pub fn within(&self) -> bool {
        self.now <= self.limit
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Judgement {
    pub passed: bool,
    /// From each request's due time (what users saw), in milliseconds.
    pub p99_ms: Compared,
    /// Errors (5xx, no answer in time, not sent) over requests due.
    pub error_ratio: Compared,
    /// One sentence with every figure, for the step's detail and the report.
    pub summary: String,
}

pub fn error_ratio(f: &Figures) -> f64 {
    if f.due == 0 {
        0.0
    } else {
        f.errors as f64 / f.due as f64
    }
}

/// `now` against `base` under the runbook's tolerance: the p99 may exceed the baseline's by the tolerance or the
/// slack, whichever is more, and the error share may rise by the allowed increase.
pub fn judge(base: &Figures, now: &Figures, policy: &Performance) -> Judgement {
    let b99 = base.response.p99_ms;
    let p99_ms = Compared {
        baseline: b99,
        now: now.response.p99_ms,
        limit: (b99 * (1.0 + f64::from(policy.p99_tolerance_pct) / 100.0))
            .max(b99 + policy.p99_slack_ms as f64),
    };
    let be = error_ratio(base);
    let error_ratio = Compared {
        baseline: be,
        now: self::error_ratio(now),
        limit: be + f64::from(policy.error_increase_permille) / 1000.0,
    };
    let passed = p99_ms.within() && error_ratio.within();
    let mark = |c: &Compared| if c.within() { "within" } else { "OVER" };
    let summary = format!(
        "p99 {:.1} ms against the baseline's {:.1} ms ({} the limit of {:.1} ms); errors {:.2}% against {:.2}% ({} \
         the limit of {:.2}%); {} requests at {}/s over {} s",
        p99_ms.now,
        p99_ms.baseline,
        mark(&p99_ms),
        p99_ms.limit,
        error_ratio.now * 100.0,
        error_ratio.baseline * 100.0,
        mark(&error_ratio),
        error_ratio.limit * 100.0,
        now.due,
        now.rate,
        now.duration_ms as f64 / 1000.0,
    );
    Judgement {
        passed,
        p99_ms,
        error_ratio,
        summary,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::Percentiles;

    fn figures(p99_ms: f64, errors: u64) -> Figures {
        let p = Percentiles {
            p50_ms: p99_ms / 3.0,
            p90_ms: p99_ms / 2.0,
            p99_ms,
            p999_ms: p99_ms,
            max_ms: p99_ms,
        };
        Figures {
            rate: 40.0,
            duration_ms: 5000,
            due: 200,
            ok: 200 - errors,
            errors,
            response: p.clone(),
            service: p,
        }
    }

    #[test]
    fn a_few_milliseconds_more_on_a_fast_api_is_within_the_slack() {
        let j = judge(&figures(3.0, 0), &figures(9.0, 0), &Performance::default());
        assert!(j.passed, "{}", j.summary);
        assert_eq!(j.p99_ms.limit, 23.0);
    }

    #[test]
    fn a_slower_p99_beyond_the_tolerance_fails_and_says_both_figures() {
        let j = judge(
            &figures(200.0, 0),
            &figures(260.0, 0),
            &Performance::default(),
        );
        assert!(!j.passed);
        assert_eq!(j.p99_ms.limit, 250.0);
        assert!(
            j.summary.starts_with(
                "p99 260.0 ms against the baseline's 200.0 ms (OVER the limit of 250.0 ms)"
            ),
            "{}",
            j.summary
        );
        assert!(
            judge(
                &figures(200.0, 0),
                &figures(249.0, 0),
                &Performance::default()
            )
            .passed
        );
    }

    #[test]
    fn errors_rising_past_the_allowed_increase_fail_even_when_fast() {
        let j = judge(&figures(3.0, 1), &figures(3.0, 4), &Performance::default());
        assert!(!j.passed, "{}", j.summary);
        assert!(
            j.summary
                .contains("errors 2.00% against 0.50% (OVER the limit of 1.50%)"),
            "{}",
            j.summary
        );
        assert!(judge(&figures(3.0, 1), &figures(3.0, 3), &Performance::default()).passed);
    }

    #[test]
    fn nothing_due_is_no_error_share() {
        let mut f = figures(1.0, 0);
        f.due = 0;
        assert_eq!(error_ratio(&f), 0.0);
    }
}
