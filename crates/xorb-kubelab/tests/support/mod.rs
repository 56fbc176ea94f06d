//! What the lab's tests need: a lab, an agent on it, kubectl, polling with a deadline; the repository and the
//! platform's binary for the stack's tests.
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use xorb_kubelab::KubeLab;
use xorb_kubelab::agent::{AgentConfig, ImageMap, NodeAgent};
use xorb_kubelab::proxy::ServiceProxy;

pub const NODE: &str = "xorb-node";

pub struct Setup {
    pub agent: Option<NodeAgent>,
    pub proxy: Option<ServiceProxy>,
    pub rt: tokio::runtime::Runtime,
    pub lab: KubeLab,
    pub _dir: tempfile::TempDir,
}

impl Drop for Setup {
    fn drop(&mut self) {
        // The agent's containers stop first (SIGTERM, grace, SIGKILL), while the runtime and the lab still run.
        self.stop_agent();
    }
}

pub fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let lab = KubeLab::start(&dir.path().join("lab"))
        .unwrap_or_else(|e| panic!("the Kubernetes lab did not start: {e}"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let images = ImageMap::new()
        .image("xorb-test/sleep:1", "/bin/sleep", ["3600"])
        .image("xorb-test/sleep:2", "/bin/sleep", ["3601"])
        .image("xorb-test/shell:1", "/bin/sh", ["-c", "exit 0"])
        .image("xorb-test/python:1", "/usr/bin/python3", ["-c", "pass"]);
    let config = AgentConfig {
        namespace: "default".into(),
        node_name: NODE.into(),
        images,
        work_dir: dir.path().join("node"),
    };
    let kubeconfig = lab.kubeconfig_path().to_path_buf();
    let (agent, proxy) = rt.block_on(async move {
        let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
        let cfg =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .unwrap();
        let client = kube::Client::try_from(cfg).unwrap();
        let proxy = ServiceProxy::start(client.clone(), "default")
            .await
            .unwrap();
        (NodeAgent::start(client, config).await.unwrap(), proxy)
    });
    Setup {
        agent: Some(agent),
        proxy: Some(proxy),
        rt,
        lab,
        _dir: dir,
    }
}

impl Setup {
    pub fn agent(&self) -> &NodeAgent {
        self.agent.as_ref().unwrap()
    }

    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        let mut cmd = self.lab.kubectl();
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("kubectl starts");
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let (ok, out, err) = self.kubectl(args, stdin);
        assert!(ok, "kubectl {args:?} failed: {err}");
        out
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&all, None)).unwrap()
    }

    pub fn eventually(&self, within: Duration, mut check: impl FnMut() -> Result<(), String>) {
        let t0 = Instant::now();
        loop {
            match check() {
                Ok(()) => return,
                Err(why) if t0.elapsed() >= within => {
                    panic!(
                        "after {}s: {why}\n{}",
                        within.as_secs(),
                        self.lab.log_tails(20)
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    pub fn stop_agent(&mut self) {
        if let Some(agent) = self.agent.take() {
            self.rt.block_on(agent.stop());
        }
        if let Some(proxy) = self.proxy.take() {
            self.rt.block_on(proxy.stop());
        }
    }
}

pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .replace('\0', " ")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s[s.rfind(')').unwrap() + 2..].chars().next().unwrap();
            state != 'Z' && state != 'X'
        })
        .unwrap_or(false)
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `target/<profile>/xorb-svc`, next to the test's own `deps/` directory.
pub fn svc_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("xorb-svc");
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build -p xorb-svc` first",
        bin.display()
    );
    bin
}
