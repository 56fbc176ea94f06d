//! A plan is made from the release files as they were; a resumed run carries on with that plan. If a release file
//! changed in between (the usual case: someone fixed the image that made the run stop), resuming would mix old
//! steps with new files. So the plan keeps a digest of every release file, and `resume` refuses when they differ,
//! saying which files and what to do (docs/design/journal-and-resume.md, "Release files changed since the plan").

use std::collections::BTreeMap;
use std::path::Path;

use sha2::{Digest, Sha256};
use xorb_model::release::Release;

/// SHA-256 of every file under each release's directory, keyed "RELEASE/relative/path".
pub fn digests(releases: &[&Release]) -> std::io::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for r in releases {
        walk(&r.dir, &r.dir, r.name(), &mut out)?;
    }
    Ok(out)
}

fn walk(
    root: &Path,
    dir: &Path,
    name: &str,
    out: &mut BTreeMap<String, String>,
) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let path = e?.path();
        if path.is_dir() {
            walk(root, &path, name, out)?;
        } else {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            let sum = hex::encode(Sha256::digest(std::fs::read(&path)?));
            out.insert(format!("{name}/{}", rel.display()), sum);
        }
    }
    Ok(())
}

/// The files that differ between the plan's digests and now (changed, added or gone), sorted. A plan without
/// digests (journaled by an older xorbctl) has nothing to compare.
pub fn changed(planned: &BTreeMap<String, String>, now: &BTreeMap<String, String>) -> Vec<String> {
    if planned.is_empty() {
        return Vec::new();
    }
    let mut out: Vec<String> = planned
        .iter()
        .filter(|(k, v)| now.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .chain(now.keys().filter(|k| !planned.contains_key(*k)).cloned())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// What to tell the operator when `files` changed since run `run` was planned.
pub fn refusal(run: &str, from: &str, to: &str, files: &[String]) -> String {
    format!(
        "run {run} was planned from release files that have changed since: {}. Resuming would carry on with \
         the old plan's steps (its images and settings) while other steps read the new files. Nothing was done. \
         Either put the files back as they were and resume, or give this run up and plan again from the files \
         as they are now: `xorbctl abort {run} --by NAME`, then `xorbctl rollback --from {from} --to {to}` \
         (steps already done are found done and not repeated)",
        files.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_changed_added_or_removed_file_is_named_and_an_old_plan_compares_nothing() {
        let planned = m(&[("s/release.toml", "a"), ("s/config/api.env", "b")]);
        assert!(changed(&planned, &planned.clone()).is_empty());
        let now = m(&[("s/release.toml", "A"), ("s/config/new.env", "c")]);
        assert_eq!(
            changed(&planned, &now),
            ["s/config/api.env", "s/config/new.env", "s/release.toml"]
        );
        assert!(changed(&BTreeMap::new(), &now).is_empty());
    }

    #[test]
    fn the_shipped_releases_digest_every_file() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../releases");
        let stable = Release::load_named(&root, "v2025.07-stable").unwrap();
        let d = digests(&[&stable]).unwrap();
        assert!(d.contains_key("v2025.07-stable/release.toml"), "{d:?}");
        assert!(d.contains_key("v2025.07-stable/nats/streams.yaml"), "{d:?}");
        assert!(d.values().all(|v| v.len() == 64));
    }
}
