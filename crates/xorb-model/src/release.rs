//! Release directories: `releases/<name>/release.toml` and the files it names.
//!
//! Loading reads files and validates them; it has no side effects. Every error says which file and what is wrong,
//! because an operator reading it at 3 a.m. has to fix the file, not guess.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The service order of the runbook (phase 2): api → orchestrator → control-plane → worker → scheduler.
pub const SERVICE_ORDER: [&str; 5] = [
    "api",
    "orchestrator",
    "control-plane",
    "worker",
    "scheduler",
];

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("release {name:?} not found: no directory {path}")]
    NotFound { name: String, path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid: {message}")]
    Invalid { path: PathBuf, message: String },
}

fn invalid(path: &Path, message: impl Into<String>) -> ReleaseError {
    ReleaseError::Invalid {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

impl ReleaseError {
    /// This error's exit code (`docs/exit-codes.md`): a release that cannot be used is bad input.
    pub fn exit(&self) -> crate::exit::Exit {
        crate::exit::Exit::BadInput
    }
}

fn read(path: &Path) -> Result<String, ReleaseError> {
    std::fs::read_to_string(path).map_err(|source| ReleaseError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// `release.toml` as written.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReleaseManifest {
    pub release: ReleaseMeta,
    pub schema: SchemaSpec,
    pub features: Features,
    pub config: ConfigSpec,
    pub services: BTreeMap<String, ServiceSpec>,
    pub nats: NatsSpec,
    pub redis: RedisSpec,
    pub monitoring: MonitoringSpec,
    pub k8s: K8sSpec,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReleaseMeta {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SchemaSpec {
    pub head: String,
    pub migrations: PathBuf,
    pub runs_on: Vec<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum IsolationMode {
    Basic,
    Advanced,
}

impl fmt::Display for IsolationMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Basic => "basic",
            Self::Advanced => "advanced",
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Features {
    pub evidence_system: bool,
    pub tenant_isolation_mode: IsolationMode,
    pub control_plane: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConfigSpec {
    pub shared: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub image: String,
    pub replicas: u32,
    pub config: PathBuf,
    pub port_name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NatsSpec {
    pub streams: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedisSpec {
    pub config: PathBuf,
    pub databases: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MonitoringSpec {
    pub prometheus: PathBuf,
    pub rules: Vec<PathBuf>,
    pub alertmanager: PathBuf,
    pub grafana: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct K8sSpec {
    pub manifests: PathBuf,
}

/// `nats/streams.yaml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StreamsFile {
    pub streams: Vec<StreamDef>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Retention {
    Limits,
    Interest,
    Workqueue,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    File,
    Memory,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StreamDef {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub subjects: Vec<String>,
    pub retention: Retention,
    pub storage: Storage,
    pub max_age_secs: u64,
    pub max_msgs: i64,
    pub max_bytes: i64,
    pub replicas: u32,
}

/// A service of a release, resolved: its image and its full environment (shared configmap, then its own file).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Service {
    pub name: String,
    pub image: String,
    pub replicas: u32,
    pub env: BTreeMap<String, String>,
}

/// A release directory, loaded and validated.
#[derive(Debug, Clone, Serialize)]
pub struct Release {
    pub dir: PathBuf,
    pub manifest: ReleaseManifest,
    /// In the runbook's order.
    pub services: Vec<Service>,
    pub shared_config: BTreeMap<String, String>,
    pub streams: Vec<StreamDef>,
}

impl Release {
    pub fn name(&self) -> &str {
        &self.manifest.release.name
    }

    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    pub fn path(&self, rel: &Path) -> PathBuf {
        self.dir.join(rel)
    }

    pub fn migrations_dir(&self) -> PathBuf {
        self.path(&self.manifest.schema.migrations)
    }

    /// Loads `<releases_root>/<name>/`.
    pub fn load_named(releases_root: &Path, name: &str) -> Result<Self, ReleaseError> {
        validate_name(name).map_err(|m| invalid(releases_root, m))?;
        let dir = releases_root.join(name);
        if !dir.join("release.toml").is_file() {
            return Err(ReleaseError::NotFound {
                name: name.to_string(),
                path: dir,
            });
        }
        let release = Self::load(&dir)?;
        if release.name() != name {
            return Err(invalid(
                &dir.join("release.toml"),
                format!(
                    "[release] name is {:?} but the directory is {name:?}",
                    release.name()
                ),
            ));
        }
        Ok(release)
    }

    pub fn load(dir: &Path) -> Result<Self, ReleaseError> {
        let toml_path = dir.join("release.toml");
        let manifest: ReleaseManifest =
            toml::from_str(&read(&toml_path)?).map_err(|e| invalid(&toml_path, e.to_string()))?;
        validate_manifest(&manifest).map_err(|m| invalid(&toml_path, m))?;
        check_paths_contained(dir, &manifest).map_err(|m| invalid(&toml_path, m))?;

        let shared_path = dir.join(&manifest.config.shared);
        let shared_config =
            parse_env_file(&read(&shared_path)?).map_err(|m| invalid(&shared_path, m))?;

        let mut services = Vec::new();
        for name in SERVICE_ORDER {
            let Some(spec) = manifest.services.get(name) else {
                continue;
            };
            let path = dir.join(&spec.config);
            let own = parse_env_file(&read(&path)?).map_err(|m| invalid(&path, m))?;
            let mut env = shared_config.clone();
            env.extend(own);
            services.push(Service {
                name: name.to_string(),
                image: spec.image.clone(),
                replicas: spec.replicas,
                env,
            });
        }

        let streams_path = dir.join(&manifest.nats.streams);
        let streams: StreamsFile = serde_saphyr::from_str(&read(&streams_path)?)
            .map_err(|e| invalid(&streams_path, e.to_string()))?;
        validate_streams(&streams.streams).map_err(|m| invalid(&streams_path, m))?;

        for rel in [
            &manifest.redis.config,
            &manifest.monitoring.prometheus,
            &manifest.monitoring.alertmanager,
        ]
        .into_iter()
        .chain(manifest.monitoring.rules.iter())
        {
            let p = dir.join(rel);
            if !p.is_file() {
                return Err(invalid(
                    &toml_path,
                    format!("names {} which does not exist", p.display()),
                ));
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
            services,
            shared_config,
            streams: streams.streams,
        })
    }
}

/// Every path the manifest names, with its key, must stay inside the tree the releases come from: the
/// directory holding `releases/` (the release directory's grandparent), where `migrations/` lives too.
fn check_paths_contained(dir: &Path, m: &ReleaseManifest) -> Result<(), String> {
    let tree = dir.join("../..");
    let mut named: Vec<(String, &Path)> = vec![
        ("schema.migrations".into(), &m.schema.migrations),
        ("config.shared".into(), &m.config.shared),
        ("nats.streams".into(), &m.nats.streams),
        ("redis.config".into(), &m.redis.config),
        ("monitoring.prometheus".into(), &m.monitoring.prometheus),
        ("monitoring.alertmanager".into(), &m.monitoring.alertmanager),
        ("monitoring.grafana".into(), &m.monitoring.grafana),
        ("k8s.manifests".into(), &m.k8s.manifests),
    ];
    for (i, r) in m.monitoring.rules.iter().enumerate() {
        named.push((format!("monitoring.rules[{i}]"), r));
    }
    for (name, s) in &m.services {
        named.push((format!("services.{name}.config"), &s.config));
    }
    for (key, rel) in named {
        crate::contained::resolve_inside(&tree, dir, rel).map_err(|e| {
            format!(
                "{key} = {:?} is refused: it {e}, and every path a release names must stay inside {}",
                rel.display(),
                tree.canonicalize().unwrap_or(tree.clone()).display()
            )
        })?;
    }
    Ok(())
}

/// Lists the release names under a releases root (directories holding a `release.toml`).
pub fn list_releases(releases_root: &Path) -> Result<Vec<String>, ReleaseError> {
    let rd = std::fs::read_dir(releases_root).map_err(|source| ReleaseError::Read {
        path: releases_root.to_path_buf(),
        source,
    })?;
    let mut names: Vec<String> = rd
        .filter_map(Result::ok)
        .filter(|e| e.path().join("release.toml").is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

/// A release name is a path component: refuse anything that could walk out of the releases root.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a release name (letters, digits, '.', '-', '_')"
        ))
    }
}

fn validate_manifest(m: &ReleaseManifest) -> Result<(), String> {
    validate_name(&m.release.name)?;
    if m.services.is_empty() {
        return Err("no [services.*] table".into());
    }
    for (name, s) in &m.services {
        if !SERVICE_ORDER.contains(&name.as_str()) {
            return Err(format!(
                "unknown service {name:?} (known: {})",
                SERVICE_ORDER.join(", ")
            ));
        }
        crate::limits::REPLICAS.check(&format!("services.{name}.replicas"), s.replicas)?;
        let want = format!("xorb/{name}:");
        if !s.image.starts_with(&want) || s.image.len() == want.len() {
            return Err(format!(
                "services.{name}.image {:?} must look like {want}TAG",
                s.image
            ));
        }
    }
    if m.schema.head.is_empty() || !m.schema.runs_on.contains(&m.schema.head) {
        return Err(format!(
            "schema.runs_on must include the head {:?}",
            m.schema.head
        ));
    }
    if m.features.control_plane != m.services.contains_key("control-plane") {
        return Err(
            "features.control_plane and the presence of [services.control-plane] disagree".into(),
        );
    }
    if m.redis.databases.iter().any(|d| *d > 15) || !m.redis.databases.contains(&0) {
        return Err("redis.databases must include 0 and name databases 0..=15".into());
    }
    Ok(())
}

fn validate_streams(streams: &[StreamDef]) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for (i, s) in streams.iter().enumerate() {
        if s.name.is_empty() || s.name.contains(['.', '*', '>', ' ']) {
            return Err(format!("stream name {:?} is not valid", s.name));
        }
        if !seen.insert(&s.name) {
            return Err(format!("stream {:?} is defined twice", s.name));
        }
        if s.subjects.is_empty() {
            return Err(format!("stream {:?} has no subjects", s.name));
        }
        check_stream_numbers(i, s)?;
    }
    Ok(())
}

/// `release.toml` text, parsed and validated as [`Release::load`] does before it reads the files it names (the
/// fuzz target; the message lacks the file, which the caller knows).
pub fn parse_manifest(text: &str) -> Result<ReleaseManifest, String> {
    let m: ReleaseManifest = toml::from_str(text).map_err(|e| e.to_string())?;
    validate_manifest(&m)?;
    Ok(m)
}

/// `nats/streams.yaml` text, parsed and validated as [`Release::load`] does.
pub fn parse_streams(text: &str) -> Result<Vec<StreamDef>, String> {
    let f: StreamsFile = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    validate_streams(&f.streams)?;
    Ok(f.streams)
}

fn check_stream_numbers(i: usize, s: &StreamDef) -> Result<(), String> {
    use crate::limits::{STREAM_MAX_AGE_SECS, STREAM_MAX_BYTES, STREAM_MAX_MSGS, STREAM_REPLICAS};
    let key = |k: &str| format!("streams[{i}].{k} (stream {:?})", s.name);
    STREAM_MAX_AGE_SECS.check(&key("max_age_secs"), s.max_age_secs)?;
    STREAM_MAX_MSGS.check(&key("max_msgs"), s.max_msgs)?;
    STREAM_MAX_BYTES.check(&key("max_bytes"), s.max_bytes)?;
    STREAM_REPLICAS.check(&key("replicas"), s.replicas)
}

/// `KEY=VALUE` lines; blank lines and `#` comments ignored. Keys are shell-style identifiers.
pub fn parse_env_file(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: expected KEY=VALUE", i + 1))?;
        let k = k.trim();
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("line {}: {k:?} is not a variable name", i + 1));
        }
        out.insert(k.to_string(), v.trim().to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../releases")
    }

    #[test]
    fn both_shipped_releases_load() {
        let stable = Release::load_named(&root(), "v2025.07-stable").unwrap();
        let rc1 = Release::load_named(&root(), "v2025.08-rc1").unwrap();
        assert_eq!(stable.manifest.schema.head, "1a5be11");
        assert!(stable.service("control-plane").is_none());
        let names: Vec<_> = rc1.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, SERVICE_ORDER);
        assert_eq!(
            rc1.service("api").unwrap().env["TENANT_ISOLATION_MODE"],
            "advanced"
        );
        assert!(rc1.streams.iter().any(|s| s.name == "xorb-tenant-streams"));
    }

    #[test]
    fn hostile_names_are_refused_before_any_read() {
        for bad in ["../etc", "", ".hidden", "a/b", "v1;rm"] {
            assert!(
                matches!(
                    Release::load_named(&root(), bad),
                    Err(ReleaseError::Invalid { .. })
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            Release::load_named(&root(), "v9.99"),
            Err(ReleaseError::NotFound { .. })
        ));
    }

    #[test]
    fn env_files_reject_garbage_with_the_line() {
        assert_eq!(parse_env_file("A=1\n# c\n\nB = x=y\n").unwrap()["B"], "x=y");
        assert_eq!(
            parse_env_file("A=1\nnope\n").unwrap_err(),
            "line 2: expected KEY=VALUE"
        );
    }

    #[test]
    fn a_malformed_manifest_names_its_file() {
        let dir = std::env::temp_dir().join(format!("xorb-model-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("release.toml"), "[release]\nname = 3\n").unwrap();
        let err = Release::load(&dir).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(err.contains("release.toml is not valid"), "{err}");
    }

    fn shipped_manifest(name: &str) -> ReleaseManifest {
        let text = std::fs::read_to_string(root().join(name).join("release.toml")).unwrap();
        toml::from_str(&text).unwrap()
    }

    #[test]
    fn replicas_out_of_range_are_refused_with_key_and_range() {
        let mut m = shipped_manifest("v2025.08-rc1");
        assert_eq!(validate_manifest(&m), Ok(()));
        m.services.get_mut("api").unwrap().replicas = 4_000_000_000;
        assert_eq!(
            validate_manifest(&m),
            Err(
                "services.api.replicas = 4000000000 is out of range: allowed 1..=100 replicas"
                    .into()
            )
        );
        m.services.get_mut("api").unwrap().replicas = 0;
        assert!(validate_manifest(&m).unwrap_err().contains("replicas = 0"));
    }

    #[test]
    fn stream_numbers_out_of_range_are_refused_with_key_and_range() {
        let text = std::fs::read_to_string(root().join("v2025.08-rc1/nats/streams.yaml")).unwrap();
        let shipped: StreamsFile = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(validate_streams(&shipped.streams), Ok(()));
        type Edit = fn(&mut StreamDef);
        let cases: [(Edit, &str); 6] = [
            (
                |s| s.max_age_secs = u64::MAX,
                "streams[1].max_age_secs (stream \"xorb-events\") = 18446744073709551615 is out of range: allowed 0..=31536000",
            ),
            (
                |s| s.max_msgs = 0,
                "streams[1].max_msgs (stream \"xorb-events\") = 0 is out of range: allowed -1 (no limit) or 1..=1000000000 messages",
            ),
            (
                |s| s.max_msgs = -2,
                "max_msgs (stream \"xorb-events\") = -2",
            ),
            (
                |s| s.max_bytes = i64::MAX,
                "max_bytes (stream \"xorb-events\") = 9223372036854775807 is out of range: allowed -1 (no limit) or 1..=1099511627776 bytes",
            ),
            (
                |s| s.replicas = 6,
                "replicas (stream \"xorb-events\") = 6 is out of range: allowed 1..=5 replicas",
            ),
            (|s| s.replicas = 0, "replicas (stream \"xorb-events\") = 0"),
        ];
        for (edit, want) in cases {
            let mut streams = shipped.streams.clone();
            edit(&mut streams[1]);
            let e = validate_streams(&streams).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
    }
}
