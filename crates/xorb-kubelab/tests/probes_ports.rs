//! Container ports on loopback and the probes that use them, on the real control plane, judged with kubectl.

mod support;

use std::time::Duration;

use support::{cmdline, setup};

/// An HTTP server on the address given as its first argument; GET answers 200 while `$MARKS/ready` exists.
const SERVER: &str = r#"
import http.server, os, sys
host, port = sys.argv[1].rsplit(":", 1)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = os.path.exists(os.path.join(os.environ["MARKS"], "ready"))
        self.send_response(200 if ok else 503)
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.HTTPServer((host, int(port)), H).serve_forever()
"#;

fn condition(p: &serde_json::Value, ty: &str) -> String {
    p["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == ty))
        .and_then(|c| c["status"].as_str())
        .unwrap_or_default()
        .to_string()
}

#[test]
fn ports_are_remapped_and_probes_drive_readiness_and_restarts() {
    let s = setup();
    let marks = s._dir.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let indent = |t: &str| t.replace('\n', "\n            ");
    let pod = format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: web
spec:
  terminationGracePeriodSeconds: 2
  containers:
    - name: app
      image: xorb-test/python:1
      ports:
        - {{name: http, containerPort: 8000}}
      env:
        - {{name: MARKS, value: "{marks}"}}
        - {{name: LISTEN, value: "0.0.0.0:8000"}}
      args:
        - -c
        - |
            {server}
        - $(LISTEN)
      readinessProbe:
        httpGet: {{path: /ready, port: http}}
        periodSeconds: 1
        failureThreshold: 1
      livenessProbe:
        exec:
          command: ["/bin/sh", "-c", "test ! -e {marks}/dead"]
        periodSeconds: 1
        failureThreshold: 2
---
apiVersion: v1
kind: Pod
metadata:
  name: tcp
spec:
  containers:
    - name: app
      image: xorb-test/python:1
      ports:
        - {{containerPort: 8000}}
      env:
        - {{name: MARKS, value: "{marks}"}}
      args: ["-c", {server_json}, ":8000"]
      readinessProbe:
        tcpSocket: {{port: 8000}}
        periodSeconds: 1
"#,
        marks = marks.display(),
        server = indent(SERVER),
        server_json = serde_json::to_string(SERVER).unwrap(),
    );
    s.ok(&["apply", "-f", "-"], Some(&pod));

    // Two Pods declare the same containerPort: each gets a loopback port of its own, recorded on the Pod, and
    // the process was told that port (in its args, through $(LISTEN) and through a literal ":8000").
    let mut real = Vec::new();
    for name in ["web", "tcp"] {
        s.eventually(Duration::from_secs(60), || {
            let p = s.json(&["get", "pod", name]);
            let running = p["status"]["containerStatuses"][0]["state"]["running"].is_object();
            let ann = p["metadata"]["annotations"][xorb_kubelab::agent::PORTS_ANNOTATION].clone();
            if running && ann.is_string() && p["status"]["podIP"] == "127.0.0.1" {
                Ok(())
            } else {
                Err(format!("{p}"))
            }
        });
        let p = s.json(&["get", "pod", name]);
        let ann: serde_json::Value = serde_json::from_str(
            p["metadata"]["annotations"][xorb_kubelab::agent::PORTS_ANNOTATION]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        let addr = ann["8000"].as_str().unwrap().to_string();
        assert!(addr.starts_with("127.0.0.1:"), "{ann}");
        assert_ne!(addr, "127.0.0.1:8000");
        let pid = s
            .agent()
            .processes()
            .into_iter()
            .find(|p| p.pod == name)
            .unwrap()
            .pid;
        assert!(cmdline(pid).ends_with(&addr), "{}", cmdline(pid));
        real.push(addr);
    }
    assert_ne!(real[0], real[1]);

    // The tcp Pod is Ready as soon as its port accepts; web's httpGet answers 503 until the mark exists.
    s.ok(
        &["wait", "--for=condition=Ready", "pod/tcp", "--timeout=60s"],
        None,
    );
    s.eventually(Duration::from_secs(30), || {
        let p = s.json(&["get", "pod", "web"]);
        let cs = &p["status"]["containerStatuses"][0];
        if cs["started"] == true && cs["ready"] == false && condition(&p, "Ready") == "False" {
            Ok(())
        } else {
            Err(format!("{}", p["status"]))
        }
    });
    std::fs::write(marks.join("ready"), "").unwrap();
    s.ok(
        &["wait", "--for=condition=Ready", "pod/web", "--timeout=60s"],
        None,
    );
    std::fs::remove_file(marks.join("ready")).unwrap();
    s.ok(
        &[
            "wait",
            "--for=condition=Ready=false",
            "pod/web",
            "--timeout=60s",
        ],
        None,
    );
    let p = s.json(&["get", "pod", "web"]);
    assert_eq!(
        p["status"]["containerStatuses"][0]["restartCount"], 0,
        "{p}"
    );

    // The liveness probe fails twice: the container is restarted, with the reason in its last state.
    std::fs::write(marks.join("dead"), "").unwrap();
    s.eventually(Duration::from_secs(60), || {
        let p = s.json(&["get", "pod", "web"]);
        let cs = &p["status"]["containerStatuses"][0];
        let msg = cs["lastState"]["terminated"]["message"]
            .as_str()
            .unwrap_or_default();
        if cs["restartCount"].as_i64().unwrap_or(0) >= 1 && msg.contains("liveness") {
            Ok(())
        } else {
            Err(format!("{}", p["status"]))
        }
    });
    std::fs::remove_file(marks.join("dead")).unwrap();
    std::fs::write(marks.join("ready"), "").unwrap();
    s.ok(
        &["wait", "--for=condition=Ready", "pod/web", "--timeout=60s"],
        None,
    );
    // Its restart kept the Pod's port: the annotation is the Pod's, not the process's.
    let p = s.json(&["get", "pod", "web"]);
    let pid = s
        .agent()
        .processes()
        .into_iter()
        .find(|p| p.pod == "web")
        .unwrap()
        .pid;
    assert!(cmdline(pid).ends_with(&real[0]), "{}", cmdline(pid));
    assert!(
        p["status"]["containerStatuses"][0]["restartCount"]
            .as_i64()
            .unwrap()
            >= 1
    );
}
