//! Runs that left artifacts on disk (`runs/RUN/`) which the journal does not know.
//!
//! The journal is the record of a run, but a run's directory holds what matters most after a loss: the backup, the
//! captured state and the data preserved before a destructive downgrade. A journal that was deleted, emptied or
//! replaced must therefore never make those runs invisible: `runs`, `show`, `resume` and `audit verify` compare the
//! two and say so (docs/design/journal-and-resume.md, "A lost journal").

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// A run directory with no record in the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskRun {
    pub id: String,
    /// Kinds of preserved data with a verified manifest (`preserved/KIND/manifest.json`): data that exists only
    /// there until a roll-forward re-imports it.
    pub preserved: Vec<String>,
}

/// The ids of every run directory under `state_dir/runs`, sorted. Hidden entries and files are not runs.
pub fn run_dirs(state_dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(state_dir.join("runs")) else {
        return Vec::new();
    };
    let mut ids: Vec<String> = rd
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    ids.sort();
    ids
}

/// Run directories whose id is not in `known` (the journal's runs).
pub fn unknown_runs(state_dir: &Path, known: &BTreeSet<String>) -> Vec<DiskRun> {
    run_dirs(state_dir)
        .into_iter()
        .filter(|id| !known.contains(id))
        .map(|id| {
            let preserved = preserved_kinds(&state_dir.join("runs").join(&id));
            DiskRun { id, preserved }
        })
        .collect()
}

fn preserved_kinds(run_dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(run_dir.join("preserved")) else {
        return Vec::new();
    };
    let mut kinds: Vec<String> = rd
        .filter_map(Result::ok)
        .filter(|e| e.path().join("manifest.json").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    kinds.sort();
    kinds
}

/// One line per unknown run, for people: what is there and what to do.
pub fn describe(runs: &[DiskRun]) -> String {
    let mut s = format!(
        "{} run director{} under runs/ {} not in the journal: the journal was deleted, emptied or replaced. \
         Their artifacts are kept; they cannot be resumed (their plan was in the journal).\n",
        runs.len(),
        if runs.len() == 1 { "y" } else { "ies" },
        if runs.len() == 1 { "is" } else { "are" },
    );
    for r in runs {
        if r.preserved.is_empty() {
            s.push_str(&format!("  {}  (no preserved data)\n", r.id));
        } else {
            // The audit chain is kept as evidence: a roll-forward starts a new chain rather than re-import it.
            let (kept, back): (Vec<&String>, Vec<&String>) = r
                .preserved
                .iter()
                .partition(|k| k.as_str() == xorb_model::plan::Preserve::AuditChain.name());
            let mut parts = Vec::new();
            if !back.is_empty() {
                parts.push(format!(
                    "{} (a roll-forward re-imports it)",
                    back.iter()
                        .map(|k| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            if !kept.is_empty() {
                parts.push("audit-chain (kept as evidence; not re-imported)".to_string());
            }
            s.push_str(&format!(
                "  {}  preserved data: {}\n",
                r.id,
                parts.join("; ")
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_directories_the_journal_does_not_know_with_their_preserved_data() {
        let d = tempfile::tempdir().unwrap();
        let runs = d.path().join("runs");
        std::fs::create_dir_all(runs.join("a/preserved/control-plane")).unwrap();
        std::fs::write(runs.join("a/preserved/control-plane/manifest.json"), "{}").unwrap();
        // An export without a manifest was never verified: it is not preserved data.
        std::fs::create_dir_all(runs.join("a/preserved/evidence")).unwrap();
        std::fs::create_dir_all(runs.join("b")).unwrap();
        std::fs::create_dir_all(runs.join(".tmp")).unwrap();
        std::fs::write(runs.join("notes.txt"), "x").unwrap();

        assert_eq!(run_dirs(d.path()), vec!["a", "b"]);
        let known: BTreeSet<String> = ["b".to_string()].into();
        let unknown = unknown_runs(d.path(), &known);
        assert_eq!(
            unknown,
            vec![DiskRun {
                id: "a".into(),
                preserved: vec!["control-plane".into()]
            }]
        );
        let text = describe(&unknown);
        assert!(
            text.contains("1 run directory under runs/ is not in the journal"),
            "{text}"
        );
        assert!(text.contains("a  preserved data: control-plane"), "{text}");
    }

    #[test]
    fn no_runs_directory_means_no_runs() {
        let d = tempfile::tempdir().unwrap();
        assert!(run_dirs(d.path()).is_empty());
        assert!(unknown_runs(d.path(), &BTreeSet::new()).is_empty());
    }
}
