//! The planner: compares what runs with the target release and computes the steps, in the runbook's phases.
//! Pure: the caller observes the live stack (through its target adapter) and passes what it saw.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use xorb_model::plan::{
    Action, Change, ChangeKind, CheckParams, FailurePolicy, MigrationDirection, Phase, Plan,
    Preserve, Safety, StepSpec,
};
use xorb_model::policy::Policy;
use xorb_model::release::Release;

mod restore;
mod touches;
pub use restore::{BackupToRestore, plan_restore};

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
    /// The JetStream streams that exist, when the target could list them (None: not looked at).
    #[serde(default)]
    pub streams: Option<Vec<String>>,
    /// The target runs the releases' cluster objects (network policies, secrets) from their manifests, so a
    /// rollback applies the target release's (Kubernetes; not the local stack, which has none).
    #[serde(default)]
    pub cluster_objects: bool,
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
        "the database could not be observed, so phase 3 cannot be planned: {0} (is PostgreSQL up? `xorbctl status`)"
    )]
    NoDatabase(String),
    #[error("{0}")]
    Schema(String),
    #[error("{0}")]
    BadOption(String),
    /// A destructive step would run while a service that cannot run on its result is still up.
    #[error(
        "refusing the plan: step {step} would run while {service} still runs {release}, and {why}. Nothing was done. Roll {service} back before this step: a full rollback, or `--only services` first (and the runbook policy's service_order must give it a place)"
    )]
    Incompatible {
        step: String,
        service: String,
        release: String,
        why: String,
    },
}

impl PlanError {
    /// This error's exit code (`docs/exit-codes.md`).
    pub fn exit(&self) -> xorb_model::exit::Exit {
        use xorb_model::exit::Exit;
        match self {
            PlanError::WrongFrom { .. } | PlanError::Schema(_) | PlanError::Incompatible { .. } => {
                Exit::Refused
            }
            PlanError::NoDatabase(_) => Exit::DependencyFailed,
            PlanError::BadScope(_) | PlanError::SameRelease(_) | PlanError::BadOption(_) => {
                Exit::BadInput
            }
        }
    }
}

/// Everything about a plan request beyond the releases (the command line's `--only`, `--to-revision`,
/// `--migration`, and what the target adapter found to re-import).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlanOptions {
    pub scope: Option<Scope>,
    /// `--to-revision REV|-1`: the schema revision a database rollback stops at (default: the target's head).
    pub to_revision: Option<String>,
    /// `--migration G7`: roll back this one data migration (it must be the live head revision).
    pub migration: Option<String>,
    /// A roll-forward re-imports the data these earlier runs preserved and nothing has re-imported yet, oldest
    /// first (usually one run; several when a journal was lost between rollbacks).
    pub reimport_from: Vec<ReimportSource>,
    /// `--one-at-a-time`: no step says what it touches, so every step runs alone, in plan order.
    pub one_at_a_time: bool,
}

/// A run whose preserved data a roll-forward re-imports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReimportSource {
    pub run: String,
    /// Empty: every kind the run preserved.
    pub kinds: Vec<Preserve>,
}

/// Computes the plan. `from` must be what runs (all services, or for a partial earlier run, the stack's release).
pub fn plan(
    live: &LiveState,
    from: &Release,
    to: &Release,
    policy: &Policy,
    scope: Scope,
) -> Result<Plan, PlanError> {
    plan_with(
        live,
        from,
        to,
        policy,
        &PlanOptions {
            scope: Some(scope),
            ..PlanOptions::default()
        },
    )
}

/// Computes the plan for a request with options (see [`PlanOptions`]).
pub fn plan_with(
    live: &LiveState,
    from: &Release,
    to: &Release,
    policy: &Policy,
    opts: &PlanOptions,
) -> Result<Plan, PlanError> {
    let scope = opts.scope.unwrap_or(Scope::All);
    if from.name() == to.name() {
        return Err(PlanError::SameRelease(to.name().into()));
    }
    // A database-only rollback may follow a services rollback that already moved the stack to the target.
    let from_ok = live.release == from.name()
        || (matches!(
            scope,
            Scope::Database | Scope::Infrastructure | Scope::Config
        ) && live.release == to.name());
    if !from_ok {
        return Err(PlanError::WrongFrom {
            live: live.release.clone(),
            from: from.name().into(),
        });
    }
    if (opts.to_revision.is_some() || opts.migration.is_some()) && scope != Scope::Database {
        return Err(PlanError::BadOption(
            "--to-revision and --migration go with --only database".into(),
        ));
    }
    let t = &policy.timeouts;
    let wants_db = matches!(scope, Scope::All | Scope::Database);
    let wants_infra = matches!(scope, Scope::All | Scope::Infrastructure);
    let db_steps = if wants_db {
        database_steps(live, from, to, policy, opts)?
    } else {
        DbSteps::default()
    };
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
    if !matches!(scope, Scope::Config | Scope::Database) {
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
        // What NATS has, when it was looked at: a stream that exists is kept as it is, not "created".
        let exists = |n: &String| live.streams.as_ref().is_some_and(|l| l.contains(n));
        s.changes = expand
            .iter()
            .map(|n| Change {
                kind: ChangeKind::Stream,
                subject: n.clone(),
                before: exists(n).then(|| "present".to_string()),
                after: Some(
                    if exists(n) {
                        "present (kept)"
                    } else {
                        "ensure present"
                    }
                    .into(),
                ),
            })
            .collect();
        steps.push(s);
    }

    if wants_infra {
        steps.push(step(
            "1.monitoring.validate".into(),
            Phase::Assessment,
            format!(
                "Validate {}'s Prometheus configuration and rules (promtool) and Alertmanager configuration (amtool)",
                to.name()
            ),
            Action::MonitoringValidate {
                release: to.name().into(),
            },
            Safety::Idempotent,
        ));
    }

    // A roll-forward migrates the schema up before the services that need it start.
    if db_steps.up {
        steps.extend(db_steps.steps.iter().cloned());
    }

    // Phase 2.1: services, in the policy's order.
    let service_policy: FailurePolicy = Policy::failure_policy(&policy.services);
    let wants_services = matches!(scope, Scope::All | Scope::Services | Scope::Api);
    if wants_services && scope != Scope::Api {
        // A roll-forward first starts what the target has and the stack does not (the services it restarts
        // next may need it: rc1's api needs its control plane).
        for name in &policy.service_order {
            let Some(target) = to.service(name) else {
                continue;
            };
            if live.services.iter().any(|s| &s.name == name) {
                continue;
            }
            let mut s = step(
                format!("2.{name}.add"),
                Phase::Services,
                format!("Start {name} on {}: {} has it", target.image, to.name()),
                Action::AddService {
                    service: name.clone(),
                    image: target.image.clone(),
                    release: to.name().into(),
                },
                Safety::Probed,
            );
            s.timeout_secs = t.rollout_secs;
            s.policy = service_policy;
            s.checks = policy.checks.after_service.clone();
            s.changes.push(Change {
                kind: ChangeKind::ServiceAdded,
                subject: name.clone(),
                before: None,
                after: Some(target.image.clone()),
            });
            steps.push(s);
        }
    }
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
                    s.policy = service_policy;
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

    // Phase 2.2: the runbook's `kubectl apply -f secrets/ network-policies/` first (the configuration maps are the
    // next step's, layered as the target lays them out). After the service steps: rc1's policy for the control
    // plane goes once the control plane has.
    if live.cluster_objects && matches!(scope, Scope::All | Scope::Config) {
        let mut s = step(
            "2.objects.apply".into(),
            Phase::Services,
            format!(
                "Apply {}'s network policies and secrets (server-side); remove the network policies only {} has",
                to.name(),
                from.name()
            ),
            Action::ApplyObjects {
                from: from.name().into(),
                release: to.name().into(),
            },
            Safety::Idempotent,
        );
        s.timeout_secs = t.rollout_secs;
        s.policy = Policy::failure_policy(&policy.config);
        steps.push(s);
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

    if !db_steps.up {
        steps.extend(db_steps.steps.iter().cloned());
    }
    if wants_infra {
        steps.extend(infra_steps(from, to, policy));
    }

    // Phase 5: verification. The full scan and the loss assessment compare with phase 3's snapshot.
    let has_db = !db_steps.steps.is_empty();
    let checks: Vec<&String> = policy
        .checks
        .verification
        .iter()
        .filter(|c| match c.as_str() {
            "integrity-full" | "loss" | "audit-log" => has_db,
            "health" | "info" => true,
            "integrity-quick" => matches!(scope, Scope::All | Scope::Services | Scope::Database),
            // Phase 4 replaces the monitoring configuration; only a plan with it proves monitoring restored.
            "monitoring" => matches!(scope, Scope::All | Scope::Infrastructure),
            _ => matches!(scope, Scope::All | Scope::Services),
        })
        .collect();
    let audit_window = policy
        .checks
        .audit_window_secs()
        .map_err(PlanError::BadOption)?;
    for c in checks {
        let params = match c.as_str() {
            "performance" => Some(CheckParams::Performance(policy.performance.clone())),
            "audit-log" => Some(CheckParams::AuditLog {
                since_secs: audit_window,
            }),
            _ => None,
        };
        let title = match &params {
            Some(CheckParams::Performance(p)) => performance_title(p, to.name()),
            _ => check_title(c, to.name()),
        };
        let mut s = step(
            format!("5.check.{c}"),
            Phase::Verification,
            title,
            Action::Check {
                name: c.clone(),
                params,
            },
            Safety::Idempotent,
        );
        s.checks = vec![c.clone()];
        s.policy = Policy::failure_policy(&policy.verification);
        steps.push(s);
    }

    refuse_incompatible(live, from, to, &steps)?;
    if !opts.one_at_a_time {
        for s in &mut steps {
            s.access = Some(touches::access_of(&s.action));
        }
    }
    let mut p = Plan::new(from.name(), to.name());
    p.scope = scope.name();
    p.steps = steps;
    Ok(p)
}

/// No destructive step while a service that cannot run on its result is still up (see `compat`).
fn refuse_incompatible(
    live: &LiveState,
    from: &Release,
    to: &Release,
    steps: &[StepSpec],
) -> Result<(), PlanError> {
    let running: BTreeMap<String, String> = live
        .services
        .iter()
        .map(|s| (s.name.clone(), s.release.clone()))
        .collect();
    match crate::compat::first_incompatible(steps, &running, &[from, to], to) {
        None => Ok(()),
        Some(i) => Err(PlanError::Incompatible {
            step: i.step,
            service: i.service,
            release: i.release,
            why: i.why,
        }),
    }
}

fn check_title(name: &str, to: &str) -> String {
    match name {
        "health" => "Every service healthy".into(),
        "info" => format!("/api/v1/info reports {to}"),
        "smoke" => "Smoke test: a PTaaS session against a loopback target completes".into(),
        "tenant-isolation" => "Tenant isolation: one tenant cannot see another's sessions".into(),
        "evidence-legacy" => "Evidence: legacy mode where the target has no evidence system (existing evidence kept, none created); otherwise enabled and every record verifies".into(),
        "quota" => "Quota system (skipped where the release has none)".into(),
        "monitoring" => format!(
            "Monitoring restored: Prometheus scrapes every target of {to} and serves its rule groups"
        ),
        "integrity-quick" => "Quick integrity scan: no rows lost since phase 1 (or, for a table phase 1 estimated, since the backup)".into(),
        "loss" => "Data-loss assessment against phase 3's snapshot, preserved data accounted for".into(),
        "audit-log" => "Platform audit log: chained entries verify up to the rollback, plain ones after it, no gap".into(),
        other => other.to_string(),
    }
}

/// The performance check's title says its tolerance: the plan is where an operator sees what will pass.
fn performance_title(p: &xorb_model::policy::Performance, to: &str) -> String {
    format!(
        "Performance baseline: the load of {to}'s kept figures (`xorbctl perf`) again; p99 within {}% or {} ms of \
         theirs, errors within {:.1} points",
        p.p99_tolerance_pct,
        p.p99_slack_ms,
        f64::from(p.error_increase_permille) / 10.0
    )
}

#[derive(Debug, Default)]
struct DbSteps {
    steps: Vec<StepSpec>,
    /// The schema goes up (a roll-forward): these steps run before the services.
    up: bool,
}

/// The preservation that saves what `d` destroys, if there is one.
fn preserve_of(d: &xorb_model::schema::Destroys) -> Option<Preserve> {
    match (d.kind.as_str(), d.object.as_str()) {
        ("table", "evidence") => Some(Preserve::Evidence),
        ("table", "tenant_quotas" | "usage_records") => Some(Preserve::ControlPlane),
        ("column", "tenants.isolation_mode") => Some(Preserve::IsolationModes),
        ("table", "audit_chain") => Some(Preserve::AuditChain),
        _ => None,
    }
}

/// What a downgrade destroys that we know how to preserve, each preservation once, in order.
fn preserve_for(destroys: &[xorb_model::schema::Destroys]) -> Vec<Preserve> {
    let mut keep = Vec::new();
    for p in destroys.iter().filter_map(preserve_of) {
        if !keep.contains(&p) {
            keep.push(p);
        }
    }
    keep
}

fn database_steps(
    live: &LiveState,
    from: &Release,
    to: &Release,
    policy: &Policy,
    opts: &PlanOptions,
) -> Result<DbSteps, PlanError> {
    let scope = opts.scope.unwrap_or(Scope::All);
    let Some(db) = &live.database else {
        return Err(PlanError::NoDatabase("no database observation".into()));
    };
    let t = &policy.timeouts;
    let current = db.revision.as_str();
    // Where the schema goes, and which release must run on it afterwards.
    let (target, runs_after): (String, &Release) = match (&opts.migration, &opts.to_revision) {
        (Some(_), Some(_)) => {
            return Err(PlanError::BadOption(
                "give --migration or --to-revision, not both".into(),
            ));
        }
        (Some(m), None) => {
            let Some(r) = db
                .revisions
                .iter()
                .find(|r| r.data_migration().as_deref() == Some(m.as_str()))
            else {
                let known: Vec<String> = db
                    .revisions
                    .iter()
                    .filter_map(|r| r.data_migration())
                    .collect();
                return Err(PlanError::BadOption(format!(
                    "--migration {m}: no such data migration in {}'s scripts (known: {})",
                    from.name(),
                    known.join(", ")
                )));
            };
            if r.revision != current {
                let head = db.find(current);
                return Err(PlanError::Schema(format!(
                    "--migration {m}: {m} is revision {}, but the live head is {current}{}: roll that back first (--migration or --to-revision -1), newest first",
                    r.revision,
                    head.and_then(|h| h.data_migration())
                        .map(|g| format!(" ({g})"))
                        .unwrap_or_default()
                )));
            }
            let down = r.down_revision.clone().ok_or_else(|| {
                PlanError::Schema(format!(
                    "{m} ({}) is the base revision: nothing below it",
                    r.revision
                ))
            })?;
            (down, live_release(live, from, to))
        }
        (None, Some(rev)) => {
            let target = if let Some(n) = rev.strip_prefix('-') {
                let n: usize = n.parse().map_err(|_| {
                    PlanError::BadOption(format!("--to-revision {rev}: use a revision id or -N"))
                })?;
                let mut cur = current.to_string();
                for _ in 0..n {
                    let r = db.find(&cur).ok_or_else(|| {
                        PlanError::Schema(format!(
                            "the live revision {cur} is not in {}'s migration scripts",
                            from.name()
                        ))
                    })?;
                    cur = r.down_revision.clone().ok_or_else(|| {
                        PlanError::Schema(format!(
                            "--to-revision {rev}: {cur} is the base revision"
                        ))
                    })?;
                }
                cur
            } else if db.find(rev).is_some() {
                rev.clone()
            } else {
                let known: Vec<&str> = db.revisions.iter().map(|r| r.revision.as_str()).collect();
                return Err(PlanError::BadOption(format!(
                    "--to-revision {rev}: no such revision in {}'s migration scripts (known: {}; or -N for N revisions down)",
                    from.name(),
                    known.join(", ")
                )));
            };
            let runs_after = if scope == Scope::Database {
                live_release(live, from, to)
            } else {
                to
            };
            (target, runs_after)
        }
        (None, None) => {
            let runs_after = if scope == Scope::Database && live.release != to.name() {
                live_release(live, from, to)
            } else {
                to
            };
            (to.manifest.schema.head.clone(), runs_after)
        }
    };
    // A run labelled as a rollback must never take the schema up: that is a roll-forward, with its own plan
    // (services first, re-import of the preserved data).
    let rolls_back = {
        let mut cur = from.manifest.schema.head.as_str();
        let to_head = to.manifest.schema.head.as_str();
        let mut below = false;
        while let Some(down) = db.find(cur).and_then(|r| r.down_revision.as_deref()) {
            if down == to_head {
                below = true;
                break;
            }
            cur = down;
        }
        below
    };
    if rolls_back && target != current && db.upgrade_path(&target).is_some() {
        return Err(PlanError::Schema(format!(
            "refused: schema revision {target} is above the live revision {current}, and --from {} --to {} is a rollback: a rollback never upgrades the schema. To go forward, roll forward instead: `xorbctl rollback --from {} --to {}`",
            from.name(),
            to.name(),
            to.name(),
            from.name()
        )));
    }
    if !runs_after.manifest.schema.runs_on.contains(&target) {
        return Err(PlanError::Schema(format!(
            "{} cannot run on schema revision {target} (it runs on {}): roll its services back first (`--only services`, then `--only config`), or roll everything back",
            runs_after.name(),
            runs_after.manifest.schema.runs_on.join(", ")
        )));
    }
    if target == current {
        return Ok(DbSteps::default());
    }
    let (path, up) = if let Some(p) = db.downgrade_path(&target) {
        (p, false)
    } else if let Some(p) = db.upgrade_path(&target) {
        (p, true)
    } else {
        return Err(PlanError::Schema(format!(
            "schema revision {target} is neither below nor above the live revision {current} in {}'s migration scripts",
            from.name()
        )));
    };
    if !up && let Some(r) = path.iter().find(|r| !r.has_downgrade) {
        return Err(PlanError::Schema(format!(
            "revision {} ({}) has no downgrade in {}'s migration scripts: the schema cannot go back to {target}",
            r.revision,
            r.message,
            from.name()
        )));
    }

    let stateful = Policy::failure_policy(&policy.stateful);
    // A roll-forward's upgrades are expand-only: like the streams, they are prepared in phase 1, before the
    // services that need them switch (a phase 2 service of the newer release refuses to start on the old schema).
    let (n, phase) = if up {
        (1, Phase::Assessment)
    } else {
        (3, Phase::Database)
    };
    let mut steps = Vec::new();
    let mut s = StepSpec::new(
        format!("{n}.db.backup"),
        phase,
        "Back up the database (pg_dump, custom format) and take the full integrity snapshot, both from one \
         PostgreSQL snapshot; record alembic current and history",
        Action::DbBackup,
        Safety::Idempotent,
    );
    s.timeout_secs = t.backup_secs;
    steps.push(s);
    let mut s = StepSpec::new(
        format!("{n}.db.proof"),
        phase,
        "Prove the backup by its data: read every row it holds, every table's checksum equal to the snapshot's",
        Action::BackupProof,
        Safety::Idempotent,
    );
    s.timeout_secs = t.backup_secs;
    steps.push(s);
    let mut s = StepSpec::new(
        format!("{n}.db.compat"),
        phase,
        format!(
            "Compatibility: {current} → {target} can be migrated and {} runs on {target}",
            runs_after.name()
        ),
        Action::DbCompatibility {
            from_revision: current.to_string(),
            to_revision: target.clone(),
            release: runs_after.name().to_string(),
        },
        Safety::Idempotent,
    );
    s.timeout_secs = t.check_secs;
    steps.push(s);

    let mut cur = current.to_string();
    for r in &path {
        let (rev, next) = if up {
            (cur.clone(), r.revision.clone())
        } else {
            (
                r.revision.clone(),
                r.down_revision.clone().unwrap_or_default(),
            )
        };
        let label = r.data_migration();
        let preserve = if up {
            vec![]
        } else {
            preserve_for(&r.destroys)
        };
        let what = label.clone().map(|g| format!("{g} ")).unwrap_or_default();
        let title = if up {
            format!("Upgrade {what}{rev} → {next} ({})", r.message)
        } else if preserve.is_empty() {
            format!("Downgrade {what}{rev} → {next} ({})", r.message)
        } else {
            let names: Vec<&str> = preserve.iter().map(|p| p.name()).collect();
            format!(
                "Data migration rollback {what}{rev} → {next}: preserve {} first, then downgrade",
                names.join(", ")
            )
        };
        let mut s = StepSpec::new(
            format!(
                "{n}.{}.{}",
                label
                    .as_deref()
                    .map(str::to_lowercase)
                    .unwrap_or_else(|| "db".into()),
                if up {
                    format!("upgrade.{}", r.revision)
                } else {
                    format!("downgrade.{}", r.revision)
                }
            ),
            phase,
            title,
            Action::Migrate {
                revision: rev.clone(),
                to_revision: next.clone(),
                direction: if up {
                    MigrationDirection::Up
                } else {
                    MigrationDirection::Down
                },
                data_migration: label,
                preserve: preserve.clone(),
            },
            Safety::Probed,
        );
        s.timeout_secs = t.migration_secs;
        s.policy = stateful;
        s.changes.push(Change {
            kind: ChangeKind::Schema,
            subject: "alembic_version".into(),
            before: Some(rev.clone()),
            after: Some(next.clone()),
        });
        if !up {
            for d in &r.destroys {
                s.changes.push(Change {
                    kind: ChangeKind::Schema,
                    subject: format!("{} {}", d.kind, d.object),
                    before: Some(d.description.clone()),
                    after: Some(match preserve_of(d) {
                        None => "dropped: LOST (nothing preserves it)".into(),
                        Some(_) => "dropped (preserved and verified first)".into(),
                    }),
                });
            }
        }
        steps.push(s);
        cur = next;
    }
    let mut s = StepSpec::new(
        format!("{n}.db.verify"),
        phase,
        format!(
            "Verify the schema: alembic_version is {target} and the tables are what it defines"
        ),
        Action::DbVerify {
            revision: target.clone(),
        },
        Safety::Idempotent,
    );
    s.timeout_secs = t.check_secs;
    steps.push(s);
    let sources = if up {
        opts.reimport_from.as_slice()
    } else {
        &[]
    };
    for (i, src) in sources.iter().enumerate() {
        let run = &src.run;
        // One source keeps the plain id; several (a journal lost between two rollbacks) are numbered, oldest first.
        let (id, title) = if sources.len() == 1 && src.kinds.is_empty() {
            (
                format!("{n}.data.reimport"),
                format!(
                    "Re-import the data run {run} preserved (evidence with signatures, control plane, isolation modes)"
                ),
            )
        } else {
            let what = if src.kinds.is_empty() {
                "data".to_string()
            } else {
                src.kinds
                    .iter()
                    .map(|k| k.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            (
                format!("{n}.data.reimport.{}", i + 1),
                format!(
                    "Re-import the {what} run {run} preserved ({} of {} runs holding preserved data)",
                    i + 1,
                    sources.len()
                ),
            )
        };
        let mut s = StepSpec::new(
            id,
            phase,
            title,
            Action::ReimportPreserved {
                source_run: run.clone(),
                kinds: src.kinds.clone(),
            },
            Safety::Idempotent,
        );
        s.timeout_secs = t.migration_secs;
        steps.push(s);
    }
    Ok(DbSteps { steps, up })
}

/// The release the services run on now.
fn live_release<'a>(live: &LiveState, from: &'a Release, to: &'a Release) -> &'a Release {
    if live.release == to.name() { to } else { from }
}

fn infra_steps(from: &Release, to: &Release, policy: &Policy) -> Vec<StepSpec> {
    let t = &policy.timeouts;
    let stateful = Policy::failure_policy(&policy.stateful);
    let rel = || to.name().to_string();
    let mut out = Vec::new();
    // Two shapes: a save (idempotent: it keeps a complete earlier save) and an apply (probed, retried only after
    // its probe says it did not happen).
    let save = |id: &str, title: String, action: Action| {
        let mut s = StepSpec::new(id, Phase::Infrastructure, title, action, Safety::Idempotent);
        s.timeout_secs = t.backup_secs;
        s
    };
    let apply = |id: &str, title: String, action: Action| {
        let mut s = StepSpec::new(id, Phase::Infrastructure, title, action, Safety::Probed);
        s.timeout_secs = t.check_secs;
        s.policy = stateful;
        s
    };
    let target_streams: Vec<&str> = to.streams.iter().map(|s| s.name.as_str()).collect();
    let removed: Vec<&str> = from
        .streams
        .iter()
        .map(|s| s.name.as_str())
        .filter(|n| !target_streams.contains(n))
        .collect();
    let s = save(
        "4.nats.save",
        "Save every stream's configuration and last sequence, and the messages of the streams that go".into(),
        Action::NatsSave { release: rel() },
    );
    out.push(s);
    let mut s = apply(
        "4.nats.apply",
        format!(
            "Streams as {} defines them: remove the others (messages saved), create or update its own",
            to.name()
        ),
        Action::NatsApply { release: rel() },
    );
    for n in &removed {
        s.changes.push(Change {
            kind: ChangeKind::Stream,
            subject: n.to_string(),
            before: Some("present".into()),
            after: Some("removed (messages saved first)".into()),
        });
    }
    for n in &target_streams {
        s.changes.push(Change {
            kind: ChangeKind::Stream,
            subject: n.to_string(),
            before: None,
            after: Some(format!("as {} defines it", to.name())),
        });
    }
    out.push(s);
    let s = save(
        "4.redis.backup",
        "Back up Redis (RDB, checked by redis-check-rdb)".into(),
        Action::RedisBackup,
    );
    out.push(s);
    let mut s = apply(
        "4.redis.apply",
        format!(
            "Redis as {} uses it: flush the databases it does not use, apply its configuration",
            to.name()
        ),
        Action::RedisApply { release: rel() },
    );
    for db in from
        .manifest
        .redis
        .databases
        .iter()
        .filter(|d| !to.manifest.redis.databases.contains(d))
    {
        s.changes.push(Change {
            kind: ChangeKind::Redis,
            subject: format!("db {db}"),
            before: Some("in use".into()),
            after: Some("flushed (in the RDB backup)".into()),
        });
    }
    s.changes.push(Change {
        kind: ChangeKind::Redis,
        subject: "configuration".into(),
        before: Some(from.name().into()),
        after: Some(to.name().into()),
    });
    out.push(s);
    let mut s = apply(
        "4.monitoring.apply",
        format!(
            "Monitoring as {} defines it: Prometheus configuration and rules, Alertmanager, Grafana dashboards; reload and verify",
            to.name()
        ),
        Action::MonitoringApply { release: rel() },
    );
    s.changes.push(Change {
        kind: ChangeKind::Monitoring,
        subject: "prometheus, alertmanager, grafana".into(),
        before: Some(from.name().into()),
        after: Some(to.name().into()),
    });
    out.push(s);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use xorb_model::schema::{Destroys, LiveDatabase, RevisionInfo};

    fn releases() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../releases")
    }

    fn rel(name: &str) -> Release {
        Release::load_named(&releases(), name).unwrap()
    }

    fn destroys(kind: &str, object: &str) -> Destroys {
        Destroys {
            kind: kind.into(),
            object: object.into(),
            description: format!("the {object}"),
        }
    }

    fn revisions() -> Vec<RevisionInfo> {
        let r = |rev: &str, down: Option<&str>, msg: &str, d: Vec<Destroys>| RevisionInfo {
            revision: rev.into(),
            down_revision: down.map(Into::into),
            message: msg.into(),
            release: String::new(),
            destroys: d,
            has_downgrade: true,
        };
        vec![
            r(
                "8d9a2c3",
                Some("7c8f1b2"),
                "G8 control plane",
                vec![
                    destroys("table", "tenant_quotas"),
                    destroys("table", "usage_records"),
                    destroys("table", "audit_chain"),
                ],
            ),
            r(
                "7c8f1b2",
                Some("6b7e0a1"),
                "G7 evidence system",
                vec![destroys("table", "evidence")],
            ),
            r(
                "6b7e0a1",
                Some("1a5be11"),
                "G6 enhanced tenant isolation",
                vec![destroys("column", "tenants.isolation_mode")],
            ),
            r("1a5be11", Some("3f2c7d1"), "audit_log and indexes", vec![]),
            r("3f2c7d1", None, "core", vec![]),
        ]
    }

    fn live(release: &str, revision: &str) -> LiveState {
        let r = rel(release);
        LiveState {
            release: release.into(),
            services: r
                .services
                .iter()
                .map(|s| LiveService {
                    name: s.name.clone(),
                    image: s.image.clone(),
                    release: release.into(),
                    config: s.env.clone(),
                })
                .collect(),
            database: Some(LiveDatabase {
                revision: revision.into(),
                revisions: revisions(),
            }),
            streams: None,
            cluster_objects: false,
        }
    }

    const RC1: &str = "v2025.08-rc1";
    const STABLE: &str = "v2025.07-stable";

    fn ids(p: &Plan) -> Vec<&str> {
        p.steps.iter().map(|s| s.id.as_str()).collect()
    }

    fn opts(scope: Scope) -> PlanOptions {
        PlanOptions {
            scope: Some(scope),
            ..PlanOptions::default()
        }
    }

    #[test]
    fn a_plan_that_leaves_a_service_on_rc1_before_a_destructive_step_is_refused() {
        let (rc1, stable) = (rel(RC1), rel(STABLE));
        for order in [vec![], vec!["api".to_string()]] {
            let mut pol = Policy::embedded();
            pol.service_order = order.clone();
            let e = plan(&live(RC1, "8d9a2c3"), &rc1, &stable, &pol, Scope::All).unwrap_err();
            let PlanError::Incompatible { step, service, .. } = &e else {
                panic!("{order:?}: {e}");
            };
            assert_eq!(step, "3.g8.downgrade.8d9a2c3", "{e}");
            assert!(!order.contains(service), "{e}");
            assert!(e.to_string().contains("service_order"), "{e}");
        }
        // Phase 4 alone while rc1 runs would remove its streams.
        let e = plan(
            &live(RC1, "8d9a2c3"),
            &rc1,
            &stable,
            &Policy::embedded(),
            Scope::Infrastructure,
        )
        .unwrap_err();
        assert!(
            matches!(&e, PlanError::Incompatible { step, .. } if step == "4.nats.apply"),
            "{e}"
        );
    }

    #[test]
    fn a_full_rollback_preserves_before_each_destructive_downgrade_and_runs_the_phases_in_order() {
        let p = plan(
            &live(RC1, "8d9a2c3"),
            &rel(RC1),
            &rel(STABLE),
            &Policy::embedded(),
            Scope::All,
        )
        .unwrap();
        let ids = ids(&p);
        let pos = |id: &str| {
            ids.iter()
                .position(|i| *i == id)
                .unwrap_or_else(|| panic!("{id} in {ids:?}"))
        };
        assert!(pos("1.monitoring.validate") < pos("2.api.image"));
        assert!(pos("2.config.apply") < pos("3.db.backup"));
        assert!(pos("3.db.backup") < pos("3.db.proof"));
        assert!(pos("3.db.proof") < pos("3.g8.downgrade.8d9a2c3"));
        assert!(pos("3.g8.downgrade.8d9a2c3") < pos("3.g7.downgrade.7c8f1b2"));
        assert!(pos("3.g7.downgrade.7c8f1b2") < pos("3.g6.downgrade.6b7e0a1"));
        assert!(pos("3.g6.downgrade.6b7e0a1") < pos("3.db.verify"));
        assert!(pos("3.db.verify") < pos("4.nats.save"));
        assert!(pos("4.monitoring.apply") < pos("5.check.health"));
        assert!(pos("5.check.loss") > pos("5.check.health"));
        let preserve = |id: &str| match &p.steps[pos(id)].action {
            Action::Migrate {
                preserve,
                direction,
                ..
            } => {
                assert_eq!(*direction, MigrationDirection::Down);
                preserve.clone()
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(
            preserve("3.g8.downgrade.8d9a2c3"),
            [Preserve::ControlPlane, Preserve::AuditChain]
        );
        // The audit-log check runs last, over the policy's window, fixed in the plan.
        assert!(pos("5.check.audit-log") > pos("5.check.loss"));
        assert!(matches!(
            &p.steps[pos("5.check.audit-log")].action,
            Action::Check { name, params: Some(CheckParams::AuditLog { since_secs: 3600 }) } if name == "audit-log"
        ));
        assert_eq!(preserve("3.g7.downgrade.7c8f1b2"), [Preserve::Evidence]);
        assert_eq!(
            preserve("3.g6.downgrade.6b7e0a1"),
            [Preserve::IsolationModes]
        );
        assert_eq!(
            p.steps[pos("3.db.verify")].action,
            Action::DbVerify {
                revision: "1a5be11".into()
            }
        );
        let nats = &p.steps[pos("4.nats.apply")];
        assert!(
            nats.changes
                .iter()
                .any(|c| c.subject == "xorb-tenant-streams"
                    && c.after.as_deref() == Some("removed (messages saved first)"))
        );
        let redis = &p.steps[pos("4.redis.apply")];
        let flushed: Vec<&str> = redis
            .changes
            .iter()
            .filter(|c| c.subject.starts_with("db "))
            .map(|c| c.subject.as_str())
            .collect();
        assert_eq!(flushed, ["db 1", "db 2"]);
    }

    #[test]
    fn every_step_says_what_it_touches_unless_asked_for_one_at_a_time() {
        let (rc1, stable, pol) = (rel(RC1), rel(STABLE), Policy::embedded());
        let live = live(RC1, "8d9a2c3");
        let mut o = opts(Scope::All);
        let p = plan_with(&live, &rc1, &stable, &pol, &o).unwrap();
        assert!(p.steps.iter().all(|s| s.access.is_some()));
        let together = xorb_model::access::waves(&p.steps)
            .into_iter()
            .filter(|w| w.len() > 1)
            .count();
        assert!(
            together >= 3,
            "phases 1, 4 and 5 have steps that run together"
        );
        o.one_at_a_time = true;
        let p = plan_with(&live, &rc1, &stable, &pol, &o).unwrap();
        assert!(p.steps.iter().all(|s| s.access.is_none()));
        assert!(
            xorb_model::access::waves(&p.steps)
                .iter()
                .all(|w| w.len() == 1)
        );
    }

    #[test]
    fn cluster_objects_are_applied_after_the_services_and_before_their_configuration() {
        let (rc1, stable, pol) = (rel(RC1), rel(STABLE), Policy::embedded());
        let local = plan(&live(RC1, "8d9a2c3"), &rc1, &stable, &pol, Scope::All).unwrap();
        assert!(
            !ids(&local).contains(&"2.objects.apply"),
            "the local stack has none"
        );
        let mut kube = live(RC1, "8d9a2c3");
        kube.cluster_objects = true;
        let p = plan(&kube, &rc1, &stable, &pol, Scope::All).unwrap();
        assert!(
            p.steps.iter().all(|s| s.access.is_some()),
            "a cluster's plan runs steps together as the local one does"
        );
        let ids = ids(&p);
        let pos = |id: &str| ids.iter().position(|i| *i == id).unwrap();
        assert!(
            pos("2.control-plane.remove") < pos("2.objects.apply"),
            "{ids:?}"
        );
        assert_eq!(pos("2.objects.apply") + 1, pos("2.config.apply"), "{ids:?}");
        let step = &p.steps[pos("2.objects.apply")];
        assert_eq!(
            step.action,
            Action::ApplyObjects {
                from: RC1.into(),
                release: STABLE.into()
            }
        );
        for (scope, planned) in [
            (Scope::Config, true),
            (Scope::Api, false),
            (Scope::Services, false),
        ] {
            let p = plan(&kube, &rc1, &stable, &pol, scope).unwrap();
            let has = p.steps.iter().any(|s| s.id == "2.objects.apply");
            assert_eq!(has, planned, "{scope:?}");
        }
    }

    #[test]
    fn what_nothing_preserves_is_called_lost_in_the_plan() {
        let mut l = live(RC1, "8d9a2c3");
        let db = l.database.as_mut().unwrap();
        db.revisions[0].destroys.push(destroys("table", "scratch"));
        let p = plan(&l, &rel(RC1), &rel(STABLE), &Policy::embedded(), Scope::All).unwrap();
        let g8 = p
            .steps
            .iter()
            .find(|s| s.id == "3.g8.downgrade.8d9a2c3")
            .unwrap();
        let c = g8
            .changes
            .iter()
            .find(|c| c.subject == "table scratch")
            .unwrap();
        assert_eq!(
            c.after.as_deref(),
            Some("dropped: LOST (nothing preserves it)")
        );
    }

    #[test]
    fn a_roll_forward_migrates_up_and_reimports_before_the_services_start() {
        let mut o = opts(Scope::All);
        o.reimport_from = vec![ReimportSource {
            run: "run-1".into(),
            kinds: vec![],
        }];
        let p = plan_with(
            &live(STABLE, "1a5be11"),
            &rel(STABLE),
            &rel(RC1),
            &Policy::embedded(),
            &o,
        )
        .unwrap();
        let ids = ids(&p);
        let up = ids
            .iter()
            .position(|i| *i == "1.g6.upgrade.6b7e0a1")
            .unwrap();
        let reimport = ids.iter().position(|i| *i == "1.data.reimport").unwrap();
        let first_service = ids.iter().position(|i| i.starts_with("2.")).unwrap();
        assert!(up < reimport && reimport < first_service, "{ids:?}");
        assert_eq!(ids[first_service], "2.control-plane.add", "{ids:?}");
        assert!(ids.contains(&"1.g8.upgrade.8d9a2c3"));
        assert!(p.validate().is_ok(), "phases in order");
    }

    #[test]
    fn database_only_rollbacks_respect_the_services_that_run_and_go_newest_first() {
        let (rc1, stable, pol) = (rel(RC1), rel(STABLE), Policy::embedded());
        let mut o = opts(Scope::Database);
        o.to_revision = Some("-1".into());
        // rc1's services cannot run below 8d9a2c3.
        let e = plan_with(&live(RC1, "8d9a2c3"), &rc1, &stable, &pol, &o).unwrap_err();
        assert!(
            matches!(&e, PlanError::Schema(m) if m.contains("--only services")),
            "{e}"
        );
        // With the services on stable: one revision down, G8 only.
        let p = plan_with(&live(STABLE, "8d9a2c3"), &rc1, &stable, &pol, &o).unwrap();
        let got = ids(&p);
        assert!(got.contains(&"3.g8.downgrade.8d9a2c3"), "{got:?}");
        assert!(!got.iter().any(|i| i.starts_with("3.g7")), "{got:?}");
        assert!(
            !got.iter()
                .any(|i| i.starts_with("2.") || i.starts_with("4.")),
            "{got:?}"
        );
        // A named data migration must be the live head.
        let mut g7 = opts(Scope::Database);
        g7.migration = Some("G7".into());
        let e = plan_with(&live(STABLE, "8d9a2c3"), &rc1, &stable, &pol, &g7).unwrap_err();
        assert!(
            e.to_string().contains("8d9a2c3") && e.to_string().contains("G8"),
            "{e}"
        );
        let p = plan_with(&live(STABLE, "7c8f1b2"), &rc1, &stable, &pol, &g7).unwrap();
        assert_eq!(
            ids(&p)
                .iter()
                .filter(|i| i.starts_with("3.g"))
                .collect::<Vec<_>>(),
            [&"3.g7.downgrade.7c8f1b2"]
        );
        let mut bad = opts(Scope::Database);
        bad.migration = Some("G9".into());
        let e = plan_with(&live(STABLE, "8d9a2c3"), &rc1, &stable, &pol, &bad).unwrap_err();
        assert!(matches!(e, PlanError::BadOption(_)), "{e}");
        let mut services = opts(Scope::Services);
        services.to_revision = Some("-1".into());
        assert!(matches!(
            plan_with(&live(RC1, "8d9a2c3"), &rc1, &stable, &pol, &services),
            Err(PlanError::BadOption(_))
        ));
    }

    #[test]
    fn a_database_rollback_never_goes_forward_and_an_unknown_revision_is_named() {
        let (rc1, stable, pol) = (rel(RC1), rel(STABLE), Policy::embedded());
        let mut o = opts(Scope::Database);
        o.to_revision = Some("8d9a2c3".into());
        let e = plan_with(&live(STABLE, "1a5be11"), &rc1, &stable, &pol, &o).unwrap_err();
        let m = e.to_string();
        assert!(matches!(e, PlanError::Schema(_)), "{m}");
        assert!(
            m.contains("1a5be11")
                && m.contains("8d9a2c3")
                && m.contains("--from v2025.07-stable --to v2025.08-rc1"),
            "{m}"
        );
        // The roll-forward itself may go up.
        let p = plan_with(&live(STABLE, "1a5be11"), &stable, &rc1, &pol, &o).unwrap();
        assert!(ids(&p).contains(&"1.g8.upgrade.8d9a2c3"), "{:?}", ids(&p));
        o.to_revision = Some("junk".into());
        let e = plan_with(&live(STABLE, "8d9a2c3"), &rc1, &stable, &pol, &o).unwrap_err();
        assert!(matches!(e, PlanError::BadOption(_)), "{e}");
        assert!(
            e.to_string().contains("junk") && e.to_string().contains("1a5be11, "),
            "{e}"
        );
    }

    #[test]
    fn a_revision_without_downgrade_or_a_missing_database_refuses_the_plan() {
        let (rc1, stable, pol) = (rel(RC1), rel(STABLE), Policy::embedded());
        let mut l = live(RC1, "8d9a2c3");
        l.database.as_mut().unwrap().revisions[1].has_downgrade = false;
        let e = plan(&l, &rc1, &stable, &pol, Scope::All).unwrap_err();
        assert!(
            e.to_string().contains("7c8f1b2") && e.to_string().contains("no downgrade"),
            "{e}"
        );
        let mut l = live(RC1, "8d9a2c3");
        l.database = None;
        assert!(matches!(
            plan(&l, &rc1, &stable, &pol, Scope::All),
            Err(PlanError::NoDatabase(_))
        ));
        // A services-only plan does not need the database.
        assert!(plan(&l, &rc1, &stable, &pol, Scope::Services).is_ok());
    }
}
