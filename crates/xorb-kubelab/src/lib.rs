//! A real Kubernetes control plane that tests can start (test support, not product): Debian's `etcd`, and
//! `kube-apiserver` and `kube-controller-manager` 1.20.2 built from Debian's `kubernetes` source package by
//! `scripts/kube-control-plane`, all on 127.0.0.1 and free ports, with their own CA and static tokens.
//!
//! ```no_run
//! let dir = tempfile::tempdir().unwrap();
//! let lab = xorb_kubelab::KubeLab::start(dir.path()).unwrap();
//! let out = lab.kubectl().args(["get", "namespaces"]).output().unwrap();
//! assert!(out.status.success());
//! // Dropping `lab` stops exactly the three processes it started.
//! ```
//!
//! Nothing runs Pods yet (no kubelet, no scheduler): the controllers create ReplicaSets and Pods, which stay
//! Pending. Design: docs/design/kubernetes-lab.md.

pub mod agent;
mod http;
mod pki;
mod process;
pub mod proxy;
pub mod stack;

use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;

pub use http::Response;
pub use process::LabProcess;
use process::{LabChild, free_port, tail};

/// The Kubernetes version `scripts/kube-control-plane` builds and the lab runs.
pub const KUBE_VERSION: &str = "1.20.2";

/// The Service range given to the API server. Addresses from it are only allocated, never bound: every socket of
/// the lab is on 127.0.0.1.
pub const SERVICE_CLUSTER_IP_RANGE: &str = "10.96.0.0/16";

const START_DEADLINE: Duration = Duration::from_secs(120);
const STOP_GRACE: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("{what} not found at {}: {hint}", path.display())]
    MissingBinary {
        what: &'static str,
        path: PathBuf,
        hint: &'static str,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("certificates: {0}")]
    Pki(String),
    #[error("{what} exited while the lab started ({status}); last lines of {}:\n{tail}", log.display())]
    Exited {
        what: &'static str,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("{what} not ready after {}s ({last}); last lines of {}:\n{tail}", waited.as_secs(), log.display())]
    NotReady {
        what: &'static str,
        waited: Duration,
        last: String,
        log: PathBuf,
        tail: String,
    },
    #[error("request to the API server: {0}")]
    Request(String),
}

impl LabError {
    fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}

/// Where the binaries are: the control plane in the version's cache directory (`XORB_KUBE_CACHE`, default
/// `/var/cache/xorb/kube`, then [`KUBE_VERSION`]), `etcd` from Debian's `etcd-server`.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
    pub kubectl: PathBuf,
}

/// The cache directory `scripts/kube-control-plane` fills.
pub fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XORB_KUBE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/xorb/kube"));
    base.join(KUBE_VERSION)
}

const BUILD_HINT: &str = "run scripts/kube-control-plane (as root; it builds Kubernetes 1.20.2 from Debian's source \
                          package into this directory, about 12 minutes the first time)";

fn executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

impl Binaries {
    /// The binaries in [`cache_dir`] and Debian's etcd.
    pub fn locate() -> Result<Self, LabError> {
        Self::locate_in(&cache_dir())
    }

    /// The binaries in `cache` (a version's directory) and Debian's etcd.
    pub fn locate_in(cache: &Path) -> Result<Self, LabError> {
        let found = |what: &'static str, path: PathBuf, hint: &'static str| {
            if executable(&path) {
                Ok(path)
            } else {
                Err(LabError::MissingBinary { what, path, hint })
            }
        };
        Ok(Self {
            kube_apiserver: found("kube-apiserver", cache.join("kube-apiserver"), BUILD_HINT)?,
            kube_controller_manager: found(
                "kube-controller-manager",
                cache.join("kube-controller-manager"),
                BUILD_HINT,
            )?,
            kubectl: found("kubectl", cache.join("kubectl"), BUILD_HINT)?,
            etcd: found(
                "etcd",
                PathBuf::from("/usr/bin/etcd"),
                "install Debian's etcd-server (scripts/kube-control-plane does)",
            )?,
        })
    }
}

/// The identities the lab's token file knows, decided at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabUser {
    /// `xorb-admin`, in `system:masters`.
    Admin,
    /// `restricted`, in no group but `system:authenticated`: RBAC allows it nothing until a Role is bound to it.
    Restricted,
}

impl LabUser {
    pub fn name(self) -> &'static str {
        match self {
            LabUser::Admin => "xorb-admin",
            LabUser::Restricted => "restricted",
        }
    }

    fn index(self) -> usize {
        match self {
            LabUser::Admin => 0,
            LabUser::Restricted => 1,
        }
    }
}

/// A running control plane. Dropping it stops exactly the processes it started (controller-manager, API server,
/// etcd: SIGTERM, a grace, SIGKILL, reaped) and removes etcd's data.
pub struct KubeLab {
    dir: PathBuf,
    binaries: Binaries,
    server_url: String,
    apiserver_port: u16,
    etcd_port: u16,
    tls: Arc<rustls::ClientConfig>,
    /// Indexed by [`LabUser::index`].
    tokens: [String; 2],
    kubeconfigs: [PathBuf; 2],
    ca_path: PathBuf,
    children: Vec<LabChild>,
    // Declared after `children`: dropped (deleted) after the processes are stopped.
    _etcd_data: tempfile::TempDir,
}

fn random_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex_encode(&bytes)
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `contents` to `path` readable by its owner only, from the first byte on (the mode is set at creation,
/// and again in case the file was there before).
fn write_private(path: &Path, contents: &[u8]) -> Result<(), LabError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| LabError::io(format!("cannot write {}", path.display()), e))?;
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .and_then(|()| f.write_all(contents))
        .map_err(|e| LabError::io(format!("cannot write {}", path.display()), e))
}

fn write_public(path: &Path, contents: &[u8]) -> Result<(), LabError> {
    fs::write(path, contents)
        .map_err(|e| LabError::io(format!("cannot write {}", path.display()), e))
}

/// A kubeconfig (JSON, which kubectl and kube-rs read as YAML) for one user with a bearer token.
fn kubeconfig(server: &str, ca_pem: &str, user: &str, token: &str) -> Vec<u8> {
    let ca_data = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let context = format!("xorb-kubelab-{user}");
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "xorb-kubelab", "cluster": {"server": server, "certificate-authority-data": ca_data}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": context, "context": {"cluster": "xorb-kubelab", "user": user, "namespace": "default"}}],
        "current-context": context,
    });
    let mut out = serde_json::to_vec_pretty(&doc).unwrap_or_default();
    out.push(b'\n');
    out
}

/// The name of etcd's data directory starts with it (see [`KubeLab::etcd_data_dir`]).
pub(crate) const ETCD_DATA_PREFIX: &str = "xorb-kubelab-etcd-";

/// etcd's data: in memory when /dev/shm is there (etcd fsyncs a lot; the data lives as long as the lab).
fn etcd_data_dir() -> Result<tempfile::TempDir, LabError> {
    let builder = {
        let mut b = tempfile::Builder::new();
        b.prefix(ETCD_DATA_PREFIX);
        b
    };
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(d) = builder.tempdir_in(shm)
    {
        return Ok(d);
    }
    builder
        .tempdir()
        .map_err(|e| LabError::io("cannot create etcd's data directory", e))
}

impl KubeLab {
    /// Starts etcd, the API server and the controller-manager; returns once the API server's `/readyz` answers
    /// 200 and the controller-manager has acted (the `default` ServiceAccount exists). `dir` receives the PKI,
    /// the token file, the kubeconfigs and the logs (`logs/`); it is created if missing.
    pub fn start(dir: &Path) -> Result<Self, LabError> {
        Self::start_with(dir, Binaries::locate()?)
    }

    /// [`KubeLab::start`] with binaries found elsewhere.
    pub fn start_with(dir: &Path, binaries: Binaries) -> Result<Self, LabError> {
        let dir = dir.to_path_buf();
        let pki_dir = dir.join("pki");
        let logs = dir.join("logs");
        for d in [&dir, &pki_dir, &logs] {
            fs::create_dir_all(d)
                .map_err(|e| LabError::io(format!("cannot create {}", d.display()), e))?;
        }
        fs::set_permissions(&pki_dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| LabError::io(format!("cannot restrict {}", pki_dir.display()), e))?;

        // The first address of the Service range: the `kubernetes` Service's (allocated, never bound).
        let service_ip = IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1));
        let pki = pki::generate(service_ip)?;
        let ca_path = pki_dir.join("ca.crt");
        write_public(&ca_path, pki.ca_pem.as_bytes())?;
        write_public(
            &pki_dir.join("apiserver.crt"),
            pki.serving_cert_pem.as_bytes(),
        )?;
        write_private(
            &pki_dir.join("apiserver.key"),
            pki.serving_key_pem.as_bytes(),
        )?;
        write_private(&pki_dir.join("sa.key"), pki.sa_key_pem.as_bytes())?;
        write_public(&pki_dir.join("sa.pub"), pki.sa_pub_pem.as_bytes())?;
        let tls = http::tls_config(&pki.ca_der).map_err(LabError::Pki)?;

        // Static tokens (token,user,uid,"groups"): never on a command line, only in 0600 files.
        // The controller-manager acts as itself for every controller (--use-service-account-credentials=false:
        // per-controller credentials would need the service-account token controller, which is off), and the
        // bootstrap role of system:kube-controller-manager only covers what it does with those credentials; so
        // it is in system:masters, as the admin.
        let tokens = [random_token(), random_token()];
        let cm_token = random_token();
        let token_file = dir.join("tokens.csv");
        write_private(
            &token_file,
            format!(
                "{},{},{},\"system:masters\"\n{},{},{}\n{},system:kube-controller-manager,system:kube-controller-manager,\"system:masters\"\n",
                tokens[0],
                LabUser::Admin.name(),
                LabUser::Admin.name(),
                tokens[1],
                LabUser::Restricted.name(),
                LabUser::Restricted.name(),
                cm_token,
            )
            .as_bytes(),
        )?;

        let etcd_port = free_port()?;
        let etcd_peer_port = free_port()?;
        let apiserver_port = free_port()?;
        let server_url = format!("https://127.0.0.1:{apiserver_port}");

        let kubeconfigs = [dir.join("kubeconfig"), dir.join("restricted.kubeconfig")];
        for user in [LabUser::Admin, LabUser::Restricted] {
            write_private(
                &kubeconfigs[user.index()],
                &kubeconfig(&server_url, &pki.ca_pem, user.name(), &tokens[user.index()]),
            )?;
        }
        let cm_kubeconfig = dir.join("controller-manager.kubeconfig");
        write_private(
            &cm_kubeconfig,
            &kubeconfig(
                &server_url,
                &pki.ca_pem,
                "system:kube-controller-manager",
                &cm_token,
            ),
        )?;

        let mut lab = KubeLab {
            dir: dir.clone(),
            binaries,
            server_url,
            apiserver_port,
            etcd_port,
            tls,
            tokens,
            kubeconfigs,
            ca_path,
            children: Vec::new(),
            _etcd_data: etcd_data_dir()?,
        };
        // From here on an error drops `lab`, which stops whatever had started.

        // etcd
        let client_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer_port}");
        let mut etcd = Command::new(&lab.binaries.etcd);
        etcd.arg("--name=xorb-kubelab")
            .arg(format!("--data-dir={}", lab._etcd_data.path().display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=xorb-kubelab={peer_url}"))
            .arg("--initial-cluster-state=new")
            .arg("--logger=zap")
            .arg("--log-outputs=stderr");
        lab.spawn("etcd", etcd, &logs.join("etcd.log"))?;
        lab.wait_until("etcd", |lab| {
            match http::plain(lab.etcd_port, "/health", REQUEST_TIMEOUT) {
                Ok(r) if r.status == 200 && r.text().contains("true") => Ok(()),
                Ok(r) => Err(format!(
                    "/health answered {}: {}",
                    r.status,
                    r.text().trim()
                )),
                Err(e) => Err(e.to_string()),
            }
        })?;

        // kube-apiserver
        let mut api = Command::new(&lab.binaries.kube_apiserver);
        api.arg(format!("--etcd-servers={client_url}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--secure-port={apiserver_port}"))
            .arg("--insecure-port=0")
            .arg(format!("--cert-dir={}", dir.join("apiserver").display()))
            .arg(format!(
                "--tls-cert-file={}",
                pki_dir.join("apiserver.crt").display()
            ))
            .arg(format!(
                "--tls-private-key-file={}",
                pki_dir.join("apiserver.key").display()
            ))
            .arg(format!("--token-auth-file={}", token_file.display()))
            .arg("--anonymous-auth=false")
            .arg("--authorization-mode=RBAC")
            .arg(format!(
                "--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"
            ))
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg(format!(
                "--service-account-key-file={}",
                pki_dir.join("sa.pub").display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                pki_dir.join("sa.key").display()
            ))
            .arg("--disable-admission-plugins=ServiceAccount")
            .arg("--endpoint-reconciler-type=none")
            .arg("--profiling=false");
        lab.spawn("kube-apiserver", api, &logs.join("kube-apiserver.log"))?;
        lab.wait_until("kube-apiserver", |lab| {
            match lab.get("/readyz", LabUser::Admin) {
                Ok(r) if r.status == 200 => Ok(()),
                Ok(r) => Err(format!(
                    "/readyz answered {}: {}",
                    r.status,
                    r.text().trim()
                )),
                Err(e) => Err(e.to_string()),
            }
        })?;

        // kube-controller-manager: nothing to serve (secure and insecure ports off), so nothing listens.
        let mut cm = Command::new(&lab.binaries.kube_controller_manager);
        cm.arg(format!("--kubeconfig={}", cm_kubeconfig.display()))
            .arg("--controllers=*,-nodelifecycle,-serviceaccount-token")
            .arg("--leader-elect=false")
            .arg("--bind-address=127.0.0.1")
            .arg("--secure-port=0")
            .arg("--port=0")
            .arg(format!(
                "--cert-dir={}",
                dir.join("controller-manager").display()
            ))
            .arg(format!("--root-ca-file={}", lab.ca_path.display()))
            .arg("--use-service-account-credentials=false")
            .arg("--profiling=false");
        lab.spawn(
            "kube-controller-manager",
            cm,
            &logs.join("kube-controller-manager.log"),
        )?;
        lab.wait_until("kube-controller-manager", |lab| {
            match lab.get(
                "/api/v1/namespaces/default/serviceaccounts/default",
                LabUser::Admin,
            ) {
                Ok(r) if r.status == 200 => Ok(()),
                Ok(r) => Err(format!(
                    "no default ServiceAccount yet (its serviceaccount controller creates it): {}",
                    r.status
                )),
                Err(e) => Err(e.to_string()),
            }
        })?;
        Ok(lab)
    }

    fn spawn(&mut self, name: &'static str, cmd: Command, log: &Path) -> Result<(), LabError> {
        let child = LabChild::spawn(name, cmd, log)?;
        self.children.push(child);
        Ok(())
    }

    /// Polls `probe` until it succeeds, every child of the lab still running, within [`START_DEADLINE`].
    fn wait_until(
        &mut self,
        what: &'static str,
        probe: impl Fn(&Self) -> Result<(), String>,
    ) -> Result<(), LabError> {
        let started = Instant::now();
        let mut delay = Duration::from_millis(50);
        loop {
            for c in &mut self.children {
                if let Some(status) = c.exited() {
                    return Err(LabError::Exited {
                        what: c.info.name,
                        status,
                        log: c.info.log.clone(),
                        tail: tail(&c.info.log, 30),
                    });
                }
            }
            let last = match probe(self) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if started.elapsed() >= START_DEADLINE {
                let log = self
                    .children
                    .iter()
                    .find(|c| c.info.name == what)
                    .map(|c| c.info.log.clone())
                    .unwrap_or_default();
                return Err(LabError::NotReady {
                    what,
                    waited: started.elapsed(),
                    last,
                    tail: tail(&log, 30),
                    log,
                });
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(500));
        }
    }

    /// `https://127.0.0.1:PORT`.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// The admin's kubeconfig (0600), for `kubectl --kubeconfig` and kube-rs.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfigs[LabUser::Admin.index()]
    }

    /// A user's kubeconfig (0600).
    pub fn kubeconfig_path_for(&self, user: LabUser) -> &Path {
        &self.kubeconfigs[user.index()]
    }

    /// A user's bearer token, for a client in this process. Never put it on a command line (process arguments
    /// are visible to every user of the machine): give child processes a kubeconfig.
    pub fn token(&self, user: LabUser) -> &str {
        &self.tokens[user.index()]
    }

    /// The lab CA's certificate (PEM).
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    /// The directory given to [`KubeLab::start`].
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// etcd's data (a temporary directory, on /dev/shm when there is one), deleted when the lab is dropped: a
    /// stopper that had to kill the lab's owner deletes it.
    pub fn etcd_data_dir(&self) -> &Path {
        self._etcd_data.path()
    }

    pub fn binaries(&self) -> &Binaries {
        &self.binaries
    }

    /// Debian's kubectl of the same version, with `--kubeconfig` set to the admin's.
    pub fn kubectl(&self) -> Command {
        self.kubectl_as(LabUser::Admin)
    }

    pub fn kubectl_as(&self, user: LabUser) -> Command {
        let mut cmd = Command::new(&self.binaries.kubectl);
        cmd.arg("--kubeconfig").arg(self.kubeconfig_path_for(user));
        cmd
    }

    /// The processes the lab started, in start order (etcd, kube-apiserver, kube-controller-manager).
    pub fn processes(&self) -> Vec<LabProcess> {
        self.children.iter().map(|c| c.info.clone()).collect()
    }

    /// Mints a bearer token for the ServiceAccount `namespace/name` (which must exist) with the TokenRequest API,
    /// valid for `ttl` (the API server may shorten it; at least 10 minutes). Bind Roles to
    /// `system:serviceaccount:NAMESPACE:NAME`, or to the ServiceAccount as a subject.
    pub fn mint_service_account_token(
        &self,
        namespace: &str,
        name: &str,
        ttl: Duration,
    ) -> Result<String, LabError> {
        let body = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": ttl.as_secs().max(600)},
        });
        let path = format!("/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token");
        let body = serde_json::to_vec(&body).unwrap_or_default();
        let r = self.request(
            "POST",
            &path,
            LabUser::Admin,
            Some(("application/json", &body)),
        )?;
        if r.status != 201 && r.status != 200 {
            return Err(LabError::Request(format!(
                "POST {path}: {} {}",
                r.status,
                r.text().trim()
            )));
        }
        r.json()
            .and_then(|v| v["status"]["token"].as_str().map(str::to_string))
            .ok_or_else(|| LabError::Request(format!("POST {path}: no status.token in the answer")))
    }

    /// Writes a kubeconfig (0600) for this lab with `token` as `user`'s bearer token, for a child process (a
    /// token minted by [`KubeLab::mint_service_account_token`], say).
    pub fn write_kubeconfig(&self, path: &Path, user: &str, token: &str) -> Result<(), LabError> {
        let ca_pem = fs::read_to_string(&self.ca_path)
            .map_err(|e| LabError::io(format!("cannot read {}", self.ca_path.display()), e))?;
        write_private(path, &kubeconfig(&self.server_url, &ca_pem, user, token))
    }

    /// The last `lines` lines of each process's log, for a failing test to print.
    pub fn log_tails(&self, lines: usize) -> String {
        self.children
            .iter()
            .map(|c| {
                format!(
                    "--- {} ({}) ---\n{}\n",
                    c.info.name,
                    c.info.log.display(),
                    tail(&c.info.log, lines)
                )
            })
            .collect()
    }

    /// A GET to the API server as `user`; the status code is the caller's to judge.
    pub fn get(&self, path: &str, user: LabUser) -> Result<Response, LabError> {
        self.request("GET", path, user, None)
    }

    /// One request to the API server as `user` (`body`: content type and bytes).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        user: LabUser,
        body: Option<(&str, &[u8])>,
    ) -> Result<Response, LabError> {
        let req = http::Request {
            method,
            path,
            bearer: Some(self.token(user)),
            body,
        };
        http::tls(&self.tls, self.apiserver_port, &req, REQUEST_TIMEOUT)
            .map_err(|e| LabError::Request(format!("{method} {path}: {e}")))
    }
}

impl Drop for KubeLab {
    fn drop(&mut self) {
        // Reverse start order: the clients of the API server first, etcd last.
        for c in self.children.iter_mut().rev() {
            c.stop(STOP_GRACE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_are_0600_even_when_they_existed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        fs::write(&p, "old").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&p, b"new").unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read_to_string(&p).unwrap(), "new");
    }

    #[test]
    fn kubeconfig_holds_server_ca_and_token() {
        let k: serde_json::Value =
            serde_json::from_slice(&kubeconfig("https://127.0.0.1:1", "PEM", "u", "tok")).unwrap();
        assert_eq!(k["current-context"], "xorb-kubelab-u");
        assert_eq!(k["clusters"][0]["cluster"]["server"], "https://127.0.0.1:1");
        assert_eq!(k["users"][0]["user"]["token"], "tok");
        assert_eq!(
            k["clusters"][0]["cluster"]["certificate-authority-data"],
            "UEVN"
        );
    }

    #[test]
    fn missing_binary_says_what_where_and_what_to_run() {
        let e = LabError::MissingBinary {
            what: "kube-apiserver",
            path: PathBuf::from("/nowhere/kube-apiserver"),
            hint: BUILD_HINT,
        };
        let text = e.to_string();
        assert!(text.contains("kube-apiserver not found at /nowhere/kube-apiserver"));
        assert!(text.contains("run scripts/kube-control-plane"));
    }

    #[test]
    fn an_empty_cache_names_the_first_missing_binary_and_the_script() {
        let empty = tempfile::tempdir().unwrap();
        let e = Binaries::locate_in(empty.path()).unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with(&format!(
                "kube-apiserver not found at {}",
                empty.path().join("kube-apiserver").display()
            )),
            "{text}"
        );
        assert!(text.contains("run scripts/kube-control-plane"), "{text}");
        // Not executable counts as missing.
        for b in ["kube-apiserver", "kube-controller-manager", "kubectl"] {
            fs::write(empty.path().join(b), "").unwrap();
        }
        let text = Binaries::locate_in(empty.path()).unwrap_err().to_string();
        assert!(text.starts_with("kube-apiserver not found"), "{text}");
    }

    #[test]
    fn tokens_are_random_and_long() {
        let (a, b) = (random_token(), random_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
    }

    #[test]
    fn certificates_are_accepted_by_rustls() {
        let p = pki::generate(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1))).unwrap();
        http::tls_config(&p.ca_der).unwrap();
        assert!(p.serving_key_pem.contains("PRIVATE KEY"));
        assert!(p.sa_pub_pem.contains("PUBLIC KEY"));
    }
}
