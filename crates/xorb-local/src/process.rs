//! Detached processes that we can later stop, and only those.
//!
//! A pid alone is not an identity: after a reboot or a long time it may belong to someone else. We record the
//! kernel's start time of the process (field 22 of /proc/PID/stat) and refuse to signal a pid whose start time
//! differs: `stack down` stops exactly what `stack up` started.

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::LocalError;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcRecord {
    pub pid: i32,
    pub start_time: u64,
    pub program: String,
}

/// What we found when asked to stop a recorded process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopResult {
    Stopped,
    Killed,
    AlreadyGone,
    /// The pid now belongs to another process: left alone.
    PidReused,
}

/// (state, start time) from /proc/PID/stat, or None when there is no such process.
pub fn stat(pid: i32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: parse after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

impl ProcRecord {
    pub fn of_pid(pid: i32, program: &str) -> Option<Self> {
        stat(pid).map(|(_, start_time)| Self {
            pid,
            start_time,
            program: program.to_string(),
        })
    }

    /// True when the very process we started still runs (a zombie counts as gone).
    pub fn is_alive(&self) -> bool {
        matches!(stat(self.pid), Some((state, start)) if start == self.start_time && state != 'Z' && state != 'X')
    }

    fn identity_matches(&self) -> Option<bool> {
        stat(self.pid)
            .map(|(state, start)| start == self.start_time && state != 'Z' && state != 'X')
    }

    /// Sends `signal`, waits up to `grace` for the process to end, then SIGKILLs it.
    pub fn stop(&self, signal: Signal, grace: Duration) -> StopResult {
        match self.identity_matches() {
            None => return StopResult::AlreadyGone,
            Some(false) => {
                return if stat(self.pid).is_some_and(|(s, _)| s == 'Z' || s == 'X') {
                    StopResult::AlreadyGone
                } else {
                    StopResult::PidReused
                };
            }
            Some(true) => {}
        }
        let pid = Pid::from_raw(self.pid);
        let _ = kill(pid, signal);
        if wait_gone(self, grace) {
            return StopResult::Stopped;
        }
        let _ = kill(pid, Signal::SIGKILL);
        wait_gone(self, Duration::from_secs(5));
        StopResult::Killed
    }
}

fn wait_gone(rec: &ProcRecord, within: Duration) -> bool {
    let deadline = xorb_model::limits::deadline(Instant::now(), within);
    loop {
        if !rec.is_alive() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `cmd` in its own process group (so a Ctrl-C at the terminal does not reach it), stdin closed, stdout and
/// stderr appended to `log`. The child is not waited for: it outlives us.
pub fn spawn_detached(mut cmd: Command, log: &Path) -> Result<ProcRecord, LocalError> {
    use std::os::unix::process::CommandExt;
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| LocalError::io(format!("cannot open log {}", log.display()), e))?;
    let err = out
        .try_clone()
        .map_err(|e| LocalError::io("cannot duplicate log handle", e))?;
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    let child = cmd
        .spawn()
        .map_err(|e| LocalError::io(format!("cannot start {program}"), e))?;
    let pid = child.id() as i32;
    // Dropping the Child does not kill it; a background reaper avoids zombies while we live.
    std::thread::spawn(move || {
        let mut child = child;
        let _ = child.wait();
    });
    ProcRecord::of_pid(pid, &program).ok_or_else(|| LocalError::Start {
        what: program.clone(),
        why: format!("exited at once; see {}", log.display()),
    })
}

pub use xorb_adapters::poll::poll_until;

/// A free TCP port on 127.0.0.1 for a server we start next (we bind it to check, then release it).
///
/// Chosen at random *below* the kernel's ephemeral range: a port from `bind(0)` comes from that range, where every
/// outgoing connection on the machine also takes its source port, so in the seconds before our server binds it a
/// client connection could take it ("Address already in use" under parallel tests). Falls back to `bind(0)`.
///
/// A bind check alone is not enough either: a stack picks its ports first and binds some of them a minute later,
/// and another `xorbctl` (a parallel test, a second stack) picking in that minute would find them free. So each port
/// handed out is also leased for a while in a directory every process of this user shares (see [`crate::ports`]).
pub fn free_port() -> Result<u16, LocalError> {
    use rand::Rng;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (lo, hi) = (10_000u16, ephemeral_low.max(10_001));
    let leases = crate::ports::Leases::open();
    let mut rng = rand::thread_rng();
    for _ in 0..400 {
        let port = rng.gen_range(lo..hi);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() && leases.take(port) {
            return Ok(port);
        }
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| LocalError::io("cannot find a free port", e))?;
    Ok(l.local_addr()
        .map_err(|e| LocalError::io("cannot find a free port", e))?
        .port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_exactly_what_it_started_and_reports_gone_after() {
        let dir = std::env::temp_dir().join(format!("xorb-proc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let rec = spawn_detached(cmd, &dir.join("sleep.log")).unwrap();
        assert!(rec.is_alive());
        assert_eq!(
            rec.stop(Signal::SIGTERM, Duration::from_secs(5)),
            StopResult::Stopped
        );
        assert!(!rec.is_alive());
        assert_eq!(
            rec.stop(Signal::SIGTERM, Duration::from_secs(1)),
            StopResult::AlreadyGone
        );
        let forged = ProcRecord {
            pid: std::process::id() as i32,
            start_time: 1,
            program: "x".into(),
        };
        assert_eq!(
            forged.stop(Signal::SIGTERM, Duration::from_secs(1)),
            StopResult::PidReused
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
