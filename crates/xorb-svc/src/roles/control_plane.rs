//! rc1's control plane (G8): per-tenant session quotas.
//!
//! Limits come from `tenant_quotas` (100 sessions/hour without a row), cached in Redis database 2
//! for a short time; the counter of a tenant's current hour lives in Redis database 1
//! (`INCR` + `EXPIRE`); every granted unit is recorded in `usage_records`.

use crate::ctx::Ctx;
use crate::http::ApiError;
use crate::shutdown::Shutdown;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Timelike, Utc};
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use tokio::task::JoinHandle;
use uuid::Uuid;

pub const DEFAULT_LIMIT_PER_HOUR: i64 = 100;
pub const LIMIT_CACHE_TTL_SECS: u64 = 30;
const QUOTA_DB: i64 = 1;
const CACHE_DB: i64 = 2;

struct CpState {
    ctx: Arc<Ctx>,
    quotas: ConnectionManager,
    cache: ConnectionManager,
}

pub async fn start(
    ctx: Arc<Ctx>,
    _shutdown: Shutdown,
) -> anyhow::Result<(Router, Vec<JoinHandle<()>>)> {
    let st = Arc::new(CpState {
        quotas: ctx
            .redis_db(QUOTA_DB)
            .ok_or_else(|| anyhow::anyhow!("no redis connection for database {QUOTA_DB}"))?,
        cache: ctx
            .redis_db(CACHE_DB)
            .ok_or_else(|| anyhow::anyhow!("no redis connection for database {CACHE_DB}"))?,
        ctx,
    });
    let router = Router::new()
        .route("/api/v1/quota/consume", post(consume))
        .route("/api/v1/quota/{tenant_id}", get(status))
        .with_state(st);
    Ok((router, Vec::new()))
}

/// The hour window a time falls in: its key suffix and the seconds left in it.
pub fn window(now: DateTime<Utc>) -> (String, u64) {
    let key = now.format("%Y%m%d%H").to_string();
    let into = u64::from(now.minute()) * 60 + u64::from(now.second());
    (key, 3600 - into)
}

pub fn counter_key(tenant: &Uuid, window: &str) -> String {
    format!("xorb:quota:sessions:{tenant}:{window}")
}

pub fn limit_key(tenant: &Uuid) -> String {
    format!("xorb:quota:limit:{tenant}")
}

fn redis_down(e: redis::RedisError) -> ApiError {
    tracing::warn!(error = %e, "redis unavailable");
    ApiError::unavailable("redis_unavailable", "the quota store is unavailable")
}

/// The tenant's hourly limit (cache, then database). `None`: no such tenant.
async fn limit_for(st: &CpState, tenant: &Uuid) -> Result<Option<i64>, ApiError> {
    let mut cache = st.cache.clone();
    let key = limit_key(tenant);
    match cache.get::<_, Option<i64>>(&key).await {
        Ok(Some(l)) => return Ok(Some(l)),
        Ok(None) => {}
        // The cache is only a cache: fall through to the database.
        Err(e) => tracing::debug!(error = %e, "limit cache unavailable"),
    }
    let client = st.ctx.pg.get().await?;
    let row = client
        .query_opt(
            "SELECT q.max_sessions_per_hour FROM tenants t \
             LEFT JOIN tenant_quotas q ON q.tenant_id = t.id WHERE t.id = $1",
            &[tenant],
        )
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let limit = row
        .get::<_, Option<i32>>(0)
        .map(i64::from)
        .unwrap_or(DEFAULT_LIMIT_PER_HOUR);
    if let Err(e) = cache
        .set_ex::<_, _, ()>(&key, limit, LIMIT_CACHE_TTL_SECS)
        .await
    {
        tracing::debug!(error = %e, "cannot cache the limit");
    }
    Ok(Some(limit))
}

#[derive(Deserialize)]
struct ConsumeReq {
    tenant_id: Uuid,
}

async fn consume(
    State(st): State<Arc<CpState>>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: ConsumeReq = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("expected {{\"tenant_id\": uuid}} ({e})")))?;
    let tenant = req.tenant_id;
    let limit = limit_for(&st, &tenant)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant"))?;
    let (win, reset_secs) = window(Utc::now());
    let key = counter_key(&tenant, &win);
    let mut q = st.quotas.clone();
    let (used,): (i64,) = redis::pipe()
        .atomic()
        .incr(&key, 1)
        .expire(&key, (reset_secs + 60) as i64)
        .ignore()
        .query_async(&mut q)
        .await
        .map_err(redis_down)?;
    if used > limit {
        // Give the unit back: the counter shows what was granted.
        let used: i64 = q.decr(&key, 1).await.map_err(redis_down)?;
        tracing::info!(tenant = %tenant, used, limit, "quota denied");
        return Ok(Json(json!({
            "tenant_id": tenant, "allowed": false, "used": used, "limit": limit,
            "reset_secs": reset_secs,
        })));
    }
    let recorded = async {
        let client = st.ctx.pg.get().await?;
        client
            .execute(
                "INSERT INTO usage_records (tenant_id, kind, amount, recorded_at) \
                 VALUES ($1, 'ptaas_session', 1, now())",
                &[&tenant],
            )
            .await?;
        Ok::<_, crate::db::DbError>(())
    }
    .await;
    if let Err(e) = recorded {
        let _: Result<i64, _> = q.decr(&key, 1).await;
        return Err(e.into());
    }
    Ok(Json(json!({
        "tenant_id": tenant, "allowed": true, "used": used, "limit": limit,
        "reset_secs": reset_secs,
    })))
}

async fn status(
    State(st): State<Arc<CpState>>,
    Path(tenant): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tenant = Uuid::parse_str(&tenant).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "tenant_id must be a uuid",
        )
    })?;
    let limit = limit_for(&st, &tenant)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant"))?;
    let (win, reset_secs) = window(Utc::now());
    let mut q = st.quotas.clone();
    let used: Option<i64> = q
        .get(counter_key(&tenant, &win))
        .await
        .map_err(redis_down)?;
    let used = used.unwrap_or(0);
    Ok(Json(json!({
        "tenant_id": tenant,
        "limit": limit,
        "used": used,
        "remaining": (limit - used).max(0),
        "reset_secs": reset_secs,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn windows() {
        let t = Utc.with_ymd_and_hms(2025, 8, 14, 10, 59, 30).unwrap();
        assert_eq!(window(t), ("2025081410".to_string(), 30));
        let t = Utc.with_ymd_and_hms(2025, 8, 14, 11, 0, 0).unwrap();
        assert_eq!(window(t), ("2025081411".to_string(), 3600));
    }

    #[test]
    fn keys() {
        let t = Uuid::parse_str("0b6f3c1e-1111-4222-8333-444455556666").unwrap();
        assert_eq!(
            counter_key(&t, "2025081410"),
            "xorb:quota:sessions:0b6f3c1e-1111-4222-8333-444455556666:2025081410"
        );
        assert_eq!(
            limit_key(&t),
            "xorb:quota:limit:0b6f3c1e-1111-4222-8333-444455556666"
        );
    }
}
