//! A local stack: bring it up (fresh, or what died restarted in place), describe it, bring it down.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use xorb_model::release::Release;

use crate::LocalError;
use crate::process::{ProcRecord, StopResult, free_port};
use crate::servers::{self};
pub use crate::services::{
    HEALTH_TIMEOUT, PASSTHROUGH_ENV, service_log, start_service, wait_healthy,
};
use crate::state::random_secret;
pub use crate::state::{Paths, Secrets, ServiceState, StackState};
use xorb_adapters::files::{mkdir, write_private};
use xorb_adapters::monitoring::PromTarget;
use xorb_adapters::pg::{PgConn, schema_revision};
use xorb_adapters::services::{probe_service, wait_session_completed};
use xorb_adapters::{monitoring, nats, redis};

/// What `stack up` did, for the reporter.
#[derive(Debug, Clone, Serialize)]
pub struct UpReport {
    pub release: String,
    pub already_running: bool,
    pub restarted: Vec<String>,
    pub demo: Option<DemoReport>,
}

/// Options of `stack up` beyond the release and the demo data.
#[derive(Debug, Clone, Default)]
pub struct UpOptions {
    /// A directory a Grafana provisions dashboards from: the release's dashboards are written there.
    pub grafana_dashboards: Option<PathBuf>,
    /// Prometheus's scrape interval instead of the release's (tests scrape every second to see load within
    /// seconds).
    pub scrape_interval: Option<Duration>,
    /// With the demo data: this many completed sessions of a third tenant, `bulk` (see [`demo_bulk_sessions`]).
    pub bulk_sessions: u64,
    /// With the demo data: about this many findings of production-sized history (see [`crate::scale`]); 0: none.
    pub scale: u64,
}

pub async fn up(
    paths: &Paths,
    state_dir: &Path,
    release_name: &str,
    demo: bool,
) -> Result<UpReport, LocalError> {
    up_with(paths, state_dir, release_name, demo, &UpOptions::default()).await
}

pub async fn up_with(
    paths: &Paths,
    state_dir: &Path,
    release_name: &str,
    demo: bool,
    opts: &UpOptions,
) -> Result<UpReport, LocalError> {
    let release = Release::load_named(&paths.releases_root, release_name)?;
    mkdir(state_dir, 0o711)?;
    if let Ok(existing) = StackState::load(state_dir) {
        if existing.release != release_name {
            return Err(LocalError::OtherReleaseRunning {
                dir: state_dir.to_path_buf(),
                running: existing.release,
                wanted: release_name.into(),
            });
        }
        // A running stack keeps its Prometheus configuration; saying so beats ignoring the flag.
        let wanted = opts.scrape_interval.map(servers::prometheus_duration);
        if let Some(wanted) = wanted.filter(|w| Some(w) != existing.scrape_interval.as_ref()) {
            return Err(LocalError::OtherScrapeInterval {
                dir: state_dir.to_path_buf(),
                running: existing
                    .scrape_interval
                    .clone()
                    .unwrap_or_else(|| "the release's interval".into()),
                wanted,
            });
        }
        let dead: Vec<String> = existing
            .all_procs()
            .iter()
            .filter(|(_, p)| !p.is_alive())
            .map(|(n, _)| n.to_string())
            .collect();
        if dead.is_empty() {
            let demo_report = if demo {
                Some(demo_data_with(state_dir, &existing, opts.bulk_sessions, opts.scale).await?)
            } else {
                None
            };
            return Ok(UpReport {
                release: release_name.into(),
                already_running: true,
                restarted: vec![],
                demo: demo_report,
            });
        }
        // Half gone (a server died, maybe in the middle of a rollback): bring back what died, in place, on its
        // port and with the configuration it last had, and leave what runs alone (see restart.rs).
        let restarted = crate::restart::restart_missing(paths, state_dir).await?;
        let demo_report = if demo {
            Some(
                demo_data_with(
                    state_dir,
                    &StackState::load(state_dir)?,
                    opts.bulk_sessions,
                    opts.scale,
                )
                .await?,
            )
        } else {
            None
        };
        return Ok(UpReport {
            release: release_name.into(),
            already_running: false,
            restarted,
            demo: demo_report,
        });
    }
    fresh_up(paths, state_dir, &release, demo, opts).await
}

async fn fresh_up(
    paths: &Paths,
    state_dir: &Path,
    release: &Release,
    demo: bool,
    opts: &UpOptions,
) -> Result<UpReport, LocalError> {
    let secrets = Secrets::load_or_create(state_dir)?;
    mkdir(&state_dir.join("evidence"), 0o700)?;
    let postgres =
        servers::start_postgres(&state_dir.join("postgres"), &secrets.db_password).await?;
    let conn = PgConn {
        host: "127.0.0.1".into(),
        port: postgres.port,
        user: "xorb".into(),
        password: secrets.db_password.clone(),
        dbname: "xorb".into(),
    };
    // From here on, a failure must not leave orphans: record what runs as soon as it runs.
    let mut started: Vec<ProcRecord> = vec![postgres.proc.clone()];
    let result: Result<StackState, LocalError> = async {
        let redis =
            servers::start_redis(&state_dir.join("redis"), release, &secrets.redis_password)
                .await?;
        started.push(redis.proc.clone());
        let nats = servers::start_nats(&state_dir.join("nats")).await?;
        started.push(nats.server.proc.clone());
        xorb_adapters::pg::scripts::alembic(
            paths,
            &release.migrations_dir(),
            &conn,
            &["upgrade", &release.manifest.schema.head],
            None,
        )
        .await
        .map_err(|e| LocalError::Start {
            what: "the schema".into(),
            why: e.to_string(),
        })?;
        nats::ensure_streams(
            &format!("nats://127.0.0.1:{}", nats.server.port),
            &release.streams,
        )
        .await?;

        let mut services = Vec::new();
        for s in &release.services {
            services.push(ServiceState {
                name: s.name.clone(),
                release: release.name().to_string(),
                image: s.image.clone(),
                port: free_port()?,
                proc: None,
                config: s.env.clone(),
            });
        }
        let ports: BTreeMap<String, u16> =
            services.iter().map(|s| (s.name.clone(), s.port)).collect();
        let prom_dir = state_dir.join("prometheus");
        mkdir(&prom_dir, 0o700)?;
        let alertmanager = servers::start_alertmanager(
            &state_dir.join("alertmanager"),
            &release.path(&release.manifest.monitoring.alertmanager),
        )
        .await?;
        started.push(alertmanager.proc.clone());
        let prom_cfg = servers::write_prometheus_config(
            release,
            &prom_dir,
            &ports,
            Some(alertmanager.port),
            opts.scrape_interval,
        )?;
        let prometheus = servers::start_prometheus(&prom_dir, &prom_cfg).await?;
        started.push(prometheus.proc.clone());
        let grafana_dashboards = match &opts.grafana_dashboards {
            Some(dir) => {
                write_dashboards(release, dir)?;
                Some(dir.clone())
            }
            None => None,
        };

        let mut stack = StackState {
            release: release.name().to_string(),
            releases_root: paths.releases_root.clone(),
            created_at: chrono::Utc::now().to_rfc3339(),
            postgres: postgres.clone(),
            redis,
            nats,
            prometheus,
            alertmanager: Some(alertmanager),
            grafana_dashboards,
            scrape_interval: opts.scrape_interval.map(servers::prometheus_duration),
            services,
        };
        for i in 0..stack.services.len() {
            let proc = start_service(paths, state_dir, &stack, &secrets, &stack.services[i])?;
            started.push(proc.clone());
            stack.services[i].proc = Some(proc);
        }
        stack.save(state_dir)?;
        for i in 0..stack.services.len() {
            // As a pod's restart policy would: a role that exits while starting is started again, twice at most.
            let mut restarts = 0;
            loop {
                match wait_healthy(state_dir, &stack.services[i], release.name(), HEALTH_TIMEOUT).await {
                    Ok(()) => break,
                    Err(e) if restarts < 2 && !stack.services[i].proc.as_ref().is_some_and(ProcRecord::is_alive) => {
                        restarts += 1;
                        tracing::warn!(service = %stack.services[i].name, error = %e, restarts, "restarting a service that exited while starting");
                        let proc = start_service(paths, state_dir, &stack, &secrets, &stack.services[i])?;
                        started.push(proc.clone());
                        stack.services[i].proc = Some(proc);
                        stack.save(state_dir)?;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(stack)
    }
    .await;
    let stack = match result {
        Ok(s) => s,
        Err(e) => {
            for p in started.iter().rev() {
                p.stop(Signal::SIGTERM, Duration::from_secs(10));
            }
            let _ = std::fs::remove_file(StackState::path(state_dir));
            return Err(e);
        }
    };
    let demo_report = if demo {
        Some(demo_data_with(state_dir, &stack, opts.bulk_sessions, opts.scale).await?)
    } else {
        None
    };
    Ok(UpReport {
        release: release.name().to_string(),
        already_running: false,
        restarted: vec![],
        demo: demo_report,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct DownEntry {
    pub name: String,
    pub pid: i32,
    pub result: StopResult,
}

/// Stops exactly the processes recorded in stack.json, services first, PostgreSQL last. Data stays.
pub async fn down(state_dir: &Path) -> Result<Vec<DownEntry>, LocalError> {
    let procs: Vec<(String, ProcRecord)> = match StackState::load(state_dir) {
        Ok(stack) => stack
            .all_procs()
            .into_iter()
            .map(|(n, p)| (n.to_string(), p.clone()))
            .collect(),
        // stack.json damaged or gone: the pid files still name exactly what the stack started.
        Err(e @ (LocalError::Config(_) | LocalError::NoStack(_) | LocalError::Io { .. })) => {
            let procs = crate::pidfiles::read_all(state_dir);
            if procs.is_empty() {
                return Err(match e {
                    LocalError::NoStack(_) => e,
                    e => LocalError::Config(format!(
                        "{e}, and {} holds no pid file: xorbctl cannot tell which processes this stack started. \
                         List them with `ps -eo pid,args | grep -F {}`, stop each with `kill PID` (PostgreSQL: \
                         `kill -INT PID`), then remove {}",
                        crate::pidfiles::dir(state_dir).display(),
                        state_dir.display(),
                        StackState::path(state_dir).display()
                    )),
                });
            }
            procs
        }
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for (name, proc) in &procs {
        let name = name.as_str();
        // SIGINT is PostgreSQL's fast shutdown (SIGTERM would wait for clients to leave).
        let sig = if name == "postgres" {
            Signal::SIGINT
        } else {
            Signal::SIGTERM
        };
        let result = tokio::task::block_in_place(|| proc.stop(sig, Duration::from_secs(20)));
        out.push(DownEntry {
            name: name.to_string(),
            pid: proc.pid,
            result,
        });
    }
    let _ = std::fs::remove_file(StackState::path(state_dir));
    crate::pidfiles::remove_all(state_dir);
    Ok(out)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub image: String,
    pub release: String,
    pub port: u16,
    pub pid: Option<i32>,
    pub running: bool,
    pub healthy: bool,
    pub reported_release: Option<String>,
    pub health: serde_json::Value,
}

impl ServiceStatus {
    /// A service as found: `health` is what it answered, when it runs and answered.
    pub fn seen(
        name: &str,
        image: &str,
        release: &str,
        port: u16,
        running: bool,
        health: Option<xorb_adapters::services::ServiceHealth>,
    ) -> Self {
        ServiceStatus {
            name: name.to_string(),
            image: image.to_string(),
            release: release.to_string(),
            port,
            pid: None,
            running,
            healthy: health.as_ref().is_some_and(|h| h.healthy),
            reported_release: health.as_ref().and_then(|h| h.release.clone()),
            health: health.map(|h| h.detail).unwrap_or(serde_json::Value::Null),
        }
    }

    pub fn with_pid(mut self, pid: Option<i32>) -> Self {
        self.pid = pid;
        self
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StackStatus {
    pub release: String,
    pub state_dir: PathBuf,
    pub services: Vec<ServiceStatus>,
    pub schema_revision: Option<String>,
    pub streams: Vec<String>,
    /// Redis database index → number of keys, for the databases that hold keys.
    pub redis_databases: BTreeMap<u8, u64>,
    pub prometheus_targets: Vec<PromTarget>,
    pub servers: BTreeMap<String, ServerStatus>,
    /// Servers that run but refuse or fail our requests (a wrong password, an error), in words.
    #[serde(default)]
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerStatus {
    pub port: u16,
    pub running: bool,
}

pub async fn status(state_dir: &Path) -> Result<StackStatus, LocalError> {
    let stack = StackState::load(state_dir)?;
    let secrets = Secrets::load(state_dir)?;
    let http = reqwest::Client::new();
    let mut services = Vec::new();
    for s in &stack.services {
        let running = s.proc.as_ref().is_some_and(ProcRecord::is_alive);
        let h = if running {
            probe_service(&http, &format!("http://127.0.0.1:{}", s.port))
                .await
                .ok()
        } else {
            None
        };
        services.push(
            ServiceStatus::seen(&s.name, &s.image, &s.release, s.port, running, h)
                .with_pid(s.proc.as_ref().map(|p| p.pid)),
        );
    }
    // A server that answers but refuses us (wrong password) is a problem to name, not "schema none".
    let mut problems = Vec::new();
    let schema_revision = match schema_revision(&stack.pg(&secrets)).await {
        Ok(r) => r,
        Err(e) => {
            problems.push(format!(
                "PostgreSQL on 127.0.0.1:{}: {}",
                stack.postgres.port,
                error_chain(&e)
            ));
            None
        }
    };
    let streams = nats::list_streams(&stack.nats_url())
        .await
        .unwrap_or_default();
    let redis_databases = match redis::keyspace_of(&stack.redis_url(&secrets, 0)).await {
        Ok(d) => d,
        Err(e) => {
            problems.push(format!(
                "Redis on 127.0.0.1:{}: {}",
                stack.redis.port,
                error_chain(&e)
            ));
            BTreeMap::new()
        }
    };
    let prometheus_targets = monitoring::prometheus_targets(&http, &stack.prometheus_url())
        .await
        .unwrap_or_default();
    let mut servers_st = BTreeMap::new();
    for (name, srv) in [
        ("postgres", Some(&stack.postgres)),
        ("redis", Some(&stack.redis)),
        ("nats", Some(&stack.nats.server)),
        ("prometheus", Some(&stack.prometheus)),
        ("alertmanager", stack.alertmanager.as_ref()),
    ] {
        let Some(srv) = srv else { continue };
        servers_st.insert(
            name.to_string(),
            ServerStatus {
                port: srv.port,
                running: srv.proc.is_alive(),
            },
        );
    }
    Ok(StackStatus {
        release: stack.release.clone(),
        state_dir: state_dir.to_path_buf(),
        services,
        schema_revision,
        streams,
        redis_databases,
        prometheus_targets,
        servers: servers_st,
        problems,
    })
}

/// An error with its causes ("database: connect: db error: FATAL: password authentication failed…"): the
/// outermost message alone often hides what went wrong.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    pub tenants: Vec<String>,
    pub sessions_completed: usize,
    pub findings: i64,
    pub evidence: Option<i64>,
    /// The bulk tenant's sessions, when asked for (`--bulk-sessions`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bulk_sessions: Option<i64>,
    /// The production-sized history, when asked for (`--scale`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale: Option<crate::scale::ScaleReport>,
}

/// Demo data: two tenants, and sessions that scan the stack's own loopback ports (some open, one closed), created
/// through the API as a user would and waited for until they complete.
pub async fn demo_data(state_dir: &Path, stack: &StackState) -> Result<DemoReport, LocalError> {
    demo_data_with(state_dir, stack, 0, 0).await
}

/// [`demo_data`], then (when `bulk` > 0) [`demo_bulk_sessions`] and (when `scale` > 0)
/// [`crate::scale::demo_scale`].
pub async fn demo_data_with(
    state_dir: &Path,
    stack: &StackState,
    bulk: u64,
    scale: u64,
) -> Result<DemoReport, LocalError> {
    let mut report = demo_data_only(state_dir, stack).await?;
    if bulk > 0 || scale > 0 {
        let secrets = Secrets::load(state_dir)?;
        let client = stack.pg(&secrets).connect().await?;
        if bulk > 0 {
            report.bulk_sessions = Some(demo_bulk_sessions(&client, bulk).await?);
        }
        if scale > 0 {
            let evidence = crate::target::evidence_dir(state_dir);
            // Progress on stderr: stdout keeps the command's result (a JSON document with --output json).
            let progress = |line: &str| eprintln!("{line}");
            report.scale =
                Some(crate::scale::demo_scale(&client, &evidence, scale, &progress).await?);
        }
    }
    Ok(report)
}

/// A platform's worth of history: completed sessions of a third tenant, `bulk`, which has no token (nobody
/// logs in as it), inserted in one statement and dated one a second back from now. The demo data's handful of
/// sessions makes rc1's recount of every tenant's sessions free; over a few hundred thousand it is what makes
/// concurrent listings queue. Tops the tenant up to `n` sessions, so a second `stack up --demo-data` adds none.
/// Returns the tenant's session count.
pub async fn demo_bulk_sessions(
    client: &tokio_postgres::Client,
    n: u64,
) -> Result<i64, LocalError> {
    let n = i64::try_from(n)
        .map_err(|_| LocalError::Config(format!("--bulk-sessions {n}: too many")))?;
    client
        .batch_execute(
            "INSERT INTO tenants (slug, name, token_sha256) VALUES ('bulk', 'Bulk history', repeat('0', 64)) \
             ON CONFLICT (slug) DO NOTHING",
        )
        .await
        .map_err(|e| LocalError::db("create the bulk tenant", e))?;
    let have: i64 = client
        .query_one(
            "SELECT count(*) FROM ptaas_sessions WHERE tenant_id = (SELECT id FROM tenants WHERE slug = 'bulk')",
            &[],
        )
        .await
        .map_err(|e| LocalError::db("count the bulk sessions", e))?
        .get(0);
    if have < n {
        client
            .execute(
                "INSERT INTO ptaas_sessions (tenant_id, status, created_at, completed_at) \
                 SELECT (SELECT id FROM tenants WHERE slug = 'bulk'), 'completed', \
                        now() - make_interval(secs => g), now() - make_interval(secs => g) \
                 FROM generate_series($1::bigint + 1, $2::bigint) g",
                &[&have, &n],
            )
            .await
            .map_err(|e| LocalError::db("insert the bulk sessions", e))?;
        // Vacuumed now rather than by autovacuum (its insert threshold) in the middle of the demo's baseline.
        client
            .batch_execute("VACUUM (ANALYZE) ptaas_sessions")
            .await
            .map_err(|e| LocalError::db("vacuum ptaas_sessions", e))?;
    }
    Ok(have.max(n))
}

async fn demo_data_only(state_dir: &Path, stack: &StackState) -> Result<DemoReport, LocalError> {
    let secrets = Secrets::load(state_dir)?;
    let api = stack
        .base_url("api")
        .ok_or_else(|| LocalError::Config("the stack has no api service".into()))?;
    seed_demo(&DemoTarget {
        pg: &stack.pg(&secrets),
        api: &api,
        open_ports: &[
            stack.postgres.port,
            stack.redis.port,
            stack.nats.server.port,
        ],
        tokens_file: &Secrets::tenants_path(state_dir),
    })
    .await
}

/// Where demo data goes, whatever runs the platform (the local stack, the Kubernetes lab): only addresses and
/// files, so neither target's own state is needed.
pub struct DemoTarget<'a> {
    /// The platform's database.
    pub pg: &'a PgConn,
    /// The api's base URL as this machine reaches it (`http://127.0.0.1:PORT`).
    pub api: &'a str,
    /// Open ports of 127.0.0.1 the demo sessions scan; a closed one is added, so every session finds both.
    pub open_ports: &'a [u16],
    /// The private file (0600, JSON slug → token) that keeps the demo tenants' bearer tokens: read when present
    /// (a second run keeps them), written back. Its directory must exist. Tokens are never printed.
    pub tokens_file: &'a Path,
}

/// Demo data: the tenants `acme` and `globex`, and two sessions each that scan `target.open_ports` and one closed
/// port, created through the API as a user would and waited for until they complete.
pub async fn seed_demo(target: &DemoTarget<'_>) -> Result<DemoReport, LocalError> {
    let client = target.pg.connect().await?;
    let mut tokens: BTreeMap<String, String> = match std::fs::read_to_string(target.tokens_file) {
        Ok(s) => serde_json::from_str(&s)
            .map_err(|e| LocalError::Config(format!("{}: {e}", target.tokens_file.display())))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => {
            return Err(LocalError::io(
                format!("cannot read {}", target.tokens_file.display()),
                e,
            ));
        }
    };
    for (slug, name) in [("acme", "Acme Security"), ("globex", "Globex Corporation")] {
        let token = tokens
            .entry(slug.to_string())
            .or_insert_with(random_secret)
            .clone();
        let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()));
        client
            .execute(
                "INSERT INTO tenants (slug, name, token_sha256) VALUES ($1, $2, $3) \
                 ON CONFLICT (slug) DO UPDATE SET token_sha256 = EXCLUDED.token_sha256",
                &[&slug, &name, &hash],
            )
            .await
            .map_err(|e| LocalError::db("create demo tenants", e))?;
    }
    let text = serde_json::to_string_pretty(&tokens).unwrap_or_default();
    write_private(target.tokens_file, text.as_bytes())?;

    let api = target.api;
    let mut ports = target.open_ports.to_vec();
    ports.push(free_port()?);
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for (slug, token) in &tokens {
        for _ in 0..2 {
            let body = serde_json::json!({"targets": [{"host": "127.0.0.1", "ports": ports}]});
            let r = http
                .post(format!("{api}/api/v1/ptaas/sessions"))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .map_err(|e| LocalError::Config(format!("create demo session for {slug}: {e}")))?;
            let status = r.status();
            let v: serde_json::Value = r.json().await.unwrap_or_default();
            let id = v["id"]
                .as_str()
                .filter(|_| status.is_success())
                .ok_or_else(|| {
                    LocalError::Config(format!(
                        "create demo session for {slug}: HTTP {status}: {v}"
                    ))
                })?;
            ids.push((token.clone(), id.to_string()));
        }
    }
    for (token, id) in &ids {
        if wait_session_completed(&http, api, token, id)
            .await
            .is_none()
        {
            return Err(LocalError::Config(format!(
                "demo session {id} did not complete within 60 s"
            )));
        }
    }
    let findings: i64 = client
        .query_one("SELECT count(*) FROM findings", &[])
        .await
        .map_err(|e| LocalError::db("count findings", e))?
        .get(0);
    let evidence = match client.query_one("SELECT count(*) FROM evidence", &[]).await {
        Ok(r) => Some(r.get(0)),
        Err(_) => None,
    };
    Ok(DemoReport {
        tenants: tokens.keys().cloned().collect(),
        sessions_completed: ids.len(),
        findings,
        evidence,
        bulk_sessions: None,
        scale: None,
    })
}

/// Copies `release`'s Grafana dashboards into `dir` (where a Grafana of the operator's reads them).
fn write_dashboards(release: &Release, dir: &Path) -> Result<(), LocalError> {
    mkdir(dir, 0o755)?;
    for (name, src) in monitoring::dashboards_of(release)? {
        std::fs::copy(&src, dir.join(&name))
            .map_err(|e| LocalError::io(format!("cannot copy {}", src.display()), e))?;
    }
    Ok(())
}
