//! Stakeholder notifications of a run: which messages a run owes (from what its journal says happened), their
//! queueing in the journal's outbox, the terminal sink, and the webhook sender (a background task with retries,
//! exponential backoff and a per-request timeout that never blocks or fails the rollback).
//!
//! Webhook URLs come from `--notify URL` (repeatable; visible in `ps`, so prefer the others), the environment
//! variable `XORB_NOTIFY_URLS` (separated by whitespace or commas) and `<state-dir>/notify.toml`
//! (`urls = [...]`, `templates = "DIR"`, `updates = "#channel"`, `ca = "FILE"`); all of them are used. `https://`
//! webhooks go through `crate::https` (system CA store plus `--notify-ca`). See `docs/design/governance.md`,
//! "Notifications: delivery" and "Notifications: HTTPS".

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use xorb_engine::outbox::{DeliveryState, NewMessage, Notification, Outbox};
use xorb_engine::{JournalError, RunRecord, StepState};
use xorb_governance::NotifyFile;
use xorb_governance::notify::{Common, Event as Msg, Templates, slack_payload};
use xorb_model::plan::{Phase, RunStatus};
use xorb_model::redact::Redactor;

use crate::errors::UsageError;
use crate::settings::NotifySettings;

/// Header carrying a message's deterministic id, so receivers can drop a message delivered twice.
pub const DELIVERY_HEADER: &str = "X-Xorb-Delivery-Id";
pub const ENV_URLS: &str = "XORB_NOTIFY_URLS";
pub const CONFIG_FILE: &str = "notify.toml";
pub const TERMINAL: &str = "terminal";
/// Per-request timeout of a webhook POST.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A receiver that is down refuses at once; one that is unreachable must not take the whole request timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// First retry delay; doubled on each failed attempt up to `MAX_BACKOFF`.
const FIRST_BACKOFF_MS: i64 = 250;
const MAX_BACKOFF_MS: i64 = 30_000;
/// How long the command waits for pending deliveries once the run has ended (`XORB_NOTIFY_GRACE_SECS`).
const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// Where a run's messages go and how they read.
pub struct NotifyConfig {
    /// (sink name, URL); the name never shows the URL.
    pub webhooks: Vec<(String, String)>,
    pub templates: Templates,
    pub updates: String,
    /// For https:// webhooks (None when there are none).
    pub tls: Option<crate::https::TlsClient>,
}

impl std::fmt::Debug for NotifyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.webhooks.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("NotifyConfig")
            .field("webhooks", &names)
            .finish_non_exhaustive()
    }
}

/// The sink name of a webhook: a fingerprint, since the URL itself carries a token.
pub fn webhook_sink(url: &str) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(url.trim().as_bytes());
    format!("webhook:{}", &hex::encode(h)[..12])
}

/// Every webhook URL configured for this invocation (flag, environment, state directory's file), in that order,
/// without duplicates. Read before the redactor is built, so that it knows them.
pub fn webhook_urls(state_dir: &Path, args: &NotifySettings) -> anyhow::Result<Vec<String>> {
    let mut urls: Vec<String> = args.urls.clone();
    if let Ok(v) = std::env::var(ENV_URLS) {
        urls.extend(
            v.split(|c: char| c.is_whitespace() || c == ',')
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        );
    }
    urls.extend(config_file(state_dir)?.urls);
    let mut seen = std::collections::BTreeSet::new();
    urls.retain(|u| seen.insert(u.trim().to_string()));
    for u in &urls {
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            // Never quote the value: it is a secret, and a mistyped one is still most of one.
            anyhow::bail!(UsageError(format!(
                "a notification webhook ({}) is not an http:// or https:// URL",
                webhook_sink(u)
            )));
        }
    }
    Ok(urls)
}

fn config_file(state_dir: &Path) -> anyhow::Result<NotifyFile> {
    let p = state_dir.join(CONFIG_FILE);
    match std::fs::read_to_string(&p) {
        Ok(text) => Ok(NotifyFile::parse(&p.display().to_string(), &text)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(NotifyFile::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", p.display())),
    }
}

impl NotifyConfig {
    pub fn load(
        state_dir: &Path,
        args: &NotifySettings,
        urls: Vec<String>,
    ) -> anyhow::Result<Self> {
        let file = config_file(state_dir)?;
        let dir = args.templates.clone().or(file.templates);
        let templates = match &dir {
            Some(d) => Templates::from_dir(d)
                .map_err(|e| UsageError(format!("--templates {}: {e}", d.display())))?,
            None => Templates::builtin(),
        };
        let ca = args.ca.clone().or(file.ca);
        let tls = if ca.is_some() || urls.iter().any(|u| u.starts_with("https://")) {
            // A CA file that cannot be used is bad input now, not a warning at every delivery later.
            Some(
                crate::https::TlsClient::new(ca.as_deref(), REQUEST_TIMEOUT)
                    .map_err(|e| UsageError(e.to_string()))?,
            )
        } else {
            None
        };
        Ok(Self {
            tls,
            webhooks: urls.into_iter().map(|u| (webhook_sink(&u), u)).collect(),
            templates,
            updates: file
                .updates
                .unwrap_or_else(|| "#rollback-status".to_string()),
        })
    }
}

fn fmt_secs(secs: i64) -> String {
    xorb_engine::format_duration_ms(u64::try_from(secs.max(0)).unwrap_or(0).saturating_mul(1000))
}

/// The messages run `rec` owes, from its journal: initiation; progress for every phase whose steps are all done;
/// a failure for every execution that ended failed; completion once it succeeded. Deterministic ids, so this can
/// be computed again at any time (after a crash, on resume) and only what is missing gets queued.
pub fn owed_messages(
    rec: &RunRecord,
    templates: &Templates,
    updates: &str,
) -> anyhow::Result<Vec<NewMessage>> {
    let common = Common {
        run_id: rec.id.clone(),
        from: rec.plan.from.clone(),
        to: rec.plan.to.clone(),
        updates: updates.to_string(),
    };
    let mut out = Vec::new();
    let mut push = |id: String, phase: Option<u8>, ev: Msg| -> anyhow::Result<()> {
        let body = templates
            .render(&common, &ev)
            .with_context(|| format!("notification {id}"))?;
        out.push(NewMessage {
            id,
            run_id: rec.id.clone(),
            kind: ev.kind().to_string(),
            phase,
            body,
        });
        Ok(())
    };
    let budget = rec
        .plan
        .steps
        .iter()
        .fold(0u64, |sum, s| sum.saturating_add(s.timeout_secs));
    push(
        format!("{}/initiation", rec.id),
        None,
        Msg::Initiation {
            reason: match &rec.plan.restore_of {
                Some(source) => format!("xorbctl restore of run {source}'s backup"),
                None => format!("xorbctl rollback of {} to {}", rec.plan.from, rec.plan.to),
            },
            impact: match (&rec.plan.restore_of, &rec.plan.scope) {
                (Some(_), _) => format!(
                    "the database replaced by the backup (the live one kept), the services restarted: {} steps",
                    rec.plan.steps.len()
                ),
                (None, Some(s)) => format!("only {s}: {} steps", rec.plan.steps.len()),
                (None, None) => format!("the whole stack: {} steps", rec.plan.steps.len()),
            },
            eta: format!(
                "within {} (sum of step timeouts)",
                fmt_secs(i64::try_from(budget).unwrap_or(i64::MAX))
            ),
        },
    )?;
    let mut phases: Vec<Phase> = Vec::new();
    for s in &rec.plan.steps {
        if !phases.contains(&s.phase) {
            phases.push(s.phase);
        }
    }
    for (i, phase) in phases.iter().enumerate() {
        let steps: Vec<_> = rec
            .steps
            .iter()
            .filter(|s| s.spec.phase == *phase)
            .collect();
        if !steps.iter().all(|s| s.state.is_done()) {
            break;
        }
        let ids: Vec<&str> = steps.iter().map(|s| s.spec.id.as_str()).collect();
        let issues: Vec<String> = rec
            .events
            .iter()
            .filter_map(|e| match &e.event {
                xorb_engine::Event::StepRetry { step, error, .. }
                    if ids.contains(&step.as_str()) =>
                {
                    Some(format!("{step} retried after: {error}"))
                }
                _ => None,
            })
            .collect();
        let left = rec.steps.iter().filter(|s| !s.state.is_done()).count();
        push(
            format!("{}/progress/phase-{}", rec.id, phase.number()),
            Some(phase.number()),
            Msg::Progress {
                phase: phase.number(),
                phases: Phase::COUNT,
                current: match phases.get(i + 1) {
                    Some(next) => next.to_string(),
                    None => "every phase done".to_string(),
                },
                issues,
                eta: format!("{left} steps left"),
            },
        )?;
    }
    for e in &rec.events {
        let xorb_engine::Event::RunFinished { status, next, .. } = &e.event else {
            continue;
        };
        let (step, error, state) = match status {
            RunStatus::Failed { step, error } => {
                (step, error, "stopped; nothing is half-done".to_string())
            }
            RunStatus::EmergencyStopped {
                step,
                error,
                procedure,
                emergency_ok,
                ..
            } => (
                step,
                error,
                format!(
                    "emergency procedure {} {}",
                    procedure.name(),
                    if *emergency_ok { "applied" } else { "FAILED" }
                ),
            ),
            _ => continue,
        };
        let phase = rec.step(step).map(|s| s.spec.phase.number()).unwrap_or(0);
        push(
            format!("{}/failure/phase-{phase}/{}", rec.id, e.seq),
            Some(phase),
            Msg::Failure {
                phase,
                phases: Phase::COUNT,
                step: step.clone(),
                error: error.clone(),
                state,
                next: next.clone(),
            },
        )?;
    }
    if rec.status == RunStatus::Succeeded {
        let ms = rec
            .finished_at
            .map(|f| (f - rec.created_at).num_milliseconds())
            .unwrap_or(0);
        let done = rec
            .steps
            .iter()
            .filter(|s| s.state != StepState::Pending)
            .count();
        push(
            format!("{}/completion", rec.id),
            None,
            Msg::Completion {
                duration: xorb_engine::format_duration_ms(u64::try_from(ms).unwrap_or(0)),
                status: format!("succeeded: {done} of {} steps done", rec.steps.len()),
                impact: "resolved: the stack runs the target release".to_string(),
                next: xorb_engine::next_action(&rec.id, &rec.plan, &rec.status),
                report: format!("xorbctl report {}", rec.id),
            },
        )?;
    }
    Ok(out)
}

/// Queues a run's owed messages and delivers them; shared by the run's sink and the command.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

struct Inner {
    state_dir: PathBuf,
    config: NotifyConfig,
    redactor: Redactor,
    wake: tokio::sync::Notify,
    run_id: Mutex<Option<String>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    stopping: std::sync::atomic::AtomicBool,
}

impl Notifier {
    pub fn new(state_dir: &Path, config: NotifyConfig, redactor: Redactor) -> Self {
        Notifier {
            inner: Arc::new(Inner {
                state_dir: state_dir.to_path_buf(),
                config,
                redactor,
                wake: tokio::sync::Notify::new(),
                run_id: Mutex::new(None),
                task: Mutex::new(None),
                stopping: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    fn outbox(&self) -> Result<Outbox, xorb_engine::outbox::OutboxError> {
        Ok(Outbox::open(&self.inner.state_dir)?.with_redactor(self.inner.redactor.clone()))
    }

    /// Brings the outbox up to date with what the journal says about `run_id`; returns the messages that are new
    /// for the terminal (to be printed now). Starts the sender at the first call.
    pub fn reconcile(&self, run_id: &str) -> anyhow::Result<Vec<String>> {
        {
            let mut r = self.inner.run_id.lock().unwrap_or_else(|e| e.into_inner());
            if r.is_none() {
                *r = Some(run_id.to_string());
            }
        }
        self.start_sender();
        let rec = load_run(&self.inner.state_dir, run_id)?;
        let owed = owed_messages(
            &rec,
            &self.inner.config.templates,
            &self.inner.config.updates,
        )?;
        let outbox = self.outbox()?;
        let now = Utc::now();
        let mut fresh = Vec::new();
        for msg in &owed {
            let msg = NewMessage {
                body: self.inner.redactor.redact_string(&msg.body),
                ..msg.clone()
            };
            for (sink, _) in &self.inner.config.webhooks {
                outbox.enqueue(&msg, sink, false, now)?;
            }
            if outbox.enqueue(&msg, TERMINAL, true, now)? {
                fresh.push(msg.body.clone());
            }
        }
        self.inner.wake.notify_one();
        Ok(fresh)
    }

    fn start_sender(&self) {
        if self.inner.config.webhooks.is_empty() {
            return;
        }
        let mut task = self.inner.task.lock().unwrap_or_else(|e| e.into_inner());
        if task.is_none() {
            let me = self.clone();
            *task = Some(tokio::spawn(async move { me.deliver_loop().await }));
        }
    }

    async fn deliver_loop(self) {
        let client = match reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!(
                    "warning: notifications: cannot build an HTTP client: {e}; messages stay queued"
                );
                return;
            }
        };
        loop {
            let run_id = self
                .inner
                .run_id
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let mut next_wait = Duration::from_secs(1);
            let mut pending = 0;
            if let Some(run_id) = run_id {
                match self.deliver_due(&client, &run_id).await {
                    Ok((left, wait)) => {
                        pending = left;
                        next_wait = wait;
                    }
                    Err(e) => eprintln!(
                        "warning: notifications: {}",
                        self.inner.redactor.redact(&format!("{e:#}"))
                    ),
                }
            }
            if pending == 0
                && self
                    .inner
                    .stopping
                    .load(std::sync::atomic::Ordering::SeqCst)
            {
                return;
            }
            let _ = tokio::time::timeout(next_wait, self.inner.wake.notified()).await;
        }
    }

    /// One pass over every webhook's due messages; returns how many remain pending and how long to wait.
    async fn deliver_due(
        &self,
        client: &reqwest::Client,
        run_id: &str,
    ) -> anyhow::Result<(u64, Duration)> {
        let outbox = self.outbox()?;
        let mut pending = 0;
        let mut wait = Duration::from_secs(1);
        for (sink, url) in &self.inner.config.webhooks {
            for n in outbox.due(run_id, sink, Utc::now())? {
                match post(client, self.inner.config.tls.as_ref(), url, &n).await {
                    Ok(()) => outbox.mark_delivered(&n.id, sink, Utc::now())?,
                    Err(crate::https::PostError::Refused(why)) => {
                        eprintln!(
                            "warning: notification {} to {sink}: {}",
                            n.id,
                            self.inner.redactor.redact(&why)
                        );
                        outbox.mark_failed(&n.id, sink, &why)?;
                    }
                    Err(crate::https::PostError::Transient(why)) => {
                        let backoff = (FIRST_BACKOFF_MS << n.attempts.min(16)).min(MAX_BACKOFF_MS);
                        let retry_at = Utc::now() + chrono::Duration::milliseconds(backoff);
                        outbox.record_failure(&n.id, sink, &why, retry_at)?;
                    }
                }
            }
            pending += outbox.pending(run_id, sink)?;
            if let Some(t) = outbox.next_due(run_id, sink)? {
                let ms = (t - Utc::now()).num_milliseconds().clamp(0, 1000);
                wait = wait.min(Duration::from_millis(ms as u64));
            }
        }
        Ok((pending, wait))
    }

    /// The run has ended: wait at most `XORB_NOTIFY_GRACE_SECS` (default 5 s) for pending deliveries, then leave
    /// them pending (a resume, or the next command on this run, delivers them). Returns (delivered, pending).
    pub async fn finish(&self) -> Option<(usize, usize)> {
        self.inner
            .stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.inner.wake.notify_one();
        let grace = std::env::var("XORB_NOTIFY_GRACE_SECS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_GRACE);
        let task = self
            .inner
            .task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut task) = task
            && tokio::time::timeout(grace, &mut task).await.is_err()
        {
            task.abort();
        }
        let run_id = self
            .inner
            .run_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        let list = self.outbox().ok()?.list(&run_id).ok()?;
        let hooks: Vec<&Notification> = list.iter().filter(|n| n.sink != TERMINAL).collect();
        let count = |state| hooks.iter().filter(|n| n.state == state).count();
        // Refused messages were reported when refused; "pending" means what a later command may still send.
        Some((
            count(DeliveryState::Delivered),
            count(DeliveryState::Pending),
        ))
    }
}

fn load_run(state_dir: &Path, run_id: &str) -> Result<RunRecord, JournalError> {
    xorb_engine::Journal::open(state_dir)?.load_run(run_id)
}

async fn post(
    client: &reqwest::Client,
    tls: Option<&crate::https::TlsClient>,
    url: &str,
    n: &Notification,
) -> Result<(), crate::https::PostError> {
    use crate::https::PostError;
    if url.starts_with("https://") {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| PostError::Refused(format!("a webhook URL does not parse: {e}")))?;
        let Some(tls) = tls else {
            return Err(PostError::Refused(
                "no TLS client for an https:// webhook".into(),
            ));
        };
        let body = serde_json::to_vec(&slack_payload(&n.body))
            .map_err(|e| PostError::Refused(format!("cannot encode the message: {e}")))?;
        return tls
            .post_json(&parsed, &[(DELIVERY_HEADER, &n.id)], body)
            .await;
    }
    let r = client
        .post(url)
        .header(DELIVERY_HEADER, &n.id)
        .json(&slack_payload(&n.body))
        .send()
        .await
        // The error would quote the URL, which is the secret.
        .map_err(|e| PostError::Transient(failure(&e.without_url())))?;
    if r.status().is_success() {
        Ok(())
    } else {
        Err(PostError::Transient(format!(
            "the webhook answered HTTP {}",
            r.status().as_u16()
        )))
    }
}

/// Why a POST failed, in words an on-call engineer acts on ("error sending request" alone says nothing).
fn failure(e: &reqwest::Error) -> String {
    use crate::target::{Cause, classify, error_chain as chain};
    if e.is_timeout() {
        return format!(
            "the webhook did not answer within {} s",
            REQUEST_TIMEOUT.as_secs()
        );
    }
    match classify(e) {
        Cause::Refused => "the webhook refused the connection: nothing listens there".into(),
        Cause::Closed => "the webhook closed the connection without answering".into(),
        Cause::TimedOut => format!(
            "the webhook did not answer within {} s",
            REQUEST_TIMEOUT.as_secs()
        ),
        Cause::Other => format!("cannot reach the webhook: {}", chain(e)),
    }
}

/// The checklist proofs a run's deliveries make: `notify.KIND` (initiation, progress, completion, failure) once a
/// message of that kind was delivered to every webhook it was queued for, at the last of those deliveries. The
/// terminal is no stakeholder: a run without webhooks proves none (its messages were only printed), and a message
/// still pending or refused on one webhook proves nothing.
pub fn delivery_proofs(list: &[Notification]) -> Vec<(String, chrono::DateTime<Utc>)> {
    let mut by_id: BTreeMap<&str, Vec<&Notification>> = BTreeMap::new();
    for n in list.iter().filter(|n| n.sink != TERMINAL) {
        by_id.entry(&n.id).or_default().push(n);
    }
    let mut out: Vec<(String, chrono::DateTime<Utc>)> = by_id
        .values()
        .filter(|rows| rows.iter().all(|n| n.state == DeliveryState::Delivered))
        .filter_map(|rows| {
            let at = rows.iter().filter_map(|n| n.delivered_at).max()?;
            Some((format!("notify.{}", rows[0].kind), at))
        })
        .collect();
    out.sort_by_key(|(_, at)| *at);
    out
}

/// A run's notifications for `show` and the report, grouped by message.
pub fn listing(state_dir: &Path, run_id: &str) -> Vec<Notification> {
    if !state_dir.join(xorb_engine::journal::JOURNAL_FILE).exists() {
        return vec![];
    }
    Outbox::open(state_dir)
        .and_then(|o| o.list(run_id))
        .unwrap_or_default()
}

/// `show`'s text lines for the notifications.
pub fn render_listing(list: &[Notification]) -> String {
    use std::fmt::Write as _;
    let mut by_id: BTreeMap<&str, Vec<&Notification>> = BTreeMap::new();
    let mut order: Vec<&str> = Vec::new();
    for n in list {
        if !by_id.contains_key(n.id.as_str()) {
            order.push(&n.id);
        }
        by_id.entry(&n.id).or_default().push(n);
    }
    let mut s = String::new();
    if list.is_empty() {
        return s;
    }
    let _ = writeln!(s, "Notifications:");
    for id in order {
        let sinks: Vec<String> = by_id[id]
            .iter()
            .map(|n| {
                let state = match n.state {
                    DeliveryState::Delivered => "delivered".to_string(),
                    DeliveryState::Pending => format!(
                        "PENDING after {} attempts{}",
                        n.attempts,
                        n.last_error
                            .as_deref()
                            .map(|e| format!(" ({e})"))
                            .unwrap_or_default()
                    ),
                    DeliveryState::Failed => format!(
                        "FAILED, not retried ({})",
                        n.last_error.as_deref().unwrap_or("no reason recorded")
                    ),
                };
                format!("{} {state}", n.sink)
            })
            .collect();
        let _ = writeln!(s, "  {id:<44} {}", sinks.join("; "));
    }
    s
}

/// The report's section: every message, its sinks and their delivery state.
pub fn render_markdown(list: &[Notification]) -> String {
    use std::fmt::Write as _;
    let mut s = String::from("\n## Notifications\n\n");
    if list.is_empty() {
        s.push_str("None recorded.\n");
        return s;
    }
    s.push_str("| message | sink | state | attempts | last error |\n|---|---|---|---|---|\n");
    for n in list {
        let state = match n.state {
            DeliveryState::Delivered => "delivered",
            DeliveryState::Pending => "**pending**",
            DeliveryState::Failed => "**failed, not retried**",
        };
        let _ = writeln!(
            s,
            "| `{}` | {} | {state} | {} | {} |",
            n.id,
            n.sink,
            n.attempts,
            n.last_error.as_deref().unwrap_or("").replace('|', "\\|")
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, kind: &str, sink: &str, state: DeliveryState, at: i64) -> Notification {
        let t = chrono::DateTime::from_timestamp(at, 0).unwrap();
        Notification {
            id: id.into(),
            run_id: "r".into(),
            kind: kind.into(),
            phase: None,
            sink: sink.into(),
            body: String::new(),
            state,
            attempts: 1,
            last_error: None,
            created_at: t,
            delivered_at: (state == DeliveryState::Delivered).then_some(t),
            next_attempt_at: t,
        }
    }

    #[test]
    fn a_message_proves_its_kind_once_every_webhook_has_it() {
        use DeliveryState::{Delivered, Failed, Pending};
        let list = [
            row("r/initiation", "initiation", TERMINAL, Delivered, 1),
            row("r/initiation", "initiation", "webhook:a", Delivered, 3),
            row("r/initiation", "initiation", "webhook:b", Delivered, 2),
            row("r/completion", "completion", TERMINAL, Delivered, 5),
            row("r/completion", "completion", "webhook:a", Delivered, 6),
            row("r/completion", "completion", "webhook:b", Pending, 5),
            row("r/failure/phase-2/9", "failure", "webhook:a", Failed, 4),
        ];
        let at = |s| chrono::DateTime::from_timestamp(s, 0).unwrap();
        assert_eq!(
            delivery_proofs(&list),
            [("notify.initiation".to_string(), at(3))]
        );
        // Printed on the terminal only: nobody was notified.
        assert!(
            delivery_proofs(&[row("r/initiation", "initiation", TERMINAL, Delivered, 1)])
                .is_empty()
        );
    }
}
