//! A monitor as a fold: its settings and baseline, then one increment of samples per evaluation, in
//! order. Each increment gives an evaluation (every metric judged on the whole current window so
//! far); the report is the list of them. Nothing here reads a clock or the network, so a recording
//! replayed gives the same report, byte for byte.

use crate::baseline::Window;
use crate::judge::{self, Judgement, Look, Verdict};
use crate::prom::Range;
use crate::queries::{Queries, Samples};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A p99 below this is compared as this: the allowed change is the threshold of at least 50 ms (5 ms at 10%).
/// A healthy api on loopback answers its p99 in a few milliseconds, and 10% of 2 ms is less than a busy
/// machine's scheduling jitter: the demo's monitor failed a rolled-back stable on 5 ms against 1.9 ms. Above
/// it the threshold is relative as the runbook writes it (260 ms against 200 ms fails a 10% threshold). The
/// decision matrix floors its p99 the same way (`min_p99_secs`), more coarsely.
pub const LATENCY_FLOOR_SECS: f64 = 0.05;

/// What the monitor was asked to do, and where its baseline is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub baseline_release: String,
    /// How the baseline was found: `"xorb_build_info history"` or `"pinned by the operator"`.
    pub baseline_source: String,
    pub baseline_windows: Vec<Window>,
    pub start_ms: i64,
    pub duration_ms: i64,
    /// Evaluation interval, query step and rate window at once.
    pub step_ms: i64,
    pub report_interval_ms: i64,
    /// Allowed degradation, as a share of the baseline (0.10 for `10%`).
    pub threshold: f64,
    pub alpha: f64,
    pub min_points: usize,
    pub min_requests: u64,
    pub queries: Queries,
}

/// The samples fetched for one evaluation, or why none could be.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Increment {
    pub at_ms: i64,
    /// The current window's new range; `None` when the fetch failed.
    pub range: Option<Range>,
    #[serde(flatten)]
    pub fetched: Fetched,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fetched {
    Samples(Samples),
    Error(String),
}

/// One metric's judgement with what it was computed on.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MetricReport {
    #[serde(flatten)]
    pub judgement: Judgement,
    pub query: String,
    pub baseline_ranges: Vec<Window>,
    pub current_range: Window,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Evaluation {
    pub at_ms: i64,
    /// Elapsed share of the monitor's duration: how much alpha this look may spend.
    pub fraction: f64,
    pub verdict: Verdict,
    /// Why there are no metrics (Prometheus could not be read); `None` otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub metrics: BTreeMap<&'static str, MetricReport>,
}

/// The fold's state: the baseline and the current window so far.
pub struct Monitor {
    settings: Settings,
    baseline: Samples,
    current: Samples,
    previous_fraction: f64,
    /// End of the last range fetched, so the next starts one step after it.
    fetched_to_ms: Option<i64>,
    pub evaluations: Vec<Evaluation>,
}

impl Monitor {
    pub fn new(settings: Settings, baseline: Samples) -> Monitor {
        Monitor {
            settings,
            baseline,
            current: Samples::default(),
            previous_fraction: 0.0,
            fetched_to_ms: None,
            evaluations: Vec::new(),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn baseline(&self) -> &Samples {
        &self.baseline
    }

    pub fn current(&self) -> &Samples {
        &self.current
    }

    /// The range the next fetch should cover, up to `now_ms` (aligned on the step); `None` when no
    /// whole step has passed since the last one.
    pub fn next_range(&self, now_ms: i64) -> Option<Range> {
        let s = &self.settings;
        let start = self.fetched_to_ms.map_or(s.start_ms, |t| t + s.step_ms);
        let end = s.start_ms + (now_ms - s.start_ms).div_euclid(s.step_ms) * s.step_ms;
        let end = end.min(s.start_ms + s.duration_ms);
        (end >= start).then_some(Range {
            start_ms: start,
            end_ms: end,
            step_ms: s.step_ms,
        })
    }

    /// Is the monitor over: its duration reached, or a FAIL (a regression stands; watching longer
    /// cannot undo it).
    pub fn finished(&self) -> bool {
        let s = &self.settings;
        self.evaluations
            .last()
            .is_some_and(|e| e.verdict == Verdict::Fail || e.at_ms >= s.start_ms + s.duration_ms)
    }

    pub fn apply(&mut self, inc: Increment) -> &Evaluation {
        let s = self.settings.clone();
        let fraction =
            ((inc.at_ms - s.start_ms) as f64 / s.duration_ms.max(1) as f64).clamp(0.0, 1.0);
        let eval = match (inc.fetched, inc.range) {
            (Fetched::Samples(more), Some(range)) => {
                self.current.extend(more);
                self.fetched_to_ms = Some(range.end_ms);
                let look = Look {
                    alpha: s.alpha,
                    previous_fraction: self.previous_fraction,
                    fraction,
                    threshold: s.threshold,
                    min_points: s.min_points,
                    min_requests: s.min_requests,
                };
                self.previous_fraction = fraction;
                self.judge(inc.at_ms, fraction, &look, range.end_ms)
            }
            (fetched, _) => Evaluation {
                at_ms: inc.at_ms,
                fraction,
                verdict: Verdict::Error,
                error: Some(match fetched {
                    Fetched::Error(why) => why,
                    Fetched::Samples(_) => "samples without their range".to_string(),
                }),
                metrics: BTreeMap::new(),
            },
        };
        self.evaluations.push(eval);
        self.evaluations.last().expect("just pushed")
    }

    fn judge(&self, at_ms: i64, fraction: f64, look: &Look, end_ms: i64) -> Evaluation {
        let s = &self.settings;
        let current_range = Window {
            start_ms: s.start_ms,
            end_ms: end_ms + s.step_ms,
        };
        let report = |judgement: Judgement, query: &str| MetricReport {
            judgement,
            query: query.to_string(),
            baseline_ranges: s.baseline_windows.clone(),
            current_range,
        };
        // The first point's step ends at the monitor's start: its scrapes are from before it.
        let up: Vec<(String, Vec<crate::series::Point>)> = self
            .current
            .up
            .iter()
            .map(|(k, v)| {
                let after: Vec<_> = v.iter().filter(|p| p.t_ms > s.start_ms).copied().collect();
                (k.clone(), after)
            })
            .collect();
        let mut up_j = judge::up(&up);
        up_j.baseline = judge::Figures::default();
        let base_counts = self.baseline_counts();
        let cur_counts = self.current.counts(s.start_ms, s.step_ms);
        let mut metrics = BTreeMap::new();
        metrics.insert("up", report(up_j, &s.queries.up));
        metrics.insert(
            "error_ratio",
            report(
                judge::errors(base_counts, cur_counts, look),
                &s.queries.requests,
            ),
        );
        metrics.insert(
            "latency_p99",
            report(
                judge::shift(
                    &self.baseline.latency_p99,
                    &self.current.latency_p99,
                    look,
                    LATENCY_FLOOR_SECS,
                    "s",
                ),
                &s.queries.latency_p99,
            ),
        );
        metrics.insert(
            "postgres_connections_active",
            report(
                judge::shift(
                    &self.baseline.pg_connections,
                    &self.current.pg_connections,
                    look,
                    1.0,
                    "connections",
                ),
                &s.queries.pg_connections,
            ),
        );
        Evaluation {
            at_ms,
            fraction,
            verdict: Verdict::overall(metrics.values().map(|m| m.judgement.verdict)),
            error: None,
            metrics,
        }
    }

    /// The baseline's counts: each window counted on its own (the gaps between windows are
    /// another release's traffic).
    fn baseline_counts(&self) -> judge::Counts {
        let s = &self.settings;
        let mut total = judge::Counts {
            errors: 0,
            requests: 0,
        };
        for w in &s.baseline_windows {
            let mut part = Samples::default();
            for (k, c) in &self.baseline.requests {
                let mut c = c.clone();
                c.points
                    .retain(|p| p.t_ms >= w.start_ms && p.t_ms < w.end_ms);
                part.requests.insert(k.clone(), c);
            }
            let n = part.counts(w.start_ms, s.step_ms);
            total.errors += n.errors;
            total.requests += n.requests;
        }
        total
    }
}

/// One evaluation in the report's history: when, how far, and each metric's verdict.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub at_ms: i64,
    pub fraction: f64,
    pub verdict: Verdict,
    pub metrics: BTreeMap<&'static str, Verdict>,
}

/// The monitor's report as it stands: the verdict of its latest evaluation (a FAIL ends the
/// monitor, so it is also the last), that evaluation in full, and the history in brief.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report<'a> {
    pub verdict: Verdict,
    pub finished: bool,
    pub settings: &'a Settings,
    pub latest: Option<&'a Evaluation>,
    pub history: Vec<Summary>,
}

impl Monitor {
    pub fn report(&self) -> Report<'_> {
        let latest = self.evaluations.last();
        Report {
            verdict: latest.map_or(Verdict::Inconclusive, |e| e.verdict),
            finished: self.finished(),
            settings: &self.settings,
            latest,
            history: self
                .evaluations
                .iter()
                .map(|e| Summary {
                    at_ms: e.at_ms,
                    fraction: e.fraction,
                    verdict: e.verdict,
                    metrics: e
                        .metrics
                        .iter()
                        .map(|(k, m)| (*k, m.judgement.verdict))
                        .collect(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
#[path = "monitor_tests.rs"]
mod tests;
