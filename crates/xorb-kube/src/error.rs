//! What went wrong talking to the cluster, typed by the API server's code and reason (never its message text),
//! each saying which call on which object failed and which exit code `xorbctl` gives it.

use std::fmt;

use xorb_model::exit::Exit;

/// The call that failed: verb, kind, object, namespace ("patch deployment xorb-api in namespace xorb").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    pub verb: &'static str,
    pub kind: &'static str,
    pub name: String,
    pub namespace: String,
}

impl Site {
    pub fn new(
        verb: &'static str,
        kind: &'static str,
        namespace: &str,
        name: impl Into<String>,
    ) -> Self {
        Site {
            verb,
            kind,
            name: name.into(),
            namespace: namespace.to_string(),
        }
    }
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name.is_empty() {
            write!(
                f,
                "{} {}s in namespace {}",
                self.verb, self.kind, self.namespace
            )
        } else {
            write!(
                f,
                "{} {} {} in namespace {}",
                self.verb, self.kind, self.name, self.namespace
            )
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("{site}: not found (404)")]
    NotFound { site: Site },
    #[error(
        "{site}: conflict (409, {reason}): the object changed since it was read, or already exists; read it again before retrying"
    )]
    Conflict { site: Site, reason: String },
    #[error("{site}: the API server refused the object as invalid (422): {message}")]
    Invalid { site: Site, message: String },
    #[error(
        "{site}: forbidden (403) for this identity: the Role bound to it does not allow this; see releases/*/k8s/rbac/"
    )]
    Forbidden { site: Site },
    #[error(
        "{site}: unauthorized (401): the kubeconfig's credentials were not accepted (expired token?)"
    )]
    Unauthorized { site: Site },
    /// `detail`: the reason, then the server's message.
    #[error("{site}: the API server answered {code} {detail}")]
    Server {
        site: Site,
        code: u16,
        detail: String,
    },
    #[error("{site}: no answer from the API server (connection failed or dropped): {cause}")]
    Unreachable { site: Site, cause: String },
    #[error("{site}: the answer could not be read: {cause}")]
    Decode { site: Site, cause: String },
    #[error("{what} did not finish within {seconds}s; last seen: {last}")]
    Timeout {
        what: String,
        seconds: u64,
        last: String,
    },
    #[error("{what} failed: {message}")]
    RolloutFailed { what: String, message: String },
    #[error(
        "another rollback holds the cluster's Lease {namespace}/{lease}: {holder} (until {until}); wait for it to finish, or check it is gone and let the Lease expire"
    )]
    LeaseHeld {
        namespace: String,
        lease: String,
        holder: String,
        until: String,
    },
    #[error("the Lease {namespace}/{lease} is no longer ours: {holder} holds it now; stop acting")]
    LeaseLost {
        namespace: String,
        lease: String,
        holder: String,
    },
    #[error("kubeconfig: {0}")]
    Config(String),
}

impl KubeError {
    /// Types a kube-rs error for the call at `site`.
    pub fn from_kube(site: Site, err: kube::Error) -> Self {
        match err {
            kube::Error::Api(status) => {
                // The reason decides; the code backs it up for servers that leave the reason out.
                match (status.code, status.reason.as_str()) {
                    (404, _) | (_, "NotFound") => KubeError::NotFound { site },
                    (409, reason) | (_, reason @ ("Conflict" | "AlreadyExists")) => {
                        KubeError::Conflict {
                            site,
                            reason: if reason.is_empty() {
                                "Conflict".into()
                            } else {
                                reason.to_string()
                            },
                        }
                    }
                    (422, _) | (_, "Invalid") => KubeError::Invalid {
                        site,
                        message: status.message.clone(),
                    },
                    (403, _) | (_, "Forbidden") => KubeError::Forbidden { site },
                    (401, _) | (_, "Unauthorized") => KubeError::Unauthorized { site },
                    (code, reason) => KubeError::Server {
                        site,
                        code,
                        detail: format!("{reason}: {}", status.message),
                    },
                }
            }
            kube::Error::HyperError(e) => KubeError::Unreachable {
                site,
                cause: chain(&e),
            },
            kube::Error::Service(e) => KubeError::Unreachable {
                site,
                cause: chain(e.as_ref()),
            },
            kube::Error::SerdeError(e) => KubeError::Decode {
                site,
                cause: e.to_string(),
            },
            kube::Error::FromUtf8(e) => KubeError::Decode {
                site,
                cause: e.to_string(),
            },
            other => KubeError::Server {
                site,
                code: 0,
                detail: format!("(no status: the client failed) {}", chain(&other)),
            },
        }
    }

    /// The exit status this error gives `xorbctl` (docs/exit-codes.md).
    pub fn exit(&self) -> Exit {
        match self {
            KubeError::Invalid { .. } | KubeError::Config(_) => Exit::BadInput,
            // The cluster is not as the command expects, or refuses this identity: a person must look.
            KubeError::NotFound { .. }
            | KubeError::Conflict { .. }
            | KubeError::Forbidden { .. }
            | KubeError::Unauthorized { .. }
            | KubeError::LeaseHeld { .. }
            | KubeError::LeaseLost { .. } => Exit::Refused,
            KubeError::Server { .. }
            | KubeError::Unreachable { .. }
            | KubeError::Timeout { .. }
            | KubeError::RolloutFailed { .. } => Exit::DependencyFailed,
            KubeError::Decode { .. } => Exit::Other,
        }
    }

    /// Whether trying the same call again may succeed and is safe: the network, an overloaded or restarting API
    /// server, a stale resourceVersion (read again, then retry).
    pub fn retryable(&self) -> bool {
        match self {
            KubeError::Unreachable { .. }
            | KubeError::Timeout { .. }
            | KubeError::Conflict { .. } => true,
            KubeError::Server { code, .. } => *code == 429 || *code >= 500,
            _ => false,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, KubeError::NotFound { .. })
    }

    pub fn is_conflict(&self) -> bool {
        matches!(self, KubeError::Conflict { .. })
    }
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Reply, scripted};
    use k8s_openapi::api::apps::v1::Deployment;
    use kube::Api;

    fn status(code: u16, reason: &str, message: &str) -> Reply {
        Reply::status(code, reason, message)
    }

    async fn get_error(reply: Reply) -> KubeError {
        let (client, server) = scripted(vec![(
            "GET",
            "/apis/apps/v1/namespaces/xorb/deployments/xorb-api",
            reply,
        )]);
        let api: Api<Deployment> = Api::namespaced(client, "xorb");
        let e = api.get("xorb-api").await.unwrap_err();
        let seen = server.await.unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].method, "GET");
        assert!(
            seen[0].uri.ends_with("/deployments/xorb-api"),
            "{}",
            seen[0].uri
        );
        assert!(seen[0].body.is_null());
        KubeError::from_kube(Site::new("get", "deployment", "xorb", "xorb-api"), e)
    }

    #[tokio::test]
    async fn not_found_says_what_and_where() {
        let e = get_error(status(
            404,
            "NotFound",
            "deployments.apps \"xorb-api\" not found",
        ))
        .await;
        assert!(e.is_not_found(), "{e:?}");
        assert_eq!(
            e.to_string(),
            "get deployment xorb-api in namespace xorb: not found (404)"
        );
        assert_eq!(e.exit(), Exit::Refused);
        assert!(!e.retryable());
    }

    #[tokio::test]
    async fn conflict_is_refused_and_retryable_after_a_fresh_read() {
        let e = get_error(status(409, "Conflict", "the object has been modified")).await;
        assert!(e.is_conflict(), "{e:?}");
        assert!(e.retryable());
        assert_eq!(e.exit(), Exit::Refused);
        assert!(e.to_string().contains("409, Conflict"), "{e}");
        let e = get_error(status(409, "AlreadyExists", "already exists")).await;
        assert!(matches!(&e, KubeError::Conflict { reason, .. } if reason == "AlreadyExists"));
    }

    #[tokio::test]
    async fn invalid_carries_the_servers_field_message_and_is_bad_input() {
        let msg = "Deployment.apps \"xorb-api\" is invalid: spec.replicas: Invalid value: -1: must be greater than or equal to 0";
        let e = get_error(status(422, "Invalid", msg)).await;
        assert!(matches!(e, KubeError::Invalid { .. }), "{e:?}");
        assert!(
            e.to_string().contains("spec.replicas: Invalid value"),
            "{e}"
        );
        assert_eq!(e.exit(), Exit::BadInput);
    }

    #[tokio::test]
    async fn forbidden_points_at_the_role() {
        let e = get_error(status(403, "Forbidden", "user cannot get")).await;
        assert!(matches!(e, KubeError::Forbidden { .. }), "{e:?}");
        assert!(e.to_string().contains("rbac"), "{e}");
        assert_eq!(e.exit(), Exit::Refused);
        let e = get_error(status(401, "Unauthorized", "Unauthorized")).await;
        assert!(matches!(e, KubeError::Unauthorized { .. }), "{e:?}");
    }

    #[tokio::test]
    async fn server_errors_are_dependency_failures_and_retryable() {
        let e = get_error(status(503, "ServiceUnavailable", "etcd is down")).await;
        assert!(matches!(e, KubeError::Server { code: 503, .. }), "{e:?}");
        assert!(e.retryable());
        assert_eq!(e.exit(), Exit::DependencyFailed);
        let e = get_error(status(500, "InternalError", "boom")).await;
        assert!(e.retryable());
    }

    #[tokio::test]
    async fn a_dropped_connection_is_unreachable_and_retryable() {
        let e = get_error(Reply::Drop).await;
        assert!(matches!(e, KubeError::Unreachable { .. }), "{e:?}");
        assert!(e.retryable());
        assert_eq!(e.exit(), Exit::DependencyFailed);
        assert!(
            e.to_string()
                .starts_with("get deployment xorb-api in namespace xorb: no answer"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_garbled_answer_is_a_decode_error() {
        let e = get_error(Reply::Raw(200, b"{not json".to_vec())).await;
        assert!(matches!(e, KubeError::Decode { .. }), "{e:?}");
        assert_eq!(e.exit(), Exit::Other);
    }

    #[test]
    fn lease_held_names_the_holder() {
        let e = KubeError::LeaseHeld {
            namespace: "xorb".into(),
            lease: "xorbctl-rollback".into(),
            holder: "run 42 by alice".into(),
            until: "2026-11-30T18:00:00Z".into(),
        };
        assert!(e.to_string().contains("run 42 by alice"));
        assert_eq!(e.exit(), Exit::Refused);
    }
}
