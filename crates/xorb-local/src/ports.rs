//! Port leases shared by every process of this user, so two stacks started at the same time never pick one port.
//!
//! A lease is an empty file named after the port, created with `O_EXCL`, in a directory only this user can write.
//! It expires after [`LEASE`]: long enough to cover the time between picking a port and the server binding it
//! (a stack binds its last service about a minute after picking), short enough that 22,000 ports never run out.
//! Once the server is listening, the bind check in `free_port` keeps the port taken; the lease is then redundant.

use std::fs::{self, File};
use std::io::ErrorKind;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

const LEASE: Duration = Duration::from_secs(600);

pub(crate) struct Leases(Option<PathBuf>);

impl Leases {
    /// The lease directory, or none (bind checks only) if it cannot be made ours: a directory of that name owned by
    /// someone else, or writable by others, must not decide which ports we use.
    pub(crate) fn open() -> Leases {
        let uid = nix::unistd::getuid().as_raw();
        let dir = std::env::temp_dir().join(format!("xorb-port-leases-{uid}"));
        if fs::create_dir(&dir).is_ok() {
            let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o700));
        }
        Leases(trusted(&dir).then_some(dir))
    }

    #[cfg(test)]
    fn at(dir: &Path) -> Leases {
        Leases(Some(dir.to_path_buf()))
    }

    /// Takes the lease of `port`; false if another process holds a live one.
    pub(crate) fn take(&self, port: u16) -> bool {
        let Some(dir) = &self.0 else { return true };
        let path = dir.join(port.to_string());
        match create(&path) {
            Ok(()) => true,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => take_stale(dir, &path, port),
            // A full disk must not stop a rollback from starting a server: fall back to the bind check.
            Err(_) => true,
        }
    }
}

fn trusted(dir: &Path) -> bool {
    let uid = nix::unistd::getuid().as_raw();
    fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir() && m.uid() == uid && m.mode() & 0o022 == 0)
}

fn create(path: &Path) -> std::io::Result<()> {
    File::options()
        .write(true)
        .create_new(true)
        .open(path)
        .map(drop)
}

fn expired(path: &Path) -> bool {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > LEASE))
}

/// An expired lease is renamed away before it is taken again: a rename succeeds for one process only, so two
/// processes finding the same expired lease cannot both take it.
fn take_stale(dir: &Path, path: &Path, port: u16) -> bool {
    if !expired(path) {
        return false;
    }
    let grave = dir.join(format!(".{port}.{}", std::process::id()));
    if fs::rename(path, &grave).is_err() {
        return false;
    }
    // Between our look and our rename another process may have renamed the old lease and made a fresh one: if what
    // we moved is fresh, put it back and leave the port to its holder.
    if !expired(&grave) {
        let _ = fs::hard_link(&grave, path);
        let _ = fs::remove_file(&grave);
        return false;
    }
    let _ = fs::remove_file(&grave);
    create(path).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_lease_is_refused_and_an_expired_one_is_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        let leases = Leases::at(dir.path());
        assert!(leases.take(20_001));
        assert!(
            !leases.take(20_001),
            "a live lease must not be handed out twice"
        );
        assert!(leases.take(20_002));

        let old = std::time::SystemTime::now() - LEASE - Duration::from_secs(5);
        let f = File::options()
            .write(true)
            .open(dir.path().join("20001"))
            .unwrap();
        f.set_modified(old).unwrap();
        assert!(leases.take(20_001), "an expired lease is taken again");
        assert!(!leases.take(20_001), "and is live once taken");
    }

    #[test]
    fn a_directory_writable_by_others_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
        assert!(trusted(dir.path()));
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        assert!(!trusted(dir.path()));
        assert!(!trusted(&dir.path().join("missing")));
    }
}
