//! The clock governance decides by.

use chrono::{DateTime, Utc};

use crate::errors::bad;

/// The clock governance decides by. `XORB_NOW` (RFC 3339) exists for tests of expiry and "down for how long";
/// it is not an operator setting.
pub fn now() -> anyhow::Result<DateTime<Utc>> {
    match std::env::var("XORB_NOW") {
        Ok(s) if !s.trim().is_empty() => DateTime::parse_from_rfc3339(s.trim())
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| bad(format!("XORB_NOW={s:?} is not an RFC 3339 time: {e}"))),
        _ => Ok(xorb_engine::journal::now()),
    }
}
