//! What an emergency procedure may do to the live stack. Pure: the target observes what runs and is healthy,
//! asks [`decide`], acts, observes again and reports with [`describe`].
//!
//! The runbook's procedures shed load to keep the api serving. They are worth it only while the api serves: with
//! the api down, stopping the other roles takes away what still works and gains nothing, so the procedure stops
//! nothing and says so.

use xorb_model::plan::EmergencyProcedure;

/// One live service as the target saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub role: String,
    pub release: String,
    pub healthy: bool,
}

/// What the procedure will do.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    /// Roles to stop.
    pub stop: Vec<String>,
    /// Restart the api with `CIRCUIT_BREAKER_ENABLED=true` (cascade prevention).
    pub circuit_breaker: bool,
    /// Why the procedure does less than the runbook says, when it does.
    pub held_back: Option<String>,
}

pub fn decide(procedure: EmergencyProcedure, observed: &[Observed]) -> Decision {
    let api_serves = observed.iter().any(|o| o.role == "api" && o.healthy);
    if !api_serves {
        let what = if observed.iter().any(|o| o.role == "api") {
            "the api runs but is not healthy"
        } else {
            "the api is not running"
        };
        return Decision {
            held_back: Some(format!(
                "{what}: stopping other roles would leave nothing serving, so nothing was stopped"
            )),
            ..Decision::default()
        };
    }
    let mut stop: Vec<String> = Vec::new();
    for o in observed {
        let sheds = match procedure {
            EmergencyProcedure::MinimalService => o.role != "api",
            EmergencyProcedure::CascadePrevention => o.role == "worker" || o.role == "scheduler",
            // Not a procedure on roles: the target restores the database (xorb-adapters' pg::restore).
            EmergencyProcedure::RestoreBackup => false,
        };
        if sheds && !stop.contains(&o.role) {
            stop.push(o.role.clone());
        }
    }
    Decision {
        stop,
        circuit_breaker: procedure == EmergencyProcedure::CascadePrevention,
        held_back: None,
    }
}

/// What runs afterwards, as observed: every role of `roles` either with its release and health, or "down".
pub fn describe(roles: &[String], observed: &[Observed]) -> String {
    let mut up = Vec::new();
    let mut down = Vec::new();
    for role in roles {
        let on: Vec<&Observed> = observed.iter().filter(|o| &o.role == role).collect();
        if on.is_empty() {
            down.push(role.clone());
            continue;
        }
        for o in on {
            up.push(format!(
                "{role} on {} ({})",
                o.release,
                if o.healthy { "healthy" } else { "UNHEALTHY" }
            ));
        }
    }
    let up = if up.is_empty() {
        "nothing".to_string()
    } else {
        up.join(", ")
    };
    let down = if down.is_empty() {
        String::new()
    } else {
        format!("; not running: {}", down.join(", "))
    };
    format!("now running: {up}{down}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(role: &str, healthy: bool) -> Observed {
        Observed {
            role: role.into(),
            release: "v2025.08-rc1".into(),
            healthy,
        }
    }

    #[test]
    fn with_the_api_down_minimal_service_stops_nothing_and_says_why() {
        let live = [
            o("orchestrator", true),
            o("control-plane", true),
            o("worker", true),
        ];
        let d = decide(EmergencyProcedure::MinimalService, &live);
        assert!(d.stop.is_empty(), "{d:?}");
        assert!(d.held_back.unwrap().contains("api is not running"));
        let d = decide(
            EmergencyProcedure::CascadePrevention,
            &[o("api", false), o("worker", true)],
        );
        assert!(d.stop.is_empty() && !d.circuit_breaker, "{d:?}");
        assert!(d.held_back.unwrap().contains("not healthy"));
    }

    #[test]
    fn with_the_api_serving_the_runbook_procedure_applies() {
        let live = [o("api", true), o("orchestrator", true), o("worker", false)];
        let d = decide(EmergencyProcedure::MinimalService, &live);
        assert_eq!(d.stop, ["orchestrator", "worker"]);
        assert_eq!(d.held_back, None);
        let d = decide(EmergencyProcedure::CascadePrevention, &live);
        assert_eq!(d.stop, ["worker"]);
        assert!(d.circuit_breaker);
    }

    #[test]
    fn the_description_is_what_was_observed() {
        let roles: Vec<String> = ["api", "orchestrator", "worker"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            describe(&roles, &[o("orchestrator", true), o("worker", false)]),
            "now running: orchestrator on v2025.08-rc1 (healthy), worker on v2025.08-rc1 (UNHEALTHY); not running: api"
        );
        assert_eq!(
            describe(&roles[..1], &[]),
            "now running: nothing; not running: api"
        );
    }
}
