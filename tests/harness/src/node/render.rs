//! Pods rendered from the shipped manifests for the loopback node (host network, the
//! local busybox app, the API server on 127.0.0.1), created and waited for.

use super::{Node, BUSYBOX, NODE_NAME};
use crate::api::Api;
use crate::cluster::{free_port, Cluster};
use crate::namespace::Namespace;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Which shipped manifest a pod comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Manifest {
    Deployment,
    StatefulSet,
    NativeSidecar,
}

impl Manifest {
    fn file(self) -> &'static str {
        match self {
            Manifest::Deployment => "deploy/deployment.yaml",
            Manifest::StatefulSet => "deploy/statefulset.yaml",
            Manifest::NativeSidecar => "deploy/native-sidecar.yaml",
        }
    }
}

/// The busybox app: ready while /tmp/ready exists, exits 0 on SIGTERM.
pub const APP_SCRIPT: &str =
    "trap 'echo app: SIGTERM; exit 0' TERM; touch /tmp/ready; echo app: started; sleep 2147483647 & wait";

/// The pod template of a shipped manifest (its Deployment or StatefulSet), as JSON,
/// read with kubectl so the YAML is parsed the way users' kubectl parses it.
pub fn template(cluster: &Cluster, manifest: Manifest) -> Value {
    let text = std::fs::read_to_string(crate::repo_root().join(manifest.file())).unwrap();
    cluster
        .manifest_objects(&text, manifest.file())
        .into_iter()
        .find(|i| i["kind"] == "Deployment" || i["kind"] == "StatefulSet")
        .map(|w| w["spec"]["template"].clone())
        .unwrap_or_else(|| panic!("{} has no Deployment or StatefulSet", manifest.file()))
}

/// A pod from a template, with only what this node needs changed: name and nodeName,
/// hostNetwork, the images (the tarball's, busybox for the app, pulled never), the app
/// as busybox with an exec readiness probe instead of nginx's HTTP one, the ports made
/// unique (hostNetwork pods share the host's), the sidecar's HTTP listener and its
/// liveness probe on 127.0.0.1, and KUBERNETES_SERVICE_HOST/PORT pointed at the API
/// server on 127.0.0.1. Returns the pod and the sidecar's HTTP port.
pub fn render(node: &Node, template: &Value, name: &str) -> (Value, u16) {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": template["metadata"].clone(),
        "spec": template["spec"].clone(),
    });
    pod["metadata"]["name"] = json!(name);
    let spec = &mut pod["spec"];
    spec["nodeName"] = json!(NODE_NAME);
    spec["hostNetwork"] = json!(true);
    let http_port = pod_port();
    let api_port = node.cluster.port;
    for list in ["initContainers", "containers"] {
        let Some(containers) = spec[list].as_array_mut() else {
            continue;
        };
        for c in containers {
            match c["name"].as_str() {
                Some("app") => {
                    c["image"] = json!(BUSYBOX);
                    c["imagePullPolicy"] = json!("Never");
                    c["command"] = json!(["sh", "-c", APP_SCRIPT]);
                    let probe = c["readinessProbe"]
                        .as_object_mut()
                        .expect("app readinessProbe");
                    probe.remove("httpGet");
                    probe.insert("exec".into(), json!({"command": ["cat", "/tmp/ready"]}));
                    c["ports"] = json!([{"name": "http", "containerPort": pod_port()}]);
                }
                Some("leader-labeler") => {
                    c["image"] = json!(node.image);
                    c["imagePullPolicy"] = json!("Never");
                    c["args"]
                        .as_array_mut()
                        .expect("sidecar args")
                        .push(json!(format!("--http-address=127.0.0.1:{http_port}")));
                    for p in c["ports"].as_array_mut().expect("sidecar ports") {
                        if p["name"] == "ll-http" {
                            p["containerPort"] = json!(http_port);
                        }
                    }
                    c["livenessProbe"]["httpGet"]["host"] = json!("127.0.0.1");
                    c["env"].as_array_mut().expect("sidecar env").extend([
                        json!({"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"}),
                        json!({"name": "KUBERNETES_SERVICE_PORT", "value": api_port.to_string()}),
                    ]);
                }
                other => panic!("unexpected container {other:?} in the template"),
            }
        }
    }
    (pod, http_port)
}

/// The container named `name` (in containers or initContainers) of a rendered pod.
pub fn container<'a>(pod: &'a mut Value, name: &str) -> &'a mut Value {
    let spec = &mut pod["spec"];
    let in_init = spec["initContainers"]
        .as_array()
        .is_some_and(|l| l.iter().any(|c| c["name"] == name));
    let list = if in_init {
        "initContainers"
    } else {
        "containers"
    };
    spec[list]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// A free port never handed out before by this test process. The kubelet admits a
/// hostNetwork pod only if no other pod on the node declares the same ports, bound or not
/// (a pod still starting, or terminating, holds them): a port that is merely free now
/// could be one another pod has declared (seen: "Predicate NodePorts failed").
pub fn pod_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let p = free_port();
        if GIVEN.lock().unwrap_or_else(|e| e.into_inner()).insert(p) {
            return p;
        }
    }
}

/// Creates the pod in the namespace; returns it as the API server stored it.
pub fn create(ns: &Namespace, pod: &Value) -> Value {
    ns.api
        .post(&format!("/api/v1/namespaces/{}/pods", ns.name), pod)
}

/// Waits until the kubelet reports the pod Ready; returns the pod.
pub fn wait_ready(node: &Node, ns: &Namespace, name: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let pod = ns.get_pod(name);
        let ready = pod["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        });
        if ready {
            return pod;
        }
        assert!(
            Instant::now() < deadline,
            "pod {name} not Ready after {timeout:?}: {:#}\nkubelet log:\n{}",
            pod["status"],
            node.kubelet_log(40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The containerd id of a container of the pod (from its status), None before it runs.
pub fn container_id(pod: &Value, name: &str) -> Option<String> {
    ["containerStatuses", "initContainerStatuses"]
        .iter()
        .filter_map(|k| pod["status"][k].as_array())
        .flatten()
        .find(|s| s["name"] == name)
        .and_then(|s| s["containerID"].as_str())
        .map(|id| id.trim_start_matches("containerd://").to_string())
}

/// A container's status entry.
pub fn container_status(pod: &Value, name: &str) -> Value {
    ["containerStatuses", "initContainerStatuses"]
        .iter()
        .filter_map(|k| pod["status"][k].as_array())
        .flatten()
        .find(|s| s["name"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

/// An admin client of the node's control plane.
pub fn admin(node: &Node) -> Api {
    node.cluster.api.clone()
}
