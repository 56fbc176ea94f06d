//! One module per command. Each takes its settings (`crate::settings`), the reporter and, where it writes run
//! text, the invocation's one redactor, and returns its exit code (`xorb_model::exit::Exit`). Commands depend on
//! the shared helpers of the crate root, never on each other or on the dispatcher.

pub mod abort;
pub mod approve;
pub mod assess;
pub mod audit;
pub mod check;
pub mod completions;
pub mod dashboard;
pub mod integrity;
pub mod loss;
pub mod man;
pub mod monitor;
pub mod perf;
pub mod plan;
pub mod report;
pub mod restore;
pub mod resume;
pub mod rollback;
pub mod runs;
pub mod show;
pub mod stack;
pub mod status;
pub mod watch;
