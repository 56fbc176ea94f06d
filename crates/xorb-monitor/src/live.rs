//! The monitor against a live Prometheus: finding the baseline, fetching samples, and the loop of
//! evaluations on the wall clock. Each increment goes to the caller before it is applied, so the
//! recording is never behind the report.

use crate::baseline::{self, Window};
use crate::monitor::{Fetched, Increment, Monitor};
use crate::prom::{PromError, Prometheus, Range};
use crate::queries::{Queries, Samples};
use std::time::Duration;

/// The samples of `range` for every query.
pub async fn fetch(prom: &Prometheus, q: &Queries, range: Range) -> Result<Samples, PromError> {
    Ok(Samples::from_series(
        prom.query_range(&q.up, range).await?,
        prom.query_range(&q.requests, range).await?,
        prom.query_range(&q.latency_p99, range).await?,
        prom.query_range(&q.pg_connections, range).await?,
    ))
}

/// The baseline release's most recent windows before `cutoff_ms`, `want_ms` of them at most,
/// oldest first, from `xorb_build_info` over the `lookback_ms` before the cutoff.
pub async fn find_baseline(
    prom: &Prometheus,
    release: &str,
    cutoff_ms: i64,
    want_ms: i64,
    step_ms: i64,
    lookback_ms: i64,
) -> Result<Vec<Window>, PromError> {
    let range = Range {
        start_ms: cutoff_ms - lookback_ms,
        end_ms: cutoff_ms - step_ms,
        step_ms,
    };
    let pts: Vec<_> = prom
        .query_range(&baseline::build_info_query(release), range)
        .await?
        .into_iter()
        .flat_map(|s| s.points)
        .collect();
    let mut ws: Vec<Window> = baseline::windows(&pts, &range)
        .into_iter()
        .map(|w| Window {
            start_ms: w.start_ms,
            end_ms: w.end_ms.min(cutoff_ms),
        })
        .collect();
    ws = baseline::latest(&ws, want_ms);
    ws.reverse();
    Ok(ws)
}

/// The samples of the baseline's windows.
pub async fn fetch_baseline(
    prom: &Prometheus,
    q: &Queries,
    windows: &[Window],
    step_ms: i64,
) -> Result<Samples, PromError> {
    let mut all = Samples::default();
    for w in windows {
        let end = w.end_ms - step_ms;
        if end < w.start_ms {
            continue;
        }
        all.extend(
            fetch(
                prom,
                q,
                Range {
                    start_ms: w.start_ms,
                    end_ms: end,
                    step_ms,
                },
            )
            .await?,
        );
    }
    Ok(all)
}

/// Milliseconds since the Unix epoch, as Prometheus counts.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Evaluates once per step until the monitor is finished. `record` gets each increment first
/// (to make it durable) and `after` sees the monitor once it is applied. A Prometheus that does
/// not answer gives an ERROR evaluation and the next one fetches everything it missed.
pub async fn run<R, A>(
    prom: &Prometheus,
    monitor: &mut Monitor,
    lag: Duration,
    mut record: R,
    mut after: A,
) -> std::io::Result<()>
where
    R: FnMut(&Increment) -> std::io::Result<()>,
    A: FnMut(&Monitor) -> std::io::Result<()>,
{
    let lag_ms = lag.as_millis() as i64;
    let s = monitor.settings().clone();
    let end_ms = s.start_ms + s.duration_ms;
    let mut due = monitor
        .evaluations
        .last()
        .map_or(s.start_ms, |e| e.at_ms)
        .saturating_add(s.step_ms)
        .min(end_ms);
    while !monitor.finished() {
        // Prometheus has the point of time T once the scrape after T is in: wait a little past it.
        let wait = due + lag_ms - now_ms();
        if wait > 0 {
            tokio::time::sleep(Duration::from_millis(wait as u64)).await;
        }
        let at_ms = due;
        due = (due + s.step_ms).min(end_ms);
        let Some(range) = monitor.next_range(at_ms) else {
            if at_ms >= end_ms {
                break;
            }
            continue;
        };
        let inc = match fetch(prom, &s.queries, range).await {
            Ok(samples) => Increment {
                at_ms,
                range: Some(range),
                fetched: Fetched::Samples(samples),
            },
            Err(e) => Increment {
                at_ms,
                range: None,
                fetched: Fetched::Error(e.to_string()),
            },
        };
        record(&inc)?;
        monitor.apply(inc);
        after(monitor)?;
    }
    Ok(())
}
