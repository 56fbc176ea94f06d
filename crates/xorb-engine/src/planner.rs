//! The planner: compares what runs with the target release and computes the steps, in the runbook's phases.
//! Pure: the caller observes the live stack (through its target adapter) and passes what it saw.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use xorb_model::plan::{Action, Change, ChangeKind, FailurePolicy, Phase, Plan, Safety, StepSpec};
use xorb_model::policy::Policy;
use xorb_model::release::Release;

/// One service as observed on the live stack.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LiveService {
    pub name: String,
    pub image: String,
    pub release: String,
    pub config: BTreeMap<String, String>,
}

/// What the planner needs to know about the live stack.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LiveState {
    /// The release the stack was brought up on or last fully rolled to.
    pub release: String,
    pub services: Vec<LiveService>,
    /// The database, when the target adapter could observe it (None: phase 3 cannot be planned).
    #[serde(default)]
    pub database: Option<xorb_model::schema::LiveDatabase>,
}

/// What part of the stack a run touches (`--only`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    All,
    Api,
    Services,
    Config,
    Database,
    Infrastructure,
}

impl Scope {
    pub fn parse(s: &str) -> Result<Self, PlanError> {
        Ok(match s {
            "api" => Scope::Api,
            "services" => Scope::Services,
            "config" => Scope::Config,
            "database" => Scope::Database,
            "infrastructure" => Scope::Infrastructure,
            other => {
                return Err(PlanError::BadScope(format!(
                    "--only {other:?}: use api, services, config, database or infrastructure"
                )));
            }
        })
    }

    fn name(self) -> Option<String> {
        match self {
            Scope::All => None,
            other => Some(format!("{other:?}").to_lowercase()),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PlanError {
    #[error(
        "the live stack is on {live}, not on {from}: nothing to roll back from {from} (check `xorbctl status`, or pass --from {live})"
    )]
    WrongFrom { live: String, from: String },
    #[error("{0}")]
    BadScope(String),
    #[error("--from and --to are both {0}: nothing to roll back")]
    SameRelease(String),
    #[error(
        "--only {0} is not available yet: the stateful steps of phases 3 and 4 (database, NATS, Redis, monitoring) are not part of this version"
    )]
    NotYetSupported(String),
}

/// Computes the plan. `from` must be what runs (all services, or for a partial earlier run, the stack's release).
pub fn plan(
    live: &LiveState,
    from: &Release,
    to: &Release,
    policy: &Policy,
    scope: Scope,
) -> Result<Plan, PlanError> {
    if from.name() == to.name() {
        return Err(PlanError::SameRelease(to.name().into()));
    }
    if live.release != from.name() {
        return Err(PlanError::WrongFrom {
            live: live.release.clone(),
            from: from.name().into(),
        });
    }
    if matches!(scope, Scope::Database | Scope::Infrastructure) {
        return Err(PlanError::NotYetSupported(scope.name().unwrap_or_default()));
    }
    let t = &policy.timeouts;
    let mut steps: Vec<StepSpec> = Vec::new();
    let step = |id: String, phase: Phase, title: String, action: Action, safety: Safety| {
        let mut s = StepSpec::new(id, phase, title, action, safety);
        s.timeout_secs = t.check_secs;
        s
    };

    // Phase 1: assessment and state capture.
    let mut s = step(
        "1.state.capture".into(),
        Phase::Assessment,
        "Capture services, releases and configuration".into(),
        Action::CaptureState,
        Safety::Idempotent,
    );
    s.timeout_secs = t.capture_secs;
    steps.push(s);
    steps.push(step(
        "1.target.verify".into(),
        Phase::Assessment,
        format!("Verify that {} is available", to.name()),
        Action::VerifyTargetAvailable,
        Safety::Idempotent,
    ));
    steps.push(step(
        "1.integrity.quick".into(),
        Phase::Assessment,
        "Quick data-integrity scan (row counts, schema fingerprint)".into(),
        Action::IntegrityQuick,
        Safety::Idempotent,
    ));
    let expand: Vec<String> = to.streams.iter().map(|s| s.name.clone()).collect();
    if scope != Scope::Config {
        let mut s = step(
            "1.streams.expand".into(),
            Phase::Assessment,
            format!(
                "Create {}'s streams that do not exist yet (additive; nothing is removed before phase 4)",
                to.name()
            ),
            Action::EnsureStreams {
                release: to.name().into(),
            },
            Safety::Idempotent,
        );
        s.changes = expand
            .iter()
            .map(|n| Change {
                kind: ChangeKind::Stream,
                subject: n.clone(),
                before: None,
                after: Some("ensure present".into()),
            })
            .collect();
        steps.push(s);
    }

    // Phase 2.1: services, in the policy's order.
    let service_policy: FailurePolicy = Policy::failure_policy(&policy.services);
    let wants_services = matches!(scope, Scope::All | Scope::Services | Scope::Api);
    if wants_services {
        for name in &policy.service_order {
            if scope == Scope::Api && name != "api" {
                continue;
            }
            let Some(live_svc) = live.services.iter().find(|s| &s.name == name) else {
                continue;
            };
            match to.service(name) {
                Some(target) if target.image != live_svc.image => {
                    let mut s = step(
                        format!("2.{name}.image"),
                        Phase::Services,
                        format!("Roll {name} back to {}", target.image),
                        Action::SetImage {
                            service: name.clone(),
                            image: target.image.clone(),
                            release: to.name().into(),
                        },
                        Safety::Probed,
                    );
                    s.timeout_secs = t.rollout_secs;
                    s.policy = service_policy.clone();
                    s.checks = policy.checks.after_service.clone();
                    s.changes.push(Change {
                        kind: ChangeKind::Image,
                        subject: name.clone(),
                        before: Some(live_svc.image.clone()),
                        after: Some(target.image.clone()),
                    });
                    steps.push(s);
                }
                Some(_) => {}
                None if scope != Scope::Api => {
                    let mut s = step(
                        format!("2.{name}.remove"),
                        Phase::Services,
                        format!("Remove {name}: {} does not have it", to.name()),
                        Action::RemoveService {
                            service: name.clone(),
                        },
                        Safety::Probed,
                    );
                    s.timeout_secs = t.rollout_secs;
                    s.changes.push(Change {
                        kind: ChangeKind::ServiceRemoved,
                        subject: name.clone(),
                        before: Some(live_svc.image.clone()),
                        after: None,
                    });
                    steps.push(s);
                }
                None => {}
            }
        }
    }

    // Phase 2.2: configuration, with the known limitations' settings on top of the target's own.
    if matches!(scope, Scope::All | Scope::Config | Scope::Api) {
        let forced = policy.forced_settings(to.name());
        let mut changes = Vec::new();
        let mut desired: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for live_svc in &live.services {
            if scope == Scope::Api && live_svc.name != "api" {
                continue;
            }
            let Some(target) = to.service(&live_svc.name) else {
                continue;
            };
            let mut want = target.env.clone();
            want.extend(forced.clone());
            for (k, v) in &want {
                let before = live_svc.config.get(k);
                if before != Some(v) {
                    changes.push(Change {
                        kind: ChangeKind::Config,
                        subject: format!("{}/{k}", live_svc.name),
                        before: before.cloned(),
                        after: Some(v.clone()),
                    });
                }
            }
            for k in live_svc.config.keys().filter(|k| !want.contains_key(*k)) {
                changes.push(Change {
                    kind: ChangeKind::Config,
                    subject: format!("{}/{k}", live_svc.name),
                    before: live_svc.config.get(k).cloned(),
                    after: None,
                });
            }
            desired.insert(live_svc.name.clone(), want);
        }
        if !changes.is_empty() {
            let mut s = step(
                if scope == Scope::Api {
                    "2.api.config".into()
                } else {
                    "2.config.apply".into()
                },
                Phase::Services,
                format!(
                    "Apply {}'s configuration (and the runbook's known limitations)",
                    to.name()
                ),
                Action::ConfigureServices { services: desired },
                Safety::Probed,
            );
            s.timeout_secs = t.rollout_secs;
            s.policy = Policy::failure_policy(&policy.config);
            s.checks = policy.checks.after_service.clone();
            s.changes = changes;
            steps.push(s);
        }
    }

    // Phase 5: verification.
    let checks: Vec<&String> = match scope {
        Scope::All | Scope::Services => policy.checks.verification.iter().collect(),
        _ => policy
            .checks
            .verification
            .iter()
            .filter(|c| matches!(c.as_str(), "health" | "info"))
            .collect(),
    };
    for c in checks {
        let mut s = step(
            format!("5.check.{c}"),
            Phase::Verification,
            check_title(c, to.name()),
            Action::Check { name: c.clone() },
            Safety::Idempotent,
        );
        s.checks = vec![c.clone()];
        steps.push(s);
    }

    let mut p = Plan::new(from.name(), to.name());
    p.scope = scope.name();
    p.steps = steps;
    Ok(p)
}

fn check_title(name: &str, to: &str) -> String {
    match name {
        "health" => "Every service healthy".into(),
        "info" => format!("/api/v1/info reports {to}"),
        "smoke" => "Smoke test: a PTaaS session against a loopback target completes".into(),
        "tenant-isolation" => "Tenant isolation: one tenant cannot see another's sessions".into(),
        "evidence-legacy" => {
            "Evidence in legacy mode: existing evidence preserved, no new evidence created".into()
        }
        "quota" => "Quota system (skipped where the release has none)".into(),
        "integrity-quick" => "Quick integrity scan: no rows lost since phase 1".into(),
        other => other.to_string(),
    }
}
