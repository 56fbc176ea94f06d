//! NATS JetStream through its endpoint: phase 4's stream save (every message of a stream the target release does not
//! define, before it is removed) and apply (the live streams made equal to the target's definitions).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::{Value, json};
use xorb_engine::runner::{Probe, StepContext, StepError};
use xorb_model::release::StreamDef;

use crate::AdapterError;
use crate::context::{TargetRunner, failed};
use crate::deps::{self, Dep};
use crate::files::{private_dir, read_json, sha256_file, write_atomic, write_json};
use crate::streams::{stream_config, stream_diff, streams_vs_release, string_list};
use crate::target::{Server, Target};

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

async fn jetstream(url: &str) -> Result<Js, StepError> {
    let dep = Dep::http("NATS", url);
    let opts = async_nats::ConnectOptions::new().connection_timeout(deps::CONNECT);
    let client = deps::call(&dep, "connect", deps::CONNECT, opts.connect(url))
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
        let page = string_list(&v["streams"]);
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
    write_atomic(&file, text.as_bytes())?;
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

pub async fn nats_save<T: Target>(
    r: &TargetRunner<T>,
    release: &str,
    ctx: &StepContext<'_>,
) -> Result<String, StepError> {
    let target = r.release(release)?;
    let js = jetstream(&r.endpoints()?.nats).await?;
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

pub async fn nats_apply<T: Target>(
    r: &TargetRunner<T>,
    release: &str,
    ctx: &StepContext<'_>,
) -> Result<String, StepError> {
    let target = r.release(release)?;
    let js = jetstream(&r.endpoints()?.nats).await?;
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
                js.update_stream(stream_config(def))
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
                    js.create_stream(stream_config(def)),
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
    let restarted =
        restart_keeping_streams(r, &after, &format!("{}/{release}", ctx.run_id)).await?;
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    Ok(format!(
        "removed {}; created {}; updated {}; live streams equal {}'s definitions ({}){restarted}",
        list(&removed),
        list(&created),
        list(&updated),
        target.name(),
        after.keys().cloned().collect::<Vec<_>>().join(", ")
    ))
}

/// The target's restart of NATS, if it has one (`kubectl rollout restart statefulset/nats-cluster`), and then
/// JetStream answering with the same streams holding the same messages: its data is kept on its volume. Returns
/// what to add to the step's detail.
async fn restart_keeping_streams<T: Target>(
    r: &TargetRunner<T>,
    before: &BTreeMap<String, Value>,
    stamp: &str,
) -> Result<String, StepError> {
    let Some(did) = r.target.restart_server(Server::Nats, stamp).await? else {
        return Ok(String::new());
    };
    let url = r.endpoints()?.nats;
    let within = std::time::Duration::from_secs(120);
    let after = crate::poll::poll_until(within, || async {
        stream_infos(&jetstream(&url).await.ok()?).await.ok()
    })
    .await
    .ok_or_else(|| {
        failed(format!(
            "{did}, but JetStream did not answer within {} s",
            within.as_secs()
        ))
    })?;
    // Clients publish and consumers take messages meanwhile, so counts move; a stream's last sequence never goes
    // back unless its data did not survive.
    let last = |m: &BTreeMap<String, Value>| -> BTreeMap<String, u64> {
        m.iter()
            .map(|(k, v)| (k.clone(), v["state"]["last_seq"].as_u64().unwrap_or(0)))
            .collect()
    };
    let (was, now) = (last(before), last(&after));
    let lost: Vec<String> = was
        .iter()
        .filter(|(k, seq)| now.get(*k).is_none_or(|n| n < *seq))
        .map(|(k, seq)| match now.get(k) {
            None => format!("{k} gone"),
            Some(n) => format!("{k} back at sequence {n} from {seq}"),
        })
        .collect();
    if !lost.is_empty() {
        return Err(StepError::fatal(format!(
            "{did}, and JetStream came back without its data ({}): it did not survive the restart. Look at its \
             volume before resuming",
            lost.join(", ")
        )));
    }
    Ok(format!(
        "; {did}, every stream kept (last sequences {was:?})"
    ))
}

pub async fn probe_nats_apply<T: Target>(
    r: &TargetRunner<T>,
    release: &str,
    _ctx: &StepContext<'_>,
) -> Result<Probe, StepError> {
    let target = r.release(release)?;
    let js = jetstream(&r.endpoints()?.nats).await?;
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

/// Creates every stream the release defines that does not exist yet. Returns the names created.
pub async fn ensure_streams(
    nats_url: &str,
    defs: &[StreamDef],
) -> Result<Vec<String>, AdapterError> {
    let js = jetstream(nats_url)
        .await
        .map_err(|e| AdapterError::nats("connect", e))?;
    let mut created = Vec::new();
    for def in defs {
        if js.get_stream(&def.name).await.is_ok() {
            continue;
        }
        deps::call(
            &js.dep,
            &format!("create stream {}", def.name),
            deps::CALL,
            js.create_stream(stream_config(def)),
        )
        .await?;
        created.push(def.name.clone());
    }
    Ok(created)
}

/// The names of the streams that exist, sorted.
pub async fn list_streams(nats_url: &str) -> Result<Vec<String>, AdapterError> {
    use futures::TryStreamExt;
    let js = jetstream(nats_url)
        .await
        .map_err(|e| AdapterError::nats("connect", e))?;
    let mut names: Vec<String> = deps::call(
        &js.dep,
        "list streams",
        deps::CALL,
        js.stream_names().try_collect::<Vec<String>>(),
    )
    .await?;
    names.sort();
    Ok(names)
}
