//! The database schema as the planner sees it: Alembic revisions and what their downgrades destroy.
//! Read from `migrations/xorb_meta.py` by the target adapter; no I/O here.

use serde::{Deserialize, Serialize};

/// What a revision's downgrade destroys (its `xorb_downgrade_destroys`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destroys {
    /// "table" or "column".
    pub kind: String,
    /// "evidence", "tenants.isolation_mode".
    pub object: String,
    pub description: String,
}

/// One Alembic revision of a release's migration scripts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionInfo {
    pub revision: String,
    #[serde(default)]
    pub down_revision: Option<String>,
    #[serde(default)]
    pub message: String,
    /// The release that introduced it.
    #[serde(default)]
    pub release: String,
    #[serde(default)]
    pub destroys: Vec<Destroys>,
    /// The module defines a downgrade that does something (not missing, not `pass`).
    #[serde(default = "yes")]
    pub has_downgrade: bool,
}

fn yes() -> bool {
    true
}

impl RevisionInfo {
    /// The runbook's name for the data migration this revision is ("G7"), from its message.
    pub fn data_migration(&self) -> Option<String> {
        let first = self.message.split_whitespace().next()?;
        let digits = first.strip_prefix('G')?;
        (!digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()))
            .then(|| first.to_string())
    }
}

/// The live database: its revision, and the revisions of the migration scripts of the release rolled back from
/// (head first, as `alembic history` lists them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveDatabase {
    pub revision: String,
    pub revisions: Vec<RevisionInfo>,
}

impl LiveDatabase {
    pub fn find(&self, revision: &str) -> Option<&RevisionInfo> {
        self.revisions.iter().find(|r| r.revision == revision)
    }

    /// The revisions a downgrade from the live revision to `target` undoes, in the order they run (newest first).
    /// None when `target` is not an ancestor of the live revision.
    pub fn downgrade_path(&self, target: &str) -> Option<Vec<&RevisionInfo>> {
        let mut out = Vec::new();
        let mut cur = self.revision.as_str();
        while cur != target {
            let r = self.find(cur)?;
            out.push(r);
            cur = r.down_revision.as_deref()?;
        }
        Some(out)
    }

    /// The revisions an upgrade from the live revision to `target` applies, oldest first.
    pub fn upgrade_path(&self, target: &str) -> Option<Vec<&RevisionInfo>> {
        let mut out = Vec::new();
        let mut cur = target;
        while cur != self.revision {
            let r = self.find(cur)?;
            out.push(r);
            cur = r.down_revision.as_deref()?;
        }
        out.reverse();
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(r: &str, down: Option<&str>, msg: &str) -> RevisionInfo {
        RevisionInfo {
            revision: r.into(),
            down_revision: down.map(Into::into),
            message: msg.into(),
            release: String::new(),
            destroys: vec![],
            has_downgrade: true,
        }
    }

    fn db(live: &str) -> LiveDatabase {
        LiveDatabase {
            revision: live.into(),
            revisions: vec![
                rev("c", Some("b"), "G8 control plane"),
                rev("b", Some("a"), "G7 evidence"),
                rev("a", None, "core"),
            ],
        }
    }

    #[test]
    fn paths_both_ways() {
        let d = db("c");
        let down: Vec<&str> = d
            .downgrade_path("a")
            .unwrap()
            .iter()
            .map(|r| r.revision.as_str())
            .collect();
        assert_eq!(down, ["c", "b"]);
        assert!(d.downgrade_path("zzz").is_none());
        let a = db("a");
        let up: Vec<&str> = a
            .upgrade_path("c")
            .unwrap()
            .iter()
            .map(|r| r.revision.as_str())
            .collect();
        assert_eq!(up, ["b", "c"]);
        assert!(db("c").upgrade_path("a").is_none());
        assert_eq!(d.downgrade_path("c").unwrap().len(), 0);
    }

    #[test]
    fn data_migration_names() {
        assert_eq!(
            rev("x", None, "G7 evidence system")
                .data_migration()
                .as_deref(),
            Some("G7")
        );
        assert_eq!(
            rev("x", None, "audit_log and indexes").data_migration(),
            None
        );
        assert_eq!(rev("x", None, "Gx").data_migration(), None);
    }
}
