//! Fuzzing of every parser a user feeds (policy and release files, templates, the audit log, the journal), on the
//! stable toolchain: [`harness`] mutates a corpus of real inputs and random bytes for a time budget and fails on
//! a panic or an input that takes too long; [`targets`] are the parsers, one function each, so that a libFuzzer
//! driver could call the same code. `tests/fuzz.rs` runs each target; see README.md, "Development".

pub mod harness;
mod mutate;
mod rng;
pub mod seeds;
pub mod targets;
