//! The five roles. Each returns its own routes and background tasks; [`run`] adds the shared
//! endpoints, serves HTTP and drains on shutdown.

pub mod api;
pub mod control_plane;
pub mod orchestrator;
pub mod scheduler;
pub mod tenant_metrics;
pub mod worker;

use crate::ctx::Ctx;
use crate::release::Role;
use crate::shutdown::Shutdown;
use anyhow::Context as _;
use std::sync::Arc;
use std::time::Duration;

/// How long background tasks may take to finish after shutdown was requested.
const DRAIN: Duration = Duration::from_secs(25);

pub async fn run(ctx: Arc<Ctx>, shutdown: Shutdown) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(ctx.cfg.listen_addr)
        .await
        .with_context(|| format!("cannot listen on {}", ctx.cfg.listen_addr))?;
    let (router, tasks) = match ctx.role {
        Role::Api => api::start(ctx.clone(), shutdown.clone()).await?,
        Role::Orchestrator => orchestrator::start(ctx.clone(), shutdown.clone()).await?,
        Role::ControlPlane => control_plane::start(ctx.clone(), shutdown.clone()).await?,
        Role::Worker => worker::start(ctx.clone(), shutdown.clone()).await?,
        Role::Scheduler => scheduler::start(ctx.clone(), shutdown.clone()).await?,
    };
    tracing::info!(
        role = %ctx.role,
        release = ctx.release.name,
        version = ctx.release.version,
        listen = %ctx.cfg.listen_addr,
        "ready"
    );
    crate::http::serve(
        listener,
        crate::http::app(ctx.clone(), router),
        shutdown.clone(),
    )
    .await
    .context("http server")?;
    let drained = tokio::time::timeout(DRAIN, futures::future::join_all(tasks)).await;
    if drained.is_err() {
        tracing::warn!("background tasks did not finish in time: exiting anyway");
    }
    ctx.nats.flush().await.ok();
    tracing::info!("stopped");
    Ok(())
}
