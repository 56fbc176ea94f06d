//! Governance for xorbctl rollbacks, as pure logic (no network I/O): the runbook's decision matrix as policy
//! ([`matrix`]), the approval gate ([`approval`]), the four checklists ([`checklist`]) and the stakeholder
//! notifications ([`notify`]). The CLI gathers the evidence, persists the state these types expose, and delivers
//! the messages. See `docs/design/governance.md`.

pub mod approval;
pub mod checklist;
pub mod error;
pub mod matrix;
pub mod notify;
pub mod notify_file;
mod proofs;
mod time;

pub use approval::{Approval, ApprovalGate, ApprovalSource, GateDecision, Missing, Operators};
pub use checklist::{Checklist, ChecklistError, Checklists, Tick, Ticker};
pub use error::PolicyError;
pub use matrix::{
    Assessment, Comparison, DecisionMatrix, DecisionTime, Evidence, FailedCheck, Role, ServiceDown,
    Severity, TriggerResult,
};
pub use notify::{DeliveryId, Event, NotifyError, Sent, Templates, slack_payload};
pub use notify_file::NotifyFile;

/// The policy files shipped with the project, embedded so xorbctl works without them on disk.
pub mod builtin {
    pub const DECISION_MATRIX: &str = include_str!("../../../policies/decision-matrix.toml");
    pub const OPERATORS: &str = include_str!("../../../policies/operators.toml");
    pub const CHECKLISTS: &str = include_str!("../../../policies/checklists.toml");
    pub const TEMPLATE_INITIATION: &str = include_str!("../../../policies/templates/initiation.j2");
    pub const TEMPLATE_PROGRESS: &str = include_str!("../../../policies/templates/progress.j2");
    pub const TEMPLATE_COMPLETION: &str = include_str!("../../../policies/templates/completion.j2");
    pub const TEMPLATE_FAILURE: &str = include_str!("../../../policies/templates/failure.j2");
}
