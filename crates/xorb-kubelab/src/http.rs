//! The smallest client the lab needs to watch its own servers come up, and tests to look at raw status codes:
//! one HTTP/1.0 request per connection (no chunked bodies to decode), over TLS with the lab's CA only, to
//! 127.0.0.1. Blocking, with timeouts.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// A response: status code and body (headers dropped).
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (the API server's `Status` objects carry `code` and `reason`).
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// A TLS client configuration that trusts exactly `ca_der`, on ring (set explicitly: no process-wide
/// CryptoProvider is installed or needed).
pub(crate) fn tls_config(ca_der: &[u8]) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca_der.to_vec()))
        .map_err(|e| format!("the lab CA is not a usable root: {e}"))?;
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS versions: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}

pub(crate) struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub bearer: Option<&'a str>,
    pub body: Option<(&'a str, &'a [u8])>,
}

fn request_bytes(req: &Request<'_>, port: u16) -> Vec<u8> {
    let mut head = format!(
        "{} {} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nAccept: application/json\r\nUser-Agent: xorb-kubelab\r\n",
        req.method, req.path
    );
    if let Some(token) = req.bearer {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    let mut out = Vec::new();
    match req.body {
        Some((content_type, body)) => {
            head.push_str(&format!(
                "Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
                body.len()
            ));
            out.extend_from_slice(head.as_bytes());
            out.extend_from_slice(body);
        }
        None => {
            head.push_str("\r\n");
            out.extend_from_slice(head.as_bytes());
        }
    }
    out
}

fn parse(raw: &[u8]) -> std::io::Result<Response> {
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers in the response"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("headers are not UTF-8"))?;
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad("no status line"))?;
    Ok(Response {
        status,
        body: raw[end + 4..].to_vec(),
    })
}

/// Plain HTTP to 127.0.0.1:`port` (etcd's client port).
pub(crate) fn plain(port: u16, path: &str, timeout: Duration) -> std::io::Result<Response> {
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    let mut tcp = TcpStream::connect_timeout(&addr, timeout)?;
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(timeout))?;
    let req = Request {
        method: "GET",
        path,
        bearer: None,
        body: None,
    };
    tcp.write_all(&request_bytes(&req, port))?;
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw)?;
    parse(&raw)
}

/// HTTPS to 127.0.0.1:`port`, the server's certificate checked against the lab CA for the name 127.0.0.1.
pub(crate) fn tls(
    config: &Arc<ClientConfig>,
    port: u16,
    req: &Request<'_>,
    timeout: Duration,
) -> std::io::Result<Response> {
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    let tcp = TcpStream::connect_timeout(&addr, timeout)?;
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(timeout))?;
    let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into());
    let conn = ClientConnection::new(config.clone(), name)
        .map_err(|e| std::io::Error::other(format!("TLS: {e}")))?;
    let mut stream = StreamOwned::new(conn, tcp);
    stream.write_all(&request_bytes(req, port))?;
    stream.flush()?;
    let mut raw = Vec::new();
    match stream.read_to_end(&mut raw) {
        Ok(_) => {}
        // A server that closes the socket without close_notify after a full HTTP/1.0 response.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e),
    }
    parse(&raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_body() {
        let r = parse(
            b"HTTP/1.0 403 Forbidden\r\nContent-Type: application/json\r\n\r\n{\"code\":403}",
        )
        .unwrap();
        assert_eq!(r.status, 403);
        assert_eq!(r.json().unwrap()["code"], 403);
        assert!(parse(b"HTTP/1.0 200 OK\r\n").is_err());
    }

    #[test]
    fn request_carries_length_and_bearer() {
        let req = Request {
            method: "POST",
            path: "/x",
            bearer: Some("t0k"),
            body: Some(("application/json", b"{}")),
        };
        let text = String::from_utf8(request_bytes(&req, 6443)).unwrap();
        assert!(text.starts_with("POST /x HTTP/1.0\r\n"));
        assert!(text.contains("Authorization: Bearer t0k\r\n"));
        assert!(text.ends_with("Content-Length: 2\r\n\r\n{}"));
    }
}
