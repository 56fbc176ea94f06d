//! The orchestrator: turns queued sessions into one JetStream job per target, and marks sessions
//! completed when every job is done.

use crate::ctx::Ctx;
use crate::jobs::{self, JobCompleted, Quiet, ScanJob};
use crate::release::{ORCHESTRATOR_CONSUMER, Role};
use crate::scope::Target;
use crate::shutdown::Shutdown;
use async_nats::HeaderMap;
use async_nats::jetstream::AckKind;
use axum::Router;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// How long an idle dispatch loop waits before it looks for queued sessions again.
const IDLE_POLL: Duration = Duration::from_millis(200);
/// How often running sessions are checked for completion without an event (lost events).
const SWEEP_EVERY: Duration = Duration::from_secs(2);

pub async fn start(
    ctx: Arc<Ctx>,
    shutdown: Shutdown,
) -> anyhow::Result<(Router, Vec<JoinHandle<()>>)> {
    debug_assert_eq!(ctx.role, Role::Orchestrator);
    let tasks = vec![
        tokio::spawn(dispatch_loop(ctx.clone(), shutdown.clone())),
        tokio::spawn(events_loop(ctx.clone(), shutdown.clone())),
    ];
    Ok((Router::new(), tasks))
}

async fn dispatch_loop(ctx: Arc<Ctx>, shutdown: Shutdown) {
    let mut quiet = Quiet::new("dispatch");
    let mut last_sweep = tokio::time::Instant::now();
    while !shutdown.is_triggered() {
        if last_sweep.elapsed() >= SWEEP_EVERY {
            last_sweep = tokio::time::Instant::now();
            if let Err(e) = sweep_completed(&ctx).await {
                tracing::debug!(error = %e, "completion sweep failed");
            }
        }
        let delay = match dispatch_one(&ctx).await {
            Ok(true) => {
                quiet.ok();
                continue; // more may be queued: go on without waiting
            }
            Ok(false) => {
                quiet.ok();
                IDLE_POLL
            }
            Err(e) => quiet.failed(&e),
        };
        if !shutdown.sleep(delay).await {
            break;
        }
    }
}

/// Publish the jobs of one queued session and mark it running, all under the row lock: a session
/// is never dispatched twice by concurrent orchestrators. Publishes carry `Nats-Msg-Id`, so a
/// retry after a failed commit is de-duplicated by JetStream.
async fn dispatch_one(ctx: &Ctx) -> Result<bool, String> {
    let mut client = ctx.pg.get().await.map_err(crate::db::pg)?;
    let tx = client.transaction().await.map_err(crate::db::pg)?;
    let Some(row) = tx
        .query_opt(
            "SELECT id, tenant_id, targets FROM ptaas_sessions WHERE status = 'queued' \
             ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED",
            &[],
        )
        .await
        .map_err(crate::db::pg)?
    else {
        return Ok(false);
    };
    let session_id: Uuid = row.get(0);
    let tenant_id: Uuid = row.get(1);
    let targets: Option<Vec<Target>> = row
        .get::<_, Option<serde_json::Value>>(2)
        .and_then(|v| serde_json::from_value(v).ok());
    let targets = match targets {
        Some(t) if !t.is_empty() => t,
        _ => {
            tracing::warn!(session = %session_id, "session has no usable targets: failing it");
            tx.execute(
                "UPDATE ptaas_sessions SET status = 'failed', updated_at = now(), completed_at = now() WHERE id = $1",
                &[&session_id],
            )
            .await
            .map_err(crate::db::pg)?;
            tx.commit().await.map_err(crate::db::pg)?;
            return Ok(true);
        }
    };
    let subject = ctx.release.job_subject(&tenant_id);
    for (i, t) in targets.iter().enumerate() {
        let job = ScanJob {
            session_id,
            tenant_id,
            index: i as u32,
            host: t.host.clone(),
            ports: t.ports.clone(),
        };
        let payload = serde_json::to_vec(&job).map_err(|e| e.to_string())?;
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("{session_id}.{i}").as_str());
        let ack = ctx
            .js
            .publish_with_headers(subject.clone(), headers, payload.into())
            .await
            .map_err(|e| format!("publish to {subject}: {e}"))?;
        ack.await.map_err(|e| {
            format!(
                "publish to {subject} (stream {}): {e}",
                ctx.release.nats.jobs_stream
            )
        })?;
    }
    tx.execute(
        "UPDATE ptaas_sessions SET status = 'running', jobs_total = $2, updated_at = now() WHERE id = $1",
        &[&session_id, &(targets.len() as i32)],
    )
    .await
    .map_err(crate::db::pg)?;
    tx.commit().await.map_err(crate::db::pg)?;
    tracing::info!(session = %session_id, jobs = targets.len(), subject = %subject, "session dispatched");
    Ok(true)
}

const COMPLETE_SQL: &str = "UPDATE ptaas_sessions SET status = 'completed', completed_at = now(), updated_at = now() \
     WHERE status = 'running' AND jobs_total > 0 AND jobs_done >= jobs_total";

async fn complete_session(ctx: &Ctx, id: Uuid) -> Result<bool, String> {
    let client = ctx.pg.get().await.map_err(crate::db::pg)?;
    let n = client
        .execute(&format!("{COMPLETE_SQL} AND id = $1"), &[&id])
        .await
        .map_err(crate::db::pg)?;
    if n > 0 {
        tracing::info!(session = %id, "session completed");
    }
    Ok(n > 0)
}

async fn sweep_completed(ctx: &Ctx) -> Result<(), String> {
    let client = ctx.pg.get().await.map_err(crate::db::pg)?;
    let rows = client
        .query(&format!("{COMPLETE_SQL} RETURNING id"), &[])
        .await
        .map_err(crate::db::pg)?;
    for r in rows {
        tracing::info!(session = %r.get::<_, Uuid>(0), "session completed (sweep)");
    }
    Ok(())
}

/// Consume `xorb.events.job_completed` through the durable consumer `xorb-orchestrator`.
async fn events_loop(ctx: Arc<Ctx>, shutdown: Shutdown) {
    let mut quiet = Quiet::new("job_completed consumer");
    while !shutdown.is_triggered() {
        let err = match consume_events(&ctx, &shutdown, &mut quiet).await {
            Ok(()) => break, // shutdown
            Err(e) => e,
        };
        let delay = quiet.failed(&err);
        if !shutdown.sleep(delay).await {
            break;
        }
    }
}

async fn consume_events(ctx: &Ctx, shutdown: &Shutdown, quiet: &mut Quiet) -> Result<(), String> {
    let consumer = jobs::durable_consumer(
        &ctx.js,
        ctx.release.nats.events_stream,
        ORCHESTRATOR_CONSUMER,
        Some(ctx.release.nats.job_completed_subject),
        Duration::from_secs(30),
        20,
    )
    .await?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(64)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .map_err(|e| format!("pull from {}: {e}", ctx.release.nats.events_stream))?;
    quiet.ok();
    tracing::info!(
        consumer = ORCHESTRATOR_CONSUMER,
        stream = ctx.release.nats.events_stream,
        "consuming job_completed events"
    );
    loop {
        let next = tokio::select! {
            m = messages.next() => m,
            _ = shutdown.wait() => return Ok(()),
        };
        let msg = match next {
            None => return Err("event stream ended".into()),
            Some(Err(e)) => return Err(format!("pull: {e}")),
            Some(Ok(m)) => m,
        };
        let ev: JobCompleted = match serde_json::from_slice(&msg.payload) {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(error = %e, "malformed job_completed event: dropping it");
                let _ = msg.ack_with(AckKind::Term).await;
                continue;
            }
        };
        match complete_session(ctx, ev.session_id).await {
            Ok(_) => {
                if let Err(e) = msg.ack().await {
                    tracing::warn!(error = %e, "ack failed");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, session = %ev.session_id, "cannot record completion: retrying later");
                let _ = msg
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(2))))
                    .await;
            }
        }
    }
}
