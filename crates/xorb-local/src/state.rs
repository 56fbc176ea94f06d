//! What a local stack is, on disk: `stack.json` records what runs (ports, pids with start times, releases) and never
//! a secret; secrets live in `secrets/` (mode 0700, files 0600) and reach the services through their environment,
//! never through process arguments.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::LocalError;
use crate::process::ProcRecord;
use crate::servers::{NatsServer, Server};
pub use xorb_adapters::Paths;
use xorb_adapters::files::{mkdir, write_private};
use xorb_adapters::pg::PgConn;

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
    /// Prometheus's scrape interval when `stack up --scrape-interval` set one (a Prometheus duration), used by
    /// every Prometheus configuration the stack writes, phase 4's included; None: the release's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scrape_interval: Option<String>,
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

pub(crate) use xorb_adapters::sealed::random_secret;

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
        let tenant_tokens = match std::fs::read_to_string(Self::tenants_path(state_dir)) {
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
        Ok(write_private(
            &Self::tenants_path(state_dir),
            text.as_bytes(),
        )?)
    }

    /// The file that keeps the demo tenants' tokens (0600, in the 0700 `secrets/`).
    pub fn tenants_path(state_dir: &Path) -> PathBuf {
        Self::dir(state_dir).join("tenants.json")
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
            host: "127.0.0.1".into(),
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

    pub(crate) fn all_procs(&self) -> Vec<(&str, &ProcRecord)> {
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
