//! The lab's child processes: started by us, stopped by us (SIGTERM, a grace, SIGKILL), always reaped.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::LabError;

/// One process of the lab, as the caller can check it: the pid and the kernel's start time of that pid (field 22
/// of /proc/PID/stat), so a pid reused by another process later does not look like ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabProcess {
    pub name: &'static str,
    pub pid: u32,
    pub start_time: u64,
    pub log: PathBuf,
}

/// (state, start time) from /proc/PID/stat: the local target's reader.
fn stat(pid: u32) -> Option<(char, u64)> {
    xorb_local::process::stat(i32::try_from(pid).ok()?)
}

impl LabProcess {
    /// True while this very process exists (a zombie counts as gone: it runs nothing).
    pub fn is_running(&self) -> bool {
        matches!(stat(self.pid), Some((state, start)) if start == self.start_time && state != 'Z' && state != 'X')
    }
}

pub(crate) struct LabChild {
    pub info: LabProcess,
    child: Child,
}

impl LabChild {
    /// Starts `cmd` with stdin closed and stdout and stderr appended to `log`. It stays in our process group, so
    /// a Ctrl-C at the terminal that runs the tests reaches it too.
    pub fn spawn(name: &'static str, mut cmd: Command, log: &Path) -> Result<Self, LabError> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| LabError::io(format!("cannot open the log {}", log.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| LabError::io("cannot duplicate a log handle", e))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd.spawn().map_err(|e| {
            LabError::io(
                format!(
                    "cannot start {name} ({})",
                    cmd.get_program().to_string_lossy()
                ),
                e,
            )
        })?;
        let pid = child.id();
        let start_time = stat(pid).map(|(_, s)| s).unwrap_or(0);
        Ok(Self {
            info: LabProcess {
                name,
                pid,
                start_time,
                log: log.to_path_buf(),
            },
            child,
        })
    }

    /// Some(exit description) once the process has ended (and is reaped).
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("cannot wait for it: {e}")),
        }
    }

    /// SIGTERM, up to `grace` for it to end, then SIGKILL; reaped either way. Only ever this child: the pid is
    /// ours until we reap it, so it cannot have been reused.
    pub fn stop(&mut self, grace: Duration) {
        if self.exited().is_some() {
            return;
        }
        let pid = Pid::from_raw(self.info.pid as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last `lines` lines of a log, for error messages.
pub(crate) fn tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A free TCP port on 127.0.0.1 for a server we start next: the local target's choice (below the kernel's
/// ephemeral range, so that no outgoing connection takes it before our server binds it).
pub(crate) fn free_port() -> Result<u16, LabError> {
    xorb_local::process::free_port().map_err(|e| LabError::Io {
        what: "cannot find a free port".into(),
        source: std::io::Error::other(e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_and_reaps_its_child() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("300");
        let mut c = LabChild::spawn("sleep", cmd, &dir.path().join("sleep.log")).unwrap();
        let info = c.info.clone();
        assert!(info.is_running());
        c.stop(Duration::from_secs(5));
        assert!(!info.is_running());
        assert!(stat(info.pid).is_none(), "reaped, not a zombie");
    }

    #[test]
    fn kills_a_child_that_ignores_sigterm() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "trap '' TERM; echo ready; while :; do sleep 0.05; done",
        ]);
        let log = dir.path().join("stubborn.log");
        let mut c = LabChild::spawn("stubborn", cmd, &log).unwrap();
        let info = c.info.clone();
        // Wait until the trap is set (the shell has printed), or SIGTERM could arrive before it.
        let t0 = Instant::now();
        while !tail(&log, 1).contains("ready") && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let started = Instant::now();
        c.stop(Duration::from_millis(300));
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(!info.is_running());
    }
}
