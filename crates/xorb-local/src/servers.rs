//! The private servers of a local stack: PostgreSQL, Redis, NATS (JetStream) and Prometheus, on 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use xorb_model::release::Release;

use crate::LocalError;
use crate::process::{ProcRecord, free_port, poll_until, spawn_detached};
use xorb_adapters::files::{mkdir, write_file, write_private};
use xorb_adapters::pg::PgConn;

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const START_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Server {
    pub port: u16,
    pub proc: ProcRecord,
    pub log: PathBuf,
}

/// PostgreSQL refuses to run as root: when we are root we run it as the `postgres` system user.
fn postgres_user() -> Option<(u32, u32)> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let user = nix::unistd::User::from_name("postgres").ok().flatten()?;
    Some((user.uid.as_raw(), user.gid.as_raw()))
}

fn as_postgres(mut cmd: Command) -> Command {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = postgres_user() {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

fn chown_to_postgres(path: &Path) -> Result<(), LocalError> {
    if let Some((uid, gid)) = postgres_user() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .map_err(|e| LocalError::io(format!("cannot chown {}", path.display()), e))?;
    }
    Ok(())
}

/// Initialises (first time only) and starts PostgreSQL under `dir`, then makes sure the `xorb` database exists.
pub async fn start_postgres(dir: &Path, password: &str) -> Result<Server, LocalError> {
    start_postgres_on(dir, password, None).await
}

/// As [`start_postgres`], on `port` when given (a restart keeps the port the services connect to).
pub async fn start_postgres_on(
    dir: &Path,
    password: &str,
    port: Option<u16>,
) -> Result<Server, LocalError> {
    mkdir(dir, 0o700)?;
    chown_to_postgres(dir)?;
    let data = dir.join("data");
    if !data.join("PG_VERSION").exists() {
        let pwfile = dir.join("initdb.pw");
        write_private(&pwfile, password.as_bytes())?;
        chown_to_postgres(&pwfile)?;
        let mut cmd = Command::new(format!("{PG_BIN}/initdb"));
        cmd.arg("-D").arg(&data).args([
            "-U",
            "xorb",
            "-A",
            "scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        cmd.arg(format!("--pwfile={}", pwfile.display()));
        let out = as_postgres(cmd)
            .output()
            .map_err(|e| LocalError::io("cannot run initdb", e))?;
        let _ = std::fs::remove_file(&pwfile);
        if !out.status.success() {
            return Err(LocalError::Start {
                what: "PostgreSQL (initdb)".into(),
                why: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
    }
    let port = port.map_or_else(free_port, Ok)?;
    let log = dir.join("postgres.log");
    let mut cmd = Command::new(format!("{PG_BIN}/postgres"));
    cmd.arg("-D").arg(&data).arg("-p").arg(port.to_string());
    cmd.args(["-c", "listen_addresses=127.0.0.1"]);
    cmd.arg("-c")
        .arg(format!("unix_socket_directories={}", dir.display()));
    cmd.args(["-c", "max_connections=200", "-c", "fsync=on"]);
    // The log file must be writable by the server's user.
    write_file(&log, "")?;
    chown_to_postgres(&log)?;
    let proc = spawn_detached(as_postgres(cmd), &log)?;
    let conn = PgConn {
        host: "127.0.0.1".into(),
        port,
        user: "xorb".into(),
        password: password.into(),
        dbname: "postgres".into(),
    };
    let ready = poll_until(START_TIMEOUT, || async {
        if !proc.is_alive() {
            return Some(false);
        }
        conn.connect().await.ok().map(|_| true)
    })
    .await;
    if ready != Some(true) {
        proc.stop(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(5));
        return Err(LocalError::Start {
            what: "PostgreSQL".into(),
            why: format!("not ready; see {}", log.display()),
        });
    }
    let client = conn.connect().await?;
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = 'xorb'", &[])
        .await
        .map_err(|e| LocalError::db("look up database xorb", e))?
        .is_some();
    if !exists {
        client
            .batch_execute("CREATE DATABASE xorb")
            .await
            .map_err(|e| LocalError::db("create database xorb", e))?;
    }
    Ok(Server { port, proc, log })
}

/// Starts Redis with the release's settings, bound to 127.0.0.1, password from a private config file.
pub async fn start_redis(
    dir: &Path,
    release: &Release,
    password: &str,
) -> Result<Server, LocalError> {
    mkdir(dir, 0o700)?;
    let port = free_port()?;
    let release_conf = dir.join("release.conf");
    std::fs::copy(release.path(&release.manifest.redis.config), &release_conf)
        .map_err(|e| LocalError::io("cannot copy the release's redis.conf", e))?;
    let conf = dir.join("redis.conf");
    // No replica ever attaches here: Redis's default wait for more replicas before a diskless transfer (5 s)
    // would only delay each `redis-cli --rdb`, the runbook's backup (phase 4), by that much.
    let text = format!(
        "include {}\nbind 127.0.0.1\nport {port}\ndir {}\ndbfilename dump.rdb\ndaemonize no\nprotected-mode yes\nrequirepass {password}\nrepl-diskless-sync-delay 0\n",
        release_conf.display(),
        dir.display()
    );
    write_private(&conf, text.as_bytes())?;
    restart_redis(dir, port, password).await
}

/// Starts Redis from the configuration written in `dir` (on a restart: the same port, the same data, and the
/// release settings phase 4 may have changed since).
pub async fn restart_redis(dir: &Path, port: u16, password: &str) -> Result<Server, LocalError> {
    let conf = dir.join("redis.conf");
    let log = dir.join("redis.log");
    let mut cmd = Command::new("redis-server");
    cmd.arg(&conf);
    let proc = spawn_detached(cmd, &log)?;
    let url = format!("redis://:{password}@127.0.0.1:{port}/0");
    let ready = poll_until(START_TIMEOUT, || async {
        if !proc.is_alive() {
            return Some(false);
        }
        xorb_adapters::redis::ping(&url).await.then_some(true)
    })
    .await;
    if ready != Some(true) {
        proc.stop(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(5));
        return Err(LocalError::Start {
            what: "Redis".into(),
            why: format!("not ready; see {}", log.display()),
        });
    }
    Ok(Server { port, proc, log })
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NatsServer {
    #[serde(flatten)]
    pub server: Server,
    pub monitor_port: u16,
}

pub async fn start_nats(dir: &Path) -> Result<NatsServer, LocalError> {
    mkdir(dir, 0o700)?;
    let port = free_port()?;
    let monitor_port = free_port()?;
    let conf = dir.join("nats.conf");
    let text = format!(
        "server_name: xorb-local\nlisten: \"127.0.0.1:{port}\"\nhttp: \"127.0.0.1:{monitor_port}\"\njetstream {{\n  store_dir: \"{}\"\n}}\n",
        dir.join("jetstream").display()
    );
    write_file(&conf, &text)?;
    let log = dir.join("nats.log");
    let mut cmd = Command::new("nats-server");
    cmd.arg("-c").arg(&conf);
    let proc = spawn_detached(cmd, &log)?;
    let url = format!("http://127.0.0.1:{monitor_port}/healthz?js-enabled=true");
    wait_http_ready(&proc, &url, "NATS", &log).await?;
    Ok(NatsServer {
        server: Server { port, proc, log },
        monitor_port,
    })
}

/// Starts NATS again from the configuration a previous start wrote in `dir` (same ports, same JetStream store).
pub async fn restart_nats(dir: &Path, old: &NatsServer) -> Result<NatsServer, LocalError> {
    let log = dir.join("nats.log");
    let mut cmd = Command::new("nats-server");
    cmd.arg("-c").arg(dir.join("nats.conf"));
    let proc = spawn_detached(cmd, &log)?;
    let url = format!(
        "http://127.0.0.1:{}/healthz?js-enabled=true",
        old.monitor_port
    );
    wait_http_ready(&proc, &url, "NATS", &log).await?;
    Ok(NatsServer {
        server: Server {
            port: old.server.port,
            proc,
            log,
        },
        monitor_port: old.monitor_port,
    })
}

/// The local Prometheus configuration from the release's: each scrape job's targets become the local port of the
/// service of the same name (`xorb-api` → api); jobs of services the stack does not run are dropped; `alerting`
/// points at the stack's own Alertmanager when it runs one (the release's k8s host name is never resolved from
/// here); rule files are named as read from `rules_dir`. JSON is valid YAML, so it is kept as JSON.
///
/// `scrape_interval` (the stack's `--scrape-interval`) replaces the release's everywhere it is set, and caps the
/// scrape timeout, which Prometheus refuses above the interval.
pub fn prometheus_config(
    release: &Release,
    rules_dir: &Path,
    service_ports: &std::collections::BTreeMap<String, u16>,
    alertmanager_port: Option<u16>,
    scrape_interval: Option<Duration>,
) -> Result<serde_json::Value, LocalError> {
    let src = release.path(&release.manifest.monitoring.prometheus);
    let text = std::fs::read_to_string(&src)
        .map_err(|e| LocalError::io(format!("cannot read {}", src.display()), e))?;
    let mut cfg: serde_json::Value = serde_saphyr::from_str(&text)
        .map_err(|e| LocalError::Config(format!("{} is not valid YAML: {e}", src.display())))?;
    let obj = cfg
        .as_object_mut()
        .ok_or_else(|| LocalError::Config(format!("{} is not a mapping", src.display())))?;
    obj.remove("alerting");
    if let Some(port) = alertmanager_port {
        obj.insert(
            "alerting".into(),
            serde_json::json!({"alertmanagers": [{"static_configs": [{"targets": [format!("127.0.0.1:{port}")]}]}]}),
        );
    }
    let rule_files: Vec<serde_json::Value> = release
        .manifest
        .monitoring
        .rules
        .iter()
        .filter_map(|rule| rule.file_name())
        .map(|name| serde_json::Value::String(rules_dir.join(name).display().to_string()))
        .collect();
    obj.insert("rule_files".into(), serde_json::Value::Array(rule_files));
    if let Some(jobs) = obj.get_mut("scrape_configs").and_then(|v| v.as_array_mut()) {
        jobs.retain_mut(|job| {
            let name = job
                .get("job_name")
                .and_then(|v| v.as_str())
                .unwrap_or_default();
            let Some(port) = name
                .strip_prefix("xorb-")
                .and_then(|svc| service_ports.get(svc))
            else {
                return false;
            };
            job["static_configs"] =
                serde_json::json!([{ "targets": [format!("127.0.0.1:{port}")] }]);
            true
        });
    }
    if let Some(every) = scrape_interval {
        let global = cfg
            .as_object_mut()
            .and_then(|o| {
                o.entry("global")
                    .or_insert_with(|| serde_json::json!({}))
                    .as_object_mut()
            })
            .ok_or_else(|| {
                LocalError::Config(format!("{}: global is not a mapping", src.display()))
            })?;
        set_scrape_interval(global, every);
        if let Some(jobs) = cfg.get_mut("scrape_configs").and_then(|v| v.as_array_mut()) {
            for job in jobs.iter_mut().filter_map(|j| j.as_object_mut()) {
                if job.contains_key("scrape_interval") || job.contains_key("scrape_timeout") {
                    set_scrape_interval(job, every);
                }
            }
        }
    }
    Ok(cfg)
}

fn set_scrape_interval(o: &mut serde_json::Map<String, serde_json::Value>, every: Duration) {
    let timeout = o
        .get("scrape_timeout")
        .and_then(|v| v.as_str())
        .and_then(|t| parse_prometheus_duration(t).ok())
        .map_or(every, |t| t.min(every));
    o.insert("scrape_interval".into(), prometheus_duration(every).into());
    o.insert("scrape_timeout".into(), prometheus_duration(timeout).into());
}

/// The release's own scrape interval (its Prometheus configuration's `global.scrape_interval`, else Prometheus's
/// default of 1m).
pub fn release_scrape_interval(release: &Release) -> Result<Duration, LocalError> {
    let src = release.path(&release.manifest.monitoring.prometheus);
    let text = std::fs::read_to_string(&src)
        .map_err(|e| LocalError::io(format!("cannot read {}", src.display()), e))?;
    let cfg: serde_json::Value = serde_saphyr::from_str(&text)
        .map_err(|e| LocalError::Config(format!("{} is not valid YAML: {e}", src.display())))?;
    match cfg["global"]["scrape_interval"].as_str() {
        None => Ok(Duration::from_secs(60)),
        Some(t) => parse_prometheus_duration(t).map_err(|e| {
            LocalError::Config(format!("{}: global.scrape_interval: {e}", src.display()))
        }),
    }
}

/// A Prometheus duration (`500ms`, `15s`, `1h30m`: units ms, s, m, h, d, w, y from the largest down), greater than
/// zero. What the flags that end up in PromQL or in Prometheus's configuration accept, so neither sees anything else.
pub fn parse_prometheus_duration(s: &str) -> Result<Duration, String> {
    const UNITS: [(&str, u64); 7] = [
        ("y", 365 * 86_400_000),
        ("w", 7 * 86_400_000),
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
        ("ms", 1),
    ];
    let bad = || format!("{s:?} is not a duration like 500ms, 15s, 5m or 1h30m");
    let mut rest = s;
    let mut ms: u64 = 0;
    let mut next_unit = 0;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        // "ms" before "m", or "5ms" would read as 5 minutes followed by garbage.
        let (i, (unit, scale)) = UNITS
            .iter()
            .enumerate()
            .skip(next_unit)
            .filter(|(_, (u, _))| rest.starts_with(u))
            .max_by_key(|(_, (u, _))| u.len())
            .ok_or_else(bad)?;
        rest = &rest[unit.len()..];
        ms = n
            .checked_mul(*scale)
            .and_then(|x| ms.checked_add(x))
            .ok_or_else(bad)?;
        next_unit = i + 1;
    }
    if ms == 0 {
        return Err(format!("{s:?}: must be greater than zero"));
    }
    Ok(Duration::from_millis(ms))
}

/// `d` as Prometheus spells a duration: whole seconds when it has no milliseconds.
pub fn prometheus_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Writes [`prometheus_config`] and the release's rule files into `dir`, as `stack up` starts Prometheus.
pub fn write_prometheus_config(
    release: &Release,
    dir: &Path,
    service_ports: &std::collections::BTreeMap<String, u16>,
    alertmanager_port: Option<u16>,
    scrape_interval: Option<Duration>,
) -> Result<PathBuf, LocalError> {
    let cfg = prometheus_config(
        release,
        dir,
        service_ports,
        alertmanager_port,
        scrape_interval,
    )?;
    for rule in &release.manifest.monitoring.rules {
        let Some(name) = rule.file_name() else {
            continue;
        };
        std::fs::copy(release.path(rule), dir.join(name))
            .map_err(|e| LocalError::io("cannot copy alert rules", e))?;
    }
    let out = dir.join("prometheus.yml");
    write_file(
        &out,
        &serde_json::to_string_pretty(&cfg).unwrap_or_default(),
    )?;
    Ok(out)
}

pub async fn start_prometheus(dir: &Path, config: &Path) -> Result<Server, LocalError> {
    start_prometheus_on(dir, config, None).await
}

/// As [`start_prometheus`], on `port` when given.
pub async fn start_prometheus_on(
    dir: &Path,
    config: &Path,
    port: Option<u16>,
) -> Result<Server, LocalError> {
    mkdir(dir, 0o700)?;
    let port = port.map_or_else(free_port, Ok)?;
    let log = dir.join("prometheus.log");
    let mut cmd = Command::new("prometheus");
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--web.enable-lifecycle");
    let proc = spawn_detached(cmd, &log)?;
    let url = format!("http://127.0.0.1:{port}/-/ready");
    wait_http_ready(&proc, &url, "Prometheus", &log).await?;
    Ok(Server { port, proc, log })
}

/// Starts Alertmanager on 127.0.0.1 with `config` copied into `dir`. `--cluster.listen-address=` (empty) turns
/// clustering off: a private Alertmanager must not gossip with anything on the network.
pub async fn start_alertmanager(dir: &Path, config: &Path) -> Result<Server, LocalError> {
    start_alertmanager_on(dir, config, None).await
}

/// As [`start_alertmanager`], on `port` when given.
pub async fn start_alertmanager_on(
    dir: &Path,
    config: &Path,
    port: Option<u16>,
) -> Result<Server, LocalError> {
    mkdir(dir, 0o700)?;
    let port = port.map_or_else(free_port, Ok)?;
    let dest = dir.join("alertmanager.yml");
    if config != dest {
        std::fs::copy(config, &dest).map_err(|e| {
            LocalError::io(
                format!("cannot copy {} to {}", config.display(), dest.display()),
                e,
            )
        })?;
    }
    let log = dir.join("alertmanager.log");
    let mut cmd = Command::new(ALERTMANAGER_BIN);
    cmd.arg(format!("--config.file={}", dest.display()))
        .arg(format!("--storage.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=");
    let proc = spawn_detached(cmd, &log)?;
    let url = format!("http://127.0.0.1:{port}/-/ready");
    wait_http_ready(&proc, &url, "Alertmanager", &log).await?;
    Ok(Server { port, proc, log })
}

/// Debian names the Alertmanager binary `prometheus-alertmanager` (package prometheus-alertmanager).
pub const ALERTMANAGER_BIN: &str = "prometheus-alertmanager";

/// Waits until `url` answers 2xx; a server that dies or never gets ready is killed and reported with its log.
async fn wait_http_ready(
    proc: &ProcRecord,
    url: &str,
    what: &str,
    log: &Path,
) -> Result<(), LocalError> {
    let http = reqwest::Client::new();
    let ready = poll_until(START_TIMEOUT, || async {
        if !proc.is_alive() {
            return Some(false);
        }
        let r = http.get(url).send().await.ok()?;
        r.status().is_success().then_some(true)
    })
    .await;
    if ready != Some(true) {
        proc.stop(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(5));
        return Err(LocalError::Start {
            what: what.into(),
            why: format!("not ready; see {}", log.display()),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_durations_parse_and_print_back() {
        for (s, ms) in [
            ("500ms", 500),
            ("1s", 1000),
            ("15s", 15_000),
            ("5m", 300_000),
            ("1h30m", 5_400_000),
            ("1m5s250ms", 65_250),
        ] {
            assert_eq!(
                parse_prometheus_duration(s),
                Ok(Duration::from_millis(ms)),
                "{s}"
            );
        }
        assert_eq!(prometheus_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(prometheus_duration(Duration::from_secs(60)), "60s");
        // What would reach PromQL or Prometheus's configuration unchecked otherwise.
        for s in [
            "",
            "0s",
            "1",
            "s",
            "5 m",
            "1.5s",
            "30s1m",
            "1s1s",
            "1h]",
            "-1s",
            "1h) or vector(1",
        ] {
            assert!(parse_prometheus_duration(s).is_err(), "{s:?} accepted");
        }
    }
}
