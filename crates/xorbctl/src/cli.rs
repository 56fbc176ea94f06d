//! The command line as clap parses it (the "low-level" arguments): definitions only. `settings::resolve` turns a
//! parsed [`Cli`] into each command's settings; `xorbctl completions` and `xorbctl man` are generated from these
//! same definitions.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::output::Format;

/// The environment variable of `--notify-ca`.
pub const ENV_CA: &str = "XORB_NOTIFY_CA";

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
    /// Where the stack runs, and how to reach it.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Notification sinks and templates (rollback, resume).
    #[command(flatten)]
    pub notify: NotifyArgs,
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
    Integrity(IntegrityArgs),
    /// Rows lost, changed and added per table between a row snapshot and the live database.
    Loss(LossArgs),
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
        gov: RollbackGovArgs,
    },
    /// Restore a run's phase-3 backup (the runbook's "restore from last known good backup"): into a new database,
    /// proven by its checksums, then switched in; the database it replaces is kept under another name.
    Restore {
        /// The run whose backup to restore: a run id, a unique prefix of one, or `latest`.
        run: String,
        /// The runbook policy (timeouts, retries) instead of the embedded one.
        #[arg(long, value_name = "FILE")]
        runbook: Option<PathBuf>,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        gov: RollbackGovArgs,
    },
    /// Evaluate the decision matrix against the live stack: severity, decision time, approver, evidence.
    Assess(AssessArgs),
    /// Watch the stack after a rollback against the baseline release's history in Prometheus: PASS, FAIL,
    /// INCONCLUSIVE or ERROR, with interim reports as it goes.
    Monitor(MonitorArgs),
    /// Measure a release's performance baseline on the running stack (the runbook's `performance_test.py`): an
    /// open-model load against the api, latency counted from each request's due time, kept for phase 5.
    Perf(PerfArgs),
    /// Send an open-model load to the stack's api and print its latency: traffic for a demo or a test. Keeps
    /// nothing.
    Load(LoadArgs),
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
        /// Accepted as `rollback` accepts it: `resume` asks nothing (the run was confirmed when it started).
        #[arg(long)]
        yes: bool,
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
    Watch(WatchArgs),
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
    Dashboard(DashboardArgs),
    /// Print a shell completion script: `source <(xorbctl completions bash)`, or save it where your shell loads
    /// completions from.
    Completions {
        /// The shell: bash, zsh, fish (also elvish, powershell).
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) to standard output: `xorbctl man | man -l -`. With a command, that command's
    /// page (`xorbctl man rollback`, `xorbctl man stack up`).
    Man {
        /// A command (and its subcommand) whose page to print instead of xorbctl's.
        command: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Verify every entry's hash link and Ed25519 signature.
    Verify {
        /// Check signatures of the entries of this window only, e.g. 1h, 30m, 2d (hash links are always checked).
        #[arg(long)]
        since: Option<String>,
    },
    /// Check the platform's own audit log over a window: rc1's chained entries verify (against the live chain,
    /// or the one the rollback preserved), stable's plain entries follow, nothing missing in between.
    Platform {
        /// The window, e.g. 1h (the runbook's `--since "1 hour ago"`), 30m, 2d.
        #[arg(long, default_value = "1h")]
        since: String,
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
    /// Run the steps one at a time, in plan order, even those that touch nothing in common (by default they run
    /// at the same time). Journaled with the plan: a resume keeps it.
    #[arg(long)]
    pub one_at_a_time: bool,
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
        /// With --demo-data: also N completed sessions of a third tenant, `bulk` (a platform's history; the demo
        /// uses 300000, over which rc1's recount of every tenant's sessions is slow). Tops up to N, never more.
        #[arg(long, value_name = "N", requires = "demo_data", default_value_t = 0)]
        bulk_sessions: u64,
        /// With --demo-data: production-sized history, about N findings of 10 to 1000 `scale-…` tenants with
        /// their sessions and audit entries (rc1: quotas, usage records, the audit chain and a few thousand signed
        /// evidence records), generated by PostgreSQL. Tops up to N, never more. 1 to 50000000.
        #[arg(long, value_name = "N", requires = "demo_data",
              value_parser = clap::value_parser!(u64).range(1..=50_000_000))]
        scale: Option<u64>,
        /// A directory a Grafana provisions dashboards from: the release's dashboards go there (and phase 4
        /// of a rollback replaces them).
        #[arg(long)]
        grafana_dashboards: Option<PathBuf>,
        /// Prometheus scrapes every this long instead of the release's interval (e.g. 1s), in this and every
        /// later Prometheus configuration of the stack (phase 4's too).
        #[arg(long, value_name = "DURATION")]
        scrape_interval: Option<String>,
    },
    /// Stop exactly the processes `stack up` started. Data stays in the state directory.
    Down,
    /// The Kubernetes stack's own process, which `stack up --target kubernetes` starts (internal).
    #[command(hide = true)]
    ServeKubernetes {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("kind").required(true).args(["quick", "full", "critical"])))]
pub struct IntegrityArgs {
    /// Row counts of every table and a fingerprint of the schema.
    #[arg(long)]
    pub quick: bool,
    /// A content checksum of every table, computed as the rows stream (tables and page ranges in parallel).
    #[arg(long)]
    pub full: bool,
    /// The runbook's critical data: tenants, sessions, findings, evidence and its signatures.
    #[arg(long)]
    pub critical: bool,
    /// Also write the JSON report under `<state-dir>/integrity/` and print its path.
    #[arg(long)]
    pub report: bool,
    /// With --full: write a row snapshot (key and per-column hashes of every row) into DIR, for `xorbctl loss`.
    #[arg(long, value_name = "DIR", requires = "full")]
    pub snapshot: Option<PathBuf>,
    /// Connections scanning at once (default: the number of CPUs).
    #[arg(long)]
    pub parallelism: Option<usize>,
    /// Only this table (repeatable).
    #[arg(long = "table", value_name = "TABLE")]
    pub tables: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct LossArgs {
    /// A snapshot directory (from `integrity --full --snapshot DIR`), or a run id (or `latest`) meaning that run's
    /// `runs/RUN/db/snapshot`.
    #[arg(long, value_name = "SNAPSHOT")]
    pub before: String,
    /// What to compare with: only `current` (the live database) for now.
    #[arg(long, default_value = "current")]
    pub after: String,
    /// Keys listed per table and class of difference (the counts are always exact).
    #[arg(long, default_value_t = 20)]
    pub list_limit: usize,
    /// Connections scanning at once (default: the number of CPUs).
    #[arg(long)]
    pub parallelism: Option<usize>,
    /// Only this table (repeatable).
    #[arg(long = "table", value_name = "TABLE")]
    pub tables: Vec<String>,
    /// Also write the JSON report under `<state-dir>/integrity/` and print its path.
    #[arg(long)]
    pub report: bool,
}

/// The governance options of `rollback`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RollbackGovArgs {
    /// The incident's severity (P0..P3): the run does not act until the approvals it requires are given.
    #[arg(long)]
    pub severity: Option<String>,
    /// An approval on the command line, NAME:ROLE (only where the severity allows it: P0, by the on-call engineer).
    #[arg(long = "approve", value_name = "NAME:ROLE")]
    pub approve: Vec<String>,
    /// Who starts the run (default: $USER); may not approve it where a second person is required.
    #[arg(long = "as", value_name = "NAME")]
    pub as_name: Option<String>,
    /// Why (recorded with the command-line approvals).
    #[arg(long)]
    pub reason: Option<String>,
    /// The release repository: once the run succeeds, tag the rolled-back-to commit `v<yyyy.mm>-rollback`.
    #[arg(long, value_name = "PATH")]
    pub release_repo: Option<PathBuf>,
    /// Push that tag to this remote of the release repository.
    #[arg(long, value_name = "REMOTE", requires = "release_repo")]
    pub push: Option<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct AssessArgs {
    /// The baseline for latency and error rate: the same measure this long before now (Prometheus `offset`,
    /// e.g. 1h, 90s).
    #[arg(long, default_value = "1h")]
    pub baseline_offset: String,
    /// The rate window of latency and error rate, at least two scrape intervals (default: twenty of the
    /// stack's scrape intervals, 5m at the releases' 15s).
    #[arg(long, value_name = "DURATION")]
    pub window: Option<String>,
    /// Declare what the stack cannot show: `data-corruption` or `security-breach`.
    #[arg(long = "declare", value_name = "WHAT")]
    pub declare: Vec<String>,
    /// A non-critical bug an operator reports (P3 evidence).
    #[arg(long = "bug", value_name = "TEXT")]
    pub bugs: Vec<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Requests a second, sent on schedule whether or not earlier ones were answered (default: the runbook's
    /// `[performance]` rate).
    #[arg(long)]
    pub rate: Option<u32>,
    /// How long: 5s, 2min, "1 hour" (default: the runbook's `[performance]` duration).
    #[arg(long)]
    pub duration: Option<String>,
    /// A runbook policy file instead of the embedded runbooks/rollback.toml (its `[performance]` defaults).
    #[arg(long)]
    pub runbook: Option<PathBuf>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct PerfArgs {
    /// The release the stack runs, whose figures are kept in `<state-dir>/perf/RELEASE.json`.
    #[arg(long)]
    pub release: String,
    #[command(flatten)]
    pub load: LoadArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct MonitorArgs {
    /// The release to compare with: its windows in Prometheus's history (`xorb_build_info`).
    #[arg(long, required_unless_present = "replay")]
    pub baseline: Option<String>,
    /// How long to watch: "2 hours", 90m, 30s.
    #[arg(long, default_value = "2 hours")]
    pub duration: String,
    /// The allowed degradation against the baseline: 10%.
    #[arg(long, default_value = "10%")]
    pub alert_threshold: String,
    /// How often to write an interim report: 15min.
    #[arg(long, default_value = "15min")]
    pub report_interval: String,
    /// The rollback run this monitor follows: the baseline is what ran before it, and the reports go to its
    /// directory (a run id, a unique prefix, or `latest`).
    #[arg(long)]
    pub run: Option<String>,
    /// Evaluation interval, query step and rate window (at least two scrape intervals).
    #[arg(long, default_value = "30s")]
    pub step: String,
    /// The Prometheus jobs to watch (a regular expression on `job`).
    #[arg(long, default_value = "xorb-.*")]
    pub jobs: String,
    /// Prometheus's address (default: the stack's).
    #[arg(long, value_name = "URL")]
    pub prometheus: Option<String>,
    /// Pin the baseline to this window instead of looking it up: START,END as RFC 3339 times.
    #[arg(long, value_name = "START,END")]
    pub baseline_window: Option<String>,
    /// How far back to look for the baseline's windows.
    #[arg(long, default_value = "7d")]
    pub lookback: String,
    /// Where to write the recording and the reports (default: the run's `monitor/`, else
    /// `<state-dir>/monitor/<time>/`).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Recompute the report of a recorded monitor (its `recording.jsonl`, or the directory holding it) and print it.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["baseline", "run", "prometheus", "baseline_window"])]
    pub replay: Option<PathBuf>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct WatchArgs {
    /// A run id, a unique prefix of one, or `latest`; default: the run being executed now.
    pub run: Option<String>,
    /// Print one view of the run and exit.
    #[arg(long)]
    pub once: bool,
}

#[derive(Debug, clap::Args)]
pub struct DashboardArgs {
    /// Where to serve the page. Loopback needs nothing; any other address requires the token printed at start.
    #[arg(long, default_value = "127.0.0.1:8790", value_name = "ADDR:PORT")]
    pub listen: String,
}

#[derive(Debug, Clone, Default, clap::Args)]
pub struct NotifyArgs {
    /// Post the run's notifications to this Slack-compatible incoming webhook (repeatable). The URL is a secret
    /// and is visible in `ps` here: prefer XORB_NOTIFY_URLS or <state-dir>/notify.toml.
    #[arg(long = "notify", value_name = "URL", global = true)]
    pub notify: Vec<String>,
    /// Notification templates (<kind>.j2: initiation, progress, completion, failure) instead of the shipped ones.
    #[arg(long, value_name = "DIR", global = true)]
    pub templates: Option<PathBuf>,
    /// Also trust the CA certificates of this PEM file for https:// webhooks (besides the system's CA store).
    #[arg(long = "notify-ca", value_name = "FILE", env = ENV_CA, global = true)]
    pub notify_ca: Option<PathBuf>,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// The whole stack as processes on this machine (`stack up`).
    Local,
    /// One namespace of a Kubernetes cluster, reached with a kubeconfig and described by a target file.
    Kubernetes,
}

#[derive(Debug, Clone, Default, clap::Args)]
pub struct TargetArgs {
    /// Where the stack runs. Default: the target the state directory is bound to (by `stack up` or its first
    /// rollback), else local.
    #[arg(long, global = true, env = "XORB_TARGET", value_enum)]
    pub target: Option<TargetKind>,
    /// Kubernetes: the target file (namespace, where this machine reaches each dependency, passwords by reference
    /// to Secrets).
    #[arg(long, global = true, env = "XORB_TARGET_FILE", value_name = "FILE")]
    pub target_file: Option<PathBuf>,
    /// Kubernetes: the kubeconfig (default as kubectl: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubernetes: the kubeconfig context (default: its current-context).
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// Kubernetes: the namespace (default: the target file's).
    #[arg(long, global = true, value_name = "NAME")]
    pub namespace: Option<String>,
}
