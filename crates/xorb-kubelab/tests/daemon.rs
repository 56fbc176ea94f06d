//! The stack in a process of its own, as `xorbctl stack up --target kubernetes` runs it: a real separate process
//! (this crate's `xorb-kubelab-serve`, which calls `serve`) brings rc1 up with demo data, Debian's kubectl and a
//! PostgreSQL client use what its record names, and `stop` leaves no process behind.
//!
//! Needs the platform's binary: `cargo build -p xorb-svc` (the test says so when it is missing).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use xorb_kubelab::Binaries;
use xorb_kubelab::stack::StackConfig;
use xorb_kubelab::stack::daemon::{self, ServeConfig, ServeRecord, StopResult};

mod support;
use support::{repo, svc_bin};

const RC1: &str = "v2025.08-rc1";

/// Whatever happens to the test, the stack's process and what it started are stopped.
struct Spawned {
    record: PathBuf,
    child: Child,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if self.record.exists() {
            let _ = daemon::stop(&self.record, Duration::from_secs(60));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> String {
    let out = Command::new(Binaries::locate().unwrap().kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--namespace", "xorb"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn http_get(url: &str, path: &str) -> (String, serde_json::Value) {
    let addr = url.strip_prefix("http://").unwrap();
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(format!("GET {path} HTTP/1.0\r\nHost: xorb-api\r\n\r\n").as_bytes())
        .unwrap();
    let mut resp = String::new();
    c.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    (
        head.to_string(),
        serde_json::from_str(body).unwrap_or_default(),
    )
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Two stacks at once on this 2-core machine would only slow each other down.
static ONE_STACK_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Spawns the stack's process for rc1 under `dir` and waits until it is ready.
fn start(dir: &Path, demo_data: bool) -> (Spawned, ServeRecord, PathBuf) {
    let record = dir.join("run/stack.json");
    let log = dir.join("stack.log");
    let config = ServeConfig {
        stack: StackConfig {
            releases_root: repo().join("releases"),
            release: RC1.into(),
            svc_bin: svc_bin(),
            venv: repo().join(".venv"),
            namespace: "xorb".into(),
            dir: dir.join("stack"),
        },
        record: record.clone(),
        demo_data,
    };
    assert!(daemon::prepare(&record).unwrap().is_none());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xorb-kubelab-serve"));
    cmd.args(config.to_args());
    let t0 = Instant::now();
    let mut spawned = Spawned {
        record: record.clone(),
        child: daemon::spawn(cmd, &log).unwrap(),
    };
    let rec = daemon::wait_ready(&record, &mut spawned.child, &log, Duration::from_secs(180))
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "rc1 ready in {:.1}s (demo data: {demo_data})",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(rec.pid, spawned.child.id() as i32);
    assert_eq!(
        (rec.release.as_str(), rec.namespace.as_str()),
        (RC1, "xorb")
    );
    // Every process it recorded runs: the control plane, PostgreSQL, the eleven containers.
    assert_eq!(rec.processes.len(), 3 + 1 + 11, "{:?}", rec.processes);
    for p in &rec.processes {
        assert!(p.is_alive(), "{p:?}");
    }
    (spawned, rec, log)
}

#[test]
fn the_stacks_own_process_serves_rc1_with_demo_data_until_stopped() {
    let _one = ONE_STACK_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (mut spawned, rec, log) = start(dir.path(), true);
    let record = spawned.record.clone();
    // A second `stack up` would find it running.
    assert_eq!(
        daemon::prepare(&record).unwrap().map(|r| r.pid),
        Some(rec.pid)
    );

    // The record's kubeconfig, with Debian's kubectl.
    let image = kubectl(
        &rec.kubeconfig,
        &[
            "get",
            "deploy",
            "xorb-api",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ],
    );
    assert_eq!(image, "xorb/api:v2025.08-rc1");
    // The api, at the record's address.
    let (head, health) = http_get(&rec.api_url, "/api/v1/health");
    assert!(head.contains(" 200 "), "{head}");
    assert_eq!(health["release"], RC1, "{health}");

    // The target file: the namespace, every address a proxy port on 127.0.0.1, passwords by reference.
    let target_text = std::fs::read_to_string(&rec.target_file).unwrap();
    let target: toml::Table = toml::from_str(&target_text).unwrap();
    assert_eq!(target["namespace"].as_str(), Some("xorb"));
    for s in xorb_model::release::SERVICE_ORDER {
        let url = target["services"][s].as_str().unwrap();
        assert!(url.starts_with("http://127.0.0.1:"), "{s}: {url}");
        let job = target["scrape_targets"][&format!("xorb-{s}")]
            .as_str()
            .unwrap();
        assert_eq!(format!("http://{job}"), url);
    }
    assert_eq!(
        target["services"]["api"].as_str(),
        Some(rec.api_url.as_str())
    );
    let pg = &target["postgres"];
    assert_eq!(pg["host"].as_str(), Some("127.0.0.1"));
    assert_eq!(pg["password"]["secret"].as_str(), Some("xorb-db"));

    // The demo data, read as a client of the database: its password from the Secret the target file names.
    let demo = rec.demo.clone().expect("demo data was asked for");
    assert_eq!(demo.tenants, ["acme", "globex"]);
    assert!(demo.findings >= 1, "{demo:?}");
    assert_eq!(mode(&demo.tokens_file), 0o600);
    assert_eq!(mode(demo.tokens_file.parent().unwrap()), 0o700);
    let password = {
        use base64::Engine;
        let b64 = kubectl(
            &rec.kubeconfig,
            &[
                "get",
                "secret",
                "xorb-db",
                "-o",
                "jsonpath={.data.password}",
            ],
        );
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .unwrap(),
        )
        .unwrap()
    };
    let pg_port = pg["port"].as_integer().unwrap() as u16;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (tenants, findings) = rt.block_on(async {
        let (client, conn) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(pg_port)
            .user("xorb")
            .password(&password)
            .dbname("xorb")
            .connect_timeout(Duration::from_secs(10))
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let tenants: Vec<String> = client
            .query("SELECT slug FROM tenants ORDER BY slug", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let findings: i64 = client
            .query_one("SELECT count(*) FROM findings", &[])
            .await
            .unwrap()
            .get(0);
        (tenants, findings)
    });
    assert!(
        tenants.contains(&"acme".to_string()) && tenants.contains(&"globex".to_string()),
        "{tenants:?}"
    );
    assert!(findings >= 1);

    // No secret in the log, the record, the target file or the process's arguments.
    let tokens: BTreeMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(&demo.tokens_file).unwrap()).unwrap();
    assert_eq!(tokens.len(), 2);
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", rec.pid)).unwrap();
    let texts = [
        ("the log", std::fs::read_to_string(&log).unwrap()),
        ("the record", std::fs::read_to_string(&record).unwrap()),
        ("the target file", target_text),
        (
            "the command line",
            String::from_utf8_lossy(&cmdline).into_owned(),
        ),
    ];
    for secret in tokens.values().chain([&password]) {
        assert!(secret.len() >= 32);
        for (what, text) in &texts {
            assert!(!text.contains(secret.as_str()), "a secret in {what}");
        }
    }

    // A rollout replaces a container: the process rewrites its record, so a stopper knows the new one.
    let scheduler = |r: &ServeRecord| -> Vec<i32> {
        r.processes
            .iter()
            .filter(|p| p.program.starts_with("xorb-scheduler-"))
            .map(|p| p.pid)
            .collect()
    };
    let old = scheduler(&rec);
    assert_eq!(old.len(), 1, "{:?}", rec.processes);
    kubectl(
        &rec.kubeconfig,
        &["rollout", "restart", "deployment/xorb-scheduler"],
    );
    let t0 = Instant::now();
    let rec = loop {
        let now = ServeRecord::load(&record).unwrap().unwrap();
        let pids = scheduler(&now);
        if pids.len() == 1 && pids != old {
            break now;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "the record still has {pids:?} (was {old:?})"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(rec.processes.len(), 3 + 1 + 11, "{:?}", rec.processes);

    let t1 = Instant::now();
    let outcome = daemon::stop(&record, Duration::from_secs(90)).unwrap();
    eprintln!("stopped in {:.1}s", t1.elapsed().as_secs_f64());
    assert_eq!(outcome.daemon.result, StopResult::Stopped);
    assert_eq!(outcome.processes.len(), rec.processes.len());
    for e in &outcome.processes {
        // Each stopped by the stack's own `down`.
        assert_eq!(e.result, StopResult::Stopped, "{e:?}");
    }
    let status = spawned.child.wait().unwrap();
    assert!(status.success(), "{status}");
    for p in rec.processes.iter().chain([&rec.daemon()]) {
        // /proc/PID/stat with the recorded start time: a pid reused since is not ours.
        assert!(!p.is_alive(), "{p:?} still runs");
    }
    assert!(!record.exists());
    assert!(!rec.target_file.exists());
    assert!(!rec.etcd_data.exists());
    let e = daemon::stop(&record, Duration::from_secs(1)).unwrap_err();
    assert!(
        e.to_string().starts_with("no Kubernetes stack to stop"),
        "{e}"
    );
    assert!(
        std::fs::read_to_string(&log).unwrap().contains("stopped"),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
}

/// The stack's process killed outright (out of memory, `kill -9`): its processes run on, and `stop` ends them
/// itself, as recorded.
#[test]
fn stop_ends_what_a_killed_stack_process_left_running() {
    let _one = ONE_STACK_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (mut spawned, rec, _log) = start(dir.path(), false);
    let record = spawned.record.clone();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(rec.pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    spawned.child.wait().unwrap();
    for p in &rec.processes {
        assert!(p.is_alive(), "{p:?} ended with the stack's process");
    }
    let e = daemon::prepare(&record).unwrap_err().to_string();
    assert!(
        e.contains("15 of the processes it started still run"),
        "{e}"
    );

    let t0 = Instant::now();
    let outcome = daemon::stop(&record, Duration::from_secs(10)).unwrap();
    // The platform's services cannot drain once the proxy (in the killed process) is gone: they are killed
    // after the grace; the others stop.
    let killed: Vec<&str> = outcome
        .processes
        .iter()
        .filter(|e| e.result == StopResult::Killed)
        .map(|e| e.name.as_str())
        .collect();
    eprintln!(
        "left-overs stopped in {:.1}s, killed after the grace: {killed:?}",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(outcome.daemon.result, StopResult::AlreadyGone);
    for e in &outcome.processes {
        assert!(
            matches!(e.result, StopResult::Stopped | StopResult::Killed),
            "{e:?}"
        );
    }
    for p in &rec.processes {
        assert!(!p.is_alive(), "{p:?} still runs");
    }
    assert!(!record.exists());
    assert!(!rec.target_file.exists());
    assert!(!rec.etcd_data.exists(), "etcd's data left in memory");
}
