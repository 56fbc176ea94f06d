//! The rollback policy (`runbooks/rollback.toml`): service order, timeouts, retries, emergency procedures,
//! checks. Embedded in the binary; an operator may pass another file.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::limits;
use crate::plan::{EmergencyProcedure, FailurePolicy};

pub const EMBEDDED: &str = include_str!("../../../runbooks/rollback.toml");

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub service_order: Vec<String>,
    pub timeouts: Timeouts,
    pub services: StepPolicy,
    pub config: StepPolicy,
    /// Phase 3 migrations and phase 4 applies. A failed migration is retried only after its probe says it did
    /// not happen; no emergency procedure runs by default (the services keep running on the expand-only schema).
    #[serde(default = "StepPolicy::stateful")]
    pub stateful: StepPolicy,
    /// Phase 5's checks. A check that fails is tried again after a pause: a service that has just reconnected to
    /// a dependency can fail one probe and be healthy a second later, and a run must not fail on that. A check that
    /// finds something wrong for certain (tenant isolation broken) is not retried.
    #[serde(default = "StepPolicy::verification")]
    pub verification: StepPolicy,
    pub checks: Checks,
    /// Phase 5's performance baseline check (`performance_test.py --baseline`): how a load is sent and how its
    /// figures are compared with the target release's kept ones.
    #[serde(default)]
    pub performance: Performance,
    /// Release name (dots replaced by dashes, since TOML keys with dots nest) → forced settings.
    #[serde(default)]
    pub limitations: BTreeMap<String, BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    pub rollout_secs: u64,
    pub capture_secs: u64,
    pub check_secs: u64,
    /// A backup (pg_dump, Redis RDB, NATS save) or the integrity snapshot.
    #[serde(default = "default_backup_secs")]
    pub backup_secs: u64,
    /// One Alembic revision; also the statement timeout its SQL runs with.
    #[serde(default = "default_migration_secs")]
    pub migration_secs: u64,
}

fn default_backup_secs() -> u64 {
    600
}

fn default_migration_secs() -> u64 {
    600
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StepPolicy {
    pub attempts: u32,
    pub backoff_ms: u64,
    pub emergency: String,
}

impl StepPolicy {
    fn verification() -> Self {
        StepPolicy {
            attempts: 3,
            backoff_ms: 3000,
            emergency: "none".into(),
        }
    }

    fn stateful() -> Self {
        StepPolicy {
            attempts: 2,
            backoff_ms: 2000,
            emergency: "none".into(),
        }
    }
}

/// The load `xorbctl perf` measures a release's baseline with, and how far phase 5 may stray from it. The check
/// sends the load the baseline was measured with (its rate and duration, kept with the figures), so the two are
/// compared at the same load whatever this file says today; `rate` and `duration_secs` are `perf`'s defaults.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Performance {
    /// Requests a second (open model: sent on schedule whether or not earlier ones were answered).
    pub rate: u32,
    pub duration_secs: u64,
    /// The p99 (from each request's due time) may be this many percent above the baseline's…
    pub p99_tolerance_pct: u32,
    /// …or this many milliseconds, whichever is more: on loopback a p99 of 4 ms against 3 ms is noise, not a
    /// regression.
    pub p99_slack_ms: u64,
    /// The share of errors (5xx, no answer in time) may rise by this many per mille over the baseline's.
    pub error_increase_permille: u32,
}

impl Default for Performance {
    fn default() -> Self {
        Performance {
            rate: 40,
            duration_secs: 5,
            p99_tolerance_pct: 25,
            p99_slack_ms: 20,
            error_increase_permille: 10,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Checks {
    pub after_service: Vec<String>,
    pub verification: Vec<String>,
    /// The window of the `audit-log` check, as the runbook's `audit_log_integrity.py --since "1 hour ago"`:
    /// a number and a unit (`s`, `m`, `h`, `d`).
    #[serde(default = "Checks::default_audit_window")]
    pub audit_window: String,
}

impl Checks {
    fn default_audit_window() -> String {
        "1h".into()
    }

    /// `audit_window` in seconds.
    pub fn audit_window_secs(&self) -> Result<u64, String> {
        parse_window(&self.audit_window)
    }
}

/// `30m`, `1h`, `2d`: a positive whole number and a unit, at most 366 days.
pub fn parse_window(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let bad = || format!("checks.audit_window: {text:?} is not a window like 30m, 1h or 2d");
    let unit_at = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = t.split_at(unit_at);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    match n.checked_mul(mult) {
        Some(secs) if secs > 0 && secs <= 366 * 86_400 => Ok(secs),
        _ => Err(format!(
            "checks.audit_window: {text:?} is out of range (1 s to 366 d)"
        )),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("runbook policy {origin} is not valid: {message}")]
pub struct PolicyError {
    pub origin: String,
    pub message: String,
}

impl PolicyError {
    /// This error's exit code (`docs/exit-codes.md`): an invalid runbook policy is bad input.
    pub fn exit(&self) -> crate::exit::Exit {
        crate::exit::Exit::BadInput
    }
}

impl Policy {
    pub fn embedded() -> Self {
        Self::parse(EMBEDDED, "(embedded runbooks/rollback.toml)")
            .expect("the shipped policy is valid")
    }

    pub fn parse(text: &str, origin: &str) -> Result<Self, PolicyError> {
        let err = |message: String| PolicyError {
            origin: origin.to_string(),
            message,
        };
        let p: Policy = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        let mut seen = std::collections::BTreeSet::new();
        for s in &p.service_order {
            if !crate::release::SERVICE_ORDER.contains(&s.as_str()) || !seen.insert(s) {
                return Err(err(format!("service_order: {s:?} is unknown or repeated")));
            }
        }
        // Every check in the set has a case in the runner: a name outside it is one no target can run.
        for c in p.checks.after_service.iter().chain(&p.checks.verification) {
            if crate::check::Check::parse(c).is_none() {
                return Err(err(format!(
                    "unknown check {c:?}: no target can run it (known: {})",
                    crate::check::Check::names()
                )));
            }
        }
        p.checks.audit_window_secs().map_err(err)?;
        for (table, sp) in [
            ("services", &p.services),
            ("config", &p.config),
            ("stateful", &p.stateful),
            ("verification", &p.verification),
        ] {
            let procedure = parse_emergency(&sp.emergency).map_err(err)?;
            // A restore answers a failed change of the data; after a service or a check it would throw away
            // what the services wrote since the backup for nothing the data caused.
            if procedure == Some(EmergencyProcedure::RestoreBackup) && table != "stateful" {
                return Err(err(format!(
                    "{table}.emergency = \"restore-backup\": only [stateful] (phases 3 and 4) may restore the \
                     database; use minimal-service, cascade-prevention or none"
                )));
            }
        }
        p.check_numbers().map_err(err)?;
        Ok(p)
    }

    /// Every number against its range (`limits`), so that no timeout or backoff can overflow or stall a run.
    pub fn check_numbers(&self) -> Result<(), String> {
        let t = &self.timeouts;
        for (key, v, range) in [
            (
                "timeouts.rollout_secs",
                t.rollout_secs,
                limits::ROLLOUT_SECS,
            ),
            (
                "timeouts.capture_secs",
                t.capture_secs,
                limits::CAPTURE_SECS,
            ),
            ("timeouts.check_secs", t.check_secs, limits::CHECK_SECS),
            ("timeouts.backup_secs", t.backup_secs, limits::BACKUP_SECS),
            (
                "timeouts.migration_secs",
                t.migration_secs,
                limits::MIGRATION_SECS,
            ),
        ] {
            range.check(key, v)?;
        }
        let perf = &self.performance;
        limits::PERF_RATE.check("performance.rate", perf.rate)?;
        limits::PERF_DURATION_SECS.check("performance.duration_secs", perf.duration_secs)?;
        limits::PERCENT.check("performance.p99_tolerance_pct", perf.p99_tolerance_pct)?;
        limits::PERF_SLACK_MS.check("performance.p99_slack_ms", perf.p99_slack_ms)?;
        limits::PERMILLE.check(
            "performance.error_increase_permille",
            perf.error_increase_permille,
        )?;
        for (table, sp) in [
            ("services", &self.services),
            ("config", &self.config),
            ("stateful", &self.stateful),
            ("verification", &self.verification),
        ] {
            limits::ATTEMPTS.check(&format!("{table}.attempts"), sp.attempts)?;
            limits::BACKOFF_MS.check(&format!("{table}.backoff_ms"), sp.backoff_ms)?;
        }
        Ok(())
    }

    pub fn failure_policy(sp: &StepPolicy) -> FailurePolicy {
        FailurePolicy::Retry {
            attempts: sp.attempts,
            backoff_ms: sp.backoff_ms,
            then: parse_emergency(&sp.emergency).ok().flatten(),
        }
    }

    /// Settings the runbook's known limitations force on `release`.
    pub fn forced_settings(&self, release: &str) -> BTreeMap<String, String> {
        self.limitations
            .get(&release.replace('.', "-"))
            .cloned()
            .unwrap_or_default()
    }
}

fn parse_emergency(s: &str) -> Result<Option<EmergencyProcedure>, String> {
    match s {
        "none" => Ok(None),
        "minimal-service" => Ok(Some(EmergencyProcedure::MinimalService)),
        "cascade-prevention" => Ok(Some(EmergencyProcedure::CascadePrevention)),
        "restore-backup" => Ok(Some(EmergencyProcedure::RestoreBackup)),
        other => Err(format!(
            "emergency {other:?}: use minimal-service, cascade-prevention, restore-backup or none"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audit_window_reads_like_the_runbooks_since() {
        assert_eq!(Policy::embedded().checks.audit_window_secs(), Ok(3600));
        assert_eq!(parse_window("30m"), Ok(1800));
        assert_eq!(parse_window("2d"), Ok(172_800));
        for bad in [
            "",
            "h",
            "1",
            "1 hour ago",
            "0h",
            "-1h",
            "400d",
            "99999999999999999999s",
        ] {
            assert!(parse_window(bad).is_err(), "{bad:?}");
        }
        let e = Policy::parse(
            &EMBEDDED.replace("audit_window = \"1h\"", "audit_window = \"1 hour\""),
            "my.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("my.toml") && e.contains("audit_window"), "{e}");
    }

    #[test]
    fn the_shipped_policy_parses_and_follows_the_runbook() {
        let p = Policy::embedded();
        assert_eq!(p.service_order, crate::release::SERVICE_ORDER);
        assert_eq!(p.timeouts.rollout_secs, 300);
        assert_eq!(
            p.forced_settings("v2025.07-stable")["TENANT_ISOLATION_MODE"],
            "basic"
        );
    }

    #[test]
    fn a_bad_policy_says_what_and_where() {
        let e = Policy::parse(&EMBEDDED.replace("\"smoke\"", "\"smok\""), "my.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("my.toml") && e.contains("unknown check \"smok\""),
            "{e}"
        );
    }

    #[test]
    fn only_the_stateful_steps_may_restore_the_database() {
        let section = |name: &str, to: &str| {
            let (head, tail) = EMBEDDED.split_once(&format!("[{name}]")).unwrap();
            let tail = tail.replacen("emergency = \"", &format!("emergency = \"{to}\" # "), 1);
            Policy::parse(&format!("{head}[{name}]{tail}"), "my.toml")
        };
        let p = section("stateful", "restore-backup").unwrap();
        assert_eq!(
            Policy::failure_policy(&p.stateful).emergency(),
            Some(EmergencyProcedure::RestoreBackup)
        );
        let e = section("services", "restore-backup")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("my.toml") && e.contains("only [stateful]"),
            "{e}"
        );
    }

    fn with(key: &str, from: &str, to: &str) -> Result<Policy, PolicyError> {
        let text = EMBEDDED.replacen(&format!("{key} = {from}"), &format!("{key} = {to}"), 1);
        assert_ne!(text, EMBEDDED, "{key} = {from} is in the shipped policy");
        Policy::parse(&text, "runbooks/x.toml")
    }

    #[test]
    fn numbers_out_of_range_are_refused_with_file_key_and_range() {
        let e = with("rollout_secs", "300", "18446744073709551615")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("runbooks/x.toml")
                && e.contains("timeouts.rollout_secs = 18446744073709551615 is out of range: allowed 1..=3600 seconds"),
            "{e}"
        );
        let e = with("rollout_secs", "300", "0").unwrap_err().to_string();
        assert!(
            e.contains("timeouts.rollout_secs = 0 is out of range"),
            "{e}"
        );
        let e = with("backoff_ms", "1000", "18446744073709551615")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("services.backoff_ms = 18446744073709551615 is out of range: allowed 0..=300000 milliseconds"),
            "{e}"
        );
        let e = with("backoff_ms", "2000", "300001")
            .unwrap_err()
            .to_string();
        assert!(e.contains("stateful.backoff_ms = 300001"), "{e}");
        let e = with("attempts", "2", "11").unwrap_err().to_string();
        assert!(
            e.contains("services.attempts = 11 is out of range: allowed 1..=10"),
            "{e}"
        );
        let e = with("attempts", "2", "0").unwrap_err().to_string();
        assert!(e.contains("services.attempts = 0"), "{e}");
        for key in ["capture_secs", "check_secs"] {
            let e = with(key, "120", "3601").unwrap_err().to_string();
            assert!(e.contains(&format!("timeouts.{key} = 3601")), "{e}");
        }
        for key in ["backup_secs", "migration_secs"] {
            let e = with(key, "600", "43201").unwrap_err().to_string();
            assert!(e.contains(&format!("timeouts.{key} = 43201")), "{e}");
            assert!(with(key, "600", "43200").is_ok());
        }
        assert!(with("rollout_secs", "300", "3600").is_ok());
        assert!(with("backoff_ms", "1000", "0").is_ok());
    }

    #[test]
    fn a_negative_or_non_integer_number_is_a_parse_error_not_a_panic() {
        assert!(with("rollout_secs", "300", "-1").is_err());
        assert!(with("rollout_secs", "300", "1e99").is_err());
        assert!(with("rollout_secs", "300", "99999999999999999999999").is_err());
    }
}
