//! Which images the agent can "pull": the image map.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// How an image runs: a program and its default arguments (the image's ENTRYPOINT and CMD).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entrypoint {
    pub program: PathBuf,
    pub args: Vec<String>,
}

/// Which images the agent can run, and how.
#[derive(Debug, Clone, Default)]
pub struct ImageMap {
    xorb_svc: Option<PathBuf>,
    exact: BTreeMap<String, Entrypoint>,
}

impl ImageMap {
    pub fn new() -> Self {
        Self::default()
    }

    /// `xorb/<role>:<release>` runs as `XORB_SVC --role ROLE --release RELEASE`.
    pub fn xorb_svc(mut self, program: impl Into<PathBuf>) -> Self {
        self.xorb_svc = Some(program.into());
        self
    }

    /// `image` (exactly, tag included) runs as `program args…`.
    pub fn image(
        mut self,
        image: &str,
        program: impl Into<PathBuf>,
        args: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        self.exact.insert(
            image.to_string(),
            Entrypoint {
                program: program.into(),
                args: args.into_iter().map(Into::into).collect(),
            },
        );
        self
    }

    /// The entrypoint of `image`, or None when this agent cannot "pull" it.
    pub fn resolve(&self, image: &str) -> Option<Entrypoint> {
        if let Some(e) = self.exact.get(image) {
            return Some(e.clone());
        }
        let svc = self.xorb_svc.as_ref()?;
        let (role, release) = image.strip_prefix("xorb/")?.split_once(':')?;
        let ok = |s: &str, extra: &[char]| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || extra.contains(&c))
        };
        if !ok(role, &[]) || !ok(release, &['.', '_']) {
            return None;
        }
        Some(Entrypoint {
            program: svc.clone(),
            args: vec![
                "--role".into(),
                role.into(),
                "--release".into(),
                release.into(),
            ],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_map_runs_xorb_images_as_xorb_svc() {
        let m = ImageMap::new().xorb_svc("/bin/xorb-svc").image(
            "redis:7",
            "/usr/bin/redis-server",
            ["--port", "0"],
        );
        assert_eq!(
            m.resolve("xorb/api:v2025.07-stable").unwrap(),
            Entrypoint {
                program: "/bin/xorb-svc".into(),
                args: vec![
                    "--role".into(),
                    "api".into(),
                    "--release".into(),
                    "v2025.07-stable".into()
                ]
            }
        );
        assert_eq!(
            m.resolve("redis:7").unwrap().program,
            PathBuf::from("/usr/bin/redis-server")
        );
        for bad in [
            "redis:6",
            "xorb/api",
            "xorb/:x",
            "xorb/a b:x",
            "xorb/api:v1;rm",
            "other/api:v1",
        ] {
            assert!(m.resolve(bad).is_none(), "{bad}");
        }
        assert!(ImageMap::new().resolve("xorb/api:v1").is_none());
    }
}
