//! G7 evidence (docs/design/platform.md, "Evidence"): canonical JSON payloads signed with an
//! Ed25519 key kept in `XORB_EVIDENCE_DIR`.
//!
//! The bytes that are signed are the bytes that are stored (database `payload` and
//! `records/<id>.json`): nothing is re-serialised between signing and storing.

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use uuid::Uuid;

pub const SIGNING_KEY_FILE: &str = "signing-key.pem";
pub const PUBLIC_KEY_FILE: &str = "signing-key.pub.pem";
pub const RECORDS_DIR: &str = "records";

#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    #[error("evidence directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("signing key {path}: {why}")]
    Key { path: PathBuf, why: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EvidenceError + '_ {
    move |source| EvidenceError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The signed payload. Field order is the sorted key order of the contract, and serde_json
/// writes struct fields in declaration order without whitespace: `to_vec` is canonical.
#[derive(Debug, Clone, Serialize)]
pub struct Payload<'a> {
    pub finding_id: Uuid,
    pub host: &'a str,
    pub latency_ms: Option<i32>,
    pub observed_at: &'a str,
    pub port: u16,
    pub session_id: Uuid,
    pub state: &'a str,
    pub tenant_id: Uuid,
}

impl Payload<'_> {
    pub fn canonical_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a struct of strings and numbers serialises")
    }
}

/// `key_id`: the first 16 hex digits of the SHA-256 of the public key's raw 32 bytes.
pub fn key_id(vk: &VerifyingKey) -> String {
    let digest = Sha256::digest(vk.as_bytes());
    hex::encode(digest)[..16].to_string()
}

pub struct EvidenceSigner {
    key: SigningKey,
    key_id: String,
    dir: PathBuf,
}

impl EvidenceSigner {
    /// Load `signing-key.pem` from `dir`, creating it (mode 0600) on first start, and (re)write
    /// the SPKI public key `signing-key.pub.pem`.
    pub fn load_or_create(dir: &Path) -> Result<(EvidenceSigner, bool), EvidenceError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir.join(RECORDS_DIR))
            .map_err(io(dir))?;
        let key_path = dir.join(SIGNING_KEY_FILE);
        let mut created = false;
        if !key_path.exists() {
            let key = SigningKey::generate(&mut rand::rngs::OsRng);
            // PKCS#8 v1 (private key only): OpenSSL 3.0 refuses the v2 form with the public key
            // embedded, and operators inspect this file with openssl.
            let v1 = ed25519_dalek::pkcs8::KeypairBytes {
                secret_key: key.to_bytes(),
                public_key: None,
            };
            let pem = v1
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| EvidenceError::Key {
                    path: key_path.clone(),
                    why: format!("cannot encode PKCS#8: {e}"),
                })?;
            // Write a temporary file, then link it into place: creation is atomic and never
            // replaces a key another worker created in the meantime.
            let tmp = dir.join(format!(".{SIGNING_KEY_FILE}.{}", Uuid::new_v4()));
            write_file(&tmp, pem.as_bytes(), 0o600)?;
            match fs::hard_link(&tmp, &key_path) {
                Ok(()) => created = true,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    let _ = fs::remove_file(&tmp);
                    return Err(io(&key_path)(e));
                }
            }
            let _ = fs::remove_file(&tmp);
        }
        let meta = fs::metadata(&key_path).map_err(io(&key_path))?;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                path = %key_path.display(),
                mode = format!("{:o}", meta.permissions().mode() & 0o777),
                "signing key was readable by others: setting mode 0600"
            );
            fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600))
                .map_err(io(&key_path))?;
        }
        let pem = fs::read_to_string(&key_path).map_err(io(&key_path))?;
        let key = SigningKey::from_pkcs8_pem(&pem).map_err(|e| EvidenceError::Key {
            path: key_path.clone(),
            why: format!("not a PKCS#8 Ed25519 private key ({e})"),
        })?;
        let vk = key.verifying_key();
        let pub_pem = vk
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| EvidenceError::Key {
                path: key_path.clone(),
                why: format!("cannot encode the public key ({e})"),
            })?;
        let pub_path = dir.join(PUBLIC_KEY_FILE);
        if fs::read_to_string(&pub_path).ok().as_deref() != Some(pub_pem.as_str()) {
            write_atomic(&pub_path, pub_pem.as_bytes(), 0o644)?;
        }
        Ok((
            EvidenceSigner {
                key_id: key_id(&vk),
                key,
                dir: dir.to_path_buf(),
            },
            created,
        ))
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn sign(&self, bytes: &[u8]) -> [u8; 64] {
        self.key.sign(bytes).to_bytes()
    }

    /// Write `records/<id>.json` (the exact payload) and `records/<id>.sig` (raw 64 bytes).
    pub fn write_record(
        &self,
        id: Uuid,
        payload: &[u8],
        signature: &[u8; 64],
    ) -> Result<(), EvidenceError> {
        let records = self.dir.join(RECORDS_DIR);
        // The signature first: readers find records by their .json, so a visible record always has its .sig
        // (a check running while a finding is being recorded must not see half a record).
        write_atomic(&records.join(format!("{id}.sig")), signature, 0o644)?;
        write_atomic(&records.join(format!("{id}.json")), payload, 0o644)?;
        Ok(())
    }
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), EvidenceError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))?;
    Ok(())
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), EvidenceError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".tmp-{}", Uuid::new_v4()));
    write_file(&tmp, bytes, mode)?;
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io(path)(e)
    })
}

/// `observed_at` as it appears in payloads: RFC 3339, UTC, microseconds (PostgreSQL's
/// precision, so the database value and the signed text agree).
pub fn format_observed_at(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::pkcs8::DecodePublicKey;
    use ed25519_dalek::{Signature, Verifier};

    fn sample() -> (Uuid, Uuid, Uuid) {
        (
            Uuid::parse_str("11111111-1111-4111-8111-111111111111").unwrap(),
            Uuid::parse_str("22222222-2222-4222-8222-222222222222").unwrap(),
            Uuid::parse_str("33333333-3333-4333-8333-333333333333").unwrap(),
        )
    }

    #[test]
    fn canonical_json_is_sorted_and_compact() {
        let (f, s, t) = sample();
        let p = Payload {
            finding_id: f,
            host: "127.0.0.1",
            latency_ms: Some(3),
            observed_at: "2025-08-14T10:00:00.123456Z",
            port: 443,
            session_id: s,
            state: "open",
            tenant_id: t,
        };
        let bytes = p.canonical_bytes();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            "{\"finding_id\":\"11111111-1111-4111-8111-111111111111\",\"host\":\"127.0.0.1\",\
             \"latency_ms\":3,\"observed_at\":\"2025-08-14T10:00:00.123456Z\",\"port\":443,\
             \"session_id\":\"22222222-2222-4222-8222-222222222222\",\"state\":\"open\",\
             \"tenant_id\":\"33333333-3333-4333-8333-333333333333\"}"
        );
        // keys really are in sorted order, and re-encoding through a sorted map is identical
        let v: std::collections::BTreeMap<String, serde_json::Value> =
            serde_json::from_slice(&bytes).unwrap();
        let keys: Vec<&String> = v.keys().collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        assert_eq!(serde_json::to_vec(&v).unwrap(), bytes);
    }

    #[test]
    fn filtered_has_null_latency() {
        let (f, s, t) = sample();
        let p = Payload {
            finding_id: f,
            host: "::1",
            latency_ms: None,
            observed_at: "x",
            port: 1,
            session_id: s,
            state: "filtered",
            tenant_id: t,
        };
        let text = String::from_utf8(p.canonical_bytes()).unwrap();
        assert!(text.contains("\"latency_ms\":null"), "{text}");
    }

    #[test]
    fn observed_at_format() {
        use chrono::TimeZone;
        let t = chrono::Utc.with_ymd_and_hms(2025, 8, 14, 10, 0, 0).unwrap();
        assert_eq!(format_observed_at(t), "2025-08-14T10:00:00.000000Z");
    }

    #[test]
    fn key_is_created_once_with_0600_and_signatures_verify() {
        let dir = std::env::temp_dir().join(format!("xorb-evidence-test-{}", Uuid::new_v4()));
        let (signer, created) = EvidenceSigner::load_or_create(&dir).unwrap();
        assert!(created);
        let mode = fs::metadata(dir.join(SIGNING_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (again, created2) = EvidenceSigner::load_or_create(&dir).unwrap();
        assert!(!created2);
        assert_eq!(signer.key_id(), again.key_id());
        assert_eq!(signer.key_id().len(), 16);

        let pem = fs::read_to_string(dir.join(SIGNING_KEY_FILE)).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let kp = ed25519_dalek::pkcs8::KeypairBytes::from_pkcs8_pem(&pem).unwrap();
        assert!(
            kp.public_key.is_none(),
            "PKCS#8 v1, readable by OpenSSL 3.0"
        );
        let pub_pem = fs::read_to_string(dir.join(PUBLIC_KEY_FILE)).unwrap();
        assert!(pub_pem.starts_with("-----BEGIN PUBLIC KEY-----"));
        let vk = VerifyingKey::from_public_key_pem(&pub_pem).unwrap();
        assert_eq!(key_id(&vk), signer.key_id());

        let id = Uuid::new_v4();
        let msg = b"{\"a\":1}";
        let sig = signer.sign(msg);
        signer.write_record(id, msg, &sig).unwrap();
        let stored = fs::read(dir.join(RECORDS_DIR).join(format!("{id}.json"))).unwrap();
        let stored_sig = fs::read(dir.join(RECORDS_DIR).join(format!("{id}.sig"))).unwrap();
        assert_eq!(stored, msg);
        assert_eq!(stored_sig.len(), 64);
        let sig = Signature::from_slice(&stored_sig).unwrap();
        assert!(vk.verify(&stored, &sig).is_ok());
        assert!(vk.verify(b"{\"a\":2}", &sig).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
