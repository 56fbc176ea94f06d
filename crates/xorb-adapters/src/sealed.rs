//! Secrets a target captures in phase 1 (so a failed rollback can be undone) are written only encrypted: age,
//! to an X25519 identity created once per state directory and kept owner-only beside the tool's other secrets.

use std::path::Path;

use age::secrecy::ExposeSecret;

use crate::AdapterError;
use crate::files::{private_dir, write_private};

/// A new random secret: 24 bytes from the thread's CSPRNG, hex (passwords, tenant tokens).
pub fn random_secret() -> String {
    use rand::RngCore;
    let mut b = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// The identity file, under the state directory's `secrets/`.
pub const IDENTITY: &str = "capture.age-identity";

/// The identity of `state_dir`, created (0600) the first time.
pub fn identity(state_dir: &Path) -> Result<age::x25519::Identity, AdapterError> {
    let dir = private_dir(&state_dir.join("secrets"))?;
    let p = dir.join(IDENTITY);
    if let Ok(text) = std::fs::read_to_string(&p)
        && let Ok(id) = text.trim().parse::<age::x25519::Identity>()
    {
        return Ok(id);
    }
    let id = age::x25519::Identity::generate();
    write_private(&p, id.to_string().expose_secret().as_bytes())?;
    Ok(id)
}

/// Encrypts `plain` to `state_dir`'s identity and writes it (0600) at `out`.
pub fn seal(state_dir: &Path, out: &Path, plain: &[u8]) -> Result<(), AdapterError> {
    let recipient = identity(state_dir)?.to_public();
    let encrypted =
        age::encrypt(&recipient, plain).map_err(|e| AdapterError::Config(format!("age: {e}")))?;
    write_private(out, &encrypted)
}

/// Decrypts a file [`seal`] wrote.
pub fn open(state_dir: &Path, sealed: &Path) -> Result<Vec<u8>, AdapterError> {
    let bytes = crate::files::read(sealed)?;
    age::decrypt(&identity(state_dir)?, &bytes)
        .map_err(|e| AdapterError::Config(format!("{}: {e}", sealed.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_bytes_open_with_the_same_state_directory_only() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let out = a.path().join("s.age");
        seal(a.path(), &out, b"hunter2").unwrap();
        let raw = std::fs::read(&out).unwrap();
        assert!(raw.starts_with(b"age-encryption.org/v1"));
        assert!(!raw.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(open(a.path(), &out).unwrap(), b"hunter2");
        assert!(
            open(b.path(), &out).is_err(),
            "another identity cannot read it"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(a.path().join("secrets").join(IDENTITY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
