//! The exit codes of `xorbctl`, defined once (like nextest-metadata keeps nextest's): every command returns one of
//! these, and every error type of the workspace says which one it means (`fn exit(&self) -> Exit`). The table in
//! `docs/exit-codes.md` is this enum; a unit test keeps the two the same.

use crate::plan::RunStatus;

/// Why `xorbctl` exited. The discriminant is the process's exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Exit {
    /// The command did what was asked (or found nothing left to do).
    Ok = 0,
    /// Anything not listed below.
    Other = 1,
    /// Bad input: an unknown release, a malformed file, a number out of its range, a path that leaves the
    /// releases' tree, a bad flag, an unconfirmed rollback.
    BadInput = 2,
    /// Refused: the stack is not as the command expects (no stack, wrong `--from`, another rollback holds the
    /// lock, a run waits at its gate, a plan that would strand a service, release files changed since the plan).
    Refused = 3,
    /// A server or dependency failed.
    DependencyFailed = 4,
    /// A check found a problem: `status` something unhealthy, `runs` run directories the journal does not know,
    /// `integrity --critical` damaged critical data, `assess` a warranted rollback.
    Unhealthy = 5,
    /// A rollback ran and stopped on a failure (or was aborted).
    RunFailed = 6,
    /// A rollback waits for a person (a step to confirm or mark done).
    WaitingForPerson = 7,
    /// The audit trail does not verify (or was erased).
    AuditUnverified = 8,
    /// A rollback waits at its approval gate (`xorbctl approve`).
    WaitingForApproval = 9,
    /// A judgement could not be made: too little data (`monitor` with no traffic or too few points).
    Inconclusive = 10,
}

impl Exit {
    /// Every exit code, in order.
    pub const ALL: [Exit; 11] = [
        Exit::Ok,
        Exit::Other,
        Exit::BadInput,
        Exit::Refused,
        Exit::DependencyFailed,
        Exit::Unhealthy,
        Exit::RunFailed,
        Exit::WaitingForPerson,
        Exit::AuditUnverified,
        Exit::WaitingForApproval,
        Exit::Inconclusive,
    ];

    /// The process's exit status.
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The name used in `docs/exit-codes.md` and the man page.
    pub const fn name(self) -> &'static str {
        match self {
            Exit::Ok => "Ok",
            Exit::Other => "Other",
            Exit::BadInput => "BadInput",
            Exit::Refused => "Refused",
            Exit::DependencyFailed => "DependencyFailed",
            Exit::Unhealthy => "Unhealthy",
            Exit::RunFailed => "RunFailed",
            Exit::WaitingForPerson => "WaitingForPerson",
            Exit::AuditUnverified => "AuditUnverified",
            Exit::WaitingForApproval => "WaitingForApproval",
            Exit::Inconclusive => "Inconclusive",
        }
    }

    /// What the code means, in one line (the table's "meaning" column).
    pub const fn meaning(self) -> &'static str {
        match self {
            Exit::Ok => "success, or nothing left to do",
            Exit::Other => "anything else",
            Exit::BadInput => {
                "bad input: unknown release, malformed file, value out of range, bad flag"
            }
            Exit::Refused => "refused: the stack or the run is not as the command expects",
            Exit::DependencyFailed => "a server or dependency failed",
            Exit::Unhealthy => {
                "a check found a problem (status, runs, integrity --critical, audit platform, assess, monitor)"
            }
            Exit::RunFailed => "a rollback ran and stopped on a failure",
            Exit::WaitingForPerson => "a rollback waits for a person (confirm or mark a step done)",
            Exit::AuditUnverified => "the audit trail does not verify (or was erased)",
            Exit::WaitingForApproval => "a rollback waits at its approval gate",
            Exit::Inconclusive => "too little data to judge (monitor)",
        }
    }

    /// How a command that ran (or watched) a rollback ends for a run in `status`; `None` while it runs.
    pub fn of_run(status: &RunStatus) -> Option<Exit> {
        match status {
            RunStatus::Running => None,
            RunStatus::Succeeded => Some(Exit::Ok),
            RunStatus::WaitingForConfirmation { .. } => Some(Exit::WaitingForPerson),
            RunStatus::WaitingForApproval { .. } => Some(Exit::WaitingForApproval),
            RunStatus::Failed { .. }
            | RunStatus::EmergencyStopped { .. }
            | RunStatus::Aborted { .. } => Some(Exit::RunFailed),
        }
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e.code())
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.code(), self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows `| code | Name | meaning |` of the table in docs/exit-codes.md.
    fn doc_rows() -> Vec<(u8, String, String)> {
        let text = include_str!("../../../docs/exit-codes.md");
        text.lines()
            .filter_map(|l| {
                let cells: Vec<&str> = l
                    .trim()
                    .strip_prefix('|')?
                    .split('|')
                    .map(str::trim)
                    .collect();
                let code = cells.first()?.parse::<u8>().ok()?;
                Some((
                    code,
                    cells.get(1)?.trim_matches('`').to_string(),
                    cells.get(2)?.to_string(),
                ))
            })
            .collect()
    }

    #[test]
    fn the_documented_table_is_the_enum() {
        let doc = doc_rows();
        let ours: Vec<(u8, String, String)> = Exit::ALL
            .iter()
            .map(|e| (e.code(), e.name().to_string(), e.meaning().to_string()))
            .collect();
        assert_eq!(
            doc, ours,
            "docs/exit-codes.md and xorb_model::exit::Exit differ"
        );
    }

    #[test]
    fn codes_are_distinct_and_in_order() {
        for (i, e) in Exit::ALL.iter().enumerate() {
            assert_eq!(usize::from(e.code()), i, "{e}");
        }
    }

    #[test]
    fn a_run_ends_with_the_code_of_its_status() {
        assert_eq!(Exit::of_run(&RunStatus::Running), None);
        assert_eq!(Exit::of_run(&RunStatus::Succeeded), Some(Exit::Ok));
        assert_eq!(
            Exit::of_run(&RunStatus::Aborted {
                by: "a".into(),
                step: None
            }),
            Some(Exit::RunFailed)
        );
    }
}
