//! The backup's scan: the checksums and the row snapshot read from the rows `pg_dump` sends while it writes the
//! dump, not from a second read of the database. The caller exports the snapshot with [`DumpScan::begin`], runs
//! `pg_dump --snapshot` on it and hands [`DumpScan::read`] the dump's rows as `pg_restore --data-only --file=-`
//! prints them from the same stream. Every table of the snapshot must be in it once, with the snapshot's
//! columns in their order.
//!
//! The database is read once instead of twice: on two cores, `pg_dump` and a scan beside it each took a core for
//! the whole backup. What proves the dump is still a second read, of the file (`3.db.proof`): this scan sees the
//! bytes before they reach the disk.

use std::path::PathBuf;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_postgres::Config;

use crate::IntegrityError;
use crate::catalog::TableMeta;
use crate::scan::{FullReport, Mode, Scan, TableRows, TableScan};
use crate::script::{Header, ScriptParser, ScriptSink};

/// An exported snapshot whose data will come through a dump.
pub struct DumpScan {
    scan: Scan,
    snapshot_dir: Option<PathBuf>,
    started: Instant,
}

impl DumpScan {
    /// Exports the snapshot and reads its catalog; `snapshot_dir`, if set, receives the row snapshot.
    pub async fn begin(
        cfg: &Config,
        snapshot_dir: Option<PathBuf>,
    ) -> Result<Self, IntegrityError> {
        let started = Instant::now();
        Ok(Self {
            scan: Scan::begin(cfg).await?,
            snapshot_dir,
            started,
        })
    }

    /// For `pg_dump --snapshot`. The snapshot stays exported until [`Self::read`] has ended.
    pub fn snapshot_id(&self) -> &str {
        self.scan.snapshot_id()
    }

    /// Reads the dump's rows to their end: every table's checksum, and the row snapshot if one was asked for.
    pub async fn read(
        self,
        mut script: impl AsyncRead + Unpin,
    ) -> Result<FullReport, IntegrityError> {
        let mode = if self.snapshot_dir.is_some() {
            Mode::Records
        } else {
            Mode::Checksum
        };
        let mut sink = Tables {
            metas: &self.scan.tables,
            mode,
            done: (0..self.scan.tables.len()).map(|_| None).collect(),
            open: None,
            pairs: Vec::new(),
        };
        let reading = async {
            let mut parser = ScriptParser::default();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = script.read(&mut buf).await.map_err(|e| {
                    IntegrityError::Dump(format!("cannot read the dump's rows: {e}"))
                })?;
                if n == 0 {
                    break;
                }
                parser.feed(&buf[..n], &mut sink)?;
            }
            parser.finish(&sink)
        };
        // The server counts the same snapshot meanwhile: what the checksums are taken from is pg_dump's reading,
        // and the count is the database's own word that no row is missing from it.
        let (read, counts) = tokio::join!(reading, self.scan.counts());
        read?;
        let counts = counts?;
        let mut scans = Vec::with_capacity(sink.done.len());
        for (meta, done) in self.scan.tables.iter().zip(sink.done) {
            scans.push(done.ok_or_else(|| {
                IntegrityError::Dump(format!(
                    "table {} is in the snapshot but the dump holds no data for it",
                    meta.name
                ))
            })?);
        }
        same_counts(&scans, &counts)?;
        if let Some(dir) = &self.snapshot_dir {
            crate::snapshot::write(dir, &self.scan.taken_at, &scans)?;
        }
        Ok(FullReport {
            taken_at: self.scan.taken_at.clone(),
            parallelism: 1,
            tables: scans.iter().map(TableScan::checksum).collect(),
            snapshot_dir: self.snapshot_dir.clone(),
            elapsed_ms: self.started.elapsed().as_millis() as u64,
        })
    }
}

/// Every table's rows as the dump holds them against its count in the snapshot (same order).
fn same_counts(scans: &[TableScan], counts: &[u64]) -> Result<(), IntegrityError> {
    let wrong: Vec<String> = scans
        .iter()
        .zip(counts)
        .filter(|(t, n)| t.rows != **n)
        .map(|(t, n)| {
            format!(
                "{} ({} rows in the dump, {n} in the database)",
                t.meta.name, t.rows
            )
        })
        .collect();
    if wrong.is_empty() {
        return Ok(());
    }
    Err(IntegrityError::Dump(format!(
        "pg_dump did not write every row of the snapshot it read: {}",
        wrong.join(", ")
    )))
}

/// The snapshot's tables, filled one at a time as the dump's blocks pass.
struct Tables<'a> {
    metas: &'a [TableMeta],
    mode: Mode,
    done: Vec<Option<TableScan>>,
    open: Option<(usize, TableRows)>,
    /// The sort's buffer, kept from one table to the next (`Records::sort`).
    pairs: Vec<(u64, u32)>,
}

impl ScriptSink for Tables<'_> {
    fn begin(&mut self, h: Header) -> Result<bool, String> {
        if h.schema != "public" {
            return Ok(false);
        }
        let ti = self
            .metas
            .iter()
            .position(|m| m.name == h.table)
            .ok_or_else(|| {
                format!(
                    "the dump holds data for table {}, which the snapshot does not have",
                    h.table
                )
            })?;
        let meta = &self.metas[ti];
        if self.done[ti].is_some() {
            return Err(format!(
                "the dump holds the data of table {} twice",
                h.table
            ));
        }
        let want: Vec<&str> = meta.columns.iter().map(|c| c.name.as_str()).collect();
        if h.columns != want {
            return Err(format!(
                "table {}: the dump's columns ({}) are not the snapshot's ({})",
                h.table,
                h.columns.join(", "),
                want.join(", ")
            ));
        }
        self.open = Some((ti, TableRows::new(meta, self.mode)));
        Ok(true)
    }

    fn rows(&mut self, data: &[u8]) -> Result<(), String> {
        let (_, rows) = self.open.as_mut().expect("a table is open");
        rows.feed(data).map_err(|e| e.why)
    }

    fn rows_seen(&self) -> u64 {
        self.open.as_ref().map_or(0, |(_, r)| r.rows)
    }

    fn end(&mut self) -> Result<(), String> {
        let (ti, rows) = self.open.take().expect("a table is open");
        let (rows, sum, mut records) = rows.finish().map_err(|e| e.why)?;
        if let Some(r) = records.as_mut() {
            r.sort(&mut self.pairs);
        }
        self.done[ti] = Some(TableScan {
            meta: self.metas[ti].clone(),
            rows,
            sum,
            records,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Column;

    fn meta(name: &str, cols: &[&str]) -> TableMeta {
        TableMeta {
            name: name.into(),
            columns: cols
                .iter()
                .map(|c| Column {
                    name: c.to_string(),
                    type_name: "bigint".into(),
                    type_oid: 20,
                })
                .collect(),
            primary_key: vec![0],
            pages: 0,
        }
    }

    fn read(metas: &[TableMeta], script: &[u8]) -> Result<Vec<Option<TableScan>>, String> {
        let mut sink = Tables {
            metas,
            mode: Mode::Records,
            done: (0..metas.len()).map(|_| None).collect(),
            open: None,
            pairs: Vec::new(),
        };
        let mut parser = ScriptParser::default();
        let fed = parser
            .feed(script, &mut sink)
            .and_then(|()| parser.finish(&sink));
        fed.map(|()| sink.done).map_err(|e| e.to_string())
    }

    #[test]
    fn a_table_s_rows_give_its_checksum_and_its_records_sorted_by_key() {
        let metas = [meta("a", &["id", "v"]), meta("b", &["id"])];
        let done = read(
            &metas,
            b"COPY public.a (id, v) FROM stdin;\n3\tx\n1\t\\N\n\\.\nCOPY other.a (id) FROM stdin;\n9\n\\.\n",
        )
        .unwrap();
        let a = done[0].as_ref().unwrap();
        assert_eq!(a.rows, 2);
        assert_eq!(
            a.sum,
            crate::scan::row_hash(b"3\tx").wrapping_add(crate::scan::row_hash(b"1\t\\N"))
        );
        let r = a.records.as_ref().unwrap();
        let keys: Vec<&[u8]> = r.order.iter().map(|&i| r.key(i as usize)).collect();
        assert!(keys[0] < keys[1], "sorted by key");
        assert_eq!(r.row_hashes(r.order[0] as usize)[1], 0, "row 1's v is NULL");
        assert!(done[1].is_none(), "b had no data; read() names it");
    }

    #[test]
    fn other_columns_an_unknown_table_or_a_table_twice_is_an_error() {
        let metas = [meta("a", &["id", "v"])];
        let e = read(&metas, b"COPY public.a (v, id) FROM stdin;\n")
            .err()
            .unwrap();
        assert!(
            e.contains(
                "line 1: table a: the dump's columns (v, id) are not the snapshot's (id, v)"
            ),
            "{e}"
        );
        let e = read(&metas, b"COPY public.z (id) FROM stdin;\n")
            .err()
            .unwrap();
        assert!(
            e.contains("data for table z, which the snapshot does not have"),
            "{e}"
        );
        let twice =
            b"COPY public.a (id, v) FROM stdin;\n\\.\nCOPY public.a (id, v) FROM stdin;\n\\.\n";
        let e = read(&metas, twice).err().unwrap();
        assert!(
            e.contains("line 3: the dump holds the data of table a twice"),
            "{e}"
        );
    }

    #[test]
    fn a_table_with_fewer_rows_than_the_database_counts_is_named() {
        let metas = [meta("a", &["id"]), meta("b", &["id"])];
        let done = read(
            &metas,
            b"COPY public.a (id) FROM stdin;\n1\n2\n\\.\nCOPY public.b (id) FROM stdin;\n7\n\\.\n",
        )
        .unwrap();
        let scans: Vec<TableScan> = done.into_iter().map(Option::unwrap).collect();
        assert!(same_counts(&scans, &[2, 1]).is_ok());
        let e = same_counts(&scans, &[2, 3]).unwrap_err().to_string();
        assert!(
            e.contains("pg_dump did not write every row of the snapshot it read: b (1 rows in the dump, 3 in the database)")
                && !e.contains(" a ("),
            "{e}"
        );
    }
}
