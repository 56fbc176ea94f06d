//! A load of known rate (open model) and its latency, corrected for coordinated omission.
//!
//! Request *i* is due at `start + i / rate` whether or not the earlier ones were answered, as users
//! arrive. Its response time counts from when it was due, not from when it was sent: a tool that
//! waits for each answer before sending the next (wrk, a closed loop) sends nothing while the
//! service stalls, so a one-second stall costs it one slow sample per connection, and its p99 hides
//! what every user arriving in that second saw. Both figures are kept: `response` from the due time,
//! and `service` from the send; they differ only where the generator itself fell behind (a busy
//! machine, the in-flight cap), which the report must show rather than hide.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What to send: `GET url` with the bearer `token`, `rate` times a second for `duration`.
pub struct Spec {
    pub url: String,
    pub token: String,
    pub rate: f64,
    pub duration: Duration,
    /// A request not answered by then counts as an error at this latency.
    pub timeout: Duration,
    /// More requests than this in flight at once are not sent but counted as errors (the
    /// generator never queues without bound behind a dead service).
    pub max_in_flight: usize,
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Figures {
    pub rate: f64,
    pub duration_ms: u64,
    pub due: u64,
    pub ok: u64,
    /// Answered with a status of 500 or more, not answered in time, or not sent (too many in flight).
    pub errors: u64,
    /// From when each request was due: what users saw.
    pub response: Percentiles,
    /// From when each request was sent: above `response` only where the generator fell behind.
    pub service: Percentiles,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "a load needs a rate above 0 and at most 100000 per second, and a duration: got {rate}/s for {duration:?}"
    )]
    Spec { rate: f64, duration: Duration },
    #[error("cannot build an HTTP client: {0}")]
    Client(String),
}

struct Recorder {
    response: Histogram<u64>,
    service: Histogram<u64>,
    ok: u64,
    errors: u64,
}

impl Recorder {
    fn new() -> Recorder {
        // Microseconds up to an hour, three significant figures.
        let h = || Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static bounds");
        Recorder {
            response: h(),
            service: h(),
            ok: 0,
            errors: 0,
        }
    }

    fn record(&mut self, response: Duration, service: Duration, ok: bool) {
        let us = |d: Duration| (d.as_micros() as u64).clamp(1, 3_600_000_000);
        self.response.saturating_record(us(response));
        self.service.saturating_record(us(service));
        if ok {
            self.ok += 1;
        } else {
            self.errors += 1;
        }
    }
}

fn percentiles(h: &Histogram<u64>) -> Percentiles {
    let ms = |v: u64| v as f64 / 1000.0;
    Percentiles {
        p50_ms: ms(h.value_at_quantile(0.50)),
        p90_ms: ms(h.value_at_quantile(0.90)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
    }
}

pub async fn run(spec: &Spec) -> Result<Figures, LoadError> {
    if !(spec.rate > 0.0 && spec.rate <= 100_000.0) || spec.duration.is_zero() {
        return Err(LoadError::Spec {
            rate: spec.rate,
            duration: spec.duration,
        });
    }
    let http = reqwest::Client::builder()
        .timeout(spec.timeout)
        .no_proxy()
        .pool_max_idle_per_host(spec.max_in_flight)
        .build()
        .map_err(|e| LoadError::Client(e.to_string()))?;
    let rec = Arc::new(Mutex::new(Recorder::new()));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(spec.max_in_flight.max(1)));
    let due = (spec.rate * spec.duration.as_secs_f64()).floor() as u64;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..due {
        let at = start + Duration::from_secs_f64(i as f64 / spec.rate);
        tokio::time::sleep_until(at.into()).await;
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            let late = Instant::now().saturating_duration_since(at);
            rec.lock()
                .unwrap_or_else(|p| p.into_inner())
                .record(late, Duration::ZERO, false);
            continue;
        };
        let (http, rec, url, token) = (
            http.clone(),
            rec.clone(),
            spec.url.clone(),
            spec.token.clone(),
        );
        tasks.spawn(async move {
            let sent = Instant::now();
            let ok = match http.get(&url).bearer_auth(&token).send().await {
                Ok(r) => {
                    let good = r.status().as_u16() < 500;
                    // The answer is read whole: the latency a client sees includes the body.
                    good && r.bytes().await.is_ok()
                }
                Err(_) => false,
            };
            let done = Instant::now();
            rec.lock()
                .unwrap_or_else(|p| p.into_inner())
                .record(done - at, done - sent, ok);
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let r = rec.lock().unwrap_or_else(|p| p.into_inner());
    Ok(Figures {
        rate: spec.rate,
        duration_ms: spec.duration.as_millis() as u64,
        due,
        ok: r.ok,
        errors: r.errors,
        response: percentiles(&r.response),
        service: percentiles(&r.service),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generator_that_fell_behind_shows_in_response_time_and_not_in_service_time() {
        // 1,000 requests due 10 ms apart; the generator could not send the 100 due in one second
        // until it ended: counted from their due time, they waited; from their send, they did not.
        let mut r = Recorder::new();
        for i in 0..1000u64 {
            let due_ms = i * 10;
            let (resp, serv) = if (2000..3000).contains(&due_ms) {
                (3000 - due_ms + 2, 2)
            } else {
                (2, 2)
            };
            r.record(
                Duration::from_millis(resp),
                Duration::from_millis(serv),
                true,
            );
        }
        let (resp, serv) = (percentiles(&r.response), percentiles(&r.service));
        assert!(resp.p99_ms > 900.0, "{resp:?}");
        assert!(serv.p99_ms < 3.0, "{serv:?}");
    }

    #[tokio::test]
    async fn a_bad_spec_is_refused_before_anything_is_sent() {
        let spec = Spec {
            url: "http://127.0.0.1:9/".into(),
            token: String::new(),
            rate: 0.0,
            duration: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            max_in_flight: 10,
        };
        assert!(matches!(run(&spec).await, Err(LoadError::Spec { .. })));
    }
}
