//! The Pod status the agent reports, as a kubelet does.

use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

use super::driver::Agent;
use super::state::{Condition, PodRun, State, Terminated, container_id};
use super::{now, time_json};

impl Agent {
    /// Sends the Pod's status (a merge patch of the whole status the agent owns).
    pub(super) async fn report(&mut self, uid: &str) {
        let Some(run) = self.runs.get_mut(uid) else {
            return;
        };
        let body = status_of(run);
        match self
            .pods
            .patch_status(&run.name, &PatchParams::default(), &Patch::Merge(&body))
            .await
        {
            Ok(_) => run.dirty = false,
            Err(kube::Error::Api(s)) if s.code == 404 => {
                run.dirty = false;
                run.gone = true;
            }
            Err(e) => tracing::warn!("node agent: status of {}: {e}", run.name),
        }
    }
}

/// The status the agent owns, as a merge patch body.
pub(super) fn status_of(run: &mut PodRun) -> Value {
    let mut statuses = Vec::new();
    let mut all_ready = !run.containers.is_empty();
    let (mut pending, mut running, mut restarting, mut failed, mut succeeded) = (0, 0, 0, 0, 0);
    let mut not_ready = Vec::new();
    for c in &run.containers {
        let ready = c.ready() && run.kill_at.is_none();
        if !ready {
            all_ready = false;
            not_ready.push(c.spec.name.clone());
        }
        let (state, started) = match &c.state {
            State::Waiting { reason, message } => {
                if c.started_once {
                    restarting += 1;
                } else {
                    pending += 1;
                }
                let mut w = json!({"reason": reason});
                if !message.is_empty() {
                    w["message"] = json!(message);
                }
                (json!({"waiting": w}), false)
            }
            State::Running { started_at, .. } => {
                running += 1;
                (
                    json!({"running": {"startedAt": time_json(started_at)}}),
                    true,
                )
            }
            State::Terminated(t) => {
                if t.exit_code == 0 {
                    succeeded += 1;
                } else {
                    failed += 1;
                }
                (json!({"terminated": terminated_json(t)}), false)
            }
        };
        let image = c.spec.image.clone().unwrap_or_default();
        let mut s = json!({
            "name": c.spec.name,
            "image": image,
            "imageID": format!("xorb-node-agent://{image}"),
            "ready": ready,
            "started": started,
            "restartCount": c.restart_count,
            "state": state,
            "lastState": c.last.as_ref().map(|t| json!({"terminated": terminated_json(t)})).unwrap_or(json!({})),
        });
        if let State::Running { instance, .. } = &c.state {
            s["containerID"] = json!(container_id(&run.uid, &c.spec.name, *instance));
        } else if let State::Terminated(t) = &c.state {
            s["containerID"] = json!(t.container_id);
        }
        statuses.push(s);
    }
    let policy = run
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.clone())
        .unwrap_or_else(|| "Always".into());
    let phase = if pending > 0 {
        "Pending"
    } else if running > 0 || restarting > 0 {
        "Running"
    } else {
        match policy.as_str() {
            "Never" if failed > 0 => "Failed",
            "Never" => "Succeeded",
            "OnFailure" if failed == 0 && succeeded > 0 => "Succeeded",
            _ => "Running",
        }
    };
    let message = if all_ready {
        None
    } else {
        Some(format!(
            "containers with unready status: [{}]",
            not_ready.join(" ")
        ))
    };
    let reason = (!all_ready).then(|| "ContainersNotReady".to_string());
    for ty in ["ContainersReady", "Ready"] {
        set_condition(run, ty, all_ready, reason.clone(), message.clone());
    }
    let conditions: Vec<Value> = run
        .conditions
        .iter()
        .map(|(ty, c)| {
            let mut v = json!({
                "type": ty,
                "status": if c.status { "True" } else { "False" },
                "lastProbeTime": null,
                "lastTransitionTime": time_json(&c.since),
            });
            if let Some(r) = &c.reason {
                v["reason"] = json!(r);
            }
            if let Some(m) = &c.message {
                v["message"] = json!(m);
            }
            v
        })
        .collect();
    json!({"status": {
        "phase": phase,
        "conditions": conditions,
        "containerStatuses": statuses,
        "hostIP": "127.0.0.1",
        "podIP": "127.0.0.1",
        "podIPs": [{"ip": "127.0.0.1"}],
        "startTime": time_json(&run.start_time),
    }})
}

pub(super) fn set_condition(
    run: &mut PodRun,
    ty: &'static str,
    status: bool,
    reason: Option<String>,
    message: Option<String>,
) {
    let c = run.conditions.entry(ty).or_insert_with(|| Condition {
        status: !status,
        since: now(),
        reason: None,
        message: None,
    });
    if c.status != status {
        c.status = status;
        c.since = now();
    }
    c.reason = reason;
    c.message = message;
}

pub(super) fn terminated_json(t: &Terminated) -> Value {
    let mut v = json!({
        "exitCode": t.exit_code,
        "reason": t.reason,
        "finishedAt": time_json(&t.finished_at),
        "containerID": t.container_id,
    });
    if let Some(s) = t.signal {
        v["signal"] = json!(s);
    }
    if let Some(m) = &t.message {
        v["message"] = json!(m);
    }
    if let Some(s) = &t.started_at {
        v["startedAt"] = time_json(s);
    }
    v
}
