//! The end-to-end harness: a real kube-apiserver and etcd, namespaces with the shipped
//! RBAC, real service-account tokens, the real sidecar binary as processes, an observer
//! that enforces the no-two-leaders rule, and a proxy that can cut a sidecar off.
#![allow(dead_code)]

pub mod api;
pub mod cluster;
pub mod endpoints;
pub mod faults;
pub mod inject;
pub mod namespace;
pub mod node;
pub mod observer;
pub mod process;
pub mod proxy;
pub mod sidecar;
pub mod traffic;

#[allow(unused_imports)]
pub use cluster::{Cluster, ClusterOptions};
#[allow(unused_imports)]
pub use endpoints::EndpointWatcher;
#[allow(unused_imports)]
pub use namespace::{Namespace, LEADER_KEY, PARTICIPANT_KEY};
#[allow(unused_imports)]
pub use observer::Observer;
#[allow(unused_imports)]
pub use proxy::Proxy;
#[allow(unused_imports)]
pub use sidecar::{Sidecar, SidecarOptions};
