//! Post-rollback monitoring: statistics and judging on samples already fetched (pure: the same
//! samples give the same verdicts and the same JSON bytes, so a monitor can be replayed on recorded
//! data), and the Prometheus client that fetches them (`prom.rs`, the only I/O). See
//! docs/design/monitor.md.

pub mod baseline;
pub mod charts;
pub mod judge;
pub mod live;
pub mod load;
pub mod monitor;
pub mod perf;
pub mod prom;
pub mod queries;
pub mod record;
pub mod series;
pub mod spending;
pub mod stats;
