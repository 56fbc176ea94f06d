//! `xorb-bench-baseline`: the floor `bench/http.sh` compares xorb-svc against.
//!
//!     xorb-bench-baseline [ADDR]      # default 127.0.0.1:0 (a free port); loopback only
//!
//! Serves `GET /api/v1/health` with a small constant JSON body from one trivial axum handler on
//! the same tokio runtime flavour as xorb-svc (multi-threaded `#[tokio::main]`), so the difference
//! in a benchmark is what the platform does per request, not the HTTP stack. Prints
//! `listening on IP:PORT` on one line of standard output once bound, then serves until SIGTERM
//! or SIGINT.

use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

async fn health() -> Json<Value> {
    Json(json!({"status": "healthy", "role": "baseline"}))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // No signal handlers: serve until killed.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let arg = std::env::args().nth(1);
    let addr: SocketAddr = match arg.as_deref().unwrap_or("127.0.0.1:0").parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("xorb-bench-baseline: expected IP:PORT ({e})");
            return ExitCode::from(2);
        }
    };
    if !addr.ip().is_loopback() {
        eprintln!("xorb-bench-baseline: {addr} is not a loopback address; refusing");
        return ExitCode::from(2);
    }
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("xorb-bench-baseline: cannot listen on {addr}: {e}");
            return ExitCode::from(1);
        }
    };
    let bound = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("xorb-bench-baseline: {e}");
            return ExitCode::from(1);
        }
    };
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on {bound}");
        let _ = out.flush();
    }
    let app = Router::new().route("/api/v1/health", get(health));
    match axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xorb-bench-baseline: {e}");
            ExitCode::from(1)
        }
    }
}
