//! Hardening (issue #12, paths and small defects): release paths stay inside their tree, a tool's output quoted
//! in an error cannot be used to read files, the journal and run artifacts are owner-only, read-only commands
//! work on a read-only state directory, a rollback never goes forward, and `stack down` survives a damaged
//! stack.json.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::common::*;

const RC1: &str = "v2025.08-rc1";
const STABLE: &str = "v2025.07-stable";

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().map(Result::unwrap) {
        let name = e.file_name();
        if name == "__pycache__" {
            continue;
        }
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(&name));
        } else {
            std::fs::copy(e.path(), to.join(&name)).unwrap();
        }
    }
}

/// A copy of the project's releases (and, if asked, migrations) in a fresh tree.
fn tree(with_migrations: bool) -> PathBuf {
    let t = Stack::new_dir();
    copy_dir(&repo().join("releases"), &t.join("releases"));
    if with_migrations {
        copy_dir(&repo().join("migrations"), &t.join("migrations"));
    }
    t
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{} has no {from:?}", path.display());
    std::fs::write(path, text.replace(from, to)).unwrap();
}

/// Thirty lines that look like a shadow file: none of them may leak past the first.
fn shadow_like() -> String {
    (1..=30)
        .map(|i| format!("secretline{i}:x:$y$abcdef{i}:19000:0:99999:7:::\n"))
        .collect()
}

fn leaks(text: &str) -> bool {
    (2..=30).any(|i| text.contains(&format!("secretline{i}:")))
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Every directory under `dir` is 0700 and every file 0600.
fn assert_owner_only(dir: &Path) {
    assert_eq!(mode(dir), 0o700, "{}", dir.display());
    for e in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
        let p = e.path();
        if e.file_type().unwrap().is_dir() {
            assert_owner_only(&p);
        } else if e.file_type().unwrap().is_file() {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
    }
}

/// `xorbctl ARGS` with the state directory mounted read-only, in a private mount namespace (nothing outside
/// this one command sees the read-only mount, and it goes with the command).
fn read_only(st: &Stack, releases: &Path, args: &[&str]) -> Output {
    let dir = st.dir.display().to_string();
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && shift && exec "$@""#)
        .arg(&dir)
        .arg("placeholder")
        .arg(xorbctl_bin())
        .args(args);
    c.env("XORB_STATE_DIR", &st.dir)
        .env("XORB_RELEASES", releases)
        .env("XORB_VENV", venv())
        .env("XORB_SVC_BIN", svc_bin())
        .current_dir(repo());
    c.output().unwrap()
}

/// Stops a stack of this module's own when the test ends, passed or failed (a panic unwinds through it).
struct DownOnDrop(PathBuf);

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        let _ = Command::new(xorbctl_bin())
            .args(["stack", "down"])
            .env("XORB_STATE_DIR", &self.0)
            .output();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `Stack::up` from another releases directory.
fn up_in(releases: &Path, release: &str) -> (Stack, DownOnDrop) {
    let dir = Stack::new_dir();
    let down = DownOnDrop(dir.clone());
    let st = Stack {
        dir,
        release: release.into(),
    };
    let out = st
        .cmd()
        .env("XORB_RELEASES", releases)
        .args(["stack", "up", "--release", release])
        .output()
        .unwrap();
    assert!(out.status.success(), "stack up: {}", text(&out));
    (st, down)
}

#[test]
fn a_release_path_leaving_its_tree_is_refused_when_the_release_loads() {
    let t = tree(true);
    let releases = t.join("releases");
    let toml = releases.join(STABLE).join("release.toml");
    let original = std::fs::read_to_string(&toml).unwrap();
    let state = t.join("no-state");
    let plan = || {
        Command::new(xorbctl_bin())
            .args(["plan", "--from", RC1, "--to", STABLE])
            .env("XORB_STATE_DIR", &state)
            .env("XORB_RELEASES", &releases)
            .env("XORB_VENV", venv())
            .output()
            .unwrap()
    };
    let outside = Stack::new_dir();
    std::fs::write(outside.join("shadow"), shadow_like()).unwrap();
    std::os::unix::fs::symlink(&outside, releases.join(STABLE).join("monitoring/out")).unwrap();
    let cases = [
        (
            r#"rules = ["monitoring/alert-rules.yml"]"#,
            r#"rules = ["../../../../../../etc/shadow"]"#,
            "monitoring.rules[0]",
        ),
        (
            r#"streams = "nats/streams.yaml""#,
            r#"streams = "../../../../../../etc/shadow""#,
            "nats.streams",
        ),
        (
            r#"shared = "config/xorb-config.env""#,
            r#"shared = "/tmp/xorb-config.env""#,
            "config.shared",
        ),
        (
            r#"rules = ["monitoring/alert-rules.yml"]"#,
            r#"rules = ["monitoring/out/shadow"]"#,
            "monitoring.rules[0]",
        ),
    ];
    for (from, to, key) in cases {
        std::fs::write(&toml, &original).unwrap();
        edit(&toml, from, to);
        let out = plan();
        let all = text(&out);
        assert_eq!(code(&out), 2, "{to}: {all}");
        assert!(all.contains(&toml.display().to_string()), "{to}: {all}");
        assert!(all.contains(key), "{to}: {all}");
        let path = to.split('"').nth(1).unwrap();
        assert!(all.contains(path), "{to}: {all}");
        assert!(!all.contains("root:") && !leaks(&all), "{to}: {all}");
    }
    // The shipped layout (migrations beside releases, through "../../migrations") is legitimate.
    std::fs::write(&toml, &original).unwrap();
    let out = plan();
    assert_eq!(
        code(&out),
        3,
        "no stack here, but the releases load: {}",
        text(&out)
    );
    assert!(!state.exists(), "plan created {}", state.display());
    std::fs::remove_dir_all(&t).unwrap();
    std::fs::remove_dir_all(&outside).unwrap();
}

#[test]
fn runs_on_a_directory_that_does_not_exist_says_so_and_creates_nothing() {
    let parent = Stack::new_dir();
    let dir = parent.join("typo");
    for args in [&["runs"][..], &["show", "latest"], &["report", "latest"]] {
        let out = Command::new(xorbctl_bin())
            .args(args)
            .env("XORB_STATE_DIR", &dir)
            .output()
            .unwrap();
        assert_eq!(code(&out), 3, "{args:?}: {}", text(&out));
        assert!(
            text(&out).contains("no rollback state in"),
            "{args:?}: {}",
            text(&out)
        );
        assert!(!dir.exists(), "{args:?} created {}", dir.display());
    }
    std::fs::remove_dir_all(&parent).unwrap();
}

#[test]
fn a_database_rollback_never_goes_forward_and_an_unknown_revision_lists_the_known_ones() {
    let st = stable();
    let out = st.xorbctl(&[
        "rollback",
        "--from",
        RC1,
        "--to",
        STABLE,
        "--only",
        "database",
        "--to-revision",
        "8d9a2c3",
        "--yes",
    ]);
    let all = text(&out);
    assert_eq!(code(&out), 3, "{all}");
    assert!(
        all.contains("1a5be11")
            && all.contains("8d9a2c3")
            && all.contains("--from v2025.07-stable --to v2025.08-rc1"),
        "{all}"
    );
    assert_eq!(st.status()["schema_revision"], "1a5be11");

    let out = st.xorbctl(&[
        "plan",
        "--from",
        RC1,
        "--to",
        STABLE,
        "--only",
        "database",
        "--to-revision",
        "junk",
    ]);
    let all = text(&out);
    assert_eq!(code(&out), 2, "{all}");
    assert!(
        all.contains("junk") && all.contains("known: 8d9a2c3, "),
        "{all}"
    );

    // The migrations directory missing is named, with its path: not "is PostgreSQL up?".
    let t = tree(false);
    let out = st
        .cmd()
        .env("XORB_RELEASES", t.join("releases"))
        .args(["plan", "--from", RC1, "--to", STABLE, "--only", "database"])
        .output()
        .unwrap();
    let all = text(&out);
    assert_eq!(code(&out), 2, "{all}");
    assert!(
        all.contains(&format!("{}/releases/{RC1}/../../migrations", t.display()))
            && all.contains("is missing")
            && !all.contains("PostgreSQL up"),
        "{all}"
    );
    std::fs::remove_dir_all(&t).unwrap();
}

#[test]
fn a_failed_run_keeps_tool_output_private_and_its_state_readable_read_only() {
    let t = tree(true);
    let releases = t.join("releases");
    std::fs::write(
        releases.join(STABLE).join("monitoring/alert-rules.yml"),
        shadow_like(),
    )
    .unwrap();
    let checklists = t.join("my-checklists.toml");
    std::fs::copy(repo().join("policies/checklists.toml"), &checklists).unwrap();
    edit(
        &checklists,
        "System state captured (configs, data, metrics)",
        "System state captured HARDENING-MARKER",
    );
    let (st, _down) = up_in(&releases, RC1);

    // promtool rejects the rules: the error quotes an excerpt and names where the full output is.
    let out = st
        .cmd()
        .env("XORB_RELEASES", &releases)
        .arg("--checklists")
        .arg(&checklists)
        .args(["rollback", "--from", RC1, "--to", STABLE, "--yes"])
        .output()
        .unwrap();
    let all = text(&out);
    assert_eq!(code(&out), 6, "{all}");
    assert!(all.contains("1.monitoring.validate"), "{all}");
    assert!(!leaks(&all), "{all}");
    let runs_dir = st.dir.join("runs");
    let run = std::fs::read_dir(&runs_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name()
        .into_string()
        .unwrap();
    let kept = runs_dir.join(&run).join(format!(
        "monitoring/validate-{STABLE}/promtool-check-rules-0.out"
    ));
    assert!(all.contains(&kept.display().to_string()), "{all}");
    assert!(
        std::fs::read_to_string(&kept)
            .unwrap()
            .contains("secretline30")
    );
    for f in ["journal.sqlite", "journal.sqlite-wal"] {
        let p = st.dir.join(f);
        if p.exists() {
            assert!(
                !leaks(&String::from_utf8_lossy(&std::fs::read(&p).unwrap())),
                "{f}"
            );
        }
    }
    let log = std::fs::read_dir(runs_dir.join(&run))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .unwrap();
    assert!(!leaks(&std::fs::read_to_string(&log).unwrap()));

    // Owner-only, created so: the journal and its WAL files, every run artifact, the audit trail.
    for f in ["journal.sqlite", "journal.sqlite-wal", "journal.sqlite-shm"] {
        let p = st.dir.join(f);
        if p.exists() {
            assert_eq!(mode(&p), 0o600, "{f}");
        }
    }
    assert_owner_only(&runs_dir);
    assert_owner_only(&st.dir.join("audit"));

    // `check --by` takes a known operator, of bounded length, and nothing else.
    let long = "x".repeat(10_000);
    for by in ["mallory", long.as_str()] {
        let out = st
            .cmd()
            .env("XORB_RELEASES", &releases)
            .args(["check", &run, "pre.maintenance-window", "--by", by])
            .output()
            .unwrap();
        assert_eq!(
            code(&out),
            2,
            "{}",
            &text(&out)[..300.min(text(&out).len())]
        );
        assert!(out.stderr.len() < 1000, "the message repeats the name");
    }

    // Read-only commands on a read-only state directory; the report remembers the run's checklists.
    let ro = |args: &[&str]| read_only(&st, &releases, args);
    for args in [
        &["runs"][..],
        &["show", &run],
        &["audit", "verify"],
        &["status"],
        &["plan", "--from", RC1, "--to", STABLE],
    ] {
        let out = ro(args);
        assert_eq!(
            code(&out),
            0,
            "{args:?} on a read-only state directory: {}",
            text(&out)
        );
    }
    let out = ro(&["report", &run]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("HARDENING-MARKER"),
        "{}",
        text(&out)
    );

    // Wrong passwords: status names the authentication failure, never the password.
    let secrets = st.dir.join("secrets");
    let saved: Vec<(PathBuf, Vec<u8>)> = ["db-password", "redis-password"]
        .iter()
        .map(|n| (secrets.join(n), std::fs::read(secrets.join(n)).unwrap()))
        .collect();
    for (p, _) in &saved {
        std::fs::write(p, "wrong-password-0123456789").unwrap();
    }
    let out = st.xorbctl(&["status"]);
    for (p, b) in &saved {
        std::fs::write(p, b).unwrap();
    }
    let all = text(&out);
    assert_eq!(code(&out), 5, "{all}");
    assert!(all.contains("password authentication failed"), "{all}");
    assert!(!all.contains("wrong-password-0123456789"), "{all}");

    // A damaged stack.json: stack down still stops exactly the processes of this stack.
    let json = st.stack_json();
    let mut pids: Vec<i64> = json["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["proc"]["pid"].as_i64())
        .collect();
    for server in ["postgres", "redis", "prometheus", "alertmanager"] {
        pids.extend(json[server]["proc"]["pid"].as_i64());
    }
    pids.extend(json["nats"]["server"]["proc"]["pid"].as_i64());
    assert!(pids.len() >= 9, "{json}");
    std::fs::write(st.dir.join("stack.json"), "{ damaged").unwrap();
    let out = st.xorbctl(&["stack", "down"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let deadline = Instant::now() + Duration::from_secs(30);
    let alive = |pid: i64| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    };
    while pids.iter().any(|p| alive(*p)) {
        assert!(
            Instant::now() < deadline,
            "still running after stack down: {:?}",
            pids.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::remove_dir_all(&t).unwrap();
}
