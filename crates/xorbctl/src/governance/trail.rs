//! Governance's entries in the signed, hash-chained audit trail (`<state-dir>/audit/`): the gate, approvals,
//! refusals, checklist ticks, release tags, assessments and aborts. Like the run's sink, a failure to append warns
//! and never stops governance.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use xorb_model::plan::RunStatus;
use xorb_model::redact::Redactor;

/// Who runs this command: `SUDO_USER`, else `USER`, else "xorbctl".
pub fn user() -> String {
    std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "xorbctl".into())
}

/// The audit trail of a state directory, appended through the invocation's one redactor
/// (`crate::redaction::redactor`), so governance's entries hide what the run's entries hide: the stack's secrets,
/// configuration secrets, webhook URLs.
#[derive(Clone)]
pub struct Trail {
    state_dir: PathBuf,
    redactor: Redactor,
}

impl Trail {
    pub fn new(state_dir: &Path, redactor: &Redactor) -> Trail {
        Trail {
            state_dir: state_dir.to_path_buf(),
            redactor: redactor.clone(),
        }
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Appends one entry (and records it as the journal's checkpoint of the trail).
    pub fn append(&self, actor: &str, action: &str, run_id: Option<&str>, detail: Value) {
        let res = xorb_audit::AuditLog::open(self.state_dir.join("audit")).and_then(|log| {
            let mut log = log.with_redactor(self.redactor.clone());
            let mut e = xorb_audit::NewEntry::new(actor, action).detail(detail);
            if let Some(r) = run_id {
                e = e.run(r);
            }
            log.append(e)
        });
        match res {
            Ok(at) => {
                if let Err(e) =
                    xorb_engine::audit_checkpoint::record(&self.state_dir, at.seq, &at.hash)
                {
                    eprintln!("warning: audit checkpoint: {e}");
                }
            }
            Err(e) => eprintln!("warning: audit trail: {e}"),
        }
    }

    /// `xorbctl abort`: giving a run up is a decision, on the signed record like the approvals it may void.
    pub fn abort(&self, run_id: &str, by: &str, status_before: &RunStatus) {
        self.append(
            by,
            "run.abort",
            Some(run_id),
            json!({"by": by, "status_before": status_before.kind()}),
        );
    }
}
