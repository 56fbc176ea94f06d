//! The one data model of a run's report: what `--format md`, `--format json`, `--format html` and the dashboard
//! all render. [`Document`] is the journal's [`Report`] plus what lives beside it: the governance record
//! (approvals, checklists, tags), the notifications, the data-loss account (`<run>/loss.json`), the timeline and
//! the monitors' charts (none until `xorbctl monitor` exists, issue #13).

use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use xorb_engine::approvals::{ApprovalRecord, GovernanceRecord, TagRecord};
use xorb_engine::journal::RunRecord;
use xorb_engine::outbox::{DeliveryState, Notification};
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

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GovernanceView {
    pub severity: Option<String>,
    pub initiator: String,
    pub gate_created_at: DateTime<Utc>,
    pub gate_opened_at: Option<DateTime<Utc>>,
    pub gate_opened_by: Option<String>,
    pub approvals: Vec<ApprovalRecord>,
    pub checklists: Vec<ChecklistView>,
    pub open_items: Vec<String>,
    pub tags: Vec<TagRecord>,
}

impl GovernanceView {
    /// `None` for a run without a governance record (started before governance was wired).
    pub fn new(rec: &GovernanceRecord, policy: &Checklists, list: &Checklist) -> Option<Self> {
        let gate = rec.gate.as_ref()?;
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
        Some(GovernanceView {
            severity: gate.severity.clone(),
            initiator: gate.initiator.clone(),
            gate_created_at: gate.created_at,
            gate_opened_at: gate.opened_at,
            gate_opened_by: gate.opened_by.clone(),
            approvals: rec.approvals.clone(),
            checklists,
            open_items: list.open_items().iter().map(|i| i.id.clone()).collect(),
            tags: rec.tags.clone(),
        })
    }

    /// The gate's wait on the timeline: only a run with a severity waits at a gate.
    fn gate_window(&self) -> Option<timeline::GateWindow> {
        self.severity
            .as_ref()
            .map(|_| (self.gate_created_at, self.gate_opened_at))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NotificationView {
    pub kind: String,
    pub phase: Option<u8>,
    pub sink: String,
    pub delivered: bool,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl From<&Notification> for NotificationView {
    fn from(n: &Notification) -> Self {
        NotificationView {
            kind: n.kind.clone(),
            phase: n.phase,
            sink: n.sink.clone(),
            delivered: n.state == DeliveryState::Delivered,
            attempts: n.attempts,
            last_error: n.last_error.clone(),
            created_at: n.created_at,
        }
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
    pub notifications: Vec<NotificationView>,
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
            notifications: notifications.iter().map(NotificationView::from).collect(),
            loss,
            monitors: vec![],
            warnings,
        }
    }
}
