//! PostgreSQL: the pool, the start-up schema check, and small helpers.

use crate::config::Secret;
use crate::release::Release;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot build the postgres pool: {0}")]
    Build(String),
    #[error("postgres unavailable: {}", chain(.0))]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("postgres: {}", chain(.0))]
    Query(#[from] tokio_postgres::Error),
}

/// For background loops: `postgres: <error with its causes>`.
pub fn pg<E: std::error::Error>(e: E) -> String {
    format!("postgres: {}", chain(&e))
}

/// An error and its sources on one line (skipping a source already part of the text).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        cur = s.source();
    }
    out
}

impl DbError {
    /// True when the database could not be reached at all (as opposed to a failing statement).
    pub fn is_unavailable(&self) -> bool {
        match self {
            DbError::Pool(_) => true,
            DbError::Query(e) => e.is_closed() || e.as_db_error().is_none(),
            DbError::Build(_) => false,
        }
    }
}

/// Exit code 3: the database is not on a schema revision this release runs on.
#[derive(Debug, thiserror::Error)]
#[error(
    "schema revision {found} is not accepted by {release} (it runs on: {accepted}); migrate the database or start the matching release"
)]
pub struct SchemaRevisionError {
    pub found: String,
    pub release: &'static str,
    pub accepted: String,
}

/// Where the database is, without credentials, for log lines.
pub fn describe(url: &Secret) -> String {
    match tokio_postgres::Config::from_str(url.expose()) {
        Ok(c) => {
            let host = match c.get_hosts().first() {
                Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
                Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
                None => "?".into(),
            };
            let port = c.get_ports().first().copied().unwrap_or(5432);
            format!(
                "{}@{}:{}/{}",
                c.get_user().unwrap_or("?"),
                host,
                port,
                c.get_dbname().unwrap_or("?")
            )
        }
        Err(_) => "<invalid DATABASE_URL>".into(),
    }
}

pub fn make_pool(url: &Secret, application_name: &str, max_size: usize) -> Result<Pool, DbError> {
    let mut pg = tokio_postgres::Config::from_str(url.expose())
        .map_err(|e| DbError::Build(e.to_string()))?;
    pg.application_name(application_name);
    pg.connect_timeout(Duration::from_secs(2));
    let mgr = Manager::from_config(
        pg,
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(mgr)
        .max_size(max_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(3)))
        .create_timeout(Some(Duration::from_secs(3)))
        .recycle_timeout(Some(Duration::from_secs(2)))
        .build()
        .map_err(|e| DbError::Build(e.to_string()))
}

/// `alembic_version.version_num`, or `None` when the table does not exist (never migrated).
pub async fn read_revision(pool: &Pool) -> Result<Option<String>, DbError> {
    let client = pool.get().await?;
    let exists: bool = client
        .query_one("SELECT to_regclass('alembic_version') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let row = client
        .query_opt("SELECT version_num FROM alembic_version LIMIT 1", &[])
        .await?;
    Ok(row.map(|r| r.get::<_, String>(0)))
}

pub fn check_revision(
    release: &'static Release,
    found: Option<&str>,
) -> Result<String, SchemaRevisionError> {
    let accepted = release.runs_on.join(", ");
    match found {
        Some(rev) if release.accepts_revision(rev) => Ok(rev.to_string()),
        Some(rev) => Err(SchemaRevisionError {
            found: rev.to_string(),
            release: release.name,
            accepted,
        }),
        None => Err(SchemaRevisionError {
            found: "none (no alembic_version)".into(),
            release: release.name,
            accepted,
        }),
    }
}

/// Wait until postgres answers, up to `patience`; returns the last error otherwise.
pub async fn wait_until_reachable(
    pool: &Pool,
    patience: Duration,
    shutdown: &crate::shutdown::Shutdown,
) -> Result<Option<String>, DbError> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut logged = false;
    loop {
        match read_revision(pool).await {
            Ok(rev) => return Ok(rev),
            Err(e) if e.is_unavailable() && tokio::time::Instant::now() < deadline => {
                if !logged {
                    tracing::warn!(error = %e, "postgres not reachable yet: retrying");
                    logged = true;
                }
                if !shutdown.sleep(Duration::from_millis(500)).await {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::{RC1, STABLE, find};

    #[test]
    fn revision_check() {
        let rc1 = find(RC1).unwrap();
        let stable = find(STABLE).unwrap();
        assert_eq!(check_revision(rc1, Some("8d9a2c3")).unwrap(), "8d9a2c3");
        let err = check_revision(rc1, Some("1a5be11"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("schema revision 1a5be11"), "{err}");
        assert!(err.contains("v2025.08-rc1"), "{err}");
        assert!(err.contains("8d9a2c3"), "{err}");
        assert!(check_revision(stable, Some("7c8f1b2")).is_ok());
        assert!(check_revision(stable, Some("3f2c7d1")).is_err());
        let err = check_revision(stable, None).unwrap_err().to_string();
        assert!(err.contains("no alembic_version"), "{err}");
        assert!(!err.contains('\n'));
    }

    #[test]
    fn describe_hides_the_password() {
        let d = describe(&crate::config::Secret::new(
            "postgres://xorb:pw123@127.0.0.1:5433/xorb",
        ));
        assert_eq!(d, "xorb@127.0.0.1:5433/xorb");
    }
}
