//! Headless Chromium driven through chromedriver's WebDriver HTTP API, both from Debian's packages (nothing is
//! downloaded). Each `Browser` has its own chromedriver on a free loopback port and a fresh profile; the flags
//! keep Chromium from reaching for the internet (background networking, component updates, sync, QUIC).

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::common::*;

pub const FLAGS: [&str; 8] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

fn free_port() -> u16 {
    xorb_local::process::free_port().unwrap()
}

/// Where the tests keep screenshots and pages for people to look at: `target/browser-artifacts/`.
pub fn artifacts_dir() -> PathBuf {
    let d = repo().join("target/browser-artifacts");
    std::fs::create_dir_all(&d).unwrap();
    d
}

impl Browser {
    pub async fn start() -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is missing: run scripts/install-deps (Debian's chromium-driver)");
        let http = reqwest::Client::new();
        let status = format!("http://127.0.0.1:{port}/status");
        eventually(
            "chromedriver to answer",
            Duration::from_secs(30),
            || async {
                let r = http.get(&status).send().await.ok()?;
                let v: Value = r.json().await.ok()?;
                (v["value"]["ready"] == true).then_some(())
            },
        )
        .await;
        let profile = tempfile::Builder::new()
            .prefix("xorb-chromium-")
            .tempdir()
            .unwrap();
        let mut args: Vec<String> = FLAGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        args.push("--window-size=1280,1000".into());
        args.push("--hide-scrollbars".into());
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args},
            "goog:loggingPrefs": {"performance": "ALL", "browser": "ALL"}
        }}});
        let r = answer(
            http.post(format!("http://127.0.0.1:{port}/session"))
                .json(&caps),
        )
        .await;
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {r:#}"))
            .to_string();
        Browser {
            driver,
            port,
            session,
            http,
            _profile: profile,
        }
    }

    fn url(&self, path: &str) -> String {
        format!(
            "http://127.0.0.1:{}/session/{}{path}",
            self.port, self.session
        )
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let r = answer(self.http.post(self.url(path)).json(&body)).await;
        if r["value"]["error"].is_string() {
            panic!("WebDriver {path}: {r:#}");
        }
        r["value"].clone()
    }

    pub async fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    /// Runs `script` (a function body; `return` gives the value) in the page.
    pub async fn js(&self, script: &str) -> Value {
        self.post("/execute/sync", json!({ "script": script, "args": [] }))
            .await
    }

    /// Polls `script` until it returns something other than null/false.
    pub async fn wait_for(&self, what: &str, within: Duration, script: &str) -> Value {
        eventually(what, within, || async {
            let v = self.js(script).await;
            (!v.is_null() && v != Value::Bool(false)).then_some(v)
        })
        .await
    }

    /// A screenshot of the whole page (the window grown to the document's height), kept in `artifacts_dir()`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let h = self
            .js("return Math.ceil(document.documentElement.scrollHeight);")
            .await
            .as_u64()
            .unwrap_or(1000)
            .clamp(600, 12000);
        self.post("/window/rect", json!({ "width": 1280, "height": h }))
            .await;
        let r = answer(self.http.get(self.url("/screenshot"))).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["value"].as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        let path = artifacts_dir().join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
        path
    }

    /// What pages requested so far: (the requesting document's URL, the URL requested), from
    /// Network.requestWillBeSent in the performance log. Chromium's own pages (its new-tab page) appear too, as
    /// chrome:// documents; callers filter on their page's URL.
    pub async fn requests(&self) -> Vec<(String, String)> {
        self.log("performance")
            .await
            .iter()
            .filter_map(|e| serde_json::from_str::<Value>(e["message"].as_str()?).ok())
            .filter(|m| m["message"]["method"] == "Network.requestWillBeSent")
            .filter_map(|m| {
                let p = &m["message"]["params"];
                Some((
                    p["documentURL"].as_str()?.to_string(),
                    p["request"]["url"].as_str()?.to_string(),
                ))
            })
            .collect()
    }

    /// The console's messages (CSP violations are reported there).
    pub async fn console(&self) -> Vec<String> {
        self.log("browser")
            .await
            .iter()
            .filter_map(|e| e["message"].as_str().map(String::from))
            .collect()
    }

    async fn log(&self, kind: &str) -> Vec<Value> {
        self.post("/se/log", json!({ "type": kind }))
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for Browser {
    /// Ends the session (chromedriver stops its Chromium) over a plain socket, since drop cannot await, then
    /// stops the chromedriver this test started.
    fn drop(&mut self) {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = write!(
                s,
                "DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
                self.session, self.port
            );
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// chromedriver's JSON answer to a request.
async fn answer(req: reqwest::RequestBuilder) -> Value {
    req.send().await.unwrap().json().await.unwrap()
}

/// `file://` URL of a local page.
pub fn file_url(p: &Path) -> String {
    format!("file://{}", p.canonicalize().unwrap().display())
}
