//! Redis through its endpoint: phase 4's backup (an RDB taken over the network and checked by redis-check-rdb) and
//! apply (databases the target does not use flushed, its settings set live and handed to the target to keep).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use xorb_engine::runner::{Probe, StepContext, StepError};

use crate::AdapterError;
use crate::context::{TargetRunner, failed};
use crate::deps::{self, Dep};
use crate::files::{private_dir, read_json, sha256_file, write_json};
use crate::redis_conf::{REDIS_NOT_LIVE, keyspace, parse_redis_conf, redis_normal};
use crate::target::{ConfigSet, RedisEndpoint, Server, Target};

const WAIT: Duration = Duration::from_secs(60);

/// The password travels in the URL to the redis crate, inside this process: never in a child's argv.
async fn redis_con(ep: &RedisEndpoint, db: u8) -> Result<RedisCon, StepError> {
    let client = redis::Client::open(ep.url(db))
        .map_err(|e| StepError::fatal(format!("Redis: bad connection settings: {e}")))?;
    // The client's own timeouts too: a command sent on this connection later must not wait forever either.
    let cfg = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(deps::CONNECT))
        .set_response_timeout(Some(deps::CALL));
    let dep = Dep::new("Redis", format!("{}:{}", ep.host, ep.port));
    let con = deps::call(
        &dep,
        &format!("connect to database {db}"),
        deps::CONNECT,
        client.get_multiplexed_async_connection_with_config(&cfg),
    )
    .await
    .map_err(failed)?;
    Ok(RedisCon { con, dep })
}

/// "; see LOG" when the target knows where Redis logs.
fn log_hint<T: Target>(r: &TargetRunner<T>) -> String {
    r.target
        .log_hint("Redis")
        .map(|l| format!("; see {l}"))
        .unwrap_or_default()
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

pub async fn redis_backup<T: Target>(
    r: &TargetRunner<T>,
    ctx: &StepContext<'_>,
) -> Result<String, StepError> {
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
    let ep = r.endpoints()?.redis;
    let mut con = redis_con(&ep, 0).await?;
    let keys = keyspace(&redis_info(&mut con, "keyspace").await?);
    // Over the network, as a replica would take it (`redis-cli --rdb`): the server's own files are not ours to
    // read on every target. The password reaches redis-cli through its environment, never its arguments.
    let partial = dir.join("dump.rdb.partial");
    let _ = std::fs::remove_file(&partial);
    // Created owner-only first: redis-cli truncates and keeps its mode, so the keys are never readable by others.
    crate::files::write_private(&partial, b"")?;
    let mut cmd = tokio::process::Command::new("redis-cli");
    cmd.arg("-h")
        .arg(&ep.host)
        .arg("-p")
        .arg(ep.port.to_string())
        .arg("--no-auth-warning")
        .arg("--rdb")
        .arg(&partial)
        .env("REDISCLI_AUTH", &ep.password)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = match tokio::time::timeout(WAIT, cmd.output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => {
            return Err(StepError::fatal(format!(
                "cannot run redis-cli: {e} (install redis-tools: scripts/install-deps)"
            )));
        }
        Err(_) => {
            return Err(failed(format!(
                "{}: redis-cli --rdb did not finish within {} s{}",
                con.dep,
                WAIT.as_secs(),
                log_hint(r)
            )));
        }
    };
    if !out.status.success() {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        return Err(failed(format!(
            "{}: redis-cli --rdb failed: {}{}",
            con.dep,
            crate::toolout::quote(&text, &dir, "redis-cli-rdb.out"),
            log_hint(r)
        )));
    }
    // The snapshot holds every key: owner-only whatever the umask redis-cli wrote it with.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| failed(format!("cannot set mode of {}: {e}", partial.display())))?;
    }
    std::fs::rename(&partial, &copy).map_err(|e| {
        failed(format!(
            "cannot rename {} to {}: {e}",
            partial.display(),
            copy.display()
        ))
    })?;
    let bytes = std::fs::metadata(&copy).map(|m| m.len()).unwrap_or(0);
    let verdict = check_rdb(&copy).await?;
    let sha = sha256_file(&copy)?;
    write_json(
        &meta_p,
        &json!({
            "file": copy,
            "source": con.dep.to_string(),
            "bytes": bytes,
            "sha256": sha,
            "keys_per_database": keys,
            "redis_check_rdb": verdict,
            "saved_at": chrono::Utc::now().to_rfc3339(),
        }),
    )?;
    let counts: Vec<String> = keys.iter().map(|(db, n)| format!("db{db} {n}")).collect();
    Ok(format!(
        "RDB snapshot taken over the network into {} ({} bytes, sha256 {sha}), redis-check-rdb: OK; keys: {}",
        copy.display(),
        bytes,
        if counts.is_empty() {
            "none".to_string()
        } else {
            counts.join(", ")
        }
    ))
}

struct RedisPlan {
    flush: Vec<u8>,
    settings: Vec<(String, String)>,
    skipped: Vec<String>,
    conf: PathBuf,
}

fn redis_plan<T: Target>(
    r: &TargetRunner<T>,
    release: &str,
    from: &str,
) -> Result<RedisPlan, StepError> {
    let target = r.release(release)?;
    let from = r.release(from)?;
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

pub async fn redis_apply<T: Target>(
    r: &TargetRunner<T>,
    release: &str,
    ctx: &StepContext<'_>,
) -> Result<String, StepError> {
    let plan = redis_plan(r, release, ctx.from)?;
    let ep = r.endpoints()?.redis;
    let mut flushed = Vec::new();
    for db in &plan.flush {
        let mut con = redis_con(&ep, *db).await?;
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
    let mut con = redis_con(&ep, 0).await?;
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
    r.target
        .write_config(ConfigSet::Redis, "release.conf", &text)?;

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
        let mut c = redis_con(&ep, *db).await?;
        let n: i64 = redis_query(&mut c, &redis::cmd("DBSIZE"), "DBSIZE").await?;
        if n != 0 {
            return Err(failed(format!(
                "Redis db {db} holds {n} keys again right after FLUSHDB: a client of {} still writes to it",
                ctx.from
            )));
        }
    }
    let restarted = restart_keeping_data(r, &ep, &format!("{}/{release}", ctx.run_id)).await?;
    Ok(format!(
        "flushed {}; applied {} settings of {} (CONFIG GET agrees, PING ok){restarted}; skipped (not settable live or \
         set by the target): {}",
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

pub async fn probe_redis_apply<T: Target>(
    r: &TargetRunner<T>,
    release: &str,
    ctx: &StepContext<'_>,
) -> Result<Probe, StepError> {
    let plan = redis_plan(r, release, ctx.from)?;
    let ep = r.endpoints()?.redis;
    for db in &plan.flush {
        let mut c = redis_con(&ep, *db).await?;
        let n: i64 = redis_query(&mut c, &redis::cmd("DBSIZE"), "DBSIZE").await?;
        if n != 0 {
            return Ok(Probe::NotDone);
        }
    }
    let mut con = redis_con(&ep, 0).await?;
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

/// The target's restart of Redis, if it has one (`kubectl rollout restart deployment/redis`), and then Redis answering
/// with its data: kept on its volume (`save` on shutdown). Returns what to add to the step's detail.
async fn restart_keeping_data<T: Target>(
    r: &TargetRunner<T>,
    ep: &RedisEndpoint,
    stamp: &str,
) -> Result<String, StepError> {
    let url = ep.url(0);
    let before = keyspace_of(&url).await.map_err(failed)?;
    let Some(did) = r.target.restart_server(Server::Redis, stamp).await? else {
        return Ok(String::new());
    };
    let after = crate::poll::poll_until(RESTART_ANSWERS, || async { keyspace_of(&url).await.ok() })
        .await
        .ok_or_else(|| {
            failed(format!(
                "{did}, but Redis did not answer within {} s",
                RESTART_ANSWERS.as_secs()
            ))
        })?;
    // Its clients keep writing and keys expire, so counts move; a database that comes back empty did not survive.
    let emptied: Vec<String> = before
        .iter()
        .filter(|(db, n)| **n > 0 && after.get(db).copied().unwrap_or(0) == 0)
        .map(|(db, n)| format!("db{db} ({n} keys before)"))
        .collect();
    if !emptied.is_empty() {
        return Err(StepError::fatal(format!(
            "{did}, and Redis came back empty in {}: its data did not survive the restart. Look at its volume and \
             its `save` setting before resuming",
            emptied.join(", ")
        )));
    }
    Ok(format!(
        "; {did}, data kept (keys per database {before:?} before, {after:?} after)"
    ))
}

/// How long a restarted server has to answer again.
const RESTART_ANSWERS: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------------------------

/// Keys per database of the Redis at `url` (for `stack status`).
pub async fn keyspace_of(url: &str) -> Result<BTreeMap<u8, u64>, AdapterError> {
    let client =
        redis::Client::open(url).map_err(|e| AdapterError::Config(format!("redis url: {e}")))?;
    let mut con = deps::call(
        &Dep::http("Redis", url),
        "connect",
        deps::CONNECT,
        client.get_multiplexed_async_connection(),
    )
    .await?;
    let info: String = deps::call(
        &Dep::http("Redis", url),
        "INFO keyspace",
        deps::CALL,
        redis::cmd("INFO").arg("keyspace").query_async(&mut con),
    )
    .await?;
    let info: BTreeMap<String, String> = info
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(keyspace(&info))
}

/// Whether the Redis at `url` answers PING (a readiness probe).
pub async fn ping(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    let Ok(mut con) = client.get_multiplexed_async_connection().await else {
        return false;
    };
    redis::cmd("PING")
        .query_async::<String>(&mut con)
        .await
        .is_ok()
}
