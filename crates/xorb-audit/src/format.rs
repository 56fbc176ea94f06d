//! The line format (docs/design/audit-chain.md, "Format"): one JSON object per line,
//!
//! ```text
//! {"v":1,"seq":N,"ts":"…Z","run_id":…,"actor":"…","action":"…","detail":{…},"prev":"<64 hex>","sig":"<88 base64>"}\n
//! ```
//!
//! - the **signed bytes** are the line's own bytes from the opening `{` up to, not including, the final
//!   `,"sig":"` — a prefix of what is on disk, never a re-serialization;
//! - `sig` is the standard base64 (with padding) of the 64-byte Ed25519 signature of those bytes;
//! - `prev` is the lowercase hex SHA-256 of the previous line's bytes **including its trailing newline**
//!   (`sed -n 'Kp' audit.jsonl | sha256sum`), or 64 zeros for the first entry.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The `v` field of every entry written by this version.
pub const FORMAT_VERSION: u32 = 1;

/// `prev` of the first entry (seq 1).
pub const GENESIS_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What separates the signed prefix from the signature, always the last member of the line.
pub(crate) const SIG_MARKER: &[u8] = b",\"sig\":\"";

/// Base64 of 64 bytes, padded.
pub(crate) const SIG_B64_LEN: usize = 88;

/// Field order of the signed body; serde keeps struct order.
#[derive(Serialize)]
struct Body<'a> {
    v: u32,
    seq: u64,
    ts: &'a str,
    run_id: Option<&'a str>,
    actor: &'a str,
    action: &'a str,
    detail: &'a Value,
    prev: &'a str,
}

/// One entry as stored (every field of the line).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoredEntry {
    pub v: u32,
    pub seq: u64,
    /// RFC 3339, UTC.
    pub ts: String,
    pub run_id: Option<String>,
    pub actor: String,
    pub action: String,
    pub detail: Value,
    /// SHA-256 (hex) of the previous line including its newline; [`GENESIS_PREV`] for seq 1.
    pub prev: String,
    /// Base64 Ed25519 signature of the signed prefix.
    pub sig: String,
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The chain hash of a line given without its newline: SHA-256 of `line + "\n"`.
pub(crate) fn line_hash(line_without_newline: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(line_without_newline);
    h.update(b"\n");
    hex::encode(h.finalize())
}

pub(crate) struct LineFields<'a> {
    pub seq: u64,
    pub ts: &'a str,
    pub run_id: Option<&'a str>,
    pub actor: &'a str,
    pub action: &'a str,
    pub detail: &'a Value,
    pub prev: &'a str,
}

/// Serializes the body once, signs that exact prefix and returns the full line, newline included.
pub(crate) fn build_line(
    key: &SigningKey,
    f: &LineFields<'_>,
) -> Result<Vec<u8>, serde_json::Error> {
    let body = serde_json::to_vec(&Body {
        v: FORMAT_VERSION,
        seq: f.seq,
        ts: f.ts,
        run_id: f.run_id,
        actor: f.actor,
        action: f.action,
        detail: f.detail,
        prev: f.prev,
    })?;
    debug_assert_eq!(body.last(), Some(&b'}'));
    debug_assert!(
        !body.contains(&b'\n'),
        "serde_json escapes every control character"
    );
    let prefix = &body[..body.len() - 1];
    let sig = key.sign(prefix);
    let mut line = Vec::with_capacity(body.len() + SIG_MARKER.len() + SIG_B64_LEN + 3);
    line.extend_from_slice(prefix);
    line.extend_from_slice(SIG_MARKER);
    line.extend_from_slice(STANDARD.encode(sig.to_bytes()).as_bytes());
    line.extend_from_slice(b"\"}\n");
    Ok(line)
}

/// A line taken apart: the entry, its time, the exact signed bytes and the signature.
#[derive(Debug)]
pub(crate) struct ParsedLine<'a> {
    pub entry: StoredEntry,
    pub ts: DateTime<Utc>,
    pub signed: &'a [u8],
    pub sig: Signature,
}

/// Parses one line given without its newline; the error is a sentence for a person.
pub(crate) fn parse_line(raw: &[u8]) -> Result<ParsedLine<'_>, String> {
    if raw.is_empty() {
        return Err("the line is empty".into());
    }
    if !raw.ends_with(b"\"}") {
        return Err("the line does not end with the signature field (`\"sig\":\"…\"}`)".into());
    }
    let marker_at = raw
        .windows(SIG_MARKER.len())
        .rposition(|w| w == SIG_MARKER)
        .ok_or_else(|| "the line has no `\"sig\"` field".to_string())?;
    // The marker's closing quote may be the line's last-but-one byte (`…,"sig":"}`): no signature at all.
    let sig_b64 = raw
        .get(marker_at + SIG_MARKER.len()..raw.len() - 2)
        .unwrap_or_default();
    if sig_b64.len() != SIG_B64_LEN {
        return Err(format!(
            "the signature is {} characters long, expected {SIG_B64_LEN} (base64 of 64 bytes)",
            sig_b64.len()
        ));
    }
    let sig_bytes = STANDARD
        .decode(sig_b64)
        .map_err(|e| format!("the signature is not valid base64: {e}"))?;
    let sig_arr: [u8; 64] = sig_bytes
        .try_into()
        .map_err(|_| "the signature does not decode to 64 bytes".to_string())?;
    let sig = Signature::from_bytes(&sig_arr);
    let entry: StoredEntry = serde_json::from_slice(raw)
        .map_err(|e| format!("the line is not a valid audit entry: {e}"))?;
    if entry.sig.as_bytes() != sig_b64 {
        return Err("the `sig` field is not the last member of the line".into());
    }
    if entry.v != FORMAT_VERSION {
        return Err(format!(
            "format version {} is not supported (this tool reads version {FORMAT_VERSION})",
            entry.v
        ));
    }
    if entry.prev.len() != 64
        || !entry
            .prev
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err("`prev` is not a lowercase hex SHA-256".into());
    }
    let ts = DateTime::parse_from_rfc3339(&entry.ts)
        .map_err(|e| format!("`ts` {:?} is not an RFC 3339 time: {e}", entry.ts))?
        .with_timezone(&Utc);
    Ok(ParsedLine {
        entry,
        ts,
        signed: &raw[..marker_at],
        sig,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    #[test]
    fn line_round_trip_and_signed_prefix() {
        let detail = json!({"step": "stop api", "n": 3, "text": "line\nbreak \"quoted\""});
        let line = build_line(
            &key(),
            &LineFields {
                seq: 1,
                ts: "2025-08-01T12:00:00.000001Z",
                run_id: Some("run-1"),
                actor: "alice",
                action: "step.start",
                detail: &detail,
                prev: GENESIS_PREV,
            },
        )
        .unwrap();
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        assert!(line.ends_with(b"\"}\n"));
        let raw = &line[..line.len() - 1];
        let p = parse_line(raw).unwrap();
        assert_eq!(p.entry.seq, 1);
        assert_eq!(p.entry.detail, detail);
        assert!(raw.starts_with(p.signed));
        assert_eq!(
            &raw[p.signed.len()..p.signed.len() + SIG_MARKER.len()],
            SIG_MARKER
        );
        key()
            .verifying_key()
            .verify_strict(p.signed, &p.sig)
            .unwrap();
        // The signed prefix plus "}" is the JSON body without the signature.
        let mut body = p.signed.to_vec();
        body.push(b'}');
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["prev"], GENESIS_PREV);
    }

    #[test]
    fn malformed_lines_are_explained() {
        assert!(parse_line(b"").unwrap_err().contains("empty"));
        assert!(
            parse_line(b"{\"v\":1}")
                .unwrap_err()
                .contains("signature field")
        );
        let e = parse_line(b"{\"v\":1,\"sig\":\"AAAA\"}").unwrap_err();
        assert!(e.contains("characters long"), "{e}");
    }

    #[test]
    fn a_sig_marker_overlapping_the_line_end_is_an_error_not_a_panic() {
        // Found by the fuzz target audit_jsonl.
        let e = parse_line(br#"{"seq":-1,"prev":"","sig":"}"#).unwrap_err();
        assert!(e.contains("signature is 0 characters long"), "{e}");
    }
}
