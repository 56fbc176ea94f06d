//! Webhook POSTs over HTTPS: rustls on ring (the one crypto provider of this binary, installed by `main`),
//! trusting the system's CA store plus the operator's `--notify-ca` PEM file.
//!
//! Not through reqwest: turning on its rustls backend for the workspace would make every other reqwest client of
//! every process that shares the build (xorb-svc, the integration tests) panic unless each installed a provider
//! first. Plain `http://` webhooks still go through reqwest.
//!
//! A certificate the client cannot trust is a configuration problem, not a passing fault: [`PostError::Refused`]
//! tells the sender never to retry that message. See `docs/design/governance.md`, "Notifications: HTTPS".

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// Installs ring as the process's rustls provider, once, before anything builds a TLS configuration (async-nats
/// and this module both use rustls; two providers in one binary make rustls refuse to pick).
pub fn install_crypto_provider() {
    // Err only means one is installed already, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("notification CA file {path}: {why}")]
    Unusable { path: PathBuf, why: String },
}

/// Why a POST did not get a 2xx answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostError {
    /// May work later (timeout, refused connection, HTTP 5xx): retry with backoff.
    Transient(String),
    /// Cannot work until a person changes something (an untrusted certificate): never retry.
    Refused(String),
}

/// An HTTPS client for webhooks; cheap to clone.
#[derive(Clone)]
pub struct TlsClient {
    config: Arc<rustls::ClientConfig>,
    timeout: Duration,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient").finish_non_exhaustive()
    }
}

/// The certificates of a PEM file; an error names the file and what is wrong with it.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let bad = |why: String| CaError::Unusable {
        path: path.to_path_buf(),
        why,
    };
    let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| bad(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(bad(
            "holds no certificate (expected one or more `-----BEGIN CERTIFICATE-----` blocks)"
                .into(),
        ));
    }
    Ok(certs)
}

impl TlsClient {
    /// Trusts the system's CA store and the certificates of `extra_ca`. A system store that cannot be read is no
    /// error (a machine may have none): with `--notify-ca` the client still works.
    pub fn new(extra_ca: Option<&Path>, timeout: Duration) -> Result<Self, CaError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        if let Some(path) = extra_ca {
            for cert in read_ca_file(path)? {
                roots.add(cert).map_err(|e| CaError::Unusable {
                    path: path.to_path_buf(),
                    why: format!("a certificate in it is not a usable CA: {e}"),
                })?;
            }
        }
        let provider = rustls::crypto::CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| CaError::Unusable {
                path: extra_ca.map(Path::to_path_buf).unwrap_or_default(),
                why: format!("no TLS version to offer: {e}"),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            config: Arc::new(config),
            timeout,
        })
    }

    /// POSTs `body` (JSON) with `headers` to the `https://` `url`; Ok(()) on a 2xx answer. Errors never quote
    /// the URL (its path is the webhook's secret), only its host.
    pub async fn post_json(
        &self,
        url: &reqwest::Url,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<(), PostError> {
        let host = url.host_str().unwrap_or("").to_string();
        match tokio::time::timeout(self.timeout, self.exchange(url, &host, headers, body)).await {
            Ok(r) => r,
            Err(_) => Err(PostError::Transient(format!(
                "no answer from webhook host {host} within {}s",
                self.timeout.as_secs()
            ))),
        }
    }

    async fn exchange(
        &self,
        url: &reqwest::Url,
        host: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<(), PostError> {
        let transient = |what: &str, e: &dyn std::fmt::Display| {
            PostError::Transient(format!("webhook host {host}: {what}: {e}"))
        };
        let bare = host.trim_matches(['[', ']']);
        if bare.is_empty() {
            return Err(PostError::Refused("a webhook URL has no host".into()));
        }
        let server_name = match bare.parse::<std::net::IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(bare.to_string())
                .map_err(|e| PostError::Refused(format!("webhook host {host}: {e}")))?,
        };
        let port = url.port_or_known_default().unwrap_or(443);
        let tcp = tokio::net::TcpStream::connect((bare, port))
            .await
            .map_err(|e| transient("cannot connect", &e))?;
        let tls = tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(server_name, tcp)
            .await
            .map_err(|e| match certificate_problem(&e, host) {
                Some(why) => PostError::Refused(why),
                None => transient("TLS handshake failed", &e),
            })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| transient("HTTP handshake failed", &e))?;
        let driver = tokio::spawn(conn);
        let mut path = url.path().to_string();
        if let Some(q) = url.query() {
            path = format!("{path}?{q}");
        }
        let authority = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or("")),
            None => url.host_str().unwrap_or("").to_string(),
        };
        let mut req = hyper::Request::post(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::CONTENT_TYPE, "application/json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| PostError::Refused(format!("webhook host {host}: bad request: {e}")))?;
        let answer = sender.send_request(req).await;
        driver.abort();
        let status = answer
            .map_err(|e| transient("no answer", &e))?
            .status()
            .as_u16();
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(PostError::Transient(format!(
                "the webhook answered HTTP {status}"
            )))
        }
    }
}

/// What is wrong with the server's certificate, for an on-call engineer, if the handshake failed because of it
/// (None: some other failure, which may pass).
pub fn certificate_problem(e: &std::io::Error, host: &str) -> Option<String> {
    // tokio-rustls wraps the rustls error as the io::Error's payload, which `source()` skips.
    let rustls::Error::InvalidCertificate(ce) = e.get_ref()?.downcast_ref::<rustls::Error>()?
    else {
        return None;
    };
    Some(describe_certificate_error(ce, host))
}

const HOW_TO_TRUST: &str = "if this receiver is the right one, give the CA that signed its certificate with \
                            --notify-ca FILE (PEM; or XORB_NOTIFY_CA, or `ca = \"FILE\"` in notify.toml)";

pub fn describe_certificate_error(ce: &rustls::CertificateError, host: &str) -> String {
    use rustls::CertificateError as C;
    let what = match ce {
        C::UnknownIssuer => format!(
            "the TLS certificate of webhook host {host} is not trusted (signed by an authority that neither \
             the system's CA store nor --notify-ca holds): {HOW_TO_TRUST}"
        ),
        C::NotValidForName | C::NotValidForNameContext { .. } => format!(
            "the TLS certificate of webhook host {host} is not valid for the name {host} (it was issued for \
             another host): check the webhook URL's host, or give the receiver a certificate for that name"
        ),
        C::Expired | C::ExpiredContext { .. } => format!(
            "the TLS certificate of webhook host {host} has expired: the receiver must renew it"
        ),
        C::NotValidYet | C::NotValidYetContext { .. } => format!(
            "the TLS certificate of webhook host {host} is not valid yet: check this machine's clock"
        ),
        C::Revoked => format!("the TLS certificate of webhook host {host} is revoked"),
        other => format!(
            "the TLS certificate of webhook host {host} was rejected ({other:?}): {HOW_TO_TRUST}"
        ),
    };
    format!("{what}; not retried")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_issuer_says_how_to_trust_it_and_that_it_is_not_retried() {
        let m =
            describe_certificate_error(&rustls::CertificateError::UnknownIssuer, "hooks.example");
        assert!(
            m.contains("webhook host hooks.example is not trusted"),
            "{m}"
        );
        assert!(m.contains("--notify-ca FILE"), "{m}");
        assert!(m.ends_with("not retried"), "{m}");
    }

    #[test]
    fn a_name_mismatch_says_the_certificate_is_for_another_host() {
        let m = describe_certificate_error(&rustls::CertificateError::NotValidForName, "127.0.0.1");
        assert!(m.contains("not valid for the name 127.0.0.1"), "{m}");
    }

    #[test]
    fn only_certificate_errors_are_refusals() {
        let cert = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert!(certificate_problem(&cert, "h").is_some());
        let other =
            std::io::Error::new(std::io::ErrorKind::InvalidData, rustls::Error::DecryptError);
        assert_eq!(certificate_problem(&other, "h"), None);
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(certificate_problem(&reset, "h"), None);
    }

    #[test]
    fn a_ca_file_without_certificates_is_bad_input_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ca.pem");
        std::fs::write(&p, "not a certificate\n").unwrap();
        let e = read_ca_file(&p).unwrap_err().to_string();
        assert!(e.contains(&p.display().to_string()), "{e}");
        assert!(e.contains("holds no certificate"), "{e}");
        let e = read_ca_file(&dir.path().join("missing.pem"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read it"), "{e}");
    }
}
