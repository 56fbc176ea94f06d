//! The Kubernetes adapter of `xorbctl`: kubectl's semantics over kube-rs. Design: docs/design/kubernetes-target.md.

pub mod apply;
pub mod client;
pub mod diff;
pub mod error;
pub mod lease;
pub mod rollout;
#[cfg(test)]
mod testing;
pub mod workload;

pub use error::{KubeError, Site};
