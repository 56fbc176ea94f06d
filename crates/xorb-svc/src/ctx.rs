//! What every role shares: configuration, connections to postgres / redis / nats, metrics, and
//! the dependency checks behind `GET /api/v1/health`.

use crate::config::{Config, Secret, redact_url};
use crate::db;
use crate::faults::{Dependency, Injector};
use crate::metrics::Metrics;
use crate::release::{Release, Role};
use crate::shutdown::Shutdown;
use anyhow::Context as _;
use async_nats::jetstream;
use deadpool_postgres::Pool;
use redis::aio::ConnectionManager;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How long a single dependency check may take.
pub const CHECK_TIMEOUT: Duration = Duration::from_millis(1500);

pub struct Ctx {
    pub release: &'static Release,
    pub role: Role,
    pub cfg: Config,
    pub pg: Pool,
    /// Redis connections by database number (the control plane uses 1 and 2, the others the
    /// database of `REDIS_URL`). Connections are lazy: a role starts while redis is down.
    pub redis: Vec<(i64, ConnectionManager)>,
    pub nats: async_nats::Client,
    pub js: jetstream::Context,
    pub metrics: Arc<Metrics>,
    /// Test-only faults (`faults.rs`); injects nothing unless configured.
    pub faults: Arc<Injector>,
    schema_revision: RwLock<String>,
    /// rc1 api: the control plane's base URL and an HTTP client for it.
    pub control_plane: Option<(reqwest::Client, String)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Health {
    pub status: &'static str,
    pub role: &'static str,
    pub release: &'static str,
    pub version: &'static str,
    pub dependencies: BTreeMap<&'static str, String>,
}

impl Health {
    pub fn healthy(&self) -> bool {
        self.status == "healthy"
    }
}

pub fn redis_manager(url: &Secret, db: Option<i64>) -> anyhow::Result<(i64, ConnectionManager)> {
    let mut info = redis::IntoConnectionInfo::into_connection_info(url.expose())
        .map_err(|_| anyhow::anyhow!("REDIS_URL is not a valid redis URL"))?;
    let db = match db {
        Some(db) => {
            let settings = info.redis_settings().clone().set_db(db);
            info = info.set_redis_settings(settings);
            db
        }
        None => info.redis_settings().db(),
    };
    let client = redis::Client::open(info).context("redis client")?;
    let cfg = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(1)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(2));
    let mgr = ConnectionManager::new_lazy_with_config(client, cfg).context("redis connection")?;
    Ok((db, mgr))
}

impl Ctx {
    /// Connect and check the schema revision. Errors: [`db::SchemaRevisionError`] (exit 3) or
    /// anything else (exit 1).
    pub async fn start(
        release: &'static Release,
        role: Role,
        cfg: Config,
        shutdown: &Shutdown,
    ) -> anyhow::Result<Arc<Ctx>> {
        let pool_size = match role {
            Role::Worker => cfg.scan_concurrency.clamp(4, 16),
            _ => 16,
        };
        let pg = db::make_pool(
            &cfg.database_url,
            &format!("xorb-svc/{}/{}", role, release.name),
            pool_size,
        )?;
        let where_ = db::describe(&cfg.database_url);
        let found = db::wait_until_reachable(&pg, Duration::from_secs(15), shutdown)
            .await
            .with_context(|| format!("cannot read the schema revision from postgres {where_}"))?;
        let revision = db::check_revision(release, found.as_deref())?;
        tracing::info!(database = %where_, schema_revision = %revision, "schema revision accepted");

        let redis = if role == Role::ControlPlane {
            vec![
                redis_manager(&cfg.redis_url, Some(1))?,
                redis_manager(&cfg.redis_url, Some(2))?,
            ]
        } else {
            vec![redis_manager(&cfg.redis_url, None)?]
        };

        let nats = async_nats::ConnectOptions::new()
            .name(format!("xorb-svc/{}/{}", role, release.name))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(2))
            .request_timeout(Some(Duration::from_secs(3)))
            .connect(cfg.nats_url.as_str())
            .await
            .with_context(|| format!("cannot connect to NATS at {}", redact_url(&cfg.nats_url)))?;
        // The connection is made in the background; give it a moment so that a healthy stack
        // reports healthy from the first request.
        let connected = async {
            while nats.connection_state() != async_nats::connection::State::Connected {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(3), connected)
            .await
            .is_err()
        {
            tracing::warn!(nats = %redact_url(&cfg.nats_url), "NATS not reachable yet: continuing, will keep trying");
        }
        let js = jetstream::new(nats.clone());

        let metrics = Arc::new(Metrics::new(
            release.version,
            release.name,
            role.as_str(),
            pg.clone(),
        )?);

        let faults = Arc::new(Injector::new(cfg.faults.clone(), cfg.faults_file.clone()));
        faults.reload();
        tokio::spawn(faults.clone().watch(shutdown.clone()));

        let control_plane = match (&cfg.control_plane_url, role, release.features.control_plane) {
            (Some(url), Role::Api, true) => {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(2))
                    .connect_timeout(Duration::from_secs(1))
                    .no_proxy()
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .context("http client")?;
                Some((client, url.clone()))
            }
            _ => None,
        };

        Ok(Arc::new(Ctx {
            release,
            role,
            cfg,
            pg,
            redis,
            nats,
            js,
            metrics,
            faults,
            schema_revision: RwLock::new(revision),
            control_plane,
        }))
    }

    pub fn schema_revision(&self) -> String {
        self.schema_revision
            .read()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    pub fn redis_db(&self, db: i64) -> Option<ConnectionManager> {
        self.redis
            .iter()
            .find(|(d, _)| *d == db)
            .map(|(_, m)| m.clone())
    }

    /// `up`, or `down: why`; also refreshes the cached schema revision. A database whose
    /// revision this release does not run on counts as down.
    pub async fn check_postgres(&self) -> String {
        if let Some(down) = self.injected_stall(Dependency::Postgres).await {
            return down;
        }
        match tokio::time::timeout(CHECK_TIMEOUT, db::read_revision(&self.pg)).await {
            Err(_) => "down: timed out".into(),
            Ok(Err(e)) => format!("down: {e}"),
            Ok(Ok(found)) => {
                if let Some(rev) = &found
                    && let Ok(mut cached) = self.schema_revision.write()
                {
                    cached.clone_from(rev);
                }
                match db::check_revision(self.release, found.as_deref()) {
                    Ok(_) => "up".into(),
                    Err(e) => format!("down: {e}"),
                }
            }
        }
    }

    pub async fn check_redis(&self) -> String {
        if let Some(down) = self.injected_stall(Dependency::Redis).await {
            return down;
        }
        let mut problems = Vec::new();
        for (db, mgr) in &self.redis {
            let mut conn = mgr.clone();
            let ping = tokio::time::timeout(
                CHECK_TIMEOUT,
                redis::cmd("PING").query_async::<String>(&mut conn),
            )
            .await;
            match ping {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => problems.push(format!("db {db}: {e}")),
                Err(_) => problems.push(format!("db {db}: timed out")),
            }
        }
        if problems.is_empty() {
            "up".into()
        } else {
            format!("down: {}", problems.join("; "))
        }
    }

    /// NATS is up when connected and the streams this role uses exist.
    pub async fn check_nats(&self) -> String {
        use async_nats::connection::State;
        if let Some(down) = self.injected_stall(Dependency::Nats).await {
            return down;
        }
        if self.nats.connection_state() != State::Connected {
            return "down: not connected".into();
        }
        let mut streams = vec![self.release.nats.jobs_stream];
        if matches!(self.role, Role::Orchestrator | Role::Worker) {
            streams.push(self.release.nats.events_stream);
        }
        for s in streams {
            match tokio::time::timeout(CHECK_TIMEOUT, self.js.get_stream(s)).await {
                Err(_) => return "down: timed out".into(),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return format!("down: {}", describe_stream_error(s, &e)),
            }
        }
        "up".into()
    }

    pub async fn check_control_plane(&self) -> Option<String> {
        let (client, base) = self.control_plane.as_ref()?;
        if let Some(down) = self.injected_stall(Dependency::ControlPlane).await {
            return Some(down);
        }
        let r = client.get(format!("{base}/api/v1/health")).send().await;
        Some(match r {
            Ok(resp) if resp.status().is_success() => "up".into(),
            Ok(resp) => format!(
                "down: control plane answered HTTP {}",
                resp.status().as_u16()
            ),
            Err(e) if e.is_timeout() => "down: timed out".into(),
            Err(_) => "down: unreachable".into(),
        })
    }

    /// A stalled dependency answers no check: wait as long as a real check would, then say so.
    async fn injected_stall(&self, dep: Dependency) -> Option<String> {
        let stall = self.faults.stalled(dep)?;
        tokio::time::sleep(stall.min(CHECK_TIMEOUT)).await;
        Some("down: timed out (injected stall)".into())
    }

    pub async fn health(&self) -> Health {
        let (pg, redis, nats, cp) = tokio::join!(
            self.check_postgres(),
            self.check_redis(),
            self.check_nats(),
            self.check_control_plane()
        );
        let mut deps = BTreeMap::new();
        deps.insert("postgres", pg);
        deps.insert("redis", redis);
        deps.insert("nats", nats);
        if let Some(cp) = cp {
            deps.insert("control_plane", cp);
        }
        let healthy = deps.values().all(|v| v == "up");
        Health {
            status: if healthy { "healthy" } else { "unhealthy" },
            role: self.role.as_str(),
            release: self.release.name,
            version: self.release.version,
            dependencies: deps,
        }
    }

    pub fn info(&self) -> serde_json::Value {
        serde_json::json!({
            "version": self.release.version,
            "release": self.release.name,
            "role": self.role.as_str(),
            "schema_revision": self.schema_revision(),
            "features": {
                "evidence_system": self.cfg.evidence_enabled,
                "tenant_isolation_mode": self.cfg.isolation_mode.as_str(),
                "control_plane": self.release.features.control_plane,
                "circuit_breaker": self.cfg.circuit_breaker,
            },
        })
    }
}

pub fn describe_stream_error(
    stream: &str,
    e: &async_nats::jetstream::context::GetStreamError,
) -> String {
    use async_nats::jetstream::ErrorCode;
    use async_nats::jetstream::context::GetStreamErrorKind;
    match e.kind() {
        GetStreamErrorKind::JetStream(js) if js.error_code() == ErrorCode::STREAM_NOT_FOUND => {
            format!("stream {stream} missing")
        }
        _ => format!("stream {stream}: {e}"),
    }
}
