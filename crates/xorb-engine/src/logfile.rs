//! The runbook's log file: `<run_dir>/rollback-YYYYMMDD-HHMMSS.log`, one `[YYYY-MM-DD HH:MM:SS] message` line per
//! action, as the runbook's `log_action` writes it. A resumed run appends to the same file.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Local, Utc};
use xorb_model::redact::Redactor;

use crate::events::{EventRecord, EventSink, log_line};

/// The log file's name for a run created at `created_at` (local time, as `date` prints it).
pub fn log_file_name(created_at: DateTime<Utc>) -> String {
    format!(
        "rollback-{}.log",
        created_at.with_timezone(&Local).format("%Y%m%d-%H%M%S")
    )
}

/// Appends one line per event to the run's log file.
#[derive(Debug)]
pub struct LogFileSink {
    file: Option<File>,
    path: PathBuf,
    redactor: Redactor,
}

impl LogFileSink {
    /// Opens (creating or appending to) `<run_dir>/rollback-YYYYMMDD-HHMMSS.log`.
    pub fn open(run_dir: &Path, created_at: DateTime<Utc>) -> std::io::Result<LogFileSink> {
        crate::private::create_dir_all(run_dir)?;
        let path = run_dir.join(log_file_name(created_at));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)?;
        Ok(LogFileSink {
            file: Some(file),
            path,
            redactor: Redactor::new(),
        })
    }

    /// Every line is redacted whole before it is written (a secret split across writes could not be found).
    pub fn with_redactor(mut self, redactor: Redactor) -> Self {
        self.redactor = redactor;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl EventSink for LogFileSink {
    fn emit(&mut self, event: &EventRecord) {
        if let Some(f) = &mut self.file
            && writeln!(f, "{}", self.redactor.redact(&log_line(event))).is_err()
        {
            tracing::warn!(path = %self.path.display(), "cannot write the rollback log file; the journal still records every step");
            self.file = None;
        }
    }
}
