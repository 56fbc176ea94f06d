//! Graceful shutdown on SIGTERM / SIGINT, shared by the HTTP server and every background loop.

use std::time::Duration;
use tokio::sync::watch;

#[derive(Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

pub struct Trigger {
    tx: watch::Sender<bool>,
}

impl Trigger {
    pub fn fire(&self) {
        let _ = self.tx.send(true);
    }
}

pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger { tx }, Shutdown { rx })
}

impl Shutdown {
    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once shutdown has been requested.
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        // An error means the sender is gone: treat it as shutdown too.
        let _ = rx.wait_for(|v| *v).await;
    }

    /// Sleep for `d`; returns false when shutdown was requested meanwhile.
    pub async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => !self.is_triggered(),
            _ = self.wait() => false,
        }
    }
}

/// Fire `trigger` on the first SIGTERM or SIGINT.
pub fn on_signals(trigger: Trigger) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutdown requested: draining");
        trigger.fire();
    });
    Ok(())
}
