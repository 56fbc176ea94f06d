//! The target file: which namespace XORB runs in and how this machine reaches its stateful dependencies. Parsed
//! and validated with no I/O; credentials are references to Kubernetes Secrets, never values, so the file can
//! be read by anyone who may read the cluster's topology.
//!
//! ```toml
//! namespace = "xorb"
//! evidence_dir = "/srv/xorb/evidence"        # optional: where the evidence volume is reachable from here
//! nats = "nats://127.0.0.1:4222"
//! prometheus = "http://127.0.0.1:9090"
//! alertmanager = "http://127.0.0.1:9093"     # optional
//! [postgres]
//! host = "127.0.0.1"
//! port = 5432
//! user = "xorb"
//! database = "xorb"
//! password = { secret = "xorb-db", key = "password" }
//! [redis]
//! host = "127.0.0.1"
//! port = 6379
//! password = { secret = "xorb-redis-auth", key = "password" }
//! [services]
//! api = "http://127.0.0.1:8000"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A key of a Kubernetes Secret in the target's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    pub secret: String,
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgSpec {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub database: String,
    pub password: SecretRef,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSpec {
    pub host: String,
    pub port: u16,
    pub password: SecretRef,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetFile {
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence_dir: Option<PathBuf>,
    pub nats: String,
    pub prometheus: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alertmanager: Option<String>,
    pub postgres: PgSpec,
    pub redis: RedisSpec,
    /// Service name (`api`) → `http://host:port` of its API as this machine reaches it.
    #[serde(default)]
    pub services: BTreeMap<String, String>,
    /// Scrape job (`xorb-api`) → `host:port` where Prometheus reaches it, when not at the release's Service
    /// name (a cluster without DNS for its Services, such as the test lab). Jobs not named keep the release's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub scrape_targets: BTreeMap<String, String>,
    /// `host:port` where Prometheus reaches Alertmanager, when not at the release's Service name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerting_target: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{path}: {why}")]
pub struct SpecError {
    pub path: String,
    pub why: String,
}

impl TargetFile {
    /// Parses and validates the file's text; `path` is only for messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, SpecError> {
        let err = |why: String| SpecError {
            path: path.display().to_string(),
            why,
        };
        let f: TargetFile = toml::from_str(text).map_err(|e| {
            let why = e.to_string();
            // A password written inline is the one mistake worth naming: the value must not be in a file.
            if why.contains("invalid type: string") && why.contains("password") {
                err(format!(
                    "a password is a reference to a Kubernetes Secret, {{ secret = \"NAME\", key = \"KEY\" }}, never a value:\n{why}"
                ))
            } else {
                err(why)
            }
        })?;
        f.validate().map_err(err)?;
        Ok(f)
    }

    pub fn load(path: &Path) -> Result<Self, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|e| SpecError {
            path: path.display().to_string(),
            why: format!("cannot read the target file: {e}"),
        })?;
        Self::parse(&text, path)
    }

    fn validate(&self) -> Result<(), String> {
        dns_label("namespace", &self.namespace)?;
        for (what, r) in [
            ("postgres.password", &self.postgres.password),
            ("redis.password", &self.redis.password),
        ] {
            dns_subdomain(&format!("{what}.secret"), &r.secret)?;
            if r.key.is_empty() {
                return Err(format!("{what}.key is empty"));
            }
        }
        for (what, port) in [
            ("postgres.port", self.postgres.port),
            ("redis.port", self.redis.port),
        ] {
            if port == 0 {
                return Err(format!("{what} is 0"));
            }
        }
        url("nats", &self.nats, &["nats://"])?;
        url("prometheus", &self.prometheus, &["http://", "https://"])?;
        if let Some(a) = &self.alertmanager {
            url("alertmanager", a, &["http://", "https://"])?;
        }
        for (name, u) in &self.services {
            if !xorb_model::release::SERVICE_ORDER.contains(&name.as_str()) {
                return Err(format!(
                    "services.{name}: not a service of XORB (one of {})",
                    xorb_model::release::SERVICE_ORDER.join(", ")
                ));
            }
            url(&format!("services.{name}"), u, &["http://", "https://"])?;
        }
        for (job, a) in &self.scrape_targets {
            host_port(&format!("scrape_targets.{job}"), a)?;
        }
        if let Some(a) = &self.alerting_target {
            host_port("alerting_target", a)?;
        }
        Ok(())
    }
}

fn url(what: &str, u: &str, schemes: &[&str]) -> Result<(), String> {
    let Some(rest) = schemes.iter().find_map(|s| u.strip_prefix(s)) else {
        return Err(format!(
            "{what} = {u:?}: expected a URL starting with {}",
            schemes.join(" or ")
        ));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('@') {
        return Err(format!(
            "{what}: the URL carries credentials; passwords are references to Kubernetes Secrets"
        ));
    }
    if authority.is_empty() {
        return Err(format!("{what} = {u:?}: no host"));
    }
    Ok(())
}

fn host_port(what: &str, v: &str) -> Result<(), String> {
    match v.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            Ok(())
        }
        _ => Err(format!("{what} = {v:?}: expected host:port")),
    }
}

fn dns_label(what: &str, v: &str) -> Result<(), String> {
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !v.starts_with('-')
        && !v.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} = {v:?}: not a Kubernetes name (lower-case letters, digits and '-', at most 63)"
        ))
    }
}

fn dns_subdomain(what: &str, v: &str) -> Result<(), String> {
    if v.len() <= 253 && v.split('.').all(|l| dns_label(what, l).is_ok()) {
        Ok(())
    } else {
        Err(format!("{what} = {v:?}: not a Kubernetes object name"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
namespace = "xorb"
nats = "nats://127.0.0.1:4222"
prometheus = "http://127.0.0.1:9090"
[postgres]
host = "127.0.0.1"
port = 5432
user = "xorb"
database = "xorb"
password = { secret = "xorb-db", key = "password" }
[redis]
host = "127.0.0.1"
port = 6379
password = { secret = "xorb-redis-auth", key = "password" }
[services]
api = "http://127.0.0.1:8000"
"#;

    fn parse(text: &str) -> Result<TargetFile, SpecError> {
        TargetFile::parse(text, Path::new("kube.toml"))
    }

    #[test]
    fn a_good_file_round_trips() {
        let f = parse(GOOD).unwrap();
        assert_eq!(f.postgres.password.secret, "xorb-db");
        assert_eq!(f.services["api"], "http://127.0.0.1:8000");
        let again = parse(&toml::to_string(&f).unwrap()).unwrap();
        assert_eq!(again, f);
    }

    #[test]
    fn an_inline_password_is_refused_and_named() {
        let bad = GOOD.replace(
            "password = { secret = \"xorb-db\", key = \"password\" }",
            "password = \"hunter2\"",
        );
        let e = parse(&bad).unwrap_err();
        assert!(e.why.contains("reference to a Kubernetes Secret"), "{e}");
        assert!(e.to_string().starts_with("kube.toml: "), "{e}");
    }

    #[test]
    fn bad_values_say_which_key() {
        for (from, to, says) in [
            (
                "namespace = \"xorb\"",
                "namespace = \"Xorb_1\"",
                "namespace",
            ),
            (
                "nats = \"nats://127.0.0.1:4222\"",
                "nats = \"127.0.0.1:4222\"",
                "nats",
            ),
            (
                "prometheus = \"http://127.0.0.1:9090\"",
                "prometheus = \"http://admin:pw@127.0.0.1:9090\"",
                "credentials",
            ),
            (
                "api = \"http://127.0.0.1:8000\"",
                "gateway = \"http://127.0.0.1:8000\"",
                "services.gateway",
            ),
            ("port = 6379", "port = 0", "redis.port"),
            (
                "key = \"password\" }\n[redis]",
                "key = \"\" }\n[redis]",
                "postgres.password.key",
            ),
            (
                "namespace = \"xorb\"",
                "namespace = \"xorb\"\nextra = 1",
                "extra",
            ),
            (
                "namespace = \"xorb\"",
                "namespace = \"xorb\"\nalerting_target = \"alertmanager\"",
                "alerting_target",
            ),
        ] {
            assert!(GOOD.contains(from), "{from}");
            let e = parse(&GOOD.replacen(from, to, 1)).unwrap_err();
            assert!(e.why.contains(says), "{says}: {e}");
        }
    }
}
