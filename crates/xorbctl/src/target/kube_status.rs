//! `xorbctl status` on Kubernetes: the same report as on the local stack, from what the cluster and the target
//! file's addresses answer (a Deployment's instances in place of a process, a server "running" when it answers).

use std::collections::BTreeMap;
use std::path::Path;

use xorb_adapters::deps::chain;
use xorb_adapters::target::{Endpoints, Target};
use xorb_engine::planner::LiveState;
use xorb_local::stack::{ServerStatus, ServiceStatus, StackStatus};

use super::any::AnyTarget;

fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or(0)
}

/// `live` and `ep` as the target observed them just before.
pub async fn status(
    t: &AnyTarget,
    live: LiveState,
    ep: Endpoints,
    state_dir: &Path,
) -> anyhow::Result<StackStatus> {
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
        services.push(ServiceStatus::seen(
            &s.name,
            &s.image,
            &s.release,
            port_of(&url),
            running,
            h,
        ));
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
        state_dir: state_dir.to_path_buf(),
        services,
        schema_revision,
        streams,
        redis_databases,
        prometheus_targets,
        servers,
        problems,
    })
}
