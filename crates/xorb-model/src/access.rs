//! What a step reads and changes, so the engine knows which steps may run at the same time (issue #14, design:
//! docs/design/concurrent-steps.md). Pure: the planner says it of each step, the engine derives the order.

use serde::{Deserialize, Serialize};

use crate::plan::StepSpec;

/// A part of the stack a step reads or changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resource {
    /// The workloads and their configuration (images, ConfigMaps, network policies).
    Services,
    /// PostgreSQL: the schema and the rows.
    Database,
    /// The JetStream streams.
    Streams,
    Redis,
    /// Prometheus and Alertmanager (configuration, scrapes).
    Monitoring,
    /// The whole stack at once: nothing else may run beside it (the performance check measures the stack, and
    /// anything running beside it would be measured too).
    Stack,
}

impl Resource {
    fn overlaps(self, other: Resource) -> bool {
        self == other || self == Resource::Stack || other == Resource::Stack
    }
}

/// What one step reads and what it changes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reads: Vec<Resource>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub writes: Vec<Resource>,
}

impl Access {
    pub fn reads(reads: &[Resource]) -> Self {
        Access {
            reads: reads.to_vec(),
            writes: Vec::new(),
        }
    }

    pub fn writes(writes: &[Resource], reads: &[Resource]) -> Self {
        Access {
            reads: reads.to_vec(),
            writes: writes.to_vec(),
        }
    }

    /// Whether two steps may not run at the same time: one changes what the other reads or changes.
    pub fn conflicts(&self, other: &Access) -> bool {
        let hits =
            |w: &[Resource], any: &[Resource]| w.iter().any(|a| any.iter().any(|b| a.overlaps(*b)));
        hits(&self.writes, &other.writes)
            || hits(&self.writes, &other.reads)
            || hits(&other.writes, &self.reads)
    }
}

/// Which earlier steps each step waits for: every earlier step of another phase (the runbook's phases hold: a
/// phase starts when the one before it has ended), and every earlier step of its phase it conflicts with. A
/// step that does not say what it touches (a plan journaled before this existed) conflicts with every step, so
/// such a plan runs one step at a time, as it was planned to.
pub fn waits_for(steps: &[StepSpec]) -> Vec<Vec<usize>> {
    steps
        .iter()
        .enumerate()
        .map(|(j, b)| {
            (0..j)
                .filter(|&i| {
                    let a = &steps[i];
                    a.phase != b.phase
                        || match (&a.access, &b.access) {
                            (Some(x), Some(y)) => x.conflicts(y),
                            _ => true,
                        }
                })
                .collect()
        })
        .collect()
}

/// The steps grouped as they would run with nothing failing and every step taking as long: group k holds the
/// steps whose longest chain of waits is k long. What `plan` shows as "runs together".
pub fn waves(steps: &[StepSpec]) -> Vec<Vec<usize>> {
    let waits = waits_for(steps);
    let mut depth = vec![0usize; steps.len()];
    for j in 0..steps.len() {
        depth[j] = waits[j].iter().map(|&i| depth[i] + 1).max().unwrap_or(0);
    }
    let mut out: Vec<Vec<usize>> = Vec::new();
    for (j, d) in depth.into_iter().enumerate() {
        if out.len() <= d {
            out.resize(d + 1, Vec::new());
        }
        out[d].push(j);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::Resource::*;
    use super::*;
    use crate::plan::{Action, Phase, Safety};

    fn step(id: &str, phase: Phase, access: Option<Access>) -> StepSpec {
        let mut s = StepSpec::new(id, phase, id, Action::Noop, Safety::Idempotent);
        s.access = access;
        s
    }

    #[test]
    fn readers_share_and_a_writer_is_alone_with_what_it_writes() {
        let r = Access::reads(&[Database]);
        let w = Access::writes(&[Database], &[]);
        let other = Access::writes(&[Redis], &[]);
        assert!(!r.conflicts(&r));
        assert!(r.conflicts(&w) && w.conflicts(&r) && w.conflicts(&w));
        assert!(!w.conflicts(&other));
        let stack = Access::writes(&[Stack], &[]);
        assert!(stack.conflicts(&r) && r.conflicts(&stack));
        assert!(
            !Access::default().conflicts(&stack),
            "a step that touches nothing"
        );
    }

    #[test]
    fn phases_hold_conflicts_order_a_phase_and_an_unknown_step_runs_alone() {
        let steps = vec![
            step(
                "1.a",
                Phase::Assessment,
                Some(Access::reads(&[Services, Streams])),
            ),
            step("1.b", Phase::Assessment, Some(Access::reads(&[Database]))),
            step(
                "1.c",
                Phase::Assessment,
                Some(Access::writes(&[Streams], &[Services])),
            ),
            step(
                "2.a",
                Phase::Services,
                Some(Access::writes(&[Services], &[])),
            ),
            step("5.a", Phase::Verification, Some(Access::reads(&[Database]))),
            step("5.b", Phase::Verification, Some(Access::reads(&[Services]))),
            step(
                "5.p",
                Phase::Verification,
                Some(Access::writes(&[Stack], &[])),
            ),
            step("5.c", Phase::Verification, None),
        ];
        let w = waits_for(&steps);
        assert!(w[1].is_empty(), "two readers");
        assert_eq!(w[2], [0], "changes the streams 1.a reads");
        assert_eq!(
            w[3],
            [0, 1, 2],
            "the next phase waits for the whole phase before it"
        );
        assert_eq!(w[5], [0, 1, 2, 3], "two readers of one phase");
        assert_eq!(
            w[6],
            [0, 1, 2, 3, 4, 5],
            "the stack-wide step waits for every reader"
        );
        assert_eq!(w[7], [0, 1, 2, 3, 4, 5, 6]);
        let waves: Vec<Vec<&str>> = waves(&steps)
            .into_iter()
            .map(|g| g.into_iter().map(|i| steps[i].id.as_str()).collect())
            .collect();
        assert_eq!(
            waves,
            vec![
                vec!["1.a", "1.b"],
                vec!["1.c"],
                vec!["2.a"],
                vec!["5.a", "5.b"],
                vec!["5.p"],
                vec!["5.c"]
            ]
        );
    }
}
