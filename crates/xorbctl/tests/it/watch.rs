//! `xorbctl watch` on a real rollback executed by another process: under tmux (a real terminal, redrawn in
//! place) and through a pipe (one line per change), both following the run to its end and exiting with its
//! status, and neither showing a planted secret.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::common::*;
use crate::notify::{Receiver, token};
use crate::secrets::{leaks, releases_with_planted_secret};

const RC1: &str = "v2025.08-rc1";
const STABLE: &str = "v2025.07-stable";

/// A tmux server of this test only (its own socket); killed, and only it, when dropped.
struct Tmux {
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmux {
    fn new() -> Tmux {
        let dir = tempfile::tempdir().unwrap();
        Tmux {
            socket: dir.path().join("tmux.sock"),
            _dir: dir,
        }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-S").arg(&self.socket).args(["-f", "/dev/null"]);
        c
    }

    fn capture(&self) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-t", "watch"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").output();
    }
}

/// The newest run's id, read from the journal the way `watch` does: read-only.
fn newest_run(state_dir: &Path) -> Option<String> {
    let c = rusqlite::Connection::open_with_flags(
        state_dir.join("journal.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .ok()?;
    c.query_row(
        "SELECT id FROM runs ORDER BY created_at DESC LIMIT 1",
        [],
        |r| r.get(0),
    )
    .ok()
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_follows_a_rollback_of_another_process_on_a_terminal_and_through_a_pipe() {
    let st = Stack::up(RC1, false);
    let planted = format!("planted-{}", token());
    let (_tmp, releases) = releases_with_planted_secret(&planted);
    let hook = Receiver::start(200).await;
    let hook_token = token();
    let hook_url = format!("{}/services/T9/B9/{hook_token}", hook.base);
    let secrets = vec![
        ("planted config token", planted.clone()),
        ("webhook token", hook_token.clone()),
        ("webhook URL", hook_url.clone()),
        ("database password", st.secret("db-password")),
    ];
    let with_env = |c: &mut Command| {
        c.env("XORB_RELEASES", &releases)
            .env("XORB_NOTIFY_URLS", &hook_url);
    };

    // The rollback, in its own process.
    let mut rollback = st.cmd();
    rollback.args([
        "rollback", "--from", RC1, "--to", STABLE, "--only", "api", "--yes",
    ]);
    with_env(&mut rollback);
    let rollback = tokio::task::spawn_blocking(move || rollback.output().unwrap());
    let run_id = eventually(
        "the rollback's run in the journal",
        Duration::from_secs(60),
        || {
            let id = newest_run(&st.dir);
            async move { id }
        },
    )
    .await;

    // A watcher on a terminal (tmux) and one through a pipe.
    let tmux = Tmux::new();
    let mut watcher = st.cmd();
    let script = format!(
        "{} watch {run_id}; echo \"watch exited with $?\"; exec sleep 600",
        shell_quote(&xorbctl_bin().display().to_string())
    );
    let mut start = tmux.cmd();
    start
        .args(["new-session", "-d", "-s", "watch", "-x", "160", "-y", "40"])
        .arg(&script)
        .envs(watcher.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .current_dir(repo());
    with_env(&mut start);
    let started = start.output().unwrap();
    assert!(started.status.success(), "tmux: {}", text(&started));
    watcher.args(["watch", &run_id]);
    with_env(&mut watcher);
    let piped = tokio::task::spawn_blocking(move || watcher.output().unwrap());

    let mut screens: Vec<String> = Vec::new();
    let current = eventually(
        "the terminal view to show the run's current step",
        Duration::from_secs(120),
        || {
            let screen = tmux.capture();
            screens.push(screen.clone());
            async move {
                let line = screen
                    .lines()
                    .find(|l| l.starts_with("Current step: "))?
                    .to_string();
                screen
                    .contains("Status: running")
                    .then(|| {
                        line["Current step: ".len()..]
                            .split_whitespace()
                            .next()
                            .map(str::to_string)
                    })
                    .flatten()
            }
        },
    )
    .await;
    let end = eventually(
        "the terminal view to show the run's end and watch to exit",
        Duration::from_secs(300),
        || {
            let screen = tmux.capture();
            screens.push(screen.clone());
            async move { screen.contains("watch exited with").then_some(screen) }
        },
    )
    .await;
    let out = rollback.await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let shown: serde_json::Value =
        serde_json::from_slice(&st.xorbctl(&["show", &run_id, "--output", "json"]).stdout).unwrap();
    let steps: Vec<&str> = shown["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["spec"]["id"].as_str().unwrap())
        .collect();
    assert!(
        steps.contains(&current.as_str()),
        "{current} not in {steps:?}"
    );
    assert!(end.contains("watch exited with 0"), "{end}");
    assert!(end.contains("Status: succeeded"), "{end}");
    assert!(
        end.contains(&format!("{} of {} steps done", steps.len(), steps.len())),
        "{end}"
    );
    // Redrawn in place: the final screen holds one view, not a scroll of them.
    assert_eq!(end.matches("Status: ").count(), 1, "{end}");

    // Through a pipe: plain lines, one per change, ending with the run's end and its exit status.
    let piped: Output = piped.await.unwrap();
    assert_eq!(piped.status.code(), Some(0), "{}", text(&piped));
    let stdout = String::from_utf8_lossy(&piped.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines.len() >= 3, "{stdout}");
    assert!(
        !stdout.contains('\x1b'),
        "no terminal codes in a pipe: {stdout:?}"
    );
    assert!(lines.last().unwrap().contains("succeeded"), "{stdout}");
    let changes: Vec<&str> = lines.iter().map(|l| l.split_once(' ').unwrap().1).collect();
    assert!(
        changes.windows(2).all(|w| w[0] != w[1]),
        "a line only when something changed: {stdout}"
    );

    // One frame of the ended run; with no run named and none running, a clear refusal.
    let once = st.xorbctl(&["watch", "--once", &run_id]);
    assert_eq!(once.status.code(), Some(0), "{}", text(&once));
    assert!(String::from_utf8_lossy(&once.stdout).contains("Status: succeeded"));
    let none = st.xorbctl(&["watch"]);
    assert_eq!(none.status.code(), Some(3), "{}", text(&none));
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("no rollback is running"),
        "{}",
        text(&none)
    );

    let mut places: Vec<(String, Vec<u8>)> = screens
        .into_iter()
        .enumerate()
        .map(|(i, s)| (format!("terminal screen {i}"), s.into_bytes()))
        .collect();
    places.push(("piped stdout".into(), piped.stdout.clone()));
    places.push(("piped stderr".into(), piped.stderr.clone()));
    places.push(("--once".into(), once.stdout.clone()));
    let mut found = Vec::new();
    for (name, bytes) in &places {
        for l in leaks(bytes, &secrets) {
            found.push(format!("{name}: {l}"));
        }
    }
    assert!(found.is_empty(), "secrets in watch output: {found:#?}");
    drop(tmux);
    let _ = st.xorbctl(&["stack", "down"]);
}
