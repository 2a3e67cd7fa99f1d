//! deploy/inject/ on a cluster: the MutatingAdmissionPolicy that adds the sidecar to pods
//! labeled `leader-labeler.io/election`, and the ValidatingAdmissionPolicy that refuses a
//! bad label value, applied with `kubectl apply -k` as the README says.

use crate::cluster::Cluster;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The label that asks for the sidecar.
pub const ELECTION_LABEL: &str = "leader-labeler.io/election";

/// The name of the injected container (and of the hand-written one).
pub const SIDECAR: &str = "leader-labeler";

/// `kubectl apply -k deploy/inject/`, then waits until the API server enforces both
/// policies: they reach admission through an informer, a moment after they are stored.
/// `namespace` must exist and have deploy/rbac.yaml's ServiceAccount (the probes are
/// server-side dry runs: nothing is stored).
pub fn apply(cluster: &Cluster, namespace: &str) {
    let dir = crate::repo_root().join("deploy/inject");
    let out = cluster.kubectl(&["apply", "-k", &dir.to_string_lossy()], None);
    assert!(
        out.status.success(),
        "kubectl apply -k deploy/inject failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut injected, mut refused) = (false, false);
    let mut last = Value::Null;
    loop {
        if !injected {
            let (code, pod) = dry_run(cluster, namespace, "probe");
            injected = code == 201 && sidecars(&pod) == 1;
            last = json!({"status": code, "spec": pod["spec"], "message": pod["message"]});
        }
        if !refused {
            let (code, _) = dry_run(cluster, namespace, "Not_A_Name");
            refused = code == 422;
        }
        if injected && refused {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "deploy/inject not enforced 30 s after kubectl apply (injecting: {injected}, refusing a bad name: {refused}); a labeled pod's creation answered: {last:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Creates (dry run, nothing stored) a pod labeled with `election`; the status and body.
fn dry_run(cluster: &Cluster, namespace: &str, election: &str) -> (u16, Value) {
    let pod = pod("inject-probe", json!({ELECTION_LABEL: election}), json!({}));
    create(cluster, namespace, &pod, true)
}

/// A bare pod (one app container, deploy/rbac.yaml's service account).
pub fn pod(name: &str, labels: Value, annotations: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {"serviceAccountName": "leader-labeler",
                 "containers": [{"name": "app", "image": "registry.invalid/app:1"}]}
    })
}

/// POSTs the pod; the status and the pod (or the error) as the API server answered.
/// `dry` stores nothing (the admission chain runs all the same).
pub fn create(cluster: &Cluster, namespace: &str, pod: &Value, dry: bool) -> (u16, Value) {
    let query = if dry { "?dryRun=All" } else { "" };
    cluster.api.call(
        "POST",
        &format!("/api/v1/namespaces/{namespace}/pods{query}"),
        Some(("application/json", pod)),
    )
}

/// How many containers named leader-labeler the pod has (containers and initContainers).
pub fn sidecars(pod: &Value) -> usize {
    ["initContainers", "containers"]
        .iter()
        .filter_map(|k| pod["spec"][k].as_array())
        .flatten()
        .filter(|c| c["name"] == SIDECAR)
        .count()
}
