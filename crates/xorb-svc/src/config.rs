//! Configuration, only from environment variables (docs/design/platform.md, "xorb-svc
//! configuration"). Secrets (the passwords inside `DATABASE_URL` and `REDIS_URL`) never appear in
//! `Debug` output, errors or logs: use [`redact_url`].

use crate::faults::{self, Faults};
use crate::release::{Release, Role};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{0} is not set")]
    Missing(&'static str),
    #[error("{var}: {why}")]
    Invalid { var: &'static str, why: String },
}

fn invalid(var: &'static str, why: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        var,
        why: why.into(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IsolationMode {
    /// Every tenant query carries an explicit `WHERE tenant_id = $n`.
    Basic,
    /// Tenant queries run as `xorb_tenant` with `xorb.tenant_id` set; row-level security filters.
    Advanced,
}

impl IsolationMode {
    pub fn as_str(self) -> &'static str {
        match self {
            IsolationMode::Basic => "basic",
            IsolationMode::Advanced => "advanced",
        }
    }
}

/// A secret string that never prints.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    #[cfg(test)]
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", redact_url(&self.0))
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: Secret,
    pub redis_url: Secret,
    pub nats_url: String,
    /// Effective value: always false on a release without the evidence system.
    pub evidence_enabled: bool,
    /// Effective value: `Basic` on a release that does not implement `advanced`.
    pub isolation_mode: IsolationMode,
    pub circuit_breaker: bool,
    pub listen_addr: SocketAddr,
    pub evidence_dir: Option<PathBuf>,
    pub control_plane_url: Option<String>,
    pub scan_timeout: Duration,
    pub scan_concurrency: usize,
    pub session_ttl: Duration,
    /// Test-only faults from the environment (empty in production), and the file that may change
    /// them while the service runs (`faults.rs`).
    pub faults: Faults,
    pub faults_file: Option<PathBuf>,
    /// Things worth a warning once logging is up (ignored or downgraded settings).
    pub warnings: Vec<String>,
}

impl Config {
    pub fn from_env(release: &Release, role: Role) -> Result<Config, ConfigError> {
        Config::from_lookup(|k| std::env::var(k).ok(), release, role)
    }

    /// Parse from any lookup function (tests pass a map).
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
        release: &Release,
        role: Role,
    ) -> Result<Config, ConfigError> {
        let get = |k: &str| {
            lookup(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let mut warnings = Vec::new();

        let database_url = get("DATABASE_URL").ok_or(ConfigError::Missing("DATABASE_URL"))?;
        tokio_postgres::Config::from_str(&database_url)
            .map_err(|e| invalid("DATABASE_URL", format!("not a valid postgres URL ({e})")))?;
        if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
            return Err(invalid(
                "DATABASE_URL",
                "expected postgres://user:password@host:port/db",
            ));
        }

        let redis_url = get("REDIS_URL").ok_or(ConfigError::Missing("REDIS_URL"))?;
        redis::IntoConnectionInfo::into_connection_info(redis_url.as_str()).map_err(|_| {
            invalid(
                "REDIS_URL",
                "not a valid redis URL (expected redis://:password@host:port/db)",
            )
        })?;

        let nats_url = get("NATS_URL").ok_or(ConfigError::Missing("NATS_URL"))?;
        let parsed = reqwest::Url::parse(&nats_url)
            .map_err(|e| invalid("NATS_URL", format!("not a URL ({e})")))?;
        if parsed.scheme() != "nats" || parsed.host_str().is_none() {
            return Err(invalid("NATS_URL", "expected nats://host:port"));
        }

        let evidence_requested = parse_bool(&get, "EVIDENCE_SYSTEM_ENABLED", false)?;
        let evidence_enabled = evidence_requested && release.features.evidence_system;
        if evidence_requested && !evidence_enabled {
            warnings.push(format!(
                "EVIDENCE_SYSTEM_ENABLED=true is ignored: {} has no evidence system",
                release.name
            ));
        }

        let mode = match get("TENANT_ISOLATION_MODE").as_deref() {
            None | Some("basic") => IsolationMode::Basic,
            Some("advanced") => IsolationMode::Advanced,
            Some(other) => {
                return Err(invalid(
                    "TENANT_ISOLATION_MODE",
                    format!("expected basic or advanced, got {other:?}"),
                ));
            }
        };
        let isolation_mode = if release.supports_isolation_mode(mode.as_str()) {
            mode
        } else {
            warnings.push(format!(
                "TENANT_ISOLATION_MODE={} is not implemented by {}: using basic (explicit tenant_id filters)",
                mode.as_str(),
                release.name
            ));
            IsolationMode::Basic
        };

        let circuit_breaker = parse_bool(&get, "CIRCUIT_BREAKER_ENABLED", false)?;

        let listen = get("XORB_LISTEN_ADDR").ok_or(ConfigError::Missing("XORB_LISTEN_ADDR"))?;
        let listen_addr = SocketAddr::from_str(&listen).map_err(|_| {
            invalid(
                "XORB_LISTEN_ADDR",
                format!("expected IP:PORT, got {listen:?}"),
            )
        })?;

        let faults = Faults::from_lookup(get, "environment")?;
        let faults_file = get(faults::VAR_FILE).map(PathBuf::from);
        if (!faults.is_empty() || faults_file.is_some()) && !is_loopback(listen_addr.ip()) {
            return Err(invalid(
                "XORB_FAULT_*",
                format!(
                    "fault injection is for tests on loopback only, and this service listens on {listen_addr}: remove the XORB_FAULT_* and XORB_FAULTS_FILE variables"
                ),
            ));
        }
        if !faults.is_empty() {
            warnings.push(format!("fault injection active: {faults}"));
        }

        let evidence_dir = get("XORB_EVIDENCE_DIR").map(PathBuf::from);
        if evidence_enabled && role == Role::Worker && evidence_dir.is_none() {
            return Err(ConfigError::Missing("XORB_EVIDENCE_DIR"));
        }

        let control_plane_url = match get("XORB_CONTROL_PLANE_URL") {
            Some(u) => Some(validate_control_plane_url(&u)?),
            None => None,
        };
        if role == Role::Api && release.features.control_plane && control_plane_url.is_none() {
            return Err(ConfigError::Missing("XORB_CONTROL_PLANE_URL"));
        }

        let scan_timeout_ms = parse_num(&get, "XORB_SCAN_TIMEOUT_MS", 500u64, 1, 60_000)?;
        let scan_concurrency = parse_num(&get, "XORB_SCAN_CONCURRENCY", 64u64, 1, 4096)?;
        let session_ttl_secs =
            parse_num(&get, "XORB_SESSION_TTL_SECS", 3600u64, 1, 365 * 24 * 3600)?;

        Ok(Config {
            database_url: Secret(database_url),
            redis_url: Secret(redis_url),
            nats_url,
            evidence_enabled,
            isolation_mode,
            circuit_breaker,
            listen_addr,
            evidence_dir,
            control_plane_url,
            scan_timeout: Duration::from_millis(scan_timeout_ms),
            scan_concurrency: scan_concurrency as usize,
            session_ttl: Duration::from_secs(session_ttl_secs),
            faults,
            faults_file,
            warnings,
        })
    }
}

fn parse_bool(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: bool,
) -> Result<bool, ConfigError> {
    match get(var) {
        None => Ok(default),
        Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
        Some(v) => Err(invalid(var, format!("expected true or false, got {v:?}"))),
    }
}

fn parse_num(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    let Some(v) = get(var) else {
        return Ok(default);
    };
    let n: u64 = v
        .parse()
        .map_err(|_| invalid(var, format!("expected an integer, got {v:?}")))?;
    if n < min || n > max {
        return Err(invalid(var, format!("{n} is outside {min}..={max}")));
    }
    Ok(n)
}

/// The control plane is reached over loopback plain HTTP only.
fn validate_control_plane_url(u: &str) -> Result<String, ConfigError> {
    const VAR: &str = "XORB_CONTROL_PLANE_URL";
    let url = reqwest::Url::parse(u).map_err(|e| invalid(VAR, format!("not a URL ({e})")))?;
    if url.scheme() != "http" {
        return Err(invalid(VAR, "expected http://127.0.0.1:PORT"));
    }
    let host = url.host_str().unwrap_or("");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback =
        host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(is_loopback);
    if !loopback {
        return Err(invalid(
            VAR,
            "the control plane must be on a loopback address",
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(VAR, "must not carry credentials"));
    }
    Ok(u.trim_end_matches('/').to_string())
}

/// Replace the password of a URL with `***` (for logs). Anything unparsable is hidden whole.
pub fn redact_url(u: &str) -> String {
    match reqwest::Url::parse(u) {
        Ok(mut url) => {
            if url.password().is_some() {
                let _ = url.set_password(Some("***"));
            }
            url.to_string()
        }
        Err(_) => "<unparsable URL hidden>".to_string(),
    }
}

/// True for 127.0.0.0/8 and ::1 (and v4-mapped loopback).
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::{RC1, STABLE, find};
    use std::collections::HashMap;

    fn base() -> HashMap<&'static str, &'static str> {
        HashMap::from([
            (
                "DATABASE_URL",
                "postgres://xorb:s3cretpw@127.0.0.1:5432/xorb",
            ),
            ("REDIS_URL", "redis://:r3dispw@127.0.0.1:6379/0"),
            ("NATS_URL", "nats://127.0.0.1:4222"),
            ("XORB_LISTEN_ADDR", "127.0.0.1:8080"),
            ("XORB_CONTROL_PLANE_URL", "http://127.0.0.1:8081/"),
            ("XORB_EVIDENCE_DIR", "/tmp/evidence"),
        ])
    }

    fn parse(
        env: &HashMap<&'static str, &'static str>,
        rel: &str,
        role: Role,
    ) -> Result<Config, ConfigError> {
        Config::from_lookup(
            |k| env.get(k).map(|v| v.to_string()),
            find(rel).unwrap(),
            role,
        )
    }

    #[test]
    fn defaults() {
        let c = parse(&base(), RC1, Role::Worker).unwrap();
        assert_eq!(c.scan_timeout, Duration::from_millis(500));
        assert_eq!(c.scan_concurrency, 64);
        assert_eq!(c.session_ttl, Duration::from_secs(3600));
        assert!(!c.evidence_enabled);
        assert!(!c.circuit_breaker);
        assert_eq!(c.isolation_mode, IsolationMode::Basic);
        assert_eq!(
            c.control_plane_url.as_deref(),
            Some("http://127.0.0.1:8081")
        );
    }

    #[test]
    fn debug_output_hides_passwords() {
        let c = parse(&base(), RC1, Role::Api).unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("s3cretpw"), "{dbg}");
        assert!(!dbg.contains("r3dispw"), "{dbg}");
        assert!(dbg.contains("***"));
    }

    #[test]
    fn redact() {
        assert_eq!(
            redact_url("postgres://xorb:pw@127.0.0.1:5432/xorb"),
            "postgres://xorb:***@127.0.0.1:5432/xorb"
        );
        assert_eq!(
            redact_url("redis://:pw@127.0.0.1:1/0"),
            "redis://:***@127.0.0.1:1/0"
        );
        assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert!(!redact_url("::garbage pw").contains("pw"));
    }

    #[test]
    fn missing_and_invalid() {
        let mut e = base();
        e.remove("DATABASE_URL");
        assert_eq!(
            parse(&e, STABLE, Role::Api).unwrap_err(),
            ConfigError::Missing("DATABASE_URL")
        );
        let mut e = base();
        e.insert("CIRCUIT_BREAKER_ENABLED", "yes");
        assert!(matches!(
            parse(&e, STABLE, Role::Api),
            Err(ConfigError::Invalid {
                var: "CIRCUIT_BREAKER_ENABLED",
                ..
            })
        ));
        let mut e = base();
        e.insert("XORB_SCAN_CONCURRENCY", "0");
        assert!(parse(&e, STABLE, Role::Worker).is_err());
        let mut e = base();
        e.insert("XORB_SCAN_TIMEOUT_MS", "abc");
        assert!(parse(&e, STABLE, Role::Worker).is_err());
        let mut e = base();
        e.insert("TENANT_ISOLATION_MODE", "strict");
        assert!(parse(&e, RC1, Role::Api).is_err());
        let mut e = base();
        e.insert("XORB_LISTEN_ADDR", "localhost");
        assert!(parse(&e, RC1, Role::Api).is_err());
        let mut e = base();
        e.insert("DATABASE_URL", "mysql://x@y/z");
        assert!(parse(&e, RC1, Role::Api).is_err());
        let mut e = base();
        e.insert("NATS_URL", "http://127.0.0.1:4222");
        assert!(parse(&e, RC1, Role::Api).is_err());
    }

    #[test]
    fn invalid_database_url_error_does_not_echo_the_password() {
        let mut e = base();
        e.insert(
            "DATABASE_URL",
            "postgres://xorb:s3cretpw@127.0.0.1:notaport/xorb",
        );
        let err = parse(&e, RC1, Role::Api).unwrap_err().to_string();
        assert!(!err.contains("s3cretpw"), "{err}");
    }

    #[test]
    fn rc1_api_needs_a_loopback_control_plane() {
        let mut e = base();
        e.remove("XORB_CONTROL_PLANE_URL");
        assert_eq!(
            parse(&e, RC1, Role::Api).unwrap_err(),
            ConfigError::Missing("XORB_CONTROL_PLANE_URL")
        );
        // stable's api has no control plane
        assert!(parse(&e, STABLE, Role::Api).is_ok());
        for bad in [
            "http://10.0.0.1:8081",
            "https://127.0.0.1:8081",
            "http://example.com:8081",
            "http://u:p@127.0.0.1:1",
        ] {
            let mut e = base();
            e.insert("XORB_CONTROL_PLANE_URL", bad);
            assert!(parse(&e, RC1, Role::Api).is_err(), "{bad}");
        }
        let mut e = base();
        e.insert("XORB_CONTROL_PLANE_URL", "http://localhost:9");
        assert!(parse(&e, RC1, Role::Api).is_ok());
    }

    #[test]
    fn stable_ignores_rc1_features() {
        let mut e = base();
        e.insert("EVIDENCE_SYSTEM_ENABLED", "true");
        e.insert("TENANT_ISOLATION_MODE", "advanced");
        let c = parse(&e, STABLE, Role::Api).unwrap();
        assert!(!c.evidence_enabled);
        assert_eq!(c.isolation_mode, IsolationMode::Basic);
        assert_eq!(c.warnings.len(), 2);
        let c = parse(&e, RC1, Role::Api).unwrap();
        assert!(c.evidence_enabled);
        assert_eq!(c.isolation_mode, IsolationMode::Advanced);
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn rc1_worker_with_evidence_needs_a_directory() {
        let mut e = base();
        e.insert("EVIDENCE_SYSTEM_ENABLED", "TRUE");
        e.remove("XORB_EVIDENCE_DIR");
        assert_eq!(
            parse(&e, RC1, Role::Worker).unwrap_err(),
            ConfigError::Missing("XORB_EVIDENCE_DIR")
        );
        assert!(parse(&e, STABLE, Role::Worker).is_ok());
        assert!(parse(&e, RC1, Role::Api).is_ok());
    }

    #[test]
    fn faults_only_on_loopback() {
        let mut e = base();
        e.insert("XORB_FAULT_ERROR_RATIO", "0.1");
        let c = parse(&e, STABLE, Role::Api).unwrap();
        assert_eq!(c.faults.error_ppm, 100_000);
        assert!(c.warnings.iter().any(|w| w.contains("fault injection")));
        for (k, v) in [
            ("XORB_FAULT_ERROR_RATIO", "0.1"),
            ("XORB_FAULTS_FILE", "/tmp/faults"),
        ] {
            let mut e = base();
            e.insert(k, v);
            e.insert("XORB_LISTEN_ADDR", "0.0.0.0:8080");
            let err = parse(&e, STABLE, Role::Api).unwrap_err().to_string();
            assert!(err.contains("loopback only"), "{err}");
        }
        let mut e = base();
        e.insert("XORB_LISTEN_ADDR", "0.0.0.0:8080");
        assert!(parse(&e, STABLE, Role::Api).unwrap().faults.is_empty());
    }

    #[test]
    fn loopback() {
        assert!(is_loopback("127.0.0.1".parse().unwrap()));
        assert!(is_loopback("127.255.0.9".parse().unwrap()));
        assert!(is_loopback("::1".parse().unwrap()));
        assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!is_loopback("10.0.0.1".parse().unwrap()));
        assert!(!is_loopback("::".parse().unwrap()));
    }
}
