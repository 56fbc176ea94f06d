//! Container ports on a node where every process shares 127.0.0.1: each declared `containerPort` of a Pod gets a
//! free loopback port of its own, and the agent rewrites what the container is told so it listens there.
//!
//! The rewrite (docs/design/kubernetes-lab.md, "Ports"): in env values and args, `HOST:P` where P is a declared
//! containerPort and HOST is empty, `0.0.0.0`, `127.0.0.1`, or `localhost` becomes `127.0.0.1:REAL`; an
//! argument that is exactly `P` becomes `REAL` (as in `--port 6379`), and one that is exactly `0.0.0.0` or `::`
//! becomes `127.0.0.1` (as in `--bind 0.0.0.0`). An address of another host is left alone.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The annotation on the Pod: a JSON object from containerPort (as a string) to `127.0.0.1:REAL`.
pub const PORTS_ANNOTATION: &str = "xorb.dev/container-ports";

/// A Pod's declared containerPorts and the loopback port each one really is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct PortMap {
    real: BTreeMap<i32, u16>,
}

impl PortMap {
    /// A free loopback port for every containerPort of every container of the Pod.
    pub(super) fn allocate(pod: &Pod) -> Result<Self, String> {
        let mut real = BTreeMap::new();
        for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
            for p in c.ports.iter().flatten() {
                if real.contains_key(&p.container_port) {
                    continue;
                }
                let port = xorb_local::process::free_port().map_err(|e| {
                    format!(
                        "no free loopback port for containerPort {}: {e}",
                        p.container_port
                    )
                })?;
                real.insert(p.container_port, port);
            }
        }
        Ok(Self { real })
    }

    #[cfg(test)]
    pub(super) fn of(pairs: &[(i32, u16)]) -> Self {
        Self {
            real: pairs.iter().copied().collect(),
        }
    }

    pub(super) fn annotation(&self) -> String {
        let m: BTreeMap<String, String> = self
            .real
            .iter()
            .map(|(p, r)| (p.to_string(), format!("127.0.0.1:{r}")))
            .collect();
        serde_json::to_string(&m).unwrap_or_default()
    }

    /// The loopback port a probe or the proxy reaches for `port` (a number or a container port's name).
    pub(super) fn resolve(&self, spec: &Container, port: &IntOrString) -> Option<u16> {
        let declared = match port {
            IntOrString::Int(n) => *n,
            IntOrString::String(name) => {
                if let Ok(n) = name.parse::<i32>() {
                    n
                } else {
                    spec.ports
                        .iter()
                        .flatten()
                        .find(|p| p.name.as_deref() == Some(name.as_str()))?
                        .container_port
                }
            }
        };
        match self.real.get(&declared) {
            Some(r) => Some(*r),
            // Not declared: the process listens where it was told, as in a real Pod.
            None => u16::try_from(declared).ok(),
        }
    }

    /// `s` as the container must see it: its declared ports replaced by their loopback ports.
    pub(super) fn translate(&self, s: &str) -> String {
        // "Every address" of a Pod is only loopback here: nothing may listen beyond it.
        if s == "0.0.0.0" || s == "::" {
            return "127.0.0.1".into();
        }
        if let Some(r) = s.parse::<i32>().ok().and_then(|p| self.real.get(&p)) {
            return r.to_string();
        }
        let mut out = String::new();
        let mut rest = s;
        while let Some(i) = rest.find(':') {
            let before = &rest[..i];
            let after = &rest[i + 1..];
            let digits = after.chars().take_while(|c| c.is_ascii_digit()).count();
            let mapped = after[..digits]
                .parse::<i32>()
                .ok()
                .and_then(|p| self.real.get(&p));
            let host_start = before
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || ".-[]".contains(c)))
                .map(|j| j + 1)
                .unwrap_or(0);
            let host = &before[host_start..];
            let local = ["", "0.0.0.0", "127.0.0.1", "localhost"].contains(&host);
            match mapped {
                Some(r) if digits > 0 && local => {
                    out.push_str(&before[..host_start]);
                    out.push_str(&format!("127.0.0.1:{r}"));
                    rest = &after[digits..];
                }
                _ => {
                    out.push_str(before);
                    out.push(':');
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ContainerPort;

    #[test]
    fn declared_ports_become_loopback_ports_and_other_hosts_stay() {
        let m = PortMap::of(&[(8000, 41000), (6379, 42000)]);
        assert_eq!(m.translate("0.0.0.0:8000"), "127.0.0.1:41000");
        assert_eq!(m.translate(":8000"), "127.0.0.1:41000");
        assert_eq!(
            m.translate("--listen=localhost:8000"),
            "--listen=127.0.0.1:41000"
        );
        assert_eq!(m.translate("6379"), "42000");
        assert_eq!(
            m.translate("redis://db.example:6379/0"),
            "redis://db.example:6379/0"
        );
        assert_eq!(m.translate("0.0.0.0:80001"), "0.0.0.0:80001");
        assert_eq!(m.translate("0.0.0.0:9000"), "0.0.0.0:9000");
        assert_eq!(m.translate("a:b:8000"), "a:b:8000");
        assert_eq!(m.translate("plain"), "plain");
        assert_eq!(m.translate("0.0.0.0"), "127.0.0.1");
        assert_eq!(m.translate("::"), "127.0.0.1");
    }

    #[test]
    fn probes_name_ports_by_name_or_number() {
        let m = PortMap::of(&[(8000, 41000)]);
        let c = Container {
            name: "c".into(),
            ports: Some(vec![ContainerPort {
                name: Some("http".into()),
                container_port: 8000,
                ..ContainerPort::default()
            }]),
            ..Container::default()
        };
        assert_eq!(
            m.resolve(&c, &IntOrString::String("http".into())),
            Some(41000)
        );
        assert_eq!(m.resolve(&c, &IntOrString::Int(8000)), Some(41000));
        assert_eq!(m.resolve(&c, &IntOrString::Int(9000)), Some(9000));
        assert_eq!(m.resolve(&c, &IntOrString::String("metrics".into())), None);
        assert_eq!(m.annotation(), r#"{"8000":"127.0.0.1:41000"}"#);
    }
}
