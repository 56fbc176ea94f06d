//! Phase 5's `audit-log` check: the platform's audit log over a window against rc1's hash chain (the live
//! `audit_chain` on rc1, its preserved export after the rollback). Design: docs/design/integrity-and-loss.md ("The
//! platform's audit log").

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::TryStreamExt;
use xorb_engine::runner::{StepContext, StepError};
use xorb_model::plan::{Preserve, StepOutcome};

use super::audit::{CANONICAL, ChainEntry, hash32, read_chain, recheck, row_digest, verify_links};
use super::export::{preserved_dir, read_manifest};
use super::preserve::table_exists;
use super::*;
use crate::context::TargetRunner;
use crate::target::Target;

/// A live audit_log row: its id, time and the SHA-256 of its canonical form (not the form itself: 400,000 rows
/// at 1 GB).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveRow {
    pub id: i64,
    pub created_us: i64,
    pub digest: [u8; 32],
}

impl LiveRow {
    pub fn new(id: i64, created_us: i64, canonical: &str) -> Self {
        Self {
            id,
            created_us,
            digest: row_digest(canonical),
        }
    }
}

/// An entry of the chain as the check needs it, its links verified apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Chained {
    seq: i64,
    audit_id: i64,
    created_us: i64,
    /// The row hash it recorded (zeros if it was not a hash: its link then does not verify either).
    row: [u8; 32],
}

impl From<&ChainEntry> for Chained {
    fn from(e: &ChainEntry) -> Self {
        Self {
            seq: e.seq,
            audit_id: e.audit_id,
            created_us: e.created_us,
            row: hash32(&e.row_hash).unwrap_or_default(),
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
    let compact: Vec<Chained> = chain.iter().map(Chained::from).collect();
    verify_rows(&compact, verify_links(chain).err(), rows, since_us)
}

/// [`verify_window`] over the chain's entries as the check keeps them, its links already verified (`links`: the
/// first problem, if any).
pub(crate) fn verify_rows(
    chain: &[Chained],
    links: Option<String>,
    rows: &[LiveRow],
    since_us: i64,
) -> WindowReport {
    let mut r = WindowReport {
        chain_len: chain.len(),
        problems: links.into_iter().collect(),
        ..WindowReport::default()
    };
    // Sorted vectors and binary searches: 400,000 entries and rows at 1 GB, in a few megabytes.
    let mut by_id: Vec<&LiveRow> = rows.iter().collect();
    by_id.sort_by_key(|row| row.id);
    let row_of = |id: i64| {
        by_id
            .binary_search_by_key(&id, |row| row.id)
            .ok()
            .map(|i| by_id[i])
    };
    let mut chained_ids: Vec<i64> = chain.iter().map(|e| e.audit_id).collect();
    chained_ids.sort_unstable();
    let is_chained = |id: i64| chained_ids.binary_search(&id).is_ok();
    for e in chain.iter().filter(|e| e.created_us >= since_us) {
        match row_of(e.audit_id) {
            None => r.problems.push(format!(
                "audit entry {} is gone (deleted): chain entry {} records it",
                e.audit_id, e.seq
            )),
            Some(row) if row.digest != e.row => r.problems.push(format!(
                "audit entry {} was altered: its content no longer hashes to what chain entry {} recorded",
                e.audit_id, e.seq
            )),
            Some(_) => r.chained += 1,
        }
    }
    let first = chained_ids.first().copied();
    let last = chained_ids.last().copied();
    r.last_chained = last;
    for row in by_id
        .iter()
        .filter(|row| row.created_us >= since_us || is_chained(row.id))
    {
        match (first, last) {
            (Some(lo), Some(hi)) if row.id >= lo && row.id <= hi => {
                if !is_chained(row.id) {
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
/// table on rc1, the preserved export after the rollback). The chain (read from its file on a blocking thread) and
/// the window's rows (hashed as they come) are read at the same time.
pub async fn check_audit_log<T: Target>(
    r: &TargetRunner<T>,
    ctx: &StepContext<'_>,
    since: Duration,
) -> Result<StepOutcome, StepError> {
    let window = window_text(since);
    let mut client = connect(&r.pg()?).await?;
    let preserved = if table_exists(&client, "audit_chain").await? {
        None
    } else {
        match preserved_chain_dir(ctx.run_dir, &r.state_dir) {
            Some(dir) => Some(dir),
            None => {
                return Ok(StepOutcome::Skipped {
                    reason: "no audit chain: neither a live audit_chain nor a preserved one (this platform \
                             never ran a release with advanced audit logs)"
                        .into(),
                });
            }
        }
    };
    let source = match &preserved {
        None => "the live audit_chain".to_string(),
        Some(dir) => format!("the chain preserved in {}", dir.display()),
    };
    let tx = read_snapshot(&mut client, "begin the audit log check").await?;
    let secs = since.as_secs() as f64;
    // now() is the transaction's: every query below sees the same window.
    let since_us: i64 = tx
        .query_one(
            "SELECT (extract(epoch FROM now() - make_interval(secs => $1)) * 1000000)::bigint",
            &[&secs],
        )
        .await
        .map_err(db("compute the window"))?
        .get(0);
    let in_window = "r.created_at >= now() - make_interval(secs => $1)";
    let chain = async {
        match &preserved {
            None => {
                let chain = read_chain(&tx).await?;
                let links = verify_links(&chain).err();
                Ok((chain.iter().map(Chained::from).collect(), links))
            }
            Some(dir) => {
                let path = dir.clone();
                let read = tokio::task::spawn_blocking(move || {
                    let mut chain = Vec::new();
                    recheck(&path, |e| chain.push(Chained::from(e))).map(|_| chain)
                })
                .await
                .map_err(|e| fatal(format!("the chain's reader stopped: {e}")))?;
                let chain = read.map_err(|why| {
                    fatal(format!(
                        "the preserved audit chain in {} does not verify: {why}",
                        dir.display()
                    ))
                })?;
                Ok::<_, StepError>((chain, None))
            }
        }
    };
    let window_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&secs];
    let (chain, rows) = tokio::join!(chain, live_rows(&tx, in_window, &window_params));
    let (chain, links): (Vec<Chained>, Option<String>) = chain?;
    let mut rows = rows?;
    // Rows an entry of the window names although they are not in the window themselves (their time altered, or
    // gone): asked for by id, so the check reads the window and never the log's history beyond it.
    let mut seen: Vec<i64> = rows.iter().map(|row| row.id).collect();
    seen.sort_unstable();
    let named: Vec<i64> = chain
        .iter()
        .filter(|e| e.created_us >= since_us && seen.binary_search(&e.audit_id).is_err())
        .map(|e| e.audit_id)
        .collect();
    if !named.is_empty() {
        rows.extend(live_rows(&tx, "r.id = ANY($1)", &[&named]).await?);
    }
    tx.commit().await.map_err(db("end the audit log check"))?;
    let report = verify_rows(&chain, links, &rows, since_us);
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

/// The audit_log rows `condition` selects, each hashed in its canonical form as it comes.
async fn live_rows(
    tx: &tokio_postgres::Transaction<'_>,
    condition: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<LiveRow>, StepError> {
    let rows = tx
        .query_raw(
            &format!(
                "SELECT r.id, (extract(epoch FROM r.created_at) * 1000000)::bigint, {CANONICAL} \
                 FROM audit_log r WHERE {condition}"
            ),
            params.iter().copied(),
        )
        .await
        .map_err(db("read audit_log"))?;
    futures::pin_mut!(rows);
    let mut out = Vec::new();
    while let Some(row) = rows.try_next().await.map_err(db("read audit_log"))? {
        out.push(LiveRow::new(row.get(0), row.get(1), row.get(2)));
    }
    Ok(out)
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
    use crate::pg::audit::{GENESIS, link_hash, row_hash};

    /// A chain as the trigger builds it over `rows`, in order.
    fn chain_of(rows: &[LiveRow]) -> Vec<ChainEntry> {
        let mut prev = GENESIS.to_string();
        rows.iter()
            .enumerate()
            .map(|(i, r)| {
                let rh = hex::encode(r.digest);
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

    fn canonical(id: i64, t: i64) -> String {
        format!("[{id}, null, \"svc:api\", \"x\", {{}}, \"t{t}\"]")
    }

    fn row(id: i64, t: i64) -> LiveRow {
        LiveRow::new(id, t, &canonical(id, t))
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
        rows[4] = LiveRow::new(5, 5, &canonical(5, 5).replace("svc:api", "svc:evil"));
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
        rows[2] = LiveRow::new(3, 3, &format!("{} ", canonical(3, 3))); // row 3, time 3: before the window
        let r = verify_window(&chain, &rows, 4);
        assert_eq!(r.problems, Vec::<String>::new());
    }
}
