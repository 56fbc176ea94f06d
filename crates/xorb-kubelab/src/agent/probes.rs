//! Readiness and liveness probes, run as a kubelet runs them: the first at `initialDelaySeconds` after the
//! container started, then every `periodSeconds`; a result flips only after `successThreshold` consecutive
//! successes or `failureThreshold` consecutive failures. Each probe runs in a task of its own so a slow one never
//! holds the agent's loop; the loop collects finished results on its tick.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Probe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::Env;
use super::ports::PortMap;
use super::volumes::Mounts;

/// One probe of one running container.
pub(super) struct Prober {
    probe: Probe,
    next_at: Instant,
    in_flight: Option<JoinHandle<Result<(), String>>>,
    successes: i32,
    failures: i32,
    /// The probe's verdict: readiness starts false, liveness starts true (alive until proven otherwise).
    pub(super) ok: bool,
    pub(super) last_error: Option<String>,
}

/// How a probe reaches its container: the Pod's ports, and for exec the container's environment.
#[derive(Clone)]
pub(super) struct ProbeTarget {
    pub(super) spec: Container,
    pub(super) ports: PortMap,
    pub(super) mounts: Mounts,
    pub(super) env: Env,
    pub(super) dir: PathBuf,
}

fn secs(v: Option<i32>, default: i32) -> Duration {
    Duration::from_secs(v.unwrap_or(default).max(0) as u64)
}

impl Prober {
    pub(super) fn new(probe: &Probe, initially_ok: bool, started: Instant) -> Self {
        Self {
            next_at: started + secs(probe.initial_delay_seconds, 0),
            probe: probe.clone(),
            in_flight: None,
            successes: 0,
            failures: 0,
            ok: initially_ok,
            last_error: None,
        }
    }

    /// Collects a finished result and starts the next probe when it is due. True when the verdict changed.
    pub(super) async fn step(&mut self, target: &ProbeTarget) -> bool {
        let mut changed = false;
        if self.in_flight.as_ref().is_some_and(|h| h.is_finished())
            && let Some(h) = self.in_flight.take()
        {
            let result = h
                .await
                .unwrap_or_else(|e| Err(format!("probe task failed: {e}")));
            changed = self.record(result);
        }
        if self.in_flight.is_none() && Instant::now() >= self.next_at {
            self.next_at =
                Instant::now() + secs(self.probe.period_seconds, 10).max(Duration::from_secs(1));
            let (probe, target) = (self.probe.clone(), target.clone());
            self.in_flight = Some(tokio::spawn(async move { run(&probe, &target).await }));
        }
        changed
    }

    fn record(&mut self, result: Result<(), String>) -> bool {
        let before = self.ok;
        match result {
            Ok(()) => {
                self.failures = 0;
                self.successes += 1;
                self.last_error = None;
                if self.successes >= self.probe.success_threshold.unwrap_or(1).max(1) {
                    self.ok = true;
                }
            }
            Err(why) => {
                self.successes = 0;
                self.failures += 1;
                self.last_error = Some(why);
                if self.failures >= self.probe.failure_threshold.unwrap_or(3).max(1) {
                    self.ok = false;
                }
            }
        }
        before != self.ok
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        if let Some(h) = self.in_flight.take() {
            h.abort();
        }
    }
}

async fn run(probe: &Probe, target: &ProbeTarget) -> Result<(), String> {
    let timeout = secs(probe.timeout_seconds, 1).max(Duration::from_secs(1));
    let work = async {
        if let Some(h) = &probe.http_get {
            let port = target
                .ports
                .resolve(&target.spec, &h.port)
                .ok_or_else(|| format!("httpGet: no container port named {:?}", h.port))?;
            http_get(port, h.path.as_deref().unwrap_or("/")).await
        } else if let Some(t) = &probe.tcp_socket {
            let port = target
                .ports
                .resolve(&target.spec, &t.port)
                .ok_or_else(|| format!("tcpSocket: no container port named {:?}", t.port))?;
            TcpStream::connect(("127.0.0.1", port))
                .await
                .map(drop)
                .map_err(|e| format!("dial tcp 127.0.0.1:{port}: {e}"))
        } else if let Some(e) = &probe.exec {
            let command: Vec<String> = e
                .command
                .iter()
                .flatten()
                .map(|a| target.mounts.translate(&target.ports.translate(a)))
                .collect();
            exec(&command, target).await
        } else {
            Err(
                "the probe has no handler the xorb node agent runs (httpGet, tcpSocket, exec)"
                    .into(),
            )
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("timed out after {}s", timeout.as_secs())),
    }
}

/// HTTP/1.0 GET on loopback; 200 to 399 is a success, as for a kubelet.
async fn http_get(port: u16, path: &str) -> Result<(), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("Get http://127.0.0.1:{port}{path}: {e}"))?;
    let req = format!(
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: kube-probe/1.20\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("Get http://127.0.0.1:{port}{path}: {e}"))?;
    let mut head = [0u8; 64];
    let n = s
        .read(&mut head)
        .await
        .map_err(|e| format!("Get http://127.0.0.1:{port}{path}: {e}"))?;
    let line = String::from_utf8_lossy(&head[..n]);
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("Get http://127.0.0.1:{port}{path}: not an HTTP response"))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

async fn exec(command: &[String], target: &ProbeTarget) -> Result<(), String> {
    let Some((program, args)) = command.split_first() else {
        return Err("exec probe without a command".into());
    };
    let out = tokio::process::Command::new(program)
        .args(args)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .envs(target.env.iter().cloned())
        .current_dir(&target.dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .map_err(|e| format!("exec {program}: {e}"))?;
    if out.success() {
        Ok(())
    } else {
        Err(format!("exec {program}: {out}"))
    }
}
