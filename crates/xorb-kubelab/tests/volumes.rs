//! Volumes on the node agent: configMap and secret files, emptyDir, and a StatefulSet's claim whose data outlives
//! its Pod; the container reaches each through its mountPath, translated in its args.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use support::setup;

#[test]
fn config_secret_and_empty_dir_volumes_are_files_at_their_mount_paths() {
    let s = setup();
    let marks = s._dir.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    s.ok(
        &[
            "create",
            "configmap",
            "conf",
            "--from-literal=a.conf=port 1",
            "--from-literal=b=unused",
        ],
        None,
    );
    s.ok(
        &[
            "create",
            "secret",
            "generic",
            "creds",
            "--from-literal=password=s3cret",
        ],
        None,
    );
    let pod = format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: vol
spec:
  volumes:
    - name: conf
      configMap:
        name: conf
        items: [{{key: a.conf, path: app/a.conf, mode: 0640}}]
    - {{name: creds, secret: {{secretName: creds}}}}
    - {{name: scratch, emptyDir: {{}}}}
  containers:
    - name: app
      image: xorb-test/shell:1
      volumeMounts:
        - {{name: conf, mountPath: /etc/xorb}}
        - {{name: creds, mountPath: /run/secrets/xorb, readOnly: true}}
        - {{name: scratch, mountPath: /scratch}}
      env:
        - {{name: CONF, value: /etc/xorb/app/a.conf}}
      args:
        - -c
        - |
          cat "$CONF" > {marks}/conf
          ls /etc/xorb/app > {marks}/conf-files
          stat -c %a /etc/xorb/app/a.conf /run/secrets/xorb/password > {marks}/modes
          cp /run/secrets/xorb/password /scratch/copy && cat /scratch/copy > {marks}/scratch
          exec sleep 3600
"#,
        marks = marks.display()
    );
    s.ok(&["apply", "-f", "-"], Some(&pod));
    s.ok(
        &["wait", "--for=condition=Ready", "pod/vol", "--timeout=60s"],
        None,
    );
    s.eventually(Duration::from_secs(30), || {
        match std::fs::read_to_string(marks.join("scratch")) {
            Ok(t) if t == "s3cret" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    assert_eq!(
        std::fs::read_to_string(marks.join("conf")).unwrap(),
        "port 1"
    );
    // Only the item asked for; its mode as given, the secret's owner-only.
    assert_eq!(
        std::fs::read_to_string(marks.join("conf-files"))
            .unwrap()
            .trim(),
        "a.conf"
    );
    assert_eq!(
        std::fs::read_to_string(marks.join("modes"))
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["640", "600"]
    );
}

#[test]
fn a_stateful_set_claim_is_bound_and_its_data_outlives_the_pod() {
    let s = setup();
    let marks = s._dir.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let sts = format!(
        r#"
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: store
spec:
  replicas: 1
  serviceName: store
  selector:
    matchLabels: {{app: store}}
  template:
    metadata:
      labels: {{app: store}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: app
          image: xorb-test/shell:1
          volumeMounts:
            - {{name: data, mountPath: /var/lib/store}}
          args:
            - -c
            - |
              echo start >> /var/lib/store/log
              wc -l < /var/lib/store/log > {marks}/count.tmp && mv {marks}/count.tmp {marks}/count
              exec sleep 3600
  volumeClaimTemplates:
    - metadata: {{name: data}}
      spec:
        accessModes: [ReadWriteOnce]
        resources: {{requests: {{storage: 1Gi}}}}
"#,
        marks = marks.display()
    );
    s.ok(&["apply", "-f", "-"], Some(&sts));
    s.ok(
        &["rollout", "status", "statefulset/store", "--timeout=120s"],
        None,
    );
    let count = || {
        std::fs::read_to_string(marks.join("count"))
            .map(|t| t.trim().to_string())
            .unwrap_or_default()
    };
    s.eventually(Duration::from_secs(30), || {
        if count() == "1" { Ok(()) } else { Err(count()) }
    });
    // The controller made the claim; the agent reported it Bound, as a provisioner would.
    s.eventually(Duration::from_secs(30), || {
        let pvc = s.json(&["get", "pvc", "data-store-0"]);
        if pvc["status"]["phase"] == "Bound" && pvc["status"]["capacity"]["storage"] == "1Gi" {
            Ok(())
        } else {
            Err(format!("{}", pvc["status"]))
        }
    });

    // A new Pod of the same claim finds the data of the old one.
    let old_uid = s.json(&["get", "pod", "store-0"])["metadata"]["uid"].clone();
    s.ok(
        &["delete", "pod", "store-0", "--wait=true", "--timeout=60s"],
        None,
    );
    s.eventually(Duration::from_secs(60), || {
        let p = s.json(&["get", "pods", "-l", "app=store"]);
        let fresh = p["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["metadata"]["uid"] != old_uid && p["status"]["phase"] == "Running");
        if fresh && count() == "2" {
            Ok(())
        } else {
            Err(format!(
                "count {}; pods {}",
                count(),
                p["items"].as_array().unwrap().len()
            ))
        }
    });
    let dir = s._dir.path().join("node/pvc/default/data-store-0");
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
    assert!(
        dir.join("log").is_file() && mode & 0o777 != 0,
        "{}",
        dir.display()
    );
}
