//! Volumes as directories of this machine, and how a container finds them without a mount namespace.
//!
//! configMap and secret volumes are files written before each start of a container (items and modes as the Pod
//! says; secret files owner-only whatever their mode), emptyDir is a directory of the Pod, and a
//! persistentVolumeClaim is a directory named by namespace and claim under the agent's work directory, which
//! outlives every Pod (a StatefulSet's Pod finds its data again); the agent provisions a hostPath
//! PersistentVolume pre-bound to the claim, so the real PV controller binds it. A container learns where its `mountPath` is by
//! translation, like its ports: a path in its args, env values, workingDir or exec probe that starts with a
//! mountPath is rewritten to the volume's directory (docs/design/kubernetes-lab.md, "Volumes").

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{
    Container, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod,
};
use kube::api::PostParams;
use serde_json::json;

use super::driver::Agent;

/// A container's mounts: mountPath → directory (or file, with subPath), the longest mountPath first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Mounts {
    list: Vec<(String, PathBuf)>,
}

impl Mounts {
    pub(super) fn of(
        spec: &Container,
        volumes: &BTreeMap<String, PathBuf>,
    ) -> Result<Self, String> {
        let mut list = Vec::new();
        for m in spec.volume_mounts.iter().flatten() {
            let dir = volumes.get(&m.name).ok_or_else(|| {
                format!(
                    "volumeMount {:?}: the Pod has no volume of that name",
                    m.name
                )
            })?;
            let dir = match m.sub_path.as_deref().filter(|p| !p.is_empty()) {
                Some(sub) if sub.split('/').any(|c| c == "..") || sub.starts_with('/') => {
                    return Err(format!(
                        "volumeMount {:?}: subPath {sub:?} leaves the volume",
                        m.name
                    ));
                }
                Some(sub) => dir.join(sub),
                None => dir.clone(),
            };
            let path = m.mount_path.trim_end_matches('/').to_string();
            if path.is_empty() {
                return Err(format!(
                    "volumeMount {:?}: mountPath / cannot be translated",
                    m.name
                ));
            }
            list.push((path, dir));
        }
        list.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        Ok(Self { list })
    }

    /// `s` with every path under a mountPath rewritten to the volume's directory. A mountPath counts only as a
    /// whole path: at the start of `s` or after a character that cannot be in a path (`=`, `:`, a space…), and
    /// followed by `/`, the end, or such a character.
    pub(super) fn translate(&self, s: &str) -> String {
        if self.list.is_empty() {
            return s.to_string();
        }
        let path_char = |c: char| c.is_ascii_alphanumeric() || "._-/".contains(c);
        let mut out = String::new();
        let mut i = 0;
        'outer: while i < s.len() {
            let before_ok = i == 0 || !s[..i].chars().next_back().is_some_and(path_char);
            if before_ok && s[i..].starts_with('/') {
                for (mount, dir) in &self.list {
                    if let Some(rest) = s[i..].strip_prefix(mount.as_str())
                        && rest
                            .chars()
                            .next()
                            .is_none_or(|c| c == '/' || !path_char(c))
                    {
                        out.push_str(&dir.to_string_lossy());
                        i += mount.len();
                        continue 'outer;
                    }
                }
            }
            let c = s[i..].chars().next().unwrap_or_default();
            out.push(c);
            i += c.len_utf8().max(1);
        }
        out
    }
}

impl Agent {
    /// Makes every volume of the Pod exist on disk (configMap and secret files rewritten from the API now) and
    /// says where each is. An error names what is missing; the container waits in CreateContainerConfigError.
    pub(super) async fn prepare_volumes(
        &self,
        pod: &Pod,
        pod_dir: &Path,
    ) -> Result<BTreeMap<String, PathBuf>, String> {
        let mut out = BTreeMap::new();
        for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            let dir = pod_dir.join("volumes").join(&v.name);
            if v.empty_dir.is_some() {
                mkdir(&dir)?;
            } else if let Some(cm) = &v.config_map {
                let files = match self.config_map_files(&cm.name).await? {
                    Some(f) => f,
                    None if cm.optional == Some(true) => BTreeMap::new(),
                    None => {
                        return Err(format!(
                            "configmap {:?} not found (volume {:?})",
                            cm.name, v.name
                        ));
                    }
                };
                write_files(
                    &dir,
                    &files,
                    cm.items.as_deref(),
                    cm.default_mode.unwrap_or(0o644),
                    &v.name,
                )?;
            } else if let Some(sec) = &v.secret {
                let name = sec.secret_name.clone().unwrap_or_default();
                let files = match self.secret_files(&name).await? {
                    Some(f) => f,
                    None if sec.optional == Some(true) => BTreeMap::new(),
                    None => return Err(format!("secret {name:?} not found (volume {:?})", v.name)),
                };
                // Owner bits only, whatever the mode: the API server defaults it to 0644, private to the
                // container's mount namespace in a real cluster, but here it would show the secret to every user
                // of the machine.
                let mode = sec.default_mode.unwrap_or(0o600) & 0o700;
                let items = owner_only(sec.items.as_deref());
                write_files(&dir, &files, items.as_deref(), mode, &v.name)?;
            } else if let Some(pvc) = &v.persistent_volume_claim {
                let dir = self.claim_dir(&pvc.claim_name).await?;
                out.insert(v.name.clone(), dir);
                continue;
            } else {
                return Err(format!(
                    "volume {:?}: only configMap, secret, emptyDir and persistentVolumeClaim are supported by the \
                     xorb node agent",
                    v.name
                ));
            }
            out.insert(v.name.clone(), dir);
        }
        Ok(out)
    }

    /// The claim's directory, which outlives every Pod; the claim is reported Bound, as a provisioner would.
    async fn claim_dir(&self, claim: &str) -> Result<PathBuf, String> {
        let pvc: Option<PersistentVolumeClaim> = self
            .claims
            .get_opt(claim)
            .await
            .map_err(|e| format!("reading persistentvolumeclaim {claim:?}: {e}"))?;
        let Some(pvc) = pvc else {
            return Err(format!("persistentvolumeclaim {claim:?} not found"));
        };
        let dir = self
            .config
            .work_dir
            .join("pvc")
            .join(&self.config.namespace)
            .join(claim);
        mkdir(&dir)?;
        let bound = pvc
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.as_ref())
            .is_some();
        if !bound {
            // A hostPath volume pre-bound to this very claim (by uid): the PV controller completes the binding
            // and the claim shows Bound, as with a provisioner.
            let spec = pvc.spec.clone().unwrap_or_default();
            let capacity = spec
                .resources
                .as_ref()
                .and_then(|r| r.requests.clone())
                .unwrap_or_default();
            let uid = pvc.metadata.uid.clone().unwrap_or_default();
            let pv: PersistentVolume = serde_json::from_value(json!({
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": format!("pvc-{uid}"), "labels": {"xorb.dev/node-agent": "true"}},
                "spec": {
                    "capacity": capacity,
                    "accessModes": spec.access_modes.unwrap_or_default(),
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": spec.storage_class_name.unwrap_or_default(),
                    "volumeMode": "Filesystem",
                    "hostPath": {"path": dir.to_string_lossy(), "type": "DirectoryOrCreate"},
                    "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                 "namespace": self.config.namespace, "name": claim, "uid": uid},
                },
            }))
            .map_err(|e| format!("persistentvolume for claim {claim:?}: {e}"))?;
            match self.volumes.create(&PostParams::default(), &pv).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => {
                    tracing::warn!("node agent: provisioning a volume for claim {claim}: {e}")
                }
            }
        }
        Ok(dir)
    }

    async fn config_map_files(
        &self,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
        match self.config_maps.get_opt(name).await {
            Ok(Some(cm)) => {
                let mut files: BTreeMap<String, Vec<u8>> = cm
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes()))
                    .collect();
                files.extend(
                    cm.binary_data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0)),
                );
                Ok(Some(files))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(format!("reading configmap {name:?}: {e}")),
        }
    }

    async fn secret_files(&self, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
        match self.secrets.get_opt(name).await {
            Ok(Some(s)) => Ok(Some(
                s.data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect(),
            )),
            Ok(None) => Ok(None),
            Err(e) => Err(format!("reading secret {name:?}: {e}")),
        }
    }
}

fn owner_only(items: Option<&[KeyToPath]>) -> Option<Vec<KeyToPath>> {
    items.map(|items| {
        items
            .iter()
            .cloned()
            .map(|mut it| {
                it.mode = it.mode.map(|m| m & 0o700);
                it
            })
            .collect()
    })
}

fn mkdir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

/// The volume's files, as `items` says (all keys when there are none), each created with its mode from the first
/// byte (a secret is never readable by others, even for an instant). Files of an earlier start are replaced.
fn write_files(
    dir: &Path,
    files: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: i32,
    volume: &str,
) -> Result<(), String> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| format!("cannot clear {}: {e}", dir.display()))?;
    }
    mkdir(dir)?;
    let wanted: Vec<(String, String, i32)> = match items {
        Some(items) => {
            let mut w = Vec::new();
            for it in items {
                if !files.contains_key(&it.key) {
                    return Err(format!("volume {volume:?}: key {:?} not found", it.key));
                }
                w.push((
                    it.key.clone(),
                    it.path.clone(),
                    it.mode.unwrap_or(default_mode),
                ));
            }
            w
        }
        None => files
            .keys()
            .map(|k| (k.clone(), k.clone(), default_mode))
            .collect(),
    };
    for (key, rel, mode) in wanted {
        if rel.starts_with('/') || rel.split('/').any(|c| c == "..") {
            return Err(format!("volume {volume:?}: path {rel:?} leaves the volume"));
        }
        let path = dir.join(&rel);
        if let Some(parent) = path.parent() {
            mkdir(parent)?;
        }
        let mut f = std::fs::File::options()
            .write(true)
            .create_new(true)
            .mode((mode & 0o777) as u32)
            .open(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        f.write_all(&files[&key])
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::VolumeMount;

    fn mounts() -> Mounts {
        let c = Container {
            name: "c".into(),
            volume_mounts: Some(vec![
                VolumeMount {
                    name: "conf".into(),
                    mount_path: "/etc/redis".into(),
                    ..VolumeMount::default()
                },
                VolumeMount {
                    name: "data".into(),
                    mount_path: "/data/".into(),
                    ..VolumeMount::default()
                },
                VolumeMount {
                    name: "conf".into(),
                    mount_path: "/etc/redis/extra".into(),
                    sub_path: Some("more".into()),
                    ..VolumeMount::default()
                },
            ]),
            ..Container::default()
        };
        let vols = BTreeMap::from([
            ("conf".to_string(), PathBuf::from("/w/conf")),
            ("data".to_string(), PathBuf::from("/w/pvc/data")),
        ]);
        Mounts::of(&c, &vols).unwrap()
    }

    #[test]
    fn paths_under_a_mount_path_are_rewritten_and_nothing_else() {
        let m = mounts();
        assert_eq!(m.translate("/etc/redis/redis.conf"), "/w/conf/redis.conf");
        assert_eq!(m.translate("--dir=/data"), "--dir=/w/pvc/data");
        assert_eq!(m.translate("/etc/redis/extra/x"), "/w/conf/more/x");
        assert_eq!(m.translate("/etc/redisx"), "/etc/redisx");
        assert_eq!(m.translate("/var/data"), "/var/data");
        assert_eq!(m.translate("a /data b"), "a /w/pvc/data b");
        assert_eq!(m.translate("é/data"), "é/w/pvc/data");
    }

    #[test]
    fn a_mount_of_an_unknown_volume_or_leaving_sub_path_is_refused() {
        let mut c = Container {
            name: "c".into(),
            volume_mounts: Some(vec![VolumeMount {
                name: "nope".into(),
                mount_path: "/x".into(),
                ..VolumeMount::default()
            }]),
            ..Container::default()
        };
        assert!(
            Mounts::of(&c, &BTreeMap::new())
                .unwrap_err()
                .contains("nope")
        );
        c.volume_mounts.as_mut().unwrap()[0].sub_path = Some("../up".into());
        let vols = BTreeMap::from([("nope".to_string(), PathBuf::from("/w"))]);
        assert!(Mounts::of(&c, &vols).unwrap_err().contains("leaves"));
    }

    #[test]
    fn files_get_their_modes_from_the_first_byte() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let files = BTreeMap::from([
            ("a".to_string(), b"1".to_vec()),
            ("b".to_string(), b"2".to_vec()),
        ]);
        let items = [KeyToPath {
            key: "b".into(),
            path: "sub/b.txt".into(),
            mode: Some(0o400),
        }];
        write_files(d.path(), &files, None, 0o600, "v").unwrap();
        let mode = |p: &str| {
            std::fs::metadata(d.path().join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("a"), 0o600);
        write_files(d.path(), &files, Some(&items), 0o600, "v").unwrap();
        assert!(!d.path().join("a").exists());
        assert_eq!(std::fs::read(d.path().join("sub/b.txt")).unwrap(), b"2");
        assert_eq!(mode("sub/b.txt"), 0o400);
    }
}
