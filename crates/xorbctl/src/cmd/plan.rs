//! `xorbctl plan`: the rollback plan with the live diff of every step. Changes nothing.

use xorb_model::exit::Exit;
use xorb_model::redact::Redactor;

use crate::output::Reporter;
use crate::planning::{compute_plan, render_plan};
use crate::settings::Plan;

pub async fn run(s: &Plan, out: &Reporter, red: &Redactor) -> anyhow::Result<Exit> {
    let (plan, _) = compute_plan(&s.locations, &s.request, red).await?;
    // Configuration changes show values, some of them secrets.
    let plan =
        serde_json::from_value(red.redact_json(&serde_json::to_value(&plan)?)).unwrap_or(plan);
    out.result(&plan, render_plan);
    Ok(Exit::Ok)
}
