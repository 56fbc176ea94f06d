//! Verification: proves the chain whole or names the first entry that was changed, removed, inserted or
//! reordered. Works on the bytes on disk; nothing is ever re-serialized.
//!
//! **Window (`since`) and anchoring.** The hash links (`prev`, `seq`) of *every* line are always checked: the file
//! must be read anyway to find the window and a SHA-256 per line is cheap. Signatures are checked from the
//! **anchor** on: the last entry *before* the window (or the genesis value when the window starts at seq 1).
//! Because each signed entry commits to its `prev`, and each `prev` to the whole line before it, the anchor's
//! signature plus unbroken links vouch for the entire history before the window too: an attacker who changes an
//! older entry must rewrite every later `prev` to keep the links, which changes the anchor's signed bytes. Checking
//! the anchor (not just the first entry in the window) is what catches the removal of the window's first entry,
//! and an in-window entry whose `ts` was rewritten to push it out of the window. When anything fails in a window,
//! the whole file is verified again with every signature so that the error names the *first* bad entry, wherever
//! it is.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use ed25519_dalek::VerifyingKey;

use crate::format::{GENESIS_PREV, ParsedLine, StoredEntry, line_hash, parse_line};
use crate::log::{Checkpoint, EntryRef};

/// What [`verify_with`] should check besides the chain itself.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Check signatures only from the entry before the first entry at or after this time (see the module docs).
    pub since: Option<DateTime<Utc>>,
    /// An entry recorded outside the log (the run journal or report): the log must still contain it, unchanged.
    /// This is what detects entries cut off the end of the log.
    pub checkpoint: Option<Checkpoint>,
}

/// A log that verified.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    pub path: PathBuf,
    /// Entries (lines) in the file; all their hash links were checked.
    pub entries: u64,
    /// Entries whose signature was checked.
    pub signatures_checked: u64,
    pub since: Option<DateTime<Utc>>,
    /// Entries at or after `since` (all entries without `since`).
    pub in_window: u64,
    /// The entry before the window whose signature anchors it (`None` when verification starts at seq 1).
    pub anchor: Option<EntryRef>,
    /// The last entry: record it outside the log to detect a truncated tail later.
    pub head: Option<EntryRef>,
    /// The checkpoint that was found intact, when one was given.
    pub checkpoint: Option<Checkpoint>,
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(head) = &self.head else {
            return write!(
                f,
                "audit log {} is empty: nothing to verify",
                self.path.display()
            );
        };
        write!(
            f,
            "audit log OK: {} entries, hash chain whole from seq 1 to seq {}; ",
            self.entries, head.seq
        )?;
        match (&self.since, &self.anchor) {
            (Some(since), Some(anchor)) => write!(
                f,
                "{} entries since {}, signatures checked from seq {} (the entry before the window) to seq {}",
                self.in_window,
                since.to_rfc3339_opts(SecondsFormat::Secs, true),
                anchor.seq,
                head.seq
            )?,
            _ => write!(f, "all {} signatures valid", self.signatures_checked)?,
        }
        if let Some(cp) = &self.checkpoint {
            write!(f, "; recorded checkpoint seq {} found intact", cp.seq)?;
        }
        write!(f, ". Last entry: seq {} hash {}", head.seq, head.hash)
    }
}

/// Why a log did not verify. Every variant names the first line (1-based) where the chain is broken; in an
/// intact log line N holds seq N.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot read the audit log {}: {reason}", path.display())]
    Io { path: PathBuf, reason: String },

    #[error(
        "TAMPERED or DAMAGED at line {line}: {reason}. The entry at that line cannot be read as an audit entry"
    )]
    Malformed { line: usize, reason: String },

    #[error(
        "TRUNCATED at line {line}: the last line is cut off (the file does not end with a newline){}. The last \
         entry was truncated, or a write was interrupted by a crash",
        after_seq.map(|s| format!(", after entry seq {s}")).unwrap_or_default()
    )]
    Incomplete { line: usize, after_seq: Option<u64> },

    #[error(
        "TAMPERED at line {line}: entry seq {seq} was changed after it was written, or was not written by this \
         tool. Its signature does not match the audit public key"
    )]
    Changed { line: usize, seq: u64 },

    #[error(
        "REMOVED before line {line}: {} missing. Line {line} holds seq {found_seq} but seq {first_missing} was \
         expected there",
        if first_missing == last_missing { format!("entry seq {first_missing} is") }
        else { format!("entries seq {first_missing} to {last_missing} are") }
    )]
    Removed {
        line: usize,
        first_missing: u64,
        last_missing: u64,
        found_seq: u64,
    },

    #[error(
        "REORDERED at line {line}: entry seq {seq} is at line {line} where seq {expected_seq} belongs{}",
        match expected_at_line { Some(l) => format!("; seq {expected_seq} comes later, at line {l}"), None => String::new() }
    )]
    Reordered {
        line: usize,
        seq: u64,
        expected_seq: u64,
        expected_at_line: Option<usize>,
    },

    #[error(
        "INSERTED at line {line}: entry seq {seq} already appeared at line {first_line}; this line is a copy \
         (an entry inserted or replayed)"
    )]
    Duplicate {
        line: usize,
        seq: u64,
        first_line: usize,
    },

    #[error(
        "BROKEN CHAIN at line {line}: entry seq {seq} does not follow the entry before it{}. Its `prev` hash is \
         {found_prev} but {} hashes to {expected_prev}: an entry before it was replaced by another signed entry",
        if *line > 1 { format!(" (line {})", line - 1) } else { String::new() },
        if *line > 1 { "that line".to_string() } else { "the start of the log".to_string() }
    )]
    BrokenLink {
        line: usize,
        seq: u64,
        expected_prev: String,
        found_prev: String,
    },

    #[error(
        "TRUNCATED: the run recorded entry seq {expected_seq} but {}: entries after seq {last_seq} were cut off the \
         end of the log",
        if *last_seq == 0 { "the log is empty".to_string() }
        else { format!("the log ends at seq {last_seq} (line {last_line})") }
    )]
    Truncated {
        last_line: usize,
        last_seq: u64,
        expected_seq: u64,
    },

    #[error(
        "REPLACED: entry seq {seq} at line {line} is not the one the run recorded (hash {found_hash}, recorded \
         {expected_hash}): the log from that entry on was rewritten with the signing key"
    )]
    CheckpointMismatch {
        line: usize,
        seq: u64,
        expected_hash: String,
        found_hash: String,
    },

    #[error("ERASED: {what}")]
    Erased { what: String },
}

impl VerifyError {
    /// This error's exit code (`docs/exit-codes.md`): the trail does not verify.
    pub fn exit(&self) -> xorb_model::exit::Exit {
        xorb_model::exit::Exit::AuditUnverified
    }

    /// The line (1-based) the error is about, when there is one.
    pub fn line(&self) -> Option<usize> {
        match self {
            VerifyError::Io { .. } | VerifyError::Erased { .. } => None,
            VerifyError::Malformed { line, .. }
            | VerifyError::Incomplete { line, .. }
            | VerifyError::Changed { line, .. }
            | VerifyError::Removed { line, .. }
            | VerifyError::Reordered { line, .. }
            | VerifyError::Duplicate { line, .. }
            | VerifyError::BrokenLink { line, .. }
            | VerifyError::CheckpointMismatch { line, .. } => Some(*line),
            VerifyError::Truncated { last_line, .. } => Some(*last_line + 1),
        }
    }

    /// The sequence number of the entry the error is about (for a removal: the first missing one).
    pub fn seq(&self) -> Option<u64> {
        match self {
            VerifyError::Io { .. } | VerifyError::Malformed { .. } | VerifyError::Erased { .. } => {
                None
            }
            VerifyError::Incomplete { after_seq, .. } => after_seq.map(|s| s + 1),
            VerifyError::Changed { seq, .. }
            | VerifyError::Reordered { seq, .. }
            | VerifyError::Duplicate { seq, .. }
            | VerifyError::BrokenLink { seq, .. }
            | VerifyError::CheckpointMismatch { seq, .. } => Some(*seq),
            VerifyError::Removed { first_missing, .. } => Some(*first_missing),
            VerifyError::Truncated { last_seq, .. } => Some(last_seq + 1),
        }
    }
}

struct RawLine<'a> {
    bytes: &'a [u8],
    complete: bool,
}

fn split_lines(data: &[u8]) -> Vec<RawLine<'_>> {
    let mut lines = Vec::new();
    let mut start = 0;
    while start < data.len() {
        match data[start..].iter().position(|&b| b == b'\n') {
            Some(p) => {
                lines.push(RawLine {
                    bytes: &data[start..start + p],
                    complete: true,
                });
                start += p + 1;
            }
            None => {
                lines.push(RawLine {
                    bytes: &data[start..],
                    complete: false,
                });
                start = data.len();
            }
        }
    }
    lines
}

fn entry_ref(p: &ParsedLine<'_>, raw: &[u8]) -> EntryRef {
    EntryRef {
        seq: p.entry.seq,
        ts: p.ts,
        hash: line_hash(raw),
    }
}

/// [`verify_with`] without a checkpoint.
pub fn verify(
    path: &Path,
    key: &VerifyingKey,
    since: Option<DateTime<Utc>>,
) -> Result<VerifyReport, VerifyError> {
    verify_with(
        path,
        key,
        &VerifyOptions {
            since,
            checkpoint: None,
        },
    )
}

/// Verifies the log at `path` against `key`. See the module docs for what `since` checks.
pub fn verify_with(
    path: &Path,
    key: &VerifyingKey,
    opts: &VerifyOptions,
) -> Result<VerifyReport, VerifyError> {
    let data = std::fs::read(path).map_err(|e| VerifyError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let raw = split_lines(&data);
    let parsed: Vec<Result<ParsedLine<'_>, String>> =
        raw.iter().map(|l| parse_line(l.bytes)).collect();
    let n = raw.len();

    // The window starts at the first entry at or after `since`; signatures are checked from the entry before it.
    let (sig_from, in_window) = match opts.since {
        None => (0, n),
        Some(since) => match parsed
            .iter()
            .position(|p| p.as_ref().is_ok_and(|p| p.ts >= since))
        {
            Some(w) => (w.saturating_sub(1), n - w),
            None => (n.saturating_sub(1), 0),
        },
    };
    if let Err(e) = check(&raw, &parsed, key, sig_from) {
        // Name the first bad entry in the whole file, which may lie before the window.
        if sig_from > 0
            && let Err(full) = check(&raw, &parsed, key, 0)
        {
            return Err(full);
        }
        return Err(e);
    }

    let head = parsed
        .last()
        .and_then(|p| p.as_ref().ok())
        .map(|p| entry_ref(p, raw[n - 1].bytes));
    let anchor = (opts.since.is_some() && in_window < n)
        .then(|| {
            parsed[sig_from]
                .as_ref()
                .ok()
                .map(|p| entry_ref(p, raw[sig_from].bytes))
        })
        .flatten();

    if let Some(cp) = &opts.checkpoint {
        let last_seq = head.as_ref().map_or(0, |h| h.seq);
        if cp.seq > last_seq || cp.seq == 0 {
            return Err(VerifyError::Truncated {
                last_line: n,
                last_seq,
                expected_seq: cp.seq,
            });
        }
        // The chain checks proved line i holds seq i.
        let i = (cp.seq - 1) as usize;
        let found = line_hash(raw[i].bytes);
        if found != cp.hash {
            return Err(VerifyError::CheckpointMismatch {
                line: i + 1,
                seq: cp.seq,
                expected_hash: cp.hash.clone(),
                found_hash: found,
            });
        }
    }

    Ok(VerifyReport {
        path: path.to_path_buf(),
        entries: n as u64,
        signatures_checked: (n - sig_from) as u64,
        since: opts.since,
        in_window: in_window as u64,
        anchor,
        head,
        checkpoint: opts.checkpoint.clone(),
    })
}

/// One pass over every line: form, signature (from `sig_from` on), sequence and hash link.
fn check(
    raw: &[RawLine<'_>],
    parsed: &[Result<ParsedLine<'_>, String>],
    key: &VerifyingKey,
    sig_from: usize,
) -> Result<(), VerifyError> {
    // Where each seq first appears, to tell a removal from a reordering.
    let mut first_at: HashMap<u64, usize> = HashMap::new();
    for (i, p) in parsed.iter().enumerate() {
        if let Ok(p) = p {
            first_at.entry(p.entry.seq).or_insert(i);
        }
    }
    let mut prev_seq: Option<u64> = None;
    for (i, (r, p)) in raw.iter().zip(parsed).enumerate() {
        let line = i + 1;
        if !r.complete {
            return Err(VerifyError::Incomplete {
                line,
                after_seq: prev_seq,
            });
        }
        let p = p.as_ref().map_err(|reason| VerifyError::Malformed {
            line,
            reason: reason.clone(),
        })?;
        let seq = p.entry.seq;
        if i >= sig_from && key.verify_strict(p.signed, &p.sig).is_err() {
            return Err(VerifyError::Changed { line, seq });
        }
        let expected_seq = prev_seq.map_or(1, |s| s + 1);
        if seq != expected_seq {
            let expected_at = first_at.get(&expected_seq).copied();
            return Err(match first_at.get(&seq).copied() {
                Some(j) if j < i => VerifyError::Duplicate {
                    line,
                    seq,
                    first_line: j + 1,
                },
                _ => match expected_at {
                    Some(j) if j > i => VerifyError::Reordered {
                        line,
                        seq,
                        expected_seq,
                        expected_at_line: Some(j + 1),
                    },
                    _ if seq > expected_seq => VerifyError::Removed {
                        line,
                        first_missing: expected_seq,
                        last_missing: seq - 1,
                        found_seq: seq,
                    },
                    _ => VerifyError::Reordered {
                        line,
                        seq,
                        expected_seq,
                        expected_at_line: None,
                    },
                },
            });
        }
        let expected_prev = if i == 0 {
            GENESIS_PREV.to_string()
        } else {
            line_hash(raw[i - 1].bytes)
        };
        if p.entry.prev != expected_prev {
            return Err(VerifyError::BrokenLink {
                line,
                seq,
                expected_prev,
                found_prev: p.entry.prev.clone(),
            });
        }
        prev_seq = Some(seq);
    }
    Ok(())
}

/// Reads the entries of a log **without verifying anything** (for display; verify first).
pub fn read_entries(path: &Path) -> Result<Vec<StoredEntry>, VerifyError> {
    let data = std::fs::read(path).map_err(|e| VerifyError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    split_lines(&data)
        .iter()
        .enumerate()
        .map(|(i, l)| {
            parse_line(l.bytes)
                .map(|p| p.entry)
                .map_err(|reason| VerifyError::Malformed {
                    line: i + 1,
                    reason,
                })
        })
        .collect()
}
