//! Calls to the stack's dependencies (PostgreSQL, Redis, NATS, Prometheus, Alertmanager, the services), bounded in
//! time and named in errors.
//!
//! Why bounded: a stopped server (SIGSTOP, a hung host) still completes TCP handshakes, because the kernel answers
//! for it, so a client without a deadline of its own waits forever and the step only ends at its timeout with a
//! message that names nothing. Why named: "error sending request" sends the on-call engineer hunting at 3 a.m.;
//! "Redis at 127.0.0.1:6379 did not answer within 10 s (BGSAVE)" does not. Design: docs/design/rollback-semantics.md,
//! "When a dependency fails".

use std::fmt;
use std::future::Future;
use std::time::Duration;

/// How long a connection may take, handshake and authentication included.
pub const CONNECT: Duration = Duration::from_secs(5);
/// How long one request or command may take when nothing says otherwise.
pub const CALL: Duration = Duration::from_secs(10);

/// A dependency, as named in messages: what it is and where it listens (never a password).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dep {
    pub name: &'static str,
    pub addr: String,
}

impl Dep {
    pub fn new(name: &'static str, addr: impl Into<String>) -> Self {
        Self {
            name,
            addr: addr.into(),
        }
    }
    pub fn postgres(port: u16) -> Self {
        Self::new("PostgreSQL", format!("127.0.0.1:{port}"))
    }
    pub fn redis(port: u16) -> Self {
        Self::new("Redis", format!("127.0.0.1:{port}"))
    }
    pub fn nats(port: u16) -> Self {
        Self::new("NATS", format!("127.0.0.1:{port}"))
    }
    pub fn prometheus(port: u16) -> Self {
        Self::new("Prometheus", format!("127.0.0.1:{port}"))
    }
    pub fn alertmanager(port: u16) -> Self {
        Self::new("Alertmanager", format!("127.0.0.1:{port}"))
    }
    /// An HTTP dependency named after its URL's host and port (`http://127.0.0.1:9090/-/reload` → 127.0.0.1:9090).
    pub fn http(name: &'static str, url: &str) -> Self {
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let addr = rest.split('/').next().unwrap_or(rest);
        Self::new(name, addr.rsplit_once('@').map_or(addr, |(_, a)| a))
    }
}

impl fmt::Display for Dep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {}", self.name, self.addr)
    }
}

/// A dependency call that failed: it did not answer in time, or it answered with an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DepError {
    #[error(
        "{dep} did not answer within {} ({what}): it accepts connections but does not respond (stopped, hung or overloaded?)",
        secs(*limit)
    )]
    NoAnswer {
        dep: Dep,
        what: String,
        limit: Duration,
    },
    #[error("{dep}: {cause} ({what})")]
    Failed {
        dep: Dep,
        what: String,
        cause: String,
        kind: Cause,
    },
}

impl DepError {
    pub fn failed(dep: &Dep, what: &str, e: &(dyn std::error::Error + 'static)) -> Self {
        match classify(e) {
            Cause::TimedOut => DepError::NoAnswer {
                dep: dep.clone(),
                what: what.to_string(),
                limit: CALL,
            },
            c => DepError::Failed {
                dep: dep.clone(),
                what: what.to_string(),
                cause: c.describe(e),
                kind: c,
            },
        }
    }

    /// The dependency could not be reached or went silent, as opposed to answering "no": trying again once it is
    /// back may work.
    pub fn is_connection(&self) -> bool {
        match self {
            DepError::NoAnswer { .. } => true,
            DepError::Failed { kind, .. } => *kind != Cause::Other,
        }
    }
}

fn secs(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// Runs `fut`, a call to `dep`, within `limit`: the error says which dependency, what was asked and why it failed.
pub async fn call<T, E, F>(dep: &Dep, what: &str, limit: Duration, fut: F) -> Result<T, DepError>
where
    F: Future<Output = Result<T, E>>,
    E: std::error::Error + 'static,
{
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(match DepError::failed(dep, what, &e) {
            DepError::NoAnswer { dep, what, .. } => DepError::NoAnswer { dep, what, limit },
            other => other,
        }),
        Err(_) => Err(DepError::NoAnswer {
            dep: dep.clone(),
            what: what.to_string(),
            limit,
        }),
    }
}

/// The kinds of failure an on-call engineer acts on differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    Refused,
    Closed,
    TimedOut,
    Other,
}

impl Cause {
    fn describe(self, e: &(dyn std::error::Error + 'static)) -> String {
        match self {
            Cause::Refused => "connection refused: nothing listens there (is it running?)".into(),
            Cause::Closed => {
                "the connection was closed by the other side (did it stop or restart?)".into()
            }
            Cause::TimedOut => "timed out".into(),
            Cause::Other => chain(e),
        }
    }
}

/// The error and its sources, outermost first, without repeats ("error sending request: … : Connection refused").
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    parts.join(": ")
}

/// What went wrong underneath, from the io error in the chain, or failing that the words of the messages (some
/// clients keep the io error only as text).
pub fn classify(e: &(dyn std::error::Error + 'static)) -> Cause {
    use std::io::ErrorKind as K;
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            match io.kind() {
                K::ConnectionRefused => return Cause::Refused,
                K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
                    return Cause::Closed;
                }
                K::TimedOut => return Cause::TimedOut,
                _ => {}
            }
        }
        cur = err.source();
    }
    let text = chain(e).to_lowercase();
    if text.contains("connection refused") || text.contains("os error 111") {
        Cause::Refused
    } else if text.contains("timed out") || text.contains("timeout") || text.contains("deadline") {
        Cause::TimedOut
    } else if text.contains("connection reset")
        || text.contains("broken pipe")
        || text.contains("connection closed")
        || text.contains("unexpected end of file")
        || text.contains("unexpected eof")
    {
        Cause::Closed
    } else {
        Cause::Other
    }
}

/// The HTTP client for dependencies: a short connect timeout, and a per-request one (a request can ask for less).
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(CONNECT)
        .timeout(CALL)
        .build()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bound, never listened on and held for the test's life: a released
    /// port may be taken, or become the client's own end (a self-connection).
    fn closed_port() -> (tokio::net::TcpSocket, u16) {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = s.local_addr().unwrap().port();
        (s, port)
    }

    #[tokio::test]
    async fn a_refused_connection_names_the_dependency_the_address_and_the_cause() {
        let (_held, port) = closed_port();
        let dep = Dep::redis(port);
        let e = call(
            &dep,
            "connect",
            Duration::from_secs(5),
            tokio::net::TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("Redis at 127.0.0.1:{port}: connection refused")),
            "{msg}"
        );
        assert!(msg.ends_with("(connect)"), "{msg}");
    }

    #[tokio::test]
    async fn a_server_that_accepts_but_never_answers_is_cut_off_at_the_limit() {
        // The kernel completes the handshake into the backlog: exactly what a SIGSTOPped server looks like.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let dep = Dep::prometheus(port);
        let http = http_client();
        let e = call(
            &dep,
            "POST /-/reload",
            Duration::from_millis(300),
            http.post(format!("http://127.0.0.1:{port}/-/reload"))
                .send(),
        )
        .await
        .unwrap_err();
        assert_eq!(
            e,
            DepError::NoAnswer {
                dep: dep.clone(),
                what: "POST /-/reload".into(),
                limit: Duration::from_millis(300)
            }
        );
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!(
                "Prometheus at 127.0.0.1:{port} did not answer within 0.3 s (POST /-/reload)"
            )),
            "{msg}"
        );
        drop(l);
    }

    #[tokio::test]
    async fn reqwest_refusals_are_not_reported_as_a_bare_error_sending_request() {
        let (_held, port) = closed_port();
        let url = format!("http://127.0.0.1:{port}/api/v1/query");
        let e = http_client().get(&url).send().await.unwrap_err();
        let d = DepError::failed(&Dep::http("Prometheus", &url), "query", &e);
        let msg = d.to_string();
        assert!(
            msg.contains(&format!(
                "Prometheus at 127.0.0.1:{port}: connection refused"
            )),
            "{msg}"
        );
    }

    #[test]
    fn http_dependencies_are_named_by_host_and_port_without_credentials() {
        assert_eq!(
            Dep::http("Prometheus", "http://127.0.0.1:9090/-/reload").addr,
            "127.0.0.1:9090"
        );
        assert_eq!(
            Dep::http("Redis", "redis://:secret@127.0.0.1:6379/0").addr,
            "127.0.0.1:6379"
        );
    }

    #[test]
    fn causes_are_read_from_the_io_error_or_from_the_words() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(classify(&refused), Cause::Refused);
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(classify(&reset), Cause::Closed);
        let text = std::io::Error::other("Connection refused (os error 111)");
        assert_eq!(classify(&text), Cause::Refused);
        let other = std::io::Error::other("permission denied for table x");
        assert_eq!(classify(&other), Cause::Other);
        assert_eq!(
            DepError::failed(&Dep::postgres(5432), "connect", &other).to_string(),
            "PostgreSQL at 127.0.0.1:5432: permission denied for table x (connect)"
        );
    }
}
