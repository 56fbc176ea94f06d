//! Phase 4 on real servers (NATS JetStream, Redis, Prometheus, Alertmanager, promtool, amtool, redis-check-rdb):
//! the xorb_local::infra steps called directly on an rc1 stack of each test's own.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;
use xorb_adapters::{monitoring, nats, redis as redis_steps};
use xorb_engine::runner::{Probe, StepContext};
use xorb_local::stack::{Paths, StackState};
use xorb_local::target::LocalRunner;
use xorb_model::release::Release;

use crate::common::*;

const FROM: &str = "v2025.08-rc1";
const TO: &str = "v2025.07-stable";

fn runner(st: &Stack, releases_root: &Path) -> LocalRunner {
    let paths = Paths {
        releases_root: releases_root.to_path_buf(),
        venv: venv(),
        svc_bin: svc_bin(),
    };
    let to = Release::load_named(releases_root, TO).unwrap();
    xorb_local::target::runner(&st.dir, paths, to)
}

fn run_dir(st: &Stack, name: &str) -> PathBuf {
    let d = st.dir.join("runs").join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn ctx<'a>(run_dir: &'a Path) -> StepContext<'a> {
    StepContext {
        run_id: "it-infra",
        step_id: "it-infra",
        run_dir,
        from: FROM,
        to: TO,
        index: 0,
        attempt: 1,
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn stable() -> Release {
    Release::load_named(&repo().join("releases"), TO).unwrap()
}

async fn js(st: &Stack) -> async_nats::jetstream::Context {
    let s = StackState::load(&st.dir).unwrap();
    async_nats::jetstream::new(async_nats::connect(s.nats_url()).await.unwrap())
}

async fn stream_info(
    js: &async_nats::jetstream::Context,
    name: &str,
) -> async_nats::jetstream::stream::Info {
    js.get_stream(name)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone()
}

async fn live_stream_names(st: &Stack) -> Vec<String> {
    let s = StackState::load(&st.dir).unwrap();
    xorb_adapters::nats::list_streams(&s.nats_url())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn infra_nats_save_then_apply_leaves_stable_streams_and_every_message_saved() {
    let st = Stack::up(FROM, true);
    // By phase 4 rc1's workers are gone: stop this stack's worker so that the jobs published here stay queued.
    let s = StackState::load(&st.dir).unwrap();
    let worker = s.service("worker").unwrap().proc.clone().unwrap();
    let out = Command::new("kill")
        .arg(worker.pid.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    eventually("the worker to exit", Duration::from_secs(30), || {
        let w = worker.clone();
        async move { (!w.is_alive()).then_some(()) }
    })
    .await;
    let js = js(&st).await;
    let mut payloads = Vec::new();
    for i in 0..5 {
        let body = format!("{{\"it\":{i}}}");
        let mut h = async_nats::HeaderMap::new();
        h.insert("X-It", format!("job-{i}").as_str());
        js.publish_with_headers(
            format!("xorb.tenant.{}.jobs", uuid::Uuid::new_v4()),
            h,
            body.clone().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
        payloads.push(body);
    }
    let before = stream_info(&js, "xorb-tenant-streams").await;
    assert!(before.state.messages >= 5, "{:?}", before.state);

    let r = runner(&st, &repo().join("releases"));
    // Without a save, apply refuses to delete anything.
    let unsaved = run_dir(&st, "unsaved");
    let err = nats::nats_apply(&r, TO, &ctx(&unsaved))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not saved"), "{err}");
    assert!(
        live_stream_names(&st)
            .await
            .contains(&"xorb-tenant-streams".to_string())
    );

    let run = run_dir(&st, "nats");
    let c = ctx(&run);
    assert_eq!(
        nats::probe_nats_apply(&r, TO, &c).await.unwrap(),
        Probe::NotDone
    );
    let saved = nats::nats_save(&r, TO, &c).await.unwrap();
    assert!(saved.contains("xorb-tenant-streams"), "{saved}");
    let applied = nats::nats_apply(&r, TO, &c).await.unwrap();
    eprintln!("nats save: {saved}\nnats apply: {applied}");
    assert!(applied.contains("removed xorb-tenant-streams"), "{applied}");

    // The live streams are stable's definitions, field by field.
    let want = stable();
    let want_names: Vec<String> = {
        let mut v: Vec<String> = want.streams.iter().map(|s| s.name.clone()).collect();
        v.sort();
        v
    };
    assert_eq!(live_stream_names(&st).await, want_names);
    for def in &want.streams {
        let cfg = stream_info(&js, &def.name).await.config;
        let expected = xorb_adapters::streams::stream_config(def);
        assert_eq!(cfg.subjects, expected.subjects, "{}", def.name);
        assert_eq!(cfg.retention, expected.retention, "{}", def.name);
        assert_eq!(cfg.storage, expected.storage, "{}", def.name);
        assert_eq!(cfg.max_age, expected.max_age, "{}", def.name);
        assert_eq!(cfg.max_messages, expected.max_messages, "{}", def.name);
        assert_eq!(cfg.max_bytes, expected.max_bytes, "{}", def.name);
    }

    // Every message of the removed stream is in the save, with our payloads and headers.
    let dir = run.join("nats");
    assert_eq!(mode(&dir), 0o700);
    let before_json: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("streams-before.json")).unwrap())
            .unwrap();
    assert_eq!(mode(&dir.join("streams-before.json")), 0o600);
    assert_eq!(
        before_json["streams"]["xorb-tenant-streams"]["state"]["last_seq"],
        before.state.last_sequence
    );
    assert!(before_json["streams"]["xorb-events"]["config"].is_object());
    let file = dir.join("messages/xorb-tenant-streams.jsonl");
    assert_eq!(mode(&file), 0o600);
    let lines: Vec<Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len() as u64, before.state.messages);
    let got: BTreeSet<String> = lines
        .iter()
        .map(|l| {
            String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(l["payload"].as_str().unwrap())
                    .unwrap(),
            )
            .unwrap()
        })
        .collect();
    for p in &payloads {
        assert!(got.contains(p), "{p} missing from the save");
    }
    assert!(
        lines
            .iter()
            .any(|l| l["headers"]["X-It"][0] == "job-0" && l["time"].is_string()),
        "{lines:?}"
    );
    let marker: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("messages/xorb-tenant-streams.complete.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(marker["messages"], before.state.messages);
    assert_eq!(marker["sha256"], hex_sha256(&std::fs::read(&file).unwrap()));

    // Run twice: the probe says done, the save keeps what it has, apply changes nothing.
    assert!(matches!(
        nats::probe_nats_apply(&r, TO, &c).await.unwrap(),
        Probe::Done { .. }
    ));
    let again = nats::nats_save(&r, TO, &c).await.unwrap();
    assert!(again.contains("already removed"), "{again}");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap().lines().count() as u64,
        before.state.messages
    );
    let again = nats::nats_apply(&r, TO, &c).await.unwrap();
    assert!(
        again.contains("removed none; created none; updated none"),
        "{again}"
    );
}

async fn redis(st: &Stack, db: u8) -> redis::aio::MultiplexedConnection {
    let s = StackState::load(&st.dir).unwrap();
    let url = format!(
        "redis://:{}@127.0.0.1:{}/{db}",
        st.secret("redis-password"),
        s.redis.port
    );
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// stable's redis.conf value as Redis reports it (memory in bytes).
fn redis_expected(key: &str) -> String {
    let text =
        std::fs::read_to_string(repo().join("releases").join(TO).join("redis/redis.conf")).unwrap();
    let v = text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key} ")))
        .unwrap()
        .trim()
        .to_string();
    match v.strip_suffix("mb") {
        Some(n) => (n.parse::<u64>().unwrap() * 1024 * 1024).to_string(),
        None => v,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn infra_redis_backup_passes_redis_check_rdb_and_apply_flushes_rc1_databases() {
    let st = Stack::up(FROM, true);
    for (db, key) in [(0u8, "it:keep"), (1, "it:quota"), (2, "it:cache")] {
        let mut c = redis(&st, db).await;
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg("v")
            .query_async(&mut c)
            .await
            .unwrap();
    }
    let r = runner(&st, &repo().join("releases"));
    let run = run_dir(&st, "redis");
    let c = ctx(&run);

    let detail = redis_steps::redis_backup(&r, &c).await.unwrap();
    assert!(!detail.contains(&st.secret("redis-password")));
    let rdb = run.join("redis/dump.rdb");
    assert_eq!(mode(&run.join("redis")), 0o700);
    assert_eq!(mode(&rdb), 0o600);
    // An independent run of redis-check-rdb on the copy.
    let out = Command::new("redis-check-rdb").arg(&rdb).output().unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("RDB looks OK"),
        "{}",
        text(&out)
    );
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("redis/backup.json")).unwrap())
            .unwrap();
    assert_eq!(meta["sha256"], hex_sha256(&std::fs::read(&rdb).unwrap()));
    for db in ["0", "1", "2"] {
        assert!(
            meta["keys_per_database"][db].as_u64().unwrap() >= 1,
            "{meta}"
        );
    }
    let again = redis_steps::redis_backup(&r, &c).await.unwrap();
    assert!(again.starts_with("kept the valid backup"), "{again}");

    assert_eq!(
        redis_steps::probe_redis_apply(&r, TO, &c).await.unwrap(),
        Probe::NotDone
    );
    let applied = redis_steps::redis_apply(&r, TO, &c).await.unwrap();
    eprintln!("redis backup: {detail}\nredis apply: {applied}");
    assert!(applied.contains("skipped"), "{applied}");
    assert!(applied.contains("databases"), "{applied}");
    for db in [1u8, 2] {
        let mut con = redis(&st, db).await;
        let n: i64 = redis::cmd("DBSIZE").query_async(&mut con).await.unwrap();
        assert_eq!(n, 0, "db {db}");
    }
    let mut con = redis(&st, 0).await;
    let kept: Option<String> = redis::cmd("GET")
        .arg("it:keep")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(kept.as_deref(), Some("v"));
    for key in ["maxmemory", "maxmemory-policy", "save", "appendonly"] {
        let v: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg(key)
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(v[1], redis_expected(key), "{key}");
    }
    let pong: String = redis::cmd("PING").query_async(&mut con).await.unwrap();
    assert_eq!(pong, "PONG");
    // A restart of Redis would read the target's settings too.
    assert_eq!(
        std::fs::read(st.dir.join("redis/release.conf")).unwrap(),
        std::fs::read(repo().join("releases").join(TO).join("redis/redis.conf")).unwrap()
    );

    assert!(matches!(
        redis_steps::probe_redis_apply(&r, TO, &c).await.unwrap(),
        Probe::Done { .. }
    ));
    redis_steps::redis_apply(&r, TO, &c).await.unwrap();
    let kept: Option<String> = redis::cmd("GET")
        .arg("it:keep")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(kept.as_deref(), Some("v"));
}

struct Monitor {
    prom: String,
    am: String,
    http: reqwest::Client,
}

impl Monitor {
    fn of(st: &Stack) -> Monitor {
        let s = StackState::load(&st.dir).unwrap();
        Monitor {
            prom: s.prometheus_url(),
            am: s
                .alertmanager_url()
                .expect("the stack runs an Alertmanager"),
            http: reqwest::Client::new(),
        }
    }

    async fn get(&self, url: String) -> Value {
        self.http
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn config_yaml(&self) -> String {
        self.get(format!("{}/api/v1/status/config", self.prom))
            .await["data"]["yaml"]
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn group_names(&self) -> BTreeSet<String> {
        self.get(format!("{}/api/v1/rules", self.prom)).await["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["name"].as_str().unwrap().to_string())
            .collect()
    }

    async fn am_reload_time(&self) -> f64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.am))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| {
                l.strip_prefix("alertmanager_config_last_reload_success_timestamp_seconds ")
            })
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

fn groups_of(rules: &Path) -> BTreeSet<String> {
    let v: Value = serde_saphyr::from_str(&std::fs::read_to_string(rules).unwrap()).unwrap();
    v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn infra_monitoring_apply_makes_prometheus_and_alertmanager_serve_stable() {
    let st = Stack::up(FROM, true);
    // A Grafana of this stack's own: a dashboards directory with rc1's dashboard and a file that is not ours.
    let dashboards = st.dir.join("grafana-dashboards");
    std::fs::create_dir_all(&dashboards).unwrap();
    let rc1_dash = repo()
        .join("releases")
        .join(FROM)
        .join("monitoring/grafana/xorb-overview.json");
    std::fs::copy(&rc1_dash, dashboards.join("xorb-overview.json")).unwrap();
    std::fs::write(dashboards.join("someone-elses.json"), "{}").unwrap();
    let mut s = StackState::load(&st.dir).unwrap();
    s.grafana_dashboards = Some(dashboards.clone());
    s.save(&st.dir).unwrap();

    let m = Monitor::of(&st);
    let stable_groups = groups_of(
        &repo()
            .join("releases")
            .join(TO)
            .join("monitoring/alert-rules.yml"),
    );
    assert!(m.group_names().await.contains("xorb-evidence"));
    let rc1_config = m.config_yaml().await;
    assert!(rc1_config.contains("xorb-control-plane"), "{rc1_config}");
    // stack up points Prometheus's alerting at the stack's own Alertmanager.
    let am_port = s.alertmanager.as_ref().unwrap().port;
    assert!(
        rc1_config.contains(&format!("127.0.0.1:{am_port}")),
        "{rc1_config}"
    );

    let r = runner(&st, &repo().join("releases"));
    let run = run_dir(&st, "monitoring");
    let c = ctx(&run);
    let v = monitoring::monitoring_validate(&r, TO, &c).await.unwrap();
    assert!(v.contains("promtool accepts"), "{v}");
    assert_eq!(
        m.config_yaml().await,
        rc1_config,
        "validate touched Prometheus"
    );
    assert_eq!(
        monitoring::probe_monitoring_apply(&r, TO, &c)
            .await
            .unwrap(),
        Probe::NotDone
    );

    let am_before = m.am_reload_time().await;
    let detail = monitoring::monitoring_apply(&r, TO, &c).await.unwrap();
    eprintln!("monitoring validate: {v}\nmonitoring apply: {detail}");
    assert!(detail.contains("Alertmanager reloaded"), "{detail}");
    assert!(detail.contains("1 written"), "{detail}");

    assert_eq!(m.group_names().await, stable_groups);
    let cfg: Value = serde_saphyr::from_str(&m.config_yaml().await).unwrap();
    assert_eq!(cfg["global"]["external_labels"]["release"], TO);
    let jobs: BTreeSet<String> = cfg["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        jobs,
        [
            "xorb-api",
            "xorb-orchestrator",
            "xorb-scheduler",
            "xorb-worker"
        ]
        .map(String::from)
        .into()
    );
    assert_eq!(
        cfg["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"][0],
        format!("127.0.0.1:{am_port}")
    );
    let healthy = m
        .http
        .get(format!("{}/-/healthy", m.prom))
        .send()
        .await
        .unwrap();
    assert!(healthy.status().is_success());
    assert!(
        m.am_reload_time().await > am_before,
        "Alertmanager did not reload"
    );
    let am_status = m.get(format!("{}/api/v2/status", m.am)).await;
    assert!(
        am_status["config"]["original"]
            .as_str()
            .unwrap()
            .contains("xorb-oncall-critical"),
        "{am_status}"
    );
    assert_eq!(
        std::fs::read(dashboards.join("xorb-overview.json")).unwrap(),
        std::fs::read(
            repo()
                .join("releases")
                .join(TO)
                .join("monitoring/grafana/xorb-overview.json")
        )
        .unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(dashboards.join("someone-elses.json")).unwrap(),
        "{}"
    );

    // Twice: the probe says done and a second apply changes nothing that Prometheus serves.
    assert!(matches!(
        monitoring::probe_monitoring_apply(&r, TO, &c)
            .await
            .unwrap(),
        Probe::Done { .. }
    ));
    let served = m.config_yaml().await;
    let again = monitoring::monitoring_apply(&r, TO, &c).await.unwrap();
    assert!(again.contains("0 written"), "{again}");
    assert_eq!(m.config_yaml().await, served);
    assert_eq!(m.group_names().await, stable_groups);
}

/// A copy of the releases with stable's alert rules broken (an unclosed parenthesis in one expression).
fn releases_with_broken_rules() -> (PathBuf, PathBuf) {
    let root = tempfile::Builder::new()
        .prefix("xorb-it-releases-")
        .tempdir()
        .unwrap()
        .keep();
    for rel in [FROM, TO] {
        let out = Command::new("cp")
            .arg("-r")
            .arg(repo().join("releases").join(rel))
            .arg(&root)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
    let rules = root.join(TO).join("monitoring/alert-rules.yml");
    let text = std::fs::read_to_string(&rules).unwrap();
    let broken = text.replacen(
        "expr: up{job=~\"xorb-.*\"} == 0",
        "expr: sum(up{job=~\"xorb-.*\"} == 0",
        1,
    );
    assert_ne!(broken, text);
    std::fs::write(&rules, broken).unwrap();
    (root, rules)
}

#[tokio::test(flavor = "multi_thread")]
async fn infra_invalid_target_rules_fail_validation_and_leave_prometheus_untouched() {
    let st = Stack::up(FROM, true);
    let (root, rules) = releases_with_broken_rules();
    let m = Monitor::of(&st);
    let config_before = m.config_yaml().await;
    let groups_before = m.group_names().await;
    let file_before = std::fs::read(st.dir.join("prometheus/prometheus.yml")).unwrap();

    let r = runner(&st, &root);
    let run = run_dir(&st, "monitoring-broken");
    let c = ctx(&run);
    let err = monitoring::monitoring_validate(&r, TO, &c)
        .await
        .unwrap_err()
        .to_string();
    eprintln!("monitoring validate (broken rules): {err}");
    assert!(err.contains("promtool check rules"), "{err}");
    assert!(err.contains(&rules.display().to_string()), "{err}");
    // promtool's own words about the expression.
    assert!(
        err.contains("parse error") || err.contains("unclosed"),
        "{err}"
    );

    let err = monitoring::monitoring_apply(&r, TO, &c)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("promtool check rules"), "{err}");
    assert_eq!(m.config_yaml().await, config_before);
    assert_eq!(m.group_names().await, groups_before);
    assert_eq!(
        std::fs::read(st.dir.join("prometheus/prometheus.yml")).unwrap(),
        file_before
    );
    let _ = std::fs::remove_dir_all(&root);
}
