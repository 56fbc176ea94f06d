//! `xorbctl --target kubernetes` on the lab (a real kube-apiserver and kube-controller-manager; docs/design/
//! kubernetes-lab.md), with Debian's kubectl checking: `stack up --target kubernetes` and a full rollback with
//! demo data, `plan` changing nothing, another run's Lease refusing a rollback before anything is journaled,
//! `--only api` touching the api alone, a kill at every journal boundary of phases 1 and 2, a rollout past its
//! progress deadline.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use xorb_kubelab::stack::{KubeStack, StackConfig};

use crate::common::{repo, svc_bin, text, venv, xorbctl_bin};

const RC1: &str = "v2025.08-rc1";
const STABLE: &str = "v2025.07-stable";
const NS: &str = "xorb";

/// One lab at a time in this binary: two control planes, their node agents and the other tests' stacks on a
/// 2-core machine slow rollouts down past their deadlines.
static ONE_LAB: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct Lab {
    _one: std::sync::MutexGuard<'static, ()>,
    _dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    /// In this process (tests that start it with their own image map)…
    stack: Option<KubeStack>,
    /// …or in the process `xorbctl stack up --target kubernetes` started for this state directory.
    stack_of: Option<PathBuf>,
    kubectl: PathBuf,
    kubeconfig: PathBuf,
    /// What xorbctl connects with when not the admin's: the least-privilege Role's ServiceAccount.
    xorbctl_kubeconfig: Option<PathBuf>,
    target_file: PathBuf,
}

fn one_lab() -> std::sync::MutexGuard<'static, ()> {
    ONE_LAB
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

impl Lab {
    fn rc1() -> Lab {
        Lab::rc1_with(&svc_bin())
    }

    /// rc1 on a lab in this process whose images of the platform run as `svc` (a wrapper of xorb-svc, say).
    fn rc1_with(svc: &Path) -> Lab {
        let one = one_lab();
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime();
        let stack = rt
            .block_on(KubeStack::up(StackConfig {
                releases_root: repo().join("releases"),
                release: RC1.into(),
                svc_bin: svc.to_path_buf(),
                venv: venv(),
                namespace: NS.into(),
                dir: dir.path().join("stack"),
            }))
            .unwrap_or_else(|e| panic!("the lab did not come up: {e}"));
        let target_file = dir.path().join("target.toml");
        std::fs::write(&target_file, xorb_kubelab::stack::target_file_text(&stack)).unwrap();
        Lab {
            _one: one,
            kubectl: stack.lab().binaries().kubectl.clone(),
            kubeconfig: stack.lab().kubeconfig_path().to_path_buf(),
            _dir: dir,
            rt,
            stack: Some(stack),
            stack_of: None,
            xorbctl_kubeconfig: None,
            target_file,
        }
    }

    /// rc1 with demo data, started by `xorbctl stack up --target kubernetes` for state directory `state` (which
    /// it binds to the stack).
    fn stack_up(state: &Path) -> Lab {
        let one = one_lab();
        let mut lab = Lab {
            _one: one,
            _dir: tempfile::tempdir().unwrap(),
            rt: runtime(),
            stack: None,
            stack_of: Some(state.to_path_buf()),
            kubectl: PathBuf::new(),
            kubeconfig: PathBuf::new(),
            xorbctl_kubeconfig: None,
            target_file: PathBuf::new(),
        };
        let out = lab.xorbctl(
            state,
            false,
            &[
                "stack",
                "up",
                "--target",
                "kubernetes",
                "--release",
                RC1,
                "--demo-data",
                "--output",
                "json",
            ],
        );
        assert!(
            out.status.success(),
            "stack up --target kubernetes: {}",
            text(&out)
        );
        let up: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        lab.kubeconfig = PathBuf::from(up["kubeconfig"].as_str().unwrap());
        lab.target_file = PathBuf::from(up["target_file"].as_str().unwrap());
        lab.kubectl = xorb_kubelab::Binaries::locate().unwrap().kubectl;
        lab
    }

    /// From now on xorbctl acts as the releases' `xorbctl` ServiceAccount, bound to the Role with the least
    /// privilege it needs (`k8s/rbac/xorbctl.yaml`, applied here as an operator would).
    fn as_least_privilege(&mut self) {
        let rbac = repo().join(format!("releases/{RC1}/k8s/rbac/xorbctl.yaml"));
        self.kubectl(&["apply", "-f", rbac.to_str().unwrap()]);
        let lab = self.stack.as_ref().unwrap().lab();
        let token = lab
            .mint_service_account_token(NS, "xorbctl", std::time::Duration::from_secs(3600))
            .unwrap();
        let path = self._dir.path().join("xorbctl.kubeconfig");
        lab.write_kubeconfig(&path, "xorbctl", &token).unwrap();
        self.xorbctl_kubeconfig = Some(path);
    }

    fn kubectl(&self, args: &[&str]) -> String {
        let out = Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--namespace", NS])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "kubectl {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every object xorbctl may write, by kind/name, with its resourceVersion.
    fn versions(&self) -> BTreeMap<String, String> {
        self.kubectl(&[
            "get",
            "deployments,statefulsets,services,configmaps,secrets,networkpolicies",
            "-o",
            "jsonpath={range .items[*]}{.kind}/{.metadata.name}={.metadata.resourceVersion}{\"\\n\"}{end}",
        ])
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// How many ReplicaSets each Deployment has had (each a rollout: the controller keeps them all here).
    fn replica_sets(&self) -> BTreeMap<String, usize> {
        let mut n = BTreeMap::new();
        for owner in self
            .kubectl(&[
                "get",
                "replicasets",
                "-o",
                "jsonpath={range .items[*]}{.metadata.ownerReferences[0].name}{\"\\n\"}{end}",
            ])
            .lines()
        {
            *n.entry(owner.to_string()).or_default() += 1;
        }
        n
    }

    fn image(&self, deployment: &str) -> String {
        self.kubectl(&[
            "get",
            "deployment",
            deployment,
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ])
    }

    /// [`Lab::xorbctl`], killed by the engine's hook right after its `crash_after`-th journal write.
    fn xorbctl_env(&self, state: &Path, flags: bool, args: &[&str], crash_after: u32) -> Output {
        self.command(state, flags, args)
            .env("XORB_CRASH_AFTER_JOURNAL_WRITES", crash_after.to_string())
            .output()
            .unwrap()
    }

    /// xorbctl with the state directory `state` and the Kubernetes flags (`flags`: whether to pass them).
    fn xorbctl(&self, state: &Path, flags: bool, args: &[&str]) -> Output {
        self.command(state, flags, args).output().unwrap()
    }

    fn command(&self, state: &Path, flags: bool, args: &[&str]) -> Command {
        let mut c = Command::new(xorbctl_bin());
        c.env("XORB_STATE_DIR", state)
            .env("XORB_RELEASES", repo().join("releases"))
            .env("XORB_VENV", venv())
            .env("XORB_SVC_BIN", svc_bin())
            .env_remove("KUBECONFIG")
            .current_dir(repo());
        if flags {
            c.args(["--target", "kubernetes", "--target-file"])
                .arg(&self.target_file)
                .arg("--kubeconfig")
                .arg(self.xorbctl_kubeconfig.as_ref().unwrap_or(&self.kubeconfig));
        }
        c.args(args);
        c
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(s) = self.stack.take() {
            self.rt.block_on(s.down());
        }
        // Whatever the test did, the stack's process and what it started stop with it.
        if let Some(state) = self.stack_of.take() {
            let _ = self.xorbctl(&state, false, &["stack", "down"]);
        }
    }
}

fn changed(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> Vec<String> {
    let mut keys: Vec<&String> = before.keys().chain(after.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| before.get(*k) != after.get(*k))
        .cloned()
        .collect()
}

#[test]
fn xorbctl_plans_and_rolls_back_a_kubernetes_namespace_under_its_lease() {
    let mut lab = Lab::rc1();
    lab.as_least_privilege();
    let state = tempfile::tempdir().unwrap();
    let state = state.path();
    let rollback = ["rollback", "--from", RC1, "--to", STABLE, "--yes"];

    // `plan` reads the live objects and changes none of them; it binds nothing either.
    let before = lab.versions();
    let out = lab.xorbctl(state, true, &["plan", "--from", RC1, "--to", STABLE]);
    assert!(out.status.success(), "plan: {}", text(&out));
    let plan = text(&out);
    assert!(
        plan.contains("xorb-control-plane") || plan.contains("control-plane"),
        "{plan}"
    );
    assert!(plan.contains(&format!("xorb/api:{STABLE}")), "{plan}");
    // The live diff, field by field, as the API server computes it in a dry run.
    assert!(
        plan.contains(&format!(
            "spec.template.spec.containers[0].image: xorb/api:{RC1} → xorb/api:{STABLE}"
        )),
        "{plan}"
    );
    assert!(
        plan.contains("metadata.annotations.kubernetes.io/change-cause: (absent) → xorbctl: set image deployment/xorb-api"),
        "{plan}"
    );
    assert!(
        plan.contains("deployment/xorb-control-plane, service/xorb-control-plane\n      deleted"),
        "{plan}"
    );
    // Phase 2.2's steps too: rc1's network policy for the control plane deleted, stable's shared configuration
    // in xorb-config (the known limitations on top), the configuration's restart as a new stamp.
    assert!(
        plan.contains(
            "2.objects.apply        networkpolicy/xorb-allow-control-plane-from-api\n      deleted"
        ),
        "{plan}"
    );
    assert!(
        plan.contains("2.config.apply         configmap/xorb-config\n")
            && plan.contains("data.TENANT_ISOLATION_MODE: advanced → basic"),
        "{plan}"
    );
    assert!(
        plan.contains("spec.template.metadata.annotations.xorb.dev/config-sha256: "),
        "{plan}"
    );
    assert_eq!(changed(&before, &lab.versions()), Vec::<String>::new());
    assert!(!state.join("target.json").exists());

    // Another run holds the namespace's Lease: refused with its name, nothing journaled, nothing changed.
    let other = lab.rt.block_on(async {
        let client = xorb_kube::client::from_kubeconfig(&lab.kubeconfig, None, None)
            .await
            .unwrap()
            .client;
        xorb_kube::lease::RollbackLease::acquire(
            client,
            NS,
            xorb_kube::lease::Holder {
                run: "20261201-000000-beef".into(),
                operator: "bob".into(),
                instance: "elsewhere".into(),
            },
            std::time::Duration::from_secs(300),
        )
        .await
        .unwrap()
    });
    let out = lab.xorbctl(state, true, &rollback);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(3), "{t}");
    assert!(t.contains("run 20261201-000000-beef by bob"), "{t}");
    let runs: Vec<_> = std::fs::read_dir(state.join("runs"))
        .into_iter()
        .flatten()
        .collect();
    assert!(runs.is_empty(), "a refused run left {runs:?}");
    assert!(!state.join("target.json").exists());
    assert_eq!(lab.image("xorb-api"), format!("xorb/api:{RC1}"));
    lab.rt.block_on(other.release()).unwrap();

    // A run that stops unfinished (here at its approval gate: P2 with nobody's approval) keeps the Lease in its
    // name for its own resume; `abort` gives it back, so the next rollback is not refused.
    let lease_holder = || {
        lab.kubectl(&[
            "get",
            "lease",
            xorb_kube::lease::LEASE_NAME,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
    };
    let out = lab.xorbctl(
        state,
        true,
        &[
            "rollback",
            "--from",
            RC1,
            "--to",
            STABLE,
            "--severity",
            "P2",
            "--yes",
        ],
    );
    assert_eq!(out.status.code(), Some(9), "{}", text(&out));
    let waiting = show(&lab, state, "latest")["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        lease_holder().starts_with(&format!("run {waiting} by ")),
        "{}",
        lease_holder()
    );
    let out = lab.xorbctl(state, false, &["abort", &waiting, "--by", "alice"]);
    assert!(out.status.success(), "abort: {}", text(&out));
    assert!(
        text(&out).contains("rollback Lease it kept is given back"),
        "{}",
        text(&out)
    );
    assert_eq!(lease_holder(), "");
    assert_eq!(
        lab.image("xorb-api"),
        format!("xorb/api:{RC1}"),
        "the waiting run acted"
    );

    // `--only api` rolls the api alone.
    let before = lab.versions();
    let out = lab.xorbctl(
        state,
        true,
        &[
            "rollback", "--from", RC1, "--to", STABLE, "--only", "api", "--yes",
        ],
    );
    assert!(out.status.success(), "rollback --only api: {}", text(&out));
    assert_eq!(lab.image("xorb-api"), format!("xorb/api:{STABLE}"));
    assert_eq!(lab.image("xorb-worker"), format!("xorb/worker:{RC1}"));
    let touched = changed(&before, &lab.versions());
    assert!(
        touched
            .iter()
            .all(|k| k.contains("xorb-api") || k == "ConfigMap/xorbctl-state"),
        "--only api changed {touched:?}"
    );
    assert!(
        touched.contains(&"Deployment/xorb-api".to_string()),
        "{touched:?}"
    );

    // The state directory is bound now: later commands need no Kubernetes flag, and the plan starts from what
    // the first run left.
    let out = lab.xorbctl(state, false, &["plan", "--from", RC1, "--to", STABLE]);
    assert!(out.status.success(), "plan: {}", text(&out));
    assert!(
        !text(&out).contains(&format!("xorb/api:{RC1} → xorb/api:{STABLE}")),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains(&format!("xorb/worker:{STABLE}")),
        "{}",
        text(&out)
    );
    // The rest of the rollback, every phase, with the Role's rights and nothing more.
    let out = lab.xorbctl(state, false, &rollback);
    assert!(
        out.status.success(),
        "rollback as the xorbctl Role: {}",
        text(&out)
    );
    for role in ["api", "orchestrator", "worker", "scheduler"] {
        assert_eq!(
            lab.image(&format!("xorb-{role}")),
            format!("xorb/{role}:{STABLE}")
        );
    }
    let holder = lab.kubectl(&[
        "get",
        "lease",
        xorb_kube::lease::LEASE_NAME,
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    assert_eq!(holder, "", "the Lease is given back at the end");
    let policies = lab.kubectl(&["get", "networkpolicies", "-o", "name"]);
    assert!(
        !policies.contains("xorb-allow-control-plane-from-api")
            && policies.contains("xorb-default-deny-ingress"),
        "{policies}"
    );
    // A command that knows only the local stack says so instead of failing on a missing stack.
    let out = lab.xorbctl(state, false, &["integrity", "--quick"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("bound to the Kubernetes target"),
        "{}",
        text(&out)
    );
    // Neither password appears in anything the runs wrote.
    let secrets = lab.kubectl(&[
        "get",
        "secret",
        "xorb-db",
        "-o",
        "jsonpath={.data.password}",
    ]);
    let pw = String::from_utf8(
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, secrets.trim()).unwrap(),
    )
    .unwrap();
    for f in walk(state) {
        let bytes = std::fs::read(&f).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(&pw),
            "{} holds the database password",
            f.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The rollouts of each service in an uninterrupted rollback (the first test counts them): its image, then its
/// configuration.
const UNINTERRUPTED_ROLLOUTS: usize = 2;

/// The run's journal as `xorbctl show --output json` prints it.
fn show(lab: &Lab, state: &Path, run: &str) -> serde_json::Value {
    let out = lab.xorbctl(state, false, &["show", run, "--output", "json"]);
    assert!(out.status.success(), "show: {}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Killed (SIGKILL, the engine's test hook) right after every journal write of phases 1 and 2 in turn, each time
/// resumed by a new process that takes the Lease over from the dead one at once, the run ends as an
/// uninterrupted one: every step done once, every Deployment rolled once (one new ReplicaSet each).
#[test]
fn killed_at_every_journal_boundary_of_phases_1_and_2_the_run_resumes_to_the_same_end() {
    let lab = Lab::rc1();
    let state = tempfile::tempdir().unwrap();
    let state = state.path();
    let before = lab.replica_sets();
    let out = lab.xorbctl_env(
        state,
        true,
        &["rollback", "--from", RC1, "--to", STABLE, "--yes"],
        1,
    );
    assert_eq!(
        out.status.signal(),
        Some(9),
        "the hook kills after the first write: {}",
        text(&out)
    );
    let mut kills = 1;
    loop {
        let run = show(&lab, state, "latest");
        let steps = run["steps"].as_array().unwrap();
        let in_phase_3 = steps
            .iter()
            .any(|s| s["spec"]["phase"] == "database" && s["state"].as_str() != Some("pending"));
        if in_phase_3 {
            break;
        }
        assert!(
            kills < 80,
            "still in phases 1-2 after {kills} kills: {run:#}"
        );
        // A resume's writes 1 and 2 are the run set running again and its phase started; then each step left
        // in flight is probed and either found done (its outcome) or started again (its intent): two writes
        // each. The write after those is a step started or finished that was not before, so every resume moves
        // the run on: with nothing in flight, the next step's intent (killed before it acts); with a step in
        // flight, its outcome or the intent of one beside it (killed after it acted). Steps run together in
        // phase 1, so the kills also land between steps in flight together.
        let in_flight = steps
            .iter()
            .filter(|s| matches!(s["state"].as_str(), Some("in_flight" | "failed")))
            .count();
        let at = 3 + 2 * u32::try_from(in_flight).unwrap();
        let out = lab.xorbctl_env(state, false, &["resume", "latest"], at);
        assert_eq!(out.status.signal(), Some(9), "kill {kills}: {}", text(&out));
        kills += 1;
    }
    let out = lab.xorbctl(state, false, &["resume", "latest"]);
    assert!(out.status.success(), "the last resume: {}", text(&out));
    let run = show(&lab, state, "latest");
    assert_eq!(run["status"]["state"], "succeeded", "{run:#}");
    for s in run["steps"].as_array().unwrap() {
        assert!(
            matches!(
                s["state"].as_str(),
                Some("succeeded" | "skipped" | "already_done")
            ),
            "{s:#}"
        );
    }
    for role in ["api", "orchestrator", "worker", "scheduler"] {
        assert_eq!(
            lab.image(&format!("xorb-{role}")),
            format!("xorb/{role}:{STABLE}")
        );
    }
    let after = lab.replica_sets();
    for d in [
        "xorb-api",
        "xorb-orchestrator",
        "xorb-worker",
        "xorb-scheduler",
    ] {
        assert_eq!(
            after.get(d).copied().unwrap_or(0),
            before.get(d).copied().unwrap_or(0) + UNINTERRUPTED_ROLLOUTS,
            "{d} rolled out more often than in an uninterrupted run over {kills} kills: before {before:?}, \
             after {after:?}"
        );
    }
    eprintln!("killed {kills} times in phases 1 and 2; ReplicaSets {before:?} -> {after:?}");
}

/// A rollout that never becomes ready (an image the node agent cannot run: it exits at once) fails its step on the
/// Deployment's `ProgressDeadlineExceeded`, the policy's emergency procedure scales the orchestrator down (noting
/// its replica count on it), and once the image is fixed `resume` finishes the run and scales it back.
#[test]
fn a_rollout_that_never_becomes_ready_fails_on_its_deadline_and_resume_finishes_once_the_image_is_fixed()
 {
    let work = tempfile::tempdir().unwrap();
    // The lab's "registry": an image named in `broken` exits at once, as a bad image would.
    let broken = work.path().join("broken-images");
    std::fs::write(&broken, format!("api:{STABLE}\n")).unwrap();
    let wrapper = work.path().join("xorb-svc");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif grep -qxF \"$2:$4\" '{}'; then echo 'this image cannot run' >&2; exit 1; fi\nexec '{}' \"$@\"\n",
            broken.display(),
            svc_bin().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let lab = Lab::rc1_with(&wrapper);
    let state = tempfile::tempdir().unwrap();
    let state = state.path();
    // The operator's deadline for the api's rollouts (the default is ten minutes).
    lab.kubectl(&[
        "patch",
        "deployment",
        "xorb-api",
        "-p",
        r#"{"spec":{"progressDeadlineSeconds":6}}"#,
    ]);
    let orchestrator_replicas = || {
        lab.kubectl(&[
            "get",
            "deployment",
            "xorb-orchestrator",
            "-o",
            "jsonpath={.spec.replicas}",
        ])
    };
    assert_eq!(orchestrator_replicas(), "1");

    let out = lab.xorbctl(
        state,
        true,
        &["rollback", "--from", RC1, "--to", STABLE, "--yes"],
    );
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    let run = show(&lab, state, "latest");
    let api = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| {
            s["spec"]["id"].as_str().is_some_and(|i| i.contains("api"))
                && s["spec"]["phase"] == "services"
        })
        .unwrap()
        .clone();
    assert_eq!(api["state"], "failed", "{api:#}");
    assert!(
        api.to_string().contains("exceeded its progress deadline"),
        "{api:#}"
    );
    let events = run["events"].to_string();
    assert!(
        events.contains("emergency"),
        "the emergency procedure ran: {events}"
    );
    // Minimal service: the orchestrator stopped, its count noted for the way back; the api's old Pods serve on.
    assert_eq!(orchestrator_replicas(), "0");
    let note = lab.kubectl(&[
        "get",
        "deployment",
        "xorb-orchestrator",
        "-o",
        r"jsonpath={.metadata.annotations.xorb\.dev/replicas-before-emergency}",
    ]);
    assert_eq!(note, "1");
    assert_eq!(
        lab.image("xorb-worker"),
        format!("xorb/worker:{RC1}"),
        "nothing after the failed step ran"
    );

    // The image is fixed; the Deployment's next Pod comes up, and the rollout completes by itself.
    std::fs::write(&broken, "").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let reason = lab.kubectl(&[
            "get",
            "deployment",
            "xorb-api",
            "-o",
            r#"jsonpath={.status.conditions[?(@.type=="Progressing")].reason}"#,
        ]);
        if reason == "NewReplicaSetAvailable" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the api's rollout did not recover: {reason}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let out = lab.xorbctl(state, false, &["resume", "latest"]);
    assert!(out.status.success(), "resume: {}", text(&out));
    for role in ["api", "orchestrator", "worker", "scheduler"] {
        assert_eq!(
            lab.image(&format!("xorb-{role}")),
            format!("xorb/{role}:{STABLE}")
        );
    }
    assert_eq!(
        orchestrator_replicas(),
        "1",
        "scaled back by its service step"
    );
}

/// `stack up --target kubernetes --demo-data` starts rc1 on a control plane of this machine in a process of its
/// own and binds the state directory to it; the full rollback then needs no flag and ends as the runbook says;
/// `stack down` stops exactly what `stack up` started.
#[test]
fn stack_up_target_kubernetes_then_the_full_rollback_with_demo_data_then_down() {
    let state = tempfile::tempdir().unwrap();
    let state = state.path();
    let lab = Lab::stack_up(state);
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("kubernetes/stack.json")).unwrap())
            .unwrap();
    assert_eq!(lab.image("xorb-api"), format!("xorb/api:{RC1}"));
    assert_eq!(
        record["demo"]["tenants"],
        serde_json::json!(["acme", "globex"]),
        "{record:#}"
    );
    let rollback = ["rollback", "--from", RC1, "--to", STABLE, "--yes"];
    // Bound by `stack up`: no Kubernetes flag.
    let sets = lab.replica_sets();
    let out = lab.xorbctl(state, false, &rollback);
    assert!(out.status.success(), "rollback: {}", text(&out));
    let sets_after = lab.replica_sets();
    for d in ["xorb-orchestrator", "xorb-worker", "xorb-scheduler"] {
        assert_eq!(
            sets_after[d],
            sets[d] + UNINTERRUPTED_ROLLOUTS,
            "{d}: {sets:?} -> {sets_after:?}"
        );
    }
    for role in ["api", "orchestrator", "worker", "scheduler"] {
        assert_eq!(
            lab.image(&format!("xorb-{role}")),
            format!("xorb/{role}:{STABLE}")
        );
    }
    let shared = lab.kubectl(&["get", "configmap", "xorb-config", "-o", "jsonpath={.data}"]);
    assert!(
        shared.contains(r#""TENANT_ISOLATION_MODE":"basic""#),
        "{shared}"
    );
    let deploys = lab.kubectl(&["get", "deployments", "-o", "name"]);
    assert!(!deploys.contains("xorb-control-plane"), "{deploys}");
    let history = lab.kubectl(&["rollout", "history", "deployment/xorb-api"]);
    assert!(history.contains("xorbctl"), "{history}");
    // `status` reads the cluster and the target file's addresses as it reads the local stack.
    let out = lab.xorbctl(state, false, &["status", "--output", "json"]);
    assert!(out.status.success(), "status: {}", text(&out));
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["release"], STABLE, "{st:#}");
    assert_eq!(st["schema_revision"], "1a5be11", "{st:#}");
    let services = st["services"].as_array().unwrap();
    assert_eq!(services.len(), 4, "{st:#}");
    for s in services {
        assert_eq!(s["reported_release"], STABLE, "{s:#}");
        assert_eq!(s["healthy"], true, "{s:#}");
    }
    let run = show(&lab, state, "latest");
    assert_eq!(run["status"]["state"], "succeeded", "{run:#}");
    let loss = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["spec"]["id"] == "5.check.loss")
        .unwrap()
        .to_string();
    assert!(
        loss.contains("16 evidence rows dropped by the downgrade, 16 preserved and verified"),
        "{loss}"
    );
    assert!(loss.contains("findings: 0 rows changed"), "{loss}");

    // `stack down` stops the stack's process and every process it started, and unbinds the directory.
    let procs: Vec<xorb_local::process::ProcRecord> = std::iter::once(serde_json::json!({
        "pid": record["pid"], "start_time": record["start_time"], "program": "the stack's process"
    }))
    .chain(record["processes"].as_array().unwrap().iter().cloned())
    .map(|p| serde_json::from_value(p).unwrap())
    .collect();
    assert!(procs.len() > 10, "{procs:?}");
    let out = lab.xorbctl(state, false, &["stack", "down"]);
    assert!(out.status.success(), "stack down: {}", text(&out));
    for p in &procs {
        assert!(!p.is_alive(), "{p:?} still runs after stack down");
    }
    assert!(!state.join("target.json").exists());
    assert!(!state.join("kubernetes/stack.json").exists());
}
