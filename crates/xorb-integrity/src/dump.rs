//! The checksums of a dump's tables, read from its data: the rows of `pg_restore --data-only --file=-` (a SQL script
//! whose tables are `COPY schema.table (columns) FROM stdin;` blocks ended by `\.`), hashed line by line exactly as
//! the scan hashes the rows the server sends. No server is involved, so proving a backup costs one read of it, not
//! a restore and a scan.
//!
//! The lines are equal only when the dump was taken under the scan's session (`scan::DUMP_SESSION`): `pg_dump` sets
//! the same date, interval and float styles itself; [`PG_DUMP_ENV`] and [`PG_DUMP_ARGS`] give it the rest.

use std::io::BufRead;

use crate::IntegrityError;
use crate::scan::{TableChecksum, TableRows};
use crate::script::{Header, ScriptParser, ScriptSink};

/// The environment of a `pg_dump` whose rows the scan can compare with: its time zone is the scan's.
pub const PG_DUMP_ENV: &[(&str, &str)] = &[("PGTZ", "UTC")];
/// The arguments a `pg_dump` needs for the same reason: the scan reads UTF-8.
pub const PG_DUMP_ARGS: &[&str] = &["--encoding=UTF8"];

struct Open {
    table: String,
    columns: usize,
    /// Hashed as the scan hashes a row: the same code.
    rows: TableRows,
}

/// Every table of schema `public` (the scan covers no other) with its checksum.
#[derive(Default)]
struct Sums {
    out: Vec<TableChecksum>,
    open: Option<Open>,
}

impl ScriptSink for Sums {
    fn begin(&mut self, h: Header) -> Result<bool, String> {
        if h.schema != "public" {
            return Ok(false);
        }
        self.open = Some(Open {
            table: h.table,
            columns: h.columns.len(),
            rows: TableRows::checksum(h.columns.len()),
        });
        Ok(true)
    }

    fn rows(&mut self, data: &[u8]) -> Result<(), String> {
        let t = self.open.as_mut().expect("a table is open");
        t.rows.feed(data).map_err(|e| e.why)
    }

    fn rows_seen(&self) -> u64 {
        self.open.as_ref().map_or(0, |t| t.rows.rows)
    }

    fn end(&mut self) -> Result<(), String> {
        let t = self.open.take().expect("a table is open");
        let (rows, sum, _) = t.rows.finish().map_err(|e| e.why)?;
        self.out.push(TableChecksum {
            table: t.table,
            rows,
            checksum: format!("{sum:032x}"),
            columns: t.columns,
            primary_key: Vec::new(),
        });
        Ok(())
    }
}

/// Every table of schema `public` whose data the script holds, with its row count, column count and checksum
/// (the scan's [`TableChecksum`]; a dump's COPY names no primary key, so `primary_key` is empty).
pub fn dump_checksums(mut script: impl BufRead) -> Result<Vec<TableChecksum>, IntegrityError> {
    let (mut parser, mut sums) = (ScriptParser::default(), Sums::default());
    loop {
        let chunk = script
            .fill_buf()
            .map_err(|e| IntegrityError::Dump(format!("cannot read the dump's data: {e}")))?;
        if chunk.is_empty() {
            break;
        }
        let n = chunk.len();
        parser.feed(chunk, &mut sums)?;
        script.consume(n);
    }
    parser.finish(&sums)?;
    Ok(sums.out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::row_hash;

    const SCRIPT: &str = "--\n-- PostgreSQL database dump\n--\nSET statement_timeout = 0;\n\n\
        COPY public.tenants (id, name, \"Odd, \"\"name\"\"\") FROM stdin;\n\
        1\tacme\t\\N\n2\tglobex\tx\\ty\n\\.\n\n\
        COPY audit.events (id) FROM stdin;\n7\n\\.\n\n\
        COPY public.empty (id) FROM stdin;\n\\.\n";

    #[test]
    fn a_script_gives_each_public_table_its_rows_and_the_scan_s_checksum() {
        let got = dump_checksums(SCRIPT.as_bytes()).unwrap();
        let sum = row_hash(b"1\tacme\t\\N").wrapping_add(row_hash(b"2\tglobex\tx\\ty"));
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(
            (got[0].table.as_str(), got[0].rows, got[0].columns),
            ("tenants", 2, 3)
        );
        assert_eq!(got[0].checksum, format!("{sum:032x}"));
        assert_eq!((got[1].table.as_str(), got[1].rows), ("empty", 0));
        assert_eq!(got[1].checksum, format!("{:032x}", 0));
    }

    #[test]
    fn a_cut_or_malformed_script_is_an_error_naming_where() {
        let cut = &SCRIPT[..SCRIPT.find("2\tglobex").unwrap()];
        let e = dump_checksums(cut.as_bytes()).unwrap_err().to_string();
        assert!(
            e.contains("tenants ends without its end marker (\\.) after 1 rows"),
            "{e}"
        );

        let short = SCRIPT.replace("2\tglobex\tx\\ty", "2\tglobex");
        let e = dump_checksums(short.as_bytes()).unwrap_err().to_string();
        assert!(
            e.contains("line 8: table tenants: a row has 2 fields, expected 3"),
            "{e}"
        );

        let e = dump_checksums("COPY public.t (a FROM stdin;\n".as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1: not a COPY header"), "{e}");
    }
}
