//! The local target's implementation of the rollback steps (`xorb_engine::runner::StepRunner`).
//!
//! Probes look at the live processes (their command lines and environments in /proc), not at stack.json: after a
//! crash between starting a process and recording it, the truth is what runs. A process belongs to this stack when
//! its `XORB_EVIDENCE_DIR` is this state directory's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use xorb_engine::planner::{LiveService, LiveState};
use xorb_engine::runner::{Probe, StepContext, StepError, StepRunner};
use xorb_model::plan::{Action, EmergencyProcedure, StepOutcome, StepSpec};
use xorb_model::release::Release;

use crate::LocalError;
use crate::process::ProcRecord;
use crate::servers::{self, mkdir, write_file, write_private};
use crate::stack::{self, Paths, Secrets, StackState};
use crate::{database, infra, verify};

/// Keys the target adds to a service's environment (connections, secrets): not part of its configuration.
const CONNECTION_KEYS: [&str; 6] = [
    "DATABASE_URL",
    "REDIS_URL",
    "NATS_URL",
    "XORB_LISTEN_ADDR",
    "XORB_EVIDENCE_DIR",
    "XORB_CONTROL_PLANE_URL",
];

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
    fn config(&self) -> BTreeMap<String, String> {
        self.env
            .iter()
            .filter(|(k, _)| {
                !CONNECTION_KEYS.contains(&k.as_str())
                    && !stack::PASSTHROUGH_ENV.contains(&k.as_str())
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// Every live xorb-svc process whose evidence directory is this stack's.
pub fn live_service_procs(state_dir: &Path) -> Vec<LiveProc> {
    let evidence = state_dir.join("evidence").display().to_string();
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

pub struct LocalRunner {
    pub state_dir: PathBuf,
    pub paths: Paths,
    pub to: Release,
    pub http: reqwest::Client,
}

pub fn failed(e: impl std::fmt::Display) -> StepError {
    StepError::retryable(e.to_string())
}

impl LocalRunner {
    pub fn new(state_dir: &Path, paths: Paths, to: Release) -> Self {
        Self {
            state_dir: state_dir.to_path_buf(),
            paths,
            to,
            http: crate::deps::http_client(),
        }
    }

    pub fn secrets(&self) -> Result<Secrets, StepError> {
        Secrets::load(&self.state_dir).map_err(failed)
    }

    pub fn stack(&self) -> Result<StackState, StepError> {
        StackState::load(&self.state_dir).map_err(failed)
    }

    /// Makes `name` run `release` with `config`: adopts a live process that already does (a crash may have left
    /// one), stops the others, starts one if none fits, records it, and waits until it reports healthy.
    pub(crate) async fn converge_service(
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
        let procs: Vec<LiveProc> = live_service_procs(&self.state_dir)
            .into_iter()
            .filter(|p| p.role == name)
            .collect();
        let fits = |p: &LiveProc| p.release == release && &p.config() == config;
        let keep = procs.iter().find(|p| fits(p)).map(|p| p.proc.clone());
        for p in procs.iter().filter(|p| Some(&p.proc) != keep.as_ref()) {
            tokio::task::block_in_place(|| p.proc.stop(Signal::SIGTERM, Duration::from_secs(20)));
        }
        let mut svc = st.services[idx].clone();
        svc.release = release.clone();
        svc.image = image.to_string();
        svc.config = config.clone();
        let (proc, how) = match keep {
            Some(p) => (p, "adopted the process already running it"),
            None => (
                stack::start_service(&self.paths, &self.state_dir, &st, &secrets, &svc)
                    .map_err(failed)?,
                "restarted",
            ),
        };
        svc.proc = Some(proc);
        st.services[idx] = svc.clone();
        st.save(&self.state_dir).map_err(failed)?;
        stack::wait_healthy(&self.state_dir, &svc, &release, timeout)
            .await
            .map_err(failed)?;
        Ok(format!("{name} runs {image}, healthy ({how})"))
    }

    /// Records `name` in the stack (a free port, the target's configuration) unless a crashed earlier attempt
    /// already did, then converges it like any other service.
    async fn add_service(
        &self,
        name: &str,
        image: &str,
        release: &str,
        timeout: Duration,
    ) -> Result<String, StepError> {
        let target = self
            .to
            .service(name)
            .ok_or_else(|| StepError::fatal(format!("{} has no service {name}", self.to.name())))?;
        let mut st = self.stack()?;
        if st.service(name).is_none() {
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
                .position(|s| order(&s.name) > order(name))
                .unwrap_or(st.services.len());
            st.services.insert(
                at,
                stack::ServiceState {
                    name: name.to_string(),
                    release: release.to_string(),
                    image: image.to_string(),
                    port,
                    proc: None,
                    config: target.env.clone(),
                },
            );
            st.save(&self.state_dir).map_err(failed)?;
        }
        let config = target.env.clone();
        self.converge_service(name, image, &config, timeout).await
    }

    async fn remove_service(&self, name: &str) -> Result<String, StepError> {
        for p in live_service_procs(&self.state_dir)
            .into_iter()
            .filter(|p| p.role == name)
        {
            tokio::task::block_in_place(|| p.proc.stop(Signal::SIGTERM, Duration::from_secs(20)));
        }
        let mut st = self.stack()?;
        st.services.retain(|s| s.name != name);
        st.save(&self.state_dir).map_err(failed)?;
        Ok(format!("{name} stopped and removed"))
    }

    /// The journal stores plans redacted, so a plan read back on resume holds `[REDACTED]` where a configuration
    /// value was a secret: take such values from the target release again (the only source of a step's config).
    fn unredacted(
        &self,
        service: &str,
        want: &BTreeMap<String, String>,
    ) -> BTreeMap<String, String> {
        let source = self.to.service(service).map(|s| &s.env);
        want.iter()
            .map(|(k, v)| {
                let v = match source.and_then(|env| env.get(k)) {
                    Some(real) if v.contains(xorb_model::redact::REDACTED) => real.clone(),
                    _ => v.clone(),
                };
                (k.clone(), v)
            })
            .collect()
    }

    fn fully_on_target(&self, st: &StackState) -> bool {
        st.services.iter().all(|s| s.release == self.to.name())
            && st.services.len() == self.to.services.len()
    }

    async fn capture(&self, run_dir: &Path) -> Result<String, StepError> {
        let dir = run_dir.join("capture");
        mkdir(&dir, 0o700).map_err(failed)?;
        let live = observe(&self.state_dir).map_err(failed)?;
        write_file(
            &dir.join("services.json"),
            &serde_json::to_string_pretty(&live).unwrap_or_default(),
        )
        .map_err(failed)?;
        std::fs::copy(StackState::path(&self.state_dir), dir.join("stack.json")).map_err(failed)?;
        // Secrets are captured too, so that a failed rollback can be undone, but only encrypted (age, X25519).
        let secrets = self.secrets()?;
        let identity = capture_identity(&self.state_dir).map_err(failed)?;
        let plain = serde_json::json!({
            "db_password": secrets.db_password,
            "redis_password": secrets.redis_password,
            "tenant_tokens": secrets.tenant_tokens,
        })
        .to_string();
        let recipient = identity.to_public();
        let encrypted = age::encrypt(&recipient, plain.as_bytes())
            .map_err(|e| StepError::fatal(format!("age: {e}")))?;
        write_private(&dir.join("secrets.json.age"), &encrypted).map_err(failed)?;
        Ok(format!(
            "{} services captured into {}",
            live.services.len(),
            dir.display()
        ))
    }

    async fn verify_target(&self) -> Result<String, StepError> {
        let out = tokio::process::Command::new(&self.paths.svc_bin)
            .arg("--list-releases")
            .output()
            .await
            .map_err(|e| {
                StepError::fatal(format!("cannot run {}: {e}", self.paths.svc_bin.display()))
            })?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let known = v["releases"]
            .as_array()
            .is_some_and(|a| a.iter().any(|r| r["name"] == self.to.name()));
        if !known {
            return Err(StepError::fatal(format!(
                "{} does not provide {}: the target release is not available",
                self.paths.svc_bin.display(),
                self.to.name()
            )));
        }
        Ok(format!(
            "{} available: {} services, schema head {}",
            self.to.name(),
            self.to.services.len(),
            self.to.manifest.schema.head
        ))
    }

    async fn integrity(&self, run_dir: &Path, name: &str) -> Result<serde_json::Value, StepError> {
        let st = self.stack()?;
        let client = st.pg(&self.secrets()?).connect().await.map_err(failed)?;
        let scan = xorb_integrity::quick(&client).await.map_err(failed)?;
        let scan = serde_json::to_value(&scan).map_err(failed)?;
        write_file(
            &run_dir.join(name),
            &serde_json::to_string_pretty(&scan).unwrap_or_default(),
        )
        .map_err(failed)?;
        Ok(scan)
    }

    async fn check(&self, name: &str, ctx: &StepContext<'_>) -> Result<StepOutcome, StepError> {
        let st = self.stack()?;
        match name {
            "health" => {
                let mut bad = Vec::new();
                for s in &st.services {
                    match stack::probe_service(&self.http, s.port).await {
                        Ok(h) if h.healthy => {}
                        Ok(h) => bad.push(format!("{}: {}", s.name, h.detail)),
                        Err(e) => bad.push(format!("{}: {e}", s.name)),
                    }
                }
                if bad.is_empty() {
                    Ok(StepOutcome::Succeeded {
                        detail: format!("{} services healthy", st.services.len()),
                    })
                } else {
                    Err(failed(format!("unhealthy: {}", bad.join("; "))))
                }
            }
            "info" => {
                let v = self.api_info(&st).await?;
                if v["release"] == self.to.name() {
                    Ok(StepOutcome::Succeeded {
                        detail: format!(
                            "api reports {} (version {})",
                            v["release"].as_str().unwrap_or(""),
                            v["version"].as_str().unwrap_or("")
                        ),
                    })
                } else {
                    Err(failed(format!(
                        "api reports {} instead of {}",
                        v["release"],
                        self.to.name()
                    )))
                }
            }
            "smoke" => {
                let (token, _) = self.check_tenant(&st, "xorbctl-check-a").await?;
                let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(failed)?;
                let port = listener.local_addr().map_err(failed)?.port();
                let id = self.create_session(&st, &token, port).await?;
                let done = self.wait_session(&st, &token, &id).await?;
                let open = done["findings"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|f| f["port"] == port && f["state"] == "open"));
                drop(listener);
                if open {
                    Ok(StepOutcome::Succeeded {
                        detail: format!("session {id} completed and found 127.0.0.1:{port} open"),
                    })
                } else {
                    Err(failed(format!(
                        "session {id} completed but its findings are wrong: {}",
                        done["findings"]
                    )))
                }
            }
            "tenant-isolation" => {
                let (a, _) = self.check_tenant(&st, "xorbctl-check-a").await?;
                let (b, _) = self.check_tenant(&st, "xorbctl-check-b").await?;
                let id = self.create_session(&st, &a, free_closed_port()?).await?;
                let api = st.base_url("api").unwrap_or_default();
                let r = self
                    .http
                    .get(format!("{api}/api/v1/ptaas/sessions/{id}"))
                    .bearer_auth(&b)
                    .send()
                    .await
                    .map_err(failed)?;
                if r.status().as_u16() == 404 {
                    Ok(StepOutcome::Succeeded {
                        detail: "tenant B gets 404 for tenant A's session".into(),
                    })
                } else {
                    Err(StepError::fatal(format!(
                        "ISOLATION BROKEN: tenant B got HTTP {} for tenant A's session {id}",
                        r.status()
                    )))
                }
            }
            "evidence-legacy" => {
                let v = self.api_info(&st).await?;
                if self.to.manifest.features.evidence_system {
                    // Rolling forward to a release with the evidence system: it must be on, and every record
                    // (re-imported ones included) must verify.
                    if v["features"]["evidence_system"] != true {
                        return Err(failed("the evidence system is not enabled on the api"));
                    }
                    // The services keep recording evidence while we look: a record caught between its row and
                    // its files is complete a moment later, so only a state that persists for 10 s fails.
                    let deadline = std::time::Instant::now() + Duration::from_secs(10);
                    let c = loop {
                        let c = database::critical_check(&self.state_dir)
                            .await
                            .map_err(failed)?;
                        if c.ok || std::time::Instant::now() >= deadline {
                            break c;
                        }
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    };
                    if !c.ok {
                        return Err(StepError::fatal(c.summary()));
                    }
                    return Ok(StepOutcome::Succeeded {
                        detail: format!("evidence system enabled; {}", c.summary()),
                    });
                }
                if v["features"]["evidence_system"] == true {
                    return Err(failed("the evidence system is still enabled on the api"));
                }
                let files = std::fs::read_dir(self.state_dir.join("evidence/records"))
                    .map(|d| d.count())
                    .unwrap_or(0);
                Ok(StepOutcome::Succeeded {
                    detail: format!(
                        "evidence creation disabled; {} evidence files kept on disk",
                        files / 2
                    ),
                })
            }
            "quota" => {
                if !self.to.manifest.features.control_plane {
                    return Ok(StepOutcome::Skipped {
                        reason: format!("{} has no quota system", self.to.name()),
                    });
                }
                let cp = st
                    .base_url("control-plane")
                    .ok_or_else(|| failed("the control plane is missing"))?;
                let r = self
                    .http
                    .get(format!("{cp}/api/v1/health"))
                    .send()
                    .await
                    .map_err(failed)?;
                if r.status().is_success() {
                    Ok(StepOutcome::Succeeded {
                        detail: "control plane healthy".into(),
                    })
                } else {
                    Err(failed("control plane unhealthy"))
                }
            }
            "integrity-quick" => {
                let before_path = ctx.run_dir.join("integrity-before.json");
                let before: serde_json::Value = std::fs::read(&before_path)
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .ok_or_else(|| {
                        StepError::fatal(format!(
                            "{} is missing: phase 1 did not run",
                            before_path.display()
                        ))
                    })?;
                let after = self.integrity(ctx.run_dir, "integrity-after.json").await?;
                let mut lost = Vec::new();
                if let Some(tables) = before["tables"].as_object() {
                    for (t, n) in tables {
                        let now = after["tables"][t].as_i64();
                        if let (Some(b), Some(a)) = (n.as_i64(), now)
                            && a < b
                        {
                            lost.push(format!("{t}: {b} → {a}"));
                        }
                    }
                }
                if lost.is_empty() {
                    Ok(StepOutcome::Succeeded {
                        detail: format!(
                            "no rows lost in {} tables",
                            after["tables"].as_object().map(|o| o.len()).unwrap_or(0)
                        ),
                    })
                } else {
                    Err(StepError::fatal(format!(
                        "rows lost since phase 1: {}",
                        lost.join(", ")
                    )))
                }
            }
            "loss" => Ok(StepOutcome::Succeeded {
                detail: verify::check_loss(self, ctx).await?,
            }),
            other => Err(StepError::Unsupported {
                action: format!("check {other}"),
                why: "unknown check".into(),
            }),
        }
    }

    /// Runs one of phase 5's checks by name outside a run (`xorbctl assess`), with `scratch` as the run directory
    /// for what a check writes. `Ok` with the check's detail when it passed (or was skipped), `Err` with why not.
    pub async fn run_check(&self, name: &str, scratch: &Path) -> Result<String, String> {
        let ctx = StepContext {
            run_id: "assess",
            run_dir: scratch,
            from: self.to.name(),
            to: self.to.name(),
            index: 0,
            attempt: 1,
        };
        match self.check(name, &ctx).await {
            Ok(StepOutcome::Failed { error, .. }) => Err(error),
            Ok(o) => Ok(o.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn api_info(&self, st: &StackState) -> Result<serde_json::Value, StepError> {
        let api = st
            .base_url("api")
            .ok_or_else(|| StepError::fatal("no api service"))?;
        let r = self
            .http
            .get(format!("{api}/api/v1/info"))
            .send()
            .await
            .map_err(failed)?;
        r.json().await.map_err(failed)
    }

    /// A tenant of the tool's own for checks (so checks never act in a customer's name).
    async fn check_tenant(
        &self,
        st: &StackState,
        slug: &str,
    ) -> Result<(String, String), StepError> {
        let mut secrets = self.secrets()?;
        let token = secrets
            .tenant_tokens
            .entry(slug.to_string())
            .or_insert_with(|| {
                use rand::RngCore;
                let mut b = [0u8; 24];
                rand::thread_rng().fill_bytes(&mut b);
                hex::encode(b)
            })
            .clone();
        let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()));
        let client = st.pg(&secrets).connect().await.map_err(failed)?;
        client
            .execute(
                "INSERT INTO tenants (slug, name, token_sha256) VALUES ($1, $1, $2) ON CONFLICT (slug) DO UPDATE SET token_sha256 = EXCLUDED.token_sha256",
                &[&slug, &hash],
            )
            .await
            .map_err(failed)?;
        secrets.save_tenants(&self.state_dir).map_err(failed)?;
        Ok((token, slug.to_string()))
    }

    async fn create_session(
        &self,
        st: &StackState,
        token: &str,
        port: u16,
    ) -> Result<String, StepError> {
        let api = st
            .base_url("api")
            .ok_or_else(|| StepError::fatal("no api service"))?;
        let r = self
            .http
            .post(format!("{api}/api/v1/ptaas/sessions"))
            .bearer_auth(token)
            .json(&serde_json::json!({"targets": [{"host": "127.0.0.1", "ports": [port]}]}))
            .send()
            .await
            .map_err(failed)?;
        let code = r.status();
        let v: serde_json::Value = r.json().await.unwrap_or_default();
        v["id"]
            .as_str()
            .filter(|_| code.is_success())
            .map(str::to_string)
            .ok_or_else(|| failed(format!("session creation answered HTTP {code}: {v}")))
    }

    async fn wait_session(
        &self,
        st: &StackState,
        token: &str,
        id: &str,
    ) -> Result<serde_json::Value, StepError> {
        let api = st.base_url("api").unwrap_or_default();
        stack::wait_session_completed(&self.http, &api, token, id)
            .await
            .ok_or_else(|| failed(format!("session {id} did not complete within 60 s")))
    }
}

fn free_closed_port() -> Result<u16, StepError> {
    crate::process::free_port().map_err(failed)
}

/// The X25519 identity that encrypts captured secrets (created once per stack, 0600, in secrets/).
fn capture_identity(state_dir: &Path) -> Result<age::x25519::Identity, LocalError> {
    use age::secrecy::ExposeSecret;
    let p = state_dir.join("secrets").join("capture.age-identity");
    if let Ok(text) = std::fs::read_to_string(&p)
        && let Ok(id) = text.trim().parse::<age::x25519::Identity>()
    {
        return Ok(id);
    }
    let id = age::x25519::Identity::generate();
    write_private(&p, id.to_string().expose_secret().as_bytes())?;
    Ok(id)
}

impl StepRunner for LocalRunner {
    async fn probe(&self, step: &StepSpec, _ctx: &StepContext<'_>) -> Result<Probe, StepError> {
        let procs = live_service_procs(&self.state_dir);
        match &step.action {
            Action::SetImage {
                service, release, ..
            } => {
                let on: Vec<&LiveProc> = procs.iter().filter(|p| &p.role == service).collect();
                if on.len() == 1 && &on[0].release == release {
                    let st = self.stack()?;
                    let recorded = st.service(service).and_then(|s| s.proc.clone());
                    if recorded.as_ref() == Some(&on[0].proc) {
                        return Ok(Probe::Done {
                            detail: format!("{service} already runs {release}"),
                        });
                    }
                }
                Ok(Probe::NotDone)
            }
            Action::AddService {
                service, release, ..
            } => {
                let on: Vec<&LiveProc> = procs.iter().filter(|p| &p.role == service).collect();
                let st = self.stack()?;
                let recorded = st.service(service).and_then(|s| s.proc.clone());
                Ok(
                    if on.len() == 1
                        && &on[0].release == release
                        && recorded.as_ref() == Some(&on[0].proc)
                    {
                        Probe::Done {
                            detail: format!("{service} already runs {release}"),
                        }
                    } else {
                        Probe::NotDone
                    },
                )
            }
            Action::RemoveService { service } => {
                let st = self.stack()?;
                if procs.iter().all(|p| &p.role != service) && st.service(service).is_none() {
                    Ok(Probe::Done {
                        detail: format!("{service} is not running"),
                    })
                } else {
                    Ok(Probe::NotDone)
                }
            }
            Action::ConfigureServices { services } => {
                let st = self.stack()?;
                let all = services.iter().all(|(name, want)| {
                    let want = &self.unredacted(name, want);
                    let on: Vec<&LiveProc> = procs.iter().filter(|p| &p.role == name).collect();
                    on.len() == 1
                        && &on[0].config() == want
                        && st.service(name).is_some_and(|s| {
                            &s.config == want && s.proc.as_ref() == Some(&on[0].proc)
                        })
                });
                Ok(if all {
                    Probe::Done {
                        detail: "every service runs the target configuration".into(),
                    }
                } else {
                    Probe::NotDone
                })
            }
            Action::Migrate { to_revision, .. } => {
                database::probe_migrate(self, to_revision, _ctx).await
            }
            Action::NatsApply { release } => infra::probe_nats_apply(self, release, _ctx).await,
            Action::RedisApply { release } => infra::probe_redis_apply(self, release, _ctx).await,
            Action::MonitoringApply { release } => {
                infra::probe_monitoring_apply(self, release, _ctx).await
            }
            _ => Ok(Probe::Unknown {
                why: "no probe for this action: it is safe to repeat".into(),
            }),
        }
    }

    async fn run(&self, step: &StepSpec, ctx: &StepContext<'_>) -> Result<StepOutcome, StepError> {
        let timeout = Duration::from_secs(step.timeout_secs.max(1));
        crate::safety::guard_destructive(self, step)?;
        let detail = match &step.action {
            Action::Noop => "nothing to do".to_string(),
            Action::CaptureState => self.capture(ctx.run_dir).await?,
            Action::VerifyTargetAvailable => self.verify_target().await?,
            Action::IntegrityQuick => {
                let v = self.integrity(ctx.run_dir, "integrity-before.json").await?;
                format!(
                    "{} tables counted, schema fingerprint {}",
                    v["tables"].as_object().map(|o| o.len()).unwrap_or(0),
                    v["schema_fingerprint"].as_str().unwrap_or("")
                )
            }
            Action::EnsureStreams { release } => {
                let st = self.stack()?;
                let rel = Release::load_named(&self.paths.releases_root, release)
                    .map_err(|e| StepError::fatal(e.to_string()))?;
                let created = servers::ensure_streams(&st.nats_url(), &rel.streams)
                    .await
                    .map_err(failed)?;
                if created.is_empty() {
                    "all streams already present".into()
                } else {
                    format!("created {}", created.join(", "))
                }
            }
            Action::SetImage { service, image, .. } => {
                // The image changes; the configuration stays as it is until 2.2 applies the target's.
                let st = self.stack()?;
                let config = st
                    .service(service)
                    .map(|s| s.config.clone())
                    .unwrap_or_default();
                self.converge_service(service, image, &config, timeout)
                    .await?
            }
            Action::RemoveService { service } => self.remove_service(service).await?,
            Action::AddService {
                service,
                image,
                release,
            } => self.add_service(service, image, release, timeout).await?,
            Action::ConfigureServices { services } => {
                let mut done = Vec::new();
                for (name, want) in services {
                    let want = &self.unredacted(name, want);
                    let st = self.stack()?;
                    let Some(svc) = st.service(name).cloned() else {
                        continue;
                    };
                    let live_ok = live_service_procs(&self.state_dir).iter().any(|p| {
                        &p.role == name && &p.config() == want && p.release == svc.release
                    });
                    if live_ok && &svc.config == want {
                        continue;
                    }
                    self.converge_service(name, &svc.image, want, timeout)
                        .await?;
                    done.push(name.clone());
                }
                let mut st = self.stack()?;
                if self.fully_on_target(&st) {
                    st.release = self.to.name().to_string();
                    st.save(&self.state_dir).map_err(failed)?;
                }
                if done.is_empty() {
                    "configuration already in place".into()
                } else {
                    format!("reconfigured and restarted {}", done.join(", "))
                }
            }
            Action::Check { name } => return self.check(name, ctx).await,
            Action::DbBackup => database::backup(self, ctx).await?,
            Action::IntegritySnapshot => verify::snapshot(self, ctx).await?,
            Action::DbCompatibility {
                from_revision,
                to_revision,
                release,
            } => database::compatibility(self, from_revision, to_revision, release, ctx).await?,
            Action::Migrate {
                revision,
                to_revision,
                direction,
                data_migration,
                preserve,
            } => {
                database::migrate(
                    self,
                    &database::MigrateStep {
                        revision,
                        to_revision,
                        direction: *direction,
                        data_migration: data_migration.as_deref(),
                        preserve,
                        timeout,
                    },
                    ctx,
                )
                .await?
            }
            Action::DbVerify { revision } => database::verify(self, revision, ctx).await?,
            Action::ReimportPreserved { source_run, kinds } => {
                database::reimport(self, source_run, kinds, ctx).await?
            }
            Action::NatsSave { release } => infra::nats_save(self, release, ctx).await?,
            Action::NatsApply { release } => infra::nats_apply(self, release, ctx).await?,
            Action::RedisBackup => infra::redis_backup(self, ctx).await?,
            Action::RedisApply { release } => infra::redis_apply(self, release, ctx).await?,
            Action::MonitoringValidate { release } => {
                infra::monitoring_validate(self, release, ctx).await?
            }
            Action::MonitoringApply { release } => {
                infra::monitoring_apply(self, release, ctx).await?
            }
            other => {
                return Err(StepError::Unsupported {
                    action: other.kind().to_string(),
                    why: "not supported by the local target yet".into(),
                });
            }
        };
        // A services-only rollback ends with no config step: mark the stack as on the target when it is.
        if matches!(
            step.action,
            Action::SetImage { .. } | Action::RemoveService { .. } | Action::AddService { .. }
        ) {
            let mut st = self.stack()?;
            if self.fully_on_target(&st) && st.release != self.to.name() {
                st.release = self.to.name().to_string();
                st.save(&self.state_dir).map_err(failed)?;
            }
        }
        Ok(StepOutcome::Succeeded { detail })
    }

    async fn emergency(
        &self,
        procedure: EmergencyProcedure,
        _ctx: &StepContext<'_>,
    ) -> Result<String, StepError> {
        crate::safety::emergency(self, procedure).await
    }
}
