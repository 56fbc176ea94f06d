//! A real control plane (xorb-kubelab) for the adapter's tests, with Debian's kubectl to check results.

#![allow(dead_code)]

use std::process::Stdio;
use std::time::{Duration, Instant};

use xorb_kube::client::{Cluster, from_kubeconfig};
use xorb_kubelab::KubeLab;
use xorb_kubelab::agent::{AgentConfig, ImageMap, NodeAgent};

pub struct Lab {
    pub agent: Option<NodeAgent>,
    pub lab: KubeLab,
    pub dir: tempfile::TempDir,
}

/// The images the node agent runs in these tests; anything else waits in ErrImagePull.
pub fn images() -> ImageMap {
    ImageMap::new()
        .image("xorb-test/sleep:1", "/bin/sleep", ["3600"])
        .image("xorb-test/sleep:2", "/bin/sleep", ["3601"])
}

pub fn start() -> Lab {
    let dir = tempfile::tempdir().unwrap();
    let lab = KubeLab::start(&dir.path().join("lab"))
        .unwrap_or_else(|e| panic!("the Kubernetes lab did not start: {e}"));
    Lab {
        agent: None,
        lab,
        dir,
    }
}

/// A lab with the node agent running the `default` namespace's Pods.
pub async fn start_with_agent() -> Lab {
    let mut lab = start();
    let cluster = lab.admin().await;
    let config = AgentConfig {
        namespace: "default".into(),
        node_name: "xorb-node".into(),
        images: images(),
        work_dir: lab.dir.path().join("node"),
    };
    lab.agent = Some(NodeAgent::start(cluster.client, config).await.unwrap());
    lab
}

impl Lab {
    /// Stops the agent's containers while the runtime and the lab still run; call at the end of a test.
    pub async fn stop(mut self) {
        if let Some(a) = self.agent.take() {
            a.stop().await;
        }
    }

    /// kubectl apply of a manifest given on stdin.
    pub fn apply(&self, manifest: &str) {
        use std::io::Write;
        let mut child = self
            .lab
            .kubectl()
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(manifest.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kubectl apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub async fn admin(&self) -> Cluster {
        from_kubeconfig(self.lab.kubeconfig_path(), None, None)
            .await
            .unwrap()
    }

    /// kubectl as the admin; (success, stdout, stderr).
    pub fn kubectl(&self, args: &[&str]) -> (bool, String, String) {
        let out = self
            .lab
            .kubectl()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("kubectl starts");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.kubectl(args);
        assert!(ok, "kubectl {args:?} failed: {err}");
        out
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }
}

/// Polls `check` until it returns Some, or panics with its last answer after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let t0 = Instant::now();
    loop {
        match check().await {
            Ok(v) => return v,
            Err(why) if t0.elapsed() >= within => {
                panic!("{what}: not after {}s: {why}", within.as_secs())
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
