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

/// Bucket bounds 2^(1/8) apart (about 9%) from 0.49 ms to 4 s, then 8, 16 and 32 s.
///
/// `histogram_quantile` interpolates linearly inside a bucket, so it can only tell two p99s apart
/// when they fall in different buckets or far apart in one: with the old 1-2.5-5 decades a p99 of
/// 2 ms and one of 2.4 ms read the same. Loopback answers take 0.5-50 ms and a stalled dependency
/// seconds, so the fine range covers both; rounding to four significant digits keeps the `le`
/// labels readable without changing the ratio.
pub fn latency_buckets() -> Vec<f64> {
    let mut b: Vec<f64> = (-88..=16)
        .map(|k| round_sig(2f64.powf(f64::from(k) / 8.0), 4))
        .collect();
    b.extend([8.0, 16.0, 32.0]);
    b
}

fn round_sig(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits - 1 - x.log10().floor() as i32);
    (x * scale).round() / scale
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
            .buckets(latency_buckets()),
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

    /// Adds a role's own collector to what `/metrics` exports.
    pub fn register(&self, c: Box<dyn prometheus::core::Collector>) -> prometheus::Result<()> {
        self.registry.register(c)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_resolve_a_ten_percent_change_where_services_answer() {
        let b = latency_buckets();
        assert!(b.windows(2).all(|w| w[0] < w[1]), "{b:?}");
        // A 10% slower p99 must land at least one bucket bound further in the range of
        // loopback answers (0.5 ms - 4 s).
        for w in b.windows(2).filter(|w| w[0] >= 0.0005 && w[1] <= 4.0) {
            assert!(
                w[1] / w[0] < 1.1,
                "bounds {} and {} are 10% or more apart",
                w[0],
                w[1]
            );
        }
        assert!(b[0] < 0.0005 && *b.last().unwrap() >= 30.0);
        assert!(b.len() < 120, "{} buckets per series is too many", b.len());
    }

    #[test]
    fn promtool_accepts_the_exposition() {
        use std::io::Write;
        let url = crate::config::Secret::new("postgres://xorb:pw@127.0.0.1:1/xorb");
        let pool = crate::db::make_pool(&url, "metrics-test", 2).unwrap();
        let m = Metrics::new("2025.8.0-rc1", "v2025.08-rc1", "api", pool).unwrap();
        m.observe("GET", "/api/v1/ptaas/sessions", 200, 0.0021);
        m.observe("GET", "/api/v1/ptaas/sessions", 500, 0.0023);
        let body = m.render();
        assert!(body.contains(
            r#"http_requests_total{method="GET",route="/api/v1/ptaas/sessions",status="500"} 1"#
        ));
        assert!(
            body.contains(
                r#"xorb_build_info{release="v2025.08-rc1",role="api",version="2025.8.0-rc1"} 1"#
            ),
            "{body}"
        );
        let mut child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool (Debian package prometheus) is needed by this test");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
