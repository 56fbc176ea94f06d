//! The worker: pulls scan jobs (durable consumer `xorb-worker` on the release's jobs stream),
//! TCP-connect-scans the named ports, stores findings (and, rc1, signed evidence), acks, and
//! reports `xorb.events.job_completed`.
//!
//! Egress discipline: the worker only ever connects to the address the job names, only on the
//! ports the job names, and only after re-checking against the database that the session is
//! live, belongs to the job's tenant, contains that target, and that the address lies inside
//! the tenant's current scope allowlist (loopback by default).

use crate::ctx::Ctx;
use crate::evidence::{self, EvidenceSigner, Payload};
use crate::jobs::{self, JobCompleted, Quiet, ScanJob};
use crate::release::WORKER_CONSUMER;
use crate::scope::{self, Target};
use crate::shutdown::Shutdown;
use async_nats::jetstream::{AckKind, Message};
use axum::Router;
use chrono::{DateTime, Timelike, Utc};
use futures::StreamExt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// Jobs handled at the same time by one worker (connections are bounded separately by
/// XORB_SCAN_CONCURRENCY).
const JOBS_IN_FLIGHT: usize = 4;
const ACK_WAIT: Duration = Duration::from_secs(60);

struct Worker {
    ctx: Arc<Ctx>,
    connects: Semaphore,
    signer: Option<EvidenceSigner>,
}

pub async fn start(
    ctx: Arc<Ctx>,
    shutdown: Shutdown,
) -> anyhow::Result<(Router, Vec<JoinHandle<()>>)> {
    let signer = if ctx.cfg.evidence_enabled {
        let dir = ctx
            .cfg
            .evidence_dir
            .clone()
            .ok_or(crate::config::ConfigError::Missing("XORB_EVIDENCE_DIR"))?;
        let (signer, created) = EvidenceSigner::load_or_create(&dir)?;
        tracing::info!(
            dir = %dir.display(),
            key_id = signer.key_id(),
            created,
            "evidence signing key ready"
        );
        Some(signer)
    } else {
        None
    };
    let w = Arc::new(Worker {
        connects: Semaphore::new(ctx.cfg.scan_concurrency),
        ctx: ctx.clone(),
        signer,
    });
    let task = tokio::spawn(consume_loop(w, shutdown));
    Ok((Router::new(), vec![task]))
}

async fn consume_loop(w: Arc<Worker>, shutdown: Shutdown) {
    let mut quiet = Quiet::new("scan job consumer");
    while !shutdown.is_triggered() {
        let err = match consume(&w, &shutdown, &mut quiet).await {
            Ok(()) => break,
            Err(e) => e,
        };
        let delay = quiet.failed(&err);
        if !shutdown.sleep(delay).await {
            break;
        }
    }
}

async fn consume(w: &Arc<Worker>, shutdown: &Shutdown, quiet: &mut Quiet) -> Result<(), String> {
    let ctx = &w.ctx;
    let stream = ctx.release.nats.jobs_stream;
    let consumer =
        jobs::durable_consumer(&ctx.js, stream, WORKER_CONSUMER, None, ACK_WAIT, 5).await?;
    let messages = consumer
        .stream()
        .max_messages_per_batch(JOBS_IN_FLIGHT)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .map_err(|e| format!("pull from {stream}: {e}"))?;
    quiet.ok();
    tracing::info!(consumer = WORKER_CONSUMER, stream, "consuming scan jobs");
    let mut failure: Option<String> = None;
    // Stop taking new jobs on shutdown; jobs already started run to their end.
    let sd = shutdown.clone();
    messages
        .take_until(Box::pin(async move { sd.wait().await }))
        .take_while(|m| {
            let keep = match m {
                Ok(_) => true,
                Err(e) => {
                    failure = Some(format!("pull: {e}"));
                    false
                }
            };
            std::future::ready(keep)
        })
        .for_each_concurrent(JOBS_IN_FLIGHT, |m| async move {
            if let Ok(msg) = m {
                handle(w, msg).await;
            }
        })
        .await;
    match failure {
        Some(e) => Err(e),
        None if shutdown.is_triggered() => Ok(()),
        None => Err("job stream ended".into()),
    }
}

#[derive(Debug)]
enum Outcome {
    /// Done (or nothing to do): ack.
    Ack(&'static str),
    /// Never deliverable: terminate.
    Term(String),
}

async fn handle(w: &Worker, msg: Message) {
    let job: ScanJob = match serde_json::from_slice(&msg.payload) {
        Ok(j) => j,
        Err(e) => {
            tracing::warn!(subject = %msg.subject, error = %e, "malformed job: terminating it");
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        }
    };
    // rc1: the tenant in the subject must be the job's tenant.
    if let Some(t) = subject_tenant(&msg.subject)
        && t != job.tenant_id.to_string()
    {
        tracing::warn!(subject = %msg.subject, tenant = %job.tenant_id, "job published under another tenant's subject: terminating it");
        let _ = msg.ack_with(AckKind::Term).await;
        return;
    }
    let started = Instant::now();
    let outcome = run_job(w, &msg, &job).await;
    match outcome {
        Ok((Outcome::Ack(what), completed)) => {
            if let Err(e) = msg.double_ack().await {
                tracing::warn!(session = %job.session_id, error = %e, "ack failed (job may be redelivered; it is idempotent)");
            }
            tracing::info!(
                session = %job.session_id, host = %job.host, ports = job.ports.len(),
                elapsed_ms = started.elapsed().as_millis() as u64, "job {what}"
            );
            if let Some(ev) = completed {
                publish_completed(&w.ctx, &ev).await;
            }
        }
        Ok((Outcome::Term(why), _)) => {
            tracing::warn!(session = %job.session_id, host = %job.host, reason = %why, "job refused: terminating it");
            let _ = msg.ack_with(AckKind::Term).await;
        }
        Err(why) => {
            tracing::warn!(session = %job.session_id, error = %why, "job failed: will be redelivered");
            let _ = msg
                .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                .await;
        }
    }
}

/// `xorb.tenant.<tenant_id>.jobs` → `<tenant_id>`.
fn subject_tenant(subject: &str) -> Option<&str> {
    subject
        .strip_prefix("xorb.tenant.")
        .and_then(|s| s.strip_suffix(".jobs"))
}

struct SessionView {
    status: String,
    tenant_id: Uuid,
    targets: Vec<Target>,
    scope: Vec<ipnet::IpNet>,
}

async fn load_session(ctx: &Ctx, id: Uuid) -> Result<Option<SessionView>, String> {
    let client = ctx.pg.get().await.map_err(crate::db::pg)?;
    let row = client
        .query_opt(
            "SELECT s.status, s.tenant_id, s.targets, t.scope_allowlist \
             FROM ptaas_sessions s JOIN tenants t ON t.id = s.tenant_id WHERE s.id = $1",
            &[&id],
        )
        .await
        .map_err(crate::db::pg)?;
    Ok(row.map(|r| {
        let targets = r
            .get::<_, Option<serde_json::Value>>(2)
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();
        let entries: Vec<String> = r.get::<_, Option<Vec<String>>>(3).unwrap_or_default();
        SessionView {
            status: r.get(0),
            tenant_id: r.get(1),
            targets,
            scope: scope::parse_allowlist(&entries).0,
        }
    }))
}

async fn findings_exist(ctx: &Ctx, session: Uuid, host: &str) -> Result<bool, String> {
    let client = ctx.pg.get().await.map_err(crate::db::pg)?;
    Ok(client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM findings WHERE session_id = $1 AND host = $2)",
            &[&session, &host],
        )
        .await
        .map_err(crate::db::pg)?
        .get(0))
}

/// The defence-in-depth checks, pure: which address may be connected to for this job.
fn authorise(job: &ScanJob, s: &SessionView) -> Result<IpAddr, String> {
    if s.tenant_id != job.tenant_id {
        return Err("the job's tenant does not own the session".into());
    }
    let host_ip = scope::parse_host(&job.host).ok_or("the job's host is not an IP literal")?;
    let target = s
        .targets
        .iter()
        .find(|t| scope::parse_host(&t.host) == Some(host_ip))
        .ok_or("the job's host is not a target of the session")?;
    if job.ports.is_empty()
        || job
            .ports
            .iter()
            .any(|p| *p == 0 || !target.ports.contains(p))
    {
        return Err("the job names ports the session did not ask for".into());
    }
    scope::connect_allowed(&job.host, &s.scope)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortState {
    Open,
    Closed,
    Filtered,
}

impl PortState {
    pub fn as_str(self) -> &'static str {
        match self {
            PortState::Open => "open",
            PortState::Closed => "closed",
            PortState::Filtered => "filtered",
        }
    }
}

struct Observation {
    port: u16,
    state: PortState,
    latency_ms: Option<i32>,
    observed_at: DateTime<Utc>,
}

/// Microsecond precision, like PostgreSQL, so the stored and the signed timestamps agree.
fn now_micros() -> DateTime<Utc> {
    let t = Utc::now();
    t.with_nanosecond(t.nanosecond() / 1000 * 1000).unwrap_or(t)
}

/// One TCP connect: open (connected), closed (refused), filtered (timeout or no answer).
pub async fn probe(ip: IpAddr, port: u16, timeout: Duration) -> (PortState, Option<i32>) {
    let start = Instant::now();
    let r = tokio::time::timeout(
        timeout,
        tokio::net::TcpStream::connect(SocketAddr::new(ip, port)),
    )
    .await;
    let ms = || Some(start.elapsed().as_millis().min(i32::MAX as u128) as i32);
    match r {
        // Nobody listens on a port of this host that falls in the ephemeral
        // range: the kernel may pick that very port for our end and complete
        // a simultaneous open with ourselves. That is a closed port, not a
        // service.
        Ok(Ok(stream)) if is_self_connection(&stream) => (PortState::Closed, ms()),
        Ok(Ok(_stream)) => (PortState::Open, ms()),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            (PortState::Closed, ms())
        }
        Ok(Err(e)) => {
            tracing::debug!(%ip, port, error = %e, "connect failed: reporting filtered");
            (PortState::Filtered, None)
        }
        Err(_) => (PortState::Filtered, None),
    }
}

fn is_self_connection(stream: &tokio::net::TcpStream) -> bool {
    matches!((stream.local_addr(), stream.peer_addr()), (Ok(l), Ok(p)) if l == p)
}

async fn scan(w: &Worker, msg: &Message, ip: IpAddr, ports: &[u16]) -> Vec<Observation> {
    let timeout = w.ctx.cfg.scan_timeout;
    let probes = futures::stream::iter(ports.iter().copied())
        .map(|port| async move {
            // The semaphore bounds connections across all jobs of this worker.
            let _permit = w.connects.acquire().await.ok();
            let (state, latency_ms) = probe(ip, port, timeout).await;
            Observation {
                port,
                state,
                latency_ms,
                observed_at: now_micros(),
            }
        })
        .buffer_unordered(w.ctx.cfg.scan_concurrency);
    // Tell JetStream we are alive during long scans.
    let mut progress = tokio::time::interval(ACK_WAIT / 3);
    progress.tick().await;
    let mut probes = std::pin::pin!(probes);
    let mut out = Vec::with_capacity(ports.len());
    loop {
        tokio::select! {
            o = probes.next() => match o {
                Some(o) => out.push(o),
                None => break,
            },
            _ = progress.tick() => {
                let _ = msg.ack_with(AckKind::Progress).await;
            }
        }
    }
    out.sort_by_key(|o| o.port);
    out
}

async fn run_job(
    w: &Worker,
    msg: &Message,
    job: &ScanJob,
) -> Result<(Outcome, Option<JobCompleted>), String> {
    let ctx = &w.ctx;
    let Some(session) = load_session(ctx, job.session_id).await? else {
        return Ok((Outcome::Term("the session does not exist".into()), None));
    };
    if !matches!(session.status.as_str(), "queued" | "running") {
        return Ok((Outcome::Ack("skipped (session no longer active)"), None));
    }
    let ip = match authorise(job, &session) {
        Ok(ip) => ip,
        Err(why) => return Ok((Outcome::Term(why), None)),
    };
    let host = ip.to_string();
    if findings_exist(ctx, job.session_id, &host).await? {
        // A redelivery of a job already recorded: no need to connect again.
        return Ok((Outcome::Ack("already recorded"), None));
    }
    let observations = scan(w, msg, ip, &job.ports).await;

    let mut client = ctx.pg.get().await.map_err(crate::db::pg)?;
    let tx = client.transaction().await.map_err(crate::db::pg)?;
    // Lock the session (waits for the orchestrator's dispatch transaction to commit).
    let Some(row) = tx
        .query_opt(
            "SELECT status FROM ptaas_sessions WHERE id = $1 FOR UPDATE",
            &[&job.session_id],
        )
        .await
        .map_err(crate::db::pg)?
    else {
        return Ok((Outcome::Term("the session disappeared".into()), None));
    };
    let status: String = row.get(0);
    if !matches!(status.as_str(), "queued" | "running") {
        return Ok((Outcome::Ack("skipped (session no longer active)"), None));
    }
    // Redelivered job whose results are already stored: just ack.
    let already: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM findings WHERE session_id = $1 AND host = $2)",
            &[&job.session_id, &host],
        )
        .await
        .map_err(crate::db::pg)?
        .get(0);
    if already {
        return Ok((Outcome::Ack("already recorded"), None));
    }

    let ids: Vec<Uuid> = observations.iter().map(|_| Uuid::new_v4()).collect();
    let ports: Vec<i32> = observations.iter().map(|o| o.port as i32).collect();
    let states: Vec<&str> = observations.iter().map(|o| o.state.as_str()).collect();
    let latencies: Vec<Option<i32>> = observations.iter().map(|o| o.latency_ms).collect();
    let times: Vec<DateTime<Utc>> = observations.iter().map(|o| o.observed_at).collect();
    tx.execute(
        "INSERT INTO findings (id, session_id, tenant_id, host, port, state, latency_ms, observed_at) \
         SELECT u.id, $2, $3, $4, u.port, u.state, u.latency_ms, u.observed_at \
         FROM unnest($1::uuid[], $5::int4[], $6::text[], $7::int4[], $8::timestamptz[]) \
              AS u(id, port, state, latency_ms, observed_at)",
        &[&ids, &job.session_id, &job.tenant_id, &host, &ports, &states, &latencies, &times],
    )
    .await
    .map_err(|e| format!("insert findings: {}", crate::db::pg(e)))?;

    if let Some(signer) = &w.signer {
        let mut ev_ids = Vec::with_capacity(ids.len());
        let mut payloads = Vec::with_capacity(ids.len());
        let mut sigs = Vec::with_capacity(ids.len());
        for (fid, o) in ids.iter().zip(&observations) {
            let observed_at = evidence::format_observed_at(o.observed_at);
            let payload = Payload {
                finding_id: *fid,
                host: &host,
                latency_ms: o.latency_ms,
                observed_at: &observed_at,
                port: o.port,
                session_id: job.session_id,
                state: o.state.as_str(),
                tenant_id: job.tenant_id,
            }
            .canonical_bytes();
            let sig = signer.sign(&payload);
            let id = Uuid::new_v4();
            // Files first: a failed commit leaves at most an orphan file, never a row without one.
            signer
                .write_record(id, &payload, &sig)
                .map_err(|e| format!("evidence: {e}"))?;
            ev_ids.push(id);
            payloads.push(payload);
            sigs.push(sig.to_vec());
        }
        tx.execute(
            "INSERT INTO evidence (id, tenant_id, session_id, finding_id, payload, signature, key_id, created_at) \
             SELECT u.id, $2, $3, u.finding_id, u.payload, u.signature, $4, now() \
             FROM unnest($1::uuid[], $5::uuid[], $6::bytea[], $7::bytea[]) AS u(id, finding_id, payload, signature)",
            &[&ev_ids, &job.tenant_id, &job.session_id, &signer.key_id(), &ids, &payloads, &sigs],
        )
        .await
        .map_err(|e| format!("insert evidence: {}", crate::db::pg(e)))?;
    }

    let counts = tx
        .query_one(
            "UPDATE ptaas_sessions SET jobs_done = jobs_done + 1, updated_at = now() WHERE id = $1 \
             RETURNING jobs_done, jobs_total",
            &[&job.session_id],
        )
        .await
        .map_err(crate::db::pg)?;
    tx.commit()
        .await
        .map_err(|e| format!("commit: {}", crate::db::pg(e)))?;
    let open = observations
        .iter()
        .filter(|o| o.state == PortState::Open)
        .count();
    Ok((
        Outcome::Ack("done"),
        Some(JobCompleted {
            session_id: job.session_id,
            tenant_id: job.tenant_id,
            host,
            ports_scanned: observations.len(),
            open,
            jobs_done: counts.get(0),
            jobs_total: counts.get(1),
        }),
    ))
}

async fn publish_completed(ctx: &Ctx, ev: &JobCompleted) {
    let subject = ctx.release.nats.job_completed_subject;
    let payload = match serde_json::to_vec(ev) {
        Ok(p) => p,
        Err(_) => return,
    };
    let r = match ctx.js.publish(subject, payload.into()).await {
        Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = r {
        // The orchestrator's sweep completes the session anyway.
        tracing::warn!(session = %ev.session_id, error = %e, "cannot publish job_completed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(tenant: Uuid) -> SessionView {
        SessionView {
            status: "running".into(),
            tenant_id: tenant,
            targets: vec![Target {
                host: "127.0.0.1".into(),
                ports: vec![22, 80],
            }],
            scope: scope::parse_allowlist(&["127.0.0.0/8".into(), "::1/128".into()]).0,
        }
    }

    fn job(tenant: Uuid, host: &str, ports: &[u16]) -> ScanJob {
        ScanJob {
            session_id: Uuid::new_v4(),
            tenant_id: tenant,
            index: 0,
            host: host.into(),
            ports: ports.to_vec(),
        }
    }

    #[test]
    fn authorise_only_what_the_session_asked_for() {
        let t = Uuid::new_v4();
        let v = view(t);
        assert!(authorise(&job(t, "127.0.0.1", &[80]), &v).is_ok());
        assert!(authorise(&job(t, "127.0.0.1", &[22, 80]), &v).is_ok());
        // another tenant's job for this session
        assert!(authorise(&job(Uuid::new_v4(), "127.0.0.1", &[80]), &v).is_err());
        // a port or a host the session did not name
        assert!(authorise(&job(t, "127.0.0.1", &[443]), &v).is_err());
        assert!(authorise(&job(t, "127.0.0.2", &[80]), &v).is_err());
        assert!(authorise(&job(t, "127.0.0.1", &[]), &v).is_err());
        // the session names it but the tenant's scope no longer covers it
        let mut v2 = view(t);
        v2.targets.push(Target {
            host: "10.0.0.1".into(),
            ports: vec![80],
        });
        assert!(authorise(&job(t, "10.0.0.1", &[80]), &v2).is_err());
    }

    #[tokio::test]
    async fn probe_open_closed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open_port = listener.local_addr().unwrap().port();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let (s, lat) = probe(ip, open_port, Duration::from_millis(500)).await;
        assert_eq!(s, PortState::Open);
        assert!(lat.is_some());
        drop(listener);
        // A port bound but not listening stays ours, so no other process can
        // start listening there and the kernel cannot hand it to the probe's
        // own end: a released port could be either, and the test flaked so.
        let held = tokio::net::TcpSocket::new_v4().unwrap();
        held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let closed_port = held.local_addr().unwrap().port();
        let (s, lat) = probe(ip, closed_port, Duration::from_millis(500)).await;
        assert_eq!(s, PortState::Closed);
        assert!(lat.is_some());
    }

    #[tokio::test]
    async fn a_connection_to_ourselves_is_a_closed_port() {
        // Simultaneous open with ourselves, as the kernel makes it when the
        // ephemeral port it picks is the port probed.
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let me = sock.local_addr().unwrap();
        let stream = sock.connect(me).await.unwrap();
        assert!(is_self_connection(&stream));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let other = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        assert!(!is_self_connection(&other));
    }

    #[test]
    fn subject_tenants() {
        assert_eq!(subject_tenant("xorb.tenant.abc.jobs"), Some("abc"));
        assert_eq!(subject_tenant("xorb.jobs.scan"), None);
    }

    #[test]
    fn micros() {
        let t = now_micros();
        assert_eq!(t.nanosecond() % 1000, 0);
    }
}
