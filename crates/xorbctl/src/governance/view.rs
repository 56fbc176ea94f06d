//! The governance part of `show`, `report` and the dashboard: approvals, checklists and the release tag, read
//! only, judged by the policies the run started with.

use std::fmt::Write as _;

use serde_json::{Value, json};
use xorb_engine::approvals::GovernanceStore;

use crate::governance::checklists::checklist_of;
use crate::governance::policies::Policies;
use crate::settings::RunView;

/// The governance part of `show` and `report`, in Markdown.
pub fn render_markdown(v: &RunView, run_id: &str) -> anyhow::Result<String> {
    let store = GovernanceStore::open_read_only(&v.state_dir)?;
    let rec = store.load(run_id)?;
    let policies = Policies::for_run(&v.policies, &store, run_id)?;
    let mut s = String::new();
    let _ = writeln!(s, "## Approvals\n");
    match &rec.gate {
        None => {
            let _ = writeln!(
                s,
                "No governance record (run started before governance was wired)."
            );
        }
        Some(g) => {
            match &g.severity {
                None => {
                    let _ = writeln!(
                        s,
                        "Severity: none given (no approval gate). Initiator: {}.",
                        g.initiator
                    );
                }
                Some(sev) => {
                    let _ = writeln!(
                        s,
                        "Severity: {sev}. Initiator: {}. Gate: {}.",
                        g.initiator,
                        match (&g.opened_at, &g.opened_by) {
                            (Some(at), Some(by)) =>
                                format!("opened at {} by {by}", at.to_rfc3339()),
                            _ => "not open (waiting for approval)".into(),
                        }
                    );
                }
            }
            if !rec.approvals.is_empty() {
                let _ = writeln!(
                    s,
                    "\n| Who | Role | When | Why | How |\n|---|---|---|---|---|"
                );
                for a in &rec.approvals {
                    let _ = writeln!(
                        s,
                        "| {} | {} | {} | {} | {} |",
                        a.name,
                        a.role,
                        a.at.to_rfc3339(),
                        a.reason.replace('|', "\\|"),
                        a.source
                    );
                }
            }
        }
    }
    let _ = writeln!(s, "\n## Checklists\n");
    for line in checklist_of(&policies, &rec).render().lines() {
        let _ = writeln!(
            s,
            "{}",
            if line.starts_with("  ") {
                format!("-{}", &line[1..])
            } else {
                line.to_string()
            }
        );
    }
    if !rec.tags.is_empty() {
        let _ = writeln!(s, "\n## Release tag\n");
        for t in &rec.tags {
            let _ = writeln!(
                s,
                "{} → {} in {} at {}{}",
                t.tag,
                t.commit,
                t.repo,
                t.at.to_rfc3339(),
                t.pushed_to
                    .as_deref()
                    .map(|r| format!(", pushed to {r}"))
                    .unwrap_or_default()
            );
        }
    }
    Ok(s)
}

pub fn to_json(v: &RunView, run_id: &str) -> anyhow::Result<Value> {
    let store = GovernanceStore::open_read_only(&v.state_dir)?;
    let rec = store.load(run_id)?;
    let policies = Policies::for_run(&v.policies, &store, run_id)?;
    let list = checklist_of(&policies, &rec);
    let open: Vec<&str> = list.open_items().iter().map(|i| i.id.as_str()).collect();
    let mut doc = serde_json::to_value(&rec)?;
    doc["open_items"] = json!(open);
    Ok(doc)
}

/// The governance part of the report's shared model.
pub fn view(v: &RunView, run_id: &str) -> anyhow::Result<xorb_report::model::GovernanceView> {
    // Read-only (a report of a read-only state directory), with the policies the run started with.
    let store = GovernanceStore::open_read_only(&v.state_dir)?;
    let rec = store.load(run_id)?;
    let policies = Policies::for_run(&v.policies, &store, run_id)?;
    let list = checklist_of(&policies, &rec);
    Ok(xorb_report::model::GovernanceView::new(
        &rec,
        &policies.checklists,
        &list,
    ))
}
