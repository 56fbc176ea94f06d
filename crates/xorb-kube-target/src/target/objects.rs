//! The runbook's `kubectl apply -f secrets/ network-policies/` of phase 2.2: a release's cluster objects as its
//! manifests write them, server-side applied by `xorb-kube`'s [`Applier`] (field manager `xorbctl`, conflicts
//! forced), and the network policies only the release rolled back from has removed by name (the Role lists
//! nothing). A Secret only the old release has is left alone: a workload may still mount it, and deleting a
//! credential is a person's decision.
//!
//! ConfigMaps are not applied from the manifests here: the configuration step lays them out as the target does
//! (`xorb-config` shared, each service's own keys over it) with the known limitations on top.

use std::path::{Path, PathBuf};

use serde_json::Value;
use xorb_engine::runner::StepError;
use xorb_kube::apply::{Applied, Applier};
use xorb_model::release::Release;

/// The directories of a release's `k8s/` tree that hold what this step applies, and the kind each must hold.
const DIRS: [(&str, &str); 2] = [("network-policies", "NetworkPolicy"), ("secrets", "Secret")];

/// One object of a release, as its manifest writes it.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub kind: &'static str,
    pub name: String,
    pub body: Value,
}

impl Manifest {
    pub fn object(&self) -> String {
        format!("{}/{}", self.kind.to_ascii_lowercase(), self.name)
    }
}

/// Every object of `release`'s `k8s/network-policies/` and `k8s/secrets/` (a missing directory holds none), in
/// file order. A document of another kind, or without a name, is refused naming its file: applying half a
/// directory would leave the namespace between two releases.
pub fn release_objects(release: &Release) -> Result<Vec<Manifest>, StepError> {
    let mut out = Vec::new();
    for (dir, kind) in DIRS {
        let dir = release.dir.join("k8s").join(dir);
        for file in yaml_files(&dir)? {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| StepError::fatal(format!("reading {}: {e}", file.display())))?;
            out.extend(parse(&file, kind, &text)?);
        }
    }
    Ok(out)
}

fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, StepError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StepError::fatal(format!("reading {}: {e}", dir.display()))),
    };
    let mut files: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

fn parse(file: &Path, kind: &'static str, text: &str) -> Result<Vec<Manifest>, StepError> {
    let bad = |why: String| StepError::fatal(format!("{}: {why}", file.display()));
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(text).map_err(|e| bad(format!("not valid YAML: {e}")))?;
    let mut out = Vec::new();
    for doc in docs.into_iter().filter(|d| !d.is_null()) {
        let found = doc["kind"].as_str().unwrap_or("(none)");
        if found != kind {
            return Err(bad(format!(
                "a document of kind {found}, where only {kind} belongs"
            )));
        }
        let name = doc["metadata"]["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| bad(format!("a {kind} without metadata.name")))?
            .to_string();
        out.push(Manifest {
            kind,
            name,
            body: doc,
        });
    }
    Ok(out)
}

/// The network policies `from` has and `to` does not: what the step removes.
pub fn stale_policies<'a>(from: &'a [Manifest], to: &[Manifest]) -> Vec<&'a Manifest> {
    from.iter()
        .filter(|m| m.kind == "NetworkPolicy")
        .filter(|m| !to.iter().any(|t| t.kind == m.kind && t.name == m.name))
        .collect()
}

/// What applying `to`'s objects and removing `from`'s stale policies did (or, `dry_run`, would do): each object
/// that changes with its changed field paths (`created`, `deleted`; never values, a Secret's are secret).
pub async fn apply(
    applier: &Applier,
    from: &Release,
    to: &Release,
    dry_run: bool,
) -> Result<Vec<(String, Vec<String>)>, StepError> {
    let wanted = release_objects(to)?;
    let old = release_objects(from)?;
    let bodies: Vec<Value> = wanted.iter().map(|m| m.body.clone()).collect();
    let applied: Vec<Applied> = applier.apply(&bodies, dry_run).await.map_err(super::step)?;
    let mut out: Vec<(String, Vec<String>)> = applied
        .iter()
        .filter(|a| a.changes())
        .map(|a| {
            let object = format!("{}/{}", a.kind.to_ascii_lowercase(), a.name);
            let changes = if a.created {
                vec!["created".to_string()]
            } else {
                a.changed.clone()
            };
            (object, changes)
        })
        .collect();
    for m in stale_policies(&old, &wanted) {
        if applier
            .remove(m.kind, &m.name, dry_run)
            .await
            .map_err(super::step)?
        {
            out.push((m.object(), vec!["deleted".to_string()]));
        }
    }
    Ok(out)
}

/// One line for the journal: what the step changed.
pub fn describe(to: &Release, wanted: usize, done: &[(String, Vec<String>)]) -> String {
    if done.is_empty() {
        return format!(
            "{wanted} objects of {} already in place, nothing stale",
            to.name()
        );
    }
    let list: Vec<String> = done
        .iter()
        .map(|(o, c)| match c.as_slice() {
            [one] if one == "created" || one == "deleted" => format!("{o} {one}"),
            _ => format!("{o} updated ({})", c.join(", ")),
        })
        .collect();
    format!(
        "{wanted} objects of {} applied: {}",
        to.name(),
        list.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_release(name: &str) -> Release {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../releases");
        Release::load_named(&root, name).unwrap()
    }

    #[test]
    fn the_shipped_releases_name_their_policies_and_rc1s_control_plane_policy_is_stale() {
        let rc1 = release_objects(&repo_release("v2025.08-rc1")).unwrap();
        let stable = release_objects(&repo_release("v2025.07-stable")).unwrap();
        assert_eq!(stable.len(), 3, "{stable:?}");
        assert!(stable.iter().all(|m| m.kind == "NetworkPolicy"));
        let stale: Vec<String> = stale_policies(&rc1, &stable)
            .iter()
            .map(|m| m.object())
            .collect();
        assert_eq!(stale, ["networkpolicy/xorb-allow-control-plane-from-api"]);
        assert!(
            stale_policies(&stable, &rc1).is_empty(),
            "a roll-forward adds, removes nothing"
        );
    }

    #[test]
    fn a_foreign_kind_or_a_nameless_object_is_refused_naming_the_file() {
        let f = Path::new("k8s/network-policies/x.yaml");
        let e = parse(
            f,
            "NetworkPolicy",
            "kind: ClusterRole\nmetadata: {name: x}\n",
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("x.yaml") && e.to_string().contains("ClusterRole"),
            "{e}"
        );
        let e = parse(f, "NetworkPolicy", "kind: NetworkPolicy\nmetadata: {}\n").unwrap_err();
        assert!(e.to_string().contains("without metadata.name"), "{e}");
        let two = "kind: Secret\nmetadata: {name: a}\n---\nkind: Secret\nmetadata: {name: b}\n";
        assert_eq!(parse(f, "Secret", two).unwrap().len(), 2);
        assert!(parse(f, "Secret", "kind: [").is_err());
    }
}
