//! Messages on NATS (jobs and events), durable consumers, and a quiet retry helper for the
//! background loops.

use async_nats::jetstream::{self, consumer::PullConsumer, consumer::pull};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// One scan job: one target of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanJob {
    pub session_id: Uuid,
    pub tenant_id: Uuid,
    /// Index of the target in the session (also the de-duplication id of the publish).
    pub index: u32,
    pub host: String,
    pub ports: Vec<u16>,
}

/// Published by a worker on `xorb.events.job_completed` after the findings are committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobCompleted {
    pub session_id: Uuid,
    pub tenant_id: Uuid,
    pub host: String,
    pub ports_scanned: usize,
    pub open: usize,
    pub jobs_done: i32,
    pub jobs_total: i32,
}

/// Bind to (or create) a durable pull consumer. Only consumer fields that nats-server 2.9
/// understands are set. Streams are never created here: they belong to the release.
pub async fn durable_consumer(
    js: &jetstream::Context,
    stream: &str,
    name: &str,
    filter_subject: Option<&str>,
    ack_wait: Duration,
    max_deliver: i64,
) -> Result<PullConsumer, String> {
    let s = js
        .get_stream(stream)
        .await
        .map_err(|e| crate::ctx::describe_stream_error(stream, &e))?;
    let config = pull::Config {
        durable_name: Some(name.to_string()),
        description: Some(format!("xorb-svc {name}")),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        deliver_policy: jetstream::consumer::DeliverPolicy::All,
        ack_wait,
        max_deliver,
        filter_subject: filter_subject.unwrap_or_default().to_string(),
        max_ack_pending: 256,
        ..Default::default()
    };
    s.get_or_create_consumer(name, config)
        .await
        .map_err(|e| format!("consumer {name} on {stream}: {e}"))
}

/// Logs a failing loop's error the first time, when it changes, and at most once a minute
/// otherwise; logs the recovery. Also gives the next retry delay (capped exponential).
pub struct Quiet {
    what: &'static str,
    last: Option<(String, Instant)>,
    failures: u32,
}

impl Quiet {
    pub fn new(what: &'static str) -> Quiet {
        Quiet {
            what,
            last: None,
            failures: 0,
        }
    }

    pub fn failed(&mut self, err: &str) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let loud = match &self.last {
            None => true,
            Some((prev, at)) => prev != err || at.elapsed() > Duration::from_secs(60),
        };
        if loud {
            tracing::warn!(task = self.what, error = %err, "failing; will retry");
            self.last = Some((err.to_string(), Instant::now()));
        }
        backoff(self.failures)
    }

    pub fn ok(&mut self) {
        if self.last.take().is_some() {
            tracing::info!(task = self.what, "recovered");
        }
        self.failures = 0;
    }
}

/// 200 ms, 400 ms, 800 ms, ... capped at 5 s.
pub fn backoff(failures: u32) -> Duration {
    let ms = 200u64.saturating_mul(1u64 << failures.saturating_sub(1).min(5));
    Duration::from_millis(ms.min(5000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(2), Duration::from_millis(400));
        assert_eq!(backoff(5), Duration::from_millis(3200));
        assert_eq!(backoff(6), Duration::from_millis(5000));
        assert_eq!(backoff(100), Duration::from_millis(5000));
    }

    #[test]
    fn job_roundtrip() {
        let j = ScanJob {
            session_id: Uuid::new_v4(),
            tenant_id: Uuid::new_v4(),
            index: 0,
            host: "127.0.0.1".into(),
            ports: vec![80, 443],
        };
        let bytes = serde_json::to_vec(&j).unwrap();
        assert_eq!(serde_json::from_slice::<ScanJob>(&bytes).unwrap(), j);
    }
}
