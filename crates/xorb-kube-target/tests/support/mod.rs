//! What the lab tests share: the repository, the platform's binary, rc1 brought up whole, and the target file
//! that points at it.

use std::path::PathBuf;

use xorb_kube_target::spec::TargetFile;
use xorb_kubelab::stack::{KubeStack, StackConfig};

pub const RC1: &str = "v2025.08-rc1";
pub const STABLE: &str = "v2025.07-stable";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

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

/// The target file for the lab (`xorb_kubelab::stack::target_file_text`): every address is a stable proxy port
/// of a Service.
pub fn target_file(stack: &KubeStack) -> TargetFile {
    let text = xorb_kubelab::stack::target_file_text(stack);
    TargetFile::parse(&text, std::path::Path::new("lab.toml")).unwrap()
}

/// rc1 with every workload rolled out, and the runtime that drives the lab's agent and proxy.
pub struct Lab {
    pub dir: tempfile::TempDir,
    pub rt: tokio::runtime::Runtime,
    pub stack: KubeStack,
}

impl Lab {
    pub fn rc1() -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let stack = rt
            .block_on(KubeStack::up(StackConfig {
                releases_root: repo().join("releases"),
                release: RC1.into(),
                svc_bin: svc_bin(),
                venv: repo().join(".venv"),
                namespace: "xorb".into(),
                dir: dir.path().join("stack"),
            }))
            .unwrap_or_else(|e| panic!("the stack did not come up: {e}"));
        Lab { dir, rt, stack }
    }

    /// Debian's kubectl in the namespace: whether it succeeded, and what it printed (stdout, then stderr).
    pub fn kubectl(&self, args: &[&str]) -> (bool, String) {
        let out = self
            .stack
            .lab()
            .kubectl()
            .args(["--namespace", "xorb"])
            .args(args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// kubectl that must succeed.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let (ok, text) = self.kubectl(args);
        assert!(ok, "kubectl {args:?}: {text}");
        text
    }

    pub fn down(self) {
        let Lab { dir, rt, stack } = self;
        rt.block_on(stack.down());
        drop(dir);
    }
}
