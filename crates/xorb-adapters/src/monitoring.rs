//! Prometheus and Alertmanager: the target release's configuration validated (promtool, amtool), handed to the
//! target, reloaded and verified over HTTP; Grafana dashboards replaced.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use xorb_engine::runner::{Probe, StepContext, StepError};
use xorb_model::release::Release;

use crate::AdapterError;
use crate::context::{TargetRunner, failed};
use crate::deps::{self, Dep};
use crate::files::private_dir;
use crate::poll::poll_until;
use crate::target::{ConfigSet, Target};

/// The rule files of `release`: (file name, where the release keeps it).
fn rule_files(release: &Release) -> Vec<(String, PathBuf)> {
    release
        .manifest
        .monitoring
        .rules
        .iter()
        .map(|rule| {
            let name = rule
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (name, release.path(rule))
        })
        .collect()
}

fn read_release_file(path: &Path) -> Result<Vec<u8>, StepError> {
    std::fs::read(path)
        .map_err(|e| StepError::fatal(format!("cannot read {}: {e}", path.display())))
}

/// Renders `target`'s Prometheus configuration into the scratch directory `dir`, as the target would run it,
/// with its rule files beside it (promtool checks the configuration and the rules it names).
fn render_prometheus<T: Target>(
    r: &TargetRunner<T>,
    target: &Release,
    dir: &Path,
) -> Result<PathBuf, StepError> {
    let cfg = r.target.prometheus_config(target, dir)?;
    for (name, src) in rule_files(target) {
        std::fs::copy(&src, dir.join(&name))
            .map_err(|e| failed(format!("cannot copy {}: {e}", src.display())))?;
    }
    let out = dir.join("prometheus.yml");
    crate::files::write_file(
        &out,
        &serde_json::to_string_pretty(&cfg).unwrap_or_default(),
    )?;
    Ok(out)
}

fn log_hint<T: Target>(r: &TargetRunner<T>, what: &str) -> String {
    r.target
        .log_hint(what)
        .map(|l| format!("; see {l}"))
        .unwrap_or_default()
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

async fn validate<T: Target>(
    r: &TargetRunner<T>,
    target: &Release,
    scratch: &Path,
) -> Result<String, StepError> {
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
    let cfg = render_prometheus(r, target, scratch)?;
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

pub(crate) fn target_rule_groups(
    target: &Release,
) -> Result<BTreeSet<(String, Vec<String>)>, StepError> {
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
    base: &str,
    want: &Value,
    groups: &BTreeSet<(String, Vec<String>)>,
) -> Result<(), String> {
    let v = get_json(http, "Prometheus", &format!("{base}/api/v1/status/config")).await?;
    let loaded = yaml_value(
        v["data"]["yaml"].as_str().unwrap_or(""),
        "Prometheus's loaded configuration",
    )?;
    let loaded = relative_rule_files(want, loaded);
    contained(want, &loaded, "prometheus").map_err(|e| format!("loaded configuration: {e}"))?;
    let live = live_rule_groups(http, base).await?;
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

/// Prometheus shows a relative rule file resolved against its configuration's directory: a loaded path that
/// ends with the relative one written is that one (the rule groups served are compared on their own).
fn relative_rule_files(want: &Value, mut loaded: Value) -> Value {
    let (Some(w), Some(l)) = (
        want["rule_files"].as_array(),
        loaded["rule_files"].as_array_mut(),
    ) else {
        return loaded;
    };
    for (w, l) in w.iter().zip(l.iter_mut()) {
        if let (Some(ws), Some(ls)) = (w.as_str(), l.as_str())
            && !ws.starts_with('/')
            && ls.ends_with(&format!("/{ws}"))
        {
            *l = w.clone();
        }
    }
    loaded
}

pub async fn live_rule_groups(
    http: &reqwest::Client,
    base: &str,
) -> Result<BTreeSet<(String, Vec<String>)>, String> {
    let v = get_json(http, "Prometheus", &format!("{base}/api/v1/rules")).await?;
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

pub fn dashboards_of(release: &Release) -> Result<BTreeMap<String, PathBuf>, AdapterError> {
    let dir = release.path(&release.manifest.monitoring.grafana);
    let mut out = BTreeMap::new();
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => {
            return Err(AdapterError::io(
                format!("cannot read {}", dir.display()),
                e,
            ));
        }
    };
    for e in rd.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".json") {
            out.insert(name, e.path());
        }
    }
    Ok(out)
}

/// Hands `release`'s Grafana dashboards to the target and removes those of `previous` that `release` does not
/// have (only those: other dashboards are not ours). Returns (written, removed).
fn sync_dashboards<T: Target>(
    t: &T,
    release: &Release,
    previous: Option<&Release>,
) -> Result<(Vec<String>, Vec<String>), StepError> {
    let want = dashboards_of(release)?;
    let mut written = Vec::new();
    for (name, src) in &want {
        let bytes = read_release_file(src)?;
        if t.read_config(ConfigSet::Dashboards, name).as_deref() != Some(&bytes[..]) {
            t.write_config(ConfigSet::Dashboards, name, &bytes)?;
            written.push(name.clone());
        }
    }
    let mut removed = Vec::new();
    if let Some(prev) = previous {
        for name in dashboards_of(prev)?
            .keys()
            .filter(|n| !want.contains_key(*n))
        {
            if t.remove_config(ConfigSet::Dashboards, name)? {
                removed.push(name.clone());
            }
        }
    }
    Ok((written, removed))
}

fn dashboards_in_place<T: Target>(t: &T, release: &Release, previous: Option<&Release>) -> bool {
    let Ok(want) = dashboards_of(release) else {
        return false;
    };
    let all_there = want.iter().all(|(n, src)| {
        std::fs::read(src)
            .ok()
            .is_some_and(|b| t.read_config(ConfigSet::Dashboards, n) == Some(b))
    });
    let none_stale = previous.is_none_or(|p| {
        dashboards_of(p).is_ok_and(|d| {
            d.keys()
                .filter(|n| !want.contains_key(*n))
                .all(|n| t.read_config(ConfigSet::Dashboards, n).is_none())
        })
    });
    all_there && none_stale
}

pub async fn monitoring_validate<T: Target>(
    r: &TargetRunner<T>,
    release: &str,
    ctx: &StepContext<'_>,
) -> Result<String, StepError> {
    let target = r.release(release)?;
    let scratch = ctx
        .run_dir
        .join("monitoring")
        .join(format!("validate-{release}"));
    private_dir(&ctx.run_dir.join("monitoring"))?;
    validate(r, &target, &scratch).await
}

pub async fn monitoring_apply<T: Target>(
    r: &TargetRunner<T>,
    release: &str,
    ctx: &StepContext<'_>,
) -> Result<String, StepError> {
    let target = r.release(release)?;
    let ep = r.endpoints()?;
    private_dir(&ctx.run_dir.join("monitoring"))?;
    // Nothing live is touched before the target's files pass promtool and amtool.
    validate(
        r,
        &target,
        &ctx.run_dir
            .join("monitoring")
            .join(format!("validate-{release}")),
    )
    .await?;
    let mut parts = Vec::new();

    // The rule files first, then the configuration that names them: a reload in between sees a whole set.
    let written = r
        .target
        .prometheus_config(&target, &r.target.prometheus_rules_dir())?;
    for (name, src) in rule_files(&target) {
        r.target
            .write_config(ConfigSet::Prometheus, &name, &read_release_file(&src)?)?;
    }
    r.target.write_config(
        ConfigSet::Prometheus,
        "prometheus.yml",
        serde_json::to_string_pretty(&written)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    r.target.config_written(ConfigSet::Prometheus).await?;
    post_reload(&r.http, &ep.prometheus, "Prometheus").await?;
    let healthy = r
        .http
        .get(format!("{}/-/healthy", ep.prometheus))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success());
    if !healthy {
        return Err(failed(format!(
            "Prometheus is not healthy after the reload{}",
            log_hint(r, "Prometheus")
        )));
    }
    let groups = target_rule_groups(&target)?;
    let last = std::sync::Mutex::new(String::new());
    // The rule manager applies the new groups as part of the reload; poll briefly in case it lags.
    let ok = poll_until(Duration::from_secs(15), || async {
        match prometheus_diff(&r.http, &ep.prometheus, &written, &groups).await {
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

    match &ep.alertmanager {
        Some(base) => {
            let src = target.path(&target.manifest.monitoring.alertmanager);
            let text = std::fs::read_to_string(&src)
                .map_err(|e| StepError::fatal(format!("cannot read {}: {e}", src.display())))?;
            let want = yaml_value(&text, &src.display().to_string()).map_err(StepError::fatal)?;
            r.target
                .write_config(ConfigSet::Alertmanager, "alertmanager.yml", text.as_bytes())?;
            r.target.config_written(ConfigSet::Alertmanager).await?;
            post_reload(&r.http, base, "Alertmanager").await?;
            alertmanager_diff(&r.http, base, &want)
                .await
                .map_err(|e| failed(format!("Alertmanager after the reload: {e}")))?;
            parts.push(format!("Alertmanager reloaded with {}", src.display()));
        }
        None => parts.push("no Alertmanager in this stack".into()),
    }

    if r.target.has_config(ConfigSet::Dashboards) {
        let from = r.release(ctx.from).ok();
        let (w, rm) = sync_dashboards(&r.target, &target, from.as_ref())?;
        parts.push(format!(
            "Grafana dashboards: {} written, {} removed",
            w.len(),
            rm.len()
        ));
    } else {
        parts.push("no Grafana configured".into());
    }
    Ok(parts.join("; "))
}

pub async fn probe_monitoring_apply<T: Target>(
    r: &TargetRunner<T>,
    release: &str,
    _ctx: &StepContext<'_>,
) -> Result<Probe, StepError> {
    let target = r.release(release)?;
    let ep = r.endpoints()?;
    // The rule files Prometheus reads must be the target's, byte for byte.
    for (name, src) in rule_files(&target) {
        if r.target.read_config(ConfigSet::Prometheus, &name) != std::fs::read(&src).ok() {
            return Ok(Probe::NotDone);
        }
    }
    let want = r
        .target
        .prometheus_config(&target, &r.target.prometheus_rules_dir())?;
    let groups = target_rule_groups(&target)?;
    if prometheus_diff(&r.http, &ep.prometheus, &want, &groups)
        .await
        .is_err()
    {
        return Ok(Probe::NotDone);
    }
    if let Some(base) = &ep.alertmanager {
        let src = target.path(&target.manifest.monitoring.alertmanager);
        let text = std::fs::read_to_string(&src).unwrap_or_default();
        let Ok(am_want) = yaml_value(&text, "alertmanager.yml") else {
            return Ok(Probe::NotDone);
        };
        if alertmanager_diff(&r.http, base, &am_want).await.is_err() {
            return Ok(Probe::NotDone);
        }
    }
    if r.target.has_config(ConfigSet::Dashboards) {
        let from = r.release(_ctx.from).ok();
        if !dashboards_in_place(&r.target, &target, from.as_ref()) {
            return Ok(Probe::NotDone);
        }
    }
    Ok(Probe::Done {
        detail: format!(
            "Prometheus{} already serve {}'s configuration and rules",
            if ep.alertmanager.is_some() {
                " and Alertmanager"
            } else {
                ""
            },
            target.name()
        ),
    })
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PromTarget {
    pub job: String,
    pub health: String,
}

/// Prometheus's active scrape targets, by job, with their health (for `stack status`).
pub async fn prometheus_targets(
    http: &reqwest::Client,
    base: &str,
) -> Result<Vec<PromTarget>, String> {
    let v: serde_json::Value = http
        .get(format!("{base}/api/v1/targets"))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let mut out: Vec<PromTarget> = v["data"]["activeTargets"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|t| PromTarget {
                    job: t["labels"]["job"].as_str().unwrap_or_default().to_string(),
                    health: t["health"].as_str().unwrap_or_default().to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort_by(|a, b| a.job.cmp(&b.job));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_relative_rule_file_matches_its_resolved_path_and_nothing_else() {
        let want = json!({"rule_files": ["alert-rules.yml", "/etc/abs.yml"]});
        let loaded = json!({"rule_files": ["/etc/prometheus/alert-rules.yml", "/etc/abs.yml"]});
        assert_eq!(relative_rule_files(&want, loaded), want);
        // Another file with the same suffix is not it, and an absolute path must match exactly.
        let other =
            json!({"rule_files": ["/etc/prometheus/old-alert-rules.yml", "/x/etc/abs.yml"]});
        assert_eq!(relative_rule_files(&want, other.clone()), other);
    }
}
