//! The end-to-end harness: a real kube-apiserver and etcd, namespaces with the shipped
//! RBAC, real service-account tokens, the real sidecar binary as processes, an observer
//! that enforces the no-two-leaders rule, and a proxy that can cut a sidecar off.
#![allow(dead_code)]

pub mod api;
pub mod cluster;
pub mod namespace;
pub mod observer;
pub mod process;
pub mod proxy;
pub mod sidecar;

pub use cluster::{Cluster, ClusterOptions};
pub use namespace::{Namespace, LEADER_KEY, PARTICIPANT_KEY};
pub use observer::Observer;
pub use proxy::Proxy;
pub use sidecar::{Sidecar, SidecarOptions};
