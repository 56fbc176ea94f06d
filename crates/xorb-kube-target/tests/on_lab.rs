//! The Kubernetes target on the real 1.20 control plane, with rc1 brought up whole by the lab and Debian's
//! kubectl checking what each call of the `Target` seam did: observe, instances, a service rolled to stable with
//! a configuration change in one rollout (and not again), a workload scaled to zero and one removed, the
//! configuration files as ConfigMap keys, and the capture with its Secrets encrypted.
//!
//! Needs the platform's binary: `cargo build -p xorb-svc` (the test says so when it is missing).

use std::time::Duration;

use xorb_adapters::target::{ConfigSet, Target};
use xorb_kube_target::{KubeTarget, names};
use xorb_kubelab::stack::lab_client;

mod support;
use support::*;
use xorb_model::release::Release;

const ROLLOUT: Duration = Duration::from_secs(180);

#[test]
fn the_target_seam_acts_on_the_lab_as_kubectl_would() {
    let lab = Lab::rc1();
    let (dir, rt, stack) = (&lab.dir, &lab.rt, &lab.stack);
    let kubectl = |args: &[&str]| lab.kubectl_ok(args);
    let json = |args: &[&str]| -> serde_json::Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&kubectl(&a)).unwrap()
    };
    let replica_sets = |name: &str| {
        json(&[
            "get",
            "replicasets",
            "-l",
            &format!("app.kubernetes.io/name={name}"),
        ])["items"]
            .as_array()
            .unwrap()
            .len()
    };
    let state_dir = dir.path().join("state");
    std::fs::create_dir_all(&state_dir).unwrap();
    let spec = target_file(stack);

    rt.block_on(async {
        let client = lab_client(stack.lab()).await.unwrap();
        let t = KubeTarget::connect(client, spec, &state_dir).await.unwrap();
        assert_eq!(t.kind(), "kubernetes");
        let ep = t.endpoints().unwrap();
        assert_eq!(
            ep.postgres.password.len(),
            32,
            "read from the Secret xorb-db"
        );
        assert_eq!(
            ep.redis.password.len(),
            32,
            "read from the Secret xorb-redis-auth"
        );

        // observe: the five roles on rc1, their configuration as their Pods read it.
        let live = t.observe().await.unwrap();
        assert_eq!(live.release, RC1);
        let names: Vec<&str> = live.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "api",
                "orchestrator",
                "control-plane",
                "worker",
                "scheduler"
            ]
        );
        let api = &live.services[0];
        assert_eq!(api.image, "xorb/api:v2025.08-rc1");
        assert_eq!(
            api.config["TENANT_ISOLATION_MODE"], "advanced",
            "from xorb-config"
        );
        let inst = t.instances().await.unwrap();
        let api_inst: Vec<_> = inst.iter().filter(|i| i.service == "api").collect();
        assert_eq!(api_inst.len(), 2, "{inst:?}");
        assert!(
            inst.iter()
                .all(|i| i.release == RC1 && i.healthy == Some(true)),
            "{inst:?}"
        );
        assert!(t.converged("api", RC1, None).await.unwrap());
        assert!(!t.converged("api", STABLE, None).await.unwrap());

        // The api to stable with one key of its own: one patch, one rollout, one new ReplicaSet. Stable's
        // streams first, as phase 1 creates them: a stable service without them is not ready.
        let stable = Release::load_named(&repo().join("releases"), STABLE).unwrap();
        xorb_adapters::nats::ensure_streams(&ep.nats, &stable.streams)
            .await
            .unwrap();
        let rs_before = replica_sets("xorb-api");
        let mut config = api.config.clone();
        config.insert("LOG_LEVEL".into(), "warning".into());
        let done = t
            .set_workload("api", "xorb/api:v2025.07-stable", &config, ROLLOUT)
            .await
            .unwrap_or_else(|e| {
                eprintln!("{}", kubectl(&["get", "pods", "-o", "yaml"]));
                panic!("{e}")
            });
        assert!(done.contains("set to xorb/api:v2025.07-stable"), "{done}");
        assert_eq!(replica_sets("xorb-api"), rs_before + 1);
        assert!(t.converged("api", STABLE, Some(&config)).await.unwrap());
        let own = json(&["get", "configmap", &names::config_map("api")]);
        assert_eq!(own["data"]["LOG_LEVEL"], "warning", "{own}");
        assert!(
            own["data"].get("TENANT_ISOLATION_MODE").is_none(),
            "shared keys stay in xorb-config: {own}"
        );
        let history = kubectl(&["rollout", "history", "deployment/xorb-api"]);
        assert!(
            history.contains("set image deployment/xorb-api xorb-api=xorb/api:v2025.07-stable"),
            "{history}"
        );
        // Through the api's Service: stable answers, with the new key in its environment's effect.
        let health: serde_json::Value =
            reqwest_get(&format!("{}/api/v1/health", ep.services["api"])).await;
        assert_eq!(health["release"], STABLE, "{health}");
        // Again (a resumed run): nothing written, no new ReplicaSet.
        let again = t
            .set_workload("api", "xorb/api:v2025.07-stable", &config, ROLLOUT)
            .await
            .unwrap();
        assert!(again.contains("nothing to change"), "{again}");
        assert_eq!(replica_sets("xorb-api"), rs_before + 1);
        // A configuration change alone rolls the Pods once too (they read their environment at start).
        config.insert("LOG_LEVEL".into(), "info".into());
        t.set_workload("api", "xorb/api:v2025.07-stable", &config, ROLLOUT)
            .await
            .unwrap();
        assert_eq!(replica_sets("xorb-api"), rs_before + 2);
        assert!(t.converged("api", STABLE, Some(&config)).await.unwrap());
        // `rollout history` says this revision is the configuration's, not a new image.
        let history = kubectl(&["rollout", "history", "deployment/xorb-api"]);
        assert!(
            history.contains(
                "xorbctl: configuration of deployment/xorb-api (xorb-config and xorb-api-config"
            ),
            "{history}"
        );
        // A shared key cannot be dropped for one service.
        let mut dropped = config.clone();
        dropped.remove("TENANT_ISOLATION_MODE");
        let e = t
            .set_workload("api", "xorb/api:v2025.07-stable", &dropped, ROLLOUT)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("TENANT_ISOLATION_MODE"), "{e}");

        // Scale to zero (minimal service), and the control plane removed with its Service.
        t.stop_workload("scheduler").await.unwrap();
        let sched = json(&["get", "deployment", "xorb-scheduler"]);
        assert_eq!(sched["spec"]["replicas"], 0, "{sched}");
        // The count it had is noted for the way back; a second stop keeps it (it must not note 0).
        let note =
            |d: &serde_json::Value| d["metadata"]["annotations"][names::EMERGENCY_SCALE].clone();
        assert_eq!(note(&sched), "1", "{sched}");
        t.stop_workload("scheduler").await.unwrap();
        assert_eq!(note(&json(&["get", "deployment", "xorb-scheduler"])), "1");
        assert!(
            !t.converged("scheduler", RC1, None).await.unwrap(),
            "stopped is not converged"
        );
        assert!(!t.removed("control-plane").await.unwrap());
        t.remove_workload("control-plane").await.unwrap();
        assert!(t.removed("control-plane").await.unwrap());
        let (ok, gone) = lab.kubectl(&["get", "deployment,service", "xorb-control-plane"]);
        assert!(!ok && gone.contains("NotFound"), "{gone}");
        let again = t.remove_workload("control-plane").await.unwrap();
        assert!(again.contains("no deployment or service left"), "{again}");

        // settle records the release only once every service runs it.
        // The first change recorded the release the namespace came from; settle moves it only once every
        // service runs the new one.
        let state = json(&["get", "configmap", names::STATE]);
        assert_eq!(state["data"]["release"], RC1, "{state}");
        tokio::task::block_in_place(|| t.settle(&stable)).unwrap();
        assert_eq!(
            t.observe().await.unwrap().release,
            RC1,
            "three services still run rc1"
        );
        for s in ["orchestrator", "worker", "scheduler"] {
            let config = t
                .observe()
                .await
                .unwrap()
                .services
                .into_iter()
                .find(|x| x.name == s)
                .unwrap()
                .config;
            t.set_workload(s, &format!("xorb/{s}:{STABLE}"), &config, ROLLOUT)
                .await
                .unwrap();
        }
        tokio::task::block_in_place(|| t.settle(&stable)).unwrap();
        assert_eq!(t.observe().await.unwrap().release, STABLE);
        // The scheduler's service step scaled it back to the noted count and removed the note.
        let sched = json(&["get", "deployment", "xorb-scheduler"]);
        assert_eq!(sched["spec"]["replicas"], 1, "{sched}");
        assert!(note(&sched).is_null(), "{sched}");

        // Configuration files are keys of their ConfigMaps.
        tokio::task::block_in_place(|| {
            assert!(
                t.read_config(ConfigSet::Prometheus, "prometheus.yml")
                    .is_some()
            );
            t.write_config(ConfigSet::Prometheus, "extra.yml", b"groups: []\n")
                .unwrap();
            assert_eq!(
                t.read_config(ConfigSet::Prometheus, "extra.yml").as_deref(),
                Some(&b"groups: []\n"[..])
            );
            assert!(t.remove_config(ConfigSet::Prometheus, "extra.yml").unwrap());
            assert!(!t.remove_config(ConfigSet::Prometheus, "extra.yml").unwrap());
            assert!(t.write_config(ConfigSet::Prometheus, "../x", b"").is_err());
        });
        let prom = json(&["get", "configmap", "prometheus-config"]);
        assert!(prom["data"].get("extra.yml").is_none(), "{prom}");

        // The capture: objects in the clear, Secrets only encrypted.
        let cap = dir.path().join("capture");
        std::fs::create_dir_all(&cap).unwrap();
        let said = t.capture(&cap).await.unwrap();
        assert!(said.contains("4 services"), "{said}");
        let objects = std::fs::read_to_string(cap.join("objects.json")).unwrap();
        assert!(objects.contains("\"xorb-config\""));
        let sealed = std::fs::read(cap.join("secrets.json.age")).unwrap();
        assert!(sealed.starts_with(b"age-encryption.org/v1"));
        for f in ["objects.json", "services.json", "secrets.json.age"] {
            let bytes = std::fs::read(cap.join(f)).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            assert!(
                !text.contains(&ep.postgres.password),
                "{f} holds the database password"
            );
            assert!(
                !text.contains(&ep.redis.password),
                "{f} holds the Redis password"
            );
        }
        let opened =
            xorb_adapters::sealed::open(&state_dir, &cap.join("secrets.json.age")).unwrap();
        assert!(String::from_utf8_lossy(&opened).contains("xorb-redis-auth"));
    });
    lab.down();
}

/// One GET with the adapters' HTTP client, as the checks make it.
async fn reqwest_get(url: &str) -> serde_json::Value {
    let http = xorb_adapters::deps::http_client();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        // The proxy learns of the new Pods on its next refresh: poll under a deadline.
        match http.get(url).send().await {
            Ok(r) if r.status().is_success() => return r.json().await.unwrap(),
            other if std::time::Instant::now() > deadline => panic!("GET {url}: {other:?}"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
