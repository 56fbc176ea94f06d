//! The local target's workloads: each service is an `xorb-svc` process, its image is `--role ROLE --release R`,
//! its configuration its environment. Implements the adapters' [`Target`] trait; everything stateful goes through
//! the shared adapters and the endpoints this target reports.
//!
//! Instances are the live processes (their command lines and environments in /proc), not stack.json: after a
//! crash between starting a process and recording it, the truth is what runs. A process belongs to this stack when
//! its `XORB_EVIDENCE_DIR` is this state directory's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use xorb_adapters::context::failed;
use xorb_adapters::files::{write_atomic, write_file};
use xorb_adapters::target::{ConfigSet, Endpoints, Instance, RedisEndpoint, Target};
use xorb_engine::planner::{LiveService, LiveState};
use xorb_engine::runner::StepError;
use xorb_model::release::Release;

use crate::LocalError;
use crate::process::ProcRecord;
use crate::services;
use crate::state::{Paths, Secrets, ServiceState, StackState};

/// Keys the target adds to a service's environment (connections, secrets): not part of its configuration.
const CONNECTION_KEYS: [&str; 6] = [
    "DATABASE_URL",
    "REDIS_URL",
    "NATS_URL",
    "XORB_LISTEN_ADDR",
    "XORB_EVIDENCE_DIR",
    "XORB_CONTROL_PLANE_URL",
];

/// The services as stack.json records them.
pub fn observe(state_dir: &Path) -> Result<LiveState, LocalError> {
    let st = StackState::load(state_dir)?;
    Ok(LiveState {
        release: st.release.clone(),
        services: st
            .services
            .iter()
            .map(|s| LiveService {
                name: s.name.clone(),
                image: s.image.clone(),
                release: s.release.clone(),
                config: s.config.clone(),
            })
            .collect(),
        database: None,
        streams: None,
        cluster_objects: false,
    })
}

/// A live xorb-svc process of this stack.
#[derive(Debug, Clone)]
pub struct LiveProc {
    pub proc: ProcRecord,
    pub role: String,
    pub release: String,
    pub env: BTreeMap<String, String>,
}

impl LiveProc {
    /// The configuration this process runs with: its environment less the connections we add and the
    /// variables it inherits from us.
    pub fn config(&self) -> BTreeMap<String, String> {
        self.env
            .iter()
            .filter(|(k, _)| {
                !CONNECTION_KEYS.contains(&k.as_str())
                    && !services::PASSTHROUGH_ENV.contains(&k.as_str())
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn port(&self) -> Option<u16> {
        self.env
            .get("XORB_LISTEN_ADDR")
            .and_then(|a| a.rsplit_once(':'))
            .and_then(|(_, port)| port.parse().ok())
    }
}

/// Where the services of the stack in `state_dir` keep evidence files (it also tells their processes apart).
pub fn evidence_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("evidence")
}

/// Every live xorb-svc process whose evidence directory is this stack's.
pub fn live_service_procs(state_dir: &Path) -> Vec<LiveProc> {
    let evidence = evidence_dir(state_dir).display().to_string();
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.filter_map(Result::ok) {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !args.first().is_some_and(|a| a.ends_with("xorb-svc")) {
            continue;
        }
        let arg = |name: &str| {
            args.iter()
                .position(|a| a == name)
                .and_then(|i| args.get(i + 1))
                .cloned()
        };
        let (Some(role), Some(release)) = (arg("--role"), arg("--release")) else {
            continue;
        };
        let Ok(envb) = std::fs::read(e.path().join("environ")) else {
            continue;
        };
        let env: BTreeMap<String, String> = envb
            .split(|b| *b == 0)
            .filter_map(|kv| {
                String::from_utf8_lossy(kv)
                    .split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect();
        if env.get("XORB_EVIDENCE_DIR") != Some(&evidence) {
            continue;
        }
        let Some(proc) = ProcRecord::of_pid(pid, &args[0]) else {
            continue;
        };
        if proc.is_alive() {
            out.push(LiveProc {
                proc,
                role,
                release,
                env,
            });
        }
    }
    out
}

fn release_of_image(image: &str) -> &str {
    image.rsplit_once(':').map(|(_, t)| t).unwrap_or(image)
}

/// The whole stack as private processes on loopback under one state directory.
pub struct LocalTarget {
    pub state_dir: PathBuf,
    pub paths: Paths,
    http: reqwest::Client,
}

impl LocalTarget {
    pub fn new(state_dir: &Path, paths: Paths) -> Self {
        Self {
            state_dir: state_dir.to_path_buf(),
            paths,
            http: xorb_adapters::deps::http_client(),
        }
    }

    fn stack(&self) -> Result<StackState, StepError> {
        StackState::load(&self.state_dir).map_err(failed)
    }

    fn secrets(&self) -> Result<Secrets, StepError> {
        Secrets::load(&self.state_dir).map_err(failed)
    }

    fn stop_procs(&self, service: &str, keep: Option<&ProcRecord>) {
        for p in live_service_procs(&self.state_dir)
            .into_iter()
            .filter(|p| p.role == service && Some(&p.proc) != keep)
        {
            tokio::task::block_in_place(|| p.proc.stop(Signal::SIGTERM, Duration::from_secs(20)));
        }
    }

    /// Makes `name` run `image` with `config`: adopts a live process that already does (a crash may have left
    /// one), stops the others, starts one if none fits, records it, and waits until it reports healthy.
    async fn converge(
        &self,
        name: &str,
        image: &str,
        config: &BTreeMap<String, String>,
        timeout: Duration,
    ) -> Result<String, StepError> {
        let release = release_of_image(image).to_string();
        let mut st = self.stack()?;
        let secrets = self.secrets()?;
        let idx = st
            .services
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| StepError::fatal(format!("the stack has no service {name}")))?;
        let keep = live_service_procs(&self.state_dir)
            .into_iter()
            .find(|p| p.role == name && p.release == release && &p.config() == config)
            .map(|p| p.proc);
        self.stop_procs(name, keep.as_ref());
        let mut svc = st.services[idx].clone();
        svc.release = release.clone();
        svc.image = image.to_string();
        svc.config = config.clone();
        let (proc, how) = match keep {
            Some(p) => (p, "adopted the process already running it"),
            None => (
                services::start_service(&self.paths, &self.state_dir, &st, &secrets, &svc)
                    .map_err(failed)?,
                "restarted",
            ),
        };
        svc.proc = Some(proc);
        st.services[idx] = svc.clone();
        st.save(&self.state_dir).map_err(failed)?;
        services::wait_healthy(&self.state_dir, &svc, &release, timeout)
            .await
            .map_err(failed)?;
        Ok(format!("{name} runs {image}, healthy ({how})"))
    }

    fn config_path(&self, set: ConfigSet, name: &str) -> Result<PathBuf, StepError> {
        // A name is a file of the set, never a path: nothing outside the set's directory is touched.
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(StepError::fatal(format!(
                "{name:?} is not a file name of the {} configuration",
                set.name()
            )));
        }
        let dir = match set {
            ConfigSet::Prometheus => self.state_dir.join("prometheus"),
            ConfigSet::Alertmanager => self.state_dir.join("alertmanager"),
            ConfigSet::Redis => self.state_dir.join("redis"),
            ConfigSet::Dashboards => self.stack()?.grafana_dashboards.ok_or_else(|| {
                StepError::fatal("this stack has no Grafana dashboards directory")
            })?,
        };
        Ok(dir.join(name))
    }
}

impl Target for LocalTarget {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn endpoints(&self) -> Result<Endpoints, StepError> {
        let st = self.stack()?;
        let secrets = self.secrets()?;
        Ok(Endpoints {
            postgres: st.pg(&secrets),
            redis: RedisEndpoint {
                host: "127.0.0.1".into(),
                port: st.redis.port,
                password: secrets.redis_password.clone(),
            },
            nats: st.nats_url(),
            prometheus: st.prometheus_url(),
            alertmanager: st.alertmanager_url(),
            services: st
                .services
                .iter()
                .map(|s| (s.name.clone(), format!("http://127.0.0.1:{}", s.port)))
                .collect(),
        })
    }

    async fn observe(&self) -> Result<LiveState, StepError> {
        observe(&self.state_dir).map_err(failed)
    }

    async fn instances(&self) -> Result<Vec<Instance>, StepError> {
        let mut out = Vec::new();
        for p in live_service_procs(&self.state_dir) {
            let healthy = match p.port() {
                Some(port) => Some(
                    xorb_adapters::services::probe_service(
                        &self.http,
                        &format!("http://127.0.0.1:{port}"),
                    )
                    .await
                    .is_ok_and(|h| h.healthy),
                ),
                None => None,
            };
            out.push(Instance {
                service: p.role.clone(),
                release: p.release.clone(),
                id: format!("pid {}", p.proc.pid),
                healthy,
            });
        }
        Ok(out)
    }

    async fn converged(
        &self,
        service: &str,
        release: &str,
        config: Option<&BTreeMap<String, String>>,
    ) -> Result<bool, StepError> {
        let on: Vec<LiveProc> = live_service_procs(&self.state_dir)
            .into_iter()
            .filter(|p| p.role == service)
            .collect();
        let st = self.stack()?;
        let Some(recorded) = st.service(service) else {
            return Ok(false);
        };
        Ok(on.len() == 1
            && on[0].release == release
            && recorded.proc.as_ref() == Some(&on[0].proc)
            && config.is_none_or(|want| &on[0].config() == want && &recorded.config == want))
    }

    async fn removed(&self, service: &str) -> Result<bool, StepError> {
        let st = self.stack()?;
        Ok(live_service_procs(&self.state_dir)
            .iter()
            .all(|p| p.role != service)
            && st.service(service).is_none())
    }

    async fn set_workload(
        &self,
        service: &str,
        image: &str,
        config: &BTreeMap<String, String>,
        timeout: Duration,
    ) -> Result<String, StepError> {
        self.converge(service, image, config, timeout).await
    }

    async fn add_workload(
        &self,
        service: &str,
        image: &str,
        release: &str,
        config: &BTreeMap<String, String>,
        timeout: Duration,
    ) -> Result<String, StepError> {
        let mut st = self.stack()?;
        // Recorded first (a free port, the configuration) unless a crashed earlier attempt already did.
        if st.service(service).is_none() {
            let port = crate::process::free_port().map_err(failed)?;
            // In the runbook's order, so that `status` and stop order stay as `stack up` makes them.
            let order = |n: &str| {
                xorb_model::release::SERVICE_ORDER
                    .iter()
                    .position(|o| *o == n)
                    .unwrap_or(usize::MAX)
            };
            let at = st
                .services
                .iter()
                .position(|s| order(&s.name) > order(service))
                .unwrap_or(st.services.len());
            st.services.insert(
                at,
                ServiceState {
                    name: service.to_string(),
                    release: release.to_string(),
                    image: image.to_string(),
                    port,
                    proc: None,
                    config: config.clone(),
                },
            );
            st.save(&self.state_dir).map_err(failed)?;
        }
        self.converge(service, image, config, timeout).await
    }

    async fn remove_workload(&self, service: &str) -> Result<String, StepError> {
        self.stop_procs(service, None);
        let mut st = self.stack()?;
        st.services.retain(|s| s.name != service);
        st.save(&self.state_dir).map_err(failed)?;
        Ok(format!("{service} stopped and removed"))
    }

    async fn stop_workload(&self, service: &str) -> Result<(), StepError> {
        self.stop_procs(service, None);
        Ok(())
    }

    fn settle(&self, to: &Release) -> Result<(), StepError> {
        let mut st = self.stack()?;
        let all_on = st.services.iter().all(|s| s.release == to.name())
            && st.services.len() == to.services.len();
        if all_on && st.release != to.name() {
            st.release = to.name().to_string();
            st.save(&self.state_dir).map_err(failed)?;
        }
        Ok(())
    }

    fn write_config(&self, set: ConfigSet, name: &str, bytes: &[u8]) -> Result<(), StepError> {
        Ok(write_atomic(&self.config_path(set, name)?, bytes)?)
    }

    fn read_config(&self, set: ConfigSet, name: &str) -> Option<Vec<u8>> {
        std::fs::read(self.config_path(set, name).ok()?).ok()
    }

    fn remove_config(&self, set: ConfigSet, name: &str) -> Result<bool, StepError> {
        let p = self.config_path(set, name)?;
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(failed(format!("cannot remove {}: {e}", p.display()))),
        }
    }

    fn has_config(&self, set: ConfigSet) -> bool {
        match set {
            ConfigSet::Dashboards => self.stack().is_ok_and(|st| st.grafana_dashboards.is_some()),
            _ => true,
        }
    }

    fn prometheus_config(
        &self,
        release: &Release,
        rules_dir: &Path,
    ) -> Result<serde_json::Value, StepError> {
        let st = self.stack()?;
        let ports: BTreeMap<String, u16> = st
            .services
            .iter()
            .map(|s| (s.name.clone(), s.port))
            .collect();
        let scrape_interval = st
            .scrape_interval
            .as_deref()
            .map(crate::servers::parse_prometheus_duration)
            .transpose()
            .map_err(|e| StepError::fatal(format!("the stack's scrape_interval: {e}")))?;
        crate::servers::prometheus_config(
            release,
            rules_dir,
            &ports,
            st.alertmanager.as_ref().map(|a| a.port),
            scrape_interval,
        )
        .map_err(|e| StepError::fatal(e.to_string()))
    }

    fn prometheus_rules_dir(&self) -> PathBuf {
        self.state_dir.join("prometheus")
    }

    fn evidence_dir(&self) -> PathBuf {
        evidence_dir(&self.state_dir)
    }

    async fn capture(&self, dir: &Path) -> Result<String, StepError> {
        let live = observe(&self.state_dir).map_err(failed)?;
        write_file(
            &dir.join("services.json"),
            &serde_json::to_string_pretty(&live).unwrap_or_default(),
        )?;
        std::fs::copy(StackState::path(&self.state_dir), dir.join("stack.json")).map_err(failed)?;
        // Secrets are captured too, so that a failed rollback can be undone, but only encrypted (age, X25519).
        let secrets = self.secrets()?;
        let plain = serde_json::json!({
            "db_password": secrets.db_password,
            "redis_password": secrets.redis_password,
            "tenant_tokens": secrets.tenant_tokens,
        })
        .to_string();
        xorb_adapters::sealed::seal(
            &self.state_dir,
            &dir.join("secrets.json.age"),
            plain.as_bytes(),
        )?;
        Ok(format!(
            "{} services captured into {}",
            live.services.len(),
            dir.display()
        ))
    }

    async fn verify_available(&self, release: &Release) -> Result<String, StepError> {
        let svc_bin = &self.paths.svc_bin;
        let out = tokio::process::Command::new(svc_bin)
            .arg("--list-releases")
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| StepError::fatal(format!("cannot run {}: {e}", svc_bin.display())))?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let known = v["releases"]
            .as_array()
            .is_some_and(|a| a.iter().any(|r| r["name"] == release.name()));
        if !known {
            return Err(StepError::fatal(format!(
                "{} does not provide {}: the target release is not available",
                svc_bin.display(),
                release.name()
            )));
        }
        Ok(format!(
            "{} available: {} services, schema head {}",
            release.name(),
            release.services.len(),
            release.manifest.schema.head
        ))
    }

    fn check_token(&self, slug: &str) -> Result<String, StepError> {
        let mut secrets = self.secrets()?;
        let token = secrets
            .tenant_tokens
            .entry(slug.to_string())
            .or_insert_with(xorb_adapters::sealed::random_secret)
            .clone();
        secrets.save_tenants(&self.state_dir).map_err(failed)?;
        Ok(token)
    }

    fn log_hint(&self, what: &str) -> Option<String> {
        let st = self.stack().ok()?;
        let log = match what {
            "Redis" => st.redis.log,
            "Prometheus" => st.prometheus.log,
            "PostgreSQL" => st.postgres.log,
            _ => return None,
        };
        Some(log.display().to_string())
    }
}

/// The runner of the local target: the shared steps over this stack's processes and servers.
pub type LocalRunner = xorb_adapters::TargetRunner<LocalTarget>;

/// A runner rolling the stack in `state_dir` to `to`.
pub fn runner(state_dir: &Path, paths: Paths, to: Release) -> LocalRunner {
    xorb_adapters::TargetRunner::new(
        LocalTarget::new(state_dir, paths.clone()),
        paths,
        state_dir.to_path_buf(),
        to,
    )
}
