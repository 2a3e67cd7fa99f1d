//! The Kubernetes API's plain data, with no I/O: the Lease and pod as the sidecar sees
//! them, resourceVersion order, the API's errors, and the paths of the resources. The
//! decision core and the REST client both build on it; it depends on neither.

pub mod error;
pub mod types;

pub use error::KubeError;

/// The Leases of a namespace.
pub fn leases_path(namespace: &str) -> String {
    format!("/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases")
}

/// The pods of a namespace.
pub fn pods_path(namespace: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/pods")
}

/// The label selector of the pods an election cares about: every pod carrying the
/// leadership key, whatever its value (sidecars label their own pod at start).
pub fn pod_selector(leadership_label: &str) -> String {
    format!("labelSelector={}", encode_query(leadership_label))
}

/// Percent-encodes a query value (label selectors contain '/', '=' and ',').
pub fn encode_query(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
