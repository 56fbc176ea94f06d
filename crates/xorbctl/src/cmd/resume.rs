//! `xorbctl resume RUN [--confirm STEP] [--mark-done STEP]`: continue a run that crashed, was killed, failed or
//! waits for a confirmation (`crate::execution::resume`).

use xorb_model::exit::Exit;
use xorb_model::redact::Redactor;

use crate::output::Reporter;
use crate::settings::Resume;

pub async fn run(s: &Resume, out: &Reporter, red: &Redactor) -> anyhow::Result<Exit> {
    crate::execution::resume(&s.run, out, red, &s.id, &s.confirm, &s.mark_done).await
}
