//! `xorbctl runs`: the runs of this state directory, most recent first; run directories the journal does not know
//! make it exit 5.

use std::fmt::Write as _;

use xorb_model::exit::Exit;

use crate::output::{Format, Reporter};
use crate::settings::StateDir;

pub fn run(s: &StateDir, out: &Reporter) -> anyhow::Result<Exit> {
    let state_dir = &s.state_dir;
    // Reading creates nothing: a mistyped --state-dir must not become a new, empty state directory.
    if !state_dir.is_dir() {
        return Err(xorb_engine::JournalError::NoJournal(state_dir.to_path_buf()).into());
    }
    let runs = if state_dir.join("journal.sqlite").exists() {
        xorb_engine::list_runs(state_dir)?
    } else {
        vec![]
    };
    out.result(&runs, |runs| {
        let mut s = String::new();
        if runs.is_empty() {
            s.push_str("No runs yet.\n");
        }
        for r in runs {
            let note = if r.active {
                " (running now)"
            } else if r.interrupted {
                " (interrupted: resume it)"
            } else {
                ""
            };
            let _ = writeln!(
                s,
                "{}  {} → {}  {}{note}",
                r.run.id, r.run.from, r.run.to, r.run.status
            );
        }
        s
    });
    // Runs on disk the journal lost are an unhealthy state directory: say so, exit 5.
    let known = runs.iter().map(|r| r.run.id.clone()).collect();
    let unknown = xorb_engine::disk_runs::unknown_runs(state_dir, &known);
    if unknown.is_empty() {
        return Ok(Exit::Ok);
    }
    match out.format {
        Format::Json => eprintln!(
            "{}",
            serde_json::json!({"warning": "runs on disk that the journal does not know",
                               "runs_not_in_journal": unknown})
        ),
        Format::Text => eprint!("warning: {}", xorb_engine::disk_runs::describe(&unknown)),
    }
    Ok(Exit::Unhealthy)
}
