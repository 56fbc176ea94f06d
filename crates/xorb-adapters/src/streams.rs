//! JetStream streams against a release's definitions: the configuration we create them with and how a live
//! stream differs from its definition. Pure: no server.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Value, json};
use xorb_model::release::{Release, Retention, Storage, StreamDef};

pub fn stream_config(def: &StreamDef) -> async_nats::jetstream::stream::Config {
    use async_nats::jetstream::stream::{Config, RetentionPolicy, StorageType};
    Config {
        name: def.name.clone(),
        description: def.description.clone(),
        subjects: def.subjects.clone(),
        retention: match def.retention {
            Retention::Limits => RetentionPolicy::Limits,
            Retention::Interest => RetentionPolicy::Interest,
            Retention::Workqueue => RetentionPolicy::WorkQueue,
        },
        storage: match def.storage {
            Storage::File => StorageType::File,
            Storage::Memory => StorageType::Memory,
        },
        max_age: Duration::from_secs(def.max_age_secs),
        max_messages: def.max_msgs,
        max_bytes: def.max_bytes,
        num_replicas: def.replicas as usize,
        ..Default::default()
    }
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

/// The strings of a JSON array (JetStream's lists of names and subjects); empty when it is not one.
pub fn string_list(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Where a live stream's configuration differs from its definition (empty: it matches).
pub fn stream_diff(def: &StreamDef, config: &Value) -> Vec<String> {
    let mut d = Vec::new();
    let mut live_subjects = string_list(&config["subjects"]);
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
pub fn streams_vs_release(release: &Release, live: &BTreeMap<String, Value>) -> Vec<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn def() -> StreamDef {
        StreamDef {
            name: "xorb-jobs".into(),
            description: None,
            subjects: vec!["jobs.>".into(), "jobs.retry".into()],
            retention: Retention::Workqueue,
            storage: Storage::File,
            max_age_secs: 3600,
            max_msgs: 1000,
            max_bytes: -1,
            replicas: 1,
        }
    }

    /// A stream's configuration as JetStream reports it.
    fn live() -> Value {
        json!({
            "subjects": ["jobs.retry", "jobs.>"],
            "retention": "workqueue",
            "storage": "file",
            "max_age": 3_600_000_000_000u64,
            "max_msgs": 1000,
            "max_bytes": -1,
            "num_replicas": 1,
        })
    }

    #[test]
    fn a_stream_as_defined_has_no_difference_whatever_the_order_of_its_subjects() {
        assert!(stream_diff(&def(), &live()).is_empty());
    }

    #[test]
    fn every_differing_field_is_named_with_both_values() {
        let mut l = live();
        l["retention"] = json!("limits");
        l["max_age"] = json!(60_000_000_000u64);
        l["subjects"] = json!(["jobs.>"]);
        let d = stream_diff(&def(), &l);
        assert_eq!(d.len(), 3, "{d:?}");
        assert!(d[0].starts_with("subjects"), "{d:?}");
        assert!(
            d.iter()
                .any(|x| x.contains("retention \"limits\" ≠ \"workqueue\"")),
            "{d:?}"
        );
        assert!(
            d.iter().any(|x| x.starts_with("max_age (ns) 60000000000")),
            "{d:?}"
        );
    }

    #[test]
    fn the_configuration_we_create_a_stream_with_is_its_definition() {
        let c = stream_config(&def());
        assert_eq!(c.name, "xorb-jobs");
        assert_eq!(c.max_age, Duration::from_secs(3600));
        assert_eq!(c.max_messages, 1000);
        assert_eq!(c.num_replicas, 1);
    }
}
