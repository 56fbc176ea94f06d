//! The plan of `xorbctl restore RUN`: run RUN's backup restored into a new database and proven, the services
//! switched to it, then checked. Pure: the caller observes the live stack and reads the backup's record.

use xorb_model::plan::{Action, FailurePolicy, Phase, Plan, Safety, StepSpec};
use xorb_model::policy::Policy;
use xorb_model::release::Release;

use super::{LiveState, PlanError, check_title};

/// What the caller read of the backup to restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupToRestore {
    pub source_run: String,
    /// The backup's schema revision (`alembic_version` when it was taken).
    pub revision: String,
}

/// The restore plan for the live stack (`live`, on `release`), with the runbook's timeouts and retries.
pub fn plan_restore(
    live: &LiveState,
    release: &Release,
    policy: &Policy,
    backup: &BackupToRestore,
) -> Result<Plan, PlanError> {
    if live.release != release.name() {
        return Err(PlanError::WrongFrom {
            live: live.release.clone(),
            from: release.name().to_string(),
        });
    }
    // Every live service must run on the restored schema: the switch starts them again on it.
    let runs_on = &release.manifest.schema.runs_on;
    if !runs_on.contains(&backup.revision) {
        return Err(PlanError::Schema(format!(
            "refusing the restore: the services run {}, which runs only on schema revision(s) {}, and run {}'s \
             backup is at {}. Nothing was done. Roll the services to a release that runs on {} first",
            release.name(),
            runs_on.join(", "),
            backup.source_run,
            backup.revision,
            backup.revision
        )));
    }
    // A restore that fails stops where it is: its emergency procedure would be itself.
    let stateful = FailurePolicy::Retry {
        attempts: policy.stateful.attempts,
        backoff_ms: policy.stateful.backoff_ms,
        then: None,
    };
    let t = &policy.timeouts;
    let mut restore = StepSpec::new(
        "3.db.restore",
        Phase::Database,
        format!(
            "Restore run {}'s backup (revision {}) into a new database, with the roles it needs, and prove every \
             table's checksum equal to the snapshot taken with it",
            backup.source_run, backup.revision
        ),
        Action::DbRestore {
            source_run: backup.source_run.clone(),
        },
        Safety::Idempotent,
    );
    restore.timeout_secs = t.backup_secs;
    restore.policy = stateful;
    let mut switch = StepSpec::new(
        "3.db.switch",
        Phase::Database,
        "Stop the services, keep the live database under another name, switch the restored one in, start the \
         services again",
        Action::DbSwitch {
            source_run: backup.source_run.clone(),
            revision: backup.revision.clone(),
        },
        Safety::Idempotent,
    );
    switch.timeout_secs = t.rollout_secs;
    switch.policy = stateful;
    let mut steps = vec![restore, switch];
    // Checks that only read: the restored data stays exactly the backup's until the services write again.
    for c in ["health", "info"] {
        let mut s = StepSpec::new(
            format!("5.check.{c}"),
            Phase::Verification,
            check_title(c, release.name()),
            Action::Check {
                name: c.into(),
                params: None,
            },
            Safety::Idempotent,
        );
        s.timeout_secs = t.check_secs;
        s.checks = vec![c.into()];
        s.policy = Policy::failure_policy(&policy.verification);
        steps.push(s);
    }
    let mut p = Plan::new(release.name(), release.name());
    p.restore_of = Some(backup.source_run.clone());
    p.steps = steps;
    p.validate()
        .map_err(|e| PlanError::BadOption(e.to_string()))?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stable() -> Release {
        Release::load_named(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../releases"),
            "v2025.07-stable",
        )
        .unwrap()
    }

    fn live(release: &str) -> LiveState {
        LiveState {
            release: release.into(),
            services: Vec::new(),
            database: None,
            streams: None,
            cluster_objects: false,
        }
    }

    fn backup(revision: &str) -> BackupToRestore {
        BackupToRestore {
            source_run: "20261201-010203-abcd".into(),
            revision: revision.into(),
        }
    }

    #[test]
    fn a_restore_restores_proves_switches_then_only_reads() {
        let rel = stable();
        let p = plan_restore(
            &live(rel.name()),
            &rel,
            &Policy::embedded(),
            &backup("8d9a2c3"),
        )
        .unwrap();
        let ids: Vec<&str> = p.steps.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "3.db.restore",
                "3.db.switch",
                "5.check.health",
                "5.check.info"
            ]
        );
        assert_eq!(p.restore_of.as_deref(), Some("20261201-010203-abcd"));
        assert_eq!((p.from.as_str(), p.to.as_str()), (rel.name(), rel.name()));
        // No emergency procedure on the restore's own steps.
        assert!(p.steps[..2].iter().all(|s| s.policy.emergency().is_none()));
        assert_eq!(
            p.steps[1].action,
            Action::DbSwitch {
                source_run: "20261201-010203-abcd".into(),
                revision: "8d9a2c3".into()
            }
        );
    }

    #[test]
    fn a_backup_the_live_services_cannot_run_on_is_refused() {
        let rel = stable();
        let e = plan_restore(
            &live(rel.name()),
            &rel,
            &Policy::embedded(),
            &backup("9zzzzzz"),
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("runs only on schema revision(s) 1a5be11") && msg.contains("9zzzzzz"),
            "{msg}"
        );
        assert_eq!(e.exit(), xorb_model::exit::Exit::Refused);
        let e = plan_restore(
            &live("v2025.08-rc1"),
            &rel,
            &Policy::embedded(),
            &backup("8d9a2c3"),
        )
        .unwrap_err();
        assert!(matches!(e, PlanError::WrongFrom { .. }), "{e}");
    }
}
