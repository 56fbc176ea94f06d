//! Paths a release file names must stay inside the tree the releases come from (the repository holding
//! `releases/` and `migrations/`). A path that leaves it would let a release file make xorbctl read, and quote
//! back in errors, any file of the machine. The lexical part is pure ([`contained_path`]); [`resolve_inside`]
//! adds the one check that needs the file system: symbolic links.

use std::path::{Component, Path, PathBuf};

/// Why a path is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContainError {
    #[error("is absolute; name a path relative to the release directory")]
    Absolute,
    #[error("climbs out with '..'")]
    Escapes,
    #[error("resolves through a symbolic link to {0}")]
    Symlink(PathBuf),
    #[error("cannot be resolved: {0}")]
    Unresolvable(String),
}

/// `rel`, named by a file in `base` (a directory given relative to the tree), as a normalised path relative to
/// the tree; refused if it is absolute or if `..` takes it above the tree's root. Pure: no file is looked at.
pub fn contained_path(base: &Path, rel: &Path) -> Result<PathBuf, ContainError> {
    if rel.has_root() || rel.is_absolute() {
        return Err(ContainError::Absolute);
    }
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for c in base.components().chain(rel.components()) {
        match c {
            Component::Normal(p) => parts.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                if parts.pop().is_none() {
                    return Err(ContainError::Escapes);
                }
            }
            // A rooted or prefixed base is a caller's error; treat it like a path leaving the tree.
            Component::RootDir | Component::Prefix(_) => return Err(ContainError::Absolute),
        }
    }
    Ok(parts.iter().collect())
}

/// `rel`, named by a file in `dir`, resolved inside `tree` (both existing directories): the lexical check, then
/// the deepest existing part of the result is canonicalised so that a symbolic link pointing out of the tree is
/// refused too. Returns the path under `tree` as given (not canonicalised), for messages and use.
pub fn resolve_inside(tree: &Path, dir: &Path, rel: &Path) -> Result<PathBuf, ContainError> {
    let unresolvable =
        |p: &Path, e: std::io::Error| ContainError::Unresolvable(format!("{}: {e}", p.display()));
    let tree = tree.canonicalize().map_err(|e| unresolvable(tree, e))?;
    let dir = dir.canonicalize().map_err(|e| unresolvable(dir, e))?;
    let base = dir.strip_prefix(&tree).map_err(|_| ContainError::Escapes)?;
    let inside = contained_path(base, rel)?;
    let full = tree.join(&inside);
    // A path that does not exist yet (an optional directory) cannot hide a link below its existing part.
    let existing = full.ancestors().find(|a| a.exists()).unwrap_or(&tree);
    let real = existing
        .canonicalize()
        .map_err(|e| unresolvable(existing, e))?;
    if !real.starts_with(&tree) {
        return Err(ContainError::Symlink(real));
    }
    Ok(full)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(base: &str, rel: &str) -> String {
        contained_path(Path::new(base), Path::new(rel))
            .unwrap()
            .display()
            .to_string()
    }

    fn err(base: &str, rel: &str) -> ContainError {
        contained_path(Path::new(base), Path::new(rel)).unwrap_err()
    }

    #[test]
    fn paths_inside_the_tree_are_normalised() {
        assert_eq!(ok("releases/r", "config/a.env"), "releases/r/config/a.env");
        assert_eq!(
            ok("releases/r", "./nats/../nats/s.yaml"),
            "releases/r/nats/s.yaml"
        );
        // The shipped releases' migrations: the repository root's migrations/.
        assert_eq!(ok("releases/r", "../../migrations"), "migrations");
        assert_eq!(ok("releases/r", "../.."), "");
    }

    #[test]
    fn climbing_out_or_absolute_is_refused() {
        assert!(matches!(
            err("releases/r", "../../../../../../etc/shadow"),
            ContainError::Escapes
        ));
        assert!(matches!(
            err("releases/r", "../../.."),
            ContainError::Escapes
        ));
        // Going back in after leaving is still leaving.
        assert!(matches!(
            err("releases/r", "../../../tree/releases/r/x"),
            ContainError::Escapes
        ));
        assert_eq!(err("releases/r", "/etc/shadow"), ContainError::Absolute);
        assert_eq!(err("releases/r", "/tmp/x.env"), ContainError::Absolute);
    }

    #[test]
    fn a_symlink_out_of_the_tree_is_refused_and_one_inside_is_not() {
        let tmp = std::env::temp_dir().join(format!("xorb-contained-{}", std::process::id()));
        let tree = tmp.join("tree");
        let dir = tree.join("releases/r");
        std::fs::create_dir_all(dir.join("config")).unwrap();
        std::fs::create_dir_all(tmp.join("outside")).unwrap();
        std::fs::write(tmp.join("outside/secret"), "s").unwrap();
        std::fs::write(dir.join("config/a.env"), "A=1").unwrap();
        std::os::unix::fs::symlink(tmp.join("outside"), dir.join("out")).unwrap();
        std::os::unix::fs::symlink(dir.join("config"), dir.join("cfg")).unwrap();

        let out = resolve_inside(&tree, &dir, Path::new("out/secret"));
        let inside = resolve_inside(&tree, &dir, Path::new("cfg/a.env"));
        let missing = resolve_inside(&tree, &dir, Path::new("grafana/none"));
        std::fs::remove_dir_all(&tmp).unwrap();

        assert!(matches!(out, Err(ContainError::Symlink(_))), "{out:?}");
        assert!(inside.unwrap().ends_with("releases/r/cfg/a.env"));
        assert!(missing.unwrap().ends_with("releases/r/grafana/none"));
    }

    /// A copy of the stable release in a fresh tree, with `edit` applied to its release.toml.
    fn release_with(tag: &str, edit: impl Fn(String) -> String) -> (PathBuf, PathBuf) {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../releases/v2025.07-stable");
        let tmp = std::env::temp_dir().join(format!("xorb-contained-{tag}-{}", std::process::id()));
        let dir = tmp.join("tree/releases/v2025.07-stable");
        copy_dir(&src, &dir);
        let toml = std::fs::read_to_string(dir.join("release.toml")).unwrap();
        std::fs::write(dir.join("release.toml"), edit(toml)).unwrap();
        (tmp, dir)
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap().map(Result::unwrap) {
            if e.file_type().unwrap().is_dir() {
                copy_dir(&e.path(), &to.join(e.file_name()));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }

    fn load_error(tag: &str, edit: impl Fn(String) -> String) -> String {
        let (tmp, dir) = release_with(tag, edit);
        let res = crate::release::Release::load(&dir);
        std::fs::remove_dir_all(&tmp).unwrap();
        res.map(|_| ()).unwrap_err().to_string()
    }

    #[test]
    fn a_release_naming_a_file_outside_its_tree_is_refused_at_load_with_file_key_and_path() {
        let e = load_error("rules", |t| {
            t.replace(
                r#"rules = ["monitoring/alert-rules.yml"]"#,
                r#"rules = ["../../../../../../etc/shadow"]"#,
            )
        });
        assert!(e.contains("release.toml"), "{e}");
        assert!(e.contains("monitoring.rules[0]"), "{e}");
        assert!(e.contains("../../../../../../etc/shadow"), "{e}");
        let e = load_error("shared", |t| {
            t.replace(
                r#"shared = "config/xorb-config.env""#,
                r#"shared = "/tmp/x.env""#,
            )
        });
        assert!(
            e.contains("config.shared") && e.contains("is absolute"),
            "{e}"
        );
        let e = load_error("streams", |t| {
            t.replace(
                r#"streams = "nats/streams.yaml""#,
                r#"streams = "../../../../../../etc/shadow""#,
            )
        });
        assert!(
            e.contains("nats.streams") && e.contains("climbs out"),
            "{e}"
        );
    }

    #[test]
    fn the_unchanged_copy_loads_with_its_migrations_beside_releases() {
        let (tmp, dir) = release_with("same", |t| t);
        let res = crate::release::Release::load(&dir);
        std::fs::remove_dir_all(&tmp).unwrap();
        assert_eq!(res.unwrap().name(), "v2025.07-stable");
    }
}
