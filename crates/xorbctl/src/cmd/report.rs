//! `xorbctl report RUN --format md|json|html`: the run's report (it proves the checklist's "report generated"
//! item first, so the report shows it).

use xorb_model::exit::Exit;
use xorb_model::redact::Redactor;

use crate::cli::ReportFormat;
use crate::document::{document, html};
use crate::governance::checklists::report_written;
use crate::governance::trail::Trail;
use crate::governance::view;
use crate::settings::Report;

pub fn run(s: &Report, red: &Redactor) -> anyhow::Result<Exit> {
    let state_dir = &s.view.state_dir;
    let rec = xorb_engine::load_run(state_dir, &s.id)?;
    // Recording the "report written" tick is a write; a report of a read-only state directory is
    // still a report, without that tick.
    if let Err(e) = report_written(&s.view.policies, &Trail::new(state_dir, red), &rec.id) {
        eprintln!(
            "note: the checklist item proved by this report was not recorded ({e:#}); the report follows"
        );
    }
    match s.format {
        ReportFormat::Md => {
            let text = format!(
                "{}\n{}{}",
                xorb_report::render_markdown_document(&document(&s.view, &rec)?),
                view::render_markdown(&s.view, &rec.id)?,
                crate::notify::render_markdown(&crate::notify::listing(state_dir, &rec.id))
            );
            print!("{}", red.redact(&text))
        }
        ReportFormat::Json => {
            let doc = serde_json::to_value(document(&s.view, &rec)?)?;
            let doc = red.redact_json(&doc);
            println!("{}", serde_json::to_string_pretty(&doc)?)
        }
        ReportFormat::Html => {
            print!("{}", html(&s.view, &rec, red)?)
        }
    }
    Ok(Exit::Ok)
}
