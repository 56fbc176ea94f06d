//! `xorbctl watch [RUN]`: a live view of a run, also one executed by another process. It polls the journal
//! through a read-only connection (it never writes, migrates or locks, so it cannot slow or block the runner),
//! redraws in place on a terminal, prints one line per change otherwise, and exits with the run's exit status
//! once the run stops. See `docs/design/journal-and-resume.md`, "Watching a run".

mod frame;

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use xorb_engine::{Journal, RunRecord};
use xorb_model::plan::RunStatus;
use xorb_model::redact::Redactor;

use crate::output::Format;
use frame::{Executor, Frame};

/// How often the journal is read again: fast enough to see every step of a rollback, cheap for SQLite.
const POLL: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, clap::Args)]
pub struct WatchArgs {
    /// A run id, a unique prefix of one, or `latest`; default: the run being executed now.
    pub run: Option<String>,
    /// Print one view of the run and exit.
    #[arg(long)]
    pub once: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(
        "no rollback is running in {0}: name the run to watch (`xorbctl runs` lists them), or check --state-dir"
    )]
    NoActiveRun(String),
}

fn open(state_dir: &Path) -> anyhow::Result<Journal> {
    if !state_dir.join(xorb_engine::journal::JOURNAL_FILE).exists() {
        return Err(crate::cli::UsageError(format!(
            "no rollback journal in {}: no run to watch (check --state-dir)",
            state_dir.display()
        ))
        .into());
    }
    Ok(Journal::open_read_only(state_dir)?)
}

/// Whether the process the lock file names is alive and executes `run_id`.
fn executor(state_dir: &Path, run_id: &str) -> Executor {
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
fn resolve(journal: &Journal, state_dir: &Path, run: Option<&str>) -> anyhow::Result<String> {
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
struct Screen {
    drawn: usize,
}

impl Screen {
    fn draw(&mut self, lines: &[String]) {
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

fn emit_change(format: Format, rec: &RunRecord, f: &Frame, red: &Redactor) {
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

pub async fn run(
    state_dir: &Path,
    format: Format,
    args: &WatchArgs,
    red: &Redactor,
) -> anyhow::Result<ExitCode> {
    let journal = open(state_dir)?;
    let id = resolve(&journal, state_dir, args.run.as_deref())?;
    let terminal = format == Format::Text && std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut screen = Screen { drawn: 0 };
    let mut last_change = String::new();
    loop {
        let rec = journal.load_run(&id)?;
        let f = frame::render(&rec, executor(state_dir, &id), chrono::Utc::now());
        let ended = frame::exit_code(&rec.status);
        if args.once {
            match format {
                Format::Text => println!("{}", red.redact(&f.lines.join("\n"))),
                Format::Json => emit_change(format, &rec, &f, red),
            }
            return Ok(ExitCode::from(ended.unwrap_or(0)));
        }
        if terminal {
            let lines: Vec<String> = f.lines.iter().map(|l| red.redact(l).into_owned()).collect();
            screen.draw(&lines);
        } else if f.change != last_change {
            emit_change(format, &rec, &f, red);
            last_change = f.change.clone();
        }
        if let Some(code) = ended {
            return Ok(ExitCode::from(code));
        }
        tokio::time::sleep(POLL).await;
    }
}
