//! The dependency-fault matrix (issue #12): every dependency killed (SIGKILL) and stalled (SIGSTOP) inside a step of
//! the phase that uses it, and the disk under the run's artifacts filling up or turning read-only. Each fault lands
//! at a known point through the `XORB_PAUSE_IN_STEP` hook (the step is journaled as started, the process waits for
//! a release file): the run must stop (exit 6) with a message naming the dependency and the cause, the journal must
//! record the step as failed, and once the dependency is back `resume` must end as an uninterrupted run does.
//!
//! Covered: PostgreSQL (stalled in 3.db.backup, killed in a G8 downgrade), NATS (stalled in 4.nats.save, killed in
//! 4.nats.apply), Redis (stalled in 4.redis.backup, killed in 4.redis.apply), Prometheus (stalled and killed in
//! 4.monitoring.apply), Alertmanager (killed and stalled in 4.monitoring.apply), and `runs/` full (3.db.backup)
//! and read-only (4.redis.backup): one run resumed case after case ([`MATRIX`]), except the monitoring step's
//! faults, which need a run and a stack each ([`MONITORING`]). A stalled dependency must stop the run within the
//! bounded calls' limits, never hang it.
//!
//! xorbctl's own state turning read-only mid-run (the journal, the audit trail, the lock, `runs/`; exactly its
//! files, the servers' data stays writable: [`OwnStateFs`]) inside 4.nats.apply: the run stops at once with an
//! error naming the journal and the read-only file system; nothing is half-done (the journal is consistent and
//! ends at the step's intent, the audit trail verifies, a resume while read-only refuses and changes nothing); after
//! remounting, `resume` finds the step's change made and ends as an uninterrupted run does.
//!
//! A webhook receiver down or stalled never fails the run: its messages stay owed, are reported, and are delivered
//! once it is back. Figures (cases, seconds) are printed, not asserted.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::Value;
use xorb_engine::pause::{PAUSE_ENV, paused_marker, release_marker};
use xorb_engine::runner::{Probe, StepContext};
use xorb_local::stack::{Paths, StackState};
use xorb_local::target::LocalRunner;
use xorb_model::release::Release;

use crate::common::*;

/// A rollback whose steps run one at a time (`--one-at-a-time`): a fault injected into one step finds the steps
/// after it not run yet.
const ROLLBACK_ONE_AT_A_TIME: [&str; 7] = [
    "rollback",
    "--from",
    RC1,
    "--to",
    STABLE,
    "--yes",
    "--one-at-a-time",
];

const RC1: &str = "v2025.08-rc1";
const STABLE: &str = "v2025.07-stable";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Kill,
    Stall,
    DiskFull,
    ReadOnly,
}

/// One cell of the matrix: a fault of a dependency inside a step.
struct Case {
    /// The key of the server in stack.json; for disk faults, unused.
    server: &'static str,
    /// How messages must name it.
    name: &'static str,
    step: &'static str,
    fault: Fault,
}

const fn case(server: &'static str, name: &'static str, step: &'static str, fault: Fault) -> Case {
    Case {
        server,
        name,
        step,
        fault,
    }
}

/// In plan order: each case resumes the run where the previous one stopped it.
const MATRIX: [Case; 9] = [
    case("postgres", "PostgreSQL", "3.db.backup", Fault::Stall),
    case("-", "runs/", "3.db.backup", Fault::DiskFull),
    case(
        "postgres",
        "PostgreSQL",
        "3.g8.downgrade.8d9a2c3",
        Fault::Kill,
    ),
    case("nats", "NATS", "4.nats.save", Fault::Stall),
    case("nats", "NATS", "4.nats.apply", Fault::Kill),
    case("-", "runs/", "4.redis.backup", Fault::ReadOnly),
    case("redis", "Redis", "4.redis.backup", Fault::Stall),
    case("redis", "Redis", "4.redis.apply", Fault::Kill),
    case(
        "prometheus",
        "Prometheus",
        "4.monitoring.apply",
        Fault::Stall,
    ),
    // One monitoring fault per run: once Prometheus is back (its queued reloads, or a restart reading the files
    // the step wrote) it serves the target, and both releases share alertmanager.yml, so the step's probe finds
    // it done and a second fault in it would never be reached.
];

/// A small filesystem of our own over the run directories: filled up or remounted read-only on demand, without
/// touching the servers' data (they live elsewhere in the state directory). Unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64m,mode=0700", "xorb-faults"])
            .arg(at)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "this test needs root and mount(8) for a tmpfs: {}",
            text(&out)
        );
        Tmpfs(at.to_path_buf())
    }

    /// The run directories turn read-only for every new write: a read-only bind mount over them. (Remounting the
    /// tmpfs itself read-only is refused while the paused run holds its log file open for writing, as the kernel
    /// refuses it for any filesystem with writers.)
    fn read_only(&self) {
        for args in [
            vec!["--bind".to_string()],
            vec!["-o".to_string(), "remount,bind,ro".to_string()],
        ] {
            let mut cmd = Command::new("mount");
            cmd.args(&args);
            if args.len() == 1 {
                cmd.arg(&self.0);
            }
            let out = cmd.arg(&self.0).output().unwrap();
            assert!(out.status.success(), "mount {args:?}: {}", text(&out));
        }
    }

    fn writable(&self) {
        let out = Command::new("umount").arg(&self.0).output().unwrap();
        assert!(
            out.status.success(),
            "umount the read-only bind: {}",
            text(&out)
        );
    }

    fn filler(&self) -> PathBuf {
        self.0.join("filler")
    }

    /// Writes until the filesystem refuses: ENOSPC for whoever writes next.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.filler()).unwrap();
        let chunk = vec![0u8; 1 << 20];
        loop {
            if let Err(e) = f.write_all(&chunk).and_then(|_| f.sync_data()) {
                assert_eq!(
                    e.raw_os_error(),
                    Some(nix::errno::Errno::ENOSPC as i32),
                    "{e}"
                );
                break;
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn server_pid(st: &Stack, server: &str) -> i32 {
    st.stack_json()[server]["proc"]["pid"].as_i64().unwrap() as i32
}

/// The state letter of /proc/PID/stat (R, S, T, Z…), None when gone.
fn proc_state(pid: i32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s[s.rfind(')')? + 2..].chars().next()
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    eventually(what, Duration::from_secs(30), || {
        let ok = f();
        async move { ok.then_some(()) }
    })
    .await
}

/// Stops or kills the whole process group: a PostgreSQL whose postmaster alone is stopped still serves through
/// its backends, which is not the outage we mean.
async fn inject(st: &Stack, c: &Case, fs: Option<&Tmpfs>) {
    match c.fault {
        Fault::Kill => {
            let pid = server_pid(st, c.server);
            killpg(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
            wait_for(&format!("{} gone", c.server), || {
                matches!(proc_state(pid), None | Some('Z'))
            })
            .await;
        }
        Fault::Stall => {
            let pid = server_pid(st, c.server);
            killpg(Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
            wait_for(&format!("{} stopped", c.server), || {
                proc_state(pid) == Some('T')
            })
            .await;
        }
        Fault::DiskFull => fs.expect("a disk fault needs the tmpfs").fill(),
        Fault::ReadOnly => fs.expect("a disk fault needs the tmpfs").read_only(),
    }
}

/// Brings the dependency back the way an operator would: SIGCONT, `stack up` (which restarts what died in place),
/// freeing space, remounting read-write.
fn heal(st: &Stack, c: &Case, fs: Option<&Tmpfs>) {
    match c.fault {
        Fault::Stall => {
            killpg(Pid::from_raw(server_pid(st, c.server)), Signal::SIGCONT).unwrap();
        }
        Fault::Kill => {
            let release = st.stack_json()["release"].as_str().unwrap().to_string();
            let out = st.xorbctl(&["stack", "up", "--release", &release]);
            assert!(out.status.success(), "stack up: {}", text(&out));
            assert!(
                text(&out).contains(c.server),
                "stack up says it restarted {}: {}",
                c.server,
                text(&out)
            );
        }
        Fault::DiskFull => std::fs::remove_file(fs.expect("the tmpfs").filler()).unwrap(),
        Fault::ReadOnly => fs.expect("the tmpfs").writable(),
    }
}

/// What the message must say about the cause.
fn cause_words(f: Fault) -> &'static [&'static str] {
    match f {
        Fault::Kill => &["connection refused", "connection was closed"],
        Fault::Stall => &["did not answer within"],
        Fault::DiskFull => &["No space left on device"],
        Fault::ReadOnly => &["Read-only file system"],
    }
}

/// Starts `xorbctl ARGS` paused inside `step`; returns once it waits there.
async fn start_paused(st: &Stack, args: &[&str], step: &str, dir: &Path) -> Child {
    let mut cmd = st.cmd();
    cmd.args(args)
        .env(PAUSE_ENV, format!("{step}:{}", dir.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().unwrap();
    let marker = paused_marker(dir, step);
    let deadline = Instant::now() + Duration::from_secs(300);
    while !marker.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "xorbctl {args:?} ended ({status}) before pausing in {step}:\n{}",
                text(&out)
            );
        }
        assert!(Instant::now() < deadline, "never paused in {step}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child
}

/// Waits for the command to end, at most `within`: a command still running then is a hang, and is killed (its
/// whole process group) before the test fails saying so.
async fn finish(child: Child, within: Duration) -> Output {
    let pid = child.id() as i32;
    let waiting = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap());
    match tokio::time::timeout(within, waiting).await {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            panic!("xorbctl (pid {pid}) was still running after {within:?}: it hangs");
        }
    }
}

/// How long a run may take to stop once the fault is in: the calls to a dependency are bounded (10 s each), so a
/// stop takes a few of them at most (two attempts and a probe in between); anything longer is a hang.
const STOPS_WITHIN: Duration = Duration::from_secs(180);

/// The run stopped on the fault (exit 6) and both what it printed and what the journal holds for the step (failed)
/// name the dependency and the cause. Returns the journaled message.
fn assert_stopped(st: &Stack, c: &Case, out: &Output) -> String {
    let o = text(out);
    assert_eq!(
        out.status.code(),
        Some(6),
        "{} {:?} in {}: the run stops on the failure\n{o}",
        c.name,
        c.fault,
        c.step
    );
    let run = show(st);
    let s = run_step(&run, c.step);
    assert_eq!(s["state"], "failed", "{} {:?}: {s:#}", c.name, c.fault);
    let recorded = s.to_string();
    let stopped = run["status"].to_string();
    for (what, text) in [("the output", &o), ("the journal", &recorded)] {
        assert!(
            text.contains(c.name),
            "{what} names {} ({:?} in {}):\n{text}\n{stopped}",
            c.name,
            c.fault,
            c.step
        );
        assert!(
            cause_words(c.fault).iter().any(|w| text.contains(w)),
            "{what} gives the cause of {} {:?} ({:?}):\n{text}",
            c.name,
            c.fault,
            cause_words(c.fault)
        );
    }
    run["status"]["error"]
        .as_str()
        .map(str::to_string)
        .unwrap_or(stopped)
}

fn show(st: &Stack) -> Value {
    let out = st.xorbctl(&["show", "latest", "--output", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn runner(st: &Stack) -> LocalRunner {
    let root = repo().join("releases");
    let paths = Paths {
        releases_root: root.clone(),
        venv: venv(),
        svc_bin: svc_bin(),
    };
    xorb_local::target::runner(&st.dir, paths, Release::load_named(&root, STABLE).unwrap())
}

/// The end state of an uninterrupted rollback from rc1 to stable: the latest run succeeded with every step done,
/// and the stack is on stable in every respect (schema, services, streams, Redis, monitoring). Returns the run and
/// its directory.
async fn assert_as_uninterrupted(st: &Stack) -> (Value, PathBuf) {
    let run = show(st);
    assert_eq!(run["status"]["state"], "succeeded", "{:#}", run["status"]);
    for s in run["steps"].as_array().unwrap() {
        assert!(
            ["succeeded", "already_done", "skipped"].contains(&s["state"].as_str().unwrap()),
            "{} ended {}",
            s["spec"]["id"],
            s["state"]
        );
    }
    let status = st.status();
    assert_eq!(status["schema_revision"], "1a5be11", "{status:#}");
    for s in status["services"].as_array().unwrap() {
        assert_eq!(s["release"], STABLE, "{s:#}");
        assert_eq!(s["healthy"], true, "{s:#}");
    }
    let stable = Release::load_named(&repo().join("releases"), STABLE).unwrap();
    let mut want: Vec<Value> = stable
        .streams
        .iter()
        .map(|s| Value::from(s.name.clone()))
        .collect();
    want.sort_by_key(|v| v.to_string());
    assert_eq!(status["streams"], Value::Array(want), "{status:#}");
    let r = runner(st);
    let run_dir = st.dir.join("runs").join(run["id"].as_str().unwrap());
    let ctx = StepContext {
        run_id: run["id"].as_str().unwrap(),
        step_id: "it-faults",
        run_dir: &run_dir,
        from: RC1,
        to: STABLE,
        index: 0,
        attempt: 1,
    };
    for (what, probe) in [
        (
            "NATS",
            xorb_adapters::nats::probe_nats_apply(&r, STABLE, &ctx).await,
        ),
        (
            "Redis",
            xorb_adapters::redis::probe_redis_apply(&r, STABLE, &ctx).await,
        ),
        (
            "monitoring",
            xorb_adapters::monitoring::probe_monitoring_apply(&r, STABLE, &ctx).await,
        ),
    ] {
        assert!(
            matches!(probe, Ok(Probe::Done { .. })),
            "{what} is as {STABLE} defines it: {probe:?}"
        );
    }
    let groups = xorb_adapters::monitoring::live_rule_groups(
        &reqwest::Client::new(),
        &StackState::load(&st.dir).unwrap().prometheus_url(),
    )
    .await
    .unwrap();
    assert!(!groups.is_empty());
    (run, run_dir)
}

struct Row {
    name: &'static str,
    fault: Fault,
    step: &'static str,
    secs: f64,
    message: String,
}

#[tokio::test(flavor = "multi_thread")]
async fn every_dependency_killed_or_stalled_inside_its_steps_stops_the_run_and_resume_ends_it_as_if_uninterrupted()
 {
    let wall = Instant::now();
    let st = Stack::up(RC1, true);
    let evidence_before: i64 = st
        .pg()
        .await
        .query_one("SELECT count(*) FROM evidence", &[])
        .await
        .unwrap()
        .get(0);
    let fs = Tmpfs::mount(&st.dir.join("runs"));
    let pauses = Stack::new_dir();
    let mut rows = Vec::new();
    for (i, c) in MATRIX.iter().enumerate() {
        // One step at a time: each case stops the run inside its step before the next case's step has run (run
        // together, Redis's backup would be done beside the NATS save before its own fault is injected).
        let args: &[&str] = if i == 0 {
            &ROLLBACK_ONE_AT_A_TIME
        } else {
            &["resume", "latest"]
        };
        let dir = pauses.join(i.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let child = start_paused(&st, args, c.step, &dir).await;
        inject(&st, c, Some(&fs)).await;
        std::fs::write(release_marker(&dir, c.step), "").unwrap();
        let t = Instant::now();
        let out = finish(child, STOPS_WITHIN).await;
        let secs = t.elapsed().as_secs_f64();
        let message = assert_stopped(&st, c, &out);
        heal(&st, c, Some(&fs));
        rows.push(Row {
            name: c.name,
            fault: c.fault,
            step: c.step,
            secs,
            message,
        });
    }
    let out = st.xorbctl(&["resume", "latest"]);
    assert!(out.status.success(), "the last resume: {}", text(&out));

    // The end state is an uninterrupted run's, and every row the downgrades destroyed is accounted for.
    let (_, run_dir) = assert_as_uninterrupted(&st).await;
    let loss: Value =
        serde_json::from_slice(&std::fs::read(run_dir.join("loss.json")).unwrap()).unwrap();
    assert_eq!(
        loss["accounted"]["evidence"]["preserved"], evidence_before,
        "{loss:#}"
    );
    assert_eq!(loss["unaccounted"], Value::Array(vec![]), "{loss:#}");

    println!("dependency-fault matrix: {} cases", rows.len());
    println!("| dependency | fault | step | stopped after | message |");
    for r in &rows {
        println!(
            "| {} | {:?} | {} | {:.1} s | {} |",
            r.name, r.fault, r.step, r.secs, r.message
        );
    }
    println!(
        "dependency-fault matrix: {} cases, wall time {:.0} s (stack up, the rollback, every fault, resume)",
        rows.len(),
        wall.elapsed().as_secs_f64()
    );
    drop(fs);
    st.xorbctl(&["stack", "down"]);
    let _ = std::fs::remove_dir_all(&st.dir);
    let _ = std::fs::remove_dir_all(&pauses);
}

/// The monitoring step's faults, one run on a stack of its own each: once Prometheus and Alertmanager are back
/// (a restart reads the files the step wrote; both releases share alertmanager.yml), the step's probe finds it
/// done, so a second fault in the same run would never be reached. Prometheus stalled is in [`MATRIX`].
const MONITORING: [Case; 3] = [
    case(
        "prometheus",
        "Prometheus",
        "4.monitoring.apply",
        Fault::Kill,
    ),
    case(
        "alertmanager",
        "Alertmanager",
        "4.monitoring.apply",
        Fault::Kill,
    ),
    case(
        "alertmanager",
        "Alertmanager",
        "4.monitoring.apply",
        Fault::Stall,
    ),
];

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_or_alertmanager_killed_or_stalled_inside_the_monitoring_step_stops_the_run_and_resume_ends_it()
 {
    let wall = Instant::now();
    let mut rows = Vec::new();
    for c in &MONITORING {
        let t0 = Instant::now();
        let st = Stack::up(RC1, false);
        let pauses = Stack::new_dir();
        let pid = server_pid(&st, c.server);
        let child = start_paused(
            &st,
            &["rollback", "--from", RC1, "--to", STABLE, "--yes"],
            c.step,
            &pauses,
        )
        .await;
        inject(&st, c, None).await;
        std::fs::write(release_marker(&pauses, c.step), "").unwrap();
        let t = Instant::now();
        let out = finish(child, STOPS_WITHIN).await;
        let secs = t.elapsed().as_secs_f64();
        let message = assert_stopped(&st, c, &out);
        // Nothing after the failed step ran: phase 5 waits for the monitoring.
        let run = show(&st);
        for s in run["steps"].as_array().unwrap() {
            if s["spec"]["id"].as_str().unwrap().starts_with("5.") {
                assert_eq!(s["state"], "pending", "{s:#}");
            }
        }
        // Still down while the run is stopped: what is asserted above is the fault's doing, not a race with a
        // restart.
        match c.fault {
            Fault::Kill => assert!(matches!(proc_state(pid), None | Some('Z'))),
            _ => assert_eq!(proc_state(pid), Some('T'), "{} stays stopped", c.server),
        }
        heal(&st, c, None);
        let out = resume(&st).await;
        assert!(
            out.status.success(),
            "{} {:?}: the resume after healing: {}",
            c.name,
            c.fault,
            text(&out)
        );
        let (run, _) = assert_as_uninterrupted(&st).await;
        let s = run_step(&run, c.step);
        assert!(
            ["succeeded", "already_done"].contains(&s["state"].as_str().unwrap()),
            "{s:#}"
        );
        let now = server_pid(&st, c.server);
        match c.fault {
            // Restarted in place by `stack up`: a new process, on its old port.
            Fault::Kill => assert_ne!(now, pid, "{} was restarted", c.server),
            // The same process, running again.
            _ => {
                assert_eq!(now, pid);
                assert_ne!(proc_state(pid), Some('T'));
            }
        }
        rows.push(Row {
            name: c.name,
            fault: c.fault,
            step: c.step,
            secs,
            message,
        });
        st.xorbctl(&["stack", "down"]);
        let _ = std::fs::remove_dir_all(&st.dir);
        let _ = std::fs::remove_dir_all(&pauses);
        println!(
            "{} {:?} in {}: case wall time {:.0} s",
            c.name,
            c.fault,
            c.step,
            t0.elapsed().as_secs_f64()
        );
    }
    println!("| dependency | fault | step | stopped after | message |");
    for r in &rows {
        println!(
            "| {} | {:?} | {} | {:.1} s | {} |",
            r.name, r.fault, r.step, r.secs, r.message
        );
    }
    println!(
        "monitoring faults: {} cases, one stack each, wall time {:.0} s",
        rows.len(),
        wall.elapsed().as_secs_f64()
    );
}

/// The directories of a stack's state directory that its servers write (crates/xorb-local/src/stack.rs,
/// `fresh_up`): PostgreSQL's, Redis's, NATS's, Prometheus's and Alertmanager's data, the services' evidence and
/// logs. Everything else there is xorbctl's own: the journal (journal.sqlite, with its -wal and -shm), the audit
/// trail (audit/), rollback.lock, runs/, and the records `stack up` and `stack down` keep (stack.json, pids/,
/// secrets/).
const SERVER_DIRS: [&str; 7] = [
    "postgres",
    "redis",
    "nats",
    "prometheus",
    "alertmanager",
    "evidence",
    "services",
];

/// xorbctl's own state on a file system of its own, which the test turns read-only the way the kernel does when a
/// disk fails under it (ext4's `errors=remount-ro`): from then on every write fails with EROFS, through descriptors
/// opened before as well.
///
/// Why not a read-only bind mount or a tmpfs over the paths, as for `runs/` in the matrix: a bind mount made
/// read-only only refuses new opens (the journal's SQLite connection, opened before the fault, would go on writing
/// through its descriptors, and the journal would never be read-only at all), and a tmpfs cannot be remounted
/// read-only while a file on it is open for writing. Why the whole state directory rather than a mount per path:
/// SQLite creates journal.sqlite-wal and -shm beside the journal, in the state directory itself.
///
/// So the state directory is an ext4 image on a loop device, turned read-only with `mount -o remount,abort` (what
/// ext4 does on an I/O error), and the servers' directories ([`SERVER_DIRS`]) are symlinks to a directory on the
/// ordinary disk: the servers never notice, exactly xorbctl's own files turn read-only. Healing is what an
/// operator does after such an event: unmount (plainly, not lazily: that also proves nothing but the xorbctl that
/// stopped held those files) and mount again; the file system's journal replays, so what was fsynced before the
/// fault is there, and nothing else is.
struct OwnStateFs {
    /// Holds the image, the mount point and the servers' directories.
    root: PathBuf,
    image: PathBuf,
    /// The stack's state directory: the mount point.
    state: PathBuf,
}

impl OwnStateFs {
    fn create() -> OwnStateFs {
        use std::os::unix::fs::PermissionsExt;
        let root = Stack::new_dir();
        // PostgreSQL runs as its own user: it must get through to its directory.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o711)).unwrap();
        let image = root.join("xorbctl-state.ext4");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(256 << 20)
            .unwrap();
        let state = root.join("state");
        std::fs::create_dir(&state).unwrap();
        let out = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&image)
            .output()
            .unwrap();
        assert!(out.status.success(), "mkfs.ext4: {}", text(&out));
        let fs = OwnStateFs { root, image, state };
        fs.mount();
        // An empty state directory, as `stack up` expects one.
        std::fs::remove_dir(fs.state.join("lost+found")).unwrap();
        let servers = fs.root.join("servers");
        std::fs::create_dir(&servers).unwrap();
        std::fs::set_permissions(&servers, std::fs::Permissions::from_mode(0o711)).unwrap();
        for d in SERVER_DIRS {
            std::fs::create_dir(servers.join(d)).unwrap();
            std::os::unix::fs::symlink(servers.join(d), fs.state.join(d)).unwrap();
        }
        fs
    }

    fn mount(&self) {
        let out = Command::new("mount")
            .args(["-t", "ext4", "-o", "loop"])
            .arg(&self.image)
            .arg(&self.state)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "this test needs root, loop devices and mount(8) for an ext4 image: {}",
            text(&out)
        );
    }

    /// Flushes everything written to the file system so far to the image (`sync -f`: syncfs(2)).
    fn sync(&self) {
        let out = Command::new("sync")
            .arg("-f")
            .arg(&self.state)
            .output()
            .unwrap();
        assert!(out.status.success(), "sync -f: {}", text(&out));
    }

    /// Every write to xorbctl's files fails from now on, through open descriptors too.
    fn read_only(&self) {
        let out = Command::new("mount")
            .args(["-o", "remount,abort"])
            .arg(&self.state)
            .output()
            .unwrap();
        assert!(out.status.success(), "remount,abort: {}", text(&out));
        let e = std::fs::write(self.state.join("probe"), "").unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(nix::errno::Errno::EROFS as i32),
            "{e}"
        );
    }

    /// Unmount and mount again: read-write, with what was on disk before the fault.
    fn remount(&self) {
        let out = Command::new("umount").arg(&self.state).output().unwrap();
        assert!(
            out.status.success(),
            "unmounting xorbctl's state (nothing may hold it once xorbctl has stopped): {}",
            text(&out)
        );
        self.mount();
    }
}

impl Drop for OwnStateFs {
    /// Stops the stack first (its records are on this file system: once it is gone, nothing would know the
    /// servers), then unmounts and removes everything.
    fn drop(&mut self) {
        let _ = Command::new(xorbctl_bin())
            .args(["stack", "down"])
            .env("XORB_STATE_DIR", &self.state)
            .output();
        let _ = Command::new("umount").arg("-l").arg(&self.state).status();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// `resume latest`, bounded like every command of these tests (a hang is killed and fails the test).
async fn resume(st: &Stack) -> Output {
    let mut cmd = st.cmd();
    cmd.args(["resume", "latest"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    finish(cmd.spawn().unwrap(), STOPS_WITHIN).await
}

/// `resume latest` ends the run as an uninterrupted one, finding `step_id`'s change made (its probe).
async fn resume_to_the_end(st: &Stack, step_id: &str) -> Value {
    let out = resume(st).await;
    assert!(out.status.success(), "the resume: {}", text(&out));
    let (run, _) = assert_as_uninterrupted(st).await;
    assert_eq!(run_step(&run, step_id)["state"], "already_done", "{run:#}");
    run
}

fn audit_verify(st: &Stack) -> String {
    let out = st.xorbctl(&["audit", "verify"]);
    let o = text(&out);
    assert!(
        out.status.success() && o.contains("audit log OK"),
        "the audit trail verifies: {o}"
    );
    o
}

#[tokio::test(flavor = "multi_thread")]
async fn xorbctl_s_state_turning_read_only_mid_run_stops_it_cleanly_and_resume_after_remounting_ends_it()
 {
    let wall = Instant::now();
    let fs = OwnStateFs::create();
    let st = Stack::up_in(fs.state.clone(), RC1, false);
    // `stack up` leaves its records (stack.json, secrets/) to the kernel's writeback; a real fault comes long after
    // they reached the disk, not within its 30 s.
    fs.sync();
    let pauses = Stack::new_dir();
    // A destructive phase-4 step that writes nothing of xorbctl's own while it acts: the change to NATS happens,
    // and it is the journal that cannot record it.
    let step_id = "4.nats.apply";
    // One step at a time: run together, the Redis step beside it could reach the read-only journal first, and
    // the engine would stop before this step acts (correct, but not the case under test).
    let child = start_paused(&st, &ROLLBACK_ONE_AT_A_TIME, step_id, &pauses).await;
    assert_eq!(run_step(&show(&st), step_id)["state"], "in_flight");
    fs.read_only();
    std::fs::write(release_marker(&pauses, step_id), "").unwrap();
    let t = Instant::now();
    let out = finish(child, STOPS_WITHIN).await;
    let secs = t.elapsed().as_secs_f64();

    // Stopped at once, not by a panic, with an error that says what could not be done, where, and why.
    let o = text(&out);
    let code = out.status.code();
    assert!(
        matches!(code, Some(c) if c != 0 && c != 101) && !o.contains("panicked"),
        "the run stops with an error ({code:?}):\n{o}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let journal = st.dir.join("journal.sqlite");
    for want in [
        "rollback journal",
        &journal.display().to_string(),
        "Read-only file system",
    ] {
        assert!(stderr.contains(want), "the error says {want:?}:\n{o}");
    }

    // While the state is read-only, what only reads works and tells the truth: the step is in flight (its intent
    // was on disk before the fault; its outcome never got there), the run interrupted, the audit trail whole.
    // A resume refuses, naming the file it cannot write, and changes nothing.
    let before = show(&st);
    assert_eq!(
        before["status"]["state"], "running",
        "{:#}",
        before["status"]
    );
    assert_eq!(run_step(&before, step_id)["state"], "in_flight");
    let last = before["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["event"].as_str(), last["step"].as_str()),
        (Some("step_started"), Some(step_id)),
        "the journal ends at the step's intent: {last:#}"
    );
    let runs = st.xorbctl(&["runs"]);
    assert!(
        text(&runs).contains("interrupted"),
        "`runs` says so: {}",
        text(&runs)
    );
    audit_verify(&st);
    let refused = st.xorbctl(&["resume", "latest"]);
    assert_eq!(refused.status.code(), Some(3), "{}", text(&refused));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("Read-only file system") && err.contains(&st.dir.display().to_string()),
        "names the file it cannot write and why: {err}"
    );
    assert_eq!(show(&st), before, "a refused resume changes nothing");

    // Remounted: nothing half-done. The journal is a consistent database holding what it held, the audit trail
    // verifies (its recorded checkpoint included) and has no torn line set aside.
    fs.remount();
    let conn =
        rusqlite::Connection::open_with_flags(&journal, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    drop(conn);
    assert_eq!(show(&st), before, "the journal holds what it held");
    let verified = audit_verify(&st);
    assert!(verified.contains("checkpoint"), "{verified}");
    let torn: Vec<String> = std::fs::read_dir(st.dir.join("audit"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("torn"))
        .collect();
    assert!(torn.is_empty(), "{torn:?}");

    // The resume finds the step's change made (its probe), records it done, and ends as an uninterrupted run.
    resume_to_the_end(&st, step_id).await;
    let after = audit_verify(&st);
    assert!(!after.contains("torn"), "{after}");

    println!(
        "xorbctl's state read-only inside {step_id}: stopped after {secs:.1} s with {code:?}: {}",
        stderr.lines().next().unwrap_or("")
    );
    println!(
        "xorbctl's state read-only: wall time {:.0} s (stack up, the rollback, the fault, remount, resume)",
        wall.elapsed().as_secs_f64()
    );
    st.xorbctl(&["stack", "down"]);
    drop(fs);
    let _ = std::fs::remove_dir_all(&pauses);
}

/// A power loss (everything not yet on disk gone, the process with it) right after a destructive downgrade commits,
/// before the engine flushes the step's files and journals its outcome: PostgreSQL keeps the downgrade (its WAL is
/// synced), so the data the step preserved of the tables it dropped must be on disk too, or its only copy outside
/// the backup is gone under a schema that no longer holds it.
#[tokio::test(flavor = "multi_thread")]
async fn a_power_loss_right_after_a_destructive_downgrade_keeps_what_it_preserved_and_resume_ends_the_run()
 {
    let fs = OwnStateFs::create();
    let st = Stack::up_in(fs.state.clone(), RC1, true);
    fs.sync();
    let pauses = Stack::new_dir();
    let step_id = "3.g8.downgrade.8d9a2c3";
    let point = format!("{step_id}@migrated");
    let child = start_paused(&st, &ROLLBACK_ONE_AT_A_TIME, &point, &pauses).await;
    // Paused after the commit: the schema is G8's target, the journal still has the step in flight.
    assert_eq!(st.status()["schema_revision"], "7c8f1b2");
    assert_eq!(run_step(&show(&st), step_id)["state"], "in_flight");
    // The power goes: the disk keeps what was flushed to it, nothing else, and the process is gone.
    fs.read_only();
    let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
    let killed = finish(child, STOPS_WITHIN).await;
    assert!(!killed.status.success());
    fs.remount();

    let run = show(&st);
    let run_dir = st.dir.join("runs").join(run["id"].as_str().unwrap());
    for kind in ["control-plane", "audit-chain"] {
        let dir = run_dir.join("preserved").join(kind);
        let manifest: Value = serde_json::from_slice(
            &std::fs::read(dir.join("manifest.json"))
                .unwrap_or_else(|e| panic!("{kind}: the export's manifest survives: {e}")),
        )
        .unwrap();
        assert_eq!(manifest["verified"], true, "{kind}: {manifest:#}");
        for (file, sha) in manifest["files"].as_object().unwrap() {
            use sha2::Digest;
            let bytes = std::fs::read(dir.join(file)).unwrap_or_default();
            assert_eq!(
                hex::encode(sha2::Sha256::digest(&bytes)),
                sha.as_str().unwrap(),
                "{kind}/{file} survives whole ({} bytes)",
                bytes.len()
            );
        }
    }

    resume_to_the_end(&st, step_id).await;
    audit_verify(&st);
    st.xorbctl(&["stack", "down"]);
    drop(fs);
    let _ = std::fs::remove_dir_all(&pauses);
}

/// The child of `parent` whose command is `comm`.
fn child_named(parent: u32, comm: &str) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.find_map(|e| {
        let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (name, rest) = (
            &stat[stat.find('(')? + 1..stat.rfind(')')?],
            &stat[stat.rfind(')')? + 2..],
        );
        let ppid: u32 = rest.split(' ').nth(1)?.parse().ok()?;
        (name == comm && ppid == parent).then_some(pid)
    })
}

/// Kills a process group when a test ends, failed or not: a paused xorbctl must not outlive it.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.0), Signal::SIGKILL);
    }
}

/// Bytes the process has written so far (/proc/PID/io's wchar).
fn written(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("wchar: "))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// `pg_dump` killed in the middle of the backup, with part of the dump already through its pipe: the run stops
/// at the backup (nothing destructive has run), naming `pg_dump` and how it ended, with no partial dump left;
/// `resume` takes a whole backup that the proof accepts and ends the run as an uninterrupted one.
#[tokio::test(flavor = "multi_thread")]
async fn pg_dump_killed_in_the_middle_of_the_backup_stops_the_run_cleanly_and_resume_takes_a_proven_backup()
 {
    // Some scale data: the demo's own dump (tens of KiB) would fit in the pipe whole.
    let st = Stack::up_with(Stack::new_dir(), RC1, true, &["--scale", "2000"]);
    let pauses = Stack::new_dir();
    let step_id = "3.db.backup";
    let point = format!("{step_id}@dumping");
    let child = start_paused(&st, &ROLLBACK_ONE_AT_A_TIME, &point, &pauses).await;
    let _group = KillOnDrop(child.id() as i32);
    let dump = child_named(child.id(), "pg_dump").expect("pg_dump runs while the backup waits");
    // Nobody reads the pipe while the step waits: pg_dump stops once it is full (64 KiB), its header and table of
    // contents through and the rows begun.
    wait_for("pg_dump to fill its pipe", || written(dump) >= 48 << 10).await;
    nix::sys::signal::kill(Pid::from_raw(dump), Signal::SIGKILL).unwrap();
    std::fs::write(release_marker(&pauses, &point), "").unwrap();
    let out = finish(child, STOPS_WITHIN).await;
    let o = text(&out);
    assert!(
        matches!(out.status.code(), Some(c) if c != 0 && c != 101) && !o.contains("panicked"),
        "the run stops with an error: {o}"
    );
    let stopped = show(&st);
    let error = run_step(&stopped, step_id)["outcome"]["error"]
        .as_str()
        .unwrap_or_else(|| panic!("the backup failed: {stopped:#}"))
        .to_string();
    assert!(
        error.contains("pg_dump of database") && error.contains("SIGKILL"),
        "the error names pg_dump and how it ended: {error}"
    );
    assert_eq!(
        st.status()["schema_revision"],
        "8d9a2c3",
        "nothing destructive ran"
    );
    let run_dir = st.dir.join("runs").join(stopped["id"].as_str().unwrap());
    assert!(
        !run_dir.join("db/xorb.dump.partial").exists() && !run_dir.join("db/xorb.dump").exists(),
        "no dump, partial or whole, is left"
    );

    let resumed = st.xorbctl(&["resume", "latest"]);
    assert!(resumed.status.success(), "the resume: {}", text(&resumed));
    let (run, _) = assert_as_uninterrupted(&st).await;
    assert_eq!(run_step(&run, step_id)["attempts"], 2, "{run:#}");
    assert_eq!(run_step(&run, "3.db.proof")["state"], "succeeded");
    println!("pg_dump killed mid-dump: {error}");
    st.xorbctl(&["stack", "down"]);
    let _ = std::fs::remove_dir_all(&pauses);
}

/// A Slack-compatible webhook receiver as a process of its own (so that it can be stopped and killed like a real
/// one): answers every POST 200 and appends its `X-Xorb-Delivery-Id` to a file.
struct Receiver {
    hits: PathBuf,
    child: Child,
}

const RECEIVER: &str = r#"
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with open(sys.argv[2], "a") as f:
            f.write(self.headers.get("X-Xorb-Delivery-Id", "") + "\n")
        self.send_response(200)
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

impl Receiver {
    async fn start(port: u16, hits: &Path) -> Receiver {
        let child = Command::new("python3")
            .args(["-c", RECEIVER, &port.to_string()])
            .arg(hits)
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        eventually(
            "the receiver listening",
            Duration::from_secs(30),
            || async {
                std::net::TcpStream::connect(("127.0.0.1", port))
                    .ok()
                    .map(|_| ())
            },
        )
        .await;
        Receiver {
            hits: hits.to_path_buf(),
            child,
        }
    }

    fn signal(&self, s: Signal) {
        nix::sys::signal::kill(Pid::from_raw(self.child.id() as i32), s).unwrap();
    }

    fn ids(&self) -> Vec<String> {
        std::fs::read_to_string(&self.hits)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The run's notifications from the journal (`show`), as (id, state, last error).
fn notifications(st: &Stack) -> Vec<(String, String, String)> {
    show(st)["notifications"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|n| n["sink"] != "terminal")
        .map(|n| {
            (
                n["id"].as_str().unwrap_or("").to_string(),
                n["state"].as_str().unwrap_or("").to_string(),
                n["last_error"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_receiver_stalled_then_killed_mid_run_never_fails_the_run_and_gets_every_message_once_back()
 {
    let wall = Instant::now();
    let st = Stack::up(RC1, false);
    let scratch = Stack::new_dir();
    let port = xorb_local::process::free_port().unwrap();
    let mut receiver = Receiver::start(port, &scratch.join("hits")).await;
    let url = format!(
        "http://127.0.0.1:{port}/services/T0/B0/{}",
        uuid::Uuid::new_v4().simple()
    );
    let step_id = "2.api.image";
    let mut cmd = st.cmd();
    cmd.args([
        "rollback", "--from", RC1, "--to", STABLE, "--only", "api", "--yes",
    ])
    .env("XORB_NOTIFY_URLS", &url)
    // Long enough for the receiver to come back while the command still delivers.
    .env("XORB_NOTIFY_GRACE_SECS", "120")
    .env(PAUSE_ENV, format!("{step_id}:{}", scratch.display()))
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    eventually("the run paused", Duration::from_secs(300), || async {
        paused_marker(&scratch, step_id).exists().then_some(())
    })
    .await;

    // Stalled: the kernel accepts, nobody answers. The run goes on; the messages stay owed, with the reason.
    receiver.signal(Signal::SIGSTOP);
    std::fs::write(release_marker(&scratch, step_id), "").unwrap();
    let stalled = eventually(
        "a delivery failure recorded for the stalled receiver",
        Duration::from_secs(120),
        || async {
            notifications(&st)
                .into_iter()
                .find(|(_, state, e)| state == "pending" && !e.is_empty())
        },
    )
    .await;
    assert!(stalled.2.contains("did not answer within"), "{stalled:?}");
    assert!(
        !stalled.2.contains(&url),
        "the URL is a secret: {stalled:?}"
    );

    // Killed: the connection is refused, said so.
    receiver.signal(Signal::SIGKILL);
    let _ = receiver.child.wait();
    let killed = eventually(
        "a refused delivery recorded",
        Duration::from_secs(120),
        || async {
            notifications(&st)
                .into_iter()
                .find(|(_, _, e)| e.contains("refused"))
        },
    )
    .await;
    assert!(!killed.2.contains(&url), "{killed:?}");

    // Back on its port: every owed message arrives, and the run succeeded all along.
    receiver = Receiver::start(port, &scratch.join("hits")).await;
    let out = finish(child, Duration::from_secs(300)).await;
    assert!(out.status.success(), "{}", text(&out));
    let o = text(&out);
    assert!(!o.contains(&url), "the URL never appears: {o}");
    let left = notifications(&st);
    assert!(!left.is_empty());
    for (id, state, err) in &left {
        assert_eq!(state, "delivered", "{id}: {err}");
    }
    let mut got = receiver.ids();
    got.sort();
    got.dedup();
    let mut want: Vec<String> = left.iter().map(|(id, _, _)| id.clone()).collect();
    want.sort();
    assert_eq!(
        got, want,
        "every message reached the receiver once it was back"
    );
    println!(
        "webhook receiver stalled then killed during a run: run succeeded, {} messages delivered after it came back; wall time {:.0} s",
        want.len(),
        wall.elapsed().as_secs_f64()
    );
    drop(receiver);
    st.xorbctl(&["stack", "down"]);
    let _ = std::fs::remove_dir_all(&st.dir);
    let _ = std::fs::remove_dir_all(&scratch);
}
