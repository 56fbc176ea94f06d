//! The parallel streaming scan behind `full` and `loss`.
//!
//! One coordinating connection opens a REPEATABLE READ transaction and exports its snapshot; every worker
//! connection adopts it (`SET TRANSACTION SNAPSHOT`), so all tables and all page ranges are read as of one instant
//! even while the services write. Large tables are split into ranges of pages (`ctid` ranges: a TID range scan,
//! which needs no index and splits any table evenly, with or without a primary key); workers take ranges
//! from one queue, largest tables first.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use tokio_postgres::Config;
use xxhash_rust::xxh3::{xxh3_64, xxh3_128};

/// The session `pg_dump` sets up before it copies a table (`DateStyle`, `IntervalStyle`, `extra_float_digits`, an
/// empty `search_path`), plus the one it leaves to its environment: `TimeZone`, which `pg_dump` takes from `PGTZ`
/// ([`crate::PG_DUMP_ENV`]). A value prints the same in the scan as in a dump only under the same settings.
const DUMP_SESSION: &str = "SET DateStyle = ISO; SET IntervalStyle = postgres; SET extra_float_digits = 3; \
                            SET search_path = ''; SET TimeZone = 'UTC';";

use crate::catalog::{self, TableMeta, quote_ident};
use crate::copy::{CopyParser, Row};
use crate::{IntegrityError, ScanOptions, connect};

/// Below this many pages (8 MiB) a table is one range: the split would cost more than it saves.
const MIN_SPLIT_PAGES: u64 = 1024;
/// Ranges per worker for a large table, so that workers finishing early take over the rest.
const RANGES_PER_WORKER: u64 = 4;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FullReport {
    pub taken_at: String,
    pub parallelism: usize,
    pub tables: Vec<TableChecksum>,
    /// Where the row snapshot was written, if one was asked for.
    pub snapshot_dir: Option<PathBuf>,
    pub elapsed_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableChecksum {
    pub table: String,
    pub rows: u64,
    /// The wrapping sum of every row's xxh3-128 over its exact text COPY line (`row_hash`), as 32 hex digits:
    /// independent of row order, of the page ranges and of the parallelism; a NULL and an empty value differ. The
    /// line is the one `pg_dump` writes for the row, so a dump's data has the same checksum (`dump.rs`).
    pub checksum: String,
    pub columns: usize,
    pub primary_key: Vec<String>,
}

/// What a worker keeps of each row beyond the checksum.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Checksum,
    Records,
}

/// Key and per-column hashes of rows, stored flat (no allocation per row).
#[derive(Default)]
pub(crate) struct Records {
    pub ncols: usize,
    pub keys: Vec<u8>,
    /// End offset of each row's key in `keys`.
    pub key_ends: Vec<usize>,
    /// `ncols` hashes per row: 0 for NULL, never 0 otherwise.
    pub hashes: Vec<u64>,
    /// Row order by key (filled by `sort`).
    pub order: Vec<u32>,
}

impl Records {
    pub fn len(&self) -> usize {
        self.key_ends.len()
    }
    pub fn key(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.key_ends[i - 1] };
        &self.keys[start..self.key_ends[i]]
    }
    pub fn row_hashes(&self, i: usize) -> &[u64] {
        &self.hashes[i * self.ncols..(i + 1) * self.ncols]
    }
    /// Appends `other` (sorted by [`Records::sort`]) and returns its order, as positions in `self`.
    fn append(&mut self, mut other: Records) -> Vec<u32> {
        let base = self.len() as u32;
        let key_base = self.keys.len();
        self.keys.append(&mut other.keys);
        self.key_ends
            .extend(other.key_ends.iter().map(|e| e + key_base));
        self.hashes.append(&mut other.hashes);
        for i in &mut other.order {
            *i += base;
        }
        other.order
    }

    /// Sorts by key, equal keys (a table without a primary key) by position. Each range is sorted by the worker
    /// that read it (beside the other workers' reads), then a table's ranges are merged ([`Records::merge`]).
    ///
    /// The sort was the largest cost of a snapshot at 1 GB: uuid keys arrive in random order, and a sort of
    /// positions that compares the keys they point to misses the cache at every comparison (2.8 s for 2.5
    /// million keys). Sorting (prefix, position) pairs instead, with the keys' first 8 bytes as one big-endian
    /// integer (an order the full comparison only refines), takes a tenth of that; the pairs, 16 bytes a row,
    /// exist for one range at a time.
    ///
    /// `pairs` is the worker's, kept from one range to the next: a large buffer freed in the middle of a scan
    /// raises glibc's threshold for serving allocations from their own mappings, and the records allocated
    /// after it then stay in the heap's fragments (a peak of 540 MB at 1 GB instead of 395).
    pub fn sort(&mut self, pairs: &mut Vec<(u64, u32)>) {
        pairs.clear();
        pairs.extend((0..self.len() as u32).map(|i| (key_prefix(self.key(i as usize)), i)));
        pairs.sort_unstable_by(|&a, &b| self.compare(a, b));
        self.order = pairs.iter().map(|&(_, i)| i).collect();
    }

    fn compare(&self, a: (u64, u32), b: (u64, u32)) -> std::cmp::Ordering {
        a.0.cmp(&b.0)
            .then_with(|| self.key(a.1 as usize).cmp(self.key(b.1 as usize)))
            .then(a.1.cmp(&b.1))
    }

    /// One order from the sorted orders of consecutive ranges: a k-way merge (k is at most four ranges a
    /// worker), each range's next key's prefix kept at hand.
    fn merge(&mut self, runs: Vec<Vec<u32>>) {
        if runs.len() <= 1 {
            self.order = runs.into_iter().next().unwrap_or_default();
            return;
        }
        let head =
            |run: &[u32], at: usize| run.get(at).map(|&i| (key_prefix(self.key(i as usize)), i));
        let mut at = vec![0usize; runs.len()];
        let mut heads: Vec<Option<(u64, u32)>> = runs.iter().map(|r| head(r, 0)).collect();
        let mut order = Vec::with_capacity(self.len());
        loop {
            let mut best: Option<(usize, (u64, u32))> = None;
            for (k, h) in heads.iter().enumerate() {
                if let Some(h) = *h
                    && best.is_none_or(|(_, b)| self.compare(h, b).is_lt())
                {
                    best = Some((k, h));
                }
            }
            let Some((k, (_, i))) = best else { break };
            order.push(i);
            at[k] += 1;
            heads[k] = head(&runs[k], at[k]);
        }
        self.order = order;
    }
}

/// A key's first 8 bytes, zero-padded, as a big-endian integer: `key_prefix(a) < key_prefix(b)` implies `a < b`.
/// (Half a uuid, all of an integer.)
fn key_prefix(k: &[u8]) -> u64 {
    // A fixed-size load: a copy of a variable length would call memmove for every row.
    if let Some(b) = k.first_chunk::<8>() {
        return u64::from_be_bytes(*b);
    }
    k.iter()
        .enumerate()
        .fold(0, |v, (i, &c)| v | ((c as u64) << (8 * (7 - i))))
}

/// A row's hash: xxh3-128 of its text COPY line, without the newline.
pub(crate) fn row_hash(line: &[u8]) -> u128 {
    xxh3_128(line)
}

pub(crate) fn column_hash(v: Option<&[u8]>) -> u64 {
    match v {
        None => 0,
        Some(b) => match xxh3_64(b) {
            0 => 1,
            h => h,
        },
    }
}

pub(crate) struct TableScan {
    pub meta: TableMeta,
    pub rows: u64,
    pub sum: u128,
    /// Sorted by key, in `Records` mode.
    pub records: Option<Records>,
}

impl TableScan {
    pub fn checksum(&self) -> TableChecksum {
        TableChecksum {
            table: self.meta.name.clone(),
            rows: self.rows,
            checksum: format!("{:032x}", self.sum),
            columns: self.meta.columns.len(),
            primary_key: self.meta.pk_names(),
        }
    }
}

struct Job {
    table: usize,
    range: usize,
    /// A `ctid` condition, or None for the whole table.
    cond: Option<String>,
}

struct RangeOut {
    table: usize,
    range: usize,
    rows: u64,
    sum: u128,
    records: Option<Records>,
}

/// The live tables, the scan's snapshot and everything needed to scan them.
pub(crate) struct Scan {
    pub tables: Vec<TableMeta>,
    pub taken_at: String,
    /// Holds the exported snapshot open until the workers have adopted it (and for the whole scan).
    coordinator: tokio_postgres::Client,
    snapshot_id: String,
}

impl Scan {
    pub async fn begin(cfg: &Config) -> Result<Self, IntegrityError> {
        let coordinator = connect(cfg).await?;
        coordinator
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(|e| IntegrityError::db("begin the scan's transaction", e))?;
        let row = coordinator
            .query_one(
                "SELECT pg_export_snapshot(), to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
                &[],
            )
            .await
            .map_err(|e| IntegrityError::db("export the scan's snapshot", e))?;
        let snapshot_id: String = row.get(0);
        let taken_at: String = row.get(1);
        let tables = catalog::tables(&coordinator).await?;
        Ok(Self {
            tables,
            taken_at,
            coordinator,
            snapshot_id,
        })
    }

    pub fn snapshot_id(&self) -> &str {
        &self.snapshot_id
    }

    /// Every table's `count(*)` in the exported snapshot, in the order of `tables`: read by the server alone,
    /// nothing hashed, so it costs a fraction of a scan.
    pub async fn counts(&self) -> Result<Vec<u64>, IntegrityError> {
        let mut out = Vec::with_capacity(self.tables.len());
        for t in &self.tables {
            out.push(catalog::count_rows(&self.coordinator, &t.name).await? as u64);
        }
        Ok(out)
    }

    /// Keeps only the named tables, in the order of the catalog; an unknown name is an error.
    pub fn select(&mut self, names: &Option<Vec<String>>) -> Result<(), IntegrityError> {
        if let Some(names) = names {
            for n in names {
                if !self.tables.iter().any(|t| &t.name == n) {
                    return Err(IntegrityError::NoSuchTable(n.clone()));
                }
            }
            self.tables.retain(|t| names.contains(&t.name));
        }
        Ok(())
    }

    /// Scans `which` (indexes into `self.tables`) with `parallelism` connections.
    pub async fn run(
        &self,
        cfg: &Config,
        which: &[usize],
        parallelism: usize,
        mode: Mode,
    ) -> Result<Vec<TableScan>, IntegrityError> {
        let parallelism = parallelism.max(1);
        let mut jobs: Vec<(u64, Job)> = Vec::new();
        let mut ranges = vec![0usize; self.tables.len()];
        for &ti in which {
            let t = &self.tables[ti];
            let n = if parallelism > 1 && t.pages >= MIN_SPLIT_PAGES {
                (t.pages / (MIN_SPLIT_PAGES / 2)).clamp(1, parallelism as u64 * RANGES_PER_WORKER)
            } else {
                1
            };
            let per = t.pages.div_ceil(n);
            for r in 0..n {
                // The first and last ranges are open so that pages added after the size was read are covered.
                let lo = r * per;
                let hi = (r + 1) * per;
                let cond = match (n, r) {
                    (1, _) => None,
                    (_, 0) => Some(format!("ctid < '({hi},0)'::tid")),
                    (_, r) if r == n - 1 => Some(format!("ctid >= '({lo},0)'::tid")),
                    _ => Some(format!(
                        "ctid >= '({lo},0)'::tid AND ctid < '({hi},0)'::tid"
                    )),
                };
                jobs.push((
                    per,
                    Job {
                        table: ti,
                        range: r as usize,
                        cond,
                    },
                ));
            }
            ranges[ti] = n as usize;
        }
        jobs.sort_by_key(|(pages, _)| std::cmp::Reverse(*pages));
        let workers = parallelism.min(jobs.len()).max(1);
        let queue = Arc::new(Mutex::new(
            jobs.into_iter().map(|(_, j)| j).collect::<VecDeque<_>>(),
        ));
        let metas = Arc::new(self.tables.clone());
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..workers {
            let cfg = cfg.clone();
            let queue = queue.clone();
            let metas = metas.clone();
            let snap = self.snapshot_id.clone();
            set.spawn(async move { worker(cfg, snap, queue, metas, mode).await });
        }
        let mut outs: Vec<RangeOut> = Vec::new();
        let mut first_err = None;
        while let Some(res) = set.join_next().await {
            match res {
                Ok(Ok(mut o)) => outs.append(&mut o),
                Ok(Err(e)) => {
                    // One failure ends the scan: the others would only spend the server's time.
                    queue.lock().unwrap().clear();
                    first_err.get_or_insert(e);
                }
                Err(e) => {
                    queue.lock().unwrap().clear();
                    first_err.get_or_insert(IntegrityError::Task(e.to_string()));
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        // Keep the coordinator's transaction alive until here.
        let _ = &self.coordinator;
        outs.sort_by_key(|o| (o.table, o.range));
        let mut result = Vec::with_capacity(which.len());
        let mut outs = outs.into_iter().peekable();
        for &ti in which {
            let meta = self.tables[ti].clone();
            let mut scan = TableScan {
                rows: 0,
                sum: 0,
                records: (mode == Mode::Records).then(|| Records {
                    ncols: meta.columns.len(),
                    ..Records::default()
                }),
                meta,
            };
            let mut seen = 0;
            let mut runs = Vec::new();
            while let Some(o) = outs.next_if(|o| o.table == ti) {
                seen += 1;
                scan.rows += o.rows;
                scan.sum = scan.sum.wrapping_add(o.sum);
                if let (Some(all), Some(part)) = (scan.records.as_mut(), o.records) {
                    runs.push(all.append(part));
                }
            }
            if seen != ranges[ti] {
                return Err(IntegrityError::Task(format!(
                    "table {}: {seen} of {} ranges were scanned",
                    scan.meta.name, ranges[ti]
                )));
            }
            if let Some(r) = scan.records.as_mut() {
                r.merge(runs);
            }
            result.push(scan);
        }
        Ok(result)
    }
}

async fn worker(
    cfg: Config,
    snapshot_id: String,
    queue: Arc<Mutex<VecDeque<Job>>>,
    metas: Arc<Vec<TableMeta>>,
    mode: Mode,
) -> Result<Vec<RangeOut>, IntegrityError> {
    let client = connect(&cfg).await?;
    // The id is the server's own output (hex digits and dashes); checked anyway since it is spliced into SQL.
    if !snapshot_id
        .chars()
        .all(|c| c.is_ascii_hexdigit() || c == '-')
    {
        return Err(IntegrityError::Task(format!(
            "unexpected snapshot id {snapshot_id:?}"
        )));
    }
    client
        .batch_execute(&format!(
            "{DUMP_SESSION} BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{snapshot_id}'"
        ))
        .await
        .map_err(|e| IntegrityError::db("adopt the scan's snapshot", e))?;
    let mut outs = Vec::new();
    let mut pairs = Vec::new();
    loop {
        let job = queue.lock().unwrap().pop_front();
        let Some(job) = job else { break };
        let mut out = scan_range(&client, &metas[job.table], &job, mode).await?;
        if let Some(r) = out.records.as_mut() {
            r.sort(&mut pairs);
        }
        outs.push(out);
    }
    let _ = client.batch_execute("COMMIT").await;
    Ok(outs)
}

async fn scan_range(
    client: &tokio_postgres::Client,
    meta: &TableMeta,
    job: &Job,
    mode: Mode,
) -> Result<RangeOut, IntegrityError> {
    let cols: Vec<String> = meta.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let table = format!("public.{}", quote_ident(&meta.name));
    let sql = match &job.cond {
        None => format!("COPY {table} ({}) TO STDOUT", cols.join(", ")),
        Some(cond) => format!(
            "COPY (SELECT {} FROM {table} WHERE {cond}) TO STDOUT",
            cols.join(", ")
        ),
    };
    let what = || match &job.cond {
        None => format!("scan table {}", meta.name),
        Some(c) => format!("scan table {} where {c}", meta.name),
    };
    let stream = client
        .copy_out(&sql)
        .await
        .map_err(|e| IntegrityError::db(what(), e))?;
    futures::pin_mut!(stream);
    let mut rows = TableRows::new(meta, mode);
    let format_err = |e: crate::copy::CopyFormatError| IntegrityError::CopyFormat {
        table: meta.name.clone(),
        offset: e.offset,
        why: e.why,
    };
    while let Some(chunk) = stream
        .try_next()
        .await
        .map_err(|e| IntegrityError::db(what(), e))?
    {
        rows.feed(&chunk).map_err(format_err)?;
    }
    let (rows, sum, records) = rows.finish().map_err(format_err)?;
    Ok(RangeOut {
        table: job.table,
        range: job.range,
        rows,
        sum,
        records,
    })
}

/// A table's rows (or a range's) as they stream in, in the text COPY format: their count and checksum and, in
/// `Records` mode, each row's key and column hashes. The scan feeds it what the server sends; the backup, what
/// `pg_dump` wrote (`dump_scan.rs`).
pub(crate) struct TableRows {
    parser: CopyParser,
    ncols: usize,
    /// Key columns with their types.
    pk: Vec<(usize, u32)>,
    pub rows: u64,
    sum: u128,
    records: Option<Records>,
    bad_key: Option<String>,
}

impl TableRows {
    pub fn new(meta: &TableMeta, mode: Mode) -> Self {
        let ncols = meta.columns.len();
        let mut t = Self::checksum(ncols);
        if mode == Mode::Records {
            t.pk = meta
                .primary_key
                .iter()
                .map(|&i| (i, meta.columns[i].type_oid))
                .collect();
            t.records = Some(Records {
                ncols,
                ..Records::default()
            });
        }
        t
    }

    /// Count and checksum only, for rows of which only the number of columns is known (a dump's, read back).
    pub fn checksum(ncols: usize) -> Self {
        Self {
            parser: CopyParser::new(ncols),
            ncols,
            pk: Vec::new(),
            rows: 0,
            sum: 0,
            records: None,
            bad_key: None,
        }
    }

    pub fn feed(&mut self, data: &[u8]) -> Result<(), crate::copy::CopyFormatError> {
        let Self {
            parser,
            ncols,
            pk,
            rows,
            sum,
            records,
            bad_key,
        } = self;
        parser.feed(data, &mut |t: Row<'_>| {
            *rows += 1;
            *sum = sum.wrapping_add(row_hash(t.raw));
            if let Some(r) = records.as_mut() {
                for &(i, oid) in pk.iter() {
                    // A primary key column is never NULL.
                    if let Err(why) =
                        catalog::encode_key_part(oid, t.field(i).unwrap_or_default(), &mut r.keys)
                    {
                        bad_key.get_or_insert(why);
                    }
                }
                r.key_ends.push(r.keys.len());
                for i in 0..*ncols {
                    r.hashes.push(column_hash(t.field(i)));
                }
            }
        })
    }

    /// Rows, checksum and records (unsorted), once the stream has ended.
    pub fn finish(self) -> Result<(u64, u128, Option<Records>), crate::copy::CopyFormatError> {
        self.parser.finish()?;
        match self.bad_key {
            Some(why) => Err(crate::copy::CopyFormatError { offset: 0, why }),
            None => Ok((self.rows, self.sum, self.records)),
        }
    }
}

/// A content checksum of every table (or of `opts.tables`), and the row snapshot if `opts.snapshot_dir` is set.
pub async fn full(cfg: &Config, opts: &ScanOptions) -> Result<FullReport, IntegrityError> {
    let started = std::time::Instant::now();
    let mut scan = Scan::begin(cfg).await?;
    scan.select(&opts.tables)?;
    let which: Vec<usize> = (0..scan.tables.len()).collect();
    let mode = if opts.snapshot_dir.is_some() {
        Mode::Records
    } else {
        Mode::Checksum
    };
    let scans = scan.run(cfg, &which, opts.parallelism, mode).await?;
    if let Some(dir) = &opts.snapshot_dir {
        crate::snapshot::write(dir, &scan.taken_at, &scans)?;
    }
    let report = FullReport {
        taken_at: scan.taken_at.clone(),
        parallelism: opts.parallelism.max(1),
        tables: scans.iter().map(TableScan::checksum).collect(),
        snapshot_dir: opts.snapshot_dir.clone(),
        elapsed_ms: started.elapsed().as_millis() as u64,
    };
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys that share prefixes, hold zero bytes, are prefixes of one another, longer than 16 bytes or equal.
    fn awkward_keys() -> Vec<Vec<u8>> {
        let mut keys: Vec<Vec<u8>> = vec![
            vec![],
            vec![0],
            vec![0, 0],
            b"ab".to_vec(),
            b"ab\0".to_vec(),
            b"ab\0c".to_vec(),
            b"abcdefghijklmnop".to_vec(),
            b"abcdefghijklmnop\0".to_vec(),
            b"abcdefghijklmnopq".to_vec(),
            b"abcdefghijklmnop".to_vec(),
            vec![0xff; 9],
            vec![0xff; 8],
            vec![0x80, 0, 0, 0, 0, 0, 0, 1],
            vec![0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            b"ab".to_vec(),
        ];
        // Pseudo-random 24-byte keys, some sharing their first 16 bytes.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..500 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let hi = if i % 5 == 0 { 42 } else { x };
            let mut k = hi.to_be_bytes().to_vec();
            k.extend_from_slice(&hi.to_le_bytes());
            k.extend_from_slice(&x.rotate_left(17).to_be_bytes());
            keys.push(k);
        }
        keys
    }

    fn records_of(keys: &[Vec<u8>]) -> Records {
        let mut r = Records {
            ncols: 0,
            ..Records::default()
        };
        for k in keys {
            r.keys.extend_from_slice(k);
            r.key_ends.push(r.keys.len());
        }
        r
    }

    /// What the scan does: each range sorted alone, appended in range order, merged.
    #[test]
    fn ranges_sorted_then_merged_order_by_key_then_position_as_one_stable_sort_would() {
        let keys = awkward_keys();
        let mut expected: Vec<u32> = (0..keys.len() as u32).collect();
        expected.sort_by(|&a, &b| keys[a as usize].cmp(&keys[b as usize]));
        for cuts in [
            vec![],
            vec![7],
            vec![1, 2, 300],
            vec![100, 200, 300, 400, 500],
        ] {
            let mut table = records_of(&[]);
            let mut runs = Vec::new();
            let mut from = 0;
            for to in cuts.iter().copied().chain([keys.len()]) {
                let mut part = records_of(&keys[from..to]);
                part.sort(&mut Vec::new());
                runs.push(table.append(part));
                from = to;
            }
            table.merge(runs);
            assert_eq!(table.order, expected, "ranges cut at {cuts:?}");
        }
    }
}
