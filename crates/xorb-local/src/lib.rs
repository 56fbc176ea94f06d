//! The `local` target: the whole XORB stack on one machine, with private PostgreSQL, Redis, NATS, Prometheus and
//! Alertmanager servers on 127.0.0.1 that we start ourselves under a state directory. This crate supervises
//! processes (`stack up/down/status`, in-place restarts) and implements the adapters' `Target` trait for them;
//! every step that talks to a server goes through `xorb-adapters`.

pub mod pidfiles;
mod ports;
pub mod process;
pub mod restart;
pub mod scale;
pub mod servers;
pub mod services;
pub mod stack;
pub mod state;
pub mod target;

use std::path::PathBuf;

use xorb_adapters::AdapterError;

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("could not start {what}: {why}")]
    Start { what: String, why: String },
    #[error("database: {what}: {source}")]
    Db {
        what: String,
        source: tokio_postgres::Error,
    },
    #[error("{0}")]
    Config(String),
    #[error("no stack in {0}: run `xorbctl stack up --release RELEASE` first")]
    NoStack(PathBuf),
    #[error(
        "the stack in {dir} already runs {running}; `xorbctl stack down` first to start {wanted}"
    )]
    OtherReleaseRunning {
        dir: PathBuf,
        running: String,
        wanted: String,
    },
    #[error(
        "the stack in {dir} scrapes every {running}; `xorbctl stack down` first to scrape every {wanted}"
    )]
    OtherScrapeInterval {
        dir: PathBuf,
        running: String,
        wanted: String,
    },
    #[error("{service} did not become healthy within {secs} s: {why}")]
    Unhealthy {
        service: String,
        secs: u64,
        why: String,
    },
    #[error(transparent)]
    Release(#[from] xorb_model::release::ReleaseError),
    #[error(transparent)]
    Adapter(#[from] AdapterError),
}

impl LocalError {
    /// This error's exit code (`docs/exit-codes.md`).
    pub fn exit(&self) -> xorb_model::exit::Exit {
        use xorb_model::exit::Exit;
        match self {
            LocalError::Config(_) | LocalError::Release(_) => Exit::BadInput,
            LocalError::NoStack(_)
            | LocalError::OtherReleaseRunning { .. }
            | LocalError::OtherScrapeInterval { .. } => Exit::Refused,
            LocalError::Adapter(a) => a.exit(),
            LocalError::Io { .. }
            | LocalError::Start { .. }
            | LocalError::Db { .. }
            | LocalError::Unhealthy { .. } => Exit::DependencyFailed,
        }
    }

    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
    pub fn db(what: impl Into<String>, source: tokio_postgres::Error) -> Self {
        Self::Db {
            what: what.into(),
            source,
        }
    }
}
