use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

pub fn xorbctl_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_xorbctl"))
}

/// `cargo build --workspace` puts xorb-svc beside xorbctl; scripts/test builds it before the tests.
pub fn svc_bin() -> PathBuf {
    let p = xorbctl_bin().with_file_name("xorb-svc");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        p.display()
    );
    p
}

pub fn venv() -> PathBuf {
    repo().join(".venv")
}

pub struct Stack {
    pub dir: PathBuf,
    pub release: String,
}

static RC1: OnceLock<Stack> = OnceLock::new();
static STABLE: OnceLock<Stack> = OnceLock::new();

/// The shared rc1 stack with demo data: tests that only read or add their own tenants use it.
pub fn rc1() -> &'static Stack {
    RC1.get_or_init(|| Stack::up("v2025.08-rc1", true))
}

/// The shared stable stack with demo data.
pub fn stable() -> &'static Stack {
    STABLE.get_or_init(|| Stack::up("v2025.07-stable", true))
}

impl Stack {
    pub fn new_dir() -> PathBuf {
        tempfile::Builder::new()
            .prefix("xorb-it-")
            .tempdir()
            .unwrap()
            .keep()
    }

    /// Brings up a private stack and arms a watchdog that stops it and removes its directory once this test
    /// process is gone (the Rust test harness has no global teardown).
    pub fn up(release: &str, demo: bool) -> Stack {
        Self::up_in(Self::new_dir(), release, demo)
    }

    /// As [`Stack::up`], in a state directory the test prepared (an empty directory, maybe a mount point).
    pub fn up_in(dir: PathBuf, release: &str, demo: bool) -> Stack {
        Self::up_with(dir, release, demo, &[])
    }

    /// As [`Stack::up_in`], with more `stack up` flags (`--scrape-interval 1s`).
    pub fn up_with(dir: PathBuf, release: &str, demo: bool, flags: &[&str]) -> Stack {
        let stack = Stack {
            dir,
            release: release.to_string(),
        };
        stack.arm_watchdog();
        let mut args = vec!["stack", "up", "--release", release];
        if demo {
            args.push("--demo-data");
        }
        args.extend_from_slice(flags);
        let out = stack.xorbctl(&args);
        assert!(
            out.status.success(),
            "stack up {release} failed:\n{}",
            text(&out)
        );
        stack
    }

    #[expect(
        clippy::zombie_processes,
        reason = "the watchdog outlives this process by design: it acts once the tests are gone"
    )]
    fn arm_watchdog(&self) {
        use std::os::unix::process::CommandExt;
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; XORB_STATE_DIR='{dir}' '{bin}' stack down >/dev/null 2>&1; rm -rf '{dir}'",
            pid = std::process::id(),
            dir = self.dir.display(),
            bin = xorbctl_bin().display()
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(xorbctl_bin());
        c.env("XORB_STATE_DIR", &self.dir)
            .env("XORB_RELEASES", repo().join("releases"))
            .env("XORB_VENV", venv())
            .env("XORB_SVC_BIN", svc_bin())
            .current_dir(repo());
        c
    }

    pub fn xorbctl(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    pub fn status(&self) -> Value {
        let out = self.xorbctl(&["status", "--output", "json"]);
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("status json: {e}\n{}", text(&out)))
    }

    pub fn port(&self, service: &str) -> u16 {
        let st = self.status();
        st["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == service)
            .unwrap()["port"]
            .as_u64()
            .unwrap() as u16
    }

    pub fn url(&self, service: &str) -> String {
        format!("http://127.0.0.1:{}", self.port(service))
    }

    pub fn secret(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join("secrets").join(name))
            .unwrap()
            .trim()
            .to_string()
    }

    pub fn stack_json(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.dir.join("stack.json")).unwrap())
            .unwrap()
    }

    pub fn pg_port(&self) -> u16 {
        self.stack_json()["postgres"]["port"].as_u64().unwrap() as u16
    }

    pub fn database_url(&self, db: &str) -> String {
        format!(
            "postgres://xorb:{}@127.0.0.1:{}/{db}",
            self.secret("db-password"),
            self.pg_port()
        )
    }

    pub async fn pg(&self) -> tokio_postgres::Client {
        pg_connect(&self.database_url("xorb")).await
    }

    /// Adds a tenant of the test's own (so tests sharing a stack do not see each other's data).
    pub async fn add_tenant(&self, slug: &str) -> String {
        let token = format!("tok-{slug}-{}", uuid::Uuid::new_v4().simple());
        let hash = hex_sha256(token.as_bytes());
        self.pg()
            .await
            .execute(
                "INSERT INTO tenants (slug, name, token_sha256) VALUES ($1, $1, $2)",
                &[&slug, &hash],
            )
            .await
            .unwrap();
        token
    }
}

pub async fn pg_connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

pub fn hex_sha256(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

pub fn text(out: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Polls until `f` gives Some, or panics naming `what` at the deadline.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(base: String) -> Self {
        Self {
            base,
            http: reqwest::Client::new(),
        }
    }

    pub async fn create_session(&self, token: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/api/v1/ptaas/sessions", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, token: &str, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn wait_completed(&self, token: &str, id: &str) -> Value {
        eventually(
            &format!("session {id} to complete"),
            Duration::from_secs(60),
            || async {
                let (_, v) = self
                    .get(token, &format!("/api/v1/ptaas/sessions/{id}"))
                    .await;
                (v["status"] == "completed").then_some(v)
            },
        )
        .await
    }
}

/// An "image" of `role` that cannot start on `release`: a wrapper of xorb-svc (in the stack's directory) that
/// refuses exactly that role and release; pass it as XORB_SVC_BIN.
pub fn broken_image(st: &Stack, role: &str, release: &str) -> PathBuf {
    broken_image_in(&st.dir.join("broken-image"), role, release)
}

/// [`broken_image`] written into `bin_dir`.
pub fn broken_image_in(bin_dir: &Path, role: &str, release: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(bin_dir).unwrap();
    let wrapper = bin_dir.join("xorb-svc");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ncase \"$*\" in *'--role {role} --release {release}'*) echo '{role} image is broken' >&2; exit 1;; esac\nexec '{}' \"$@\"\n",
            svc_bin().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    wrapper
}

/// A copy of the repository's Alembic project at `to`: a releases tree made for a test holds its own, since every
/// path a release names must stay inside the tree (a symlink out of it is refused).
pub fn copy_migrations(to: &Path) {
    let out = Command::new("cp")
        .arg("-a")
        .arg(repo().join("migrations"))
        .arg(to)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

/// The latest run of the stack, as `xorbctl show latest --output json` gives it.
pub fn last_run(st: &Stack) -> Value {
    let out = st.xorbctl(&["show", "latest", "--output", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A copy of the project's releases this test may edit, with the Alembic project beside it (release.toml names
/// it as ../../migrations, and a path out of the tree is refused). Returns the directory and its `releases/`.
pub fn releases_copy() -> (tempfile::TempDir, PathBuf) {
    let work = tempfile::tempdir().unwrap();
    let releases = work.path().join("releases");
    let cp = Command::new("cp")
        .arg("-r")
        .arg(repo().join("releases"))
        .arg(&releases)
        .status()
        .unwrap();
    assert!(cp.success());
    copy_migrations(&work.path().join("migrations"));
    (work, releases)
}

/// Table → (rows, checksum) of a report written by `xorb_integrity::full` (phase 3's snapshot, or a fresh scan).
pub fn table_checksums(report: &Value) -> std::collections::BTreeMap<String, (u64, String)> {
    report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["table"].as_str().unwrap().to_string(),
                (
                    t["rows"].as_u64().unwrap(),
                    t["checksum"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

/// The step `id` of a run as `xorbctl show --output json` gives it.
pub fn run_step<'a>(run: &'a Value, id: &str) -> &'a Value {
    run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["spec"]["id"] == id)
        .unwrap_or_else(|| panic!("no step {id} in the run"))
}

/// The pid of the stack's api, from stack.json.
pub fn api_pid(st: &Stack) -> i64 {
    st.stack_json()["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "api")
        .unwrap()["proc"]["pid"]
        .as_i64()
        .unwrap()
}
