//! "Restore from last known good backup": a run's phase-3 backup restored into a new database, proven there by its
//! data, then switched in under the live database's name while the database it replaces is kept under another
//! (`xorbctl restore RUN`, and the emergency procedure `restore-backup`). Design: docs/design/restore.md.
//!
//! Both steps converge: the names of the three databases say how far a crashed attempt got.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use xorb_engine::runner::{StepContext, StepError};

use super::backup::{BackupRecord, backup_path, check_dump};
use super::proof::compare;
use super::snapshot;
use super::*;
use crate::context::{TargetRunner, failed};
use crate::files::mkdir;
use crate::target::Target;

/// PostgreSQL's limit on identifiers.
const NAME_MAX: usize = 63;

/// A role the backed-up database refers to (owner, grantee, policy role), with the roles that are members of it.
/// Roles are the cluster's, not the database's: `pg_dump` leaves them out, and rc1's G6 downgrade drops
/// `xorb_tenant`, so a dump of rc1 does not restore whole without them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RoleRecord {
    pub name: String,
    pub login: bool,
    pub members: Vec<String>,
}

/// `<run>/db/roles.json`, taken with the backup.
pub fn roles_path(run_dir: &Path) -> PathBuf {
    run_dir.join("db").join("roles.json")
}

/// The roles the database refers to, as the cluster has them now.
pub(crate) async fn read_roles(
    client: &tokio_postgres::Client,
) -> Result<Vec<RoleRecord>, StepError> {
    let rows = client
        .query(
            "WITH used(oid) AS ( \
                 SELECT relowner FROM pg_class \
                 UNION SELECT (aclexplode(relacl)).grantee FROM pg_class WHERE relacl IS NOT NULL \
                 UNION SELECT unnest(polroles) FROM pg_policy \
                 UNION SELECT nspowner FROM pg_namespace WHERE nspname !~ '^(pg_|information_schema)' \
                 UNION SELECT (aclexplode(nspacl)).grantee FROM pg_namespace \
                       WHERE nspacl IS NOT NULL AND nspname !~ '^(pg_|information_schema)' \
             ) \
             SELECT r.rolname::text, r.rolcanlogin, \
                    ARRAY(SELECT m.rolname::text FROM pg_auth_members am JOIN pg_roles m ON m.oid = am.member \
                          WHERE am.roleid = r.oid ORDER BY 1) \
             FROM pg_roles r JOIN (SELECT DISTINCT oid FROM used) u ON u.oid = r.oid \
             WHERE r.rolname !~ '^pg_' ORDER BY 1",
            &[],
        )
        .await
        .map_err(db("read the roles the database refers to"))?;
    Ok(rows
        .iter()
        .map(|r| RoleRecord {
            name: r.get(0),
            login: r.get(1),
            members: r.get(2),
        })
        .collect())
}

/// Creates the roles of `roles` the cluster lacks (without login: a login role needs a password, which is not
/// ours to invent) and grants their memberships again. Returns what it did, in words.
async fn ensure_roles(
    admin: &tokio_postgres::Client,
    roles: &[RoleRecord],
) -> Result<Vec<String>, StepError> {
    let exists = |name: String| async move {
        admin
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&name])
            .await
            .map(|r| r.is_some())
            .map_err(db("look up a role"))
    };
    let mut did = Vec::new();
    for role in roles {
        if !exists(role.name.clone()).await? {
            if role.login {
                return Err(fatal(format!(
                    "the backup's objects belong to the login role {:?}, which this cluster does not have: \
                     create it (with its password) and run the restore again; nothing was switched",
                    role.name
                )));
            }
            admin
                .batch_execute(&format!("CREATE ROLE {} NOLOGIN", quote_ident(&role.name)))
                .await
                .map_err(db("create a role the backup needs"))?;
            did.push(format!("created role {}", role.name));
        }
        for member in &role.members {
            let granted = admin
                .query_opt(
                    "SELECT 1 FROM pg_auth_members am JOIN pg_roles r ON r.oid = am.roleid \
                     JOIN pg_roles m ON m.oid = am.member WHERE r.rolname = $1 AND m.rolname = $2",
                    &[&role.name, member],
                )
                .await
                .map_err(db("look up a role membership"))?
                .is_some();
            if !granted && exists(member.clone()).await? {
                admin
                    .batch_execute(&format!(
                        "GRANT {} TO {}",
                        quote_ident(&role.name),
                        quote_ident(member)
                    ))
                    .await
                    .map_err(db("grant a role membership the backup needs"))?;
                did.push(format!("granted {} to {member}", role.name));
            }
        }
    }
    Ok(did)
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The restored database's name while it waits to be switched in: `<db>_restored_<run>`.
pub fn restored_name(live_db: &str, run_id: &str) -> Result<String, StepError> {
    db_name(live_db, "restored", run_id)
}

/// The replaced database's name, kept for the post-mortem: `<db>_replaced_<run>`.
pub fn replaced_name(live_db: &str, run_id: &str) -> Result<String, StepError> {
    db_name(live_db, "replaced", run_id)
}

fn db_name(live_db: &str, what: &str, run_id: &str) -> Result<String, StepError> {
    let id: String = run_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let name = format!("{live_db}_{what}_{id}");
    if name.len() > NAME_MAX {
        return Err(fatal(format!(
            "the {what} database's name {name:?} is longer than PostgreSQL's {NAME_MAX} bytes"
        )));
    }
    Ok(name)
}

/// `<restore run>/db/restore-proof.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RestoreProof {
    pub source_run: String,
    pub database: String,
    pub dump_sha256: String,
    /// The backup's schema revision.
    pub revision: Option<String>,
    pub snapshot_taken_at: String,
    pub tables: usize,
    pub rows: u64,
    pub restore_ms: u64,
    pub scan_ms: u64,
    pub roles: Vec<String>,
    /// Empty when proven.
    pub differences: Vec<String>,
}

pub fn restore_proof_path(run_dir: &Path) -> PathBuf {
    run_dir.join("db").join("restore-proof.json")
}

/// The run directory of `source_run`, which must be a run id (a name, never a path).
fn source_dir<T: Target>(r: &TargetRunner<T>, source_run: &str) -> Result<PathBuf, StepError> {
    if source_run.is_empty()
        || source_run.starts_with('.')
        || !source_run
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(fatal(format!("{source_run:?} is not a run id")));
    }
    Ok(r.state_dir.join("runs").join(source_run))
}

/// The backup of `source_run`, intact, with the snapshot taken with it.
async fn load_backup(
    dir: &Path,
    source_run: &str,
) -> Result<(BackupRecord, xorb_integrity::FullReport), StepError> {
    let record_path = dir.join("db").join("backup.json");
    let rec: BackupRecord = std::fs::read(&record_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| {
            fatal(format!(
                "run {source_run} has no backup to restore: {} is missing or unreadable (its phase 3 takes it)",
                record_path.display()
            ))
        })?;
    let dump = backup_path(dir);
    check_dump(&dump, &rec).await.map_err(|why| {
        fatal(format!(
            "the backup of run {source_run} cannot be restored: {why}"
        ))
    })?;
    snapshot::snapshot_of(dir, rec.snapshot_taken_at.as_deref()).map_err(|why| {
        fatal(format!(
            "the backup of run {source_run} cannot be proven after a restore: {why}"
        ))
    })?;
    let snapshot = snapshot::read_full_report(dir).map_err(fatal)?;
    Ok((rec, snapshot))
}

async fn database_exists(admin: &tokio_postgres::Client, name: &str) -> Result<bool, StepError> {
    Ok(admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .map_err(db("look up a database"))?
        .is_some())
}

/// Restores `source_run`'s backup into `<db>_restored_<this run>`, creating the roles it needs, and proves it: every
/// table's checksum equal to the snapshot's. A database already restored and proven is kept.
pub async fn restore<T: Target>(
    r: &TargetRunner<T>,
    source_run: &str,
    ctx: &StepContext<'_>,
) -> Result<String, StepError> {
    let dir = source_dir(r, source_run)?;
    let (rec, snapshot) = load_backup(&dir, source_run).await?;
    let conn = r.pg()?;
    let target_db = restored_name(&conn.dbname, ctx.run_id)?;
    let admin = connect(&conn.with_db("postgres")).await?;
    let proof_path = restore_proof_path(ctx.run_dir);
    mkdir(&ctx.run_dir.join("db"), 0o700).map_err(failed)?;

    if let Some(done) = std::fs::read(&proof_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<RestoreProof>(&b).ok())
        .filter(|p| p.differences.is_empty() && p.dump_sha256 == rec.sha256)
        && database_exists(&admin, &target_db).await?
    {
        return Ok(format!(
            "kept database {target_db}, restored from run {source_run}'s backup and proven: {} tables, {} rows \
             with the snapshot's checksums",
            done.tables, done.rows
        ));
    }

    // Roles recorded with the backup (absent for backups of older versions: pg_restore then names what is missing).
    let roles: Vec<RoleRecord> = std::fs::read(roles_path(&dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let role_changes = ensure_roles(&admin, &roles).await?;

    // An earlier attempt cut off leaves a half-restored database: start again from empty.
    // Two statements: a multi-statement string runs as one transaction, which CREATE DATABASE refuses.
    admin
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(&target_db)
        ))
        .await
        .map_err(db("drop a half-restored database"))?;
    admin
        .batch_execute(&format!("CREATE DATABASE {}", quote_ident(&target_db)))
        .await
        .map_err(db("create the database to restore into"))?;
    let started = std::time::Instant::now();
    let target = conn.with_db(&target_db);
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let dump = backup_path(&dir);
    let mut cmd = tokio::process::Command::new(pg_tool("pg_restore"));
    // Owners and grants this time: the services' tenant role (`xorb_tenant`) needs its privileges back.
    cmd.args(["--exit-on-error", "--no-password"])
        .arg(format!("--jobs={jobs}"))
        .arg(format!("--dbname={target_db}"))
        .arg(&dump);
    target.env(&mut cmd);
    let out = output(cmd, "pg_restore").await?;
    if !out.status.success() {
        return Err(fatal(format!(
            "the backup of run {source_run} does not restore into {target_db}: {}; nothing was switched",
            last_line(&target.redact(&String::from_utf8_lossy(&out.stderr)))
        )));
    }
    let restore_ms = started.elapsed().as_millis() as u64;
    let restored = xorb_integrity::full(&target.config(), &xorb_integrity::ScanOptions::default())
        .await
        .map_err(failed)?;
    let proof = RestoreProof {
        source_run: source_run.to_string(),
        database: target_db.clone(),
        dump_sha256: rec.sha256.clone(),
        revision: rec.revision.clone(),
        snapshot_taken_at: snapshot.taken_at.clone(),
        tables: restored.tables.len(),
        rows: restored.tables.iter().map(|t| t.rows).sum(),
        restore_ms,
        scan_ms: restored.elapsed_ms,
        roles: role_changes,
        differences: compare(&snapshot, &restored.tables),
    };
    write_json(&proof_path, &proof)?;
    if !proof.differences.is_empty() {
        let _ = admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                quote_ident(&target_db)
            ))
            .await;
        return Err(fatal(format!(
            "run {source_run}'s backup restored into {target_db} does not hold the snapshot's data: {}; the \
             database was dropped and nothing was switched (proof: {})",
            proof.differences[..proof.differences.len().min(8)].join("; "),
            proof_path.display()
        )));
    }
    Ok(format!(
        "restored run {source_run}'s backup (revision {}) into {target_db} in {restore_ms} ms{}: {} tables and \
         {} rows with the same checksums as the snapshot of {} (scanned in {} ms)",
        rec.revision.as_deref().unwrap_or("none"),
        if proof.roles.is_empty() {
            String::new()
        } else {
            format!(" ({})", proof.roles.join(", "))
        },
        proof.tables,
        proof.rows,
        proof.snapshot_taken_at,
        proof.scan_ms
    ))
}

/// Renames `from` to `to` once nothing is connected to `from`; connections are refused meanwhile.
async fn rename(admin: &tokio_postgres::Client, from: &str, to: &str) -> Result<(), StepError> {
    let (qf, qt) = (quote_ident(from), quote_ident(to));
    admin
        .batch_execute(&format!("ALTER DATABASE {qf} WITH ALLOW_CONNECTIONS false"))
        .await
        .map_err(db("refuse new connections to the database to rename"))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&from],
            )
            .await
            .map_err(db("disconnect the sessions of the database to rename"))?;
        match admin
            .batch_execute(&format!("ALTER DATABASE {qf} RENAME TO {qt}"))
            .await
        {
            Ok(()) => break,
            // A terminated backend takes a moment to go: "is being accessed by other users".
            Err(e)
                if e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE)
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(db("rename a database")(e)),
        }
    }
    admin
        .batch_execute(&format!("ALTER DATABASE {qt} WITH ALLOW_CONNECTIONS true"))
        .await
        .map_err(db("allow connections to the renamed database again"))
}

/// The services stopped, the live database renamed to `<db>_replaced_<run>`, the restored one renamed into its
/// place, the services started again and healthy.
pub async fn switch<T: Target>(
    r: &TargetRunner<T>,
    source_run: &str,
    ctx: &StepContext<'_>,
    timeout: Duration,
) -> Result<String, StepError> {
    let conn = r.pg()?;
    let live_db = conn.dbname.clone();
    let restored = restored_name(&live_db, ctx.run_id)?;
    let replaced = replaced_name(&live_db, ctx.run_id)?;
    let admin = connect(&conn.with_db("postgres")).await?;
    let has_restored = database_exists(&admin, &restored).await?;
    let has_replaced = database_exists(&admin, &replaced).await?;
    let has_live = database_exists(&admin, &live_db).await?;
    let mut did = Vec::new();
    if has_restored {
        // The services let go of the database first: a rename needs it unused, and they must not write into
        // the database being replaced after it was set aside.
        let live = r.target.observe().await?;
        for s in &live.services {
            r.target.stop_workload(&s.name).await?;
        }
        did.push("stopped the services".to_string());
        if has_live {
            if has_replaced {
                return Err(fatal(format!(
                    "{replaced} already exists while {restored} waits to be switched in: an earlier restore of \
                     this run left it; look at both before going on, nothing was switched"
                )));
            }
            rename(&admin, &live_db, &replaced).await?;
            did.push(format!("kept the replaced database as {replaced}"));
        }
        rename(&admin, &restored, &live_db).await?;
        did.push(format!(
            "switched {live_db} to the restored backup of run {source_run}"
        ));
    } else if !(has_live && has_replaced) {
        return Err(fatal(format!(
            "there is no restored database {restored} to switch to (the restore step makes it); nothing was \
             switched"
        )));
    }
    // What the source run preserved is in the live database again: nothing of it is left to re-import.
    super::reimport::record_restored(ctx.run_dir, source_run)?;
    // Every recorded service runs again as recorded (a resumed switch starts what an earlier attempt stopped).
    let live = r.target.observe().await?;
    let mut started = Vec::new();
    for s in &live.services {
        if !r
            .target
            .converged(&s.name, &s.release, Some(&s.config))
            .await?
        {
            r.target
                .set_workload(&s.name, &s.image, &s.config, timeout)
                .await?;
            started.push(s.name.clone());
        }
    }
    if !started.is_empty() {
        did.push(format!("started {} again, healthy", started.join(", ")));
    }
    if did.is_empty() {
        did.push(format!(
            "{live_db} already holds the restored backup of run {source_run} ({replaced} kept) and every service runs"
        ));
    }
    Ok(did.join("; "))
}

/// The emergency procedure of a run whose phase 3 or 4 failed: its own backup restored and switched in. Nothing is
/// restored when no proven backup exists (nothing destructive ran before the proof) or when the schema is still
/// the backup's (a failed migration rolls back whole).
pub async fn emergency<T: Target>(
    r: &TargetRunner<T>,
    ctx: &StepContext<'_>,
) -> Result<String, StepError> {
    let proven = std::fs::read(ctx.run_dir.join("db").join("backup-proof.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<super::proof::BackupProof>(&b).ok())
        .is_some_and(|p| p.differences.is_empty());
    if !proven {
        return Ok(
            "nothing restored: this run has no proven backup yet, and nothing destructive runs before the proof"
                .into(),
        );
    }
    let rec: Option<BackupRecord> = std::fs::read(ctx.run_dir.join("db").join("backup.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let conn = r.pg()?;
    let admin = connect(&conn.with_db("postgres")).await?;
    let restored_db = database_exists(&admin, &restored_name(&conn.dbname, ctx.run_id)?).await?;
    let replaced_db = replaced_name(&conn.dbname, ctx.run_id)?;
    if !restored_db && database_exists(&admin, &replaced_db).await? {
        // Switched already (this procedure ran before, or a resume failed again): never restore twice, which
        // would set aside the restored data; only make sure the services run.
        let switched = switch(r, ctx.run_id, ctx, Duration::from_secs(120)).await?;
        return Ok(format!(
            "the database already holds this run's backup ({replaced_db} kept): {switched}. Start a new rollback \
             rather than resuming this run"
        ));
    }
    let live = live_revision(&conn).await?;
    if !restored_db && rec.as_ref().is_some_and(|rec| rec.revision == live) {
        return Ok(format!(
            "nothing restored: the schema is still at {}, as backed up (a failed migration rolls back whole)",
            live.as_deref().unwrap_or("none")
        ));
    }
    let restored = restore(r, ctx.run_id, ctx).await?;
    let switched = switch(r, ctx.run_id, ctx, Duration::from_secs(120)).await?;
    Ok(format!(
        "{restored}; {switched}. This run's remaining steps expect the database it replaced: start a new \
         rollback rather than resuming it"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_databases_of_a_restore_are_named_after_the_run_and_fit_postgres() {
        assert_eq!(
            restored_name("xorb", "20261201-060557-7794").unwrap(),
            "xorb_restored_20261201_060557_7794"
        );
        assert_eq!(
            replaced_name("xorb", "20261201-060557-7794").unwrap(),
            "xorb_replaced_20261201_060557_7794"
        );
        // Nothing of a run id reaches SQL but letters, digits and underscores.
        assert_eq!(
            restored_name("xorb", "a\"b; DROP").unwrap(),
            "xorb_restored_a_b__DROP"
        );
        let long = "x".repeat(50);
        let e = replaced_name(&long, "20261201-060557-7794").unwrap_err();
        assert!(
            e.to_string().contains("longer than PostgreSQL's 63 bytes"),
            "{e}"
        );
    }

    #[test]
    fn identifiers_are_quoted_with_their_quotes_doubled() {
        assert_eq!(quote_ident("xorb_tenant"), "\"xorb_tenant\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
