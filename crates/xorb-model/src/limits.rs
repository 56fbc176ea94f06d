//! The allowed range of every number an operator writes in a policy or release file, and time arithmetic that
//! cannot overflow. The ranges are documented (with their reasons) in `docs/design/input-hardening.md`; keep the
//! two in step.
//!
//! Files are checked when they load, so a value out of range never reaches a plan. The engine still clamps with
//! [`deadline`] and [`clamp_backoff`] because a run journaled before these checks existed may carry one.

use std::fmt;
use std::time::{Duration, Instant};

/// An inclusive range, with an optional sentinel outside it (`-1` meaning "no limit" for NATS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub min: i128,
    pub max: i128,
    pub unit: &'static str,
    pub sentinel: Option<(i128, &'static str)>,
}

impl Range {
    pub const fn new(min: i128, max: i128, unit: &'static str) -> Self {
        Range {
            min,
            max,
            unit,
            sentinel: None,
        }
    }

    pub const fn or(self, value: i128, meaning: &'static str) -> Self {
        Range {
            sentinel: Some((value, meaning)),
            ..self
        }
    }

    pub fn contains(&self, v: i128) -> bool {
        (self.min..=self.max).contains(&v) || self.sentinel.is_some_and(|(s, _)| s == v)
    }

    /// `Err("KEY = V is out of range: allowed MIN..=MAX UNIT")`; the caller adds the file.
    pub fn check(&self, key: &str, v: impl Into<i128>) -> Result<(), String> {
        let v = v.into();
        if self.contains(v) {
            Ok(())
        } else {
            Err(format!("{key} = {v} is out of range: allowed {self}"))
        }
    }

    pub fn max_u64(&self) -> u64 {
        u64::try_from(self.max).unwrap_or(u64::MAX)
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((s, meaning)) = self.sentinel {
            write!(f, "{s} ({meaning}) or ")?;
        }
        write!(f, "{}..={} {}", self.min, self.max, self.unit)
    }
}

const HOUR: i128 = 3600;
const DAY: i128 = 24 * HOUR;

// runbooks/rollback.toml
/// A service rollout; the runbook waits 300 s (`kubectl rollout status --timeout=300s`). An hour is already an
/// outage; past it a person must decide.
pub const ROLLOUT_SECS: Range = Range::new(1, HOUR, "seconds");
pub const CAPTURE_SECS: Range = Range::new(1, HOUR, "seconds");
pub const CHECK_SECS: Range = Range::new(1, HOUR, "seconds");
/// pg_dump and the integrity snapshot grow with the data: up to 12 h for a large database.
pub const BACKUP_SECS: Range = Range::new(1, 12 * HOUR, "seconds");
/// One Alembic revision (also its statement timeout).
pub const MIGRATION_SECS: Range = Range::new(1, 12 * HOUR, "seconds");
/// `[performance]` of the runbook and `xorbctl perf`/`load`: a load a loopback api can take, for at most an hour.
pub const PERF_RATE: Range = Range::new(1, 10_000, "requests a second");
pub const PERF_DURATION_SECS: Range = Range::new(1, HOUR, "seconds");
pub const PERF_SLACK_MS: Range = Range::new(0, 60_000, "milliseconds");
pub const PERCENT: Range = Range::new(0, 1000, "percent");
pub const PERMILLE: Range = Range::new(0, 1000, "per mille");
/// Tries in all, the first included. Ten tries of a failing step is already a loop nobody watches.
pub const ATTEMPTS: Range = Range::new(1, 10, "attempts");
/// Between two tries. With ATTEMPTS, a step waits at most 9 × 5 min = 45 min in backoff.
pub const BACKOFF_MS: Range = Range::new(0, 300_000, "milliseconds");
/// A step's timeout in a journaled plan: 0 (no limit, only set by code) or the longest of the timeouts above.
pub const STEP_TIMEOUT_SECS: Range = Range::new(1, 12 * HOUR, "seconds").or(0, "no limit");

// releases/*/release.toml
/// Replicas of a service. Zero would be a removal, which the release expresses by leaving the service out.
pub const REPLICAS: Range = Range::new(1, 100, "replicas");

// releases/*/nats/streams.yaml
/// Message age; 0 keeps messages forever (NATS' own meaning). A year is the longest retention we plan for.
pub const STREAM_MAX_AGE_SECS: Range = Range::new(0, 365 * DAY, "seconds (0: no limit)");
pub const STREAM_MAX_MSGS: Range = Range::new(1, 1_000_000_000, "messages").or(-1, "no limit");
/// Up to 1 TiB per stream.
pub const STREAM_MAX_BYTES: Range = Range::new(1, 1 << 40, "bytes").or(-1, "no limit");
/// JetStream allows at most 5 replicas.
pub const STREAM_REPLICAS: Range = Range::new(1, 5, "replicas");

// policies/decision-matrix.toml (durations in seconds)
/// How long an approval of an `immediate` severity stays valid.
pub const IMMEDIATE_VALIDITY_SECS: Range = Range::new(60, DAY, "seconds (1m..=24h)");
/// A severity's decision time (and so how long its approval counts).
pub const DECISION_TIME_SECS: Range = Range::new(60, 7 * DAY, "seconds (1m..=7d)");
/// A trigger's `longer_than`; 0 fires on any outage.
pub const LONGER_THAN_SECS: Range = Range::new(0, 7 * DAY, "seconds (0s..=7d)");
/// A degradation factor is a float: more than 1 (worse than the baseline), at most 1000.
pub const DEGRADATION_FACTOR_MAX: f64 = 1000.0;

/// `from + d`, or the furthest instant this platform can represent when that overflows: a deadline that
/// is never reached rather than a panic.
pub fn deadline(from: Instant, d: Duration) -> Instant {
    from.checked_add(d).unwrap_or_else(|| {
        // Halve until it fits: at worst ~2^63 ns, nearly 300 years away.
        let mut d = d;
        loop {
            d /= 2;
            if let Some(t) = from.checked_add(d) {
                return t;
            }
        }
    })
}

/// A retry's backoff, never longer than the largest one the policy allows.
pub fn clamp_backoff(ms: u64) -> Duration {
    Duration::from_millis(ms.min(BACKOFF_MS.max_u64()))
}

/// A step's timeout, never longer than the largest one a plan allows (`0` stays "no limit").
pub fn clamp_timeout_secs(secs: u64) -> u64 {
    secs.min(STEP_TIMEOUT_SECS.max_u64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_key_value_and_range() {
        assert_eq!(
            ROLLOUT_SECS.check("timeouts.rollout_secs", 0u64),
            Err("timeouts.rollout_secs = 0 is out of range: allowed 1..=3600 seconds".into())
        );
        assert_eq!(
            STREAM_MAX_MSGS.check("streams[0].max_msgs", 0i64),
            Err("streams[0].max_msgs = 0 is out of range: allowed -1 (no limit) or 1..=1000000000 messages".into())
        );
        assert!(STREAM_MAX_MSGS.check("m", -1i64).is_ok());
        assert!(ROLLOUT_SECS.check("r", u64::MAX).is_err());
        assert!(STEP_TIMEOUT_SECS.check("t", 0u64).is_ok());
    }

    #[test]
    fn deadlines_saturate_instead_of_panicking() {
        let now = Instant::now();
        let far = deadline(now, Duration::from_secs(u64::MAX));
        assert!(far > now + Duration::from_secs(3600 * 24 * 365));
        assert_eq!(
            deadline(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
    }

    #[test]
    fn backoff_and_timeouts_are_clamped() {
        assert_eq!(clamp_backoff(u64::MAX), Duration::from_secs(300));
        assert_eq!(clamp_backoff(1000), Duration::from_secs(1));
        assert_eq!(clamp_timeout_secs(u64::MAX), 43_200);
        assert_eq!(clamp_timeout_secs(0), 0);
    }
}
