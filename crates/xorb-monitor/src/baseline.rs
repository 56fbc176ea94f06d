//! Where the baseline is: the windows of Prometheus's own history in which the baseline release
//! ran, read from `xorb_build_info{release="R"}`, or one window the operator pins. Comparing with
//! the same release's own past is what lets a rollback be judged without running the baseline
//! beside the current release (Kayenta's need for a side-by-side canary).

use crate::prom::Range;
use crate::series::Point;
use serde::{Deserialize, Serialize};

/// A half-open window `[start_ms, end_ms)` of Unix milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub start_ms: i64,
    pub end_ms: i64,
}

impl Window {
    pub fn len_ms(&self) -> i64 {
        self.end_ms - self.start_ms
    }
}

/// The query that is 1 where the baseline ran: every role reporting is on release `release`. Any
/// one role on it is not enough: during a rollout (a roll forward begins with the api) the other
/// roles still report the old release while the api already answers as the new one, and a baseline
/// taken there holds the new release's errors (the demo measured 2% of rc1's 503s in it).
pub fn build_info_query(release: &str) -> String {
    // Release names are validated by the model (letters, digits, dots, dashes); quotes are
    // escaped anyway so that a bad name makes a failed query, never a different one.
    let r = release.replace('\\', "\\\\").replace('"', "\\\"");
    format!("count(xorb_build_info{{release=\"{r}\"}}) == bool count(xorb_build_info)")
}

/// Runs of consecutive steps where the release reported (value 1), as windows, each ending one
/// step after its last point. A gap of more than one step splits windows: a release that stopped
/// and came back is two windows, and the gap (a rollout, a rollback) is in neither.
pub fn windows(points: &[Point], range: &Range) -> Vec<Window> {
    let mut out: Vec<Window> = Vec::new();
    let mut pts: Vec<&Point> = points.iter().filter(|p| p.v == 1.0).collect();
    pts.sort_by_key(|p| p.t_ms);
    for p in pts {
        match out.last_mut() {
            Some(w) if p.t_ms <= w.end_ms => w.end_ms = p.t_ms + range.step_ms,
            _ => out.push(Window {
                start_ms: p.t_ms,
                end_ms: p.t_ms + range.step_ms,
            }),
        }
    }
    out
}

/// The most recent history of the baseline, up to `want_ms` in total, newest first: the monitor
/// compares with how the release behaved last, not a month ago.
pub fn latest(windows: &[Window], want_ms: i64) -> Vec<Window> {
    let mut out = Vec::new();
    let mut left = want_ms;
    for w in windows.iter().rev() {
        if left <= 0 {
            break;
        }
        let take = w.len_ms().min(left);
        out.push(Window {
            start_ms: w.end_ms - take,
            end_ms: w.end_ms,
        });
        left -= take;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range() -> Range {
        Range {
            start_ms: 0,
            end_ms: 100_000,
            step_ms: 1000,
        }
    }

    fn at(ts: &[i64]) -> Vec<Point> {
        ts.iter()
            .map(|&t| Point {
                t_ms: t * 1000,
                v: 1.0,
            })
            .collect()
    }

    #[test]
    fn runs_of_presence_become_windows_and_gaps_split_them() {
        let w = windows(&at(&[1, 2, 3, 4, 10, 11]), &range());
        assert_eq!(
            w,
            vec![
                Window {
                    start_ms: 1000,
                    end_ms: 5000
                },
                Window {
                    start_ms: 10_000,
                    end_ms: 12_000
                }
            ]
        );
        assert!(windows(&[], &range()).is_empty());
    }

    #[test]
    fn the_latest_history_first() {
        let w = windows(&at(&[1, 2, 3, 4, 10, 11]), &range());
        let l = latest(&w, 3000);
        assert_eq!(
            l,
            vec![
                Window {
                    start_ms: 10_000,
                    end_ms: 12_000
                },
                Window {
                    start_ms: 4000,
                    end_ms: 5000
                }
            ]
        );
        assert_eq!(
            latest(&w, 60_000).iter().map(Window::len_ms).sum::<i64>(),
            6000
        );
    }

    #[test]
    fn a_release_name_cannot_change_the_query() {
        assert_eq!(
            build_info_query("v2025.07-stable"),
            r#"count(xorb_build_info{release="v2025.07-stable"}) == bool count(xorb_build_info)"#
        );
        assert_eq!(
            build_info_query(r#"x"} or vector(1) or {"#),
            r#"count(xorb_build_info{release="x\"} or vector(1) or {"}) == bool count(xorb_build_info)"#
        );
    }
}
