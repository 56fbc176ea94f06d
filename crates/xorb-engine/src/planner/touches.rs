//! What each action reads and changes (`xorb_model::access`): the planner writes it on every step, and the
//! engine runs the steps of a phase that do not conflict at the same time. Where in doubt a step is said to
//! change more, never less: a wrong "reads" could run two steps into each other, a wrong "writes" only costs time.

use xorb_model::access::{Access, Resource::*};
use xorb_model::check::Check;
use xorb_model::plan::Action;

pub fn access_of(action: &Action) -> Access {
    match action {
        // Reads only the releases' files.
        Action::Noop | Action::VerifyTargetAvailable | Action::MonitoringValidate { .. } => {
            Access::default()
        }
        Action::CaptureState => Access::reads(&[Services, Streams, Redis, Monitoring]),
        Action::IntegrityQuick => Access::reads(&[Database]),
        Action::EnsureStreams { .. } => Access::writes(&[Streams], &[]),
        // A service starts on the schema and the streams it finds.
        Action::SetImage { .. }
        | Action::RemoveService { .. }
        | Action::AddService { .. }
        | Action::ApplyConfig { .. }
        | Action::ConfigureServices { .. }
        | Action::ApplyObjects { .. } => Access::writes(&[Services], &[Database, Streams]),
        // Phase 3 one step at a time, on what the services expect of the schema.
        Action::DbBackup
        | Action::BackupProof
        | Action::DbCompatibility { .. }
        | Action::Migrate { .. }
        | Action::DbVerify { .. }
        | Action::DbRestore { .. }
        | Action::ReimportPreserved { .. } => Access::writes(&[Database], &[Services]),
        Action::DbSwitch { .. } => Access::writes(&[Database, Services], &[]),
        Action::NatsSave { .. } => Access::reads(&[Streams]),
        Action::NatsApply { .. } => Access::writes(&[Streams], &[Services]),
        Action::RedisBackup => Access::reads(&[Redis]),
        Action::RedisApply { .. } => Access::writes(&[Redis], &[Services]),
        Action::MonitoringApply { .. } => Access::writes(&[Monitoring], &[Services]),
        Action::Check { name, .. } => match Check::parse(name) {
            Some(check) => check_access(check),
            // Unknown to this version: the runner refuses it; alone meanwhile.
            None => Access::writes(&[Stack], &[]),
        },
    }
}

fn check_access(check: Check) -> Access {
    match check {
        Check::Health | Check::Release | Check::Info | Check::Quota => Access::reads(&[Services]),
        Check::IntegrityQuick | Check::IntegrityFull | Check::Loss | Check::AuditLog => {
            Access::reads(&[Database])
        }
        Check::EvidenceLegacy => Access::reads(&[Services, Database]),
        Check::Monitoring => Access::reads(&[Monitoring, Services]),
        // They create sessions, findings and messages: not beside what counts or checksums rows.
        Check::Smoke => Access::writes(&[Database, Streams], &[Services]),
        Check::TenantIsolation => Access::writes(&[Database], &[Services]),
        // It measures the stack: nothing else runs meanwhile.
        Check::Performance => Access::writes(&[Stack], &[]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_writes_rows_never_runs_beside_what_counts_them() {
        let check = |n: &str| {
            access_of(&Action::Check {
                name: n.into(),
                params: None,
            })
        };
        assert!(check("smoke").conflicts(&check("integrity-full")));
        assert!(check("smoke").conflicts(&check("loss")));
        assert!(!check("loss").conflicts(&check("integrity-full")));
        assert!(!check("monitoring").conflicts(&check("audit-log")));
        for c in Check::ALL {
            assert!(check("performance").conflicts(&check(c.name())), "{c}");
        }
        assert!(check("performance").conflicts(&check("health")));
        assert!(check("no-such-check").conflicts(&check("health")));
    }
}
