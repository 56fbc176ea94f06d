//! The engine runs a real rollback plan of rc1 to stable on the lab through `TargetRunner<KubeTarget>`: the
//! planner's steps, journaled, each done by the shared adapters at the target file's addresses and by the
//! Kubernetes target for the workloads; Debian's kubectl checks the result. Then the runbook's cascade prevention
//! on the rolled-back stack, as a failing step's emergency procedure would run it.

use xorb_adapters::target::Target;
use xorb_engine::Engine;
use xorb_engine::events::NullSink;
use xorb_engine::planner::{self, PlanOptions, Scope};
use xorb_kube_target::KubeTarget;
use xorb_kubelab::stack::lab_client;
use xorb_model::plan::EmergencyProcedure;
use xorb_model::policy::Policy;
use xorb_model::release::Release;

mod support;
use support::*;

#[test]
fn the_engine_runs_the_rollback_plan_on_the_lab() {
    // A thread with room: a debug build polls the engine's nested futures over the Kubernetes target in deep,
    // wide frames, more than a test thread's 2 MB (xorbctl runs it on the main thread's 8 MB, in a release
    // build far less).
    std::thread::Builder::new()
        .stack_size(16 << 20)
        .spawn(rollback_then_cascade_prevention)
        .unwrap()
        .join()
        .unwrap_or_else(|_| panic!("the test's thread panicked (above)"));
}

fn rollback_then_cascade_prevention() {
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
    // Boxed: the engine's future over the Kubernetes target is large in a debug build.
    let (end, ep, kube_target) = rt.block_on(Box::pin(async {
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
        let end = engine.start(plan).await.unwrap();
        let client = lab_client(stack.lab()).await.unwrap();
        let again = KubeTarget::connect(client, target_file(stack), &state_dir)
            .await
            .unwrap();
        (end, ep, again)
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
    // The runbook's `kubectl apply -f network-policies/`: stable's policies as its manifests write them, and rc1's
    // policy for the control plane gone with it.
    let (ok, gone) = kubectl(&["get", "networkpolicy", "xorb-allow-control-plane-from-api"]);
    assert!(!ok && gone.contains("NotFound"), "{gone}");
    for np in ["xorb-default-deny-ingress", "xorb-allow-api-ingress"] {
        let version = lab.kubectl_ok(&[
            "get",
            "networkpolicy",
            np,
            "-o",
            "jsonpath={.metadata.labels.app\\.kubernetes\\.io/version}",
        ]);
        assert_eq!(version, STABLE, "{np}");
    }
    assert!(
        log.contains("networkpolicy/xorb-allow-control-plane-from-api deleted"),
        "{log}"
    );
    // Phase 4's restarts as the runbook names them (`rollout restart statefulset/nats-cluster`,
    // `deployment/redis`), their data kept on their volumes.
    for (what, said) in [
        (
            "statefulset/nats-cluster",
            "statefulset nats-cluster restarted",
        ),
        ("deployment/redis", "deployment redis restarted"),
    ] {
        let at = lab.kubectl_ok(&[
            "get",
            what,
            "-o",
            "jsonpath={.spec.template.metadata.annotations.kubectl\\.kubernetes\\.io/restartedAt}",
        ]);
        assert!(!at.is_empty(), "{what} was not restarted");
        let (ok, status) = kubectl(&["rollout", "status", what, "--watch=false"]);
        assert!(ok && !status.contains("Waiting"), "{what}: {status}");
        assert!(log.contains(said), "{log}");
    }
    assert!(
        log.contains("every stream kept") && log.contains("data kept"),
        "{log}"
    );

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

    // Cascade prevention, as a failing step's emergency procedure runs it: worker and scheduler scaled to 0 with
    // their replica counts noted, the api restarted with the circuit breaker on and serving.
    let replicas = |s: &str| {
        let d = lab.kubectl_ok(&["get", "deployment", &format!("xorb-{s}"), "-o", "json"]);
        serde_json::from_str::<serde_json::Value>(&d).unwrap()
    };
    let before: Vec<String> = ["worker", "scheduler"]
        .iter()
        .map(|s| replicas(s)["spec"]["replicas"].to_string())
        .collect();
    let said = rt.block_on(Box::pin(async {
        let runner = xorb_adapters::TargetRunner::new(kube_target, paths.clone(), state_dir, to);
        xorb_adapters::safety::emergency(&runner, EmergencyProcedure::CascadePrevention)
            .await
            .unwrap()
    }));
    assert!(
        said.contains("stopped worker, scheduler")
            && said.contains("api restarted with CIRCUIT_BREAKER_ENABLED=true"),
        "{said}"
    );
    for (s, before) in ["worker", "scheduler"].iter().zip(&before) {
        let d = replicas(s);
        assert_eq!(d["spec"]["replicas"], 0, "{s}");
        assert_eq!(
            &d["metadata"]["annotations"]["xorb.dev/replicas-before-emergency"],
            before.as_str(),
            "{s}"
        );
    }
    let own = lab.kubectl_ok(&[
        "get",
        "configmap",
        "xorb-api-config",
        "-o",
        "jsonpath={.data.CIRCUIT_BREAKER_ENABLED}",
    ]);
    assert_eq!(own, "true");
    let (ok, status) = kubectl(&["rollout", "status", "deployment/xorb-api", "--watch=false"]);
    assert!(ok && status.contains("successfully rolled out"), "{status}");
    rt.block_on(async {
        let info = get_json(&format!("{}/api/v1/info", ep.services["api"]), |v| {
            v["features"]["circuit_breaker"] == true
        })
        .await;
        assert_eq!(info["release"], STABLE, "{info}");
    });
    lab.down();
}

/// GETs `url` until its JSON satisfies `ok` (the proxy moves to new Pods on its next refresh), under a deadline.
async fn get_json(url: &str, ok: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let http = xorb_adapters::deps::http_client();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let got = match http.get(url).send().await {
            Ok(r) if r.status().is_success() => r.json::<serde_json::Value>().await.ok(),
            _ => None,
        };
        match got {
            Some(v) if ok(&v) => return v,
            other if std::time::Instant::now() > deadline => panic!("GET {url}: {other:?}"),
            _ => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    }
}
