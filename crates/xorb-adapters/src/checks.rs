//! The checks of phase 5 and the gates after service steps, for every target: they talk to the services' own
//! API and to the database through the endpoints, as a client would. One case per [`Check`]: a check the policy
//! can name is a check that runs.

use std::path::Path;
use std::time::Duration;

use xorb_engine::runner::{StepContext, StepError};
use xorb_model::check::Check;
use xorb_model::plan::StepOutcome;

use crate::context::{TargetRunner, failed};
use crate::services::{probe_service, wait_session_completed};
use crate::target::{Endpoints, Target};

/// Phase 1 counts a table's rows only up to this many pages (8 MiB); a larger one's count is estimated.
pub(crate) const QUICK_EXACT_PAGES: u64 = 1024;

/// Which services a check looks at: all of them (phase 5) or the ones a step just changed (a gate).
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    All,
    Services(&'a [String]),
}

impl Scope<'_> {
    fn includes(&self, name: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Services(s) => s.iter().any(|n| n == name),
        }
    }
}

impl<T: Target> TargetRunner<T> {
    /// The services that run now (as the target observes them, not as an address book lists them: a removed
    /// service is not checked), in scope, each with its address when the target has one.
    async fn live_services(
        &self,
        ep: &crate::target::Endpoints,
        scope: Scope<'_>,
    ) -> Result<Vec<(String, Option<String>)>, StepError> {
        Ok(self
            .target
            .observe()
            .await?
            .services
            .into_iter()
            .filter(|s| scope.includes(&s.name))
            .map(|s| {
                let base = ep.service(&s.name).map(str::to_string);
                (s.name, base)
            })
            .collect())
    }

    pub(crate) async fn check(
        &self,
        check: Check,
        scope: Scope<'_>,
        since_secs: Option<u64>,
        ctx: &StepContext<'_>,
    ) -> Result<StepOutcome, StepError> {
        let ep = self.endpoints()?;
        match check {
            Check::Health => {
                let mut bad = Vec::new();
                let mut n = 0;
                for (name, base) in self.live_services(&ep, scope).await? {
                    n += 1;
                    let Some(base) = base else {
                        bad.push(format!("{name}: the target gives no address for it"));
                        continue;
                    };
                    match probe_service(&self.http, &base).await {
                        Ok(h) if h.healthy => {}
                        Ok(h) => bad.push(format!("{name}: {}", h.detail)),
                        Err(e) => bad.push(format!("{name}: {e}")),
                    }
                }
                if bad.is_empty() {
                    Ok(StepOutcome::succeeded(format!("{n} services healthy")))
                } else {
                    Err(failed(format!("unhealthy: {}", bad.join("; "))))
                }
            }
            Check::Release => {
                let mut wrong = Vec::new();
                let mut n = 0;
                for (name, base) in self.live_services(&ep, scope).await? {
                    n += 1;
                    let Some(base) = base else {
                        wrong.push(format!("{name}: the target gives no address for it"));
                        continue;
                    };
                    match probe_service(&self.http, &base).await {
                        Ok(h) if h.release.as_deref() == Some(self.to.name()) => {}
                        Ok(h) => wrong.push(format!(
                            "{name} reports {}",
                            h.release.as_deref().unwrap_or("no release")
                        )),
                        Err(e) => wrong.push(format!("{name}: {e}")),
                    }
                }
                if wrong.is_empty() {
                    Ok(StepOutcome::succeeded(format!(
                        "{n} services report {}",
                        self.to.name()
                    )))
                } else {
                    Err(failed(format!(
                        "not on {}: {}",
                        self.to.name(),
                        wrong.join("; ")
                    )))
                }
            }
            Check::Info => {
                let v = self.api_info(&ep).await?;
                if v["release"] == self.to.name() {
                    Ok(StepOutcome::succeeded(format!(
                        "api reports {} (version {})",
                        v["release"].as_str().unwrap_or(""),
                        v["version"].as_str().unwrap_or("")
                    )))
                } else {
                    Err(failed(format!(
                        "api reports {} instead of {}",
                        v["release"],
                        self.to.name()
                    )))
                }
            }
            Check::Smoke => {
                let token = self.check_tenant(&ep, "xorbctl-check-a").await?;
                let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(failed)?;
                let port = listener.local_addr().map_err(failed)?.port();
                let id = self.create_session(&ep, &token, port).await?;
                let done = self.wait_session(&ep, &token, &id).await?;
                let open = done["findings"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|f| f["port"] == port && f["state"] == "open"));
                drop(listener);
                if open {
                    Ok(StepOutcome::succeeded(format!(
                        "session {id} completed and found 127.0.0.1:{port} open"
                    )))
                } else {
                    Err(failed(format!(
                        "session {id} completed but its findings are wrong: {}",
                        done["findings"]
                    )))
                }
            }
            Check::TenantIsolation => {
                let a = self.check_tenant(&ep, "xorbctl-check-a").await?;
                let b = self.check_tenant(&ep, "xorbctl-check-b").await?;
                let closed = free_closed_port()?;
                let id = self.create_session(&ep, &a, closed).await?;
                let api = ep.service("api").unwrap_or_default();
                let r = self
                    .http
                    .get(format!("{api}/api/v1/ptaas/sessions/{id}"))
                    .bearer_auth(&b)
                    .send()
                    .await
                    .map_err(failed)?;
                if r.status().as_u16() == 404 {
                    Ok(StepOutcome::succeeded(
                        "tenant B gets 404 for tenant A's session",
                    ))
                } else {
                    Err(StepError::fatal(format!(
                        "ISOLATION BROKEN: tenant B got HTTP {} for tenant A's session {id}",
                        r.status()
                    )))
                }
            }
            Check::EvidenceLegacy => self.evidence_legacy(&ep).await,
            Check::Quota => {
                if !self.to.manifest.features.control_plane {
                    return Ok(StepOutcome::Skipped {
                        reason: format!("{} has no quota system", self.to.name()),
                    });
                }
                let cp = ep
                    .service("control-plane")
                    .ok_or_else(|| failed("the control plane is missing"))?;
                let r = self
                    .http
                    .get(format!("{cp}/api/v1/health"))
                    .send()
                    .await
                    .map_err(failed)?;
                if r.status().is_success() {
                    Ok(StepOutcome::succeeded("control plane healthy"))
                } else {
                    Err(failed("control plane unhealthy"))
                }
            }
            Check::Monitoring => crate::monitoring_restored::monitoring_restored(self).await,
            // Outside a plan (no journaled parameters): the embedded runbook's.
            Check::Performance => {
                self.check_performance(&xorb_model::policy::Policy::embedded().performance, ctx)
                    .await
            }
            Check::IntegrityQuick => self.integrity_quick(ctx).await,
            Check::IntegrityFull => Ok(StepOutcome::succeeded(
                crate::integrity::check_full(self, ctx).await?,
            )),
            Check::Loss => Ok(StepOutcome::succeeded(
                crate::integrity::check_loss(self, ctx).await?,
            )),
            // The runbook's `--since "1 hour ago"` when the plan names no window (a gate, `assess`).
            Check::AuditLog => {
                crate::pg::audit_check::check_audit_log(
                    self,
                    ctx,
                    Duration::from_secs(since_secs.unwrap_or(3600)),
                )
                .await
            }
        }
    }

    /// Runs one check by name outside a run (`xorbctl assess`), with `scratch` as the run directory for what a
    /// check writes. `Ok` with the check's detail when it passed (or was skipped), `Err` with why not.
    pub async fn run_check(&self, name: &str, scratch: &Path) -> Result<String, String> {
        self.run_check_for(name, scratch, None).await
    }

    /// As [`Self::run_check`], with a window for a check over recent data (`audit-log`).
    pub async fn run_check_for(
        &self,
        name: &str,
        scratch: &Path,
        since_secs: Option<u64>,
    ) -> Result<String, String> {
        let check = Check::parse(name)
            .ok_or_else(|| format!("unknown check {name:?} (known: {})", Check::names()))?;
        let ctx = StepContext {
            run_id: "assess",
            step_id: "assess",
            run_dir: scratch,
            from: self.to.name(),
            to: self.to.name(),
            index: 0,
            attempt: 1,
        };
        match self.check(check, Scope::All, since_secs, &ctx).await {
            Ok(StepOutcome::Failed { error, .. }) => Err(error),
            Ok(o) => Ok(o.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The quick scan (row counts and the schema's fingerprint), written to `<run>/<name>`. `bounded`: a table
    /// larger than [`QUICK_EXACT_PAGES`] gets its estimated count, so the scan's time does not grow with the
    /// database (phase 1, on the critical path); else every count is exact.
    pub(crate) async fn integrity(
        &self,
        run_dir: &Path,
        name: &str,
        bounded: bool,
    ) -> Result<serde_json::Value, StepError> {
        let client = self.pg()?.connect().await.map_err(failed)?;
        let scan = if bounded {
            xorb_integrity::quick_bounded(&client, QUICK_EXACT_PAGES).await
        } else {
            xorb_integrity::quick(&client).await
        }
        .map_err(failed)?;
        let scan = serde_json::to_value(&scan).map_err(failed)?;
        crate::files::write_file(
            &run_dir.join(name),
            &serde_json::to_string_pretty(&scan).unwrap_or_default(),
        )?;
        Ok(scan)
    }

    async fn integrity_quick(&self, ctx: &StepContext<'_>) -> Result<StepOutcome, StepError> {
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
        let after = self
            .integrity(ctx.run_dir, "integrity-after.json", false)
            .await?;
        // A table phase 1 only estimated is held to the backup's exact count when the run took one (phase 3's
        // snapshot, later than phase 1, so no looser); without one its estimate proves nothing either way.
        let snapshot = crate::pg::snapshot::read_full_report(ctx.run_dir).ok();
        let estimated: Vec<&str> = before["estimated"]
            .as_array()
            .map(|a| a.iter().filter_map(|t| t.as_str()).collect())
            .unwrap_or_default();
        let mut lost = Vec::new();
        let (mut against_backup, mut unchecked) = (0, Vec::new());
        if let Some(tables) = before["tables"].as_object() {
            for (t, n) in tables {
                let b = if estimated.contains(&t.as_str()) {
                    let exact = snapshot
                        .as_ref()
                        .and_then(|s| s.tables.iter().find(|x| &x.table == t))
                        .map(|x| x.rows as i64);
                    let Some(exact) = exact else {
                        unchecked.push(t.as_str());
                        continue;
                    };
                    against_backup += 1;
                    Some(exact)
                } else {
                    n.as_i64()
                };
                if let (Some(b), Some(a)) = (b, after["tables"][t].as_i64())
                    && a < b
                {
                    lost.push(format!("{t}: {b} → {a}"));
                }
            }
        }
        if lost.is_empty() {
            let mut detail = format!(
                "no rows lost in {} tables",
                after["tables"].as_object().map(|o| o.len()).unwrap_or(0)
            );
            if against_backup > 0 {
                detail.push_str(&format!(
                    " ({against_backup} too large to count in phase 1 held to the backup's exact counts)"
                ));
            }
            if !unchecked.is_empty() {
                detail.push_str(&format!(
                    "; not compared, phase 1 only estimated them and this run took no backup: {}",
                    unchecked.join(", ")
                ));
            }
            Ok(StepOutcome::succeeded(detail))
        } else {
            Err(StepError::fatal(format!(
                "rows lost since phase 1: {}",
                lost.join(", ")
            )))
        }
    }

    async fn evidence_legacy(&self, ep: &Endpoints) -> Result<StepOutcome, StepError> {
        let v = self.api_info(ep).await?;
        if self.to.manifest.features.evidence_system {
            // Rolling forward to a release with the evidence system: it must be on, and every record
            // (re-imported ones included) must verify.
            if v["features"]["evidence_system"] != true {
                return Err(failed("the evidence system is not enabled on the api"));
            }
            // The services keep recording evidence while we look: a record caught between its row and its files
            // is complete a moment later, so only a state that persists for 10 s fails.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            let evidence = self.target.evidence_dir();
            let c = loop {
                let c = crate::pg::critical_check(&ep.postgres, &evidence)
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
            return Ok(StepOutcome::succeeded(format!(
                "evidence system enabled; {}",
                c.summary()
            )));
        }
        if v["features"]["evidence_system"] == true {
            return Err(failed("the evidence system is still enabled on the api"));
        }
        let files = std::fs::read_dir(
            self.target
                .evidence_dir()
                .join(crate::evidence::RECORDS_DIR),
        )
        .map(|d| d.count())
        .unwrap_or(0);
        Ok(StepOutcome::succeeded(format!(
            "evidence creation disabled; {} evidence files kept on disk",
            files / 2
        )))
    }

    pub(crate) async fn api_info(&self, ep: &Endpoints) -> Result<serde_json::Value, StepError> {
        let api = ep
            .service("api")
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
    pub(crate) async fn check_tenant(
        &self,
        ep: &Endpoints,
        slug: &str,
    ) -> Result<String, StepError> {
        let token = self.target.check_token(slug)?;
        let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()));
        let client = ep.postgres.connect().await.map_err(failed)?;
        client
            .execute(
                "INSERT INTO tenants (slug, name, token_sha256) VALUES ($1, $1, $2) ON CONFLICT (slug) DO UPDATE SET token_sha256 = EXCLUDED.token_sha256",
                &[&slug, &hash],
            )
            .await
            .map_err(failed)?;
        Ok(token)
    }

    async fn create_session(
        &self,
        ep: &Endpoints,
        token: &str,
        port: u16,
    ) -> Result<String, StepError> {
        let api = ep
            .service("api")
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
        ep: &Endpoints,
        token: &str,
        id: &str,
    ) -> Result<serde_json::Value, StepError> {
        let api = ep.service("api").unwrap_or_default();
        wait_session_completed(&self.http, api, token, id)
            .await
            .ok_or_else(|| failed(format!("session {id} did not complete within 60 s")))
    }
}

/// A port nothing listens on (bound, then released), for a session whose target must be closed.
fn free_closed_port() -> Result<u16, StepError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(failed)?;
    Ok(l.local_addr().map_err(failed)?.port())
}
