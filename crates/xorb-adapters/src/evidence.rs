//! Checking the platform's evidence records (docs/design/platform.md, "Evidence"): Ed25519 signatures over the
//! exact stored bytes, with the SPKI public key `signing-key.pub.pem` of the evidence directory.
//!
//! Only the public key is ever read here: the tool that preserves and re-imports evidence has no business holding
//! the key that signs it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::DecodePublicKey;
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::AdapterError;
pub use crate::files::{read, sha256, sha256_file};

pub const PUBLIC_KEY_FILE: &str = "signing-key.pub.pem";
pub const RECORDS_DIR: &str = "records";

/// An evidence public key.
#[derive(Debug, Clone)]
pub struct Verifier {
    key: VerifyingKey,
    key_id: String,
    pem: String,
}

impl Verifier {
    pub fn from_pem_file(path: &Path) -> Result<Self, AdapterError> {
        let pem = std::fs::read_to_string(path).map_err(|e| {
            AdapterError::io(
                format!("cannot read the evidence public key {}", path.display()),
                e,
            )
        })?;
        Self::from_pem(&pem)
            .map_err(|why| AdapterError::Config(format!("{}: {why}", path.display())))
    }

    pub fn from_pem(pem: &str) -> Result<Self, String> {
        let key = VerifyingKey::from_public_key_pem(pem)
            .map_err(|e| format!("not an SPKI Ed25519 public key ({e})"))?;
        // The platform's key_id: the first 16 hex digits of the SHA-256 of the raw 32-byte key.
        let key_id = hex::encode(Sha256::digest(key.as_bytes()))[..16].to_string();
        Ok(Self {
            key,
            key_id,
            pem: pem.to_string(),
        })
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// Strict verification (RFC 8032 with no malleable encodings): what the worker signs always passes it.
    pub fn verify(&self, payload: &[u8], signature: &[u8]) -> bool {
        Signature::from_slice(signature)
            .is_ok_and(|sig| self.key.verify_strict(payload, &sig).is_ok())
    }
}

/// The files of one record in a records directory (either may be missing).
#[derive(Debug, Clone, Default)]
pub struct RecordFiles {
    pub json: Option<PathBuf>,
    pub sig: Option<PathBuf>,
}

/// The records of a directory by id (`<id>.json`, `<id>.sig`). Hidden files are the platform's temporaries
/// (`.tmp-…`, written then renamed) and are not records.
pub fn list_records(dir: &Path) -> Result<BTreeMap<String, RecordFiles>, AdapterError> {
    let mut out: BTreeMap<String, RecordFiles> = BTreeMap::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => {
            return Err(AdapterError::io(
                format!("cannot list {}", dir.display()),
                e,
            ));
        }
    };
    for e in rd {
        let e = e.map_err(|e| AdapterError::io(format!("cannot list {}", dir.display()), e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        if let Some(id) = name.strip_suffix(".json") {
            out.entry(id.to_string()).or_default().json = Some(e.path());
        } else if let Some(id) = name.strip_suffix(".sig") {
            out.entry(id.to_string()).or_default().sig = Some(e.path());
        }
    }
    Ok(out)
}

/// What checking a records directory found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DirCheck {
    /// Record ids with at least one file.
    pub records: usize,
    /// Files (`.json` and `.sig`).
    pub files: usize,
    /// Records whose pair of files verifies.
    pub verified: usize,
    /// One line per record that does not verify or lacks a file, naming it.
    pub problems: Vec<String>,
}

/// Verifies every record of `dir` with `v`.
pub fn verify_dir(dir: &Path, v: &Verifier) -> Result<DirCheck, AdapterError> {
    let records = list_records(dir)?;
    let mut check = DirCheck {
        records: records.len(),
        ..DirCheck::default()
    };
    for (id, f) in &records {
        check.files += usize::from(f.json.is_some()) + usize::from(f.sig.is_some());
        let (Some(json), Some(sig)) = (&f.json, &f.sig) else {
            check.problems.push(format!(
                "evidence record {id}: {} is missing in {}",
                if f.json.is_none() {
                    "the .json file"
                } else {
                    "the .sig file"
                },
                dir.display()
            ));
            continue;
        };
        let payload = read(json)?;
        let signature = read(sig)?;
        if v.verify(&payload, &signature) {
            check.verified += 1;
        } else {
            check.problems.push(format!(
                "evidence record {id}: the signature in {} does not verify {} with key {}",
                sig.display(),
                json.display(),
                v.key_id()
            ));
        }
    }
    Ok(check)
}

/// PostgreSQL's text form of bytea (`\x0a1b…`, as `row_to_json` writes it) back to bytes.
pub fn bytea_from_text(s: &str) -> Option<Vec<u8>> {
    hex::decode(s.strip_prefix("\\x")?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytea_text_round_trip() {
        assert_eq!(bytea_from_text("\\x00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(bytea_from_text("00ff"), None);
        assert_eq!(bytea_from_text("\\xzz"), None);
    }

    #[test]
    fn rejects_a_bad_key_and_a_short_signature() {
        assert!(Verifier::from_pem("not a key").is_err());
        // The RFC 8032 test vector 1 key, as SPKI.
        let pem = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\n-----END PUBLIC KEY-----\n";
        let v = Verifier::from_pem(pem).unwrap();
        assert_eq!(v.key_id().len(), 16);
        let sig = hex::decode(
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        )
        .unwrap();
        assert!(v.verify(b"", &sig));
        assert!(!v.verify(b"x", &sig));
        assert!(!v.verify(b"", &sig[..63]));
    }
}
