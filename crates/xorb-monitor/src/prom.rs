//! The Prometheus range-query client: `/api/v1/query_range`, split so that no query asks for more
//! than Prometheus's 11,000 points per series, with values parsed as Prometheus writes them
//! (`"NaN"`, `"+Inf"`, `"-Inf"`). Parsing is pure; only [`Prometheus::query_range`] does I/O.

use crate::series::{Point, parse_value};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Prometheus refuses more points per series than 11,000; stay clear of it.
pub const MAX_POINTS: i64 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum PromError {
    #[error(
        "Prometheus at {url} is unreachable ({cause}): is it running, and is the address right?"
    )]
    Unreachable { url: String, cause: String },
    #[error("Prometheus at {url} answered HTTP {status} to `{query}`: {body}")]
    Http {
        url: String,
        status: u16,
        query: String,
        body: String,
    },
    #[error("Prometheus refused `{query}`: {kind}: {message}")]
    Api {
        query: String,
        kind: String,
        message: String,
    },
    #[error("cannot read Prometheus's answer to `{query}`: {why}")]
    Parse { query: String, why: String },
    #[error("bad range for `{query}`: {why}")]
    Range { query: String, why: String },
}

impl PromError {
    pub fn exit(&self) -> xorb_model::exit::Exit {
        use xorb_model::exit::Exit;
        match self {
            PromError::Range { .. } => Exit::BadInput,
            _ => Exit::DependencyFailed,
        }
    }
}

/// One series of a range query: its labels (sorted) and points.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Series {
    pub labels: BTreeMap<String, String>,
    pub points: Vec<Point>,
}

/// A range, in Unix milliseconds, inclusive at both ends, sampled every `step_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    pub start_ms: i64,
    pub end_ms: i64,
    pub step_ms: i64,
}

impl Range {
    /// Pieces of at most [`MAX_POINTS`] steps each, aligned on the step, covering the range once.
    pub fn chunks(&self) -> Vec<Range> {
        let mut out = Vec::new();
        let mut s = self.start_ms;
        while s <= self.end_ms {
            let e = (s + (MAX_POINTS - 1) * self.step_ms).min(self.end_ms);
            out.push(Range {
                start_ms: s,
                end_ms: e,
                step_ms: self.step_ms,
            });
            s = e + self.step_ms;
        }
        out
    }
}

fn secs(ms: i64) -> String {
    format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000))
}

/// The series of a `query_range` answer (`resultType` `matrix`).
pub fn parse_matrix(query: &str, body: &str) -> Result<Vec<Series>, PromError> {
    let bad = |why: String| PromError::Parse {
        query: query.to_string(),
        why,
    };
    let v: serde_json::Value =
        serde_json::from_str(body).map_err(|e| bad(format!("not JSON ({e})")))?;
    if v["status"] == "error" {
        return Err(PromError::Api {
            query: query.to_string(),
            kind: v["errorType"].as_str().unwrap_or("error").to_string(),
            message: v["error"].as_str().unwrap_or("").to_string(),
        });
    }
    if v["data"]["resultType"] != "matrix" {
        return Err(bad(format!(
            "expected a matrix, got resultType {}",
            v["data"]["resultType"]
        )));
    }
    let results = v["data"]["result"]
        .as_array()
        .ok_or_else(|| bad("data.result is not a list".into()))?;
    let mut out = Vec::with_capacity(results.len());
    for r in results {
        let labels = r["metric"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let mut points = Vec::new();
        for pair in r["values"].as_array().into_iter().flatten() {
            let (Some(t), Some(val)) = (pair[0].as_f64(), pair[1].as_str()) else {
                return Err(bad(format!("a sample is not [time, \"value\"]: {pair}")));
            };
            let v = parse_value(val).ok_or_else(|| bad(format!("sample value {val:?}")))?;
            points.push(Point {
                t_ms: (t * 1000.0).round() as i64,
                v,
            });
        }
        out.push(Series { labels, points });
    }
    Ok(out)
}

/// Adds a chunk's series to those already read, joining series with the same labels.
fn merge(into: &mut Vec<Series>, chunk: Vec<Series>) {
    for s in chunk {
        match into.iter_mut().find(|e| e.labels == s.labels) {
            Some(e) => e.points.extend(s.points),
            None => into.push(s),
        }
    }
}

pub struct Prometheus {
    base: String,
    http: reqwest::Client,
}

impl Prometheus {
    /// `base` as `http://127.0.0.1:9090`. Only loopback is ever used by the tool's tests.
    pub fn new(base: &str, timeout: Duration) -> Result<Prometheus, PromError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .no_proxy()
            .build()
            .map_err(|e| PromError::Unreachable {
                url: base.to_string(),
                cause: format!("cannot build an HTTP client: {e}"),
            })?;
        Ok(Prometheus {
            base: base.trim_end_matches('/').to_string(),
            http,
        })
    }

    pub async fn query_range(&self, query: &str, range: Range) -> Result<Vec<Series>, PromError> {
        if range.step_ms <= 0 || range.end_ms < range.start_ms {
            return Err(PromError::Range {
                query: query.to_string(),
                why: format!(
                    "start {} end {} step {} ms",
                    range.start_ms, range.end_ms, range.step_ms
                ),
            });
        }
        let url = format!("{}/api/v1/query_range", self.base);
        let mut out: Vec<Series> = Vec::new();
        for c in range.chunks() {
            let target = reqwest::Url::parse_with_params(
                &url,
                &[
                    ("query", query.to_string()),
                    ("start", secs(c.start_ms)),
                    ("end", secs(c.end_ms)),
                    ("step", secs(c.step_ms)),
                ],
            )
            .map_err(|e| PromError::Unreachable {
                url: self.base.clone(),
                cause: format!("not a URL: {e}"),
            })?;
            let resp = self
                .http
                .get(target)
                .send()
                .await
                .map_err(|e| PromError::Unreachable {
                    url: self.base.clone(),
                    cause: if e.is_timeout() {
                        "timed out".to_string()
                    } else if e.is_connect() {
                        "connection refused or failed".to_string()
                    } else {
                        e.to_string()
                    },
                })?;
            let status = resp.status().as_u16();
            let body = resp.text().await.map_err(|e| PromError::Unreachable {
                url: self.base.clone(),
                cause: format!("answer cut short: {e}"),
            })?;
            // Prometheus answers bad queries with 400/422 and a JSON error: report that error.
            match parse_matrix(query, &body) {
                Err(e @ PromError::Api { .. }) => return Err(e),
                _ if !(200..300).contains(&status) => {
                    return Err(PromError::Http {
                        url: self.base.clone(),
                        status,
                        query: query.to_string(),
                        body: body.chars().take(200).collect(),
                    });
                }
                r => merge(&mut out, r?),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_as_prometheus_writes_them() {
        assert!(parse_value("NaN").unwrap().is_nan());
        assert_eq!(parse_value("+Inf"), Some(f64::INFINITY));
        assert_eq!(parse_value("-Inf"), Some(f64::NEG_INFINITY));
        assert_eq!(parse_value("0.0025"), Some(0.0025));
        assert_eq!(parse_value("1e-3"), Some(0.001));
        assert_eq!(parse_value("fast"), None);
    }

    #[test]
    fn a_matrix_with_special_values() {
        let body = r#"{"status":"success","data":{"resultType":"matrix","result":[
            {"metric":{"job":"xorb-api","instance":"127.0.0.1:1"},
             "values":[[1700000000.5,"1"],[1700000001,"NaN"],[1700000002.25,"+Inf"]]}]}}"#;
        let s = parse_matrix("up", body).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].labels["job"], "xorb-api");
        assert_eq!(s[0].points[0].t_ms, 1_700_000_000_500);
        assert!(s[0].points[1].v.is_nan());
        assert_eq!(s[0].points[2].t_ms, 1_700_000_002_250);
        assert_eq!(s[0].points[2].v, f64::INFINITY);
    }

    #[test]
    fn errors_say_what_and_where() {
        let e = parse_matrix(
            "rate(x[",
            r#"{"status":"error","errorType":"bad_data","error":"unexpected end of input"}"#,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "Prometheus refused `rate(x[`: bad_data: unexpected end of input"
        );
        let e = parse_matrix("up", "<html>").unwrap_err().to_string();
        assert!(
            e.starts_with("cannot read Prometheus's answer to `up`: not JSON"),
            "{e}"
        );
        let e = parse_matrix(
            "up",
            r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("expected a matrix"), "{e}");
    }

    #[test]
    fn long_ranges_are_split_below_the_point_limit() {
        let r = Range {
            start_ms: 0,
            end_ms: 2 * 3600 * 1000 * 10,
            step_ms: 1000,
        };
        let c = r.chunks();
        assert!(c.len() > 1);
        assert!(
            c.iter()
                .all(|c| (c.end_ms - c.start_ms) / c.step_ms < MAX_POINTS)
        );
        assert_eq!(c[0].start_ms, 0);
        assert_eq!(c.last().unwrap().end_ms, r.end_ms);
        for w in c.windows(2) {
            assert_eq!(w[1].start_ms, w[0].end_ms + r.step_ms);
        }
        assert_eq!(secs(1_700_000_000_050), "1700000000.050");
    }
}
