//! The trail against the stack's other records. A hash chain proves that what is there was not changed, and the
//! checkpoint that nothing was cut off its end; neither can tell an erased trail (or an erased journal, and with it
//! the checkpoint) from a stack that never did anything. The runs can: every run appends to the trail, and leaves
//! a record in the journal and a directory under `runs/`. Whoever erases one of the three must erase all of them
//! to go unnoticed (docs/design/audit-chain.md, "Witnesses").

use std::collections::BTreeSet;

use crate::verify::VerifyError;

/// What the stack knows besides the trail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Witnesses {
    /// Runs in the journal.
    pub journal_runs: BTreeSet<String>,
    /// Run directories under `runs/`.
    pub disk_runs: BTreeSet<String>,
    /// The journal records the trail's last entry (`audit_checkpoint`).
    pub checkpoint_recorded: bool,
    /// A journal file exists beside the trail. Without it and without run directories the trail was copied out
    /// of its stack (an auditor's copy): it is verified alone.
    pub journal_present: bool,
}

/// Checks a verified trail (`entries` of it, `trail_runs` the run ids its entries name) against the witnesses.
pub fn cross_check(
    entries: u64,
    trail_runs: &BTreeSet<String>,
    w: &Witnesses,
) -> Result<(), VerifyError> {
    let all_runs: BTreeSet<&String> = w.journal_runs.iter().chain(&w.disk_runs).collect();
    if !w.journal_present && w.disk_runs.is_empty() {
        return Ok(());
    }
    let list = |runs: &[&String]| {
        let mut s: Vec<&str> = runs.iter().take(5).map(|r| r.as_str()).collect();
        if runs.len() > 5 {
            s.push("…");
        }
        s.join(", ")
    };
    if entries == 0 && !all_runs.is_empty() {
        let runs: Vec<&String> = all_runs.into_iter().collect();
        return Err(VerifyError::Erased {
            what: format!(
                "the audit trail is empty, but this stack has {} run{} ({}): its entries were erased",
                runs.len(),
                if runs.len() == 1 { "" } else { "s" },
                list(&runs)
            ),
        });
    }
    if entries > 0 && !w.checkpoint_recorded {
        return Err(VerifyError::Erased {
            what: format!(
                "the journal does not record the trail's last entry although the trail has {entries} entries: \
                 the journal was deleted, emptied or replaced, so entries cut off the trail's end could no longer \
                 be detected"
            ),
        });
    }
    let silent: Vec<&String> = all_runs
        .iter()
        .copied()
        .filter(|r| !trail_runs.contains(*r))
        .collect();
    if !silent.is_empty() {
        return Err(VerifyError::Erased {
            what: format!(
                "{} run{} of this stack ha{} no entry in the audit trail ({}): entries were erased or the trail \
                 was replaced",
                silent.len(),
                if silent.len() == 1 { "" } else { "s" },
                if silent.len() == 1 { "s" } else { "ve" },
                list(&silent)
            ),
        });
    }
    // A journal with no run at all is a checkpoint recorded beside an auditor's copy, or an emptied journal
    // (caught above by its missing checkpoint); one with runs must know every run the trail names.
    let lost: Vec<&String> = trail_runs
        .iter()
        .filter(|r| !w.journal_runs.contains(*r))
        .collect();
    if !w.journal_runs.is_empty() && !lost.is_empty() {
        return Err(VerifyError::Erased {
            what: format!(
                "the audit trail names {} run{} the journal does not know ({}): the journal lost {}",
                lost.len(),
                if lost.len() == 1 { "" } else { "s" },
                list(&lost),
                if lost.len() == 1 { "it" } else { "them" }
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    fn whole() -> Witnesses {
        Witnesses {
            journal_runs: set(&["r1", "r2"]),
            disk_runs: set(&["r1", "r2"]),
            checkpoint_recorded: true,
            journal_present: true,
        }
    }

    #[test]
    fn a_consistent_stack_passes_and_so_does_a_new_one() {
        assert!(cross_check(7, &set(&["r1", "r2"]), &whole()).is_ok());
        assert!(cross_check(0, &set(&[]), &Witnesses::default()).is_ok());
        // A trail copied out of its stack (no journal, no runs beside it) is verified alone.
        assert!(cross_check(7, &set(&["r1"]), &Witnesses::default()).is_ok());
    }

    #[test]
    fn an_erased_trail_on_a_stack_with_runs_fails() {
        let e = cross_check(0, &set(&[]), &whole()).unwrap_err().to_string();
        assert!(
            e.contains("ERASED") && e.contains("empty") && e.contains("2 runs (r1, r2)"),
            "{e}"
        );
        // Journal emptied too: the run directories still witness.
        let w = Witnesses {
            disk_runs: set(&["r1"]),
            ..Default::default()
        };
        let e = cross_check(0, &set(&[]), &w).unwrap_err().to_string();
        assert!(e.contains("1 run (r1)"), "{e}");
    }

    #[test]
    fn a_lost_journal_fails_even_when_the_trail_is_whole() {
        // Deleted: the run directories witness.
        let w = Witnesses {
            disk_runs: set(&["r1", "r2"]),
            ..Default::default()
        };
        let e = cross_check(7, &set(&["r1", "r2"]), &w)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not record the trail's last entry"), "{e}");
        // Emptied: the file is there, with nothing in it.
        let w = Witnesses {
            journal_present: true,
            ..Default::default()
        };
        let e = cross_check(7, &set(&["r1"]), &w).unwrap_err().to_string();
        assert!(e.contains("does not record the trail's last entry"), "{e}");
    }

    #[test]
    fn a_run_without_entries_and_entries_without_a_run_fail() {
        let e = cross_check(5, &set(&["r1"]), &whole())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("1 run of this stack has no entry") && e.contains("r2"),
            "{e}"
        );
        let mut w = whole();
        w.journal_runs = set(&["r1"]);
        w.disk_runs = set(&["r1"]);
        let e = cross_check(5, &set(&["r1", "r2"]), &w)
            .unwrap_err()
            .to_string();
        assert!(e.contains("the journal does not know (r2)"), "{e}");
    }
}
