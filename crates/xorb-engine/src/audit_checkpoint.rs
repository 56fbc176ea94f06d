//! The audit trail's last entry, recorded outside the trail: in the journal's SQLite file. `xorbctl audit verify`
//! checks the trail still holds it, unchanged, which is what detects entries cut off the end (a hash chain alone
//! cannot: a shorter chain is still a valid chain). See docs/design/audit-chain.md.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension};

use crate::journal::{JOURNAL_FILE, JournalError};

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
    // The journal's file may not exist yet: created owner-only, as the journal creates it.
    let _ = crate::private::create_file(&path);
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
    // Read-only: `audit verify` changes nothing, and works on a read-only state directory.
    let err = |source| CheckpointError {
        path: state_dir.join(JOURNAL_FILE).display().to_string(),
        source,
    };
    let conn = match crate::journal::connect_read_only(state_dir) {
        Ok((conn, _)) => conn,
        Err(JournalError::NoJournal(_)) => return Ok(None),
        Err(JournalError::Open { source, .. }) => return Err(err(source)),
        Err(other) => return Err(err(rusqlite::Error::InvalidPath(other.to_string().into()))),
    };
    let has_table: bool = conn
        .query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'audit_checkpoint'",
            [],
            |r| r.get(0),
        )
        .map_err(err)?;
    if !has_table {
        return Ok(None);
    }
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
