//! The runbook's four checklists (`policies/checklists.toml`) and their state during a run: items a step proves
//! are ticked by the run, the others are confirmed by a person.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{self, PolicyError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum How {
    /// Ticked by the run when one of these proofs happens (exact names, or prefixes written `2.*`).
    ProvedBy(Vec<String>),
    /// Ticked by a person.
    ConfirmedByPerson,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub id: String,
    pub text: String,
    pub how: How,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListDef {
    pub id: String,
    pub title: String,
    pub items: Vec<Item>,
}

/// The checklists as policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checklists {
    pub source: String,
    pub lists: Vec<ListDef>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    checklist: Vec<RawList>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawList {
    id: String,
    title: String,
    item: Vec<RawItem>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawItem {
    id: String,
    text: String,
    proved_by: Option<OneOrMany>,
    confirmed_by: Option<String>,
}

impl Checklists {
    pub fn builtin() -> Self {
        Self::parse(
            "builtin:policies/checklists.toml",
            crate::builtin::CHECKLISTS,
        )
        .expect("the shipped checklists are valid")
    }

    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let (file, text) = error::read(path)?;
        Self::parse(&file, &text)
    }

    pub fn parse(file: &str, text: &str) -> Result<Self, PolicyError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| PolicyError::parse(file, &e))?;
        let mut ids = BTreeSet::new();
        let mut lists = Vec::new();
        for (i, rl) in raw.checklist.into_iter().enumerate() {
            if rl.id.trim().is_empty() {
                return Err(PolicyError::invalid(
                    file,
                    format!("checklist[{i}].id"),
                    "empty",
                ));
            }
            let mut items = Vec::new();
            for (j, ri) in rl.item.into_iter().enumerate() {
                let at = |f: &str| format!("checklist[{i}].item[{j}].{f}");
                if ri.id.trim().is_empty() {
                    return Err(PolicyError::invalid(file, at("id"), "empty"));
                }
                if !ids.insert(ri.id.clone()) {
                    return Err(PolicyError::invalid(
                        file,
                        at("id"),
                        format!("item id {:?} is used twice", ri.id),
                    ));
                }
                if ri.text.trim().is_empty() {
                    return Err(PolicyError::invalid(file, at("text"), "empty"));
                }
                let how = match (ri.proved_by, ri.confirmed_by) {
                    (Some(_), Some(_)) => {
                        return Err(PolicyError::invalid(
                            file,
                            at("proved_by"),
                            "give proved_by or confirmed_by, not both",
                        ));
                    }
                    (None, None) => {
                        return Err(PolicyError::invalid(
                            file,
                            at("proved_by"),
                            "give proved_by or confirmed_by = \"person\"",
                        ));
                    }
                    (None, Some(c)) if c == "person" => How::ConfirmedByPerson,
                    (None, Some(c)) => {
                        return Err(PolicyError::invalid(
                            file,
                            at("confirmed_by"),
                            format!("{c:?}: the only value is \"person\""),
                        ));
                    }
                    (Some(p), None) => {
                        let proofs = match p {
                            OneOrMany::One(s) => vec![s],
                            OneOrMany::Many(v) => v,
                        };
                        if proofs.is_empty()
                            || proofs.iter().any(|p| p.trim().is_empty() || p == "*")
                        {
                            return Err(PolicyError::invalid(
                                file,
                                at("proved_by"),
                                "needs at least one non-empty, specific proof",
                            ));
                        }
                        for proof in &proofs {
                            crate::proofs::check(proof).map_err(|m| {
                                PolicyError::invalid(
                                    file,
                                    at("proved_by"),
                                    format!("item {:?}: {m}", ri.id),
                                )
                            })?;
                        }
                        How::ProvedBy(proofs)
                    }
                };
                items.push(Item {
                    id: ri.id,
                    text: ri.text,
                    how,
                });
            }
            lists.push(ListDef {
                id: rl.id,
                title: rl.title,
                items,
            });
        }
        Ok(Checklists {
            source: file.to_string(),
            lists,
        })
    }

    pub fn item(&self, id: &str) -> Option<&Item> {
        self.lists
            .iter()
            .flat_map(|l| &l.items)
            .find(|i| i.id == id)
    }
}

fn matches(pattern: &str, proof: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => proof.starts_with(prefix),
        None => pattern == proof,
    }
}

/// Who ticked an item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "kebab-case")]
pub enum Ticker {
    /// The run, by this proof (a step id, `phase.N`, `check.NAME`, `gate.open`, …).
    Proof(String),
    /// An operator.
    Person(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tick {
    pub by: Ticker,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChecklistError {
    #[error("no checklist item {0:?}")]
    UnknownItem(String),
    #[error("{item} is proved by the run ({proofs}); a person cannot confirm it")]
    ProvedByRun { item: String, proofs: String },
    #[error("{item} is confirmed by a person; the run cannot tick it")]
    NeedsPerson { item: String },
    #[error("{proof} does not prove {item} (proved by {proofs})")]
    WrongProof {
        item: String,
        proof: String,
        proofs: String,
    },
    #[error("a tick needs a name")]
    NoName,
}

/// The checklists of one run. `ticks` is the state the caller persists (journal); rebuild with [`Checklist::resume`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checklist {
    policy: Checklists,
    ticks: BTreeMap<String, Tick>,
}

impl Checklist {
    pub fn new(policy: Checklists) -> Self {
        Checklist {
            policy,
            ticks: BTreeMap::new(),
        }
    }

    /// Rebuilds the state from persisted ticks; ticks of items no longer in the policy are dropped.
    pub fn resume(policy: Checklists, ticks: BTreeMap<String, Tick>) -> Self {
        let ticks = ticks
            .into_iter()
            .filter(|(id, _)| policy.item(id).is_some())
            .collect();
        Checklist { policy, ticks }
    }

    pub fn ticks(&self) -> &BTreeMap<String, Tick> {
        &self.ticks
    }

    pub fn tick_of(&self, item: &str) -> Option<&Tick> {
        self.ticks.get(item)
    }

    /// Ticks `item`. Returns `Ok(false)` when it was already ticked (the first tick stands: safe on resume).
    pub fn tick(
        &mut self,
        item: &str,
        by: Ticker,
        at: DateTime<Utc>,
    ) -> Result<bool, ChecklistError> {
        let def = self
            .policy
            .item(item)
            .ok_or_else(|| ChecklistError::UnknownItem(item.to_string()))?;
        match (&def.how, &by) {
            (_, Ticker::Person(n) | Ticker::Proof(n)) if n.trim().is_empty() => {
                return Err(ChecklistError::NoName);
            }
            (How::ProvedBy(p), Ticker::Person(_)) => {
                return Err(ChecklistError::ProvedByRun {
                    item: item.into(),
                    proofs: p.join(", "),
                });
            }
            (How::ConfirmedByPerson, Ticker::Proof(_)) => {
                return Err(ChecklistError::NeedsPerson { item: item.into() });
            }
            (How::ProvedBy(p), Ticker::Proof(proof))
                if !p.iter().any(|pat| matches(pat, proof)) =>
            {
                return Err(ChecklistError::WrongProof {
                    item: item.into(),
                    proof: proof.clone(),
                    proofs: p.join(", "),
                });
            }
            _ => {}
        }
        if self.ticks.contains_key(item) {
            return Ok(false);
        }
        self.ticks.insert(item.to_string(), Tick { by, at });
        Ok(true)
    }

    /// The run reports a proof; every unticked item it proves is ticked. Returns the ids ticked now.
    pub fn prove(&mut self, proof: &str, at: DateTime<Utc>) -> Vec<String> {
        let hits: Vec<String> = self
            .policy
            .lists
            .iter()
            .flat_map(|l| &l.items)
            .filter(|i| !self.ticks.contains_key(&i.id))
            .filter(
                |i| matches!(&i.how, How::ProvedBy(p) if p.iter().any(|pat| matches(pat, proof))),
            )
            .map(|i| i.id.clone())
            .collect();
        for id in &hits {
            self.ticks.insert(
                id.clone(),
                Tick {
                    by: Ticker::Proof(proof.to_string()),
                    at,
                },
            );
        }
        hits
    }

    /// Items not ticked yet, in checklist order.
    pub fn open_items(&self) -> Vec<&Item> {
        self.policy
            .lists
            .iter()
            .flat_map(|l| &l.items)
            .filter(|i| !self.ticks.contains_key(&i.id))
            .collect()
    }

    /// The report's view: each item with `[x]`/`[ ]`, and whether it was proved (by what) or confirmed (by whom).
    pub fn render(&self) -> String {
        let (mut proved, mut confirmed, mut open) = (0, 0, 0);
        let mut out = String::new();
        for l in &self.policy.lists {
            let _ = writeln!(out, "{}", l.title);
            for i in &l.items {
                let line = match (self.ticks.get(&i.id), &i.how) {
                    (
                        Some(Tick {
                            by: Ticker::Proof(p),
                            at,
                        }),
                        _,
                    ) => {
                        proved += 1;
                        format!("[x] {} — proved by {p} at {}", i.text, at.to_rfc3339())
                    }
                    (
                        Some(Tick {
                            by: Ticker::Person(n),
                            at,
                        }),
                        _,
                    ) => {
                        confirmed += 1;
                        format!("[x] {} — confirmed by {n} at {}", i.text, at.to_rfc3339())
                    }
                    (None, How::ProvedBy(p)) => {
                        open += 1;
                        format!("[ ] {} — not proved (by {})", i.text, p.join(" or "))
                    }
                    (None, How::ConfirmedByPerson) => {
                        open += 1;
                        format!(
                            "[ ] {} — to be confirmed: xorbctl check RUN {} --by NAME",
                            i.text, i.id
                        )
                    }
                };
                let _ = writeln!(out, "  {line}");
            }
        }
        let _ = writeln!(out, "{proved} proved, {confirmed} confirmed, {open} open");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(min: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 8, 14, 12, min, 0).unwrap()
    }

    #[test]
    fn builtin_has_the_runbooks_four_lists() {
        let c = Checklists::builtin();
        let shape: Vec<(&str, usize)> = c
            .lists
            .iter()
            .map(|l| (l.id.as_str(), l.items.len()))
            .collect();
        assert_eq!(
            shape,
            [("pre", 5), ("during", 5), ("post", 7), ("follow-up", 4)]
        );
        assert_eq!(
            c.item("post.performance").unwrap().how,
            How::ProvedBy(vec!["check.performance".into()])
        );
        assert_eq!(
            c.item("follow-up.rca").map(|i| &i.how),
            Some(&How::ConfirmedByPerson)
        );
    }

    #[test]
    fn steps_prove_their_items_and_people_confirm_theirs() {
        let mut c = Checklist::new(Checklists::builtin());
        assert_eq!(c.prove("1.state.capture", t(1)), ["pre.state-captured"]);
        assert_eq!(c.prove("2.api.config", t(2)), ["during.configuration"]);
        assert!(c.prove("2.api.image", t(2)).is_empty());
        assert_eq!(c.prove("phase.2", t(3)), ["during.services-ordered"]);
        assert!(c.prove("phase.2", t(4)).is_empty(), "already ticked");
        assert_eq!(
            c.tick(
                "pre.maintenance-window",
                Ticker::Person("alice".into()),
                t(5)
            ),
            Ok(true)
        );
        assert_eq!(
            c.tick("pre.maintenance-window", Ticker::Person("bob".into()), t(6)),
            Ok(false)
        );
        assert_eq!(
            c.tick_of("pre.maintenance-window").unwrap().by,
            Ticker::Person("alice".into())
        );
        let r = c.render();
        assert!(r.contains("[x] System state captured (configs, data, metrics) — proved by 1.state.capture at 2025-08-14T12:01:00+00:00"), "{r}");
        assert!(
            r.contains("[x] Maintenance window scheduled (if applicable) — confirmed by alice"),
            "{r}"
        );
        assert!(r.contains("[ ] Root cause analysis scheduled — to be confirmed: xorbctl check RUN follow-up.rca --by NAME"), "{r}");
        assert!(
            r.contains("[ ] Performance baselines met — not proved (by check.performance)"),
            "{r}"
        );
        assert!(
            r.contains("[ ] Stakeholders notified — not proved (by notify.initiation)"),
            "{r}"
        );
        assert!(r.ends_with("3 proved, 1 confirmed, 17 open\n"), "{r}");
    }

    #[test]
    fn wrong_ticks_are_refused() {
        let mut c = Checklist::new(Checklists::builtin());
        assert!(matches!(
            c.tick("pre.state-captured", Ticker::Person("alice".into()), t(1)),
            Err(ChecklistError::ProvedByRun { .. })
        ));
        assert!(matches!(
            c.tick(
                "follow-up.rca",
                Ticker::Proof("report.written".into()),
                t(1)
            ),
            Err(ChecklistError::NeedsPerson { .. })
        ));
        assert!(matches!(
            c.tick(
                "pre.state-captured",
                Ticker::Proof("1.target.verify".into()),
                t(1)
            ),
            Err(ChecklistError::WrongProof { .. })
        ));
        assert!(matches!(
            c.tick("nope", Ticker::Person("a".into()), t(1)),
            Err(ChecklistError::UnknownItem(_))
        ));
        assert_eq!(
            c.tick("follow-up.rca", Ticker::Person(" ".into()), t(1)),
            Err(ChecklistError::NoName)
        );
        assert!(c.ticks().is_empty());
    }

    #[test]
    fn prefix_patterns_and_resume() {
        let text = "[[checklist]]\nid = \"d\"\ntitle = \"During\"\n[[checklist.item]]\nid = \"d.svc\"\ntext = \"Services\"\nproved_by = \"2.*\"\n";
        let policy = Checklists::parse("c.toml", text).unwrap();
        let mut c = Checklist::new(policy.clone());
        assert!(c.prove("3.db", t(1)).is_empty());
        assert_eq!(c.prove("2.api.image", t(1)), ["d.svc"]);
        let saved = serde_json::to_string(c.ticks()).unwrap();
        let back = Checklist::resume(policy, serde_json::from_str(&saved).unwrap());
        assert_eq!(back, c);
    }

    #[test]
    fn validation_names_file_and_field() {
        let both = "[[checklist]]\nid = \"a\"\ntitle = \"A\"\n[[checklist.item]]\nid = \"x\"\ntext = \"X\"\nproved_by = \"s\"\nconfirmed_by = \"person\"\n";
        let e = Checklists::parse("c.toml", both).unwrap_err();
        assert_eq!(
            e.to_string(),
            "c.toml: checklist[0].item[0].proved_by: give proved_by or confirmed_by, not both"
        );
        let role = both
            .replace("proved_by = \"s\"\n", "")
            .replace("\"person\"", "\"cto\"");
        let e = Checklists::parse("c.toml", &role).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("c.toml: checklist[0].item[0].confirmed_by:"),
            "{e}"
        );
        let dup = crate::builtin::CHECKLISTS.replacen(
            "id = \"pre.notified\"",
            "id = \"pre.approved\"",
            1,
        );
        let e = Checklists::parse("c.toml", &dup).unwrap_err();
        assert_eq!(
            e.to_string(),
            "c.toml: checklist[0].item[3].id: item id \"pre.approved\" is used twice"
        );
    }

    #[test]
    fn an_item_proved_by_something_that_cannot_exist_is_refused_with_item_and_name() {
        let typo = crate::builtin::CHECKLISTS.replacen(
            "proved_by = \"5.check.smoke\"",
            "proved_by = \"5.check.smok\"",
            1,
        );
        let e = Checklists::parse("c.toml", &typo).unwrap_err().to_string();
        assert!(
            e.starts_with("c.toml: checklist[2].item[1].proved_by: item \"post.functionality\": \"5.check.smok\"")
                && e.contains("no check"),
            "{e}"
        );
        let many = crate::builtin::CHECKLISTS.replacen(
            "proved_by = [\"2.config.apply\", \"2.api.config\"]",
            "proved_by = [\"2.config.apply\", \"phase.9\"]",
            1,
        );
        let e = Checklists::parse("c.toml", &many).unwrap_err().to_string();
        assert!(
            e.contains("\"during.configuration\"") && e.contains("\"phase.9\""),
            "{e}"
        );
    }
}
