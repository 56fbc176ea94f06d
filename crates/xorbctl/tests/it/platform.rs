//! The platform itself, on real servers: scans, scope, tenant isolation, quotas, evidence, schema guards, Alembic.

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::common::*;

/// A loopback port bound but never listened on, held while `.0` lives: a
/// released port could be taken by another process, or be picked by the kernel
/// as the probe's own end (a self-connection), and read as open.
fn held_closed_port() -> (tokio::net::TcpSocket, u16) {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = s.local_addr().unwrap().port();
    (s, port)
}

/// Any port nothing listens on, where it does not matter whether one does later.
fn closed_port() -> u16 {
    held_closed_port().1
}

#[tokio::test(flavor = "multi_thread")]
async fn info_reports_the_rc1_release_and_schema_head() {
    let st = rc1();
    let v: serde_json::Value = reqwest::get(format!("{}/api/v1/info", st.url("api")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["release"], "v2025.08-rc1");
    assert_eq!(v["schema_revision"], "8d9a2c3");
    assert_eq!(v["features"]["evidence_system"], true);
    let status = st.status();
    assert_eq!(status["schema_revision"], "8d9a2c3");
    assert!(
        status["services"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["healthy"] == true),
        "{status:#}"
    );
    assert_eq!(
        status["streams"],
        json!(["xorb-events", "xorb-tenant-streams"])
    );
}

async fn scan_gets_ports_right(st: &Stack, slug: &str) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let open = listener.local_addr().unwrap().port();
    let (_held, closed) = held_closed_port();
    let token = st.add_tenant(slug).await;
    let api = Api::new(st.url("api"));
    let (code, v) = api
        .create_session(
            &token,
            json!({"targets": [{"host": "127.0.0.1", "ports": [open, closed]}]}),
        )
        .await;
    assert_eq!(code, 201, "{v}");
    let done = api.wait_completed(&token, v["id"].as_str().unwrap()).await;
    let mut states: Vec<(u64, String)> = done["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["port"].as_u64().unwrap(),
                f["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    states.sort();
    let mut want = vec![
        (open as u64, "open".to_string()),
        (closed as u64, "closed".to_string()),
    ];
    want.sort();
    assert_eq!(states, want);
    drop(listener);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scan_of_a_loopback_listener_gets_open_and_closed_right_on_both_releases() {
    scan_gets_ports_right(rc1(), "scan-rc1").await;
    scan_gets_ports_right(stable(), "scan-stable").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_outside_the_scope_is_refused_and_nothing_is_stored() {
    let st = rc1();
    let token = st.add_tenant("scope").await;
    let api = Api::new(st.url("api"));
    for host in ["10.0.0.1", "8.8.8.8", "scanme.nmap.org", "192.168.1.1"] {
        let (code, v) = api
            .create_session(
                &token,
                json!({"targets": [{"host": host, "ports": [80, 443]}]}),
            )
            .await;
        assert_eq!(code, 422, "{host}: {v}");
    }
    let n: i64 = st
        .pg()
        .await
        .query_one("SELECT count(*) FROM ptaas_sessions s JOIN tenants t ON t.id = s.tenant_id WHERE t.slug = 'scope'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

async fn tenants_are_isolated(st: &Stack, prefix: &str) {
    let a = st.add_tenant(&format!("{prefix}-a")).await;
    let b = st.add_tenant(&format!("{prefix}-b")).await;
    let api = Api::new(st.url("api"));
    let (code, v) = api
        .create_session(
            &a,
            json!({"targets": [{"host": "127.0.0.1", "ports": [closed_port()]}]}),
        )
        .await;
    assert_eq!(code, 201, "{v}");
    let id = v["id"].as_str().unwrap();
    let (code, _) = api.get(&b, &format!("/api/v1/ptaas/sessions/{id}")).await;
    assert_eq!(code, 404, "tenant B must not see tenant A's session");
    let (_, list) = api.get(&b, "/api/v1/ptaas/sessions").await;
    assert_eq!(list["sessions"].as_array().unwrap().len(), 0, "{list}");
    let (code, _) = api.get(&a, &format!("/api/v1/ptaas/sessions/{id}")).await;
    assert_eq!(code, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn tenant_a_cannot_see_tenant_b_in_basic_mode() {
    let st = stable();
    let info: serde_json::Value = reqwest::get(format!("{}/api/v1/info", st.url("api")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["features"]["tenant_isolation_mode"], "basic");
    tenants_are_isolated(st, "basic").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tenant_a_cannot_see_tenant_b_in_advanced_mode_and_row_level_security_does_it() {
    let st = rc1();
    let info: serde_json::Value = reqwest::get(format!("{}/api/v1/info", st.url("api")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["features"]["tenant_isolation_mode"], "advanced");
    tenants_are_isolated(st, "adv").await;
    // The database itself refuses: as the tenant role with no WHERE clause, a tenant sees only its rows.
    let mut pg = st.pg().await;
    let tx = pg.transaction().await.unwrap();
    let acme: uuid::Uuid = tx
        .query_one("SELECT id FROM tenants WHERE slug = 'acme'", &[])
        .await
        .unwrap()
        .get(0);
    let all: i64 = tx
        .query_one("SELECT count(*) FROM ptaas_sessions", &[])
        .await
        .unwrap()
        .get(0);
    let own: i64 = tx
        .query_one(
            "SELECT count(*) FROM ptaas_sessions WHERE tenant_id = $1",
            &[&acme],
        )
        .await
        .unwrap()
        .get(0);
    tx.batch_execute("SET LOCAL ROLE xorb_tenant")
        .await
        .unwrap();
    tx.execute(
        "SELECT set_config('xorb.tenant_id', $1, true)",
        &[&acme.to_string()],
    )
    .await
    .unwrap();
    let seen: i64 = tx
        .query_one("SELECT count(*) FROM ptaas_sessions", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        all > own && own > 0,
        "demo data has several tenants: all={all} own={own}"
    );
    assert_eq!(seen, own);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rc1_quota_answers_429_when_exceeded() {
    let st = rc1();
    let token = st.add_tenant("quota").await;
    st.pg()
        .await
        .execute("INSERT INTO tenant_quotas (tenant_id, max_sessions_per_hour) SELECT id, 1 FROM tenants WHERE slug = 'quota'", &[])
        .await
        .unwrap();
    let api = Api::new(st.url("api"));
    let body = json!({"targets": [{"host": "127.0.0.1", "ports": [closed_port()]}]});
    let (first, v) = api.create_session(&token, body.clone()).await;
    assert_eq!(first, 201, "{v}");
    let (second, v) = api.create_session(&token, body).await;
    assert_eq!(second, 429, "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn evidence_verifies_with_openssl_and_fails_after_one_byte_changes() {
    let st = rc1();
    let ev = st.dir.join("evidence");
    let pubkey = ev.join("signing-key.pub.pem");
    let record = std::fs::read_dir(ev.join("records"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .expect("demo data has evidence records");
    let sig = record.with_extension("sig");
    let verify = |payload: &std::path::Path| {
        Command::new("openssl")
            .args(["pkeyutl", "-verify", "-pubin", "-inkey"])
            .arg(&pubkey)
            .arg("-rawin")
            .arg("-in")
            .arg(payload)
            .arg("-sigfile")
            .arg(&sig)
            .output()
            .unwrap()
    };
    let ok = verify(&record);
    assert!(ok.status.success(), "{}", text(&ok));
    let tampered = tempfile::NamedTempFile::new().unwrap();
    let mut bytes = std::fs::read(&record).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x01;
    std::fs::write(tampered.path(), &bytes).unwrap();
    assert!(
        !verify(tampered.path()).status.success(),
        "a changed byte must break the signature"
    );
    // The database holds the same bytes as the file.
    let id: uuid::Uuid = record
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let payload: Vec<u8> = st
        .pg()
        .await
        .query_one("SELECT payload FROM evidence WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(payload, std::fs::read(&record).unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_role_on_the_wrong_schema_refuses_to_start() {
    let st = stable();
    let out = Command::new(svc_bin())
        .args(["--role", "api", "--release", "v2025.08-rc1"])
        .env_clear()
        .env("DATABASE_URL", st.database_url("xorb"))
        .env("REDIS_URL", "redis://127.0.0.1:1/0")
        .env("NATS_URL", "nats://127.0.0.1:1")
        .env("XORB_LISTEN_ADDR", "127.0.0.1:0")
        .env("XORB_EVIDENCE_DIR", st.dir.join("evidence-wrong"))
        .env("EVIDENCE_SYSTEM_ENABLED", "true")
        .env("TENANT_ISOLATION_MODE", "advanced")
        .env("CIRCUIT_BREAKER_ENABLED", "false")
        .env("XORB_CONTROL_PLANE_URL", "http://127.0.0.1:1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("1a5be11"),
        "the error names the revision found: {err}"
    );
    assert!(
        !err.contains(&st.secret("db-password")),
        "no password in errors"
    );
}

fn alembic(url: &str, args: &[&str]) {
    let out = Command::new(venv().join("bin/alembic"))
        .arg("-c")
        .arg(repo().join("migrations/alembic.ini"))
        .args(args)
        .env("DATABASE_URL", url)
        .output()
        .unwrap();
    assert!(out.status.success(), "alembic {args:?}: {}", text(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn alembic_downgrade_to_stable_and_upgrade_again_round_trips_with_data() {
    let st = rc1();
    let db = format!("roundtrip_{}", std::process::id());
    st.pg()
        .await
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .unwrap();
    let url = st.database_url(&db);
    alembic(&url, &["upgrade", "head"]);
    let pg = pg_connect(&url).await;
    pg.batch_execute(
        "INSERT INTO tenants (slug, name, token_sha256) VALUES ('t1', 'T1', 'h1');
         INSERT INTO ptaas_sessions (tenant_id, status, targets) SELECT id, 'completed', '[]' FROM tenants;
         INSERT INTO findings (session_id, tenant_id, host, port, state)
           SELECT s.id, s.tenant_id, '127.0.0.1', 22, 'open' FROM ptaas_sessions s;
         INSERT INTO audit_log (actor, action, detail) VALUES ('test', 'seed', '{}');
         INSERT INTO evidence (tenant_id, session_id, finding_id, payload, signature, key_id)
           SELECT f.tenant_id, f.session_id, f.id, '\\x7b7d', '\\x00', 'k' FROM findings f;",
    )
    .await
    .unwrap();
    let before = stable_counts(&pg).await;
    alembic(&url, &["downgrade", "1a5be11"]);
    let rev: String = pg
        .query_one("SELECT version_num FROM alembic_version", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rev, "1a5be11");
    assert_eq!(
        stable_counts(&pg).await,
        before,
        "stable data survives the downgrade"
    );
    let evidence_exists: bool = pg
        .query_one("SELECT to_regclass('evidence') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!evidence_exists, "G7's table is gone at 1a5be11");
    alembic(&url, &["upgrade", "head"]);
    assert_eq!(
        stable_counts(&pg).await,
        before,
        "and survives the upgrade back"
    );
    let rev: String = pg
        .query_one("SELECT version_num FROM alembic_version", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rev, "8d9a2c3");
    drop(pg);
    st.pg()
        .await
        .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn promtool_accepts_every_services_metrics() {
    for st in [rc1(), stable()] {
        for svc in st.status()["services"].as_array().unwrap() {
            let name = svc["name"].as_str().unwrap();
            let body = reqwest::get(format!("http://127.0.0.1:{}/metrics", svc["port"]))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            for metric in [
                "http_requests_total",
                "http_request_duration_seconds_bucket",
                "xorb_build_info",
                "postgres_connections_active",
            ] {
                assert!(body.contains(metric), "{name} exports {metric}");
            }
            let mut child = Command::new("promtool")
                .args(["check", "metrics"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(body.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{} {name}: {}",
                st.release,
                text(&out)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stack_up_then_down_leaves_no_process_behind_and_down_twice_is_safe() {
    let st = Stack::up("v2025.07-stable", false);
    let v: serde_json::Value = reqwest::get(format!("{}/api/v1/info", st.url("api")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["release"], "v2025.07-stable");
    assert_eq!(v["schema_revision"], "1a5be11");
    let stack = st.stack_json();
    // A process is its pid *and* its start time: pids are reused, quickly when builds run beside the tests.
    let mut procs: Vec<(i64, u64)> = stack["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| proc_id(&s["proc"]))
        .collect();
    for s in ["postgres", "redis", "prometheus"] {
        procs.push(proc_id(&stack[s]["proc"]));
    }
    procs.push(proc_id(&stack["nats"]["proc"]));
    let again = st.xorbctl(&["stack", "up", "--release", "v2025.07-stable"]);
    assert!(again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("already runs"),
        "{}",
        text(&again)
    );
    let other = st.xorbctl(&["stack", "up", "--release", "v2025.08-rc1"]);
    assert_eq!(other.status.code(), Some(3), "{}", text(&other));
    let down = st.xorbctl(&["stack", "down"]);
    assert!(down.status.success(), "{}", text(&down));
    for (pid, start) in &procs {
        assert!(
            !runs(*pid, *start),
            "pid {pid} (started at {start}) still runs"
        );
    }
    // Nothing anywhere still refers to this state directory.
    let dir = st.dir.display().to_string();
    for e in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            assert!(
                !cmd.contains(&dir) || cmd.starts_with("sh -c while kill"),
                "left behind: {cmd}"
            );
        }
    }
    let twice = st.xorbctl(&["stack", "down"]);
    assert!(twice.status.success());
    assert!(String::from_utf8_lossy(&twice.stdout).contains("nothing to stop"));
    let _ = Duration::ZERO;
}

fn proc_id(p: &serde_json::Value) -> (i64, u64) {
    (
        p["pid"].as_i64().unwrap(),
        p["start_time"].as_u64().unwrap(),
    )
}

/// The process `pid` that started at `start` is alive (not gone, not a zombie).
fn runs(pid: i64, start: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    fields.first().is_some_and(|s| *s != "Z")
        && fields.get(19).and_then(|s| s.parse::<u64>().ok()) == Some(start)
}

async fn stable_counts(pg: &tokio_postgres::Client) -> Vec<i64> {
    let mut v = Vec::new();
    for t in ["tenants", "ptaas_sessions", "findings", "audit_log"] {
        let n: i64 = pg
            .query_one(&format!("SELECT count(*) FROM {t}"), &[])
            .await
            .unwrap()
            .get(0);
        v.push(n);
    }
    v
}
