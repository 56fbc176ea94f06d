//! Owner-only files and directories, created so (never chmod'ed after the fact, which would leave a window in
//! which another user could open them): the journal, the run directories and their artifacts hold the stack's
//! state, outputs of tools and, before redaction, values an operator may consider secret.

use std::fs::{DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

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
