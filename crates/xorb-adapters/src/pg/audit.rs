//! rc1's advanced audit logs: the hash chain a trigger keeps over `audit_log` (migration 8d9a2c3), its
//! preservation before the downgrade (with rc1's per-tenant metrics beside it), and phase 5's `audit-log` check of
//! the platform's audit log over a window (`audit_check`). Design: docs/design/integrity-and-loss.md ("The platform's audit log").

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use xorb_engine::runner::StepError;
use xorb_model::plan::Preserve;

use super::chain_file::{self, ChainFile};
use super::export::{check_hashes, preserved_dir, read_manifest};
use super::preserve::{publish, staging, table_exists};
use super::*;
use crate::context::{TargetRunner, failed};
use crate::evidence::sha256;
use crate::files::write_private;
use crate::target::Target;

/// The canonical form of an audit_log row (alias `r`) that the chain hashes. The migration's trigger computes the
/// same expression over `NEW`: the two must stay equal, or every entry reads as altered.
pub(crate) const CANONICAL: &str = "jsonb_build_array(r.id, r.tenant_id, r.actor, r.action, r.detail, \
     to_char(r.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'))::text";

/// rc1's own query behind `xorb_tenant_sessions{tenant,status}` (xorb-svc, roles/tenant_metrics.rs).
pub(crate) const TENANT_SESSIONS: &str = "SELECT t.slug, s.status, count(*) \
     FROM ptaas_sessions s JOIN tenants t ON t.id = s.tenant_id GROUP BY t.slug, s.status ORDER BY 1, 2";

pub(crate) const CHAIN_FILE: &str = "chain.jsonl";
pub(crate) const METRICS_FILE: &str = "tenant-metrics.json";

/// One entry of the chain, hashes in hex (as exported to `chain.jsonl`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainEntry {
    pub seq: i64,
    pub audit_id: i64,
    /// The row's `created_at` in microseconds since the epoch (what the window compares).
    pub created_us: i64,
    pub prev_hash: String,
    pub row_hash: String,
    pub entry_hash: String,
}

pub fn row_hash(canonical: &str) -> String {
    hex::encode(row_digest(canonical))
}

pub(crate) fn row_digest(canonical: &str) -> [u8; 32] {
    Sha256::digest(canonical.as_bytes()).into()
}

/// `sha256(prev || row_hash)` over the raw bytes, as the trigger computes it.
pub fn link_hash(prev_hex: &str, row_hex: &str) -> Option<String> {
    Some(hex::encode(link_digest(
        &hash32(prev_hex)?,
        &hash32(row_hex)?,
    )))
}

fn link_digest(prev: &[u8; 32], row: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(row);
    h.finalize().into()
}

/// A hash as exported (64 hex digits), as its bytes. The chain is verified on bytes: decoding into a vector and
/// encoding the result again cost about a microsecond an entry, a second for rc1's chain at 1 GB.
pub(crate) fn hash32(hex_text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_text, &mut out).ok()?;
    Some(out)
}

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The chain alone: numbered 1, 2, … without a hole, the first linked to the genesis hash, each to the one
/// before, each entry's hash that of its link and row hash. The first problem, naming the entry.
pub fn verify_links(chain: &[ChainEntry]) -> Result<(), String> {
    let mut links = Links::default();
    chain.iter().try_for_each(|e| links.next(e))
}

/// [`verify_links`] one entry at a time, for a chain read from a file.
#[derive(Default)]
pub struct Links {
    /// The hash the next entry must link to (the genesis hash, all zeros, at first).
    prev: [u8; 32],
    seen: i64,
}

impl Links {
    pub fn next(&mut self, e: &ChainEntry) -> Result<(), String> {
        let want_seq = self.seen + 1;
        if e.seq != want_seq {
            return Err(format!(
                "chain entry {want_seq} is missing (the next one is {}, for audit entry {}): the chain was cut",
                e.seq, e.audit_id
            ));
        }
        if hash32(&e.prev_hash) != Some(self.prev) {
            return Err(format!(
                "chain entry {} (audit entry {}) does not link to the entry before it",
                e.seq, e.audit_id
            ));
        }
        match (hash32(&e.row_hash), hash32(&e.entry_hash)) {
            (Some(row), Some(entry)) if link_digest(&self.prev, &row) == entry => {
                self.prev = entry;
                self.seen = want_seq;
                Ok(())
            }
            _ => Err(format!(
                "chain entry {} (audit entry {}) has a hash that is not its own",
                e.seq, e.audit_id
            )),
        }
    }
}

/// rc1's per-tenant metrics as preserved: the series of `xorb_tenant_sessions` recounted with rc1's own query,
/// and what Prometheus last held of them (when it answered).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TenantMetrics {
    pub metric: String,
    pub series: Vec<TenantSeries>,
    #[serde(default)]
    pub prometheus: Option<serde_json::Value>,
    #[serde(default)]
    pub prometheus_note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantSeries {
    pub tenant: String,
    pub status: String,
    pub sessions: i64,
}

impl TenantMetrics {
    /// Sessions per tenant, all statuses together (statuses move on; sessions are never deleted).
    pub fn per_tenant(&self) -> BTreeMap<String, i64> {
        let mut m = BTreeMap::new();
        for s in &self.series {
            *m.entry(s.tenant.clone()).or_insert(0) += s.sessions;
        }
        m
    }
}

/// Tenants whose live session count is below the preserved one: the metrics could not be recounted for them.
pub fn tenants_short(preserved: &TenantMetrics, live: &[TenantSeries]) -> Vec<String> {
    let now = TenantMetrics {
        series: live.to_vec(),
        ..TenantMetrics::default()
    }
    .per_tenant();
    preserved
        .per_tenant()
        .into_iter()
        .filter_map(|(t, n)| {
            let have = now.get(&t).copied().unwrap_or(0);
            (have < n).then(|| format!("{t}: {n} sessions preserved, {have} now"))
        })
        .collect()
}

pub(crate) async fn tenant_series(
    client: &impl tokio_postgres::GenericClient,
) -> Result<Vec<TenantSeries>, StepError> {
    let rows = client
        .query(TENANT_SESSIONS, &[])
        .await
        .map_err(db("count sessions per tenant"))?;
    Ok(rows
        .iter()
        .map(|r| TenantSeries {
            tenant: r.get(0),
            status: r.get(1),
            sessions: r.get(2),
        })
        .collect())
}

pub(crate) async fn read_chain(
    client: &impl tokio_postgres::GenericClient,
) -> Result<Vec<ChainEntry>, StepError> {
    let rows = client
        .query(
            "SELECT seq, audit_id, created_us, encode(prev_hash, 'hex'), encode(row_hash, 'hex'), \
             encode(entry_hash, 'hex') FROM audit_chain ORDER BY seq",
            &[],
        )
        .await
        .map_err(db("read audit_chain"))?;
    Ok(rows
        .iter()
        .map(|r| ChainEntry {
            seq: r.get(0),
            audit_id: r.get(1),
            created_us: r.get(2),
            prev_hash: r.get(3),
            row_hash: r.get(4),
            entry_hash: r.get(5),
        })
        .collect())
}

/// What Prometheus last held of the tenant series (best effort: phase 2 already moved the api to a release
/// that exports none, so only the last hour's samples remain).
async fn prometheus_series<T: Target>(r: &TargetRunner<T>) -> Result<serde_json::Value, String> {
    let base = r.endpoints().map_err(|e| e.to_string())?.prometheus;
    let resp = r
        .http
        .get(format!(
            "{base}/api/v1/query?query=last_over_time%28xorb_tenant_sessions%5B1h%5D%29"
        ))
        .timeout(Duration::from_secs(4))
        .send()
        .await
        .map_err(|e| format!("Prometheus at {base}: {e}"))?;
    let v: serde_json::Value = resp
        .json()
        .await
        .map_err(|e| format!("Prometheus at {base}: {e}"))?;
    Ok(v["data"]["result"].clone())
}

pub(crate) async fn preserve_audit_chain<T: Target>(
    r: &TargetRunner<T>,
    client: &mut tokio_postgres::Client,
    run_dir: &Path,
) -> Result<String, StepError> {
    let dir = preserved_dir(run_dir, Preserve::AuditChain);
    if !table_exists(client, "audit_chain").await? {
        return match recheck(&dir, |_| {}) {
            Ok((chain, _)) => Ok(format!(
                "advanced audit logs: table already gone; kept the verified export of {} chain entries in {}",
                chain.entries,
                dir.display()
            )),
            Err(why) => Err(fatal(format!(
                "audit_chain is gone and there is no verified export of it ({why}): the chain can only come back \
                 from the phase-3 backup"
            ))),
        };
    }
    let tmp = staging(&dir)?;
    let tx = read_snapshot(client, "begin the audit chain export").await?;
    let written = chain_file::write(&tx, &tmp.join(CHAIN_FILE)).await?;
    let series = tenant_series(&tx).await?;
    tx.commit()
        .await
        .map_err(db("end the audit chain export"))?;

    let (prometheus, prometheus_note) = match prometheus_series(r).await {
        Ok(v) => (Some(v), None),
        Err(e) => (None, Some(e)),
    };
    let metrics = TenantMetrics {
        metric: "xorb_tenant_sessions".into(),
        series,
        prometheus,
        prometheus_note,
    };
    let mtext = serde_json::to_string_pretty(&metrics).unwrap_or_default();
    write_private(&tmp.join(METRICS_FILE), mtext.as_bytes()).map_err(failed)?;

    // Verify what was written, read back: the chain from the file alone, its bytes and length those written.
    let not_verified = |e: String| {
        fatal(format!(
            "the audit chain does not verify before the downgrade: {e}"
        ))
    };
    let (read, problem) =
        chain_file::read_back(&tmp.join(CHAIN_FILE), |_| {}).map_err(not_verified)?;
    if let Some(why) = problem {
        return Err(not_verified(why));
    }
    if read != written {
        return Err(fatal(
            "the audit chain export does not read back as written",
        ));
    }
    let mback: TenantMetrics =
        serde_json::from_slice(&std::fs::read(tmp.join(METRICS_FILE)).map_err(failed)?)
            .map_err(fatal)?;
    if mback.series != metrics.series {
        return Err(fatal(
            "the tenant metrics export does not read back as written",
        ));
    }
    let mut rows = BTreeMap::new();
    rows.insert("audit_chain".to_string(), written.entries);
    rows.insert("tenant_metrics".to_string(), metrics.series.len());
    let mut files = BTreeMap::new();
    files.insert(CHAIN_FILE.to_string(), written.sha256.clone());
    files.insert(METRICS_FILE.to_string(), sha256(mtext.as_bytes()));
    let m = Manifest {
        kind: Preserve::AuditChain.name().into(),
        verified: true,
        verified_at: now(),
        rows,
        files,
        notes: metrics.prometheus_note.iter().cloned().collect(),
        key_id: None,
    };
    write_json(&tmp.join("manifest.json"), &m)?;
    publish(&tmp, &dir)?;
    let tenants = metrics.per_tenant();
    Ok(format!(
        "advanced audit logs: {} chain entries{} preserved in {}, every link and hash verified; tenant metrics: {} \
         series of xorb_tenant_sessions over {} tenants ({} sessions) preserved{}",
        written.entries,
        match written.span {
            Some((a, b)) => format!(" (audit entries {a}–{b})"),
            None => String::new(),
        },
        dir.display(),
        metrics.series.len(),
        tenants.len(),
        tenants.values().sum::<i64>(),
        match &metrics.prometheus {
            Some(serde_json::Value::Array(a)) =>
                format!(", with the {} series Prometheus last held", a.len()),
            _ => " (Prometheus did not answer; the recount stands)".into(),
        }
    ))
}

/// A preserved export, re-checked: its files' hashes against the manifest, the chain's links, its length; `each`
/// sees every entry of the chain.
pub(crate) fn recheck(
    dir: &Path,
    each: impl FnMut(&ChainEntry),
) -> Result<(ChainFile, TenantMetrics), String> {
    let mut m =
        read_manifest(dir).ok_or_else(|| format!("no verified manifest in {}", dir.display()))?;
    let path = dir.join(CHAIN_FILE);
    let (chain, problem) = chain_file::read_back(&path, each)?;
    let want = m.files.remove(CHAIN_FILE);
    if want.as_ref() != Some(&chain.sha256) {
        return Err(format!(
            "{} has SHA-256 {}, not the {} its manifest recorded",
            path.display(),
            chain.sha256,
            want.as_deref().unwrap_or("(none)")
        ));
    }
    check_hashes(dir, &m)?;
    if let Some(why) = problem {
        return Err(why);
    }
    if m.rows.get("audit_chain") != Some(&chain.entries) {
        return Err(format!(
            "{} holds {} chain entries, its manifest {:?}",
            dir.display(),
            chain.entries,
            m.rows.get("audit_chain")
        ));
    }
    let metrics: TenantMetrics =
        serde_json::from_slice(&std::fs::read(dir.join(METRICS_FILE)).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    Ok((chain, metrics))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_metrics_are_recounted_per_tenant() {
        let s = |t: &str, st: &str, n| TenantSeries {
            tenant: t.into(),
            status: st.into(),
            sessions: n,
        };
        let kept = TenantMetrics {
            series: vec![
                s("acme", "queued", 2),
                s("acme", "completed", 1),
                s("globex", "running", 1),
            ],
            ..TenantMetrics::default()
        };
        // Statuses moved on, one session added: still every session there.
        assert!(
            tenants_short(
                &kept,
                &[s("acme", "completed", 3), s("globex", "completed", 2)]
            )
            .is_empty()
        );
        assert_eq!(
            tenants_short(
                &kept,
                &[s("acme", "completed", 2), s("globex", "completed", 1)]
            ),
            ["acme: 3 sessions preserved, 2 now"]
        );
    }
}
