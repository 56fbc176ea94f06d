//! Notifications over HTTPS to receivers on 127.0.0.1 with certificates made here by `openssl`: delivered when
//! the receiver's CA is given (`XORB_NOTIFY_CA` / `--notify-ca`), refused at once and never retried when it is
//! not trusted or is for another name, with the reason in the journal and no webhook token in any error.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;
use tokio_rustls::rustls;

use crate::common::*;
use crate::notify::{Receiver, token};

const RC1: &str = "v2025.08-rc1";
const STABLE: &str = "v2025.07-stable";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl {args:?}: {}", text(&out));
}

/// A CA (`NAME-ca.pem`, `NAME-ca.key`) made in `dir`.
fn make_ca(dir: &Path, name: &str) -> PathBuf {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}-ca.key"),
            "-out",
            &format!("{name}-ca.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN=xorb test CA {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    dir.join(format!("{name}-ca.pem"))
}

/// A server certificate for `san` (`IP:127.0.0.1`, `DNS:other.example`) signed by CA `ca`: (cert, key) paths.
fn make_leaf(dir: &Path, ca: &str, name: &str, san: &str) -> (PathBuf, PathBuf) {
    let ext = dir.join(format!("{name}.ext"));
    std::fs::write(
        &ext,
        format!(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName={san}\n"
        ),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}-ca.pem"),
            "-CAkey",
            &format!("{ca}-ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &format!("{name}.pem"),
            "-extfile",
            ext.to_str().unwrap(),
        ],
    );
    (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    )
}

/// TLS in front of the test receiver; counts handshakes the client gave up on.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    refused_handshakes: Arc<AtomicUsize>,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            match self.acceptor.accept(tcp).await {
                Ok(tls) => return (tls, addr),
                Err(_) => {
                    self.refused_handshakes.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

struct TlsReceiver {
    hook: Receiver,
    refused_handshakes: Arc<AtomicUsize>,
}

async fn tls_receiver(cert: &Path, key: &Path) -> TlsReceiver {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("https://{}", tcp.local_addr().unwrap());
    let refused_handshakes = Arc::new(AtomicUsize::new(0));
    let listener = TlsListener {
        tcp,
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        refused_handshakes: refused_handshakes.clone(),
    };
    TlsReceiver {
        hook: Receiver::serve(listener, base, 200),
        refused_handshakes,
    }
}

/// `rollback --only api` that stops at its P1 approval gate: it journals a run and owes its initiation message,
/// and changes nothing on the stack, so one stack serves several runs.
async fn gated_run(st: &Stack, env: &[(&str, String)]) -> (std::process::Output, Value) {
    let out = crate::notify::run(
        st,
        &[
            "rollback",
            "--from",
            RC1,
            "--to",
            STABLE,
            "--only",
            "api",
            "--yes",
            "--severity",
            "P1",
            "--as",
            "alice",
        ],
        env,
    )
    .await;
    assert_eq!(out.status.code(), Some(9), "{}", text(&out));
    let shown = st.xorbctl(&["show", "latest", "--output", "json"]);
    assert!(shown.status.success(), "{}", text(&shown));
    (out, serde_json::from_slice(&shown.stdout).unwrap())
}

/// The journaled delivery of the run's initiation message to the webhook of `url`.
fn delivery<'a>(shown: &'a Value, url: &str) -> &'a Value {
    use sha2::Digest;
    let sink = format!(
        "webhook:{}",
        &hex::encode(sha2::Sha256::digest(url.as_bytes()))[..12]
    );
    shown["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["sink"] == sink && n["kind"] == "initiation")
        .unwrap_or_else(|| panic!("no initiation for {sink}: {:#}", shown["notifications"]))
}

#[tokio::test(flavor = "multi_thread")]
async fn https_webhooks_are_delivered_with_their_ca_and_refused_without_retry_otherwise() {
    let st = Stack::up(RC1, false);
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path();
    let ca = make_ca(dir, "ours");
    let other_ca = make_ca(dir, "theirs");
    let (ip_cert, ip_key) = make_leaf(dir, "ours", "ip", "IP:127.0.0.1");
    let (name_cert, name_key) = make_leaf(dir, "ours", "other", "DNS:other.example");
    let (stranger_cert, stranger_key) = make_leaf(dir, "theirs", "stranger", "IP:127.0.0.1");
    assert!(other_ca.exists());

    let good = tls_receiver(&ip_cert, &ip_key).await;
    let wrong_name = tls_receiver(&name_cert, &name_key).await;
    let untrusted = tls_receiver(&stranger_cert, &stranger_key).await;
    let tokens = [token(), token(), token()];
    let good_url = format!("{}/services/T1/B1/{}", good.hook.base, tokens[0]);
    let wrong_name_url = format!("{}/services/T2/B2/{}", wrong_name.hook.base, tokens[1]);
    let untrusted_url = format!("{}/services/T3/B3/{}", untrusted.hook.base, tokens[2]);

    // 1. With our CA given: the receiver with our certificate for 127.0.0.1 gets the message; the one whose
    // certificate names other.example and the one signed by a CA nobody gave are refused, without a request.
    let (out, shown) = gated_run(
        &st,
        &[
            (
                "XORB_NOTIFY_URLS",
                format!("{good_url} {wrong_name_url} {untrusted_url}"),
            ),
            ("XORB_NOTIFY_CA", ca.display().to_string()),
            ("XORB_NOTIFY_GRACE_SECS", "10".into()),
        ],
    )
    .await;
    let run_id = shown["id"].as_str().unwrap().to_string();
    let hits = good.hook.hits();
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(
        hits[0].id.as_deref(),
        Some(&*format!("{run_id}/initiation"))
    );
    assert!(hits[0].path.ends_with(&tokens[0]));
    assert_eq!(delivery(&shown, &good_url)["state"], "delivered");

    assert!(
        wrong_name.hook.hits().is_empty(),
        "{:?}",
        wrong_name.hook.hits()
    );
    assert!(wrong_name.refused_handshakes.load(Ordering::SeqCst) >= 1);
    let d = delivery(&shown, &wrong_name_url);
    assert_eq!(d["state"], "failed", "{d:#}");
    assert_eq!(d["attempts"], 1, "refused once, never retried: {d:#}");
    let why = d["last_error"].as_str().unwrap();
    assert!(why.contains("not valid for the name 127.0.0.1"), "{why}");

    assert!(untrusted.hook.hits().is_empty());
    assert_eq!(untrusted.refused_handshakes.load(Ordering::SeqCst), 1);
    let d = delivery(&shown, &untrusted_url);
    assert_eq!(d["state"], "failed", "{d:#}");
    assert_eq!(d["attempts"], 1, "{d:#}");
    let why = d["last_error"].as_str().unwrap();
    assert!(
        why.contains("webhook host 127.0.0.1 is not trusted") && why.contains("--notify-ca FILE"),
        "{why}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is not trusted") && stderr.contains("not valid for the name"),
        "the command reports both refusals: {stderr}"
    );

    // 2. The same good receiver without the CA (as the system's store alone would see it): refused, no request.
    let (out2, shown2) = gated_run(
        &st,
        &[
            ("XORB_NOTIFY_URLS", good_url.clone()),
            ("XORB_NOTIFY_GRACE_SECS", "10".into()),
        ],
    )
    .await;
    assert_ne!(shown2["id"], shown["id"]);
    assert_eq!(good.hook.hits().len(), 1, "no request without the CA");
    let d = delivery(&shown2, &good_url);
    assert_eq!(d["state"], "failed", "{d:#}");
    assert!(
        d["last_error"].as_str().unwrap().contains("is not trusted"),
        "{d:#}"
    );

    // 3. A CA file that is not one is bad input, named, before anything is journaled.
    let bad_ca = dir.join("ip.key");
    let runs_before = st.xorbctl(&["runs", "--output", "json"]).stdout;
    let out3 = crate::notify::run(
        &st,
        &[
            "rollback",
            "--from",
            RC1,
            "--to",
            STABLE,
            "--only",
            "api",
            "--yes",
            // A gate as strict as the run already waiting at its own (a weaker one is refused first).
            "--severity",
            "P1",
            "--as",
            "alice",
            "--notify-ca",
            bad_ca.to_str().unwrap(),
        ],
        &[("XORB_NOTIFY_URLS", good_url.clone())],
    )
    .await;
    assert_eq!(out3.status.code(), Some(2), "{}", text(&out3));
    let err = String::from_utf8_lossy(&out3.stderr);
    assert!(
        err.contains(&bad_ca.display().to_string()) && err.contains("holds no certificate"),
        "{err}"
    );
    assert_eq!(
        st.xorbctl(&["runs", "--output", "json"]).stdout,
        runs_before
    );

    // No webhook token in any output or journaled error.
    let report = st.xorbctl(&["report", &run_id, "--format", "md"]);
    for (what, bytes) in [
        ("first run stdout", &out.stdout),
        ("first run stderr", &out.stderr),
        ("second run stderr", &out2.stderr),
        ("bad CA stderr", &out3.stderr),
        ("report", &report.stdout),
    ] {
        let t = String::from_utf8_lossy(bytes);
        for tok in &tokens {
            assert!(!t.contains(tok.as_str()), "a webhook token in the {what}");
        }
    }
    for s in [&shown, &shown2] {
        let t = s["notifications"].to_string();
        for tok in &tokens {
            assert!(!t.contains(tok.as_str()), "a webhook token in the journal");
        }
    }
    let _ = st.xorbctl(&["stack", "down"]);
}
