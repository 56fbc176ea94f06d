//! The rollback policy (`runbooks/rollback.toml`): service order, timeouts, retries, emergency procedures,
//! checks. Embedded in the binary; an operator may pass another file.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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
    pub checks: Checks,
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
    fn stateful() -> Self {
        StepPolicy {
            attempts: 2,
            backoff_ms: 2000,
            emergency: "none".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Checks {
    pub after_service: Vec<String>,
    pub verification: Vec<String>,
}

pub const KNOWN_CHECKS: [&str; 11] = [
    "integrity-full",
    "loss",
    "health",
    "release",
    "info",
    "smoke",
    "tenant-isolation",
    "evidence-legacy",
    "quota",
    "integrity-quick",
    "none",
];

#[derive(Debug, thiserror::Error)]
#[error("runbook policy {origin} is not valid: {message}")]
pub struct PolicyError {
    pub origin: String,
    pub message: String,
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
        for c in p.checks.after_service.iter().chain(&p.checks.verification) {
            if !KNOWN_CHECKS.contains(&c.as_str()) {
                return Err(err(format!(
                    "unknown check {c:?} (known: {})",
                    KNOWN_CHECKS.join(", ")
                )));
            }
        }
        for sp in [&p.services, &p.config] {
            parse_emergency(&sp.emergency).map_err(err)?;
            if sp.attempts == 0 {
                return Err(err("attempts must be at least 1".into()));
            }
        }
        Ok(p)
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
        other => Err(format!(
            "emergency {other:?}: use minimal-service, cascade-prevention or none"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
