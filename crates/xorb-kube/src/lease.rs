//! One rollback per cluster: a `coordination.k8s.io/v1` Lease in the namespace, held by one run of one process.
//!
//! The holder is a run, an operator and a process instance. A second run is refused with the holder's name. The
//! same run in another process (a `resume` after a crash) takes the Lease over only once it has expired: the old
//! process may still be alive behind a partition, and two processes must never act at once. Every write carries
//! the resourceVersion read just before (the API server answers 409 to a stale one), except the create, which
//! must not carry one. Protocol: docs/design/kubernetes-target.md.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::PostParams;
use tokio::sync::{Mutex, watch};

use crate::error::{KubeError, Site};

/// The Lease's name: one per namespace, whatever the release.
pub const LEASE_NAME: &str = "xorbctl-rollback";
const RUN_ANNOTATION: &str = "xorbctl.xorb.dev/run";
const OPERATOR_ANNOTATION: &str = "xorbctl.xorb.dev/operator";
const INSTANCE_ANNOTATION: &str = "xorbctl.xorb.dev/instance";

/// Who holds (or wants) the Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub run: String,
    pub operator: String,
    /// This process: a resumed run is another instance of the same run.
    pub instance: String,
}

impl Holder {
    /// A holder for this process. The instance names the machine (host name and boot), the pid and the pid's
    /// start time: unique among processes that could both be alive, and enough for a process on the same machine
    /// to tell that the holder is dead ([`instance_is_dead`]).
    pub fn for_this_process(run: &str, operator: &str) -> Self {
        let pid = std::process::id();
        Holder {
            run: run.to_string(),
            operator: operator.to_string(),
            instance: format!(
                "{}/{}/{pid}/{}",
                machine(),
                boot_id(),
                start_ticks(pid).unwrap_or_else(|| Timestamp::now().as_microsecond().to_string())
            ),
        }
    }

    /// What `kubectl get lease` shows as HOLDER.
    pub fn identity(&self) -> String {
        format!("run {} by {}", self.run, self.operator)
    }
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn machine() -> String {
    read_trimmed("/proc/sys/kernel/hostname")
}

fn boot_id() -> String {
    read_trimmed("/proc/sys/kernel/random/boot_id")
}

/// A pid's start time in clock ticks since boot (`/proc/PID/stat`, field 22): with the boot, it names one
/// process for ever, where a pid alone is reused.
fn start_ticks(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19).map(str::to_string)
}

/// Whether the holder `instance` is a process of this machine and boot that no longer runs. Then its Lease is
/// as good as expired for its own run's resume: nothing can act under it. An instance of another machine (or
/// one this process cannot read) is never taken for dead: it may be alive behind a partition, so its Lease must
/// expire first.
pub fn instance_is_dead(instance: &str) -> bool {
    let mut parts = instance.split('/');
    let (Some(host), Some(boot), Some(pid), Some(ticks), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    if host.is_empty() || boot.is_empty() || host != machine() || boot != boot_id() {
        return false;
    }
    start_ticks(pid).as_deref() != Some(ticks)
}

/// The Lease as read, in the terms this module decides on.
#[derive(Debug, Clone)]
struct Seen {
    lease: Lease,
    run: Option<String>,
    instance: Option<String>,
    identity: Option<String>,
    expires: Option<Timestamp>,
}

impl Seen {
    fn of(lease: Lease) -> Self {
        let ann = lease.metadata.annotations.clone().unwrap_or_default();
        let spec = lease.spec.clone().unwrap_or_default();
        let identity = spec.holder_identity.filter(|h| !h.is_empty());
        let expires = match (&spec.renew_time, spec.lease_duration_seconds) {
            (Some(MicroTime(t)), Some(secs)) => t
                .checked_add(SignedDuration::from_secs(i64::from(secs)))
                .ok(),
            _ => None,
        };
        Seen {
            run: identity
                .as_ref()
                .and_then(|_| ann.get(RUN_ANNOTATION).cloned()),
            instance: identity
                .as_ref()
                .and_then(|_| ann.get(INSTANCE_ANNOTATION).cloned()),
            identity,
            expires,
            lease,
        }
    }

    fn held_by_anyone(&self, now: Timestamp) -> bool {
        self.identity.is_some() && self.expires.is_some_and(|e| e > now)
    }
}

/// A Lease this process holds. Renew it while acting; release it at the end.
pub struct RollbackLease {
    api: Api<Lease>,
    namespace: String,
    holder: Holder,
    duration: Duration,
    /// The Lease as last written by us (its resourceVersion is the precondition of the next write).
    current: Lease,
}

impl std::fmt::Debug for RollbackLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RollbackLease")
            .field("namespace", &self.namespace)
            .field("holder", &self.holder)
            .finish()
    }
}

fn site(verb: &'static str, ns: &str) -> Site {
    Site::new(verb, "lease", ns, LEASE_NAME)
}

fn stamp(lease: &mut Lease, holder: &Holder, duration: Duration, now: Timestamp, taking: bool) {
    let ann = lease
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    ann.insert(RUN_ANNOTATION.into(), holder.run.clone());
    ann.insert(OPERATOR_ANNOTATION.into(), holder.operator.clone());
    ann.insert(INSTANCE_ANNOTATION.into(), holder.instance.clone());
    let spec = lease.spec.get_or_insert_with(Default::default);
    spec.holder_identity = Some(holder.identity());
    spec.lease_duration_seconds =
        Some(i32::try_from(duration.as_secs().max(1)).unwrap_or(i32::MAX));
    spec.renew_time = Some(MicroTime(now));
    if taking {
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
}

impl RollbackLease {
    /// Takes the namespace's Lease for `holder`, valid `duration` past each renewal. Refused (`LeaseHeld`) while
    /// another run holds it, or another instance of the same run holds it unexpired; an expired Lease of another
    /// run is refused too: that run was interrupted and must be resumed or abandoned by a person.
    pub async fn acquire(
        client: kube::Client,
        namespace: &str,
        holder: Holder,
        duration: Duration,
    ) -> Result<Self, KubeError> {
        let api: Api<Lease> = Api::namespaced(client, namespace);
        // Two rounds: a create or update that loses a race re-reads once and decides again on what won.
        for _ in 0..2 {
            let now = Timestamp::now();
            let existing = api
                .get_opt(LEASE_NAME)
                .await
                .map_err(|e| KubeError::from_kube(site("get", namespace), e))?;
            let Some(existing) = existing else {
                let mut lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(LEASE_NAME.into()),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec::default()),
                };
                stamp(&mut lease, &holder, duration, now, true);
                // The first holder is no transition.
                if let Some(s) = lease.spec.as_mut() {
                    s.lease_transitions = Some(0);
                }
                match api.create(&PostParams::default(), &lease).await {
                    Ok(current) => return Ok(Self::new(api, namespace, holder, duration, current)),
                    Err(e) => {
                        let e = KubeError::from_kube(site("create", namespace), e);
                        if e.is_conflict() {
                            continue;
                        }
                        return Err(e);
                    }
                }
            };
            let seen = Seen::of(existing);
            let ours = seen.instance.as_deref() == Some(holder.instance.as_str());
            let same_run = seen.run.as_deref() == Some(holder.run.as_str());
            let free = seen.identity.is_none();
            // The run's own earlier process, dead on this very machine, holds nothing any more.
            let expired =
                !seen.held_by_anyone(now) || seen.instance.as_deref().is_some_and(instance_is_dead);
            if !(ours || free || (same_run && expired)) {
                return Err(held(namespace, &seen));
            }
            let mut lease = seen.lease.clone();
            // Keep the transition count when we merely renew our own.
            stamp(&mut lease, &holder, duration, now, !ours);
            match api
                .replace(LEASE_NAME, &PostParams::default(), &lease)
                .await
            {
                Ok(current) => return Ok(Self::new(api, namespace, holder, duration, current)),
                Err(e) => {
                    let e = KubeError::from_kube(site("update", namespace), e);
                    if e.is_conflict() {
                        continue;
                    }
                    return Err(e);
                }
            }
        }
        // Lost two races in a row: whoever won holds it now.
        let seen = api
            .get_opt(LEASE_NAME)
            .await
            .map_err(|e| KubeError::from_kube(site("get", namespace), e))?
            .map(Seen::of);
        Err(match seen {
            Some(s) => held(namespace, &s),
            None => KubeError::LeaseHeld {
                namespace: namespace.into(),
                lease: LEASE_NAME.into(),
                holder: "another xorbctl (it changed while we tried to take it)".into(),
                until: "unknown".into(),
            },
        })
    }

    fn new(api: Api<Lease>, ns: &str, holder: Holder, duration: Duration, current: Lease) -> Self {
        RollbackLease {
            api,
            namespace: ns.into(),
            holder,
            duration,
            current,
        }
    }

    pub fn holder(&self) -> &Holder {
        &self.holder
    }

    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// Pushes the expiry `duration` past now. `LeaseLost` when someone else took it (only possible after it
    /// expired: this process stalled longer than the Lease lasts) or deleted it.
    pub async fn renew(&mut self) -> Result<(), KubeError> {
        let mut lease = self.current.clone();
        stamp(
            &mut lease,
            &self.holder,
            self.duration,
            Timestamp::now(),
            false,
        );
        match self
            .api
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await
        {
            Ok(l) => {
                self.current = l;
                Ok(())
            }
            Err(e) => {
                let e = KubeError::from_kube(site("update", &self.namespace), e);
                if !(e.is_conflict() || e.is_not_found()) {
                    return Err(e);
                }
                // Our resourceVersion is stale: still ours only if the instance on it is ours.
                let now = self.read().await?;
                match now {
                    Some(seen)
                        if seen.instance.as_deref() == Some(self.holder.instance.as_str()) =>
                    {
                        self.current = seen.lease;
                        Box::pin(self.renew()).await
                    }
                    Some(seen) => Err(self.lost(seen.identity.unwrap_or_else(|| "nobody".into()))),
                    None => Err(self.lost("nobody: the Lease was deleted".into())),
                }
            }
        }
    }

    async fn read(&self) -> Result<Option<Seen>, KubeError> {
        Ok(self
            .api
            .get_opt(LEASE_NAME)
            .await
            .map_err(|e| KubeError::from_kube(site("get", &self.namespace), e))?
            .map(Seen::of))
    }

    fn lost(&self, holder: String) -> KubeError {
        KubeError::LeaseLost {
            namespace: self.namespace.clone(),
            lease: LEASE_NAME.into(),
            holder,
        }
    }

    /// Gives the Lease up (holder cleared, so the next run takes it at once). Nothing to do when it is no longer
    /// ours.
    pub async fn release(self) -> Result<(), KubeError> {
        self.let_go(|spec| {
            spec.holder_identity = None;
            spec.renew_time = None;
        })
        .await
    }

    /// Stops holding the Lease for now but keeps it in the run's name, expired: the run stopped without finishing
    /// (failed, or waiting for a person), so its own `resume` takes the Lease over at once, while any other run is
    /// still refused and told to resume or abandon this one.
    pub async fn hand_over(self) -> Result<(), KubeError> {
        let past = Timestamp::now()
            .checked_sub(SignedDuration::from_secs(
                i64::try_from(self.duration.as_secs()).unwrap_or(i64::MAX / 2) + 1,
            ))
            .unwrap_or(Timestamp::UNIX_EPOCH);
        self.let_go(|spec| spec.renew_time = Some(MicroTime(past)))
            .await
    }

    /// Writes the Lease with `edit` applied to its spec and this instance's mark removed, preconditioned on the
    /// resourceVersion of our last write; on a conflict, again if the Lease is still ours, else nothing.
    async fn let_go(self, edit: impl Fn(&mut LeaseSpec)) -> Result<(), KubeError> {
        let mut lease = self.current.clone();
        for _ in 0..2 {
            if let Some(spec) = lease.spec.as_mut() {
                edit(spec);
            }
            if let Some(ann) = lease.metadata.annotations.as_mut() {
                ann.remove(INSTANCE_ANNOTATION);
            }
            match self
                .api
                .replace(LEASE_NAME, &PostParams::default(), &lease)
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) => {
                    let e = KubeError::from_kube(site("update", &self.namespace), e);
                    if !(e.is_conflict() || e.is_not_found()) {
                        return Err(e);
                    }
                    match self.read().await? {
                        Some(seen)
                            if seen.instance.as_deref() == Some(self.holder.instance.as_str()) =>
                        {
                            lease = seen.lease;
                        }
                        _ => return Ok(()),
                    }
                }
            }
        }
        Err(self.lost("another writer that kept changing it".into()))
    }

    /// Renews every third of the Lease's duration on a task until [`HeldLease::release`]; the task stops and
    /// reports when the Lease is lost, and the run must stop acting.
    pub fn keep_renewed(self) -> HeldLease {
        let every = (self.duration / 3).max(Duration::from_millis(200));
        let (tx, rx) = watch::channel(None);
        let lease = Arc::new(Mutex::new(Some(self)));
        let task_lease = lease.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let mut guard = task_lease.lock().await;
                let Some(l) = guard.as_mut() else { return };
                if let Err(e) = l.renew().await {
                    // A dropped connection may come back before expiry: only a lost Lease ends the task.
                    if matches!(e, KubeError::LeaseLost { .. }) {
                        let _ = tx.send(Some(e.to_string()));
                        return;
                    }
                    tracing::warn!("renewing the rollback Lease: {e}");
                }
            }
        });
        HeldLease {
            lease,
            task,
            lost: rx,
        }
    }
}

fn held(namespace: &str, seen: &Seen) -> KubeError {
    let mut holder = seen.identity.clone().unwrap_or_else(|| "unknown".into());
    if seen.run.is_some() && !seen.held_by_anyone(Timestamp::now()) {
        holder.push_str(
            ", whose Lease expired: that run was interrupted; resume it, or delete the Lease once you know it is abandoned",
        );
    }
    KubeError::LeaseHeld {
        namespace: namespace.into(),
        lease: LEASE_NAME.into(),
        holder,
        until: seen
            .expires
            .map(|t| t.to_string())
            .unwrap_or_else(|| "unknown".into()),
    }
}

/// A Lease renewed in the background.
pub struct HeldLease {
    lease: Arc<Mutex<Option<RollbackLease>>>,
    task: tokio::task::JoinHandle<()>,
    lost: watch::Receiver<Option<String>>,
}

impl HeldLease {
    /// Why the Lease was lost, if it was: the run must stop acting.
    pub fn lost(&self) -> Option<String> {
        self.lost.borrow().clone()
    }

    /// A receiver that holds why the Lease was lost once it is (None until then), for whoever must stop acting.
    pub fn lost_signal(&self) -> watch::Receiver<Option<String>> {
        self.lost.clone()
    }

    /// Stops renewing and gives the Lease up.
    pub async fn release(self) -> Result<(), KubeError> {
        match self.stop().await {
            Some(l) => l.release().await,
            None => Ok(()),
        }
    }

    /// Stops renewing and hands the Lease to the run's own resume ([`RollbackLease::hand_over`]).
    pub async fn hand_over(self) -> Result<(), KubeError> {
        match self.stop().await {
            Some(l) => l.hand_over().await,
            None => Ok(()),
        }
    }

    async fn stop(self) -> Option<RollbackLease> {
        self.task.abort();
        self.lease.lock().await.take()
    }
}

#[cfg(test)]
mod tests;
