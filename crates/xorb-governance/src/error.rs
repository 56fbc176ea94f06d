use std::path::Path;

/// A policy file that cannot be used. Every variant names the file; `Invalid` also names the field, as a path
/// into the document (`severity[1].trigger[0].longer_than`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("{file}: cannot read: {message}")]
    Read { file: String, message: String },
    #[error("{file}: not valid TOML for this policy: {message}")]
    Parse { file: String, message: String },
    #[error("{file}: {field}: {message}")]
    Invalid {
        file: String,
        field: String,
        message: String,
    },
}

impl PolicyError {
    /// This error's exit code (`docs/exit-codes.md`): a policy file that cannot be used is bad input.
    pub fn exit(&self) -> xorb_model::exit::Exit {
        xorb_model::exit::Exit::BadInput
    }

    pub(crate) fn invalid(
        file: &str,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        PolicyError::Invalid {
            file: file.to_string(),
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn parse(file: &str, e: &toml::de::Error) -> Self {
        PolicyError::Parse {
            file: file.to_string(),
            message: e.to_string().trim_end().to_string(),
        }
    }
}

pub(crate) fn read(path: &Path) -> Result<(String, String), PolicyError> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => Ok((file, text)),
        Err(e) => Err(PolicyError::Read {
            file,
            message: e.to_string(),
        }),
    }
}
