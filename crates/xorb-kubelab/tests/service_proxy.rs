//! The userspace Service proxy on the real control plane: a stable loopback port per Service port, forwarding to
//! the Ready Pods it selects across a rolling update, or to a selector-less Service's Endpoints; and the
//! `<NAME>_SERVICE_HOST`/`_PORT` variables that point Pods at it.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use support::{Setup, setup};
use xorb_kubelab::proxy::PROXY_ANNOTATION;

/// Answers every GET with `$POD $VERSION`.
const SERVER: &str = r#"
import http.server, os, sys
host, port = sys.argv[1].rsplit(":", 1)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = (os.environ["POD"] + " " + os.environ["VERSION"]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.HTTPServer((host, int(port)), H).serve_forever()
"#;

fn web(version: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {{app: web}}
  strategy:
    rollingUpdate: {{maxSurge: 1, maxUnavailable: 0}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
        - name: app
          image: xorb-test/python:1
          ports:
            - {{name: http, containerPort: 8000}}
          env:
            - {{name: VERSION, value: "{version}"}}
            - name: POD
              valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
          args: ["-c", {server}, "0.0.0.0:8000"]
          readinessProbe:
            httpGet: {{path: /, port: http}}
            periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {{app: web}}
  ports:
    - {{name: http, port: 80, targetPort: http}}
"#,
        server = serde_json::to_string(SERVER).unwrap()
    )
}

fn proxy_addr(s: &Setup, service: &str, port: &str) -> String {
    let mut addr = String::new();
    s.eventually(Duration::from_secs(30), || {
        let svc = s.json(&["get", "service", service]);
        let ann = svc["metadata"]["annotations"][PROXY_ANNOTATION]
            .as_str()
            .and_then(|a| serde_json::from_str::<serde_json::Value>(a).ok());
        match ann.as_ref().and_then(|a| a[port].as_str()) {
            Some(a) => {
                addr = a.to_string();
                Ok(())
            }
            None => Err(format!("{}", svc["metadata"])),
        }
    });
    addr
}

fn get(addr: &str) -> Result<String, String> {
    let mut c = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"GET / HTTP/1.0\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    c.read_to_string(&mut out).map_err(|e| e.to_string())?;
    match out.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.0 200") => Ok(body.to_string()),
        _ => Err(format!("not a 200: {out:?}")),
    }
}

#[test]
fn a_service_port_forwards_to_ready_pods_across_a_rolling_update() {
    let s = setup();
    s.ok(&["apply", "-f", "-"], Some(&web("v1")));
    s.ok(
        &["rollout", "status", "deployment/web", "--timeout=120s"],
        None,
    );
    let addr = proxy_addr(&s, "web", "http");
    // Round robin over both Ready Pods.
    let mut pods = std::collections::BTreeSet::new();
    s.eventually(Duration::from_secs(30), || {
        let body = get(&addr)?;
        pods.insert(body.split(' ').next().unwrap_or_default().to_string());
        if pods.len() == 2 {
            Ok(())
        } else {
            Err(format!("answered by {pods:?}"))
        }
    });

    // A rolling update: every request meanwhile is answered, and the same port ends on the new Pods.
    s.ok(&["apply", "-f", "-"], Some(&web("v2")));
    let t0 = Instant::now();
    let mut answers = 0;
    loop {
        let body = get(&addr).unwrap_or_else(|e| panic!("during the rollout, {addr}: {e}"));
        answers += 1;
        let (_, ok, _) = {
            let (ok, out, err) = s.kubectl(
                &["rollout", "status", "deployment/web", "--watch=false"],
                None,
            );
            (
                out.clone(),
                ok && out.contains("successfully rolled out"),
                err,
            )
        };
        if ok && body.ends_with("v2") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no rollout to v2 after 120 s; last answer {body}"
        );
    }
    assert!(answers > 1);
    assert_eq!(proxy_addr(&s, "web", "http"), addr);
    s.eventually(Duration::from_secs(30), || {
        let bodies: Vec<String> = (0..4).filter_map(|_| get(&addr).ok()).collect();
        if bodies.len() == 4 && bodies.iter().all(|b| b.ends_with("v2")) {
            Ok(())
        } else {
            Err(format!("{bodies:?}"))
        }
    });
}

#[test]
fn a_service_without_selector_forwards_to_its_endpoints_and_pods_get_service_variables() {
    let s = setup();
    // Something outside the cluster, as PostgreSQL is in the stack.
    let outside = TcpListener::bind("127.0.0.1:0").unwrap();
    let outside_port = outside.local_addr().unwrap().port();
    let manifest = format!(
        r#"
apiVersion: v1
kind: Service
metadata:
  name: outside-db
spec:
  ports:
    - {{name: pg, port: 5432}}
---
apiVersion: v1
kind: Endpoints
metadata:
  name: outside-db
subsets:
  - addresses: [{{ip: {alias}}}]
    ports: [{{name: pg, port: {outside_port}}}]
"#,
        alias = xorb_kubelab::proxy::HOST_ALIAS_IP
    );
    s.ok(&["apply", "-f", "-"], Some(&manifest));
    let addr = proxy_addr(&s, "outside-db", "pg");
    let server = std::thread::spawn(move || {
        let (mut c, _) = outside.accept().unwrap();
        c.write_all(b"hello from outside").unwrap();
    });
    let mut c = TcpStream::connect(&addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = String::new();
    c.read_to_string(&mut got).unwrap();
    server.join().unwrap();
    assert_eq!(got, "hello from outside");

    // A Pod started after the Service was proxied sees it in its environment.
    let marks = s._dir.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let pod = format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: client
spec:
  containers:
    - name: app
      image: xorb-test/shell:1
      env:
        - {{name: DB, value: "$(OUTSIDE_DB_SERVICE_HOST):$(OUTSIDE_DB_SERVICE_PORT_PG)"}}
      args: ["-c", "echo \"$DB $OUTSIDE_DB_SERVICE_PORT\" > {marks}/env; sleep 3600"]
"#,
        marks = marks.display()
    );
    s.ok(&["apply", "-f", "-"], Some(&pod));
    let port = addr.rsplit_once(':').unwrap().1.to_string();
    s.eventually(Duration::from_secs(60), || {
        match std::fs::read_to_string(marks.join("env")) {
            Ok(t) if t.trim() == format!("{addr} {port}") => Ok(()),
            other => Err(format!("{other:?}, want {addr} {port}")),
        }
    });
}
