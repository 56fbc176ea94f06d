//! `xorbctl`: the XORB rollback runbook as software. This binary only parses arguments, calls the libraries and
//! maps their errors to exit codes (in one place: `exit_code`).

mod cli;
mod dashboard;
mod governance;
mod https;
mod integrity;
mod notify;
mod output;
mod release_drift;
mod report;
mod rollback;
mod sinks;
mod waiting_gate;
mod watch;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Everything xorbctl and the tools it runs create (journal, run artifacts, logs, outputs kept for errors)
    // is the owner's only; files that others must read are given their mode explicitly.
    xorb_engine::private::owner_only_umask();
    https::install_crypto_provider();
    let args = cli::Cli::parse();
    let out = output::Reporter::new(args.output);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            out.error(&anyhow::anyhow!("cannot start the async runtime: {e}"));
            return ExitCode::from(1);
        }
    };
    match rt.block_on(cli::run(args, &out)) {
        Ok(code) => code,
        Err(e) => {
            let code = exit_code(&e);
            out.error(&redacted(&e));
            ExitCode::from(code)
        }
    }
}

/// `e` with every secret the command read replaced (errors quote commands, URLs and outputs).
fn redacted(e: &anyhow::Error) -> anyhow::Error {
    let r = sinks::process_redactor();
    let mut chain: Vec<String> = e.chain().map(|c| r.redact_string(&c.to_string())).collect();
    let mut out = anyhow::anyhow!(chain.pop().unwrap_or_default());
    while let Some(c) = chain.pop() {
        out = out.context(c);
    }
    out
}

/// The one place errors become exit codes: 2 bad input (unknown release, malformed file, bad flag), 3 refused
/// (the stack is not as the command expects: no stack, wrong --from, another rollback running), 4 a server or
/// dependency failed, 1 anything else. A rollback that ran and failed exits 6, one waiting for a person 7; an
/// audit trail that does not verify, 8; a run waiting at its approval gate, 9
/// (`governance::EXIT_WAITING_FOR_APPROVAL`).
fn exit_code(e: &anyhow::Error) -> u8 {
    use xorb_engine::planner::PlanError as P;
    use xorb_engine::{EngineError as E, JournalError as J};
    use xorb_local::LocalError as L;
    for cause in e.chain() {
        if let Some(le) = cause.downcast_ref::<L>() {
            return match le {
                L::Config(_) | L::Release(_) => 2,
                L::NoStack(_) | L::OtherReleaseRunning { .. } => 3,
                L::Adapter(a) => adapter_exit(a),
                L::Io { .. } | L::Start { .. } | L::Db { .. } | L::Unhealthy { .. } => 4,
            };
        }
        if let Some(a) = cause.downcast_ref::<xorb_adapters::AdapterError>() {
            return adapter_exit(a);
        }
        if let Some(pe) = cause.downcast_ref::<P>() {
            return match pe {
                P::WrongFrom { .. } | P::Schema(_) | P::Incompatible { .. } => 3,
                P::NoDatabase(_) => 4,
                P::BadScope(_) | P::SameRelease(_) | P::BadOption(_) => 2,
            };
        }
        if let Some(ge) = cause.downcast_ref::<governance::GovernanceError>() {
            return match ge {
                governance::GovernanceError::BadInput(_) => 2,
                governance::GovernanceError::Refused(_) => 3,
            };
        }
        if cause
            .downcast_ref::<xorb_governance::PolicyError>()
            .is_some()
        {
            return 2;
        }
        if let Some(ie) = cause.downcast_ref::<xorb_integrity::IntegrityError>() {
            return if ie.is_bad_input() { 2 } else { 4 };
        }
        if cause.downcast_ref::<xorb_audit::VerifyError>().is_some() {
            return 8;
        }
        if cause.downcast_ref::<watch::WatchError>().is_some() {
            return 3;
        }
        if cause.downcast_ref::<xorb_engine::LockError>().is_some() {
            return 3;
        }
        if let Some(J::RunNotFound(_) | J::Ambiguous { .. }) = cause.downcast_ref::<J>() {
            return 2;
        }
        if let Some(J::NoJournal(_)) = cause.downcast_ref::<J>() {
            return 3;
        }
        if let Some(E::Journal(J::NoJournal(_))) = cause.downcast_ref::<E>() {
            return 3;
        }
        // `#[error(transparent)]` hands the chain the journal error's own source, not the journal error.
        if let Some(E::Journal(J::RunNotFound(_) | J::Ambiguous { .. })) = cause.downcast_ref::<E>()
        {
            return 2;
        }
        if let Some(
            E::Lock(_) | E::AlreadySucceeded { .. } | E::RunAborted { .. } | E::NotInJournal { .. },
        ) = cause.downcast_ref::<E>()
        {
            return 3;
        }
        if let Some(E::UnknownStep { .. } | E::StoredPlan { .. }) = cause.downcast_ref::<E>() {
            return 2;
        }
        if cause
            .downcast_ref::<xorb_model::release::ReleaseError>()
            .is_some()
            || cause
                .downcast_ref::<xorb_model::policy::PolicyError>()
                .is_some()
            || cause.downcast_ref::<cli::UsageError>().is_some()
        {
            return 2;
        }
    }
    1
}

fn adapter_exit(a: &xorb_adapters::AdapterError) -> u8 {
    use xorb_adapters::AdapterError as A;
    match a {
        A::Config(_) | A::Release(_) => 2,
        A::Io { .. } | A::Db { .. } | A::Nats { .. } | A::Alembic { .. } | A::Dep(_) => 4,
    }
}
