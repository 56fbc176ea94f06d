//! The corpus of each target: the files the project ships (read where they live, so they never drift), the
//! interesting cases kept in `fuzz/corpus/<target>/`, and inputs made by the real writers (an audit log, a
//! journal).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use xorb_model::plan::{
    Action, FailurePolicy, Phase, Plan, RunStatus, Safety, StepOutcome, StepSpec,
};

use crate::harness::Target;
use crate::targets;

/// Separates the fields of a `journal_rows` input.
pub const ROW_SEPARATOR: &str = "\n~~~\n";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every file of `fuzz/corpus/<target>/`, sorted by name.
pub fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = repo_root().join("fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

fn shipped(paths: &[&str]) -> Vec<Vec<u8>> {
    paths
        .iter()
        .map(|p| std::fs::read(repo_root().join(p)).unwrap_or_else(|e| panic!("{p}: {e}")))
        .collect()
}

pub fn builtin_template(kind: &str) -> &'static str {
    use xorb_governance::builtin::*;
    match kind {
        "initiation" => TEMPLATE_INITIATION,
        "progress" => TEMPLATE_PROGRESS,
        "completion" => TEMPLATE_COMPLETION,
        _ => TEMPLATE_FAILURE,
    }
}

/// A real audit log of a few entries in `dir`.
pub fn audit_log(dir: &Path) -> xorb_audit::AuditLog {
    let mut log = xorb_audit::AuditLog::open(dir).expect("open a fresh audit log");
    for (i, action) in [
        "rollback.start",
        "step.finished",
        "governance.gate_open",
        "rollback.end",
    ]
    .into_iter()
    .enumerate()
    {
        log.append(
            xorb_audit::NewEntry::new("xorbctl", action)
                .run("20260101-000000-abcd")
                .detail(serde_json::json!({ "step": format!("2.api.image"), "n": i, "ok": true })),
        )
        .expect("append to the fixture audit log");
    }
    log
}

fn audit_seed() -> Vec<u8> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let log = audit_log(dir.path());
    std::fs::read(log.log_path()).expect("read the fixture audit log")
}

fn fixture_plan() -> Plan {
    let step = |id: &str, phase, action| {
        StepSpec::new(
            id,
            phase,
            format!("fixture {id}"),
            action,
            Safety::Idempotent,
        )
    };
    Plan::new("v2025.08-rc1", "v2025.07-stable")
        .with_step(step(
            "1.state.capture",
            Phase::Assessment,
            Action::CaptureState,
        ))
        .with_step(
            step("2.api.image", Phase::Services, Action::Noop)
                .with_timeout_secs(300)
                .with_policy(FailurePolicy::Retry {
                    attempts: 2,
                    backoff_ms: 1000,
                    then: Some(xorb_model::plan::EmergencyProcedure::MinimalService),
                })
                .with_check("health"),
        )
        .with_step(step("5.check.health", Phase::Verification, Action::Noop))
}

/// A journal with one run: a step done, a step failed, status failed. Made once by the real journal code.
pub fn journal_bytes() -> &'static [u8] {
    static J: OnceLock<Vec<u8>> = OnceLock::new();
    J.get_or_init(|| {
        use xorb_engine::Event;
        let dir = tempfile::tempdir().expect("a temporary directory");
        {
            let mut j = xorb_engine::Journal::open(dir.path()).expect("open a fresh journal");
            let plan = fixture_plan();
            let run = "20260101-000000-abcd";
            let run_dir = dir.path().join("runs").join(run);
            let started = Event::RunStarted {
                from: plan.from.clone(),
                to: plan.to.clone(),
                scope: None,
                restore_of: None,
                steps: plan.steps.len(),
                run_dir: run_dir.display().to_string(),
                log_file: String::new(),
            };
            j.create_run(run, &plan, &run_dir, chrono::Utc::now(), started)
                .expect("journal the fixture run");
            for (index, outcome) in [
                StepOutcome::succeeded("captured"),
                StepOutcome::Failed {
                    error: "api did not come up".into(),
                    retryable: true,
                },
            ]
            .into_iter()
            .enumerate()
            {
                let step = plan.steps[index].id.clone();
                let intent = Event::StepStarted {
                    index,
                    step: step.clone(),
                    title: "t".into(),
                    attempt: 1,
                };
                j.record_intent(run, index, 1, intent)
                    .expect("journal an intent");
                let done = Event::StepFinished {
                    index,
                    step,
                    attempt: 1,
                    outcome: outcome.clone(),
                    duration_ms: 12,
                };
                j.record_outcome(run, index, &outcome, done)
                    .expect("journal an outcome");
            }
            let failed = RunStatus::Failed {
                step: "2.api.image".into(),
                error: "api did not come up".into(),
            };
            let end = Event::RunFinished {
                status: failed.clone(),
                duration_ms: 5,
                next: String::new(),
            };
            j.set_status(run, &failed, end).expect("journal the status");
        }
        std::fs::read(dir.path().join(xorb_engine::journal::JOURNAL_FILE))
            .expect("read the fixture journal")
    })
}

/// The fixture run's row fields, in `journal_rows`' order.
fn journal_rows_seed() -> Vec<u8> {
    let plan = serde_json::to_string(&fixture_plan()).expect("a plan serialises");
    let status = serde_json::to_string(&RunStatus::Running).expect("a status serialises");
    let outcome = serde_json::to_string(&StepOutcome::succeeded("d")).expect("serialises");
    let ts = "2026-01-01T00:00:00.000000Z";
    let event = r#"{"type":"run_finished","status":{"state":"succeeded"}}"#;
    [
        plan.as_str(),
        &status,
        "succeeded",
        &outcome,
        "1",
        ts,
        ts,
        "run_finished",
        event,
    ]
    .join(ROW_SEPARATOR)
    .into_bytes()
}

fn target(
    name: &'static str,
    mut seeds: Vec<Vec<u8>>,
    dict: &'static [&'static str],
    run: fn(&[u8]),
) -> Target {
    seeds.extend(corpus(name));
    Target {
        name,
        seeds,
        dict,
        run,
    }
}

const RELEASES: [&str; 2] = ["releases/v2025.07-stable", "releases/v2025.08-rc1"];

fn in_releases(file: &str) -> Vec<Vec<u8>> {
    let paths: Vec<String> = RELEASES.iter().map(|r| format!("{r}/{file}")).collect();
    shipped(&paths.iter().map(String::as_str).collect::<Vec<_>>())
}

/// What `pg_restore --data-only --file=-` prints of a small dump: a table with quoted names, escapes and NULLs, a
/// table of another schema, an empty one.
const DUMP_SCRIPT: &str = "--\n-- PostgreSQL database dump\n--\n\nSET statement_timeout = 0;\n\n\
    COPY public.tenants (id, name, \"Odd, \"\"name\"\"\") FROM stdin;\n\
    1\tacme\t\\N\n2\tglobex\tx\\ty\n\\.\n\n\
    COPY audit.events (id) FROM stdin;\n7\n\\.\n\n\
    COPY public.empty (id) FROM stdin;\n\\.\n";

/// Every target, with its seeds.
pub fn all() -> Vec<Target> {
    vec![
        target(
            "release_toml",
            in_releases("release.toml"),
            &["replicas", "databases", "services.api", "runs_on"],
            targets::release_toml,
        ),
        target(
            "streams_yaml",
            in_releases("nats/streams.yaml"),
            &[
                "max_age_secs",
                "max_msgs",
                "max_bytes",
                "replicas",
                "subjects",
            ],
            targets::streams_yaml,
        ),
        target(
            "env_file",
            in_releases("config/xorb-config.env"),
            &["=", "#"],
            targets::env_file,
        ),
        target(
            "runbook_policy",
            shipped(&["runbooks/rollback.toml"]),
            &["rollout_secs", "backoff_ms", "attempts", "emergency"],
            targets::runbook_policy,
        ),
        target(
            "decision_matrix",
            shipped(&["policies/decision-matrix.toml"]),
            &["longer_than", "decision_time", "factor", "immediate"],
            targets::decision_matrix,
        ),
        target(
            "operators",
            shipped(&["policies/operators.toml"]),
            &["ranking", "roles", "team-lead"],
            targets::operators,
        ),
        target(
            "checklists",
            shipped(&["policies/checklists.toml"]),
            &["proved_by", "confirmed_by", "phase.", "check.", "2.*"],
            targets::checklists,
        ),
        target(
            "notify_toml",
            Vec::new(),
            &["urls", "templates", "updates"],
            targets::notify_toml,
        ),
        target(
            "templates",
            shipped(&[
                "policies/templates/initiation.j2",
                "policies/templates/progress.j2",
                "policies/templates/completion.j2",
                "policies/templates/failure.j2",
            ]),
            &[
                "{{ run_id }}",
                "{{ eta }}",
                "| join",
                "range(",
                "{% if issues %}",
                "{% endif %}",
            ],
            targets::templates,
        ),
        target(
            "audit_jsonl",
            vec![audit_seed()],
            &["\"seq\":", "\"prev\":", "\"sig\":", "\"hash\":"],
            targets::audit_jsonl,
        ),
        target(
            "journal_file",
            vec![journal_bytes().to_vec()],
            &[],
            targets::journal_file,
        ),
        target(
            "dump_script",
            vec![DUMP_SCRIPT.as_bytes().to_vec()],
            &[
                "COPY public.",
                " FROM stdin;\n",
                "\\.\n",
                "\t",
                "\\N",
                "\"",
                "(",
                ", ",
            ],
            targets::dump_script,
        ),
        target(
            "journal_rows",
            vec![journal_rows_seed()],
            &[
                "\"kind\":\"retry\"",
                "\"attempts\":",
                "\"backoff_ms\":",
                "\"timeout_secs\":",
                ROW_SEPARATOR,
            ],
            targets::journal_rows,
        ),
    ]
}

pub fn by_name(name: &str) -> Target {
    all()
        .into_iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no fuzz target {name}"))
}
