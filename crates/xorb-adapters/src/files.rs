//! Files the tool writes: owner-only, and replaced atomically where a reader (or a resume) must never see half.

use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::AdapterError;

pub fn mkdir(path: &Path, mode: u32) -> Result<(), AdapterError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path)
        .map_err(|e| AdapterError::io(format!("cannot create {}", path.display()), e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| AdapterError::io(format!("cannot set mode of {}", path.display()), e))
}

/// `path` as a directory only its owner reads.
pub fn private_dir(path: &Path) -> Result<PathBuf, AdapterError> {
    mkdir(path, 0o700)?;
    Ok(path.to_path_buf())
}

pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), AdapterError> {
    use std::io::Write;
    create_private(path)
        .and_then(|mut f| f.write_all(contents))
        .map_err(|e| AdapterError::io(format!("cannot write {}", path.display()), e))
}

/// Reads `path` a line at a time, each with its newline, never whole (exports of 400,000 rows at 1 GB); `each`
/// returning an error stops the read with it.
pub fn each_line(
    path: &Path,
    mut each: impl FnMut(&[u8]) -> Result<(), String>,
) -> Result<(), String> {
    use std::io::BufRead;
    let cannot = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
    let mut input =
        std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(path).map_err(cannot)?);
    let mut line = Vec::with_capacity(512);
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line).map_err(cannot)? == 0 {
            return Ok(());
        }
        each(&line)?;
    }
}

/// `path` created or truncated, readable by its owner only (0600): for files a step streams into.
pub fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

pub fn write_file(path: &Path, contents: &str) -> Result<(), AdapterError> {
    std::fs::write(path, contents)
        .map_err(|e| AdapterError::io(format!("cannot write {}", path.display()), e))
}

/// Write to `path.tmp`, then rename (0600): a reader sees the old file or the whole new one.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), AdapterError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    write_private(&tmp, contents)?;
    std::fs::rename(&tmp, path)
        .map_err(|e| AdapterError::io(format!("cannot write {}", path.display()), e))
}

pub fn write_json(path: &Path, v: &impl Serialize) -> Result<(), AdapterError> {
    write_atomic(
        path,
        serde_json::to_string_pretty(v)
            .unwrap_or_default()
            .as_bytes(),
    )
}

pub fn read_json(path: &Path) -> Option<serde_json::Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

pub fn read(path: &Path) -> Result<Vec<u8>, AdapterError> {
    std::fs::read(path).map_err(|e| AdapterError::io(format!("cannot read {}", path.display()), e))
}

/// Hex SHA-256 of a file, read in blocks (dumps can be large).
pub fn sha256_file(path: &Path) -> Result<String, AdapterError> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)
        .map_err(|e| AdapterError::io(format!("cannot open {}", path.display()), e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| AdapterError::io(format!("cannot read {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
