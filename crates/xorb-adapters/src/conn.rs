//! How to reach a PostgreSQL database: its endpoint and credentials, and a bounded connect.

use std::time::Duration;

use crate::AdapterError;
use crate::deps;

/// Connection parameters of a database (the password is a secret: never print a URL from here).
#[derive(Debug, Clone)]
pub struct PgConn {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub dbname: String,
}

impl PgConn {
    /// For a child's environment only (DATABASE_URL): it holds the password.
    pub fn url(&self) -> String {
        format!(
            "postgres://{}:{}@{}:{}/{}",
            self.user, self.password, self.host, self.port, self.dbname
        )
    }

    pub fn config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host(&self.host)
            .port(self.port)
            .user(&self.user)
            .password(&self.password)
            .dbname(&self.dbname)
            .connect_timeout(Duration::from_secs(5));
        c
    }

    pub fn with_db(&self, dbname: &str) -> Self {
        Self {
            dbname: dbname.to_string(),
            ..self.clone()
        }
    }

    /// Connects within [`deps::CONNECT`], authentication included: the driver's own connect timeout covers only
    /// the TCP handshake, which a stopped server's kernel still completes.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, AdapterError> {
        let what = format!("connect to database {}", self.dbname);
        let (client, conn) = deps::call(
            &deps::Dep::postgres(self.port),
            &what,
            deps::CONNECT,
            self.config().connect(tokio_postgres::NoTls),
        )
        .await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// libpq's environment for the client tools: everything but the program's own options.
    pub fn env(&self, cmd: &mut tokio::process::Command) {
        cmd.env("PGHOST", &self.host)
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", &self.user)
            .env("PGDATABASE", &self.dbname)
            .env("PGPASSWORD", &self.password)
            .env("PGCONNECT_TIMEOUT", "10");
    }

    /// `text` with the password replaced (tools quote their connection in errors).
    pub fn redact(&self, text: &str) -> String {
        if self.password.is_empty() {
            text.to_string()
        } else {
            text.replace(&self.password, xorb_model::redact::REDACTED)
        }
    }
}
