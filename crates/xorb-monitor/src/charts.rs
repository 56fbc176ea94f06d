//! What a report draws for each judged metric: the baseline's series and the current window's, as
//! (seconds from the series' first point, value). Errors are drawn as the ratio of each step (from
//! the counters' growth, restarts counted as growth), `up` as its worst instance at each scrape.

use crate::monitor::Monitor;
use crate::queries::Samples;
use crate::series::Point;
use std::collections::BTreeMap;

pub struct Chart {
    pub metric: &'static str,
    pub unit: &'static str,
    pub baseline: Vec<(f64, f64)>,
    pub current: Vec<(f64, f64)>,
}

fn relative(points: &[Point]) -> Vec<(f64, f64)> {
    let Some(t0) = points.first().map(|p| p.t_ms) else {
        return vec![];
    };
    points
        .iter()
        .map(|p| ((p.t_ms - t0) as f64 / 1000.0, p.v))
        .collect()
}

fn worst_up(s: &Samples) -> Vec<Point> {
    let mut by_t: BTreeMap<i64, f64> = BTreeMap::new();
    for p in s.up.values().flatten() {
        let e = by_t.entry(p.t_ms).or_insert(p.v);
        *e = e.min(p.v);
    }
    by_t.into_iter()
        .map(|(t_ms, v)| Point { t_ms, v })
        .collect()
}

fn error_ratio(s: &Samples) -> Vec<Point> {
    let mut by_t: BTreeMap<i64, (f64, f64)> = BTreeMap::new();
    for c in s.requests.values() {
        for w in c.points.windows(2) {
            let grew = if w[1].v >= w[0].v {
                w[1].v - w[0].v
            } else {
                w[1].v
            };
            if !grew.is_finite() {
                continue;
            }
            let e = by_t.entry(w[1].t_ms).or_default();
            e.1 += grew;
            if c.server_error {
                e.0 += grew;
            }
        }
    }
    by_t.into_iter()
        .filter(|(_, (_, n))| *n > 0.0)
        .map(|(t_ms, (e, n))| Point { t_ms, v: e / n })
        .collect()
}

pub fn charts(m: &Monitor) -> Vec<Chart> {
    let (b, c) = (m.baseline(), m.current());
    vec![
        Chart {
            metric: "up",
            unit: "",
            baseline: relative(&worst_up(b)),
            current: relative(&worst_up(c)),
        },
        Chart {
            metric: "error_ratio",
            unit: "",
            baseline: relative(&error_ratio(b)),
            current: relative(&error_ratio(c)),
        },
        Chart {
            metric: "latency_p99",
            unit: "s",
            baseline: relative(&b.latency_p99),
            current: relative(&c.latency_p99),
        },
        Chart {
            metric: "postgres_connections_active",
            unit: "connections",
            baseline: relative(&b.pg_connections),
            current: relative(&c.pg_connections),
        },
    ]
}
