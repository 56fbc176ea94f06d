//! The Kubernetes target's file for a stack: one copy of its layout, for the lab's tests and for `xorbctl stack
//! up --target kubernetes`. It holds topology only: the passwords are references to the stack's Secrets.

use std::fmt::Write as _;

use super::KubeStack;

/// The proxy's loopback ports the target file names (see `KubeStack::target_ports`).
#[derive(Debug, Clone, Default)]
pub(super) struct TargetPorts {
    pub(super) nats: u16,
    pub(super) prometheus: u16,
    pub(super) alertmanager: u16,
    pub(super) postgres: u16,
    pub(super) redis: u16,
    /// (service, port of its Service `xorb-<service>`), in the runbook's order.
    pub(super) services: Vec<(String, u16)>,
}

/// The target file (TOML) for `stack`: every address is a stable proxy port of a Service on 127.0.0.1, since
/// nothing resolves Service names on the lab. This machine reaches each service there, and Prometheus each scrape
/// job (the Deployment's name, `xorb-<service>`) and Alertmanager. The evidence volume is the claim's directory on
/// the lab's node (kubernetes-lab.md, "Volumes"), reachable from here as a mounted volume would be from an
/// operator's machine.
pub fn target_file_text(stack: &KubeStack) -> String {
    let p = &stack.ports;
    let (mut services, mut scrape) = (String::new(), String::new());
    for (s, port) in &p.services {
        let addr = format!("127.0.0.1:{port}");
        let _ = writeln!(services, "{} = \"http://{addr}\"", toml_str(s));
        let _ = writeln!(scrape, "{} = \"{addr}\"", toml_str(&format!("xorb-{s}")));
    }
    let evidence = stack
        .dir()
        .join("node/pvc")
        .join(stack.namespace())
        .join("xorb-evidence");
    format!(
        r#"
namespace = {namespace}
evidence_dir = {evidence}
alerting_target = "127.0.0.1:{am}"
nats = "nats://127.0.0.1:{nats}"
prometheus = "http://127.0.0.1:{prom}"
[postgres]
host = "127.0.0.1"
port = {pg}
user = "xorb"
database = "xorb"
password = {{ secret = "xorb-db", key = "password" }}
[redis]
host = "127.0.0.1"
port = {redis}
password = {{ secret = "xorb-redis-auth", key = "password" }}
[services]
{services}
[scrape_targets]
{scrape}"#,
        namespace = toml_str(stack.namespace()),
        evidence = toml_str(&evidence.to_string_lossy()),
        am = p.alertmanager,
        nats = p.nats,
        prom = p.prometheus,
        pg = p.postgres,
        redis = p.redis,
    )
}

/// A TOML basic string: quoted, with backslashes, quotes and control characters escaped (a directory may hold
/// any of them).
fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_read_back_as_written() {
        for s in ["api", r#"/a "b"\c"#, "a\u{1}b\nc\td", "élan/x-1"] {
            let doc: toml::Table = toml::from_str(&format!("k = {}", toml_str(s))).unwrap();
            assert_eq!(doc["k"].as_str(), Some(s));
        }
        assert_eq!(toml_str("api"), "\"api\"");
    }
}
