//! The tenant-facing API: PTaaS sessions, findings and (rc1) evidence.
//!
//! Tenant isolation (`TENANT_ISOLATION_MODE`): in `basic` mode every statement filters on
//! `tenant_id` itself; in `advanced` mode (rc1, G6 schema) statements run in a transaction after
//! `SET LOCAL ROLE xorb_tenant` + `set_config('xorb.tenant_id', .., true)` and carry no tenant
//! filter: row-level security does the work. Each query below therefore exists twice.

use crate::config::{ConfigError, IsolationMode};
use crate::ctx::Ctx;
use crate::http::ApiError;
use crate::scope::{self, TargetIn};
use crate::shutdown::Shutdown;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use ipnet::IpNet;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::task::JoinHandle;
use uuid::Uuid;

pub struct ApiState {
    ctx: Arc<Ctx>,
    /// `Some` when CIRCUIT_BREAKER_ENABLED: the reason the breaker is open, if it is.
    breaker: Option<Arc<RwLock<Option<String>>>>,
    /// rc1 only: the per-tenant gauges and their regression (`tenant_metrics.rs`).
    tenant_metrics: Option<super::tenant_metrics::TenantMetrics>,
}

pub async fn start(
    ctx: Arc<Ctx>,
    shutdown: Shutdown,
) -> anyhow::Result<(Router, Vec<JoinHandle<()>>)> {
    if ctx.cfg.isolation_mode == IsolationMode::Advanced {
        check_advanced_isolation(&ctx).await?;
    }
    let mut tasks = Vec::new();
    let breaker = if ctx.cfg.circuit_breaker {
        let state = Arc::new(RwLock::new(breaker_reason(&ctx).await));
        tasks.push(tokio::spawn(breaker_loop(
            ctx.clone(),
            state.clone(),
            shutdown.clone(),
        )));
        Some(state)
    } else {
        None
    };
    let tenant_metrics = if ctx.release.features.tenant_metrics {
        Some(super::tenant_metrics::TenantMetrics::new(&ctx)?)
    } else {
        None
    };
    let st = Arc::new(ApiState {
        ctx: ctx.clone(),
        breaker,
        tenant_metrics,
    });
    let mut router = Router::new()
        .route(
            "/api/v1/ptaas/sessions",
            get(list_sessions).post(create_session),
        )
        .route("/api/v1/ptaas/sessions/{id}", get(get_session));
    if ctx.release.features.evidence_system {
        router = router.route("/api/v1/evidence/{id}", get(get_evidence));
    }
    Ok((router.with_state(st), tasks))
}

/// `advanced` needs the G6 role and this service's login role must be allowed to SET ROLE to it.
async fn check_advanced_isolation(ctx: &Ctx) -> anyhow::Result<()> {
    let client = ctx.pg.get().await?;
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'xorb_tenant'), \
                    CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'xorb_tenant') \
                         THEN pg_has_role(current_user, 'xorb_tenant', 'MEMBER') ELSE false END",
            &[],
        )
        .await?;
    let (exists, member): (bool, bool) = (row.get(0), row.get(1));
    // Exit code 2: the configuration asks for something this database cannot do.
    let invalid = |why: &str| ConfigError::Invalid {
        var: "TENANT_ISOLATION_MODE",
        why: why.to_string(),
    };
    if !exists {
        return Err(invalid(
            "advanced needs the role xorb_tenant (G6 schema), which does not exist",
        )
        .into());
    }
    if !member {
        return Err(invalid(
            "advanced: the database user may not SET ROLE xorb_tenant (GRANT xorb_tenant TO the service's user)",
        )
        .into());
    }
    Ok(())
}

async fn breaker_reason(ctx: &Ctx) -> Option<String> {
    let (pg, nats) = tokio::join!(ctx.check_postgres(), ctx.check_nats());
    let mut down = Vec::new();
    if pg != "up" {
        down.push(format!("postgres {pg}"));
    }
    if nats != "up" {
        down.push(format!("nats {nats}"));
    }
    if down.is_empty() {
        None
    } else {
        Some(down.join("; "))
    }
}

async fn breaker_loop(ctx: Arc<Ctx>, state: Arc<RwLock<Option<String>>>, shutdown: Shutdown) {
    while shutdown.sleep(Duration::from_secs(1)).await {
        let reason = breaker_reason(&ctx).await;
        let Ok(mut cur) = state.write() else { return };
        match (&*cur, &reason) {
            (None, Some(r)) => tracing::warn!(reason = %r, "circuit breaker open"),
            (Some(_), None) => tracing::info!("circuit breaker closed"),
            _ => {}
        }
        *cur = reason;
    }
}

struct Tenant {
    id: Uuid,
    slug: String,
    scope: Vec<IpNet>,
}

pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The bearer token of an `Authorization` header value.
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && token.len() <= 512)
        .then_some(token)
}

fn unauthorized(msg: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", msg)
}

async fn authenticate(ctx: &Ctx, headers: &HeaderMap) -> Result<Tenant, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("missing Authorization: Bearer <token>"))?
        .to_str()
        .map_err(|_| unauthorized("malformed Authorization header"))?;
    let token = bearer_token(value)
        .ok_or_else(|| unauthorized("expected Authorization: Bearer <token>"))?;
    let client = ctx.pg.get().await?;
    let row = client
        .query_opt(
            "SELECT id, slug, scope_allowlist FROM tenants WHERE token_sha256 = $1",
            &[&token_sha256(token)],
        )
        .await?
        .ok_or_else(|| unauthorized("unknown token"))?;
    let entries: Vec<String> = row.get::<_, Option<Vec<String>>>(2).unwrap_or_default();
    let (scope, bad) = scope::parse_allowlist(&entries);
    let slug: String = row.get(1);
    if !bad.is_empty() {
        tracing::warn!(tenant = %slug, entries = ?bad, "ignoring malformed scope_allowlist entries");
    }
    Ok(Tenant {
        id: row.get(0),
        slug,
        scope,
    })
}

/// Begin a transaction in the tenant's isolation context.
async fn tenant_tx<'a>(
    client: &'a mut deadpool_postgres::Client,
    mode: IsolationMode,
    tenant: Uuid,
) -> Result<deadpool_postgres::Transaction<'a>, ApiError> {
    let tx = client.transaction().await?;
    if mode == IsolationMode::Advanced {
        tx.batch_execute("SET LOCAL ROLE xorb_tenant").await?;
        tx.query_one(
            "SELECT set_config('xorb.tenant_id', $1, true)",
            &[&tenant.to_string()],
        )
        .await?;
    }
    Ok(tx)
}

const SESSION_COLS: &str =
    "id, tenant_id, status, targets, jobs_total, jobs_done, created_at, updated_at, completed_at";

pub(crate) mod sql {
    pub const LIST_BASIC: &str = "SELECT id, tenant_id, status, targets, jobs_total, jobs_done, created_at, updated_at, completed_at \
         FROM ptaas_sessions WHERE tenant_id = $1 ORDER BY created_at DESC LIMIT 100";
    pub const LIST_ADVANCED: &str = "SELECT id, tenant_id, status, targets, jobs_total, jobs_done, created_at, updated_at, completed_at \
         FROM ptaas_sessions ORDER BY created_at DESC LIMIT 100";
    pub const GET_BASIC: &str = "SELECT id, tenant_id, status, targets, jobs_total, jobs_done, created_at, updated_at, completed_at \
         FROM ptaas_sessions WHERE id = $1 AND tenant_id = $2";
    pub const GET_ADVANCED: &str = "SELECT id, tenant_id, status, targets, jobs_total, jobs_done, created_at, updated_at, completed_at \
         FROM ptaas_sessions WHERE id = $1";
    pub const FINDINGS_BASIC: &str = "SELECT id, host, port, state, latency_ms, observed_at, NULL::uuid \
         FROM findings WHERE session_id = $1 AND tenant_id = $2 ORDER BY host, port";
    pub const FINDINGS_ADVANCED: &str = "SELECT id, host, port, state, latency_ms, observed_at, NULL::uuid \
         FROM findings WHERE session_id = $1 ORDER BY host, port";
    pub const FINDINGS_EVIDENCE_BASIC: &str = "SELECT f.id, f.host, f.port, f.state, f.latency_ms, f.observed_at, e.id \
         FROM findings f LEFT JOIN evidence e ON e.finding_id = f.id AND e.tenant_id = $2 \
         WHERE f.session_id = $1 AND f.tenant_id = $2 ORDER BY f.host, f.port";
    pub const FINDINGS_EVIDENCE_ADVANCED: &str = "SELECT f.id, f.host, f.port, f.state, f.latency_ms, f.observed_at, e.id \
         FROM findings f LEFT JOIN evidence e ON e.finding_id = f.id \
         WHERE f.session_id = $1 ORDER BY f.host, f.port";
    pub const EVIDENCE_BASIC: &str = "SELECT id, session_id, finding_id, payload, signature, key_id, created_at \
         FROM evidence WHERE id = $1 AND tenant_id = $2";
    pub const EVIDENCE_ADVANCED: &str = "SELECT id, session_id, finding_id, payload, signature, key_id, created_at \
         FROM evidence WHERE id = $1";
}

fn ts(t: Option<DateTime<Utc>>) -> Value {
    t.map(|t| Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)))
        .unwrap_or(Value::Null)
}

fn session_json(r: &tokio_postgres::Row) -> Value {
    json!({
        "id": r.get::<_, Uuid>(0),
        "tenant_id": r.get::<_, Uuid>(1),
        "status": r.get::<_, String>(2),
        "targets": r.get::<_, Option<Value>>(3).unwrap_or(Value::Null),
        "jobs_total": r.get::<_, Option<i32>>(4).unwrap_or(0),
        "jobs_done": r.get::<_, Option<i32>>(5).unwrap_or(0),
        "created_at": ts(r.get(6)),
        "updated_at": ts(r.get(7)),
        "completed_at": ts(r.get(8)),
    })
}

#[derive(Deserialize)]
struct CreateSession {
    targets: Vec<TargetIn>,
}

async fn create_session(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ctx = &st.ctx;
    // Fail fast, before touching the database, while a dependency is down.
    if let Some(b) = &st.breaker
        && let Some(reason) = b.read().ok().and_then(|r| r.clone())
    {
        return Err(ApiError::unavailable(
            "circuit_open",
            format!("not accepting new sessions while a dependency is down ({reason})"),
        ));
    }
    let tenant = authenticate(ctx, &headers).await?;
    let req: CreateSession = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "body must be JSON {{\"targets\":[{{\"host\":\"127.0.0.1\",\"ports\":[80,443]}}]}} ({e})"
        ))
    })?;
    let targets = scope::validate_targets(&req.targets, &tenant.scope).map_err(|problems| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_targets",
            format!(
                "{} problem(s) with the targets; nothing was created",
                problems.len()
            ),
        )
        .with_details(json!({ "problems": problems }))
    })?;
    consume_quota(ctx, &tenant).await?;

    let targets_json = serde_json::to_value(&targets).map_err(|_| ApiError::internal())?;
    let ports: usize = targets.iter().map(|t| t.ports.len()).sum();
    let mut client = ctx.pg.get().await?;
    let tx = tenant_tx(&mut client, ctx.cfg.isolation_mode, tenant.id).await?;
    let row = tx
        .query_one(
            &format!(
                "INSERT INTO ptaas_sessions (tenant_id, status, targets, jobs_total, jobs_done, created_at, updated_at) \
                 VALUES ($1, 'queued', $2, 0, 0, now(), now()) RETURNING {SESSION_COLS}"
            ),
            &[&tenant.id, &targets_json],
        )
        .await?;
    let session_id: Uuid = row.get(0);
    tx.execute(
        "INSERT INTO audit_log (tenant_id, actor, action, detail, created_at) \
         VALUES ($1, $2, 'ptaas_session.created', $3, now())",
        &[
            &tenant.id,
            &format!("tenant:{}", tenant.slug),
            &json!({"session_id": session_id, "targets": targets.len(), "ports": ports}),
        ],
    )
    .await?;
    tx.commit().await?;
    tracing::info!(tenant = %tenant.slug, session = %session_id, targets = targets.len(), ports, "session queued");
    let mut resp = (StatusCode::CREATED, Json(session_json(&row))).into_response();
    if let Ok(loc) = HeaderValue::from_str(&format!("/api/v1/ptaas/sessions/{session_id}")) {
        resp.headers_mut().insert(header::LOCATION, loc);
    }
    Ok(resp)
}

#[derive(Deserialize)]
struct QuotaAnswer {
    allowed: bool,
    used: i64,
    limit: i64,
    #[serde(default)]
    reset_secs: Option<u64>,
}

/// rc1: ask the control plane before a session is created.
async fn consume_quota(ctx: &Ctx, tenant: &Tenant) -> Result<(), ApiError> {
    let Some((client, base)) = &ctx.control_plane else {
        return Ok(());
    };
    let unavailable = |why: String| {
        tracing::warn!(error = %why, "control plane unavailable: refusing the session");
        ApiError::unavailable(
            "control_plane_unavailable",
            "the quota service is unavailable; try again later",
        )
    };
    let resp = client
        .post(format!("{base}/api/v1/quota/consume"))
        .json(&json!({ "tenant_id": tenant.id }))
        .send()
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(unavailable(format!("HTTP {}", resp.status())));
    }
    let q: QuotaAnswer = resp
        .json()
        .await
        .map_err(|e| unavailable(format!("bad answer: {e}")))?;
    if q.allowed {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "quota_exceeded",
        format!(
            "session quota exhausted: {} of {} sessions used this hour",
            q.used, q.limit
        ),
    )
    .with_details(json!({"used": q.used, "limit": q.limit}))
    .retry_after(q.reset_secs.unwrap_or(60).max(1)))
}

async fn list_sessions(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let ctx = &st.ctx;
    let tenant = authenticate(ctx, &headers).await?;
    if let Some(tm) = &st.tenant_metrics {
        tm.refresh(ctx).await?;
    }
    let mut client = ctx.pg.get().await?;
    let tx = tenant_tx(&mut client, ctx.cfg.isolation_mode, tenant.id).await?;
    let rows = match ctx.cfg.isolation_mode {
        IsolationMode::Basic => tx.query(sql::LIST_BASIC, &[&tenant.id]).await?,
        IsolationMode::Advanced => tx.query(sql::LIST_ADVANCED, &[]).await?,
    };
    tx.commit().await?;
    let sessions: Vec<Value> = rows.iter().map(session_json).collect();
    Ok(Json(json!({ "sessions": sessions })))
}

async fn get_session(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let ctx = &st.ctx;
    let tenant = authenticate(ctx, &headers).await?;
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::not_found("session"))?;
    let mut client = ctx.pg.get().await?;
    let tx = tenant_tx(&mut client, ctx.cfg.isolation_mode, tenant.id).await?;
    let mode = ctx.cfg.isolation_mode;
    let row = match mode {
        IsolationMode::Basic => tx.query_opt(sql::GET_BASIC, &[&id, &tenant.id]).await?,
        IsolationMode::Advanced => tx.query_opt(sql::GET_ADVANCED, &[&id]).await?,
    }
    .ok_or_else(|| ApiError::not_found("session"))?;
    let with_evidence = ctx.cfg.evidence_enabled;
    let findings = match (mode, with_evidence) {
        (IsolationMode::Basic, false) => tx.query(sql::FINDINGS_BASIC, &[&id, &tenant.id]).await?,
        (IsolationMode::Basic, true) => {
            tx.query(sql::FINDINGS_EVIDENCE_BASIC, &[&id, &tenant.id])
                .await?
        }
        (IsolationMode::Advanced, false) => tx.query(sql::FINDINGS_ADVANCED, &[&id]).await?,
        (IsolationMode::Advanced, true) => {
            tx.query(sql::FINDINGS_EVIDENCE_ADVANCED, &[&id]).await?
        }
    };
    tx.commit().await?;
    let mut session = session_json(&row);
    let findings: Vec<Value> = findings
        .iter()
        .map(|f| {
            let mut v = json!({
                "id": f.get::<_, Uuid>(0),
                "host": f.get::<_, String>(1),
                "port": f.get::<_, i32>(2),
                "state": f.get::<_, String>(3),
                "latency_ms": f.get::<_, Option<i32>>(4),
                "observed_at": ts(f.get(5)),
            });
            if with_evidence {
                v["evidence_id"] = json!(f.get::<_, Option<Uuid>>(6));
            }
            v
        })
        .collect();
    session["findings"] = Value::Array(findings);
    Ok(Json(session))
}

async fn get_evidence(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let ctx = &st.ctx;
    let tenant = authenticate(ctx, &headers).await?;
    if !ctx.cfg.evidence_enabled {
        return Err(ApiError::not_found("evidence"));
    }
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::not_found("evidence"))?;
    let mut client = ctx.pg.get().await?;
    let tx = tenant_tx(&mut client, ctx.cfg.isolation_mode, tenant.id).await?;
    let row = match ctx.cfg.isolation_mode {
        IsolationMode::Basic => {
            tx.query_opt(sql::EVIDENCE_BASIC, &[&id, &tenant.id])
                .await?
        }
        IsolationMode::Advanced => tx.query_opt(sql::EVIDENCE_ADVANCED, &[&id]).await?,
    }
    .ok_or_else(|| ApiError::not_found("evidence"))?;
    tx.commit().await?;
    let payload: Vec<u8> = row.get(3);
    let signature: Vec<u8> = row.get(4);
    let b64 = base64::engine::general_purpose::STANDARD;
    let parsed: Value = serde_json::from_slice(&payload).unwrap_or(Value::Null);
    Ok(Json(json!({
        "id": row.get::<_, Uuid>(0),
        "session_id": row.get::<_, Uuid>(1),
        "finding_id": row.get::<_, Uuid>(2),
        "key_id": row.get::<_, String>(5),
        "algorithm": "ed25519",
        "payload": parsed,
        "payload_base64": b64.encode(&payload),
        "signature": b64.encode(&signature),
        "created_at": ts(row.get(6)),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer   abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearer"), None);
    }

    #[test]
    fn token_hash_is_hex_sha256() {
        assert_eq!(
            token_sha256("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn advanced_queries_carry_no_tenant_filter() {
        for q in [
            sql::LIST_ADVANCED,
            sql::GET_ADVANCED,
            sql::FINDINGS_ADVANCED,
            sql::FINDINGS_EVIDENCE_ADVANCED,
            sql::EVIDENCE_ADVANCED,
        ] {
            let where_clause = q.split(" WHERE ").nth(1).unwrap_or("");
            assert!(!where_clause.contains("tenant_id"), "{q}");
            assert!(!q.contains("e.tenant_id"), "{q}");
        }
        for q in [
            sql::LIST_BASIC,
            sql::GET_BASIC,
            sql::FINDINGS_BASIC,
            sql::FINDINGS_EVIDENCE_BASIC,
            sql::EVIDENCE_BASIC,
        ] {
            assert!(q.contains("tenant_id = $"), "{q}");
        }
    }
}
