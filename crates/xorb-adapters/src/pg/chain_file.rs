//! rc1's audit chain as a file (`chain.jsonl`, one JSON entry a line): written as the rows come from the database
//! and read back line by line, never held whole. At 1 GB the chain has 400,000 entries; held as rows, entries,
//! lines and one text (and again when read back), its export took 700 MB.

use std::io::{BufWriter, Write};
use std::path::Path;

use futures::TryStreamExt;
use sha2::{Digest, Sha256};
use xorb_engine::runner::StepError;

use super::audit::{ChainEntry, Links};
use super::*;
use crate::context::failed;

/// A chain file as written, or as read back.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ChainFile {
    pub entries: usize,
    /// The audit ids of its first and last entries.
    pub span: Option<(i64, i64)>,
    pub sha256: String,
}

/// Writes the chain `tx` sees, in `seq` order, to `path` (created, mode 0600).
pub(crate) async fn write(
    tx: &tokio_postgres::Transaction<'_>,
    path: &Path,
) -> Result<ChainFile, StepError> {
    let rows = tx
        .query_raw(
            "SELECT seq, audit_id, created_us, prev_hash, row_hash, entry_hash FROM audit_chain ORDER BY seq",
            std::iter::empty::<i32>(),
        )
        .await
        .map_err(db("read audit_chain"))?;
    futures::pin_mut!(rows);
    let cannot = |e: std::io::Error| failed(format!("cannot write {}: {e}", path.display()));
    let file = crate::files::create_private(path).map_err(cannot)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut sum = Summary::default();
    let mut line = Vec::with_capacity(512);
    while let Some(row) = rows.try_next().await.map_err(db("read audit_chain"))? {
        let e = ChainEntry {
            seq: row.get(0),
            audit_id: row.get(1),
            created_us: row.get(2),
            prev_hash: hex::encode(row.get::<_, &[u8]>(3)),
            row_hash: hex::encode(row.get::<_, &[u8]>(4)),
            entry_hash: hex::encode(row.get::<_, &[u8]>(5)),
        };
        line.clear();
        serde_json::to_writer(&mut line, &e).map_err(failed)?;
        line.push(b'\n');
        out.write_all(&line).map_err(cannot)?;
        sum.add(Some(e.audit_id), &line);
    }
    out.flush().map_err(cannot)?;
    Ok(sum.done())
}

/// Reads `path` back: every line an entry, the links verified from the first (`Links`); `each` sees every entry.
/// A line that does not read or verify is the error, once the whole file has been hashed: a caller that holds
/// the file's recorded hash says first that the file changed.
pub(crate) fn read_back(
    path: &Path,
    mut each: impl FnMut(&ChainEntry),
) -> Result<(ChainFile, Option<String>), String> {
    let mut sum = Summary::default();
    let mut links = Links::default();
    let mut problem = None;
    crate::files::each_line(path, |line| {
        let mut id = None;
        if problem.is_none() {
            let e = serde_json::from_slice::<ChainEntry>(line)
                .map_err(|e| format!("{} line {}: {e}", path.display(), sum.entries + 1))
                .and_then(|e| links.next(&e).map(|()| e));
            match e {
                Ok(e) => {
                    each(&e);
                    id = Some(e.audit_id);
                }
                Err(why) => problem = Some(why),
            }
        }
        sum.add(id, line);
        Ok(())
    })?;
    Ok((sum.done(), problem))
}

#[derive(Default)]
struct Summary {
    entries: usize,
    span: Option<(i64, i64)>,
    sha: Sha256,
}

impl Summary {
    fn add(&mut self, audit_id: Option<i64>, line: &[u8]) {
        self.entries += 1;
        if let Some(id) = audit_id {
            self.span = Some((self.span.map_or(id, |(a, _)| a), id));
        }
        self.sha.update(line);
    }

    fn done(self) -> ChainFile {
        ChainFile {
            entries: self.entries,
            span: self.span,
            sha256: hex::encode(self.sha.finalize()),
        }
    }
}
