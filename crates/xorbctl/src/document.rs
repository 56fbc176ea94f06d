//! A run's report, gathered once into the shared model (`xorb_report::model::Document`: journal, governance,
//! notifications, loss account) and rendered by `report --format json|html` and the dashboard.

use std::path::Path;
use xorb_engine::RunRecord;
use xorb_model::redact::Redactor;

use xorb_report::model::Document;
use xorb_report::svg::{MetricChart, Verdict};

use crate::settings::RunView;

pub fn document(v: &RunView, rec: &RunRecord) -> anyhow::Result<Document> {
    let gov = crate::governance::view::view(v, &rec.id)?;
    let notes = crate::notify::listing(&v.state_dir, &rec.id);
    let mut doc = Document::build(rec, Some(gov), &notes, xorb_engine::journal::now());
    match monitor_charts(&rec.run_dir) {
        Ok(charts) => doc.monitors = charts,
        Err(e) => doc.warnings.push(e),
    }
    Ok(doc)
}

/// The charts of the latest `xorbctl monitor --run RUN` (its recording replayed): none when no monitor ran.
fn monitor_charts(run_dir: &Path) -> Result<Vec<MetricChart>, String> {
    let root = run_dir.join("monitor");
    let Ok(entries) = std::fs::read_dir(&root) else {
        return Ok(vec![]);
    };
    // Directories are named by the monitor's start (Unix milliseconds): the largest is the latest.
    let latest = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let n: i64 = e.file_name().to_str()?.parse().ok()?;
            Some((n, e.path()))
        })
        .max_by_key(|(n, _)| *n);
    let Some((_, dir)) = latest else {
        return Ok(vec![]);
    };
    let file = dir.join("recording.jsonl");
    let text = std::fs::read_to_string(&file)
        .map_err(|e| format!("the monitor's recording {}: {e}", file.display()))?;
    let m = xorb_monitor::record::replay(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    let Some(last) = m.evaluations.last() else {
        return Ok(vec![]);
    };
    let verdict = |v: xorb_monitor::judge::Verdict| match v {
        xorb_monitor::judge::Verdict::Pass => Verdict::Pass,
        xorb_monitor::judge::Verdict::Fail => Verdict::Fail,
        xorb_monitor::judge::Verdict::Error => Verdict::Error,
        xorb_monitor::judge::Verdict::Inconclusive => Verdict::Inconclusive,
    };
    Ok(xorb_monitor::charts::charts(&m)
        .into_iter()
        .map(|c| {
            let (v, reason) = match last.metrics.get(c.metric) {
                Some(r) => (verdict(r.judgement.verdict), r.judgement.reason.clone()),
                None => (
                    Verdict::Error,
                    last.error.clone().unwrap_or_else(|| "not judged".into()),
                ),
            };
            MetricChart {
                metric: c.metric.to_string(),
                unit: c.unit.to_string(),
                baseline: c.baseline,
                current: c.current,
                verdict: v,
                reason,
            }
        })
        .collect())
}

/// The HTML report; run text is redacted as it is rendered, and the page once more as a whole.
pub fn html(v: &RunView, rec: &RunRecord, red: &Redactor) -> anyhow::Result<String> {
    let doc = document(v, rec)?;
    Ok(red.redact_string(&xorb_report::html::Html::new(red).report(&doc)))
}
