//! Stakeholder notifications: the runbook's templates (initiation, progress per phase, completion) and one for
//! failure, rendered with minijinja in strict-undefined mode; the Slack-compatible payload; delivery ids so a
//! resumed run never sends a message twice.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use minijinja::value::Serde;
use minijinja::{Environment, UndefinedBehavior, Value, context};
use serde::{Deserialize, Serialize};

/// Facts every message carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Common {
    pub run_id: String,
    pub from: String,
    pub to: String,
    /// Where updates are posted ("#rollback-status").
    pub updates: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    Initiation {
        reason: String,
        impact: String,
        eta: String,
    },
    /// Phase `phase` of `phases` complete.
    Progress {
        phase: u8,
        phases: u8,
        current: String,
        issues: Vec<String>,
        eta: String,
    },
    Completion {
        duration: String,
        status: String,
        impact: String,
        next: String,
        report: String,
    },
    Failure {
        phase: u8,
        phases: u8,
        step: String,
        error: String,
        state: String,
        next: String,
    },
}

impl Event {
    /// The template name (`<kind>.j2`) and the kind in delivery ids.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Initiation { .. } => "initiation",
            Event::Progress { .. } => "progress",
            Event::Completion { .. } => "completion",
            Event::Failure { .. } => "failure",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("{file}: cannot read: {message}")]
    Read { file: String, message: String },
    #[error("template {template}: {message}")]
    Template { template: String, message: String },
}

pub const KINDS: [&str; 4] = ["initiation", "progress", "completion", "failure"];

/// The four templates, compiled and checked against a sample of every event in strict mode.
pub struct Templates {
    env: Environment<'static>,
}

impl fmt::Debug for Templates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Templates").finish_non_exhaustive()
    }
}

fn builtin_source(kind: &str) -> &'static str {
    match kind {
        "initiation" => crate::builtin::TEMPLATE_INITIATION,
        "progress" => crate::builtin::TEMPLATE_PROGRESS,
        "completion" => crate::builtin::TEMPLATE_COMPLETION,
        _ => crate::builtin::TEMPLATE_FAILURE,
    }
}

/// Instructions one render may take; the shipped templates use about a hundred.
const TEMPLATE_FUEL: u64 = 100_000;

impl Templates {
    pub fn builtin() -> Self {
        Self::from_sources(|k| Ok(builtin_source(k).to_string()))
            .expect("the shipped templates are valid")
    }

    /// Templates from `dir/<kind>.j2`; a kind without a file there keeps the shipped template.
    pub fn from_dir(dir: &Path) -> Result<Self, NotifyError> {
        Self::from_sources(|k| {
            let path = dir.join(format!("{k}.j2"));
            match std::fs::read_to_string(&path) {
                Ok(s) => Ok(s),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Ok(builtin_source(k).to_string())
                }
                Err(e) => Err(NotifyError::Read {
                    file: path.display().to_string(),
                    message: e.to_string(),
                }),
            }
        })
    }

    /// `source(kind)` gives each template's text.
    pub fn from_sources(
        mut source: impl FnMut(&str) -> Result<String, NotifyError>,
    ) -> Result<Self, NotifyError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        // An operator's template must not stall a rollback: nested loops run out of fuel instead of for hours.
        env.set_fuel(Some(TEMPLATE_FUEL));
        for k in KINDS {
            let text = source(k)?;
            long_tag(&text).map_or(Ok(()), |message| {
                Err(NotifyError::Template {
                    template: format!("{k}.j2"),
                    message,
                })
            })?;
            env.add_template_owned(format!("{k}.j2"), text)
                .map_err(|e| NotifyError::Template {
                    template: format!("{k}.j2"),
                    message: detail(&e),
                })?;
        }
        let t = Templates { env };
        // Fail at load, not in the middle of a rollback, when a template names a field the context lacks.
        let common = Common {
            run_id: "r".into(),
            from: "a".into(),
            to: "b".into(),
            updates: "#u".into(),
        };
        for ev in samples() {
            t.render(&common, &ev)?;
        }
        Ok(t)
    }

    pub fn render(&self, common: &Common, event: &Event) -> Result<String, NotifyError> {
        let name = format!("{}.j2", event.kind());
        let tpl = self
            .env
            .get_template(&name)
            .map_err(|e| NotifyError::Template {
                template: name.clone(),
                message: detail(&e),
            })?;
        let ctx = context! { ..Value::from(Serde(common)), ..Value::from(Serde(event)) };
        tpl.render(ctx).map_err(|e| NotifyError::Template {
            template: name,
            message: detail(&e),
        })
    }
}

/// The longest `{{ … }}` or `{% … %}` a template may hold. A long chain (`a.b.c…`, `x ~ x ~ …`, `a in b in …`)
/// nests minijinja's syntax tree as deep as it is long, and compiling or rendering it overflows the stack
/// (found by the fuzz target `templates`); a notification needs nothing near this.
const MAX_TAG_CHARS: usize = 500;

/// `Some(message)` for the first tag longer than [`MAX_TAG_CHARS`].
fn long_tag(text: &str) -> Option<String> {
    let mut rest = text;
    let mut line = 1;
    while let Some(open) = rest.find(['{']) {
        let after = &rest[open + 1..];
        let close = match after.chars().next() {
            Some('{') => "}}",
            Some('%') => "%}",
            _ => {
                line += rest[..open + 1].matches('\n').count();
                rest = after;
                continue;
            }
        };
        line += rest[..open].matches('\n').count();
        let body = &after[1..];
        let len = body.find(close).unwrap_or(body.len());
        if body[..len].chars().count() > MAX_TAG_CHARS {
            return Some(format!(
                "line {line}: a tag longer than {MAX_TAG_CHARS} characters; split the expression with {{% set %}}"
            ));
        }
        line += body[..len].matches('\n').count();
        rest = &body[len..];
    }
    None
}

fn detail(e: &minijinja::Error) -> String {
    match e.line() {
        Some(l) => format!("line {l}: {e}"),
        None => e.to_string(),
    }
}

fn samples() -> Vec<Event> {
    let s = |v: &str| v.to_string();
    vec![
        Event::Initiation {
            reason: s("r"),
            impact: s("i"),
            eta: s("e"),
        },
        Event::Progress {
            phase: 1,
            phases: 5,
            current: s("c"),
            issues: vec![s("x")],
            eta: s("e"),
        },
        Event::Progress {
            phase: 1,
            phases: 5,
            current: s("c"),
            issues: vec![],
            eta: s("e"),
        },
        Event::Completion {
            duration: s("d"),
            status: s("s"),
            impact: s("i"),
            next: s("n"),
            report: s("r"),
        },
        Event::Failure {
            phase: 2,
            phases: 5,
            step: s("s"),
            error: s("e"),
            state: s("s"),
            next: s("n"),
        },
    ]
}

/// The body of a Slack-compatible incoming webhook: `{"text": ...}`, with `&`, `<` and `>` escaped as Slack asks.
pub fn slack_payload(text: &str) -> serde_json::Value {
    let escaped = text
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    serde_json::json!({ "text": escaped })
}

/// Identifies one message to one sink: the run, the journal's event sequence number, the event kind and the sink.
/// The same event of the same run always yields the same id, so a resumed run recognises what it already sent.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeliveryId {
    pub run_id: String,
    pub seq: u64,
    pub kind: String,
    pub sink: String,
}

impl DeliveryId {
    pub fn new(run_id: &str, seq: u64, event: &Event, sink: &str) -> Self {
        DeliveryId {
            run_id: run_id.into(),
            seq,
            kind: event.kind().into(),
            sink: sink.into(),
        }
    }
}

impl fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{:08}/{}/{}",
            self.run_id, self.seq, self.kind, self.sink
        )
    }
}

/// The deliveries a run has claimed; the caller persists it (journal) and reloads it on resume.
///
/// Protocol (at most once): `claim` the id, persist the set, then send. A crash between persisting and sending
/// loses that message rather than sending it twice; the caller may report such ids as "uncertain".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sent {
    ids: BTreeSet<String>,
}

impl Sent {
    pub fn new() -> Self {
        Self::default()
    }

    /// True when this delivery had not been claimed and now is: send it. False: already sent (or being sent).
    pub fn claim(&mut self, id: &DeliveryId) -> bool {
        self.ids.insert(id.to_string())
    }

    pub fn contains(&self, id: &DeliveryId) -> bool {
        self.ids.contains(&id.to_string())
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn common() -> Common {
        Common {
            run_id: "run-42".into(),
            from: "v2025.08-rc1".into(),
            to: "v2025.07-stable".into(),
            updates: "#rollback-status".into(),
        }
    }

    #[test]
    fn initiation_follows_the_runbook_template() {
        let ev = Event::Initiation {
            reason: "p99 5x".into(),
            impact: "API degraded".into(),
            eta: "30 minutes".into(),
        };
        let text = Templates::builtin().render(&common(), &ev).unwrap();
        assert_eq!(
            text,
            "🚨 ROLLBACK INITIATED\nRelease: v2025.08-rc1 → v2025.07-stable\nReason: p99 5x\nImpact: API degraded\nETA: 30 minutes\nUpdates: #rollback-status\nRun: run-42"
        );
    }

    #[test]
    fn progress_completion_and_failure_render() {
        let t = Templates::builtin();
        let p = t
            .render(
                &common(),
                &Event::Progress {
                    phase: 2,
                    phases: 5,
                    current: "3.db".into(),
                    issues: vec![],
                    eta: "20m".into(),
                },
            )
            .unwrap();
        assert!(
            p.starts_with(
                "🔄 ROLLBACK UPDATE\nProgress: Phase 2 of 5 complete\nCurrent: 3.db\nIssues: None\n"
            ),
            "{p}"
        );
        let p = t
            .render(
                &common(),
                &Event::Progress {
                    phase: 3,
                    phases: 5,
                    current: "4".into(),
                    issues: vec!["a".into(), "b".into()],
                    eta: "9m".into(),
                },
            )
            .unwrap();
        assert!(p.contains("Issues: a; b\n"), "{p}");
        let c = t
            .render(
                &common(),
                &Event::Completion {
                    duration: "27m".into(),
                    status: "All services healthy".into(),
                    impact: "Resolved".into(),
                    next: "Post-rollback monitoring for 2 hours".into(),
                    report: "file:///r.md".into(),
                },
            )
            .unwrap();
        assert!(
            c.starts_with("✅ ROLLBACK COMPLETE\n")
                && c.contains("Duration: 27m\n")
                && c.contains("Report: file:///r.md"),
            "{c}"
        );
        let f = t
            .render(
                &common(),
                &Event::Failure {
                    phase: 2,
                    phases: 5,
                    step: "2.api.image".into(),
                    error: "rollout timed out".into(),
                    state: "emergency procedure ran".into(),
                    next: "resume".into(),
                },
            )
            .unwrap();
        assert!(
            f.contains("Failed at: Phase 2 of 5, step 2.api.image\nError: rollout timed out"),
            "{f}"
        );
    }

    #[test]
    fn strict_undefined_rejects_a_template_naming_an_unknown_field() {
        let r = Templates::from_sources(|k| {
            Ok(if k == "completion" {
                "Done in {{ duraton }}".to_string()
            } else {
                builtin_source(k).to_string()
            })
        });
        match r {
            Err(NotifyError::Template { template, message }) => {
                assert_eq!(template, "completion.j2");
                assert!(message.contains("undefined"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let syntax = Templates::from_sources(|k| {
            Ok(if k == "failure" {
                "{{ oops".into()
            } else {
                builtin_source(k).into()
            })
        });
        assert!(
            matches!(syntax, Err(NotifyError::Template { template, .. }) if template == "failure.j2")
        );
    }

    #[test]
    fn operator_templates_from_a_directory() {
        let dir = std::env::temp_dir().join(format!("xorb-governance-tpl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("initiation.j2"),
            "ROLLBACK {{ from }}->{{ to }} because {{ reason }}",
        )
        .unwrap();
        let t = Templates::from_dir(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let ev = Event::Initiation {
            reason: "x".into(),
            impact: "y".into(),
            eta: "z".into(),
        };
        assert_eq!(
            t.render(&common(), &ev).unwrap(),
            "ROLLBACK v2025.08-rc1->v2025.07-stable because x"
        );
        let done = Event::Completion {
            duration: "1".into(),
            status: "2".into(),
            impact: "3".into(),
            next: "4".into(),
            report: "5".into(),
        };
        assert!(
            t.render(&common(), &done)
                .unwrap()
                .starts_with("✅ ROLLBACK COMPLETE")
        );
    }

    #[test]
    fn slack_payload_is_json_text_escaped() {
        let v = slack_payload("a < b & c > d");
        assert_eq!(v, serde_json::json!({"text": "a &lt; b &amp; c &gt; d"}));
        assert_eq!(v.as_object().unwrap().len(), 1);
    }

    #[test]
    fn a_resumed_run_does_not_send_twice() {
        let ev = Event::Progress {
            phase: 1,
            phases: 5,
            current: "2".into(),
            issues: vec![],
            eta: "".into(),
        };
        let id = DeliveryId::new("run-42", 7, &ev, "slack");
        assert_eq!(id.to_string(), "run-42/00000007/progress/slack");
        let mut sent = Sent::new();
        assert!(sent.claim(&id));
        assert!(!sent.claim(&id));
        // Same event to another sink, or the next phase's event, is a different delivery.
        assert!(sent.claim(&DeliveryId::new("run-42", 7, &ev, "terminal")));
        assert!(sent.claim(&DeliveryId::new("run-42", 8, &ev, "slack")));
        // Persist, "crash", reload: the resumed run recognises all three.
        let saved = serde_json::to_string(&sent).unwrap();
        let mut resumed: Sent = serde_json::from_str(&saved).unwrap();
        assert_eq!(resumed.len(), 3);
        assert!(resumed.contains(&id));
        assert!(!resumed.claim(&DeliveryId::new("run-42", 7, &ev, "slack")));
        assert!(resumed.claim(&DeliveryId::new("run-43", 7, &ev, "slack")));
    }

    /// The error of loading `text` as template `kind`, the others shipped.
    fn refused_with(kind: &str, text: &str) -> String {
        Templates::from_sources(|k| {
            Ok(if k == kind {
                text.to_string()
            } else {
                builtin_source(k).to_string()
            })
        })
        .expect_err("refused")
        .to_string()
    }

    #[test]
    fn a_template_that_would_loop_for_hours_runs_out_of_fuel_at_load() {
        let looping =
            "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}";
        let e = refused_with("progress", looping);
        assert!(e.contains("progress.j2"), "{e}");
    }

    #[test]
    fn a_tag_too_long_to_compile_safely_is_refused_with_its_line() {
        // Found by the fuzz target templates: 1,500 chained attributes overflowed a 2 MiB stack.
        let chain = format!(
            "Run: {{{{ run_id }}}}\n{{{{ run_id{} }}}}\n",
            ".a".repeat(1500)
        );
        let e = refused_with("completion", &chain);
        assert!(
            e.contains("completion.j2") && e.contains("line 2: a tag longer than 500"),
            "{e}"
        );
        assert_eq!(long_tag(builtin_source("progress")), None);
        assert_eq!(long_tag("{ {{ x }} {% if y %}{% endif %} {"), None);
    }
}
