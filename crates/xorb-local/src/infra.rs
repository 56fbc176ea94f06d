//! Phase 4 on the local target: NATS streams, Redis, monitoring (Prometheus, Alertmanager, Grafana dashboards).
//! Design: docs/design/rollback-semantics.md ("Phase 4").
//!
//! Every artifact goes under the run's directory (directories 0700, files 0600, written to a temporary name and
//! renamed, so a crash never leaves a half-written file that a resume would trust).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use xorb_engine::runner::{Probe, StepContext, StepError};
use xorb_model::release::{Release, Retention, Storage, StreamDef};

use crate::LocalError;
use crate::deps::{self, Dep};
use crate::process::poll_until;
use crate::rollback::{LocalRunner, failed};
use crate::servers::{self, mkdir, write_private};
use crate::stack::StackState;

const WAIT: Duration = Duration::from_secs(60);
/// One Redis call inside a poll: below `poll_until`'s 5 s cut of a probe, so that a silent Redis is named.
const POLL_CALL: Duration = Duration::from_secs(4);

fn load_release(r: &LocalRunner, name: &str) -> Result<Release, StepError> {
    Release::load_named(&r.paths.releases_root, name).map_err(|e| StepError::fatal(e.to_string()))
}

fn private_dir(path: &Path) -> Result<PathBuf, StepError> {
    mkdir(path, 0o700).map_err(failed)?;
    Ok(path.to_path_buf())
}

/// Write to `path.tmp`, then rename: a reader (or a resume) sees the old file or the whole new one.
fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), LocalError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    write_private(&tmp, contents)?;
    std::fs::rename(&tmp, path)
        .map_err(|e| LocalError::io(format!("cannot write {}", path.display()), e))
}

fn write_json(path: &Path, v: &Value) -> Result<(), StepError> {
    write_atomic(
        path,
        serde_json::to_string_pretty(v)
            .unwrap_or_default()
            .as_bytes(),
    )
    .map_err(failed)
}

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn sha256_file(path: &Path) -> Result<String, StepError> {
    let bytes =
        std::fs::read(path).map_err(|e| failed(format!("cannot read {}: {e}", path.display())))?;
    Ok(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)))
}

// ---------------------------------------------------------------------------------------------------------------
// NATS
// ---------------------------------------------------------------------------------------------------------------

/// A JetStream context that knows which server it talks to, for messages.
struct Js {
    ctx: async_nats::jetstream::Context,
    dep: Dep,
}

impl std::ops::Deref for Js {
    type Target = async_nats::jetstream::Context;
    fn deref(&self) -> &Self::Target {
        &self.ctx
    }
}

async fn jetstream(st: &StackState) -> Result<Js, StepError> {
    let dep = Dep::nats(st.nats.server.port);
    let opts = async_nats::ConnectOptions::new().connection_timeout(deps::CONNECT);
    let client = deps::call(&dep, "connect", deps::CONNECT, opts.connect(st.nats_url()))
        .await
        .map_err(failed)?;
    let mut ctx = async_nats::jetstream::new(client);
    ctx.set_timeout(deps::CALL);
    Ok(Js { ctx, dep })
}

/// A JetStream API request answered as raw JSON, so that what we save is exactly what the server says (times as
/// RFC 3339 strings, payloads and headers as the server's base64), whatever this client's types make of it.
async fn js_api(js: &Js, subject: String, body: &Value) -> Result<Value, StepError> {
    let what = format!("$JS.API.{subject}");
    deps::call(
        &js.dep,
        &what,
        deps::CALL,
        js.request::<_, _, Value>(subject, body),
    )
    .await
    .map_err(failed)
}

fn api_error(v: &Value) -> Option<(u64, String)> {
    let e = v.get("error")?;
    Some((
        e["err_code"].as_u64().unwrap_or(0),
        e["description"].as_str().unwrap_or("").to_string(),
    ))
}

const JS_NO_MESSAGE: u64 = 10037;

/// Every live stream's info (`config` and `state`), by name.
async fn stream_infos(js: &Js) -> Result<BTreeMap<String, Value>, StepError> {
    let mut names = Vec::new();
    loop {
        let v = js_api(js, "STREAM.NAMES".into(), &json!({"offset": names.len()})).await?;
        if let Some((_, d)) = api_error(&v) {
            return Err(failed(format!("NATS: cannot list streams: {d}")));
        }
        let page: Vec<String> = v["streams"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let total = v["total"].as_u64().unwrap_or(0) as usize;
        let empty = page.is_empty();
        names.extend(page);
        if empty || names.len() >= total {
            break;
        }
    }
    let mut out = BTreeMap::new();
    for name in names {
        let v = js_api(js, format!("STREAM.INFO.{name}"), &json!({})).await?;
        if let Some((_, d)) = api_error(&v) {
            return Err(failed(format!("NATS: stream {name}: {d}")));
        }
        out.insert(name, v);
    }
    Ok(out)
}

fn retention_name(r: Retention) -> &'static str {
    match r {
        Retention::Limits => "limits",
        Retention::Interest => "interest",
        Retention::Workqueue => "workqueue",
    }
}

fn storage_name(s: Storage) -> &'static str {
    match s {
        Storage::File => "file",
        Storage::Memory => "memory",
    }
}

/// Where a live stream's configuration differs from its definition (empty: it matches).
fn stream_diff(def: &StreamDef, config: &Value) -> Vec<String> {
    let mut d = Vec::new();
    let mut live_subjects: Vec<String> = config["subjects"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    live_subjects.sort();
    let mut want_subjects = def.subjects.clone();
    want_subjects.sort();
    if live_subjects != want_subjects {
        d.push(format!("subjects {live_subjects:?} ≠ {want_subjects:?}"));
    }
    let mut cmp = |field: &str, live: Value, want: Value| {
        if live != want {
            d.push(format!("{field} {live} ≠ {want}"));
        }
    };
    cmp(
        "retention",
        config["retention"].clone(),
        json!(retention_name(def.retention)),
    );
    cmp(
        "storage",
        config["storage"].clone(),
        json!(storage_name(def.storage)),
    );
    cmp(
        "max_age (ns)",
        json!(config["max_age"].as_u64().unwrap_or(0)),
        json!(def.max_age_secs.saturating_mul(1_000_000_000)),
    );
    cmp(
        "max_msgs",
        json!(config["max_msgs"].as_i64()),
        json!(def.max_msgs),
    );
    cmp(
        "max_bytes",
        json!(config["max_bytes"].as_i64()),
        json!(def.max_bytes),
    );
    cmp(
        "num_replicas",
        json!(config["num_replicas"].as_u64()),
        json!(def.replicas),
    );
    d
}

/// The differences between the live streams and `release`'s definitions, one line each (empty: equal).
fn streams_vs_release(release: &Release, live: &BTreeMap<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    let defined: BTreeSet<&str> = release.streams.iter().map(|s| s.name.as_str()).collect();
    for name in live.keys().filter(|n| !defined.contains(n.as_str())) {
        out.push(format!(
            "{name} is live but {} does not define it",
            release.name()
        ));
    }
    for def in &release.streams {
        match live.get(&def.name) {
            None => out.push(format!("{} is missing", def.name)),
            Some(info) => {
                let d = stream_diff(def, &info["config"]);
                if !d.is_empty() {
                    out.push(format!("{}: {}", def.name, d.join(", ")));
                }
            }
        }
    }
    out
}

fn marker_path(msgs: &Path, stream: &str) -> PathBuf {
    msgs.join(format!("{stream}.complete.json"))
}

/// Saves every message of `stream` into `<msgs>/<stream>.jsonl` and writes its completion marker. A save that
/// exists already is merged with (never replaced by) the new one: messages acknowledged since are kept.
async fn save_stream_messages(
    js: &Js,
    stream: &str,
    info: &Value,
    msgs: &Path,
) -> Result<(u64, &'static str), StepError> {
    let state = &info["state"];
    let expected = state["messages"].as_u64().unwrap_or(0);
    let first = state["first_seq"].as_u64().unwrap_or(0);
    let last = state["last_seq"].as_u64().unwrap_or(0);
    let marker_p = marker_path(msgs, stream);
    let file = msgs.join(format!("{stream}.jsonl"));
    let old = read_json(&marker_p);
    if let Some(m) = &old
        && m["live_messages"].as_u64() == Some(expected)
        && m["last_seq"].as_u64() == Some(last)
        && sha256_file(&file).ok().as_deref() == m["sha256"].as_str()
    {
        return Ok((
            m["messages"].as_u64().unwrap_or(0),
            "kept the complete save",
        ));
    }
    // Sequence → line; an earlier complete save is the starting point.
    let mut lines: BTreeMap<u64, String> = BTreeMap::new();
    if old.is_some()
        && let Ok(text) = std::fs::read_to_string(&file)
    {
        for l in text.lines() {
            if let Ok(v) = serde_json::from_str::<Value>(l)
                && let Some(seq) = v["sequence"].as_u64()
            {
                lines.insert(seq, l.to_string());
            }
        }
    }
    let mut got = 0u64;
    let mut seq = first.max(1);
    while expected > 0 && seq <= last {
        // next_by_subj jumps over the gaps that acknowledged work-queue messages leave.
        let v = js_api(
            js,
            format!("STREAM.MSG.GET.{stream}"),
            &json!({"seq": seq, "next_by_subj": ">"}),
        )
        .await?;
        if let Some((code, d)) = api_error(&v) {
            if code == JS_NO_MESSAGE {
                break;
            }
            return Err(failed(format!(
                "NATS: reading message {seq} of {stream}: {d}"
            )));
        }
        let m = &v["message"];
        let Some(s) = m["seq"].as_u64() else {
            return Err(failed(format!(
                "NATS: message {seq} of {stream}: no sequence in the answer"
            )));
        };
        if s > last {
            break;
        }
        let line = json!({
            "subject": m["subject"],
            "sequence": s,
            "time": m["time"],
            "headers": parse_headers(m["hdrs"].as_str()),
            "payload": m["data"].as_str().unwrap_or(""),
        });
        lines.insert(s, line.to_string());
        got += 1;
        seq = s + 1;
    }
    if got != expected {
        return Err(failed(format!(
            "NATS: saved {got} messages of {stream} but it holds {expected}: a consumer or publisher is still \
             active on it; the save will be retried"
        )));
    }
    // The stream must not have moved while we read it, or the count proves nothing.
    let again = js_api(js, format!("STREAM.INFO.{stream}"), &json!({})).await?;
    if again["state"]["last_seq"].as_u64() != Some(last)
        || again["state"]["messages"].as_u64() != Some(expected)
    {
        return Err(failed(format!(
            "NATS: {stream} changed while its messages were saved (now {} messages, last sequence {}); the save \
             will be retried",
            again["state"]["messages"], again["state"]["last_seq"]
        )));
    }
    let mut text = String::new();
    for l in lines.values() {
        text.push_str(l);
        text.push('\n');
    }
    write_atomic(&file, text.as_bytes()).map_err(failed)?;
    let sha = sha256_file(&file)?;
    write_json(
        &marker_p,
        &json!({
            "stream": stream,
            "messages": lines.len(),
            "live_messages": expected,
            "first_seq": first,
            "last_seq": last,
            "sha256": sha,
            "saved_at": chrono::Utc::now().to_rfc3339(),
        }),
    )?;
    Ok((
        lines.len() as u64,
        if old.is_some() {
            "merged into the earlier save"
        } else {
            "saved"
        },
    ))
}

/// `NATS/1.0\r\nKey: value\r\n…` (base64) → {"Key": ["value", …]}.
fn parse_headers(b64: Option<&str>) -> Value {
    let Some(raw) = b64.and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
    else {
        return Value::Null;
    };
    let text = String::from_utf8_lossy(&raw);
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().skip(1) {
        if let Some((k, v)) = line.split_once(':') {
            map.entry(k.trim().to_string())
                .or_default()
                .push(v.trim().to_string());
        }
    }
    json!(map)
}

pub async fn nats_save(
    r: &LocalRunner,
    release: &str,
    ctx: &StepContext<'_>,
) -> Result<String, StepError> {
    let target = load_release(r, release)?;
    let st = r.stack()?;
    let js = jetstream(&st).await?;
    let dir = private_dir(&ctx.run_dir.join("nats"))?;
    let msgs = private_dir(&dir.join("messages"))?;
    let live = stream_infos(&js).await?;

    // The state before phase 4 is what the first attempt saw; a resume (streams perhaps already removed) keeps it.
    let before_p = dir.join("streams-before.json");
    let before = match read_json(&before_p) {
        Some(v) => v,
        None => {
            let v = json!({
                "captured_at": chrono::Utc::now().to_rfc3339(),
                "streams": live.iter().map(|(n, i)| (n.clone(), json!({"config": i["config"], "state": i["state"]}))).collect::<serde_json::Map<_, _>>(),
            });
            write_json(&before_p, &v)?;
            v
        }
    };

    let defined: BTreeSet<&str> = target.streams.iter().map(|s| s.name.as_str()).collect();
    let mut parts = Vec::new();
    for (name, info) in live.iter().filter(|(n, _)| !defined.contains(n.as_str())) {
        let (n, how) = save_stream_messages(&js, name, info, &msgs).await?;
        parts.push(format!("{name}: {n} messages {how}"));
    }
    // Streams removed by an earlier attempt: their save must be complete, or their messages are gone.
    if let Some(obj) = before["streams"].as_object() {
        for name in obj
            .keys()
            .filter(|n| !defined.contains(n.as_str()) && !live.contains_key(*n))
        {
            match read_json(&marker_path(&msgs, name)) {
                Some(m) => parts.push(format!(
                    "{name}: already removed, {} messages saved earlier",
                    m["messages"]
                )),
                None => {
                    return Err(StepError::fatal(format!(
                        "NATS: stream {name} is gone and {} has no complete save of its messages",
                        msgs.display()
                    )));
                }
            }
        }
    }
    if parts.is_empty() {
        parts.push(format!("no stream outside {}'s definitions", target.name()));
    }
    Ok(format!(
        "{} streams' configuration and state in {}; {}",
        before["streams"].as_object().map(|o| o.len()).unwrap_or(0),
        before_p.display(),
        parts.join("; ")
    ))
}

pub async fn nats_apply(
    r: &LocalRunner,
    release: &str,
    ctx: &StepContext<'_>,
) -> Result<String, StepError> {
    let target = load_release(r, release)?;
    let st = r.stack()?;
    let js = jetstream(&st).await?;
    let msgs = ctx.run_dir.join("nats").join("messages");
    let live = stream_infos(&js).await?;
    let defined: BTreeSet<&str> = target.streams.iter().map(|s| s.name.as_str()).collect();

    let mut removed = Vec::new();
    for (name, info) in live.iter().filter(|(n, _)| !defined.contains(n.as_str())) {
        let marker = read_json(&marker_path(&msgs, name)).ok_or_else(|| {
            StepError::fatal(format!(
                "NATS: refusing to delete stream {name}: its messages are not saved ({} has no completion \
                 marker; the nats save step must run first)",
                msgs.display()
            ))
        })?;
        let live_last = info["state"]["last_seq"].as_u64().unwrap_or(0);
        let saved_last = marker["last_seq"].as_u64().unwrap_or(0);
        if live_last > saved_last {
            return Err(StepError::fatal(format!(
                "NATS: refusing to delete stream {name}: it received messages after the save (last sequence \
                 {live_last} > saved {saved_last}); run the nats save step again"
            )));
        }
        deps::call(
            &js.dep,
            &format!("delete stream {name}"),
            deps::CALL,
            js.delete_stream(name),
        )
        .await
        .map_err(failed)?;
        removed.push(format!("{name} ({} messages saved)", marker["messages"]));
    }
    let mut created = Vec::new();
    let mut updated = Vec::new();
    for def in &target.streams {
        match live.get(&def.name) {
            Some(info) if stream_diff(def, &info["config"]).is_empty() => {}
            Some(info) => {
                let why = stream_diff(def, &info["config"]).join(", ");
                js.update_stream(servers::stream_config(def))
                    .await
                    .map_err(|e| {
                        StepError::fatal(format!(
                            "NATS: stream {} differs from {}'s definition ({why}) and cannot be updated in \
                             place: {e}",
                            def.name,
                            target.name()
                        ))
                    })?;
                updated.push(def.name.clone());
            }
            None => {
                deps::call(
                    &js.dep,
                    &format!("create stream {}", def.name),
                    deps::CALL,
                    js.create_stream(servers::stream_config(def)),
                )
                .await
                .map_err(failed)?;
                created.push(def.name.clone());
            }
        }
    }
    let after = stream_infos(&js).await?;
    let diff = streams_vs_release(&target, &after);
    if !diff.is_empty() {
        return Err(failed(format!(
            "NATS: after applying {}'s streams the live set still differs: {}",
            target.name(),
            diff.join("; ")
        )));
    }
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    Ok(format!(
        "removed {}; created {}; updated {}; live streams equal {}'s definitions ({})",
        list(&removed),
        list(&created),
        list(&updated),
        target.name(),
        after.keys().cloned().collect::<Vec<_>>().join(", ")
    ))
}

pub async fn probe_nats_apply(
    r: &LocalRunner,
    release: &str,
    _ctx: &StepContext<'_>,
) -> Result<Probe, StepError> {
    let target = load_release(r, release)?;
    let st = r.stack()?;
    let js = jetstream(&st).await?;
    let live = stream_infos(&js).await?;
    Ok(if streams_vs_release(&target, &live).is_empty() {
        Probe::Done {
            detail: format!(
                "the live streams already equal {}'s definitions",
                target.name()
            ),
        }
    } else {
        Probe::NotDone
    })
}

// ---------------------------------------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------------------------------------

/// The password travels in the URL to the redis crate, inside this process: never in a child's argv.
async fn redis_con(st: &StackState, r: &LocalRunner, db: u8) -> Result<RedisCon, StepError> {
    let secrets = r.secrets()?;
    let client = redis::Client::open(st.redis_url(&secrets, db))
        .map_err(|e| StepError::fatal(format!("Redis: bad connection settings: {e}")))?;
    // The client's own timeouts too: a command sent on this connection later must not wait forever either.
    let cfg = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(deps::CONNECT))
        .set_response_timeout(Some(deps::CALL));
    let con = deps::call(
        &Dep::redis(st.redis.port),
        &format!("connect to database {db}"),
        deps::CONNECT,
        client.get_multiplexed_async_connection_with_config(&cfg),
    )
    .await
    .map_err(failed)?;
    Ok(RedisCon {
        con,
        dep: Dep::redis(st.redis.port),
    })
}

/// A Redis connection that knows which server it talks to, for messages.
#[derive(Clone)]
struct RedisCon {
    con: redis::aio::MultiplexedConnection,
    dep: Dep,
}

async fn redis_query<T: redis::FromRedisValue>(
    con: &mut RedisCon,
    cmd: &redis::Cmd,
    what: &str,
) -> Result<T, StepError> {
    let dep = con.dep.clone();
    deps::call(&dep, what, deps::CALL, cmd.query_async(&mut con.con))
        .await
        .map_err(failed)
}

async fn redis_info(
    con: &mut RedisCon,
    section: &str,
) -> Result<BTreeMap<String, String>, StepError> {
    let text: String = redis_query(
        con,
        redis::cmd("INFO").arg(section),
        &format!("INFO {section}"),
    )
    .await?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect())
}

/// INFO keyspace ("db1" → "keys=3,expires=3,avg_ttl=0") → database → number of keys.
fn keyspace(info: &BTreeMap<String, String>) -> BTreeMap<u8, u64> {
    info.iter()
        .filter_map(|(k, v)| {
            let db = k.strip_prefix("db")?.parse::<u8>().ok()?;
            let n = v
                .split(',')
                .find_map(|kv| kv.strip_prefix("keys="))?
                .parse()
                .ok()?;
            Some((db, n))
        })
        .collect()
}

async fn config_get(con: &mut RedisCon, key: &str) -> Result<Option<String>, StepError> {
    let v: Vec<String> = redis_query(
        con,
        redis::cmd("CONFIG").arg("GET").arg(key),
        &format!("CONFIG GET {key}"),
    )
    .await?;
    Ok(v.get(1).cloned())
}

/// Runs `redis-check-rdb` on `path`; Ok(its verdict line) when it accepts the file.
async fn check_rdb(path: &Path) -> Result<String, StepError> {
    let out = tokio::process::Command::new("redis-check-rdb")
        .arg(path)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| {
            StepError::fatal(format!(
                "cannot run redis-check-rdb: {e} (install redis-tools: scripts/install-deps)"
            ))
        })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && text.contains("RDB looks OK") {
        Ok(crate::toolout::last_line(&text))
    } else {
        let dir = path.parent().unwrap_or(Path::new("."));
        Err(StepError::fatal(format!(
            "redis-check-rdb rejects {}: {}",
            path.display(),
            crate::toolout::quote(&text, dir, "redis-check-rdb.out")
        )))
    }
}

pub async fn redis_backup(r: &LocalRunner, ctx: &StepContext<'_>) -> Result<String, StepError> {
    let dir = private_dir(&ctx.run_dir.join("redis"))?;
    let copy = dir.join("dump.rdb");
    let meta_p = dir.join("backup.json");
    if let Some(meta) = read_json(&meta_p)
        && sha256_file(&copy).ok().as_deref() == meta["sha256"].as_str()
        && check_rdb(&copy).await.is_ok()
    {
        return Ok(format!(
            "kept the valid backup {} (sha256 {}) from an earlier attempt",
            copy.display(),
            meta["sha256"].as_str().unwrap_or("")
        ));
    }
    let st = r.stack()?;
    let mut con = redis_con(&st, r, 0).await?;
    let keys = keyspace(&redis_info(&mut con, "keyspace").await?);
    let before: i64 = redis_query(&mut con, &redis::cmd("LASTSAVE"), "LASTSAVE").await?;
    let saves_before = redis_info(&mut con, "persistence")
        .await?
        .get("rdb_saves")
        .cloned();
    // One BGSAVE at a time: when Redis is already saving on its own, wait for that one and ask again.
    // Each call is bounded below poll_until's per-probe cut, so that a Redis that does not answer is reported as
    // such rather than as a save "still in progress".
    let started = poll_until(WAIT, || {
        let mut con = con.clone();
        async move {
            let bgsave = redis::cmd("BGSAVE");
            let dep = con.dep.clone();
            match deps::call(
                &dep,
                "BGSAVE",
                POLL_CALL,
                bgsave.query_async::<String>(&mut con.con),
            )
            .await
            {
                Ok(_) => Some(Ok(())),
                Err(e) if e.to_string().contains("in progress") => None,
                Err(e) => Some(Err(e)),
            }
        }
    })
    .await;
    match started {
        Some(Ok(())) => {}
        Some(Err(e)) => return Err(failed(e)),
        None => {
            return Err(failed(format!(
                "Redis BGSAVE: another save was still in progress after {} s",
                WAIT.as_secs()
            )));
        }
    }
    // Done when Redis counts one more snapshot (rdb_saves, Redis ≥ 7) or LASTSAVE moves, and nothing is in progress.
    let done = poll_until(WAIT, || {
        let mut con = con.clone();
        let saves_before = saves_before.clone();
        async move {
            let dep = con.dep.clone();
            let info = deps::call(
                &dep,
                "INFO persistence",
                POLL_CALL,
                redis::cmd("INFO")
                    .arg("persistence")
                    .query_async::<String>(&mut con.con),
            )
            .await;
            let info: BTreeMap<String, String> = match info {
                Ok(text) => text
                    .lines()
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .collect(),
                Err(e) => return Some(Err(e)),
            };
            if info.get("rdb_bgsave_in_progress").map(String::as_str) != Some("0") {
                return None;
            }
            let last = deps::call(
                &dep,
                "LASTSAVE",
                POLL_CALL,
                redis::cmd("LASTSAVE").query_async::<i64>(&mut con.con),
            )
            .await;
            let last = match last {
                Ok(l) => l,
                Err(e) => return Some(Err(e)),
            };
            let counted = match (&saves_before, info.get("rdb_saves")) {
                (Some(b), Some(a)) => a.parse::<u64>().ok()? > b.parse::<u64>().ok()?,
                _ => false,
            };
            (counted || last > before).then(|| Ok(info.get("rdb_last_bgsave_status").cloned()))
        }
    })
    .await;
    match done {
        Some(Err(e)) => return Err(failed(e)),
        Some(Ok(Some(s))) if s == "ok" => {}
        Some(Ok(s)) => {
            return Err(failed(format!(
                "Redis BGSAVE finished with status {}; see {}",
                s.unwrap_or_default(),
                st.redis.log.display()
            )));
        }
        None => {
            return Err(failed(format!(
                "Redis BGSAVE did not finish within {} s; see {}",
                WAIT.as_secs(),
                st.redis.log.display()
            )));
        }
    }
    let rdir = config_get(&mut con, "dir").await?.unwrap_or_default();
    let rfile = config_get(&mut con, "dbfilename")
        .await?
        .unwrap_or_else(|| "dump.rdb".into());
    let src = Path::new(&rdir).join(rfile);
    let bytes = std::fs::read(&src).map_err(|e| {
        failed(format!(
            "cannot read Redis's snapshot {}: {e}",
            src.display()
        ))
    })?;
    write_atomic(&copy, &bytes).map_err(failed)?;
    let verdict = check_rdb(&copy).await?;
    let sha = sha256_file(&copy)?;
    write_json(
        &meta_p,
        &json!({
            "file": copy,
            "source": src,
            "bytes": bytes.len(),
            "sha256": sha,
            "keys_per_database": keys,
            "redis_check_rdb": verdict,
            "saved_at": chrono::Utc::now().to_rfc3339(),
        }),
    )?;
    let counts: Vec<String> = keys.iter().map(|(db, n)| format!("db{db} {n}")).collect();
    Ok(format!(
        "RDB snapshot copied to {} ({} bytes, sha256 {sha}), redis-check-rdb: OK; keys: {}",
        copy.display(),
        bytes.len(),
        if counts.is_empty() {
            "none".to_string()
        } else {
            counts.join(", ")
        }
    ))
}

/// Settings that cannot be changed on a running Redis, or that belong to the target (where it listens, where its
/// data and password are), not to the release.
const REDIS_NOT_LIVE: [&str; 22] = [
    "port",
    "bind",
    "dir",
    "dbfilename",
    "requirepass",
    "masterauth",
    "daemonize",
    "databases",
    "include",
    "protected-mode",
    "pidfile",
    "logfile",
    "unixsocket",
    "unixsocketperm",
    "supervised",
    "always-show-logo",
    "set-proc-title",
    "rename-command",
    "loadmodule",
    "aclfile",
    "user",
    "cluster-enabled",
];

/// `redis.conf` as (directive, value) in file order; repeated `save` lines add up, as Redis reads them.
fn parse_redis_conf(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let k = k.to_ascii_lowercase();
        let v = v.trim().trim_matches('"').to_string();
        match out.iter_mut().find(|(ek, _)| *ek == k && k == "save") {
            Some((_, ev)) => {
                ev.push(' ');
                ev.push_str(&v);
            }
            None => out.push((k, v)),
        }
    }
    out
}

/// A redis.conf value as CONFIG GET reports it: memory units in bytes (1k = 1000, 1kb = 1024), spaces single.
fn redis_normal(v: &str) -> String {
    let v = v.trim().to_ascii_lowercase();
    for (suffix, mult) in [
        ("gb", 1u64 << 30),
        ("mb", 1 << 20),
        ("kb", 1 << 10),
        ("g", 1_000_000_000),
        ("m", 1_000_000),
        ("k", 1_000),
    ] {
        if let Some(n) = v.strip_suffix(suffix).and_then(|n| n.parse::<u64>().ok()) {
            return (n * mult).to_string();
        }
    }
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

struct RedisPlan {
    flush: Vec<u8>,
    settings: Vec<(String, String)>,
    skipped: Vec<String>,
    conf: PathBuf,
}

fn redis_plan(r: &LocalRunner, release: &str, from: &str) -> Result<RedisPlan, StepError> {
    let target = load_release(r, release)?;
    let from = load_release(r, from)?;
    let flush = from
        .manifest
        .redis
        .databases
        .iter()
        .copied()
        .filter(|d| !target.manifest.redis.databases.contains(d))
        .collect();
    let conf = target.path(&target.manifest.redis.config);
    let text = std::fs::read_to_string(&conf)
        .map_err(|e| StepError::fatal(format!("cannot read {}: {e}", conf.display())))?;
    let (skipped, settings): (Vec<_>, Vec<_>) = parse_redis_conf(&text)
        .into_iter()
        .partition(|(k, _)| REDIS_NOT_LIVE.contains(&k.as_str()));
    Ok(RedisPlan {
        flush,
        settings,
        skipped: skipped.into_iter().map(|(k, _)| k).collect(),
        conf,
    })
}

/// The settings whose live value differs from the plan's, as "key: live ≠ want".
async fn redis_config_diff(con: &mut RedisCon, plan: &RedisPlan) -> Result<Vec<String>, StepError> {
    let mut diff = Vec::new();
    for (k, v) in &plan.settings {
        let live = config_get(con, k).await?.unwrap_or_default();
        if redis_normal(&live) != redis_normal(v) {
            diff.push(format!("{k}: live {live:?} ≠ {v:?}"));
        }
    }
    Ok(diff)
}

pub async fn redis_apply(
    r: &LocalRunner,
    release: &str,
    ctx: &StepContext<'_>,
) -> Result<String, StepError> {
    let plan = redis_plan(r, release, ctx.from)?;
    let st = r.stack()?;
    let mut flushed = Vec::new();
    for db in &plan.flush {
        let mut con = redis_con(&st, r, *db).await?;
        let n: i64 = redis_query(
            &mut con,
            &redis::cmd("DBSIZE"),
            &format!("DBSIZE (db {db})"),
        )
        .await?;
        let _: String = redis_query(
            &mut con,
            &redis::cmd("FLUSHDB"),
            &format!("FLUSHDB (db {db})"),
        )
        .await?;
        flushed.push(format!("db{db} ({n} keys)"));
    }
    let mut con = redis_con(&st, r, 0).await?;
    for (k, v) in &plan.settings {
        let set = redis::cmd("CONFIG").arg("SET").arg(k).arg(v).clone();
        let dep = con.dep.clone();
        let what = format!("CONFIG SET {k} {v}, from {}", plan.conf.display());
        // Redis refusing a setting is fatal (the file is wrong); Redis not answering is not (try again later).
        let _: String = deps::call(&dep, &what, deps::CALL, set.query_async(&mut con.con))
            .await
            .map_err(|e| {
                if e.is_connection() {
                    failed(e)
                } else {
                    StepError::fatal(e.to_string())
                }
            })?;
    }
    // The stack's redis.conf includes release.conf: the target's settings survive a restart of Redis too.
    let text = std::fs::read(&plan.conf)
        .map_err(|e| StepError::fatal(format!("cannot read {}: {e}", plan.conf.display())))?;
    write_atomic(&r.state_dir.join("redis").join("release.conf"), &text).map_err(failed)?;

    let pong: String = redis_query(&mut con, &redis::cmd("PING"), "PING").await?;
    if pong != "PONG" {
        return Err(failed(format!("Redis PING answered {pong:?}")));
    }
    let diff = redis_config_diff(&mut con, &plan).await?;
    if !diff.is_empty() {
        return Err(failed(format!(
            "Redis CONFIG GET after applying {}: {}",
            plan.conf.display(),
            diff.join("; ")
        )));
    }
    for db in &plan.flush {
        let mut c = redis_con(&st, r, *db).await?;
        let n: i64 = redis_query(&mut c, &redis::cmd("DBSIZE"), "DBSIZE").await?;
        if n != 0 {
            return Err(failed(format!(
                "Redis db {db} holds {n} keys again right after FLUSHDB: a client of {} still writes to it",
                ctx.from
            )));
        }
    }
    Ok(format!(
        "flushed {}; applied {} settings of {} (CONFIG GET agrees, PING ok); skipped (not settable live or set by \
         the target): {}",
        if flushed.is_empty() {
            "no database".to_string()
        } else {
            flushed.join(", ")
        },
        plan.settings.len(),
        release,
        if plan.skipped.is_empty() {
            "none".to_string()
        } else {
            plan.skipped.join(", ")
        }
    ))
}

pub async fn probe_redis_apply(
    r: &LocalRunner,
    release: &str,
    ctx: &StepContext<'_>,
) -> Result<Probe, StepError> {
    let plan = redis_plan(r, release, ctx.from)?;
    let st = r.stack()?;
    for db in &plan.flush {
        let mut c = redis_con(&st, r, *db).await?;
        let n: i64 = redis_query(&mut c, &redis::cmd("DBSIZE"), "DBSIZE").await?;
        if n != 0 {
            return Ok(Probe::NotDone);
        }
    }
    let mut con = redis_con(&st, r, 0).await?;
    if !redis_config_diff(&mut con, &plan).await?.is_empty() {
        return Ok(Probe::NotDone);
    }
    Ok(Probe::Done {
        detail: format!(
            "Redis already runs {release}'s settings and databases {:?} are empty",
            plan.flush
        ),
    })
}

// ---------------------------------------------------------------------------------------------------------------
// Monitoring
// ---------------------------------------------------------------------------------------------------------------

fn service_ports(st: &StackState) -> BTreeMap<String, u16> {
    st.services
        .iter()
        .map(|s| (s.name.clone(), s.port))
        .collect()
}

/// Renders `target`'s Prometheus configuration into `dir` as the stack runs it (alerting → its Alertmanager).
fn render_prometheus(target: &Release, st: &StackState, dir: &Path) -> Result<PathBuf, StepError> {
    servers::local_prometheus_config_alerting(
        target,
        dir,
        &service_ports(st),
        st.alertmanager.as_ref().map(|a| a.port),
    )
    .map_err(|e| StepError::fatal(e.to_string()))
}

/// Runs a checker; Err(an excerpt of its output, naming the file in `out_dir` that keeps all of it) when it
/// rejects.
async fn run_check(
    program: &str,
    args: &[&Path],
    sub: &[&str],
    (out_dir, out_name): (&Path, &str),
) -> Result<(), String> {
    let out = tokio::process::Command::new(program)
        .kill_on_drop(true)
        .args(sub)
        .args(args)
        .output()
        .await
        .map_err(|e| format!("cannot run {program}: {e} (scripts/install-deps installs it)"))?;
    if out.status.success() {
        return Ok(());
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Err(crate::toolout::quote(&text, out_dir, out_name))
}

async fn validate(target: &Release, st: &StackState, scratch: &Path) -> Result<String, StepError> {
    let _ = std::fs::remove_dir_all(scratch);
    private_dir(scratch)?;
    let mon = &target.manifest.monitoring;
    // Rules first, on the release's own files, so that promtool's message names the file to fix.
    let mut groups = 0;
    for (i, rule) in mon.rules.iter().enumerate() {
        let p = target.path(rule);
        let out_name = format!("promtool-check-rules-{i}.out");
        run_check("promtool", &[&p], &["check", "rules"], (scratch, &out_name))
            .await
            .map_err(|m| {
                StepError::fatal(format!(
                    "promtool check rules rejects {} of {}: {m}",
                    p.display(),
                    target.name()
                ))
            })?;
        groups += rule_groups(&p)?.len();
    }
    let cfg = render_prometheus(target, st, scratch)?;
    run_check(
        "promtool",
        &[&cfg],
        &["check", "config"],
        (scratch, "promtool-check-config.out"),
    )
    .await
    .map_err(|m| {
        StepError::fatal(format!(
            "promtool check config rejects {}'s Prometheus configuration ({} rendered as {}): {m}",
            target.name(),
            target.path(&mon.prometheus).display(),
            cfg.display()
        ))
    })?;
    let am = target.path(&mon.alertmanager);
    run_check(
        "amtool",
        &[&am],
        &["check-config"],
        (scratch, "amtool-check-config.out"),
    )
    .await
    .map_err(|m| StepError::fatal(format!("amtool check-config rejects {}: {m}", am.display())))?;
    Ok(format!(
        "promtool accepts {}'s Prometheus configuration and {} rule groups; amtool accepts {}",
        target.name(),
        groups,
        am.display()
    ))
}

/// Group name → its rules' names, in file order, from a rule file.
fn rule_groups(path: &Path) -> Result<Vec<(String, Vec<String>)>, StepError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| StepError::fatal(format!("cannot read {}: {e}", path.display())))?;
    let v: Value = serde_saphyr::from_str(&text)
        .map_err(|e| StepError::fatal(format!("{} is not valid YAML: {e}", path.display())))?;
    Ok(v["groups"]
        .as_array()
        .map(|gs| {
            gs.iter()
                .map(|g| {
                    let rules = g["rules"]
                        .as_array()
                        .map(|rs| {
                            rs.iter()
                                .filter_map(|r| {
                                    r["alert"]
                                        .as_str()
                                        .or(r["record"].as_str())
                                        .map(str::to_string)
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    (g["name"].as_str().unwrap_or("").to_string(), rules)
                })
                .collect()
        })
        .unwrap_or_default())
}

fn target_rule_groups(target: &Release) -> Result<BTreeSet<(String, Vec<String>)>, StepError> {
    let mut out = BTreeSet::new();
    for rule in &target.manifest.monitoring.rules {
        out.extend(rule_groups(&target.path(rule))?);
    }
    Ok(out)
}

/// `want` is contained in `have` (maps: every key of want, recursively; lists: same length, element-wise;
/// scalars: equal as text). The servers answer with their defaults filled in, so equality is containment.
fn contained(want: &Value, have: &Value, path: &str) -> Result<(), String> {
    match (want, have) {
        (Value::Object(w), Value::Object(h)) => {
            for (k, wv) in w {
                let p = format!("{path}.{k}");
                match h.get(k) {
                    Some(hv) => contained(wv, hv, &p)?,
                    None => return Err(format!("{p} is missing")),
                }
            }
            Ok(())
        }
        (Value::Array(w), Value::Array(h)) => {
            if w.len() != h.len() {
                return Err(format!("{path} has {} entries, not {}", h.len(), w.len()));
            }
            for (i, (wv, hv)) in w.iter().zip(h).enumerate() {
                contained(wv, hv, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        (w, h) => {
            let text = |v: &Value| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if text(w) == text(h) {
                Ok(())
            } else {
                Err(format!("{path} is {h}, not {w}"))
            }
        }
    }
}

fn yaml_value(text: &str, what: &str) -> Result<Value, String> {
    serde_saphyr::from_str(text).map_err(|e| format!("{what} is not valid YAML: {e}"))
}

async fn get_json(http: &reqwest::Client, name: &'static str, url: &str) -> Result<Value, String> {
    let dep = Dep::http(name, url);
    let path = url.find("/api/").map_or(url, |i| &url[i..]);
    let what = format!("GET {path}");
    // Headers and body within one limit: a server that stops after the headers must not hold us either.
    let get = async {
        let r = http.get(url).timeout(deps::CALL).send().await?;
        let code = r.status();
        Ok::<_, reqwest::Error>((code, r.json::<Value>().await))
    };
    let (code, body) = deps::call(&dep, &what, deps::CALL, get)
        .await
        .map_err(|e| e.to_string())?;
    if !code.is_success() {
        return Err(format!("{dep}: {what}: HTTP {code}"));
    }
    body.map_err(|e| format!("{dep}: {what}: {}", deps::chain(&e)))
}

async fn post_reload(
    http: &reqwest::Client,
    base: &str,
    what: &'static str,
) -> Result<(), StepError> {
    let url = format!("{base}/-/reload");
    let r = deps::call(
        &Dep::http(what, &url),
        "POST /-/reload",
        deps::CALL,
        http.post(&url).timeout(deps::CALL).send(),
    )
    .await
    .map_err(failed)?;
    let code = r.status();
    if !code.is_success() {
        let body = r.text().await.unwrap_or_default();
        return Err(StepError::fatal(format!(
            "{what} refused the new configuration (POST {url}: HTTP {code}): {}",
            body.trim()
        )));
    }
    Ok(())
}

/// Where the live Prometheus differs from `want` (its config) and `groups` (its rules), or Ok.
async fn prometheus_diff(
    http: &reqwest::Client,
    st: &StackState,
    want: &Value,
    groups: &BTreeSet<(String, Vec<String>)>,
) -> Result<(), String> {
    let base = st.prometheus_url();
    let v = get_json(http, "Prometheus", &format!("{base}/api/v1/status/config")).await?;
    let loaded = yaml_value(
        v["data"]["yaml"].as_str().unwrap_or(""),
        "Prometheus's loaded configuration",
    )?;
    contained(want, &loaded, "prometheus").map_err(|e| format!("loaded configuration: {e}"))?;
    let live = live_rule_groups(http, st).await?;
    if &live != groups {
        let names = |s: &BTreeSet<(String, Vec<String>)>| {
            s.iter()
                .map(|(n, _)| n.clone())
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(format!(
            "rule groups are [{}], not [{}]",
            names(&live),
            names(groups)
        ));
    }
    Ok(())
}

pub async fn live_rule_groups(
    http: &reqwest::Client,
    st: &StackState,
) -> Result<BTreeSet<(String, Vec<String>)>, String> {
    let v = get_json(
        http,
        "Prometheus",
        &format!("{}/api/v1/rules", st.prometheus_url()),
    )
    .await?;
    Ok(v["data"]["groups"]
        .as_array()
        .map(|gs| {
            gs.iter()
                .map(|g| {
                    (
                        g["name"].as_str().unwrap_or("").to_string(),
                        g["rules"]
                            .as_array()
                            .map(|rs| {
                                rs.iter()
                                    .filter_map(|r| r["name"].as_str().map(str::to_string))
                                    .collect()
                            })
                            .unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default())
}

async fn alertmanager_diff(http: &reqwest::Client, base: &str, want: &Value) -> Result<(), String> {
    let v = get_json(http, "Alertmanager", &format!("{base}/api/v2/status")).await?;
    let loaded = yaml_value(
        v["config"]["original"].as_str().unwrap_or(""),
        "Alertmanager's loaded configuration",
    )?;
    contained(want, &loaded, "alertmanager").map_err(|e| format!("loaded configuration: {e}"))
}

fn dashboards_of(release: &Release) -> Result<BTreeMap<String, PathBuf>, LocalError> {
    let dir = release.path(&release.manifest.monitoring.grafana);
    let mut out = BTreeMap::new();
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(LocalError::io(format!("cannot read {}", dir.display()), e)),
    };
    for e in rd.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".json") {
            out.insert(name, e.path());
        }
    }
    Ok(out)
}

/// Writes `release`'s Grafana dashboards into `dir` and removes those of `previous` that `release` does not have
/// (only those: other files in the directory are not ours). Returns (written, removed).
pub fn write_dashboards(
    release: &Release,
    previous: Option<&Release>,
    dir: &Path,
) -> Result<(Vec<String>, Vec<String>), LocalError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| LocalError::io(format!("cannot create {}", dir.display()), e))?;
    let want = dashboards_of(release)?;
    let mut written = Vec::new();
    for (name, src) in &want {
        let bytes = std::fs::read(src)
            .map_err(|e| LocalError::io(format!("cannot read {}", src.display()), e))?;
        let dest = dir.join(name);
        if std::fs::read(&dest).ok().as_deref() != Some(&bytes[..]) {
            write_atomic(&dest, &bytes)?;
            written.push(name.clone());
        }
    }
    let mut removed = Vec::new();
    if let Some(prev) = previous {
        for name in dashboards_of(prev)?
            .keys()
            .filter(|n| !want.contains_key(*n))
        {
            let p = dir.join(name);
            if p.exists() {
                std::fs::remove_file(&p)
                    .map_err(|e| LocalError::io(format!("cannot remove {}", p.display()), e))?;
                removed.push(name.clone());
            }
        }
    }
    Ok((written, removed))
}

fn dashboards_in_place(release: &Release, previous: Option<&Release>, dir: &Path) -> bool {
    let Ok(want) = dashboards_of(release) else {
        return false;
    };
    let all_there = want.iter().all(|(n, src)| {
        std::fs::read(src)
            .ok()
            .is_some_and(|b| std::fs::read(dir.join(n)).ok() == Some(b))
    });
    let none_stale = previous.is_none_or(|p| {
        dashboards_of(p).is_ok_and(|d| {
            d.keys()
                .filter(|n| !want.contains_key(*n))
                .all(|n| !dir.join(n).exists())
        })
    });
    all_there && none_stale
}

pub async fn monitoring_validate(
    r: &LocalRunner,
    release: &str,
    ctx: &StepContext<'_>,
) -> Result<String, StepError> {
    let target = load_release(r, release)?;
    let st = r.stack()?;
    let scratch = ctx
        .run_dir
        .join("monitoring")
        .join(format!("validate-{release}"));
    private_dir(&ctx.run_dir.join("monitoring"))?;
    validate(&target, &st, &scratch).await
}

pub async fn monitoring_apply(
    r: &LocalRunner,
    release: &str,
    ctx: &StepContext<'_>,
) -> Result<String, StepError> {
    let target = load_release(r, release)?;
    let st = r.stack()?;
    private_dir(&ctx.run_dir.join("monitoring"))?;
    // Nothing live is touched before the target's files pass promtool and amtool.
    validate(
        &target,
        &st,
        &ctx.run_dir
            .join("monitoring")
            .join(format!("validate-{release}")),
    )
    .await?;
    let mut parts = Vec::new();

    // Prometheus reads prometheus/prometheus.yml and the rule files beside it.
    let prom_dir = r.state_dir.join("prometheus");
    let cfg_path = render_prometheus(&target, &st, &prom_dir)?;
    let written: Value = serde_json::from_str(
        &std::fs::read_to_string(&cfg_path)
            .map_err(|e| failed(format!("cannot read {}: {e}", cfg_path.display())))?,
    )
    .map_err(|e| failed(format!("{}: {e}", cfg_path.display())))?;
    post_reload(&r.http, &st.prometheus_url(), "Prometheus").await?;
    let healthy = r
        .http
        .get(format!("{}/-/healthy", st.prometheus_url()))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success());
    if !healthy {
        return Err(failed(format!(
            "Prometheus is not healthy after the reload; see {}",
            st.prometheus.log.display()
        )));
    }
    let groups = target_rule_groups(&target)?;
    let last = std::sync::Mutex::new(String::new());
    // The rule manager applies the new groups as part of the reload; poll briefly in case it lags.
    let ok = poll_until(Duration::from_secs(15), || async {
        match prometheus_diff(&r.http, &st, &written, &groups).await {
            Ok(()) => Some(()),
            Err(e) => {
                *last.lock().unwrap_or_else(|p| p.into_inner()) = e;
                None
            }
        }
    })
    .await;
    if ok.is_none() {
        return Err(failed(format!(
            "Prometheus after the reload: {}",
            last.into_inner().unwrap_or_else(|p| p.into_inner())
        )));
    }
    parts.push(format!(
        "Prometheus reloaded, healthy, serving {}'s configuration and {} rule groups ({})",
        target.name(),
        groups.len(),
        groups
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));

    match (&st.alertmanager, st.alertmanager_url()) {
        (Some(_), Some(base)) => {
            let src = target.path(&target.manifest.monitoring.alertmanager);
            let text = std::fs::read_to_string(&src)
                .map_err(|e| StepError::fatal(format!("cannot read {}: {e}", src.display())))?;
            let want = yaml_value(&text, &src.display().to_string()).map_err(StepError::fatal)?;
            write_atomic(
                &r.state_dir.join("alertmanager").join("alertmanager.yml"),
                text.as_bytes(),
            )
            .map_err(failed)?;
            post_reload(&r.http, &base, "Alertmanager").await?;
            alertmanager_diff(&r.http, &base, &want)
                .await
                .map_err(|e| failed(format!("Alertmanager after the reload: {e}")))?;
            parts.push(format!("Alertmanager reloaded with {}", src.display()));
        }
        _ => parts.push("no Alertmanager in this stack".into()),
    }

    match &st.grafana_dashboards {
        Some(dir) => {
            let from = Release::load_named(&r.paths.releases_root, ctx.from).ok();
            let (w, rm) = write_dashboards(&target, from.as_ref(), dir).map_err(failed)?;
            parts.push(format!(
                "Grafana dashboards in {}: {} written, {} removed",
                dir.display(),
                w.len(),
                rm.len()
            ));
        }
        None => parts.push("no Grafana configured".into()),
    }
    Ok(parts.join("; "))
}

pub async fn probe_monitoring_apply(
    r: &LocalRunner,
    release: &str,
    ctx: &StepContext<'_>,
) -> Result<Probe, StepError> {
    let target = load_release(r, release)?;
    let st = r.stack()?;
    // Render into the run's scratch space (never where Prometheus reads), then expect the live paths.
    let scratch = private_dir(
        &ctx.run_dir
            .join("monitoring")
            .join(format!("probe-{release}")),
    )?;
    let cfg = render_prometheus(&target, &st, &scratch)?;
    let mut want: Value =
        read_json(&cfg).ok_or_else(|| failed(format!("cannot read {}", cfg.display())))?;
    let prom_dir = r.state_dir.join("prometheus");
    if let Some(files) = want["rule_files"].as_array_mut() {
        for f in files.iter_mut() {
            let name = Path::new(f.as_str().unwrap_or(""))
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            // The rule files Prometheus reads must be the target's, byte for byte.
            if std::fs::read(prom_dir.join(&name)).ok() != std::fs::read(scratch.join(&name)).ok() {
                return Ok(Probe::NotDone);
            }
            *f = json!(prom_dir.join(&name).display().to_string());
        }
    }
    let groups = target_rule_groups(&target)?;
    if prometheus_diff(&r.http, &st, &want, &groups).await.is_err() {
        return Ok(Probe::NotDone);
    }
    if let Some(base) = st.alertmanager_url() {
        let src = target.path(&target.manifest.monitoring.alertmanager);
        let text = std::fs::read_to_string(&src).unwrap_or_default();
        let Ok(am_want) = yaml_value(&text, "alertmanager.yml") else {
            return Ok(Probe::NotDone);
        };
        if alertmanager_diff(&r.http, &base, &am_want).await.is_err() {
            return Ok(Probe::NotDone);
        }
    }
    if let Some(dir) = &st.grafana_dashboards {
        let from = Release::load_named(&r.paths.releases_root, ctx.from).ok();
        if !dashboards_in_place(&target, from.as_ref(), dir) {
            return Ok(Probe::NotDone);
        }
    }
    Ok(Probe::Done {
        detail: format!(
            "Prometheus{} already serve {}'s configuration and rules",
            if st.alertmanager.is_some() {
                " and Alertmanager"
            } else {
                ""
            },
            target.name()
        ),
    })
}
