//! **Test hook** for crash testing: `XORB_CRASH_AFTER_JOURNAL_WRITES=N`.
//!
//! When the variable is set to a positive integer N, the process sends itself SIGKILL right after the N-th journal
//! transaction it commits (counting from process start, in every journal it opens). Nothing after the commit runs:
//! no sink sees the event, no destructor runs, the rollback lock is released by the kernel. The crash tests use it
//! to stop a run at every journal boundary in turn and check that `resume` completes it with no side effect done
//! twice. The variable is read once, at the first commit. It is never meant to be set in production.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// **Test hook**: `XORB_CRASH_BEFORE_STEP=<step id>` kills the process (SIGKILL) right before that step's intent
/// is journaled, once per process. Tests use it to stop a run at a named place (e.g. in the middle of phase 3).
pub const CRASH_BEFORE_STEP_ENV: &str = "XORB_CRASH_BEFORE_STEP";

/// Called by the executor before each step's intent.
pub(crate) fn before_step(step_id: &str) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    let at = AT.get_or_init(|| {
        std::env::var(CRASH_BEFORE_STEP_ENV)
            .ok()
            .filter(|v| !v.is_empty())
    });
    if at.as_deref() == Some(step_id) {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        std::process::abort();
    }
}

/// The environment variable of the crash hook.
pub const CRASH_ENV: &str = "XORB_CRASH_AFTER_JOURNAL_WRITES";

static COMMITS: AtomicU64 = AtomicU64::new(0);
static CRASH_AFTER: OnceLock<Option<u64>> = OnceLock::new();

/// How many journal transactions this process has committed.
pub fn journal_writes() -> u64 {
    COMMITS.load(Ordering::SeqCst)
}

fn crash_after() -> Option<u64> {
    *CRASH_AFTER.get_or_init(|| {
        std::env::var(CRASH_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|n| *n > 0)
    })
}

/// Called by the journal right after each committed transaction.
pub(crate) fn after_commit() {
    let n = COMMITS.fetch_add(1, Ordering::SeqCst) + 1;
    if crash_after() == Some(n) {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        // SIGKILL cannot be caught; should raise fail, still never go past this point.
        std::process::abort();
    }
}
