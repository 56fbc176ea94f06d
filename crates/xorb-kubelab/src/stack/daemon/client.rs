//! The spawner's and the stopper's side: start the stack's process, wait until it is ready, stop it and what it
//! started, and never signal a pid whose start time is not the recorded one.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde::Serialize;
use xorb_local::process::{ProcRecord, StopResult};
use xorb_local::stack::DownEntry;

use super::record::{ServeRecord, failed_path};
use super::{DaemonError, tail};

/// How often the record and the process are looked at: short, so a ready stack is seen at once.
const POLL: Duration = Duration::from_millis(100);
/// How long a stack's process that missed its deadline gets to stop what it started before its process group is
/// killed: the containers' grace (10 s), PostgreSQL's, the control plane's three (10 s each).
const ABANDON_GRACE: Duration = Duration::from_secs(60);
/// How long a SIGKILLed process may take to disappear.
const KILL_WAIT: Duration = Duration::from_secs(5);
const TAIL_LINES: usize = 30;

/// Starts `cmd` (the stack's process) with stdin closed and stdout and stderr appended to `log` (0600), in a
/// process group of its own, so the terminal's Ctrl-C and hangup (sent to the terminal's foreground group) do not
/// reach it, nor the containers and the control plane it starts in its group.
///
/// A process group rather than a session (`setsid` in `pre_exec`): `pre_exec` is `unsafe`, which the workspace
/// denies, and the process reads no terminal (stdin is closed), so a session of its own would add nothing that
/// matters here. The local target detaches its processes the same way.
pub fn spawn(mut cmd: Command, log: &Path) -> Result<Child, DaemonError> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::process::CommandExt;
    let out = File::options()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(log)
        .map_err(|e| DaemonError::io(format!("cannot open the log {}", log.display()), e))?;
    let err = out
        .try_clone()
        .map_err(|e| DaemonError::io("cannot duplicate a log handle", e))?;
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    cmd.spawn().map_err(|e| {
        DaemonError::io(
            format!("cannot start {}", cmd.get_program().to_string_lossy()),
            e,
        )
    })
}

/// What runs now of a recorded process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    Running,
    Gone,
    /// The pid is another process's now.
    Reused,
}

fn found(p: &ProcRecord) -> Found {
    match xorb_local::process::stat(p.pid) {
        None => Found::Gone,
        // A zombie runs nothing: its parent has yet to reap it.
        Some((state, _)) if state == 'Z' || state == 'X' => Found::Gone,
        Some((_, start)) if start == p.start_time => Found::Running,
        Some(_) => Found::Reused,
    }
}

/// Before spawning a stack's process for `record`: Some(record) when one already runs for it (do not start
/// another); otherwise None, after removing what a previous process left (its record, once everything it started
/// is gone, and its `.failed` file, which [`wait_ready`] would otherwise report for the new process). A record
/// whose process is gone while some of the processes it started still run is an error: stop them first.
pub fn prepare(record: &Path) -> Result<Option<ServeRecord>, DaemonError> {
    if let Some(r) = ServeRecord::load(record)? {
        if found(&r.daemon()) == Found::Running {
            return Ok(Some(r));
        }
        let running = r
            .processes
            .iter()
            .filter(|p| found(p) == Found::Running)
            .count();
        if running > 0 {
            return Err(DaemonError::Leftovers {
                record: record.to_path_buf(),
                running,
            });
        }
        remove(record)?;
    }
    remove(&failed_path(record))?;
    Ok(None)
}

fn remove(path: &Path) -> Result<(), DaemonError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(DaemonError::io(
            format!("cannot remove {}", path.display()),
            e,
        )),
        _ => Ok(()),
    }
}

/// Waits until the stack's process `child` has written `record` (Ok, the record), has exited (the error it wrote
/// to `RECORD.failed`, else its exit status and the last lines of `log`), or `deadline` has passed (then it is
/// stopped: SIGTERM, a grace to bring down what it started, SIGKILL to its process group; the error says so).
pub fn wait_ready(
    record: &Path,
    child: &mut Child,
    log: &Path,
    deadline: Duration,
) -> Result<ServeRecord, DaemonError> {
    wait_ready_with(record, child, log, deadline, ABANDON_GRACE)
}

fn wait_ready_with(
    record: &Path,
    child: &mut Child,
    log: &Path,
    deadline: Duration,
    abandon_grace: Duration,
) -> Result<ServeRecord, DaemonError> {
    let t0 = Instant::now();
    let until = xorb_model::limits::deadline(t0, deadline);
    let pid = child.id() as i32;
    loop {
        // Written whole (temporary file, rename), and only once the stack is ready. A record of another pid is
        // a previous process's, which the new one removes when it starts.
        if let Ok(Some(r)) = ServeRecord::load(record)
            && r.pid == pid
        {
            return Ok(r);
        }
        match child.try_wait() {
            Ok(Some(status)) => {
                let why = std::fs::read_to_string(failed_path(record)).unwrap_or_default();
                return Err(if why.trim().is_empty() {
                    DaemonError::Exited {
                        status: status.to_string(),
                        log: log.to_path_buf(),
                        tail: tail(log, TAIL_LINES),
                    }
                } else {
                    DaemonError::StartFailed {
                        why: why.trim().to_string(),
                    }
                });
            }
            Ok(None) => {}
            Err(e) => return Err(DaemonError::io("cannot wait for the stack's process", e)),
        }
        if Instant::now() >= until {
            abandon(child, abandon_grace);
            return Err(DaemonError::NotReady {
                waited: t0.elapsed(),
                log: log.to_path_buf(),
                tail: tail(log, TAIL_LINES),
            });
        }
        std::thread::sleep(POLL);
    }
}

/// SIGTERM (the process stops what it has started), up to `grace`, then SIGKILL to its whole process group (the
/// control plane is in it; the containers and PostgreSQL, in groups of their own, are not), reaped.
fn abandon(child: &mut Child, grace: Duration) {
    let pid = Pid::from_raw(child.id() as i32);
    // Our own child, not yet reaped: the pid cannot be another process's.
    let _ = kill(pid, Signal::SIGTERM);
    let until = Instant::now() + grace;
    while Instant::now() < until {
        if matches!(child.try_wait(), Ok(Some(_))) {
            break;
        }
        std::thread::sleep(POLL);
    }
    // The group may outlive its leader (the control plane still stopping): killed either way.
    let _ = killpg(pid, Signal::SIGKILL);
    let _ = child.wait();
}

/// What [`stop`] did to each process: the stack's own, then every process it had recorded.
#[derive(Debug, Clone, Serialize)]
pub struct StopOutcome {
    pub daemon: DownEntry,
    /// A process the stack's process stopped itself (its `down`) is `stopped`; one already gone before the stop
    /// began is `already-gone`; one left running (the stack's process was killed, or had died) is stopped here
    /// (`stopped`, or `killed` after the grace).
    pub processes: Vec<DownEntry>,
}

impl StopOutcome {
    /// The stack's process, then the others, as `xorbctl stack down` lists them.
    pub fn entries(&self) -> impl Iterator<Item = &DownEntry> {
        std::iter::once(&self.daemon).chain(&self.processes)
    }
}

fn entry(p: &ProcRecord, result: StopResult) -> DownEntry {
    DownEntry {
        name: p.program.clone(),
        pid: p.pid,
        result,
    }
}

/// Stops the stack recorded in `record_path`: SIGTERM to its process, which brings the stack down itself, up to
/// `grace`; SIGKILL when it has not ended by then, and only then SIGKILL to each process it had recorded that still
/// runs. When its process was already gone, the processes it left get SIGTERM (PostgreSQL SIGINT, its fast
/// shutdown), `grace`, SIGKILL. A pid whose start time is not the recorded one is never signalled. Removes the
/// record (and the target file, and etcd's data when the process did not remove them itself); no record is
/// [`DaemonError::NothingToStop`].
pub fn stop(record_path: &Path, grace: Duration) -> Result<StopOutcome, DaemonError> {
    let record = ServeRecord::load(record_path)?.ok_or_else(|| DaemonError::NothingToStop {
        record: record_path.to_path_buf(),
    })?;
    // What runs before anything is signalled: afterwards, one of these that is gone was stopped by the stack.
    let before: Vec<Found> = record.processes.iter().map(found).collect();

    let daemon = record.daemon();
    let daemon_result = match found(&daemon) {
        Found::Gone => StopResult::AlreadyGone,
        Found::Reused => StopResult::PidReused,
        Found::Running => {
            let _ = kill(Pid::from_raw(daemon.pid), Signal::SIGTERM);
            if wait_gone(std::slice::from_ref(&daemon), grace) {
                StopResult::Stopped
            } else {
                // Not gone within the grace: killed, if the pid is still this process's.
                if found(&daemon) == Found::Running {
                    let _ = kill(Pid::from_raw(daemon.pid), Signal::SIGKILL);
                }
                wait_gone(std::slice::from_ref(&daemon), KILL_WAIT);
                StopResult::Killed
            }
        }
    };

    let left: Vec<&ProcRecord> = record
        .processes
        .iter()
        .zip(&before)
        .filter(|(p, b)| **b == Found::Running && found(p) == Found::Running)
        .map(|(p, _)| p)
        .collect();
    // Left running by a process that ran its `down` or was killed after `grace`: no more waiting. Left by a
    // process that had died before the stop: nobody has asked them to stop yet.
    let gentle = matches!(
        daemon_result,
        StopResult::AlreadyGone | StopResult::PidReused
    );
    if gentle && !left.is_empty() {
        for p in &left {
            let sig = if p.program == "postgres" {
                Signal::SIGINT
            } else {
                Signal::SIGTERM
            };
            if found(p) == Found::Running {
                let _ = kill(Pid::from_raw(p.pid), sig);
            }
        }
        let owned: Vec<ProcRecord> = left.iter().map(|p| (*p).clone()).collect();
        wait_gone(&owned, grace);
    }
    let mut killed = Vec::new();
    for p in &left {
        if found(p) == Found::Running {
            let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
            killed.push((*p).clone());
        }
    }
    wait_gone(&killed, KILL_WAIT);

    let processes = record
        .processes
        .iter()
        .zip(&before)
        .map(|(p, b)| {
            let result = match b {
                Found::Gone => StopResult::AlreadyGone,
                Found::Reused => StopResult::PidReused,
                Found::Running if killed.contains(p) => StopResult::Killed,
                Found::Running => StopResult::Stopped,
            };
            entry(p, result)
        })
        .collect();

    if daemon_result != StopResult::Stopped {
        // The process did not get to remove them itself. etcd's data is in memory (/dev/shm). Only what has the
        // names the stack gives them: the record is a file, and a damaged one must not send this at any path.
        let name = |p: &Path| {
            p.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string()
        };
        if name(&record.etcd_data).starts_with(crate::ETCD_DATA_PREFIX) {
            let _ = std::fs::remove_dir_all(&record.etcd_data);
        }
        if name(&record.target_file) == super::TARGET_FILE {
            let _ = std::fs::remove_file(&record.target_file);
        }
    }
    remove(record_path)?;
    Ok(StopOutcome {
        daemon: entry(&daemon, daemon_result),
        processes,
    })
}

/// Polls until none of `procs` runs (as recorded: a reused pid counts as gone), up to `within`; true when they
/// all ended.
fn wait_gone(procs: &[ProcRecord], within: Duration) -> bool {
    let until = xorb_model::limits::deadline(Instant::now(), within);
    loop {
        if procs.iter().all(|p| found(p) != Found::Running) {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::daemon::record::tests::sample;

    fn sh(script: &str, log: &Path) -> Child {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        spawn(cmd, log).unwrap()
    }

    fn rec(child: &Child, program: &str) -> ProcRecord {
        ProcRecord::of_pid(child.id() as i32, program).unwrap()
    }

    /// A pid that ran and is gone (reaped), with the start time it had.
    fn gone() -> ProcRecord {
        let mut c = Command::new("sleep").arg("30").spawn().unwrap();
        let r = ProcRecord::of_pid(c.id() as i32, "gone").unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
        r
    }

    /// This very process, under a start time it does not have: a reused pid.
    fn reused() -> ProcRecord {
        let me = ProcRecord::of_pid(std::process::id() as i32, "reused").unwrap();
        ProcRecord {
            start_time: me.start_time + 1,
            ..me
        }
    }

    /// Waits until `log` holds `text` (a shell has set its traps): a poll with a deadline.
    fn logged(log: &Path, text: &str) {
        let t0 = Instant::now();
        while !std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains(text)
        {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{text} never logged"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn results(o: &StopOutcome) -> Vec<(String, StopResult)> {
        o.processes
            .iter()
            .map(|e| (e.name.clone(), e.result))
            .collect()
    }

    #[test]
    fn spawn_gives_the_process_a_group_of_its_own_and_the_log_its_output() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("d.log");
        let mut c = sh("echo out; echo err >&2; exec sleep 30", &log);
        logged(&log, "err");
        let pid = Pid::from_raw(c.id() as i32);
        let group = nix::unistd::getpgid(Some(pid)).unwrap();
        assert_eq!(group, pid);
        assert_ne!(group, nix::unistd::getpgrp());
        c.kill().unwrap();
        c.wait().unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "out\nerr\n");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&log).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn wait_ready_returns_the_record_the_process_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let (record, log) = (dir.path().join("stack.json"), dir.path().join("d.log"));
        // A record of another (earlier) pid is not this process's.
        sample(1, 1).save(&record).unwrap();
        let template = dir.path().join("template.json");
        let placeholder = 999_999_999;
        std::fs::write(
            &template,
            serde_json::to_string(&sample(placeholder, 5)).unwrap(),
        )
        .unwrap();
        let mut c = sh(
            &format!(
                // Some work before the record, as the stack's `up`.
                "sleep 0.2; sed \"s/{placeholder}/$$/\" {t} > {r}.tmp && mv {r}.tmp {r} && exec sleep 30",
                t = template.display(),
                r = record.display()
            ),
            &log,
        );
        let r = wait_ready(&record, &mut c, &log, Duration::from_secs(30)).unwrap();
        assert_eq!(r.pid, c.id() as i32);
        assert_eq!(r.namespace, "xorb");
        c.kill().unwrap();
        c.wait().unwrap();
    }

    #[test]
    fn wait_ready_reports_why_the_process_failed_or_how_it_ended() {
        let dir = tempfile::tempdir().unwrap();
        let (record, log) = (dir.path().join("stack.json"), dir.path().join("d.log"));
        let failed = failed_path(&record);
        let mut c = sh(
            &format!(
                "echo starting; echo 'etcd exited (code 1)' > {}; exit 1",
                failed.display()
            ),
            &log,
        );
        let e = wait_ready(&record, &mut c, &log, Duration::from_secs(30)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the Kubernetes stack did not start: etcd exited (code 1)"
        );

        // `prepare` clears it, so the next process's early exit is not reported with it.
        assert!(prepare(&record).unwrap().is_none());
        assert!(!failed.exists());
        let mut c = sh("echo progress; echo last words; exit 3", &log);
        let e = wait_ready(&record, &mut c, &log, Duration::from_secs(30))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("exited (exit status: 3) before the stack was ready"),
            "{e}"
        );
        assert!(e.contains(&log.display().to_string()), "{e}");
        assert!(e.ends_with("progress\nlast words"), "{e}");
    }

    #[test]
    fn wait_ready_stops_a_process_that_misses_its_deadline_and_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let (record, log) = (dir.path().join("stack.json"), dir.path().join("d.log"));
        let pids = dir.path().join("pids");
        // Ignores SIGTERM, and has a process of its own group (as the control plane is in the stack's).
        let mut c = sh(
            &format!(
                "trap '' TERM; sleep 30 & echo $! > {}; echo trapped; wait",
                pids.display()
            ),
            &log,
        );
        logged(&log, "trapped");
        let sleeper = std::fs::read_to_string(&pids).unwrap();
        let sleeper = ProcRecord::of_pid(sleeper.trim().parse().unwrap(), "sleep").unwrap();
        let t0 = Instant::now();
        let e = wait_ready_with(
            &record,
            &mut c,
            &log,
            Duration::from_millis(300),
            Duration::from_millis(300),
        )
        .unwrap_err()
        .to_string();
        assert!(t0.elapsed() >= Duration::from_millis(600));
        assert!(
            e.contains("was not ready after 0s, so its process was stopped"),
            "{e}"
        );
        assert!(matches!(c.try_wait(), Ok(Some(_))), "reaped");
        assert!(
            wait_gone(std::slice::from_ref(&sleeper), KILL_WAIT),
            "its group is killed"
        );
    }

    #[test]
    fn prepare_finds_a_running_stack_and_clears_a_finished_one() {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("stack.json");
        assert!(prepare(&record).unwrap().is_none());

        let me = ProcRecord::of_pid(std::process::id() as i32, "me").unwrap();
        sample(me.pid, me.start_time).save(&record).unwrap();
        let running = prepare(&record).unwrap().expect("this process runs");
        assert_eq!(running.pid, me.pid);

        // The process is gone, one it started runs: refused, the record kept.
        let log = dir.path().join("d.log");
        let mut left = sh("exec sleep 30", &log);
        let g = gone();
        let mut r = sample(g.pid, g.start_time);
        r.processes = vec![rec(&left, "etcd"), reused()];
        r.save(&record).unwrap();
        let e = prepare(&record).unwrap_err().to_string();
        assert!(e.contains("1 of the processes it started still run"), "{e}");
        assert!(record.exists());
        left.kill().unwrap();
        left.wait().unwrap();
        // Everything gone: cleared.
        std::fs::write(failed_path(&record), "old failure").unwrap();
        assert!(prepare(&record).unwrap().is_none());
        assert!(!record.exists() && !failed_path(&record).exists());

        std::fs::write(&record, "not json").unwrap();
        let e = prepare(&record).unwrap_err().to_string();
        assert!(e.contains("is not a stack record"), "{e}");
    }

    #[test]
    fn stop_without_a_record_says_there_is_nothing_to_stop() {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("stack.json");
        let e = stop(&record, Duration::from_secs(1)).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "no Kubernetes stack to stop: {} does not exist",
                record.display()
            )
        );
    }

    #[test]
    fn stop_terminates_the_process_then_kills_what_it_left_and_never_a_reused_pid() {
        let dir = tempfile::tempdir().unwrap();
        let (record, log) = (dir.path().join("stack.json"), dir.path().join("d.log"));
        let mut daemon = sh("exec sleep 30", &log);
        let mut left = sh("exec sleep 30", &log);
        let etcd = dir.path().join("xorb-kubelab-etcd-test");
        std::fs::create_dir(&etcd).unwrap();
        let d = rec(&daemon, "daemon");
        let mut r = sample(d.pid, d.start_time);
        r.etcd_data = etcd.clone();
        r.processes = vec![rec(&left, "postgres"), reused(), gone()];
        r.save(&record).unwrap();

        let o = stop(&record, Duration::from_secs(10)).unwrap();
        assert_eq!(o.daemon.result, StopResult::Stopped);
        assert_eq!(o.daemon.pid, d.pid);
        assert_eq!(
            results(&o),
            [
                ("postgres".to_string(), StopResult::Killed),
                ("reused".to_string(), StopResult::PidReused),
                ("gone".to_string(), StopResult::AlreadyGone),
            ]
        );
        assert!(!record.exists());
        // A process that stopped by itself removes etcd's data itself.
        assert!(etcd.exists());
        for c in [&mut daemon, &mut left] {
            c.wait().unwrap();
        }
        assert!(stop(&record, Duration::from_secs(1)).is_err());
    }

    #[test]
    fn stop_kills_a_process_that_ignores_sigterm_and_removes_what_it_left() {
        let dir = tempfile::tempdir().unwrap();
        let (record, log) = (dir.path().join("stack.json"), dir.path().join("d.log"));
        let mut daemon = sh(
            "trap '' TERM; echo trapped; while :; do sleep 0.05; done",
            &log,
        );
        logged(&log, "trapped");
        let mut left = sh("exec sleep 30", &log);
        let etcd = dir.path().join("xorb-kubelab-etcd-test");
        std::fs::create_dir(&etcd).unwrap();
        let target = dir.path().join(crate::stack::daemon::TARGET_FILE);
        std::fs::write(&target, "namespace = \"xorb\"\n").unwrap();
        let d = rec(&daemon, "daemon");
        let mut r = sample(d.pid, d.start_time);
        r.etcd_data = etcd.clone();
        r.target_file = target.clone();
        r.processes = vec![rec(&left, "etcd")];
        r.save(&record).unwrap();

        let t0 = Instant::now();
        let o = stop(&record, Duration::from_millis(300)).unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(300));
        assert_eq!(o.daemon.result, StopResult::Killed);
        assert_eq!(results(&o), [("etcd".to_string(), StopResult::Killed)]);
        assert!(!record.exists() && !etcd.exists() && !target.exists());
        for c in [&mut daemon, &mut left] {
            c.wait().unwrap();
        }
    }

    #[test]
    fn stop_after_the_process_died_terminates_what_it_left() {
        let dir = tempfile::tempdir().unwrap();
        let (record, log) = (dir.path().join("stack.json"), dir.path().join("d.log"));
        let mut polite = sh("exec sleep 30", &log);
        let mut stubborn = sh(
            "trap '' TERM INT; echo trapped; while :; do sleep 0.05; done",
            &log,
        );
        logged(&log, "trapped");
        let g = gone();
        let mut r = sample(g.pid, g.start_time);
        r.etcd_data = dir.path().join("elsewhere");
        std::fs::create_dir(&r.etcd_data).unwrap();
        // PostgreSQL gets SIGINT (its fast shutdown); sleep ends on it as on SIGTERM.
        r.processes = vec![rec(&polite, "postgres"), rec(&stubborn, "kube-apiserver")];
        r.save(&record).unwrap();

        let o = stop(&record, Duration::from_millis(500)).unwrap();
        assert_eq!(o.daemon.result, StopResult::AlreadyGone);
        assert_eq!(
            results(&o),
            [
                ("postgres".to_string(), StopResult::Stopped),
                ("kube-apiserver".to_string(), StopResult::Killed),
            ]
        );
        let polite_status = polite.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(polite_status.signal(), Some(Signal::SIGINT as i32));
        stubborn.wait().unwrap();
        // Not named as the lab names etcd's data: left alone.
        assert!(r.etcd_data.exists());
    }
}
