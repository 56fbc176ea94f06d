//! What `xorbctl watch` (`crate::cmd::watch`) shows and how: the run to watch, the journal read through a
//! read-only connection (it never writes, migrates or locks, so it cannot slow or block the runner), the frames
//! (`frame`, no I/O), redrawn in place on a terminal or one line per change otherwise. See
//! `docs/design/journal-and-resume.md`, "Watching a run".

pub mod frame;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use xorb_engine::{Journal, RunRecord};
use xorb_model::plan::RunStatus;
use xorb_model::redact::Redactor;

use crate::output::Format;
use frame::{Executor, Frame};

use crate::errors::{UsageError, WatchError};

/// How often the journal is read again: fast enough to see every step of a rollback, cheap for SQLite.
pub const POLL: Duration = Duration::from_millis(200);

pub fn open(state_dir: &Path) -> anyhow::Result<Journal> {
    if !state_dir.join(xorb_engine::journal::JOURNAL_FILE).exists() {
        return Err(UsageError(format!(
            "no rollback journal in {}: no run to watch (check --state-dir)",
            state_dir.display()
        ))
        .into());
    }
    Ok(Journal::open_read_only(state_dir)?)
}

/// Whether the process the lock file names is alive and executes `run_id`.
pub fn executor(state_dir: &Path, run_id: &str) -> Executor {
    let Some(h) = xorb_engine::lock::recorded_holder(state_dir) else {
        return Executor::Gone;
    };
    let alive = h
        .pid
        .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
    let ours = h.run_id.as_deref().is_none_or(|r| r == run_id);
    if alive && ours {
        Executor::Alive
    } else {
        Executor::Gone
    }
}

/// The run to watch: the named one, else the one the lock holder executes, else the newest running one.
pub fn resolve(journal: &Journal, state_dir: &Path, run: Option<&str>) -> anyhow::Result<String> {
    if let Some(r) = run {
        return Ok(journal.resolve_run_id(r)?);
    }
    let runs = journal.list_runs()?;
    if let Some(id) = xorb_engine::lock::recorded_holder(state_dir).and_then(|h| h.run_id)
        && runs.iter().any(|r| r.id == id)
        && executor(state_dir, &id) == Executor::Alive
    {
        return Ok(id);
    }
    runs.iter()
        .filter(|r| r.status == RunStatus::Running)
        .max_by_key(|r| r.created_at)
        .map(|r| r.id.clone())
        .ok_or_else(|| WatchError::NoActiveRun(state_dir.display().to_string()).into())
}

/// Draws frames in place on a terminal: the cursor goes back to the frame's first line and every line is
/// overwritten and cleared to its end, so nothing is blanked between two frames (no flicker).
pub struct Screen {
    pub drawn: usize,
}

impl Screen {
    pub fn draw(&mut self, lines: &[String]) {
        let (rows, cols) = console::Term::stdout().size();
        let cols = usize::from(cols.max(20)) - 1;
        let max_rows = usize::from(rows.max(5)) - 1;
        let mut out = String::new();
        if self.drawn > 0 {
            out.push_str(&format!("\x1b[{}F", self.drawn));
        }
        for l in lines.iter().take(max_rows) {
            let l: String = l.chars().take(cols).collect();
            out.push_str(&l);
            out.push_str("\x1b[K\n");
        }
        out.push_str("\x1b[J");
        self.drawn = lines.len().min(max_rows);
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(out.as_bytes());
        let _ = stdout.flush();
    }
}

pub fn emit_change(format: Format, rec: &RunRecord, f: &Frame, red: &Redactor) {
    let line = match format {
        Format::Text => format!(
            "{} {}",
            chrono::Local::now().format("%H:%M:%S"),
            red.redact(&f.change)
        ),
        Format::Json => red
            .redact_json(&serde_json::json!({
                "run": rec.id,
                "status": rec.status,
                "change": f.change,
                "steps_done": rec.steps.iter().filter(|s| s.state.is_done()).count(),
                "steps_total": rec.steps.len(),
            }))
            .to_string(),
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
