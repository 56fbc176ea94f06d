//! A container's environment and command line, as Kubernetes builds them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Container, Pod};

use kube::api::ListParams;

use super::Entrypoint;
use super::driver::Agent;
use crate::proxy::proxy_ports;

impl Agent {
    /// The container's environment, in Kubernetes' order: the Services' variables, `envFrom` sources, then `env`
    /// (later wins).
    pub(super) async fn environment(
        &self,
        spec: &Container,
        pod: &Pod,
    ) -> Result<Vec<(String, String)>, String> {
        let mut env: Vec<(String, String)> = Vec::new();
        fn set(env: &mut Vec<(String, String)>, k: String, v: String) {
            env.retain(|(e, _)| *e != k);
            env.push((k, v));
        }
        if pod.spec.as_ref().and_then(|s| s.enable_service_links) != Some(false) {
            for (k, v) in self.service_variables().await? {
                set(&mut env, k, v);
            }
        }
        for from in spec.env_from.iter().flatten() {
            let prefix = from.prefix.clone().unwrap_or_default();
            if let Some(r) = &from.config_map_ref {
                match self.config_map(&r.name).await? {
                    Some(data) => {
                        for (k, v) in data {
                            set(&mut env, format!("{prefix}{k}"), v);
                        }
                    }
                    None if r.optional == Some(true) => {}
                    None => return Err(format!("configmap {:?} not found", r.name)),
                }
            }
            if let Some(r) = &from.secret_ref {
                match self.secret(&r.name).await? {
                    Some(data) => {
                        for (k, v) in data {
                            set(&mut env, format!("{prefix}{k}"), v);
                        }
                    }
                    None if r.optional == Some(true) => {}
                    None => return Err(format!("secret {:?} not found", r.name)),
                }
            }
        }
        for e in spec.env.iter().flatten() {
            if let Some(v) = &e.value {
                let expanded = expand(v, &env);
                set(&mut env, e.name.clone(), expanded);
                continue;
            }
            let Some(from) = &e.value_from else {
                set(&mut env, e.name.clone(), String::new());
                continue;
            };
            let value = if let Some(f) = &from.field_ref {
                let meta = &pod.metadata;
                match f.field_path.as_str() {
                    "metadata.name" => meta.name.clone(),
                    "metadata.namespace" => meta.namespace.clone(),
                    "metadata.uid" => meta.uid.clone(),
                    "spec.nodeName" => Some(self.config.node_name.clone()),
                    "status.podIP" | "status.hostIP" => Some("127.0.0.1".into()),
                    other => {
                        return Err(format!(
                            "fieldRef {other} is not supported by the xorb node agent"
                        ));
                    }
                }
            } else if let Some(r) = &from.config_map_key_ref {
                let v = self
                    .config_map(&r.name)
                    .await?
                    .and_then(|d| d.get(&r.key).cloned());
                if v.is_none() && r.optional != Some(true) {
                    return Err(format!(
                        "key {:?} of configmap {:?} not found",
                        r.key, r.name
                    ));
                }
                v
            } else if let Some(r) = &from.secret_key_ref {
                let v = self
                    .secret(&r.name)
                    .await?
                    .and_then(|d| d.get(&r.key).cloned());
                if v.is_none() && r.optional != Some(true) {
                    return Err(format!("key {:?} of secret {:?} not found", r.key, r.name));
                }
                v
            } else {
                return Err(format!(
                    "env {}: this valueFrom is not supported by the xorb node agent",
                    e.name
                ));
            };
            if let Some(v) = value {
                set(&mut env, e.name.clone(), v);
            }
        }
        Ok(env)
    }

    /// Kubelet's `<NAME>_SERVICE_HOST` and `<NAME>_SERVICE_PORT[_<PORT NAME>]` for every Service the proxy
    /// serves: they point at the proxy's loopback ports (the Service's `xorb.dev/proxy-ports` annotation), as a
    /// real kubelet's point at the cluster IP. A Service not proxied yet has none (as one created after the Pod).
    async fn service_variables(&self) -> Result<Vec<(String, String)>, String> {
        let list = self
            .services
            .list(&ListParams::default())
            .await
            .map_err(|e| format!("listing services: {e}"))?;
        let mut env = Vec::new();
        for svc in list.items {
            let Some(name) = svc.metadata.name.as_deref() else {
                continue;
            };
            let proxied = proxy_ports(&svc);
            let var = name.to_uppercase().replace('-', "_");
            let mut first = true;
            for sp in svc.spec.iter().flat_map(|s| s.ports.iter().flatten()) {
                let key = sp
                    .name
                    .clone()
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| sp.port.to_string());
                let Some(port) = proxied
                    .get(&key)
                    .and_then(|a| a.rsplit_once(':'))
                    .map(|(_, p)| p)
                else {
                    continue;
                };
                if first {
                    env.push((format!("{var}_SERVICE_HOST"), "127.0.0.1".to_string()));
                    env.push((format!("{var}_SERVICE_PORT"), port.to_string()));
                    first = false;
                }
                if let Some(n) = sp.name.as_deref().filter(|n| !n.is_empty()) {
                    let n = n.to_uppercase().replace('-', "_");
                    env.push((format!("{var}_SERVICE_PORT_{n}"), port.to_string()));
                }
            }
        }
        Ok(env)
    }

    pub(super) async fn config_map(
        &self,
        name: &str,
    ) -> Result<Option<BTreeMap<String, String>>, String> {
        match self.config_maps.get_opt(name).await {
            Ok(Some(cm)) => Ok(Some(cm.data.unwrap_or_default())),
            Ok(None) => Ok(None),
            Err(e) => Err(format!("reading configmap {name:?}: {e}")),
        }
    }

    pub(super) async fn secret(
        &self,
        name: &str,
    ) -> Result<Option<BTreeMap<String, String>>, String> {
        match self.secrets.get_opt(name).await {
            Ok(Some(s)) => Ok(Some(
                s.data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                    .collect(),
            )),
            Ok(None) => Ok(None),
            Err(e) => Err(format!("reading secret {name:?}: {e}")),
        }
    }
}

/// `$(NAME)` replaced by NAME's value when defined; `$$` is a literal `$`; anything else is left as written.
pub(super) fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
            && let Some((_, v)) = env.iter().rev().find(|(k, _)| *k == inner[..end])
        {
            out.push_str(v);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Kubernetes' rule: `command` replaces the image's entrypoint (and its default args), `args` replace the
/// default args.
pub(super) fn command_line(
    spec: &Container,
    entry: &Entrypoint,
    env: &[(String, String)],
) -> (PathBuf, Vec<String>) {
    let x = |v: &Vec<String>| v.iter().map(|s| expand(s, env)).collect::<Vec<_>>();
    match (&spec.command, &spec.args) {
        (Some(cmd), args) if !cmd.is_empty() => {
            let cmd = x(cmd);
            let mut all: Vec<String> = cmd[1..].to_vec();
            all.extend(args.as_ref().map(x).unwrap_or_default());
            (PathBuf::from(&cmd[0]), all)
        }
        (_, Some(args)) => (entry.program.clone(), x(args)),
        _ => (entry.program.clone(), entry.args.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn expands_variables_as_kubernetes_does() {
        let env = vec![
            ("A".to_string(), "1".to_string()),
            ("B".to_string(), "x y".to_string()),
        ];
        assert_eq!(expand("$(A)-$(B)", &env), "1-x y");
        assert_eq!(expand("$(C) $$(A) $ $(", &env), "$(C) $(A) $ $(");
    }

    #[test]
    pub(super) fn command_replaces_the_entrypoint_and_args_replace_its_arguments() {
        let entry = Entrypoint {
            program: "/usr/bin/sleep".into(),
            args: vec!["3600".into()],
        };
        let mut c = Container {
            name: "c".into(),
            ..Container::default()
        };
        assert_eq!(
            command_line(&c, &entry, &[]),
            ("/usr/bin/sleep".into(), vec!["3600".to_string()])
        );
        c.args = Some(vec!["$(T)".into()]);
        let env = vec![("T".to_string(), "5".to_string())];
        assert_eq!(
            command_line(&c, &entry, &env),
            ("/usr/bin/sleep".into(), vec!["5".to_string()])
        );
        c.command = Some(vec!["/bin/sh".into(), "-c".into()]);
        c.args = Some(vec!["exit 3".into()]);
        assert_eq!(
            command_line(&c, &entry, &env),
            (
                "/bin/sh".into(),
                vec!["-c".to_string(), "exit 3".to_string()]
            )
        );
    }
}
