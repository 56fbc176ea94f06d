//! The row snapshot: outside the database, one binary file per table plus `manifest.json`.
//!
//! A table file is `XORBROWS`, the format version (u32 BE), the number of hashed columns (u32 BE) and the number
//! of rows (u64 BE), then per row sorted by key: the key's length (u32 BE), the key (see
//! `catalog::encode_key_part`) and one xxh3-64 per column over its text COPY value (u64 LE, 0 for NULL). The manifest is written last,
//! through a rename: a directory without one is an incomplete snapshot, never a silently partial one.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::IntegrityError;
use crate::catalog::Column;
use crate::scan::TableScan;

pub const FORMAT: &str = "xorb-integrity-row-snapshot";
/// 2: keys and column hashes from the text COPY form (1 read binary COPY). 3: a uuid key part has no length.
pub const VERSION: u32 = 3;
const MAGIC: &[u8; 8] = b"XORBROWS";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub taken_at: String,
    pub tables: Vec<ManifestTable>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestTable {
    pub table: String,
    pub file: String,
    pub columns: Vec<Column>,
    pub primary_key: Vec<String>,
    pub rows: u64,
    pub checksum: String,
}

impl ManifestTable {
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

pub fn write(dir: &Path, taken_at: &str, scans: &[TableScan]) -> Result<(), IntegrityError> {
    std::fs::create_dir_all(dir).map_err(|e| IntegrityError::io(dir, e))?;
    let mut tables = Vec::new();
    for (i, s) in scans.iter().enumerate() {
        let file = format!("table-{i:04}.rows");
        let path = dir.join(&file);
        let records = s
            .records
            .as_ref()
            .ok_or_else(|| IntegrityError::Task("snapshot asked of a checksum-only scan".into()))?;
        let io = |e| IntegrityError::io(&path, e);
        let mut w = BufWriter::with_capacity(1 << 20, File::create(&path).map_err(io)?);
        w.write_all(MAGIC).map_err(io)?;
        w.write_all(&VERSION.to_be_bytes()).map_err(io)?;
        w.write_all(&(records.ncols as u32).to_be_bytes())
            .map_err(io)?;
        w.write_all(&(records.len() as u64).to_be_bytes())
            .map_err(io)?;
        let mut buf = Vec::with_capacity(64);
        for &r in &records.order {
            let r = r as usize;
            let key = records.key(r);
            buf.clear();
            buf.extend_from_slice(&(key.len() as u32).to_be_bytes());
            buf.extend_from_slice(key);
            for h in records.row_hashes(r) {
                buf.extend_from_slice(&h.to_le_bytes());
            }
            w.write_all(&buf).map_err(io)?;
        }
        w.into_inner()
            .map_err(|e| IntegrityError::io(&path, e.into_error()))?
            .sync_all()
            .map_err(io)?;
        let c = s.checksum();
        tables.push(ManifestTable {
            table: c.table,
            file,
            columns: s.meta.columns.clone(),
            primary_key: c.primary_key,
            rows: c.rows,
            checksum: c.checksum,
        });
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        version: VERSION,
        taken_at: taken_at.into(),
        tables,
    };
    let tmp = dir.join("manifest.json.tmp");
    let text = serde_json::to_string_pretty(&manifest).unwrap_or_default();
    std::fs::write(&tmp, text).map_err(|e| IntegrityError::io(&tmp, e))?;
    let dest = dir.join("manifest.json");
    std::fs::rename(&tmp, &dest).map_err(|e| IntegrityError::io(&dest, e))
}

pub fn read_manifest(dir: &Path) -> Result<Manifest, IntegrityError> {
    let path = dir.join("manifest.json");
    let bad = |why: String| IntegrityError::Snapshot {
        path: dir.to_path_buf(),
        why,
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(bad(if dir.is_dir() {
                "no manifest.json: not a snapshot, or one that was interrupted".into()
            } else {
                "no such directory".into()
            }));
        }
        Err(e) => return Err(IntegrityError::io(&path, e)),
    };
    let m: Manifest =
        serde_json::from_str(&text).map_err(|e| bad(format!("manifest.json is damaged: {e}")))?;
    if m.format != FORMAT || m.version != VERSION {
        return Err(bad(format!(
            "format {} version {}, this build reads {FORMAT} version {VERSION}",
            m.format, m.version
        )));
    }
    Ok(m)
}

/// Streams one table file's rows in key order.
pub struct RowReader {
    path: PathBuf,
    r: BufReader<File>,
    remaining: u64,
    pub key: Vec<u8>,
    pub hashes: Vec<u64>,
    buf: Vec<u8>,
}

impl RowReader {
    pub fn open(dir: &Path, t: &ManifestTable) -> Result<Self, IntegrityError> {
        let path = dir.join(&t.file);
        let bad = |why: String| IntegrityError::Snapshot {
            path: path.clone(),
            why,
        };
        let f = File::open(&path).map_err(|e| IntegrityError::io(&path, e))?;
        let mut r = BufReader::with_capacity(1 << 20, f);
        let mut head = [0u8; 24];
        r.read_exact(&mut head)
            .map_err(|e| bad(format!("header unreadable: {e}")))?;
        if &head[..8] != MAGIC {
            return Err(bad("not a row file".into()));
        }
        let version = u32::from_be_bytes(head[8..12].try_into().unwrap_or_default());
        let ncols = u32::from_be_bytes(head[12..16].try_into().unwrap_or_default()) as usize;
        let rows = u64::from_be_bytes(head[16..24].try_into().unwrap_or_default());
        if version != VERSION || ncols != t.columns.len() || rows != t.rows {
            return Err(bad(format!(
                "header (version {version}, {ncols} columns, {rows} rows) disagrees with the manifest \
                 ({} columns, {} rows)",
                t.columns.len(),
                t.rows
            )));
        }
        Ok(Self {
            path,
            r,
            remaining: rows,
            key: Vec::new(),
            hashes: vec![0; ncols],
            buf: vec![0; ncols * 8],
        })
    }

    /// Reads the next row into `key` and `hashes`; false at the end.
    pub fn next_row(&mut self) -> Result<bool, IntegrityError> {
        if self.remaining == 0 {
            return Ok(false);
        }
        let path = &self.path;
        let bad = |e: std::io::Error| IntegrityError::Snapshot {
            path: path.clone(),
            why: format!("truncated or unreadable row data: {e}"),
        };
        let mut len = [0u8; 4];
        self.r.read_exact(&mut len).map_err(bad)?;
        self.key.resize(u32::from_be_bytes(len) as usize, 0);
        self.r.read_exact(&mut self.key).map_err(bad)?;
        self.r.read_exact(&mut self.buf).map_err(bad)?;
        for (h, b) in self.hashes.iter_mut().zip(self.buf.chunks_exact(8)) {
            *h = u64::from_le_bytes(b.try_into().unwrap_or_default());
        }
        self.remaining -= 1;
        Ok(true)
    }
}
