//! The compiled-in release table (docs/design/platform.md, "Releases", "Schema", "NATS").
//!
//! `xorb-svc --list-releases` prints [`table_json`]; the rollback tool uses it to check that a
//! release is available before it starts services of that release.

use serde::Serialize;
use std::fmt;

/// A service role. One binary, five roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Api,
    Orchestrator,
    ControlPlane,
    Worker,
    Scheduler,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Api,
        Role::Orchestrator,
        Role::ControlPlane,
        Role::Worker,
        Role::Scheduler,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Api => "api",
            Role::Orchestrator => "orchestrator",
            Role::ControlPlane => "control-plane",
            Role::Worker => "worker",
            Role::Scheduler => "scheduler",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a release can do. `tenant_isolation_modes` lists the `TENANT_ISOLATION_MODE` values the
/// release implements (stable only has `basic`).
#[derive(Clone, Debug, Serialize)]
pub struct ReleaseFeatures {
    pub evidence_system: bool,
    pub tenant_isolation_modes: &'static [&'static str],
    pub control_plane: bool,
    /// Per-tenant session gauges, refreshed on every session listing (rc1's "Advanced tenant
    /// metrics", and its performance regression: `roles/tenant_metrics.rs`).
    pub tenant_metrics: bool,
}

/// The NATS streams and subjects a release uses. Streams belong to the release and are created by
/// `xorbctl`; services only create their durable consumers on them.
#[derive(Clone, Debug, Serialize)]
pub struct ReleaseNats {
    pub jobs_stream: &'static str,
    /// Subject pattern of a job; `{tenant_id}` is replaced by the tenant's uuid.
    pub jobs_subject: &'static str,
    pub events_stream: &'static str,
    pub job_completed_subject: &'static str,
}

#[derive(Clone, Debug, Serialize)]
pub struct Release {
    pub name: &'static str,
    pub version: &'static str,
    pub schema_head: &'static str,
    /// Alembic revisions this release's services accept at start.
    pub runs_on: &'static [&'static str],
    pub roles: &'static [Role],
    pub features: ReleaseFeatures,
    pub nats: ReleaseNats,
}

pub const STABLE: &str = "v2025.07-stable";
pub const RC1: &str = "v2025.08-rc1";

/// Subject on which workers report a finished job (both releases).
pub const JOB_COMPLETED_SUBJECT: &str = "xorb.events.job_completed";
pub const EVENTS_STREAM: &str = "xorb-events";
/// Durable consumer names (both releases).
pub const WORKER_CONSUMER: &str = "xorb-worker";
pub const ORCHESTRATOR_CONSUMER: &str = "xorb-orchestrator";

static RELEASES: [Release; 2] = [
    Release {
        name: STABLE,
        version: "2025.7.3",
        schema_head: "1a5be11",
        // rc1's revisions are expand-only: stable runs on its own head and on every rc1 revision.
        runs_on: &["1a5be11", "6b7e0a1", "7c8f1b2", "8d9a2c3"],
        roles: &[Role::Api, Role::Orchestrator, Role::Worker, Role::Scheduler],
        features: ReleaseFeatures {
            evidence_system: false,
            tenant_isolation_modes: &["basic"],
            control_plane: false,
            tenant_metrics: false,
        },
        nats: ReleaseNats {
            jobs_stream: "xorb-jobs",
            jobs_subject: "xorb.jobs.scan",
            events_stream: EVENTS_STREAM,
            job_completed_subject: JOB_COMPLETED_SUBJECT,
        },
    },
    Release {
        name: RC1,
        version: "2025.8.0-rc1",
        schema_head: "8d9a2c3",
        runs_on: &["8d9a2c3"],
        roles: &[
            Role::Api,
            Role::Orchestrator,
            Role::ControlPlane,
            Role::Worker,
            Role::Scheduler,
        ],
        features: ReleaseFeatures {
            evidence_system: true,
            tenant_isolation_modes: &["basic", "advanced"],
            control_plane: true,
            tenant_metrics: true,
        },
        nats: ReleaseNats {
            jobs_stream: "xorb-tenant-streams",
            jobs_subject: "xorb.tenant.{tenant_id}.jobs",
            events_stream: EVENTS_STREAM,
            job_completed_subject: JOB_COMPLETED_SUBJECT,
        },
    },
];

pub fn all() -> &'static [Release] {
    &RELEASES
}

pub fn find(name: &str) -> Option<&'static Release> {
    RELEASES.iter().find(|r| r.name == name)
}

impl Release {
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    pub fn accepts_revision(&self, revision: &str) -> bool {
        self.runs_on.contains(&revision)
    }

    pub fn supports_isolation_mode(&self, mode: &str) -> bool {
        self.features.tenant_isolation_modes.contains(&mode)
    }

    /// The subject a job for `tenant_id` is published on.
    pub fn job_subject(&self, tenant_id: &uuid::Uuid) -> String {
        self.nats
            .jobs_subject
            .replace("{tenant_id}", &tenant_id.to_string())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReleaseError {
    #[error("unknown release {name:?} (compiled-in releases: {known})")]
    UnknownRelease { name: String, known: String },
    #[error("unknown role {name:?} (roles: api, orchestrator, control-plane, worker, scheduler)")]
    UnknownRole { name: String },
    #[error("role {role} does not exist in release {release} (its roles: {roles})")]
    RoleNotInRelease {
        role: Role,
        release: &'static str,
        roles: String,
    },
}

/// Resolve `--release` and `--role` against the table.
pub fn resolve(release: &str, role: &str) -> Result<(&'static Release, Role), ReleaseError> {
    let rel = find(release).ok_or_else(|| ReleaseError::UnknownRelease {
        name: release.to_string(),
        known: RELEASES
            .iter()
            .map(|r| r.name)
            .collect::<Vec<_>>()
            .join(", "),
    })?;
    let role = Role::parse(role).ok_or_else(|| ReleaseError::UnknownRole {
        name: role.to_string(),
    })?;
    if !rel.has_role(role) {
        return Err(ReleaseError::RoleNotInRelease {
            role,
            release: rel.name,
            roles: rel
                .roles
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    Ok((rel, role))
}

/// The JSON printed by `--list-releases`.
pub fn table_json() -> serde_json::Value {
    serde_json::json!({
        "binary": "xorb-svc",
        "releases": all(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_heads_match_the_contract() {
        let s = find(STABLE).unwrap();
        assert_eq!(s.version, "2025.7.3");
        assert_eq!(s.schema_head, "1a5be11");
        let r = find(RC1).unwrap();
        assert_eq!(r.version, "2025.8.0-rc1");
        assert_eq!(r.schema_head, "8d9a2c3");
    }

    #[test]
    fn stable_runs_on_every_expand_only_revision_rc1_only_on_its_head() {
        let s = find(STABLE).unwrap();
        for rev in ["1a5be11", "6b7e0a1", "7c8f1b2", "8d9a2c3"] {
            assert!(s.accepts_revision(rev), "{rev}");
        }
        assert!(!s.accepts_revision("3f2c7d1"));
        let r = find(RC1).unwrap();
        assert!(r.accepts_revision("8d9a2c3"));
        for rev in ["3f2c7d1", "1a5be11", "6b7e0a1", "7c8f1b2"] {
            assert!(!r.accepts_revision(rev), "{rev}");
        }
        // Every release accepts its own head.
        for rel in all() {
            assert!(rel.accepts_revision(rel.schema_head));
        }
    }

    #[test]
    fn control_plane_only_in_rc1() {
        assert!(resolve(RC1, "control-plane").is_ok());
        let err = resolve(STABLE, "control-plane").unwrap_err();
        assert!(matches!(err, ReleaseError::RoleNotInRelease { .. }));
        assert!(
            err.to_string()
                .contains("role control-plane does not exist in release v2025.07-stable")
        );
        for role in ["api", "orchestrator", "worker", "scheduler"] {
            assert!(resolve(STABLE, role).is_ok());
            assert!(resolve(RC1, role).is_ok());
        }
    }

    #[test]
    fn unknown_release_and_role() {
        assert!(matches!(
            resolve("v2024.01", "api"),
            Err(ReleaseError::UnknownRelease { .. })
        ));
        assert!(matches!(
            resolve(RC1, "web"),
            Err(ReleaseError::UnknownRole { .. })
        ));
    }

    #[test]
    fn job_subjects() {
        let t = uuid::Uuid::parse_str("0b6f3c1e-1111-4222-8333-444455556666").unwrap();
        assert_eq!(find(STABLE).unwrap().job_subject(&t), "xorb.jobs.scan");
        assert_eq!(
            find(RC1).unwrap().job_subject(&t),
            "xorb.tenant.0b6f3c1e-1111-4222-8333-444455556666.jobs"
        );
    }

    #[test]
    fn table_json_lists_both_releases() {
        let v = table_json();
        let rels = v["releases"].as_array().unwrap();
        assert_eq!(rels.len(), 2);
        assert_eq!(rels[0]["name"], STABLE);
        assert_eq!(rels[1]["roles"][2], "control-plane");
        assert_eq!(rels[1]["runs_on"][0], "8d9a2c3");
    }
}
