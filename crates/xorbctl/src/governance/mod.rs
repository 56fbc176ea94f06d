//! Governance wired to runs: the policies a run is judged by, the signed audit trail of its decisions, the approval
//! gate of `rollback --severity`, the checklists (ticks by the steps and messages that prove items), the release
//! repository's rollback tag, and the governance part of `show` and `report`. Policy is `xorb-governance` (pure);
//! what it decides is journaled (`xorb_engine::approvals`) and appended to the audit trail. The commands `assess`,
//! `approve` and `check` are in `crate::cmd`. See `docs/design/governance.md`.

pub mod checklists;
pub mod clock;
pub mod gate;
pub mod policies;
pub mod release_tag;
pub mod trail;
pub mod view;
