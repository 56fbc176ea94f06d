//! Prometheus metrics: request counts and latencies by route template, build info, and the
//! postgres pool's active connections.

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use deadpool_postgres::Pool;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use std::sync::Arc;
use std::time::Instant;

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    pg_active: IntGauge,
    pg_max: IntGauge,
    pool: Pool,
}

/// Label used for requests that matched no route (keeps label cardinality bounded).
pub const UNMATCHED_ROUTE: &str = "unmatched";

impl Metrics {
    pub fn new(
        version: &str,
        release: &str,
        role: &str,
        pool: Pool,
    ) -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests served, by route template.",
            ),
            &["method", "route", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "HTTP request latency in seconds, by route template.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["method", "route"],
        )?;
        let build = IntGaugeVec::new(
            Opts::new(
                "xorb_build_info",
                "Build information of this xorb-svc process (always 1).",
            ),
            &["version", "release", "role"],
        )?;
        build.with_label_values(&[version, release, role]).set(1);
        let pg_active = IntGauge::new(
            "postgres_connections_active",
            "PostgreSQL pool connections currently in use.",
        )?;
        let pg_max = IntGauge::new(
            "postgres_connections_max",
            "Maximum size of the PostgreSQL connection pool.",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(build))?;
        registry.register(Box::new(pg_active.clone()))?;
        registry.register(Box::new(pg_max.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            duration,
            pg_active,
            pg_max,
            pool,
        })
    }

    pub fn observe(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.requests
            .with_label_values(&[method, route, &status.to_string()])
            .inc();
        self.duration
            .with_label_values(&[method, route])
            .observe(seconds);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let st = self.pool.status();
        self.pg_active
            .set(st.size.saturating_sub(st.available) as i64);
        self.pg_max.set(st.max_size as i64);
        let mut out = Vec::new();
        let enc = TextEncoder::new();
        if let Err(e) = enc.encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Middleware: count and time every request by its route template (`/api/v1/ptaas/sessions/{id}`),
/// never by the raw path.
pub async fn track(State(m): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = match req.method().as_str() {
        m @ ("GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS") => m.to_string(),
        _ => "OTHER".to_string(),
    };
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| UNMATCHED_ROUTE.to_string());
    let resp = next.run(req).await;
    m.observe(
        &method,
        &route,
        resp.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    resp
}
