//! The release directories themselves: typed Kubernetes objects, Prometheus and Alertmanager configurations that
//! the real tools accept.

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};

use crate::common::*;

fn releases() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(repo().join("releases"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join("release.toml").is_file())
        .collect();
    v.sort();
    assert_eq!(v.len(), 2);
    v
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().filter_map(Result::ok) {
        let p = e.path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(p);
        }
    }
}

#[test]
fn every_k8s_manifest_parses_as_a_typed_object() {
    for rel in releases() {
        let mut files = Vec::new();
        yaml_files(&rel.join("k8s"), &mut files);
        let mut kinds = std::collections::BTreeMap::<String, usize>::new();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            for doc in docs.into_iter().filter(|d| !d.is_null()) {
                let kind = doc["kind"].as_str().unwrap_or_default().to_string();
                let typed = match kind.as_str() {
                    "Deployment" => serde_json::from_value::<Deployment>(doc.clone()).map(|_| ()),
                    "Service" => serde_json::from_value::<Service>(doc.clone()).map(|_| ()),
                    "ConfigMap" => serde_json::from_value::<ConfigMap>(doc.clone()).map(|_| ()),
                    "NetworkPolicy" => {
                        serde_json::from_value::<NetworkPolicy>(doc.clone()).map(|_| ())
                    }
                    "StatefulSet" => serde_json::from_value::<StatefulSet>(doc.clone()).map(|_| ()),
                    "PersistentVolumeClaim" => {
                        serde_json::from_value::<PersistentVolumeClaim>(doc.clone()).map(|_| ())
                    }
                    "Role" => serde_json::from_value::<Role>(doc.clone()).map(|_| ()),
                    "RoleBinding" => serde_json::from_value::<RoleBinding>(doc.clone()).map(|_| ()),
                    "ServiceAccount" => {
                        serde_json::from_value::<ServiceAccount>(doc.clone()).map(|_| ())
                    }
                    other => panic!("{}: unexpected kind {other:?}", f.display()),
                };
                typed.unwrap_or_else(|e| panic!("{}: not a valid {kind}: {e}", f.display()));
                let name = doc["metadata"]["name"].as_str().unwrap_or_default();
                // The datastores' ConfigMaps carry the release's own files, byte for byte.
                let sources: &[(&str, &str)] = match name {
                    "redis-config" => &[("redis.conf", "redis/redis.conf")],
                    "prometheus-config" => &[
                        ("prometheus.yml", "monitoring/prometheus.yml"),
                        ("alert-rules.yml", "monitoring/alert-rules.yml"),
                    ],
                    "alertmanager-config" => &[("alertmanager.yml", "monitoring/alertmanager.yml")],
                    _ => &[],
                };
                for (key, src) in sources {
                    let want = std::fs::read_to_string(rel.join(src)).unwrap();
                    assert_eq!(
                        doc["data"][key].as_str(),
                        Some(want.as_str()),
                        "{}: {key}",
                        f.display()
                    );
                }
                if kind == "Deployment" && name.starts_with("xorb-") {
                    *kinds.entry("Deployment of a role".into()).or_default() += 1;
                }
                *kinds.entry(kind).or_default() += 1;
            }
        }
        // The roles (rc1 has the control plane), then Redis, Prometheus and Alertmanager.
        let roles = kinds.get("Deployment of a role").copied().unwrap_or(0);
        let want = if rel.ends_with("v2025.08-rc1") { 5 } else { 4 };
        assert_eq!(roles, want, "{}: {kinds:?}", rel.display());
        assert_eq!(
            kinds.get("Deployment").copied(),
            Some(want + 3),
            "{}: {kinds:?}",
            rel.display()
        );
        assert_eq!(
            kinds.get("StatefulSet").copied(),
            Some(1),
            "{}: {kinds:?}",
            rel.display()
        );
        for k in [
            "Service",
            "ConfigMap",
            "NetworkPolicy",
            "PersistentVolumeClaim",
        ] {
            assert!(kinds.contains_key(k), "{} has no {k}", rel.display());
        }
    }
}

#[test]
fn deployments_carry_the_release_images() {
    for rel in releases() {
        let name = rel.file_name().unwrap().to_str().unwrap().to_string();
        let text = std::fs::read_to_string(rel.join("k8s/deployments/xorb-api.yaml")).unwrap();
        let d: Deployment = serde_saphyr::from_str(&text).unwrap();
        let image = format!(
            "{:?}",
            d.spec.unwrap().template.spec.unwrap().containers[0].image
        );
        assert!(image.contains(&format!("xorb/api:{name}")), "{image}");
    }
}

fn tool(cmd: &str, args: &[&str], file: &Path) {
    let out = Command::new(cmd)
        .args(args)
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} {}: {}",
        file.display(),
        text(&out)
    );
}

#[test]
fn promtool_and_amtool_accept_every_release_monitoring_configuration() {
    for rel in releases() {
        let m = rel.join("monitoring");
        tool("promtool", &["check", "config"], &m.join("prometheus.yml"));
        tool("promtool", &["check", "rules"], &m.join("alert-rules.yml"));
        tool("amtool", &["check-config"], &m.join("alertmanager.yml"));
        for d in std::fs::read_dir(m.join("grafana"))
            .unwrap()
            .filter_map(Result::ok)
        {
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(d.path()).unwrap()).unwrap();
            assert!(
                v["panels"].as_array().is_some_and(|p| !p.is_empty()),
                "{}",
                d.path().display()
            );
        }
    }
}

#[test]
fn promtool_rejects_a_broken_rule_file_so_the_check_means_something() {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        f.path(),
        "groups:\n- name: x\n  rules:\n  - alert: Bad\n    expr: rate(up[5m]\n",
    )
    .unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(f.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn alembic_meta_names_what_each_downgrade_destroys() {
    let out = Command::new(venv().join("bin/python"))
        .arg(repo().join("migrations/xorb_meta.py"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let revs: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["revision"].as_str().unwrap())
        .collect();
    assert_eq!(
        revs,
        ["8d9a2c3", "7c8f1b2", "6b7e0a1", "1a5be11", "3f2c7d1"]
    );
    let g7 = &v[1];
    assert!(
        g7["destroys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["object"] == "evidence"),
        "{g7}"
    );
}

#[test]
fn bad_input_gets_a_clear_error_and_a_nonzero_exit() {
    let dir = Stack::new_dir();
    let st = Stack {
        dir: dir.clone(),
        release: String::new(),
    };
    let out = st.xorbctl(&["stack", "up", "--release", "v9.99-nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("release \"v9.99-nope\" not found"),
        "{}",
        text(&out)
    );
    let out = st.xorbctl(&["stack", "up", "--release", "../../etc"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = st.xorbctl(&["status"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no stack in"));
    assert!(
        !dir.join("postgres").exists(),
        "nothing was started for a bad release"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
