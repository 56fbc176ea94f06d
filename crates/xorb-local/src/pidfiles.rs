//! One pid file per process a stack started, `<state_dir>/pids/NAME.json` (a [`ProcRecord`]: pid and kernel
//! start time), kept beside `stack.json` and rewritten with it. They are what lets `stack down` stop exactly
//! the processes the stack started when `stack.json` is damaged or gone: one file per process, so one damaged
//! file loses one process, not all of them.

use std::path::{Path, PathBuf};

use crate::LocalError;
use crate::process::ProcRecord;
use xorb_adapters::files::{mkdir, write_private};

/// The servers in the order they stop after the services (the database last: the others write to it).
const SERVERS: [&str; 5] = ["prometheus", "alertmanager", "nats", "redis", "postgres"];

pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("pids")
}

/// Writes one file per process and removes the files of processes no longer recorded.
pub fn write_all(state_dir: &Path, procs: &[(&str, &ProcRecord)]) -> Result<(), LocalError> {
    let d = dir(state_dir);
    mkdir(&d, 0o700)?;
    for (name, proc) in procs {
        let path = d.join(format!("{name}.json"));
        let tmp = d.join(format!("{name}.json.tmp"));
        write_private(
            &tmp,
            serde_json::to_string(proc).unwrap_or_default().as_bytes(),
        )?;
        std::fs::rename(&tmp, &path)
            .map_err(|e| LocalError::io(format!("cannot write {}", path.display()), e))?;
    }
    for (name, _) in read_all(state_dir) {
        if !procs.iter().any(|(n, _)| *n == name) {
            let _ = std::fs::remove_file(d.join(format!("{name}.json")));
        }
    }
    Ok(())
}

/// The recorded processes, services first, then the servers in stopping order. Unreadable files are skipped.
pub fn read_all(state_dir: &Path) -> Vec<(String, ProcRecord)> {
    let Ok(rd) = std::fs::read_dir(dir(state_dir)) else {
        return vec![];
    };
    let mut out: Vec<(String, ProcRecord)> = rd
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_str()?.strip_suffix(".json")?.to_string();
            let text = std::fs::read_to_string(e.path()).ok()?;
            Some((name, serde_json::from_str(&text).ok()?))
        })
        .collect();
    out.sort_by_key(|(name, _)| {
        (
            SERVERS.iter().position(|s| s == name).map_or(0, |i| i + 1),
            name.clone(),
        )
    });
    out
}

pub fn remove_all(state_dir: &Path) {
    let _ = std::fs::remove_dir_all(dir(state_dir));
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);
    impl TempDir {
        fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn rec(pid: i32) -> ProcRecord {
        ProcRecord {
            pid,
            start_time: 7,
            program: "x".into(),
        }
    }

    #[test]
    fn pid_files_follow_the_stack_and_list_services_before_servers() {
        let d = std::env::temp_dir().join(format!("xorb-pidfiles-{}", std::process::id()));
        let d = TempDir(d);
        let (pg, api, cp, nats) = (rec(1), rec(2), rec(3), rec(4));
        write_all(
            d.path(),
            &[
                ("control-plane", &cp),
                ("api", &api),
                ("nats", &nats),
                ("postgres", &pg),
            ],
        )
        .unwrap();
        write_all(
            d.path(),
            &[("api", &api), ("nats", &nats), ("postgres", &pg)],
        )
        .unwrap();
        std::fs::write(dir(d.path()).join("broken.json"), "{").unwrap();
        let names: Vec<String> = read_all(d.path()).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["api", "nats", "postgres"]);
        remove_all(d.path());
        assert!(read_all(d.path()).is_empty());
    }
}
