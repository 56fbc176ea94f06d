//! Redis configuration as a release defines it and a server reports it. Pure: no server.

use std::collections::BTreeMap;

/// Settings that cannot be changed on a running Redis, or that belong to the target (where it listens, where its
/// data and password are), not to the release.
pub const REDIS_NOT_LIVE: [&str; 22] = [
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
pub fn parse_redis_conf(text: &str) -> Vec<(String, String)> {
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
pub fn redis_normal(v: &str) -> String {
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

/// INFO keyspace ("db1" → "keys=3,expires=3,avg_ttl=0") → database → number of keys.
pub fn keyspace(info: &BTreeMap<String, String>) -> BTreeMap<u8, u64> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_save_lines_add_up_and_comments_are_skipped() {
        let conf = "# comment\nsave 900 1\nsave 300 10\nmaxmemory 64mb\nappendonly \"yes\"\n";
        assert_eq!(
            parse_redis_conf(conf),
            vec![
                ("save".to_string(), "900 1 300 10".to_string()),
                ("maxmemory".to_string(), "64mb".to_string()),
                ("appendonly".to_string(), "yes".to_string()),
            ]
        );
    }

    #[test]
    fn memory_units_normalise_as_config_get_reports_them() {
        assert_eq!(redis_normal("64mb"), (64u64 << 20).to_string());
        assert_eq!(redis_normal("1k"), "1000");
        assert_eq!(redis_normal("1KB"), "1024");
        assert_eq!(redis_normal("900  1"), "900 1");
    }

    #[test]
    fn keyspace_counts_keys_per_database() {
        let info: BTreeMap<String, String> = [
            ("db0".to_string(), "keys=3,expires=0,avg_ttl=0".to_string()),
            ("db2".to_string(), "keys=12,expires=1,avg_ttl=5".to_string()),
            ("redis_version".to_string(), "7.0".to_string()),
        ]
        .into();
        assert_eq!(keyspace(&info), [(0, 3), (2, 12)].into());
    }

    #[test]
    fn settings_of_the_target_are_not_live() {
        assert!(REDIS_NOT_LIVE.contains(&"requirepass"));
        assert!(!REDIS_NOT_LIVE.contains(&"maxmemory"));
    }
}
