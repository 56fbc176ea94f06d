//! The checksums of a dump's tables, read from its data: the rows of `pg_restore --data-only --file=-` (a SQL script
//! whose tables are `COPY schema.table (columns) FROM stdin;` blocks ended by `\.`), hashed line by line exactly as
//! the scan hashes the rows the server sends. No server is involved, so proving a backup costs one read of it, not
//! a restore and a scan.
//!
//! The lines are equal only when the dump was taken under the scan's session (`scan::DUMP_SESSION`): `pg_dump` sets
//! the same date, interval and float styles itself; [`PG_DUMP_ENV`] and [`PG_DUMP_ARGS`] give it the rest.

use std::io::BufRead;

use crate::IntegrityError;
use crate::copy::CopyParser;
use crate::scan::{TableChecksum, row_hash};

/// The environment of a `pg_dump` whose rows the scan can compare with: its time zone is the scan's.
pub const PG_DUMP_ENV: &[(&str, &str)] = &[("PGTZ", "UTC")];
/// The arguments a `pg_dump` needs for the same reason: the scan reads UTF-8.
pub const PG_DUMP_ARGS: &[&str] = &["--encoding=UTF8"];

struct Open {
    table: String,
    columns: usize,
    /// False for a table outside schema `public`, which the scan does not cover: its rows are skipped.
    kept: bool,
    parser: CopyParser,
    rows: u64,
    sum: u128,
}

/// Every table of schema `public` whose data the script holds, with its row count, column count and checksum
/// (the scan's [`TableChecksum`]; a dump's COPY names no primary key, so `primary_key` is empty).
pub fn dump_checksums(mut script: impl BufRead) -> Result<Vec<TableChecksum>, IntegrityError> {
    let bad = |line: u64, why: String| IntegrityError::Dump(format!("line {line}: {why}"));
    let mut out = Vec::new();
    let mut open: Option<Open> = None;
    let mut line = Vec::with_capacity(1 << 12);
    let mut number = 0u64;
    loop {
        line.clear();
        let n = script
            .read_until(b'\n', &mut line)
            .map_err(|e| IntegrityError::Dump(format!("cannot read the dump's data: {e}")))?;
        if n == 0 {
            break;
        }
        number += 1;
        match open.as_mut() {
            Some(_) if line == b"\\.\n" => {
                let t = open.take().unwrap();
                t.parser.finish().map_err(|e| bad(number, e.why))?;
                if t.kept {
                    out.push(TableChecksum {
                        table: t.table,
                        rows: t.rows,
                        checksum: format!("{:032x}", t.sum),
                        columns: t.columns,
                        primary_key: Vec::new(),
                    });
                }
            }
            Some(t) => {
                let (rows, sum) = (&mut t.rows, &mut t.sum);
                t.parser
                    .feed(&line, &mut |r| {
                        *rows += 1;
                        *sum = sum.wrapping_add(row_hash(r.raw));
                    })
                    .map_err(|e| bad(number, format!("table {}: {}", t.table, e.why)))?;
            }
            None if line.starts_with(b"COPY ") => {
                let text = String::from_utf8_lossy(&line);
                let (schema, table, columns) = copy_header(&text).ok_or_else(|| {
                    bad(
                        number,
                        format!("not a COPY header pg_restore writes: {}", text.trim_end()),
                    )
                })?;
                open = Some(Open {
                    kept: schema == "public",
                    table,
                    columns,
                    parser: CopyParser::new(columns),
                    rows: 0,
                    sum: 0,
                });
            }
            None => {}
        }
    }
    if let Some(t) = open {
        return Err(IntegrityError::Dump(format!(
            "the data of table {} ends without its end marker (\\.) after {} rows: the dump is cut short",
            t.table, t.rows
        )));
    }
    Ok(out)
}

/// `COPY schema.table (a, "B c") FROM stdin;` → (schema, table, number of columns).
fn copy_header(line: &str) -> Option<(String, String, usize)> {
    let rest = line.strip_prefix("COPY ")?;
    let (schema, rest) = ident(rest)?;
    let (table, rest) = ident(rest.strip_prefix('.')?)?;
    let mut rest = rest.strip_prefix(' ')?;
    let mut columns = 0;
    if let Some(mut list) = rest.strip_prefix('(') {
        loop {
            let (_, after) = ident(list)?;
            columns += 1;
            if let Some(next) = after.strip_prefix(", ") {
                list = next;
            } else {
                rest = after.strip_prefix(") ")?;
                break;
            }
        }
    } else {
        // A table without columns: pg_dump writes an empty list.
        rest = rest.strip_prefix(' ')?;
    }
    (rest.trim_end() == "FROM stdin;").then_some((schema, table, columns))
}

/// One identifier as `pg_dump` prints it: bare, or double-quoted with `""` for a quote.
fn ident(s: &str) -> Option<(String, &str)> {
    if let Some(mut rest) = s.strip_prefix('"') {
        let mut name = String::new();
        loop {
            let end = rest.find('"')?;
            name.push_str(&rest[..end]);
            rest = &rest[end + 1..];
            match rest.strip_prefix('"') {
                Some(more) => {
                    name.push('"');
                    rest = more;
                }
                None => return Some((name, rest)),
            }
        }
    }
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
        .unwrap_or(s.len());
    (end > 0).then(|| (s[..end].to_string(), &s[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn headers_pg_dump_writes_are_read() {
        assert_eq!(
            copy_header("COPY public.\"Weird \"\"T\"\"\" (a) FROM stdin;\n"),
            Some(("public".into(), "Weird \"T\"".into(), 1))
        );
        assert_eq!(
            copy_header("COPY public.nocols  FROM stdin;\n"),
            Some(("public".into(), "nocols".into(), 0))
        );
        assert_eq!(copy_header("COPY public.t (a) TO stdout;\n"), None);
    }
}
