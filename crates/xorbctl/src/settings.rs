//! Arguments resolved once into settings, as ripgrep turns its low-level arguments into high-level ones and uv its
//! options into resolved settings: clap parses the command line into [`Cli`] (what was typed), then [`resolve`]
//! turns it, once and with no side effects, into the one settings struct of the command (where the state and the
//! releases are, the output mode, the policy files, the notification options, the command's own values). Commands
//! take their settings and never see the raw command line.
//!
//! `resolve` reads the environment and looks at the file system (to find the project's `releases/`), but creates,
//! writes and connects to nothing; what it cannot decide without a side effect (the webhook URLs of
//! `<state-dir>/notify.toml`, the policy files' contents) the command reads when it needs it, so errors surface
//! where they always did.

use std::path::{Path, PathBuf};

use crate::cli::{self, AuditCmd, Cli, Command, StackCmd};
use crate::errors::UsageError;
use crate::output::Format;

/// A resolved invocation: the output mode, where the redactor finds the secrets, and the command's settings.
#[derive(Debug)]
pub struct Settings {
    pub output: Format,
    pub redaction: RedactionSources,
    pub command: CommandSettings,
}

/// Where things are.
#[derive(Debug, Clone)]
pub struct Locations {
    /// `--state-dir` (or `XORB_STATE_DIR`, default `.xorb`).
    pub state_dir: PathBuf,
    /// `--releases` (or `XORB_RELEASES`), else `releases/` of the project (`None`: no project found).
    releases_root: Option<PathBuf>,
    /// `XORB_VENV`, else the project's `.venv`, else `.venv`.
    pub venv: PathBuf,
    /// `XORB_SVC_BIN`, else `xorb-svc` beside this binary.
    pub svc_bin: PathBuf,
    /// `--target` and how to reach it, as typed; `target::select` decides with the state directory's binding.
    pub target: cli::TargetArgs,
}

impl Locations {
    /// The directory of release directories, or the usage error that says how to give it.
    pub fn releases_root(&self) -> Result<&Path, UsageError> {
        self.releases_root.as_deref().ok_or_else(|| {
            UsageError(
                "cannot find the releases directory: pass --releases DIR or set XORB_RELEASES"
                    .into(),
            )
        })
    }
}

/// `--decision-matrix`, `--operators`, `--checklists` (or their environment variables); `None`: the built-in one.
#[derive(Debug, Clone, Default)]
pub struct PolicyFiles {
    pub decision_matrix: Option<PathBuf>,
    pub operators: Option<PathBuf>,
    pub checklists: Option<PathBuf>,
}

/// The notification options of the command line (`notify.toml` and `XORB_NOTIFY_URLS` are read by `notify`).
#[derive(Debug, Clone, Default)]
pub struct NotifySettings {
    /// `--notify URL`, repeated.
    pub urls: Vec<String>,
    /// `--templates DIR`.
    pub templates: Option<PathBuf>,
    /// `--notify-ca FILE` (or `XORB_NOTIFY_CA`).
    pub ca: Option<PathBuf>,
}

/// Where the invocation's one redactor finds the secrets it must hide (`redaction::redactor`).
#[derive(Debug, Clone)]
pub struct RedactionSources {
    pub state_dir: PathBuf,
    pub releases_root: Option<PathBuf>,
    pub notify: NotifySettings,
}

/// What executing a run needs (`rollback`, `resume`, `approve --resume`).
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub locations: Locations,
    pub notify: NotifySettings,
    pub policies: PolicyFiles,
}

/// `--from`, `--to` and what narrows the plan.
#[derive(Debug, Clone)]
pub struct PlanRequest {
    pub from: String,
    pub to: String,
    pub only: Option<String>,
    pub to_revision: Option<String>,
    pub migration: Option<String>,
    /// `--runbook FILE`; `None`: the embedded runbooks/rollback.toml.
    pub runbook: Option<PathBuf>,
    /// `--one-at-a-time`.
    pub one_at_a_time: bool,
}

/// The governance options of `rollback`, as typed (checked by `governance::gate` before anything is journaled).
#[derive(Debug, Clone, Default)]
pub struct GovRequest {
    pub severity: Option<String>,
    pub approve: Vec<String>,
    pub as_name: Option<String>,
    pub reason: Option<String>,
    pub release_repo: Option<PathBuf>,
    pub push: Option<String>,
}

impl From<crate::cli::RollbackGovArgs> for GovRequest {
    fn from(gov: crate::cli::RollbackGovArgs) -> Self {
        GovRequest {
            severity: gov.severity,
            approve: gov.approve,
            as_name: gov.as_name,
            reason: gov.reason,
            release_repo: gov.release_repo,
            push: gov.push,
        }
    }
}

#[derive(Debug)]
pub enum CommandSettings {
    StackUp(StackUp),
    StackDown(StateDir),
    /// The hidden `stack serve-kubernetes`: the Kubernetes stack's own process (its arguments as given).
    StackServe(Vec<std::ffi::OsString>),
    Status(Located),
    Integrity(Integrity),
    Loss(Loss),
    Plan(Plan),
    Rollback(Rollback),
    Restore(Restore),
    Assess(Assess),
    Monitor(Monitor),
    Perf(Perf),
    Approve(Approve),
    Check(Check),
    Resume(Resume),
    Abort(Abort),
    Runs(StateDir),
    Show(Show),
    Watch(Watch),
    AuditVerify(AuditVerify),
    AuditPlatform(AuditPlatform),
    Report(Report),
    Dashboard(Dashboard),
    Completions(clap_complete::Shell),
    Man(Vec<String>),
}

/// A command that reads the stack, wherever it runs (`status`).
#[derive(Debug)]
pub struct Located {
    pub locations: Locations,
}

/// A command that needs only the state directory.
#[derive(Debug)]
pub struct StateDir {
    pub state_dir: PathBuf,
}

#[derive(Debug)]
pub struct StackUp {
    pub locations: Locations,
    pub release: String,
    pub demo_data: bool,
    pub bulk_sessions: u64,
    /// `--scale N`, 0 when not given.
    pub scale: u64,
    pub grafana_dashboards: Option<PathBuf>,
    pub scrape_interval: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntegrityKind {
    Quick,
    Full,
    Critical,
}

/// How a scan reads the database.
#[derive(Debug, Clone, Default)]
pub struct ScanSettings {
    pub parallelism: Option<usize>,
    pub tables: Vec<String>,
}

#[derive(Debug)]
pub struct Integrity {
    pub state_dir: PathBuf,
    pub kind: IntegrityKind,
    pub report: bool,
    pub snapshot: Option<PathBuf>,
    pub scan: ScanSettings,
}

#[derive(Debug)]
pub struct Loss {
    pub state_dir: PathBuf,
    pub before: String,
    pub after: String,
    pub list_limit: usize,
    pub scan: ScanSettings,
    pub report: bool,
}

#[derive(Debug)]
pub struct Plan {
    pub locations: Locations,
    pub request: PlanRequest,
}

#[derive(Debug)]
pub struct Rollback {
    pub run: RunSettings,
    pub request: PlanRequest,
    pub yes: bool,
    pub gov: GovRequest,
}

#[derive(Debug)]
pub struct Restore {
    pub run: RunSettings,
    /// The run whose backup to restore (an id, a unique prefix, or `latest`).
    pub id: String,
    pub runbook: Option<PathBuf>,
    pub yes: bool,
    pub gov: GovRequest,
}

#[derive(Debug)]
pub struct Resume {
    pub run: RunSettings,
    /// A run id, a unique prefix of one, or `latest`.
    pub id: String,
    pub confirm: Vec<String>,
    pub mark_done: Vec<String>,
}

#[derive(Debug)]
pub struct Approve {
    pub run: RunSettings,
    pub id: String,
    pub name: String,
    pub role: String,
    pub reason: String,
    pub resume: bool,
}

#[derive(Debug)]
pub struct Check {
    pub state_dir: PathBuf,
    pub policies: PolicyFiles,
    pub id: String,
    pub item: String,
    pub by: String,
}

#[derive(Debug)]
pub struct Abort {
    pub state_dir: PathBuf,
    pub id: String,
    pub by: String,
}

#[derive(Debug)]
pub struct Assess {
    pub locations: Locations,
    pub policies: PolicyFiles,
    pub baseline_offset: String,
    pub window: Option<String>,
    pub declare: Vec<String>,
    pub bugs: Vec<String>,
}

/// `perf` (with a release: kept as its baseline) and `load` (without: traffic). The numbers are checked by the
/// command against the runbook's ranges before anything is sent.
#[derive(Debug)]
pub struct Perf {
    pub locations: Locations,
    pub release: Option<String>,
    pub args: crate::cli::LoadArgs,
}

/// `monitor`: the flags as given; their values are parsed (and refused) by the command, before it reads anything.
#[derive(Debug, Clone)]
pub struct Monitor {
    pub state_dir: PathBuf,
    pub args: crate::cli::MonitorArgs,
}

/// What reading a run's governance needs (`show`, `report`, the dashboard).
#[derive(Debug, Clone)]
pub struct RunView {
    pub state_dir: PathBuf,
    pub policies: PolicyFiles,
}

#[derive(Debug)]
pub struct Show {
    pub view: RunView,
    pub id: String,
}

#[derive(Debug)]
pub struct Report {
    pub view: RunView,
    pub id: String,
    pub format: cli::ReportFormat,
}

#[derive(Debug)]
pub struct Dashboard {
    pub view: RunView,
    pub listen: String,
}

#[derive(Debug)]
pub struct Watch {
    pub state_dir: PathBuf,
    pub id: Option<String>,
    pub once: bool,
}

#[derive(Debug)]
pub struct AuditVerify {
    pub state_dir: PathBuf,
    /// `--since` as typed (1h, 30m, 2d).
    pub since: Option<String>,
}

/// `xorbctl audit platform --since W`.
#[derive(Debug)]
pub struct AuditPlatform {
    pub locations: Locations,
    /// `--since` as typed (1h, 30m, 2d).
    pub since: String,
}

/// The project's directory: the nearest ancestor of the working directory or of this binary holding `releases/`
/// and `migrations/`.
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

fn locations(cli: &Cli) -> Locations {
    let root = project_root();
    let releases_root = cli
        .releases
        .clone()
        .or_else(|| root.as_ref().map(|r| r.join("releases")));
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
    Locations {
        state_dir: cli.state_dir.clone(),
        releases_root,
        venv,
        svc_bin,
        target: cli.target.clone(),
    }
}

fn plan_request(a: cli::PlanArgs) -> PlanRequest {
    PlanRequest {
        from: a.from,
        to: a.to,
        only: a.only,
        to_revision: a.to_revision,
        migration: a.migration,
        runbook: a.runbook,
        one_at_a_time: a.one_at_a_time,
    }
}

/// The command line, resolved: the only place that reads [`Cli`].
pub fn resolve(cli: Cli) -> Settings {
    let loc = locations(&cli);
    let state_dir = loc.state_dir.clone();
    let policies = PolicyFiles {
        decision_matrix: cli.decision_matrix.clone(),
        operators: cli.operators.clone(),
        checklists: cli.checklists.clone(),
    };
    let notify = NotifySettings {
        urls: cli.notify.notify.clone(),
        templates: cli.notify.templates.clone(),
        ca: cli.notify.notify_ca.clone(),
    };
    let redaction = RedactionSources {
        state_dir: state_dir.clone(),
        releases_root: loc.releases_root.clone(),
        notify: notify.clone(),
    };
    let run = RunSettings {
        locations: loc.clone(),
        notify,
        policies: policies.clone(),
    };
    let view = RunView {
        state_dir: state_dir.clone(),
        policies: policies.clone(),
    };
    let only_state = StateDir {
        state_dir: state_dir.clone(),
    };
    let command = match cli.command {
        Command::Stack {
            action:
                StackCmd::Up {
                    release,
                    demo_data,
                    bulk_sessions,
                    scale,
                    grafana_dashboards,
                    scrape_interval,
                },
        } => CommandSettings::StackUp(StackUp {
            locations: loc,
            release,
            demo_data,
            bulk_sessions,
            scale: scale.unwrap_or(0),
            grafana_dashboards,
            scrape_interval,
        }),
        Command::Stack {
            action: StackCmd::Down,
        } => CommandSettings::StackDown(only_state),
        Command::Stack {
            action: StackCmd::ServeKubernetes { args },
        } => CommandSettings::StackServe(args),
        Command::Status => CommandSettings::Status(Located { locations: loc }),
        Command::Integrity(a) => CommandSettings::Integrity(Integrity {
            state_dir,
            kind: if a.critical {
                IntegrityKind::Critical
            } else if a.quick {
                IntegrityKind::Quick
            } else {
                IntegrityKind::Full
            },
            report: a.report,
            snapshot: a.snapshot,
            scan: ScanSettings {
                parallelism: a.parallelism,
                tables: a.tables,
            },
        }),
        Command::Loss(a) => CommandSettings::Loss(Loss {
            state_dir,
            before: a.before,
            after: a.after,
            list_limit: a.list_limit,
            scan: ScanSettings {
                parallelism: a.parallelism,
                tables: a.tables,
            },
            report: a.report,
        }),
        Command::Plan(a) => CommandSettings::Plan(Plan {
            locations: loc,
            request: plan_request(a),
        }),
        Command::Rollback { plan, yes, gov } => CommandSettings::Rollback(Rollback {
            run,
            request: plan_request(plan),
            yes,
            gov: GovRequest::from(gov),
        }),
        Command::Restore {
            run: id,
            runbook,
            yes,
            gov,
        } => CommandSettings::Restore(Restore {
            run,
            id,
            runbook,
            yes,
            gov: GovRequest::from(gov),
        }),
        Command::Assess(a) => CommandSettings::Assess(Assess {
            locations: loc,
            policies,
            baseline_offset: a.baseline_offset,
            window: a.window,
            declare: a.declare,
            bugs: a.bugs,
        }),
        Command::Monitor(args) => CommandSettings::Monitor(Monitor { state_dir, args }),
        Command::Perf(a) => CommandSettings::Perf(Perf {
            locations: loc,
            release: Some(a.release),
            args: a.load,
        }),
        Command::Load(args) => CommandSettings::Perf(Perf {
            locations: loc,
            release: None,
            args,
        }),
        Command::Approve {
            run: id,
            name,
            role,
            reason,
            resume,
        } => CommandSettings::Approve(Approve {
            run,
            id,
            name,
            role,
            reason,
            resume,
        }),
        Command::Check { run: id, item, by } => CommandSettings::Check(Check {
            state_dir,
            policies,
            id,
            item,
            by,
        }),
        Command::Resume {
            run: id,
            confirm,
            mark_done,
            yes: _,
        } => CommandSettings::Resume(Resume {
            run,
            id,
            confirm,
            mark_done,
        }),
        Command::Abort { run: id, by } => CommandSettings::Abort(Abort { state_dir, id, by }),
        Command::Runs => CommandSettings::Runs(only_state),
        Command::Show { run: id } => CommandSettings::Show(Show { view, id }),
        Command::Watch(a) => CommandSettings::Watch(Watch {
            state_dir,
            id: a.run,
            once: a.once,
        }),
        Command::Audit {
            action: AuditCmd::Verify { since },
        } => CommandSettings::AuditVerify(AuditVerify { state_dir, since }),
        Command::Audit {
            action: AuditCmd::Platform { since },
        } => CommandSettings::AuditPlatform(AuditPlatform {
            locations: loc,
            since,
        }),
        Command::Report { run: id, format } => CommandSettings::Report(Report { view, id, format }),
        Command::Dashboard(a) => CommandSettings::Dashboard(Dashboard {
            view,
            listen: a.listen,
        }),
        Command::Completions { shell } => CommandSettings::Completions(shell),
        Command::Man { command } => CommandSettings::Man(command),
    };
    Settings {
        output: cli.output,
        redaction,
        command,
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn resolved(args: &[&str]) -> Settings {
        resolve(
            Cli::try_parse_from(std::iter::once("xorbctl").chain(args.iter().copied())).unwrap(),
        )
    }

    #[test]
    fn global_flags_reach_the_command_settings() {
        let s = resolved(&[
            "--state-dir",
            "/tmp/s",
            "--releases",
            "/tmp/r",
            "--checklists",
            "/tmp/c.toml",
            "--notify",
            "http://127.0.0.1:1/hook",
            "--output",
            "json",
            "rollback",
            "--from",
            "a",
            "--to",
            "b",
            "--only",
            "api",
            "--yes",
            "--severity",
            "P2",
        ]);
        assert_eq!(s.output, Format::Json);
        assert_eq!(s.redaction.state_dir, Path::new("/tmp/s"));
        assert_eq!(
            s.redaction.releases_root.as_deref(),
            Some(Path::new("/tmp/r"))
        );
        let CommandSettings::Rollback(r) = s.command else {
            panic!("{:?}", s.command)
        };
        assert_eq!(r.run.locations.state_dir, Path::new("/tmp/s"));
        assert_eq!(
            r.run.locations.releases_root().unwrap(),
            Path::new("/tmp/r")
        );
        assert_eq!(
            r.run.policies.checklists.as_deref(),
            Some(Path::new("/tmp/c.toml"))
        );
        assert_eq!(r.run.notify.urls, ["http://127.0.0.1:1/hook"]);
        assert_eq!(r.request.only.as_deref(), Some("api"));
        assert!(r.yes);
        assert_eq!(r.gov.severity.as_deref(), Some("P2"));
    }

    #[test]
    fn integrity_resolves_its_kind() {
        for (flag, kind) in [
            ("--quick", IntegrityKind::Quick),
            ("--full", IntegrityKind::Full),
            ("--critical", IntegrityKind::Critical),
        ] {
            let CommandSettings::Integrity(i) = resolved(&["integrity", flag]).command else {
                panic!("{flag}")
            };
            assert_eq!(i.kind, kind, "{flag}");
        }
    }

    #[test]
    fn without_a_releases_directory_the_commands_that_need_one_say_how_to_give_it() {
        let loc = Locations {
            state_dir: ".xorb".into(),
            releases_root: None,
            venv: ".venv".into(),
            svc_bin: "xorb-svc".into(),
            target: Default::default(),
        };
        assert!(
            loc.releases_root()
                .unwrap_err()
                .to_string()
                .contains("--releases DIR")
        );
    }
}
