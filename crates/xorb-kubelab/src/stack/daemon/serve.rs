//! The stack's process: up, the record, SIGTERM or SIGINT, down.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::signal::unix::{Signal, SignalKind, signal};
use xorb_local::process::ProcRecord;

use super::record::{DemoFigures, ServeRecord, failed_path, write_atomic};
use super::{DaemonError, client};
use crate::stack::{KubeStack, StackConfig, target_file_text};

/// How often the record's list of processes is compared with what runs (containers change with every rollout).
const REFRESH: Duration = Duration::from_secs(2);

/// What [`serve`] needs: the stack's configuration, where to write the record, and whether to seed demo data.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub stack: StackConfig,
    /// The record file, written once the stack is up (its directory is created when missing).
    pub record: PathBuf,
    pub demo_data: bool,
}

const FLAGS: [&str; 7] = [
    "--releases-root",
    "--release",
    "--svc-bin",
    "--venv",
    "--namespace",
    "--dir",
    "--record",
];

impl ServeConfig {
    /// The arguments that carry this configuration to the stack's process, read back by
    /// [`ServeConfig::from_args`]: paths and names only, never a secret (process arguments are visible to every
    /// user of the machine).
    pub fn to_args(&self) -> Vec<OsString> {
        let s = &self.stack;
        let values: [OsString; 7] = [
            s.releases_root.clone().into(),
            s.release.clone().into(),
            s.svc_bin.clone().into(),
            s.venv.clone().into(),
            s.namespace.clone().into(),
            s.dir.clone().into(),
            self.record.clone().into(),
        ];
        let mut out = Vec::new();
        for (flag, value) in FLAGS.iter().zip(values) {
            out.push(OsString::from(flag));
            out.push(value);
        }
        if self.demo_data {
            out.push("--demo-data".into());
        }
        out
    }

    /// Reads what [`ServeConfig::to_args`] wrote (in any order); every flag but `--demo-data` is required.
    pub fn from_args(args: impl IntoIterator<Item = OsString>) -> Result<Self, DaemonError> {
        let mut values: [Option<OsString>; 7] = Default::default();
        let mut demo_data = false;
        let mut args = args.into_iter();
        while let Some(a) = args.next() {
            if a == "--demo-data" {
                demo_data = true;
                continue;
            }
            let Some(i) = FLAGS.iter().position(|f| a == *f) else {
                return Err(DaemonError::Args(format!(
                    "unknown argument {:?} (expected {} and --demo-data)",
                    a.to_string_lossy(),
                    FLAGS.join(", ")
                )));
            };
            let v = args
                .next()
                .ok_or_else(|| DaemonError::Args(format!("{} needs a value", FLAGS[i])))?;
            values[i] = Some(v);
        }
        let mut get = |i: usize| {
            values[i]
                .take()
                .ok_or_else(|| DaemonError::Args(format!("missing {}", FLAGS[i])))
        };
        let text = |v: OsString, f: &str| {
            v.into_string()
                .map_err(|_| DaemonError::Args(format!("{f} is not UTF-8")))
        };
        Ok(Self {
            stack: StackConfig {
                releases_root: get(0)?.into(),
                release: text(get(1)?, FLAGS[1])?,
                svc_bin: get(2)?.into(),
                venv: get(3)?.into(),
                namespace: text(get(4)?, FLAGS[4])?,
                dir: get(5)?.into(),
            },
            record: get(6)?.into(),
            demo_data,
        })
    }
}

/// Progress lines on stderr, which the spawner sends to the stack's log. Never a secret.
struct Log(Instant);

impl Log {
    fn line(&self, msg: impl std::fmt::Display) {
        eprintln!("[{:>7.1}s] {msg}", self.0.elapsed().as_secs_f64());
    }
}

/// The stack's process, blocking: brings the stack up, seeds demo data when asked, writes the target file
/// (`DIR/target.toml`) and the record, then runs the stack until SIGTERM or SIGINT, brings it down and removes the
/// record. Returns the exit code: 0 after a stop, 1 when the stack did not start (why, in one line, in
/// `RECORD.failed`, which [`super::wait_ready`] reports).
pub fn serve(config: ServeConfig) -> i32 {
    let log = Log(Instant::now());
    log.line(format!(
        "pid {}: release {} in namespace {} under {}",
        std::process::id(),
        config.stack.release,
        config.stack.namespace,
        config.stack.dir.display()
    ));
    // Two workers, as the lab's tests use: the agent, the proxy and the demo's clients, on a 2-core machine.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return failed(&config.record, &log, &format!("cannot start tokio: {e}")),
    };
    let result = rt.block_on(run(&config, &log));
    // Dropping the runtime waits for its blocking tasks: a lab still starting when a signal came is stopped by
    // its own Drop before this process ends.
    drop(rt);
    match result {
        Ok(()) => {
            log.line("stopped");
            0
        }
        Err(why) => failed(&config.record, &log, &why),
    }
}

fn failed(record: &Path, log: &Log, why: &str) -> i32 {
    log.line(format!("failed: {why}"));
    let one_line = one_line(why);
    if let Err(e) = write_atomic(&failed_path(record), format!("{one_line}\n").as_bytes()) {
        log.line(e);
    }
    1
}

/// A message on one line: its lines, trimmed, joined by " | " (a log's tail in an error keeps its order).
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}

struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    /// Installed before anything starts: from here on SIGTERM and SIGINT no longer end the process at once, they
    /// ask it to stop what it started.
    fn install() -> Result<Self, String> {
        let s = |k, name| signal(k).map_err(|e| format!("cannot handle {name}: {e}"));
        Ok(Self {
            term: s(SignalKind::terminate(), "SIGTERM")?,
            int: s(SignalKind::interrupt(), "SIGINT")?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

async fn run(config: &ServeConfig, log: &Log) -> Result<(), String> {
    let record_path = &config.record;
    if let Some(parent) = record_path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    // Whatever the spawner checked: a stack may have started since, and a finished one's record is cleared here.
    if let Some(other) = client::prepare(record_path).map_err(|e| e.to_string())? {
        return Err(format!(
            "a stack's process (pid {}) already runs for {}",
            other.pid,
            record_path.display()
        ));
    }
    let mut signals = Signals::install()?;

    let t0 = Instant::now();
    log.line("bringing the stack up");
    // A signal meanwhile drops `up`'s future, and with it what it has started (their Drop stops them).
    let stack = tokio::select! {
        r = KubeStack::up(config.stack.clone()) => r.map_err(|e| e.to_string())?,
        s = signals.recv() => return Err(format!("stopped by {s} while the stack was starting")),
    };
    log.line(format!("up in {:.1}s", t0.elapsed().as_secs_f64()));

    // From here on every way out goes through `down`.
    let result = serve_up(config, &stack, &mut signals, log).await;
    log.line("bringing the stack down");
    let t0 = Instant::now();
    stack.down().await;
    log.line(format!("down in {:.1}s", t0.elapsed().as_secs_f64()));
    let _ = std::fs::remove_file(record_path);
    let _ = std::fs::remove_file(config.stack.dir.join(super::TARGET_FILE));
    result
}

/// Demo data, the target file, the record; then the stack runs until a signal. Err only before the record is
/// written: afterwards the stack is ready and only a signal ends it.
async fn serve_up(
    config: &ServeConfig,
    stack: &KubeStack,
    signals: &mut Signals,
    log: &Log,
) -> Result<(), String> {
    let api_port = proxy_port(stack, "xorb-api", "http")?;
    let api_url = format!("http://127.0.0.1:{api_port}");
    let demo = if config.demo_data {
        let t0 = Instant::now();
        log.line("seeding demo data");
        let figures = tokio::select! {
            r = seed(stack, &api_url) => r?,
            s = signals.recv() => return Err(format!("stopped by {s} while seeding demo data")),
        };
        log.line(format!(
            "demo data in {:.1}s: tenants {}, {} sessions completed, {} findings",
            t0.elapsed().as_secs_f64(),
            figures.tenants.join(", "),
            figures.sessions_completed,
            figures.findings
        ));
        Some(figures)
    } else {
        None
    };

    let target_file = stack.dir().join(super::TARGET_FILE);
    write_atomic(&target_file, target_file_text(stack).as_bytes()).map_err(|e| e.to_string())?;
    let pid = std::process::id();
    let start_time = xorb_local::process::stat(pid as i32)
        .map(|(_, start)| start)
        .ok_or("cannot read this process's start time from /proc/self/stat")?;
    let mut record = ServeRecord {
        pid: pid as i32,
        start_time,
        release: stack.release().to_string(),
        namespace: stack.namespace().to_string(),
        kubeconfig: stack.lab().kubeconfig_path().to_path_buf(),
        target_file,
        dir: stack.dir().to_path_buf(),
        lab_dir: stack.lab().dir().to_path_buf(),
        etcd_data: stack.lab().etcd_data_dir().to_path_buf(),
        api_url,
        processes: processes(stack),
        demo,
    };
    record.save(&config.record).map_err(|e| e.to_string())?;
    log.line(format!(
        "ready: record {}, {} processes, target file {}",
        config.record.display(),
        record.processes.len(),
        record.target_file.display()
    ));

    let mut refresh = tokio::time::interval(REFRESH);
    loop {
        tokio::select! {
            s = signals.recv() => {
                log.line(format!("{s}: stopping"));
                return Ok(());
            }
            _ = refresh.tick() => {
                let now = processes(stack);
                if now != record.processes {
                    record.processes = now;
                    match record.save(&config.record) {
                        Ok(()) => log.line(format!("record: {} processes", record.processes.len())),
                        Err(e) => log.line(e),
                    }
                }
            }
        }
    }
}

fn proxy_port(stack: &KubeStack, service: &str, port: &str) -> Result<u16, String> {
    stack
        .service_port(service, port)
        .ok_or_else(|| format!("the Service {service} (port {port}) has no proxy port"))
}

/// The local target's demo data, through the Services' proxy ports: the sessions scan PostgreSQL's, Redis's and
/// NATS's (and one closed port). The tenants' tokens stay in `DIR/secrets/` (0700, the file 0600).
async fn seed(stack: &KubeStack, api_url: &str) -> Result<DemoFigures, String> {
    let open_ports = [
        proxy_port(stack, "postgres", "postgres")?,
        proxy_port(stack, "redis", "redis")?,
        proxy_port(stack, "nats-cluster", "client")?,
    ];
    let secrets = stack.dir().join("secrets");
    xorb_adapters::files::mkdir(&secrets, 0o700).map_err(|e| e.to_string())?;
    let tokens_file = secrets.join("tenants.json");
    let db = stack.database();
    let report = xorb_local::stack::seed_demo(&xorb_local::stack::DemoTarget {
        pg: &db,
        api: api_url,
        open_ports: &open_ports,
        tokens_file: &tokens_file,
    })
    .await
    .map_err(|e| format!("demo data: {}", db.redact(&e.to_string())))?;
    Ok(DemoFigures {
        tenants: report.tenants,
        sessions_completed: report.sessions_completed,
        findings: report.findings,
        evidence: report.evidence,
        tokens_file,
    })
}

/// What this process started and still runs, each with its start time: the control plane, PostgreSQL, the
/// containers (sorted, so an unchanged set compares equal).
fn processes(stack: &KubeStack) -> Vec<ProcRecord> {
    let mut out: Vec<ProcRecord> = stack
        .lab()
        .processes()
        .into_iter()
        .map(|p| ProcRecord {
            pid: p.pid as i32,
            start_time: p.start_time,
            program: p.name.to_string(),
        })
        .collect();
    out.push(ProcRecord {
        program: "postgres".into(),
        ..stack.postgres_process().clone()
    });
    let mut containers: Vec<ProcRecord> = stack
        .agent()
        .map(|a| a.processes())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| ProcRecord::of_pid(p.pid as i32, &format!("{}/{}", p.pod, p.container)))
        .collect();
    containers.sort_by(|a, b| (&a.program, a.pid).cmp(&(&b.program, b.pid)));
    out.extend(containers);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ServeConfig {
        ServeConfig {
            stack: StackConfig {
                releases_root: "/r/releases".into(),
                release: "v2025.08-rc1".into(),
                svc_bin: "/r/target/debug/xorb-svc".into(),
                venv: "/r/.venv".into(),
                namespace: "xorb".into(),
                dir: "/tmp/a dir/with spaces".into(),
            },
            record: "/run/xorb/stack.json".into(),
            demo_data: true,
        }
    }

    #[test]
    fn the_arguments_carry_the_whole_configuration() {
        let c = config();
        let back = ServeConfig::from_args(c.to_args()).unwrap();
        assert_eq!(format!("{back:?}"), format!("{c:?}"));
        let mut c = c;
        c.demo_data = false;
        let args = c.to_args();
        assert!(!args.iter().any(|a| a == "--demo-data"));
        assert!(!ServeConfig::from_args(args).unwrap().demo_data);
    }

    #[test]
    fn bad_arguments_say_what_is_wrong() {
        let mut args = config().to_args();
        let e = ServeConfig::from_args(args.clone().into_iter().chain(["--nope".into()]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown argument \"--nope\""), "{e}");
        let i = args.iter().position(|a| a == "--venv").unwrap();
        args.drain(i..i + 2);
        let e = ServeConfig::from_args(args).unwrap_err().to_string();
        assert_eq!(e, "the stack's process: missing --venv");
        let e = ServeConfig::from_args(["--record".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--record needs a value"), "{e}");
    }

    #[test]
    fn a_failure_is_written_on_one_line() {
        assert_eq!(
            one_line("etcd exited (code 1); last lines of x.log:\n  a\n\n  b  \n"),
            "etcd exited (code 1); last lines of x.log: | a | b"
        );
    }
}
