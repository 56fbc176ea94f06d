//! Verdicts, one method per kind of metric:
//!
//! - `up`: a gate; one failed scrape of the current window fails it, whatever the statistics say.
//! - errors: a difference of two proportions on request counts (Agresti-Caffo bounds), FAIL when
//!   the current ratio is above the baseline's by more than the threshold with confidence.
//! - latency and gauges: Mann-Whitney U and the Hodges-Lehmann shift, FAIL when the shift's lower
//!   bound is above the threshold (a share of the baseline's median).
//!
//! Too little data is INCONCLUSIVE with its reason, never PASS. Each look is tested at its share of
//! alpha (`spending.rs`).

use crate::series::Point;
use crate::stats::{self, median};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Verdict {
    Pass,
    Inconclusive,
    Error,
    /// Highest: a regression found on one metric stands even if another could not be judged.
    Fail,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Pass => "PASS",
            Verdict::Inconclusive => "INCONCLUSIVE",
            Verdict::Error => "ERROR",
            Verdict::Fail => "FAIL",
        })
    }
}

impl Verdict {
    /// The verdict of a whole report: the worst of its metrics (PASS only when all pass).
    pub fn overall(vs: impl IntoIterator<Item = Verdict>) -> Verdict {
        vs.into_iter().max().unwrap_or(Verdict::Inconclusive)
    }
}

/// What one look needs to know: the monitor's total false-FAIL budget, how far through the
/// monitor this look is, and the allowed degradation.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Look {
    pub alpha: f64,
    pub previous_fraction: f64,
    pub fraction: f64,
    /// Allowed degradation as a share of the baseline (0.10 for `--alert-threshold 10%`).
    pub threshold: f64,
    /// Fewer finite points than this in either sample is INCONCLUSIVE.
    pub min_points: usize,
    /// Fewer requests than this in either sample is INCONCLUSIVE.
    pub min_requests: u64,
}

impl Look {
    pub fn level(&self) -> f64 {
        crate::spending::look_level(self.alpha, self.previous_fraction, self.fraction)
    }
}

/// A sample's figures, as the report shows them.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Figures {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub points: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub non_finite_points: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub median: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
}

/// The estimated change (current minus baseline) and its one-sided bounds at the look's level.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Effect {
    pub estimate: f64,
    pub lower: f64,
    pub upper: f64,
    /// A change above this is a regression.
    pub allowed: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p_value: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Judgement {
    pub verdict: Verdict,
    pub method: &'static str,
    pub reason: String,
    pub level: f64,
    pub baseline: Figures,
    pub current: Figures,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effect: Option<Effect>,
}

fn pct(x: f64) -> String {
    format!("{:.2}%", x * 100.0)
}

/// Request counts of a window (from counter increases, see `series::increase`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counts {
    pub errors: u64,
    pub requests: u64,
}

pub fn errors(base: Counts, cur: Counts, look: &Look) -> Judgement {
    const METHOD: &str = "difference of two proportions (Agresti-Caffo bounds)";
    let figures = |c: Counts| Figures {
        requests: Some(c.requests),
        errors: Some(c.errors),
        ratio: (c.requests > 0).then(|| c.errors as f64 / c.requests as f64),
        ..Figures::default()
    };
    let level = look.level();
    let mut j = Judgement {
        verdict: Verdict::Inconclusive,
        method: METHOD,
        reason: String::new(),
        level,
        baseline: figures(base),
        current: figures(cur),
        effect: None,
    };
    for (what, c) in [("current window", cur), ("baseline", base)] {
        if c.requests < look.min_requests {
            j.reason = format!(
                "only {} requests in the {what} (at least {} needed): too little traffic to judge the error ratio",
                c.requests, look.min_requests
            );
            return j;
        }
    }
    let Some(d) =
        stats::proportion_difference(base.errors, base.requests, cur.errors, cur.requests, level)
    else {
        j.reason = format!("no bound at level {level:.2e}: this look spends no alpha");
        return j;
    };
    let allowed = look.threshold * d.p0;
    let figures = format!(
        "error ratio {} ({} of {} requests) against the baseline's {} ({} of {})",
        pct(d.p1),
        cur.errors,
        cur.requests,
        pct(d.p0),
        base.errors,
        base.requests
    );
    j.effect = Some(Effect {
        estimate: d.p1 - d.p0,
        lower: d.lower,
        upper: d.upper,
        allowed,
        p_value: None,
    });
    if d.lower > allowed {
        j.verdict = Verdict::Fail;
        j.reason = format!(
            "{figures}: higher by at least {} points (confidence {}), more than the allowed {}",
            pct(d.lower),
            pct(1.0 - level),
            pct(allowed)
        );
    } else {
        j.verdict = Verdict::Pass;
        j.reason = format!(
            "{figures}: no increase beyond the allowed {} shown",
            pct(allowed)
        );
    }
    j
}

/// Latency or a gauge, where higher is worse. `floor` keeps the allowed change meaningful when the
/// baseline's median is zero (a gauge of connections: at least one connection more).
pub fn shift(base: &[Point], cur: &[Point], look: &Look, floor: f64, unit: &str) -> Judgement {
    const METHOD: &str = "Mann-Whitney U with a Hodges-Lehmann shift bound";
    let (bv, bdrop) = crate::series::finite_values(base);
    let (cv, cdrop) = crate::series::finite_values(cur);
    let figures = |v: &[f64], dropped: usize| Figures {
        points: Some(v.len()),
        non_finite_points: Some(dropped),
        median: (!v.is_empty()).then(|| median(v)),
        ..Figures::default()
    };
    let level = look.level();
    let mut j = Judgement {
        verdict: Verdict::Inconclusive,
        method: METHOD,
        reason: String::new(),
        level,
        baseline: figures(&bv, bdrop),
        current: figures(&cv, cdrop),
        effect: None,
    };
    for (what, v, dropped) in [("current window", &cv, cdrop), ("baseline", &bv, bdrop)] {
        if v.len() < look.min_points {
            j.reason = format!(
                "only {} usable points in the {what} (at least {} needed; {dropped} were NaN or infinite, which means no traffic in that step)",
                v.len(),
                look.min_points
            );
            return j;
        }
    }
    let Some(hl) = stats::hodges_lehmann(&bv, &cv, level) else {
        j.reason = format!(
            "{} and {} points cannot bound a shift at confidence {}: wait for later looks",
            bv.len(),
            cv.len(),
            pct(1.0 - level)
        );
        return j;
    };
    let mw = stats::mann_whitney_greater(&bv, &cv);
    let base_median = median(&bv);
    let allowed = look.threshold * base_median.max(floor);
    let figures = format!(
        "median {:.4} {unit} against the baseline's {:.4} {unit}",
        median(&cv),
        base_median
    );
    j.effect = Some(Effect {
        estimate: hl.estimate,
        lower: hl.lower,
        upper: hl.upper,
        allowed,
        p_value: mw.map(|m| m.p_greater),
    });
    if hl.lower > allowed {
        j.verdict = Verdict::Fail;
        j.reason = format!(
            "{figures}: higher by at least {:.4} {unit} (confidence {}), more than the allowed {:.4} {unit}",
            hl.lower,
            pct(1.0 - level),
            allowed
        );
    } else {
        j.verdict = Verdict::Pass;
        j.reason = format!(
            "{figures}: shift {:.4} {unit}, no increase beyond the allowed {:.4} {unit} shown",
            hl.estimate, allowed
        );
    }
    j
}

/// The `up` gate: every scrape of every instance in the current window must have succeeded.
pub fn up(series: &[(String, Vec<Point>)]) -> Judgement {
    const METHOD: &str = "gate: up == 1 at every scrape";
    let points: usize = series.iter().map(|(_, p)| p.len()).sum();
    let mut j = Judgement {
        verdict: Verdict::Pass,
        method: METHOD,
        reason: String::new(),
        level: 0.0,
        baseline: Figures::default(),
        current: Figures {
            points: Some(points),
            ..Figures::default()
        },
        effect: None,
    };
    if points == 0 {
        j.verdict = Verdict::Inconclusive;
        j.reason = "no `up` samples in the current window: Prometheus has not scraped this job in it (is the window shorter than the scrape interval?)"
            .to_string();
        return j;
    }
    let down: Vec<(&str, i64)> = series
        .iter()
        .flat_map(|(inst, pts)| {
            pts.iter()
                .filter(|p| p.v != 1.0)
                .map(move |p| (inst.as_str(), p.t_ms))
        })
        .collect();
    if let Some((inst, t)) = down.iter().min_by_key(|(i, t)| (*t, *i)) {
        j.verdict = Verdict::Fail;
        j.reason = format!(
            "{} failed scrape(s) of {points}; first: {inst} at {t} ms (Unix time)",
            down.len()
        );
    } else {
        j.reason = format!("all {points} scrapes succeeded");
    }
    j
}

#[cfg(test)]
#[path = "judge_tests.rs"]
mod tests;
