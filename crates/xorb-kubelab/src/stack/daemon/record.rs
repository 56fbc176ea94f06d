//! The record the stack's process writes once the stack is up: where everything is and which processes it
//! started. Paths, ports, pids: never a secret.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use xorb_local::process::ProcRecord;

use super::DaemonError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServeRecord {
    /// The stack's process.
    pub pid: i32,
    /// The kernel's start time of `pid` (field 22 of /proc/PID/stat): a stopper signals `pid` only while it
    /// still matches, so a pid reused by another process is left alone.
    pub start_time: u64,
    pub release: String,
    pub namespace: String,
    /// The lab admin's kubeconfig (0600).
    pub kubeconfig: PathBuf,
    /// The Kubernetes target's file for this stack (`DIR/target.toml`).
    pub target_file: PathBuf,
    /// The stack's directory (`StackConfig::dir`).
    pub dir: PathBuf,
    /// The control plane's directory (its processes' logs are in `logs/`).
    pub lab_dir: PathBuf,
    /// etcd's data, outside `dir` (memory, on /dev/shm): removed by a stopper that had to kill the process.
    pub etcd_data: PathBuf,
    /// The api as this machine reaches it, through its Service's proxy port.
    pub api_url: String,
    /// Every process the stack's process started, each with its start time: the control plane's, PostgreSQL and
    /// the containers. `program` says what each is (`etcd`, `postgres`, `POD/CONTAINER`). The stack's process
    /// rewrites the record when the containers change (a rollout starts new ones), so a stopper that has to kill
    /// it knows what is left.
    pub processes: Vec<ProcRecord>,
    /// What the demo data created, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub demo: Option<DemoFigures>,
}

/// The demo data's figures (`xorb_local::stack::DemoReport`'s), and where the demo tenants' tokens are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DemoFigures {
    pub tenants: Vec<String>,
    pub sessions_completed: usize,
    pub findings: i64,
    pub evidence: Option<i64>,
    /// The tenants' bearer tokens (JSON, 0600, in a 0700 directory): never printed.
    pub tokens_file: PathBuf,
}

impl ServeRecord {
    /// The record at `path`; None when there is none. A record that does not parse is an error naming the file.
    pub fn load(path: &Path) -> Result<Option<Self>, DaemonError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(DaemonError::io(
                    format!("cannot read {}", path.display()),
                    e,
                ));
            }
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| DaemonError::CorruptRecord {
                path: path.to_path_buf(),
                why: e.to_string(),
            })
    }

    /// Writes the record (0600) to a temporary file next to `path`, then renames it: a reader sees no record or a
    /// whole one, never half.
    pub fn save(&self, path: &Path) -> Result<(), DaemonError> {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        write_atomic(path, text.as_bytes())
    }

    /// The stack's process as a process record.
    pub fn daemon(&self) -> ProcRecord {
        ProcRecord {
            pid: self.pid,
            start_time: self.start_time,
            program: "the stack's process".into(),
        }
    }
}

/// `path.tmp` (0600), then renamed over `path`.
pub(super) fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), DaemonError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let err = |e| DaemonError::io(format!("cannot write {}", path.display()), e);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(contents).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// `RECORD.failed`: where the stack's process writes why it did not start (one line, no secret).
pub fn failed_path(record: &Path) -> PathBuf {
    let mut p = record.as_os_str().to_owned();
    p.push(".failed");
    PathBuf::from(p)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(crate) fn sample(pid: i32, start_time: u64) -> ServeRecord {
        ServeRecord {
            pid,
            start_time,
            release: "v2025.08-rc1".into(),
            namespace: "xorb".into(),
            kubeconfig: "/s/lab/kubeconfig".into(),
            target_file: "/s/target.toml".into(),
            dir: "/s".into(),
            lab_dir: "/s/lab".into(),
            etcd_data: "/dev/shm/xorb-kubelab-etcd-x".into(),
            api_url: "http://127.0.0.1:20001".into(),
            processes: vec![ProcRecord {
                pid: 12,
                start_time: 34,
                program: "etcd".into(),
            }],
            demo: None,
        }
    }

    #[test]
    fn a_record_reads_back_as_written_and_absent_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stack.json");
        assert_eq!(ServeRecord::load(&path).unwrap(), None);
        let mut r = sample(10, 20);
        r.demo = Some(DemoFigures {
            tenants: vec!["acme".into(), "globex".into()],
            sessions_completed: 4,
            findings: 12,
            evidence: None,
            tokens_file: "/s/secrets/tenants.json".into(),
        });
        r.save(&path).unwrap();
        assert_eq!(ServeRecord::load(&path).unwrap(), Some(r));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // No temporary file left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_corrupt_record_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stack.json");
        std::fs::write(&path, "{\"pid\": 12, \"start_ti").unwrap();
        let text = ServeRecord::load(&path).unwrap_err().to_string();
        assert!(
            text.starts_with(&format!("{} is not a stack record (", path.display())),
            "{text}"
        );
        assert!(text.contains("remove it"), "{text}");
        // Valid JSON, not a record.
        std::fs::write(&path, "{\"pid\": 12}").unwrap();
        let text = ServeRecord::load(&path).unwrap_err().to_string();
        assert!(text.contains("missing field"), "{text}");
    }

    #[test]
    fn the_failure_file_sits_next_to_the_record() {
        assert_eq!(
            failed_path(Path::new("/run/x/stack.json")),
            PathBuf::from("/run/x/stack.json.failed")
        );
    }
}
