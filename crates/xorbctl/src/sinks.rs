//! Where a run's events go besides the journal: the terminal (plain lines or JSON lines), always through the
//! redactor, the signed audit trail (`<state-dir>/audit/`) and the stakeholder notifications (`crate::notify`).
//! Also builds the one [`Redactor`] of a command invocation ([`redactor`]).

use std::io::Write;
use std::path::Path;
use std::sync::OnceLock;

use xorb_audit::{AuditLog, NewEntry};
use xorb_engine::{EventRecord, EventSink};
use xorb_model::redact::Redactor;

use crate::notify::Notifier;
use crate::output::Format;

static PROCESS_REDACTOR: OnceLock<Redactor> = OnceLock::new();

/// The redactor of this process: every secret the tool read so far (clones share one registry, so what
/// [`redactor`] registers later is covered too). `main` redacts error messages with it.
pub fn process_redactor() -> &'static Redactor {
    PROCESS_REDACTOR.get_or_init(Redactor::new)
}

/// Configuration keys whose values are secrets: `*PASSWORD*`, `*SECRET*`, `*TOKEN*`, `*KEY*` (not public keys),
/// `*CREDENTIAL*`.
pub fn key_looks_secret(key: &str) -> bool {
    let k = key.to_ascii_uppercase();
    let public = k.contains("PUBLIC") || k.contains("PUBKEY") || k.ends_with("_PUB");
    ["PASSWORD", "PASSWD", "SECRET", "TOKEN", "CREDENTIAL"]
        .iter()
        .any(|w| k.contains(w))
        || (k.contains("KEY") && !public)
}

/// Registers a configuration value: a secret by its key, or any URL with credentials (its password).
fn add_config_value(r: &Redactor, key: &str, value: &str) {
    let v = value.trim().trim_matches('"').trim_matches('\'');
    if key_looks_secret(key) {
        r.add(v);
    }
    if v.contains("://") && v.contains('@') {
        r.add(v);
    }
}

/// `KEY=VALUE` lines of an env file (comments and blanks skipped).
fn env_pairs(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("export ").unwrap_or(l).split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn add_json_strings(r: &Redactor, v: &serde_json::Value) {
    match v {
        serde_json::Value::String(s) => {
            r.add(s);
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| add_json_strings(r, x)),
        serde_json::Value::Object(o) => o.values().for_each(|x| add_json_strings(r, x)),
        _ => {}
    }
}

/// The one redactor of this command invocation, loaded with every secret the tool can read: the stack's
/// `secrets/` (DB and Redis passwords, tenant tokens, the capture identity, any other file there), the audit
/// signing key, secret-looking configuration values of every release under `releases_root` and of the live
/// services (`stack.json`), secret-looking variables of our own environment, URLs with credentials, and the
/// notification webhook URLs. Missing sources are skipped: redaction must never stop a command.
pub fn redactor(state_dir: &Path, releases_root: Option<&Path>, webhooks: &[String]) -> Redactor {
    let r = process_redactor().clone();
    let mut values: Vec<String> = Vec::new();
    if let Ok(entries) = std::fs::read_dir(state_dir.join("secrets")) {
        for e in entries.flatten() {
            let Ok(text) = std::fs::read_to_string(e.path()) else {
                continue;
            };
            if e.path().extension().is_some_and(|x| x == "json") {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                    add_json_strings(&r, &v);
                }
                continue;
            }
            values.push(text.trim().to_string());
            // Multi-line secrets (an age identity with its comments): each secret line on its own too.
            values.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.starts_with('#'))
                    .map(str::to_string),
            );
        }
    }
    if let Ok(entries) = std::fs::read_dir(state_dir.join("audit")) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".pem") && !name.contains(".pub") {
                if let Ok(text) = std::fs::read_to_string(e.path()) {
                    values.extend(
                        text.lines()
                            .filter(|l| !l.starts_with("-----"))
                            .map(str::to_string),
                    );
                }
            }
        }
    }
    r.add_all(values);
    if let Some(root) = releases_root
        && let Ok(releases) = std::fs::read_dir(root)
    {
        for rel in releases.flatten() {
            let Ok(files) = std::fs::read_dir(rel.path().join("config")) else {
                continue;
            };
            for f in files.flatten() {
                if let Ok(text) = std::fs::read_to_string(f.path()) {
                    for (k, v) in env_pairs(&text) {
                        add_config_value(&r, &k, &v);
                    }
                }
            }
        }
    }
    if let Ok(text) = std::fs::read_to_string(state_dir.join("stack.json"))
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
    {
        for svc in v["services"].as_array().into_iter().flatten() {
            for (k, val) in svc["config"].as_object().into_iter().flatten() {
                if let Some(val) = val.as_str() {
                    add_config_value(&r, k, val);
                }
            }
        }
    }
    for (k, v) in std::env::vars() {
        add_config_value(&r, &k, &v);
    }
    for url in webhooks {
        r.add_webhook_url(url);
    }
    r
}

/// [`redactor`] for a command that only reads (show, report, plan): the same sources, best effort.
pub fn redactor_for(cli: &crate::cli::Cli) -> Redactor {
    let root = crate::cli::paths(cli).ok().map(|p| p.releases_root);
    let urls = crate::notify::webhook_urls(&cli.state_dir, &cli.notify).unwrap_or_default();
    redactor(&cli.state_dir, root.as_deref(), &urls)
}

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
