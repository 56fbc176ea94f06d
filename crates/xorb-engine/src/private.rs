//! Owner-only files and directories, created so (never chmod'ed after the fact, which would leave a window in
//! which another user could open them): the journal, the run directories and their artifacts hold the stack's
//! state, outputs of tools and, before redaction, values an operator may consider secret.

use std::fs::{DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// `mkdir -p -m 0700`: every directory this creates is owner-only; existing ones are left as they are.
pub fn create_dir_all(path: &Path) -> std::io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(path)
}

/// Creates `path` empty with mode 0600 unless it exists (its content and mode are then left alone).
pub fn create_file(path: &Path) -> std::io::Result<()> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Sets the process's umask to 077: whatever it (and the tools it starts) creates without an explicit mode is
/// the owner's only.
pub fn owner_only_umask() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
}

/// Flushes to disk everything written so far to the file systems holding `paths` (syncfs(2), once per file
/// system): data and directory entries alike, whoever wrote them (this process, or the tools it ran). A path
/// that does not exist is skipped. On failure: the path and the error.
pub fn sync_file_systems(paths: &[&Path]) -> Result<(), (PathBuf, std::io::Error)> {
    let mut done: Vec<u64> = Vec::new();
    for path in paths {
        let dir = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err((path.to_path_buf(), e)),
        };
        let dev = dir.metadata().map_err(|e| (path.to_path_buf(), e))?.dev();
        if done.contains(&dev) {
            continue;
        }
        nix::unistd::syncfs(&dir).map_err(|e| (path.to_path_buf(), std::io::Error::from(e)))?;
        done.push(dev);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flushes_each_file_system_once_and_skips_what_does_not_exist() {
        let d = tempfile::tempdir().unwrap();
        let runs = d.path().join("runs");
        create_dir_all(&runs).unwrap();
        sync_file_systems(&[&runs, d.path(), &d.path().join("gone")]).unwrap();
    }
}
