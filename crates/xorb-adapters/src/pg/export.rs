//! Verifying a preserved export using only what it holds (no server): hashes, signatures, row counts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use xorb_model::plan::Preserve;

use super::*;
use crate::evidence::{self, Verifier, bytea_from_text, sha256_file};

// Preservation

/// `<run>/preserved/<kind>/manifest.json`: written last, once the export has been verified.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub kind: String,
    pub verified: bool,
    pub verified_at: String,
    /// Row count per exported table (as the table had them when exported).
    pub rows: BTreeMap<String, usize>,
    /// SHA-256 of every file of the export but the manifest, by path relative to the export's directory.
    pub files: BTreeMap<String, String>,
    #[serde(default)]
    pub notes: Vec<String>,
    #[serde(default)]
    pub key_id: Option<String>,
}

pub(crate) fn preserved_dir(run_dir: &Path, p: Preserve) -> PathBuf {
    run_dir.join("preserved").join(p.name())
}

pub(crate) fn read_manifest(dir: &Path) -> Option<Manifest> {
    let m: Manifest =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).ok()?).ok()?;
    m.verified.then_some(m)
}

/// Every file's SHA-256 is still the manifest's.
pub(crate) fn check_hashes(dir: &Path, m: &Manifest) -> Result<(), String> {
    for (rel, want) in &m.files {
        let got = sha256_file(&dir.join(rel)).map_err(|e| e.to_string())?;
        if &got != want {
            return Err(format!(
                "{} has SHA-256 {got}, not the {want} its manifest recorded",
                dir.join(rel).display()
            ));
        }
    }
    Ok(())
}

/// A preserved evidence row, read back from `rows.jsonl`.
pub(crate) struct EvidenceRow {
    pub(crate) id: String,
    pub(crate) finding_id: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) signature: Vec<u8>,
    pub(crate) line: String,
}

pub(crate) fn parse_evidence_line(line: &str) -> Result<EvidenceRow, String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not JSON ({e})"))?;
    let s = |k: &str| v[k].as_str().map(str::to_string).ok_or(format!("no {k}"));
    Ok(EvidenceRow {
        id: s("id")?,
        finding_id: s("finding_id")?,
        payload: bytea_from_text(&s("payload")?).ok_or("payload is not \\x hex")?,
        signature: bytea_from_text(&s("signature")?).ok_or("signature is not \\x hex")?,
        line: line.to_string(),
    })
}

pub(crate) fn read_evidence_rows(dir: &Path) -> Result<Vec<EvidenceRow>, String> {
    let p = dir.join("rows.jsonl");
    let text =
        std::fs::read_to_string(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            parse_evidence_line(l).map_err(|e| format!("{} line {}: {e}", p.display(), i + 1))
        })
        .collect()
}

/// Verifies an evidence export using only what it holds: every row's signature verifies with the exported public
/// key, every row's files hold its exact bytes, every pair of files verifies, and (when given) the counts are
/// those of the table and of the live records directory. Returns the manifest to write.
pub(crate) fn verify_evidence_export(
    dir: &Path,
    table_rows: Option<usize>,
    live_files: Option<usize>,
) -> Result<Manifest, String> {
    let v =
        Verifier::from_pem_file(&dir.join(evidence::PUBLIC_KEY_FILE)).map_err(|e| e.to_string())?;
    let rows = read_evidence_rows(dir)?;
    if let Some(n) = table_rows
        && n != rows.len()
    {
        return Err(format!(
            "the export holds {} evidence rows but the table has {n}",
            rows.len()
        ));
    }
    let records = dir.join(evidence::RECORDS_DIR);
    let mut notes = Vec::new();
    let mut without_files = 0usize;
    for row in &rows {
        if !v.verify(&row.payload, &row.signature) {
            return Err(format!(
                "evidence row {}: its signature does not verify with key {}",
                row.id,
                v.key_id()
            ));
        }
        let json = records.join(format!("{}.json", row.id));
        let sig = records.join(format!("{}.sig", row.id));
        match (std::fs::read(&json), std::fs::read(&sig)) {
            (Ok(j), Ok(s)) => {
                if j != row.payload || s != row.signature {
                    return Err(format!(
                        "evidence record {}: the storage files differ from the database row",
                        row.id
                    ));
                }
            }
            _ => without_files += 1,
        }
    }
    if without_files > 0 {
        notes.push(format!(
            "{without_files} rows had no storage files (the rows carry the payload and signature)"
        ));
    }
    let check = evidence::verify_dir(&records, &v).map_err(|e| e.to_string())?;
    if let Some(p) = check.problems.first() {
        return Err(p.clone());
    }
    if let Some(n) = live_files
        && n != check.files
    {
        return Err(format!(
            "the export holds {} storage files but the evidence directory has {n}",
            check.files
        ));
    }
    let row_ids: BTreeSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    let orphans = evidence::list_records(&records)
        .map_err(|e| e.to_string())?
        .keys()
        .filter(|id| !row_ids.contains(id.as_str()))
        .count();
    if orphans > 0 {
        notes.push(format!("{orphans} storage records had no row"));
    }
    let mut files = BTreeMap::new();
    files.insert(
        "rows.jsonl".to_string(),
        sha256_file(&dir.join("rows.jsonl")).map_err(|e| e.to_string())?,
    );
    files.insert(
        evidence::PUBLIC_KEY_FILE.to_string(),
        sha256_file(&dir.join(evidence::PUBLIC_KEY_FILE)).map_err(|e| e.to_string())?,
    );
    for (id, f) in evidence::list_records(&records).map_err(|e| e.to_string())? {
        for (ext, p) in [("json", f.json), ("sig", f.sig)] {
            if let Some(p) = p {
                files.insert(
                    format!("{}/{id}.{ext}", evidence::RECORDS_DIR),
                    sha256_file(&p).map_err(|e| e.to_string())?,
                );
            }
        }
    }
    let mut counts = BTreeMap::new();
    counts.insert("evidence".to_string(), rows.len());
    counts.insert("files".to_string(), check.files);
    Ok(Manifest {
        kind: Preserve::Evidence.name().into(),
        verified: true,
        verified_at: now(),
        rows: counts,
        files,
        notes,
        key_id: Some(v.key_id().to_string()),
    })
}

/// A kept export is re-checked in full: hashes against its manifest and every signature again.
pub(crate) fn recheck_evidence(dir: &Path) -> Result<Manifest, String> {
    let m =
        read_manifest(dir).ok_or_else(|| format!("no verified manifest in {}", dir.display()))?;
    check_hashes(dir, &m)?;
    let again = verify_evidence_export(dir, m.rows.get("evidence").copied(), None)?;
    if again.files.len() != m.files.len() {
        return Err(format!(
            "{} holds {} files, its manifest {}",
            dir.display(),
            again.files.len(),
            m.files.len()
        ));
    }
    Ok(m)
}

pub(crate) fn verify_table_export(
    dir: &Path,
    counts: &BTreeMap<String, usize>,
) -> Result<BTreeMap<String, String>, String> {
    use sha2::{Digest, Sha256};
    let mut files = BTreeMap::new();
    for (table, n) in counts {
        let p = dir.join(format!("{table}.jsonl"));
        let (mut got, mut sha) = (0usize, Sha256::new());
        crate::files::each_line(&p, |line| {
            got += 1;
            sha.update(line);
            // Read as JSON without building it: an object is a value that begins with a brace.
            serde_json::from_slice::<serde::de::IgnoredAny>(line)
                .map_err(|e| format!("{} line {got}: {e}", p.display()))?;
            if line.first() != Some(&b'{') {
                return Err(format!("{} line {got}: not a row", p.display()));
            }
            Ok(())
        })?;
        if got != *n {
            return Err(format!("{} holds {got} rows, the table {n}", p.display()));
        }
        files.insert(format!("{table}.jsonl"), hex::encode(sha.finalize()));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::pkcs8::EncodePublicKey;
    use ed25519_dalek::{Signer, SigningKey};

    /// An export as `preserve_evidence` writes it: rows, the public key, each record's two files.
    fn export(dir: &Path, key: &SigningKey, payloads: &[&str]) {
        let pem = key
            .verifying_key()
            .to_public_key_pem(Default::default())
            .unwrap();
        std::fs::write(dir.join(evidence::PUBLIC_KEY_FILE), pem).unwrap();
        let records = dir.join(evidence::RECORDS_DIR);
        std::fs::create_dir_all(&records).unwrap();
        let mut rows = String::new();
        for (i, p) in payloads.iter().enumerate() {
            let id = format!("00000000-0000-0000-0000-00000000000{i}");
            let sig = key.sign(p.as_bytes()).to_bytes();
            rows.push_str(
                &serde_json::json!({
                    "id": id,
                    "finding_id": "f",
                    "payload": format!("\\x{}", hex::encode(p)),
                    "signature": format!("\\x{}", hex::encode(sig)),
                })
                .to_string(),
            );
            rows.push('\n');
            std::fs::write(records.join(format!("{id}.json")), p).unwrap();
            std::fs::write(records.join(format!("{id}.sig")), sig).unwrap();
        }
        std::fs::write(dir.join("rows.jsonl"), rows).unwrap();
    }

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    #[test]
    fn an_export_verifies_from_what_it_holds_alone() {
        let d = tempfile::tempdir().unwrap();
        export(d.path(), &key(), &["{\"a\":1}", "{\"b\":2}"]);
        let m = verify_evidence_export(d.path(), Some(2), Some(4)).unwrap();
        assert_eq!(m.rows["evidence"], 2);
        assert_eq!(m.rows["files"], 4);
        assert_eq!(m.files.len(), 2 + 4, "rows, key and four record files");
        assert!(check_hashes(d.path(), &m).is_ok());
    }

    #[test]
    fn a_changed_file_a_foreign_signature_or_a_wrong_count_is_refused() {
        let d = tempfile::tempdir().unwrap();
        export(d.path(), &key(), &["{\"a\":1}"]);
        let e = verify_evidence_export(d.path(), Some(3), None).unwrap_err();
        assert!(
            e.contains("holds 1 evidence rows but the table has 3"),
            "{e}"
        );

        let m = verify_evidence_export(d.path(), Some(1), None).unwrap();
        let file = d
            .path()
            .join(evidence::RECORDS_DIR)
            .join("00000000-0000-0000-0000-000000000000.json");
        std::fs::write(&file, "{\"a\":2}").unwrap();
        assert!(
            check_hashes(d.path(), &m).is_err(),
            "a changed byte is found"
        );
        let e = verify_evidence_export(d.path(), Some(1), None).unwrap_err();
        assert!(e.contains("differ from the database row"), "{e}");

        // Rows signed by another key than the one exported.
        let other = tempfile::tempdir().unwrap();
        export(
            other.path(),
            &SigningKey::from_bytes(&[9u8; 32]),
            &["{\"a\":1}"],
        );
        std::fs::copy(
            d.path().join(evidence::PUBLIC_KEY_FILE),
            other.path().join(evidence::PUBLIC_KEY_FILE),
        )
        .unwrap();
        let e = verify_evidence_export(other.path(), Some(1), None).unwrap_err();
        assert!(e.contains("does not verify"), "{e}");
    }
}
