//! The end-to-end harness: a real kube-apiserver and etcd, namespaces with the shipped
//! RBAC, real service-account tokens, the real sidecar binary as processes, an observer
//! that enforces the no-two-leaders rule, and a proxy that can cut a sidecar off.
//!
//! A crate of its own (`leader-labeler-harness`, a dev-dependency of the root package),
//! so every test file and example shares one build of it. It does not link the
//! leader-labeler crate: it runs the binary (`sidecar::bin`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

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
pub mod wait;

pub use cluster::{Cluster, ClusterOptions};
pub use endpoints::EndpointWatcher;
pub use namespace::{Namespace, ELECTION, LEADER_KEY, PARTICIPANT_KEY};
pub use observer::Observer;
pub use proxy::Proxy;
pub use sidecar::{Sidecar, SidecarOptions};

/// The repository's root folder (this crate lives in `tests/harness`): deploy/,
/// scripts/, tests/control-plane/ and target/ are found from here.
pub fn repo_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
        std::fs::canonicalize(root).unwrap_or_else(|e| panic!("repository root {root}: {e}"))
    })
}

/// `Duration::from_secs`, short for the tests' timeouts.
pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Creates `pods` (ready), starts the observer and one sidecar per pod (fast timings),
/// and returns once one of them leads and every pod is labeled a participant: the
/// observer, the sidecars in the order of `pods`, and the leader's name.
pub fn start(ns: &Namespace, pods: &[&str]) -> (Observer, Vec<Sidecar>, String) {
    for p in pods {
        ns.create_pod(p, true);
    }
    let observer = Observer::start(ns);
    let sidecars: Vec<_> = pods.iter().map(|p| Sidecar::spawn(ns, p, &[])).collect();
    let leader = observer.wait_for_single_leader(secs(15));
    observer.wait_until(secs(10), "all pods participate", |s| {
        pods.iter()
            .all(|p| s.label(p, PARTICIPANT_KEY) == Some("true"))
    });
    (observer, sidecars, leader)
}
