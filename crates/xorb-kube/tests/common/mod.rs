//! A real control plane (xorb-kubelab) for the adapter's tests, with Debian's kubectl to check results.

#![allow(dead_code)]

use std::process::Stdio;
use std::time::{Duration, Instant};

use xorb_kube::client::{Cluster, from_kubeconfig};
use xorb_kubelab::KubeLab;

pub struct Lab {
    pub lab: KubeLab,
    pub dir: tempfile::TempDir,
}

pub fn start() -> Lab {
    let dir = tempfile::tempdir().unwrap();
    let lab = KubeLab::start(&dir.path().join("lab"))
        .unwrap_or_else(|e| panic!("the Kubernetes lab did not start: {e}"));
    Lab { lab, dir }
}

impl Lab {
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
