//! Which target a command acts on. A state directory holds the runs, journal and trail of one stack, so it is
//! bound to one target: the first command that acts on Kubernetes (`stack up --target kubernetes`, a rollback)
//! records the binding in `<state-dir>/target.json`, and every later command there (a `resume` after a crash
//! above all) finds the same cluster, context, namespace and target file without being told again. A flag that
//! names another target than the binding is refused: two stacks' runs in one journal would be indistinguishable.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cli::{TargetArgs, TargetKind};
use crate::errors::UsageError;

const BINDING_FILE: &str = "target.json";

/// How to reach a Kubernetes target, as resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeChoice {
    pub target_file: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    Local,
    Kube(KubeChoice),
}

#[derive(Debug, Serialize, Deserialize)]
struct Binding {
    target: TargetKind,
    #[serde(flatten)]
    kube: KubeChoice,
}

fn binding_path(state_dir: &Path) -> PathBuf {
    state_dir.join(BINDING_FILE)
}

/// The state directory's binding, if it has one.
pub fn bound(state_dir: &Path) -> Result<Option<KubeChoice>, UsageError> {
    let path = binding_path(state_dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(UsageError(format!("cannot read {}: {e}", path.display()))),
    };
    let b: Binding = serde_json::from_slice(&bytes).map_err(|e| {
        UsageError(format!(
            "{} is not a target binding xorbctl can read ({e}); it names the cluster this state directory's \
             runs act on: restore it, or use another --state-dir",
            path.display()
        ))
    })?;
    Ok(Some(b.kube))
}

/// Decides the target from the flags and the binding (reads the binding; writes nothing).
pub fn choose(state_dir: &Path, args: &TargetArgs) -> Result<Choice, UsageError> {
    let binding = bound(state_dir)?;
    match (args.target, binding) {
        (None | Some(TargetKind::Local), None) => {
            if args.target.is_none() && args.target_file.is_some() {
                return Err(UsageError(
                    "--target-file is for the Kubernetes target: add --target kubernetes".into(),
                ));
            }
            Ok(Choice::Local)
        }
        (Some(TargetKind::Local), Some(b)) => Err(UsageError(format!(
            "{} is bound to the Kubernetes target (target file {}): its runs act on that cluster. Drop \
             --target local, or use another --state-dir for a local stack",
            state_dir.display(),
            b.target_file.display()
        ))),
        (None | Some(TargetKind::Kubernetes), Some(b)) => {
            let differs = |flag: &str, given: Option<String>, have: Option<String>| match given {
                Some(g) if Some(&g) != have.as_ref() => Err(UsageError(format!(
                    "{flag} {g} is not what {} is bound to ({}): a state directory's runs act on one \
                     cluster and namespace. Drop {flag}, or use another --state-dir",
                    state_dir.display(),
                    have.unwrap_or_else(|| "the default".into())
                ))),
                _ => Ok(()),
            };
            let shown = |p: &Option<PathBuf>| p.as_ref().map(|p| absolute(p).display().to_string());
            differs(
                "--target-file",
                shown(&args.target_file),
                Some(b.target_file.display().to_string()),
            )?;
            differs(
                "--kubeconfig",
                shown(&args.kubeconfig),
                b.kubeconfig.as_ref().map(|p| p.display().to_string()),
            )?;
            differs("--context", args.context.clone(), b.context.clone())?;
            differs("--namespace", args.namespace.clone(), b.namespace.clone())?;
            Ok(Choice::Kube(b))
        }
        (Some(TargetKind::Kubernetes), None) => {
            let file = args.target_file.as_ref().ok_or_else(|| {
                UsageError(
                    "--target kubernetes needs --target-file FILE (the namespace, where this machine reaches \
                     PostgreSQL, Redis, NATS, Prometheus and each service, and the Secrets holding their passwords)"
                        .into(),
                )
            })?;
            if state_dir.join("stack.json").exists() {
                return Err(UsageError(format!(
                    "{} holds a local stack (`xorbctl stack up`): its runs act on this machine. Use another \
                     --state-dir for the Kubernetes target",
                    state_dir.display()
                )));
            }
            Ok(Choice::Kube(KubeChoice {
                target_file: absolute(file),
                kubeconfig: args.kubeconfig.as_deref().map(absolute),
                context: args.context.clone(),
                namespace: args.namespace.clone(),
            }))
        }
    }
}

/// Records `choice` as the state directory's target (a command about to act on it); nothing when bound already.
pub fn bind(state_dir: &Path, choice: &KubeChoice) -> Result<(), UsageError> {
    if bound(state_dir)?.is_some() {
        return Ok(());
    }
    let path = binding_path(state_dir);
    let fail = |e: std::io::Error| UsageError(format!("cannot write {}: {e}", path.display()));
    std::fs::create_dir_all(state_dir).map_err(fail)?;
    let b = Binding {
        target: TargetKind::Kubernetes,
        kube: choice.clone(),
    };
    let bytes = serde_json::to_vec_pretty(&b).map_err(|e| UsageError(e.to_string()))?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, bytes).map_err(fail)?;
    std::fs::rename(&tmp, &path).map_err(fail)
}

/// Forgets the binding (`stack down` of a stack `stack up` bound).
pub fn unbind(state_dir: &Path) -> Result<(), UsageError> {
    match std::fs::remove_file(binding_path(state_dir)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(UsageError(format!(
            "cannot remove {}: {e}",
            binding_path(state_dir).display()
        ))),
        _ => Ok(()),
    }
}

/// A path as the binding keeps it: relative to where the command ran, made absolute (a later command may run
/// elsewhere).
fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(target: Option<TargetKind>, file: Option<&str>) -> TargetArgs {
        TargetArgs {
            target,
            target_file: file.map(PathBuf::from),
            ..Default::default()
        }
    }

    #[test]
    fn an_unbound_directory_is_local_unless_told_otherwise() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(choose(d.path(), &args(None, None)).unwrap(), Choice::Local);
        let e = choose(d.path(), &args(Some(TargetKind::Kubernetes), None)).unwrap_err();
        assert!(e.0.contains("--target-file FILE"), "{e}");
        let e = choose(d.path(), &args(None, Some("/t.toml"))).unwrap_err();
        assert!(e.0.contains("add --target kubernetes"), "{e}");
    }

    #[test]
    fn a_binding_is_kept_and_a_flag_naming_another_target_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let Choice::Kube(k) = choose(
            d.path(),
            &args(Some(TargetKind::Kubernetes), Some("/t.toml")),
        )
        .unwrap() else {
            panic!("not kubernetes")
        };
        bind(d.path(), &k).unwrap();
        // Later commands need no flag at all.
        assert_eq!(
            choose(d.path(), &args(None, None)).unwrap(),
            Choice::Kube(k.clone())
        );
        let e = choose(d.path(), &args(Some(TargetKind::Local), None)).unwrap_err();
        assert!(e.0.contains("bound to the Kubernetes target"), "{e}");
        let e = choose(d.path(), &args(None, Some("/other.toml"))).unwrap_err();
        assert!(e.0.contains("--target-file /other.toml"), "{e}");
        let mut ns = args(None, None);
        ns.namespace = Some("prod".into());
        assert!(
            choose(d.path(), &ns)
                .unwrap_err()
                .0
                .contains("--namespace prod")
        );
        unbind(d.path()).unwrap();
        assert_eq!(choose(d.path(), &args(None, None)).unwrap(), Choice::Local);
    }

    #[test]
    fn a_local_stack_directory_is_not_taken_for_kubernetes_and_a_corrupt_binding_is_named() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("stack.json"), "{}").unwrap();
        let e = choose(
            d.path(),
            &args(Some(TargetKind::Kubernetes), Some("/t.toml")),
        )
        .unwrap_err();
        assert!(e.0.contains("holds a local stack"), "{e}");
        std::fs::write(d.path().join(BINDING_FILE), "{").unwrap();
        let e = choose(d.path(), &args(None, None)).unwrap_err();
        assert!(e.0.contains("target.json is not a target binding"), "{e}");
    }
}
