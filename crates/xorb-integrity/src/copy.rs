//! An incremental parser of PostgreSQL's binary COPY format (`COPY … TO STDOUT (FORMAT binary)`).
//!
//! The server sends the stream in CopyData messages whose boundaries need not match tuple boundaries, so the
//! parser keeps the tail of a message that holds an incomplete tuple and parses it with the next one. It never
//! holds more than one tuple beyond the current message.

/// "PGCOPY\n\377\r\n\0": the binary COPY signature.
const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// One tuple as it came over the wire: `raw` is the whole tuple (field count, then each field's length and
/// bytes); `field(i)` is column i's value, `None` for NULL.
pub struct Tuple<'a> {
    pub raw: &'a [u8],
    spans: &'a [Option<(u32, u32)>],
}

impl<'a> Tuple<'a> {
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
    header_done: bool,
    finished: bool,
    carry: Vec<u8>,
    spans: Vec<Option<(u32, u32)>>,
    /// Bytes of the stream consumed before `carry` (for error messages).
    consumed: u64,
}

enum Step {
    /// A tuple of this many bytes was handed to the callback.
    Tuple(usize),
    /// The trailer (field count -1).
    End,
    /// Not enough bytes for a whole tuple.
    NeedMore,
}

impl CopyParser {
    pub fn new(ncols: usize) -> Self {
        Self {
            ncols,
            header_done: false,
            finished: false,
            carry: Vec::new(),
            spans: Vec::with_capacity(ncols),
            consumed: 0,
        }
    }

    /// Feeds one message; calls `f` for every complete tuple in it (and in the carried tail before it).
    pub fn feed(
        &mut self,
        data: &[u8],
        f: &mut impl FnMut(Tuple<'_>),
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

    /// Called once the stream has ended: an incomplete tuple or a missing trailer is an error.
    pub fn finish(&self) -> Result<(), CopyFormatError> {
        if !self.finished || !self.carry.is_empty() {
            return Err(self.err(
                0,
                format!(
                    "the stream ended early ({} bytes of an incomplete tuple, trailer {})",
                    self.carry.len(),
                    if self.finished { "seen" } else { "missing" }
                ),
            ));
        }
        Ok(())
    }

    fn err(&self, at: usize, why: impl Into<String>) -> CopyFormatError {
        CopyFormatError {
            offset: self.consumed + at as u64,
            why: why.into(),
        }
    }

    fn parse_all(
        &mut self,
        buf: &[u8],
        f: &mut impl FnMut(Tuple<'_>),
    ) -> Result<usize, CopyFormatError> {
        let mut pos = 0;
        if !self.header_done {
            // Signature, flags (int32), header extension length (int32) and the extension.
            if buf.len() < 19 {
                return Ok(0);
            }
            if &buf[..11] != SIGNATURE {
                return Err(self.err(0, "not a binary COPY stream (bad signature)"));
            }
            let ext = u32::from_be_bytes([buf[15], buf[16], buf[17], buf[18]]) as usize;
            if buf.len() < 19 + ext {
                return Ok(0);
            }
            pos = 19 + ext;
            self.header_done = true;
        }
        while !self.finished {
            match self.parse_one(&buf[pos..], pos, f)? {
                Step::Tuple(n) => pos += n,
                Step::End => {
                    pos += 2;
                    self.finished = true;
                }
                Step::NeedMore => break,
            }
        }
        if self.finished && pos < buf.len() {
            return Err(self.err(pos, "data after the trailer"));
        }
        Ok(pos)
    }

    fn parse_one(
        &mut self,
        b: &[u8],
        base: usize,
        f: &mut impl FnMut(Tuple<'_>),
    ) -> Result<Step, CopyFormatError> {
        if b.len() < 2 {
            return Ok(Step::NeedMore);
        }
        let n = i16::from_be_bytes([b[0], b[1]]);
        if n == -1 {
            return Ok(Step::End);
        }
        if n as usize != self.ncols {
            return Err(self.err(
                base,
                format!("a tuple has {n} fields, expected {}", self.ncols),
            ));
        }
        let mut spans = std::mem::take(&mut self.spans);
        spans.clear();
        let mut p = 2;
        for _ in 0..self.ncols {
            if b.len() < p + 4 {
                self.spans = spans;
                return Ok(Step::NeedMore);
            }
            let len = i32::from_be_bytes([b[p], b[p + 1], b[p + 2], b[p + 3]]);
            p += 4;
            if len == -1 {
                spans.push(None);
                continue;
            }
            if len < 0 {
                self.spans = spans;
                return Err(self.err(base + p - 4, format!("negative field length {len}")));
            }
            let len = len as usize;
            if b.len() < p + len {
                self.spans = spans;
                return Ok(Step::NeedMore);
            }
            spans.push(Some((p as u32, len as u32)));
            p += len;
        }
        f(Tuple {
            raw: &b[..p],
            spans: &spans,
        });
        self.spans = spans;
        Ok(Step::Tuple(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(rows: &[Vec<Option<&[u8]>>]) -> Vec<u8> {
        let mut v = SIGNATURE.to_vec();
        v.extend_from_slice(&0u32.to_be_bytes());
        v.extend_from_slice(&0u32.to_be_bytes());
        for r in rows {
            v.extend_from_slice(&(r.len() as i16).to_be_bytes());
            for f in r {
                match f {
                    None => v.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(b) => {
                        v.extend_from_slice(&(b.len() as i32).to_be_bytes());
                        v.extend_from_slice(b);
                    }
                }
            }
        }
        v.extend_from_slice(&(-1i16).to_be_bytes());
        v
    }

    #[test]
    fn any_split_of_the_stream_gives_the_same_tuples() {
        let rows: Vec<Vec<Option<&[u8]>>> = vec![
            vec![Some(b"1"), None, Some(b"")],
            vec![Some(b"22"), Some(b"abc"), None],
        ];
        let s = stream(&rows);
        for cut in 0..=s.len() {
            let mut p = CopyParser::new(3);
            let mut got = Vec::new();
            let mut cb = |t: Tuple<'_>| {
                got.push(
                    (0..t.len())
                        .map(|i| t.field(i).map(<[u8]>::to_vec))
                        .collect::<Vec<_>>(),
                )
            };
            p.feed(&s[..cut], &mut cb).unwrap();
            p.feed(&s[cut..], &mut cb).unwrap();
            p.finish().unwrap();
            let want: Vec<Vec<Option<Vec<u8>>>> = rows
                .iter()
                .map(|r| r.iter().map(|f| f.map(<[u8]>::to_vec)).collect())
                .collect();
            assert_eq!(got, want, "cut at {cut}");
        }
    }

    #[test]
    fn a_truncated_stream_is_an_error() {
        let s = stream(&[vec![Some(b"1")]]);
        let mut p = CopyParser::new(1);
        p.feed(&s[..s.len() - 3], &mut |_| {}).unwrap();
        assert!(p.finish().is_err());
    }
}
