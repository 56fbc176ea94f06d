//! `xorbctl abort RUN --by NAME`: give a run up (it cannot be resumed afterwards), on the signed record.

use xorb_model::exit::Exit;
use xorb_model::redact::Redactor;

use crate::governance::trail::Trail;
use crate::output::Reporter;
use crate::settings::Abort;

pub async fn run(s: &Abort, out: &Reporter, red: &Redactor) -> anyhow::Result<Exit> {
    let (state_dir, run, by) = (&s.state_dir, s.id.as_str(), s.by.as_str());
    let before = xorb_engine::load_run(state_dir, run)?.status;
    let r = xorb_engine::abort_run(state_dir, run, by)?;
    if r.aborted {
        Trail::new(state_dir, red).abort(&r.run_id, by, &before);
    }
    // On Kubernetes the run's Lease goes back now (a running process gives it back itself when it stops).
    let lease = if r.aborted && r.running_pid.is_none() {
        crate::target::after_abort(state_dir, &r.run_id).await?
    } else {
        None
    };
    out.result(&r, |r| {
        if r.aborted {
            format!(
                "Run {} aborted by {by}.{}{}\n",
                r.run_id,
                r.running_pid
                    .map(|p| format!(" Process {p} stops before its next step."))
                    .unwrap_or_default(),
                if lease == Some(true) {
                    " The namespace's rollback Lease it kept is given back."
                } else {
                    ""
                }
            )
        } else {
            format!("Run {} was not aborted: it is {}.\n", r.run_id, r.status)
        }
    });
    Ok(if r.aborted { Exit::Ok } else { Exit::Refused })
}
