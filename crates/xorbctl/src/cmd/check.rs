//! `xorbctl check RUN ITEM --by NAME`: a person confirms a checklist item the run cannot prove.

use serde_json::json;
use xorb_engine::approvals::{GovernanceStore, TickRecord};
use xorb_governance::{Operators, Ticker};
use xorb_model::exit::Exit;
use xorb_model::redact::Redactor;

use crate::errors::{bad, refused};
use crate::governance::checklists::checklist_of;
use crate::governance::clock::now;
use crate::governance::policies::Policies;
use crate::governance::trail::Trail;
use crate::output::Reporter;
use crate::settings::Check;

/// Longest operator name `check --by` accepts (names are recorded in the journal and the audit trail).
const MAX_OPERATOR_NAME: usize = 64;

/// A checklist item is confirmed by a person the operators policy knows, by name.
fn check_operator(operators: &Operators, by: &str) -> anyhow::Result<()> {
    let n = by.chars().count();
    if n == 0 || n > MAX_OPERATOR_NAME {
        return Err(bad(format!(
            "--by: an operator's name has 1 to {MAX_OPERATOR_NAME} characters, this one {n}"
        )));
    }
    if !operators.operators.contains_key(by) {
        let known: Vec<&str> = operators.operators.keys().map(String::as_str).collect();
        return Err(bad(format!(
            "--by {by:?} is not an operator in {} (operators: {}); add them there first",
            operators.source,
            known.join(", ")
        )));
    }
    Ok(())
}

pub fn run(s: &Check, out: &Reporter, red: &Redactor) -> anyhow::Result<Exit> {
    let (item, by) = (s.item.as_str(), s.by.as_str());
    let trail = Trail::new(&s.state_dir, red);
    let rec = xorb_engine::load_run(&s.state_dir, &s.id)?;
    let mut store = GovernanceStore::open(&s.state_dir)?;
    let policies = Policies::for_run(&s.policies, &store, &rec.id)?;
    check_operator(&policies.operators, by)?;
    let g = store.load(&rec.id)?;
    let mut list = checklist_of(&policies, &g);
    let at = now()?;
    match list.tick(item, Ticker::Person(by.to_string()), at) {
        Err(xorb_governance::ChecklistError::UnknownItem(i)) => {
            let ids: Vec<&str> = policies
                .checklists
                .lists
                .iter()
                .flat_map(|l| &l.items)
                .map(|i| i.id.as_str())
                .collect();
            return Err(bad(format!(
                "no checklist item {i:?} in {}; items: {}",
                policies.checklists.source,
                ids.join(", ")
            )));
        }
        Err(e) => return Err(refused(format!("{e}"))),
        Ok(false) => {
            let t = list.tick_of(item).cloned();
            out.line(format!(
                "{item} was already ticked{}: the first tick stands.",
                t.map(|t| format!(
                    " by {} at {}",
                    match t.by {
                        Ticker::Person(n) | Ticker::Proof(n) => n,
                    },
                    t.at.to_rfc3339()
                ))
                .unwrap_or_default()
            ));
        }
        Ok(true) => {
            let t = TickRecord {
                item: item.to_string(),
                by_kind: "person".into(),
                by_name: by.to_string(),
                at,
            };
            store.tick(&rec.id, &t)?;
            trail.append(
                by,
                "governance.checklist_tick",
                Some(&rec.id),
                serde_json::to_value(&t).unwrap_or_default(),
            );
        }
    }
    out.result(
        &json!({"run_id": rec.id, "item": item, "checklist": serde_json::to_value(store.load(&rec.id)?.ticks)?}),
        |_| list.render(),
    );
    Ok(Exit::Ok)
}
