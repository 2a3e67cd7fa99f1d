//! Smoke tests of the end-to-end harness itself (tests/support): the control plane
//! starts, a namespace gets the shipped RBAC and a working service-account token, pods
//! are driven like a kubelet would, the observer sees label changes and catches two
//! leaders, the proxy can cut and heal a connection, kube-apiserver restarts in place,
//! and the real binary runs as a sidecar with overridden flags.

mod support;

use serde_json::json;
use std::sync::mpsc;
use std::time::Duration;
use support::api::{Api, MERGE};
use support::{Cluster, ClusterOptions, Namespace, Observer, Proxy, Sidecar, LEADER_KEY};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn is_ready(pod: &serde_json::Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

#[test]
fn namespace_pods_token_rbac_and_observer() {
    let cluster = Cluster::shared();
    let (code, _) = cluster.api.call("GET", "/readyz", None);
    assert_eq!(code, 200);

    let ns = Namespace::new(cluster, "harness");
    let observer = Observer::start_for(&ns, LEADER_KEY);

    // A plain pod, driven through the status subresource.
    ns.create_pod("pod-a", false);
    observer.wait_until(secs(10), "pod-a seen, not ready", |s| {
        s.pods.get("pod-a").is_some_and(|p| !p.ready)
    });
    ns.set_ready("pod-a", true);
    observer.wait_until(secs(10), "pod-a seen ready", |s| {
        s.pods.get("pod-a").is_some_and(|p| p.ready)
    });
    let pod = ns.get_pod("pod-a");
    assert!(is_ready(&pod), "{pod}");
    assert_eq!(pod["metadata"]["labels"]["app"], "my-app");
    assert_eq!(pod["spec"]["serviceAccountName"], "leader-labeler");
    assert!(pod["spec"]["nodeName"].is_string(), "{pod}");
    assert_eq!(pod["spec"]["terminationGracePeriodSeconds"], 30);

    // The service-account token works, and RBAC is exactly deploy/rbac.yaml's Role.
    let token = std::fs::read_to_string(ns.token_file()).unwrap();
    assert!(token.len() > 100, "a JWT is expected in the token file");
    let sa = ns.sa_api();
    let pod_path = format!("/api/v1/namespaces/{}/pods/pod-a", ns.name);
    let (code, body) = sa.call("GET", &pod_path, None);
    assert_eq!(code, 200, "the SA may get its pod: {body}");
    assert_eq!(body["metadata"]["name"], "pod-a");
    let (code, _) = sa.call(
        "PATCH",
        &pod_path,
        Some((MERGE, &json!({"metadata": {"labels": {"x": "y"}}}))),
    );
    assert_eq!(code, 200, "the SA may patch pods");
    let (code, _) = sa.call("DELETE", &pod_path, None);
    assert_eq!(code, 403, "the SA may not delete pods");
    let (code, _) = sa.call("GET", "/api/v1/namespaces/default/pods", None);
    assert_eq!(code, 403, "the SA may not read other namespaces");
    assert!(ns.sa_can("create", "leases", None));
    assert!(ns.sa_can("update", "leases", Some("my-app")));
    assert!(!ns.sa_can("update", "leases", Some("other")));
    assert!(ns.get_lease().is_none());

    // A rotated token replaces the file; the old one stays valid until it expires.
    let fresh = ns.fresh_token();
    ns.write_token(&fresh);
    assert_eq!(std::fs::read_to_string(ns.token_file()).unwrap(), fresh);
    assert_eq!(ns.sa_api().call("GET", &pod_path, None).0, 200);

    // The observer sees a label patched by the admin, as an event.
    ns.set_label("pod-a", LEADER_KEY, "true");
    observer.wait_until(secs(10), "pod-a labeled leader", |s| {
        s.leader().as_deref() == Some("pod-a")
    });
    assert_eq!(
        observer.labels("pod-a").get(LEADER_KEY).map(String::as_str),
        Some("true")
    );
    ns.set_label("pod-a", LEADER_KEY, "false");
    observer.wait_until(secs(10), "pod-a no longer leader", |s| s.leader().is_none());
    assert!(
        observer.gaps().is_empty(),
        "the leaderless spell is still open"
    );
    assert!(observer.with(|s| s.leaderless_since()).is_some());
    observer.assert_never_two_leaders();

    // Graceful deletion only marks the pod; force deletion removes it.
    ns.delete_pod("pod-a", 30);
    observer.wait_until(secs(10), "pod-a terminating", |s| {
        s.pods.get("pod-a").is_some_and(|p| p.deleting)
    });
    ns.force_delete("pod-a");
    observer.wait_until(secs(10), "pod-a gone", |s| !s.pods.contains_key("pod-a"));
}

#[test]
fn observer_catches_two_leaders() {
    let ns = Namespace::new(Cluster::shared(), "harness-two");
    ns.create_pod("pod-a", true);
    ns.create_pod("pod-b", true);
    let observer = Observer::start(&ns).lenient();
    ns.set_label("pod-a", LEADER_KEY, "true");
    ns.set_label("pod-b", LEADER_KEY, "true");
    observer.wait_until(secs(10), "a violation recorded", |s| {
        !s.violations.is_empty()
    });
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        observer.assert_never_two_leaders()
    }));
    assert!(caught.is_err(), "assert_never_two_leaders must fail");
}

#[test]
fn missing_permission_is_applied_and_visible() {
    let ns = Namespace::new(Cluster::shared(), "harness-rbac");
    assert!(ns.sa_can("patch", "pods", None));
    ns.apply_role_without("patch", "pods");
    assert!(!ns.sa_can("patch", "pods", None));
    assert!(ns.sa_can("get", "pods", None), "the other verbs stay");
    assert!(ns.sa_can("update", "leases", Some("my-app")));
}

#[test]
fn proxy_stalls_and_heals_connections() {
    let cluster = Cluster::shared();
    let proxy = Proxy::start(cluster.port);
    let through = Api::new(
        &proxy.url(),
        &cluster.ca_file(),
        support::cluster::ADMIN_TOKEN,
    );
    assert_eq!(through.call("GET", "/readyz", None).0, 200);

    proxy.blackhole(true);
    let (tx, rx) = mpsc::channel();
    let api = through.clone();
    std::thread::spawn(move || {
        let _ = tx.send(api.call("GET", "/readyz", None).0);
    });
    // Absence of an answer can only be checked by waiting for a while.
    assert!(
        rx.recv_timeout(Duration::from_millis(700)).is_err(),
        "a request got through a blackholed proxy"
    );
    proxy.blackhole(false);
    assert_eq!(rx.recv_timeout(secs(10)), Ok(200), "held request completes");
}

#[test]
fn private_cluster_restarts_its_apiserver_in_place() {
    let cluster = Cluster::start(ClusterOptions {
        min_request_timeout: Some(10),
        ..Default::default()
    });
    let url = cluster.server_url();
    let ns = Namespace::new(&cluster, "restart");
    let observer = Observer::start(&ns);
    ns.create_pod("pod-a", true);
    observer.wait_until(secs(10), "pod-a seen", |s| s.pods.contains_key("pod-a"));
    cluster.restart_apiserver();
    assert_eq!(cluster.server_url(), url);
    // The data survived in etcd, and the observer's watch resumes.
    assert!(is_ready(&ns.get_pod("pod-a")));
    ns.set_label("pod-a", LEADER_KEY, "true");
    observer.wait_until(secs(20), "label seen after the restart", |s| {
        s.leader().as_deref() == Some("pod-a")
    });
    let audit = std::fs::read_to_string(cluster.audit_log_path()).unwrap();
    assert!(
        audit.lines().any(|l| l.contains("\"resource\":\"pods\"")),
        "pod requests are audited"
    );
    assert!(
        !audit
            .lines()
            .any(|l| l.contains("\"resource\":\"namespaces\"")),
        "other requests are not"
    );
}

#[test]
fn sidecar_runs_with_overridden_flags() {
    let ns = Namespace::new(Cluster::shared(), "harness-sidecar");
    ns.create_pod("pod-a", true);
    let observer = Observer::start(&ns);
    let mut sidecar = Sidecar::spawn(&ns, "pod-a", &["--lease-duration=4s", "-v"]);
    assert_eq!(observer.wait_for_single_leader(secs(15)), "pod-a");
    assert!(sidecar.is_running());
    let lease = ns.get_lease().expect("the sidecar created the lease");
    assert_eq!(lease["spec"]["holderIdentity"], "pod-a");
    assert_eq!(
        lease["spec"]["leaseDurationSeconds"], 4,
        "the extra flag replaced the default"
    );
    assert!(!sidecar.output().is_empty());
    sidecar.sigkill();
    assert!(sidecar.wait_exit(secs(5)).is_some());
    assert!(!sidecar.is_running());
}
