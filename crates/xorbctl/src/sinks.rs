//! Where a run's events go besides the journal: the terminal (plain lines or JSON lines), always through the
//! invocation's one redactor (`crate::redaction`), the signed audit trail (`<state-dir>/audit/`) and the
//! stakeholder notifications (`crate::notify`).

use std::io::Write;

use xorb_audit::{AuditLog, NewEntry};
use xorb_engine::{EventRecord, EventSink};
use xorb_model::redact::Redactor;

use crate::notify::Notifier;
use crate::output::Format;

pub struct RunSink {
    pub format: Format,
    pub redactor: Redactor,
    pub audit: Option<AuditLog>,
    pub actor: String,
    /// Where the journal is: the audit trail's last entry is recorded there after each append.
    state_dir: std::path::PathBuf,
    /// On a terminal: a bar over the run's steps, the event lines printed above it.
    bar: Option<indicatif::ProgressBar>,
    terminal: bool,
    notifier: Option<Notifier>,
}

impl RunSink {
    pub fn new(
        format: Format,
        state_dir: &std::path::Path,
        redactor: Redactor,
        notifier: Option<Notifier>,
    ) -> anyhow::Result<Self> {
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
            state_dir: state_dir.to_path_buf(),
            bar: None,
            terminal,
            notifier,
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

impl RunSink {
    /// Queues the messages the run owes now and prints the new ones (the terminal sink). Only events that can
    /// change what is owed trigger it; a notification problem is a warning, never a failure of the rollback.
    fn notify(&mut self, record: &EventRecord) {
        use xorb_engine::Event as E;
        let Some(n) = &self.notifier else { return };
        if !matches!(
            record.event,
            E::RunStarted { .. }
                | E::RunResumed { .. }
                | E::StepFinished { .. }
                | E::RunFinished { .. }
        ) {
            return;
        }
        match n.reconcile(&record.run_id) {
            Ok(fresh) => {
                for text in fresh {
                    if self.format != Format::Text {
                        continue;
                    }
                    let text = self.redactor.redact(&text);
                    let block: String = text.lines().map(|l| format!("  │ {l}\n")).collect();
                    let line = format!("Notification:\n{}", block.trim_end());
                    match &self.bar {
                        Some(bar) => bar.println(line),
                        None => {
                            let mut out = std::io::stdout().lock();
                            let _ = writeln!(out, "{line}");
                            let _ = out.flush();
                        }
                    }
                }
            }
            Err(e) => {
                let msg = self.redactor.redact_string(&format!("{e:#}"));
                let _ = writeln!(std::io::stderr(), "warning: notifications: {msg}");
            }
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
            let detail = self
                .redactor
                .redact_json(&serde_json::to_value(&event.event).unwrap_or_default());
            let entry = NewEntry::new(
                self.actor.clone(),
                format!("rollback.{}", event.event.kind()),
            )
            .run(event.run_id.clone())
            .detail(detail);
            match audit.append(entry) {
                Ok(at) => {
                    if let Err(e) =
                        xorb_engine::audit_checkpoint::record(&self.state_dir, at.seq, &at.hash)
                    {
                        let _ = writeln!(std::io::stderr(), "warning: audit checkpoint: {e}");
                    }
                }
                // The audit trail must not fail the rollback, but nobody may miss that it has a gap.
                Err(e) => {
                    let _ = writeln!(std::io::stderr(), "warning: audit trail: {e}");
                }
            }
        }
        self.notify(event);
    }
}
