//! `xorbctl status` on Kubernetes: the same report as on the local stack, from what the cluster and the target
//! file's addresses answer (a Deployment's instances in place of a process, a server "running" when it answers).

use std::collections::BTreeMap;

use xorb_adapters::deps::chain;
use xorb_adapters::target::Target;
use xorb_local::stack::{ServerStatus, ServiceStatus, StackStatus};

use super::Opened;

fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or(0)
}

pub async fn status(opened: &Opened) -> anyhow::Result<StackStatus> {
    let t = &opened.target;
    let live = opened.observe().await?;
    let ep = opened.endpoints()?;
    let instances = t
        .instances()
        .await
        .map_err(|e| anyhow::anyhow!("cannot read the namespace's workloads: {e}"))?;
    let http = reqwest::Client::new();
    let mut services = Vec::new();
    for s in &live.services {
        let running = instances.iter().any(|i| i.service == s.name);
        let url = ep.service(&s.name).unwrap_or_default().to_string();
        let h = if running && !url.is_empty() {
            xorb_adapters::services::probe_service(&http, &url)
                .await
                .ok()
        } else {
            None
        };
        services.push(ServiceStatus {
            name: s.name.clone(),
            image: s.image.clone(),
            release: s.release.clone(),
            port: port_of(&url),
            pid: None,
            running,
            healthy: h.as_ref().is_some_and(|h| h.healthy),
            reported_release: h.as_ref().and_then(|h| h.release.clone()),
            health: h.map(|h| h.detail).unwrap_or(serde_json::Value::Null),
        });
    }
    let mut problems = Vec::new();
    let mut servers = BTreeMap::new();
    let mut server = |name: &str, port: u16, running: bool| {
        servers.insert(name.to_string(), ServerStatus { port, running });
    };
    let schema_revision = match xorb_adapters::pg::schema_revision(&ep.postgres).await {
        Ok(r) => {
            server("postgres", ep.postgres.port, true);
            r
        }
        Err(e) => {
            server("postgres", ep.postgres.port, false);
            problems.push(format!(
                "PostgreSQL at {}:{}: {}",
                ep.postgres.host,
                ep.postgres.port,
                chain(&e)
            ));
            None
        }
    };
    let streams = match xorb_adapters::nats::list_streams(&ep.nats).await {
        Ok(s) => {
            server("nats", port_of(&ep.nats), true);
            s
        }
        Err(e) => {
            server("nats", port_of(&ep.nats), false);
            problems.push(format!("NATS at {}: {}", ep.nats, chain(&e)));
            Vec::new()
        }
    };
    let redis_databases = match xorb_adapters::redis::keyspace_of(&ep.redis.url(0)).await {
        Ok(d) => {
            server("redis", ep.redis.port, true);
            d
        }
        Err(e) => {
            server("redis", ep.redis.port, false);
            problems.push(format!(
                "Redis at {}:{}: {}",
                ep.redis.host,
                ep.redis.port,
                chain(&e)
            ));
            BTreeMap::new()
        }
    };
    let prometheus_targets =
        match xorb_adapters::monitoring::prometheus_targets(&http, &ep.prometheus).await {
            Ok(t) => {
                server("prometheus", port_of(&ep.prometheus), true);
                t
            }
            Err(e) => {
                server("prometheus", port_of(&ep.prometheus), false);
                problems.push(format!("Prometheus at {}: {e}", ep.prometheus));
                Vec::new()
            }
        };
    Ok(StackStatus {
        release: live.release,
        state_dir: opened.state_dir.clone(),
        services,
        schema_revision,
        streams,
        redis_databases,
        prometheus_targets,
        servers,
        problems,
    })
}
