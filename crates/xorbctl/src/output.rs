//! All output goes through the reporter: human lines on a terminal or in a pipe, JSON documents with
//! `--output json`. Errors go to stderr in both cases.

use std::io::IsTerminal;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Format {
    #[default]
    Text,
    Json,
}

pub struct Reporter {
    pub format: Format,
    #[allow(dead_code)] // progress bars come with the rollback executor
    pub terminal: bool,
}

impl Reporter {
    pub fn new(format: Format) -> Self {
        Self {
            format,
            terminal: std::io::stdout().is_terminal(),
        }
    }

    /// A line for people; silent in JSON mode (machines get the final document).
    pub fn line(&self, text: impl AsRef<str>) {
        if self.format == Format::Text {
            println!("{}", text.as_ref());
        }
    }

    /// The command's result: JSON in JSON mode, otherwise rendered by `text`.
    pub fn result<T: Serialize>(&self, value: &T, text: impl FnOnce(&T) -> String) {
        match self.format {
            Format::Json => println!(
                "{}",
                serde_json::to_string_pretty(value).unwrap_or_default()
            ),
            Format::Text => print!("{}", text(value)),
        }
    }

    pub fn error(&self, e: &anyhow::Error) {
        match self.format {
            Format::Json => {
                let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
                eprintln!(
                    "{}",
                    serde_json::json!({"error": e.to_string(), "causes": chain})
                );
            }
            Format::Text => {
                eprintln!("error: {e}");
                for cause in e.chain().skip(1) {
                    eprintln!("  caused by: {cause}");
                }
            }
        }
    }
}
