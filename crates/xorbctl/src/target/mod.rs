//! The target xorbctl acts on, behind one module: the only place in xorbctl's `src/` that names `xorb_local` or
//! the Kubernetes target. Commands ask this module to start, stop and observe the stack, plan against it, run a
//! rollback's steps on it (its [`Runner`]) and probe it; when a target's crate changes its API, only this module
//! changes. Which target a state directory acts on is decided once, by [`select`].

pub mod any;
pub mod kube_stack;
mod kube_status;
pub mod lease;
pub mod select;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use xorb_adapters::target::Target;

use xorb_engine::planner::{LiveState, ReimportSource};
use xorb_model::exit::Exit;
use xorb_model::release::Release;
use xorb_model::schema::LiveDatabase;

use crate::errors::UsageError;
use crate::settings::Locations;

pub use xorb_adapters::deps::Cause;
pub use xorb_adapters::pg::CriticalReport;
pub use xorb_adapters::pg::PgConn as Database;
pub use xorb_local::LocalError as TargetError;
pub use xorb_local::servers::{
    parse_prometheus_duration, prometheus_duration, release_scrape_interval,
};
pub use xorb_local::stack::{DownEntry, StackState, StackStatus, UpReport};

pub use any::AnyTarget;
pub use lease::Runner;
pub use select::Choice;

/// The shared adapters over a target's workloads and endpoints (what the checks of `assess`, `perf` and `audit`
/// run on).
pub type Adapters = xorb_adapters::TargetRunner<AnyTarget>;

/// Where the target finds what it needs outside the state directory.
pub type Paths = xorb_local::stack::Paths;

/// The target's paths from the resolved locations (the releases directory must be known).
pub fn paths(loc: &Locations) -> Result<Paths, UsageError> {
    Ok(Paths {
        releases_root: loc.releases_root()?.to_path_buf(),
        venv: loc.venv.clone(),
        svc_bin: loc.svc_bin.clone(),
    })
}

/// The exit code of a target error anywhere in an error's chain (`main` asks it with the other known types).
pub fn exit_of(cause: &(dyn std::error::Error + 'static)) -> Option<Exit> {
    cause
        .downcast_ref::<TargetError>()
        .map(TargetError::exit)
        .or_else(|| {
            cause
                .downcast_ref::<xorb_adapters::AdapterError>()
                .map(xorb_adapters::AdapterError::exit)
        })
        .or_else(|| {
            cause
                .downcast_ref::<xorb_kube::KubeError>()
                .map(xorb_kube::KubeError::exit)
        })
        .or_else(|| {
            cause
                .downcast_ref::<xorb_kube_target::KubeTargetError>()
                .map(xorb_kube_target::KubeTargetError::exit)
        })
        .or_else(|| {
            cause
                .downcast_ref::<xorb_kube_target::spec::SpecError>()
                .map(|_| Exit::BadInput)
        })
        .or_else(|| {
            use xorb_kubelab::stack::daemon::DaemonError;
            cause.downcast_ref::<DaemonError>().map(|e| match e {
                DaemonError::CorruptRecord { .. } | DaemonError::Args(_) => Exit::BadInput,
                DaemonError::NothingToStop { .. } | DaemonError::Leftovers { .. } => Exit::Refused,
                _ => Exit::DependencyFailed,
            })
        })
}

// ---------------------------------------------------------------------------------------------------------------
// The stack's lifecycle

/// How much demo data beyond the handful of `--demo-data`: `--bulk-sessions`, `--scale` (0: none).
#[derive(Debug, Clone, Copy, Default)]
pub struct DemoSize {
    pub bulk_sessions: u64,
    pub scale: u64,
}

pub async fn stack_up(
    paths: &Paths,
    state_dir: &Path,
    release: &str,
    demo_data: bool,
    grafana_dashboards: Option<&Path>,
    scrape_interval: Option<std::time::Duration>,
    size: DemoSize,
) -> Result<UpReport, TargetError> {
    let opts = xorb_local::stack::UpOptions {
        grafana_dashboards: grafana_dashboards.map(Path::to_path_buf),
        scrape_interval,
        bulk_sessions: size.bulk_sessions,
        scale: size.scale,
    };
    xorb_local::stack::up_with(paths, state_dir, release, demo_data, &opts).await
}

/// Why `stack down` cannot read the stack's record, when it cannot, and where it then finds the processes.
pub fn unreadable_stack_record(state_dir: &Path) -> Option<String> {
    match StackState::load(state_dir) {
        Err(e @ TargetError::Config(_)) => Some(format!(
            "{e}: stopping the processes recorded in {} instead.",
            xorb_local::pidfiles::dir(state_dir).display()
        )),
        _ => None,
    }
}

/// Stops what `stack up` started; `None` when no stack is recorded there.
pub async fn stack_down(state_dir: &Path) -> Result<Option<Vec<DownEntry>>, TargetError> {
    match xorb_local::stack::down(state_dir).await {
        Ok(e) => Ok(Some(e)),
        Err(TargetError::NoStack(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// What happened to one process at `stack down`, in words.
pub fn stop_result_text(e: &DownEntry) -> &'static str {
    use xorb_local::process::StopResult;
    match e.result {
        StopResult::Stopped => "stopped",
        StopResult::Killed => "did not stop in time: killed",
        StopResult::AlreadyGone => "was already gone",
        StopResult::PidReused => "pid now belongs to another process: left alone",
    }
}

/// Every service's release and health, the schema revision, streams, Redis databases and Prometheus targets, of
/// the stack the state directory is bound to.
pub async fn stack_status(loc: &Locations) -> anyhow::Result<StackStatus> {
    if select::bound(&loc.state_dir)?.is_none() && loc.target.target.is_none() {
        return Ok(xorb_local::stack::status(&loc.state_dir).await?);
    }
    let opened = open(loc).await?;
    match &opened.target {
        AnyTarget::Local(_) => Ok(xorb_local::stack::status(&loc.state_dir).await?),
        AnyTarget::Kube(_) => {
            let live = opened.observe().await?;
            let ep = opened.endpoints()?;
            kube_status::status(&opened.target, live, ep, &loc.state_dir).await
        }
    }
}

/// The stack's record (`stack.json`).
pub fn stack_state(state_dir: &Path) -> Result<StackState, TargetError> {
    StackState::load(state_dir)
}

// ---------------------------------------------------------------------------------------------------------------
// Planning and running

/// The target a command acts on, connected: on Kubernetes the target file is read, the cluster reached as kubectl
/// would and the passwords read from their Secrets, once.
pub struct Opened {
    target: AnyTarget,
    state_dir: PathBuf,
    paths: Paths,
    cluster: Option<(select::KubeChoice, xorb_kube::client::Cluster)>,
}

/// Opens the target `loc` selects (reads only: nothing is written, not even the binding).
pub async fn open(loc: &Locations) -> anyhow::Result<Opened> {
    let paths = paths(loc)?;
    let state_dir = loc.state_dir.clone();
    match select::choose(&state_dir, &loc.target)? {
        Choice::Local => Ok(Opened {
            target: AnyTarget::Local(xorb_local::target::LocalTarget::new(
                &state_dir,
                paths.clone(),
            )),
            state_dir,
            paths,
            cluster: None,
        }),
        Choice::Kube(k) => {
            let mut spec = xorb_kube_target::spec::TargetFile::load(&k.target_file)?;
            let cluster = xorb_kube::client::connect(&xorb_kube::client::Selection {
                kubeconfig: k.kubeconfig.clone(),
                context: k.context.clone(),
                namespace: Some(k.namespace.clone().unwrap_or(spec.namespace.clone())),
            })
            .await?;
            spec.namespace = cluster.namespace.clone();
            let t = xorb_kube_target::KubeTarget::connect(cluster.client.clone(), spec, &state_dir)
                .await
                .with_context(|| {
                    format!(
                        "the Kubernetes target of {} (context {}, namespace {})",
                        k.target_file.display(),
                        cluster.context,
                        cluster.namespace
                    )
                })?;
            Ok(Opened {
                target: AnyTarget::Kube(Box::new(t)),
                state_dir,
                paths,
                cluster: Some((k, cluster)),
            })
        }
    }
}

fn step_error(what: &str, e: xorb_engine::StepError) -> anyhow::Error {
    anyhow::anyhow!("{what}: {e}")
}

impl Opened {
    /// The live services (and what else the planner needs that the target can see without the database).
    pub async fn observe(&self) -> anyhow::Result<LiveState> {
        match &self.target {
            AnyTarget::Local(_) => Ok(xorb_local::target::observe(&self.state_dir)?),
            AnyTarget::Kube(t) => t
                .observe()
                .await
                .map_err(|e| step_error("cannot observe the namespace's workloads", e)),
        }
    }

    fn endpoints(&self) -> anyhow::Result<xorb_adapters::Endpoints> {
        self.target
            .endpoints()
            .map_err(|e| step_error("cannot tell where the stack's dependencies answer", e))
    }

    /// The live schema revision and the revisions of `from`'s migration scripts.
    pub async fn observe_database(&self, from: &Release) -> anyhow::Result<LiveDatabase> {
        match &self.target {
            AnyTarget::Local(_) => Ok(observe_database(&self.state_dir, &self.paths, from).await?),
            AnyTarget::Kube(_) => Ok(xorb_adapters::pg::observe_database(
                &self.endpoints()?.postgres,
                &self.paths,
                from,
            )
            .await?),
        }
    }

    /// The JetStream streams that exist now, so that the plan says which a rollback creates; None when NATS cannot
    /// be asked (the plan is then made without looking, and the run itself reports NATS).
    pub async fn observe_streams(&self) -> Option<Vec<String>> {
        let nats = self.endpoints().ok()?.nats;
        xorb_adapters::nats::list_streams(&nats).await.ok()
    }

    /// Data preserved by earlier rollbacks that a roll-forward re-imports.
    pub fn pending_reimports(&self) -> Vec<ReimportSource> {
        xorb_adapters::pg::pending_reimports(&self.state_dir)
    }

    /// The passwords this target read from outside the state directory (Kubernetes Secrets), for the redactor:
    /// the local stack's are in the state directory, where the redactor finds them itself.
    pub fn secrets(&self) -> Vec<String> {
        match (&self.target, self.endpoints()) {
            (AnyTarget::Kube(_), Ok(ep)) => vec![ep.postgres.password, ep.redis.password],
            _ => Vec::new(),
        }
    }

    /// The cluster and namespace, on Kubernetes.
    pub fn cluster(&self) -> Option<(&select::KubeChoice, &xorb_kube::client::Cluster)> {
        self.cluster.as_ref().map(|(k, c)| (k, c))
    }

    /// What runs a rollback to `to` on this target, checking `lease` before every step.
    pub fn runner(self, to: Release, lease: Option<&xorb_kube::lease::HeldLease>) -> Runner {
        let inner = xorb_adapters::TargetRunner::new(self.target, self.paths, self.state_dir, to);
        Runner::new(inner, lease)
    }
}

/// One step's live diff on Kubernetes: the object and its fields as they would change.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepDiff {
    pub step: String,
    pub object: String,
    pub changes: Vec<String>,
}

impl Opened {
    /// On Kubernetes, what the plan's steps of phase 2 would change on the live objects, field by field, by the
    /// API server's dry run (`kubectl diff`); None on the local target. Changes nothing.
    pub async fn live_diff(
        &self,
        plan: &xorb_model::plan::Plan,
    ) -> anyhow::Result<Option<Vec<StepDiff>>> {
        use xorb_model::plan::Action;
        let AnyTarget::Kube(t) = &self.target else {
            return Ok(None);
        };
        let mut out = Vec::new();
        let mut removed: Vec<String> = Vec::new();
        for step in &plan.steps {
            if let Action::RemoveService { service } = &step.action {
                removed.push(service.clone());
            }
            let dry_run = |e| step_error(&format!("the dry run of {}", step.id), e);
            let objects: Vec<(String, Vec<String>)> = match &step.action {
                Action::SetImage { service, image, .. } => vec![(
                    format!(
                        "deployment/{}",
                        xorb_kube_target::names::deployment(service)
                    ),
                    t.preview_image(service, image).await.map_err(dry_run)?,
                )],
                Action::RemoveService { service } => {
                    let name = xorb_kube_target::names::deployment(service);
                    let gone = t
                        .removed(service)
                        .await
                        .map_err(|e| step_error(&format!("reading {name}"), e))?;
                    vec![(
                        format!("deployment/{name}, service/{name}"),
                        if gone {
                            Vec::new()
                        } else {
                            vec!["deleted".to_string()]
                        },
                    )]
                }
                Action::ApplyObjects { from, release } => {
                    let load = |name: &str| {
                        Release::load_named(&self.paths.releases_root, name)
                            .map_err(|e| anyhow::anyhow!("release {name}: {e}"))
                    };
                    let (from, to) = (load(from)?, load(release)?);
                    let diff = t.preview_objects(&from, &to).await.map_err(dry_run)?;
                    if diff.is_empty() {
                        vec![("network policies and secrets".to_string(), Vec::new())]
                    } else {
                        diff
                    }
                }
                Action::ConfigureServices { services } => {
                    let diff = t
                        .preview_configuration(services, &removed)
                        .await
                        .map_err(dry_run)?;
                    if diff.is_empty() {
                        vec![("configmaps".to_string(), Vec::new())]
                    } else {
                        diff
                    }
                }
                _ => continue,
            };
            out.extend(objects.into_iter().map(|(object, changes)| StepDiff {
                step: step.id.clone(),
                object,
                changes,
            }));
        }
        Ok(Some(out))
    }
}

/// The release's migration scripts are there (and inside its tree).
pub fn check_migrations_dir(release: &Release) -> Result<(), TargetError> {
    Ok(xorb_adapters::pg::check_migrations_dir(release)?)
}

/// The live schema revision and the revisions of `from`'s migration scripts (the local stack).
async fn observe_database(
    state_dir: &Path,
    paths: &Paths,
    from: &Release,
) -> Result<LiveDatabase, TargetError> {
    Ok(xorb_adapters::pg::observe_database(&database(state_dir)?, paths, from).await?)
}

/// The local stack's adapters rolling to `to` (for the checks of `assess`, `perf`, `audit`).
pub fn runner(state_dir: &Path, paths: Paths, to: Release) -> Adapters {
    xorb_adapters::TargetRunner::new(
        AnyTarget::Local(xorb_local::target::LocalTarget::new(
            state_dir,
            paths.clone(),
        )),
        paths,
        state_dir.to_path_buf(),
        to,
    )
}

/// After `abort RUN` in a state directory bound to Kubernetes: gives the namespace's Lease back if the run kept
/// it. None on the local target.
pub async fn after_abort(state_dir: &Path, run: &str) -> anyhow::Result<Option<bool>> {
    let Some(k) = select::bound(state_dir)? else {
        return Ok(None);
    };
    let spec = xorb_kube_target::spec::TargetFile::load(&k.target_file)?;
    let cluster = xorb_kube::client::connect(&xorb_kube::client::Selection {
        kubeconfig: k.kubeconfig.clone(),
        context: k.context.clone(),
        namespace: Some(k.namespace.clone().unwrap_or(spec.namespace)),
    })
    .await?;
    Ok(Some(
        lease::release_aborted(cluster.client, &cluster.namespace, run).await?,
    ))
}

/// Refuses a command that works only on the local stack when the state directory is bound to Kubernetes.
pub fn local_only(state_dir: &Path, command: &str) -> Result<(), UsageError> {
    match select::bound(state_dir)? {
        None => Ok(()),
        Some(k) => Err(UsageError(format!(
            "`xorbctl {command}` works on the local stack only for now, and {} is bound to the Kubernetes target              ({}); kubectl shows the namespace's state meanwhile",
            state_dir.display(),
            k.target_file.display()
        ))),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The database

/// The runbook's critical data: tenants, sessions, findings, evidence and its signatures.
pub async fn critical_check(state_dir: &Path) -> Result<CriticalReport, TargetError> {
    let evidence = xorb_local::target::evidence_dir(state_dir);
    Ok(xorb_adapters::pg::critical_check(&database(state_dir)?, &evidence).await?)
}

/// The stack's database: `.config()` for a scan, `.connect()` for a client.
pub fn database(state_dir: &Path) -> Result<Database, TargetError> {
    let st = StackState::load(state_dir)?;
    let secrets = xorb_local::stack::Secrets::load(state_dir)?;
    Ok(st.pg(&secrets))
}

// ---------------------------------------------------------------------------------------------------------------
// Probes (`assess`, the notification sender)

/// A service's `/api/v1/health`: `Ok(None)` healthy, `Ok(Some(detail))` unhealthy, `Err` no answer.
pub async fn probe_service(http: &reqwest::Client, port: u16) -> Result<Option<String>, String> {
    let h =
        xorb_adapters::services::probe_service(http, &format!("http://127.0.0.1:{port}")).await?;
    Ok((!h.healthy).then(|| h.detail.to_string()))
}

/// Prometheus' scrape targets: (job, health); `Err` says why Prometheus did not answer.
pub async fn prometheus_targets(
    http: &reqwest::Client,
    prometheus: &str,
) -> Result<Vec<(String, String)>, String> {
    Ok(
        xorb_adapters::monitoring::prometheus_targets(http, prometheus)
            .await?
            .into_iter()
            .map(|t| (t.job, t.health))
            .collect(),
    )
}

/// A GET of `url` from Prometheus (at `endpoint`) within `limit`; the error says which dependency, what was asked
/// and why it failed.
pub async fn prometheus_get(
    http: &reqwest::Client,
    endpoint: &str,
    url: reqwest::Url,
    limit: Duration,
) -> Result<serde_json::Value, TargetError> {
    use xorb_adapters::deps::{self, Dep};
    let dep = Dep::http("Prometheus", endpoint);
    let what = format!("GET {}", url.path());
    let get = async {
        http.get(url)
            .timeout(limit)
            .send()
            .await?
            .json::<serde_json::Value>()
            .await
    };
    Ok(deps::call(&dep, &what, limit, get)
        .await
        .map_err(xorb_adapters::AdapterError::from)?)
}

/// The kind of a network failure an on-call engineer acts on differently.
pub fn classify(e: &(dyn std::error::Error + 'static)) -> Cause {
    xorb_adapters::deps::classify(e)
}

/// The error and its sources, outermost first, without repeats.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    xorb_adapters::deps::chain(e)
}
