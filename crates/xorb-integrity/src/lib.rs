//! Data integrity and data-loss assessment of a PostgreSQL database (schema `public`).
//!
//! - [`quick`]: per-table row counts and a schema fingerprint.
//! - [`full`]: a content checksum per table, computed as text `COPY … TO STDOUT` streams (tables and page ranges
//!   of large tables scanned in parallel, all in one exported snapshot), optionally writing a row snapshot
//!   (primary key and per-column hashes of every row) to a directory outside the database.
//! - [`dump_checksums`]: the same checksums of the tables a `pg_dump` holds, read from the dump's data without a
//!   server, so that a backup is proven by its rows.
//! - [`loss`]: rows lost, changed and added between such a snapshot and the live database, exactly.
//!
//! Design: docs/design/integrity-and-loss.md.

mod catalog;
mod copy;
mod dump;
mod dump_scan;
mod loss;
mod scan;
mod script;
mod snapshot;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use dump::{PG_DUMP_ARGS, PG_DUMP_ENV, dump_checksums};
pub use dump_scan::DumpScan;
pub use loss::{ChangedRow, DroppedColumn, LossReport, TableLoss, TableState, loss};
pub use scan::{FullReport, TableChecksum, full};
pub use tokio_postgres::Config;

#[derive(Debug, thiserror::Error)]
pub enum IntegrityError {
    #[error("cannot connect to PostgreSQL at {target}: {source}")]
    Connect {
        target: String,
        source: tokio_postgres::Error,
    },
    #[error(
        "PostgreSQL at {target} did not answer within {secs} s (connect): it accepts connections but does not respond (stopped, hung or overloaded?)"
    )]
    NoAnswer { target: String, secs: u64 },
    #[error("database: {what}: {source}")]
    Db {
        what: String,
        source: tokio_postgres::Error,
    },
    #[error("table {table}: the COPY stream is malformed at byte {offset}: {why}")]
    CopyFormat {
        table: String,
        offset: u64,
        why: String,
    },
    #[error("the dump's data: {0}")]
    Dump(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("snapshot {}: {why}", path.display())]
    Snapshot { path: PathBuf, why: String },
    #[error("no table {0:?} in schema public")]
    NoSuchTable(String),
    #[error("connection settings: {0}")]
    Config(String),
    #[error("a scan task failed: {0}")]
    Task(String),
}

impl IntegrityError {
    /// This error's exit code (`docs/exit-codes.md`): bad input (see [`Self::is_bad_input`]), else a dependency
    /// (the database, the file system) failed.
    pub fn exit(&self) -> xorb_model::exit::Exit {
        if self.is_bad_input() {
            xorb_model::exit::Exit::BadInput
        } else {
            xorb_model::exit::Exit::DependencyFailed
        }
    }

    /// Whether the caller gave something wrong (a missing or damaged snapshot, an unknown table, bad settings),
    /// as opposed to a database or file system that failed.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Self::Snapshot { .. } | Self::NoSuchTable(_) | Self::Config(_) | Self::Dump(_)
        )
    }

    pub(crate) fn db(what: impl Into<String>, source: tokio_postgres::Error) -> Self {
        Self::Db {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// What a scan covers and how.
#[derive(Debug, Clone)]
pub struct ScanOptions {
    /// Connections (and so server processes) scanning at once. Default: the number of CPUs.
    pub parallelism: usize,
    /// Only these tables of schema `public` (default: all of them).
    pub tables: Option<Vec<String>>,
    /// [`full`] also writes a row snapshot here (a directory; created if missing).
    pub snapshot_dir: Option<PathBuf>,
    /// [`loss`] lists at most this many keys per table and class; its counts are always exact.
    pub list_limit: usize,
}

impl Default for ScanOptions {
    fn default() -> Self {
        Self {
            parallelism: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            tables: None,
            snapshot_dir: None,
            list_limit: 100,
        }
    }
}

/// Row counts of every table of schema `public` and a fingerprint of its tables, columns and types. The same
/// meaning (and the same fingerprint) as the phase-1 scan of the local runner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuickReport {
    pub tables: BTreeMap<String, i64>,
    pub schema_fingerprint: String,
    /// Tables whose count is the planner's estimate, not a count ([`quick_bounded`]).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub estimated: BTreeSet<String>,
}

/// [`quick`] that reads at most `max_exact_pages` pages of any table, so that its time does not grow with the
/// database: a larger table's count is PostgreSQL's estimate (its density at the last ANALYZE times its pages now,
/// else the live-tuple counter), and the table is named in `estimated`. Phase 1 runs this: it is on the runbook's
/// critical path, and the exact account of every row is the backup's snapshot (phase 3).
pub async fn quick_bounded(
    client: &tokio_postgres::Client,
    max_exact_pages: u64,
) -> Result<QuickReport, IntegrityError> {
    quick_of(client, Some(max_exact_pages)).await
}

/// Exact row counts of every table of schema `public` (`count(*)`: linear in the database) and the fingerprint.
pub async fn quick(client: &tokio_postgres::Client) -> Result<QuickReport, IntegrityError> {
    quick_of(client, None).await
}

async fn quick_of(
    client: &tokio_postgres::Client,
    max_exact_pages: Option<u64>,
) -> Result<QuickReport, IntegrityError> {
    let listed = client
        .query(
            // A partitioned table's rows are its partitions': its size and estimate are theirs, summed
            // (`pg_partition_tree` lists no row for a table outside any partition tree: hence the union).
            "SELECT t.tablename::text, coalesce(sum(l.pages), 0)::int8, coalesce(sum(l.estimate), 0)::int8 \
             FROM pg_tables t \
             LEFT JOIN LATERAL ( \
               SELECT pg_relation_size(c.oid) / current_setting('block_size')::int8 AS pages, \
                      CASE WHEN c.reltuples >= 0 AND c.relpages > 0 \
                           THEN c.reltuples / c.relpages \
                                * (pg_relation_size(c.oid) / current_setting('block_size')::int8) \
                           ELSE coalesce(s.n_live_tup, 0) END AS estimate \
               FROM (SELECT relid FROM pg_partition_tree(format('%I.%I', t.schemaname, t.tablename)) \
                     UNION SELECT format('%I.%I', t.schemaname, t.tablename)::regclass) p \
               JOIN pg_class c ON c.oid = p.relid AND c.relkind = 'r' \
               LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid) l ON true \
             WHERE t.schemaname = 'public' GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| IntegrityError::db("list the tables of schema public", e))?;
    let mut tables = BTreeMap::new();
    let mut estimated = BTreeSet::new();
    for r in listed {
        let (t, pages, estimate): (String, i64, i64) = (r.get(0), r.get(1), r.get(2));
        if max_exact_pages.is_some_and(|max| pages.max(0) as u64 > max) {
            tables.insert(t.clone(), estimate.max(0));
            estimated.insert(t);
            continue;
        }
        let n = catalog::count_rows(client, &t).await?;
        tables.insert(t, n);
    }
    let schema_fingerprint: String = client
        .query_one(
            "SELECT md5(coalesce(string_agg(table_name || '.' || column_name || ':' || data_type, ',' \
             ORDER BY table_name, column_name), '')) \
             FROM information_schema.columns WHERE table_schema = 'public'",
            &[],
        )
        .await
        .map_err(|e| IntegrityError::db("fingerprint the schema", e))?
        .get(0);
    Ok(QuickReport {
        tables,
        schema_fingerprint,
        estimated,
    })
}

/// Connection settings from libpq's variables: PGHOST (default 127.0.0.1), PGPORT (5432), PGUSER (the login
/// user), PGDATABASE (the user name) and the password from PGPASSWORD or a PGPASSFILE (default ~/.pgpass) in
/// libpq's `host:port:database:user:password` format. Never from the command line.
pub fn config_from_env() -> Result<Config, IntegrityError> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let host = var("PGHOST").unwrap_or_else(|| "127.0.0.1".into());
    let port: u16 = match var("PGPORT") {
        Some(p) => p
            .parse()
            .map_err(|_| IntegrityError::Config(format!("PGPORT={p:?} is not a port number")))?,
        None => 5432,
    };
    let user = var("PGUSER")
        .or_else(|| var("USER"))
        .ok_or_else(|| IntegrityError::Config("set PGUSER".into()))?;
    let dbname = var("PGDATABASE").unwrap_or_else(|| user.clone());
    let mut cfg = Config::new();
    cfg.host(&host)
        .port(port)
        .user(&user)
        .dbname(&dbname)
        .application_name("xorb-integrity")
        .connect_timeout(std::time::Duration::from_secs(10));
    let password = match var("PGPASSWORD") {
        Some(p) => Some(p),
        None => {
            let file = var("PGPASSFILE")
                .map(PathBuf::from)
                .or_else(|| var("HOME").map(|h| Path::new(&h).join(".pgpass")));
            match file {
                Some(f) if f.exists() => {
                    let text =
                        std::fs::read_to_string(&f).map_err(|e| IntegrityError::io(&f, e))?;
                    passfile_lookup(&text, &host, port, &dbname, &user)
                }
                _ => None,
            }
        }
    };
    if let Some(p) = password {
        cfg.password(p);
    }
    Ok(cfg)
}

/// libpq's password file: the first line whose fields match (`*` matches anything; `\:` and `\\` escape).
fn passfile_lookup(text: &str, host: &str, port: u16, db: &str, user: &str) -> Option<String> {
    let port = port.to_string();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let mut fields = vec![String::new()];
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let Some(n) = chars.next() {
                        fields.last_mut().unwrap().push(n);
                    }
                }
                ':' if fields.len() < 5 => fields.push(String::new()),
                c => fields.last_mut().unwrap().push(c),
            }
        }
        if fields.len() != 5 {
            continue;
        }
        let ok = |f: &str, v: &str| f == "*" || f == v;
        if ok(&fields[0], host)
            && ok(&fields[1], &port)
            && ok(&fields[2], db)
            && ok(&fields[3], user)
        {
            return Some(fields[4].clone());
        }
    }
    None
}

/// Where a connection goes, for messages (never the password).
pub(crate) fn describe(cfg: &Config) -> String {
    let host = cfg
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_else(|| "?".into());
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{host}:{port} (database {}, user {})",
        cfg.get_dbname().unwrap_or("?"),
        cfg.get_user().unwrap_or("?")
    )
}

/// How long a connection may take, authentication included (the driver's `connect_timeout` covers only the TCP
/// handshake, which a stopped server's kernel still completes).
const CONNECT_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

pub(crate) async fn connect(cfg: &Config) -> Result<tokio_postgres::Client, IntegrityError> {
    let (client, conn) = tokio::time::timeout(CONNECT_LIMIT, cfg.connect(tokio_postgres::NoTls))
        .await
        .map_err(|_| IntegrityError::NoAnswer {
            target: describe(cfg),
            secs: CONNECT_LIMIT.as_secs(),
        })?
        .map_err(|source| IntegrityError::Connect {
            target: describe(cfg),
            source,
        })?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passfile_matches_like_libpq() {
        let text =
            "# comment\nother:5432:*:*:nope\n127.0.0.1:*:xorb:xorb:p\\:w\\\\d\n*:*:*:*:fallback\n";
        assert_eq!(
            passfile_lookup(text, "127.0.0.1", 5433, "xorb", "xorb").as_deref(),
            Some("p:w\\d")
        );
        assert_eq!(
            passfile_lookup(text, "localhost", 1, "a", "b").as_deref(),
            Some("fallback")
        );
    }
}
