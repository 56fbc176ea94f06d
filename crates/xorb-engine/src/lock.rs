//! One rollback at a time per state directory: an exclusive `flock` on `<state_dir>/rollback.lock`.
//!
//! The lock belongs to the open file, so the kernel releases it when the holder exits, however it exits
//! (SIGKILL included): there is no stale lock to clean up by hand. The file's content names the holder
//! (`<run id> <pid>`) so that a refused rollback can say who holds it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// The lock file's name inside the state directory.
pub const LOCK_FILE: &str = "rollback.lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another rollback is in progress: {} (pid {}) holds {path}. Wait for it to finish, or look at it with \
         `xorbctl show {}`; the lock is released as soon as that process exits",
        run_id.as_deref().map(|r| format!("run {r}")).unwrap_or_else(|| "a run that is starting".into()),
        pid.map(|p| p.to_string()).unwrap_or_else(|| "unknown".into()),
        run_id.as_deref().unwrap_or("RUN")
    )]
    Held {
        run_id: Option<String>,
        pid: Option<u32>,
        path: PathBuf,
    },
    #[error("cannot use the rollback lock {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl LockError {
    /// This error's exit code (`docs/exit-codes.md`): the lock is held, or cannot be used, so the command is refused.
    pub fn exit(&self) -> xorb_model::exit::Exit {
        xorb_model::exit::Exit::Refused
    }
}

/// Who holds the lock, as written in the lock file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub run_id: Option<String>,
    pub pid: Option<u32>,
}

/// The held lock. Dropping it releases it.
#[derive(Debug)]
pub struct RollbackLock {
    file: Flock<File>,
    path: PathBuf,
    run_id: Option<String>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LockError + '_ {
    move |source| LockError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn open_lock_file(state_dir: &Path) -> Result<(File, PathBuf), LockError> {
    std::fs::create_dir_all(state_dir).map_err(io_err(state_dir))?;
    let path = state_dir.join(LOCK_FILE);
    // Never truncate on open: the content names the current holder until we hold the lock ourselves.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err(&path))?;
    Ok((file, path))
}

fn read_holder(file: &mut File) -> Holder {
    let mut text = String::new();
    let _ = file.seek(SeekFrom::Start(0));
    let _ = file.read_to_string(&mut text);
    let mut parts = text.split_whitespace();
    let run_id = parts.next().filter(|r| *r != "-").map(str::to_string);
    let pid = parts.next().and_then(|p| p.parse().ok());
    Holder { run_id, pid }
}

impl RollbackLock {
    /// Takes the lock of `state_dir` without waiting, naming `run_id` (if already known) as the holder.
    /// Fails with [`LockError::Held`] naming the holder when another process (or another handle) holds it.
    pub fn acquire(state_dir: &Path, run_id: Option<&str>) -> Result<RollbackLock, LockError> {
        let (file, path) = open_lock_file(state_dir)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(file) => {
                let mut lock = RollbackLock {
                    file,
                    path,
                    run_id: None,
                };
                lock.set_run_id(run_id)?;
                Ok(lock)
            }
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let holder = read_holder(&mut file);
                Err(LockError::Held {
                    run_id: holder.run_id,
                    pid: holder.pid,
                    path,
                })
            }
            Err((_, errno)) => Err(LockError::Io {
                path,
                source: std::io::Error::from(errno),
            }),
        }
    }

    /// Records the run this lock protects (once the run id is known).
    pub fn set_run_id(&mut self, run_id: Option<&str>) -> Result<(), LockError> {
        let content = format!("{} {}\n", run_id.unwrap_or("-"), std::process::id());
        let path = self.path.clone();
        let f: &mut File = &mut self.file;
        f.set_len(0).map_err(io_err(&path))?;
        f.seek(SeekFrom::Start(0)).map_err(io_err(&path))?;
        f.write_all(content.as_bytes()).map_err(io_err(&path))?;
        f.flush().map_err(io_err(&path))?;
        self.run_id = run_id.map(str::to_string);
        Ok(())
    }

    pub fn run_id(&self) -> Option<&str> {
        self.run_id.as_deref()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RollbackLock {
    fn drop(&mut self) {
        // Clear the holder's name before the kernel lock goes (with the file) right after.
        let _ = self.file.set_len(0);
    }
}

/// Who holds the lock of `state_dir` right now, if anyone (a process exited, however, holds nothing).
pub fn current_holder(state_dir: &Path) -> Result<Option<Holder>, LockError> {
    let path = state_dir.join(LOCK_FILE);
    if !path.exists() {
        return Ok(None);
    }
    // Read access is enough for a shared flock: this works on a read-only state directory.
    let file = OpenOptions::new()
        .read(true)
        .open(&path)
        .map_err(io_err(&path))?;
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_released_on_drop) => Ok(None),
        Err((mut file, Errno::EWOULDBLOCK)) => Ok(Some(read_holder(&mut file))),
        Err((_, errno)) => Err(LockError::Io {
            path,
            source: std::io::Error::from(errno),
        }),
    }
}

/// Who the lock file names, read without touching the lock (a reader taking even a shared lock could make a
/// starting rollback fail to take it): a stale name after a crash is possible, so callers check the pid.
pub fn recorded_holder(state_dir: &Path) -> Option<Holder> {
    let mut file = File::open(state_dir.join(LOCK_FILE)).ok()?;
    Some(read_holder(&mut file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_acquirer_is_told_who_holds_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = RollbackLock::acquire(dir.path(), None).unwrap();
        first.set_run_id(Some("20250814-101500-abcd")).unwrap();
        let err = RollbackLock::acquire(dir.path(), Some("other")).unwrap_err();
        match &err {
            LockError::Held { run_id, pid, .. } => {
                assert_eq!(run_id.as_deref(), Some("20250814-101500-abcd"));
                assert_eq!(*pid, Some(std::process::id()));
            }
            other => panic!("unexpected {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("run 20250814-101500-abcd"), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert_eq!(
            current_holder(dir.path()).unwrap(),
            Some(Holder {
                run_id: Some("20250814-101500-abcd".into()),
                pid: Some(std::process::id())
            })
        );
        drop(first);
        assert_eq!(current_holder(dir.path()).unwrap(), None);
        let again = RollbackLock::acquire(dir.path(), Some("r2")).unwrap();
        assert_eq!(again.run_id(), Some("r2"));
    }

    #[test]
    fn no_lock_file_means_no_holder() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(current_holder(dir.path()).unwrap(), None);
    }
}
