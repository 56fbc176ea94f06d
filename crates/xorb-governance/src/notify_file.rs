//! `<state-dir>/notify.toml`: where a run's notifications go. Parsed here (pure) so it is validated and fuzzed like
//! the other policy files; the CLI reads the file and checks the URLs' schemes.

use std::path::PathBuf;

use serde::Deserialize;

use crate::error::PolicyError;

/// The longest `updates` line (a channel or a URL people read in every message).
const UPDATES_MAX_CHARS: usize = 200;

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyFile {
    /// Webhook URLs: secrets (the path is the credential), never quoted in a message.
    #[serde(default)]
    pub urls: Vec<String>,
    pub templates: Option<PathBuf>,
    pub updates: Option<String>,
    /// Extra CA certificates (PEM) trusted for https:// webhooks, besides the system's store.
    pub ca: Option<PathBuf>,
}

impl NotifyFile {
    pub fn parse(file: &str, text: &str) -> Result<Self, PolicyError> {
        let parsed: NotifyFile = toml::from_str(text).map_err(|e| PolicyError::Parse {
            file: file.to_string(),
            message: without_values(text, &e),
        })?;
        if let Some(u) = &parsed.updates
            && (u.trim().is_empty() || u.chars().count() > UPDATES_MAX_CHARS)
        {
            return Err(PolicyError::invalid(
                file,
                "updates",
                format!(
                    "must be 1..={UPDATES_MAX_CHARS} characters (a channel like \"#rollback-status\")"
                ),
            ));
        }
        Ok(parsed)
    }
}

/// toml's message, unless it quotes a value: this file holds webhook URLs, and a mistyped one is still most of a
/// secret. The line number is always safe.
fn without_values(text: &str, e: &toml::de::Error) -> String {
    let line = e
        .span()
        .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    let message = e.message().trim_end();
    let shown = if message.contains('"') || message.contains('\'') {
        "a value of the wrong type or syntax (urls: a list of strings; templates: a path; updates: a string; ca: a path)"
    } else {
        message
    };
    match line {
        Some(n) => format!("line {n}: {shown}"),
        None => shown.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates() {
        let f = NotifyFile::parse(
            "n.toml",
            "urls = [\"http://127.0.0.1:9/x\"]\nupdates = \"#ops\"\n",
        )
        .unwrap();
        assert_eq!(f.urls.len(), 1);
        assert_eq!(f.updates.as_deref(), Some("#ops"));
        let e = NotifyFile::parse("n.toml", "updates = \"  \"\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("n.toml: updates: must be 1..=200"),
            "{e}"
        );
        let e = NotifyFile::parse("n.toml", "colour = 1\n").unwrap_err();
        assert!(
            e.to_string().contains("line 1") && e.to_string().contains("colour"),
            "{e}"
        );
    }

    #[test]
    fn a_malformed_file_never_quotes_a_url() {
        for text in [
            "urls = \"https://hooks.example.invalid/T000/SECRETPATH\"\n",
            "urls = [\"https://hooks.example.invalid/T000/SECRETPATH\", 3]\n",
            "urls = [\"https://hooks.example.invalid/T000/SECRETPATH\"\n",
            "updates = \"https://hooks.example.invalid/T000/SECRETPATH\nx",
        ] {
            let e = NotifyFile::parse("n.toml", text).unwrap_err().to_string();
            assert!(!e.contains("SECRETPATH") && e.contains("line"), "{e}");
        }
    }
}
