//! Plans and steps: what a rollback will do, in which order, how each step is made safe to repeat and what happens
//! when it fails. Pure data (serde), no I/O: the engine (`xorb-engine`) executes a [`Plan`] and journals it.
//!
//! A plan is a list of [`StepSpec`]s ordered by the runbook's five [`Phase`]s. Every step names:
//! - its [`Action`] (what the target must do),
//! - the [`Change`]s it makes (the live diff shown by `xorbctl plan`),
//! - its [`Safety`] class (how a crashed run resumes it),
//! - its [`FailurePolicy`] (abort, retry, or one of the runbook's [`EmergencyProcedure`]s),
//! - its timeout and the checks that run after it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

/// The runbook's five phases, in execution order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Phase 1: pre-rollback assessment (capture state, verify the target, quick integrity scan).
    Assessment = 1,
    /// Phase 2: service rollback (images in runbook order, removed services, configuration).
    Services = 2,
    /// Phase 3: database rollback (schema and data migrations).
    Database = 3,
    /// Phase 4: infrastructure rollback (NATS, Redis, monitoring).
    Infrastructure = 4,
    /// Phase 5: verification and validation.
    Verification = 5,
}

impl Phase {
    /// Every phase in execution order.
    pub const ALL: [Phase; 5] = [
        Phase::Assessment,
        Phase::Services,
        Phase::Database,
        Phase::Infrastructure,
        Phase::Verification,
    ];
    /// How many phases the runbook has ("of 5").
    pub const COUNT: u8 = 5;

    /// 1 to 5.
    pub fn number(self) -> u8 {
        self as u8
    }

    pub fn from_number(n: u8) -> Option<Phase> {
        Phase::ALL.get(usize::from(n).checked_sub(1)?).copied()
    }

    /// The runbook's short name: "service rollback".
    pub fn name(self) -> &'static str {
        match self {
            Phase::Assessment => "pre-rollback assessment",
            Phase::Services => "service rollback",
            Phase::Database => "database rollback",
            Phase::Infrastructure => "infrastructure rollback",
            Phase::Verification => "verification & validation",
        }
    }

    /// "Phase 2 of 5: service rollback" (the same text as `Display`).
    pub fn label(self) -> String {
        format!(
            "Phase {} of {}: {}",
            self.number(),
            Phase::COUNT,
            self.name()
        )
    }

    /// "Phase 2 of 5" (the runbook's progress template: "Progress: [Phase X of 5 complete]").
    pub fn position(self) -> String {
        format!("Phase {} of {}", self.number(), Phase::COUNT)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Phase {} of {}: {}",
            self.number(),
            Phase::COUNT,
            self.name()
        )
    }
}

/// How a step is made safe to repeat when a run resumes after a crash with the step in flight
/// (its intent journaled, its outcome not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Safety {
    /// Running it twice has the same effect as once: resume probes it (to skip work already done) and re-runs it
    /// when the probe says "not done" or cannot tell.
    Idempotent,
    /// Safe to repeat only if a probe of the live state says it is not done yet: resume re-runs it on "not done",
    /// records it as already done on "done", and asks a person when the probe cannot tell.
    Probed,
    /// Must not run twice by accident: resume records it as already done if the probe says so, and otherwise
    /// stops and waits until a person confirms (`--confirm STEP`).
    NotRepeatable,
}

impl Safety {
    pub fn name(self) -> &'static str {
        match self {
            Safety::Idempotent => "idempotent",
            Safety::Probed => "guarded by a probe",
            Safety::NotRepeatable => "not repeatable (needs confirmation)",
        }
    }
}

impl fmt::Display for Safety {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The runbook's emergency procedures ("Emergency Procedures").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmergencyProcedure {
    /// "Rollback Failure Recovery": `api` at one instance, every other role stopped.
    MinimalService,
    /// "Cascade Failure Prevention": `worker` and `scheduler` stopped, `CIRCUIT_BREAKER_ENABLED=true`.
    CascadePrevention,
    /// "Restore from last known good backup": the run's own phase-3 backup, proven by its data, restored into a
    /// new database that the services are switched to; the database it replaces is kept under another name.
    RestoreBackup,
}

impl EmergencyProcedure {
    pub fn name(self) -> &'static str {
        match self {
            EmergencyProcedure::MinimalService => "minimal service",
            EmergencyProcedure::CascadePrevention => "cascade prevention",
            EmergencyProcedure::RestoreBackup => "restore from last known good backup",
        }
    }

    /// What the procedure does, in the runbook's words.
    pub fn describe(self) -> &'static str {
        match self {
            // What the procedure aims at, not what it did: it stops nothing while the api is down (the
            // outcome, observed, is in the emergency's own detail).
            EmergencyProcedure::MinimalService => {
                "the api alone serving, every other role stopped, unless the api is down"
            }
            EmergencyProcedure::CascadePrevention => {
                "worker and scheduler stopped, CIRCUIT_BREAKER_ENABLED=true, unless the api is down"
            }
            EmergencyProcedure::RestoreBackup => {
                "the run's proven backup restored into a new database and the services switched to it, the \
                 replaced database kept, unless the schema is still as backed up"
            }
        }
    }
}

impl fmt::Display for EmergencyProcedure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.describe())
    }
}

/// What the engine does when a step fails (its outcome is `Failed`, the runner errors, or it times out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FailurePolicy {
    /// Stop the run where it is; the operator fixes the cause and resumes.
    #[default]
    Abort,
    /// Try the step up to `attempts` times in all (the first try included), waiting `backoff_ms` between tries,
    /// then stop; if `then` names an emergency procedure, run it before stopping.
    /// A failure the runner marks as not retryable stops at once (after `then`).
    Retry {
        attempts: u32,
        backoff_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        then: Option<EmergencyProcedure>,
    },
    /// Run the emergency procedure at once, then stop.
    Emergency { procedure: EmergencyProcedure },
}

impl FailurePolicy {
    /// How many times a step may be tried in one execution (at least 1).
    pub fn max_attempts(&self) -> u32 {
        match self {
            FailurePolicy::Retry { attempts, .. } => (*attempts).max(1),
            _ => 1,
        }
    }

    /// The emergency procedure to run once the step has definitely failed, if any.
    pub fn emergency(&self) -> Option<EmergencyProcedure> {
        match self {
            FailurePolicy::Abort => None,
            FailurePolicy::Retry { then, .. } => *then,
            FailurePolicy::Emergency { procedure } => Some(*procedure),
        }
    }
}

impl fmt::Display for FailurePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailurePolicy::Abort => f.write_str("stop on failure"),
            FailurePolicy::Retry {
                attempts,
                backoff_ms,
                then,
            } => {
                write!(f, "retry: up to {attempts} attempts, {backoff_ms} ms apart")?;
                if let Some(p) = then {
                    write!(f, ", then {}", p.name())?;
                }
                Ok(())
            }
            FailurePolicy::Emergency { procedure } => write!(f, "on failure: {}", procedure.name()),
        }
    }
}

/// What kind of thing a [`Change`] changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Image,
    Config,
    ServiceRemoved,
    ServiceAdded,
    Schema,
    Stream,
    Redis,
    Monitoring,
    Other,
}

impl ChangeKind {
    pub fn name(self) -> &'static str {
        match self {
            ChangeKind::Image => "image",
            ChangeKind::Config => "config",
            ChangeKind::ServiceRemoved => "service removed",
            ChangeKind::ServiceAdded => "service added",
            ChangeKind::Schema => "schema",
            ChangeKind::Stream => "stream",
            ChangeKind::Redis => "redis",
            ChangeKind::Monitoring => "monitoring",
            ChangeKind::Other => "other",
        }
    }
}

/// One line of a step's live diff: `image api: xorb/api:v2025.08-rc1 → xorb/api:v2025.07-stable`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub kind: ChangeKind,
    /// What changes: a service name, a configuration key, a stream name…
    pub subject: String,
    /// The live value before the step (`None`: absent).
    #[serde(default)]
    pub before: Option<String>,
    /// The value after the step (`None`: removed).
    #[serde(default)]
    pub after: Option<String>,
}

impl Change {
    pub fn new(
        kind: ChangeKind,
        subject: impl Into<String>,
        before: Option<String>,
        after: Option<String>,
    ) -> Self {
        Change {
            kind,
            subject: subject.into(),
            before,
            after,
        }
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let before = self.before.as_deref().unwrap_or("(absent)");
        let after = self.after.as_deref().unwrap_or("(absent)");
        match self.kind {
            ChangeKind::ServiceRemoved => write!(f, "remove service {} ({before})", self.subject),
            ChangeKind::ServiceAdded => write!(f, "add service {} ({after})", self.subject),
            kind => write!(f, "{} {}: {before} → {after}", kind.name(), self.subject),
        }
    }
}

/// What a step asks the target to do. The engine never interprets actions: it hands them to the target's runner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    /// Does nothing (placeholders, tests, benchmarks).
    Noop,
    /// Phase 1: capture services, releases and configuration into the run's directory.
    CaptureState,
    /// Phase 1: verify that the target release is available.
    VerifyTargetAvailable,
    /// Phase 1: the quick data-integrity scan (row counts, schema fingerprint).
    IntegrityQuick,
    /// Phase 2: run `service` on `image` (of release `release`) and wait until it reports that release.
    SetImage {
        service: String,
        image: String,
        release: String,
    },
    /// Phase 2: remove a service the target release does not have.
    RemoveService { service: String },
    /// Phase 2 of a roll-forward: start a service the live stack does not have (rc1's control plane), with the
    /// target's configuration, and wait until it reports that release.
    AddService {
        service: String,
        image: String,
        release: String,
    },
    /// Phase 2.2: set configuration keys, for one service or (None) the shared configuration.
    ApplyConfig {
        #[serde(default)]
        service: Option<String>,
        changes: BTreeMap<String, String>,
    },
    /// A named check (phase 5, or a gate after a step), with the runbook's parameters for the checks that have
    /// some: journaled with the plan, so a resumed run judges as it was planned whatever the file says later.
    Check {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        params: Option<CheckParams>,
    },
    /// Create the named release's streams that do not exist yet (additive: expand before the switch).
    EnsureStreams { release: String },
    /// Phase 2.2 on a target whose releases ship cluster objects (Kubernetes): `release`'s network policies and
    /// secrets applied as its manifests write them (server-side, conflicts forced), and the network policies only
    /// `from` has removed. Idempotent: applying the same manifests again changes nothing.
    ApplyObjects { from: String, release: String },
    /// Phase 2.2: run each named service with exactly this configuration (restarting those that differ).
    ConfigureServices {
        services: BTreeMap<String, BTreeMap<String, String>>,
    },
    /// Phase 3: `pg_dump` (custom format) into the run's directory with its SHA-256, readable by
    /// `pg_restore --list`, and with it, from the same exported PostgreSQL snapshot, the full integrity scan (a
    /// checksum per table) with a row snapshot outside the database: the loss assessment's "before".
    /// `alembic current` and `history` recorded. Keeps an existing verified pair: a resumed run never overwrites it.
    DbBackup,
    /// Phase 3, before anything destructive: the backup proven by its data. Every row it holds is read and hashed
    /// as the scan hashed the database's, and every table's checksum must equal the snapshot's; the proof is kept
    /// in the run's directory.
    BackupProof,
    /// Phase 3: the compatibility check, again against the live database: every revision from `from_revision` to
    /// `to_revision` can be migrated (a downgrade exists in `migrations`), and `release` runs on `to_revision`.
    DbCompatibility {
        from_revision: String,
        to_revision: String,
        release: String,
    },
    /// Phase 3: one Alembic revision, down (`revision` → `to_revision`) or up, with the real `alembic` and the
    /// migration scripts of the release rolled back *from*. What the downgrade destroys is preserved first.
    Migrate {
        revision: String,
        to_revision: String,
        direction: MigrationDirection,
        /// The runbook's name for the data migration (G6, G7, G8), when the revision is one.
        #[serde(default)]
        data_migration: Option<String>,
        #[serde(default)]
        preserve: Vec<Preserve>,
    },
    /// Phase 3: the schema is the target's: `alembic_version` is `revision` and the tables are what it defines.
    DbVerify { revision: String },
    /// `xorbctl restore`: run `source_run`'s phase-3 backup restored into a new database (with the cluster roles
    /// it needs) and proven there: every table's checksum equal to the snapshot taken with the dump.
    DbRestore { source_run: String },
    /// `xorbctl restore`: the services stopped, the live database renamed out of the way (kept for the
    /// post-mortem), the restored one renamed into its place, the services started again. `revision` is the
    /// backup's schema: every live service must run on it.
    DbSwitch {
        source_run: String,
        revision: String,
    },
    /// Roll-forward: re-import the data an earlier run preserved (evidence with its signatures, control-plane
    /// data, tenant isolation modes), verified again before and after.
    ReimportPreserved {
        source_run: String,
        /// The kinds to re-import; empty: every kind the run preserved. Another run may hold the rest, or have had
        /// them re-imported already (docs/design/journal-and-resume.md, "A lost journal").
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        kinds: Vec<Preserve>,
    },
    /// Phase 4: save every live stream's configuration and last sequence, and the messages of the streams the
    /// target does not define. Keeps an existing save.
    NatsSave { release: String },
    /// Phase 4: remove the streams `release` does not define, create or update its own, verify.
    NatsApply { release: String },
    /// Phase 4: an RDB backup of Redis that `redis-check-rdb` accepts. Keeps an existing valid backup.
    RedisBackup,
    /// Phase 4: flush the databases `release` does not use, apply its configuration, verify (PING, CONFIG GET).
    RedisApply { release: String },
    /// Validate `release`'s Prometheus configuration and alert rules (`promtool`) and Alertmanager configuration
    /// (`amtool`) without touching anything.
    MonitoringValidate { release: String },
    /// Phase 4: validate again, apply, reload Prometheus (and Alertmanager), verify; write Grafana dashboards
    /// where a Grafana is configured.
    MonitoringApply { release: String },
}

/// Which way a migration step goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MigrationDirection {
    Down,
    Up,
}

/// Data a downgrade destroys that is exported (and verified) before it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preserve {
    /// G7: every evidence record and storage file, with its signature.
    Evidence,
    /// G8: tenant quotas and usage records.
    ControlPlane,
    /// G6: each tenant's isolation mode (tenants return to basic isolation).
    IsolationModes,
    /// rc1's advanced audit logs (the hash chain over `audit_log`) and, beside them, its per-tenant metrics.
    AuditChain,
}

impl Preserve {
    pub fn name(self) -> &'static str {
        match self {
            Preserve::Evidence => "evidence",
            Preserve::ControlPlane => "control-plane",
            Preserve::IsolationModes => "isolation-modes",
            Preserve::AuditChain => "audit-chain",
        }
    }
}

impl Action {
    /// The variant's name as serialized ("set_image").
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Noop => "noop",
            Action::CaptureState => "capture_state",
            Action::VerifyTargetAvailable => "verify_target_available",
            Action::IntegrityQuick => "integrity_quick",
            Action::SetImage { .. } => "set_image",
            Action::RemoveService { .. } => "remove_service",
            Action::AddService { .. } => "add_service",
            Action::ApplyConfig { .. } => "apply_config",
            Action::Check { .. } => "check",
            Action::EnsureStreams { .. } => "ensure_streams",
            Action::ConfigureServices { .. } => "configure_services",
            Action::ApplyObjects { .. } => "apply_objects",
            Action::DbBackup => "db_backup",
            Action::BackupProof => "backup_proof",
            Action::DbCompatibility { .. } => "db_compatibility",
            Action::Migrate { .. } => "migrate",
            Action::DbVerify { .. } => "db_verify",
            Action::DbRestore { .. } => "db_restore",
            Action::DbSwitch { .. } => "db_switch",
            Action::ReimportPreserved { .. } => "reimport_preserved",
            Action::NatsSave { .. } => "nats_save",
            Action::NatsApply { .. } => "nats_apply",
            Action::RedisBackup => "redis_backup",
            Action::RedisApply { .. } => "redis_apply",
            Action::MonitoringValidate { .. } => "monitoring_validate",
            Action::MonitoringApply { .. } => "monitoring_apply",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Noop => f.write_str("no-op"),
            Action::CaptureState => f.write_str("capture system state"),
            Action::VerifyTargetAvailable => f.write_str("verify rollback target availability"),
            Action::IntegrityQuick => f.write_str("quick data-integrity scan"),
            Action::SetImage { service, image, .. } => {
                write!(f, "set image of {service} to {image}")
            }
            Action::RemoveService { service } => write!(f, "remove service {service}"),
            Action::AddService { service, image, .. } => {
                write!(f, "add service {service} on {image}")
            }
            Action::ApplyConfig { service, changes } => {
                let keys: Vec<&str> = changes.keys().map(String::as_str).collect();
                match service {
                    Some(s) => write!(f, "apply configuration of {s} ({})", keys.join(", ")),
                    None => write!(f, "apply configuration ({})", keys.join(", ")),
                }
            }
            Action::Check { name, .. } => write!(f, "check {name}"),
            Action::EnsureStreams { release } => write!(f, "ensure the streams of {release}"),
            Action::ConfigureServices { services } => {
                let names: Vec<&str> = services.keys().map(String::as_str).collect();
                write!(f, "configure {}", names.join(", "))
            }
            Action::ApplyObjects { from, release } => write!(
                f,
                "apply the network policies and secrets of {release}, removing those only {from} has"
            ),
            Action::DbBackup => f.write_str("back up the database"),
            Action::BackupProof => {
                f.write_str("prove the backup by restoring it and comparing checksums")
            }
            Action::DbCompatibility {
                from_revision,
                to_revision,
                ..
            } => write!(
                f,
                "check schema compatibility {from_revision} -> {to_revision}"
            ),
            Action::Migrate {
                revision,
                to_revision,
                direction,
                ..
            } => match direction {
                MigrationDirection::Down => write!(f, "downgrade {revision} -> {to_revision}"),
                MigrationDirection::Up => write!(f, "upgrade {revision} -> {to_revision}"),
            },
            Action::DbVerify { revision } => write!(f, "verify the schema is {revision}"),
            Action::DbRestore { source_run } => {
                write!(
                    f,
                    "restore the backup of run {source_run} into a new database"
                )
            }
            Action::DbSwitch { source_run, .. } => {
                write!(
                    f,
                    "switch the services to the restored backup of run {source_run}"
                )
            }
            Action::ReimportPreserved { source_run, kinds } if kinds.is_empty() => {
                write!(f, "re-import the data preserved by run {source_run}")
            }
            Action::ReimportPreserved { source_run, kinds } => {
                let names: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
                write!(
                    f,
                    "re-import the {} preserved by run {source_run}",
                    names.join(", ")
                )
            }
            Action::NatsSave { .. } => f.write_str("save NATS streams"),
            Action::NatsApply { release } => write!(f, "apply the streams of {release}"),
            Action::RedisBackup => f.write_str("back up Redis"),
            Action::RedisApply { release } => write!(f, "apply the Redis setup of {release}"),
            Action::MonitoringValidate { release } => {
                write!(f, "validate the monitoring configuration of {release}")
            }
            Action::MonitoringApply { release } => {
                write!(f, "apply the monitoring configuration of {release}")
            }
        }
    }
}

fn default_timeout_secs() -> u64 {
    StepSpec::DEFAULT_TIMEOUT_SECS
}

/// The parameters a check takes from the runbook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum CheckParams {
    Performance(crate::policy::Performance),
    /// `audit-log`: the window (`checks.audit_window`), in seconds.
    AuditLog {
        since_secs: u64,
    },
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepSpec {
    /// Stable identifier, unique in the plan, used on the command line (`--confirm 2.api.image`):
    /// `<phase>.<subject>.<what>`.
    pub id: String,
    pub phase: Phase,
    /// One line for people: "Roll api back to v2025.07-stable".
    pub title: String,
    pub action: Action,
    /// The live diff this step makes.
    #[serde(default)]
    pub changes: Vec<Change>,
    pub safety: Safety,
    /// The step (and its probe) is cancelled after this many seconds; 0 means no limit.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    #[serde(default)]
    pub policy: FailurePolicy,
    /// Names of the checks this step runs or gates on (shown by `plan`, listed by the report).
    #[serde(default)]
    pub checks: Vec<String>,
    /// What the step reads and changes (`crate::access`): steps of one phase that do not conflict run at the
    /// same time. None: unknown, so the step runs alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<crate::access::Access>,
}

impl StepSpec {
    /// The runbook's rollout wait (`kubectl rollout status --timeout=300s`).
    pub const DEFAULT_TIMEOUT_SECS: u64 = 300;

    /// A step with no changes, no checks, the default timeout and the `Abort` policy.
    pub fn new(
        id: impl Into<String>,
        phase: Phase,
        title: impl Into<String>,
        action: Action,
        safety: Safety,
    ) -> Self {
        StepSpec {
            id: id.into(),
            phase,
            title: title.into(),
            action,
            changes: Vec::new(),
            safety,
            timeout_secs: Self::DEFAULT_TIMEOUT_SECS,
            policy: FailurePolicy::Abort,
            checks: Vec::new(),
            access: None,
        }
    }

    pub fn with_change(mut self, change: Change) -> Self {
        self.changes.push(change);
        self
    }

    /// The step's timeout and retry numbers against `crate::limits`.
    pub fn check_numbers(&self) -> Result<(), String> {
        use crate::limits::{ATTEMPTS, BACKOFF_MS, STEP_TIMEOUT_SECS};
        STEP_TIMEOUT_SECS.check("timeout_secs", self.timeout_secs)?;
        if let FailurePolicy::Retry {
            attempts,
            backoff_ms,
            ..
        } = self.policy
        {
            ATTEMPTS.check("policy.attempts", attempts)?;
            BACKOFF_MS.check("policy.backoff_ms", backoff_ms)?;
        }
        Ok(())
    }

    pub fn with_timeout_secs(mut self, secs: u64) -> Self {
        self.timeout_secs = secs;
        self
    }

    pub fn with_policy(mut self, policy: FailurePolicy) -> Self {
        self.policy = policy;
        self
    }

    pub fn with_check(mut self, check: impl Into<String>) -> Self {
        self.checks.push(check.into());
        self
    }

    /// "step 2.api.image (Phase 2 of 5: service rollback)".
    pub fn locate(&self) -> String {
        format!("step {} ({})", self.id, self.phase)
    }
}

/// Why a plan cannot be executed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("step #{index} has an empty id; every step needs a stable id such as \"2.api.image\"")]
    EmptyId { index: usize },
    #[error("step id {id:?} appears twice in the plan; step ids must be unique")]
    DuplicateId { id: String },
    #[error(
        "step {id} is in {phase} but comes after a step of {previous}; steps must follow the phase order 1 to 5"
    )]
    OutOfOrder {
        id: String,
        phase: Phase,
        previous: Phase,
    },
    #[error("step {id} has a retry policy with 0 attempts; use at least 1")]
    ZeroAttempts { id: String },
    /// A number no policy file may give (`crate::limits`): a plan journaled before the files were checked.
    #[error("step {id}: {message}; this plan cannot run as it is: plan the rollback again")]
    OutOfRange { id: String, message: String },
}

/// A rollback plan: from one release to another, as ordered steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The release the live stack is on (rolled back *from*).
    pub from: String,
    /// The release to roll back *to*.
    pub to: String,
    /// `--only` scope ("api", "services", …); `None` for a full rollback.
    #[serde(default)]
    pub scope: Option<String>,
    /// A restore (`xorbctl restore RUN`) of run RUN's backup rather than a rollback; `from` and `to` are then
    /// both the release the services run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_of: Option<String>,
    pub steps: Vec<StepSpec>,
    /// SHA-256 of every file of the two releases when the plan was made ("RELEASE/PATH" → hex): a resume
    /// refuses to carry on with steps planned from files that have changed since.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub release_digests: BTreeMap<String, String>,
}

impl Plan {
    pub fn new(from: impl Into<String>, to: impl Into<String>) -> Self {
        Plan {
            from: from.into(),
            to: to.into(),
            scope: None,
            restore_of: None,
            steps: Vec::new(),
            release_digests: BTreeMap::new(),
        }
    }

    pub fn with_step(mut self, step: StepSpec) -> Self {
        self.steps.push(step);
        self
    }

    /// Checks what the engine relies on: non-empty unique ids, phases in order, retry attempts ≥ 1.
    pub fn validate(&self) -> Result<(), PlanError> {
        let mut seen = BTreeSet::new();
        let mut previous: Option<Phase> = None;
        for (index, step) in self.steps.iter().enumerate() {
            if step.id.trim().is_empty() {
                return Err(PlanError::EmptyId { index });
            }
            if !seen.insert(step.id.as_str()) {
                return Err(PlanError::DuplicateId {
                    id: step.id.clone(),
                });
            }
            if let Some(prev) = previous
                && step.phase < prev
            {
                return Err(PlanError::OutOfOrder {
                    id: step.id.clone(),
                    phase: step.phase,
                    previous: prev,
                });
            }
            if let FailurePolicy::Retry { attempts: 0, .. } = step.policy {
                return Err(PlanError::ZeroAttempts {
                    id: step.id.clone(),
                });
            }
            step.check_numbers()
                .map_err(|message| PlanError::OutOfRange {
                    id: step.id.clone(),
                    message,
                })?;
            previous = Some(step.phase);
        }
        Ok(())
    }

    pub fn step(&self, id: &str) -> Option<&StepSpec> {
        self.steps.iter().find(|s| s.id == id)
    }

    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.id == id)
    }

    /// The phases that have steps, each with its steps, in order.
    pub fn phases(&self) -> Vec<(Phase, Vec<&StepSpec>)> {
        let mut out: Vec<(Phase, Vec<&StepSpec>)> = Vec::new();
        for step in &self.steps {
            match out.last_mut() {
                Some((phase, steps)) if *phase == step.phase => steps.push(step),
                _ => out.push((step.phase, vec![step])),
            }
        }
        out
    }

    /// Every change of every step, with the step that makes it.
    pub fn changes(&self) -> impl Iterator<Item = (&StepSpec, &Change)> {
        self.steps
            .iter()
            .flat_map(|s| s.changes.iter().map(move |c| (s, c)))
    }
}

/// What a step did, as reported by the target's runner (or decided by the engine on resume).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum StepOutcome {
    /// The step ran and did what it should. `checks`: the gates that ran after its action, each passed.
    Succeeded {
        detail: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        checks: Vec<crate::check::CheckRun>,
    },
    /// The step was found already done (by a probe on resume, or confirmed by a person) and was not repeated.
    AlreadyDone { detail: String },
    /// The step had nothing to do or does not apply on this target.
    Skipped { reason: String },
    /// The step failed. `retryable`: the runner says trying again may succeed and is safe.
    Failed { error: String, retryable: bool },
}

impl StepOutcome {
    /// Succeeded, with no gate check run.
    pub fn succeeded(detail: impl Into<String>) -> Self {
        StepOutcome::Succeeded {
            detail: detail.into(),
            checks: Vec::new(),
        }
    }

    /// The gate checks that ran after the step's action (none unless it succeeded).
    pub fn checks_run(&self) -> &[crate::check::CheckRun] {
        match self {
            StepOutcome::Succeeded { checks, .. } => checks,
            _ => &[],
        }
    }

    /// Succeeded, already done or skipped: the run may go on to the next step.
    pub fn is_success(&self) -> bool {
        !matches!(self, StepOutcome::Failed { .. })
    }

    pub fn kind(&self) -> &'static str {
        match self {
            StepOutcome::Succeeded { .. } => "succeeded",
            StepOutcome::AlreadyDone { .. } => "already_done",
            StepOutcome::Skipped { .. } => "skipped",
            StepOutcome::Failed { .. } => "failed",
        }
    }

    /// The detail, reason or error text.
    pub fn text(&self) -> &str {
        match self {
            StepOutcome::Succeeded { detail, .. } | StepOutcome::AlreadyDone { detail } => detail,
            StepOutcome::Skipped { reason } => reason,
            StepOutcome::Failed { error, .. } => error,
        }
    }
}

impl fmt::Display for StepOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (label, text) = match self {
            StepOutcome::Succeeded { detail, .. } => ("succeeded", detail),
            StepOutcome::AlreadyDone { detail } => ("already done", detail),
            StepOutcome::Skipped { reason } => ("skipped", reason),
            StepOutcome::Failed { error, .. } => ("FAILED", error),
        };
        if text.is_empty() {
            f.write_str(label)
        } else {
            write!(f, "{label}: {text}")
        }
    }
}

/// Where a run stands, as journaled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RunStatus {
    /// Executing (or, if no process holds the rollback lock, interrupted: resume it).
    Running,
    /// Every step succeeded, was already done or was skipped.
    Succeeded,
    /// Stopped at `step` by its failure policy; fix the cause and resume.
    Failed { step: String, error: String },
    /// Stopped at `step`, after which the emergency procedure ran (`emergency_ok`: it succeeded).
    EmergencyStopped {
        step: String,
        error: String,
        procedure: EmergencyProcedure,
        emergency_ok: bool,
        detail: String,
    },
    /// Stopped before re-running `step`, which cannot be proven safe to repeat: a person must confirm.
    WaitingForConfirmation { step: String, reason: String },
    /// Journaled but not acting: the approvals its `severity` requires are not given yet (`xorbctl approve`).
    WaitingForApproval { severity: String, missing: String },
    /// Aborted by a person; `step` is where the run was when it stopped (if it had started a step).
    Aborted {
        by: String,
        #[serde(default)]
        step: Option<String>,
    },
}

impl RunStatus {
    /// The state name as serialized ("waiting_for_confirmation").
    pub fn kind(&self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed { .. } => "failed",
            RunStatus::EmergencyStopped { .. } => "emergency_stopped",
            RunStatus::WaitingForConfirmation { .. } => "waiting_for_confirmation",
            RunStatus::WaitingForApproval { .. } => "waiting_for_approval",
            RunStatus::Aborted { .. } => "aborted",
        }
    }

    /// Succeeded or aborted: nothing more will happen to this run.
    pub fn is_final(&self) -> bool {
        matches!(self, RunStatus::Succeeded | RunStatus::Aborted { .. })
    }

    /// `xorbctl resume` may continue this run.
    pub fn is_resumable(&self) -> bool {
        !self.is_final()
    }

    /// The step the run stopped at, if it stopped at one.
    pub fn stopped_at(&self) -> Option<&str> {
        match self {
            RunStatus::Failed { step, .. }
            | RunStatus::EmergencyStopped { step, .. }
            | RunStatus::WaitingForConfirmation { step, .. } => Some(step),
            RunStatus::Aborted { step, .. } => step.as_deref(),
            RunStatus::Running | RunStatus::Succeeded | RunStatus::WaitingForApproval { .. } => {
                None
            }
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunStatus::Running => f.write_str("running"),
            RunStatus::Succeeded => f.write_str("succeeded"),
            RunStatus::Failed { step, error } => write!(f, "failed at step {step}: {error}"),
            RunStatus::EmergencyStopped {
                step,
                error,
                procedure,
                emergency_ok,
                ..
            } => {
                let result = if *emergency_ok {
                    "applied"
                } else {
                    "FAILED too"
                };
                write!(
                    f,
                    "failed at step {step}: {error}; emergency procedure {} {result}",
                    procedure.name()
                )
            }
            RunStatus::WaitingForConfirmation { step, reason } => {
                write!(f, "waiting for confirmation of step {step}: {reason}")
            }
            RunStatus::WaitingForApproval { severity, missing } => {
                write!(f, "waiting for approval ({severity}): needs {missing}")
            }
            RunStatus::Aborted {
                by,
                step: Some(step),
            } => write!(f, "aborted by {by} at step {step}"),
            RunStatus::Aborted { by, step: None } => write!(f, "aborted by {by}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(id: &str, phase: Phase) -> StepSpec {
        StepSpec::new(
            id,
            phase,
            format!("step {id}"),
            Action::Noop,
            Safety::Idempotent,
        )
    }

    #[test]
    fn phase_labels_follow_the_runbook() {
        assert_eq!(
            Phase::Services.to_string(),
            "Phase 2 of 5: service rollback"
        );
        assert_eq!(Phase::Services.label(), Phase::Services.to_string());
        assert_eq!(Phase::Verification.position(), "Phase 5 of 5");
        for (i, p) in Phase::ALL.iter().enumerate() {
            assert_eq!(usize::from(p.number()), i + 1);
            assert_eq!(Phase::from_number(p.number()), Some(*p));
        }
        assert_eq!(Phase::from_number(0), None);
        assert_eq!(Phase::from_number(6), None);
    }

    #[test]
    fn validate_rejects_duplicates_order_and_zero_attempts() {
        let ok = Plan::new("a", "b")
            .with_step(step("1.x", Phase::Assessment))
            .with_step(step("2.y", Phase::Services));
        assert_eq!(ok.validate(), Ok(()));

        let dup = ok.clone().with_step(step("2.y", Phase::Services));
        assert_eq!(
            dup.validate(),
            Err(PlanError::DuplicateId { id: "2.y".into() })
        );

        let order = ok.clone().with_step(step("1.z", Phase::Assessment));
        assert!(matches!(
            order.validate(),
            Err(PlanError::OutOfOrder { .. })
        ));

        let empty = Plan::new("a", "b").with_step(step(" ", Phase::Assessment));
        assert_eq!(empty.validate(), Err(PlanError::EmptyId { index: 0 }));

        let zero = Plan::new("a", "b").with_step(step("1.x", Phase::Assessment).with_policy(
            FailurePolicy::Retry {
                attempts: 0,
                backoff_ms: 0,
                then: None,
            },
        ));
        assert_eq!(
            zero.validate(),
            Err(PlanError::ZeroAttempts { id: "1.x".into() })
        );
    }

    #[test]
    fn validate_rejects_numbers_no_policy_file_may_give() {
        let huge = |timeout: u64, attempts: u32, backoff_ms: u64| {
            Plan::new("a", "b").with_step(
                step("2.api.image", Phase::Services)
                    .with_timeout_secs(timeout)
                    .with_policy(FailurePolicy::Retry {
                        attempts,
                        backoff_ms,
                        then: None,
                    }),
            )
        };
        assert_eq!(huge(300, 2, 1000).validate(), Ok(()));
        assert_eq!(huge(0, 2, 1000).validate(), Ok(()), "0 is no limit");
        let e = huge(u64::MAX, 2, 1000).validate().unwrap_err().to_string();
        assert!(
            e.contains("step 2.api.image: timeout_secs = 18446744073709551615 is out of range: allowed 0 (no limit) or 1..=43200 seconds"),
            "{e}"
        );
        let e = huge(300, 2, u64::MAX).validate().unwrap_err().to_string();
        assert!(
            e.contains("policy.backoff_ms = 18446744073709551615"),
            "{e}"
        );
        let e = huge(300, u32::MAX, 1000)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("policy.attempts = 4294967295"), "{e}");
    }

    #[test]
    fn serde_round_trip_of_every_case() {
        let mut changes = BTreeMap::new();
        changes.insert("EVIDENCE_SYSTEM_ENABLED".to_string(), "false".to_string());
        let plan = Plan {
            from: "v2025.08-rc1".into(),
            to: "v2025.07-stable".into(),
            scope: Some("services".into()),
            restore_of: None,
            release_digests: BTreeMap::new(),
            steps: vec![
                step("1.capture", Phase::Assessment).with_check("state-captured"),
                StepSpec::new(
                    "2.api.image",
                    Phase::Services,
                    "Roll api back",
                    Action::SetImage {
                        service: "api".into(),
                        image: "xorb/api:v2025.07-stable".into(),
                        release: "v2025.07-stable".into(),
                    },
                    Safety::Probed,
                )
                .with_change(Change::new(
                    ChangeKind::Image,
                    "api",
                    Some("xorb/api:v2025.08-rc1".into()),
                    Some("xorb/api:v2025.07-stable".into()),
                ))
                .with_policy(FailurePolicy::Retry {
                    attempts: 3,
                    backoff_ms: 500,
                    then: Some(EmergencyProcedure::CascadePrevention),
                }),
                StepSpec::new(
                    "2.control-plane.remove",
                    Phase::Services,
                    "Remove control-plane",
                    Action::RemoveService {
                        service: "control-plane".into(),
                    },
                    Safety::NotRepeatable,
                )
                .with_policy(FailurePolicy::Emergency {
                    procedure: EmergencyProcedure::MinimalService,
                }),
                StepSpec::new(
                    "2.config",
                    Phase::Services,
                    "Configuration",
                    Action::ApplyConfig {
                        service: None,
                        changes,
                    },
                    Safety::Idempotent,
                ),
                StepSpec::new(
                    "5.target",
                    Phase::Verification,
                    "v",
                    Action::VerifyTargetAvailable,
                    Safety::Idempotent,
                ),
                StepSpec::new(
                    "5.integrity",
                    Phase::Verification,
                    "v",
                    Action::IntegrityQuick,
                    Safety::Idempotent,
                ),
                StepSpec::new(
                    "5.capture",
                    Phase::Verification,
                    "v",
                    Action::CaptureState,
                    Safety::Idempotent,
                ),
                StepSpec::new(
                    "5.health",
                    Phase::Verification,
                    "h",
                    Action::Check {
                        name: "health".into(),
                        params: None,
                    },
                    Safety::Idempotent,
                ),
            ],
        };
        let json = serde_json::to_string(&plan).unwrap();
        let back: Plan = serde_json::from_str(&json).unwrap();
        assert_eq!(back, plan);

        let outcomes = [
            StepOutcome::succeeded("ok"),
            StepOutcome::AlreadyDone {
                detail: "probe".into(),
            },
            StepOutcome::Skipped {
                reason: "n/a".into(),
            },
            StepOutcome::Failed {
                error: "boom".into(),
                retryable: true,
            },
        ];
        for o in outcomes {
            let back: StepOutcome =
                serde_json::from_str(&serde_json::to_string(&o).unwrap()).unwrap();
            assert_eq!(back, o);
        }
        let statuses = [
            RunStatus::Running,
            RunStatus::Succeeded,
            RunStatus::Failed {
                step: "s".into(),
                error: "e".into(),
            },
            RunStatus::EmergencyStopped {
                step: "s".into(),
                error: "e".into(),
                procedure: EmergencyProcedure::MinimalService,
                emergency_ok: true,
                detail: "d".into(),
            },
            RunStatus::WaitingForConfirmation {
                step: "s".into(),
                reason: "r".into(),
            },
            RunStatus::Aborted {
                by: "alice".into(),
                step: None,
            },
        ];
        for s in statuses {
            let back: RunStatus =
                serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
            assert_eq!(back, s);
            assert_eq!(serde_json::to_value(&s).unwrap()["state"], s.kind());
        }
    }

    #[test]
    fn minimal_step_json_uses_defaults() {
        let s: StepSpec = serde_json::from_str(
            r#"{"id":"5.health","phase":"verification","title":"Health","action":{"kind":"check","name":"health"},"safety":"idempotent"}"#,
        )
        .unwrap();
        assert_eq!(s.timeout_secs, StepSpec::DEFAULT_TIMEOUT_SECS);
        assert_eq!(s.policy, FailurePolicy::Abort);
        assert!(s.changes.is_empty());
        let p: FailurePolicy =
            serde_json::from_str(r#"{"kind":"retry","attempts":2,"backoff_ms":10}"#).unwrap();
        assert_eq!(p.max_attempts(), 2);
        assert_eq!(p.emergency(), None);
    }

    #[test]
    fn change_display_reads_like_a_diff() {
        let c = Change::new(
            ChangeKind::Image,
            "api",
            Some("xorb/api:rc1".into()),
            Some("xorb/api:stable".into()),
        );
        assert_eq!(c.to_string(), "image api: xorb/api:rc1 → xorb/api:stable");
        let r = Change::new(
            ChangeKind::ServiceRemoved,
            "control-plane",
            Some("xorb/control-plane:rc1".into()),
            None,
        );
        assert_eq!(
            r.to_string(),
            "remove service control-plane (xorb/control-plane:rc1)"
        );
        let k = Change::new(
            ChangeKind::Config,
            "TENANT_ISOLATION_MODE",
            Some("advanced".into()),
            Some("basic".into()),
        );
        assert_eq!(
            k.to_string(),
            "config TENANT_ISOLATION_MODE: advanced → basic"
        );
    }

    #[test]
    fn phases_groups_consecutive_steps() {
        let plan = Plan::new("a", "b")
            .with_step(step("1.a", Phase::Assessment))
            .with_step(step("2.a", Phase::Services))
            .with_step(step("2.b", Phase::Services))
            .with_step(step("5.a", Phase::Verification));
        let phases = plan.phases();
        assert_eq!(phases.len(), 3);
        assert_eq!(phases[1].0, Phase::Services);
        assert_eq!(phases[1].1.len(), 2);
        assert_eq!(plan.index_of("2.b"), Some(2));
    }
}
