//! Roll-forward: data preserved by an earlier rollback imported back, each kind once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use xorb_engine::planner::ReimportSource;
use xorb_engine::runner::{StepContext, StepError};
use xorb_model::plan::Preserve;

use super::export::{
    check_hashes, read_evidence_rows, read_manifest, recheck_evidence, verify_table_export,
};
use super::preserve::{CONTROL_PLANE_TABLES, TenantMode, column_exists, table_exists};
use super::*;
use crate::context::{TargetRunner, failed};
use crate::evidence::{self, Verifier};
use crate::files::mkdir;
use crate::target::Target;

pub(crate) const PRESERVED_KINDS: [Preserve; 3] = [
    Preserve::Evidence,
    Preserve::ControlPlane,
    Preserve::IsolationModes,
];

/// What one re-import recorded (`<run>/reimport-<source>.json`; before kinds were recorded, `reimport.json` meant
/// every kind of its source).
#[derive(Debug, Deserialize)]
pub(crate) struct ReimportRecord {
    source_run: String,
    #[serde(default)]
    kinds: Option<Vec<String>>,
}

/// The preserved data a roll-forward must re-import: every verified export under `runs/*/preserved/` that no
/// re-import has taken yet, grouped by run, oldest first. Never "the newest run" alone: after a lost journal, two
/// rollbacks may each hold part of what the schema lost (G8's control plane in one, G7's evidence in the other).
pub fn pending_reimports(state_dir: &Path) -> Vec<ReimportSource> {
    let runs_dir = state_dir.join("runs");
    let runs = xorb_engine::disk_runs::run_dirs(state_dir);
    let mut done: BTreeSet<(String, String)> = BTreeSet::new();
    for run in &runs {
        let Ok(rd) = std::fs::read_dir(runs_dir.join(run)) else {
            continue;
        };
        for e in rd.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            if !(name == "reimport.json"
                || name.starts_with("reimport-") && name.ends_with(".json"))
            {
                continue;
            }
            let Some(rec) = std::fs::read(e.path())
                .ok()
                .and_then(|b| serde_json::from_slice::<ReimportRecord>(&b).ok())
            else {
                continue;
            };
            let kinds = rec.kinds.unwrap_or_else(|| {
                PRESERVED_KINDS
                    .iter()
                    .map(|k| k.name().to_string())
                    .collect()
            });
            for k in kinds {
                done.insert((rec.source_run.clone(), k));
            }
        }
    }
    // (oldest verification, run, pending kinds, every kind the run holds)
    let mut pending: Vec<(String, String, Vec<Preserve>, usize)> = Vec::new();
    for run in &runs {
        let pres = runs_dir.join(run).join("preserved");
        let mut oldest: Option<String> = None;
        let mut kinds = Vec::new();
        let mut held = 0;
        for k in PRESERVED_KINDS {
            let Some(m) = read_manifest(&pres.join(k.name())) else {
                continue;
            };
            held += 1;
            if done.contains(&(run.clone(), k.name().to_string())) {
                continue;
            }
            if oldest.as_ref().is_none_or(|o| m.verified_at < *o) {
                oldest = Some(m.verified_at.clone());
            }
            kinds.push(k);
        }
        if let Some(at) = oldest {
            pending.push((at, run.clone(), kinds, held));
        }
    }
    pending.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    pending
        .into_iter()
        .map(|(_, run, kinds, held)| ReimportSource {
            run,
            kinds: if kinds.len() == held {
                Vec::new()
            } else {
                kinds
            },
        })
        .collect()
}

pub(crate) async fn reimport_evidence<T: Target>(
    r: &TargetRunner<T>,
    client: &mut tokio_postgres::Client,
    dir: &Path,
) -> Result<String, StepError> {
    tokio::task::block_in_place(|| recheck_evidence(dir)).map_err(|why| {
        fatal(format!(
            "the preserved evidence in {} does not verify: {why}",
            dir.display()
        ))
    })?;
    if !table_exists(client, "evidence").await? {
        return Err(fatal(
            "the database has no evidence table: re-import needs the newer schema (upgrade first)",
        ));
    }
    let rows = read_evidence_rows(dir).map_err(fatal)?;
    let ev_dir = r.target.evidence_dir();
    let live_key = ev_dir.join(evidence::PUBLIC_KEY_FILE);
    let preserved_key =
        std::fs::read_to_string(dir.join(evidence::PUBLIC_KEY_FILE)).map_err(fatal)?;
    let v = Verifier::from_pem(&preserved_key).map_err(fatal)?;
    match std::fs::read_to_string(&live_key) {
        Ok(k) if k != preserved_key => {
            return Err(fatal(format!(
                "the evidence public key {} is not the one the preserved records were signed with (key {}): \
                 re-importing them would leave records that do not verify with the live key",
                live_key.display(),
                v.key_id()
            )));
        }
        Ok(_) => {}
        Err(_) => {
            mkdir(&ev_dir, 0o700).map_err(failed)?;
            std::fs::write(&live_key, &preserved_key).map_err(failed)?;
        }
    }
    let records = ev_dir.join(evidence::RECORDS_DIR);
    mkdir(&records, 0o700).map_err(failed)?;
    let src = dir.join(evidence::RECORDS_DIR);
    let mut files_written = 0;
    for (id, f) in evidence::list_records(&src).map_err(failed)? {
        for (ext, p) in [("json", f.json), ("sig", f.sig)] {
            let Some(p) = p else { continue };
            let bytes = evidence::read(&p).map_err(failed)?;
            let target = records.join(format!("{id}.{ext}"));
            match std::fs::read(&target) {
                Ok(existing) if existing == bytes => {}
                Ok(_) => {
                    return Err(fatal(format!(
                        "{} exists with other bytes than the preserved record: left as it is, re-import stopped",
                        target.display()
                    )));
                }
                Err(_) => {
                    // Same mode as the platform's own record files.
                    let tmp = records.join(format!(".reimport-{id}.{ext}"));
                    std::fs::write(&tmp, &bytes).map_err(failed)?;
                    std::fs::rename(&tmp, &target).map_err(failed)?;
                    files_written += 1;
                }
            }
        }
    }
    let tx = client
        .transaction()
        .await
        .map_err(db("begin the evidence re-import"))?;
    let mut inserted = 0u64;
    let mut orphaned = Vec::new();
    for row in &rows {
        let n = tx
            .execute(
                "INSERT INTO evidence SELECT * FROM json_populate_record(NULL::evidence, $1::text::json) \
                 WHERE EXISTS (SELECT 1 FROM findings WHERE id = $2::text::uuid) ON CONFLICT (id) DO NOTHING",
                &[&row.line, &row.finding_id],
            )
            .await
            .map_err(db("re-import an evidence row"))?;
        inserted += n;
        if n == 0 {
            let present = tx
                .query_opt(
                    "SELECT 1 FROM evidence WHERE id = $1::text::uuid",
                    &[&row.id],
                )
                .await
                .map_err(db("look up an evidence row"))?
                .is_some();
            if !present {
                orphaned.push(row.id.clone());
            }
        }
    }
    tx.commit()
        .await
        .map_err(db("commit the evidence re-import"))?;
    // After: what is in the database now verifies and is byte for byte what was preserved.
    let mut bad = Vec::new();
    for row in rows.iter().filter(|r| !orphaned.contains(&r.id)) {
        let got = client
            .query_one(
                "SELECT payload, signature FROM evidence WHERE id = $1::text::uuid",
                &[&row.id],
            )
            .await
            .map_err(db("read back an evidence row"))?;
        let (p, s): (Vec<u8>, Vec<u8>) = (got.get(0), got.get(1));
        if p != row.payload || s != row.signature || !v.verify(&p, &s) {
            bad.push(row.id.clone());
        }
    }
    if !bad.is_empty() {
        return Err(fatal(format!(
            "evidence rows differ from the preserved ones or do not verify after re-import: {}",
            bad.join(", ")
        )));
    }
    let check = evidence::verify_dir(&records, &v).map_err(failed)?;
    if let Some(p) = check.problems.first() {
        return Err(fatal(format!("after re-import: {p}")));
    }
    let mut s = format!(
        "evidence: {} of {} preserved rows inserted ({} already present), {files_written} files restored; every record verifies",
        inserted,
        rows.len(),
        rows.len() as u64 - inserted - orphaned.len() as u64
    );
    if !orphaned.is_empty() {
        s.push_str(&format!(
            "; {} not re-imported because their findings no longer exist: {}",
            orphaned.len(),
            orphaned.join(", ")
        ));
    }
    Ok(s)
}

pub(crate) async fn reimport_control_plane(
    client: &mut tokio_postgres::Client,
    dir: &Path,
) -> Result<String, StepError> {
    let m = read_manifest(dir)
        .ok_or_else(|| fatal(format!("no verified manifest in {}", dir.display())))?;
    check_hashes(dir, &m)
        .and_then(|_| verify_table_export(dir, &m.rows))
        .map_err(|why| {
            fatal(format!(
                "the preserved control-plane data does not verify: {why}"
            ))
        })?;
    for t in CONTROL_PLANE_TABLES {
        if !table_exists(client, t).await? {
            return Err(fatal(format!(
                "the database has no {t} table: re-import needs the newer schema (upgrade first)"
            )));
        }
    }
    let tx = client
        .transaction()
        .await
        .map_err(db("begin the control-plane re-import"))?;
    let mut parts = Vec::new();
    for t in CONTROL_PLANE_TABLES {
        let text = std::fs::read_to_string(dir.join(format!("{t}.jsonl"))).map_err(fatal)?;
        let (fk, key) = match t {
            "tenant_quotas" => ("tenant_id", "tenant_id"),
            _ => ("tenant_id", "id"),
        };
        // Quotas reference tenants; usage records carry a tenant id without a foreign key but are kept only for
        // tenants that still exist, the same rule.
        let sql = format!(
            "INSERT INTO {t} SELECT * FROM json_populate_record(NULL::{t}, $1::text::json) r \
             WHERE EXISTS (SELECT 1 FROM tenants WHERE id = r.{fk}) ON CONFLICT ({key}) DO NOTHING"
        );
        let mut n = 0u64;
        let total = text.lines().count();
        for line in text.lines() {
            n += tx
                .execute(&sql, &[&line])
                .await
                .map_err(db("re-import a control-plane row"))?;
        }
        parts.push(format!("{n} of {total} {t}"));
    }
    // usage_records.id is a bigserial: the sequence must not hand out ids that were re-imported.
    tx.batch_execute(
        "SELECT setval(pg_get_serial_sequence('usage_records', 'id'), \
         greatest((SELECT max(id) FROM usage_records), 1))",
    )
    .await
    .map_err(db("advance the usage_records sequence"))?;
    tx.commit()
        .await
        .map_err(db("commit the control-plane re-import"))?;
    Ok(format!("control plane: inserted {}", parts.join(", ")))
}

pub(crate) async fn reimport_isolation_modes(
    client: &mut tokio_postgres::Client,
    dir: &Path,
) -> Result<String, StepError> {
    let m = read_manifest(dir)
        .ok_or_else(|| fatal(format!("no verified manifest in {}", dir.display())))?;
    check_hashes(dir, &m).map_err(fatal)?;
    let modes: BTreeMap<String, TenantMode> =
        serde_json::from_slice(&std::fs::read(dir.join("modes.json")).map_err(fatal)?)
            .map_err(fatal)?;
    if !column_exists(client, "tenants", "isolation_mode").await? {
        return Err(fatal(
            "tenants.isolation_mode does not exist: re-import needs the newer schema (upgrade first)",
        ));
    }
    let tx = client
        .transaction()
        .await
        .map_err(db("begin restoring isolation modes"))?;
    let mut restored = 0;
    for (id, mode) in &modes {
        restored += tx
            .execute(
                "UPDATE tenants SET isolation_mode = $2 WHERE id = $1::text::uuid",
                &[id, &mode.isolation_mode],
            )
            .await
            .map_err(db("restore an isolation mode"))?;
    }
    tx.commit()
        .await
        .map_err(db("commit the isolation modes"))?;
    Ok(format!(
        "isolation modes: {restored} of {} tenants restored",
        modes.len()
    ))
}

pub async fn reimport<T: Target>(
    r: &TargetRunner<T>,
    source_run: &str,
    kinds: &[Preserve],
    ctx: &StepContext<'_>,
) -> Result<String, StepError> {
    let wanted = |k: Preserve| kinds.is_empty() || kinds.contains(&k);
    if source_run.is_empty() || source_run.contains('/') || source_run.starts_with('.') {
        return Err(fatal(format!("{source_run:?} is not a run id")));
    }
    let src = r.state_dir.join("runs").join(source_run).join("preserved");
    if !src.is_dir() {
        return Err(fatal(format!(
            "run {source_run} preserved nothing: {} does not exist",
            src.display()
        )));
    }
    let conn = r.pg()?;
    let mut client = connect(&conn).await?;
    let mut parts = Vec::new();
    // Control plane before evidence is irrelevant to foreign keys; isolation modes last so that a failure earlier
    // leaves tenants on basic (which every release supports) rather than half restored.
    let mut taken = Vec::new();
    let ev = preserved_dir_in(&src, Preserve::Evidence);
    if wanted(Preserve::Evidence) && ev.is_dir() {
        parts.push(reimport_evidence(r, &mut client, &ev).await?);
        taken.push(Preserve::Evidence.name());
    }
    let cp = preserved_dir_in(&src, Preserve::ControlPlane);
    if wanted(Preserve::ControlPlane) && cp.is_dir() {
        parts.push(reimport_control_plane(&mut client, &cp).await?);
        taken.push(Preserve::ControlPlane.name());
    }
    let im = preserved_dir_in(&src, Preserve::IsolationModes);
    if wanted(Preserve::IsolationModes) && im.is_dir() {
        parts.push(reimport_isolation_modes(&mut client, &im).await?);
        taken.push(Preserve::IsolationModes.name());
    }
    if parts.is_empty() {
        return Err(fatal(format!("{} holds no preserved data", src.display())));
    }
    mkdir(ctx.run_dir, 0o700).map_err(failed)?;
    // One record per source: a run may re-import from several, and the next plan skips what is recorded here.
    write_json(
        &ctx.run_dir.join(format!("reimport-{source_run}.json")),
        &serde_json::json!({"source_run": source_run, "kinds": taken, "results": parts, "at": now()}),
    )?;
    Ok(format!("from run {source_run}: {}", parts.join("; ")))
}

/// After `source_run`'s backup was restored, the database holds again everything that run preserved: recorded as
/// re-imported (in `run_dir`, the restoring run's), so that a roll-forward does not insert it a second time.
pub(crate) fn record_restored(run_dir: &Path, source_run: &str) -> Result<(), StepError> {
    mkdir(run_dir, 0o700).map_err(failed)?;
    write_json(
        &run_dir.join(format!("reimport-{source_run}.json")),
        &serde_json::json!({
            "source_run": source_run,
            "results": ["the whole database restored from the run's backup"],
            "at": now(),
        }),
    )
}

pub(crate) fn preserved_dir_in(preserved: &Path, p: Preserve) -> PathBuf {
    preserved.join(p.name())
}

// ---------------------------------------------------------------------------------------------------------------
