//! **Test hook** for fault injection: `XORB_PAUSE_IN_STEP=<step id>:<dir>`. Never meant to be set in production.
//!
//! Once the step's intent is journaled (so the journal says it started) and before the target acts, the process
//! writes `<dir>/<step id>.paused` (its pid) and waits until `<dir>/<step id>.release` exists. A test kills or
//! stops (SIGSTOP) a dependency in between, so the fault lands *inside* that step at a known point, without a
//! sleep. It pauses once per process: a retry of the step, or a later resume in the same process, does not pause.
//! If no release comes within an hour the step goes on, so a forgotten test cannot hold a run forever.
//!
//! `<step id>@<point>` pauses at a named point inside the step instead, where the target calls [`inside`]: for a
//! fault that must land between two of the step's own actions (a power loss right after a downgrade commits).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The environment variable of the pause hook.
pub const PAUSE_ENV: &str = "XORB_PAUSE_IN_STEP";

const GIVE_UP: Duration = Duration::from_secs(3600);
const POLL: Duration = Duration::from_millis(20);

/// `<step id>:<dir>` → (step id, dir). The step id holds no ':'; the directory may.
pub fn parse(value: &str) -> Option<(String, PathBuf)> {
    let (step, dir) = value.split_once(':')?;
    (!step.is_empty() && !dir.is_empty()).then(|| (step.to_string(), PathBuf::from(dir)))
}

/// The marker the process writes when it pauses in `step`.
pub fn paused_marker(dir: &Path, step: &str) -> PathBuf {
    dir.join(format!("{step}.paused"))
}

/// The file a test creates to let the step go on.
pub fn release_marker(dir: &Path, step: &str) -> PathBuf {
    dir.join(format!("{step}.release"))
}

fn armed() -> Option<&'static (String, PathBuf)> {
    static AT: OnceLock<Option<(String, PathBuf)>> = OnceLock::new();
    AT.get_or_init(|| std::env::var(PAUSE_ENV).ok().and_then(|v| parse(&v)))
        .as_ref()
}

/// Called by the executor between a step's intent and its action.
pub(crate) async fn in_step(step_id: &str) {
    at(step_id).await
}

/// Called by a target at the point `point` inside step `step_id` (armed as `<step id>@<point>`).
pub async fn inside(step_id: &str, point: &str) {
    if armed().is_some() {
        at(&format!("{step_id}@{point}")).await
    }
}

async fn at(here: &str) {
    static DONE: AtomicBool = AtomicBool::new(false);
    let Some((step, dir)) = armed() else {
        return;
    };
    if step != here || DONE.swap(true, Ordering::SeqCst) {
        return;
    }
    // The marker is written whole (temporary name, rename): a test that sees it may act at once.
    let marker = paused_marker(dir, step);
    let tmp = marker.with_extension("paused.tmp");
    if std::fs::write(&tmp, std::process::id().to_string()).is_err()
        || std::fs::rename(&tmp, &marker).is_err()
    {
        return;
    }
    let release = release_marker(dir, step);
    let deadline = Instant::now() + GIVE_UP;
    while !release.exists() && Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_value_is_a_step_id_then_a_directory() {
        assert_eq!(
            parse("3.db.backup:/tmp/x:y"),
            Some(("3.db.backup".to_string(), PathBuf::from("/tmp/x:y")))
        );
        assert_eq!(
            parse("3.g8.downgrade.8d9a2c3@migrated:/tmp/x"),
            Some((
                "3.g8.downgrade.8d9a2c3@migrated".to_string(),
                PathBuf::from("/tmp/x")
            ))
        );
        assert_eq!(parse("3.db.backup"), None);
        assert_eq!(parse(":/tmp"), None);
        assert_eq!(parse("3.db.backup:"), None);
        assert_eq!(
            release_marker(Path::new("/d"), "4.redis.apply"),
            PathBuf::from("/d/4.redis.apply.release")
        );
    }
}
