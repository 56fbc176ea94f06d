//! Shared stateful adapters: every step of the runbook that talks to a dependency over the network (PostgreSQL
//! and its client tools, NATS JetStream, Redis, Prometheus, Alertmanager, the services' own API), written once for
//! every target, and the one `StepRunner` of the engine, generic over the [`Target`] trait that says what differs
//! from one way of running XORB to another. Design: docs/design/architecture.md.

pub mod checks;
pub mod conn;
pub mod context;
pub mod deps;
mod error;
pub mod evidence;
pub mod files;
pub mod integrity;
pub mod monitoring;
mod monitoring_restored;
pub mod nats;
pub mod performance;
pub mod pg;
pub mod poll;
pub mod redis;
pub mod redis_conf;
pub mod runner;
pub mod safety;
pub mod sealed;
pub mod services;
pub mod streams;
pub mod target;
pub mod toolout;

use std::path::PathBuf;

pub use context::TargetRunner;
pub use error::AdapterError;
pub use target::{ConfigSet, Endpoints, Instance, RedisEndpoint, Target};

/// Where the tool finds what it needs besides the target.
#[derive(Debug, Clone)]
pub struct Paths {
    pub releases_root: PathBuf,
    /// The Python virtual environment that has Alembic.
    pub venv: PathBuf,
    /// The platform's service binary.
    pub svc_bin: PathBuf,
}
