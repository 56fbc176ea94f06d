//! One integration test binary with a shared context (like uv's `tests/it`): real servers, real Alembic, real
//! tools. Stacks are private (temporary state directories, loopback, free ports) and stopped by a watchdog when
//! this process ends, whatever way it ends.

mod common;
mod database;
mod governance;
mod html;
mod infra;
mod integrity;
mod notify;
mod platform;
mod releases;
mod rollback;
mod secrets;
mod stateful;
