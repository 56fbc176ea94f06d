//! The dispatcher: builds the invocation's one redactor (`crate::redaction`) and hands each command its settings.

use xorb_model::exit::Exit;

use crate::cmd;
use crate::output::Reporter;
use crate::settings::{CommandSettings, Settings};

pub async fn run(settings: Settings, out: &Reporter) -> anyhow::Result<Exit> {
    // Commands that read no state need no redactor.
    match &settings.command {
        CommandSettings::Completions(shell) => return cmd::completions::run(*shell),
        CommandSettings::Man(path) => return cmd::man::run(path),
        _ => {}
    }
    let red = crate::redaction::redactor(&settings.redaction);
    if let Some(what) = local_only(&settings.command) {
        crate::target::local_only(&settings.redaction.state_dir, what)?;
    }
    match &settings.command {
        CommandSettings::StackUp(s) => cmd::stack::up(s, out).await,
        CommandSettings::StackDown(s) => cmd::stack::down(s, out).await,
        CommandSettings::Status(s) => cmd::status::run(s, out).await,
        CommandSettings::Integrity(s) => cmd::integrity::run(s, out).await,
        CommandSettings::Loss(s) => cmd::loss::run(s, out).await,
        CommandSettings::Plan(s) => cmd::plan::run(s, out, &red).await,
        CommandSettings::Rollback(s) => cmd::rollback::run(s, out, &red).await,
        CommandSettings::Restore(s) => cmd::restore::run(s, out, &red).await,
        CommandSettings::Assess(s) => cmd::assess::run(s, out, &red).await,
        CommandSettings::Monitor(s) => cmd::monitor::run(s, out).await,
        CommandSettings::Perf(s) => cmd::perf::run(s, out).await,
        CommandSettings::Approve(s) => cmd::approve::run(s, out, &red).await,
        CommandSettings::Check(s) => cmd::check::run(s, out, &red),
        CommandSettings::Resume(s) => cmd::resume::run(s, out, &red).await,
        CommandSettings::Abort(s) => cmd::abort::run(s, out, &red).await,
        CommandSettings::Runs(s) => cmd::runs::run(s, out),
        CommandSettings::Show(s) => cmd::show::run(s, out, &red),
        CommandSettings::Watch(s) => cmd::watch::run(s, out, &red).await,
        CommandSettings::AuditVerify(s) => cmd::audit::verify(s, out),
        CommandSettings::AuditPlatform(s) => cmd::audit::platform(s, out).await,
        CommandSettings::Report(s) => cmd::report::run(s, &red),
        CommandSettings::Dashboard(s) => cmd::dashboard::run(s, out, &red).await,
        CommandSettings::Completions(_) | CommandSettings::Man(_) => {
            unreachable!("handled before the redactor is built")
        }
        CommandSettings::StackServe(_) => {
            unreachable!("handled by main before the runtime is built")
        }
    }
}

/// The commands that work on the local stack only for now (a state directory bound to Kubernetes refuses them).
fn local_only(c: &CommandSettings) -> Option<&'static str> {
    Some(match c {
        CommandSettings::Integrity(_) => "integrity",
        CommandSettings::Loss(_) => "loss",
        CommandSettings::Assess(_) => "assess",
        CommandSettings::Monitor(_) => "monitor",
        CommandSettings::Perf(_) => "perf",
        CommandSettings::AuditPlatform(_) => "audit platform",
        _ => return None,
    })
}
