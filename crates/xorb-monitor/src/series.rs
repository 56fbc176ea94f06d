//! Samples as Prometheus returns them, and what the judge derives from them.

use serde::{Deserialize, Serialize};

/// One sample: Unix time in milliseconds (Prometheus's own precision, so replays are exact) and
/// its value, which may be NaN or infinite (`histogram_quantile` with no traffic gives NaN).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub t_ms: i64,
    #[serde(with = "value")]
    pub v: f64,
}

/// A sample value as Prometheus writes it.
pub fn parse_value(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => s.parse::<f64>().ok(),
    }
}

/// A value as JSON: a number when finite, else Prometheus's own spelling (`"NaN"`, `"+Inf"`,
/// `"-Inf"`). serde_json would write NaN as `null` and then refuse to read it back, and a recording
/// must read back exactly.
mod value {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else if v.is_nan() {
            s.serialize_str("NaN")
        } else if *v > 0.0 {
            s.serialize_str("+Inf")
        } else {
            s.serialize_str("-Inf")
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(f64),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Number(v) => Ok(v),
            Raw::Text(t) => super::parse_value(&t)
                .filter(|v| !v.is_finite())
                .ok_or_else(|| serde::de::Error::custom(format!("not a sample value: {t:?}"))),
        }
    }
}

/// How much a counter grew over the points, across restarts: a drop means the process started
/// again from zero, so the new value is all growth since. Raw differences would read a restart as a
/// huge negative spike (or, summed, as lost requests).
pub fn increase(points: &[Point]) -> f64 {
    points
        .windows(2)
        .filter(|w| w[0].v.is_finite() && w[1].v.is_finite())
        .map(|w| {
            if w[1].v >= w[0].v {
                w[1].v - w[0].v
            } else {
                w[1].v
            }
        })
        .sum()
}

/// The finite values, and how many were not (NaN: no traffic in that step; Inf: beyond the last
/// bucket).
pub fn finite_values(points: &[Point]) -> (Vec<f64>, usize) {
    let v: Vec<f64> = points
        .iter()
        .map(|p| p.v)
        .filter(|v| v.is_finite())
        .collect();
    let dropped = points.len() - v.len();
    (v, dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_reads_back_exactly_from_json() {
        let vs = [
            0.1 + 0.2,
            1.0 / 3.0,
            f64::MIN_POSITIVE,
            123_456.789_012_345_67,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ];
        let text = serde_json::to_string(&pts(&vs)).unwrap();
        assert!(text.contains(r#""v":"NaN""#), "{text}");
        let back: Vec<Point> = serde_json::from_str(&text).unwrap();
        for (a, b) in vs.iter().zip(&back) {
            assert!(
                a.to_bits() == b.v.to_bits() || (a.is_nan() && b.v.is_nan()),
                "{a} {}",
                b.v
            );
        }
        assert!(serde_json::from_str::<Point>(r#"{"t_ms":0,"v":"1.5"}"#).is_err());
    }

    fn pts(vs: &[f64]) -> Vec<Point> {
        vs.iter()
            .enumerate()
            .map(|(i, &v)| Point {
                t_ms: i as i64 * 1000,
                v,
            })
            .collect()
    }

    #[test]
    fn a_restart_is_growth_not_a_spike() {
        assert_eq!(increase(&pts(&[10.0, 20.0, 30.0])), 20.0);
        // Restarted between 30 and 5: 5 requests since the restart.
        assert_eq!(increase(&pts(&[10.0, 20.0, 30.0, 5.0, 8.0])), 28.0);
        assert_eq!(increase(&pts(&[7.0])), 0.0);
        assert_eq!(increase(&pts(&[1.0, f64::NAN, 3.0])), 0.0);
    }

    #[test]
    fn non_finite_values_are_counted_not_judged() {
        let (v, dropped) = finite_values(&pts(&[0.1, f64::NAN, f64::INFINITY, 0.2]));
        assert_eq!(v, vec![0.1, 0.2]);
        assert_eq!(dropped, 2);
    }
}
