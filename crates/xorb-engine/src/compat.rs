//! Which services can run on the result of a destructive step. Pure: the planner refuses a plan that would run
//! such a step while a service that cannot run on its result is still up, and the target asks the same question
//! of the live processes right before acting (what runs may differ from what was planned).
//!
//! The data is the releases' own: `schema.runs_on`, the streams of `nats/streams.yaml`, `redis.databases`, and
//! the platform contract that a release with `features.control_plane` has an api that needs its control plane
//! (docs/design/platform.md, `XORB_CONTROL_PLANE_URL`).

use std::collections::BTreeMap;

use xorb_model::plan::{Action, StepSpec};
use xorb_model::release::Release;

/// Whether `action` destroys something a service may depend on (schema, streams, Redis data, a service).
pub fn is_destructive(action: &Action) -> bool {
    matches!(
        action,
        Action::Migrate { .. }
            | Action::NatsApply { .. }
            | Action::RedisApply { .. }
            | Action::RemoveService { .. }
            | Action::DbSwitch { .. }
    )
}

/// Why `role`, running `runs`, cannot run once `action` (towards release `to`) is done; `None` when it can.
pub fn cannot_run_after(
    action: &Action,
    role: &str,
    runs: &Release,
    to: &Release,
) -> Option<String> {
    match action {
        Action::Migrate { to_revision, .. }
        | Action::DbSwitch {
            revision: to_revision,
            ..
        } => (!runs.manifest.schema.runs_on.contains(to_revision))
            .then(|| {
                format!(
                    "{} runs only on schema revision(s) {}, and this step takes the schema to {to_revision}",
                    runs.name(),
                    runs.manifest.schema.runs_on.join(", ")
                )
            }),
        Action::NatsApply { .. } => {
            let gone: Vec<&str> = runs
                .streams
                .iter()
                .map(|s| s.name.as_str())
                .filter(|n| !to.streams.iter().any(|t| t.name == *n))
                .collect();
            (!gone.is_empty()).then(|| {
                format!(
                    "{} needs stream(s) {}, which this step removes",
                    runs.name(),
                    gone.join(", ")
                )
            })
        }
        Action::RedisApply { .. } => {
            let flushed: Vec<String> = runs
                .manifest
                .redis
                .databases
                .iter()
                .filter(|d| !to.manifest.redis.databases.contains(d))
                .map(|d| d.to_string())
                .collect();
            (!flushed.is_empty()).then(|| {
                format!(
                    "{} uses Redis database(s) {}, which this step flushes",
                    runs.name(),
                    flushed.join(", ")
                )
            })
        }
        Action::RemoveService { service } => (service == "control-plane"
            && role == "api"
            && runs.manifest.features.control_plane)
            .then(|| {
                format!(
                    "{}'s api needs its control plane, which this step removes",
                    runs.name()
                )
            }),
        _ => None,
    }
}

/// A destructive step that would run while a service that cannot run on its result is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incompatible {
    pub step: String,
    pub service: String,
    pub release: String,
    pub why: String,
}

/// Walks the plan's steps in order, following which release each service runs after each phase 2 step, and
/// returns the first destructive step that some service still up could not survive. `live` is service → release
/// as observed; `releases` holds the releases those may be on (a service on an unknown release is not judged).
pub fn first_incompatible(
    steps: &[StepSpec],
    live: &BTreeMap<String, String>,
    releases: &[&Release],
    to: &Release,
) -> Option<Incompatible> {
    let mut running = live.clone();
    for step in steps {
        if is_destructive(&step.action) {
            let removed = match &step.action {
                Action::RemoveService { service } => Some(service.as_str()),
                _ => None,
            };
            for (role, rel_name) in &running {
                if Some(role.as_str()) == removed {
                    continue;
                }
                let Some(rel) = releases.iter().find(|r| r.name() == rel_name) else {
                    continue;
                };
                if let Some(why) = cannot_run_after(&step.action, role, rel, to) {
                    return Some(Incompatible {
                        step: step.id.clone(),
                        service: role.clone(),
                        release: rel_name.clone(),
                        why,
                    });
                }
            }
        }
        match &step.action {
            Action::SetImage {
                service, release, ..
            }
            | Action::AddService {
                service, release, ..
            } => {
                running.insert(service.clone(), release.clone());
            }
            Action::RemoveService { service } => {
                running.remove(service);
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use xorb_model::plan::{MigrationDirection, Phase, Safety};

    fn rel(name: &str) -> Release {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../releases");
        Release::load_named(&root, name).unwrap()
    }

    const RC1: &str = "v2025.08-rc1";
    const STABLE: &str = "v2025.07-stable";

    fn step(id: &str, action: Action) -> StepSpec {
        StepSpec::new(id, Phase::Database, id, action, Safety::Probed)
    }

    fn down(to: &str) -> Action {
        Action::Migrate {
            revision: "8d9a2c3".into(),
            to_revision: to.into(),
            direction: MigrationDirection::Down,
            data_migration: None,
            preserve: vec![],
        }
    }

    #[test]
    fn rc1_cannot_survive_a_downgrade_the_stream_removal_the_redis_flush_or_losing_its_control_plane()
     {
        let (rc1, stable) = (rel(RC1), rel(STABLE));
        let to = || STABLE.to_string();
        let schema = cannot_run_after(&down("7c8f1b2"), "worker", &rc1, &stable).unwrap();
        assert!(
            schema.contains("8d9a2c3") && schema.contains("7c8f1b2"),
            "{schema}"
        );
        let nats = cannot_run_after(
            &Action::NatsApply { release: to() },
            "worker",
            &rc1,
            &stable,
        );
        assert!(nats.unwrap().contains("xorb-tenant-streams"));
        let redis = cannot_run_after(&Action::RedisApply { release: to() }, "api", &rc1, &stable);
        assert!(redis.unwrap().contains("1, 2"));
        let cp = Action::RemoveService {
            service: "control-plane".into(),
        };
        assert!(cannot_run_after(&cp, "api", &rc1, &stable).is_some());
        // Only rc1's api calls the control plane; stable's services run on every rc1 revision.
        assert_eq!(cannot_run_after(&cp, "worker", &rc1, &stable), None);
        assert_eq!(cannot_run_after(&cp, "api", &stable, &stable), None);
        assert_eq!(
            cannot_run_after(&down("1a5be11"), "api", &stable, &stable),
            None
        );
        assert_eq!(
            cannot_run_after(
                &Action::NatsApply { release: to() },
                "api",
                &stable,
                &stable
            ),
            None
        );
    }

    #[test]
    fn a_service_left_on_rc1_makes_the_first_destructive_step_incompatible() {
        let (rc1, stable) = (rel(RC1), rel(STABLE));
        let live: BTreeMap<String, String> = ["api", "control-plane", "worker"]
            .iter()
            .map(|s| (s.to_string(), RC1.to_string()))
            .collect();
        let set = |s: &str| {
            step(
                &format!("2.{s}.image"),
                Action::SetImage {
                    service: s.into(),
                    image: format!("xorb/{s}:{STABLE}"),
                    release: STABLE.into(),
                },
            )
        };
        let remove_cp = step(
            "2.control-plane.remove",
            Action::RemoveService {
                service: "control-plane".into(),
            },
        );
        let g8 = step("3.g8.downgrade.8d9a2c3", down("7c8f1b2"));
        // Everything switched first: fine.
        let ok = [set("api"), remove_cp.clone(), set("worker"), g8.clone()];
        assert_eq!(
            first_incompatible(&ok, &live, &[&rc1, &stable], &stable),
            None
        );
        // The worker left on rc1: the downgrade is refused, naming it.
        let bad = [set("api"), remove_cp.clone(), g8.clone()];
        let i = first_incompatible(&bad, &live, &[&rc1, &stable], &stable).unwrap();
        assert_eq!(
            (i.step.as_str(), i.service.as_str(), i.release.as_str()),
            ("3.g8.downgrade.8d9a2c3", "worker", RC1)
        );
        // The control plane removed before the api switched.
        let early = [remove_cp, set("api"), set("worker"), g8];
        let i = first_incompatible(&early, &live, &[&rc1, &stable], &stable).unwrap();
        assert_eq!(
            (i.step.as_str(), i.service.as_str()),
            ("2.control-plane.remove", "api")
        );
    }
}
