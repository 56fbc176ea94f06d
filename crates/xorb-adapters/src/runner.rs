//! The one implementation of the engine's `StepRunner`, generic over the [`Target`]: the stateful steps go through
//! the shared adapters and the target's endpoints; workload steps through the target's operations. A new target
//! implements only [`Target`].

use std::collections::BTreeMap;
use std::time::Duration;

use xorb_engine::runner::{Probe, StepContext, StepError, StepRunner};
use xorb_model::check::{Check, CheckRun};
use xorb_model::plan::{Action, CheckParams, EmergencyProcedure, StepOutcome, StepSpec};

use crate::checks::Scope;
use crate::context::{TargetRunner, failed};
use crate::pg;
use crate::target::Target;
use crate::{monitoring, nats, redis, safety};

impl<T: Target> TargetRunner<T> {
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

    async fn configure(
        &self,
        services: &BTreeMap<String, BTreeMap<String, String>>,
        timeout: Duration,
    ) -> Result<String, StepError> {
        let wanted: BTreeMap<String, BTreeMap<String, String>> = services
            .iter()
            .map(|(name, want)| (name.clone(), self.unredacted(name, want)))
            .collect();
        self.target.share_configuration(&wanted).await?;
        let mut done = Vec::new();
        for (name, want) in &wanted {
            let live = self.target.observe().await?;
            let Some(svc) = live.services.iter().find(|s| &s.name == name) else {
                continue;
            };
            if self
                .target
                .converged(name, &svc.release, Some(want))
                .await?
            {
                continue;
            }
            self.target
                .set_workload(name, &svc.image, want, timeout)
                .await?;
            done.push(name.clone());
        }
        Ok(if done.is_empty() {
            "configuration already in place".into()
        } else {
            format!("reconfigured and restarted {}", done.join(", "))
        })
    }

    /// Runs the step's gate checks (the policy's `after_service`) on the services it changed; the first that
    /// fails fails the step. Returns what ran, each passed.
    async fn gates(
        &self,
        step: &StepSpec,
        ctx: &StepContext<'_>,
    ) -> Result<Vec<CheckRun>, StepError> {
        let services: Vec<String> = match &step.action {
            Action::SetImage { service, .. } | Action::AddService { service, .. } => {
                vec![service.clone()]
            }
            Action::ConfigureServices { services } => services.keys().cloned().collect(),
            _ => Vec::new(),
        };
        let mut ran = Vec::new();
        for name in &step.checks {
            let check = Check::parse(name).ok_or_else(|| {
                StepError::fatal(format!(
                    "the plan names check {name:?}, which this version does not know (known: {})",
                    Check::names()
                ))
            })?;
            let scope = if services.is_empty() {
                Scope::All
            } else {
                Scope::Services(&services)
            };
            match self.check(check, scope, None, ctx).await {
                Ok(StepOutcome::Failed { error, retryable }) => {
                    return Err(StepError::Failed {
                        message: format!("check {name} after the step failed: {error}"),
                        retryable,
                    });
                }
                Ok(o) => ran.push(CheckRun {
                    check: name.clone(),
                    passed: true,
                    detail: o.text().to_string(),
                }),
                Err(e) => {
                    return Err(StepError::Failed {
                        message: format!("check {name} after the step failed: {e}"),
                        retryable: e.is_retryable(),
                    });
                }
            }
        }
        Ok(ran)
    }

    async fn act(&self, step: &StepSpec, ctx: &StepContext<'_>) -> Result<String, StepError> {
        let timeout = Duration::from_secs(step.timeout_secs.max(1));
        Ok(match &step.action {
            Action::Noop => "nothing to do".to_string(),
            Action::CaptureState => {
                let dir = crate::files::private_dir(&ctx.run_dir.join("capture"))?;
                self.target.capture(&dir).await?
            }
            Action::VerifyTargetAvailable => self.target.verify_available(&self.to).await?,
            Action::IntegrityQuick => {
                let v = self
                    .integrity(ctx.run_dir, "integrity-before.json", true)
                    .await?;
                let estimated = v["estimated"].as_array().map_or(0, |a| a.len());
                format!(
                    "{} tables counted{}, schema fingerprint {}",
                    v["tables"].as_object().map(|o| o.len()).unwrap_or(0),
                    if estimated > 0 {
                        format!(
                            " ({estimated} larger than {} MiB estimated, not read)",
                            crate::checks::QUICK_EXACT_PAGES * 8 / 1024
                        )
                    } else {
                        String::new()
                    },
                    v["schema_fingerprint"].as_str().unwrap_or("")
                )
            }
            Action::EnsureStreams { release } => {
                let rel = self.release(release)?;
                let created = nats::ensure_streams(&self.endpoints()?.nats, &rel.streams)
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
                let live = self.target.observe().await?;
                let config = live
                    .services
                    .iter()
                    .find(|s| &s.name == service)
                    .map(|s| s.config.clone())
                    .unwrap_or_default();
                self.target
                    .set_workload(service, image, &config, timeout)
                    .await?
            }
            Action::RemoveService { service } => self.target.remove_workload(service).await?,
            Action::AddService {
                service,
                image,
                release,
            } => {
                let config = self
                    .to
                    .service(service)
                    .map(|s| s.env.clone())
                    .ok_or_else(|| {
                        StepError::fatal(format!("{} has no service {service}", self.to.name()))
                    })?;
                self.target
                    .add_workload(service, image, release, &config, timeout)
                    .await?
            }
            Action::ConfigureServices { services } => self.configure(services, timeout).await?,
            Action::ApplyObjects { from, release } => {
                let (from, to) = (self.release(from)?, self.release(release)?);
                self.target.apply_objects(&from, &to).await?
            }
            Action::DbBackup => pg::backup::backup(self, ctx).await?,
            Action::BackupProof => pg::proof::prove(self, ctx).await?,
            Action::DbCompatibility {
                from_revision,
                to_revision,
                release,
            } => pg::compat::compatibility(self, from_revision, to_revision, release, ctx).await?,
            Action::Migrate {
                revision,
                to_revision,
                direction,
                data_migration,
                preserve,
            } => {
                pg::migrate::migrate(
                    self,
                    &pg::MigrateStep {
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
            Action::DbVerify { revision } => pg::schema::verify(self, revision, ctx).await?,
            Action::DbRestore { source_run } => pg::restore::restore(self, source_run, ctx).await?,
            Action::DbSwitch { source_run, .. } => {
                pg::restore::switch(self, source_run, ctx, timeout).await?
            }
            Action::ReimportPreserved { source_run, kinds } => {
                pg::reimport::reimport(self, source_run, kinds, ctx).await?
            }
            Action::NatsSave { release } => nats::nats_save(self, release, ctx).await?,
            Action::NatsApply { release } => nats::nats_apply(self, release, ctx).await?,
            Action::RedisBackup => redis::redis_backup(self, ctx).await?,
            Action::RedisApply { release } => redis::redis_apply(self, release, ctx).await?,
            Action::MonitoringValidate { release } => {
                monitoring::monitoring_validate(self, release, ctx).await?
            }
            Action::MonitoringApply { release } => {
                monitoring::monitoring_apply(self, release, ctx).await?
            }
            Action::Check { .. } => unreachable!("checks are run by `run`"),
            other => {
                return Err(StepError::Unsupported {
                    action: other.kind().to_string(),
                    why: format!("not supported by the {} target yet", self.target.kind()),
                });
            }
        })
    }
}

impl<T: Target> StepRunner for TargetRunner<T> {
    async fn probe(&self, step: &StepSpec, ctx: &StepContext<'_>) -> Result<Probe, StepError> {
        let done = |detail: String| Ok(Probe::Done { detail });
        match &step.action {
            Action::SetImage {
                service, release, ..
            }
            | Action::AddService {
                service, release, ..
            } => {
                if self.target.converged(service, release, None).await? {
                    done(format!("{service} already runs {release}"))
                } else {
                    Ok(Probe::NotDone)
                }
            }
            Action::RemoveService { service } => {
                if self.target.removed(service).await? {
                    done(format!("{service} is not running"))
                } else {
                    Ok(Probe::NotDone)
                }
            }
            Action::ConfigureServices { services } => {
                let live = self.target.observe().await?;
                for (name, want) in services {
                    let want = self.unredacted(name, want);
                    let release = live
                        .services
                        .iter()
                        .find(|s| &s.name == name)
                        .map(|s| s.release.clone());
                    let Some(release) = release else {
                        return Ok(Probe::NotDone);
                    };
                    if !self.target.converged(name, &release, Some(&want)).await? {
                        return Ok(Probe::NotDone);
                    }
                }
                done("every service runs the target configuration".into())
            }
            Action::Migrate { to_revision, .. } => {
                pg::migrate::probe_migrate(self, to_revision, ctx).await
            }
            Action::NatsApply { release } => nats::probe_nats_apply(self, release, ctx).await,
            Action::RedisApply { release } => redis::probe_redis_apply(self, release, ctx).await,
            Action::MonitoringApply { release } => {
                monitoring::probe_monitoring_apply(self, release, ctx).await
            }
            _ => Ok(Probe::Unknown {
                why: "no probe for this action: it is safe to repeat".into(),
            }),
        }
    }

    async fn run(&self, step: &StepSpec, ctx: &StepContext<'_>) -> Result<StepOutcome, StepError> {
        safety::guard_destructive(self, step).await?;
        if let Action::Check { name, params } = &step.action {
            let check = Check::parse(name).ok_or_else(|| StepError::Unsupported {
                action: format!("check {name}"),
                why: format!("unknown check (known: {})", Check::names()),
            })?;
            // A check with the runbook's parameters runs with those the plan journaled.
            if let Some(CheckParams::Performance(p)) = params {
                return self.check_performance(p, ctx).await;
            }
            let since_secs = match params {
                Some(CheckParams::AuditLog { since_secs }) => Some(*since_secs),
                _ => None,
            };
            return self.check(check, Scope::All, since_secs, ctx).await;
        }
        let detail = self.act(step, ctx).await?;
        // A services-only rollback ends with no configuration step: the target records its release when every
        // service runs it.
        if matches!(
            step.action,
            Action::SetImage { .. }
                | Action::RemoveService { .. }
                | Action::AddService { .. }
                | Action::ConfigureServices { .. }
        ) {
            self.target.settle(&self.to)?;
        }
        let checks = self.gates(step, ctx).await?;
        Ok(StepOutcome::Succeeded { detail, checks })
    }

    async fn emergency(
        &self,
        procedure: EmergencyProcedure,
        ctx: &StepContext<'_>,
    ) -> Result<String, StepError> {
        if procedure == EmergencyProcedure::RestoreBackup {
            return pg::restore::emergency(self, ctx).await;
        }
        safety::emergency(self, procedure).await
    }
}
