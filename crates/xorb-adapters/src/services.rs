//! The platform's own HTTP API as a client sees it: health, and waiting for a scan session to complete.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::poll::poll_until;

/// Health of one service as its endpoint reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceHealth {
    pub healthy: bool,
    pub release: Option<String>,
    pub detail: serde_json::Value,
}

/// Asks a service's health endpoint (`base`: `http://host:port`), within 3 s.
pub async fn probe_service(http: &reqwest::Client, base: &str) -> Result<ServiceHealth, String> {
    let url = format!("{base}/api/v1/health");
    let r = http
        .get(&url)
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let healthy = r.status().is_success();
    let detail: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
    let release = detail
        .get("release")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    Ok(ServiceHealth {
        healthy,
        release,
        detail,
    })
}

/// Polls a PTaaS session until it is completed (60 s at most); returns it with its findings.
pub async fn wait_session_completed(
    http: &reqwest::Client,
    api: &str,
    token: &str,
    id: &str,
) -> Option<serde_json::Value> {
    poll_until(Duration::from_secs(60), || async {
        let r = http
            .get(format!("{api}/api/v1/ptaas/sessions/{id}"))
            .bearer_auth(token)
            .send()
            .await
            .ok()?;
        let v: serde_json::Value = r.json().await.ok()?;
        (v["status"] == "completed").then_some(v)
    })
    .await
}
