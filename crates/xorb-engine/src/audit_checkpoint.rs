//! The audit trail's last entry, recorded outside the trail: in the journal's SQLite file. `xorbctl audit verify`
//! checks the trail still holds it, unchanged, which is what detects entries cut off the end (a hash chain alone
//! cannot: a shorter chain is still a valid chain). See docs/design/audit-chain.md.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension};

use crate::journal::JOURNAL_FILE;

#[derive(Debug, thiserror::Error)]
#[error("audit checkpoint in {path}: {source}")]
pub struct CheckpointError {
    path: String,
    source: rusqlite::Error,
}

fn open(state_dir: &Path) -> Result<Connection, CheckpointError> {
    let path = state_dir.join(JOURNAL_FILE);
    let err = |source| CheckpointError {
        path: path.display().to_string(),
        source,
    };
    let conn = Connection::open(&path).map_err(err)?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(err)?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS audit_checkpoint (
             id INTEGER PRIMARY KEY CHECK (id = 1),
             seq INTEGER NOT NULL,
             hash TEXT NOT NULL
         );",
    )
    .map_err(err)?;
    Ok(conn)
}

/// Records `seq`/`hash` as the trail's last entry, unless a later one is already recorded (appends from
/// concurrent commands may finish out of order).
pub fn record(state_dir: &Path, seq: u64, hash: &str) -> Result<(), CheckpointError> {
    let conn = open(state_dir)?;
    conn.execute(
        "INSERT INTO audit_checkpoint (id, seq, hash) VALUES (1, ?1, ?2)
         ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash
         WHERE excluded.seq > audit_checkpoint.seq",
        rusqlite::params![seq as i64, hash],
    )
    .map_err(|source| CheckpointError {
        path: state_dir.join(JOURNAL_FILE).display().to_string(),
        source,
    })?;
    Ok(())
}

/// The recorded last entry, if any. A state directory without a journal has none (and gets no journal).
pub fn latest(state_dir: &Path) -> Result<Option<(u64, String)>, CheckpointError> {
    if !state_dir.join(JOURNAL_FILE).exists() {
        return Ok(None);
    }
    let conn = open(state_dir)?;
    conn.query_row(
        "SELECT seq, hash FROM audit_checkpoint WHERE id = 1",
        [],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?)),
    )
    .optional()
    .map_err(|source| CheckpointError {
        path: state_dir.join(JOURNAL_FILE).display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_latest_entry_only() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(latest(d.path()).unwrap(), None);
        record(d.path(), 3, "c").unwrap();
        record(d.path(), 2, "b").unwrap();
        assert_eq!(latest(d.path()).unwrap(), Some((3, "c".into())));
        record(d.path(), 4, "d").unwrap();
        assert_eq!(latest(d.path()).unwrap(), Some((4, "d".into())));
    }
}
