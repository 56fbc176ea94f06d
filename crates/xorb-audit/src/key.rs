//! The signing key: Ed25519, PKCS#8 PEM, mode 0600, created on first use; its public half exported as an SPKI
//! PEM (`-----BEGIN PUBLIC KEY-----`) that `openssl pkeyutl -verify -pubin` reads.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, KeypairBytes,
};
use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::AuditError;

/// The private key as PKCS#8 v1 PEM (`-----BEGIN PRIVATE KEY-----`, the form `openssl genpkey -algorithm ed25519`
/// writes).
fn private_pem(key: &SigningKey) -> Result<String, AuditError> {
    let kp = KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    };
    kp.to_pkcs8_pem(LineEnding::LF)
        .map(|z| z.to_string())
        .map_err(|e| AuditError::Key {
            path: PathBuf::new(),
            reason: format!("cannot encode the key: {e}"),
        })
}

/// The SPKI PEM of a public key.
pub fn public_key_pem(key: &VerifyingKey) -> String {
    key.to_public_key_pem(LineEnding::LF)
        .expect("an Ed25519 public key always encodes as SPKI")
}

/// The key's fingerprint: lowercase hex SHA-256 of its SPKI DER encoding, the same as
/// `openssl pkey -pubin -in audit-signing-key.pub.pem -outform DER | sha256sum`. Print it in run reports and keep
/// it somewhere other than the audit directory: it is how a verifier knows the public key file was not swapped.
pub fn public_key_fingerprint(key: &VerifyingKey) -> String {
    let der = key
        .to_public_key_der()
        .expect("an Ed25519 public key always encodes as SPKI");
    crate::format::sha256_hex(der.as_bytes())
}

/// Reads an SPKI PEM public key (the file [`crate::AuditLog`] exports, or one made with
/// `openssl pkey -pubout`).
pub fn load_public_key(path: &Path) -> Result<VerifyingKey, AuditError> {
    let text = fs::read_to_string(path).map_err(|source| AuditError::Io {
        what: "read the audit public key",
        path: path.to_path_buf(),
        source,
    })?;
    VerifyingKey::from_public_key_pem(&text).map_err(|e| AuditError::Key {
        path: path.to_path_buf(),
        reason: format!("not an Ed25519 public key in SPKI PEM form: {e}"),
    })
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> AuditError + 'a {
    move |source| AuditError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Fsyncs a directory so that a file created or renamed in it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync the directory", dir))
}

/// Loads the private key at `path`, refusing a key other users can read; creates it (mode 0600, atomically)
/// when it does not exist and `may_create` is true.
pub(crate) fn load_or_create(
    path: &Path,
    may_create: bool,
    log_path: &Path,
) -> Result<SigningKey, AuditError> {
    match fs::metadata(path) {
        Ok(meta) => {
            let mode = meta.mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(AuditError::KeyPermissions {
                    path: path.to_path_buf(),
                    mode,
                });
            }
            let text =
                fs::read_to_string(path).map_err(io_err("read the audit signing key", path))?;
            SigningKey::from_pkcs8_pem(&text).map_err(|e| AuditError::Key {
                path: path.to_path_buf(),
                reason: format!("not an Ed25519 private key in PKCS#8 PEM form: {e}"),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if !may_create {
                return Err(AuditError::KeyMissing {
                    key_path: path.to_path_buf(),
                    log_path: log_path.to_path_buf(),
                });
            }
            create(path)
        }
        Err(source) => Err(AuditError::Io {
            what: "read the audit signing key",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes a new key to a temporary file (0600), then hard-links it into place: if another process created the key
/// in the meantime the link fails and that key is used instead, so two first runs never end up with two keys.
fn create(path: &Path) -> Result<SigningKey, AuditError> {
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let pem = private_pem(&key)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("key"),
        std::process::id()
    ));
    let _ = fs::remove_file(&tmp);
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err("create the audit signing key", &tmp))?;
        // The mode given to open() is filtered by the umask; make sure it is exactly 0600.
        f.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io_err("set the mode of the audit signing key", &tmp))?;
        f.write_all(pem.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(io_err("write the audit signing key", &tmp))?;
    }
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            sync_dir(dir)?;
            Ok(key)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => load_or_create(path, false, path),
        Err(source) => Err(AuditError::Io {
            what: "install the audit signing key",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes the SPKI PEM public key (mode 0644) unless the file already holds exactly that.
pub(crate) fn export_public(path: &Path, key: &VerifyingKey) -> Result<(), AuditError> {
    let pem = public_key_pem(key);
    if fs::read_to_string(path).is_ok_and(|t| t == pem) {
        return Ok(());
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".audit-pub.tmp-{}", std::process::id()));
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)
            .map_err(io_err("write the audit public key", &tmp))?;
        f.write_all(pem.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(io_err("write the audit public key", &tmp))?;
    }
    fs::rename(&tmp, path).map_err(io_err("install the audit public key", path))?;
    sync_dir(dir)
}
