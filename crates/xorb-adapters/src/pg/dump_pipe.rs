//! The backup's one read of the database: `pg_dump --format=custom` writes to a pipe, and what comes out is written
//! to the dump file, hashed (SHA-256) and passed to `pg_restore --data-only --file=-`, whose rows the integrity scan
//! reads (`xorb_integrity::DumpScan`). Measured at 1 GB on two cores: the dump and a scan of the database beside
//! it took 8.3 s; `pg_dump` alone, 4.5 s, and the pipe adds no measurable time to it.
//!
//! A custom dump written to a pipe has no data offsets in its table of contents: `pg_restore --jobs` still
//! restores it in parallel (its workers find the blocks by reading forward; 10.9 s against 10.0 s for the same
//! dump written to a file, at 1 GB).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdout, Command};
use xorb_engine::runner::StepError;

use super::*;
use crate::context::failed;

/// The dump as written.
pub(crate) struct Dumped {
    pub sha256: String,
    pub bytes: u64,
}

/// Why the pipe failed.
pub(crate) enum PipeError {
    /// `pg_dump` itself failed: the cause, whatever the reader of its rows saw.
    Dump(StepError),
    /// The rest of the pipe (`pg_restore`, the file): a cause, or the consequence of a reader that stopped.
    Pipe(StepError),
}

/// A running `pg_dump` into a file and `pg_restore` reading the same bytes.
pub(crate) struct Pipe {
    dump: Child,
    restore: Child,
    file: PathBuf,
    conn: PgConn,
}

/// Starts `pg_dump` of the exported snapshot `snapshot` into `file` (created, mode 0600) and `pg_restore` reading
/// the same bytes. Returns the script `pg_restore` prints, to be read to its end beside [`Pipe::run`]. Dropping
/// either ends both processes.
pub(crate) fn start(
    conn: &PgConn,
    file: &Path,
    snapshot: &str,
) -> Result<(ChildStdout, Pipe), StepError> {
    let mut dump = Command::new(pg_tool("pg_dump"));
    // Uncompressed: zlib makes pg_dump CPU-bound (one core). The scan's time zone and encoding, so that every row
    // of the dump is the line a scan of the database hashes (the loss check compares them).
    dump.envs(xorb_integrity::PG_DUMP_ENV.iter().copied())
        .args(xorb_integrity::PG_DUMP_ARGS)
        .args(["--format=custom", "--compress=0", "--no-password"])
        .arg(format!("--snapshot={snapshot}"));
    conn.env(&mut dump);
    let dump = spawn(dump, Stdio::null(), "pg_dump")?;
    let mut restore = Command::new(pg_tool("pg_restore"));
    restore.args(["--data-only", "--file=-"]);
    let mut restore = spawn(restore, Stdio::piped(), "pg_restore")?;
    let script = restore.stdout.take().expect("piped");
    Ok((
        script,
        Pipe {
            dump,
            restore,
            file: file.to_path_buf(),
            conn: conn.clone(),
        },
    ))
}

impl Pipe {
    /// Drives the pipe to its end: the dump written, synced and hashed, both processes ended well.
    pub async fn run(mut self) -> Result<Dumped, PipeError> {
        let dump_err = stderr_of(&mut self.dump);
        let restore_err = stderr_of(&mut self.restore);
        let from = self.dump.stdout.take().expect("piped");
        let to = self.restore.stdin.take().expect("piped");
        let copied = tee(from, to, &self.file).await;
        if copied.is_err() {
            // The reader or the file failed: pg_dump would wait on a full pipe.
            let _ = self.dump.start_kill();
        }
        let dump_status = self.dump.wait().await;
        let restore_status = self.restore.wait().await;
        let dump_err = dump_err.await.unwrap_or_default();
        let restore_err = restore_err.await.unwrap_or_default();
        let conn = &self.conn;
        match dump_status {
            Ok(s) if s.success() => {}
            Ok(_) if copied.is_err() => {}
            Ok(s) => {
                return Err(PipeError::Dump(failed(format!(
                    "pg_dump of database {} on {}:{} failed ({s}): {}",
                    conn.dbname,
                    conn.host,
                    conn.port,
                    last_line(&conn.redact(&dump_err))
                ))));
            }
            Err(e) => return Err(PipeError::Dump(failed(format!("pg_dump: {e}")))),
        }
        let dumped = copied.map_err(|e| {
            PipeError::Pipe(match &restore_status {
                Ok(s) if !s.success() => failed(format!("{e} (pg_restore ended: {s})")),
                _ => e,
            })
        })?;
        match restore_status {
            Ok(s) if s.success() => Ok(dumped),
            other => Err(PipeError::Pipe(failed(format!(
                "pg_restore, reading the dump as pg_dump wrote it, failed ({}): {}",
                other.map_or_else(|e| e.to_string(), |s| s.to_string()),
                last_line(&restore_err)
            )))),
        }
    }
}

fn spawn(mut cmd: Command, stdin: Stdio, what: &str) -> Result<Child, StepError> {
    // The engine drops a step's future at its timeout: the children must not outlive it.
    cmd.kill_on_drop(true)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fatal(format!("cannot run {what}: {e}")))
}

/// Reads a child's standard error to its end, beside the pipe (a full stderr pipe would stop the child).
fn stderr_of(child: &mut Child) -> tokio::task::JoinHandle<String> {
    let mut err = child.stderr.take().expect("piped");
    tokio::spawn(async move {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s).await;
        s
    })
}

/// Copies `from` into `file` and `to`, hashing it; `to` is closed at the end, so `pg_restore` finishes.
async fn tee(
    mut from: impl AsyncRead + Unpin,
    mut to: tokio::process::ChildStdin,
    file: &Path,
) -> Result<Dumped, StepError> {
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .map_err(|e| failed(format!("cannot create {}: {e}", file.display())))?;
    let mut sha = Sha256::new();
    let mut bytes = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = from
            .read(&mut buf)
            .await
            .map_err(|e| failed(format!("reading pg_dump's output: {e}")))?;
        if n == 0 {
            break;
        }
        let data = &buf[..n];
        sha.update(data);
        out.write_all(data)
            .map_err(|e| failed(format!("cannot write {}: {e}", file.display())))?;
        to.write_all(data)
            .await
            .map_err(|e| failed(format!("pg_restore stopped reading the dump: {e}")))?;
        bytes += n as u64;
    }
    drop(to);
    // pg_dump syncs the file it writes itself; this one is ours to sync.
    let path = file.to_path_buf();
    tokio::task::spawn_blocking(move || out.sync_all())
        .await
        .map_err(|e| failed(format!("syncing {}: {e}", path.display())))?
        .map_err(|e| failed(format!("cannot sync {}: {e}", path.display())))?;
    Ok(Dumped {
        sha256: hex::encode(sha.finalize()),
        bytes,
    })
}
