//! The one data model of a run's report: what `--format md`, `--format json`, `--format html` and the dashboard
//! all render. [`Document`] is the journal's [`Report`] plus what lives beside it: the governance record
//! (approvals, checklists, tags), the notifications, the data-loss account (`<run>/loss.json`), the timeline and
//! the monitors' charts (none until `xorbctl monitor` exists, issue #13).

use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use xorb_engine::approvals::GovernanceRecord;
use xorb_engine::journal::RunRecord;
use xorb_engine::outbox::Notification;
use xorb_governance::checklist::{Checklist, Checklists, How, Ticker};

use crate::svg::MetricChart;
use crate::timeline::{self, Timeline};
use crate::{Report, build};

/// One checklist item as the report shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChecklistItemView {
    pub id: String,
    pub text: String,
    pub done: bool,
    /// "proved by 5.check.health at …", "confirmed by alice at …", "to be confirmed: xorbctl check …".
    pub note: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChecklistView {
    pub title: String,
    pub items: Vec<ChecklistItemView>,
}

/// The governance record as the report shows it: the journaled record (gate, approvals, ticks, tags) with the
/// checklists' items in policy order and the items still open.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GovernanceView {
    #[serde(flatten)]
    pub record: GovernanceRecord,
    pub open_items: Vec<String>,
    pub checklists: Vec<ChecklistView>,
}

impl GovernanceView {
    pub fn new(rec: &GovernanceRecord, policy: &Checklists, list: &Checklist) -> Self {
        let checklists = policy
            .lists
            .iter()
            .map(|l| ChecklistView {
                title: l.title.clone(),
                items: l
                    .items
                    .iter()
                    .map(|i| {
                        let tick = list.tick_of(&i.id);
                        let note = match (tick, &i.how) {
                            (Some(t), _) => match &t.by {
                                Ticker::Proof(p) => {
                                    format!("proved by {p} at {}", t.at.to_rfc3339())
                                }
                                Ticker::Person(n) => {
                                    format!("confirmed by {n} at {}", t.at.to_rfc3339())
                                }
                            },
                            (None, How::ProvedBy(p)) => {
                                format!("not proved (by {})", p.join(" or "))
                            }
                            (None, How::ConfirmedByPerson) => {
                                format!("to be confirmed: xorbctl check RUN {} --by NAME", i.id)
                            }
                        };
                        ChecklistItemView {
                            id: i.id.clone(),
                            text: i.text.clone(),
                            done: tick.is_some(),
                            note,
                        }
                    })
                    .collect(),
            })
            .collect();
        GovernanceView {
            record: rec.clone(),
            open_items: list.open_items().iter().map(|i| i.id.clone()).collect(),
            checklists,
        }
    }

    /// The gate's wait on the timeline: only a run with a severity waits at a gate.
    fn gate_window(&self) -> Option<timeline::GateWindow> {
        let g = self.record.gate.as_ref()?;
        g.severity.as_ref().map(|_| (g.created_at, g.opened_at))
    }
}

/// One table of phase 5's loss assessment (the fields of `<run>/loss.json` the report shows).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossTable {
    pub table: String,
    pub state: String,
    pub rows_before: u64,
    pub rows_after: u64,
    pub lost: u64,
    pub changed: u64,
    pub added: u64,
    #[serde(default)]
    pub summary: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossTotals {
    pub lost: u64,
    pub changed: u64,
    pub added: u64,
    pub tables: Vec<LossTable>,
}

/// What accounts for one table's (or column's) loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accounted {
    pub lost: u64,
    pub preserved: u64,
    pub verified: bool,
    pub by: String,
}

/// The data-loss account: every table, and where the preserved data of each loss is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossView {
    pub report: LossTotals,
    /// Table (or table.column) → the preserved export that accounts for its loss.
    #[serde(default)]
    pub accounted: std::collections::BTreeMap<String, Accounted>,
    #[serde(default)]
    pub unaccounted: Vec<String>,
}

/// Reads `<run>/loss.json`; `Err` names the file when it exists but does not parse.
pub fn load_loss(run_dir: &Path) -> Result<Option<LossView>, String> {
    let path = run_dir.join("loss.json");
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| format!("{}: not a loss assessment: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Everything a report of one run shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Document {
    #[serde(flatten)]
    pub report: Report,
    pub timeline: Timeline,
    pub governance: Option<GovernanceView>,
    pub notifications: Vec<Notification>,
    pub loss: Option<LossView>,
    /// Empty until a monitor ran (issue #13): the section is left out then.
    pub monitors: Vec<MetricChart>,
    /// Why part of the document could not be read (an unreadable loss.json): shown, not fatal.
    pub warnings: Vec<String>,
}

impl Document {
    pub fn build(
        record: &RunRecord,
        governance: Option<GovernanceView>,
        notifications: &[Notification],
        now: DateTime<Utc>,
    ) -> Document {
        let gate = governance.as_ref().and_then(GovernanceView::gate_window);
        let mut warnings = vec![];
        let loss = load_loss(&record.run_dir).unwrap_or_else(|e| {
            warnings.push(e);
            None
        });
        Document {
            report: build(record),
            timeline: timeline::build(record, gate, now),
            governance,
            notifications: notifications.to_vec(),
            loss,
            monitors: vec![],
            warnings,
        }
    }
}
