//! Flags as the runbook writes them (monitor, perf): `--duration "2 hours"`, `--report-interval 15min`,
//! `--alert-threshold 10%`. A value that does not parse is a usage error naming the flag.

use crate::errors::UsageError;
use xorb_monitor::baseline::Window;

/// "2 hours", "15min", "90s", "1h30m", "500ms" → milliseconds.
pub fn duration_ms(flag: &str, text: &str) -> Result<i64, UsageError> {
    let bad = |why: &str| {
        UsageError(format!(
            "{flag} {text:?}: {why}; write a number and a unit, like 30s, 15min, 2h or \"2 hours\""
        ))
    };
    let mut total: i64 = 0;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad("empty"));
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad("a number is missing"));
        }
        let n: i64 = rest[..digits]
            .parse()
            .map_err(|_| bad("the number is too large"))?;
        rest = rest[digits..].trim_start();
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        let per: i64 = match unit {
            "ms" => 1,
            "s" | "sec" | "secs" | "second" | "seconds" => 1000,
            "m" | "min" | "mins" | "minute" | "minutes" => 60_000,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3_600_000,
            "d" | "day" | "days" => 86_400_000,
            "" => return Err(bad("the unit is missing")),
            _ => return Err(bad(&format!("unknown unit {unit:?}"))),
        };
        total = n
            .checked_mul(per)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| bad("too long"))?;
        rest = rest[unit_len..].trim_start();
    }
    if total <= 0 {
        return Err(bad("it must be longer than zero"));
    }
    Ok(total)
}

/// "10%" or "0.1" → 0.1; between 0 (exclusive) and 10 (1000%).
pub fn percent(flag: &str, text: &str) -> Result<f64, UsageError> {
    let t = text.trim();
    let v = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|p| p / 100.0),
        None => t.parse::<f64>(),
    }
    .map_err(|_| UsageError(format!("{flag} {text:?}: write a share like 10% or 0.1")))?;
    if !(v.is_finite() && v > 0.0 && v <= 10.0) {
        return Err(UsageError(format!(
            "{flag} {text:?}: must be above 0% and at most 1000%"
        )));
    }
    Ok(v)
}

/// "START,END" as RFC 3339 times → a window; START before END.
pub fn window(flag: &str, text: &str) -> Result<Window, UsageError> {
    let bad = |why: String| UsageError(format!("{flag} {text:?}: {why}"));
    let (a, b) = text
        .split_once(',')
        .ok_or_else(|| bad("write START,END as RFC 3339 times".into()))?;
    let t = |s: &str| {
        chrono::DateTime::parse_from_rfc3339(s.trim())
            .map(|d| d.timestamp_millis())
            .map_err(|e| bad(format!("{s:?} is not an RFC 3339 time ({e})")))
    };
    let (start_ms, end_ms) = (t(a)?, t(b)?);
    if end_ms <= start_ms {
        return Err(bad("the window ends before it starts".into()));
    }
    Ok(Window { start_ms, end_ms })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runbooks_durations() {
        assert_eq!(duration_ms("--duration", "2 hours").unwrap(), 7_200_000);
        assert_eq!(duration_ms("--report-interval", "15min").unwrap(), 900_000);
        assert_eq!(duration_ms("--step", "1h30m").unwrap(), 5_400_000);
        assert_eq!(duration_ms("--step", "500ms").unwrap(), 500);
        for bad in ["", "2", "h", "2 fortnights", "0s", "99999999999999999d"] {
            let e = duration_ms("--duration", bad).unwrap_err().0;
            assert!(e.starts_with("--duration "), "{e}");
        }
    }

    #[test]
    fn thresholds_and_windows() {
        assert_eq!(percent("--alert-threshold", "10%").unwrap(), 0.1);
        assert_eq!(percent("--alert-threshold", "0.25").unwrap(), 0.25);
        for bad in ["ten", "0%", "-5%", "NaN", "2000%"] {
            assert!(percent("--alert-threshold", bad).is_err(), "{bad}");
        }
        let w = window(
            "--baseline-window",
            "2025-08-14T10:00:00Z,2025-08-14T10:30:00Z",
        )
        .unwrap();
        assert_eq!(w.len_ms(), 1_800_000);
        assert!(
            window(
                "--baseline-window",
                "2025-08-14T10:30:00Z,2025-08-14T10:00:00Z"
            )
            .is_err()
        );
        assert!(window("--baseline-window", "yesterday").is_err());
    }
}
