//! Where a run's events go besides the journal: the terminal (plain lines or JSON lines), always through the
//! redactor, and the signed audit trail (`<state-dir>/audit/`).

use std::io::Write;

use xorb_audit::{AuditLog, NewEntry};
use xorb_engine::{EventRecord, EventSink};
use xorb_model::redact::Redactor;

use crate::output::Format;

pub struct RunSink {
    pub format: Format,
    pub redactor: Redactor,
    pub audit: Option<AuditLog>,
    pub actor: String,
    /// On a terminal: a bar over the run's steps, the event lines printed above it.
    bar: Option<indicatif::ProgressBar>,
    terminal: bool,
}

impl RunSink {
    pub fn new(
        format: Format,
        state_dir: &std::path::Path,
        secrets: Vec<String>,
    ) -> anyhow::Result<Self> {
        let redactor = Redactor::new();
        redactor.add_all(secrets);
        let audit = AuditLog::open(state_dir.join("audit"))?.with_redactor(redactor.clone());
        let actor = std::env::var("SUDO_USER")
            .or_else(|_| std::env::var("USER"))
            .unwrap_or_else(|_| "xorbctl".into());
        let terminal =
            format == Format::Text && std::io::IsTerminal::is_terminal(&std::io::stdout());
        Ok(Self {
            format,
            redactor,
            audit: Some(audit),
            actor,
            bar: None,
            terminal,
        })
    }
}

impl RunSink {
    fn progress(&mut self, record: &EventRecord, line: String) {
        use xorb_engine::Event as E;
        let bar = self.bar.get_or_insert_with(|| {
            let steps = match &record.event {
                E::RunStarted { steps, .. } => *steps as u64,
                _ => 0,
            };
            let bar = if steps > 0 {
                indicatif::ProgressBar::new(steps)
            } else {
                indicatif::ProgressBar::new_spinner()
            };
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{spinner} [{bar:30}] {pos}/{len} {elapsed} {msg}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            bar
        });
        bar.println(line);
        match &record.event {
            E::StepStarted { step, title, .. } => {
                bar.set_message(format!("{step}: {}", self.redactor.redact(title)))
            }
            E::StepFinished { .. } => bar.inc(1),
            E::RunFinished { .. } => {
                bar.finish_and_clear();
                self.bar = None;
            }
            _ => {}
        }
    }
}

impl EventSink for RunSink {
    fn emit(&mut self, event: &EventRecord) {
        let line = match self.format {
            Format::Text => xorb_engine::events::log_line(event),
            Format::Json => serde_json::to_string(event).unwrap_or_default(),
        };
        let line = self.redactor.redact(&line).into_owned();
        if self.terminal {
            self.progress(event, line);
        } else {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
        if let Some(audit) = &mut self.audit {
            let detail = serde_json::to_value(&event.event).unwrap_or_default();
            let entry = NewEntry::new(
                self.actor.clone(),
                format!("rollback.{}", event.event.kind()),
            )
            .run(event.run_id.clone())
            .detail(detail);
            if let Err(e) = audit.append(entry) {
                // The audit trail must not fail the rollback, but nobody may miss that it has a gap.
                let _ = writeln!(std::io::stderr(), "warning: audit trail: {e}");
            }
        }
    }
}
