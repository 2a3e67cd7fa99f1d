//! A fresh namespace per test, with the ServiceAccount, Role and RoleBinding applied from
//! deploy/rbac.yaml itself, a real service-account token from the TokenRequest API, and
//! plain Pod objects whose readiness and deletion the test drives.

use crate::api::{Api, MERGE, STRATEGIC};
use crate::cluster::Cluster;
use crate::wait;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The election (and Lease) name every test uses.
pub const ELECTION: &str = "my-app";
/// The leadership label the sidecar writes by default.
pub const LEADER_KEY: &str = "my-app/is-leader";
/// The participation label the sidecar writes by default.
pub const PARTICIPANT_KEY: &str = "my-app/participant";
/// The Lease annotation that asks for a switchover to the pod it names.
pub const SWITCHOVER_KEY: &str = "my-app/switchover-to";
/// The pod annotation that gives a pod's leadership priority.
pub const PRIORITY_KEY: &str = "my-app/priority";
/// The ServiceAccount deploy/rbac.yaml creates.
pub const SERVICE_ACCOUNT: &str = "leader-labeler";

/// A namespace of its own for one test (never reused: without a controller-manager a
/// deleted namespace stays Terminating). Holds deploy/rbac.yaml's ServiceAccount, Role
/// and RoleBinding, and a service-account token in `token_file()`. Dropping it
/// force-deletes its pods.
pub struct Namespace<'c> {
    pub cluster: &'c Cluster,
    pub name: String,
    /// Admin client (system:masters).
    pub api: Api,
    /// This namespace's folder inside the cluster's: token file, sidecar logs.
    pub dir: PathBuf,
    /// Pod IPs handed out so far (TEST-NET-1, 192.0.2.0/24: stored, never contacted).
    ips: AtomicU32,
}

/// deploy/rbac.yaml with the namespace substituted.
pub fn rbac_manifest(namespace: &str) -> String {
    let text = std::fs::read_to_string(crate::repo_root().join("deploy/rbac.yaml"))
        .expect("deploy/rbac.yaml");
    text.replace("namespace: default", &format!("namespace: {namespace}"))
}

impl<'c> Namespace<'c> {
    /// Creates `<prefix>-<pid>-<n>`, applies deploy/rbac.yaml there, writes a fresh
    /// service-account token (TokenRequest, 1 h) to `token_file()` and returns once RBAC
    /// lets that token list pods.
    pub fn new(cluster: &'c Cluster, prefix: &str) -> Namespace<'c> {
        Self::with_rbac(cluster, prefix, |m| m)
    }

    /// Like `new`, with the RBAC manifest (YAML text) edited first (for
    /// missing-permission tests).
    pub fn with_rbac(
        cluster: &'c Cluster,
        prefix: &str,
        edit: impl FnOnce(String) -> String,
    ) -> Namespace<'c> {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        cluster.api.post(
            "/api/v1/namespaces",
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
        );
        let out = cluster.kubectl(&["apply", "-f", "-"], Some(&edit(rbac_manifest(&name))));
        assert!(
            out.status.success(),
            "kubectl apply deploy/rbac.yaml failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = cluster.dir.join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        let ns = Namespace {
            cluster,
            api: cluster.api.clone(),
            name,
            dir,
            ips: AtomicU32::new(0),
        };
        let token = ns.request_token();
        ns.write_token(&token);
        ns.wait_for_rbac(&token);
        ns
    }

    fn request_token(&self) -> String {
        let v = self.api.post(
            &format!(
                "/api/v1/namespaces/{}/serviceaccounts/{SERVICE_ACCOUNT}/token",
                self.name
            ),
            &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                    "spec": {"expirationSeconds": 3600}}),
        );
        v["status"]["token"].as_str().expect("token").to_string()
    }

    /// A new, valid token for the service account (as the kubelet's rotation would give).
    pub fn fresh_token(&self) -> String {
        self.request_token()
    }

    /// RBAC caches bindings for a moment: wait until the service account may list pods.
    fn wait_for_rbac(&self, token: &str) {
        let sa = Api::new(&self.cluster.server_url(), &self.cluster.ca_file(), token);
        let pods = format!("/api/v1/namespaces/{}/pods", self.name);
        wait::until_every(
            "RBAC to let the service account list pods",
            Duration::from_secs(20),
            Duration::from_millis(100),
            || match sa.call("GET", &pods, None) {
                (200, _) => Ok(()),
                (code, body) => Err(format!("{code} {body}")),
            },
        );
    }

    /// Deletes and recreates the ServiceAccount: every token issued before is now
    /// rejected with 401 (bound tokens name the account's uid).
    pub fn recreate_service_account(&self) {
        let path = format!("/api/v1/namespaces/{}/serviceaccounts", self.name);
        self.api
            .delete(&format!("{path}/{SERVICE_ACCOUNT}"), &json!({}));
        let account = json!({"apiVersion": "v1", "kind": "ServiceAccount",
                             "metadata": {"name": SERVICE_ACCOUNT}});
        wait::until(
            "the service account recreated",
            Duration::from_secs(10),
            || {
                let body = Some(("application/json", &account));
                self.api.call("POST", &path, body).0 == 201
            },
        );
    }

    /// The service-account token file the sidecars read (as if mounted in the pod).
    pub fn token_file(&self) -> PathBuf {
        self.dir.join("token")
    }

    /// Replaces the token file atomically, as the kubelet does.
    pub fn write_token(&self, token: &str) {
        let tmp = self.dir.join("token.tmp");
        std::fs::write(&tmp, token).unwrap();
        std::fs::rename(&tmp, self.token_file()).unwrap();
    }

    /// A client that authenticates with the token currently in `token_file()`: what the
    /// sidecar may and may not do.
    pub fn sa_api(&self) -> Api {
        let token = std::fs::read_to_string(self.token_file()).expect("token file");
        Api::new(
            &self.cluster.server_url(),
            &self.cluster.ca_file(),
            token.trim(),
        )
    }

    /// Whether the service account may `verb` the `resource` (`"pods"`, `"leases"`,
    /// `"events"`; the group is implied) named `name`, by a SelfSubjectAccessReview made
    /// with its token.
    pub fn sa_can(&self, verb: &str, resource: &str, name: Option<&str>) -> bool {
        let group = match resource {
            "leases" => "coordination.k8s.io",
            _ => "",
        };
        let (code, v) = self.sa_api().call(
            "POST",
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            Some((
                "application/json",
                &json!({"apiVersion": "authorization.k8s.io/v1",
                        "kind": "SelfSubjectAccessReview",
                        "spec": {"resourceAttributes": {
                            "namespace": self.name, "verb": verb, "group": group,
                            "resource": resource, "name": name.unwrap_or("")}}}),
            )),
        );
        assert_eq!(code, 201, "SelfSubjectAccessReview: {v}");
        v["status"]["allowed"] == true
    }

    /// deploy/rbac.yaml's Role for this namespace, as JSON.
    pub fn shipped_role(&self) -> Value {
        self.cluster
            .manifest_objects(&rbac_manifest(&self.name), "deploy/rbac.yaml")
            .into_iter()
            .find(|i| i["kind"] == "Role")
            .expect("deploy/rbac.yaml has a Role")
    }

    /// Replaces the Role `leader-labeler` with `role` (JSON; its namespace is set here).
    pub fn apply_role(&self, mut role: Value) {
        role["metadata"]["namespace"] = json!(self.name);
        let path = format!(
            "/apis/rbac.authorization.k8s.io/v1/namespaces/{}/roles/{SERVICE_ACCOUNT}",
            self.name
        );
        role["metadata"]["resourceVersion"] =
            self.api.get(&path)["metadata"]["resourceVersion"].clone();
        self.api.put(&path, &role);
    }

    /// Re-applies deploy/rbac.yaml's Role without `verb` on `resource` (in every rule
    /// naming that resource; rules left without verbs are dropped), and returns once the
    /// API server denies it to the service account.
    pub fn apply_role_without(&self, verb: &str, resource: &str) {
        let mut role = self.shipped_role();
        let rules: Vec<Value> = role["rules"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|mut rule| {
                let names_it = rule["resources"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|x| x == resource));
                if names_it {
                    let verbs = rule["verbs"].as_array_mut()?;
                    verbs.retain(|v| v != verb);
                    if verbs.is_empty() {
                        return None;
                    }
                }
                Some(rule)
            })
            .collect();
        role["rules"] = Value::Array(rules);
        self.apply_role(role);
        let name = (resource == "leases").then_some(ELECTION);
        wait::until(
            &format!("RBAC to deny {verb} {resource} after the Role changed"),
            Duration::from_secs(20),
            || !self.sa_can(verb, resource, name),
        );
    }

    fn pods(&self) -> String {
        format!("/api/v1/namespaces/{}/pods", self.name)
    }

    /// A plain Pod (label app=my-app, spec.nodeName set, serviceAccountName
    /// leader-labeler, one container, terminationGracePeriodSeconds 30, a TEST-NET podIP)
    /// with its Ready condition set as asked. Nothing runs it; the test drives its status.
    pub fn create_pod(&self, name: &str, ready: bool) -> Value {
        self.create_pod_with_grace(name, ready, 30)
    }

    /// `create_pod` with `terminationGracePeriodSeconds: grace`.
    pub fn create_pod_with_grace(&self, name: &str, ready: bool, grace: u64) -> Value {
        self.api.post(
            &self.pods(),
            &json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "labels": {"app": "my-app"}},
                "spec": {
                    "nodeName": crate::cluster::NODE,
                    "serviceAccountName": SERVICE_ACCOUNT,
                    "terminationGracePeriodSeconds": grace,
                    "containers": [{"name": "app", "image": "registry.invalid/app:1"}]
                }
            }),
        );
        let n = self.ips.fetch_add(1, Ordering::SeqCst) + 1;
        assert!(n < 255, "out of test pod IPs");
        let ip = format!("192.0.2.{n}");
        self.api.patch(
            &format!("{}/{name}/status", self.pods()),
            STRATEGIC,
            &json!({"status": {"podIP": ip, "podIPs": [{"ip": ip}]}}),
        );
        self.set_ready(name, ready)
    }

    /// The podIP `create_pod` gave the pod.
    pub fn pod_ip(&self, name: &str) -> String {
        self.get_pod(name)["status"]["podIP"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// Sets the Ready condition through the status subresource, as the kubelet would.
    pub fn set_ready(&self, name: &str, ready: bool) -> Value {
        let status = if ready { "True" } else { "False" };
        self.api.patch(
            &format!("{}/{name}/status", self.pods()),
            STRATEGIC,
            &json!({"status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": status},
                {"type": "ContainersReady", "status": status}
            ]}}),
        )
    }

    /// Graceful delete: sets deletionTimestamp; nothing finalizes it without a kubelet
    /// (finish with `force_delete`).
    pub fn delete_pod(&self, name: &str, grace_seconds: u64) {
        self.api.delete(
            &format!("{}/{name}", self.pods()),
            &json!({"gracePeriodSeconds": grace_seconds}),
        );
    }

    /// Removes the pod at once (grace 0); a missing pod is fine.
    pub fn force_delete(&self, name: &str) {
        let _ = self.api.call(
            "DELETE",
            &format!("{}/{name}", self.pods()),
            Some(("application/json", &json!({"gracePeriodSeconds": 0}))),
        );
    }

    /// The pod as JSON (panics unless 200).
    pub fn get_pod(&self, name: &str) -> Value {
        self.api.get(&format!("{}/{name}", self.pods()))
    }

    /// A label of the pod, read from the API server now.
    pub fn label(&self, pod: &str, key: &str) -> Option<String> {
        self.get_pod(pod)["metadata"]["labels"][key]
            .as_str()
            .map(str::to_string)
    }

    /// Sets a label as admin (JSON merge patch).
    pub fn set_label(&self, pod: &str, key: &str, value: &str) {
        self.api.patch(
            &format!("{}/{pod}", self.pods()),
            MERGE,
            &json!({"metadata": {"labels": {key: value}}}),
        );
    }

    /// The election's Lease (`my-app`), None if it does not exist yet.
    pub fn get_lease(&self) -> Option<Value> {
        self.get_lease_named(ELECTION)
    }

    /// The API path of the election's Lease ([`ELECTION`] in this namespace).
    pub fn lease_path(&self) -> String {
        format!(
            "/apis/coordination.k8s.io/v1/namespaces/{}/leases/{ELECTION}",
            self.name
        )
    }

    /// `kubectl annotate lease my-app key=value --overwrite`.
    pub fn annotate_lease(&self, key: &str, value: &str) {
        self.api.patch(
            &self.lease_path(),
            MERGE,
            &json!({"metadata": {"annotations": {key: value}}}),
        );
    }

    /// Any Lease of this namespace, None if it does not exist.
    pub fn get_lease_named(&self, name: &str) -> Option<Value> {
        let (code, v) = self.api.call(
            "GET",
            &format!(
                "/apis/coordination.k8s.io/v1/namespaces/{}/leases/{name}",
                self.name
            ),
            None,
        );
        match code {
            200 => Some(v),
            404 => None,
            other => panic!("get lease: {other} {v}"),
        }
    }
}

impl Drop for Namespace<'_> {
    fn drop(&mut self) {
        // Pods never finalize without a kubelet: remove them so the namespace is clean.
        if let (200, list) = self.api.call("GET", &self.pods(), None) {
            for p in list["items"].as_array().cloned().unwrap_or_default() {
                if let Some(n) = p["metadata"]["name"].as_str() {
                    self.force_delete(n);
                }
            }
        }
    }
}
