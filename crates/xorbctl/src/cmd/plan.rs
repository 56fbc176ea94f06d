//! `xorbctl plan`: the rollback plan with the live diff of every step. Changes nothing.

use std::fmt::Write as _;

use xorb_model::exit::Exit;
use xorb_model::redact::Redactor;

use crate::output::Reporter;
use crate::planning::{compute_plan, render_plan};
use crate::settings::Plan;

pub async fn run(s: &Plan, out: &Reporter, red: &Redactor) -> anyhow::Result<Exit> {
    let (plan, _, opened) = compute_plan(&s.locations, &s.request, red).await?;
    // The dry runs send the plan's own values; what is shown is redacted (configuration values may be secrets).
    let diff = opened.live_diff(&plan).await?;
    let plan =
        serde_json::from_value(red.redact_json(&serde_json::to_value(&plan)?)).unwrap_or(plan);
    let Some(diff) = diff else {
        out.result(&plan, render_plan);
        return Ok(Exit::Ok);
    };
    // On Kubernetes the plan comes with what the API server says each step would change.
    let mut doc = serde_json::to_value(&plan)?;
    doc["live_diff"] = red.redact_json(&serde_json::to_value(&diff)?);
    out.result(&doc, |_| {
        let mut text = render_plan(&plan);
        let _ = writeln!(
            text,
            "\nLive diff on the cluster (the API server's dry run, as `kubectl diff`; nothing was changed):"
        );
        for d in &diff {
            let _ = writeln!(text, "  {:<22} {}", d.step, d.object);
            if d.changes.is_empty() {
                let _ = writeln!(text, "      (already as planned)");
            }
            for c in &d.changes {
                let _ = writeln!(text, "      {}", red.redact(c));
            }
        }
        text
    });
    Ok(Exit::Ok)
}
