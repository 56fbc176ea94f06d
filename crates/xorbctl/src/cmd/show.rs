//! `xorbctl show RUN`: one run: its plan, every step's state, the events, governance and notifications.

use std::fmt::Write as _;

use xorb_model::exit::Exit;
use xorb_model::redact::Redactor;

use crate::governance::view;
use crate::output::Reporter;
use crate::settings::Show;

pub fn run(s: &Show, out: &Reporter, red: &Redactor) -> anyhow::Result<Exit> {
    let state_dir = &s.view.state_dir;
    let rec = xorb_engine::load_run(state_dir, &s.id)?;
    let gov_md = view::render_markdown(&s.view, &rec.id)?;
    let mut doc = serde_json::to_value(&rec)?;
    doc["governance"] = view::to_json(&s.view, &rec.id)?;
    let notes = crate::notify::listing(state_dir, &rec.id);
    doc["notifications"] = serde_json::to_value(&notes)?;
    let doc = red.redact_json(&doc);
    out.result(&doc, |_| {
        let r = &rec;
        let mut s = format!(
            "Run {}: {} → {}  {}\n",
            r.id, r.plan.from, r.plan.to, r.status
        );
        for st in &r.steps {
            let _ = writeln!(
                s,
                "  {:<22} {:<12} attempts {}  {}",
                st.spec.id,
                st.state.as_str(),
                st.attempts,
                st.outcome
                    .as_ref()
                    .map(|o| o.to_string())
                    .unwrap_or_default()
            );
        }
        let _ = writeln!(
            s,
            "Next: {}",
            xorb_engine::next_action(&r.id, &r.plan, &r.status)
        );
        let _ = write!(s, "\n{gov_md}");
        s.push_str(&crate::notify::render_listing(&notes));
        red.redact_string(&s)
    });
    Ok(Exit::Ok)
}
