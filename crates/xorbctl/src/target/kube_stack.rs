//! `stack up|down --target kubernetes`: the whole release on a Kubernetes control plane of this machine (the lab:
//! etcd, kube-apiserver, kube-controller-manager, a node agent and a Service proxy; docs/design/
//! kubernetes-lab.md). The agent and the proxy live in the process that starts them, so the stack runs in a
//! process of its own, this binary started again with a hidden subcommand, and `stack down` stops exactly it and
//! what it started. The state directory is bound to the stack's target file and kubeconfig, so every later
//! command there acts on it without flags.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use xorb_kubelab::stack::StackConfig;
use xorb_kubelab::stack::daemon::{self, DemoFigures, ServeConfig, ServeRecord};
use xorb_model::exit::Exit;

use super::select::{self, KubeChoice};
use crate::errors::UsageError;
use xorb_local::stack::{DownEntry, Paths};

/// The namespace the lab's stack runs in (the releases' manifests name it).
const NAMESPACE: &str = "xorb";
/// How long the control plane, the release's workloads and the demo data may take to be ready.
const READY_WITHIN: Duration = Duration::from_secs(300);
/// How long `stack down` lets the stack's process stop its Pods and the control plane.
const STOP_GRACE: Duration = Duration::from_secs(60);

fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("kubernetes")
}

fn record_path(state_dir: &Path) -> PathBuf {
    dir(state_dir).join("stack.json")
}

/// Whether `stack down` has a Kubernetes stack to stop here.
pub fn recorded(state_dir: &Path) -> bool {
    record_path(state_dir).exists()
}

#[derive(Debug, Serialize)]
pub struct KubeUpReport {
    pub already_running: bool,
    pub release: String,
    pub namespace: String,
    pub kubeconfig: PathBuf,
    pub target_file: PathBuf,
    pub api: String,
    pub log: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub demo: Option<DemoFigures>,
}

impl KubeUpReport {
    fn of(rec: ServeRecord, already_running: bool, log: PathBuf) -> Self {
        KubeUpReport {
            already_running,
            release: rec.release,
            namespace: rec.namespace,
            kubeconfig: rec.kubeconfig,
            target_file: rec.target_file,
            api: rec.api_url,
            log,
            demo: rec.demo,
        }
    }
}

/// Starts the stack (or finds it running) and binds the state directory to it.
pub fn up(
    state_dir: &Path,
    paths: &Paths,
    release: &str,
    demo_data: bool,
) -> anyhow::Result<KubeUpReport> {
    let record = record_path(state_dir);
    let target_file = dir(state_dir).join(daemon::TARGET_FILE);
    if state_dir.join("stack.json").exists() {
        return Err(UsageError(format!(
            "{} holds a local stack (`xorbctl stack up`); use another --state-dir for a Kubernetes stack",
            state_dir.display()
        ))
        .into());
    }
    if let Some(b) = select::bound(state_dir)?
        && b.target_file != target_file
    {
        return Err(UsageError(format!(
            "{} is bound to the Kubernetes target of {}, not to a stack of its own: use another --state-dir",
            state_dir.display(),
            b.target_file.display()
        ))
        .into());
    }
    let log = dir(state_dir).join("stack.log");
    if let Some(rec) = daemon::prepare(&record)? {
        if rec.release != release {
            return Err(UsageError(format!(
                "the Kubernetes stack of {} runs {}, not {release}: `xorbctl stack down` first",
                state_dir.display(),
                rec.release
            ))
            .into());
        }
        bind(state_dir, &rec)?;
        return Ok(KubeUpReport::of(rec, true, log));
    }
    let config = ServeConfig {
        stack: StackConfig {
            releases_root: paths.releases_root.clone(),
            release: release.to_string(),
            svc_bin: paths.svc_bin.clone(),
            venv: paths.venv.clone(),
            namespace: NAMESPACE.into(),
            dir: dir(state_dir),
        },
        record: record.clone(),
        demo_data,
    };
    // Traversable by PostgreSQL's own user (it runs as `postgres` when xorbctl runs as root), as the local
    // stack's state directory is; what is inside keeps its own modes.
    for d in [state_dir.to_path_buf(), dir(state_dir)] {
        std::fs::create_dir_all(&d)
            .and_then(|()| {
                std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o711))
            })
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", d.display()))?;
    }
    let mut cmd = std::process::Command::new(
        std::env::current_exe().map_err(|e| anyhow::anyhow!("cannot find this program: {e}"))?,
    );
    cmd.args(["stack", "serve-kubernetes", "--"])
        .args(config.to_args());
    let mut child = daemon::spawn(cmd, &log)?;
    let rec = daemon::wait_ready(&record, &mut child, &log, READY_WITHIN)?;
    bind(state_dir, &rec)?;
    Ok(KubeUpReport::of(rec, false, log))
}

fn bind(state_dir: &Path, rec: &ServeRecord) -> Result<(), UsageError> {
    select::bind(
        state_dir,
        &KubeChoice {
            target_file: rec.target_file.clone(),
            kubeconfig: Some(rec.kubeconfig.clone()),
            context: None,
            namespace: Some(rec.namespace.clone()),
        },
    )
}

/// Stops the stack's process and what it started, and unbinds the state directory (its runs stay).
pub fn down(state_dir: &Path) -> anyhow::Result<Vec<DownEntry>> {
    let out = daemon::stop(&record_path(state_dir), STOP_GRACE)?;
    select::unbind(state_dir)?;
    Ok(out.entries().cloned().collect())
}

/// The hidden `stack serve-kubernetes`: the stack's own process, until SIGTERM.
pub fn serve(args: Vec<OsString>) -> Exit {
    match ServeConfig::from_args(args) {
        Ok(config) => match daemon::serve(config) {
            0 => Exit::Ok,
            _ => Exit::DependencyFailed,
        },
        Err(e) => {
            eprintln!("xorbctl stack serve-kubernetes: {e}");
            Exit::BadInput
        }
    }
}
