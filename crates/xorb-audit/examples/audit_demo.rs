//! Try the audit chain by hand (docs/design/audit-chain.md):
//!
//! ```sh
//! cargo run -p xorb-audit --example audit_demo -- write /tmp/audit-demo     # appends three entries
//! cargo run -p xorb-audit --example audit_demo -- verify /tmp/audit-demo [RFC3339-since]
//! ```

use chrono::{DateTime, Utc};
use serde_json::json;
use xorb_audit::{
    AuditLog, LOG_FILE, NewEntry, PUBLIC_KEY_FILE, load_public_key, public_key_fingerprint, verify,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mode, dir) = match args.as_slice() {
        [m, d, ..] => (m.as_str(), std::path::PathBuf::from(d)),
        _ => return Err("usage: audit_demo write|verify DIR [SINCE]".into()),
    };
    match mode {
        "write" => {
            let mut log = AuditLog::open(&dir)?;
            let run = "run-demo";
            log.append(
                NewEntry::new("alice", "rollback.start")
                    .run(run)
                    .detail(json!({"from": "v2025.08", "to": "v2025.07-stable", "severity": "P1"})),
            )?;
            log.append(
                NewEntry::new("bob", "approval.granted")
                    .run(run)
                    .detail(json!({"role": "team_lead", "reason": "error rate 12% since deploy"})),
            )?;
            let last = log.append(
                NewEntry::new("xorbctl", "step.done")
                    .run(run)
                    .detail(json!({"step": "api.image", "phase": 2})),
            )?;
            println!("appended up to seq {} (hash {})", last.seq, last.hash);
            println!(
                "public key fingerprint {}",
                public_key_fingerprint(&log.public_key())
            );
        }
        "verify" => {
            let since = args
                .get(2)
                .map(|s| DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc)))
                .transpose()?;
            let key = load_public_key(&dir.join(PUBLIC_KEY_FILE))?;
            match verify(&dir.join(LOG_FILE), &key, since) {
                Ok(report) => println!("{report}"),
                Err(e) => {
                    println!("{e}");
                    std::process::exit(1);
                }
            }
        }
        _ => return Err("usage: audit_demo write|verify DIR [SINCE]".into()),
    }
    Ok(())
}
