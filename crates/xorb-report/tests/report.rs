//! Report tests: a real engine run (with a retry, a failure and a resume) against a scripted target, its journal
//! record redacted (run id, paths, timestamps → a synthetic clock) and the Markdown / JSON reports snapshotted.

use std::collections::BTreeMap;
use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};
use xorb_engine::*;
use xorb_model::check::CheckRun;
use xorb_model::plan::*;

/// Fails the listed steps once each (retryable or not), succeeds otherwise; the quota check is skipped.
struct Scripted {
    fail_once: Mutex<BTreeMap<String, bool>>,
}

impl StepRunner for Scripted {
    async fn probe(&self, _step: &StepSpec, _ctx: &StepContext<'_>) -> Result<Probe, StepError> {
        Ok(Probe::NotDone)
    }
    async fn run(&self, step: &StepSpec, ctx: &StepContext<'_>) -> Result<StepOutcome, StepError> {
        // An action takes time, as a real one does. Without it a step's start, its failure and the retry can share
        // one journal timestamp on a fast machine, and the snapshot's synthetic clock (one second per stamp, ties
        // in document order) then puts the phase's start after them: the report differed from run to run.
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        if let Some(retryable) = self.fail_once.lock().unwrap().remove(&step.id) {
            return Ok(StepOutcome::Failed {
                error: format!("{}: health check failed", step.id),
                retryable,
            });
        }
        let detail = match &step.action {
            Action::Check { name, .. } if name == "quota" => {
                return Ok(StepOutcome::Skipped {
                    reason: format!("no quota system on {}", ctx.to),
                });
            }
            Action::SetImage {
                service, release, ..
            } => format!("{service} reports {release}"),
            _ => "ok".to_string(),
        };
        // As the real runner does: the step's gate checks run after its action, each with its own result.
        let checks = step
            .checks
            .iter()
            .map(|c| CheckRun {
                check: c.clone(),
                passed: true,
                detail: detail.clone(),
            })
            .collect();
        Ok(StepOutcome::Succeeded { detail, checks })
    }
    async fn emergency(
        &self,
        p: EmergencyProcedure,
        _ctx: &StepContext<'_>,
    ) -> Result<String, StepError> {
        Ok(format!("{}: done on the test target", p.name()))
    }
}

const FROM: &str = "v2025.08-rc1";
const TO: &str = "v2025.07-stable";

fn image(service: &str) -> StepSpec {
    StepSpec::new(
        format!("2.{service}.image"),
        Phase::Services,
        format!("Roll {service} back to {TO}"),
        Action::SetImage {
            service: service.into(),
            image: format!("xorb/{service}:{TO}"),
            release: TO.into(),
        },
        Safety::Probed,
    )
    .with_change(Change::new(
        ChangeKind::Image,
        service,
        Some(format!("xorb/{service}:{FROM}")),
        Some(format!("xorb/{service}:{TO}")),
    ))
    .with_check(format!("{service}-health"))
}

fn check(name: &str) -> StepSpec {
    StepSpec::new(
        format!("5.{name}"),
        Phase::Verification,
        format!("Check {name}"),
        Action::Check {
            name: name.into(),
            params: None,
        },
        Safety::Idempotent,
    )
}

fn runbook_plan() -> Plan {
    let mut config = BTreeMap::new();
    config.insert("EVIDENCE_SYSTEM_ENABLED".to_string(), "false".to_string());
    config.insert("TENANT_ISOLATION_MODE".to_string(), "basic".to_string());
    Plan::new(FROM, TO)
        .with_step(StepSpec::new(
            "1.capture",
            Phase::Assessment,
            "Capture system state",
            Action::CaptureState,
            Safety::Idempotent,
        ))
        .with_step(StepSpec::new(
            "1.verify-target",
            Phase::Assessment,
            "Verify that v2025.07-stable is available",
            Action::VerifyTargetAvailable,
            Safety::Idempotent,
        ))
        .with_step(
            StepSpec::new(
                "1.integrity",
                Phase::Assessment,
                "Quick data-integrity scan",
                Action::IntegrityQuick,
                Safety::Idempotent,
            )
            .with_check("integrity-quick"),
        )
        .with_step(image("api").with_policy(FailurePolicy::Retry {
            attempts: 3,
            backoff_ms: 0,
            then: None,
        }))
        .with_step(image("orchestrator"))
        .with_step(
            StepSpec::new(
                "2.control-plane.remove",
                Phase::Services,
                "Remove control-plane (not in v2025.07-stable)",
                Action::RemoveService {
                    service: "control-plane".into(),
                },
                Safety::NotRepeatable,
            )
            .with_change(Change::new(
                ChangeKind::ServiceRemoved,
                "control-plane",
                Some(format!("xorb/control-plane:{FROM}")),
                None,
            )),
        )
        .with_step(image("worker"))
        .with_step(image("scheduler"))
        .with_step(
            StepSpec::new(
                "2.config",
                Phase::Services,
                "Apply v2025.07-stable configuration",
                Action::ApplyConfig {
                    service: None,
                    changes: config,
                },
                Safety::Idempotent,
            )
            .with_change(Change::new(
                ChangeKind::Config,
                "EVIDENCE_SYSTEM_ENABLED",
                Some("true".into()),
                Some("false".into()),
            ))
            .with_change(Change::new(
                ChangeKind::Config,
                "TENANT_ISOLATION_MODE",
                Some("advanced".into()),
                Some("basic".into()),
            )),
        )
        .with_step(check("health"))
        .with_step(check("info"))
        .with_step(check("smoke"))
        .with_step(check("tenant-isolation"))
        .with_step(check("evidence-legacy"))
        .with_step(check("quota"))
}

const RUN_ID: &str = "20250814-101500-test";
const STATE_DIR: &str = "/var/lib/xorb";

/// Redacts a journal record for snapshots: the run id and the temporary state directory become fixed strings,
/// the log file's name (local time) is fixed, every timestamp is mapped, in order, onto a synthetic clock ticking one second per distinct instant, and the
/// measured durations become one second per step attempt.
fn redact(record: &RunRecord, state_dir: &std::path::Path) -> RunRecord {
    let mut v = serde_json::to_value(record).unwrap();
    // Every stamp occurrence gets its own second, in time order (ties in document order): two events that fell in
    // the same instant on a fast machine and not on a slow one then still give the same report.
    let mut stamps = Vec::new();
    collect_stamps(&v, &mut stamps);
    // Compared as instants, not as text: serde writes 0, 3, 6 or 9 fraction digits, so "…01.123Z" sorts after
    // "…01.123001Z" as text.
    let instants: Vec<DateTime<Utc>> = stamps.iter().map(|s| s.parse().unwrap()).collect();
    let mut order: Vec<usize> = (0..stamps.len()).collect();
    order.sort_by(|a, b| (&instants[*a], a).cmp(&(&instants[*b], b)));
    let t0: DateTime<Utc> = "2025-08-14T10:15:00Z".parse().unwrap();
    let mut clock = vec![String::new(); stamps.len()];
    for (rank, occurrence) in order.into_iter().enumerate() {
        clock[occurrence] = (t0 + Duration::seconds(rank as i64))
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    }
    let log_name = record.events.iter().find_map(|e| match &e.event {
        Event::RunStarted { log_file, .. } => {
            Some(log_file.rsplit('/').next().unwrap_or_default().to_string())
        }
        _ => None,
    });
    rewrite(
        &mut v,
        &mut clock.into_iter(),
        &record.id,
        &state_dir.to_string_lossy(),
        log_name.as_deref().unwrap_or("?"),
    );
    serde_json::from_value(v).unwrap()
}

const STAMP_KEYS: [&str; 5] = [
    "at",
    "created_at",
    "updated_at",
    "finished_at",
    "started_at",
];

fn collect_stamps(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match v {
                    serde_json::Value::String(s) if STAMP_KEYS.contains(&k.as_str()) => {
                        out.push(s.clone());
                    }
                    _ => collect_stamps(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_stamps(v, out)),
        _ => {}
    }
}

fn rewrite(
    v: &mut serde_json::Value,
    clock: &mut impl Iterator<Item = String>,
    run_id: &str,
    dir: &str,
    log: &str,
) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m.iter_mut() {
                if STAMP_KEYS.contains(&k.as_str())
                    && let serde_json::Value::String(s) = v
                {
                    *s = clock.next().unwrap();
                } else if k == "duration_ms" {
                    *v = serde_json::json!(1000);
                } else {
                    rewrite(v, clock, run_id, dir, log);
                }
            }
        }
        serde_json::Value::Array(a) => a
            .iter_mut()
            .for_each(|v| rewrite(v, clock, run_id, dir, log)),
        // the log file's name carries the local time of the run's start
        serde_json::Value::String(s) => {
            *s = s
                .replace(dir, STATE_DIR)
                .replace(run_id, RUN_ID)
                .replace(log, "rollback-20250814-101500.log")
        }
        _ => {}
    }
}

/// A run that retries api once, stops on a worker failure, is resumed and completes.
async fn resumed_run() -> RunRecord {
    let dir = tempfile::tempdir().unwrap();
    let mut fail = BTreeMap::new();
    fail.insert("2.api.image".to_string(), true);
    fail.insert("2.worker.image".to_string(), false);
    let target = Scripted {
        fail_once: Mutex::new(fail),
    };
    let mut engine = Engine::new(dir.path(), target, NullSink).unwrap();
    let end = engine.start(runbook_plan()).await.unwrap();
    assert_eq!(end.status.kind(), "failed");
    let end = engine
        .resume(&end.run_id, ResumeOptions::default())
        .await
        .unwrap();
    assert!(end.succeeded());
    let record = load_run(dir.path(), &end.run_id).unwrap();
    let (md, json) = xorb_report::write_reports(&record).unwrap();
    assert!(md.exists() && json.exists());
    redact(&record, dir.path())
}

#[tokio::test]
async fn markdown_report_of_a_resumed_successful_run() {
    let record = resumed_run().await;
    let md = xorb_report::render_markdown(&record);
    assert!(md.contains("✅ ROLLBACK COMPLETE\nDuration: "), "{md}");
    assert!(md.contains("\nImpact: Resolved\nNext: Post-rollback monitoring for 2 hours\nReport: /var/lib/xorb/runs/"), "{md}");
    insta::assert_snapshot!("resumed_successful_run_md", md);
}

#[tokio::test]
async fn json_report_of_a_resumed_successful_run() {
    let record = resumed_run().await;
    let json = xorb_report::render_json(&record);
    assert_eq!(json["completion"]["headline"], "✅ ROLLBACK COMPLETE");
    assert_eq!(json["phases"].as_array().unwrap().len(), 3);
    assert_eq!(json["versions"][0]["before"], FROM);
    assert_eq!(json["versions"][0]["after"], TO);
    insta::assert_json_snapshot!("resumed_successful_run_json", json);
}

#[tokio::test]
async fn markdown_report_of_a_run_stopped_by_an_emergency() {
    let dir = tempfile::tempdir().unwrap();
    let mut fail = BTreeMap::new();
    fail.insert("2.worker.image".to_string(), false);
    let target = Scripted {
        fail_once: Mutex::new(fail),
    };
    let mut plan = runbook_plan();
    let i = plan.index_of("2.worker.image").unwrap();
    plan.steps[i].policy = FailurePolicy::Emergency {
        procedure: EmergencyProcedure::CascadePrevention,
    };
    let end = Engine::new(dir.path(), target, NullSink)
        .unwrap()
        .start(plan)
        .await
        .unwrap();
    assert_eq!(end.status.kind(), "emergency_stopped");
    let record = redact(&load_run(dir.path(), &end.run_id).unwrap(), dir.path());
    let md = xorb_report::render_markdown(&record);
    assert!(md.contains("🚨 ROLLBACK STOPPED"), "{md}");
    assert!(md.contains("## Where it stopped"), "{md}");
    insta::assert_snapshot!("emergency_stopped_run_md", md);
}

// ---------------------------------------------------------------------------------------------------------------
// The HTML report (`--format html`): the same record, drawn.

fn document(
    record: &RunRecord,
    gov: Option<xorb_report::model::GovernanceView>,
) -> xorb_report::model::Document {
    xorb_report::model::Document::build(record, gov, &[], record.updated_at)
}

fn html(doc: &xorb_report::model::Document, red: &xorb_model::redact::Redactor) -> String {
    xorb_report::html::Html::new(red).report(doc)
}

#[tokio::test]
async fn timeline_of_a_resumed_run_has_its_retry_failure_and_resume() {
    let record = resumed_run().await;
    let t = document(&record, None).timeline;
    assert_eq!(t.executions.len(), 2, "{t:#?}");
    assert_eq!(t.executions[0].ended, "failed");
    assert!(t.executions[1].resumed && t.executions[1].ended == "succeeded");
    assert!(t.executions[0].end_ms <= t.executions[1].start_ms);
    let lane = |id: &str| t.steps.iter().find(|l| l.step == id).unwrap();
    use xorb_report::timeline::SpanEnd;
    let ends = |id: &str| lane(id).attempts.iter().map(|a| a.end).collect::<Vec<_>>();
    assert_eq!(ends("2.api.image"), [SpanEnd::Failed, SpanEnd::Ok]);
    assert_eq!(ends("2.worker.image"), [SpanEnd::Failed, SpanEnd::Ok]);
    assert_eq!(ends("5.quota"), [SpanEnd::Skipped]);
    // To scale: every attempt inside the axis, in the order the journal has them.
    for l in &t.steps {
        for w in l.attempts.windows(2) {
            assert!(w[0].end_ms <= w[1].start_ms, "{l:?}");
        }
        assert!(
            l.attempts
                .iter()
                .all(|a| a.start_ms <= a.end_ms && a.end_ms <= t.total_ms)
        );
    }
}

#[tokio::test]
async fn html_report_of_a_resumed_successful_run() {
    let record = resumed_run().await;
    let page = html(
        &document(&record, None),
        &xorb_model::redact::Redactor::new(),
    );
    assert!(page.starts_with("<!DOCTYPE html>"));
    assert!(page.contains(r#"<meta http-equiv="Content-Security-Policy" content="default-src &#39;none&#39;; style-src &#39;sha256-"#), "{page}");
    for id in xorb_report::html::SECTIONS {
        assert!(
            page.contains(&format!("<section id=\"{id}\"")),
            "section {id} missing"
        );
    }
    assert!(
        !page.contains("id=\"monitors\""),
        "no monitor ran: no monitoring section"
    );
    assert!(page.contains("✓</span> SUCCEEDED"), "verdict in words");
    // Nothing to fetch: no script, no external reference (the SVG namespace is a name, not a load).
    assert!(!page.contains("<script") && !page.contains("src=") && !page.contains("<link"));
    assert!(!page.contains("https:"));
    assert_eq!(
        page.matches("http:").count(),
        page.matches("http://www.w3.org/2000/svg").count()
    );
    let phases: Vec<usize> = [1, 2, 5]
        .iter()
        .map(|n| page.find(&format!("lane phase p{n}")).unwrap())
        .collect();
    assert!(
        phases.windows(2).all(|w| w[0] < w[1]),
        "phases in order on the timeline"
    );
    // The body only: the style block is not the report (its hash in the policy is checked above).
    insta::assert_snapshot!(
        "resumed_successful_run_html",
        &page[page.find("<body>").unwrap()..]
    );
}

#[tokio::test]
async fn html_report_escapes_run_text_and_redacts_secrets() {
    let mut record = resumed_run().await;
    record.steps[0].spec.title = "<script>alert(1)</script>".into();
    record.steps[1].outcome = Some(StepOutcome::succeeded(
        "\"><img src=x onerror=alert(2)> password=hunter2-planted",
    ));
    let mut gov = xorb_engine::approvals::GovernanceRecord {
        gate: Some(xorb_engine::approvals::GateRecord {
            severity: Some("P1".into()),
            initiator: "<b onclick=x>eve</b>".into(),
            release_repo: None,
            push_remote: None,
            created_at: record.created_at,
            opened_at: Some(record.created_at),
            opened_by: Some("mallory'><svg onload=alert(3)>".into()),
        }),
        ..Default::default()
    };
    gov.approvals.push(xorb_engine::approvals::ApprovalRecord {
        name: "<i>mallory</i>".into(),
        role: "incident-commander".into(),
        at: record.created_at,
        reason: "because </td></tr></table><script>x</script>".into(),
        source: "cli".into(),
    });
    let policy = xorb_governance::Checklists::builtin();
    let list = xorb_governance::Checklist::new(policy.clone());
    let view = xorb_report::model::GovernanceView::new(&gov, &policy, &list);
    let red = xorb_model::redact::Redactor::with_secrets(["hunter2-planted"]);
    let page = html(&document(&record, Some(view)), &red);
    for raw in [
        "<script>alert",
        "<img",
        "<b onclick",
        "<svg onload",
        "<i>mallory",
        "<script>x",
    ] {
        assert!(!page.contains(raw), "{raw} reached the page unescaped");
    }
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(page.contains("&lt;i&gt;mallory&lt;/i&gt;"));
    assert!(!page.contains("hunter2-planted"), "secret in the page");
    assert_eq!(page.matches("<script").count(), 0);
}
