//! Command-line definitions and dispatch.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use xorb_local::stack::{self, Paths};

use crate::output::{Format, Reporter};

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

#[derive(Debug, Parser)]
#[command(
    name = "xorbctl",
    version,
    about = "Roll XORB releases back, phase by phase, without losing data"
)]
pub struct Cli {
    /// Where the local stack keeps its servers, data, secrets and runs.
    #[arg(long, global = true, env = "XORB_STATE_DIR", default_value = ".xorb")]
    pub state_dir: PathBuf,
    /// The directory of release directories (default: `releases/` of the project).
    #[arg(long, global = true, env = "XORB_RELEASES")]
    pub releases: Option<PathBuf>,
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    pub output: Format,
    /// A decision matrix instead of the built-in policies/decision-matrix.toml.
    #[arg(long, global = true, env = "XORB_DECISION_MATRIX", value_name = "FILE")]
    pub decision_matrix: Option<PathBuf>,
    /// Operators and their roles instead of the built-in policies/operators.toml.
    #[arg(long, global = true, env = "XORB_OPERATORS", value_name = "FILE")]
    pub operators: Option<PathBuf>,
    /// Checklists instead of the built-in policies/checklists.toml.
    #[arg(long, global = true, env = "XORB_CHECKLISTS", value_name = "FILE")]
    pub checklists: Option<PathBuf>,
    /// Notification sinks and templates (rollback, resume).
    #[command(flatten)]
    pub notify: crate::notify::NotifyArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start or stop the local stack.
    Stack {
        #[command(subcommand)]
        action: StackCmd,
    },
    /// Each service's release and health, the schema revision, streams, Redis databases, Prometheus targets.
    Status,
    /// Check the stack's database: --quick (row counts, schema fingerprint), --full (content checksums), --critical.
    Integrity(crate::integrity::IntegrityArgs),
    /// Rows lost, changed and added per table between a row snapshot and the live database.
    Loss(crate::integrity::LossArgs),
    /// Show the rollback plan, with the live diff of every step. Changes nothing.
    Plan(PlanArgs),
    /// Roll the live stack back, step by step, with a durable journal.
    Rollback {
        #[command(flatten)]
        plan: PlanArgs,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        gov: crate::governance::RollbackGovArgs,
    },
    /// Evaluate the decision matrix against the live stack: severity, decision time, approver, evidence.
    Assess(crate::governance::AssessArgs),
    /// Approve a run waiting at its approval gate.
    Approve {
        run: String,
        #[arg(long = "as", value_name = "NAME")]
        name: String,
        #[arg(long)]
        role: String,
        #[arg(long)]
        reason: String,
        /// Continue the run at once if this approval opens its gate.
        #[arg(long)]
        resume: bool,
    },
    /// Confirm a checklist item of a run that a person must confirm.
    Check {
        run: String,
        item: String,
        #[arg(long)]
        by: String,
    },
    /// Continue a run that crashed, was killed, failed or waits for a confirmation.
    Resume {
        /// A run id, a unique prefix of one, or `latest`.
        run: String,
        /// Re-run this step that cannot be proven safe to repeat (after checking the live state).
        #[arg(long = "confirm", value_name = "STEP")]
        confirm: Vec<String>,
        /// Record this step as done (after checking it is).
        #[arg(long = "mark-done", value_name = "STEP")]
        mark_done: Vec<String>,
    },
    /// Give a run up: it cannot be resumed afterwards.
    Abort {
        run: String,
        #[arg(long, default_value = "operator")]
        by: String,
    },
    /// The runs of this state directory, most recent first.
    Runs,
    /// One run: its plan, every step's state and the events.
    Show { run: String },
    /// A live view of a run (default: the one running now): phases, current step, what it waits for.
    Watch(crate::watch::WatchArgs),
    /// Prove the audit trail whole, or name the first entry that was changed, removed or reordered.
    Audit {
        #[command(subcommand)]
        action: AuditCmd,
    },
    /// The run's report.
    Report {
        run: String,
        #[arg(long, value_enum, default_value_t = ReportFormat::Md)]
        format: ReportFormat,
    },
    /// A read-only live web page of this state directory's runs (loopback; elsewhere it needs a token).
    Dashboard(crate::dashboard::DashboardArgs),
}

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Verify every entry's hash link and Ed25519 signature.
    Verify {
        /// Check signatures of the entries of this window only, e.g. 1h, 30m, 2d (hash links are always checked).
        #[arg(long)]
        since: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    Md,
    Json,
    /// One self-contained page (no script, nothing fetched): for people, e-mail and the post-incident review.
    Html,
}

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// The release the live stack runs now.
    #[arg(long)]
    pub from: String,
    /// The release to roll back to.
    #[arg(long)]
    pub to: String,
    /// Roll back only part of the stack: api, services, config, database, infrastructure.
    #[arg(long)]
    pub only: Option<String>,
    /// With `--only database`: the schema revision to stop at (an id, or -1 for one revision down).
    #[arg(long, allow_hyphen_values = true)]
    pub to_revision: Option<String>,
    /// With `--only database`: roll back this one data migration (G6, G7, G8); it must be the live head.
    #[arg(long)]
    pub migration: Option<String>,
    /// A runbook policy file instead of the embedded runbooks/rollback.toml.
    #[arg(long)]
    pub runbook: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum StackCmd {
    /// Start PostgreSQL, Redis, NATS and Prometheus on loopback, migrate, create streams, start the services.
    Up {
        #[arg(long)]
        release: String,
        /// Create tenants, sessions with findings and (rc1) evidence.
        #[arg(long)]
        demo_data: bool,
        /// A directory a Grafana provisions dashboards from: the release's dashboards go there (and phase 4
        /// of a rollback replaces them).
        #[arg(long)]
        grafana_dashboards: Option<PathBuf>,
    },
    /// Stop exactly the processes `stack up` started. Data stays in the state directory.
    Down,
}

/// The project's directory: the nearest ancestor of the working directory or of this binary holding `releases/`.
fn project_root() -> Option<PathBuf> {
    let from_cwd = std::env::current_dir().ok();
    let from_exe = std::env::current_exe().ok();
    [from_cwd, from_exe]
        .into_iter()
        .flatten()
        .find_map(|start| {
            start
                .ancestors()
                .find(|d| d.join("releases").is_dir() && d.join("migrations").is_dir())
                .map(Path::to_path_buf)
        })
}

pub fn paths(cli: &Cli) -> anyhow::Result<Paths> {
    let root = project_root();
    let releases_root = match (&cli.releases, &root) {
        (Some(r), _) => r.clone(),
        (None, Some(root)) => root.join("releases"),
        (None, None) => {
            return Err(UsageError(
                "cannot find the releases directory: pass --releases DIR or set XORB_RELEASES"
                    .into(),
            )
            .into());
        }
    };
    let venv = std::env::var_os("XORB_VENV")
        .map(PathBuf::from)
        .or_else(|| root.as_ref().map(|r| r.join(".venv")))
        .unwrap_or_else(|| PathBuf::from(".venv"));
    let svc_bin = std::env::var_os("XORB_SVC_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|e| e.parent().map(|p| p.join("xorb-svc")))
                .unwrap_or_else(|| "xorb-svc".into())
        });
    Ok(Paths {
        releases_root,
        venv,
        svc_bin,
    })
}

pub async fn run(cli: Cli, out: &Reporter) -> anyhow::Result<ExitCode> {
    // The dashboard keeps the whole command line for as long as it serves.
    if let Command::Dashboard(a) = &cli.command {
        let listen = a.listen.clone();
        return crate::dashboard::run(cli, out, &listen).await;
    }
    let state_dir = cli.state_dir.clone();
    match &cli.command {
        Command::Stack {
            action:
                StackCmd::Up {
                    release,
                    demo_data,
                    grafana_dashboards,
                },
        } => {
            let paths = paths(&cli)?;
            out.line(format!(
                "Starting the local stack at {} on release {release}…",
                state_dir.display()
            ));
            let opts = stack::UpOptions {
                grafana_dashboards: grafana_dashboards.clone(),
            };
            let report = stack::up_with(&paths, &state_dir, release, *demo_data, &opts)
                .await
                .with_context(|| format!("stack up --release {release} failed"))?;
            out.result(&report, |r| {
                let mut s = String::new();
                if r.already_running {
                    let _ = writeln!(
                        s,
                        "The stack already runs {} and every process is alive: nothing to do.",
                        r.release
                    );
                } else if !r.restarted.is_empty() {
                    let _ = writeln!(
                        s,
                        "Found a half-gone stack ({} had stopped): restarted it with its data.",
                        r.restarted.join(", ")
                    );
                }
                let _ = writeln!(
                    s,
                    "Stack up: {} (state in {}).",
                    r.release,
                    state_dir.display()
                );
                if let Some(d) = &r.demo {
                    let _ = writeln!(
                        s,
                        "Demo data: tenants {}, {} sessions completed, {} findings{}.",
                        d.tenants.join(", "),
                        d.sessions_completed,
                        d.findings,
                        d.evidence
                            .map(|e| format!(", {e} evidence records"))
                            .unwrap_or_default()
                    );
                }
                s
            });
            Ok(ExitCode::SUCCESS)
        }
        Command::Stack {
            action: StackCmd::Down,
        } => {
            if let Err(e @ xorb_local::LocalError::Config(_)) = stack::StackState::load(&state_dir)
            {
                out.line(format!(
                    "{e}: stopping the processes recorded in {} instead.",
                    xorb_local::pidfiles::dir(&state_dir).display()
                ));
            }
            let entries = match stack::down(&state_dir).await {
                Ok(e) => e,
                Err(xorb_local::LocalError::NoStack(_)) => {
                    out.line(format!(
                        "No stack recorded in {}: nothing to stop.",
                        state_dir.display()
                    ));
                    return Ok(ExitCode::SUCCESS);
                }
                Err(e) => return Err(e.into()),
            };
            out.result(&entries, |entries| {
                let mut s = String::new();
                for e in entries {
                    let what = match e.result {
                        xorb_local::process::StopResult::Stopped => "stopped",
                        xorb_local::process::StopResult::Killed => "did not stop in time: killed",
                        xorb_local::process::StopResult::AlreadyGone => "was already gone",
                        xorb_local::process::StopResult::PidReused => {
                            "pid now belongs to another process: left alone"
                        }
                    };
                    let _ = writeln!(s, "{:<14} pid {:<8} {what}", e.name, e.pid);
                }
                s
            });
            Ok(ExitCode::SUCCESS)
        }
        Command::Plan(a) => {
            let (plan, _) = crate::rollback::compute_plan(&cli, a).await?;
            // Configuration changes show values, some of them secrets.
            let red = crate::sinks::redactor_for(&cli);
            let plan = serde_json::from_value(red.redact_json(&serde_json::to_value(&plan)?))
                .unwrap_or(plan);
            out.result(&plan, crate::rollback::render_plan);
            Ok(ExitCode::SUCCESS)
        }
        Command::Rollback { plan: a, yes, gov } => {
            crate::rollback::rollback(&cli, out, a, *yes, gov).await
        }
        Command::Assess(a) => crate::governance::assess(&cli, out, a).await,
        Command::Approve {
            run,
            name,
            role,
            reason,
            resume,
        } => {
            let a = crate::governance::ApproveArgs {
                run,
                name,
                role,
                reason,
                resume: *resume,
            };
            crate::governance::approve(&cli, out, a).await
        }
        Command::Check { run, item, by } => crate::governance::check(&cli, out, run, item, by),
        Command::Resume {
            run,
            confirm,
            mark_done,
        } => crate::rollback::resume(&cli, out, run, confirm, mark_done).await,
        Command::Abort { run, by } => {
            let before = xorb_engine::load_run(&state_dir, run)?.status;
            let r = xorb_engine::abort_run(&state_dir, run, by)?;
            if r.aborted {
                crate::governance::audit_abort(&state_dir, &r.run_id, by, &before);
            }
            out.result(&r, |r| {
                if r.aborted {
                    format!(
                        "Run {} aborted by {by}.{}\n",
                        r.run_id,
                        r.running_pid
                            .map(|p| format!(" Process {p} stops before its next step."))
                            .unwrap_or_default()
                    )
                } else {
                    format!("Run {} was not aborted: it is {}.\n", r.run_id, r.status)
                }
            });
            Ok(if r.aborted {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
        Command::Runs => {
            // Reading creates nothing: a mistyped --state-dir must not become a new, empty state directory.
            if !state_dir.is_dir() {
                return Err(xorb_engine::JournalError::NoJournal(state_dir.clone()).into());
            }
            let runs = if state_dir.join("journal.sqlite").exists() {
                xorb_engine::list_runs(&state_dir)?
            } else {
                vec![]
            };
            out.result(&runs, |runs| {
                let mut s = String::new();
                if runs.is_empty() {
                    s.push_str("No runs yet.\n");
                }
                for r in runs {
                    let note = if r.active {
                        " (running now)"
                    } else if r.interrupted {
                        " (interrupted: resume it)"
                    } else {
                        ""
                    };
                    let _ = writeln!(
                        s,
                        "{}  {} → {}  {}{note}",
                        r.run.id, r.run.from, r.run.to, r.run.status
                    );
                }
                s
            });
            // Runs on disk the journal lost are an unhealthy state directory: say so, exit 5.
            let known = runs.iter().map(|r| r.run.id.clone()).collect();
            let unknown = xorb_engine::disk_runs::unknown_runs(&state_dir, &known);
            if unknown.is_empty() {
                return Ok(ExitCode::SUCCESS);
            }
            match cli.output {
                Format::Json => eprintln!(
                    "{}",
                    serde_json::json!({"warning": "runs on disk that the journal does not know",
                                       "runs_not_in_journal": unknown})
                ),
                Format::Text => eprint!("warning: {}", xorb_engine::disk_runs::describe(&unknown)),
            }
            Ok(ExitCode::from(5))
        }
        Command::Watch(a) => {
            crate::watch::run(&state_dir, out.format, a, &crate::sinks::redactor_for(&cli)).await
        }
        Command::Show { run } => {
            let rec = xorb_engine::load_run(&state_dir, run)?;
            let gov_md = crate::governance::render_markdown(&cli, &rec.id)?;
            let mut doc = serde_json::to_value(&rec)?;
            doc["governance"] = crate::governance::to_json(&cli, &rec.id)?;
            let notes = crate::notify::listing(&state_dir, &rec.id);
            doc["notifications"] = serde_json::to_value(&notes)?;
            let red = crate::sinks::redactor_for(&cli);
            let doc = red.redact_json(&doc);
            out.result(&doc, |_| {
                let r = &rec;
                let mut s = format!(
                    "Run {}: {} → {}  {}\n",
                    r.id, r.plan.from, r.plan.to, r.status
                );
                for st in &r.steps {
                    let _ = writeln!(
                        s,
                        "  {:<22} {:<12} attempts {}  {}",
                        st.spec.id,
                        st.state.as_str(),
                        st.attempts,
                        st.outcome
                            .as_ref()
                            .map(|o| o.to_string())
                            .unwrap_or_default()
                    );
                }
                let _ = writeln!(
                    s,
                    "Next: {}",
                    xorb_engine::next_action(&r.id, &r.plan, &r.status)
                );
                let _ = write!(s, "\n{gov_md}");
                s.push_str(&crate::notify::render_listing(&notes));
                red.redact_string(&s)
            });
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit {
            action: AuditCmd::Verify { since },
        } => {
            let since = since.as_deref().map(parse_since).transpose()?;
            let dir = state_dir.join("audit");
            let key = xorb_audit::load_public_key(&dir.join("audit-signing-key.pub.pem"))?;
            // The last entry recorded in the journal must still be there: that catches a cut-off tail.
            let checkpoint = xorb_engine::audit_checkpoint::latest(&state_dir)?
                .map(|(seq, hash)| xorb_audit::Checkpoint { seq, hash });
            let has_checkpoint = checkpoint.is_some();
            let report = xorb_audit::verify_with(
                &dir.join("audit.jsonl"),
                &key,
                &xorb_audit::VerifyOptions { since, checkpoint },
            )?;
            // The chain is whole; now the trail against the runs the stack knows of (an erased trail or journal).
            let trail_runs = if report.entries > 0 {
                xorb_audit::read_entries(&dir.join("audit.jsonl"))?
                    .into_iter()
                    .filter_map(|e| e.run_id)
                    .collect()
            } else {
                Default::default()
            };
            let journal_present = state_dir.join(xorb_engine::journal::JOURNAL_FILE).exists();
            let witnesses = xorb_audit::Witnesses {
                journal_runs: if journal_present {
                    xorb_engine::list_runs(&state_dir)?
                        .into_iter()
                        .map(|r| r.run.id)
                        .collect()
                } else {
                    Default::default()
                },
                disk_runs: xorb_engine::disk_runs::run_dirs(&state_dir)
                    .into_iter()
                    .collect(),
                checkpoint_recorded: has_checkpoint,
                journal_present,
            };
            xorb_audit::cross_check(report.entries, &trail_runs, &witnesses)?;
            out.result(&report.to_string(), |s| format!("{s}\n"));
            Ok(ExitCode::SUCCESS)
        }
        Command::Report { run, format } => {
            let rec = xorb_engine::load_run(&state_dir, run)?;
            // Recording the "report written" tick is a write; a report of a read-only state directory is
            // still a report, without that tick.
            if let Err(e) = crate::governance::report_written(&cli, &rec.id) {
                eprintln!(
                    "note: the checklist item proved by this report was not recorded ({e:#}); the report follows"
                );
            }
            match format {
                ReportFormat::Md => {
                    let text = format!(
                        "{}\n{}{}",
                        xorb_report::render_markdown_document(&crate::report::document(
                            &cli, &rec
                        )?),
                        crate::governance::render_markdown(&cli, &rec.id)?,
                        crate::notify::render_markdown(&crate::notify::listing(
                            &state_dir, &rec.id
                        ))
                    );
                    print!("{}", crate::sinks::redactor_for(&cli).redact(&text))
                }
                ReportFormat::Json => {
                    let doc = serde_json::to_value(crate::report::document(&cli, &rec)?)?;
                    let doc = crate::sinks::redactor_for(&cli).redact_json(&doc);
                    println!("{}", serde_json::to_string_pretty(&doc)?)
                }
                ReportFormat::Html => {
                    let red = crate::sinks::redactor_for(&cli);
                    print!("{}", crate::report::html(&cli, &rec, &red)?)
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Dashboard(_) => unreachable!("handled before the match"),
        Command::Integrity(a) => crate::integrity::integrity(&cli, out, a).await,
        Command::Loss(a) => crate::integrity::loss(&cli, out, a).await,
        Command::Status => {
            let st = stack::status(&state_dir).await?;
            out.result(&st, render_status);
            let all_ok = st.services.iter().all(|s| s.healthy)
                && st.servers.values().all(|s| s.running)
                && st.problems.is_empty();
            Ok(if all_ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(5)
            })
        }
    }
}

fn render_status(st: &stack::StackStatus) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Stack: {}   release {}   schema {}",
        st.state_dir.display(),
        st.release,
        st.schema_revision.as_deref().unwrap_or("none")
    );
    let _ = writeln!(
        s,
        "{:<14} {:<34} {:<18} {:<7} {}",
        "SERVICE", "IMAGE", "REPORTS", "PORT", "HEALTH"
    );
    for svc in &st.services {
        let health = if !svc.running {
            "not running"
        } else if svc.healthy {
            "healthy"
        } else {
            "UNHEALTHY"
        };
        let _ = writeln!(
            s,
            "{:<14} {:<34} {:<18} {:<7} {health}",
            svc.name,
            svc.image,
            svc.reported_release.as_deref().unwrap_or("-"),
            svc.port
        );
    }
    for (name, srv) in &st.servers {
        let _ = writeln!(
            s,
            "{name:<14} port {:<6} {}",
            srv.port,
            if srv.running {
                "running"
            } else {
                "NOT RUNNING"
            }
        );
    }
    let _ = writeln!(
        s,
        "Streams: {}",
        if st.streams.is_empty() {
            "none".into()
        } else {
            st.streams.join(", ")
        }
    );
    let dbs: Vec<String> = st
        .redis_databases
        .iter()
        .map(|(db, n)| format!("db{db} ({n} keys)"))
        .collect();
    let _ = writeln!(
        s,
        "Redis databases in use: {}",
        if dbs.is_empty() {
            "none".into()
        } else {
            dbs.join(", ")
        }
    );
    for p in &st.problems {
        let _ = writeln!(s, "PROBLEM: {p}");
    }
    let targets: Vec<String> = st
        .prometheus_targets
        .iter()
        .map(|t| format!("{} {}", t.job, t.health))
        .collect();
    let _ = writeln!(
        s,
        "Prometheus targets: {}",
        if targets.is_empty() {
            "none".into()
        } else {
            targets.join(", ")
        }
    );
    s
}

/// "1h", "30m", "2d", "90s" → that long ago.
fn parse_since(text: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    let bad = || {
        UsageError(format!(
            "--since {text:?}: use a number and a unit, like 30m, 1h or 2d"
        ))
    };
    let (n, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
    let n: i64 = n.parse().map_err(|_| bad())?;
    // The checked forms: `--since 99999999999d` is out of chrono's range and must be a usage error, not a panic.
    let d = match unit {
        "s" => chrono::Duration::try_seconds(n),
        "m" => chrono::Duration::try_minutes(n),
        "h" => chrono::Duration::try_hours(n),
        "d" => chrono::Duration::try_days(n),
        _ => return Err(bad().into()),
    };
    d.and_then(|d| chrono::Utc::now().checked_sub_signed(d))
        .ok_or_else(|| {
            UsageError(format!(
                "--since {text:?} reaches before the earliest representable date"
            ))
            .into()
        })
}
