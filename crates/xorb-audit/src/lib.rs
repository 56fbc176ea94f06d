//! xorb-audit: the signed, hash-chained audit trail (issue 5, item 5; docs/design/audit-chain.md).
//!
//! Every action of every run is appended to `audit.jsonl`, one JSON object per line. Each line carries the
//! SHA-256 of the line before it (`prev`) and an Ed25519 signature (`sig`) of its own bytes up to the signature
//! field; [`verify`] proves the chain whole or names the first entry that was changed, removed, inserted or
//! reordered. The format is designed so that `sed`, `sha256sum`, `base64`, `jq` and `openssl pkeyutl` can check
//! it without this tool (the procedure is in the design doc).
//!
//! ```no_run
//! use xorb_audit::{AuditLog, NewEntry, verify, load_public_key};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut log = AuditLog::open("/var/lib/xorb/audit")?;
//! let at = log.append(NewEntry::new("alice", "rollback.start").run("run-42").detail(serde_json::json!({"to": "v2025.07"})))?;
//! // Record `at.checkpoint()` in the run journal and report: it lets verify detect a truncated tail.
//! let key = load_public_key(&log.public_key_path())?;
//! let report = verify(log.log_path(), &key, None)?;
//! println!("{report}");
//! # Ok(()) }
//! ```

mod format;
mod key;
mod log;
mod verify;
mod witness;

use std::path::PathBuf;
use std::time::Duration;

pub use ed25519_dalek::VerifyingKey;
pub use format::{FORMAT_VERSION, GENESIS_PREV, StoredEntry, sha256_hex};
pub use key::{load_public_key, public_key_fingerprint, public_key_pem};
pub use log::{AuditLog, Checkpoint, EntryRef, KEY_FILE, LOG_FILE, NewEntry, PUBLIC_KEY_FILE};
pub use verify::{VerifyError, VerifyOptions, VerifyReport, read_entries, verify, verify_with};
pub use witness::{Witnesses, cross_check};

/// Errors of opening and appending to the audit log (verification has its own, [`VerifyError`]).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("audit key {}: {reason}", path.display())]
    Key { path: PathBuf, reason: String },
    #[error(
        "the audit log {} already has entries but its signing key {} is missing: restore the key from backup \
         (a new key would make every later entry fail verification)",
        log_path.display(),
        key_path.display()
    )]
    KeyMissing {
        key_path: PathBuf,
        log_path: PathBuf,
    },
    #[error(
        "the audit signing key {} can be read by other users (mode {mode:o}); fix it with: chmod 600 {}",
        path.display(),
        path.display()
    )]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error(
        "another process has held the lock on the audit log {} for {waited:?}; is another xorbctl still running?",
        path.display()
    )]
    LockTimeout { path: PathBuf, waited: Duration },
    #[error(
        "cannot continue the audit log {}: its last entry {reason}. Nothing was appended; run `xorbctl audit verify` \
         to see what changed",
        path.display()
    )]
    TailInvalid { path: PathBuf, reason: String },
    #[error("cannot serialize the audit entry: {0}")]
    Serialize(#[from] serde_json::Error),
}
