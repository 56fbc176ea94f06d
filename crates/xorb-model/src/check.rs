//! The checks a runbook policy can name: a closed set, so that a check no target can run is refused when the
//! policy loads, and a runner must have a case for each one (the compiler holds it to that).

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Check {
    /// Every service (or, as a gate, the step's services) answers healthy.
    Health,
    /// The step's services report the release they were set to (a gate after a service step).
    Release,
    /// The api reports the target release.
    Info,
    /// A real scan session end to end.
    Smoke,
    /// A tenant cannot read another tenant's session.
    TenantIsolation,
    /// Evidence as the target release handles it (on, and every record verifies; or off, files kept).
    EvidenceLegacy,
    /// The control plane's quotas, when the target has one.
    Quota,
    /// Prometheus scrapes every target of the target release (each up, scraped lately) and serves its rule groups.
    Monitoring,
    /// A load of known rate against the api, compared with the target release's kept figures (`xorbctl perf`).
    Performance,
    /// No table lost rows since phase 1's counts.
    IntegrityQuick,
    /// Every table checksummed again and compared with phase 3's full scan.
    IntegrityFull,
    /// Every row lost since phase 3's snapshot is accounted for by a verified preservation.
    Loss,
    /// The platform's own audit log over a window: rc1's chained entries verify up to the rollback, stable's
    /// plain entries follow, nothing missing in between (the runbook's `audit_log_integrity.py --since`).
    AuditLog,
}

impl Check {
    pub const ALL: [Check; 13] = [
        Check::Health,
        Check::Release,
        Check::Info,
        Check::Smoke,
        Check::TenantIsolation,
        Check::EvidenceLegacy,
        Check::Quota,
        Check::Monitoring,
        Check::Performance,
        Check::IntegrityQuick,
        Check::IntegrityFull,
        Check::Loss,
        Check::AuditLog,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Check::Health => "health",
            Check::Release => "release",
            Check::Info => "info",
            Check::Smoke => "smoke",
            Check::TenantIsolation => "tenant-isolation",
            Check::EvidenceLegacy => "evidence-legacy",
            Check::Quota => "quota",
            Check::Monitoring => "monitoring",
            Check::Performance => "performance",
            Check::IntegrityQuick => "integrity-quick",
            Check::IntegrityFull => "integrity-full",
            Check::Loss => "loss",
            Check::AuditLog => "audit-log",
        }
    }

    pub fn parse(name: &str) -> Option<Check> {
        Check::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The known names, for messages.
    pub fn names() -> String {
        Check::ALL.map(Check::name).join(", ")
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A check that ran as a gate of a step, with its result: what the report lists and the checklist ticks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRun {
    pub check: String,
    pub passed: bool,
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_check_parses_back_from_its_name() {
        for c in Check::ALL {
            assert_eq!(Check::parse(c.name()), Some(c));
        }
        assert_eq!(Check::parse("none"), None);
        assert_eq!(Check::parse("Health"), None);
    }
}
