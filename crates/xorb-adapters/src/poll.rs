//! Waiting for a condition with a deadline (never a fixed sleep as synchronisation).

use std::time::{Duration, Instant};

/// Polls `probe` until it returns Some or the deadline passes.
pub async fn poll_until<T, F, Fut>(within: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = xorb_model::limits::deadline(Instant::now(), within);
    loop {
        // A probe that hangs must not outlive the deadline.
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100));
        if let Ok(Some(v)) = tokio::time::timeout(left.min(Duration::from_secs(5)), probe()).await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
