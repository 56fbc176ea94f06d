//! What post-rollback monitoring stands on (issue 13): fault injection in the platform's services,
//! set by configuration on loopback only, and rc1's deterministic regression. Each test starts its
//! own api process against a shared stack's PostgreSQL, Redis and NATS, and stops it when done.

use crate::common::*;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// An api process of our own; killed (by its handle) when dropped.
pub(crate) struct Svc {
    pub(crate) child: Child,
    pub(crate) base: String,
    dir: PathBuf,
}

impl Drop for Svc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Svc {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("api.log")).unwrap_or_default()
    }

    pub(crate) fn faults_file(&self) -> PathBuf {
        self.dir.join("faults")
    }

    /// Replaces the faults file in one rename, so the service never reads half of it.
    pub(crate) fn set_faults(&self, text: &str) {
        let tmp = self.dir.join("faults.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.faults_file()).unwrap();
    }
}

fn svc_env(st: &Stack, port: u16) -> Vec<(String, String)> {
    let sj = st.stack_json();
    let mut env = vec![
        ("DATABASE_URL".into(), st.database_url("xorb")),
        (
            "REDIS_URL".into(),
            format!(
                "redis://:{}@127.0.0.1:{}/0",
                st.secret("redis-password"),
                sj["redis"]["port"]
            ),
        ),
        (
            "NATS_URL".into(),
            format!("nats://127.0.0.1:{}", sj["nats"]["port"]),
        ),
        ("XORB_LISTEN_ADDR".into(), format!("127.0.0.1:{port}")),
    ];
    if st.release == "v2025.08-rc1" {
        env.push(("XORB_CONTROL_PLANE_URL".into(), st.url("control-plane")));
    }
    env
}

pub(crate) async fn start_api(st: &Stack) -> Svc {
    start_api_on(st, xorb_local::process::free_port().unwrap()).await
}

/// An api on `port` (a restart on the same address keeps Prometheus's series: its counters reset).
pub(crate) async fn start_api_on(st: &Stack, port: u16) -> Svc {
    let dir = Stack::new_dir();
    let log = std::fs::File::create(dir.join("api.log")).unwrap();
    let mut cmd = Command::new(svc_bin());
    cmd.args(["--role", "api", "--release", &st.release])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(svc_env(st, port))
        .env("XORB_FAULTS_FILE", dir.join("faults"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let svc = Svc {
        child: cmd.spawn().unwrap(),
        base: format!("http://127.0.0.1:{port}"),
        dir,
    };
    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/health", svc.base);
    eventually(
        &format!("the api of {} to answer healthy", st.release),
        Duration::from_secs(60),
        || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let r = http.get(&url).send().await.ok()?;
                r.status().is_success().then_some(())
            }
        },
    )
    .await;
    svc
}

pub(crate) async fn list(
    http: &reqwest::Client,
    base: &str,
    token: &str,
) -> (u16, serde_json::Value) {
    let r = http
        .get(format!("{base}/api/v1/ptaas/sessions"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread")]
async fn faults_file_changes_a_running_api_and_leaves_health_and_metrics_truthful() {
    let st = stable();
    let token = st
        .add_tenant(&format!(
            "mon-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ))
        .await;
    let svc = start_api(st).await;
    let http = reqwest::Client::new();
    for _ in 0..20 {
        assert_eq!(list(&http, &svc.base, &token).await.0, 200);
    }

    // 10% of requests fail, spread evenly: any 100 in a row hold exactly 10 failures.
    svc.set_faults("XORB_FAULT_ERROR_RATIO=0.1\n");
    eventually(
        "the injected 500s to start",
        Duration::from_secs(10),
        || {
            let http = http.clone();
            let (base, token) = (svc.base.clone(), token.clone());
            async move { (list(&http, &base, &token).await.0 == 500).then_some(()) }
        },
    )
    .await;
    let mut failed = 0;
    for _ in 0..100 {
        match list(&http, &svc.base, &token).await {
            (200, _) => {}
            (500, body) => {
                assert_eq!(body["error"], "injected_fault", "{body}");
                failed += 1;
            }
            (code, body) => panic!("unexpected {code}: {body}"),
        }
    }
    assert_eq!(failed, 10, "failures among 100 requests at a ratio of 0.1");
    let health = http
        .get(format!("{}/api/v1/health", svc.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "health is not a fault target");
    let metrics = http
        .get(format!("{}/metrics", svc.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("http_requests_total{")
                && l.contains(r#"route="/api/v1/ptaas/sessions""#)
                && l.contains(r#"status="500""#)
        })
        .unwrap_or_else(|| panic!("no 500 counter in:\n{metrics}"));
    let n: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 11.0, "{line}");

    // Added latency: a lower bound the service guarantees by sleeping, not a speed claim.
    svc.set_faults("XORB_FAULT_LATENCY_MS=120\n");
    eventually(
        "the added latency to apply",
        Duration::from_secs(10),
        || {
            let http = http.clone();
            let (base, token) = (svc.base.clone(), token.clone());
            async move {
                let t = Instant::now();
                let (code, _) = list(&http, &base, &token).await;
                (code == 200 && t.elapsed() >= Duration::from_millis(120)).then_some(())
            }
        },
    )
    .await;
    for _ in 0..3 {
        let t = Instant::now();
        assert_eq!(list(&http, &svc.base, &token).await.0, 200);
        assert!(t.elapsed() >= Duration::from_millis(120));
    }

    // A stalled database: requests give up with 503 and health says which dependency.
    svc.set_faults("XORB_FAULT_STALL=postgres\nXORB_FAULT_STALL_MS=300\n");
    eventually(
        "the stalled database to show",
        Duration::from_secs(10),
        || {
            let http = http.clone();
            let (base, token) = (svc.base.clone(), token.clone());
            async move {
                let (code, body) = list(&http, &base, &token).await;
                (code == 503 && body["error"] == "dependency_unavailable").then_some(())
            }
        },
    )
    .await;
    let health = http
        .get(format!("{}/api/v1/health", svc.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 503);
    let h: serde_json::Value = health.json().await.unwrap();
    assert_eq!(
        h["dependencies"]["postgres"],
        "down: timed out (injected stall)"
    );
    assert_eq!(h["dependencies"]["redis"], "up");

    // The file gone, the environment's faults (none) are back.
    std::fs::remove_file(svc.faults_file()).unwrap();
    eventually("the api to recover", Duration::from_secs(10), || {
        let http = http.clone();
        let (base, token) = (svc.base.clone(), token.clone());
        async move { (list(&http, &base, &token).await.0 == 200).then_some(()) }
    })
    .await;
    let log = svc.log();
    assert!(log.contains("fault injection changed"), "{log}");
    assert!(!log.contains(&st.secret("db-password")));
}

#[test]
fn faults_are_refused_when_the_service_does_not_listen_on_loopback() {
    for (k, v) in [
        ("XORB_FAULT_ERROR_RATIO", "0.5"),
        ("XORB_FAULTS_FILE", "/nonexistent/faults"),
    ] {
        let out = Command::new(svc_bin())
            .args(["--role", "api", "--release", "v2025.07-stable"])
            .env_clear()
            .env("DATABASE_URL", "postgres://xorb:pw@127.0.0.1:1/xorb")
            .env("REDIS_URL", "redis://127.0.0.1:1/0")
            .env("NATS_URL", "nats://127.0.0.1:1")
            // Refused while reading the configuration, before anything binds or connects.
            .env("XORB_LISTEN_ADDR", "0.0.0.0:1")
            .env(k, v)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{k}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("loopback only"), "{k}: {err}");
    }
}

/// Holds `ptaas_sessions` locked for `hold` in a transaction of its own: the one slow query that
/// rc1 turns into a queue.
async fn slow_sessions_table(st: &Stack, hold: Duration) -> tokio::task::JoinHandle<()> {
    let mut pg = st.pg().await;
    let ready = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let tx = pg.transaction().await.unwrap();
        tx.batch_execute("LOCK TABLE ptaas_sessions IN ACCESS EXCLUSIVE MODE")
            .await
            .unwrap();
        ready.0.send(()).unwrap();
        tokio::time::sleep(hold).await;
        tx.rollback().await.unwrap();
    });
    ready.1.await.unwrap();
    task
}

async fn concurrent_lists(base: &str, token: &str, n: usize) -> Vec<(u16, serde_json::Value)> {
    let http = reqwest::Client::new();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (http, base, token) = (http.clone(), base.to_string(), token.to_string());
            tokio::spawn(async move { list(&http, &base, &token).await })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    answers
}

/// rc1 recounts every tenant's sessions inside one process-wide lock on every listing: one slow
/// query makes every concurrent listing wait, and those that wait too long fail. Stable under the
/// same slow query only waits. The slow query is a held table lock, so the outcome does not depend
/// on the machine's speed.
#[tokio::test(flavor = "multi_thread")]
async fn rc1_serialises_listings_behind_one_slow_query_and_stable_does_not() {
    let hold = Duration::from_millis(1500);
    for (st, regressed) in [(rc1(), true), (stable(), false)] {
        let slug = format!("mon-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let token = st.add_tenant(&slug).await;
        let svc = start_api(st).await;
        let lock = slow_sessions_table(st, hold).await;
        let answers = concurrent_lists(&svc.base, &token, 8).await;
        lock.await.unwrap();
        let busy = answers
            .iter()
            .filter(|(c, b)| *c == 503 && b["error"] == "tenant_metrics_busy")
            .count();
        let ok = answers.iter().filter(|(c, _)| *c == 200).count();
        assert_eq!(busy + ok, answers.len(), "{}: {answers:?}", st.release);
        if regressed {
            assert!(busy >= 1, "rc1: {answers:?}");
            assert!(
                ok >= 1,
                "rc1: the request holding the lock succeeds: {answers:?}"
            );
        } else {
            assert_eq!(ok, answers.len(), "stable: {answers:?}");
        }
        // rc1's per-tenant gauge is the feature the regression came with.
        let metrics = reqwest::get(format!("{}/metrics", svc.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(
            metrics.contains("xorb_tenant_sessions"),
            regressed,
            "{}",
            st.release
        );
        drop(svc);
    }
}
