//! The runbook's decision matrix as policy (`policies/decision-matrix.toml`) and its assessment of the evidence.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{self, PolicyError};
use crate::time::{fmt_duration, parse_duration};
use xorb_model::limits;

/// Incident severity. `P0` is the most severe; the derived order sorts P0 first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Severity {
    P0,
    P1,
    P2,
    P3,
}

impl Severity {
    pub const ALL: [Severity; 4] = [Severity::P0, Severity::P1, Severity::P2, Severity::P3];
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::P0 => "P0",
            Severity::P1 => "P1",
            Severity::P2 => "P2",
            Severity::P3 => "P3",
        })
    }
}

impl FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_uppercase().as_str() {
            "P0" => Ok(Severity::P0),
            "P1" => Ok(Severity::P1),
            "P2" => Ok(Severity::P2),
            "P3" => Ok(Severity::P3),
            _ => Err(format!("unknown severity {s:?}; expected P0, P1, P2 or P3")),
        }
    }
}

/// The runbook's approver roles. How they rank is policy (`policies/operators.toml`), not this type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    OnCallEngineer,
    TeamLead,
    EngineeringManager,
    ProductOwner,
}

impl Role {
    pub const ALL: [Role; 4] = [
        Role::OnCallEngineer,
        Role::TeamLead,
        Role::EngineeringManager,
        Role::ProductOwner,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::OnCallEngineer => "on-call-engineer",
            Role::TeamLead => "team-lead",
            Role::EngineeringManager => "engineering-manager",
            Role::ProductOwner => "product-owner",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s.trim())
            .ok_or_else(|| {
                format!(
                    "unknown role {s:?}; expected one of {}",
                    Role::ALL.map(Role::as_str).join(", ")
                )
            })
    }
}

/// How long the approver has to decide. An approval stays valid for this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionTime {
    Immediate,
    Within(Duration),
}

impl fmt::Display for DecisionTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecisionTime::Immediate => f.write_str("immediate"),
            DecisionTime::Within(d) => f.write_str(&fmt_duration(*d)),
        }
    }
}

impl Serialize for DecisionTime {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl FromStr for DecisionTime {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim() == "immediate" {
            return Ok(DecisionTime::Immediate);
        }
        match parse_duration(s)? {
            d if d.is_zero() => Err("a zero decision time; write \"immediate\"".into()),
            d => Ok(DecisionTime::Within(d)),
        }
    }
}

/// What a trigger looks at, with its parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum TriggerKind {
    ServiceUnavailable {
        longer_than: Duration,
    },
    DataCorruption,
    SecurityBreach,
    SloBreach {
        longer_than: Duration,
    },
    /// Fires when one of these checks failed; an empty list means any check.
    ChecksFailed {
        checks: Vec<String>,
    },
    /// A measure counts as degraded when it exceeds `factor` times its baseline, or times its floor when the
    /// baseline is below it: a p99 of 3 ms against 1 ms, or one 5xx against none, is not what the runbook's
    /// "degradation > 2x" means, and a baseline of zero errors has no ratio at all.
    Degradation {
        factor: f64,
        min_p99_secs: f64,
        min_error_rate: f64,
    },
    MonitoringIssues,
    ReportedBugs,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Trigger {
    pub name: String,
    pub kind: TriggerKind,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SeverityPolicy {
    pub level: Severity,
    pub label: String,
    pub decision_time: DecisionTime,
    pub approver_role: Role,
    /// The approver must be someone other than the operator who requested the rollback.
    pub second_person: bool,
    /// May be approved on the rollback's command line, so the run proceeds at once.
    pub command_line: bool,
    pub triggers: Vec<Trigger>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DecisionMatrix {
    /// Where the policy came from (a path, or `builtin:…`), for messages.
    pub source: String,
    /// How long an approval for an `immediate` severity stays valid.
    pub immediate_validity: Duration,
    /// One per severity, P0 first.
    pub levels: Vec<SeverityPolicy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatrix {
    immediate_validity: Option<String>,
    #[serde(default)]
    severity: Vec<RawSeverity>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSeverity {
    level: String,
    label: Option<String>,
    decision_time: String,
    approver_role: String,
    second_person: bool,
    #[serde(default)]
    command_line: bool,
    #[serde(default)]
    trigger: Vec<RawTrigger>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrigger {
    name: String,
    kind: String,
    longer_than: Option<String>,
    checks: Option<Vec<String>>,
    factor: Option<f64>,
    min_p99_secs: Option<f64>,
    min_error_rate: Option<f64>,
}

const KINDS: &str = "service_unavailable, data_corruption, security_breach, slo_breach, checks_failed, degradation, monitoring_issues, reported_bugs";

impl DecisionMatrix {
    pub fn builtin() -> Self {
        Self::parse(
            "builtin:policies/decision-matrix.toml",
            crate::builtin::DECISION_MATRIX,
        )
        .expect("the shipped decision matrix is valid")
    }

    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let (file, text) = error::read(path)?;
        Self::parse(&file, &text)
    }

    pub fn parse(file: &str, text: &str) -> Result<Self, PolicyError> {
        let raw: RawMatrix = toml::from_str(text).map_err(|e| PolicyError::parse(file, &e))?;
        let immediate_validity = match &raw.immediate_validity {
            None => Duration::from_secs(15 * 60),
            Some(s) => parse_duration(s)
                .and_then(|d| in_range(&limits::IMMEDIATE_VALIDITY_SECS, s, d))
                .map_err(|m| PolicyError::invalid(file, "immediate_validity", m))?,
        };
        let mut levels: Vec<SeverityPolicy> = Vec::new();
        for (i, rs) in raw.severity.iter().enumerate() {
            let at = |f: &str| format!("severity[{i}].{f}");
            let level: Severity = rs
                .level
                .parse()
                .map_err(|m| PolicyError::invalid(file, at("level"), m))?;
            if levels.iter().any(|l| l.level == level) {
                return Err(PolicyError::invalid(
                    file,
                    at("level"),
                    format!("{level} is defined twice"),
                ));
            }
            let decision_time = rs
                .decision_time
                .parse()
                .and_then(|t| match t {
                    DecisionTime::Within(d) => {
                        in_range(&limits::DECISION_TIME_SECS, &rs.decision_time, d)
                            .map(DecisionTime::Within)
                    }
                    DecisionTime::Immediate => Ok(t),
                })
                .map_err(|m| PolicyError::invalid(file, at("decision_time"), m))?;
            let approver_role = rs
                .approver_role
                .parse()
                .map_err(|m| PolicyError::invalid(file, at("approver_role"), m))?;
            if rs.trigger.is_empty() {
                return Err(PolicyError::invalid(
                    file,
                    at("trigger"),
                    format!("{level} has no trigger"),
                ));
            }
            let mut triggers = Vec::new();
            for (j, rt) in rs.trigger.iter().enumerate() {
                triggers.push(trigger(file, &format!("severity[{i}].trigger[{j}]"), rt)?);
            }
            levels.push(SeverityPolicy {
                level,
                label: rs.label.clone().unwrap_or_default(),
                decision_time,
                approver_role,
                second_person: rs.second_person,
                command_line: rs.command_line,
                triggers,
            });
        }
        for s in Severity::ALL {
            if !levels.iter().any(|l| l.level == s) {
                return Err(PolicyError::invalid(
                    file,
                    "severity",
                    format!("{s} is missing; define P0, P1, P2 and P3"),
                ));
            }
        }
        let mut names = BTreeSet::new();
        for (i, l) in levels.iter().enumerate() {
            for (j, t) in l.triggers.iter().enumerate() {
                if !names.insert(t.name.as_str()) {
                    return Err(PolicyError::invalid(
                        file,
                        format!("severity[{i}].trigger[{j}].name"),
                        format!("trigger name {:?} is used twice", t.name),
                    ));
                }
            }
        }
        levels.sort_by_key(|l| l.level);
        Ok(DecisionMatrix {
            source: file.to_string(),
            immediate_validity,
            levels,
        })
    }

    pub fn policy(&self, s: Severity) -> &SeverityPolicy {
        self.levels
            .iter()
            .find(|l| l.level == s)
            .expect("validated: every severity is defined")
    }

    /// How long an approval for this severity counts: its decision time, or `immediate_validity`.
    pub fn approval_validity(&self, s: Severity) -> Duration {
        match self.policy(s).decision_time {
            DecisionTime::Immediate => self.immediate_validity,
            DecisionTime::Within(d) => d,
        }
    }

    /// Evaluates every trigger of every severity; the most severe level with a trigger that fired wins.
    pub fn assess(&self, ev: &Evidence) -> Assessment {
        let mut triggers = Vec::new();
        let mut verdict: Option<&SeverityPolicy> = None;
        for l in &self.levels {
            for t in &l.triggers {
                let (fired, evidence) = evaluate(&t.kind, ev);
                if fired && verdict.is_none() {
                    verdict = Some(l);
                }
                triggers.push(TriggerResult {
                    severity: l.level,
                    name: t.name.clone(),
                    fired,
                    evidence,
                });
            }
        }
        Assessment {
            severity: verdict.map(|l| l.level),
            decision_time: verdict.map(|l| l.decision_time),
            approver_role: verdict.map(|l| l.approver_role),
            second_person: verdict.map(|l| l.second_person),
            triggers,
        }
    }
}

/// `Err("\"30d\" = 2592000 seconds is out of range: allowed …")` when `d` is outside `range` (seconds).
fn in_range(range: &limits::Range, written: &str, d: Duration) -> Result<Duration, String> {
    if range.contains(i128::from(d.as_secs())) {
        Ok(d)
    } else {
        Err(format!(
            "{written:?} = {} seconds is out of range: allowed {range}",
            d.as_secs()
        ))
    }
}

fn trigger(file: &str, at: &str, rt: &RawTrigger) -> Result<Trigger, PolicyError> {
    let field = |f: &str| format!("{at}.{f}");
    if rt.name.trim().is_empty() {
        return Err(PolicyError::invalid(file, field("name"), "empty"));
    }
    let dur = |name: &str, v: &Option<String>| -> Result<Duration, PolicyError> {
        let v = v.as_ref().ok_or_else(|| {
            PolicyError::invalid(
                file,
                field(name),
                format!("required for kind {:?} (e.g. \"5m\")", rt.kind),
            )
        })?;
        parse_duration(v)
            .and_then(|d| in_range(&limits::LONGER_THAN_SECS, v, d))
            .map_err(|m| PolicyError::invalid(file, field(name), m))
    };
    let kind = match rt.kind.as_str() {
        "service_unavailable" => TriggerKind::ServiceUnavailable {
            longer_than: dur("longer_than", &rt.longer_than)?,
        },
        "slo_breach" => TriggerKind::SloBreach {
            longer_than: dur("longer_than", &rt.longer_than)?,
        },
        "data_corruption" => TriggerKind::DataCorruption,
        "security_breach" => TriggerKind::SecurityBreach,
        "monitoring_issues" => TriggerKind::MonitoringIssues,
        "reported_bugs" => TriggerKind::ReportedBugs,
        "checks_failed" => TriggerKind::ChecksFailed {
            checks: rt.checks.clone().ok_or_else(|| {
                PolicyError::invalid(
                    file,
                    field("checks"),
                    "required for kind \"checks_failed\" ([] means any check)",
                )
            })?,
        },
        "degradation" => {
            let factor = match rt.factor {
                Some(f) if f.is_finite() && f > 1.0 && f <= limits::DEGRADATION_FACTOR_MAX => f,
                Some(f) => {
                    return Err(PolicyError::invalid(
                        file,
                        field("factor"),
                        format!(
                            "{f} is out of range: allowed greater than 1, at most {}",
                            limits::DEGRADATION_FACTOR_MAX
                        ),
                    ));
                }
                None => {
                    return Err(PolicyError::invalid(
                        file,
                        field("factor"),
                        "required for kind \"degradation\" (e.g. 2.0)",
                    ));
                }
            };
            let floor = |name: &str, v: Option<f64>, max: f64| match v {
                None => Ok(0.0),
                Some(x) if x.is_finite() && (0.0..=max).contains(&x) => Ok(x),
                Some(x) => Err(PolicyError::invalid(
                    file,
                    field(name),
                    format!("{x} is out of range: allowed 0 to {max}"),
                )),
            };
            TriggerKind::Degradation {
                factor,
                min_p99_secs: floor("min_p99_secs", rt.min_p99_secs, 60.0)?,
                min_error_rate: floor("min_error_rate", rt.min_error_rate, 1.0)?,
            }
        }
        other => {
            return Err(PolicyError::invalid(
                file,
                field("kind"),
                format!("unknown kind {other:?}; expected one of {KINDS}"),
            ));
        }
    };
    let uses = |p: &str| match p {
        "longer_than" => matches!(
            kind,
            TriggerKind::ServiceUnavailable { .. } | TriggerKind::SloBreach { .. }
        ),
        "checks" => matches!(kind, TriggerKind::ChecksFailed { .. }),
        _ => matches!(kind, TriggerKind::Degradation { .. }),
    };
    for (p, set) in [
        ("longer_than", rt.longer_than.is_some()),
        ("checks", rt.checks.is_some()),
        ("factor", rt.factor.is_some()),
        ("min_p99_secs", rt.min_p99_secs.is_some()),
        ("min_error_rate", rt.min_error_rate.is_some()),
    ] {
        if set && !uses(p) {
            return Err(PolicyError::invalid(
                file,
                field(p),
                format!("not used by kind {:?}", rt.kind),
            ));
        }
    }
    Ok(Trigger {
        name: rt.name.clone(),
        kind,
    })
}

/// What the caller found on the live stack. Plain data; every field has a neutral default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Evidence {
    /// Services that are down, with how long they have been down.
    pub services_unavailable: Vec<ServiceDown>,
    /// Smoke/verification checks that failed.
    pub checks_failed: Vec<FailedCheck>,
    /// How long an SLO has been breached, when known.
    pub slo_breached_for_secs: Option<u64>,
    /// 5xx rate (per second or ratio, the same unit for both) now against the previous baseline.
    pub error_rate: Option<Comparison>,
    /// p99 latency in seconds now against the previous baseline.
    pub p99_latency_secs: Option<Comparison>,
    pub data_corruption: bool,
    pub security_breach: bool,
    pub monitoring_issues: Vec<String>,
    pub reported_bugs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceDown {
    pub service: String,
    pub down_for_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedCheck {
    pub name: String,
    #[serde(default)]
    pub detail: String,
}

/// A measurement now and at the previous baseline (`None` where Prometheus has no baseline).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub now: f64,
    pub baseline: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TriggerResult {
    pub severity: Severity,
    pub name: String,
    pub fired: bool,
    pub evidence: String,
}

/// The verdict: `severity` is `None` when no trigger fired (no rollback warranted).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Assessment {
    pub severity: Option<Severity>,
    pub decision_time: Option<DecisionTime>,
    pub approver_role: Option<Role>,
    pub second_person: Option<bool>,
    pub triggers: Vec<TriggerResult>,
}

impl Assessment {
    pub fn rollback_warranted(&self) -> bool {
        self.severity.is_some()
    }

    pub fn fired(&self) -> impl Iterator<Item = &TriggerResult> {
        self.triggers.iter().filter(|t| t.fired)
    }
}

impl fmt::Display for Assessment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.severity, self.decision_time, self.approver_role) {
            (Some(s), Some(d), Some(r)) => {
                writeln!(f, "severity: {s}")?;
                writeln!(f, "decision time: {d}")?;
                writeln!(
                    f,
                    "approver: {r}{}",
                    if self.second_person == Some(true) {
                        " (a second person)"
                    } else {
                        ""
                    }
                )?;
            }
            _ => writeln!(
                f,
                "severity: none (no trigger fired: no rollback warranted)"
            )?,
        }
        for t in &self.triggers {
            writeln!(
                f,
                "  [{}] {} {}: {}",
                if t.fired { "x" } else { " " },
                t.severity,
                t.name,
                t.evidence
            )?;
        }
        Ok(())
    }
}

fn evaluate(kind: &TriggerKind, ev: &Evidence) -> (bool, String) {
    match kind {
        TriggerKind::ServiceUnavailable { longer_than } => {
            if ev.services_unavailable.is_empty() {
                return (false, "all services available".into());
            }
            let limit = longer_than.as_secs();
            let fired = ev
                .services_unavailable
                .iter()
                .any(|s| s.down_for_secs > limit);
            let list: Vec<String> = ev
                .services_unavailable
                .iter()
                .map(|s| {
                    format!(
                        "{} down {}",
                        s.service,
                        fmt_duration(Duration::from_secs(s.down_for_secs))
                    )
                })
                .collect();
            (
                fired,
                format!(
                    "{} (threshold: longer than {})",
                    list.join(", "),
                    fmt_duration(*longer_than)
                ),
            )
        }
        TriggerKind::DataCorruption => (
            ev.data_corruption,
            if ev.data_corruption {
                "data corruption reported"
            } else {
                "no data corruption reported"
            }
            .into(),
        ),
        TriggerKind::SecurityBreach => (
            ev.security_breach,
            if ev.security_breach {
                "security breach declared"
            } else {
                "no security breach declared"
            }
            .into(),
        ),
        TriggerKind::SloBreach { longer_than } => match ev.slo_breached_for_secs {
            None => (false, "no SLO breach known".into()),
            Some(s) => (
                s > longer_than.as_secs(),
                format!(
                    "SLO breached for {} (threshold: longer than {})",
                    fmt_duration(Duration::from_secs(s)),
                    fmt_duration(*longer_than)
                ),
            ),
        },
        TriggerKind::ChecksFailed { checks } => {
            let hits: Vec<&FailedCheck> = ev
                .checks_failed
                .iter()
                .filter(|c| checks.is_empty() || checks.iter().any(|n| n == &c.name))
                .collect();
            let scope = if checks.is_empty() {
                "any check".to_string()
            } else {
                checks.join(", ")
            };
            if hits.is_empty() {
                (false, format!("no failed check among: {scope}"))
            } else {
                let list: Vec<String> = hits
                    .iter()
                    .map(|c| {
                        if c.detail.is_empty() {
                            c.name.clone()
                        } else {
                            format!("{} ({})", c.name, c.detail)
                        }
                    })
                    .collect();
                (true, format!("failed: {}", list.join(", ")))
            }
        }
        TriggerKind::Degradation {
            factor,
            min_p99_secs,
            min_error_rate,
        } => {
            let mut fired = false;
            let mut parts = Vec::new();
            for (what, m, floor) in [
                ("p99 latency", ev.p99_latency_secs, *min_p99_secs),
                ("error rate", ev.error_rate, *min_error_rate),
            ] {
                match m {
                    None => parts.push(format!("{what}: not measured")),
                    Some(Comparison {
                        now,
                        baseline: None,
                    }) => parts.push(format!("{what}: {} now, no baseline", fig(now))),
                    Some(Comparison {
                        now,
                        baseline: Some(b),
                    }) if b.max(floor) <= 0.0 => parts.push(format!(
                        "{what}: {} now, baseline {} (no ratio)",
                        fig(now),
                        fig(b)
                    )),
                    Some(Comparison {
                        now,
                        baseline: Some(b),
                    }) => {
                        let against = b.max(floor);
                        let ratio = now / against;
                        fired |= ratio > *factor;
                        let base = if b < floor {
                            format!("{} baseline, below its floor {}", fig(b), fig(floor))
                        } else {
                            format!("{} baseline", fig(b))
                        };
                        parts.push(format!(
                            "{what}: {} now vs {base} ({ratio:.2}x, threshold >{factor}x)",
                            fig(now)
                        ));
                    }
                }
            }
            (fired, parts.join("; "))
        }
        TriggerKind::MonitoringIssues => {
            list_evidence(&ev.monitoring_issues, "no monitoring issues")
        }
        TriggerKind::ReportedBugs => list_evidence(&ev.reported_bugs, "no bugs reported"),
    }
}

fn list_evidence(items: &[String], none: &str) -> (bool, String) {
    if items.is_empty() {
        (false, none.to_string())
    } else {
        (true, items.join("; "))
    }
}

/// A measured figure for people: four significant digits, no trailing zeros (0.3686, not 0.3685647058823528).
fn fig(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let decimals = (3 - x.abs().log10().floor() as i32).max(0) as usize;
    let t = format!("{x:.decimals$}");
    if t.contains('.') {
        t.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m() -> DecisionMatrix {
        DecisionMatrix::builtin()
    }

    fn down(service: &str, secs: u64) -> ServiceDown {
        ServiceDown {
            service: service.into(),
            down_for_secs: secs,
        }
    }

    fn failed(name: &str) -> FailedCheck {
        FailedCheck {
            name: name.into(),
            detail: String::new(),
        }
    }

    #[test]
    fn builtin_matches_the_runbook_table() {
        let m = m();
        let row = |s| {
            let p = m.policy(s);
            (
                p.decision_time.to_string(),
                p.approver_role,
                p.triggers.len(),
            )
        };
        assert_eq!(
            row(Severity::P0),
            ("immediate".into(), Role::OnCallEngineer, 3)
        );
        assert_eq!(row(Severity::P1), ("15m".into(), Role::TeamLead, 2));
        assert_eq!(
            row(Severity::P2),
            ("2h".into(), Role::EngineeringManager, 2)
        );
        assert_eq!(row(Severity::P3), ("1d".into(), Role::ProductOwner, 2));
        assert!(m.policy(Severity::P0).command_line && !m.policy(Severity::P0).second_person);
        assert!(!m.policy(Severity::P1).command_line && m.policy(Severity::P1).second_person);
        assert_eq!(m.approval_validity(Severity::P0), Duration::from_secs(900));
        assert_eq!(m.approval_validity(Severity::P2), Duration::from_secs(7200));
    }

    #[test]
    fn nothing_wrong_warrants_no_rollback() {
        let a = m().assess(&Evidence::default());
        assert!(!a.rollback_warranted());
        assert_eq!(a.severity, None);
        assert_eq!(a.approver_role, None);
        assert_eq!(a.triggers.len(), 9);
        assert!(a.triggers.iter().all(|t| !t.fired));
        assert!(a.to_string().contains("no rollback warranted"));
    }

    #[test]
    fn service_down_more_than_five_minutes_is_p0_with_evidence() {
        let ev = Evidence {
            services_unavailable: vec![down("orchestrator", 301)],
            ..Default::default()
        };
        let a = m().assess(&ev);
        assert_eq!(a.severity, Some(Severity::P0));
        assert_eq!(a.decision_time, Some(DecisionTime::Immediate));
        assert_eq!(a.approver_role, Some(Role::OnCallEngineer));
        let t = a.fired().next().unwrap();
        assert_eq!(t.name, "service-unavailable");
        assert!(
            t.evidence.contains("orchestrator down 5m1s"),
            "{}",
            t.evidence
        );
    }

    #[test]
    fn service_down_exactly_five_minutes_is_not_p0() {
        let ev = Evidence {
            services_unavailable: vec![down("api", 300)],
            ..Default::default()
        };
        let a = m().assess(&ev);
        assert_eq!(a.severity, None);
        assert!(a.triggers[0].evidence.contains("api down 5m"));
    }

    #[test]
    fn highest_severity_wins_and_all_triggers_are_reported() {
        let ev = Evidence {
            checks_failed: vec![failed("smoke")],
            monitoring_issues: vec!["prometheus target down".into()],
            data_corruption: true,
            ..Default::default()
        };
        let a = m().assess(&ev);
        assert_eq!(a.severity, Some(Severity::P0));
        let fired: Vec<&str> = a.fired().map(|t| t.name.as_str()).collect();
        assert_eq!(
            fired,
            [
                "data-corruption",
                "major-functionality-broken",
                "minor-functionality-issues",
                "monitoring-issues"
            ]
        );
    }

    #[test]
    fn major_versus_minor_checks() {
        let major = m().assess(&Evidence {
            checks_failed: vec![failed("smoke")],
            ..Default::default()
        });
        assert_eq!(major.severity, Some(Severity::P1));
        assert_eq!(major.approver_role, Some(Role::TeamLead));
        let minor = m().assess(&Evidence {
            checks_failed: vec![failed("quota")],
            ..Default::default()
        });
        assert_eq!(minor.severity, Some(Severity::P2));
    }

    #[test]
    fn slo_breach_needs_more_than_thirty_minutes() {
        let at = |s| {
            m().assess(&Evidence {
                slo_breached_for_secs: Some(s),
                ..Default::default()
            })
            .severity
        };
        assert_eq!(at(1800), None);
        assert_eq!(at(1801), Some(Severity::P1));
    }

    #[test]
    fn degradation_against_baseline() {
        let lat = |now, baseline| {
            m().assess(&Evidence {
                p99_latency_secs: Some(Comparison { now, baseline }),
                ..Default::default()
            })
        };
        assert_eq!(lat(0.5, Some(0.2)).severity, Some(Severity::P2));
        assert_eq!(lat(0.4, Some(0.2)).severity, None); // exactly 2x is not "> 2x"
        let no_base = lat(5.0, None);
        assert_eq!(no_base.severity, None);
        assert!(
            no_base
                .triggers
                .iter()
                .any(|t| t.evidence.contains("no baseline"))
        );
        let err = m().assess(&Evidence {
            error_rate: Some(Comparison {
                now: 0.09,
                baseline: Some(0.01),
            }),
            ..Default::default()
        });
        assert_eq!(err.severity, Some(Severity::P2));
        assert!(err.fired().next().unwrap().evidence.contains("9.00x"));
    }

    #[test]
    fn degradation_compares_a_baseline_below_its_floor_as_the_floor() {
        let a = |p99: Comparison, err: Comparison| {
            m().assess(&Evidence {
                p99_latency_secs: Some(p99),
                error_rate: Some(err),
                ..Default::default()
            })
        };
        let c = |now, b| Comparison {
            now,
            baseline: Some(b),
        };
        // 4 ms against 1 ms is 4x, yet under 2 x 100 ms; 1.5% errors against none is under 2 x 1%.
        let quiet = a(c(0.004, 0.001), c(0.015, 0.0));
        assert_eq!(quiet.severity, None, "{quiet}");
        assert!(
            quiet.to_string().contains("below its floor 0.01"),
            "{quiet}"
        );
        // Errors rising from none to 30% fire, with the figures.
        let errors = a(c(0.004, 0.001), c(0.3, 0.0));
        assert_eq!(errors.severity, Some(Severity::P2));
        let t = errors.fired().next().unwrap();
        assert!(
            t.evidence
                .contains("error rate: 0.3 now vs 0 baseline, below its floor 0.01 (30.00x"),
            "{}",
            t.evidence
        );
        // Above the floor, the baseline itself is the reference.
        assert_eq!(a(c(0.5, 0.2), c(0.0, 0.0)).severity, Some(Severity::P2));
        assert_eq!(a(c(0.35, 0.2), c(0.0, 0.0)).severity, None);
    }

    #[test]
    fn degradation_floors_out_of_range_are_refused() {
        let base = crate::builtin::DECISION_MATRIX;
        for (from, to, f) in [
            ("min_p99_secs = 0.1", "min_p99_secs = -1.0", "min_p99_secs"),
            (
                "min_error_rate = 0.01",
                "min_error_rate = 1.5",
                "min_error_rate",
            ),
        ] {
            let (field, msg) = invalid(&base.replacen(from, to, 1));
            assert_eq!(field, format!("severity[2].trigger[0].{f}"));
            assert!(msg.contains("out of range"), "{msg}");
        }
    }

    #[test]
    fn monitoring_issues_are_p3() {
        let a = m().assess(&Evidence {
            monitoring_issues: vec!["alertmanager down".into()],
            ..Default::default()
        });
        assert_eq!(a.severity, Some(Severity::P3));
        assert_eq!(a.approver_role, Some(Role::ProductOwner));
        assert_eq!(a.decision_time.unwrap().to_string(), "1d");
    }

    #[test]
    fn assessment_serializes_for_output_json() {
        let a = m().assess(&Evidence {
            security_breach: true,
            ..Default::default()
        });
        let j = serde_json::to_value(&a).unwrap();
        assert_eq!(j["severity"], "P0");
        assert_eq!(j["decision_time"], "immediate");
        assert_eq!(j["approver_role"], "on-call-engineer");
        assert_eq!(j["triggers"][2]["name"], "security-breach");
        assert_eq!(j["triggers"][2]["fired"], true);
    }

    fn invalid(text: &str) -> (String, String) {
        match DecisionMatrix::parse("m.toml", text) {
            Err(PolicyError::Invalid {
                file,
                field,
                message,
            }) => {
                assert_eq!(file, "m.toml");
                (field, message)
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn validation_names_file_and_field() {
        let base = crate::builtin::DECISION_MATRIX;
        let (f, msg) = invalid(&base.replacen(
            "decision_time = \"15m\"",
            "decision_time = \"15 minutes\"",
            1,
        ));
        assert_eq!(f, "severity[1].decision_time");
        assert!(msg.contains("unknown unit"), "{msg}");
        let (f, _) = invalid(&base.replacen(
            "approver_role = \"team-lead\"",
            "approver_role = \"cto\"",
            1,
        ));
        assert_eq!(f, "severity[1].approver_role");
        let (f, msg) = invalid(&base.replacen("kind = \"degradation\"", "kind = \"slowness\"", 1));
        assert_eq!(f, "severity[2].trigger[0].kind");
        assert!(msg.contains("slowness"));
        let (f, _) = invalid(&base.replacen("  longer_than = \"5m\"\n", "", 1));
        assert_eq!(f, "severity[0].trigger[0].longer_than");
        let (f, msg) = invalid(&base.replacen("level = \"P3\"", "level = \"P2\"", 1));
        assert_eq!(f, "severity[3].level");
        assert!(msg.contains("twice"));
        let (f, msg) = invalid(&base.replacen("factor = 2.0", "factor = 0.5", 1));
        assert_eq!(f, "severity[2].trigger[0].factor");
        assert!(msg.contains("greater than 1"));
        let (f, _) = invalid(&base.replacen(
            "kind = \"data_corruption\"",
            "kind = \"data_corruption\"\n  factor = 3.0",
            1,
        ));
        assert_eq!(f, "severity[0].trigger[1].factor");
        let (f, _) = invalid(&base.replacen(
            "name = \"non-critical-bugs\"",
            "name = \"monitoring-issues\"",
            1,
        ));
        assert_eq!(f, "severity[3].trigger[1].name");
    }

    #[test]
    fn durations_and_factors_out_of_range_are_refused_with_the_range() {
        let base = crate::builtin::DECISION_MATRIX;
        let (f, msg) =
            invalid(&base.replacen("decision_time = \"15m\"", "decision_time = \"30d\"", 1));
        assert_eq!(f, "severity[1].decision_time");
        assert_eq!(
            msg,
            "\"30d\" = 2592000 seconds is out of range: allowed 60..=604800 seconds (1m..=7d)"
        );
        let (f, msg) =
            invalid(&base.replacen("decision_time = \"15m\"", "decision_time = \"5s\"", 1));
        assert_eq!(f, "severity[1].decision_time");
        assert!(msg.contains("out of range"), "{msg}");
        let (f, msg) = invalid(&base.replacen(
            "immediate_validity = \"15m\"",
            "immediate_validity = \"0s\"",
            1,
        ));
        assert_eq!(f, "immediate_validity");
        assert!(msg.contains("allowed 60..=86400"), "{msg}");
        let (f, msg) = invalid(&base.replacen(
            "longer_than = \"5m\"",
            "longer_than = \"213503982334601d\"",
            1,
        ));
        assert_eq!(f, "severity[0].trigger[0].longer_than");
        assert!(
            msg.contains("out of range") || msg.contains("too large"),
            "{msg}"
        );
        for bad in ["1e308", "1001.0", "nan", "inf"] {
            let (f, msg) = invalid(&base.replacen("factor = 2.0", &format!("factor = {bad}"), 1));
            assert_eq!(f, "severity[2].trigger[0].factor");
            assert!(msg.contains("at most 1000"), "{bad}: {msg}");
        }
        assert!(
            DecisionMatrix::parse(
                "m.toml",
                &base.replacen("longer_than = \"5m\"", "longer_than = \"0s\"", 1)
            )
            .is_ok(),
            "0s fires on any outage"
        );
    }

    #[test]
    fn missing_level_and_bad_toml_are_reported() {
        let mut only_p0 = String::new();
        for block in crate::builtin::DECISION_MATRIX
            .split("[[severity]]")
            .take(2)
        {
            only_p0.push_str(block);
            only_p0.push_str("[[severity]]");
        }
        let only_p0 = only_p0.trim_end_matches("[[severity]]");
        let (f, msg) = invalid(only_p0);
        assert_eq!(f, "severity");
        assert!(msg.contains("P1 is missing"), "{msg}");
        match DecisionMatrix::parse("m.toml", "[[severity]]\nlevel = \"P0\"\nbogus = 1\n") {
            Err(e @ PolicyError::Parse { .. }) => {
                assert!(e.to_string().starts_with("m.toml: "), "{e}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn load_reports_the_path() {
        let e = DecisionMatrix::load(Path::new("/nonexistent/matrix.toml")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/nonexistent/matrix.toml: cannot read"),
            "{e}"
        );
    }
}
