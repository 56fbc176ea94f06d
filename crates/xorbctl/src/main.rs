//! `xorbctl`: the XORB rollback runbook as software. This binary only parses arguments, calls the libraries and
//! maps their errors to exit codes (in one place: `exit_code`).

mod cli;
mod output;
mod rollback;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
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
            out.error(&e);
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The one place errors become exit codes: 2 bad input, 3 refused (the stack is not as expected), 4 a server or
/// dependency failed, 1 anything else.
fn exit_code(e: &anyhow::Error) -> u8 {
    use xorb_local::LocalError as L;
    for cause in e.chain() {
        if let Some(le) = cause.downcast_ref::<L>() {
            return match le {
                L::Config(_) | L::Release(_) => 2,
                L::NoStack(_) | L::OtherReleaseRunning { .. } => 3,
                L::Io { .. }
                | L::Start { .. }
                | L::Db { .. }
                | L::Nats { .. }
                | L::Alembic { .. }
                | L::Unhealthy { .. } => 4,
            };
        }
        if cause
            .downcast_ref::<xorb_model::release::ReleaseError>()
            .is_some()
            || cause.downcast_ref::<cli::UsageError>().is_some()
        {
            return 2;
        }
    }
    1
}
