//! A monitor's recording, as JSON lines: the settings and the baseline's samples first, then one
//! increment per evaluation, each line written as the evaluation is made (a crash loses none).
//! Replaying the lines through [`Monitor`] gives the report the live monitor wrote.

use crate::monitor::{Increment, Monitor, Settings};
use crate::queries::Samples;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
pub struct Head {
    pub settings: Settings,
    pub baseline: Samples,
}

#[derive(Debug, thiserror::Error)]
#[error("recording line {line}: {why}")]
pub struct RecordError {
    pub line: usize,
    pub why: String,
}

impl RecordError {
    pub fn exit(&self) -> xorb_model::exit::Exit {
        xorb_model::exit::Exit::BadInput
    }
}

/// The head line.
pub fn head_line(settings: &Settings, baseline: &Samples) -> String {
    #[derive(Serialize)]
    struct HeadRef<'a> {
        settings: &'a Settings,
        baseline: &'a Samples,
    }
    serde_json::to_string(&HeadRef { settings, baseline }).unwrap_or_default()
}

pub fn increment_line(inc: &Increment) -> String {
    serde_json::to_string(inc).unwrap_or_default()
}

/// The monitor a recording describes, every increment applied. A last line cut short by a crash
/// is ignored: it was never acted on.
pub fn replay(text: &str) -> Result<Monitor, RecordError> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, first) = lines.next().ok_or(RecordError {
        line: 1,
        why: "empty: no settings line".into(),
    })?;
    let head: Head = serde_json::from_str(first).map_err(|e| RecordError {
        line: 1,
        why: e.to_string(),
    })?;
    let mut m = Monitor::new(head.settings, head.baseline);
    let rest: Vec<(usize, &str)> = lines.collect();
    for (i, (n, l)) in rest.iter().enumerate() {
        match serde_json::from_str::<Increment>(l) {
            Ok(inc) => {
                m.apply(inc);
            }
            Err(_) if i + 1 == rest.len() && !text.ends_with('\n') => break,
            Err(e) => {
                return Err(RecordError {
                    line: n + 1,
                    why: e.to_string(),
                });
            }
        }
    }
    Ok(m)
}
