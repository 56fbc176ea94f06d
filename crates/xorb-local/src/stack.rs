//! A local stack: bring it up, describe it, bring it down.
//!
//! `stack.json` in the state directory records what runs (ports, pids with start times, releases) and never a
//! secret; secrets live in `secrets/` (mode 0700, files 0600) and reach the services through their environment,
//! never through process arguments.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use xorb_model::release::Release;

use crate::LocalError;
use crate::process::{ProcRecord, StopResult, free_port, poll_until, spawn_detached};
use crate::servers::{self, NatsServer, PgConn, Server, mkdir, write_private};

pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(90);

/// Where the tool finds what it needs outside the state directory.
#[derive(Debug, Clone)]
pub struct Paths {
    pub releases_root: PathBuf,
    /// The Python of the virtual environment that has Alembic.
    pub venv: PathBuf,
    /// The platform's service binary.
    pub svc_bin: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceState {
    pub name: String,
    pub release: String,
    pub image: String,
    pub port: u16,
    pub proc: Option<ProcRecord>,
    /// The configuration keys (no secrets: connection URLs are added at start and not recorded).
    pub config: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StackState {
    pub release: String,
    pub releases_root: PathBuf,
    pub created_at: String,
    pub postgres: Server,
    pub redis: Server,
    pub nats: NatsServer,
    pub prometheus: Server,
    /// Absent in a stack.json written before the stack ran one.
    #[serde(default)]
    pub alertmanager: Option<Server>,
    /// Where a Grafana reads the stack's dashboards (`stack up --grafana-dashboards DIR`); None: no Grafana.
    #[serde(default)]
    pub grafana_dashboards: Option<PathBuf>,
    /// In the runbook's order.
    pub services: Vec<ServiceState>,
}

#[derive(Debug, Clone)]
pub struct Secrets {
    pub db_password: String,
    pub redis_password: String,
    /// tenant slug → bearer token
    pub tenant_tokens: BTreeMap<String, String>,
}

fn random_secret() -> String {
    use rand::RngCore;
    let mut b = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

impl Secrets {
    fn dir(state_dir: &Path) -> PathBuf {
        state_dir.join("secrets")
    }

    /// Loads the stack's secrets, generating the missing ones (first `stack up`).
    pub fn load_or_create(state_dir: &Path) -> Result<Self, LocalError> {
        let dir = Self::dir(state_dir);
        // Only when missing: reading the secrets of a stack (`status` on a read-only state directory) writes
        // nothing.
        if !dir.is_dir() {
            mkdir(&dir, 0o700)?;
        }
        let get = |name: &str| -> Result<String, LocalError> {
            let p = dir.join(name);
            match std::fs::read_to_string(&p) {
                Ok(s) => Ok(s.trim().to_string()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let s = random_secret();
                    write_private(&p, s.as_bytes())?;
                    Ok(s)
                }
                Err(e) => Err(LocalError::io(format!("cannot read {}", p.display()), e)),
            }
        };
        let db_password = get("db-password")?;
        let redis_password = get("redis-password")?;
        let tenant_tokens = match std::fs::read_to_string(dir.join("tenants.json")) {
            Ok(s) => serde_json::from_str(&s)
                .map_err(|e| LocalError::Config(format!("secrets/tenants.json: {e}")))?,
            Err(_) => BTreeMap::new(),
        };
        Ok(Self {
            db_password,
            redis_password,
            tenant_tokens,
        })
    }

    pub fn load(state_dir: &Path) -> Result<Self, LocalError> {
        if !Self::dir(state_dir).join("db-password").exists() {
            return Err(LocalError::NoStack(state_dir.to_path_buf()));
        }
        Self::load_or_create(state_dir)
    }

    pub fn save_tenants(&self, state_dir: &Path) -> Result<(), LocalError> {
        let text = serde_json::to_string_pretty(&self.tenant_tokens).unwrap_or_default();
        write_private(&Self::dir(state_dir).join("tenants.json"), text.as_bytes())
    }

    /// Every secret value, for redaction.
    pub fn values(&self) -> Vec<String> {
        let mut v = vec![self.db_password.clone(), self.redis_password.clone()];
        v.extend(self.tenant_tokens.values().cloned());
        v
    }
}

impl StackState {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("stack.json")
    }

    pub fn load(state_dir: &Path) -> Result<Self, LocalError> {
        let p = Self::path(state_dir);
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(LocalError::NoStack(state_dir.to_path_buf()));
            }
            Err(e) => return Err(LocalError::io(format!("cannot read {}", p.display()), e)),
        };
        serde_json::from_str(&text)
            .map_err(|e| LocalError::Config(format!("{} is damaged: {e}", p.display())))
    }

    /// Atomic replace: a crash never leaves a half-written stack.json.
    pub fn save(&self, state_dir: &Path) -> Result<(), LocalError> {
        let p = Self::path(state_dir);
        let tmp = state_dir.join("stack.json.tmp");
        // 0600: the services' configuration is recorded here, and an operator's configuration may hold secrets.
        write_private(
            &tmp,
            serde_json::to_string_pretty(self)
                .unwrap_or_default()
                .as_bytes(),
        )?;
        std::fs::rename(&tmp, &p)
            .map_err(|e| LocalError::io(format!("cannot write {}", p.display()), e))?;
        crate::pidfiles::write_all(state_dir, &self.all_procs())
    }

    pub fn pg(&self, secrets: &Secrets) -> PgConn {
        PgConn {
            port: self.postgres.port,
            user: "xorb".into(),
            password: secrets.db_password.clone(),
            dbname: "xorb".into(),
        }
    }

    pub fn redis_url(&self, secrets: &Secrets, db: u8) -> String {
        format!(
            "redis://:{}@127.0.0.1:{}/{db}",
            secrets.redis_password, self.redis.port
        )
    }

    pub fn nats_url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.nats.server.port)
    }

    pub fn prometheus_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.prometheus.port)
    }

    pub fn alertmanager_url(&self) -> Option<String> {
        self.alertmanager
            .as_ref()
            .map(|a| format!("http://127.0.0.1:{}", a.port))
    }

    pub fn service(&self, name: &str) -> Option<&ServiceState> {
        self.services.iter().find(|s| s.name == name)
    }

    pub fn base_url(&self, service: &str) -> Option<String> {
        self.service(service)
            .map(|s| format!("http://127.0.0.1:{}", s.port))
    }

    fn all_procs(&self) -> Vec<(&str, &ProcRecord)> {
        let mut v: Vec<(&str, &ProcRecord)> = self
            .services
            .iter()
            .filter_map(|s| s.proc.as_ref().map(|p| (s.name.as_str(), p)))
            .collect();
        v.push(("prometheus", &self.prometheus.proc));
        if let Some(am) = &self.alertmanager {
            v.push(("alertmanager", &am.proc));
        }
        v.push(("nats", &self.nats.server.proc));
        v.push(("redis", &self.redis.proc));
        v.push(("postgres", &self.postgres.proc));
        v
    }

    /// The environment a service runs with: its release configuration plus the stack's connections.
    pub fn service_env(
        &self,
        state_dir: &Path,
        secrets: &Secrets,
        svc: &ServiceState,
    ) -> BTreeMap<String, String> {
        let mut env = svc.config.clone();
        env.insert("DATABASE_URL".into(), self.pg(secrets).url());
        env.insert("REDIS_URL".into(), self.redis_url(secrets, 0));
        env.insert("NATS_URL".into(), self.nats_url());
        env.insert("XORB_LISTEN_ADDR".into(), format!("127.0.0.1:{}", svc.port));
        env.insert(
            "XORB_EVIDENCE_DIR".into(),
            state_dir.join("evidence").display().to_string(),
        );
        if let Some(cp) = self.service("control-plane") {
            env.insert(
                "XORB_CONTROL_PLANE_URL".into(),
                format!("http://127.0.0.1:{}", cp.port),
            );
        }
        env
    }
}

/// Variables of our own environment a service inherits: not part of its configuration.
pub const PASSTHROUGH_ENV: [&str; 5] = ["PATH", "HOME", "LANG", "RUST_LOG", "RUST_BACKTRACE"];

/// Starts one service process (`xorb/ROLE:RELEASE` is `xorb-svc --role ROLE --release RELEASE` here).
pub fn start_service(
    paths: &Paths,
    state_dir: &Path,
    stack: &StackState,
    secrets: &Secrets,
    svc: &ServiceState,
) -> Result<ProcRecord, LocalError> {
    let dir = state_dir.join("services").join(&svc.name);
    mkdir(&dir, 0o700)?;
    let mut cmd = Command::new(&paths.svc_bin);
    cmd.args(["--role", &svc.name, "--release", &svc.release]);
    cmd.env_clear();
    for k in PASSTHROUGH_ENV {
        if let Ok(v) = std::env::var(k) {
            cmd.env(k, v);
        }
    }
    cmd.envs(stack.service_env(state_dir, secrets, svc));
    spawn_detached(cmd, &service_log(state_dir, &svc.name))
}

/// Health of one service as its endpoint reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceHealth {
    pub healthy: bool,
    pub release: Option<String>,
    pub detail: serde_json::Value,
}

pub async fn probe_service(http: &reqwest::Client, port: u16) -> Result<ServiceHealth, String> {
    let url = format!("http://127.0.0.1:{port}/api/v1/health");
    let r = http
        .get(&url)
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let healthy = r.status().is_success();
    let detail: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
    let release = detail
        .get("release")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    Ok(ServiceHealth {
        healthy,
        release,
        detail,
    })
}

pub fn service_log(state_dir: &Path, name: &str) -> PathBuf {
    state_dir
        .join("services")
        .join(name)
        .join(format!("{name}.log"))
}

/// The last lines of a log, to say why a process died without sending the operator digging.
fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join(" | ")
}

/// Waits until the service answers healthy on `release`; fails early if its process died.
pub async fn wait_healthy(
    state_dir: &Path,
    svc: &ServiceState,
    release: &str,
    within: Duration,
) -> Result<(), LocalError> {
    let log = service_log(state_dir, &svc.name);
    let http = reqwest::Client::new();
    let last = std::sync::Mutex::new(String::from("no answer yet"));
    let set = |s: String| *last.lock().unwrap_or_else(|e| e.into_inner()) = s;
    let ok = poll_until(within, || {
        let http = http.clone();
        let set = &set;
        let log = &log;
        async move {
            if let Some(p) = &svc.proc
                && !p.is_alive()
            {
                set(format!(
                    "its process exited; {}: {}",
                    log.display(),
                    log_tail(log, 3)
                ));
                return Some(false);
            }
            match probe_service(&http, svc.port).await {
                Ok(h) if h.healthy && h.release.as_deref() == Some(release) => Some(true),
                Ok(h) => {
                    set(format!("health says {}", h.detail));
                    None
                }
                Err(e) => {
                    set(e);
                    None
                }
            }
        }
    })
    .await;
    match ok {
        Some(true) => Ok(()),
        _ => Err(LocalError::Unhealthy {
            service: svc.name.clone(),
            secs: within.as_secs(),
            why: last.into_inner().unwrap_or_else(|e| e.into_inner()),
        }),
    }
}

/// Runs `alembic ARGS` with the given migrations project against the stack's database.
pub fn alembic(
    paths: &Paths,
    migrations: &Path,
    conn: &PgConn,
    args: &[&str],
) -> Result<String, LocalError> {
    let ini = migrations.join("alembic.ini");
    let mut cmd = Command::new(paths.venv.join("bin/alembic"));
    cmd.arg("-c")
        .arg(&ini)
        .args(args)
        .env("DATABASE_URL", conn.url());
    let out = cmd.output().map_err(|e| LocalError::Alembic {
        what: args.join(" "),
        why: format!(
            "cannot run {}: {e} (run ./scripts/setup-python)",
            paths.venv.join("bin/alembic").display()
        ),
    })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr).replace(&conn.password, "[REDACTED]");
        return Err(LocalError::Alembic {
            what: args.join(" "),
            why: crate::toolout::last_line(&err),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub async fn schema_revision(conn: &PgConn) -> Result<Option<String>, LocalError> {
    let client = conn.connect().await?;
    let exists = client
        .query_opt(
            "SELECT 1 FROM information_schema.tables WHERE table_name = 'alembic_version'",
            &[],
        )
        .await
        .map_err(|e| LocalError::db("look up alembic_version", e))?
        .is_some();
    if !exists {
        return Ok(None);
    }
    let row = client
        .query_opt("SELECT version_num FROM alembic_version", &[])
        .await
        .map_err(|e| LocalError::db("read alembic_version", e))?;
    Ok(row.map(|r| r.get(0)))
}

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
        let dead: Vec<String> = existing
            .all_procs()
            .iter()
            .filter(|(_, p)| !p.is_alive())
            .map(|(n, _)| n.to_string())
            .collect();
        if dead.is_empty() {
            let demo_report = if demo {
                Some(demo_data(state_dir, &existing).await?)
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
            Some(demo_data(state_dir, &StackState::load(state_dir)?).await?)
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
        alembic(
            paths,
            &release.migrations_dir(),
            &conn,
            &["upgrade", &release.manifest.schema.head],
        )?;
        servers::ensure_streams(
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
        let prom_cfg = servers::local_prometheus_config_alerting(
            release,
            &prom_dir,
            &ports,
            Some(alertmanager.port),
        )?;
        let prometheus = servers::start_prometheus(&prom_dir, &prom_cfg).await?;
        started.push(prometheus.proc.clone());
        let grafana_dashboards = match &opts.grafana_dashboards {
            Some(dir) => {
                crate::infra::write_dashboards(release, None, dir)?;
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
        Some(demo_data(state_dir, &stack).await?)
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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PromTarget {
    pub job: String,
    pub health: String,
}

pub async fn status(state_dir: &Path) -> Result<StackStatus, LocalError> {
    let stack = StackState::load(state_dir)?;
    let secrets = Secrets::load(state_dir)?;
    let http = reqwest::Client::new();
    let mut services = Vec::new();
    for s in &stack.services {
        let running = s.proc.as_ref().is_some_and(ProcRecord::is_alive);
        let h = if running {
            probe_service(&http, s.port).await.ok()
        } else {
            None
        };
        services.push(ServiceStatus {
            name: s.name.clone(),
            image: s.image.clone(),
            release: s.release.clone(),
            port: s.port,
            pid: s.proc.as_ref().map(|p| p.pid),
            running,
            healthy: h.as_ref().is_some_and(|h| h.healthy),
            reported_release: h.as_ref().and_then(|h| h.release.clone()),
            health: h.map(|h| h.detail).unwrap_or(serde_json::Value::Null),
        });
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
    let streams = servers::list_streams(&stack.nats_url())
        .await
        .unwrap_or_default();
    let redis_databases = match redis_keyspace(&stack.redis_url(&secrets, 0)).await {
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
    let prometheus_targets = prometheus_targets(&http, &stack.prometheus_url())
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

pub async fn redis_keyspace(url: &str) -> Result<BTreeMap<u8, u64>, LocalError> {
    let client =
        redis::Client::open(url).map_err(|e| LocalError::Config(format!("redis url: {e}")))?;
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| LocalError::Start {
            what: "Redis connection".into(),
            why: e.to_string(),
        })?;
    let info: String = redis::cmd("INFO")
        .arg("keyspace")
        .query_async(&mut con)
        .await
        .map_err(|e| LocalError::Start {
            what: "Redis INFO".into(),
            why: e.to_string(),
        })?;
    // Lines like "db1:keys=3,expires=3,avg_ttl=0".
    let mut out = BTreeMap::new();
    for line in info.lines() {
        if let Some((db, rest)) = line.strip_prefix("db").and_then(|l| l.split_once(':'))
            && let (Ok(db), Some(keys)) = (
                db.parse::<u8>(),
                rest.split(',').find_map(|kv| kv.strip_prefix("keys=")),
            )
        {
            out.insert(db, keys.trim().parse().unwrap_or(0));
        }
    }
    Ok(out)
}

pub async fn prometheus_targets(
    http: &reqwest::Client,
    base: &str,
) -> Result<Vec<PromTarget>, String> {
    let v: serde_json::Value = http
        .get(format!("{base}/api/v1/targets"))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let mut out: Vec<PromTarget> = v["data"]["activeTargets"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|t| PromTarget {
                    job: t["labels"]["job"].as_str().unwrap_or_default().to_string(),
                    health: t["health"].as_str().unwrap_or_default().to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort_by(|a, b| a.job.cmp(&b.job));
    Ok(out)
}

#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    pub tenants: Vec<String>,
    pub sessions_completed: usize,
    pub findings: i64,
    pub evidence: Option<i64>,
}

/// Demo data: two tenants, and sessions that scan the stack's own loopback ports (some open, one closed), created
/// through the API as a user would and waited for until they complete.
pub async fn demo_data(state_dir: &Path, stack: &StackState) -> Result<DemoReport, LocalError> {
    let mut secrets = Secrets::load(state_dir)?;
    let client = stack.pg(&secrets).connect().await?;
    for (slug, name) in [("acme", "Acme Security"), ("globex", "Globex Corporation")] {
        let token = secrets
            .tenant_tokens
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
    secrets.save_tenants(state_dir)?;

    let api = stack
        .base_url("api")
        .ok_or_else(|| LocalError::Config("the stack has no api service".into()))?;
    let closed = free_port()?;
    let ports = [
        stack.postgres.port,
        stack.redis.port,
        stack.nats.server.port,
        closed,
    ];
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for (slug, token) in &secrets.tenant_tokens {
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
        if wait_session_completed(&http, &api, token, id)
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
        tenants: secrets.tenant_tokens.keys().cloned().collect(),
        sessions_completed: ids.len(),
        findings,
        evidence,
    })
}

/// Polls a PTaaS session until it is completed (60 s at most); returns it with its findings.
pub async fn wait_session_completed(
    http: &reqwest::Client,
    api: &str,
    token: &str,
    id: &str,
) -> Option<serde_json::Value> {
    poll_until(Duration::from_secs(60), || async {
        let r = http
            .get(format!("{api}/api/v1/ptaas/sessions/{id}"))
            .bearer_auth(token)
            .send()
            .await
            .ok()?;
        let v: serde_json::Value = r.json().await.ok()?;
        (v["status"] == "completed").then_some(v)
    })
    .await
}
