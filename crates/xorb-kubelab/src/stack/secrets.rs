//! The Secrets a stack generates at `up`: no secret is part of a release. Passwords are random and go to the API
//! server over the client's TLS connection, never on a command line.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use rand::Rng;

/// A random password of 32 characters that need no escaping in a URL or a redis.conf line.
pub(super) fn password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::thread_rng();
    (0..32)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

pub(super) fn secret(name: &str, data: BTreeMap<&str, String>) -> Secret {
    let mut s = Secret::default();
    s.metadata.name = Some(name.to_string());
    s.metadata.labels = Some(BTreeMap::from([(
        "app.kubernetes.io/part-of".to_string(),
        "xorb".to_string(),
    )]));
    s.type_ = Some("Opaque".into());
    s.data = Some(
        data.into_iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
            .collect(),
    );
    s
}

/// Where the platform's services find their dependencies: the proxy's stable ports, so the addresses survive
/// every rollout and restart of the dependencies.
pub(super) struct Addresses {
    pub(super) postgres: String,
    pub(super) redis: String,
    pub(super) nats: String,
    pub(super) control_plane: Option<String>,
}

pub(super) fn xorb_secrets(a: &Addresses, db_password: &str, redis_password: &str) -> Secret {
    let mut data = BTreeMap::from([
        (
            "DATABASE_URL",
            format!("postgres://xorb:{db_password}@{}/xorb", a.postgres),
        ),
        (
            "REDIS_URL",
            format!("redis://:{redis_password}@{}/0", a.redis),
        ),
        ("NATS_URL", format!("nats://{}", a.nats)),
    ]);
    if let Some(cp) = &a.control_plane {
        data.insert("XORB_CONTROL_PLANE_URL", format!("http://{cp}"));
    }
    secret("xorb-secrets", data)
}

/// The database password by itself, for a client outside the cluster (the Kubernetes target's file names it).
pub(super) fn db_auth(db_password: &str) -> Secret {
    secret(
        "xorb-db",
        BTreeMap::from([("password", db_password.to_string())]),
    )
}

pub(super) fn redis_auth(redis_password: &str) -> Secret {
    secret(
        "xorb-redis-auth",
        BTreeMap::from([
            ("auth.conf", format!("requirepass {redis_password}\n")),
            ("password", redis_password.to_string()),
        ]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_random_and_url_safe() {
        let (a, b) = (password(), password());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn the_services_secret_points_at_the_proxy() {
        let a = Addresses {
            postgres: "127.0.0.1:1".into(),
            redis: "127.0.0.1:2".into(),
            nats: "127.0.0.1:3".into(),
            control_plane: None,
        };
        let s = xorb_secrets(&a, "pw1", "pw2");
        let data = s.data.unwrap();
        assert_eq!(
            data["DATABASE_URL"].0,
            b"postgres://xorb:pw1@127.0.0.1:1/xorb"
        );
        assert_eq!(data["REDIS_URL"].0, b"redis://:pw2@127.0.0.1:2/0");
        assert!(!data.contains_key("XORB_CONTROL_PLANE_URL"));
    }
}
