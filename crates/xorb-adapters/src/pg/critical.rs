//! The critical-data check (`xorbctl integrity --critical`, the evidence-legacy check): every evidence record is whole and verifies.

use std::collections::BTreeSet;
use std::path::Path;

use serde::Serialize;

use super::*;
use crate::AdapterError;
use crate::evidence::{self, Verifier};

#[derive(Debug, Clone, Serialize)]
pub struct EvidenceCritical {
    /// Whether the schema has the evidence table (rc1); on stable only the files remain.
    pub table: bool,
    pub rows: Option<i64>,
    pub records_on_disk: usize,
    pub verified: usize,
    pub key_id: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CriticalReport {
    pub ok: bool,
    pub schema_revision: Option<String>,
    pub tenants: i64,
    pub sessions: i64,
    pub findings: i64,
    pub evidence: EvidenceCritical,
    /// One line per problem, naming the record.
    pub problems: Vec<String>,
}

impl CriticalReport {
    /// One paragraph for people.
    pub fn summary(&self) -> String {
        let ev = &self.evidence;
        let rows = ev
            .rows
            .map(|n| format!("{n} evidence rows, "))
            .unwrap_or_else(|| "no evidence table, ".into());
        let head = format!(
            "critical data {}: {} tenants, {} sessions, {} findings; {rows}{} evidence records on disk, {} verified",
            if self.ok { "OK" } else { "NOT OK" },
            self.tenants,
            self.sessions,
            self.findings,
            ev.records_on_disk,
            ev.verified
        );
        if self.problems.is_empty() {
            head
        } else {
            let shown: Vec<&str> = self.problems.iter().take(10).map(String::as_str).collect();
            let more = self.problems.len().saturating_sub(shown.len());
            format!(
                "{head}\n{} problem(s):\n  {}{}",
                self.problems.len(),
                shown.join("\n  "),
                if more > 0 {
                    format!("\n  … and {more} more")
                } else {
                    String::new()
                }
            )
        }
    }
}

pub(crate) async fn ids(
    client: &tokio_postgres::Client,
    sql: &str,
    what: &str,
) -> Result<Vec<String>, AdapterError> {
    Ok(client
        .query(sql, &[])
        .await
        .map_err(|e| AdapterError::db(what.to_string(), e))?
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect())
}

/// The runbook's critical data: tenants, sessions and findings with their references, evidence rows against
/// their storage files, and every evidence signature.
pub async fn critical_check(conn: &PgConn, ev_dir: &Path) -> Result<CriticalReport, AdapterError> {
    let revision = crate::pg::schema_revision(conn).await?;
    let client = conn.connect().await?;
    let count = |t: &'static str| {
        let client = &client;
        async move {
            client
                .query_one(&format!("SELECT count(*) FROM {t}"), &[])
                .await
                .map(|r| r.get::<_, i64>(0))
                .map_err(|e| AdapterError::db(format!("count {t}"), e))
        }
    };
    let tenants = count("tenants").await?;
    let sessions = count("ptaas_sessions").await?;
    let findings = count("findings").await?;
    let mut problems = Vec::new();
    for (sql, what, line) in [
        (
            "SELECT s.id::text FROM ptaas_sessions s LEFT JOIN tenants t ON t.id = s.tenant_id WHERE t.id IS NULL ORDER BY 1",
            "sessions without tenant",
            "session {} belongs to no tenant",
        ),
        (
            "SELECT f.id::text FROM findings f LEFT JOIN ptaas_sessions s ON s.id = f.session_id WHERE s.id IS NULL ORDER BY 1",
            "findings without session",
            "finding {} belongs to no session",
        ),
        (
            "SELECT f.id::text FROM findings f JOIN ptaas_sessions s ON s.id = f.session_id WHERE f.tenant_id <> s.tenant_id ORDER BY 1",
            "findings of another tenant",
            "finding {} has another tenant than its session",
        ),
    ] {
        for id in ids(&client, sql, what).await? {
            problems.push(line.replace("{}", &id));
        }
    }

    let key_path = ev_dir.join(evidence::PUBLIC_KEY_FILE);
    let records_dir = ev_dir.join(evidence::RECORDS_DIR);
    let files = evidence::list_records(&records_dir)?;
    let verifier = if key_path.exists() {
        Some(Verifier::from_pem_file(&key_path)?)
    } else {
        None
    };
    let has_table = client
        .query_one("SELECT to_regclass('public.evidence') IS NOT NULL", &[])
        .await
        .map_err(|e| AdapterError::db("look up table evidence", e))?
        .get::<_, bool>(0);
    let mut verified = 0usize;
    let mut rows_n = None;
    let mut row_ids = BTreeSet::new();
    if has_table {
        let rows = client
            .query(
                "SELECT e.id::text, e.tenant_id::text, e.session_id::text, e.finding_id::text, e.payload, e.signature, \
                 f.id IS NOT NULL AND f.tenant_id = e.tenant_id AND f.session_id = e.session_id \
                 FROM evidence e LEFT JOIN findings f ON f.id = e.finding_id ORDER BY e.id",
                &[],
            )
            .await
            .map_err(|e| AdapterError::db("read evidence", e))?;
        rows_n = Some(rows.len() as i64);
        for row in &rows {
            let id: String = row.get(0);
            let (tenant, session, finding): (String, String, String) =
                (row.get(1), row.get(2), row.get(3));
            let payload: Vec<u8> = row.get(4);
            let signature: Vec<u8> = row.get(5);
            if !row.get::<_, bool>(6) {
                problems.push(format!(
                    "evidence record {id}: its finding {finding} is missing or of another tenant or session"
                ));
            }
            // The signed payload must speak of the same finding, session and tenant as the row.
            let p: serde_json::Value = serde_json::from_slice(&payload).unwrap_or_default();
            if p["finding_id"] != finding.as_str()
                || p["session_id"] != session.as_str()
                || p["tenant_id"] != tenant.as_str()
            {
                problems.push(format!(
                    "evidence record {id}: its signed payload names another finding, session or tenant than the row"
                ));
            }
            let ok = verifier
                .as_ref()
                .is_some_and(|v| v.verify(&payload, &signature));
            if !ok {
                problems.push(format!(
                    "evidence record {id}: the database row's signature does not verify"
                ));
            }
            match files.get(&id) {
                Some(f) => {
                    let j = f.json.as_deref().map(evidence::read).transpose()?;
                    let s = f.sig.as_deref().map(evidence::read).transpose()?;
                    if j.as_deref() != Some(payload.as_slice())
                        || s.as_deref() != Some(signature.as_slice())
                    {
                        problems.push(format!(
                            "evidence record {id}: the files in {} differ from the database row",
                            records_dir.display()
                        ));
                    }
                }
                None => problems.push(format!(
                    "evidence record {id}: no storage files in {}",
                    records_dir.display()
                )),
            }
            row_ids.insert(id);
        }
        for id in files.keys().filter(|id| !row_ids.contains(*id)) {
            problems.push(format!(
                "evidence record {id}: storage files in {} but no database row",
                records_dir.display()
            ));
        }
    }
    match &verifier {
        Some(v) => {
            let check = evidence::verify_dir(&records_dir, v)?;
            verified = check.verified;
            problems.extend(check.problems);
        }
        None if !files.is_empty() || rows_n.is_some_and(|n| n > 0) => problems.push(format!(
            "evidence exists but the public key {} is missing: no signature can be checked",
            key_path.display()
        )),
        None => {}
    }
    Ok(CriticalReport {
        ok: problems.is_empty(),
        schema_revision: revision,
        tenants,
        sessions,
        findings,
        evidence: EvidenceCritical {
            table: has_table,
            rows: rows_n,
            records_on_disk: files.len(),
            verified,
            key_id: verifier.map(|v| v.key_id().to_string()),
        },
        problems,
    })
}
