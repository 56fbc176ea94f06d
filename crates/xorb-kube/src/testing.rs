//! A scripted API server for unit tests: a kube `Client` over tower-test's mock service that expects calls in
//! order and answers each as told. Every request it saw comes back, with its body, for the test to check.

use http::{Request, Response};
use kube::client::Body;

/// How the scripted server answers one call.
pub enum Reply {
    /// A JSON body with this status code.
    Json(u16, serde_json::Value),
    /// Raw bytes with this status code.
    Raw(u16, Vec<u8>),
    /// The connection drops before an answer.
    Drop,
}

impl Reply {
    /// A `metav1.Status` failure, as the API server sends it.
    pub fn status(code: u16, reason: &str, message: &str) -> Reply {
        Reply::Json(
            code,
            serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code,
            }),
        )
    }
}

/// One call the server saw: method, path with query, body (Null when empty or not JSON).
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub body: serde_json::Value,
}

/// A client whose calls must be exactly `script` (method, path without query, reply), in order; the handle
/// resolves to what was seen, and panics on an unexpected call.
pub fn scripted(
    script: Vec<(&'static str, &str, Reply)>,
) -> (kube::Client, tokio::task::JoinHandle<Vec<Seen>>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let script: Vec<(String, String, Reply)> = script
        .into_iter()
        .map(|(m, p, r)| (m.to_string(), p.to_string(), r))
        .collect();
    let server = tokio::spawn(async move {
        let mut seen = Vec::new();
        for (method, path, reply) in script {
            let (req, send) = handle
                .next_request()
                .await
                .unwrap_or_else(|| panic!("the client stopped before {method} {path}"));
            let got_method = req.method().to_string();
            let uri = req.uri().to_string();
            let got_path = req.uri().path().to_string();
            let bytes = req.into_body().collect_bytes().await.unwrap();
            let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
            assert_eq!(
                (got_method.as_str(), got_path.as_str()),
                (method.as_str(), path.as_str()),
                "unexpected call {uri} with {body}"
            );
            seen.push(Seen {
                method: got_method,
                uri,
                body,
            });
            match reply {
                Reply::Json(code, v) => send.send_response(
                    Response::builder()
                        .status(code)
                        .header("content-type", "application/json")
                        .body(Body::from(serde_json::to_vec(&v).unwrap()))
                        .unwrap(),
                ),
                Reply::Raw(code, bytes) => send.send_response(
                    Response::builder()
                        .status(code)
                        .body(Body::from(bytes))
                        .unwrap(),
                ),
                Reply::Drop => send.send_error(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "connection reset by peer",
                )),
            }
        }
        seen
    });
    (kube::Client::new(service, "default"), server)
}
