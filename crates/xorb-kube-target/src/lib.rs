//! The Kubernetes target: the adapters' [`xorb_adapters::target::Target`] over one namespace, through
//! `xorb-kube`'s kubectl semantics. Stateful dependencies are reached at the addresses of the target file
//! ([`spec::TargetFile`]), their passwords read from Kubernetes Secrets. Design:
//! docs/design/kubernetes-target.md ("The target").

pub mod spec;
mod target;

pub use target::{KubeTarget, KubeTargetError, names};
