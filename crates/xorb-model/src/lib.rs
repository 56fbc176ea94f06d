//! Stable, machine-readable types shared by the rollback tool: releases, plans, steps, redaction.
//! No I/O beyond reading the files a caller names; nothing here has side effects.

pub mod access;
pub mod check;
pub mod contained;
pub mod exit;
pub mod limits;
pub mod plan;
pub mod policy;
pub mod redact;
pub mod release;
pub mod schema;
pub mod service_order;
