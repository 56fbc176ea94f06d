//! A run waiting at its approval gate is a decision in progress: a new rollback of the same stack must not
//! sidestep it with a weaker gate (or none). It may start only with a gate at least as strict, or once the
//! waiting run is given up on the record (`xorbctl abort RUN --by NAME`, audited).

use std::path::Path;

use xorb_governance::{DecisionMatrix, Operators, Severity};
use xorb_model::plan::RunStatus;

/// Whether a gate of severity `new` (`None`: no gate at all) is at least as strict as `waiting`'s: an approver
/// ranked at least as high, a second person where the waiting gate needs one, and no command-line approval where
/// the waiting gate forbids it. `Err` says in what it is weaker.
pub fn at_least_as_strict(
    matrix: &DecisionMatrix,
    operators: &Operators,
    new: Option<Severity>,
    waiting: Severity,
) -> Result<(), String> {
    let w = matrix.policy(waiting);
    let Some(new) = new else {
        return Err("it has no approval gate (no --severity)".into());
    };
    let n = matrix.policy(new);
    let mut weaker = Vec::new();
    if operators.rank(n.approver_role) < operators.rank(w.approver_role) {
        weaker.push(format!(
            "its approver role {} ranks below {}",
            n.approver_role, w.approver_role
        ));
    }
    if w.second_person && !n.second_person {
        weaker.push("its initiator may approve it himself".into());
    }
    if n.command_line && !w.command_line {
        weaker.push("it can be approved on its own command line".into());
    }
    if weaker.is_empty() {
        Ok(())
    } else {
        Err(format!("its {new} gate is weaker: {}", weaker.join("; ")))
    }
}

/// The runs of this state directory that wait at their approval gate, with their severity.
pub fn waiting_runs(state_dir: &Path) -> anyhow::Result<Vec<(String, String)>> {
    if !state_dir.join("journal.sqlite").exists() {
        return Ok(Vec::new());
    }
    Ok(xorb_engine::list_runs(state_dir)?
        .into_iter()
        .filter_map(|l| match l.run.status {
            RunStatus::WaitingForApproval { severity, .. } => Some((l.run.id, severity)),
            _ => None,
        })
        .collect())
}

/// The refusal for a new run (gate `new`) while `run` waits at its `severity` gate, or `None` when it may start.
pub fn refusal(
    matrix: &DecisionMatrix,
    operators: &Operators,
    new: Option<Severity>,
    run: &str,
    severity: &str,
) -> Option<String> {
    // A severity this policy does not know cannot be compared: treat the waiting gate as the strictest.
    let why = match severity.parse::<Severity>() {
        Ok(w) => at_least_as_strict(matrix, operators, new, w).err()?,
        Err(_) => format!("the waiting gate's severity {severity:?} is not in the decision matrix"),
    };
    Some(format!(
        "run {run} waits at its {severity} approval gate, and this rollback would sidestep it: {why}. Nothing \
         was done. Either approve the waiting run (`xorbctl approve {run} --as NAME --role ROLE --reason TEXT \
         --resume`), start this one with a gate at least as strict (`--severity {severity}`), or give the waiting \
         run up on the record first (`xorbctl abort {run} --by NAME`)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_gate_or_a_weaker_one_cannot_start_while_a_p1_run_waits() {
        let (m, o) = (DecisionMatrix::builtin(), Operators::builtin());
        let p1 = Severity::P1;
        assert!(
            at_least_as_strict(&m, &o, None, p1)
                .unwrap_err()
                .contains("no approval gate")
        );
        let p0 = at_least_as_strict(&m, &o, Some(Severity::P0), p1).unwrap_err();
        assert!(
            p0.contains("ranks below") && p0.contains("command line"),
            "{p0}"
        );
        assert!(at_least_as_strict(&m, &o, Some(p1), p1).is_ok());
        // An engineering manager outranks a team lead in the shipped ranking.
        assert!(at_least_as_strict(&m, &o, Some(Severity::P2), p1).is_ok());
        let msg = refusal(&m, &o, None, "20250814-1", "P1").unwrap();
        assert!(
            msg.contains("20250814-1")
                && msg.contains("P1")
                && msg.contains("xorbctl abort 20250814-1 --by NAME"),
            "{msg}"
        );
        assert_eq!(refusal(&m, &o, Some(p1), "r", "P1"), None);
        assert!(refusal(&m, &o, Some(p1), "r", "P9").is_some());
    }
}
