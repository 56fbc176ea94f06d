//! Where the runbook policy meets the releases: every service of a release the run touches needs a place in
//! `service_order`. A service without one gets no phase 2 step, keeps running the old release, and the phases
//! that follow (schema, streams, Redis) pull the ground from under it.

use crate::policy::{Policy, PolicyError};
use crate::release::Release;

impl Policy {
    /// Refuses a `service_order` that leaves out a service of one of `releases`. `origin` names the policy file.
    pub fn check_service_order(
        &self,
        origin: &str,
        releases: &[&Release],
    ) -> Result<(), PolicyError> {
        let mut missing: Vec<String> = Vec::new();
        for r in releases {
            for s in &r.services {
                if !self.service_order.contains(&s.name) && !missing.contains(&s.name) {
                    missing.push(s.name.clone());
                }
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = releases.iter().map(|r| r.name()).collect();
        Err(PolicyError {
            origin: origin.to_string(),
            message: format!(
                "service_order {:?} leaves out {} ({} of {}): every service needs a place in the order, or it \
                 would keep running the old release while the schema, streams and Redis change under it. Nothing was done",
                self.service_order,
                missing.join(", "),
                if missing.len() == 1 {
                    "a service"
                } else {
                    "services"
                },
                names.join(" / ")
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(name: &str) -> Release {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../releases");
        Release::load_named(&root, name).unwrap()
    }

    #[test]
    fn an_order_that_leaves_out_a_service_of_either_release_is_refused_naming_them_and_the_file() {
        let (rc1, stable) = (rel("v2025.08-rc1"), rel("v2025.07-stable"));
        let mut p = Policy::embedded();
        assert!(p.check_service_order("x.toml", &[&rc1, &stable]).is_ok());
        p.service_order = vec![];
        let e = p
            .check_service_order("my-runbook.toml", &[&rc1, &stable])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("my-runbook.toml")
                && e.contains("api, orchestrator, control-plane, worker, scheduler"),
            "{e}"
        );
        p.service_order = ["api", "orchestrator", "worker", "scheduler"]
            .map(String::from)
            .to_vec();
        // Stable alone has no control plane; rc1 does.
        assert!(p.check_service_order("x.toml", &[&stable]).is_ok());
        let e = p
            .check_service_order("x.toml", &[&rc1, &stable])
            .unwrap_err()
            .to_string();
        assert!(e.contains("leaves out control-plane (a service"), "{e}");
    }
}
