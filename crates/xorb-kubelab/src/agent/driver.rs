//! The agent's loop: one task owns all state. Pod events come from the watch, process exits from one waiter
//! task per process, and a 200 ms tick drives restarts, grace periods and status updates.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Service,
};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::watcher;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use super::env::command_line;
use super::ports::{PORTS_ANNOTATION, PortMap};
use super::probes::{ProbeTarget, Prober};
use super::spawn::{Ctl, Exit, spawn_process};
use super::state::{
    BACKOFF_MAX, Condition, ContainerRun, DRAIN, PodRun, State, Terminated, container_id, grace_of,
    signal,
};
use super::volumes::Mounts;
use super::{AgentConfig, AgentProcess, Entrypoint, Env, Shared, now};

pub(super) struct Agent {
    pub(super) pods: Api<Pod>,
    pub(super) config_maps: Api<ConfigMap>,
    pub(super) services: Api<Service>,
    pub(super) claims: Api<PersistentVolumeClaim>,
    pub(super) volumes: Api<PersistentVolume>,
    pub(super) secrets: Api<Secret>,
    pub(super) config: AgentConfig,
    pub(super) runs: HashMap<String, PodRun>,
    pub(super) exit_tx: mpsc::UnboundedSender<Exit>,
    pub(super) shared: Shared,
    pub(super) next_instance: u64,
}

pub(super) const TICK: Duration = Duration::from_millis(200);
pub(super) const STOP_GRACE_CAP: Duration = Duration::from_secs(10);

impl Agent {
    pub(super) async fn run(
        mut self,
        mut stop: oneshot::Receiver<()>,
        mut exits: mpsc::UnboundedReceiver<Exit>,
    ) {
        let watch = watcher(self.pods.clone(), watcher::Config::default());
        let mut watch = std::pin::pin!(watch);
        let mut tick = tokio::time::interval(TICK);
        let mut listing: Option<HashSet<String>> = None;
        loop {
            tokio::select! {
                _ = &mut stop => break,
                ev = watch.next() => match ev {
                    Some(Ok(watcher::Event::Init)) => listing = Some(HashSet::new()),
                    Some(Ok(watcher::Event::InitApply(pod))) => {
                        if let Some(seen) = listing.as_mut()
                            && let Some(uid) = pod.metadata.uid.clone()
                        {
                            seen.insert(uid);
                        }
                        self.on_pod(pod).await;
                    }
                    Some(Ok(watcher::Event::InitDone)) => {
                        // A relist: what was running and is not listed any more is gone.
                        if let Some(seen) = listing.take() {
                            for (uid, run) in self.runs.iter_mut() {
                                if !seen.contains(uid) {
                                    run.gone = true;
                                }
                            }
                        }
                    }
                    Some(Ok(watcher::Event::Apply(pod))) => self.on_pod(pod).await,
                    Some(Ok(watcher::Event::Delete(pod))) => {
                        if let Some(run) = pod.metadata.uid.as_ref().and_then(|u| self.runs.get_mut(u)) {
                            run.gone = true;
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!("node agent: watch error: {e}");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    None => break,
                },
                Some(exit) = exits.recv() => self.on_exit(exit),
                _ = tick.tick() => self.on_tick().await,
            }
        }
        self.shutdown(&mut exits).await;
    }

    /// Stops every container: SIGTERM, each Pod's grace period (capped), SIGKILL; waits for the exits.
    async fn shutdown(&mut self, exits: &mut mpsc::UnboundedReceiver<Exit>) {
        let mut deadline = Instant::now();
        for run in self.runs.values_mut() {
            let grace = grace_of(&run.pod).min(STOP_GRACE_CAP);
            deadline = deadline.max(Instant::now() + grace);
            for c in &mut run.containers {
                signal(c, Ctl::Term);
                c.next_start = None;
            }
        }
        let mut killed = false;
        while self.runs.values().any(|r| {
            r.containers
                .iter()
                .any(|c| matches!(c.state, State::Running { .. }))
        }) {
            if !killed && Instant::now() >= deadline {
                for run in self.runs.values_mut() {
                    for c in &mut run.containers {
                        signal(c, Ctl::Kill);
                    }
                }
                killed = true;
            }
            if let Ok(Some(exit)) = tokio::time::timeout(TICK, exits.recv()).await {
                self.on_exit(exit);
            }
        }
        self.publish();
    }

    async fn on_pod(&mut self, pod: Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        let name = pod.metadata.name.clone().unwrap_or_default();
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let deleting = pod.metadata.deletion_timestamp.is_some();
        match node {
            None if !deleting => {
                self.bind(&name, &uid).await;
                return;
            }
            Some(n) if n == self.config.node_name => {}
            _ => return,
        }
        let finished = matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded") | Some("Failed")
        );
        if !self.runs.contains_key(&uid) {
            if deleting {
                // Never started here (or the agent restarted): nothing to stop, finish the deletion.
                self.finalize_delete(&name, &uid).await;
                return;
            }
            if finished {
                return;
            }
            let run = self.new_run(&name, &uid, pod.clone());
            self.runs.insert(uid.clone(), run);
        }
        let Some(run) = self.runs.get_mut(&uid) else {
            return;
        };
        run.pod = pod;
        if deleting && run.kill_at.is_none() {
            let grace = grace_of(&run.pod);
            run.kill_at = Some(Instant::now() + grace);
            run.term_at = Some(Instant::now() + DRAIN.min(grace));
            for c in &mut run.containers {
                c.next_start = None;
            }
            run.dirty = true;
        }
    }

    fn new_run(&mut self, name: &str, uid: &str, pod: Pod) -> PodRun {
        let spec = pod.spec.clone().unwrap_or_default();
        let refused = if spec.init_containers.as_ref().is_some_and(|v| !v.is_empty()) {
            Some("init containers are not supported by the xorb node agent yet".to_string())
        } else {
            None
        };
        let short_uid: String = uid.chars().take(8).collect();
        let dir = self
            .config
            .work_dir
            .join(&self.config.namespace)
            .join(format!("{name}-{short_uid}"));
        let t = now();
        let mut conditions = BTreeMap::new();
        for (ty, status) in [
            ("PodScheduled", true),
            ("Initialized", true),
            ("ContainersReady", false),
            ("Ready", false),
        ] {
            conditions.insert(
                ty,
                Condition {
                    status,
                    since: t.clone(),
                    reason: None,
                    message: None,
                },
            );
        }
        let (ports, refused) = match (refused, PortMap::allocate(&pod)) {
            (Some(why), _) => (PortMap::default(), Some(why)),
            (None, Ok(p)) => (p, None),
            (None, Err(why)) => (PortMap::default(), Some(why)),
        };
        PodRun {
            name: name.to_string(),
            uid: uid.to_string(),
            dir,
            start_time: t,
            containers: spec
                .containers
                .iter()
                .cloned()
                .map(ContainerRun::new)
                .collect(),
            conditions,
            kill_at: None,
            term_at: None,
            gone: false,
            dirty: true,
            ports,
            annotated: false,
            refused,
            pod,
        }
    }

    async fn bind(&self, name: &str, uid: &str) {
        let binding = json!({
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name, "uid": uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.config.node_name},
        });
        match self
            .pods
            .create_subresource::<Value, Value>("binding", name, &PostParams::default(), &binding)
            .await
        {
            Ok(_) => {}
            // Bound meanwhile (409), or gone (404): the watch tells what happened.
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {}
            Err(e) => tracing::warn!("node agent: binding {name}: {e}"),
        }
    }

    fn on_exit(&mut self, exit: Exit) {
        let Some(run) = self.runs.get_mut(&exit.uid) else {
            return;
        };
        let Some(c) = run
            .containers
            .iter_mut()
            .find(|c| c.spec.name == exit.container)
        else {
            return;
        };
        let State::Running {
            started_at,
            instance,
            ..
        } = &c.state
        else {
            return;
        };
        if *instance != exit.instance {
            return;
        }
        let code = exit.code.unwrap_or_else(|| 128 + exit.signal.unwrap_or(0));
        let reason = if code == 0 { "Completed" } else { "Error" };
        let message = c.liveness_kill_at.is_some().then(|| {
            format!(
                "container {} failed its liveness probe and was restarted",
                c.spec.name
            )
        });
        c.readiness = None;
        c.liveness = None;
        c.probe_target = None;
        c.liveness_kill_at = None;
        let t = Terminated {
            exit_code: code,
            signal: exit.signal,
            reason: reason.to_string(),
            message,
            started_at: Some(started_at.clone()),
            finished_at: now(),
            container_id: container_id(&exit.uid, &exit.container, exit.instance),
        };
        let policy = run
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into());
        let restart = run.kill_at.is_none()
            && !run.gone
            && (policy == "Always" || (policy == "OnFailure" && code != 0));
        if restart {
            c.last = Some(t);
            c.next_start = Some(Instant::now() + c.backoff);
            c.state = State::Waiting {
                reason: "CrashLoopBackOff".into(),
                message: format!(
                    "back-off {}s restarting failed container={} pod={}",
                    c.backoff.as_secs(),
                    c.spec.name,
                    run.name
                ),
            };
            c.backoff = (c.backoff * 2).min(BACKOFF_MAX);
        } else {
            c.state = State::Terminated(t);
        }
        run.dirty = true;
        self.publish();
    }

    async fn on_tick(&mut self) {
        let uids: Vec<String> = self.runs.keys().cloned().collect();
        for uid in uids {
            self.drive(&uid).await;
        }
        self.publish();
    }

    /// One step for one Pod: starts due containers, enforces the grace period, finishes deletions, reports.
    async fn drive(&mut self, uid: &str) {
        let Some(run) = self.runs.get_mut(uid) else {
            return;
        };
        let any_running = run
            .containers
            .iter()
            .any(|c| matches!(c.state, State::Running { .. }));
        if run.gone || run.kill_at.is_some() {
            if any_running {
                if run.gone && run.kill_at.is_none() {
                    run.kill_at = Some(Instant::now() + Duration::from_secs(2));
                    run.term_at = Some(Instant::now());
                }
                if run.term_at.is_some_and(|t| Instant::now() >= t) {
                    run.term_at = None;
                    for c in &mut run.containers {
                        signal(c, Ctl::Term);
                    }
                }
                if run.kill_at.is_some_and(|k| Instant::now() >= k) {
                    for c in &mut run.containers {
                        signal(c, Ctl::Kill);
                    }
                }
                if run.dirty && !run.gone {
                    self.report(uid).await;
                }
                return;
            }
            // Every container has ended.
            if run.gone {
                self.runs.remove(uid);
            } else {
                let (name, uid) = (run.name.clone(), run.uid.clone());
                self.report(&uid).await;
                self.finalize_delete(&name, &uid).await;
            }
            return;
        }
        if !run.annotated {
            // Recorded before any container starts, so whoever sees a running container can find its ports.
            let body =
                json!({"metadata": {"annotations": {PORTS_ANNOTATION: run.ports.annotation()}}});
            let name = run.name.clone();
            match self
                .pods
                .patch(&name, &PatchParams::default(), &Patch::Merge(&body))
                .await
            {
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!("node agent: recording the ports of {name}: {e}");
                    return;
                }
            }
        }
        let Some(run) = self.runs.get_mut(uid) else {
            return;
        };
        run.annotated = true;
        let grace = grace_of(&run.pod);
        for c in &mut run.containers {
            if probe_step(c, grace).await {
                run.dirty = true;
            }
        }
        let due: Vec<usize> = run
            .containers
            .iter()
            .enumerate()
            .filter(|(_, c)| {
                !matches!(c.state, State::Running { .. })
                    && c.next_start.is_some_and(|t| Instant::now() >= t)
            })
            .map(|(i, _)| i)
            .collect();
        for i in due {
            self.start_container(uid, i).await;
        }
        if self.runs.get(uid).is_some_and(|r| r.dirty) {
            self.report(uid).await;
        }
    }

    async fn start_container(&mut self, uid: &str, index: usize) {
        let instance = self.next_instance;
        self.next_instance += 1;
        // Everything that needs the API first (env from ConfigMaps and Secrets), then the process.
        let (spec, pod) = match self.runs.get(uid) {
            Some(run) => (run.containers[index].spec.clone(), run.pod.clone()),
            None => return,
        };
        let refused = self.runs.get(uid).and_then(|r| r.refused.clone());
        let image = spec.image.clone().unwrap_or_default();
        let pod_dir = self
            .runs
            .get(uid)
            .map(|r| r.dir.clone())
            .unwrap_or_default();
        let outcome: Result<(Entrypoint, Env, Mounts), (&'static str, String)> =
            match (&refused, self.config.images.resolve(&image)) {
                (Some(why), _) => Err(("CreateContainerConfigError", why.clone())),
                (None, None) => Err((
                    "ErrImagePull",
                    format!("image {image:?} is not in the xorb node agent's image map"),
                )),
                (None, Some(entry)) => {
                    let prepared = async {
                        let env = self.environment(&spec, &pod).await?;
                        let volumes = self.prepare_volumes(&pod, &pod_dir).await?;
                        Ok::<_, String>((env, Mounts::of(&spec, &volumes)?))
                    };
                    match prepared.await {
                        Ok((env, mounts)) => Ok((entry, env, mounts)),
                        Err(why) => Err(("CreateContainerConfigError", why)),
                    }
                }
            };
        let Some(run) = self.runs.get_mut(uid) else {
            return;
        };
        run.dirty = true;
        let c = &mut run.containers[index];
        let (entry, env, mounts) = match outcome {
            Ok(ok) => ok,
            Err((reason, message)) => {
                let reason = if reason == "ErrImagePull" {
                    c.pull_failures += 1;
                    if c.pull_failures > 1 {
                        "ImagePullBackOff"
                    } else {
                        "ErrImagePull"
                    }
                } else {
                    reason
                };
                c.state = State::Waiting {
                    reason: reason.into(),
                    message,
                };
                c.next_start = Some(Instant::now() + c.backoff);
                c.backoff = (c.backoff * 2).min(BACKOFF_MAX);
                return;
            }
        };
        // Everything the process is told is translated once, before `$(VAR)` expansion, so an expanded value is
        // never translated twice (a volume's directory may itself start with a mountPath, as /tmp).
        let ports = run.ports.clone();
        let tr = |s: &str| mounts.translate(&ports.translate(s));
        let env: Env = env.into_iter().map(|(k, v)| (k, tr(&v))).collect();
        let mut told = spec.clone();
        told.command = spec
            .command
            .as_ref()
            .map(|v| v.iter().map(|a| tr(a)).collect());
        told.args = spec
            .args
            .as_ref()
            .map(|v| v.iter().map(|a| tr(a)).collect());
        told.working_dir = spec.working_dir.as_deref().map(tr);
        let entry = Entrypoint {
            program: entry.program,
            args: entry.args.iter().map(|a| tr(a)).collect(),
        };
        let (program, args) = command_line(&told, &entry, &env);
        let target = ProbeTarget {
            spec: spec.clone(),
            ports: run.ports.clone(),
            mounts: mounts.clone(),
            env: env.clone(),
            dir: run.dir.clone(),
        };
        let spawned = spawn_process(
            &run.dir,
            &told,
            &run.name,
            program,
            args,
            env,
            &run.uid,
            instance,
            self.exit_tx.clone(),
        );
        let c = &mut run.containers[index];
        match spawned {
            Ok((pid, ctl)) => {
                if c.started_once {
                    c.restart_count += 1;
                }
                c.started_once = true;
                c.next_start = None;
                let t0 = Instant::now();
                c.readiness = spec
                    .readiness_probe
                    .as_ref()
                    .map(|p| Prober::new(p, false, t0));
                c.liveness = spec
                    .liveness_probe
                    .as_ref()
                    .map(|p| Prober::new(p, true, t0));
                c.probe_target = Some(target);
                c.liveness_kill_at = None;
                c.state = State::Running {
                    started_at: now(),
                    pid,
                    instance,
                    ctl,
                };
            }
            Err(message) => {
                c.state = State::Waiting {
                    reason: "RunContainerError".into(),
                    message,
                };
                c.next_start = Some(Instant::now() + c.backoff);
                c.backoff = (c.backoff * 2).min(BACKOFF_MAX);
            }
        }
        self.publish();
    }

    /// The kubelet's last word on a Pod whose containers have all stopped: delete it for good (grace 0, this
    /// very Pod by uid).
    async fn finalize_delete(&mut self, name: &str, uid: &str) {
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match self.pods.delete(name, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => {
                tracing::warn!("node agent: deleting {name}: {e}");
                return;
            }
        }
        if let Some(run) = self.runs.get_mut(uid) {
            run.gone = true;
        }
        self.runs.remove(uid);
    }

    fn publish(&self) {
        let mut list = Vec::new();
        for run in self.runs.values() {
            for c in &run.containers {
                if let State::Running { pid, ctl, .. } = &c.state {
                    let p = AgentProcess {
                        pod: run.name.clone(),
                        pod_uid: run.uid.clone(),
                        container: c.spec.name.clone(),
                        pid: *pid,
                    };
                    list.push((p, ctl.clone()));
                }
            }
        }
        if let Ok(mut shared) = self.shared.lock() {
            *shared = list;
        }
    }
}

/// Runs the container's probes; a liveness failure stops the container (SIGTERM, SIGKILL after the grace period)
/// and its restart policy decides what follows, as for a kubelet. True when the readiness verdict changed.
async fn probe_step(c: &mut ContainerRun, grace: Duration) -> bool {
    if !matches!(c.state, State::Running { .. }) {
        return false;
    }
    let Some(target) = c.probe_target.clone() else {
        return false;
    };
    let mut changed = false;
    if let Some(p) = c.readiness.as_mut() {
        changed = p.step(&target).await;
    }
    if c.liveness_kill_at.is_none()
        && let Some(p) = c.liveness.as_mut()
    {
        p.step(&target).await;
        if !p.ok {
            tracing::info!(
                "node agent: container {} failed its liveness probe ({}), restarting it",
                c.spec.name,
                p.last_error.as_deref().unwrap_or("no detail")
            );
            c.liveness_kill_at = Some(Instant::now() + grace);
            signal(c, Ctl::Term);
            changed = true;
        }
    }
    if c.liveness_kill_at.is_some_and(|k| Instant::now() >= k) {
        signal(c, Ctl::Kill);
    }
    changed
}
