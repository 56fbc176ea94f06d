//! An incremental parser of PostgreSQL's text COPY format (`COPY … TO STDOUT`), the form `pg_dump` writes a
//! table's rows in: one row a line, fields split by tabs, `\N` for NULL, and every tab, newline and backslash
//! inside a value escaped, so a raw `\n` always ends a row and a raw `\t` always ends a field.
//!
//! The scan reads this form rather than binary COPY so that a row hashes the same whether it comes from the
//! database or out of a dump (`dump.rs`): the backup is then proven by reading the dump, not by restoring it.
//! The server's CopyData messages need not end at a row's end, so the parser keeps the tail of a message that
//! holds an incomplete row and parses it with the next one.

/// One row as it came over the wire: `raw` is the line without its newline; `field(i)` is column i's value as
/// COPY escaped it, `None` for NULL.
pub struct Row<'a> {
    pub raw: &'a [u8],
    spans: &'a [Option<(u32, u32)>],
}

impl<'a> Row<'a> {
    pub fn field(&self, i: usize) -> Option<&'a [u8]> {
        self.spans[i].map(|(s, l)| &self.raw[s as usize..(s + l) as usize])
    }
    #[cfg(test)]
    fn len(&self) -> usize {
        self.spans.len()
    }
}

#[derive(Debug)]
pub struct CopyFormatError {
    pub offset: u64,
    pub why: String,
}

pub struct CopyParser {
    ncols: usize,
    carry: Vec<u8>,
    spans: Vec<Option<(u32, u32)>>,
    /// Bytes of the stream consumed before `carry` (for error messages).
    consumed: u64,
}

impl CopyParser {
    pub fn new(ncols: usize) -> Self {
        Self {
            ncols,
            carry: Vec::new(),
            spans: Vec::with_capacity(ncols),
            consumed: 0,
        }
    }

    /// Feeds one message; calls `f` for every complete row in it (and in the carried tail before it).
    pub fn feed(
        &mut self,
        data: &[u8],
        f: &mut impl FnMut(Row<'_>),
    ) -> Result<(), CopyFormatError> {
        if self.carry.is_empty() {
            let used = self.parse_all(data, f)?;
            self.consumed += used as u64;
            self.carry.extend_from_slice(&data[used..]);
        } else {
            let mut buf = std::mem::take(&mut self.carry);
            buf.extend_from_slice(data);
            let used = self.parse_all(&buf, f)?;
            self.consumed += used as u64;
            buf.drain(..used);
            self.carry = buf;
        }
        Ok(())
    }

    /// Called once the stream has ended: a row without its newline is an error (the stream was cut).
    pub fn finish(&self) -> Result<(), CopyFormatError> {
        if !self.carry.is_empty() {
            return Err(CopyFormatError {
                offset: self.consumed,
                why: format!(
                    "the stream ended inside a row ({} bytes without a newline)",
                    self.carry.len()
                ),
            });
        }
        Ok(())
    }

    fn parse_all(
        &mut self,
        buf: &[u8],
        f: &mut impl FnMut(Row<'_>),
    ) -> Result<usize, CopyFormatError> {
        let mut pos = 0;
        while let Some(n) = memchr::memchr(b'\n', &buf[pos..]) {
            self.row(&buf[pos..pos + n], pos, f)?;
            pos += n + 1;
        }
        Ok(pos)
    }

    fn row(
        &mut self,
        line: &[u8],
        at: usize,
        f: &mut impl FnMut(Row<'_>),
    ) -> Result<(), CopyFormatError> {
        let mut spans = std::mem::take(&mut self.spans);
        spans.clear();
        let mut start = 0;
        for end in memchr::memchr_iter(b'\t', line).chain(std::iter::once(line.len())) {
            let v = &line[start..end];
            spans.push((v != b"\\N").then_some((start as u32, v.len() as u32)));
            start = end + 1;
        }
        if spans.len() != self.ncols {
            let n = spans.len();
            self.spans = spans;
            return Err(CopyFormatError {
                offset: self.consumed + at as u64,
                why: format!("a row has {n} fields, expected {}", self.ncols),
            });
        }
        f(Row {
            raw: line,
            spans: &spans,
        });
        self.spans = spans;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_split_of_the_stream_gives_the_same_rows() {
        let s: &[u8] = b"1\t\\N\t\n22\tab\\tc\t\\N\n";
        let want: Vec<Vec<Option<Vec<u8>>>> = vec![
            vec![Some(b"1".to_vec()), None, Some(Vec::new())],
            vec![Some(b"22".to_vec()), Some(b"ab\\tc".to_vec()), None],
        ];
        for cut in 0..=s.len() {
            let mut p = CopyParser::new(3);
            let mut got = Vec::new();
            let mut raws = Vec::new();
            let mut cb = |r: Row<'_>| {
                raws.push(r.raw.to_vec());
                got.push(
                    (0..r.len())
                        .map(|i| r.field(i).map(<[u8]>::to_vec))
                        .collect::<Vec<_>>(),
                )
            };
            p.feed(&s[..cut], &mut cb).unwrap();
            p.feed(&s[cut..], &mut cb).unwrap();
            p.finish().unwrap();
            assert_eq!(got, want, "cut at {cut}");
            assert_eq!(raws, [&b"1\t\\N\t"[..], &b"22\tab\\tc\t\\N"[..]]);
        }
    }

    #[test]
    fn a_truncated_stream_or_a_short_row_is_an_error() {
        let mut p = CopyParser::new(2);
        p.feed(b"1\tx\n2\t", &mut |_| {}).unwrap();
        assert!(p.finish().unwrap_err().why.contains("inside a row"));

        let e = CopyParser::new(2)
            .feed(b"1\tx\n2\n", &mut |_| {})
            .unwrap_err();
        assert_eq!(e.offset, 4);
        assert!(e.why.contains("1 fields, expected 2"), "{}", e.why);
    }
}
