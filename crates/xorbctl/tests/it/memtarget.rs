//! Proof that a target needs only the `Target` trait (issue #11): a target whose workloads are records in memory,
//! each answering the platform's health and info endpoints from an in-process HTTP server, beside real PostgreSQL,
//! Redis, NATS, Prometheus and Alertmanager. The planner, the engine and the shared adapters roll rc1 back to
//! stable through it, and the result is checked on the real servers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::json;
use xorb_adapters::target::{ConfigSet, Endpoints, Instance, RedisEndpoint, Target};
use xorb_adapters::{Paths, TargetRunner};
use xorb_engine::planner::{self, LiveService, LiveState, PlanOptions};
use xorb_engine::runner::StepError;
use xorb_engine::{Engine, NullSink};
use xorb_local::process::ProcRecord;
use xorb_local::servers;
use xorb_model::policy::Policy;
use xorb_model::release::Release;

use crate::common::{Stack, repo, svc_bin, venv};

const RC1: &str = "v2025.08-rc1";
const STABLE: &str = "v2025.07-stable";

/// One workload: what it runs, as the in-process server answers it.
#[derive(Debug, Clone)]
struct Workload {
    image: String,
    release: String,
    config: BTreeMap<String, String>,
    port: u16,
    running: bool,
}

type Workloads = Arc<Mutex<BTreeMap<String, Workload>>>;

struct MemTarget {
    workloads: Workloads,
    /// Set images, in order: each workload is rolled out once.
    rollouts: Mutex<Vec<String>>,
    endpoints: Endpoints,
    /// Where the real Prometheus and Alertmanager read their files (no network API hands them over).
    prometheus_dir: PathBuf,
    alertmanager_dir: PathBuf,
    /// Redis settings a restart would read again: kept in memory by this target.
    kept: Mutex<BTreeMap<(ConfigSet, String), Vec<u8>>>,
    evidence: PathBuf,
    release: Mutex<String>,
}

fn release_of(image: &str) -> String {
    image
        .rsplit_once(':')
        .map(|(_, r)| r)
        .unwrap_or(image)
        .to_string()
}

/// Serves `/api/v1/health` and `/api/v1/info` for `name` from the shared records, on a free loopback port.
async fn serve(workloads: Workloads, name: String) -> u16 {
    use axum::{Json, Router, routing::get};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let answer = move |what: &'static str| {
        let workloads = workloads.clone();
        let name = name.clone();
        move || {
            let w = workloads.lock().unwrap().get(&name).cloned();
            async move {
                match w {
                    Some(w) if w.running && what == "health" => (
                        axum::http::StatusCode::OK,
                        Json(json!({"status": "healthy", "release": w.release})),
                    ),
                    Some(w) if w.running => (
                        axum::http::StatusCode::OK,
                        Json(json!({"release": w.release, "version": "mem", "features": {}})),
                    ),
                    _ => (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        Json(json!({"status": "down"})),
                    ),
                }
            }
        }
    };
    let app = Router::new()
        .route("/api/v1/health", get(answer("health")))
        .route("/api/v1/info", get(answer("info")));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    port
}

impl MemTarget {
    fn set(&self, service: &str, image: &str, config: &BTreeMap<String, String>) -> String {
        let mut w = self.workloads.lock().unwrap();
        let Some(rec) = w.get_mut(service) else {
            return format!("{service} is not a workload");
        };
        rec.image = image.to_string();
        rec.release = release_of(image);
        rec.config = config.clone();
        rec.running = true;
        self.rollouts
            .lock()
            .unwrap()
            .push(format!("{service}={image}"));
        format!("{service} runs {image} (in memory)")
    }

    fn dir_of(&self, set: ConfigSet) -> Option<&Path> {
        match set {
            ConfigSet::Prometheus => Some(&self.prometheus_dir),
            ConfigSet::Alertmanager => Some(&self.alertmanager_dir),
            ConfigSet::Redis | ConfigSet::Dashboards => None,
        }
    }
}

impl Target for MemTarget {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn endpoints(&self) -> Result<Endpoints, StepError> {
        let mut ep = self.endpoints.clone();
        ep.services = self
            .workloads
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, w)| w.running)
            .map(|(n, w)| (n.clone(), format!("http://127.0.0.1:{}", w.port)))
            .collect();
        Ok(ep)
    }

    async fn observe(&self) -> Result<LiveState, StepError> {
        Ok(LiveState {
            release: self.release.lock().unwrap().clone(),
            services: self
                .workloads
                .lock()
                .unwrap()
                .iter()
                .map(|(n, w)| LiveService {
                    name: n.clone(),
                    image: w.image.clone(),
                    release: w.release.clone(),
                    config: w.config.clone(),
                })
                .collect(),
            database: None,
            streams: None,
            cluster_objects: false,
        })
    }

    async fn instances(&self) -> Result<Vec<Instance>, StepError> {
        Ok(self
            .workloads
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, w)| w.running)
            .map(|(n, w)| Instance {
                service: n.clone(),
                release: w.release.clone(),
                id: format!("memory {n}"),
                healthy: Some(true),
            })
            .collect())
    }

    async fn converged(
        &self,
        service: &str,
        release: &str,
        config: Option<&BTreeMap<String, String>>,
    ) -> Result<bool, StepError> {
        Ok(self
            .workloads
            .lock()
            .unwrap()
            .get(service)
            .is_some_and(|w| {
                w.running && w.release == release && config.is_none_or(|c| &w.config == c)
            }))
    }

    async fn removed(&self, service: &str) -> Result<bool, StepError> {
        Ok(!self.workloads.lock().unwrap().contains_key(service))
    }

    async fn set_workload(
        &self,
        service: &str,
        image: &str,
        config: &BTreeMap<String, String>,
        _timeout: Duration,
    ) -> Result<String, StepError> {
        Ok(self.set(service, image, config))
    }

    async fn add_workload(
        &self,
        service: &str,
        image: &str,
        release: &str,
        config: &BTreeMap<String, String>,
        _timeout: Duration,
    ) -> Result<String, StepError> {
        let port = serve(self.workloads.clone(), service.to_string()).await;
        self.workloads.lock().unwrap().insert(
            service.to_string(),
            Workload {
                image: image.into(),
                release: release.into(),
                config: config.clone(),
                port,
                running: true,
            },
        );
        Ok(format!("{service} added (in memory)"))
    }

    async fn remove_workload(&self, service: &str) -> Result<String, StepError> {
        self.workloads.lock().unwrap().remove(service);
        Ok(format!("{service} removed (in memory)"))
    }

    async fn stop_workload(&self, service: &str) -> Result<(), StepError> {
        if let Some(w) = self.workloads.lock().unwrap().get_mut(service) {
            w.running = false;
        }
        Ok(())
    }

    fn settle(&self, to: &Release) -> Result<(), StepError> {
        let w = self.workloads.lock().unwrap();
        if w.len() == to.services.len() && w.values().all(|w| w.release == to.name()) {
            *self.release.lock().unwrap() = to.name().to_string();
        }
        Ok(())
    }

    fn write_config(&self, set: ConfigSet, name: &str, bytes: &[u8]) -> Result<(), StepError> {
        match self.dir_of(set) {
            Some(dir) => std::fs::write(dir.join(name), bytes)
                .map_err(|e| StepError::retryable(e.to_string())),
            None => {
                self.kept
                    .lock()
                    .unwrap()
                    .insert((set, name.to_string()), bytes.to_vec());
                Ok(())
            }
        }
    }

    fn read_config(&self, set: ConfigSet, name: &str) -> Option<Vec<u8>> {
        match self.dir_of(set) {
            Some(dir) => std::fs::read(dir.join(name)).ok(),
            None => self
                .kept
                .lock()
                .unwrap()
                .get(&(set, name.to_string()))
                .cloned(),
        }
    }

    fn remove_config(&self, set: ConfigSet, name: &str) -> Result<bool, StepError> {
        Ok(match self.dir_of(set) {
            Some(dir) => std::fs::remove_file(dir.join(name)).is_ok(),
            None => self
                .kept
                .lock()
                .unwrap()
                .remove(&(set, name.to_string()))
                .is_some(),
        })
    }

    fn has_config(&self, set: ConfigSet) -> bool {
        set != ConfigSet::Dashboards
    }

    fn prometheus_config(
        &self,
        release: &Release,
        rules_dir: &Path,
    ) -> Result<serde_json::Value, StepError> {
        let rule_files: Vec<String> = release
            .manifest
            .monitoring
            .rules
            .iter()
            .filter_map(|r| r.file_name())
            .map(|n| rules_dir.join(n).display().to_string())
            .collect();
        let am = self.endpoints.alertmanager.as_deref().unwrap_or("");
        // One job per workload of the release this target runs (Prometheus drops an empty list when it loads).
        let jobs: Vec<serde_json::Value> = {
            let w = self.workloads.lock().unwrap();
            release
                .services
                .iter()
                .filter_map(|s| w.get(&s.name).map(|w| (s.name.clone(), w.port)))
                .map(|(name, port)| {
                    json!({"job_name": format!("xorb-{name}"), "static_configs": [{"targets": [format!("127.0.0.1:{port}")]}]})
                })
                .collect()
        };
        Ok(json!({
            "global": {"scrape_interval": "15s"},
            "rule_files": rule_files,
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [am.trim_start_matches("http://")]}]}]},
            "scrape_configs": jobs,
        }))
    }

    fn prometheus_rules_dir(&self) -> PathBuf {
        self.prometheus_dir.clone()
    }

    fn evidence_dir(&self) -> PathBuf {
        self.evidence.clone()
    }

    async fn capture(&self, dir: &Path) -> Result<String, StepError> {
        let live = self.observe().await?;
        std::fs::write(
            dir.join("services.json"),
            serde_json::to_vec_pretty(&live).unwrap(),
        )
        .map_err(|e| StepError::retryable(e.to_string()))?;
        Ok(format!(
            "{} workloads captured (in memory)",
            live.services.len()
        ))
    }

    async fn verify_available(&self, release: &Release) -> Result<String, StepError> {
        Ok(format!("{} is available in memory", release.name()))
    }

    fn check_token(&self, slug: &str) -> Result<String, StepError> {
        Ok(format!("token-of-{slug}"))
    }

    fn log_hint(&self, _what: &str) -> Option<String> {
        None
    }
}

/// The real servers of the test, stopped when dropped.
struct Servers {
    dir: PathBuf,
    procs: Vec<ProcRecord>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        for p in &self.procs {
            p.stop(Signal::SIGTERM, Duration::from_secs(20));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ed25519_public_key_into(dir: &Path) {
    std::fs::create_dir_all(dir.join("records")).unwrap();
    let key = dir.join("signing-key.pem");
    let ok = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&key)
        .status()
        .unwrap()
        .success()
        && std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&key)
            .arg("-out")
            .arg(dir.join("signing-key.pub.pem"))
            .status()
            .unwrap()
            .success();
    assert!(ok, "openssl could not make an Ed25519 key");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_of_in_memory_workloads_rolls_rc1_back_through_the_shared_adapters() {
    use std::os::unix::fs::PermissionsExt;
    let dir = Stack::new_dir();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let paths = Paths {
        releases_root: repo().join("releases"),
        venv: venv(),
        svc_bin: svc_bin(),
    };
    let rc1 = Release::load_named(&paths.releases_root, RC1).unwrap();
    let stable = Release::load_named(&paths.releases_root, STABLE).unwrap();

    // The real servers, as the local target's supervisor starts them (it is the only one here that can).
    let mut servers = Servers {
        dir: dir.clone(),
        procs: Vec::new(),
    };
    let db_password = format!("pw-{}", uuid::Uuid::new_v4().simple());
    let redis_password = format!("pw-{}", uuid::Uuid::new_v4().simple());
    let pg = servers::start_postgres(&dir.join("postgres"), &db_password)
        .await
        .unwrap();
    servers.procs.push(pg.proc.clone());
    let redis = servers::start_redis(&dir.join("redis"), &rc1, &redis_password)
        .await
        .unwrap();
    servers.procs.push(redis.proc.clone());
    let nats = servers::start_nats(&dir.join("nats")).await.unwrap();
    servers.procs.push(nats.server.proc.clone());
    let am_dir = dir.join("alertmanager");
    std::fs::create_dir_all(&am_dir).unwrap();
    std::fs::copy(
        rc1.path(&rc1.manifest.monitoring.alertmanager),
        am_dir.join("alertmanager.yml"),
    )
    .unwrap();
    let am = servers::start_alertmanager(&am_dir, &am_dir.join("alertmanager.yml"))
        .await
        .unwrap();
    servers.procs.push(am.proc.clone());

    let postgres = xorb_adapters::pg::PgConn {
        host: "127.0.0.1".into(),
        port: pg.port,
        user: "xorb".into(),
        password: db_password,
        dbname: "xorb".into(),
    };
    xorb_adapters::pg::scripts::alembic(
        &paths,
        &rc1.migrations_dir(),
        &postgres,
        &["upgrade", &rc1.manifest.schema.head],
        None,
    )
    .await
    .unwrap();
    let nats_url = format!("nats://127.0.0.1:{}", nats.server.port);
    xorb_adapters::nats::ensure_streams(&nats_url, &rc1.streams)
        .await
        .unwrap();

    // rc1's workloads, in memory.
    let workloads: Workloads = Arc::default();
    for s in &rc1.services {
        let port = serve(workloads.clone(), s.name.clone()).await;
        workloads.lock().unwrap().insert(
            s.name.clone(),
            Workload {
                image: s.image.clone(),
                release: RC1.into(),
                config: s.env.clone(),
                port,
                running: true,
            },
        );
    }
    let evidence = dir.join("evidence");
    ed25519_public_key_into(&evidence);
    let prom_dir = dir.join("prometheus");
    std::fs::create_dir_all(&prom_dir).unwrap();
    let mut target = MemTarget {
        workloads: workloads.clone(),
        rollouts: Mutex::default(),
        endpoints: Endpoints {
            postgres: postgres.clone(),
            redis: RedisEndpoint {
                host: "127.0.0.1".into(),
                port: redis.port,
                password: redis_password,
            },
            nats: nats_url.clone(),
            prometheus: String::new(),
            alertmanager: Some(format!("http://127.0.0.1:{}", am.port)),
            services: BTreeMap::new(),
        },
        prometheus_dir: prom_dir.clone(),
        alertmanager_dir: am_dir.clone(),
        kept: Mutex::default(),
        evidence,
        release: Mutex::new(RC1.into()),
    };
    // Prometheus starts on rc1's configuration as this target renders it.
    let cfg = target.prometheus_config(&rc1, &prom_dir).unwrap();
    for rule in &rc1.manifest.monitoring.rules {
        std::fs::copy(rc1.path(rule), prom_dir.join(rule.file_name().unwrap())).unwrap();
    }
    std::fs::write(
        prom_dir.join("prometheus.yml"),
        serde_json::to_vec_pretty(&cfg).unwrap(),
    )
    .unwrap();
    let prometheus = servers::start_prometheus(&prom_dir, &prom_dir.join("prometheus.yml"))
        .await
        .unwrap();
    servers.procs.push(prometheus.proc.clone());
    target.endpoints.prometheus = format!("http://127.0.0.1:{}", prometheus.port);

    // Plan as `xorbctl plan` does, with checks a memory workload can answer (no scan sessions).
    let mut policy = Policy::embedded();
    policy.checks.verification = ["health", "info", "integrity-quick", "loss"]
        .map(String::from)
        .to_vec();
    let mut live = target.observe().await.unwrap();
    live.database = Some(
        xorb_adapters::pg::observe_database(&postgres, &paths, &rc1)
            .await
            .unwrap(),
    );
    live.streams = Some(xorb_adapters::nats::list_streams(&nats_url).await.unwrap());
    let plan = planner::plan_with(&live, &rc1, &stable, &policy, &PlanOptions::default()).unwrap();
    for phase in ["1.", "2.", "3.", "4.", "5."] {
        assert!(
            plan.steps.iter().any(|s| s.id.starts_with(phase)),
            "the plan has no step of phase {phase}: {:?}",
            plan.steps.iter().map(|s| &s.id).collect::<Vec<_>>()
        );
    }

    let state = dir.join("xorbctl-state");
    std::fs::create_dir_all(&state).unwrap();
    let runner = TargetRunner::new(target, paths, state.clone(), stable.clone());
    let mut engine = Engine::new(&state, runner, NullSink).unwrap();
    let end = engine.start(plan).await.unwrap();
    let record = xorb_engine::load_run(&state, &end.run_id).unwrap();
    let failed: Vec<String> = record
        .steps
        .iter()
        .filter(|s| s.outcome.as_ref().is_some_and(|o| !o.is_success()))
        .map(|s| format!("{}: {}", s.spec.id, s.outcome.as_ref().unwrap()))
        .collect();
    assert!(
        end.succeeded(),
        "the run did not succeed: {failed:?}; {}",
        end.next
    );

    // Workloads: every one on stable, each rolled out once, the control plane gone.
    {
        let w = workloads.lock().unwrap();
        for s in &stable.services {
            let got = w
                .get(&s.name)
                .unwrap_or_else(|| panic!("{} is gone", s.name));
            assert_eq!(got.image, s.image, "{} runs the wrong image", s.name);
        }
        assert!(
            !w.contains_key("control-plane"),
            "the control plane still runs"
        );
    }
    // The gates after each service step ran and are in the journal (what the report lists).
    let api = record
        .steps
        .iter()
        .find(|s| s.spec.id == "2.api.image")
        .unwrap();
    let ran: Vec<&str> = api
        .outcome
        .as_ref()
        .unwrap()
        .checks_run()
        .iter()
        .map(|c| c.check.as_str())
        .collect();
    assert_eq!(ran, ["health", "release"], "gates of 2.api.image");

    // The real servers hold what stable defines.
    let client = postgres.connect().await.unwrap();
    let rev: String = client
        .query_one("SELECT version_num FROM alembic_version", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rev, stable.manifest.schema.head, "schema revision");
    let mut want: Vec<String> = stable.streams.iter().map(|s| s.name.clone()).collect();
    want.sort();
    assert_eq!(
        xorb_adapters::nats::list_streams(&nats_url).await.unwrap(),
        want,
        "live streams"
    );
    let http = reqwest::Client::new();
    let groups = xorb_adapters::monitoring::live_rule_groups(
        &http,
        &format!("http://127.0.0.1:{}", prometheus.port),
    )
    .await
    .unwrap();
    assert!(
        !groups.is_empty(),
        "Prometheus has no rule group after the rollback"
    );
    let redis_backup = end.run_dir.join("redis").join("dump.rdb");
    assert!(
        redis_backup.metadata().is_ok_and(|m| m.len() > 0),
        "no RDB backup taken over the network in {}",
        redis_backup.display()
    );
    drop(servers);
}
