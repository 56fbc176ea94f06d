//! `xorbctl`: the XORB rollback runbook as software. This binary parses the command line (`cli`), resolves it once
//! into the command's settings (`settings`), dispatches to the command (`dispatch`, `cmd::*`), and turns how it
//! ended into an exit code: the command's own [`Exit`], or, for an error, the code its cause says
//! (`docs/exit-codes.md`).
//!
//! Modules depend one way: `main` → `dispatch` → `cmd::*` → the shared helpers (`settings`, `governance`,
//! `execution`, `planning`, `target`, …) → `cli`, `errors`, `output`. Only `target` names the target's crate.

mod cli;
mod cmd;
mod dispatch;
mod document;
mod errors;
mod execution;
mod flags;
mod governance;
mod https;
#[cfg(test)]
mod layering;
mod notify;
mod output;
mod planning;
mod redaction;
mod release_drift;
mod scan;
mod settings;
mod sinks;
mod target;
mod waiting_gate;
mod watch;

use std::process::ExitCode;

use clap::Parser;
use xorb_model::exit::Exit;

fn main() -> ExitCode {
    // Everything xorbctl and the tools it runs create (journal, run artifacts, logs, outputs kept for errors)
    // is the owner's only; files that others must read are given their mode explicitly.
    xorb_engine::private::owner_only_umask();
    https::install_crypto_provider();
    let settings = settings::resolve(cli::Cli::parse());
    // The Kubernetes stack's own process builds the runtime it lives on.
    if let settings::CommandSettings::StackServe(args) = settings.command {
        return target::kube_stack::serve(args).into();
    }
    let out = output::Reporter::new(settings.output);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            out.error(&anyhow::anyhow!("cannot start the async runtime: {e}"));
            return Exit::Other.into();
        }
    };
    // On the heap: a command's future (a whole rollback over a target) is large, and the stack is not the place.
    match rt.block_on(Box::pin(dispatch::run(settings, &out))) {
        Ok(code) => code.into(),
        Err(e) => {
            let code = exit_of(&e);
            out.error(&redacted(&e));
            code.into()
        }
    }
}

/// `e` with every secret the command read replaced (errors quote commands, URLs and outputs).
fn redacted(e: &anyhow::Error) -> anyhow::Error {
    let r = redaction::process_redactor();
    let mut chain: Vec<String> = e.chain().map(|c| r.redact_string(&c.to_string())).collect();
    let mut out = anyhow::anyhow!(chain.pop().unwrap_or_default());
    while let Some(c) = chain.pop() {
        out = out.context(c);
    }
    out
}

/// The exit code of an error: that of the outermost cause whose type says one, else [`Exit::Other`].
fn exit_of(e: &anyhow::Error) -> Exit {
    e.chain().find_map(known_exit).unwrap_or(Exit::Other)
}

/// The code a cause says, if its type is one that says codes.
fn known_exit(cause: &(dyn std::error::Error + 'static)) -> Option<Exit> {
    macro_rules! ask {
        ($($t:ty),+ $(,)?) => {
            $(if let Some(e) = cause.downcast_ref::<$t>() {
                return Some(e.exit());
            })+
        };
    }
    ask!(
        errors::UsageError,
        errors::GovernanceError,
        errors::WatchError,
        errors::PerfError,
        xorb_engine::planner::PlanError,
        xorb_engine::EngineError,
        xorb_engine::JournalError,
        xorb_engine::LockError,
        xorb_governance::PolicyError,
        xorb_integrity::IntegrityError,
        xorb_audit::VerifyError,
        xorb_model::release::ReleaseError,
        xorb_model::policy::PolicyError,
        xorb_monitor::prom::PromError,
        xorb_monitor::record::RecordError,
    );
    target::exit_of(cause)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_exits_with_the_code_of_its_outermost_known_cause() {
        use anyhow::Context;
        let usage: anyhow::Error = errors::UsageError("bad".into()).into();
        assert_eq!(exit_of(&usage.context("while parsing")), Exit::BadInput);
        let refused: anyhow::Error = errors::GovernanceError::Refused("no".into()).into();
        assert_eq!(exit_of(&refused), Exit::Refused);
        let journal =
            xorb_engine::EngineError::Journal(xorb_engine::JournalError::RunNotFound("r".into()));
        assert_eq!(exit_of(&journal.into()), Exit::BadInput);
        let no_journal: anyhow::Error =
            xorb_engine::JournalError::NoJournal("/nowhere".into()).into();
        assert_eq!(exit_of(&no_journal), Exit::Refused);
        let wrapped = Err::<(), _>(xorb_engine::planner::PlanError::NoDatabase("x".into()))
            .context("planning")
            .unwrap_err();
        assert_eq!(exit_of(&wrapped), Exit::DependencyFailed);
        assert_eq!(exit_of(&anyhow::anyhow!("plain")), Exit::Other);
        let io: anyhow::Error = std::io::Error::other("disk").into();
        assert_eq!(exit_of(&io), Exit::Other);
    }
}
