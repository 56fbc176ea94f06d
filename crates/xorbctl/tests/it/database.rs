//! Phase 3 on the local target, step by step, against a real rc1 stack with demo data: the functions of
//! `xorb_local::database` called as the runner calls them, checked with independent tools (pg_restore, openssl,
//! sha256 computed here).

use std::path::{Path, PathBuf};
use std::process::Command;

use xorb_adapters::pg::{self as database, MigrateStep};
use xorb_engine::runner::{Probe, StepContext};
use xorb_local::stack::Paths;
use xorb_local::target::LocalRunner;
use xorb_model::plan::{MigrationDirection, Preserve};
use xorb_model::release::Release;

use crate::common::{Stack, hex_sha256, repo, svc_bin, text, venv};

const RC1: &str = "v2025.08-rc1";
const STABLE: &str = "v2025.07-stable";

fn runner(stack: &Stack, releases_root: &Path, to: &str) -> LocalRunner {
    xorb_local::target::runner(
        &stack.dir,
        Paths {
            releases_root: releases_root.to_path_buf(),
            venv: venv(),
            svc_bin: svc_bin(),
        },
        Release::load_named(releases_root, to).unwrap(),
    )
}

struct Run {
    id: String,
    dir: PathBuf,
}

impl Run {
    fn new(stack: &Stack, id: &str) -> Run {
        let dir = stack.dir.join("runs").join(id);
        std::fs::create_dir_all(&dir).unwrap();
        Run {
            id: id.to_string(),
            dir,
        }
    }

    fn ctx<'a>(&'a self, from: &'a str, to: &'a str) -> StepContext<'a> {
        StepContext {
            run_id: &self.id,
            step_id: "it-database",
            run_dir: &self.dir,
            from,
            to,
            index: 0,
            attempt: 1,
        }
    }
}

fn step<'a>(rev: &'a str, to: &'a str, preserve: &'a [Preserve]) -> MigrateStep<'a> {
    MigrateStep {
        revision: rev,
        to_revision: to,
        direction: MigrationDirection::Down,
        data_migration: None,
        preserve,
        timeout: std::time::Duration::from_secs(300),
    }
}

async fn count(stack: &Stack, sql: &str) -> i64 {
    stack.pg().await.query_one(sql, &[]).await.unwrap().get(0)
}

async fn revision(stack: &Stack) -> String {
    stack
        .pg()
        .await
        .query_one("SELECT version_num FROM alembic_version", &[])
        .await
        .unwrap()
        .get(0)
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().filter_map(Result::ok) {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn assert_no_secret(stack: &Stack, dir: &Path) {
    let pw = stack.secret("db-password");
    for f in files_under(dir) {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !bytes.windows(pw.len()).any(|w| w == pw.as_bytes()),
            "{} contains the database password",
            f.display()
        );
    }
}

/// openssl, not our code, says whether a record verifies.
fn openssl_verifies(pubkey: &Path, json: &Path, sig: &Path) -> bool {
    let out = Command::new("openssl")
        .args(["pkeyutl", "-verify", "-pubin", "-inkey"])
        .arg(pubkey)
        .arg("-rawin")
        .arg("-in")
        .arg(json)
        .arg("-sigfile")
        .arg(sig)
        .output()
        .unwrap();
    out.status.success()
        && String::from_utf8_lossy(&out.stdout).contains("Signature Verified Successfully")
}

/// `alembic ARGS` with the repository's migrations, password by environment.
fn alembic(stack: &Stack, migrations: &Path, args: &[&str]) -> std::process::Output {
    Command::new(venv().join("bin/alembic"))
        .arg("-c")
        .arg(migrations.join("alembic.ini"))
        .args(args)
        .env("DATABASE_URL", stack.database_url("xorb"))
        .output()
        .unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    let out = Command::new("cp")
        .arg("-r")
        .arg(from)
        .arg(to)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

/// A releases root whose stable release has its own migrations directory without rc1's revision files (as an
/// older image would), and whose rc1 release points at the repository's migrations.
fn releases_without_rc1_scripts() -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let releases = root.path().join("releases");
    std::fs::create_dir_all(&releases).unwrap();
    let stable_migrations = root.path().join("stable-migrations");
    copy_dir(&repo().join("migrations"), &stable_migrations);
    for e in std::fs::read_dir(stable_migrations.join("versions"))
        .unwrap()
        .filter_map(Result::ok)
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if ["6b7e0a1", "7c8f1b2", "8d9a2c3"]
            .iter()
            .any(|r| name.starts_with(r))
            || name == "__pycache__"
        {
            let p = e.path();
            if p.is_dir() {
                std::fs::remove_dir_all(p).unwrap();
            } else {
                std::fs::remove_file(p).unwrap();
            }
        }
    }
    // Every path a release names stays inside the tree holding releases/: rc1 gets its own copy of the
    // repository's migrations there, stable the reduced one.
    copy_dir(&repo().join("migrations"), &root.path().join("migrations"));
    for (rel, migrations) in [(STABLE, "stable-migrations"), (RC1, "migrations")] {
        copy_dir(&repo().join("releases").join(rel), &releases.join(rel));
        let toml = releases.join(rel).join("release.toml");
        let text = std::fs::read_to_string(&toml).unwrap();
        assert!(text.contains("migrations = \"../../migrations\""));
        let text = text.replace(
            "migrations = \"../../migrations\"",
            &format!("migrations = \"../../{migrations}\""),
        );
        std::fs::write(&toml, text).unwrap();
    }
    (root, releases)
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_compatibility_and_critical_check() {
    let stack = Stack::up(RC1, true);
    let releases = repo().join("releases");
    let r = runner(&stack, &releases, STABLE);
    let run = Run::new(&stack, "db-backup");
    let ctx = run.ctx(RC1, STABLE);

    // Backup: the file's SHA-256 computed here is the recorded one, pg_restore reads it, it is private.
    let detail = database::backup(&r, &ctx).await.unwrap();
    let dump = database::backup_path(&run.dir);
    assert_eq!(dump, run.dir.join("db/xorb.dump"));
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.dir.join("db/backup.json")).unwrap()).unwrap();
    let bytes = std::fs::read(&dump).unwrap();
    assert_eq!(rec["sha256"], hex_sha256(&bytes), "{detail}");
    assert_eq!(rec["revision"], "8d9a2c3");
    let list = Command::new("pg_restore")
        .arg("--list")
        .arg(&dump)
        .output()
        .unwrap();
    assert!(list.status.success(), "{}", text(&list));
    let listing = String::from_utf8_lossy(&list.stdout);
    for table in ["evidence", "tenant_quotas", "usage_records", "tenants"] {
        assert!(
            listing.contains(&format!("TABLE DATA public {table} ")),
            "{table} missing from:\n{listing}"
        );
    }
    assert_eq!(mode(&dump), 0o600);
    assert_eq!(mode(&run.dir.join("db")), 0o700);
    let history = std::fs::read_to_string(run.dir.join("db/alembic-history.txt")).unwrap();
    assert!(
        history.contains("8d9a2c3") && history.contains("1a5be11"),
        "{history}"
    );
    let current = std::fs::read_to_string(run.dir.join("db/alembic-current.txt")).unwrap();
    assert!(current.contains("8d9a2c3"), "{current}");

    // The checksums were taken from the rows pg_dump wrote, not from the database: they are the ones a scan of the
    // database gives (phase 5's loss check compares the two), nothing having written since.
    let scanned = xorb_integrity::full(
        &stack_conn(&stack).config(),
        &xorb_integrity::ScanOptions::default(),
    )
    .await
    .unwrap();
    let from_dump = crate::common::table_checksums(
        &serde_json::from_slice(&std::fs::read(run.dir.join("db/integrity-full.json")).unwrap())
            .unwrap(),
    );
    let from_db = crate::common::table_checksums(&serde_json::to_value(&scanned).unwrap());
    assert_eq!(from_dump, from_db, "{detail}");
    assert!(from_db["findings"].0 > 0, "{from_db:?}");

    // A second call (a resumed run) keeps the file as it is, even after the data changed.
    stack.add_tenant("db-backup-later").await;
    let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    let before = inode(&dump);
    let again = database::backup(&r, &ctx).await.unwrap();
    assert!(again.contains("kept"), "{again}");
    assert_eq!(inode(&dump), before);
    assert_eq!(std::fs::read(&dump).unwrap(), bytes);

    // The dump and the integrity snapshot were taken from one PostgreSQL snapshot, and the dump is proven by its
    // data: restored into a scratch database it has the snapshot's checksums, although the live data has moved on
    // since (the tenant added above). No scratch database is left behind.
    let full: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.dir.join("db/integrity-full.json")).unwrap())
            .unwrap();
    assert_eq!(rec["snapshot_taken_at"], full["taken_at"], "{rec}");
    let proof = database::proof::prove(&r, &ctx).await.unwrap();
    assert!(
        proof.contains("the backup holds the snapshot's data"),
        "{proof}"
    );
    let proven: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.dir.join("db/backup-proof.json")).unwrap())
            .unwrap();
    assert_eq!(proven["differences"], serde_json::json!([]), "{proven}");
    assert_eq!(
        proven["tables"],
        full["tables"].as_array().unwrap().len(),
        "{proven}"
    );
    let scratch = "SELECT count(*) FROM pg_database WHERE datname LIKE 'xorb\\_verify\\_%'";
    assert_eq!(count(&stack, scratch).await, 0);

    // One byte of one table's data altered before the dump was hashed (the record matches the damaged file, so
    // only the data can tell): "Globex Corporation" becomes "Hlobex Corporation" in the tenants' rows. The proof
    // fails, fatally, names the table, and the database was not touched.
    let record_bytes = std::fs::read(run.dir.join("db/backup.json")).unwrap();
    let mut altered = bytes.clone();
    let name = b"Globex Corporation";
    let at = altered
        .windows(name.len())
        .position(|w| w == name)
        .expect("the uncompressed dump holds the demo tenant's name");
    altered[at] = b'H';
    std::fs::write(&dump, &altered).unwrap();
    let mut forged = rec.clone();
    forged["sha256"] = hex_sha256(&altered).into();
    std::fs::write(run.dir.join("db/backup.json"), forged.to_string()).unwrap();
    let err = database::proof::prove(&r, &ctx).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            xorb_engine::runner::StepError::Failed {
                retryable: false,
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains("does not hold the data") && msg.contains("tenants: the same"),
        "{msg}"
    );
    assert!(msg.contains(&dump.display().to_string()), "{msg}");
    assert_eq!(count(&stack, scratch).await, 0);
    assert_eq!(revision(&stack).await, "8d9a2c3");
    std::fs::write(&dump, &bytes).unwrap();
    std::fs::write(run.dir.join("db/backup.json"), &record_bytes).unwrap();

    // A table definition that does not restore ("CREATE TABLX public.tenants", in the dump's table of contents)
    // while every row is whole: the rows alone would prove it, the restore of the definitions does not.
    let ddl = b"CREATE TABLE public.tenants (";
    let mut broken = bytes.clone();
    let at = broken
        .windows(ddl.len())
        .position(|w| w == ddl)
        .expect("the dump holds the tenants table's definition");
    broken[at + 11] = b'X';
    std::fs::write(&dump, &broken).unwrap();
    let mut forged = rec.clone();
    forged["sha256"] = hex_sha256(&broken).into();
    std::fs::write(run.dir.join("db/backup.json"), forged.to_string()).unwrap();
    let msg = database::proof::prove(&r, &ctx)
        .await
        .unwrap_err()
        .to_string();
    assert!(msg.contains("its table definitions fail"), "{msg}");
    assert_eq!(count(&stack, scratch).await, 0);
    std::fs::write(&dump, &bytes).unwrap();
    std::fs::write(run.dir.join("db/backup.json"), &record_bytes).unwrap();

    // A damaged backup, once the schema has moved on, is not silently replaced by a post-downgrade dump.
    let mut damaged = bytes.clone();
    let last = damaged.len() - 1;
    damaged[last] ^= 0xff;
    std::fs::write(&dump, &damaged).unwrap();
    let out = alembic(
        &stack,
        &repo().join("migrations"),
        &["downgrade", "7c8f1b2"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let err = database::backup(&r, &ctx).await.unwrap_err().to_string();
    assert!(
        err.contains("damaged") && err.contains("8d9a2c3") && err.contains("7c8f1b2"),
        "{err}"
    );
    assert_eq!(std::fs::read(&dump).unwrap(), damaged);
    std::fs::write(&dump, &bytes).unwrap();
    let out = alembic(&stack, &repo().join("migrations"), &["upgrade", "head"]);
    assert!(out.status.success(), "{}", text(&out));

    // Compatibility names what each downgrade destroys.
    let c = database::compatibility(&r, "8d9a2c3", "1a5be11", STABLE, &ctx)
        .await
        .unwrap();
    for what in [
        "tenant_quotas",
        "usage_records",
        "evidence",
        "tenants.isolation_mode",
    ] {
        assert!(c.contains(what), "{what} not named in: {c}");
    }
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.dir.join("db/compatibility.json")).unwrap())
            .unwrap();
    assert_eq!(
        rec["revisions"],
        serde_json::json!(["8d9a2c3", "7c8f1b2", "6b7e0a1"])
    );
    // rc1 does not run on stable's head; the error says where that is written.
    let e = database::compatibility(&r, "8d9a2c3", "1a5be11", RC1, &ctx)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("runs_on") && e.contains("release.toml"), "{e}");
    // The live database is not where the step expects it.
    let e = database::compatibility(&r, "7c8f1b2", "1a5be11", STABLE, &ctx)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("8d9a2c3"), "{e}");

    // A downgrade that does nothing is refused, naming the revision and its file.
    let (tmp, fake) = releases_without_rc1_scripts();
    let rc1_toml = fake.join(RC1).join("release.toml");
    let own = tmp.path().join("rc1-migrations");
    copy_dir(&repo().join("migrations"), &own);
    let g8 = own.join("versions/8d9a2c3_g8_control_plane.py");
    let src = std::fs::read_to_string(&g8).unwrap();
    let cut = src.find("def downgrade").unwrap();
    std::fs::write(
        &g8,
        format!(
            "{}def downgrade() -> None:\n    \"\"\"Not needed.\"\"\"\n    pass\n",
            &src[..cut]
        ),
    )
    .unwrap();
    let t = std::fs::read_to_string(&rc1_toml).unwrap();
    std::fs::write(
        &rc1_toml,
        t.replace("\"../../migrations\"", "\"../../rc1-migrations\""),
    )
    .unwrap();
    let r2 = runner(&stack, &fake, STABLE);
    let e = database::compatibility(&r2, "8d9a2c3", "1a5be11", STABLE, &ctx)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("8d9a2c3") && e.contains(&g8.display().to_string()),
        "{e}"
    );

    // Critical data: fine on the demo data; one flipped byte in one evidence file is named.
    let ok = database::critical_check(&stack_conn(&stack), &stack.dir.join("evidence"))
        .await
        .unwrap();
    assert!(ok.ok, "{}", ok.summary());
    assert!(
        ok.tenants >= 2 && ok.sessions >= 4 && ok.findings > 0,
        "{}",
        ok.summary()
    );
    let evidence_rows = count(&stack, "SELECT count(*) FROM evidence").await;
    assert!(evidence_rows > 0);
    assert_eq!(ok.evidence.rows, Some(evidence_rows));
    assert_eq!(ok.evidence.verified as i64, evidence_rows);
    let json = serde_json::to_value(&ok).unwrap();
    assert_eq!(json["ok"], true);
    let victim: String = stack
        .pg()
        .await
        .query_one("SELECT id::text FROM evidence ORDER BY id LIMIT 1", &[])
        .await
        .unwrap()
        .get(0);
    let file = stack
        .dir
        .join("evidence/records")
        .join(format!("{victim}.json"));
    let mut b = std::fs::read(&file).unwrap();
    b[10] ^= 0x01;
    std::fs::write(&file, &b).unwrap();
    let bad = database::critical_check(&stack_conn(&stack), &stack.dir.join("evidence"))
        .await
        .unwrap();
    assert!(!bad.ok);
    assert!(
        bad.problems.iter().any(|p| p.contains(&victim)),
        "{}",
        bad.summary()
    );
    assert!(bad.summary().contains(&victim));
    assert_eq!(bad.evidence.verified as i64, evidence_rows - 1);

    assert_no_secret(&stack, &run.dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn downgrade_step_by_step_preserves_then_reimport_brings_it_back() {
    let stack = Stack::up(RC1, true);
    let releases = repo().join("releases");
    let r = runner(&stack, &releases, STABLE);
    let run = Run::new(&stack, "db-down");
    let ctx = run.ctx(RC1, STABLE);
    let pg = stack.pg().await;

    // Control-plane data of the test's own, so that the preserved counts mean something.
    let t: uuid::Uuid = pg
        .query_one(
            "INSERT INTO tenants (slug, name, token_sha256, isolation_mode) VALUES ('db-down', 'x', 'db-down-hash', 'basic') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    pg.execute("INSERT INTO tenant_quotas (tenant_id, max_sessions_per_hour) VALUES ($1, 7) ON CONFLICT DO NOTHING", &[&t])
        .await
        .unwrap();
    pg.execute("INSERT INTO usage_records (tenant_id, kind, amount) VALUES ($1, 'test', 3), ($1, 'test', 4)", &[&t])
        .await
        .unwrap();

    let n_quotas = count(&stack, "SELECT count(*) FROM tenant_quotas").await;
    let n_usage = count(&stack, "SELECT count(*) FROM usage_records").await;
    let n_evidence = count(&stack, "SELECT count(*) FROM evidence").await;
    let n_tenants = count(&stack, "SELECT count(*) FROM tenants").await;
    let n_advanced = count(
        &stack,
        "SELECT count(*) FROM tenants WHERE isolation_mode = 'advanced'",
    )
    .await;
    assert!(
        n_evidence > 0 && n_advanced > 0,
        "the demo data has evidence and advanced tenants"
    );
    let payloads: Vec<(String, Vec<u8>, Vec<u8>)> = pg
        .query("SELECT id::text, payload, signature FROM evidence", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();

    // G8, G7, G6: one revision each, as the planner's steps do.
    let steps: [(&str, &str, &[Preserve]); 3] = [
        (
            "8d9a2c3",
            "7c8f1b2",
            &[Preserve::ControlPlane, Preserve::AuditChain],
        ),
        ("7c8f1b2", "6b7e0a1", &[Preserve::Evidence]),
        ("6b7e0a1", "1a5be11", &[Preserve::IsolationModes]),
    ];
    for (from, to, preserve) in steps {
        assert_eq!(
            database::probe_migrate(&r, to, &ctx).await.unwrap(),
            Probe::NotDone
        );
        let d = database::migrate(&r, &step(from, to, preserve), &ctx)
            .await
            .unwrap();
        eprintln!("migrate: {d}");
        assert!(d.contains(to), "{d}");
        assert!(d.contains("exports flushed to disk in"), "{d}");
        assert_eq!(revision(&stack).await, to);
        assert!(matches!(
            database::probe_migrate(&r, to, &ctx).await.unwrap(),
            Probe::Done { .. }
        ));
    }
    assert_eq!(revision(&stack).await, "1a5be11");
    // Resuming a step that already ran changes nothing.
    let again = database::migrate(
        &r,
        &step("6b7e0a1", "1a5be11", &[Preserve::IsolationModes]),
        &ctx,
    )
    .await
    .unwrap();
    assert!(again.contains("already"), "{again}");

    let manifest = |kind: &str| -> serde_json::Value {
        serde_json::from_slice(
            &std::fs::read(run.dir.join("preserved").join(kind).join("manifest.json")).unwrap(),
        )
        .unwrap()
    };
    let cp = manifest("control-plane");
    assert_eq!(cp["verified"], true);
    assert_eq!(cp["rows"]["tenant_quotas"], n_quotas);
    assert_eq!(cp["rows"]["usage_records"], n_usage);
    let im = manifest("isolation-modes");
    assert_eq!(im["rows"]["tenants"], n_tenants);
    let modes: serde_json::Value = serde_json::from_slice(
        &std::fs::read(run.dir.join("preserved/isolation-modes/modes.json")).unwrap(),
    )
    .unwrap();
    let advanced = modes
        .as_object()
        .unwrap()
        .values()
        .filter(|m| m["isolation_mode"] == "advanced")
        .count();
    assert_eq!(
        advanced as i64, n_advanced,
        "the modes before the switch to basic: {modes}"
    );
    let ev = manifest("evidence");
    assert_eq!(ev["rows"]["evidence"], n_evidence);

    // Every preserved record verifies with openssl and holds the exact bytes the database had.
    let pres = run.dir.join("preserved/evidence");
    let key = pres.join("signing-key.pub.pem");
    for (id, payload, sig) in &payloads {
        let json = pres.join("records").join(format!("{id}.json"));
        let sigf = pres.join("records").join(format!("{id}.sig"));
        assert_eq!(&std::fs::read(&json).unwrap(), payload, "{id}");
        assert_eq!(&std::fs::read(&sigf).unwrap(), sig, "{id}");
        assert!(
            openssl_verifies(&key, &json, &sigf),
            "openssl does not verify {id}"
        );
    }
    let rows_file = std::fs::read_to_string(pres.join("rows.jsonl")).unwrap();
    assert_eq!(rows_file.lines().count() as i64, n_evidence);
    assert_eq!(mode(&pres.join("rows.jsonl")), 0o600);
    assert_eq!(mode(&pres), 0o700);

    // The schema is stable's, exactly.
    let v = database::verify(&r, "1a5be11", &ctx).await.unwrap();
    assert!(v.contains("1a5be11"), "{v}");
    let e = database::verify(&r, "6b7e0a1", &ctx)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("1a5be11"), "{e}");
    let scratch = count(
        &stack,
        "SELECT count(*) FROM pg_database WHERE datname LIKE 'xorb_verify_%'",
    )
    .await;
    assert_eq!(scratch, 0, "the scratch database is dropped");
    // A schema changed by hand is named.
    pg.batch_execute("ALTER TABLE findings ADD COLUMN sneaky int")
        .await
        .unwrap();
    let e = database::verify(&r, "1a5be11", &ctx)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("findings.sneaky"), "{e}");
    pg.batch_execute("ALTER TABLE findings DROP COLUMN sneaky")
        .await
        .unwrap();

    let pending = database::pending_reimports(&stack.dir);
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0].run, "db-down");
    assert!(
        pending[0].kinds.is_empty(),
        "every kind it holds: {pending:?}"
    );

    // Roll forward: back on rc1's schema (empty new tables, every tenant advanced by default), then re-import.
    let out = alembic(&stack, &repo().join("migrations"), &["upgrade", "head"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(count(&stack, "SELECT count(*) FROM evidence").await, 0);
    // Some storage files lost in the meantime come back from the preservation.
    let live_records = stack.dir.join("evidence/records");
    for (id, _, _) in payloads.iter().take(3) {
        std::fs::remove_file(live_records.join(format!("{id}.json"))).unwrap();
        std::fs::remove_file(live_records.join(format!("{id}.sig"))).unwrap();
    }
    let fwd = Run::new(&stack, "db-forward");
    let rf = runner(&stack, &releases, RC1);
    let fctx = fwd.ctx(STABLE, RC1);
    let d = database::reimport(&rf, "db-down", &[], &fctx)
        .await
        .unwrap();
    eprintln!("reimport: {d}");
    assert_eq!(
        count(&stack, "SELECT count(*) FROM evidence").await,
        n_evidence,
        "{d}"
    );
    assert_eq!(
        count(&stack, "SELECT count(*) FROM tenant_quotas").await,
        n_quotas,
        "{d}"
    );
    assert_eq!(
        count(&stack, "SELECT count(*) FROM usage_records").await,
        n_usage,
        "{d}"
    );
    assert_eq!(
        count(
            &stack,
            "SELECT count(*) FROM tenants WHERE isolation_mode = 'advanced'"
        )
        .await,
        n_advanced,
        "{d}"
    );
    assert_eq!(
        count(
            &stack,
            "SELECT count(*) FROM tenants WHERE slug = 'db-down' AND isolation_mode = 'basic'"
        )
        .await,
        1
    );
    let back: Vec<(String, Vec<u8>, Vec<u8>)> = pg
        .query("SELECT id::text, payload, signature FROM evidence", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let mut a = payloads.clone();
    let mut b = back;
    a.sort();
    b.sort();
    assert_eq!(
        a, b,
        "the re-imported rows are byte for byte the preserved ones"
    );
    let live_key = stack.dir.join("evidence/signing-key.pub.pem");
    for (id, _, _) in payloads.iter().take(3) {
        assert!(openssl_verifies(
            &live_key,
            &live_records.join(format!("{id}.json")),
            &live_records.join(format!("{id}.sig"))
        ));
    }
    let crit = database::critical_check(&stack_conn(&stack), &stack.dir.join("evidence"))
        .await
        .unwrap();
    assert!(crit.ok, "{}", crit.summary());
    // Idempotent: a second re-import inserts nothing and changes nothing.
    let d2 = database::reimport(&rf, "db-down", &[], &fctx)
        .await
        .unwrap();
    assert!(d2.contains(&format!("0 of {n_evidence}")), "{d2}");
    assert_eq!(
        count(&stack, "SELECT count(*) FROM evidence").await,
        n_evidence
    );
    assert_eq!(
        count(&stack, "SELECT count(*) FROM usage_records").await,
        n_usage
    );
    // The usage_records sequence is past the re-imported ids.
    pg.execute(
        "INSERT INTO usage_records (tenant_id, kind) VALUES ($1, 'after')",
        &[&t],
    )
    .await
    .unwrap();

    assert_no_secret(&stack, &run.dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn downgrade_uses_the_from_release_scripts_when_the_target_lacks_them() {
    // helm/helm#5825: the older release does not have the newer revisions' files.
    let stack = Stack::up(RC1, true);
    let (_tmp, releases) = releases_without_rc1_scripts();
    let stable = Release::load_named(&releases, STABLE).unwrap();
    // With the target's scripts, alembic cannot even find the live revision.
    let out = alembic(&stack, &stable.migrations_dir(), &["downgrade", "1a5be11"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("8d9a2c3"),
        "{}",
        text(&out)
    );
    assert_eq!(revision(&stack).await, "8d9a2c3");

    let r = runner(&stack, &releases, STABLE);
    let run = Run::new(&stack, "db-helm");
    let ctx = run.ctx(RC1, STABLE);
    database::backup(&r, &ctx).await.unwrap();
    database::compatibility(&r, "8d9a2c3", "1a5be11", STABLE, &ctx)
        .await
        .unwrap();
    for (from, to, preserve) in [
        (
            "8d9a2c3",
            "7c8f1b2",
            &[Preserve::ControlPlane, Preserve::AuditChain][..],
        ),
        ("7c8f1b2", "6b7e0a1", &[Preserve::Evidence][..]),
        ("6b7e0a1", "1a5be11", &[Preserve::IsolationModes][..]),
    ] {
        let d = database::migrate(&r, &step(from, to, preserve), &ctx)
            .await
            .unwrap();
        assert!(
            d.contains(RC1),
            "the scripts of the release rolled back from: {d}"
        );
    }
    assert_eq!(revision(&stack).await, "1a5be11");
    database::verify(&r, "1a5be11", &ctx).await.unwrap();
}

/// The stack's database connection, as the runner uses it.
fn stack_conn(stack: &Stack) -> database::PgConn {
    let st = xorb_local::stack::StackState::load(&stack.dir).unwrap();
    st.pg(&xorb_local::stack::Secrets::load(&stack.dir).unwrap())
}
