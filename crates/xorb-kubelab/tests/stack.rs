//! A whole release on the lab: rc1 comes up from its own manifests, Debian's kubectl sees every workload rolled
//! out, the api answers through its Service's proxy port, and `down` leaves no process behind.
//!
//! Needs the platform's binary: `cargo build -p xorb-svc` (the test says so when it is missing).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use xorb_kubelab::stack::{KubeStack, StackConfig};

mod support;
use support::{alive, repo, svc_bin};

#[test]
fn rc1_comes_up_whole_and_down_leaves_no_process() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let config = StackConfig {
        releases_root: repo().join("releases"),
        release: "v2025.08-rc1".into(),
        svc_bin: svc_bin(),
        venv: repo().join(".venv"),
        namespace: "xorb".into(),
        dir: dir.path().to_path_buf(),
    };
    let t0 = std::time::Instant::now();
    let stack = rt
        .block_on(KubeStack::up(config))
        .unwrap_or_else(|e| panic!("the stack did not come up: {e}"));
    eprintln!("rc1 up in {:.1}s", t0.elapsed().as_secs_f64());

    // Debian's kubectl: every workload rolled out.
    let kubectl = |args: &[&str]| {
        let out = stack
            .lab()
            .kubectl()
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
    };
    for d in [
        "deployment/xorb-api",
        "deployment/xorb-orchestrator",
        "deployment/xorb-control-plane",
        "deployment/xorb-worker",
        "deployment/xorb-scheduler",
        "deployment/redis",
        "deployment/prometheus",
        "deployment/alertmanager",
        "statefulset/nats-cluster",
    ] {
        let out = kubectl(&["rollout", "status", d, "--watch=false"]);
        assert!(
            out.contains("successfully rolled out") || out.contains("rolling update complete"),
            "{d}: {out}"
        );
    }
    let pods: serde_json::Value =
        serde_json::from_str(&kubectl(&["get", "pods", "-o", "json"])).unwrap();
    // api 2, orchestrator 1, control plane 1, worker 2, scheduler 1, redis, prometheus, alertmanager, nats.
    assert_eq!(pods["items"].as_array().unwrap().len(), 11, "{pods}");

    // The api's health through its Service's stable proxy port: rc1, every dependency up.
    let port = stack
        .service_port("xorb-api", "http")
        .expect("the api Service is proxied");
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"GET /api/v1/health HTTP/1.0\r\nHost: xorb-api\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    c.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{resp}"
    );
    let health: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(health["release"], "v2025.08-rc1", "{health}");
    assert_eq!(health["status"], "healthy", "{health}");
    // No secret on any container's command line.
    let secret: serde_json::Value =
        serde_json::from_str(&kubectl(&["get", "secret", "xorb-secrets", "-o", "json"])).unwrap();
    let db_url = String::from_utf8(base64_decode(
        secret["data"]["DATABASE_URL"].as_str().unwrap(),
    ))
    .unwrap();
    let password = db_url
        .split(':')
        .nth(2)
        .unwrap()
        .split('@')
        .next()
        .unwrap()
        .to_string();
    assert!(password.len() >= 32);
    let agent_pids: Vec<i32> = stack
        .agent()
        .unwrap()
        .processes()
        .iter()
        .map(|p| p.pid as i32)
        .collect();
    for pid in &agent_pids {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&cmd).contains(&password),
            "pid {pid}"
        );
    }

    let mut pids: Vec<i32> = stack
        .lab()
        .processes()
        .iter()
        .map(|p| p.pid as i32)
        .collect();
    pids.extend(agent_pids);
    pids.push(stack.postgres_pid());
    // The lab's three, the eleven containers, PostgreSQL.
    assert_eq!(pids.len(), 3 + 11 + 1, "{pids:?}");
    rt.block_on(stack.down());
    for pid in pids {
        assert!(!alive(pid as u32), "pid {pid} still runs after down");
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}
