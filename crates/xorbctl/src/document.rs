//! A run's report, gathered once into the shared model (`xorb_report::model::Document`: journal, governance,
//! notifications, loss account) and rendered by `report --format json|html` and the dashboard.

use xorb_engine::RunRecord;
use xorb_model::redact::Redactor;
use xorb_report::model::Document;

use crate::settings::RunView;

pub fn document(v: &RunView, rec: &RunRecord) -> anyhow::Result<Document> {
    let gov = crate::governance::view::view(v, &rec.id)?;
    let notes = crate::notify::listing(&v.state_dir, &rec.id);
    Ok(Document::build(
        rec,
        Some(gov),
        &notes,
        xorb_engine::journal::now(),
    ))
}

/// The HTML report; run text is redacted as it is rendered, and the page once more as a whole.
pub fn html(v: &RunView, rec: &RunRecord, red: &Redactor) -> anyhow::Result<String> {
    let doc = document(v, rec)?;
    Ok(red.redact_string(&xorb_report::html::Html::new(red).report(&doc)))
}
