//! A `pg_restore --data-only --file=-` script read in chunks of any size: a SQL script whose tables are
//! `COPY schema.table (columns) FROM stdin;` blocks, each ended by a line `\.`. A [`ScriptSink`] gets each block's
//! rows as runs of whole lines, as many as a chunk holds (not line by line); every other line (`SET`, `SELECT
//! pg_catalog.setval`, comments) is passed over.
//!
//! The end marker is found by its bytes: the text COPY format escapes every backslash of a value (`\\`), so a
//! line that is exactly `\.` is never a row.

use crate::IntegrityError;

/// A table's COPY header.
pub(crate) struct Header {
    pub schema: String,
    pub table: String,
    pub columns: Vec<String>,
}

/// What the rows of a script go to.
pub(crate) trait ScriptSink {
    /// A table's rows begin; false to pass over them.
    fn begin(&mut self, header: Header) -> Result<bool, String>;
    /// Whole rows of the open table, each ended by its newline.
    fn rows(&mut self, data: &[u8]) -> Result<(), String>;
    /// The rows of the open table taken so far (where an error is, and how many rows a cut table had).
    fn rows_seen(&self) -> u64;
    /// The open table's end marker.
    fn end(&mut self) -> Result<(), String>;
}

struct Open {
    table: String,
    kept: bool,
    /// The header's line number.
    header_line: u64,
    /// Rows of a table passed over, counted here since no sink sees them.
    skipped: u64,
}

#[derive(Default)]
pub(crate) struct ScriptParser {
    /// The start of a line the last chunk did not end.
    carry: Vec<u8>,
    open: Option<Open>,
    /// Lines consumed outside tables, and of the tables closed (for error messages).
    line: u64,
}

impl ScriptParser {
    pub fn feed(
        &mut self,
        mut chunk: &[u8],
        sink: &mut impl ScriptSink,
    ) -> Result<(), IntegrityError> {
        if !self.carry.is_empty() {
            let Some(i) = memchr::memchr(b'\n', chunk) else {
                self.carry.extend_from_slice(chunk);
                return Ok(());
            };
            let mut line = std::mem::take(&mut self.carry);
            line.extend_from_slice(&chunk[..=i]);
            let done = self.whole_lines(&line, sink);
            line.clear();
            self.carry = line;
            done?;
            chunk = &chunk[i + 1..];
        }
        let end = memchr::memrchr(b'\n', chunk).map_or(0, |i| i + 1);
        self.whole_lines(&chunk[..end], sink)?;
        self.carry.extend_from_slice(&chunk[end..]);
        Ok(())
    }

    /// Called once the script has ended: a table without its end marker, or a line without its newline, means the
    /// script was cut.
    pub fn finish(&self, sink: &impl ScriptSink) -> Result<(), IntegrityError> {
        if let Some(o) = &self.open {
            return Err(IntegrityError::Dump(format!(
                "the data of table {} ends without its end marker (\\.) after {} rows: the dump is cut short",
                o.table,
                self.rows_of(o, sink)
            )));
        }
        if !self.carry.is_empty() {
            return Err(IntegrityError::Dump(format!(
                "line {}: the script ends inside a line: the dump is cut short",
                self.line + 1
            )));
        }
        Ok(())
    }

    fn rows_of(&self, o: &Open, sink: &impl ScriptSink) -> u64 {
        if o.kept { sink.rows_seen() } else { o.skipped }
    }

    /// `buf` starts at a line's start and ends with a newline (or is empty).
    fn whole_lines(
        &mut self,
        buf: &[u8],
        sink: &mut impl ScriptSink,
    ) -> Result<(), IntegrityError> {
        let mut pos = 0;
        while pos < buf.len() {
            let rest = &buf[pos..];
            let Some(open) = self.open.as_mut() else {
                let nl = memchr::memchr(b'\n', rest).expect("the buffer ends with a newline");
                self.line += 1;
                if rest.starts_with(b"COPY ") {
                    self.begin(&rest[..nl], sink)?;
                }
                pos += nl + 1;
                continue;
            };
            let marker = end_marker(rest);
            let body = &rest[..marker.unwrap_or(rest.len())];
            if open.kept {
                sink.rows(body).map_err(|why| {
                    IntegrityError::Dump(format!(
                        "line {}: table {}: {why}",
                        open.header_line + sink.rows_seen() + 1,
                        open.table
                    ))
                })?;
            } else {
                open.skipped += memchr::memchr_iter(b'\n', body).count() as u64;
            }
            let Some(at) = marker else { break };
            let open = self.open.take().expect("a table is open");
            self.line = open.header_line + self.rows_of(&open, sink) + 1;
            if open.kept {
                sink.end().map_err(|why| {
                    IntegrityError::Dump(format!("line {}: table {}: {why}", self.line, open.table))
                })?;
            }
            pos += at + 3;
        }
        Ok(())
    }

    fn begin(&mut self, line: &[u8], sink: &mut impl ScriptSink) -> Result<(), IntegrityError> {
        let text = String::from_utf8_lossy(line);
        let bad = |why: String| IntegrityError::Dump(format!("line {}: {why}", self.line));
        let header = copy_header(&text).ok_or_else(|| {
            bad(format!(
                "not a COPY header pg_restore writes: {}",
                text.trim_end()
            ))
        })?;
        let table = header.table.clone();
        let kept = sink.begin(header).map_err(bad)?;
        self.open = Some(Open {
            table,
            kept,
            header_line: self.line,
            skipped: 0,
        });
        Ok(())
    }
}

/// Where the first line that is exactly `\.` starts (`rest` starts at a line's start).
fn end_marker(rest: &[u8]) -> Option<usize> {
    memchr::memmem::find_iter(rest, b"\\.\n").find(|&i| i == 0 || rest[i - 1] == b'\n')
}

/// `COPY schema.table (a, "B c") FROM stdin;` → its schema, table and columns.
pub(crate) fn copy_header(line: &str) -> Option<Header> {
    let rest = line.strip_prefix("COPY ")?;
    let (schema, rest) = ident(rest)?;
    let (table, rest) = ident(rest.strip_prefix('.')?)?;
    let mut rest = rest.strip_prefix(' ')?;
    let mut columns = Vec::new();
    if let Some(mut list) = rest.strip_prefix('(') {
        loop {
            let (name, after) = ident(list)?;
            columns.push(name);
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
    (rest.trim_end() == "FROM stdin;").then_some(Header {
        schema,
        table,
        columns,
    })
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

    /// Records what a sink is given, a table's rows joined.
    #[derive(Default)]
    struct Log {
        tables: Vec<(String, Vec<String>, Vec<u8>)>,
        ended: usize,
        rows: u64,
    }

    impl ScriptSink for Log {
        fn begin(&mut self, h: Header) -> Result<bool, String> {
            self.rows = 0;
            let kept = h.schema == "public";
            if kept {
                self.tables.push((h.table, h.columns, Vec::new()));
            }
            Ok(kept)
        }
        fn rows(&mut self, data: &[u8]) -> Result<(), String> {
            assert!(data.is_empty() || data.ends_with(b"\n"), "whole lines only");
            self.rows += memchr::memchr_iter(b'\n', data).count() as u64;
            self.tables.last_mut().unwrap().2.extend_from_slice(data);
            Ok(())
        }
        fn rows_seen(&self) -> u64 {
            self.rows
        }
        fn end(&mut self) -> Result<(), String> {
            self.ended += 1;
            Ok(())
        }
    }

    const SCRIPT: &[u8] = b"SET x = 1;\n\nCOPY public.t (id, \"Odd \"\"c\"\"\") FROM stdin;\n1\ta\\\\.\n\\\\.\t\\.x\n\\.\n\n\
        COPY audit.e (id) FROM stdin;\n7\n\\.\nSELECT pg_catalog.setval('s', 3, true);\nCOPY public.empty (id) FROM stdin;\n\\.\n";

    #[test]
    fn every_split_of_the_script_gives_the_same_tables_rows_and_end_markers() {
        for cut in 0..=SCRIPT.len() {
            for cut2 in [cut, (cut + 5).min(SCRIPT.len())] {
                let (mut p, mut log) = (ScriptParser::default(), Log::default());
                p.feed(&SCRIPT[..cut], &mut log).unwrap();
                p.feed(&SCRIPT[cut..cut2], &mut log).unwrap();
                p.feed(&SCRIPT[cut2..], &mut log).unwrap();
                p.finish(&log).unwrap();
                assert_eq!(log.ended, 2, "cut at {cut}, {cut2}");
                assert_eq!(log.tables.len(), 2);
                assert_eq!(log.tables[0].0, "t");
                assert_eq!(log.tables[0].1, ["id", "Odd \"c\""]);
                // A value ending in a backslash and dot, or starting so, is a row, not the end.
                assert_eq!(
                    log.tables[0].2, b"1\ta\\\\.\n\\\\.\t\\.x\n",
                    "cut at {cut}, {cut2}"
                );
                assert_eq!(
                    (log.tables[1].0.as_str(), log.tables[1].2.len()),
                    ("empty", 0)
                );
            }
        }
    }

    #[test]
    fn a_cut_script_or_a_bad_header_is_an_error_naming_where() {
        // Cut before the second row.
        let at = SCRIPT.windows(4).position(|w| w == b"\\\\.\t").unwrap();
        let (mut p, mut log) = (ScriptParser::default(), Log::default());
        p.feed(&SCRIPT[..at], &mut log).unwrap();
        let e = p.finish(&log).unwrap_err().to_string();
        assert!(
            e.contains("table t ends without its end marker (\\.) after 1 rows"),
            "{e}"
        );

        let (mut p, mut log) = (ScriptParser::default(), Log::default());
        p.feed(b"SET a;\nSET b", &mut log).unwrap();
        let e = p.finish(&log).unwrap_err().to_string();
        assert!(e.contains("line 2: the script ends inside a line"), "{e}");

        let (mut p, mut log) = (ScriptParser::default(), Log::default());
        let e = p
            .feed(b"\nCOPY public.t (a FROM stdin;\n", &mut log)
            .unwrap_err();
        assert!(e.to_string().contains("line 2: not a COPY header"), "{e}");
    }

    #[test]
    fn headers_pg_dump_writes_are_read() {
        let h = copy_header("COPY public.\"Weird \"\"T\"\"\" (a) FROM stdin;\n").unwrap();
        assert_eq!(
            (h.schema.as_str(), h.table.as_str()),
            ("public", "Weird \"T\"")
        );
        assert_eq!(h.columns, ["a"]);
        let h = copy_header("COPY public.nocols  FROM stdin;\n").unwrap();
        assert_eq!((h.table.as_str(), h.columns.len()), ("nocols", 0));
        assert!(copy_header("COPY public.t (a) TO stdout;\n").is_none());
    }
}
