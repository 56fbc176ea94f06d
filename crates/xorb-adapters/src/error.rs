//! What can go wrong outside a step (stack setup, `status`, `assess`): the adapters' own error, with its exit code.
//! Inside a step every failure is a `StepError` that says whether trying again may help.

#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("database: {what}: {source}")]
    Db {
        what: String,
        source: tokio_postgres::Error,
    },
    #[error("NATS: {what}: {why}")]
    Nats { what: String, why: String },
    #[error("alembic {what} failed: {why}")]
    Alembic { what: String, why: String },
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Release(#[from] xorb_model::release::ReleaseError),
    #[error(transparent)]
    Dep(#[from] crate::deps::DepError),
}

impl AdapterError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
    pub fn db(what: impl Into<String>, source: tokio_postgres::Error) -> Self {
        Self::Db {
            what: what.into(),
            source,
        }
    }
    pub fn nats(what: impl Into<String>, e: impl std::fmt::Display) -> Self {
        Self::Nats {
            what: what.into(),
            why: e.to_string(),
        }
    }
}

impl AdapterError {
    /// This error's exit code (`docs/exit-codes.md`): bad input when a release or configuration cannot be read,
    /// else a dependency that failed.
    pub fn exit(&self) -> xorb_model::exit::Exit {
        use xorb_model::exit::Exit;
        match self {
            AdapterError::Config(_) | AdapterError::Release(_) => Exit::BadInput,
            AdapterError::Io { .. }
            | AdapterError::Db { .. }
            | AdapterError::Nats { .. }
            | AdapterError::Alembic { .. }
            | AdapterError::Dep(_) => Exit::DependencyFailed,
        }
    }
}

impl From<AdapterError> for xorb_engine::runner::StepError {
    /// Outside the cases a step decides itself, a failure may pass: trying again is safe.
    fn from(e: AdapterError) -> Self {
        xorb_engine::runner::StepError::retryable(e.to_string())
    }
}
