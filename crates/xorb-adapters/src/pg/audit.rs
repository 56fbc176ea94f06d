//! rc1's advanced audit logs: the hash chain a trigger keeps over `audit_log` (migration 8d9a2c3), its
//! preservation before the downgrade (with rc1's per-tenant metrics beside it), and phase 5's `audit-log` check of
//! the platform's audit log over a window. Design: docs/design/integrity-and-loss.md ("The platform's audit log").

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use xorb_engine::runner::{StepContext, StepError};
use xorb_model::plan::{Preserve, StepOutcome};

use super::chain_file;
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

/// A live audit_log row: its id, time and canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveRow {
    pub id: i64,
    pub created_us: i64,
    pub canonical: String,
}

pub fn row_hash(canonical: &str) -> String {
    hex::encode(row_digest(canonical))
}

fn row_digest(canonical: &str) -> [u8; 32] {
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
fn hash32(hex_text: &str) -> Option<[u8; 32]> {
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

/// What the check found over the window.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WindowReport {
    /// Chained entries of the window whose rows verify.
    pub chained: usize,
    /// Rows after the chain's last entry (stable's plain entries).
    pub plain_after: usize,
    /// Rows of the window older than the chain's first entry (written before rc1 chained anything).
    pub plain_before: usize,
    pub chain_len: usize,
    pub last_chained: Option<i64>,
    pub problems: Vec<String>,
}

/// Verifies the live rows of a window against the chain: every chained entry of the window has its row with the
/// same content (altered → hash mismatch; deleted → entry without row), every row the chain spans has an entry
/// (a row slipped in behind the chain: forged), the chain's links hold from its start; rows after its last
/// entry are plain. `rows` must hold at least the window's rows and every row whose id an entry of the window
/// names.
pub fn verify_window(chain: &[ChainEntry], rows: &[LiveRow], since_us: i64) -> WindowReport {
    let mut r = WindowReport {
        chain_len: chain.len(),
        ..WindowReport::default()
    };
    if let Err(e) = verify_links(chain) {
        r.problems.push(e);
    }
    let by_id: BTreeMap<i64, &LiveRow> = rows.iter().map(|row| (row.id, row)).collect();
    let chained_ids: BTreeSet<i64> = chain.iter().map(|e| e.audit_id).collect();
    for e in chain.iter().filter(|e| e.created_us >= since_us) {
        match by_id.get(&e.audit_id) {
            None => r.problems.push(format!(
                "audit entry {} is gone (deleted): chain entry {} records it",
                e.audit_id, e.seq
            )),
            Some(row) if hash32(&e.row_hash) != Some(row_digest(&row.canonical)) => r.problems.push(format!(
                "audit entry {} was altered: its content no longer hashes to what chain entry {} recorded",
                e.audit_id, e.seq
            )),
            Some(_) => r.chained += 1,
        }
    }
    let first = chained_ids.first().copied();
    let last = chained_ids.last().copied();
    r.last_chained = last;
    for row in rows
        .iter()
        .filter(|row| row.created_us >= since_us || chained_ids.contains(&row.id))
    {
        match (first, last) {
            (Some(lo), Some(hi)) if row.id >= lo && row.id <= hi => {
                if !chained_ids.contains(&row.id) {
                    r.problems.push(format!(
                        "audit entry {} has no chain entry although the chain spans ids {lo}–{hi}: \
                         it was inserted behind the chain (forged)",
                        row.id
                    ));
                }
            }
            (Some(_), Some(hi)) if row.id > hi => r.plain_after += 1,
            _ => r.plain_before += 1,
        }
    }
    r
}

impl WindowReport {
    pub fn summary(&self, window: &str) -> String {
        let mut s = format!(
            "audit log over the last {window}: {} chained entries verified (chain of {}, links intact{}), \
             {} plain entries after it",
            self.chained,
            self.chain_len,
            match self.last_chained {
                Some(id) => format!(", ends at audit entry {id}"),
                None => String::new(),
            },
            self.plain_after
        );
        if self.plain_before > 0 {
            s.push_str(&format!(
                ", {} plain entries from before the chain",
                self.plain_before
            ));
        }
        s.push_str("; no entry missing, altered or unchained");
        s
    }
}

pub(crate) fn parse_chain(text: &str) -> Result<Vec<ChainEntry>, String> {
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| format!("{CHAIN_FILE} line {}: {e}", i + 1))
        })
        .collect()
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

async fn read_chain(
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
        return match recheck(&dir) {
            Ok((chain, _)) => Ok(format!(
                "advanced audit logs: table already gone; kept the verified export of {} chain entries in {}",
                chain.len(),
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
    let read = chain_file::read_back(&tmp.join(CHAIN_FILE)).map_err(|e| {
        fatal(format!(
            "the audit chain does not verify before the downgrade: {e}"
        ))
    })?;
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

/// A preserved export, re-checked: its files' hashes against the manifest, the chain's links, its length.
pub(crate) fn recheck(dir: &Path) -> Result<(Vec<ChainEntry>, TenantMetrics), String> {
    let m =
        read_manifest(dir).ok_or_else(|| format!("no verified manifest in {}", dir.display()))?;
    check_hashes(dir, &m)?;
    let text = std::fs::read_to_string(dir.join(CHAIN_FILE))
        .map_err(|e| format!("cannot read {}: {e}", dir.join(CHAIN_FILE).display()))?;
    let chain = parse_chain(&text)?;
    verify_links(&chain)?;
    if m.rows.get("audit_chain") != Some(&chain.len()) {
        return Err(format!(
            "{} holds {} chain entries, its manifest {:?}",
            dir.display(),
            chain.len(),
            m.rows.get("audit_chain")
        ));
    }
    let metrics: TenantMetrics =
        serde_json::from_slice(&std::fs::read(dir.join(METRICS_FILE)).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    Ok((chain, metrics))
}

/// The export a check reads when the live table is gone: the run's own, else the newest run's.
fn preserved_chain_dir(run_dir: &Path, state_dir: &Path) -> Option<PathBuf> {
    let own = preserved_dir(run_dir, Preserve::AuditChain);
    if own.join("manifest.json").exists() {
        return Some(own);
    }
    let mut best: Option<(String, PathBuf)> = None;
    for e in std::fs::read_dir(state_dir.join("runs")).ok()?.flatten() {
        let d = preserved_dir(&e.path(), Preserve::AuditChain);
        if let Some(m) = read_manifest(&d)
            && best.as_ref().is_none_or(|(t, _)| m.verified_at > *t)
        {
            best = Some((m.verified_at, d));
        }
    }
    best.map(|(_, d)| d)
}

/// Phase 5's `audit-log` check: the platform's audit log over the last `since` against the chain (the live
/// table on rc1, the preserved export after the rollback).
pub async fn check_audit_log<T: Target>(
    r: &TargetRunner<T>,
    ctx: &StepContext<'_>,
    since: Duration,
) -> Result<StepOutcome, StepError> {
    let window = window_text(since);
    let mut client = connect(&r.pg()?).await?;
    let live_chain = table_exists(&client, "audit_chain").await?;
    let tx = read_snapshot(&mut client, "begin the audit log check").await?;
    let (chain, source) = if live_chain {
        (read_chain(&tx).await?, "the live audit_chain".to_string())
    } else {
        match preserved_chain_dir(ctx.run_dir, &r.state_dir) {
            Some(dir) => {
                let (chain, _) = recheck(&dir).map_err(|why| {
                    fatal(format!(
                        "the preserved audit chain in {} does not verify: {why}",
                        dir.display()
                    ))
                })?;
                (chain, format!("the chain preserved in {}", dir.display()))
            }
            None => {
                return Ok(StepOutcome::Skipped {
                    reason: "no audit chain: neither a live audit_chain nor a preserved one (this platform \
                             never ran a release with advanced audit logs)"
                        .into(),
                });
            }
        }
    };
    let secs = since.as_secs() as f64;
    let since_us: i64 = tx
        .query_one(
            "SELECT (extract(epoch FROM now() - make_interval(secs => $1)) * 1000000)::bigint",
            &[&secs],
        )
        .await
        .map_err(db("compute the window"))?
        .get(0);
    let first_in_window = chain
        .iter()
        .filter(|e| e.created_us >= since_us)
        .map(|e| e.audit_id)
        .min()
        .unwrap_or(i64::MAX);
    let rows = tx
        .query(
            &format!(
                "SELECT r.id, (extract(epoch FROM r.created_at) * 1000000)::bigint, {CANONICAL} \
                 FROM audit_log r WHERE r.created_at >= now() - make_interval(secs => $1) OR r.id >= $2 \
                 ORDER BY r.id"
            ),
            &[&secs, &first_in_window],
        )
        .await
        .map_err(db("read audit_log"))?;
    tx.commit().await.map_err(db("end the audit log check"))?;
    let rows: Vec<LiveRow> = rows
        .iter()
        .map(|row| LiveRow {
            id: row.get(0),
            created_us: row.get(1),
            canonical: row.get(2),
        })
        .collect();
    let report = verify_window(&chain, &rows, since_us);
    if !report.problems.is_empty() {
        let n = report.problems.len();
        let shown: Vec<&str> = report
            .problems
            .iter()
            .take(10)
            .map(String::as_str)
            .collect();
        return Err(StepError::fatal(format!(
            "the platform audit log does not verify against {source} over the last {window}: {}{}",
            shown.join("; "),
            if n > shown.len() {
                format!(" (and {} more)", n - shown.len())
            } else {
                String::new()
            }
        )));
    }
    Ok(StepOutcome::succeeded(format!(
        "{} (against {source})",
        report.summary(&window)
    )))
}

fn window_text(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chain as the trigger builds it over `rows`, in order.
    fn chain_of(rows: &[LiveRow]) -> Vec<ChainEntry> {
        let mut prev = GENESIS.to_string();
        rows.iter()
            .enumerate()
            .map(|(i, r)| {
                let rh = row_hash(&r.canonical);
                let eh = link_hash(&prev, &rh).unwrap();
                let e = ChainEntry {
                    seq: i as i64 + 1,
                    audit_id: r.id,
                    created_us: r.created_us,
                    prev_hash: prev.clone(),
                    row_hash: rh,
                    entry_hash: eh.clone(),
                };
                prev = eh;
                e
            })
            .collect()
    }

    fn row(id: i64, t: i64) -> LiveRow {
        LiveRow {
            id,
            created_us: t,
            canonical: format!("[{id}, null, \"svc:api\", \"x\", {{}}, \"t{t}\"]"),
        }
    }

    /// Rows 1–2 before the chain (stable, before rc1), 3–7 chained (rc1), 8–9 plain again (stable after the
    /// rollback); the window starts at time 4.
    fn fixture() -> (Vec<ChainEntry>, Vec<LiveRow>) {
        let rows: Vec<LiveRow> = (1..=9).map(|i| row(i, i)).collect();
        (chain_of(&rows[2..7]), rows)
    }

    #[test]
    fn an_untouched_log_verifies_chained_then_plain() {
        let (chain, rows) = fixture();
        let r = verify_window(&chain, &rows, 4);
        assert_eq!(r.problems, Vec::<String>::new());
        assert_eq!((r.chained, r.plain_after, r.plain_before), (4, 2, 0));
        assert_eq!(r.last_chained, Some(7));
        assert!(r.summary("1h").contains("4 chained entries verified"));
        // The whole log: the two rows from before the chain are plain, not a problem.
        let all = verify_window(&chain, &rows, 0);
        assert_eq!(
            (all.chained, all.plain_before),
            (5, 2),
            "{:?}",
            all.problems
        );
    }

    #[test]
    fn an_altered_row_is_named() {
        let (chain, mut rows) = fixture();
        rows[4].canonical = rows[4].canonical.replace("svc:api", "svc:evil");
        let r = verify_window(&chain, &rows, 4);
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        assert!(
            r.problems[0].contains("audit entry 5 was altered"),
            "{:?}",
            r.problems
        );
    }

    #[test]
    fn a_deleted_row_is_named() {
        let (chain, mut rows) = fixture();
        rows.retain(|r| r.id != 6);
        let r = verify_window(&chain, &rows, 4);
        assert!(
            r.problems
                .iter()
                .any(|p| p.contains("audit entry 6 is gone (deleted)")),
            "{:?}",
            r.problems
        );
        // The last chained one too: the chain knows where it ended.
        let (chain, mut rows) = fixture();
        rows.retain(|r| r.id != 7);
        let r = verify_window(&chain, &rows, 4);
        assert!(
            r.problems
                .iter()
                .any(|p| p.contains("audit entry 7 is gone")),
            "{:?}",
            r.problems
        );
    }

    #[test]
    fn a_row_slipped_in_behind_the_chain_is_forged() {
        let (_, rows) = fixture();
        // Row 5 was never chained: the chain was built without it and the row inserted later with that id.
        let kept: Vec<LiveRow> = rows.iter().filter(|r| r.id != 5).cloned().collect();
        let chain = chain_of(&kept[2..6]);
        let r = verify_window(&chain, &rows, 4);
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        assert!(
            r.problems[0].contains("audit entry 5 has no chain entry"),
            "{:?}",
            r.problems
        );
    }

    #[test]
    fn a_cut_or_rewritten_chain_is_found() {
        let (chain, rows) = fixture();
        // An entry removed from the chain (with its row): a gap in the numbering.
        let mut cut = chain.clone();
        cut.remove(2);
        let rows_cut: Vec<LiveRow> = rows.iter().filter(|r| r.id != 5).cloned().collect();
        let r = verify_window(&cut, &rows_cut, 4);
        assert!(
            r.problems
                .iter()
                .any(|p| p.contains("chain entry 3 is missing")),
            "{:?}",
            r.problems
        );
        // A row and its entry rewritten together: the next link breaks.
        let mut forged = chain.clone();
        forged[1].row_hash = row_hash("[4, null, \"svc:evil\"]");
        forged[1].entry_hash = link_hash(&forged[1].prev_hash, &forged[1].row_hash).unwrap();
        let e = verify_links(&forged).unwrap_err();
        assert!(
            e.contains("chain entry 3 (audit entry 5) does not link"),
            "{e}"
        );
        // An entry whose hash is not its own.
        let mut bad = chain;
        bad[0].entry_hash = GENESIS.into();
        assert!(verify_links(&bad).unwrap_err().contains("chain entry 1"));
    }

    #[test]
    fn outside_the_window_only_the_links_are_checked() {
        let (chain, mut rows) = fixture();
        rows[2].canonical.push(' '); // row 3, time 3: before the window
        let r = verify_window(&chain, &rows, 4);
        assert_eq!(r.problems, Vec::<String>::new());
    }

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
