//! Which cluster, context and namespace, resolved as kubectl resolves them, and a kube-rs client for them.
//!
//! kubectl: `--kubeconfig FILE` alone when given; else every file of `$KUBECONFIG` (colon-separated, merged, the
//! first file to set a value wins); else `~/.kube/config`. The context is `--context`, else the merged
//! `current-context`. The namespace is `--namespace`, else the context's, else `default`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::error::KubeError;

/// What the operator chose on the command line (each None when not given).
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    pub namespace: Option<String>,
}

/// A client, the namespace it acts in, and the context it came from.
#[derive(Clone)]
pub struct Cluster {
    pub client: kube::Client,
    pub namespace: String,
    pub context: String,
}

/// rustls on ring, the one provider the workspace builds; kube-rs asks rustls for the process default.
pub fn install_crypto_provider() {
    // Err means a provider is installed already, which is all we need.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The kubeconfig files kubectl would read, in precedence order (pure: the environment is passed in).
pub fn kubeconfig_files(
    flag: Option<&Path>,
    env: Option<&OsStr>,
    home: Option<&Path>,
) -> Vec<PathBuf> {
    if let Some(f) = flag {
        return vec![f.to_path_buf()];
    }
    if let Some(list) = env {
        let files: Vec<PathBuf> = std::env::split_paths(list)
            .filter(|p| !p.as_os_str().is_empty())
            .collect();
        if !files.is_empty() {
            return files;
        }
    }
    home.map(|h| vec![h.join(".kube/config")])
        .unwrap_or_default()
}

fn shown(files: &[PathBuf]) -> String {
    files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

/// Reads and merges `files` (kubectl skips a `$KUBECONFIG` entry that does not exist; an explicit file must).
pub fn read_kubeconfig(files: &[PathBuf], explicit: bool) -> Result<Kubeconfig, KubeError> {
    let mut merged: Option<Kubeconfig> = None;
    for f in files {
        if !explicit && !f.exists() {
            continue;
        }
        let k = Kubeconfig::read_from(f)
            .map_err(|e| KubeError::Config(format!("{}: {e}", f.display())))?;
        merged = Some(match merged {
            None => k,
            Some(m) => m
                .merge(k)
                .map_err(|e| KubeError::Config(format!("{}: {e}", f.display())))?,
        });
    }
    merged.ok_or_else(|| {
        KubeError::Config(format!(
            "no kubeconfig found (looked at {}); pass --kubeconfig or set KUBECONFIG",
            shown(files)
        ))
    })
}

/// The context and namespace `selection` names in `config` (pure).
pub fn resolve(config: &Kubeconfig, selection: &Selection) -> Result<(String, String), KubeError> {
    let context = selection
        .context
        .clone()
        .or_else(|| config.current_context.clone())
        .ok_or_else(|| {
            KubeError::Config(
                "no context: the kubeconfig has no current-context; pass --context".into(),
            )
        })?;
    let named = config
        .contexts
        .iter()
        .find(|c| c.name == context)
        .ok_or_else(|| {
            let known: Vec<&str> = config.contexts.iter().map(|c| c.name.as_str()).collect();
            KubeError::Config(format!(
                "context {context:?} is not in the kubeconfig (it has: {})",
                known.join(", ")
            ))
        })?;
    let namespace = selection
        .namespace
        .clone()
        .or_else(|| named.context.as_ref().and_then(|c| c.namespace.clone()))
        .unwrap_or_else(|| "default".into());
    Ok((context, namespace))
}

/// Connects as kubectl would with these flags, reading `KUBECONFIG` and `HOME` from the environment.
pub async fn connect(selection: &Selection) -> Result<Cluster, KubeError> {
    let env = std::env::var_os("KUBECONFIG");
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let files = kubeconfig_files(
        selection.kubeconfig.as_deref(),
        env.as_deref(),
        home.as_deref(),
    );
    let config = read_kubeconfig(&files, selection.kubeconfig.is_some())?;
    let (context, namespace) = resolve(&config, selection)?;
    install_crypto_provider();
    let options = KubeConfigOptions {
        context: Some(context.clone()),
        ..Default::default()
    };
    let kc = kube::Config::from_custom_kubeconfig(config, &options)
        .await
        .map_err(|e| KubeError::Config(format!("{} (context {context}): {e}", shown(&files))))?;
    let client = kube::Client::try_from(kc)
        .map_err(|e| KubeError::Config(format!("context {context}: cannot build a client: {e}")))?;
    Ok(Cluster {
        client,
        namespace,
        context,
    })
}

/// [`connect`] with only a kubeconfig file (its current context and namespace).
pub async fn from_kubeconfig(
    path: &Path,
    context: Option<&str>,
    namespace: Option<&str>,
) -> Result<Cluster, KubeError> {
    connect(&Selection {
        kubeconfig: Some(path.to_path_buf()),
        context: context.map(str::to_string),
        namespace: namespace.map(str::to_string),
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = r#"
apiVersion: v1
kind: Config
current-context: a
clusters: [{name: ca, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: ua, user: {token: t}}]
contexts:
  - {name: a, context: {cluster: ca, user: ua, namespace: xorb-a}}
  - {name: bare, context: {cluster: ca, user: ua}}
"#;
    const B: &str = r#"
apiVersion: v1
kind: Config
current-context: b
clusters: [{name: cb, cluster: {server: "https://127.0.0.1:2"}}]
users: [{name: ub, user: {token: t}}]
contexts: [{name: b, context: {cluster: cb, user: ub, namespace: xorb-b}}]
"#;

    #[test]
    fn the_flag_wins_then_kubeconfig_then_home() {
        let env = std::env::join_paths(["/x/one", "/x/two"]).unwrap();
        assert_eq!(
            kubeconfig_files(Some(Path::new("/f")), Some(&env), Some(Path::new("/h"))),
            vec![PathBuf::from("/f")]
        );
        assert_eq!(
            kubeconfig_files(None, Some(&env), Some(Path::new("/h"))),
            vec![PathBuf::from("/x/one"), PathBuf::from("/x/two")]
        );
        assert_eq!(
            kubeconfig_files(None, Some(OsStr::new("")), Some(Path::new("/h"))),
            vec![PathBuf::from("/h/.kube/config")]
        );
        assert!(kubeconfig_files(None, None, None).is_empty());
    }

    #[test]
    fn merged_files_keep_the_first_current_context_and_every_context() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, A).unwrap();
        std::fs::write(&b, B).unwrap();
        let missing = dir.path().join("missing");
        let k = read_kubeconfig(&[missing.clone(), b.clone(), a.clone()], false).unwrap();
        assert_eq!(
            resolve(&k, &Selection::default()).unwrap(),
            ("b".into(), "xorb-b".into())
        );
        let pick = |context: Option<&str>, namespace: Option<&str>| Selection {
            kubeconfig: None,
            context: context.map(str::to_string),
            namespace: namespace.map(str::to_string),
        };
        assert_eq!(
            resolve(&k, &pick(Some("a"), None)).unwrap(),
            ("a".into(), "xorb-a".into())
        );
        assert_eq!(
            resolve(&k, &pick(Some("a"), Some("other"))).unwrap(),
            ("a".into(), "other".into())
        );
        assert_eq!(
            resolve(&k, &pick(Some("bare"), None)).unwrap(),
            ("bare".into(), "default".into())
        );
        let e = resolve(&k, &pick(Some("nope"), None)).unwrap_err();
        assert!(
            e.to_string()
                .contains("\"nope\" is not in the kubeconfig (it has: b, a, bare)"),
            "{e}"
        );
        assert_eq!(e.exit(), xorb_model::exit::Exit::BadInput);
        // An explicit file must exist.
        let e = read_kubeconfig(&[missing], true).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }
}
