//! Starting a container's process and waiting for it: one waiter task per process.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use k8s_openapi::api::core::v1::Container;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::sync::mpsc;

/// What the agent asks of a process's waiter.
pub(super) enum Ctl {
    /// SIGTERM to the container's main process only, as a container runtime does.
    Term,
    /// SIGKILL to the container's whole process group.
    Kill,
}

pub(super) struct Exit {
    pub(super) uid: String,
    pub(super) container: String,
    pub(super) instance: u64,
    pub(super) code: Option<i32>,
    pub(super) signal: Option<i32>,
}

#[allow(clippy::too_many_arguments)]
pub(super) fn spawn_process(
    dir: &Path,
    spec: &Container,
    pod_name: &str,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    uid: &str,
    instance: u64,
    exits: mpsc::UnboundedSender<Exit>,
) -> Result<(u32, mpsc::UnboundedSender<Ctl>), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let log_path = dir.join(format!("{}.log", spec.name));
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
    let err = log
        .try_clone()
        .map_err(|e| format!("cannot duplicate a log handle: {e}"))?;
    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(&args)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("HOSTNAME", pod_name)
        .envs(env)
        .current_dir(spec.working_dir.as_deref().map(Path::new).unwrap_or(dir))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
    let pid = child.id().ok_or("the process ended at once")?;
    let (ctl_tx, mut ctl_rx) = mpsc::unbounded_channel::<Ctl>();
    let (uid, container) = (uid.to_string(), spec.name.clone());
    tokio::spawn(async move {
        use std::os::unix::process::ExitStatusExt;
        loop {
            tokio::select! {
                status = child.wait() => {
                    let (code, signal) = match status {
                        Ok(s) => (s.code(), s.signal()),
                        Err(_) => (None, None),
                    };
                    // The group may outlive its leader (a child of a shell): it ends with the container. The
                    // group's id stays allocated while any member lives, so this reaches only its own members
                    // (if none is left, nothing; a new process would need that exact pid within microseconds).
                    let _ = kill(Pid::from_raw(-(pid as i32)), Signal::SIGKILL);
                    let _ = exits.send(Exit { uid, container, instance, code, signal });
                    return;
                }
                Some(ctl) = ctl_rx.recv() => {
                    // The leader is not reaped yet (we would have left the loop), so its pid and group are ours.
                    if child.id().is_some() {
                        let _ = match ctl {
                            Ctl::Term => kill(Pid::from_raw(pid as i32), Signal::SIGTERM),
                            Ctl::Kill => kill(Pid::from_raw(-(pid as i32)), Signal::SIGKILL),
                        };
                    }
                }
            }
        }
    });
    Ok((pid, ctl_tx))
}
