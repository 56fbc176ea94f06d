//! The lab against itself: real etcd, kube-apiserver and kube-controller-manager, checked with Debian's kubectl.
//! No test skips: without the binaries each fails with the message that says to run scripts/kube-control-plane.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use xorb_kubelab::{KubeLab, LabUser};

fn start(dir: &std::path::Path) -> KubeLab {
    let t0 = Instant::now();
    let lab =
        KubeLab::start(dir).unwrap_or_else(|e| panic!("the Kubernetes lab did not start: {e}"));
    eprintln!("lab started in {:.1}s", t0.elapsed().as_secs_f64());
    lab
}

fn run(mut cmd: Command, stdin: Option<&str>) -> (bool, String, String) {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("kubectl starts");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn kubectl_json(lab: &KubeLab, args: &[&str]) -> serde_json::Value {
    let mut cmd = lab.kubectl();
    cmd.args(args).args(["-o", "json"]);
    let (ok, out, err) = run(cmd, None);
    assert!(ok, "kubectl {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("kubectl {args:?}: not JSON ({e}): {out}"))
}

/// Polls `check` (which says what it still waits for) until it passes or `within` ends; then fails with the
/// lab's logs.
fn eventually(lab: &KubeLab, within: Duration, mut check: impl FnMut() -> Result<(), String>) {
    let t0 = Instant::now();
    loop {
        match check() {
            Ok(()) => return,
            Err(why) if t0.elapsed() >= within => {
                panic!("after {}s: {why}\n{}", within.as_secs(), lab.log_tails(40))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: xorb-api
  labels: {app: xorb-api}
spec:
  replicas: 2
  selector:
    matchLabels: {app: xorb-api}
  template:
    metadata:
      labels: {app: xorb-api}
    spec:
      containers:
        - name: api
          image: xorb/api:v2025.07-stable
"#;

#[test]
fn deployment_controller_creates_a_replicaset_and_observes_the_generation() {
    let dir = tempfile::tempdir().unwrap();
    let lab = start(dir.path());

    let mut apply = lab.kubectl();
    apply.args(["apply", "-f", "-"]);
    let (ok, out, err) = run(apply, Some(DEPLOYMENT));
    assert!(ok, "kubectl apply failed: {err}");
    assert!(out.contains("deployment.apps/xorb-api created"), "{out}");

    let t0 = Instant::now();
    eventually(&lab, Duration::from_secs(60), || {
        let rs = kubectl_json(&lab, &["get", "replicasets", "-l", "app=xorb-api"]);
        let items = rs["items"].as_array().cloned().unwrap_or_default();
        let owned = items.iter().any(|r| {
            r["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|o| {
                    o.iter()
                        .any(|o| o["kind"] == "Deployment" && o["name"] == "xorb-api")
                })
                && r["spec"]["replicas"] == 2
        });
        if owned {
            Ok(())
        } else {
            Err(format!("no ReplicaSet owned by the Deployment: {rs}"))
        }
    });
    eventually(&lab, Duration::from_secs(60), || {
        let d = kubectl_json(&lab, &["get", "deployment", "xorb-api"]);
        let generation = d["metadata"]["generation"].as_i64().unwrap_or(0);
        match d["status"]["observedGeneration"].as_i64() {
            Some(observed) if generation >= 1 && observed >= generation => Ok(()),
            other => Err(format!(
                "observedGeneration {other:?}, generation {generation}"
            )),
        }
    });
    // The ReplicaSet controller made the Pods (Pending: nothing runs them yet).
    eventually(&lab, Duration::from_secs(60), || {
        let pods = kubectl_json(&lab, &["get", "pods", "-l", "app=xorb-api"]);
        let n = pods["items"].as_array().map_or(0, |a| a.len());
        if n == 2 {
            Ok(())
        } else {
            Err(format!("{n} pods, want 2"))
        }
    });
    eprintln!("controllers acted in {:.1}s", t0.elapsed().as_secs_f64());

    // A spec change bumps the generation; the controller observes the new one.
    let mut set = lab.kubectl();
    set.args([
        "set",
        "image",
        "deployment/xorb-api",
        "api=xorb/api:v2025.08-rc1",
    ]);
    let (ok, _, err) = run(set, None);
    assert!(ok, "kubectl set image failed: {err}");
    eventually(&lab, Duration::from_secs(60), || {
        let d = kubectl_json(&lab, &["get", "deployment", "xorb-api"]);
        let generation = d["metadata"]["generation"].as_i64().unwrap_or(0);
        match d["status"]["observedGeneration"].as_i64() {
            Some(observed) if generation >= 2 && observed >= generation => Ok(()),
            other => Err(format!(
                "observedGeneration {other:?}, generation {generation}"
            )),
        }
    });
    eventually(&lab, Duration::from_secs(60), || {
        let rs = kubectl_json(&lab, &["get", "replicasets", "-l", "app=xorb-api"]);
        let n = rs["items"].as_array().map_or(0, |a| a.len());
        if n == 2 {
            Ok(())
        } else {
            Err(format!("{n} ReplicaSets after the image change, want 2"))
        }
    });
}

#[test]
fn restricted_token_is_refused_until_a_role_is_bound_and_files_stay_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let lab = start(dir.path());

    // The API server's own answer: 403 with reason Forbidden, for the restricted user only.
    let r = lab
        .get("/api/v1/namespaces/default/pods", LabUser::Restricted)
        .unwrap();
    assert_eq!(r.status, 403, "{}", r.text());
    let status = r.json().expect("a Status object");
    assert_eq!(status["code"], 403);
    assert_eq!(status["reason"], "Forbidden");
    let r = lab
        .get("/api/v1/namespaces/default/pods", LabUser::Admin)
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());

    // kubectl with the restricted kubeconfig: refused, for a write verb too.
    let mut get = lab.kubectl_as(LabUser::Restricted);
    get.args(["get", "pods"]);
    let (ok, _, err) = run(get, None);
    assert!(!ok && err.contains("(Forbidden)"), "{err}");
    let mut create = lab.kubectl_as(LabUser::Restricted);
    create.args(["create", "configmap", "x", "--from-literal=a=b"]);
    let (ok, _, err) = run(create, None);
    assert!(!ok && err.contains("(Forbidden)"), "{err}");

    // Bound later to a Role, the restricted user may do what the Role says, and nothing else.
    let mut role = lab.kubectl();
    role.args([
        "create",
        "role",
        "pod-reader",
        "--verb=get,list",
        "--resource=pods",
    ]);
    let (ok, _, err) = run(role, None);
    assert!(ok, "{err}");
    let mut bind = lab.kubectl();
    bind.args([
        "create",
        "rolebinding",
        "restricted-reads-pods",
        "--role=pod-reader",
        "--user=restricted",
    ]);
    let (ok, _, err) = run(bind, None);
    assert!(ok, "{err}");
    eventually(&lab, Duration::from_secs(30), || {
        let r = lab
            .get("/api/v1/namespaces/default/pods", LabUser::Restricted)
            .unwrap();
        if r.status == 200 {
            Ok(())
        } else {
            Err(format!("still {} after the binding", r.status))
        }
    });
    let mut create = lab.kubectl_as(LabUser::Restricted);
    create.args(["create", "configmap", "x", "--from-literal=a=b"]);
    let (ok, _, err) = run(create, None);
    assert!(!ok && err.contains("(Forbidden)"), "{err}");

    // A minted ServiceAccount token: authenticated as the ServiceAccount, allowed nothing before a binding.
    let mut sa = lab.kubectl();
    sa.args(["create", "serviceaccount", "xorb-operator"]);
    let (ok, _, err) = run(sa, None);
    assert!(ok, "{err}");
    let token = lab
        .mint_service_account_token("default", "xorb-operator", Duration::from_secs(3600))
        .unwrap();
    let sa_kubeconfig = dir.path().join("xorb-operator.kubeconfig");
    lab.write_kubeconfig(&sa_kubeconfig, "xorb-operator", &token)
        .unwrap();
    let mode = std::fs::metadata(&sa_kubeconfig)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let mut who = Command::new(&lab.binaries().kubectl);
    who.arg("--kubeconfig")
        .arg(&sa_kubeconfig)
        .args(["get", "pods"]);
    let (ok, _, err) = run(who, None);
    assert!(
        !ok && err.contains("system:serviceaccount:default:xorb-operator")
            && err.contains("(Forbidden)"),
        "{err}"
    );
    let mut bind = lab.kubectl();
    bind.args([
        "create",
        "rolebinding",
        "operator-reads-pods",
        "--role=pod-reader",
        "--serviceaccount=default:xorb-operator",
    ]);
    let (ok, _, err) = run(bind, None);
    assert!(ok, "{err}");
    eventually(&lab, Duration::from_secs(30), || {
        let mut get = Command::new(&lab.binaries().kubectl);
        get.arg("--kubeconfig")
            .arg(&sa_kubeconfig)
            .args(["get", "pods"]);
        match run(get, None) {
            (true, _, _) => Ok(()),
            (false, _, err) => Err(err),
        }
    });

    // No token on any command line; the files that hold one are 0600.
    for p in lab.processes() {
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", p.pid)).unwrap();
        let cmdline = String::from_utf8_lossy(&cmdline);
        for user in [LabUser::Admin, LabUser::Restricted] {
            assert!(
                !cmdline.contains(lab.token(user)),
                "{}'s arguments hold a token",
                p.name
            );
        }
    }
    for f in [
        "tokens.csv",
        "kubeconfig",
        "restricted.kubeconfig",
        "controller-manager.kubeconfig",
        "pki/apiserver.key",
        "pki/sa.key",
    ] {
        let mode = std::fs::metadata(dir.path().join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
}

#[test]
fn drop_stops_exactly_the_processes_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let lab = start(dir.path());
    let procs = lab.processes();
    let names: Vec<&str> = procs.iter().map(|p| p.name).collect();
    assert_eq!(names, ["etcd", "kube-apiserver", "kube-controller-manager"]);
    assert!(procs.iter().all(|p| p.is_running()));

    // Every listening socket of the lab's processes is on loopback.
    let listening = listening_addresses(&procs.iter().map(|p| p.pid).collect::<Vec<_>>());
    assert!(!listening.is_empty());
    for a in &listening {
        assert!(a.starts_with("127.0.0.1:"), "listens on {a}");
    }

    let url = lab.server_url().to_string();
    let t0 = Instant::now();
    drop(lab);
    eprintln!("lab stopped in {:.1}s", t0.elapsed().as_secs_f64());
    for p in &procs {
        assert!(!p.is_running(), "{} (pid {}) still runs", p.name, p.pid);
        // Reaped as well: no zombie left under our pid.
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", p.pid)) {
            let start: u64 = stat[stat.rfind(')').unwrap() + 2..]
                .split_whitespace()
                .nth(19)
                .unwrap()
                .parse()
                .unwrap();
            assert_ne!(
                start, p.start_time,
                "{} (pid {}) left a zombie",
                p.name, p.pid
            );
        }
    }
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the API server's port still answers"
    );
}

/// The local addresses the given processes listen on (TCP, from /proc/net/tcp{,6} and their fds).
fn listening_addresses(pids: &[u32]) -> Vec<String> {
    let mut inodes = std::collections::HashSet::new();
    for pid in pids {
        if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
            for fd in fds.flatten() {
                if let Ok(target) = std::fs::read_link(fd.path()) {
                    let t = target.to_string_lossy();
                    if let Some(inode) =
                        t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']'))
                    {
                        inodes.insert(inode.to_string());
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address, st (0A = LISTEN), inode
            if f.len() > 9 && f[3] == "0A" && inodes.contains(f[9]) {
                out.push(decode_addr(f[1], v6));
            }
        }
    }
    out
}

fn decode_addr(hex: &str, v6: bool) -> String {
    let (ip, port) = hex.split_once(':').unwrap();
    let port = u16::from_str_radix(port, 16).unwrap();
    if v6 {
        return format!("[{ip}]:{port}");
    }
    let n = u32::from_str_radix(ip, 16).unwrap();
    let b = n.to_le_bytes();
    format!("{}.{}.{}.{}:{port}", b[0], b[1], b[2], b[3])
}

/// The reflect2 swap in scripts/kube-control-plane: with the vendored reflect2 1.0.1 under Go >= 1.18, a merge
/// patch of a Secret panics the API server. Here it is applied, and the server stays up.
#[test]
fn secret_merge_patch_works_on_the_built_api_server() {
    let dir = tempfile::tempdir().unwrap();
    let lab = start(dir.path());
    let mut create = lab.kubectl();
    create.args([
        "create",
        "secret",
        "generic",
        "xorb-db",
        "--from-literal=password=one",
    ]);
    let (ok, _, err) = run(create, None);
    assert!(ok, "kubectl create secret failed: {err}");

    let mut patch = lab.kubectl();
    // "dHdv" is base64 of "two".
    patch.args([
        "patch",
        "secret",
        "xorb-db",
        "--type",
        "merge",
        "-p",
        r#"{"data":{"password":"dHdv"},"metadata":{"labels":{"rotated":"yes"}}}"#,
    ]);
    let (ok, _, err) = run(patch, None);
    assert!(
        ok,
        "kubectl patch secret failed: {err}\n{}",
        lab.log_tails(40)
    );

    let s = kubectl_json(&lab, &["get", "secret", "xorb-db"]);
    assert_eq!(s["data"]["password"], "dHdv");
    assert_eq!(s["metadata"]["labels"]["rotated"], "yes");
    assert!(
        lab.processes().iter().all(|p| p.is_running()),
        "{}",
        lab.log_tails(40)
    );
    assert_eq!(lab.get("/readyz", LabUser::Admin).unwrap().status, 200);
}
