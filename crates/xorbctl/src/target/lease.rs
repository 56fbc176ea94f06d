//! One rollback per cluster: the run acts only while it holds the namespace's Lease (xorb-kube's `lease`), and
//! every step first checks that it still does. Taken in the run's name before the run is journaled (a refused
//! run leaves nothing behind); given up when the run ends for good; handed to the run's own `resume` when it
//! stops without finishing, so that one takes it over at once and any other run is refused.

use std::time::{Duration, Instant};

use tokio::sync::watch;
use xorb_adapters::TargetRunner;
use xorb_engine::runner::{Probe, StepContext, StepError, StepRunner};
use xorb_kube::KubeError;
use xorb_kube::lease::{HeldLease, Holder, RollbackLease};
use xorb_model::plan::{EmergencyProcedure, RunStatus, StepOutcome, StepSpec};

use super::any::AnyTarget;

/// How long the Lease outlives its last renewal: a process killed mid-run blocks its own resume this long.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);

/// Takes the Lease for `run`. A resume of `run` whose interrupted process still holds it (unexpired: the
/// process may be alive) waits for it to expire, telling `say` until when; anyone else's is a refusal.
pub async fn take(
    client: kube::Client,
    namespace: &str,
    run: &str,
    operator: &str,
    resuming: bool,
    say: impl Fn(String),
) -> Result<HeldLease, KubeError> {
    let holder = Holder::for_this_process(run, operator);
    let own = format!("run {run} by ");
    let deadline = Instant::now() + LEASE_DURATION + Duration::from_secs(5);
    let mut told = false;
    loop {
        match RollbackLease::acquire(client.clone(), namespace, holder.clone(), LEASE_DURATION)
            .await
        {
            Ok(l) => return Ok(l.keep_renewed()),
            Err(KubeError::LeaseHeld {
                holder: h, until, ..
            }) if resuming && h.starts_with(&own) && Instant::now() < deadline => {
                if !told {
                    say(format!(
                        "The Lease {namespace}/{} still names the interrupted process of run {run} (until \
                         {until}); waiting for it to expire, so that two processes never act at once…",
                        xorb_kube::lease::LEASE_NAME
                    ));
                    told = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Lets the Lease go as the run ended: released for good when nothing is left to do, handed to the run's own
/// resume otherwise.
pub async fn finish(lease: HeldLease, status: Option<&RunStatus>) -> Result<(), KubeError> {
    match status {
        Some(RunStatus::Succeeded | RunStatus::Aborted { .. }) => lease.release().await,
        _ => lease.hand_over().await,
    }
}

/// After `abort`: the Lease the aborted run kept (handed over to a resume that will never come) is given back,
/// so the next rollback is not refused in its name. True when it was the run's; a Lease another run holds, or one
/// the run's own process still renews, is left alone (that process gives it back when it stops).
pub async fn release_aborted(
    client: kube::Client,
    namespace: &str,
    run: &str,
) -> Result<bool, KubeError> {
    let holder = Holder::for_this_process(run, "xorbctl abort");
    match RollbackLease::acquire(client, namespace, holder, LEASE_DURATION).await {
        Ok(l) => l.release().await.map(|()| true),
        Err(KubeError::LeaseHeld { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// What runs a rollback's steps: the shared adapters over the target, each step first checking that the run
/// still holds the cluster's Lease (Kubernetes; nothing to check on the local target, whose lock file does it).
pub struct Runner {
    pub inner: TargetRunner<AnyTarget>,
    lost: Option<watch::Receiver<Option<String>>>,
}

impl Runner {
    pub fn new(inner: TargetRunner<AnyTarget>, lease: Option<&HeldLease>) -> Self {
        Runner {
            inner,
            lost: lease.map(HeldLease::lost_signal),
        }
    }

    fn still_held(&self) -> Result<(), StepError> {
        match self.lost.as_ref().and_then(|rx| rx.borrow().clone()) {
            None => Ok(()),
            Some(why) => Err(StepError::fatal(format!(
                "{why}. This run stops acting so that two never act on the cluster at once; once the other \
                 holder has finished, `xorbctl resume` continues it"
            ))),
        }
    }
}

impl StepRunner for Runner {
    async fn probe(&self, step: &StepSpec, ctx: &StepContext<'_>) -> Result<Probe, StepError> {
        self.still_held()?;
        self.inner.probe(step, ctx).await
    }

    async fn run(&self, step: &StepSpec, ctx: &StepContext<'_>) -> Result<StepOutcome, StepError> {
        self.still_held()?;
        self.inner.run(step, ctx).await
    }

    async fn emergency(
        &self,
        procedure: EmergencyProcedure,
        ctx: &StepContext<'_>,
    ) -> Result<String, StepError> {
        self.still_held()?;
        self.inner.emergency(procedure, ctx).await
    }
}
