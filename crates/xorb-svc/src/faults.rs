//! Fault injection for tests: a share of 5xx answers, added latency, a stalled dependency.
//!
//! Set by configuration (the service's environment) and, so that a test can inject a fault at a
//! chosen instant without restarting the service (a restart would reset its counters), by an
//! optional file of the same `KEY=VALUE` lines that is read again every [`FILE_POLL`]. Accepted only
//! when the service listens on loopback: a production service refuses to start with any of them.
//!
//! Faults touch only the role's own routes: `/metrics`, `/api/v1/health` and `/api/v1/info` stay
//! truthful, so a monitor sees the damage in the request metrics rather than losing its scrapes. A
//! stalled dependency also shows in health, through the dependency checks of `Ctx`.

use crate::config::ConfigError;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

pub const VAR_ERROR_RATIO: &str = "XORB_FAULT_ERROR_RATIO";
pub const VAR_LATENCY_MS: &str = "XORB_FAULT_LATENCY_MS";
pub const VAR_STALL: &str = "XORB_FAULT_STALL";
pub const VAR_STALL_MS: &str = "XORB_FAULT_STALL_MS";
pub const VAR_FILE: &str = "XORB_FAULTS_FILE";

/// How often the faults file is read again.
pub const FILE_POLL: Duration = Duration::from_millis(200);
/// How long a request waits on a stalled dependency unless `XORB_FAULT_STALL_MS` says otherwise.
pub const DEFAULT_STALL: Duration = Duration::from_secs(5);
const PPM: u64 = 1_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dependency {
    Postgres,
    Redis,
    Nats,
    ControlPlane,
}

impl Dependency {
    pub fn as_str(self) -> &'static str {
        match self {
            Dependency::Postgres => "postgres",
            Dependency::Redis => "redis",
            Dependency::Nats => "nats",
            Dependency::ControlPlane => "control-plane",
        }
    }

    fn parse(s: &str) -> Option<Dependency> {
        [
            Dependency::Postgres,
            Dependency::Redis,
            Dependency::Nats,
            Dependency::ControlPlane,
        ]
        .into_iter()
        .find(|d| d.as_str() == s)
    }
}

/// What to inject. The default injects nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Share of the role's requests answered 500, in parts per million.
    pub error_ppm: u64,
    pub added_latency: Duration,
    /// A dependency that does not answer, and how long a request waits for it before giving up.
    pub stall: Option<(Dependency, Duration)>,
}

impl Faults {
    pub fn is_empty(&self) -> bool {
        *self == Faults::default()
    }

    /// Parse the fault variables from any lookup (the environment, the faults file, a test map).
    /// `where_` names the source in errors (`environment`, the file's path).
    pub fn from_lookup(
        get: impl Fn(&str) -> Option<String>,
        where_: &str,
    ) -> Result<Faults, ConfigError> {
        let get = |k: &str| {
            get(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let bad = |var: &'static str, why: String| ConfigError::Invalid {
            var,
            why: format!("{why} (in the {where_})"),
        };
        let error_ppm = match get(VAR_ERROR_RATIO) {
            None => 0,
            Some(v) => match v.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => (r * PPM as f64).round() as u64,
                _ => {
                    return Err(bad(
                        VAR_ERROR_RATIO,
                        format!("expected a ratio from 0 to 1 such as 0.05, got {v:?}"),
                    ));
                }
            },
        };
        let ms = |var: &'static str, default: u64| -> Result<u64, ConfigError> {
            match get(var) {
                None => Ok(default),
                Some(v) => match v.parse::<u64>() {
                    Ok(n) if n <= 60_000 => Ok(n),
                    _ => Err(bad(
                        var,
                        format!("expected milliseconds from 0 to 60000, got {v:?}"),
                    )),
                },
            }
        };
        let added_latency = Duration::from_millis(ms(VAR_LATENCY_MS, 0)?);
        let stall_for = Duration::from_millis(ms(VAR_STALL_MS, DEFAULT_STALL.as_millis() as u64)?);
        let stall = match get(VAR_STALL) {
            None => None,
            Some(v) => Some((
                Dependency::parse(&v).ok_or_else(|| {
                    bad(
                        VAR_STALL,
                        format!("expected postgres, redis, nats or control-plane, got {v:?}"),
                    )
                })?,
                stall_for,
            )),
        };
        Ok(Faults {
            error_ppm,
            added_latency,
            stall,
        })
    }

    /// Parse a faults file: `KEY=VALUE` lines, `#` comments, blank lines ignored.
    pub fn from_file_text(text: &str, path: &Path) -> Result<Faults, ConfigError> {
        let pairs: Vec<(String, String)> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let lookup = |k: &str| {
            pairs
                .iter()
                .rev()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        Faults::from_lookup(lookup, &format!("file {}", path.display()))
    }
}

impl fmt::Display for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        let mut parts = Vec::new();
        if self.error_ppm > 0 {
            parts.push(format!(
                "{}% of requests answer 500",
                self.error_ppm as f64 / 10_000.0
            ));
        }
        if !self.added_latency.is_zero() {
            parts.push(format!("+{} ms", self.added_latency.as_millis()));
        }
        if let Some((dep, d)) = self.stall {
            parts.push(format!("{} stalled ({} ms)", dep.as_str(), d.as_millis()));
        }
        f.write_str(&parts.join(", "))
    }
}

/// Whether request number `n` (counted from 1) is one of the failing ones: failures are spread
/// evenly, so any run of requests fails the configured share to within one request and two runs
/// with the same traffic fail the same requests.
pub fn fails(n: u64, error_ppm: u64) -> bool {
    n > 0 && (n * error_ppm) / PPM > ((n - 1) * error_ppm) / PPM
}

/// The faults in force, shared by the middleware, the dependency checks and the file watcher.
pub struct Injector {
    env: Faults,
    current: RwLock<Faults>,
    requests: AtomicU64,
    file: Option<PathBuf>,
}

impl Injector {
    pub fn new(env: Faults, file: Option<PathBuf>) -> Injector {
        Injector {
            current: RwLock::new(env.clone()),
            env,
            requests: AtomicU64::new(0),
            file,
        }
    }

    pub fn current(&self) -> Faults {
        self.current.read().map(|f| f.clone()).unwrap_or_default()
    }

    /// The dependency's stall, if it is the stalled one.
    pub fn stalled(&self, dep: Dependency) -> Option<Duration> {
        self.current()
            .stall
            .and_then(|(d, t)| (d == dep).then_some(t))
    }

    fn set(&self, f: Faults) {
        let Ok(mut cur) = self.current.write() else {
            return;
        };
        if *cur != f {
            tracing::warn!(faults = %f, "fault injection changed");
            // A new share starts a new sequence, so its first failures come at once.
            self.requests.store(0, Ordering::Relaxed);
            *cur = f;
        }
    }

    /// Read the faults file once: its faults while it exists, the environment's once it is gone.
    /// A file that does not parse keeps the faults in force and says why in the log.
    pub fn reload(&self) {
        let Some(path) = &self.file else { return };
        match std::fs::read_to_string(path) {
            Ok(text) => match Faults::from_file_text(&text, path) {
                Ok(f) => self.set(f),
                Err(e) => tracing::error!(error = %e, "faults file ignored"),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.set(self.env.clone()),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot read the faults file")
            }
        }
    }

    pub async fn watch(self: Arc<Self>, shutdown: crate::shutdown::Shutdown) {
        if self.file.is_none() {
            return;
        }
        while shutdown.sleep(FILE_POLL).await {
            self.reload();
        }
    }
}

/// Middleware around the role's own routes.
pub async fn inject(State(inj): State<Arc<Injector>>, req: Request, next: Next) -> Response {
    let f = inj.current();
    if f.is_empty() {
        return next.run(req).await;
    }
    if !f.added_latency.is_zero() {
        tokio::time::sleep(f.added_latency).await;
    }
    if let Some((dep, wait)) = f.stall {
        tokio::time::sleep(wait).await;
        return crate::http::ApiError::unavailable(
            "dependency_unavailable",
            format!(
                "{} did not answer within {} ms (injected stall)",
                dep.as_str(),
                wait.as_millis()
            ),
        )
        .into_response();
    }
    if f.error_ppm > 0
        && fails(
            inj.requests.fetch_add(1, Ordering::Relaxed) + 1,
            f.error_ppm,
        )
    {
        return crate::http::ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "injected_fault",
            "injected failure (XORB_FAULT_ERROR_RATIO)",
        )
        .into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(pairs: &[(&str, &str)]) -> Result<Faults, ConfigError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Faults::from_lookup(|k| m.get(k).cloned(), "environment")
    }

    #[test]
    fn nothing_set_injects_nothing() {
        assert!(parse(&[]).unwrap().is_empty());
        assert_eq!(parse(&[]).unwrap().to_string(), "none");
    }

    #[test]
    fn every_fault_parses() {
        let f = parse(&[
            (VAR_ERROR_RATIO, "0.05"),
            (VAR_LATENCY_MS, "30"),
            (VAR_STALL, "postgres"),
            (VAR_STALL_MS, "1500"),
        ])
        .unwrap();
        assert_eq!(f.error_ppm, 50_000);
        assert_eq!(f.added_latency, Duration::from_millis(30));
        assert_eq!(
            f.stall,
            Some((Dependency::Postgres, Duration::from_millis(1500)))
        );
        assert_eq!(
            f.to_string(),
            "5% of requests answer 500, +30 ms, postgres stalled (1500 ms)"
        );
        let f = parse(&[(VAR_STALL, "nats")]).unwrap();
        assert_eq!(f.stall, Some((Dependency::Nats, DEFAULT_STALL)));
    }

    #[test]
    fn bad_values_name_the_variable_and_the_source() {
        for (k, v) in [
            (VAR_ERROR_RATIO, "5%"),
            (VAR_ERROR_RATIO, "1.5"),
            (VAR_LATENCY_MS, "-1"),
            (VAR_LATENCY_MS, "600000"),
            (VAR_STALL, "mysql"),
        ] {
            let e = parse(&[(k, v)]).unwrap_err();
            let msg = e.to_string();
            assert!(msg.starts_with(k) && msg.contains("environment"), "{msg}");
        }
        let e = Faults::from_file_text("XORB_FAULT_STALL=disk\n", Path::new("/t/faults"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/t/faults"), "{e}");
    }

    #[test]
    fn file_lines_with_comments_and_last_value_wins() {
        let f = Faults::from_file_text(
            "# burst\n\nXORB_FAULT_ERROR_RATIO = 0.5\nXORB_FAULT_ERROR_RATIO=0.25\n",
            Path::new("f"),
        )
        .unwrap();
        assert_eq!(f.error_ppm, 250_000);
    }

    #[test]
    fn failures_are_the_configured_share_spread_evenly() {
        for ppm in [0, 1, 10_000, 50_000, 333_333, 500_000, 1_000_000] {
            let failed: u64 = (1..=100_000).filter(|&n| fails(n, ppm)).count() as u64;
            let expected = 100_000 * ppm / PPM;
            assert!(
                failed.abs_diff(expected) <= 1,
                "{ppm}: {failed} vs {expected}"
            );
            // Any window of 1000 requests is within one request of its share.
            let w: u64 = (40_001..=41_000).filter(|&n| fails(n, ppm)).count() as u64;
            assert!(w.abs_diff(1000 * ppm / PPM) <= 1, "{ppm}: window {w}");
        }
    }

    #[test]
    fn the_file_overrides_the_environment_while_it_exists() {
        let dir = std::env::temp_dir().join(format!("xorb-faults-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("faults");
        let env = Faults {
            added_latency: Duration::from_millis(5),
            ..Faults::default()
        };
        let inj = Injector::new(env.clone(), Some(path.clone()));
        std::fs::write(&path, "XORB_FAULT_STALL=redis\nXORB_FAULT_STALL_MS=10\n").unwrap();
        inj.reload();
        assert_eq!(
            inj.stalled(Dependency::Redis),
            Some(Duration::from_millis(10))
        );
        assert_eq!(inj.stalled(Dependency::Postgres), None);
        // A broken file keeps what is in force.
        std::fs::write(&path, "XORB_FAULT_STALL=disk\n").unwrap();
        inj.reload();
        assert!(inj.stalled(Dependency::Redis).is_some());
        std::fs::remove_file(&path).unwrap();
        inj.reload();
        assert_eq!(inj.current(), env);
        std::fs::remove_dir_all(&dir).ok();
    }
}
