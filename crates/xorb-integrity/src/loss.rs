//! Rows lost, changed and added between a row snapshot and the live database.
//!
//! With the same primary key on both sides the comparison is a merge of two key-ordered streams (the snapshot
//! file and the live scan, sorted in memory as keys and hashes only), comparing the per-column hashes of the
//! columns both sides have with the same type. A table without a primary key (or whose key changed) is compared
//! as a multiset of rows: rows lost and added are exact, "changed" cannot be told from lost plus added.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio_postgres::Config;
use xxhash_rust::xxh3::Xxh3;

use crate::catalog::display_key;
use crate::scan::{Mode, Scan, TableScan};
use crate::snapshot::{self, ManifestTable, RowReader};
use crate::{IntegrityError, ScanOptions};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LossReport {
    pub snapshot: PathBuf,
    pub snapshot_taken_at: String,
    pub assessed_at: String,
    pub lost: u64,
    pub changed: u64,
    pub added: u64,
    pub tables: Vec<TableLoss>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TableState {
    /// In the snapshot and live: compared row by row.
    Compared,
    /// In the snapshot, gone now: every row lost.
    Dropped,
    /// Live, not in the snapshot: every row added.
    Added,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableLoss {
    pub table: String,
    pub state: TableState,
    /// The key the rows were matched by; empty when compared as a multiset of rows (no common primary key).
    pub keyed_by: Vec<String>,
    pub rows_before: u64,
    pub rows_after: u64,
    pub lost: u64,
    pub changed: u64,
    pub added: u64,
    /// At most `list_limit` of each; the counts above are exact.
    pub lost_keys: Vec<String>,
    pub changed_rows: Vec<ChangedRow>,
    pub added_keys: Vec<String>,
    pub listing_truncated: bool,
    pub columns_dropped: Vec<DroppedColumn>,
    pub columns_added: Vec<String>,
    /// Same name, another type: not compared (every value's binary form changed).
    pub columns_retyped: Vec<String>,
    /// For a person: "evidence: 312 rows lost (table dropped)".
    pub summary: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangedRow {
    pub key: String,
    pub columns: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DroppedColumn {
    pub name: String,
    #[serde(rename = "type")]
    pub type_name: String,
    /// Values the column held that were not NULL: what its drop destroyed.
    pub non_null_values: u64,
}

impl TableLoss {
    fn new(table: &str, state: TableState) -> Self {
        Self {
            table: table.to_string(),
            state,
            keyed_by: Vec::new(),
            rows_before: 0,
            rows_after: 0,
            lost: 0,
            changed: 0,
            added: 0,
            lost_keys: Vec::new(),
            changed_rows: Vec::new(),
            added_keys: Vec::new(),
            listing_truncated: false,
            columns_dropped: Vec::new(),
            columns_added: Vec::new(),
            columns_retyped: Vec::new(),
            summary: String::new(),
        }
    }

    /// Whether anything at all differs.
    pub fn differs(&self) -> bool {
        self.state != TableState::Compared
            || self.lost + self.changed + self.added > 0
            || !self.columns_dropped.is_empty()
            || !self.columns_added.is_empty()
            || !self.columns_retyped.is_empty()
    }

    fn summarise(&mut self) {
        let rows = |n: u64, what: &str| format!("{n} row{} {what}", if n == 1 { "" } else { "s" });
        let mut parts = Vec::new();
        match self.state {
            TableState::Dropped => {
                parts.push(format!("{} (table dropped)", rows(self.lost, "lost")))
            }
            TableState::Added => parts.push(format!("{} (table added)", rows(self.added, "added"))),
            TableState::Compared => {
                for (n, what) in [
                    (self.lost, "lost"),
                    (self.changed, "changed"),
                    (self.added, "added"),
                ] {
                    if n > 0 {
                        parts.push(rows(n, what));
                    }
                }
                for c in &self.columns_dropped {
                    parts.push(format!(
                        "column {} dropped ({} non-NULL value{} lost)",
                        c.name,
                        c.non_null_values,
                        if c.non_null_values == 1 { "" } else { "s" }
                    ));
                }
                for c in &self.columns_added {
                    parts.push(format!("column {c} added"));
                }
                for c in &self.columns_retyped {
                    parts.push(format!("column {c} changed type (not compared)"));
                }
                if parts.is_empty() {
                    parts.push(format!("unchanged ({})", rows(self.rows_after, "compared")));
                }
            }
        }
        self.summary = format!("{}: {}", self.table, parts.join(", "));
    }
}

impl LossReport {
    /// The human rendering: one summary line per table, then the listed keys of the tables that differ.
    pub fn render_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Data-loss assessment: snapshot of {} against the database as of {}",
            self.snapshot_taken_at, self.assessed_at
        );
        let _ = writeln!(
            s,
            "Total: {} rows lost, {} changed, {} added in {} tables.",
            self.lost,
            self.changed,
            self.added,
            self.tables.len()
        );
        for t in &self.tables {
            let _ = writeln!(s, "  {}", t.summary);
            if !t.lost_keys.is_empty() {
                let _ = writeln!(s, "      lost:    {}", t.lost_keys.join(", "));
            }
            if !t.changed_rows.is_empty() {
                let rows: Vec<String> = t
                    .changed_rows
                    .iter()
                    .map(|c| format!("{} ({})", c.key, c.columns.join(", ")))
                    .collect();
                let _ = writeln!(s, "      changed: {}", rows.join(", "));
            }
            if !t.added_keys.is_empty() && t.state != TableState::Added {
                let _ = writeln!(s, "      added:   {}", t.added_keys.join(", "));
            }
            if t.listing_truncated {
                let _ = writeln!(s, "      (listing cut short; the counts are exact)");
            }
        }
        s
    }
}

/// Compares the row snapshot in `before` (written by [`crate::full`] with `snapshot_dir`) with the live tables.
pub async fn loss(
    cfg: &Config,
    before: &Path,
    opts: &ScanOptions,
) -> Result<LossReport, IntegrityError> {
    let manifest = snapshot::read_manifest(before)?;
    let scan = Scan::begin(cfg).await?;
    let mut names: BTreeSet<String> = manifest.tables.iter().map(|t| t.table.clone()).collect();
    names.extend(scan.tables.iter().map(|t| t.name.clone()));
    if let Some(sel) = &opts.tables {
        if let Some(n) = sel.iter().find(|n| !names.contains(*n)) {
            return Err(IntegrityError::NoSuchTable(n.clone()));
        }
        names.retain(|n| sel.contains(n));
    }
    let live: Vec<usize> = (0..scan.tables.len())
        .filter(|&i| names.contains(&scan.tables[i].name))
        .collect();
    let mut scans = scan
        .run(cfg, &live, opts.parallelism, Mode::Records)
        .await?;
    let limit = opts.list_limit;
    let mut tables = Vec::new();
    for name in &names {
        let snap = manifest.tables.iter().find(|t| &t.table == name);
        let cur = scans
            .iter()
            .position(|s| &s.meta.name == name)
            .map(|i| scans.swap_remove(i));
        let mut t = match (snap, cur) {
            (Some(s), Some(c)) => compare(before, s, &c, limit)?,
            (Some(s), None) => dropped_table(before, s, limit)?,
            (None, Some(c)) => added_table(&c, limit),
            (None, None) => continue,
        };
        t.summarise();
        tables.push(t);
    }
    Ok(LossReport {
        snapshot: before.to_path_buf(),
        snapshot_taken_at: manifest.taken_at,
        assessed_at: scan.taken_at.clone(),
        lost: tables.iter().map(|t| t.lost).sum(),
        changed: tables.iter().map(|t| t.changed).sum(),
        added: tables.iter().map(|t| t.added).sum(),
        tables,
    })
}

fn push_capped<T>(list: &mut Vec<T>, limit: usize, truncated: &mut bool, item: impl FnOnce() -> T) {
    if list.len() < limit {
        list.push(item());
    } else {
        *truncated = true;
    }
}

fn key_types(s: &ManifestTable) -> Vec<u32> {
    s.primary_key
        .iter()
        .filter_map(|k| s.column_index(k).map(|i| s.columns[i].type_oid))
        .collect()
}

fn dropped_table(dir: &Path, s: &ManifestTable, limit: usize) -> Result<TableLoss, IntegrityError> {
    let mut t = TableLoss::new(&s.table, TableState::Dropped);
    t.keyed_by = s.primary_key.clone();
    t.rows_before = s.rows;
    t.lost = s.rows;
    let types = key_types(s);
    let mut r = RowReader::open(dir, s)?;
    while t.lost_keys.len() < limit && r.next_row()? {
        t.lost_keys.push(if types.is_empty() {
            row_label(&r.hashes)
        } else {
            display_key(&types, &r.key)
        });
    }
    t.listing_truncated = s.rows > t.lost_keys.len() as u64;
    Ok(t)
}

fn added_table(c: &TableScan, limit: usize) -> TableLoss {
    let mut t = TableLoss::new(&c.meta.name, TableState::Added);
    t.keyed_by = c.meta.pk_names();
    t.rows_after = c.rows;
    t.added = c.rows;
    let types: Vec<u32> = c
        .meta
        .primary_key
        .iter()
        .map(|&i| c.meta.columns[i].type_oid)
        .collect();
    if let Some(recs) = &c.records {
        for &r in recs.order.iter().take(limit) {
            t.added_keys.push(if types.is_empty() {
                row_label(recs.row_hashes(r as usize))
            } else {
                display_key(&types, recs.key(r as usize))
            });
        }
    }
    t.listing_truncated = c.rows > t.added_keys.len() as u64;
    t
}

/// How a row of a table without a key is named: a digest of its values.
fn row_label(hashes: &[u64]) -> String {
    format!("row#{:016x}", row_digest(hashes, None) as u64)
}

fn row_digest(hashes: &[u64], pick: Option<&[usize]>) -> u128 {
    let mut h = Xxh3::new();
    match pick {
        None => hashes.iter().for_each(|x| h.update(&x.to_le_bytes())),
        Some(idx) => idx.iter().for_each(|&i| h.update(&hashes[i].to_le_bytes())),
    }
    h.digest128()
}

fn compare(
    dir: &Path,
    s: &ManifestTable,
    c: &TableScan,
    limit: usize,
) -> Result<TableLoss, IntegrityError> {
    let mut t = TableLoss::new(&s.table, TableState::Compared);
    t.rows_before = s.rows;
    t.rows_after = c.rows;
    let cur = &c.meta;
    // Columns both sides have with the same type: (snapshot index, live index, name).
    let mut common: Vec<(usize, usize, &str)> = Vec::new();
    let mut dropped: Vec<usize> = Vec::new();
    for (si, col) in s.columns.iter().enumerate() {
        match cur.columns.iter().position(|x| x.name == col.name) {
            Some(ci) if cur.columns[ci].type_name == col.type_name => {
                common.push((si, ci, &col.name))
            }
            Some(_) => t.columns_retyped.push(col.name.clone()),
            None => dropped.push(si),
        }
    }
    t.columns_added = cur
        .columns
        .iter()
        .filter(|x| s.column_index(&x.name).is_none())
        .map(|x| x.name.clone())
        .collect();
    let mut non_null = vec![0u64; dropped.len()];
    let recs = c
        .records
        .as_ref()
        .ok_or_else(|| IntegrityError::Task("loss needs a scan with records".into()))?;
    let keyed = !s.primary_key.is_empty()
        && s.primary_key == cur.pk_names()
        && s.primary_key
            .iter()
            .all(|k| common.iter().any(|(_, _, n)| n == k));
    let mut r = RowReader::open(dir, s)?;
    let mut truncated = false;
    if keyed {
        t.keyed_by = s.primary_key.clone();
        let types = key_types(s);
        let order = &recs.order;
        let mut j = 0;
        let mut has = r.next_row()?;
        loop {
            let live = order.get(j).map(|&i| i as usize);
            let ord = match (has, live) {
                (false, None) => break,
                (true, None) => std::cmp::Ordering::Less,
                (false, Some(_)) => std::cmp::Ordering::Greater,
                (true, Some(i)) => r.key.as_slice().cmp(recs.key(i)),
            };
            match ord {
                std::cmp::Ordering::Less => {
                    t.lost += 1;
                    push_capped(&mut t.lost_keys, limit, &mut truncated, || {
                        display_key(&types, &r.key)
                    });
                }
                std::cmp::Ordering::Greater => {
                    let i = live.unwrap_or_default();
                    t.added += 1;
                    push_capped(&mut t.added_keys, limit, &mut truncated, || {
                        display_key(&types, recs.key(i))
                    });
                    j += 1;
                    continue;
                }
                std::cmp::Ordering::Equal => {
                    let i = live.unwrap_or_default();
                    let now = recs.row_hashes(i);
                    if common.iter().any(|&(si, ci, _)| r.hashes[si] != now[ci]) {
                        t.changed += 1;
                        push_capped(&mut t.changed_rows, limit, &mut truncated, || ChangedRow {
                            key: display_key(&types, &r.key),
                            columns: common
                                .iter()
                                .filter(|&&(si, ci, _)| r.hashes[si] != now[ci])
                                .map(|(_, _, n)| n.to_string())
                                .collect(),
                        });
                    }
                    j += 1;
                }
            }
            for (k, &si) in dropped.iter().enumerate() {
                non_null[k] += u64::from(r.hashes[si] != 0);
            }
            has = r.next_row()?;
        }
    } else {
        // A multiset of rows over the common columns, each row named by the digest of its values.
        let s_idx: Vec<usize> = common.iter().map(|x| x.0).collect();
        let c_idx: Vec<usize> = common.iter().map(|x| x.1).collect();
        let mut before = Vec::with_capacity(s.rows as usize);
        while r.next_row()? {
            before.push(row_digest(&r.hashes, Some(&s_idx)));
            for (k, &si) in dropped.iter().enumerate() {
                non_null[k] += u64::from(r.hashes[si] != 0);
            }
        }
        let mut after: Vec<u128> = (0..recs.len())
            .map(|i| row_digest(recs.row_hashes(i), Some(&c_idx)))
            .collect();
        before.sort_unstable();
        after.sort_unstable();
        let label = |d: u128| format!("row#{:016x}", d as u64);
        let (mut a, mut b) = (0, 0);
        while a < before.len() || b < after.len() {
            if b == after.len() || (a < before.len() && before[a] < after[b]) {
                t.lost += 1;
                push_capped(&mut t.lost_keys, limit, &mut truncated, || label(before[a]));
                a += 1;
            } else if a == before.len() || after[b] < before[a] {
                t.added += 1;
                push_capped(&mut t.added_keys, limit, &mut truncated, || label(after[b]));
                b += 1;
            } else {
                a += 1;
                b += 1;
            }
        }
    }
    t.listing_truncated = truncated;
    t.columns_dropped = dropped
        .iter()
        .zip(non_null)
        .map(|(&si, n)| DroppedColumn {
            name: s.columns[si].name.clone(),
            type_name: s.columns[si].type_name.clone(),
            non_null_values: n,
        })
        .collect();
    Ok(t)
}
