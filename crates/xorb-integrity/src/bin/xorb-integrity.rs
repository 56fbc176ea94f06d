//! A small front end for benchmarks and scripts, connecting through libpq's PG* variables (PGPASSWORD or
//! PGPASSFILE: never a password on the command line). Prints JSON.
//!
//!     xorb-integrity full [--snapshot DIR] [--parallelism N] [--tables a,b]
//!     xorb-integrity loss --before DIR [--parallelism N] [--tables a,b] [--list-limit N]
//!     xorb-integrity quick

use std::path::PathBuf;
use std::process::ExitCode;

use xorb_integrity::ScanOptions;

const USAGE: &str = "usage: xorb-integrity full [--snapshot DIR] | loss --before DIR | quick \
                     [--parallelism N] [--tables a,b] [--list-limit N]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, msg)) => {
            eprintln!("xorb-integrity: {msg}");
            ExitCode::from(code)
        }
    }
}

fn run(args: &[String]) -> Result<(), (u8, String)> {
    let usage = |m: &str| (2, format!("{m}\n{USAGE}"));
    let cmd = args.first().ok_or_else(|| usage("no command"))?;
    let mut opts = ScanOptions::default();
    let mut before: Option<PathBuf> = None;
    let mut it = args[1..].iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| usage(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--snapshot" => opts.snapshot_dir = Some(value()?.into()),
            "--before" => before = Some(value()?.into()),
            "--parallelism" => {
                opts.parallelism = value()?.parse().map_err(|_| usage("--parallelism N"))?
            }
            "--list-limit" => {
                opts.list_limit = value()?.parse().map_err(|_| usage("--list-limit N"))?
            }
            "--tables" => opts.tables = Some(value()?.split(',').map(str::to_string).collect()),
            other => return Err(usage(&format!("unknown argument {other}"))),
        }
    }
    let fail =
        |e: xorb_integrity::IntegrityError| (if e.is_bad_input() { 2 } else { 4 }, e.to_string());
    let cfg = xorb_integrity::config_from_env().map_err(fail)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| (1, format!("cannot start the async runtime: {e}")))?;
    let json = rt.block_on(async {
        match cmd.as_str() {
            "full" => xorb_integrity::full(&cfg, &opts)
                .await
                .map(|r| serde_json::to_string_pretty(&r)),
            "loss" => {
                let before = before.ok_or_else(|| usage("loss needs --before DIR"))?;
                xorb_integrity::loss(&cfg, &before, &opts)
                    .await
                    .map(|r| serde_json::to_string_pretty(&r))
            }
            "quick" => {
                let (client, conn) = cfg
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(|e| (4, format!("cannot connect: {e}")))?;
                tokio::spawn(conn);
                xorb_integrity::quick(&client)
                    .await
                    .map(|r| serde_json::to_string_pretty(&r))
            }
            other => return Err(usage(&format!("unknown command {other}"))),
        }
        .map_err(fail)
    })?;
    println!("{}", json.map_err(|e| (1, e.to_string()))?);
    Ok(())
}
