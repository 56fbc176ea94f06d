//! One integration test binary with a shared context (like uv's `tests/it`): real servers, real Alembic, real
//! tools. Stacks are private (temporary state directories, loopback, free ports) and stopped by a watchdog when
//! this process ends, whatever way it ends.

mod assess_load;
mod audit_log;
mod common;
mod database;
mod demo_data;
mod demo_scale;
mod faults;
mod governance;
mod hardening_input;
mod hardening_ops;
mod hardening_paths;
mod html;
mod https;
mod infra;
mod integrity;
mod kubernetes;
mod lost_journal;
mod memtarget;
mod monitor;
mod monitor_live;
mod notify;
mod perf;
mod platform;
mod releases;
mod restore;
mod rollback;
mod seam;
mod secrets;
mod stateful;
mod watch;
