//! `xorb-svc`: the XORB platform's services, one binary, five roles.
//!
//!     xorb-svc --role ROLE --release RELEASE
//!     xorb-svc --list-releases
//!
//! Exit codes: 0 clean shutdown, 2 bad configuration (including an unknown release or a role
//! the release does not have), 3 the database's schema revision is not one the release runs on,
//! 1 anything else.

mod config;
mod ctx;
mod db;
mod evidence;
mod faults;
mod http;
mod jobs;
mod metrics;
mod release;
mod roles;
mod scope;
mod shutdown;

use clap::Parser;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "xorb-svc",
    version,
    about = "XORB platform services (api, orchestrator, control-plane, worker, scheduler)",
    after_help = "Configuration comes only from the environment: DATABASE_URL, REDIS_URL, NATS_URL, \
                  XORB_LISTEN_ADDR, EVIDENCE_SYSTEM_ENABLED, TENANT_ISOLATION_MODE, \
                  CIRCUIT_BREAKER_ENABLED, XORB_EVIDENCE_DIR, XORB_CONTROL_PLANE_URL, \
                  XORB_SCAN_TIMEOUT_MS, XORB_SCAN_CONCURRENCY, XORB_SESSION_TTL_SECS \
                  (docs/design/platform.md); on loopback only, for tests: XORB_FAULT_ERROR_RATIO, \
                  XORB_FAULT_LATENCY_MS, XORB_FAULT_STALL, XORB_FAULT_STALL_MS, XORB_FAULTS_FILE."
)]
struct Cli {
    /// api | orchestrator | control-plane | worker | scheduler
    #[arg(long, required_unless_present = "list_releases")]
    role: Option<String>,
    /// v2025.07-stable | v2025.08-rc1
    #[arg(long, required_unless_present = "list_releases")]
    release: Option<String>,
    /// Print the compiled-in release table as JSON and exit.
    #[arg(long, conflicts_with_all = ["role", "release"])]
    list_releases: bool,
}

const EXIT_OTHER: u8 = 1;
const EXIT_CONFIG: u8 = 2;
const EXIT_SCHEMA: u8 = 3;

/// The log filter: `RUST_LOG` when set, else `LOG_LEVEL` (which the release configmaps carry)
/// for this crate's own lines, with the libraries kept quiet.
fn log_filter(rust_log: Option<&str>, log_level: Option<&str>) -> String {
    if let Some(f) = rust_log.filter(|f| !f.trim().is_empty()) {
        return f.to_string();
    }
    let level = match log_level.map(|l| l.trim().to_ascii_lowercase()).as_deref() {
        Some(l @ ("trace" | "debug" | "info" | "warn" | "error")) => l.to_string(),
        _ => "info".to_string(),
    };
    format!("info,async_nats=warn,tokio_postgres=warn,hyper=warn,xorb_svc={level}")
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let spec = log_filter(
        std::env::var("RUST_LOG").ok().as_deref(),
        std::env::var("LOG_LEVEL").ok().as_deref(),
    );
    let filter = EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(filter)
        .init();
}

fn exit_code_for(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.is::<config::ConfigError>() || cause.is::<release::ReleaseError>() {
            return EXIT_CONFIG;
        }
        if cause.is::<db::SchemaRevisionError>() {
            return EXIT_SCHEMA;
        }
    }
    EXIT_OTHER
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.list_releases {
        match serde_json::to_string_pretty(&release::table_json()) {
            Ok(s) => {
                println!("{s}");
                return ExitCode::SUCCESS;
            }
            Err(_) => return ExitCode::from(EXIT_OTHER),
        }
    }
    init_logging();
    match start(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let code = exit_code_for(&err);
            // One line: the chain of causes, outermost first.
            let msg = err
                .chain()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(": ");
            tracing::error!(exit_code = code, "{msg}");
            ExitCode::from(code)
        }
    }
}

fn start(cli: Cli) -> anyhow::Result<()> {
    let (rel, role) = release::resolve(
        cli.release.as_deref().unwrap_or_default(),
        cli.role.as_deref().unwrap_or_default(),
    )?;
    let cfg = config::Config::from_env(rel, role)?;
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    tracing::info!(
        role = %role,
        release = rel.name,
        version = rel.version,
        database = %db::describe(&cfg.database_url),
        redis = %config::redact_url(cfg.redis_url.expose()),
        nats = %config::redact_url(&cfg.nats_url),
        isolation = cfg.isolation_mode.as_str(),
        evidence = cfg.evidence_enabled,
        circuit_breaker = cfg.circuit_breaker,
        "starting"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let (trigger, shutdown) = shutdown::channel();
        shutdown::on_signals(trigger)?;
        let ctx = ctx::Ctx::start(rel, role, cfg, &shutdown).await?;
        roles::run(ctx, shutdown).await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        let e: anyhow::Error = config::ConfigError::Missing("DATABASE_URL").into();
        assert_eq!(exit_code_for(&e), EXIT_CONFIG);
        let e: anyhow::Error = release::resolve("v2025.07-stable", "control-plane")
            .unwrap_err()
            .into();
        assert_eq!(exit_code_for(&e), EXIT_CONFIG);
        let e: anyhow::Error =
            db::check_revision(release::find("v2025.08-rc1").unwrap(), Some("1a5be11"))
                .unwrap_err()
                .into();
        assert_eq!(exit_code_for(&e.context("starting")), EXIT_SCHEMA);
        assert_eq!(exit_code_for(&anyhow::anyhow!("boom")), EXIT_OTHER);
    }

    #[test]
    fn log_filters() {
        assert_eq!(log_filter(Some("debug"), Some("error")), "debug");
        assert!(log_filter(None, Some("DEBUG")).ends_with("xorb_svc=debug"));
        assert!(log_filter(None, Some("verbose")).ends_with("xorb_svc=info"));
        assert!(log_filter(Some(" "), None).ends_with("xorb_svc=info"));
    }

    #[test]
    fn cli() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        assert!(Cli::try_parse_from(["xorb-svc", "--list-releases"]).is_ok());
        assert!(Cli::try_parse_from(["xorb-svc", "--role", "api"]).is_err());
        assert!(
            Cli::try_parse_from(["xorb-svc", "--role", "api", "--release", "v2025.08-rc1"]).is_ok()
        );
    }
}
