//! The end-to-end harness: a real kube-apiserver and etcd, namespaces with the shipped
//! RBAC, real service-account tokens, the real sidecar binary as processes, an observer
//! that enforces the no-two-leaders rule, and a proxy that can cut a sidecar off.
//!
//! A crate of its own (`leader-labeler-harness`, a dev-dependency of the root package),
//! so every test file and example shares one build of it. It does not link the
//! leader-labeler crate: it runs the binary (`sidecar::bin`).

use std::path::PathBuf;

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

pub use cluster::{Cluster, ClusterOptions};
pub use endpoints::EndpointWatcher;
pub use namespace::{Namespace, LEADER_KEY, PARTICIPANT_KEY};
pub use observer::Observer;
pub use proxy::Proxy;
pub use sidecar::{Sidecar, SidecarOptions};

/// The repository's root folder (this crate lives in `tests/harness`): deploy/,
/// scripts/, tests/control-plane/ and target/ are found from here.
pub fn repo_root() -> PathBuf {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    std::fs::canonicalize(root).unwrap_or_else(|e| panic!("repository root {root}: {e}"))
}
