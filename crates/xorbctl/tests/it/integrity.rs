//! Integrity checksums and the data-loss assessment on a private PostgreSQL, and the CLI on the shared rc1 stack.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use xorb_integrity::{LossReport, ScanOptions, TableState};

use crate::common::{Stack, rc1, text};

/// A PostgreSQL of this test's own, stopped (and its directory removed) when dropped, also on a panic.
struct Pg {
    dir: PathBuf,
    server: xorb_local::servers::Server,
    cfg: tokio_postgres::Config,
}

impl Pg {
    async fn start() -> Pg {
        use std::os::unix::fs::PermissionsExt;
        let dir = Stack::new_dir();
        // The server runs as `postgres` when we are root: it must be able to reach its directory.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
        let server = xorb_local::servers::start_postgres(&dir.join("pg"), &password)
            .await
            .unwrap();
        let conn = xorb_adapters::pg::PgConn {
            host: "127.0.0.1".into(),
            port: server.port,
            user: "xorb".into(),
            password,
            dbname: "xorb".into(),
        };
        Pg {
            dir,
            cfg: conn.config(),
            server,
        }
    }

    async fn client(&self) -> tokio_postgres::Client {
        let (c, conn) = self.cfg.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        c
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        self.server
            .proc
            .stop(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(20));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn opts(parallelism: usize) -> ScanOptions {
    ScanOptions {
        parallelism,
        list_limit: 1000,
        ..ScanOptions::default()
    }
}

async fn checksums(pg: &Pg, parallelism: usize) -> Vec<(String, u64, String)> {
    let r = xorb_integrity::full(&pg.cfg, &opts(parallelism))
        .await
        .unwrap();
    r.tables
        .into_iter()
        .map(|t| (t.table, t.rows, t.checksum))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checksums_are_stable_across_runs_and_parallelism_and_see_one_byte() {
    let pg = Pg::start().await;
    let c = pg.client().await;
    // Big enough (about 4,000 pages) to be split into page ranges scanned by several connections.
    c.batch_execute(
        "CREATE TABLE big (id bigint PRIMARY KEY, n int, note text, at timestamptz);
         INSERT INTO big SELECT g, g % 1000, repeat(md5(g::text), 3), '2025-08-01'::timestamptz + g * interval '1 second'
           FROM generate_series(1, 200000) g;
         CREATE TABLE nokey (a text, b int);
         INSERT INTO nokey VALUES ('x', 1), ('x', 1), (NULL, 2), ('', 3);
         CREATE TABLE empty (id uuid PRIMARY KEY);",
    )
    .await
    .unwrap();
    let pages: i64 = c
        .query_one("SELECT pg_relation_size('big') / 8192", &[])
        .await
        .unwrap()
        .get(0);
    assert!(pages > 2048, "big has {pages} pages: too small to be split");

    let first = checksums(&pg, 1).await;
    assert_eq!(
        first
            .iter()
            .map(|t| (t.0.as_str(), t.1))
            .collect::<Vec<_>>(),
        vec![("big", 200000), ("empty", 0), ("nokey", 4)]
    );
    for p in [1, 2, 5] {
        assert_eq!(checksums(&pg, p).await, first, "parallelism {p}");
    }

    // One byte of one row of 200,000.
    c.batch_execute(
        "UPDATE big SET note = overlay(note placing 'X' from 17 for 1) WHERE id = 123457",
    )
    .await
    .unwrap();
    let after = checksums(&pg, 2).await;
    assert_ne!(
        after[0].2, first[0].2,
        "one changed byte must change big's checksum"
    );
    assert_eq!(after[1..], first[1..], "the other tables did not change");

    // NULL and empty string are different values; so are the two duplicate rows and one of them.
    c.batch_execute("UPDATE nokey SET a = NULL WHERE b = 3")
        .await
        .unwrap();
    let nulls = checksums(&pg, 2).await;
    assert_ne!(nulls[2].2, first[2].2, "'' → NULL must change the checksum");
    c.batch_execute("UPDATE nokey SET a = '' WHERE b = 3")
        .await
        .unwrap();
    assert_eq!(checksums(&pg, 2).await[2], first[2]);
    c.batch_execute("DELETE FROM nokey WHERE ctid = (SELECT min(ctid) FROM nokey WHERE b = 1)")
        .await
        .unwrap();
    assert_ne!(
        checksums(&pg, 2).await[2].2,
        first[2].2,
        "a duplicate row removed must show"
    );

    dump_rows_hash_as_the_scan_under_any_session_defaults(&pg).await;
    the_bounded_quick_scan_reads_no_large_table(&pg, &c).await;
}

/// The backup's proof compares the scan's checksums with a dump's rows: they must agree whatever the database's
/// own defaults for time zone, date style and float digits are, since both sides set their own.
async fn dump_rows_hash_as_the_scan_under_any_session_defaults(pg: &Pg) {
    let c = pg.client().await;
    c.batch_execute(
        "ALTER DATABASE xorb SET TimeZone = 'Asia/Kolkata';
         ALTER DATABASE xorb SET DateStyle = 'SQL, DMY';
         ALTER DATABASE xorb SET extra_float_digits = 0;
         ALTER DATABASE xorb SET IntervalStyle = 'sql_standard';
         CREATE TABLE typed (id int PRIMARY KEY, at timestamptz, d date, f float8, i interval, j jsonb,
                             b bytea, t text);
         INSERT INTO typed VALUES
           (1, '2025-08-01 23:30:00.123456+00', '2025-08-01', 0.1 + 0.2, '1 day 02:03:04', '{\"b\": 1, \"a\": [1.50]}',
            '\\x00ff', E'tab\there\nnewline \\ backslash'),
           (2, NULL, NULL, 'NaN', NULL, 'null', '', '');",
    )
    .await
    .unwrap();
    let scanned = xorb_integrity::full(&pg.cfg, &opts(2))
        .await
        .unwrap()
        .tables;
    let file = pg.dir.join("typed.dump");
    let host = pg.cfg.get_hosts()[0].clone();
    let tokio_postgres::config::Host::Tcp(host) = host else {
        panic!("a TCP host")
    };
    let mut dump = std::process::Command::new("/usr/lib/postgresql/15/bin/pg_dump");
    dump.envs(xorb_integrity::PG_DUMP_ENV.iter().copied())
        .args(xorb_integrity::PG_DUMP_ARGS)
        .args(["--format=custom", "--no-password", "--host", &host])
        .arg(format!("--port={}", pg.cfg.get_ports()[0]))
        .args(["--username", "xorb", "--dbname", "xorb", "--file"])
        .arg(&file)
        .env(
            "PGPASSWORD",
            String::from_utf8(pg.cfg.get_password().unwrap().to_vec()).unwrap(),
        );
    let out = dump.output().unwrap();
    assert!(out.status.success(), "pg_dump: {}", text(&out));
    let script = std::process::Command::new("/usr/lib/postgresql/15/bin/pg_restore")
        .args(["--data-only", "--file=-"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(script.status.success(), "pg_restore: {}", text(&script));
    let dumped = xorb_integrity::dump_checksums(&script.stdout[..]).unwrap();
    let strip = |v: &[xorb_integrity::TableChecksum]| {
        v.iter()
            .map(|t| (t.table.clone(), t.rows, t.columns, t.checksum.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&dumped), strip(&scanned));
    assert!(scanned.iter().any(|t| t.table == "typed" && t.rows == 2));
    c.batch_execute("DROP TABLE typed; ALTER DATABASE xorb RESET ALL")
        .await
        .unwrap();
}

/// Phase 1's quick scan is on the critical path: a table over the bound is estimated, not read. The server's own
/// account of rows read by sequential scans shows it (every other way to read the table is switched off).
async fn the_bounded_quick_scan_reads_no_large_table(pg: &Pg, c: &tokio_postgres::Client) {
    c.batch_execute(
        "ANALYZE big; SET enable_indexscan = off; SET enable_indexonlyscan = off; SET enable_bitmapscan = off;
         SET max_parallel_workers_per_gather = 0",
    )
    .await
    .unwrap();
    let observer = pg.client().await;
    let read = || async {
        observer
            .batch_execute("SELECT pg_stat_clear_snapshot()")
            .await
            .unwrap();
        observer
            .query_one(
                "SELECT seq_tup_read FROM pg_stat_user_tables WHERE relname = 'big'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let before = read().await;
    let bounded = xorb_integrity::quick_bounded(c, 1024).await.unwrap();
    let exact = xorb_integrity::quick(c).await.unwrap();
    c.batch_execute("SELECT pg_stat_force_next_flush()")
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut after = read().await;
    while after == before && std::time::Instant::now() < deadline {
        tokio::task::yield_now().await;
        after = read().await;
    }
    let rows = exact.tables["big"];
    assert_eq!(
        after - before,
        rows,
        "only the exact scan read big's {rows} rows (the bounded one read {})",
        after - before - rows
    );
    assert_eq!(bounded.estimated, BTreeSet::from(["big".to_string()]));
    assert!(exact.estimated.is_empty());
    let estimate = bounded.tables["big"];
    assert!(
        (estimate - rows).abs() * 100 <= rows,
        "estimate {estimate} for {rows} rows"
    );
    for (t, n) in &exact.tables {
        if t != "big" {
            assert_eq!(bounded.tables[t], *n, "{t} is small: counted exactly");
        }
    }
    assert_eq!(bounded.schema_fingerprint, exact.schema_fingerprint);

    // A partitioned table has no pages of its own: it is sized, and estimated, by its partitions.
    c.batch_execute(
        "CREATE TABLE parted (id int) PARTITION BY RANGE (id);
         CREATE TABLE parted_low PARTITION OF parted FOR VALUES FROM (0) TO (100);
         CREATE TABLE parted_high PARTITION OF parted FOR VALUES FROM (100) TO (200);
         INSERT INTO parted SELECT g FROM generate_series(0, 149) g;
         ANALYZE parted",
    )
    .await
    .unwrap();
    let none_exact = xorb_integrity::quick_bounded(c, 0).await.unwrap();
    for t in ["parted", "parted_low", "parted_high"] {
        assert!(none_exact.estimated.contains(t), "{t}: {none_exact:?}");
    }
    assert_eq!(
        (
            none_exact.tables["parted"],
            none_exact.tables["parted_low"],
            none_exact.tables["parted_high"]
        ),
        (150, 100, 50)
    );
    c.batch_execute("DROP TABLE parted").await.unwrap();
}

fn keys(v: &[String]) -> BTreeSet<String> {
    v.iter().cloned().collect()
}

fn table<'a>(r: &'a LossReport, name: &str) -> &'a xorb_integrity::TableLoss {
    r.tables
        .iter()
        .find(|t| t.table == name)
        .unwrap_or_else(|| panic!("no table {name} in the report: {r:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_finds_exactly_the_rows_lost_changed_and_added() {
    let pg = Pg::start().await;
    let c = pg.client().await;
    c.batch_execute(
        "CREATE TABLE items (id bigint PRIMARY KEY, n int, note text, at timestamptz, extra text);
         INSERT INTO items SELECT g, g, CASE WHEN g = 30 THEN NULL ELSE 'note ' || g END,
                '2025-08-01 12:00:00.000001+00'::timestamptz + g * interval '1 minute',
                CASE WHEN g % 10 = 0 THEN NULL ELSE 'x' END
           FROM generate_series(1, 50000) g;
         CREATE TABLE evidence (id uuid PRIMARY KEY, body text);
         INSERT INTO evidence VALUES ('5f0c6a52-4c7e-4a43-9d3c-2a1c0f6e7b10', 'a'), ('00000000-0000-0000-0000-000000000001', 'b');
         CREATE TABLE pairs (tenant text, seq int, v text, PRIMARY KEY (tenant, seq));
         INSERT INTO pairs VALUES ('acme', 1, 'a'), ('acme', 2, 'b'), ('globex', 1, 'c');
         CREATE TABLE log (line text);
         INSERT INTO log VALUES ('one'), ('two'), ('two');",
    )
    .await
    .unwrap();
    let snap = pg.dir.join("snapshot");
    let full = xorb_integrity::full(
        &pg.cfg,
        &ScanOptions {
            snapshot_dir: Some(snap.clone()),
            ..opts(2)
        },
    )
    .await
    .unwrap();
    // Writing the snapshot does not change the checksums.
    assert_eq!(
        full.tables
            .iter()
            .map(|t| (t.table.clone(), t.rows, t.checksum.clone()))
            .collect::<Vec<_>>(),
        checksums(&pg, 1).await
    );

    // Nothing changed: nothing reported.
    let same = xorb_integrity::loss(&pg.cfg, &snap, &opts(2))
        .await
        .unwrap();
    assert_eq!(
        (same.lost, same.changed, same.added),
        (0, 0, 0),
        "{same:#?}"
    );
    assert!(same.tables.iter().all(|t| !t.differs()), "{same:#?}");

    c.batch_execute(
        "UPDATE items SET n = n + 1 WHERE id = 10;
         DELETE FROM items WHERE id IN (20, 21);
         INSERT INTO items VALUES (50001, 1, 'new', now(), 'x'), (-5, 1, 'negative', now(), NULL);
         UPDATE items SET note = '' WHERE id = 30;
         UPDATE items SET at = at + interval '1 microsecond' WHERE id = 40;
         UPDATE items SET n = n WHERE id = 41;
         ALTER TABLE items DROP COLUMN extra;
         DROP TABLE evidence;
         UPDATE pairs SET v = NULL WHERE tenant = 'acme' AND seq = 2;
         CREATE TABLE added (k int PRIMARY KEY);
         INSERT INTO added VALUES (7), (8);
         DELETE FROM log WHERE ctid = (SELECT min(ctid) FROM log WHERE line = 'two');
         INSERT INTO log VALUES ('three');",
    )
    .await
    .unwrap();
    let r = xorb_integrity::loss(&pg.cfg, &snap, &opts(2))
        .await
        .unwrap();

    let items = table(&r, "items");
    assert_eq!(items.state, TableState::Compared);
    assert_eq!(items.keyed_by, ["id"]);
    assert_eq!((items.lost, items.changed, items.added), (2, 3, 2));
    assert_eq!(keys(&items.lost_keys), keys(&["20".into(), "21".into()]));
    assert_eq!(
        keys(&items.added_keys),
        keys(&["-5".into(), "50001".into()])
    );
    let changed: Vec<(String, Vec<String>)> = items
        .changed_rows
        .iter()
        .map(|c| (c.key.clone(), c.columns.clone()))
        .collect();
    assert_eq!(
        changed,
        vec![
            ("10".into(), vec!["n".into()]),
            ("30".into(), vec!["note".into()]),
            ("40".into(), vec!["at".into()]),
        ],
        "an update to the same value (id 41) is no change; NULL → '' and 1 µs are"
    );
    assert_eq!(items.columns_dropped.len(), 1);
    assert_eq!(items.columns_dropped[0].name, "extra");
    // 50,000 rows, every tenth NULL.
    assert_eq!(items.columns_dropped[0].non_null_values, 45000);
    assert!(!items.listing_truncated);

    let ev = table(&r, "evidence");
    assert_eq!(ev.state, TableState::Dropped);
    assert_eq!(ev.lost, 2);
    assert_eq!(
        keys(&ev.lost_keys),
        keys(&[
            "00000000-0000-0000-0000-000000000001".into(),
            "5f0c6a52-4c7e-4a43-9d3c-2a1c0f6e7b10".into()
        ])
    );
    assert_eq!(ev.summary, "evidence: 2 rows lost (table dropped)");

    let pairs = table(&r, "pairs");
    assert_eq!((pairs.lost, pairs.changed, pairs.added), (0, 1, 0));
    assert_eq!(pairs.changed_rows[0].key, "(acme, 2)");

    let added = table(&r, "added");
    assert_eq!((added.state, added.added), (TableState::Added, 2));
    assert_eq!(added.added_keys, ["7", "8"]);

    let log = table(&r, "log");
    assert!(log.keyed_by.is_empty());
    assert_eq!((log.lost, log.changed, log.added), (1, 0, 1));

    assert_eq!((r.lost, r.changed, r.added), (5, 4, 5));
    assert_eq!(
        items.summary,
        "items: 2 rows lost, 3 rows changed, 2 rows added, column extra dropped (45000 non-NULL values lost)"
    );

    // The listing is capped, the counts are not.
    let capped = xorb_integrity::loss(
        &pg.cfg,
        &snap,
        &ScanOptions {
            list_limit: 1,
            tables: Some(vec!["items".into()]),
            ..opts(1)
        },
    )
    .await
    .unwrap();
    assert_eq!(capped.tables.len(), 1);
    let t = &capped.tables[0];
    assert_eq!((t.lost, t.changed, t.added), (2, 3, 2));
    assert_eq!((t.lost_keys.len(), t.changed_rows.len()), (1, 1));
    assert!(t.listing_truncated);

    // A damaged snapshot is named, not half-read.
    let file = snap.join("table-0000.rows");
    let len = std::fs::metadata(&file).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    let e = xorb_integrity::loss(&pg.cfg, &snap, &opts(1))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("table-0000.rows"), "{e}");
    assert!(e.is_bad_input());
}

/// The CLI against the shared rc1 stack, reading only (`alembic_version` does not change under other tests).
#[test]
fn cli_integrity_and_loss_on_the_stack() {
    let s = rc1();
    let quick = s.xorbctl(&["integrity", "--quick", "--output", "json"]);
    assert!(quick.status.success(), "{}", text(&quick));
    let q: serde_json::Value = serde_json::from_slice(&quick.stdout).unwrap();
    assert_eq!(q["tables"]["alembic_version"], 1, "{q}");
    assert!(q["tables"]["evidence"].as_i64().unwrap_or(0) > 0, "{q}");
    assert_eq!(q["schema_fingerprint"].as_str().unwrap().len(), 32);

    let snap = s.dir.join("it-integrity-snapshot");
    let full = s.xorbctl(&[
        "integrity",
        "--full",
        "--report",
        "--snapshot",
        snap.to_str().unwrap(),
    ]);
    assert!(full.status.success(), "{}", text(&full));
    let out = String::from_utf8_lossy(&full.stdout);
    let report = out
        .lines()
        .find_map(|l| l.strip_prefix("Report: "))
        .unwrap_or_else(|| panic!("no report path in:\n{out}"));
    assert!(report.starts_with(s.dir.join("integrity").to_str().unwrap()));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap();
    let av = r["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "alembic_version")
        .unwrap();
    assert_eq!(av["rows"], 1);
    assert!(out.contains("alembic_version"), "{out}");
    assert!(snap.join("manifest.json").exists());
    // No secret in what we print or keep.
    let pw = s.secret("db-password");
    assert!(!out.contains(&pw));
    assert!(!std::fs::read_to_string(report).unwrap().contains(&pw));

    let loss = s.xorbctl(&[
        "loss",
        "--before",
        snap.to_str().unwrap(),
        "--after",
        "current",
        "--table",
        "alembic_version",
    ]);
    assert!(loss.status.success(), "{}", text(&loss));
    let shown = String::from_utf8_lossy(&loss.stdout);
    // The first line holds the two instants: the rest is stable.
    let stable: Vec<&str> = shown.lines().skip(1).collect();
    insta::assert_snapshot!("loss_unchanged_alembic_version", stable.join("\n"));

    // Bad input exits 2, naming what is wrong.
    let missing = s.xorbctl(&["loss", "--before", "/nonexistent/snapshot"]);
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/snapshot"));
    let after = s.xorbctl(&[
        "loss",
        "--before",
        snap.to_str().unwrap(),
        "--after",
        "yesterday",
    ]);
    assert_eq!(after.status.code(), Some(2), "{}", text(&after));
    let table = s.xorbctl(&["integrity", "--full", "--table", "no_such_table"]);
    assert_eq!(table.status.code(), Some(2), "{}", text(&table));
    let none = s.xorbctl(&["integrity"]);
    assert_eq!(none.status.code(), Some(2), "{}", text(&none));
}
