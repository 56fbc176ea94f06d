//! Approvals: operators and their roles (`policies/operators.toml`) and the gate a run waits at until the approvals
//! its severity requires are given.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{self, PolicyError};
use crate::matrix::{DecisionMatrix, Role, Severity};
use crate::time::fmt_duration;

/// How much an approval may be dated after `now` (clock skew between the approving host and the runner).
const CLOCK_SKEW: ChronoDuration = ChronoDuration::seconds(60);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operators {
    pub source: String,
    /// Lowest first; a role satisfies the requirement of its own rank and every rank below it.
    pub ranking: Vec<Role>,
    pub operators: BTreeMap<String, Vec<Role>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOperators {
    ranking: Vec<String>,
    #[serde(default)]
    operators: BTreeMap<String, RawOperator>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOperator {
    roles: Vec<String>,
}

impl Operators {
    /// The example shipped in `policies/operators.toml`.
    pub fn builtin() -> Self {
        Self::parse("builtin:policies/operators.toml", crate::builtin::OPERATORS)
            .expect("the shipped example is valid")
    }

    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let (file, text) = error::read(path)?;
        Self::parse(&file, &text)
    }

    pub fn parse(file: &str, text: &str) -> Result<Self, PolicyError> {
        let raw: RawOperators = toml::from_str(text).map_err(|e| PolicyError::parse(file, &e))?;
        let mut ranking = Vec::new();
        for (i, r) in raw.ranking.iter().enumerate() {
            let role: Role = r
                .parse()
                .map_err(|m| PolicyError::invalid(file, format!("ranking[{i}]"), m))?;
            if ranking.contains(&role) {
                return Err(PolicyError::invalid(
                    file,
                    format!("ranking[{i}]"),
                    format!("{role} is ranked twice"),
                ));
            }
            ranking.push(role);
        }
        if let Some(r) = Role::ALL.into_iter().find(|r| !ranking.contains(r)) {
            return Err(PolicyError::invalid(
                file,
                "ranking",
                format!("{r} is not ranked; rank all four roles"),
            ));
        }
        let mut operators = BTreeMap::new();
        for (name, op) in raw.operators {
            if name.trim().is_empty() || name.contains(':') {
                return Err(PolicyError::invalid(
                    file,
                    format!("operators.{name:?}"),
                    "an operator name must be non-empty, without ':'",
                ));
            }
            if op.roles.is_empty() {
                return Err(PolicyError::invalid(
                    file,
                    format!("operators.{name}.roles"),
                    "no role",
                ));
            }
            let mut roles = Vec::new();
            for (i, r) in op.roles.iter().enumerate() {
                roles.push(r.parse().map_err(|m| {
                    PolicyError::invalid(file, format!("operators.{name}.roles[{i}]"), m)
                })?);
            }
            operators.insert(name, roles);
        }
        Ok(Operators {
            source: file.to_string(),
            ranking,
            operators,
        })
    }

    pub fn rank(&self, role: Role) -> usize {
        self.ranking
            .iter()
            .position(|r| *r == role)
            .expect("validated: every role is ranked")
    }

    /// Whether an approval in role `held` meets a requirement for role `required`.
    pub fn satisfies(&self, held: Role, required: Role) -> bool {
        self.rank(held) >= self.rank(required)
    }

    pub fn holds(&self, name: &str, role: Role) -> bool {
        self.operators
            .get(name)
            .is_some_and(|roles| roles.contains(&role))
    }
}

/// Where an approval was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApprovalSource {
    /// `--approve NAME:ROLE` on the rollback's own command line.
    CommandLine,
    /// `xorbctl approve RUN --as NAME --role ROLE --reason TEXT` for a run waiting at its gate.
    Approve,
}

/// Who approved, in which role, when and why: journaled, and shown in the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub name: String,
    pub role: Role,
    pub at: DateTime<Utc>,
    pub reason: String,
    pub source: ApprovalSource,
}

/// What the gate still needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Missing {
    /// An approval in this role or one ranked above it.
    pub role: Role,
    /// The approver must not be this operator (the requester), where a second person is required.
    pub not_by: Option<String>,
    /// Approvals that would have counted but expired.
    pub expired: Vec<String>,
    /// Approvals given in a role ranked too low.
    pub too_low: Vec<String>,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "an approval in the role {} (or one ranked above it)",
            self.role
        )?;
        if let Some(n) = &self.not_by {
            write!(f, " other than {n}")?;
        }
        if !self.expired.is_empty() {
            write!(f, "; expired: {}", self.expired.join(", "))?;
        }
        if !self.too_low.is_empty() {
            write!(f, "; ranked too low: {}", self.too_low.join(", "))?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "gate", rename_all = "kebab-case")]
pub enum GateDecision {
    /// The run may act; `by` is the approval that opened the gate.
    Open {
        by: Approval,
    },
    Waiting {
        missing: Vec<Missing>,
    },
    /// An approval is not acceptable; the run must not act on it.
    Refused {
        why: String,
    },
}

pub struct ApprovalGate<'a> {
    pub matrix: &'a DecisionMatrix,
    pub operators: &'a Operators,
}

impl<'a> ApprovalGate<'a> {
    pub fn new(matrix: &'a DecisionMatrix, operators: &'a Operators) -> Self {
        ApprovalGate { matrix, operators }
    }

    /// Whether `a` may be recorded at all for a `severity` run requested by `requester` (what `xorbctl approve`
    /// and `--approve` check before journaling). Expiry is not checked here: that is a matter of `now`.
    pub fn check(
        &self,
        severity: Severity,
        a: &Approval,
        requester: &str,
        now: DateTime<Utc>,
    ) -> Result<(), String> {
        let p = self.matrix.policy(severity);
        let Some(roles) = self.operators.operators.get(&a.name) else {
            return Err(format!(
                "{} is not an operator in {}",
                a.name, self.operators.source
            ));
        };
        if !roles.contains(&a.role) {
            let held: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            return Err(format!(
                "{} does not hold the role {} (holds: {})",
                a.name,
                a.role,
                held.join(", ")
            ));
        }
        if p.second_person && a.name == requester {
            return Err(format!(
                "{} requested this {severity} rollback and cannot approve it: {severity} needs a second person",
                a.name
            ));
        }
        if a.source == ApprovalSource::CommandLine && !p.command_line {
            return Err(format!(
                "{severity} cannot be approved on the command line; the run waits at its gate for `xorbctl approve`"
            ));
        }
        if a.source == ApprovalSource::Approve && a.reason.trim().is_empty() {
            return Err(format!("the approval by {} gives no reason", a.name));
        }
        if now
            .checked_add_signed(CLOCK_SKEW)
            .is_some_and(|limit| a.at > limit)
        {
            return Err(format!(
                "the approval by {} is dated {}, in the future",
                a.name,
                a.at.to_rfc3339()
            ));
        }
        Ok(())
    }

    /// The gate for a `severity` run requested by `requester`, given the approvals recorded so far.
    pub fn evaluate(
        &self,
        severity: Severity,
        approvals: &[Approval],
        requester: &str,
        now: DateTime<Utc>,
    ) -> GateDecision {
        for a in approvals {
            if let Err(why) = self.check(severity, a, requester, now) {
                return GateDecision::Refused { why };
            }
        }
        let p = self.matrix.policy(severity);
        let validity = self.matrix.approval_validity(severity);
        let window = ChronoDuration::from_std(validity).unwrap_or(ChronoDuration::MAX);
        let mut expired = Vec::new();
        let mut too_low = Vec::new();
        for a in approvals {
            if !self.operators.satisfies(a.role, p.approver_role) {
                too_low.push(format!("{} as {}", a.name, a.role));
            } else if a
                .at
                .checked_add_signed(window)
                .is_some_and(|end| now >= end)
            {
                expired.push(format!(
                    "{} at {} (valid {})",
                    a.name,
                    a.at.to_rfc3339(),
                    fmt_duration(validity)
                ));
            } else {
                return GateDecision::Open { by: a.clone() };
            }
        }
        GateDecision::Waiting {
            missing: vec![Missing {
                role: p.approver_role,
                not_by: p.second_person.then(|| requester.to_string()),
                expired,
                too_low,
            }],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 8, 14, 12, 0, 0).unwrap()
    }

    fn ap(name: &str, role: Role, minutes_ago: i64, source: ApprovalSource) -> Approval {
        Approval {
            name: name.into(),
            role,
            at: t0() - ChronoDuration::minutes(minutes_ago),
            reason: "error rate tripled since the release".into(),
            source,
        }
    }

    fn eval(sev: Severity, approvals: &[Approval], requester: &str) -> GateDecision {
        let (m, o) = (DecisionMatrix::builtin(), Operators::builtin());
        ApprovalGate::new(&m, &o).evaluate(sev, approvals, requester, t0())
    }

    fn is_open(d: &GateDecision) -> bool {
        matches!(d, GateDecision::Open { .. })
    }

    #[test]
    fn p2_waits_for_an_on_call_engineer_and_opens_for_an_engineering_manager() {
        let oncall = ap("alice", Role::OnCallEngineer, 1, ApprovalSource::Approve);
        match eval(Severity::P2, std::slice::from_ref(&oncall), "bob") {
            GateDecision::Waiting { missing } => {
                assert_eq!(missing[0].role, Role::EngineeringManager);
                assert_eq!(missing[0].too_low, ["alice as on-call-engineer"]);
                assert!(missing[0].to_string().contains("other than bob"));
            }
            other => panic!("{other:?}"),
        }
        let em = ap(
            "carol",
            Role::EngineeringManager,
            1,
            ApprovalSource::Approve,
        );
        match eval(Severity::P2, &[oncall, em], "bob") {
            GateDecision::Open { by } => assert_eq!(by.name, "carol"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn nothing_approved_waits() {
        assert!(matches!(
            eval(Severity::P1, &[], "alice"),
            GateDecision::Waiting { .. }
        ));
    }

    #[test]
    fn a_higher_role_satisfies_a_lower_requirement_not_the_reverse() {
        let o = Operators::builtin();
        assert!(o.satisfies(Role::EngineeringManager, Role::TeamLead));
        assert!(o.satisfies(Role::TeamLead, Role::TeamLead));
        assert!(!o.satisfies(Role::TeamLead, Role::EngineeringManager));
        assert!(o.satisfies(Role::ProductOwner, Role::EngineeringManager));
        assert!(is_open(&eval(
            Severity::P1,
            &[ap(
                "carol",
                Role::EngineeringManager,
                1,
                ApprovalSource::Approve
            )],
            "alice"
        )));
    }

    #[test]
    fn self_approval_is_refused_where_a_second_person_is_required() {
        match eval(
            Severity::P1,
            &[ap("bob", Role::TeamLead, 1, ApprovalSource::Approve)],
            "bob",
        ) {
            GateDecision::Refused { why } => assert!(why.contains("second person"), "{why}"),
            other => panic!("{other:?}"),
        }
        // P0 needs no second person: the on-call engineer may approve their own emergency rollback at once.
        assert!(is_open(&eval(
            Severity::P0,
            &[ap(
                "alice",
                Role::OnCallEngineer,
                0,
                ApprovalSource::CommandLine
            )],
            "alice"
        )));
    }

    #[test]
    fn command_line_approval_only_where_the_severity_allows_it() {
        match eval(
            Severity::P1,
            &[ap("bob", Role::TeamLead, 0, ApprovalSource::CommandLine)],
            "alice",
        ) {
            GateDecision::Refused { why } => assert!(why.contains("command line"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn role_must_be_held_by_that_operator() {
        match eval(
            Severity::P1,
            &[ap("alice", Role::TeamLead, 1, ApprovalSource::Approve)],
            "bob",
        ) {
            GateDecision::Refused { why } => assert!(
                why.contains("alice does not hold the role team-lead"),
                "{why}"
            ),
            other => panic!("{other:?}"),
        }
        match eval(
            Severity::P1,
            &[ap("mallory", Role::TeamLead, 1, ApprovalSource::Approve)],
            "bob",
        ) {
            GateDecision::Refused { why } => {
                assert!(why.contains("mallory is not an operator"), "{why}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_expired_approval_no_longer_counts() {
        // P1: decision time 15 minutes.
        assert!(is_open(&eval(
            Severity::P1,
            &[ap("bob", Role::TeamLead, 14, ApprovalSource::Approve)],
            "alice"
        )));
        match eval(
            Severity::P1,
            &[ap("bob", Role::TeamLead, 15, ApprovalSource::Approve)],
            "alice",
        ) {
            GateDecision::Waiting { missing } => assert_eq!(missing[0].expired.len(), 1),
            other => panic!("{other:?}"),
        }
        // P0 "immediate": valid 15 minutes.
        assert!(is_open(&eval(
            Severity::P0,
            &[ap(
                "alice",
                Role::OnCallEngineer,
                14,
                ApprovalSource::CommandLine
            )],
            "x"
        )));
        assert!(!is_open(&eval(
            Severity::P0,
            &[ap(
                "alice",
                Role::OnCallEngineer,
                16,
                ApprovalSource::CommandLine
            )],
            "x"
        )));
        // P2: two hours.
        assert!(is_open(&eval(
            Severity::P2,
            &[ap(
                "carol",
                Role::EngineeringManager,
                119,
                ApprovalSource::Approve
            )],
            "bob"
        )));
        assert!(!is_open(&eval(
            Severity::P2,
            &[ap(
                "carol",
                Role::EngineeringManager,
                121,
                ApprovalSource::Approve
            )],
            "bob"
        )));
    }

    #[test]
    fn approvals_dated_in_the_future_or_without_reason_are_refused() {
        let future = ap("bob", Role::TeamLead, -5, ApprovalSource::Approve);
        assert!(matches!(
            eval(Severity::P1, &[future], "alice"),
            GateDecision::Refused { .. }
        ));
        let mut no_reason = ap("bob", Role::TeamLead, 1, ApprovalSource::Approve);
        no_reason.reason = " ".into();
        assert!(matches!(
            eval(Severity::P1, &[no_reason], "alice"),
            GateDecision::Refused { .. }
        ));
    }

    #[test]
    fn operators_file_is_validated() {
        let e = Operators::parse("ops.toml", "ranking = [\"team-lead\"]\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "ops.toml: ranking: on-call-engineer is not ranked; rank all four roles"
        );
        let text = crate::builtin::OPERATORS.replacen(
            "roles = [\"engineering-manager\"]",
            "roles = [\"boss\"]",
            1,
        );
        match Operators::parse("ops.toml", &text).unwrap_err() {
            PolicyError::Invalid { field, .. } => assert_eq!(field, "operators.carol.roles[0]"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn decision_serializes_for_the_journal() {
        let d = eval(
            Severity::P0,
            &[ap(
                "alice",
                Role::OnCallEngineer,
                0,
                ApprovalSource::CommandLine,
            )],
            "alice",
        );
        let j = serde_json::to_value(&d).unwrap();
        assert_eq!(j["gate"], "open");
        assert_eq!(j["by"]["role"], "on-call-engineer");
        assert_eq!(j["by"]["source"], "command-line");
    }

    #[test]
    fn approvals_at_the_end_of_the_calendar_do_not_overflow_the_window() {
        // An approval time comes from the journal; `at + window` and `now + skew` used to panic near the limit.
        let (m, o) = (DecisionMatrix::builtin(), Operators::builtin());
        let end = DateTime::<Utc>::MAX_UTC;
        let mut a = ap("bob", Role::TeamLead, 0, ApprovalSource::Approve);
        a.at = end - ChronoDuration::seconds(10);
        let d = ApprovalGate::new(&m, &o).evaluate(
            Severity::P1,
            &[a],
            "alice",
            end - ChronoDuration::seconds(5),
        );
        assert!(is_open(&d), "{d:?}");
    }
}
