//! What a downgrade destroys, exported and verified before it runs (G6/G7/G8 of the runbook).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use xorb_engine::runner::StepError;
use xorb_model::plan::Preserve;

use super::export::{
    check_hashes, preserved_dir, read_manifest, recheck_evidence, verify_evidence_export,
    verify_table_export,
};
use super::*;
use crate::context::{TargetRunner, failed};
use crate::evidence::{self, sha256};
use crate::files::{mkdir, write_private};
use crate::target::Target;

pub(crate) async fn table_exists(
    client: &tokio_postgres::Client,
    table: &str,
) -> Result<bool, StepError> {
    let row = client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&format!("public.{table}")],
        )
        .await
        .map_err(db("look up a table"))?;
    Ok(row.get(0))
}

pub(crate) async fn column_exists(
    client: &tokio_postgres::Client,
    table: &str,
    column: &str,
) -> Result<bool, StepError> {
    Ok(client
        .query_opt(
            "SELECT 1 FROM information_schema.columns WHERE table_schema = 'public' AND table_name = $1 AND column_name = $2",
            &[&table, &column],
        )
        .await
        .map_err(db("look up a column"))?
        .is_some())
}

/// Every row of `table` as `row_to_json` text (bytea as `\x…`, timestamps to the microsecond), ordered, so that
/// `json_populate_record` gives back exactly the same values.
pub(crate) async fn export_rows(
    tx: &tokio_postgres::Transaction<'_>,
    table: &str,
) -> Result<Vec<String>, StepError> {
    let rows = tx
        .query(
            &format!("SELECT row_to_json(t)::text FROM public.{table} t ORDER BY 1"),
            &[],
        )
        .await
        .map_err(|e| failed(format!("database: export {table}: {e}")))?;
    Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
}

/// [`export_rows`] written to `path` (mode 0600) as they come, one a line, never held whole (`usage_records` has
/// 400,000 rows at 1 GB); the number of rows.
pub(crate) async fn export_table(
    tx: &tokio_postgres::Transaction<'_>,
    table: &str,
    path: &Path,
) -> Result<usize, StepError> {
    use futures::TryStreamExt;
    use std::io::Write;
    let rows = tx
        .query_raw(
            &format!("SELECT row_to_json(t)::text FROM public.{table} t ORDER BY 1"),
            std::iter::empty::<i32>(),
        )
        .await
        .map_err(|e| failed(format!("database: export {table}: {e}")))?;
    futures::pin_mut!(rows);
    let cannot = |e: std::io::Error| failed(format!("cannot write {}: {e}", path.display()));
    let file = crate::files::create_private(path).map_err(cannot)?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut n = 0;
    while let Some(row) = rows
        .try_next()
        .await
        .map_err(|e| failed(format!("database: export {table}: {e}")))?
    {
        out.write_all(row.get::<_, &str>(0).as_bytes())
            .and_then(|()| out.write_all(b"\n"))
            .map_err(cannot)?;
        n += 1;
    }
    out.flush().map_err(cannot)?;
    Ok(n)
}

pub(crate) fn jsonl(lines: &[String]) -> String {
    let mut s = lines.join("\n");
    if !s.is_empty() {
        s.push('\n');
    }
    s
}

/// A fresh `<kind>.partial` directory beside the final one: an export is built and verified there, then renamed.
pub(crate) fn staging(final_dir: &Path) -> Result<PathBuf, StepError> {
    let tmp = final_dir.with_extension("partial");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)
            .map_err(|e| failed(format!("cannot remove {}: {e}", tmp.display())))?;
    }
    if let Some(parent) = final_dir.parent() {
        mkdir(parent, 0o700).map_err(failed)?;
    }
    mkdir(&tmp, 0o700).map_err(failed)?;
    Ok(tmp)
}

pub(crate) fn publish(tmp: &Path, final_dir: &Path) -> Result<(), StepError> {
    if final_dir.exists() {
        let old = final_dir.with_extension("old");
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(final_dir, &old)
            .map_err(|e| failed(format!("cannot move {} aside: {e}", final_dir.display())))?;
        let _ = std::fs::remove_dir_all(&old);
    }
    std::fs::rename(tmp, final_dir).map_err(|e| {
        failed(format!(
            "cannot rename {} to {}: {e}",
            tmp.display(),
            final_dir.display()
        ))
    })
}

pub(crate) async fn preserve_evidence<T: Target>(
    r: &TargetRunner<T>,
    client: &mut tokio_postgres::Client,
    run_dir: &Path,
) -> Result<String, StepError> {
    let dir = preserved_dir(run_dir, Preserve::Evidence);
    if !table_exists(client, "evidence").await? {
        return match tokio::task::block_in_place(|| recheck_evidence(&dir)) {
            Ok(m) => Ok(format!(
                "evidence: table already gone; kept the verified export of {} records in {}",
                m.rows.get("evidence").copied().unwrap_or(0),
                dir.display()
            )),
            Err(why) => Err(fatal(format!(
                "the evidence table is gone and there is no verified export of it ({why}): its data can only come \
                 back from the phase-3 backup"
            ))),
        };
    }
    let tmp = staging(&dir)?;
    let started = std::time::Instant::now();
    let tx = read_snapshot(client, "begin the evidence export").await?;
    let lines = export_rows(&tx, "evidence").await?;
    tx.commit().await.map_err(db("end the evidence export"))?;
    write_private(&tmp.join("rows.jsonl"), jsonl(&lines).as_bytes()).map_err(failed)?;

    let rows_ms = started.elapsed().as_millis();
    let ev_dir = r.target.evidence_dir();
    let pubkey = ev_dir.join(evidence::PUBLIC_KEY_FILE);
    std::fs::copy(&pubkey, tmp.join(evidence::PUBLIC_KEY_FILE)).map_err(|e| {
        fatal(format!(
            "cannot copy the evidence public key {}: {e}",
            pubkey.display()
        ))
    })?;
    let records = tmp.join(evidence::RECORDS_DIR);
    mkdir(&records, 0o700).map_err(failed)?;
    let live = evidence::list_records(&ev_dir.join(evidence::RECORDS_DIR)).map_err(failed)?;
    let mut live_files = 0usize;
    for (id, f) in &live {
        for (ext, p) in [("json", &f.json), ("sig", &f.sig)] {
            if let Some(p) = p {
                let bytes = evidence::read(p).map_err(failed)?;
                write_private(&records.join(format!("{id}.{ext}")), &bytes).map_err(failed)?;
                live_files += 1;
            }
        }
    }
    let copied_ms = started.elapsed().as_millis() - rows_ms;
    let manifest = tokio::task::block_in_place(|| {
        verify_evidence_export(&tmp, Some(lines.len()), Some(live_files))
    })
    .map_err(|why| {
        fatal(format!(
            "the evidence export in {} does not verify: {why}",
            tmp.display()
        ))
    })?;
    write_json(&tmp.join("manifest.json"), &manifest)?;
    publish(&tmp, &dir)?;
    let verified_ms = started.elapsed().as_millis() - rows_ms - copied_ms;
    Ok(format!(
        "evidence: {} records and {} storage files preserved in {}, every signature verified (key {}; rows read \
         in {rows_ms} ms, files copied in {copied_ms} ms, verified in {verified_ms} ms){}",
        lines.len(),
        live_files,
        dir.display(),
        manifest.key_id.as_deref().unwrap_or(""),
        if manifest.notes.is_empty() {
            String::new()
        } else {
            format!(" ({})", manifest.notes.join("; "))
        }
    ))
}

pub(crate) const CONTROL_PLANE_TABLES: [&str; 2] = ["tenant_quotas", "usage_records"];

pub(crate) async fn preserve_control_plane(
    client: &mut tokio_postgres::Client,
    run_dir: &Path,
) -> Result<String, StepError> {
    let dir = preserved_dir(run_dir, Preserve::ControlPlane);
    let mut present = 0;
    for t in CONTROL_PLANE_TABLES {
        present += usize::from(table_exists(client, t).await?);
    }
    if present < CONTROL_PLANE_TABLES.len() {
        let kept =
            read_manifest(&dir).ok_or_else(|| format!("no verified manifest in {}", dir.display()));
        return match kept.and_then(|m| {
            check_hashes(&dir, &m)?;
            verify_table_export(&dir, &m.rows)?;
            Ok(m)
        }) {
            Ok(m) => Ok(format!(
                "control plane: tables already gone; kept the verified export ({}) in {}",
                counts_text(&m.rows),
                dir.display()
            )),
            Err(why) => Err(fatal(format!(
                "the control-plane tables are (partly) gone and there is no verified export of them ({why})"
            ))),
        };
    }
    let tmp = staging(&dir)?;
    let tx = read_snapshot(client, "begin the control-plane export").await?;
    let mut counts = BTreeMap::new();
    for t in CONTROL_PLANE_TABLES {
        let n = export_table(&tx, t, &tmp.join(format!("{t}.jsonl"))).await?;
        counts.insert(t.to_string(), n);
    }
    tx.commit()
        .await
        .map_err(db("end the control-plane export"))?;
    let files = verify_table_export(&tmp, &counts)
        .map_err(|why| fatal(format!("the control-plane export does not verify: {why}")))?;
    let m = Manifest {
        kind: Preserve::ControlPlane.name().into(),
        verified: true,
        verified_at: now(),
        rows: counts.clone(),
        files,
        notes: vec![],
        key_id: None,
    };
    write_json(&tmp.join("manifest.json"), &m)?;
    publish(&tmp, &dir)?;
    Ok(format!(
        "control plane: {} preserved and verified in {}",
        counts_text(&counts),
        dir.display()
    ))
}

pub(crate) fn counts_text(counts: &BTreeMap<String, usize>) -> String {
    counts
        .iter()
        .map(|(t, n)| format!("{n} {t}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TenantMode {
    pub(crate) slug: String,
    pub(crate) isolation_mode: String,
}

pub(crate) async fn preserve_isolation_modes(
    client: &mut tokio_postgres::Client,
    run_dir: &Path,
) -> Result<String, StepError> {
    let dir = preserved_dir(run_dir, Preserve::IsolationModes);
    let file = dir.join("modes.json");
    let kept: Option<BTreeMap<String, TenantMode>> = read_manifest(&dir)
        .filter(|m| check_hashes(&dir, m).is_ok())
        .and_then(|_| serde_json::from_slice(&std::fs::read(&file).ok()?).ok());
    if !column_exists(client, "tenants", "isolation_mode").await? {
        return match kept {
            Some(modes) => Ok(format!(
                "isolation modes: column already gone; kept the verified export of {} tenants",
                modes.len()
            )),
            None => Err(fatal(format!(
                "tenants.isolation_mode is gone and there is no verified export of it in {}",
                dir.display()
            ))),
        };
    }
    // Modes already exported win over the live ones: a retry after tenants were set to basic must not record
    // "basic" as what they had.
    let mut modes = kept.unwrap_or_default();
    let rows = client
        .query(
            "SELECT id::text, slug, isolation_mode FROM tenants ORDER BY slug",
            &[],
        )
        .await
        .map_err(db("read tenants' isolation modes"))?;
    for row in &rows {
        modes.entry(row.get(0)).or_insert(TenantMode {
            slug: row.get(1),
            isolation_mode: row.get(2),
        });
    }
    let tmp = staging(&dir)?;
    let text = serde_json::to_string_pretty(&modes).unwrap_or_default();
    write_private(&tmp.join("modes.json"), text.as_bytes()).map_err(failed)?;
    let back: BTreeMap<String, TenantMode> =
        serde_json::from_slice(&std::fs::read(tmp.join("modes.json")).map_err(failed)?)
            .map_err(fatal)?;
    let missing: Vec<String> = rows
        .iter()
        .map(|r| r.get::<_, String>(0))
        .filter(|id| !back.contains_key(id))
        .collect();
    if !missing.is_empty() {
        return Err(fatal(format!(
            "the isolation-mode export lacks tenants {}",
            missing.join(", ")
        )));
    }
    let mut counts = BTreeMap::new();
    counts.insert("tenants".to_string(), back.len());
    let mut files = BTreeMap::new();
    files.insert("modes.json".to_string(), sha256(text.as_bytes()));
    let m = Manifest {
        kind: Preserve::IsolationModes.name().into(),
        verified: true,
        verified_at: now(),
        rows: counts,
        files,
        notes: vec![],
        key_id: None,
    };
    write_json(&tmp.join("manifest.json"), &m)?;
    publish(&tmp, &dir)?;
    // The runbook's G6 rollback: tenants return to basic isolation before the column goes.
    let n = client
        .execute(
            "UPDATE tenants SET isolation_mode = 'basic' WHERE isolation_mode <> 'basic'",
            &[],
        )
        .await
        .map_err(db("set tenants to basic isolation"))?;
    let advanced = back
        .values()
        .filter(|m| m.isolation_mode != "basic")
        .count();
    Ok(format!(
        "isolation modes of {} tenants preserved ({advanced} not basic); {n} set to basic",
        back.len()
    ))
}

// ---------------------------------------------------------------------------------------------------------------
