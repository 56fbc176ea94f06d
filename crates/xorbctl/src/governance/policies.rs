//! The three policy files a run is judged by: `--decision-matrix`, `--operators`, `--checklists` (or their
//! environment variables), or the built-in ones; a new run journals their texts, so later commands judge it by them.

use std::path::Path;

use xorb_engine::approvals::{GovernanceStore, PolicyRecord};
use xorb_governance::{Checklists, DecisionMatrix, Operators};

use crate::errors::bad;
use crate::settings::PolicyFiles;

/// The three policy files, parsed.
pub struct Policies {
    pub matrix: DecisionMatrix,
    pub operators: Operators,
    pub checklists: Checklists,
    /// The texts they were parsed from: a new run journals them, so that later commands judge it by them.
    pub records: Vec<PolicyRecord>,
}

const MATRIX: &str = "decision-matrix";
const OPERATORS: &str = "operators";
const CHECKLISTS: &str = "checklists";

/// A policy's (source, text): the file given, or the built-in one.
fn policy_text(file: Option<&Path>, kind: &str, builtin: &str) -> anyhow::Result<PolicyRecord> {
    Ok(match file {
        Some(p) => PolicyRecord {
            kind: kind.into(),
            source: p.display().to_string(),
            text: std::fs::read_to_string(p).map_err(|e| xorb_governance::PolicyError::Read {
                file: p.display().to_string(),
                message: e.to_string(),
            })?,
        },
        None => PolicyRecord {
            kind: kind.into(),
            source: format!("builtin:policies/{kind}.toml"),
            text: builtin.into(),
        },
    })
}

impl Policies {
    pub fn load(files: &PolicyFiles) -> anyhow::Result<Self> {
        use xorb_governance::builtin;
        Self::parse(vec![
            policy_text(
                files.decision_matrix.as_deref(),
                MATRIX,
                builtin::DECISION_MATRIX,
            )?,
            policy_text(files.operators.as_deref(), OPERATORS, builtin::OPERATORS)?,
            policy_text(files.checklists.as_deref(), CHECKLISTS, builtin::CHECKLISTS)?,
        ])
    }

    fn parse(records: Vec<PolicyRecord>) -> anyhow::Result<Self> {
        let find = |kind: &str| records.iter().find(|r| r.kind == kind);
        let (Some(m), Some(o), Some(c)) = (find(MATRIX), find(OPERATORS), find(CHECKLISTS)) else {
            return Err(bad("a run's journaled policies are incomplete"));
        };
        Ok(Policies {
            matrix: DecisionMatrix::parse(&m.source, &m.text)?,
            operators: Operators::parse(&o.source, &o.text)?,
            checklists: Checklists::parse(&c.source, &c.text)?,
            records,
        })
    }

    /// The policies `run_id` was started with (journaled with it); for a run journaled before runs kept their
    /// policies, the command line's.
    pub fn for_run(
        files: &PolicyFiles,
        store: &GovernanceStore,
        run_id: &str,
    ) -> anyhow::Result<Self> {
        let mut stored = store.policies(run_id)?;
        if stored.is_empty() {
            return Self::load(files);
        }
        // A kind the run did not record (none today) comes from the command line.
        for r in Self::load(files)?.records {
            if !stored.iter().any(|s| s.kind == r.kind) {
                stored.push(r);
            }
        }
        Self::parse(stored)
    }
}
