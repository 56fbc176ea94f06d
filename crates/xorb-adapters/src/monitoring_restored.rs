//! Phase 5's `monitoring` check, the proof of the checklist's "Monitoring restored": Prometheus scrapes
//! every target of the target release, each up and scraped within two of its intervals, no job the
//! release does not have is still scraped, and the rule groups served are the release's. Phase 4 has
//! loaded the configuration; this is what shows it is in effect.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;
use xorb_engine::runner::StepError;
use xorb_model::plan::StepOutcome;

use crate::context::{TargetRunner, failed};
use crate::monitoring::{live_rule_groups, target_rule_groups};
use crate::poll::poll_until;
use crate::target::Target;

/// Prometheus's own default when a configuration names none.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

/// "15s", "1m", "500ms", "1h" as Prometheus writes durations (the forms the releases use).
fn interval(v: &Value) -> Duration {
    let Some(s) = v.as_str() else {
        return DEFAULT_INTERVAL;
    };
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..split].parse().unwrap_or(0);
    let ms = match &s[split..] {
        "ms" => n,
        "s" => n * 1000,
        "m" => n * 60_000,
        "h" => n * 3_600_000,
        _ => 0,
    };
    if ms == 0 {
        DEFAULT_INTERVAL
    } else {
        Duration::from_millis(ms)
    }
}

/// What `/api/v1/targets` says, against the jobs wanted: `Ok(count of targets)` when all are
/// scraped, else what is not.
fn judge_targets(
    answer: &Value,
    wanted: &BTreeMap<String, Duration>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<usize, String> {
    let active = answer["data"]["activeTargets"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut seen = BTreeSet::new();
    let mut problems = Vec::new();
    for t in &active {
        let job = t["labels"]["job"].as_str().unwrap_or_default().to_string();
        let inst = t["labels"]["instance"].as_str().unwrap_or_default();
        let Some(every) = wanted.get(&job) else {
            problems.push(format!(
                "{job} ({inst}) is still scraped but not in the release"
            ));
            continue;
        };
        seen.insert(job.clone());
        let health = t["health"].as_str().unwrap_or_default();
        if health != "up" {
            let err = t["lastError"].as_str().unwrap_or_default();
            problems.push(format!("{job} ({inst}) is {health}: {err}"));
            continue;
        }
        let last = t["lastScrape"]
            .as_str()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok());
        let fresh = chrono::Duration::from_std(*every * 2 + Duration::from_secs(1))
            .unwrap_or(chrono::Duration::MAX);
        if last.is_none_or(|l| now.signed_duration_since(l) > fresh) {
            problems.push(format!("{job} ({inst}) not scraped within two intervals"));
        }
    }
    for job in wanted.keys().filter(|j| !seen.contains(*j)) {
        problems.push(format!("{job} has no target"));
    }
    if problems.is_empty() {
        Ok(active.len())
    } else {
        Err(problems.join("; "))
    }
}

pub(crate) async fn monitoring_restored<T: Target>(
    r: &TargetRunner<T>,
) -> Result<StepOutcome, StepError> {
    let ep = r.endpoints()?;
    let cfg = r
        .target
        .prometheus_config(&r.to, &r.target.prometheus_rules_dir())?;
    let global = interval(&cfg["global"]["scrape_interval"]);
    let wanted: BTreeMap<String, Duration> = cfg["scrape_configs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|j| {
            let name = j["job_name"].as_str()?.to_string();
            let every = if j["scrape_interval"].is_string() {
                interval(&j["scrape_interval"])
            } else {
                global
            };
            Some((name, every))
        })
        .collect();
    let groups = target_rule_groups(&r.to)?;
    let slowest = wanted.values().max().copied().unwrap_or(global);
    let last = std::sync::Mutex::new(String::from("no answer from Prometheus yet"));
    let found = poll_until(slowest * 3 + Duration::from_secs(10), || async {
        let attempt = async {
            let answer: Value = r
                .http
                .get(format!("{}/api/v1/targets", ep.prometheus))
                .send()
                .await
                .map_err(|e| format!("Prometheus at {}: {e}", ep.prometheus))?
                .json()
                .await
                .map_err(|e| format!("Prometheus's targets: {e}"))?;
            let n = judge_targets(&answer, &wanted, chrono::Utc::now())?;
            let live = live_rule_groups(&r.http, &ep.prometheus).await?;
            if live != groups {
                return Err(format!(
                    "rule groups served: [{}]; {} has [{}]",
                    live.iter()
                        .map(|(g, _)| g.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    r.to.name(),
                    groups
                        .iter()
                        .map(|(g, _)| g.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            Ok(n)
        };
        match attempt.await {
            Ok(n) => Some(n),
            Err(e) => {
                *last.lock().unwrap_or_else(|p| p.into_inner()) = e;
                None
            }
        }
    })
    .await;
    match found {
        Some(n) => Ok(StepOutcome::succeeded(format!(
            "Prometheus scrapes all {n} targets of {} ({} jobs) and serves its {} rule groups",
            r.to.name(),
            wanted.len(),
            groups.len()
        ))),
        None => Err(failed(format!(
            "monitoring not restored: {}",
            last.into_inner().unwrap_or_else(|p| p.into_inner())
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn wanted() -> BTreeMap<String, Duration> {
        [("xorb-api".to_string(), Duration::from_secs(15))].into()
    }

    fn target(job: &str, health: &str, ago_s: i64, now: chrono::DateTime<chrono::Utc>) -> Value {
        json!({"labels": {"job": job, "instance": "127.0.0.1:1"}, "health": health, "lastError": "",
               "lastScrape": (now - chrono::Duration::seconds(ago_s)).to_rfc3339()})
    }

    #[test]
    fn every_target_up_and_fresh_and_nothing_else() {
        let now = chrono::Utc::now();
        let ok = json!({"data": {"activeTargets": [target("xorb-api", "up", 3, now)]}});
        assert_eq!(judge_targets(&ok, &wanted(), now), Ok(1));
        let stale = json!({"data": {"activeTargets": [target("xorb-api", "up", 60, now)]}});
        assert!(
            judge_targets(&stale, &wanted(), now)
                .unwrap_err()
                .contains("not scraped")
        );
        let down = json!({"data": {"activeTargets": [target("xorb-api", "down", 3, now)]}});
        assert!(
            judge_targets(&down, &wanted(), now)
                .unwrap_err()
                .contains("is down")
        );
        let extra = json!({"data": {"activeTargets": [target("xorb-api", "up", 3, now), target("xorb-control-plane", "up", 3, now)]}});
        assert!(
            judge_targets(&extra, &wanted(), now)
                .unwrap_err()
                .contains("xorb-control-plane")
        );
        let none = json!({"data": {"activeTargets": []}});
        assert!(
            judge_targets(&none, &wanted(), now)
                .unwrap_err()
                .contains("no target")
        );
    }

    #[test]
    fn intervals_as_prometheus_writes_them() {
        assert_eq!(interval(&json!("15s")), Duration::from_secs(15));
        assert_eq!(interval(&json!("500ms")), Duration::from_millis(500));
        assert_eq!(interval(&json!("2m")), Duration::from_secs(120));
        assert_eq!(interval(&json!("soon")), DEFAULT_INTERVAL);
        assert_eq!(interval(&Value::Null), DEFAULT_INTERVAL);
    }
}
