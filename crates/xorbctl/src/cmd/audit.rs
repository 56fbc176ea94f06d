//! `xorbctl audit verify [--since 1h]`: prove the audit trail whole, or name the first entry that was changed,
//! removed or reordered; then the trail against the runs the journal and the disk know (an erased trail).
//! `xorbctl audit platform [--since 1h]`: the platform's own audit log, as phase 5's `audit-log` check reads it.

use xorb_model::exit::Exit;

use crate::errors::UsageError;
use crate::output::Reporter;
use crate::settings::{AuditPlatform, AuditVerify};
use crate::target;

/// Exit 5 when the audit log does not verify, as `integrity --critical` does for damaged data.
pub async fn platform(s: &AuditPlatform, out: &Reporter) -> anyhow::Result<Exit> {
    let since = xorb_model::policy::parse_window(&s.since)
        .map_err(|e| UsageError(e.replace("checks.audit_window", "--since")))?;
    let state_dir = &s.locations.state_dir;
    let paths = target::paths(&s.locations)?;
    let st = target::stack_state(state_dir)?;
    let release = xorb_model::release::Release::load_named(&paths.releases_root, &st.release)?;
    let runner = target::runner(state_dir, paths, release);
    // What the check writes goes to a scratch directory; it reads the runs' preserved chains, never a run's own.
    let scratch = state_dir.join(format!("audit-platform-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let res = runner
        .run_check_for("audit-log", &scratch, Some(since))
        .await;
    let _ = std::fs::remove_dir_all(&scratch);
    let (ok, line) = match res {
        Ok(d) => (true, d),
        Err(e) => (false, e),
    };
    out.result(&serde_json::json!({ "ok": ok, "detail": line }), |v| {
        format!("{}\n", v["detail"].as_str().unwrap_or_default())
    });
    Ok(if ok { Exit::Ok } else { Exit::Unhealthy })
}

pub fn verify(s: &AuditVerify, out: &Reporter) -> anyhow::Result<Exit> {
    let state_dir = &s.state_dir;
    let since = s.since.as_deref().map(parse_since).transpose()?;
    let dir = state_dir.join("audit");
    let key = xorb_audit::load_public_key(&dir.join("audit-signing-key.pub.pem"))?;
    // The last entry recorded in the journal must still be there: that catches a cut-off tail.
    let checkpoint = xorb_engine::audit_checkpoint::latest(state_dir)?
        .map(|(seq, hash)| xorb_audit::Checkpoint { seq, hash });
    let has_checkpoint = checkpoint.is_some();
    let report = xorb_audit::verify_with(
        &dir.join("audit.jsonl"),
        &key,
        &xorb_audit::VerifyOptions { since, checkpoint },
    )?;
    // The chain is whole; now the trail against the runs the stack knows of (an erased trail or journal).
    let trail_runs = if report.entries > 0 {
        xorb_audit::read_entries(&dir.join("audit.jsonl"))?
            .into_iter()
            .filter_map(|e| e.run_id)
            .collect()
    } else {
        Default::default()
    };
    let journal_present = state_dir.join(xorb_engine::journal::JOURNAL_FILE).exists();
    let witnesses = xorb_audit::Witnesses {
        journal_runs: if journal_present {
            xorb_engine::list_runs(state_dir)?
                .into_iter()
                .map(|r| r.run.id)
                .collect()
        } else {
            Default::default()
        },
        disk_runs: xorb_engine::disk_runs::run_dirs(state_dir)
            .into_iter()
            .collect(),
        checkpoint_recorded: has_checkpoint,
        journal_present,
    };
    xorb_audit::cross_check(report.entries, &trail_runs, &witnesses)?;
    out.result(&report.to_string(), |s| format!("{s}\n"));
    Ok(Exit::Ok)
}

/// "1h", "30m", "2d", "90s" → that long ago.
fn parse_since(text: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    let bad = || {
        UsageError(format!(
            "--since {text:?}: use a number and a unit, like 30m, 1h or 2d"
        ))
    };
    let (n, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
    let n: i64 = n.parse().map_err(|_| bad())?;
    // The checked forms: `--since 99999999999d` is out of chrono's range and must be a usage error, not a panic.
    let d = match unit {
        "s" => chrono::Duration::try_seconds(n),
        "m" => chrono::Duration::try_minutes(n),
        "h" => chrono::Duration::try_hours(n),
        "d" => chrono::Duration::try_days(n),
        _ => return Err(bad().into()),
    };
    d.and_then(|d| chrono::Utc::now().checked_sub_signed(d))
        .ok_or_else(|| {
            UsageError(format!(
                "--since {text:?} reaches before the earliest representable date"
            ))
            .into()
        })
}
