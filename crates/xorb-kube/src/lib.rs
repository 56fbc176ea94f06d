//! The Kubernetes adapter of `xorbctl`. Design: docs/design/kubernetes-target.md.

pub mod rollout;
