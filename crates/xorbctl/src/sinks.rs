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
        Ok(Self {
            format,
            redactor,
            audit: Some(audit),
            actor,
        })
    }
}

impl EventSink for RunSink {
    fn emit(&mut self, event: &EventRecord) {
        let line = match self.format {
            Format::Text => xorb_engine::events::log_line(event),
            Format::Json => serde_json::to_string(event).unwrap_or_default(),
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", self.redactor.redact(&line));
        let _ = out.flush();
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
