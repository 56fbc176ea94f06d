//! What changes between a live object and the same object as the API server would write it (an apply or a patch
//! in a dry run): the field paths, and their values before and after. What the server owns (status, managed
//! fields, resourceVersion, generation) never counts.

use serde_json::Value;

/// Field paths that differ between the live object and the applied one, leaving out what the server owns.
pub fn diff(live: &Value, applied: &Value) -> Vec<String> {
    diff_values(live, applied)
        .into_iter()
        .map(|(p, _, _)| p)
        .collect()
}

/// [`diff`] with each field's value before and after (Null: absent). Never for a Secret: its values are secret.
pub fn diff_values(live: &Value, applied: &Value) -> Vec<(String, Value, Value)> {
    let mut out = Vec::new();
    walk("", &comparable(live), &comparable(applied), &mut out);
    out
}

fn comparable(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("status");
        if let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut) {
            for k in [
                "managedFields",
                "resourceVersion",
                "generation",
                "creationTimestamp",
                "uid",
                "selfLink",
            ] {
                meta.remove(k);
            }
            if let Some(ann) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
                ann.remove("kubectl.kubernetes.io/last-applied-configuration");
                if ann.is_empty() {
                    meta.remove("annotations");
                }
            }
        }
    }
    v
}

fn walk(path: &str, a: &Value, b: &Value, out: &mut Vec<(String, Value, Value)>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                walk(
                    &p,
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        // A map that appears or goes whole (a ConfigMap's first `data`, a template's first annotation) is shown
        // key by key, as the fields it adds or removes.
        (Value::Null, Value::Object(y)) if !y.is_empty() => {
            walk(path, &Value::Object(Default::default()), b, out)
        }
        (Value::Object(x), Value::Null) if !x.is_empty() => {
            walk(path, a, &Value::Object(Default::default()), out)
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                walk(&format!("{path}[{i}]"), p, q, out);
            }
        }
        (x, y) if x != y => out.push((path.to_string(), x.clone(), y.clone())),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn diff_names_changed_added_and_removed_fields_only() {
        let live = json!({"kind": "ConfigMap", "metadata": {"name": "c", "resourceVersion": "1",
            "managedFields": [{"manager": "kubectl"}], "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
            "data": {"A": "1", "B": "2", "GONE": "x"}});
        let applied = json!({"kind": "ConfigMap", "metadata": {"name": "c", "resourceVersion": "2",
            "managedFields": [{"manager": "xorbctl"}]},
            "data": {"A": "1", "B": "3", "NEW": "y"}});
        assert_eq!(
            diff(&live, &applied),
            vec!["data.B", "data.GONE", "data.NEW"]
        );
        assert!(diff(&live, &live).is_empty());
        // A map that appears whole is listed key by key.
        let bare = json!({"kind": "ConfigMap", "metadata": {"name": "c"}});
        assert_eq!(
            diff_values(&bare, &applied),
            vec![
                ("data.A".to_string(), Value::Null, json!("1")),
                ("data.B".to_string(), Value::Null, json!("3")),
                ("data.NEW".to_string(), Value::Null, json!("y")),
            ]
        );
        assert_eq!(diff(&applied, &bare), vec!["data.A", "data.B", "data.NEW"]);
    }

    #[test]
    fn diff_walks_lists_and_reports_a_resized_list_whole() {
        let a = json!({"spec": {"ingress": [{"from": [{"podSelector": {"app": "a"}}]}]}});
        let b = json!({"spec": {"ingress": [{"from": [{"podSelector": {"app": "b"}}]}]}});
        assert_eq!(
            diff(&a, &b),
            vec!["spec.ingress[0].from[0].podSelector.app"]
        );
        let c = json!({"spec": {"ingress": []}});
        assert_eq!(diff(&a, &c), vec!["spec.ingress"]);
    }
}
