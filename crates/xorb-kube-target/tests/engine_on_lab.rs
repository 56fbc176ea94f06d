//! The engine runs a real rollback plan of rc1 to stable on the lab through `TargetRunner<KubeTarget>`: the
//! planner's steps, journaled, each done by the shared adapters at the target file's addresses and by the
//! Kubernetes target for the workloads; Debian's kubectl checks the result.

use xorb_adapters::target::Target;
use xorb_engine::Engine;
use xorb_engine::events::NullSink;
use xorb_engine::planner::{self, PlanOptions, Scope};
use xorb_kube_target::KubeTarget;
use xorb_kubelab::stack::lab_client;
use xorb_model::policy::Policy;
use xorb_model::release::Release;

mod support;
use support::*;

#[test]
fn the_engine_runs_the_rollback_plan_on_the_lab() {
    let lab = Lab::rc1();
    let (dir, rt, stack) = (&lab.dir, &lab.rt, &lab.stack);
    let state_dir = dir.path().join("state");
    std::fs::create_dir_all(&state_dir).unwrap();
    let spec = target_file(stack);
    let releases = repo().join("releases");
    let from = Release::load_named(&releases, RC1).unwrap();
    let to = Release::load_named(&releases, STABLE).unwrap();
    let paths = xorb_adapters::Paths {
        releases_root: releases.clone(),
        venv: repo().join(".venv"),
        svc_bin: svc_bin(),
    };
    // Boxed: the engine's future over the Kubernetes target is large in a debug build, and a test thread's stack
    // is small (it overflowed there once the target grew).
    let (end, ep) = rt.block_on(Box::pin(async {
        let client = lab_client(stack.lab()).await.unwrap();
        let t = KubeTarget::connect(client, spec, &state_dir).await.unwrap();
        let ep = t.endpoints().unwrap();
        let mut live = t.observe().await.unwrap();
        live.database = Some(
            xorb_adapters::pg::observe_database(&ep.postgres, &paths, &from)
                .await
                .unwrap(),
        );
        live.streams = xorb_adapters::nats::list_streams(&ep.nats).await.ok();
        let plan = planner::plan_with(
            &live,
            &from,
            &to,
            &Policy::embedded(),
            &PlanOptions {
                scope: Some(Scope::All),
                ..Default::default()
            },
        )
        .unwrap();
        let runner =
            xorb_adapters::TargetRunner::new(t, paths.clone(), state_dir.clone(), to.clone());
        let mut engine = Engine::new(&state_dir, runner, NullSink).unwrap();
        (engine.start(plan).await.unwrap(), ep)
    }));
    let log = std::fs::read_to_string(&end.log_file).unwrap();
    assert!(end.succeeded(), "{:?}: {}\n{log}", end.status, end.next);
    // A service step waits until its Service serves the new release, so the checks after it pass first time.
    assert!(
        !log.lines()
            .any(|l| l.contains("Step 2.") && l.contains("FAILED")),
        "{log}"
    );
    for phase in 1..=5 {
        assert!(log.contains(&format!("Phase {phase} of 5")), "{log}");
    }

    // Debian's kubectl: the four roles on stable and rolled out, the control plane gone with its Service.
    let kubectl = |args: &[&str]| lab.kubectl(args);
    for s in ["api", "orchestrator", "worker", "scheduler"] {
        let d = format!("deployment/xorb-{s}");
        let (ok, image) = kubectl(&[
            "get",
            &d,
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ]);
        assert!(ok && image == format!("xorb/{s}:{STABLE}"), "{d}: {image}");
        let (ok, status) = kubectl(&["rollout", "status", &d, "--watch=false"]);
        assert!(
            ok && status.contains("successfully rolled out"),
            "{d}: {status}"
        );
    }
    let (ok, gone) = kubectl(&["get", "deployment,service", "xorb-control-plane"]);
    assert!(!ok && gone.contains("NotFound"), "{gone}");
    let history = lab.kubectl_ok(&["rollout", "history", "deployment/xorb-api"]);
    assert!(
        history.contains("xorb-api=xorb/api:v2025.07-stable"),
        "{history}"
    );
    // The runbook's `kubectl patch configmap xorb-config`: what the four stable services share is there.
    let shared = lab.kubectl_ok(&["get", "configmap", "xorb-config", "-o", "json"]);
    let shared: serde_json::Value = serde_json::from_str(&shared).unwrap();
    assert_eq!(shared["data"]["TENANT_ISOLATION_MODE"], "basic", "{shared}");
    assert_eq!(
        shared["data"]["EVIDENCE_SYSTEM_ENABLED"], "false",
        "{shared}"
    );
    let state = lab.kubectl_ok(&[
        "get",
        "configmap",
        "xorbctl-state",
        "-o",
        "jsonpath={.data.release}",
    ]);
    assert_eq!(state, STABLE);

    // Schema, streams and Prometheus as stable defines them, reached at the target file's addresses.
    rt.block_on(async {
        let db = xorb_adapters::pg::observe_database(&ep.postgres, &paths, &to)
            .await
            .unwrap();
        assert_eq!(db.revision, "1a5be11");
        let mut streams = xorb_adapters::nats::list_streams(&ep.nats).await.unwrap();
        streams.sort();
        let mut want: Vec<String> = to.streams.iter().map(|s| s.name.clone()).collect();
        want.sort();
        assert_eq!(streams, want);
        let http = xorb_adapters::deps::http_client();
        let cfg: serde_json::Value = http
            .get(format!("{}/api/v1/status/config", ep.prometheus))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let yaml = cfg["data"]["yaml"].as_str().unwrap();
        assert!(yaml.contains("release: v2025.07-stable"), "{yaml}");
    });
    // Nothing asked a resolver about a Service name: every address Prometheus uses is on loopback.
    let node = stack.lab().dir().parent().unwrap().join("node/xorb");
    for e in std::fs::read_dir(&node).unwrap().filter_map(Result::ok) {
        if e.file_name().to_string_lossy().starts_with("prometheus-") {
            let log = std::fs::read_to_string(e.path().join("prometheus.log")).unwrap_or_default();
            assert!(
                !log.contains("no such host") && !log.contains("lookup "),
                "{log}"
            );
        }
    }
    lab.down();
}
