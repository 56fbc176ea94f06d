//! One warm Python per venv for the process's Alembic calls (`python_worker.py` says what it does).
//!
//! A rollback asks Alembic six to eight times (current and history with the backup, the compatibility check's
//! revisions, a downgrade per data migration, the scratch upgrade of the schema check), and each `alembic`
//! process spent most of its time importing Alembic and SQLAlchemy: about 0.4 s, most of a downgrade at demo size.
//!
//! The worker is a plain `std::process::Child` served from a blocking thread, not a tokio child: tokio binds a
//! child's pipes to the runtime that spawned it, and one process may use several (tests, the Kubernetes
//! target's calls). Calls take turns. A call whose future is dropped (a step's timeout) kills the worker, as the
//! engine's timeout killed an `alembic` process: PostgreSQL rolls back the migration's transaction, and the next
//! call starts a new worker.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use serde_json::{Value, json};

const WORKER: &str = include_str!("python_worker.py");

/// What one request printed, and how it ended (the exit status `alembic` or the script would have had).
#[derive(Debug)]
pub struct Reply {
    pub code: i64,
    pub stdout: String,
    pub stderr: String,
}

/// Why a request got no reply.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The venv's python cannot be run or cannot import Alembic: an installation problem, not worth a retry.
    #[error("{0}")]
    Start(String),
    /// The worker went away during the request (killed, out of memory): whatever it ran was rolled back.
    #[error("{0}")]
    Lost(String),
}

impl WorkerError {
    /// The same error, its message naming the worker.
    fn of(self, bin: &Path) -> Self {
        let what =
            |why: String| format!("the Python worker ({} with Alembic) {why}", bin.display());
        match self {
            WorkerError::Start(why) => WorkerError::Start(what(why)),
            WorkerError::Lost(why) => WorkerError::Lost(what(why)),
        }
    }
}

/// `alembic ARGS` in the warm worker; `env` is set for this request only (`None` removes a variable).
pub async fn alembic(
    venv: &Path,
    args: Vec<String>,
    env: Vec<(&str, Option<String>)>,
) -> Result<Reply, WorkerError> {
    let env: serde_json::Map<String, Value> = env
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.map_or(Value::Null, Value::String)))
        .collect();
    call(venv, json!({ "alembic": args, "env": env })).await
}

/// `python SCRIPT` in the warm worker, with no database in its environment.
pub async fn script(venv: &Path, script: &Path) -> Result<Reply, WorkerError> {
    call(
        venv,
        json!({ "script": script.display().to_string(), "env": { "DATABASE_URL": null } }),
    )
    .await
}

/// Starts the worker now, without waiting for it, so that its imports overlap the caller's other work (the
/// planner's reading of releases and the target). A failure to start is reported by the first call.
pub fn warm(venv: &Path) {
    let _ = worker(venv);
}

struct Worker {
    child: Mutex<Child>,
    io: Arc<tokio::sync::Mutex<Option<Io>>>,
}

struct Io {
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    ready: bool,
}

impl Worker {
    fn kill(&self) {
        let mut child = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = child.kill();
        let _ = child.wait();
    }
}

static WORKERS: LazyLock<Mutex<HashMap<PathBuf, Arc<Worker>>>> = LazyLock::new(Default::default);

fn python(venv: &Path) -> PathBuf {
    venv.join("bin/python")
}

fn worker(venv: &Path) -> Result<Arc<Worker>, WorkerError> {
    let mut all = WORKERS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(w) = all.get(venv) {
        return Ok(w.clone());
    }
    let bin = python(venv);
    let mut child = Command::new(&bin)
        .arg("-c")
        .arg(WORKER)
        .env_remove("DATABASE_URL")
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| WorkerError::Start(format!("cannot run {}: {e}", bin.display())))?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(WorkerError::Start(format!(
            "{} started without pipes",
            bin.display()
        )));
    };
    let w = Arc::new(Worker {
        child: Mutex::new(child),
        io: Arc::new(tokio::sync::Mutex::new(Some(Io {
            stdin,
            stdout: BufReader::new(stdout),
            ready: false,
        }))),
    });
    all.insert(venv.to_path_buf(), w.clone());
    Ok(w)
}

/// Forgets `w` (and kills it) unless a newer worker already took its place.
fn retire(venv: &Path, w: &Arc<Worker>) {
    let mut all = WORKERS.lock().unwrap_or_else(PoisonError::into_inner);
    if all.get(venv).is_some_and(|cur| Arc::ptr_eq(cur, w)) {
        all.remove(venv);
    }
    drop(all);
    w.kill();
}

/// Kills the worker if the call's future is dropped before its reply.
struct InFlight<'a> {
    venv: &'a Path,
    worker: Option<Arc<Worker>>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(w) = self.worker.take() {
            retire(self.venv, &w);
        }
    }
}

async fn call(venv: &Path, request: Value) -> Result<Reply, WorkerError> {
    let line = format!("{request}\n");
    let bin = python(venv);
    // A worker another call retired while this one waited for its turn is replaced once.
    let (w, io) = loop {
        let w = worker(venv)?;
        let io = w.io.clone().lock_owned().await;
        if io.is_some() {
            break (w, io);
        }
        drop(io);
        retire(venv, &w);
    };
    let mut in_flight = InFlight {
        venv,
        worker: Some(w),
    };
    let mut io = io;
    let reply = tokio::task::spawn_blocking(move || {
        let result = match io.as_mut() {
            Some(io) => exchange(io, &line),
            None => Err(WorkerError::Lost("stopped earlier".to_string())),
        };
        if result.is_err() {
            *io = None;
        }
        result
    })
    .await
    .map_err(|e| WorkerError::Lost(format!("lost its thread: {e}")))
    .and_then(|r| r)
    .map_err(|e| e.of(&bin))?;
    in_flight.worker = None;
    Ok(reply)
}

fn read_json(stdout: &mut BufReader<ChildStdout>) -> Result<Value, String> {
    let mut line = String::new();
    match stdout.read_line(&mut line) {
        Ok(0) => Err("ended without answering".to_string()),
        Ok(_) => serde_json::from_str(&line).map_err(|e| format!("answered malformed JSON: {e}")),
        Err(e) => Err(format!("cannot be read: {e}")),
    }
}

fn exchange(io: &mut Io, line: &str) -> Result<Reply, WorkerError> {
    if !io.ready {
        let hello = read_json(&mut io.stdout).map_err(WorkerError::Start)?;
        if hello["ready"] != Value::Bool(true) {
            return Err(WorkerError::Start(format!(
                "cannot import Alembic: {}",
                crate::toolout::last_line(hello["error"].as_str().unwrap_or_default())
            )));
        }
        io.ready = true;
    }
    io.stdin
        .write_all(line.as_bytes())
        .and_then(|()| io.stdin.flush())
        .map_err(|e| WorkerError::Lost(format!("cannot be written to: {e}")))?;
    let v = read_json(&mut io.stdout).map_err(WorkerError::Lost)?;
    let text = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    Ok(Reply {
        code: v["code"].as_i64().unwrap_or(1),
        stdout: text("stdout"),
        stderr: text("stderr"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn venv() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv")
    }

    fn script_file(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    #[tokio::test]
    async fn requests_share_one_warm_worker_and_get_only_their_own_output_and_environment() {
        let dir = tempfile::tempdir().unwrap();
        let pid = script_file(
            dir.path(),
            "pid.py",
            "import os, sys\nprint(os.getpid())\nprint('to stderr', file=sys.stderr)\nsys.exit(3)\n",
        );
        let first = script(&venv(), &pid).await.unwrap();
        assert_eq!(first.code, 3);
        assert_eq!(first.stderr, "to stderr\n");
        let second = script(&venv(), &pid).await.unwrap();
        assert_eq!(second.stdout, first.stdout, "a second Python was started");
        assert!(first.stdout.trim().parse::<u32>().is_ok(), "{first:?}");

        let env = script_file(
            dir.path(),
            "env.py",
            "import os\nprint(os.environ.get('XORB_T', '-'), os.environ.get('DATABASE_URL', '-'))\n",
        );
        let set = call(
            &venv(),
            json!({ "script": env.display().to_string(), "env": { "XORB_T": "x", "DATABASE_URL": "postgres://u:s3cret@h/d" } }),
        )
        .await
        .unwrap();
        assert_eq!(set.stdout, "x postgres://u:s3cret@h/d\n");
        let after = script(&venv(), &env).await.unwrap();
        assert_eq!(after.stdout, "- -\n", "a request's environment outlived it");

        let alembic = alembic(&venv(), vec!["--version".into()], vec![])
            .await
            .unwrap();
        assert_eq!(alembic.code, 0);
        assert!(alembic.stdout.starts_with("alembic "), "{alembic:?}");
    }

    #[tokio::test]
    async fn a_call_dropped_before_its_reply_kills_the_worker_and_the_next_call_gets_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        // Its own venv key (a symlink to the same venv), so the other test's worker is not the one killed.
        let v = dir.path().join("venv");
        std::os::unix::fs::symlink(venv().canonicalize().unwrap(), &v).unwrap();
        let pid = script_file(dir.path(), "pid.py", "import os\nprint(os.getpid())\n");
        let worker_pid = async || -> u32 {
            let out = script(&v, &pid).await.unwrap().stdout;
            out.trim().parse().unwrap()
        };
        let before = worker_pid().await;
        let slow = script_file(dir.path(), "slow.py", "import time\ntime.sleep(60)\n");
        let cut = tokio::time::timeout(Duration::from_millis(300), script(&v, &slow)).await;
        assert!(cut.is_err(), "the slow script answered");
        assert!(
            !Path::new(&format!("/proc/{before}")).exists(),
            "the worker outlived the dropped call"
        );
        assert_ne!(worker_pid().await, before);
    }

    #[tokio::test]
    async fn a_venv_without_python_is_an_installation_problem() {
        let dir = tempfile::tempdir().unwrap();
        let e = script(dir.path(), &dir.path().join("x.py"))
            .await
            .unwrap_err();
        assert!(matches!(e, WorkerError::Start(_)), "{e}");
        assert!(e.to_string().contains("bin/python"), "{e}");
    }
}
