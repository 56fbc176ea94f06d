//! `xorbctl report RUN --format html`: one self-contained page (inline CSS and SVG, no script, no fetch of
//! anything: it opens from an e-mail attachment or an air-gapped laptop), with a Content-Security-Policy that
//! forbids every load but its own style block. The dashboard reuses [`live_fragment`] and [`page`].
//!
//! Every text from the run goes through [`Html::t`]: redacted, then escaped.

use std::fmt::Write as _;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use xorb_engine::format_duration_ms;
use xorb_engine::journal::StepState;
use xorb_model::plan::RunStatus;
use xorb_model::redact::Redactor;

use crate::escape::esc;
use crate::model::Document;
use crate::svg;
use crate::{PhaseReport, StepReport};

pub const REPORT_HTML: &str = "report.html";

/// The `id`s of the report's sections, in page order (the monitoring section only when a monitor ran).
pub const SECTIONS: [&str; 11] = [
    "verdict",
    "summary",
    "timeline",
    "phases",
    "versions",
    "loss",
    "checks",
    "approvals",
    "checklists",
    "notifications",
    "incidents",
];

/// The page's style: system fonts only (nothing to fetch), a print layout, states that read without colour.
pub const STYLE: &str = include_str!("report.css");

/// `'sha256-…'` of an inline block, for the Content-Security-Policy.
pub fn csp_hash(block: &str) -> String {
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(block.as_bytes()))
    )
}

/// A whole page around `body`. Without a script the policy allows no script at all; with one, only that one
/// (by its hash) and requests to the page's own origin.
pub fn page(title: &str, body: &str, script: Option<&str>) -> String {
    let mut csp = format!(
        "default-src 'none'; style-src {}; img-src 'none'; base-uri 'none'; form-action 'none'",
        csp_hash(STYLE)
    );
    if let Some(js) = script {
        let _ = write!(csp, "; script-src {}; connect-src 'self'", csp_hash(js));
    }
    let mut s = String::with_capacity(body.len() + STYLE.len() + 1024);
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"{}\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"referrer\" content=\"no-referrer\"><title>{}</title><style>{STYLE}</style></head>\n<body>\n{body}",
        esc(&csp),
        esc(title)
    );
    if let Some(js) = script {
        let _ = write!(s, "<script>{js}</script>");
    }
    s.push_str("\n</body></html>\n");
    s
}

/// The renderer: the redactor every run text passes through.
pub struct Html<'a> {
    red: &'a Redactor,
}

fn ts(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn opt_ts(t: Option<DateTime<Utc>>) -> String {
    t.map(ts).unwrap_or_else(|| "—".into())
}

fn dur(ms: Option<u64>) -> String {
    ms.map(format_duration_ms).unwrap_or_else(|| "—".into())
}

/// The verdict banner's class, symbol and word: readable in black and white.
fn verdict(status: &RunStatus) -> (&'static str, &'static str, &'static str) {
    match status {
        RunStatus::Succeeded => ("ok", "✓", "SUCCEEDED"),
        RunStatus::Running => ("open", "…", "IN PROGRESS"),
        RunStatus::WaitingForApproval { .. } => ("wait", "‖", "WAITING FOR APPROVAL"),
        RunStatus::WaitingForConfirmation { .. } => ("wait", "‖", "WAITING FOR CONFIRMATION"),
        RunStatus::Aborted { .. } => ("bad", "■", "ABORTED"),
        RunStatus::Failed { .. } => ("bad", "✗", "FAILED"),
        RunStatus::EmergencyStopped { .. } => ("bad", "✗", "EMERGENCY STOP"),
    }
}

fn step_state(s: &StepReport) -> (&'static str, &'static str, &'static str) {
    match s.state {
        StepState::Succeeded => ("ok", "✓", "done"),
        StepState::AlreadyDone => ("ok", "✓", "already done"),
        StepState::Skipped => ("skip", "»", "skipped"),
        StepState::Failed => ("bad", "✗", "failed"),
        StepState::InFlight => ("warn", "⚡", "interrupted"),
        StepState::Pending => ("muted", "·", "not run"),
    }
}

fn result_mark(result: &str) -> (&'static str, &'static str) {
    match result {
        "passed" => ("ok", "✓"),
        "skipped" => ("skip", "»"),
        "failed" => ("bad", "✗"),
        _ => ("muted", "·"),
    }
}

impl<'a> Html<'a> {
    pub fn new(red: &'a Redactor) -> Self {
        Html { red }
    }

    /// Run text, redacted then escaped.
    pub fn t(&self, s: &str) -> String {
        esc(&self.red.redact(s))
    }

    /// The whole report page.
    pub fn report(&self, d: &Document) -> String {
        let r = &d.report;
        let mut b = String::new();
        let _ = write!(
            b,
            "<header><p class=\"kicker\">XORB rollback report</p><h1>Run <code>{}</code>: {} → {}</h1></header>\n<main>\n",
            self.t(&r.run_id),
            self.t(&r.from),
            self.t(&r.to)
        );
        b.push_str(&self.live_fragment(d));
        self.versions(&mut b, d);
        self.loss(&mut b, d);
        self.checks(&mut b, d);
        self.monitors(&mut b, d);
        self.approvals(&mut b, d);
        self.checklists(&mut b, d);
        self.notifications(&mut b, d);
        self.incidents(&mut b, d);
        if !d.warnings.is_empty() {
            b.push_str("<section id=\"warnings\"><h2>Warnings</h2><ul>");
            for w in &d.warnings {
                let _ = write!(b, "<li>{}</li>", self.t(w));
            }
            b.push_str("</ul></section>\n");
        }
        let _ = write!(
            b,
            "</main>\n<footer>Artifacts: <code>{}</code> · log: <code>{}</code></footer>",
            self.t(&r.artifacts_dir.display().to_string()),
            self.t(&r.log_file.display().to_string())
        );
        page(
            &format!("XORB rollback {} — {}", r.run_id, r.completion.headline),
            &b,
            None,
        )
    }

    /// What the report and the dashboard share: verdict, summary, timeline to scale, phases and steps.
    pub fn live_fragment(&self, d: &Document) -> String {
        let r = &d.report;
        let c = &r.completion;
        let (class, sym, word) = verdict(&r.status);
        let mut b = String::new();
        let _ = writeln!(
            b,
            "<section id=\"verdict\" class=\"banner {class}\" role=\"status\" data-status=\"{}\"><p class=\"verdict\"><span class=\"sym\" aria-hidden=\"true\">{sym}</span> {word}</p><p class=\"headline\">{}</p><dl><dt>Status</dt><dd>{}</dd><dt>Impact</dt><dd>{}</dd><dt>Next</dt><dd>{}</dd></dl></section>",
            r.status.kind(),
            self.t(c
                .headline
                .trim_start_matches(|ch: char| !ch.is_ascii_alphanumeric())
                .trim()),
            self.t(&c.status),
            self.t(&c.impact),
            self.t(&c.next)
        );
        let _ = writeln!(
            b,
            "<section id=\"summary\"><h2>Summary</h2><dl class=\"grid\"><dt>Rollback</dt><dd>{} → {}</dd><dt>Scope</dt><dd>{}</dd><dt>Started</dt><dd>{}</dd><dt>Finished</dt><dd>{}</dd><dt>Duration</dt><dd>{}</dd><dt>Executing</dt><dd>{} in {} execution{}</dd><dt>Current step</dt><dd id=\"current-step\">{}</dd></dl></section>",
            self.t(&r.from),
            self.t(&r.to),
            self.t(r.scope.as_deref().unwrap_or("full rollback")),
            ts(r.started_at),
            opt_ts(r.finished_at),
            format_duration_ms(r.duration_ms),
            format_duration_ms(r.executing_ms),
            r.executions,
            if r.executions == 1 {
                ""
            } else {
                "s (start and resumes)"
            },
            self.current_step(d)
        );
        let labels: Vec<(u8, String)> = r
            .phases
            .iter()
            .map(|p| {
                (
                    p.phase.number(),
                    format!("Phase {}: {}", p.phase.number(), p.phase.name()),
                )
            })
            .collect();
        let _ = writeln!(
            b,
            "<section id=\"timeline\"><h2>Timeline</h2><p class=\"legend\">To scale from the run's creation{}. Bars: <span class=\"key ok\">✓ done</span> <span class=\"key bad\">✗ failed</span> <span class=\"key warn\">⚡ interrupted (crash)</span> <span class=\"key skip\">» skipped</span> <span class=\"key wait\">‖ waiting</span> <span class=\"key open\">… running</span> · ↻ resume. Hover a bar for its attempt and duration.</p><div class=\"scroll\">{}</div></section>",
            if d.timeline.waits.is_empty() {
                ""
            } else {
                " (the approval gate's wait included)"
            },
            svg::timeline(&d.timeline, &labels)
        );
        b.push_str("<section id=\"phases\"><h2>Phases and steps</h2>\n");
        for p in &r.phases {
            self.phase(&mut b, r.started_at, p);
        }
        b.push_str("</section>\n");
        b
    }

    fn current_step(&self, d: &Document) -> String {
        let steps = d.report.phases.iter().flat_map(|p| &p.steps);
        let inflight = steps.clone().find(|s| s.state == StepState::InFlight);
        match inflight.or_else(|| steps.clone().find(|s| !s.state.is_done())) {
            None => "none: every step is done".into(),
            Some(s) => format!(
                "<code>{}</code> {} ({})",
                self.t(&s.id),
                self.t(&s.title),
                step_state(s).2
            ),
        }
    }

    fn phase(&self, b: &mut String, start: DateTime<Utc>, p: &PhaseReport) {
        let state = if p.steps_done == p.steps_total {
            "✓ done"
        } else if p.steps.iter().any(|s| s.state == StepState::Failed) {
            "✗ failed"
        } else if p.started_at.is_some() {
            "… in progress"
        } else {
            "· not started"
        };
        let _ = write!(
            b,
            "<details open data-phase=\"{}\"><summary><h3>{}</h3> <span class=\"pstate\">{state} · {}/{} steps · {}</span></summary><table><thead><tr><th scope=\"col\">Step</th><th scope=\"col\">Title</th><th scope=\"col\">Started</th><th scope=\"col\">Duration</th><th scope=\"col\">Attempts</th><th scope=\"col\">Outcome</th></tr></thead><tbody>",
            p.phase.number(),
            self.t(&p.label),
            p.steps_done,
            p.steps_total,
            dur(p.duration_ms)
        );
        for s in &p.steps {
            let (class, sym, word) = step_state(s);
            let detail = s
                .outcome
                .as_ref()
                .map(|o| o.to_string())
                .unwrap_or_default();
            let _ = write!(
                b,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td><span class=\"st {class}\">{sym} {word}</span> {}</td></tr>",
                self.t(&s.id),
                self.t(&s.title),
                s.started_at
                    .map(|t| format!("+{}", format_duration_ms(crate::ms_between(start, t))))
                    .unwrap_or_else(|| "—".into()),
                dur(s.duration_ms),
                s.attempts,
                self.t(&detail)
            );
        }
        b.push_str("</tbody></table></details>\n");
    }

    fn versions(&self, b: &mut String, d: &Document) {
        b.push_str("<section id=\"versions\"><h2>Versions before and after</h2><table><thead><tr><th scope=\"col\">Component</th><th scope=\"col\">Before</th><th scope=\"col\">After</th><th scope=\"col\">Step</th><th scope=\"col\">Applied</th></tr></thead><tbody>");
        for v in &d.report.versions {
            let _ = write!(
                b,
                "<tr><td>{}</td><td><code>{}</code></td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                self.t(&v.component),
                self.t(&v.before),
                self.t(&v.after),
                v.step
                    .as_deref()
                    .map(|s| self.t(s))
                    .unwrap_or_else(|| "—".into()),
                if v.applied {
                    "<span class=\"st ok\">✓ yes</span>"
                } else {
                    "<span class=\"st muted\">· no</span>"
                }
            );
        }
        b.push_str("</tbody></table></section>\n");
    }

    fn loss(&self, b: &mut String, d: &Document) {
        b.push_str("<section id=\"loss\"><h2>Data-loss account</h2>");
        let Some(l) = &d.loss else {
            b.push_str("<p class=\"muted\">No loss assessment in this run: phase 5's loss check has not run (or the run has no database phase).</p></section>\n");
            return;
        };
        let _ = write!(
            b,
            "<p class=\"{}\">{} {} rows lost, {} changed, {} added since phase 3's snapshot{}.</p>",
            if l.unaccounted.is_empty() {
                "st ok"
            } else {
                "st bad"
            },
            if l.unaccounted.is_empty() {
                "✓"
            } else {
                "✗"
            },
            l.report.lost,
            l.report.changed,
            l.report.added,
            if l.unaccounted.is_empty() {
                "; every loss is accounted for by preserved data".to_string()
            } else {
                format!("; NOT accounted for: {}", self.t(&l.unaccounted.join("; ")))
            }
        );
        b.push_str("<table><thead><tr><th scope=\"col\">Table</th><th scope=\"col\">State</th><th scope=\"col\" class=\"num\">Rows before</th><th scope=\"col\" class=\"num\">Rows after</th><th scope=\"col\" class=\"num\">Lost</th><th scope=\"col\" class=\"num\">Changed</th><th scope=\"col\" class=\"num\">Added</th><th scope=\"col\">Preserved in</th></tr></thead><tbody>");
        for t in &l.report.tables {
            let preserved = l
                .accounted
                .iter()
                .filter(|(k, _)| *k == &t.table || k.starts_with(&format!("{}.", t.table)))
                .map(|(k, a)| {
                    format!(
                        "{k}: {} of {} rows in {}{}",
                        a.preserved,
                        a.lost,
                        a.by,
                        if a.verified {
                            " (verified)"
                        } else {
                            " (NOT verified)"
                        }
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
            let _ = write!(
                b,
                "<tr><td><code>{}</code></td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num{}\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
                self.t(&t.table),
                self.t(&t.state),
                t.rows_before,
                t.rows_after,
                if t.lost > 0 { " st warn" } else { "" },
                t.lost,
                t.changed,
                t.added,
                if preserved.is_empty() {
                    "—".into()
                } else {
                    self.t(&preserved)
                }
            );
        }
        b.push_str("</tbody></table></section>\n");
    }

    fn checks(&self, b: &mut String, d: &Document) {
        b.push_str("<section id=\"checks\"><h2>Checks</h2>");
        if d.report.checks.is_empty() {
            b.push_str("<p class=\"muted\">No checks in this plan.</p></section>\n");
            return;
        }
        b.push_str("<table><thead><tr><th scope=\"col\">Check</th><th scope=\"col\">Step</th><th scope=\"col\">Result</th><th scope=\"col\">Detail</th></tr></thead><tbody>");
        for c in &d.report.checks {
            let (class, sym) = result_mark(&c.result);
            let _ = write!(
                b,
                "<tr><td>{}</td><td><code>{}</code></td><td><span class=\"st {class}\">{sym} {}</span></td><td>{}</td></tr>",
                self.t(&c.name),
                self.t(&c.step),
                self.t(&c.result),
                self.t(&c.detail)
            );
        }
        b.push_str("</tbody></table></section>\n");
    }

    /// Only when a monitor ran (issue #13 fills `Document::monitors`).
    fn monitors(&self, b: &mut String, d: &Document) {
        if d.monitors.is_empty() {
            return;
        }
        b.push_str("<section id=\"monitors\"><h2>Monitoring: baseline against current</h2><div class=\"charts\">");
        for m in &d.monitors {
            let _ = write!(
                b,
                "<figure><figcaption><strong>{}</strong> <span class=\"st {}\">{} {}</span><br>{}</figcaption>{}</figure>",
                self.t(&m.metric),
                m.verdict.class(),
                m.verdict.symbol(),
                m.verdict.word(),
                self.t(&m.reason),
                svg::metric_chart(m)
            );
        }
        b.push_str("</div></section>\n");
    }

    fn approvals(&self, b: &mut String, d: &Document) {
        b.push_str("<section id=\"approvals\"><h2>Approvals</h2>");
        let Some(gv) = &d.governance else {
            b.push_str("<p class=\"muted\">No governance record.</p></section>\n");
            return;
        };
        let g = &gv.record;
        let Some(gate) = &g.gate else {
            b.push_str("<p class=\"muted\">No governance record (run started before governance was wired).</p></section>\n");
            return;
        };
        match &gate.severity {
            None => {
                let _ = write!(
                    b,
                    "<p>Severity: none given (no approval gate). Initiator: {}.</p>",
                    self.t(&gate.initiator)
                );
            }
            Some(sev) => {
                let state = match (&gate.opened_at, &gate.opened_by) {
                    (Some(at), Some(by)) => format!(
                        "<span class=\"st ok\">✓ opened</span> at {} by {} after {}",
                        ts(*at),
                        self.t(by),
                        format_duration_ms(crate::ms_between(gate.created_at, *at))
                    ),
                    _ => "<span class=\"st wait\">‖ not open: waiting for approval</span>".into(),
                };
                let _ = write!(
                    b,
                    "<p>Severity: <strong>{}</strong>. Initiator: {}. Gate: {state}.</p>",
                    self.t(sev),
                    self.t(&gate.initiator)
                );
            }
        }
        if !g.approvals.is_empty() {
            b.push_str("<table><thead><tr><th scope=\"col\">Who</th><th scope=\"col\">Role</th><th scope=\"col\">When</th><th scope=\"col\">Why</th><th scope=\"col\">How</th></tr></thead><tbody>");
            for a in &g.approvals {
                let _ = write!(
                    b,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    self.t(&a.name),
                    self.t(&a.role),
                    ts(a.at),
                    self.t(&a.reason),
                    self.t(&a.source)
                );
            }
            b.push_str("</tbody></table>");
        }
        for t in &g.tags {
            let _ = write!(
                b,
                "<p>Release tag <code>{}</code> → <code>{}</code> in {} at {}{}</p>",
                self.t(&t.tag),
                self.t(&t.commit),
                self.t(&t.repo),
                ts(t.at),
                t.pushed_to
                    .as_deref()
                    .map(|r| format!(", pushed to {}", self.t(r)))
                    .unwrap_or_default()
            );
        }
        b.push_str("</section>\n");
    }

    fn checklists(&self, b: &mut String, d: &Document) {
        b.push_str("<section id=\"checklists\"><h2>Checklists</h2>");
        let Some(g) = d.governance.as_ref().filter(|g| g.record.gate.is_some()) else {
            b.push_str("<p class=\"muted\">No governance record.</p></section>\n");
            return;
        };
        for l in &g.checklists {
            let done = l.items.iter().filter(|i| i.done).count();
            let _ = write!(
                b,
                "<h3>{} <span class=\"pstate\">{done}/{} done</span></h3><ul class=\"checklist\">",
                self.t(&l.title),
                l.items.len()
            );
            for i in &l.items {
                let _ = write!(
                    b,
                    "<li class=\"{}\"><span class=\"box\" aria-hidden=\"true\">{}</span> <span class=\"sr\">{}</span>{} <span class=\"muted\">— {}</span></li>",
                    if i.done { "done" } else { "open" },
                    if i.done { "☑" } else { "☐" },
                    if i.done { "done: " } else { "open: " },
                    self.t(&i.text),
                    self.t(&i.note)
                );
            }
            b.push_str("</ul>");
        }
        b.push_str("</section>\n");
    }

    fn notifications(&self, b: &mut String, d: &Document) {
        b.push_str("<section id=\"notifications\"><h2>Notifications</h2>");
        if d.notifications.is_empty() {
            b.push_str("<p class=\"muted\">None recorded.</p></section>\n");
            return;
        }
        b.push_str("<table><thead><tr><th scope=\"col\">When</th><th scope=\"col\">Message</th><th scope=\"col\">Sink</th><th scope=\"col\">State</th><th scope=\"col\" class=\"num\">Attempts</th><th scope=\"col\">Last error</th></tr></thead><tbody>");
        for n in &d.notifications {
            let delivered = n.state == xorb_engine::outbox::DeliveryState::Delivered;
            let _ = write!(
                b,
                "<tr><td>{}</td><td><strong>{}</strong>{}<div class=\"body\">{}</div></td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
                ts(n.created_at),
                self.t(&n.kind),
                n.phase.map(|p| format!(" (phase {p})")).unwrap_or_default(),
                self.t(&n.body),
                self.t(&n.sink),
                if delivered {
                    "<span class=\"st ok\">✓ delivered</span>"
                } else {
                    "<span class=\"st warn\">… pending</span>"
                },
                n.attempts,
                self.t(n.last_error.as_deref().unwrap_or("—"))
            );
        }
        b.push_str("</tbody></table></section>\n");
    }

    fn incidents(&self, b: &mut String, d: &Document) {
        b.push_str("<section id=\"incidents\"><h2>Incidents</h2>");
        if d.report.incidents.is_empty() {
            b.push_str("<p class=\"muted\">None: every step succeeded on its first attempt, without interruption.</p></section>\n");
            return;
        }
        b.push_str("<ol class=\"incidents\">");
        for i in &d.report.incidents {
            let _ = write!(
                b,
                "<li><time>{}</time> {}</li>",
                ts(i.at),
                self.t(&i.message)
            );
        }
        b.push_str("</ol></section>\n");
    }
}
