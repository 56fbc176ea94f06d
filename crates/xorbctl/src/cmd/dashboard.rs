//! `xorbctl dashboard`: a read-only web page that follows the runs of a state directory live. The page is the HTML
//! report's own rendering (verdict, summary, timeline, phases), refreshed in place by a small inline script that
//! polls a JSON endpoint built from the journal; nothing is fetched from anywhere else.
//!
//! Loopback by default. On any other address every request needs a token, generated at start and printed once
//! (the `X-Xorb-Token` header, or `?token=` for the first page load); the token is never logged.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html as HtmlBody, IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use xorb_model::redact::Redactor;
use xorb_report::escape::esc;
use xorb_report::html::{Html, page};

use xorb_model::exit::Exit;

use crate::errors::UsageError;
use crate::output::Reporter;
use crate::settings::{Dashboard, RunView};

/// Who may read the dashboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Loopback: this machine only.
    Local,
    /// Another address: requests must carry this token.
    Token(String),
}

impl Access {
    /// Loopback (127.0.0.0/8, ::1) is open; anything else gets a token from `new_token`.
    pub fn for_addr(addr: &SocketAddr, new_token: impl FnOnce() -> String) -> Access {
        if is_loopback(addr.ip()) {
            Access::Local
        } else {
            Access::Token(new_token())
        }
    }

    /// Whether a request with this header / query token may read.
    pub fn allows(&self, header: Option<&str>, query: Option<&str>) -> bool {
        match self {
            Access::Local => true,
            Access::Token(t) => header.or(query).is_some_and(|given| same(given, t)),
        }
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Compares by digest, so the time taken says nothing about how much of the token was right.
fn same(a: &str, b: &str) -> bool {
    Sha256::digest(a.as_bytes()) == Sha256::digest(b.as_bytes())
}

/// A loopback dashboard answers only requests addressed to a loopback name: a web page elsewhere cannot rebind
/// its own host name to 127.0.0.1 and read the runs through the visitor's browser.
pub fn host_allowed(access: &Access, host: Option<&str>) -> bool {
    if matches!(access, Access::Token(_)) {
        return true;
    }
    let Some(host) = host else { return false };
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok_and(is_loopback)
}

fn parse_listen(s: &str) -> Result<SocketAddr, UsageError> {
    s.parse().map_err(|_| {
        UsageError(format!(
            "--listen {s:?}: expected ADDRESS:PORT with a numeric address, e.g. 127.0.0.1:8790 or [::1]:8790"
        ))
    })
}

fn token() -> anyhow::Result<String> {
    use std::io::Read as _;
    let mut b = [0u8; 24];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(hex::encode(b))
}

struct App {
    view: RunView,
    state_dir: PathBuf,
    access: Access,
    red: Redactor,
}

type Shared = Arc<App>;

/// The page's script: polls the run's JSON and swaps the rendered fragment in place (no reload).
const SCRIPT: &str = include_str!("dashboard.js");

pub async fn run(s: &Dashboard, out: &Reporter, red: &Redactor) -> anyhow::Result<Exit> {
    let addr = parse_listen(&s.listen)?;
    let access = Access::for_addr(&addr, || token().unwrap_or_default());
    if access == Access::Token(String::new()) {
        anyhow::bail!("cannot read /dev/urandom for the dashboard's token");
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("dashboard: cannot listen on {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    let host = if bound.is_ipv6() {
        format!("[{}]:{}", bound.ip(), bound.port())
    } else {
        bound.to_string()
    };
    let url = format!("http://{host}/");
    let token = match &access {
        Access::Token(t) => Some(t.as_str()),
        Access::Local => None,
    };
    // The token is printed once, to whoever started the dashboard; it is never logged.
    out.result(&json!({ "url": url, "token": token }), |_| {
        let mut text = format!(
            "Dashboard of {} at {url} (read-only; Ctrl-C stops it)\n",
            s.view.state_dir.display()
        );
        if let Some(t) = token {
            text.push_str(&format!(
                "Not a loopback address: every request needs the token (header X-Xorb-Token, or open {url}?token=…).\nToken (shown once): {t}\n"
            ));
        }
        text
    });
    let app = Arc::new(App {
        state_dir: s.view.state_dir.clone(),
        view: s.view.clone(),
        access,
        red: red.clone(),
    });
    let router = axum::Router::new()
        .route("/", get(index))
        .route("/run/{id}", get(run_page))
        .route("/api/runs", get(api_runs))
        .route("/api/latest", get(api_latest))
        .route("/api/run/{id}", get(api_run))
        .with_state(app.clone())
        .layer(axum::middleware::from_fn_with_state(app, guard));
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(Exit::Ok)
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

async fn guard(
    State(app): State<Shared>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if !host_allowed(&app.access, host) {
        return (StatusCode::FORBIDDEN, "dashboard: requests must be addressed to a loopback name (127.0.0.1, ::1, localhost)\n").into_response();
    }
    let given = headers.get("x-xorb-token").and_then(|h| h.to_str().ok());
    if !app.access.allows(given, q.token.as_deref()) {
        return (StatusCode::UNAUTHORIZED, "dashboard: this address needs the token printed when the dashboard started (header X-Xorb-Token or ?token=)\n").into_response();
    }
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

/// One run's live view: the fragment the page swaps in, and what tells the script whether it changed.
fn live(app: &App, run: &str) -> anyhow::Result<Value> {
    let rec = xorb_engine::load_run(&app.state_dir, run)?;
    let doc = crate::document::document(&app.view, &rec)?;
    let fragment = app
        .red
        .redact_string(&Html::new(&app.red).live_fragment(&doc));
    let version = hex::encode(&Sha256::digest(fragment.as_bytes())[..8]);
    Ok(json!({
        "run": rec.id,
        "status": rec.status.kind(),
        "finished": !matches!(rec.status, xorb_model::plan::RunStatus::Running),
        "title": app.red.redact_string(&format!("XORB {} — {}", rec.id, doc.report.completion.headline)),
        "version": version,
        "fragment": fragment,
    }))
}

fn has_journal(app: &App) -> bool {
    app.state_dir
        .join(xorb_engine::journal::JOURNAL_FILE)
        .exists()
}

fn latest_id(app: &App) -> anyhow::Result<Option<String>> {
    if !has_journal(app) {
        return Ok(None);
    }
    Ok(xorb_engine::list_runs(&app.state_dir)?
        .into_iter()
        .next()
        .map(|r| r.run.id))
}

fn error(e: anyhow::Error, red: &Redactor) -> Response {
    let msg = red.redact_string(&format!("{e:#}"));
    let code = if e.chain().any(|c| {
        matches!(
            c.downcast_ref::<xorb_engine::EngineError>(),
            Some(xorb_engine::EngineError::Journal(
                xorb_engine::JournalError::RunNotFound(_)
            ))
        ) || matches!(
            c.downcast_ref::<xorb_engine::JournalError>(),
            Some(xorb_engine::JournalError::RunNotFound(_))
        )
    }) {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    (code, axum::Json(json!({ "error": msg }))).into_response()
}

/// The journal is SQLite: read it off the async workers.
async fn blocking<T: Send + 'static>(
    app: Shared,
    f: impl FnOnce(&App) -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(move || f(&app))
        .await
        .map_err(|e| anyhow::anyhow!("dashboard worker: {e}"))?
}

async fn api_run(State(app): State<Shared>, Path(id): Path<String>) -> Response {
    match blocking(app.clone(), move |a| live(a, &id)).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => error(e, &app.red),
    }
}

async fn api_latest(State(app): State<Shared>) -> Response {
    let r = blocking(app.clone(), |a| match latest_id(a)? {
        None => Ok(json!({ "run": null, "finished": false, "version": "none", "title": "XORB dashboard — no run yet", "fragment": waiting_fragment(a) })),
        Some(id) => live(a, &id),
    })
    .await;
    match r {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => error(e, &app.red),
    }
}

async fn api_runs(State(app): State<Shared>) -> Response {
    let r = blocking(app.clone(), |a| {
        if !has_journal(a) {
            return Ok(json!([]));
        }
        Ok(a.red
            .redact_json(&serde_json::to_value(xorb_engine::list_runs(
                &a.state_dir,
            )?)?))
    })
    .await;
    match r {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => error(e, &app.red),
    }
}

fn waiting_fragment(app: &App) -> String {
    format!(
        "<section id=\"verdict\" class=\"banner open\" role=\"status\" data-status=\"none\"><p class=\"verdict\">… NO RUN YET</p><p class=\"headline\">Waiting for a rollback in <code>{}</code>; this page follows it as soon as it starts.</p></section>",
        esc(&app.red.redact_string(&app.state_dir.display().to_string()))
    )
}

/// The page: the first render inline (readable even before the script runs), then live updates.
fn shell(app: &App, data: &Value, follow: &str) -> Response {
    let title = data["title"].as_str().unwrap_or("XORB dashboard");
    let body = format!(
        "<header><p class=\"kicker\">XORB dashboard · live · read-only</p><h1>{}</h1><p id=\"live-state\" data-follow=\"{}\" data-version=\"{}\">Live: waiting for the first update…</p></header>\n<main id=\"live\" aria-live=\"polite\">{}</main>",
        esc(&app.red.redact_string(&app.state_dir.display().to_string())),
        esc(follow),
        esc(data["version"].as_str().unwrap_or("")),
        data["fragment"].as_str().unwrap_or("")
    );
    HtmlBody(page(title, &body, Some(SCRIPT))).into_response()
}

async fn index(State(app): State<Shared>) -> Response {
    let r = blocking(app.clone(), |a| match latest_id(a)? {
        None => Ok(json!({ "version": "none", "title": "XORB dashboard — no run yet", "fragment": waiting_fragment(a) })),
        Some(id) => live(a, &id),
    })
    .await;
    match r {
        Ok(v) => shell(&app, &v, "api/latest"),
        Err(e) => error(e, &app.red),
    }
}

async fn run_page(State(app): State<Shared>, Path(id): Path<String>) -> Response {
    let id2 = id.clone();
    match blocking(app.clone(), move |a| live(a, &id2)).await {
        Ok(v) => {
            let follow = format!("../api/run/{}", v["run"].as_str().unwrap_or(&id));
            shell(&app, &v, &follow)
        }
        Err(e) => error(e, &app.red),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn loopback_needs_no_token_and_anything_else_does() {
        for a in [
            "127.0.0.1:8790",
            "127.0.0.2:1",
            "[::1]:8790",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert_eq!(
                Access::for_addr(&addr(a), || panic!("no token for {a}")),
                Access::Local,
                "{a}"
            );
        }
        for a in ["0.0.0.0:8790", "10.1.2.3:80", "[::]:8790", "192.168.1.5:1"] {
            assert_eq!(
                Access::for_addr(&addr(a), || "t0k".into()),
                Access::Token("t0k".into()),
                "{a}"
            );
        }
    }

    #[test]
    fn a_token_address_refuses_requests_without_the_right_token() {
        let a = Access::Token("s3cret-token".into());
        assert!(!a.allows(None, None));
        assert!(!a.allows(Some("s3cret-tokeN"), None));
        assert!(!a.allows(Some(""), Some("wrong")));
        assert!(a.allows(Some("s3cret-token"), None));
        assert!(a.allows(None, Some("s3cret-token")));
        assert!(Access::Local.allows(None, None));
    }

    #[test]
    fn a_loopback_dashboard_answers_only_loopback_host_names() {
        let l = Access::Local;
        for h in [
            "127.0.0.1:8790",
            "localhost:8790",
            "LOCALHOST",
            "[::1]:8790",
            "127.0.0.2",
        ] {
            assert!(host_allowed(&l, Some(h)), "{h}");
        }
        for h in [
            "evil.example:8790",
            "10.0.0.1:8790",
            "127.0.0.1.evil.example",
            "",
        ] {
            assert!(!host_allowed(&l, Some(h)), "{h}");
        }
        assert!(!host_allowed(&l, None));
        assert!(host_allowed(
            &Access::Token("t".into()),
            Some("dash.internal:8790")
        ));
    }

    #[test]
    fn listen_addresses_are_checked_with_a_clear_message() {
        assert_eq!(parse_listen("127.0.0.1:0").unwrap(), addr("127.0.0.1:0"));
        let e = parse_listen("localhost:80").unwrap_err().to_string();
        assert!(
            e.contains("--listen \"localhost:80\"") && e.contains("ADDRESS:PORT"),
            "{e}"
        );
    }

    #[test]
    fn the_page_script_is_allowed_by_its_hash_only() {
        let p = page("t", "<main></main>", Some(SCRIPT));
        let csp = xorb_report::html::csp_hash(SCRIPT);
        assert!(
            p.contains(&esc(&format!("script-src {csp}; connect-src 'self'"))),
            "{p}"
        );
        assert_eq!(p.matches("<script>").count(), 1);
    }
}
