//! The one redactor of a command invocation, built in one place ([`redactor`]) for every command: the run's
//! terminal lines, journal, log file and notifications, the governance entries of the audit trail, `show`,
//! `report`, `plan`, the dashboard and `main`'s error messages all hide the same secrets. See
//! `docs/design/governance.md`, "Secrets, by value".

use std::path::Path;
use std::sync::OnceLock;

use xorb_model::redact::Redactor;

use crate::settings::RedactionSources;

/// The redactor of this invocation, from where the settings say the secrets are: the stack's secrets, the audit
/// signing key, the releases' and the live services' configuration, our environment, and the notification webhook
/// URLs (`--notify`, `XORB_NOTIFY_URLS`, `notify.toml`). Best effort: a source that cannot be read is skipped
/// (a command that needs it fails on it itself), since redaction must never stop a command. The dispatcher builds
/// it once, before the command runs.
pub fn redactor(src: &RedactionSources) -> Redactor {
    let urls = crate::notify::webhook_urls(&src.state_dir, &src.notify).unwrap_or_default();
    build(&src.state_dir, src.releases_root.as_deref(), &urls)
}

static PROCESS_REDACTOR: OnceLock<Redactor> = OnceLock::new();

/// The redactor of this process: every secret the tool read so far (clones share one registry, so what
/// [`redactor`] registers later is covered too). `main` redacts error messages with it.
pub fn process_redactor() -> &'static Redactor {
    PROCESS_REDACTOR.get_or_init(Redactor::new)
}

/// Configuration keys whose values are secrets: `*PASSWORD*`, `*SECRET*`, `*TOKEN*`, `*KEY*` (not public keys),
/// `*CREDENTIAL*`.
pub fn key_looks_secret(key: &str) -> bool {
    let k = key.to_ascii_uppercase();
    let public = k.contains("PUBLIC") || k.contains("PUBKEY") || k.ends_with("_PUB");
    ["PASSWORD", "PASSWD", "SECRET", "TOKEN", "CREDENTIAL"]
        .iter()
        .any(|w| k.contains(w))
        || (k.contains("KEY") && !public)
}

/// Registers a configuration value: a secret by its key, or any URL with credentials (its password).
fn add_config_value(r: &Redactor, key: &str, value: &str) {
    let v = value.trim().trim_matches('"').trim_matches('\'');
    if key_looks_secret(key) {
        r.add(v);
    }
    if v.contains("://") && v.contains('@') {
        r.add(v);
    }
}

/// `KEY=VALUE` lines of an env file (comments and blanks skipped).
fn env_pairs(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("export ").unwrap_or(l).split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn add_json_strings(r: &Redactor, v: &serde_json::Value) {
    match v {
        serde_json::Value::String(s) => {
            r.add(s);
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| add_json_strings(r, x)),
        serde_json::Value::Object(o) => o.values().for_each(|x| add_json_strings(r, x)),
        _ => {}
    }
}

/// The redactor loaded with every secret the tool can read: the stack's
/// `secrets/` (DB and Redis passwords, tenant tokens, the capture identity, any other file there), the audit
/// signing key, secret-looking configuration values of every release under `releases_root` and of the live
/// services (`stack.json`), secret-looking variables of our own environment, URLs with credentials, and the
/// notification webhook URLs. Missing sources are skipped: redaction must never stop a command.
fn build(state_dir: &Path, releases_root: Option<&Path>, webhooks: &[String]) -> Redactor {
    let r = process_redactor().clone();
    let mut values: Vec<String> = Vec::new();
    if let Ok(entries) = std::fs::read_dir(state_dir.join("secrets")) {
        for e in entries.flatten() {
            let Ok(text) = std::fs::read_to_string(e.path()) else {
                continue;
            };
            if e.path().extension().is_some_and(|x| x == "json") {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                    add_json_strings(&r, &v);
                }
                continue;
            }
            values.push(text.trim().to_string());
            // Multi-line secrets (an age identity with its comments): each secret line on its own too.
            values.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.starts_with('#'))
                    .map(str::to_string),
            );
        }
    }
    if let Ok(entries) = std::fs::read_dir(state_dir.join("audit")) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".pem")
                && !name.contains(".pub")
                && let Ok(text) = std::fs::read_to_string(e.path())
            {
                values.extend(
                    text.lines()
                        .filter(|l| !l.starts_with("-----"))
                        .map(str::to_string),
                );
            }
        }
    }
    r.add_all(values);
    if let Some(root) = releases_root
        && let Ok(releases) = std::fs::read_dir(root)
    {
        for rel in releases.flatten() {
            let Ok(files) = std::fs::read_dir(rel.path().join("config")) else {
                continue;
            };
            for f in files.flatten() {
                if let Ok(text) = std::fs::read_to_string(f.path()) {
                    for (k, v) in env_pairs(&text) {
                        add_config_value(&r, &k, &v);
                    }
                }
            }
        }
    }
    if let Ok(text) = std::fs::read_to_string(state_dir.join("stack.json"))
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
    {
        for svc in v["services"].as_array().into_iter().flatten() {
            for (k, val) in svc["config"].as_object().into_iter().flatten() {
                if let Some(val) = val.as_str() {
                    add_config_value(&r, k, val);
                }
            }
        }
    }
    for (k, v) in std::env::vars() {
        add_config_value(&r, &k, &v);
    }
    for url in webhooks {
        r.add_webhook_url(url);
    }
    r
}
