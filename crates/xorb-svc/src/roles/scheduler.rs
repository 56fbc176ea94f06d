//! The scheduler: expires queued/running sessions older than `XORB_SESSION_TTL_SECS`.

use crate::ctx::Ctx;
use crate::jobs::Quiet;
use crate::shutdown::Shutdown;
use axum::Router;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use uuid::Uuid;

const EVERY: Duration = Duration::from_secs(5);
/// At most this many sessions per batch (one audit_log row each).
const BATCH: i64 = 1000;

pub async fn start(
    ctx: Arc<Ctx>,
    shutdown: Shutdown,
) -> anyhow::Result<(Router, Vec<JoinHandle<()>>)> {
    let task = tokio::spawn(async move {
        let mut quiet = Quiet::new("session expiry");
        loop {
            let delay = match expire_batch(&ctx).await {
                Ok(n) if n as i64 == BATCH => {
                    quiet.ok();
                    Duration::ZERO // more may be waiting
                }
                Ok(_) => {
                    quiet.ok();
                    EVERY
                }
                Err(e) => quiet.failed(&e).max(EVERY),
            };
            if !shutdown.sleep(delay).await {
                break;
            }
        }
    });
    Ok((Router::new(), vec![task]))
}

/// Expire one batch in one transaction, with one audit_log row for the batch.
async fn expire_batch(ctx: &Ctx) -> Result<usize, String> {
    let ttl = ctx.cfg.session_ttl.as_secs_f64();
    let mut client = ctx.pg.get().await.map_err(crate::db::pg)?;
    let tx = client.transaction().await.map_err(crate::db::pg)?;
    let rows = tx
        .query(
            "UPDATE ptaas_sessions SET status = 'expired', updated_at = now() \
             WHERE id IN (SELECT id FROM ptaas_sessions \
                          WHERE status IN ('queued', 'running') \
                            AND created_at < now() - make_interval(secs => $1) \
                          ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
             RETURNING id, tenant_id",
            &[&ttl, &BATCH],
        )
        .await
        .map_err(crate::db::pg)?;
    if rows.is_empty() {
        tx.rollback().await.map_err(crate::db::pg)?;
        return Ok(0);
    }
    let ids: Vec<Uuid> = rows.iter().map(|r| r.get(0)).collect();
    let mut tenants: Vec<Uuid> = rows.iter().map(|r| r.get(1)).collect();
    tenants.sort();
    tenants.dedup();
    tx.execute(
        "INSERT INTO audit_log (tenant_id, actor, action, detail, created_at) \
         VALUES (NULL, 'scheduler', 'ptaas_session.expired', $1, now())",
        &[&json!({
            "count": ids.len(),
            "session_ids": ids,
            "tenant_ids": tenants,
            "ttl_secs": ctx.cfg.session_ttl.as_secs(),
        })],
    )
    .await
    .map_err(crate::db::pg)?;
    tx.commit().await.map_err(crate::db::pg)?;
    tracing::info!(
        count = ids.len(),
        ttl_secs = ctx.cfg.session_ttl.as_secs(),
        "sessions expired"
    );
    Ok(ids.len())
}
