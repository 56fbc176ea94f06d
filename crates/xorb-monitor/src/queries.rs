//! The runbook's four signals as PromQL, and the samples they give.
//!
//! Counters are fetched raw, one series per label set, and their growth is computed here
//! (`series::increase` per series, then summed): `sum()` before `increase` would read one
//! instance's restart as the whole job's counter dropping. Latency is a `histogram_quantile` over
//! a `rate` whose window equals the step, so neighbouring points share no scrape (the tests treat
//! points as independent).

use crate::prom::Series;
use crate::series::{Point, increase};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Traffic no fault touches: Prometheus's own scrapes and the supervisors' probes would dilute
/// every ratio and every quantile.
pub const SHARED_ROUTES: &str = "/metrics|/api/v1/health|/api/v1/info";

/// The queries of one monitor, built once from the jobs it watches and its step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queries {
    pub up: String,
    pub requests: String,
    pub latency_p99: String,
    pub pg_connections: String,
}

fn quoted(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

impl Queries {
    /// `jobs` is a regular expression on the `job` label (`xorb-.*`, `xorb-api`).
    pub fn new(jobs: &str, step_ms: i64) -> Queries {
        let j = quoted(jobs);
        let window = format!("{}ms", step_ms.max(1));
        Queries {
            // The worst scrape of each step, from the scrapes made in that step only: `up` alone would
            // repeat a target's last scrape for five minutes, and a failed scrape from before the
            // monitor (a restart during the rollback) would fail its gate.
            up: format!("min_over_time(up{{job=~\"{j}\"}}[{window}])"),
            requests: format!("http_requests_total{{job=~\"{j}\",route!~\"{SHARED_ROUTES}\"}}"),
            latency_p99: format!(
                "histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket{{job=~\"{j}\",route!~\"{SHARED_ROUTES}\"}}[{window}])))"
            ),
            pg_connections: format!("sum(postgres_connections_active{{job=~\"{j}\"}})"),
        }
    }
}

/// One counter series: whether it counts server errors, and its points.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counter {
    pub server_error: bool,
    pub points: Vec<Point>,
}

/// What the queries gave over some range: per instance for `up`, per label set for requests.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Samples {
    pub up: BTreeMap<String, Vec<Point>>,
    pub requests: BTreeMap<String, Counter>,
    pub latency_p99: Vec<Point>,
    pub pg_connections: Vec<Point>,
}

fn key(s: &Series) -> String {
    s.labels
        .iter()
        .filter(|(k, _)| k.as_str() != "__name__")
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn single(series: Vec<Series>) -> Vec<Point> {
    let mut pts: Vec<Point> = series.into_iter().flat_map(|s| s.points).collect();
    pts.sort_by_key(|p| p.t_ms);
    pts
}

impl Samples {
    pub fn from_series(
        up: Vec<Series>,
        requests: Vec<Series>,
        latency: Vec<Series>,
        pg: Vec<Series>,
    ) -> Samples {
        let mut out = Samples::default();
        for s in up {
            let inst = s.labels.get("instance").cloned().unwrap_or_else(|| key(&s));
            out.up.entry(inst).or_default().extend(s.points);
        }
        for s in requests {
            let server_error = s.labels.get("status").is_some_and(|c| c.starts_with('5'));
            out.requests
                .entry(key(&s))
                .or_default()
                .extend_from(Counter {
                    server_error,
                    points: s.points,
                });
        }
        out.latency_p99 = single(latency);
        out.pg_connections = single(pg);
        out
    }

    /// Appends a later range's samples.
    pub fn extend(&mut self, later: Samples) {
        for (k, v) in later.up {
            self.up.entry(k).or_default().extend(v);
        }
        for (k, c) in later.requests {
            self.requests.entry(k).or_default().extend_from(c);
        }
        self.latency_p99.extend(later.latency_p99);
        self.pg_connections.extend(later.pg_connections);
    }

    /// Requests and server errors counted from the first point of `window_start_ms` on. A series
    /// that appears later was created later (a first 500 creates the `status="500"` series): it
    /// started from zero, so its first value is growth too, or a 5xx burst would lose its first
    /// scrape's errors.
    pub fn counts(&self, window_start_ms: i64, step_ms: i64) -> crate::judge::Counts {
        let (mut errors, mut requests) = (0.0, 0.0);
        for c in self.requests.values() {
            let Some(first) = c.points.first() else {
                continue;
            };
            let born = if first.t_ms > window_start_ms + step_ms && first.v.is_finite() {
                first.v
            } else {
                0.0
            };
            let grew = increase(&c.points) + born;
            requests += grew;
            if c.server_error {
                errors += grew;
            }
        }
        crate::judge::Counts {
            errors: errors.round() as u64,
            requests: requests.round() as u64,
        }
    }
}

impl Counter {
    fn extend_from(&mut self, more: Counter) {
        self.server_error |= more.server_error;
        self.points.extend(more.points);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(labels: &[(&str, &str)], pts: &[(i64, f64)]) -> Series {
        Series {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            points: pts.iter().map(|&(t_ms, v)| Point { t_ms, v }).collect(),
        }
    }

    #[test]
    fn a_job_name_cannot_change_the_queries() {
        let q = Queries::new(r#"x"} or vector(1) or {"#, 2000);
        assert_eq!(
            q.up,
            r#"min_over_time(up{job=~"x\"} or vector(1) or {"}[2000ms])"#
        );
        assert!(q.latency_p99.contains("[2000ms]"));
    }

    #[test]
    fn a_series_born_in_the_window_counts_its_first_value() {
        let ok = series(
            &[("status", "200")],
            &[(0, 100.0), (2000, 150.0), (4000, 200.0)],
        );
        let born = series(&[("status", "500")], &[(4000, 7.0)]);
        let s = Samples::from_series(vec![], vec![ok, born], vec![], vec![]);
        let c = s.counts(0, 2000);
        assert_eq!((c.errors, c.requests), (7, 107));
    }

    #[test]
    fn a_restart_is_growth_not_a_drop() {
        let ok = series(
            &[("status", "200")],
            &[(0, 100.0), (2000, 150.0), (4000, 20.0)],
        );
        let s = Samples::from_series(vec![], vec![ok], vec![], vec![]);
        assert_eq!(s.counts(0, 2000).requests, 70);
    }

    #[test]
    fn ranges_extend_in_order() {
        let mut a = Samples::from_series(
            vec![series(&[("instance", "i")], &[(0, 1.0)])],
            vec![series(&[("status", "200")], &[(0, 1.0)])],
            vec![],
            vec![],
        );
        a.extend(Samples::from_series(
            vec![series(&[("instance", "i")], &[(2000, 0.0)])],
            vec![series(&[("status", "200")], &[(2000, 5.0)])],
            vec![],
            vec![],
        ));
        assert_eq!(a.up["i"].len(), 2);
        assert_eq!(a.counts(0, 2000).requests, 4);
    }
}
