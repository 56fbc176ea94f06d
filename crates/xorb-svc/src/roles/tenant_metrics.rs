//! rc1's "Advanced tenant metrics": `xorb_tenant_sessions{tenant,status}`, and the regression that
//! makes rc1 worth rolling back.
//!
//! The defect, kept on purpose and deterministic: rc1 recounts every tenant's sessions on every
//! `GET /api/v1/ptaas/sessions`, inside one process-wide lock (so the gauges never show a half
//! refresh). One request alone pays one small extra query and looks fine; under concurrent load the
//! requests queue on the lock, so latency grows with the load, and a request that waits longer than
//! [`LOCK_WAIT`] answers 503 `tenant_metrics_busy`. Stable has no such path: the same load gives
//! the same latency as one request.

use crate::ctx::Ctx;
use crate::http::ApiError;
use prometheus::{IntGaugeVec, Opts};
use std::time::Duration;

/// How long a listing waits for the refresh lock before giving up.
pub const LOCK_WAIT: Duration = Duration::from_millis(250);

const COUNT_BY_TENANT: &str = "SELECT t.slug, s.status, count(*) \
     FROM ptaas_sessions s JOIN tenants t ON t.id = s.tenant_id GROUP BY t.slug, s.status";

pub struct TenantMetrics {
    lock: tokio::sync::Mutex<()>,
    sessions: IntGaugeVec,
}

impl TenantMetrics {
    pub fn new(ctx: &Ctx) -> prometheus::Result<TenantMetrics> {
        let sessions = IntGaugeVec::new(
            Opts::new(
                "xorb_tenant_sessions",
                "PTaaS sessions per tenant and status (rc1 advanced tenant metrics).",
            ),
            &["tenant", "status"],
        )?;
        ctx.metrics.register(Box::new(sessions.clone()))?;
        Ok(TenantMetrics {
            lock: tokio::sync::Mutex::new(()),
            sessions,
        })
    }

    /// Recount every tenant's sessions, holding the lock across the query.
    pub async fn refresh(&self, ctx: &Ctx) -> Result<(), ApiError> {
        let Ok(_guard) = tokio::time::timeout(LOCK_WAIT, self.lock.lock()).await else {
            return Err(ApiError::unavailable(
                "tenant_metrics_busy",
                format!(
                    "tenant metrics refresh did not get its lock within {} ms; try again",
                    LOCK_WAIT.as_millis()
                ),
            ));
        };
        let client = ctx.pg.get().await?;
        let rows = client.query(COUNT_BY_TENANT, &[]).await?;
        self.sessions.reset();
        for r in rows {
            let (tenant, status, n): (String, String, i64) = (r.get(0), r.get(1), r.get(2));
            self.sessions.with_label_values(&[&tenant, &status]).set(n);
        }
        Ok(())
    }
}
