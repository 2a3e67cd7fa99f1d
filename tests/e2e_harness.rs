//! Smoke tests of the end-to-end harness itself (tests/harness): the control plane
//! starts, a namespace gets the shipped RBAC and a working service-account token, pods
//! are driven like a kubelet would, the observer sees label changes and catches two
//! leaders, the proxy can cut and heal a connection, kube-apiserver restarts in place,
//! the real binary runs as a sidecar with overridden flags, and the fault proxy
//! (tests/harness/src/faults.rs) injects each of its faults exactly as documented.

use harness::api::{Api, MERGE};
use harness::{secs, ELECTION};
use harness::{
    Cluster, ClusterOptions, Namespace, Observer, Proxy, Sidecar, SidecarOptions, LEADER_KEY,
};
use serde_json::json;
use std::sync::mpsc;
use std::time::Duration;

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
    assert!(ns.sa_can("update", "leases", Some(ELECTION)));
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
    assert!(ns.sa_can("update", "leases", Some(ELECTION)));
}

#[test]
fn proxy_stalls_and_heals_connections() {
    let cluster = Cluster::shared();
    let proxy = Proxy::start(cluster.port);
    let through = Api::new(
        &proxy.url(),
        &cluster.ca_file(),
        harness::cluster::ADMIN_TOKEN,
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

// ---------------------------------------------------------------------------------------
// The fault proxy (tests/harness/src/faults.rs): each fault does what it says, against the
// real kube-apiserver, observed from both sides (the client, and the server read
// directly).

use harness::cluster::ADMIN_TOKEN;
use harness::faults::{classify, Fault, FaultProxy, Kind};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Instant;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn leases(ns: &Namespace) -> String {
    format!("/apis/coordination.k8s.io/v1/namespaces/{}/leases", ns.name)
}

fn lease_at(ns: &Namespace, name: &str) -> String {
    format!("{}/{name}", leases(ns))
}

fn lease(name: &str, holder: &str) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 3},
    })
}

fn holder_patch(holder: &str) -> Value {
    json!({"spec": {"holderIdentity": holder}})
}

/// The Lease's holder read directly from the server (not through the proxy); None when
/// the Lease does not exist.
fn holder_at_server(ns: &Namespace, name: &str) -> Option<String> {
    let (code, v) = ns.api.call("GET", &lease_at(ns, name), None);
    match code {
        200 => Some(
            v["spec"]["holderIdentity"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        ),
        404 => None,
        _ => panic!("GET lease answered {code}: {v}"),
    }
}

/// The admin client, through the proxy.
fn through(proxy: &FaultProxy) -> Api {
    Api::new(&proxy.url(), &Cluster::shared().ca_file(), ADMIN_TOKEN)
}

/// A ureq agent that gives up after `timeout`, like a sidecar's call timeout.
fn impatient(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .proxy(None)
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .new_agent()
}

fn send_json(agent: &ureq::Agent, method: &str, url: &str, body: &Value) -> Result<u16, String> {
    let req = ureq::http::Request::builder()
        .method(method)
        .uri(url)
        .header("Authorization", format!("Bearer {ADMIN_TOKEN}"))
        .header("Content-Type", "application/json")
        .body(serde_json::to_vec(body).unwrap())
        .unwrap();
    agent
        .run(req)
        .map(|r| r.status().as_u16())
        .map_err(|e| e.to_string())
}

/// What a raw watch client saw.
#[derive(Debug)]
enum Seen {
    Event(Value, Instant),
    /// The connection ended (EOF, reset, last chunk): why (read through `Debug`).
    #[allow(dead_code)]
    Closed(String),
}

/// A watch through the proxy on a raw socket (no client timeouts, no reconnects): every
/// event with its arrival time, and the end of the connection, on a channel.
fn raw_watch(proxy: &FaultProxy, path: &str) -> mpsc::Receiver<Seen> {
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nAccept: application/json\r\n\r\n"
    )
    .unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(s);
        let mut line = String::new();
        let closed = |why: String| Seen::Closed(why);
        if r.read_line(&mut line).unwrap_or(0) == 0 || !line.contains(" 200 ") {
            let _ = tx.send(closed(format!("status line {line:?}")));
            return;
        }
        loop {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(closed("EOF in head".into()));
                    return;
                }
                _ if line.trim().is_empty() => break,
                _ => {}
            }
        }
        let mut pending: Vec<u8> = Vec::new();
        loop {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) => {
                    let _ = tx.send(closed("EOF".into()));
                    return;
                }
                Err(e) => {
                    let _ = tx.send(closed(e.to_string()));
                    return;
                }
                _ => {}
            }
            let size = usize::from_str_radix(line.trim(), 16).expect("chunk size");
            if size == 0 {
                let _ = tx.send(closed("last chunk".into()));
                return;
            }
            let mut data = vec![0; size + 2];
            if let Err(e) = std::io::Read::read_exact(&mut r, &mut data) {
                let _ = tx.send(closed(e.to_string()));
                return;
            }
            pending.extend_from_slice(&data[..size]);
            while let Some(i) = pending.iter().position(|b| *b == b'\n') {
                let l: Vec<u8> = pending.drain(..=i).collect();
                let v: Value = serde_json::from_slice(&l).expect("a JSON watch event");
                if tx.send(Seen::Event(v, Instant::now())).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// A watch of one Lease from `resource_version`.
fn lease_watch(ns: &Namespace, name: &str, resource_version: &str) -> String {
    format!(
        "{}?watch=true&fieldSelector=metadata.name%3D{name}&resourceVersion={resource_version}",
        leases(ns)
    )
}

/// The next event, which must be a MODIFIED of the Lease to `holder`; its arrival time.
fn next_holder(rx: &mpsc::Receiver<Seen>, holder: &str, timeout: Duration) -> Instant {
    match rx.recv_timeout(timeout) {
        Ok(Seen::Event(ev, at)) => {
            assert_eq!(ev["type"], "MODIFIED", "{ev}");
            assert_eq!(ev["object"]["spec"]["holderIdentity"], holder, "{ev}");
            at
        }
        other => panic!("expected the event to {holder}, got {other:?}"),
    }
}

#[test]
fn fault_proxy_classifies_requests() {
    let l = "/apis/coordination.k8s.io/v1/namespaces/ns/leases";
    let p = "/api/v1/namespaces/ns/pods";
    for (method, target, kind) in [
        ("POST", l, Kind::LeaseWrite),
        ("PUT", &format!("{l}/{ELECTION}") as &str, Kind::LeaseWrite),
        ("PATCH", &format!("{l}/{ELECTION}"), Kind::LeaseWrite),
        ("DELETE", &format!("{l}/{ELECTION}"), Kind::LeaseWrite),
        ("GET", &format!("{l}/{ELECTION}"), Kind::LeaseRead),
        ("GET", l, Kind::LeaseRead),
        (
            "GET",
            &format!("{l}?fieldSelector=metadata.name%3D{ELECTION}&watch=true&resourceVersion=5"),
            Kind::LeaseWatch,
        ),
        ("GET", &format!("{l}?watch=1"), Kind::LeaseWatch),
        ("GET", &format!("{l}?watch=false"), Kind::LeaseRead),
        (
            "GET",
            &format!("/apis/coordination.k8s.io/v1/watch/namespaces/ns/leases/{ELECTION}"),
            Kind::LeaseWatch,
        ),
        ("PATCH", &format!("{p}/pod-a"), Kind::PodWrite),
        ("PUT", &format!("{p}/pod-a/status"), Kind::PodWrite),
        ("PATCH", &format!("{p}/pod-a/status"), Kind::PodWrite),
        ("GET", &format!("{p}/pod-a"), Kind::PodRead),
        (
            "GET",
            &format!("{p}?labelSelector=app%3Dmy-app"),
            Kind::PodRead,
        ),
        (
            "GET",
            &format!("{p}?labelSelector=app&watch=true"),
            Kind::PodWatch,
        ),
        ("GET", "/api/v1/pods", Kind::PodRead),
        ("POST", p, Kind::Other),
        ("DELETE", &format!("{p}/pod-a"), Kind::Other),
        ("GET", "/readyz", Kind::Other),
        ("GET", "/api/v1/namespaces/ns", Kind::Other),
        ("GET", "/api/v1/namespaces/leases", Kind::Other),
        (
            "POST",
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            Kind::Other,
        ),
        (
            "GET",
            "/api/v1/namespaces/ns/configmaps/leases",
            Kind::Other,
        ),
    ] {
        assert_eq!(classify(method, target), kind, "{method} {target}");
    }
}

#[test]
fn fault_proxy_forwards_and_streams_watches_fast() {
    let cluster = Cluster::shared();
    let ns = Namespace::new(cluster, "fp-pass");
    let proxy = FaultProxy::start(cluster);
    let api = through(&proxy);
    assert_eq!(api.call("GET", "/readyz", None).0, 200);
    // Status, Content-Type and body pass through, errors included; keep-alive works.
    let (code, v) = api.call("GET", &lease_at(&ns, "l1"), None);
    assert_eq!((code, &v["reason"]), (404, &json!("NotFound")), "{v}");
    let created = api.post(&leases(&ns), &lease("l1", "a"));
    assert_eq!(created["spec"]["holderIdentity"], "a");
    let (code, v) = api.call(
        "POST",
        &leases(&ns),
        Some(("application/json", &lease("l1", "b"))),
    );
    assert_eq!((code, &v["reason"]), (409, &json!("AlreadyExists")), "{v}");
    api.patch(&lease_at(&ns, "l1"), MERGE, &holder_patch("b"));
    assert_eq!(holder_at_server(&ns, "l1").as_deref(), Some("b"));
    assert_eq!(proxy.count(Kind::LeaseWrite), 3);
    assert_eq!(proxy.count(Kind::LeaseRead), 1);
    let statuses: Vec<_> = proxy.records().iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [Some(200), Some(404), Some(201), Some(409), Some(200)]
    );

    // A watch through the proxy: each event arrives within milliseconds of the write.
    let rv = ns.api.get(&lease_at(&ns, "l1"))["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let rx = raw_watch(&proxy, &lease_watch(&ns, "l1", &rv));
    proxy.wait_for(Kind::Watch, secs(5), "the watch answered", |r| {
        r.answered == Some(200)
    });
    let mut worst = Duration::ZERO;
    for holder in ["c", "d", "e"] {
        ns.api
            .patch(&lease_at(&ns, "l1"), MERGE, &holder_patch(holder));
        let written = Instant::now();
        let at = next_holder(&rx, holder, secs(5));
        worst = worst.max(at.saturating_duration_since(written));
    }
    eprintln!("watch event latency through the fault proxy: worst {worst:?}");
    assert!(worst < ms(250), "events took {worst:?}");
    let w = proxy.wait_for(Kind::Watch, secs(5), "three chunks", |r| r.chunks >= 3);
    assert!(!w.done, "the watch is still open");
}

#[test]
fn fault_proxy_drop_response_applies_the_write_and_loses_the_answer() {
    let cluster = Cluster::shared();
    let ns = Namespace::new(cluster, "fp-drop");
    let proxy = FaultProxy::start(cluster);
    let api = through(&proxy);
    proxy.set(Kind::LeaseWrite, Some(Fault::DropResponse));

    let (code, err) = api.call(
        "POST",
        &leases(&ns),
        Some(("application/json", &lease("l1", "a"))),
    );
    eprintln!("ureq on a dropped answer: {err}");
    assert_eq!(code, 0, "a transport error is expected, got {code}: {err}");
    let r = proxy.wait_for(Kind::LeaseWrite, secs(5), "the create applied", |r| {
        r.applied() && r.done
    });
    assert_eq!(
        (r.fault, r.status, r.answered),
        (Some(Fault::DropResponse), Some(201), None)
    );
    assert_eq!(holder_at_server(&ns, "l1").as_deref(), Some("a"));

    let (code, err) = api.call(
        "PATCH",
        &lease_at(&ns, "l1"),
        Some((MERGE, &holder_patch("b"))),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(holder_at_server(&ns, "l1").as_deref(), Some("b"));
    assert_eq!(proxy.count(Kind::LeaseWrite), 2, "the client did not retry");

    // Other kinds pass; clearing the fault lets writes answer again.
    assert_eq!(api.call("GET", &lease_at(&ns, "l1"), None).0, 200);
    proxy.set(Kind::LeaseWrite, None);
    api.patch(&lease_at(&ns, "l1"), MERGE, &holder_patch("c"));
}

#[test]
fn fault_proxy_error_after_apply_answers_an_error_for_an_applied_write() {
    let cluster = Cluster::shared();
    let ns = Namespace::new(cluster, "fp-error");
    ns.api.post(&leases(&ns), &lease("l1", "a"));
    let proxy = FaultProxy::start(cluster);
    let api = through(&proxy);
    proxy.set(Kind::LeaseWrite, Some(Fault::ErrorAfterApply(503)));
    let (code, v) = api.call(
        "PATCH",
        &lease_at(&ns, "l1"),
        Some((MERGE, &holder_patch("b"))),
    );
    assert_eq!(code, 503, "{v}");
    assert_eq!(v["kind"], "Status");
    assert_eq!(v["reason"], "ServiceUnavailable");
    assert_eq!(holder_at_server(&ns, "l1").as_deref(), Some("b"), "applied");
    let r = &proxy.records()[0];
    assert_eq!((r.status, r.answered), (Some(200), Some(503)));

    proxy.set(Kind::LeaseWrite, Some(Fault::ErrorAfterApply(504)));
    let (code, v) = api.call(
        "PUT",
        &lease_at(&ns, "l1"),
        Some(("application/json", &{
            let mut l = ns.api.get(&lease_at(&ns, "l1"));
            l["spec"]["holderIdentity"] = json!("c");
            l
        })),
    );
    assert_eq!((code, &v["reason"]), (504, &json!("Timeout")), "{v}");
    assert_eq!(holder_at_server(&ns, "l1").as_deref(), Some("c"), "applied");
    // The connection stayed usable: the next call on it answers normally.
    assert_eq!(api.call("GET", &lease_at(&ns, "l1"), None).0, 200);
}

#[test]
fn fault_proxy_delay_applies_the_write_late_after_the_client_gave_up() {
    let cluster = Cluster::shared();
    let ns = Namespace::new(cluster, "fp-delay");
    let proxy = FaultProxy::start(cluster);
    let delay = ms(1500);
    proxy.set(Kind::LeaseWrite, Some(Fault::Delay(delay)));
    let sent = Instant::now();
    let result = send_json(
        &impatient(ms(300)),
        "POST",
        &format!("{}{}", proxy.url(), leases(&ns)),
        &lease("l1", "late"),
    );
    eprintln!("ureq timing out on a delayed write: {result:?}");
    assert!(result.is_err(), "the client gives up first: {result:?}");
    // The proxy forwards only after 1.5 s: nothing at the server yet.
    assert_eq!(holder_at_server(&ns, "l1"), None);
    proxy.wait_for(Kind::LeaseWrite, secs(10), "the late create applied", |r| {
        r.applied()
    });
    assert!(sent.elapsed() >= delay);
    assert_eq!(holder_at_server(&ns, "l1").as_deref(), Some("late"));

    // A patient client gets its answer, late.
    proxy.set(Kind::LeaseRead, Some(Fault::Delay(ms(300))));
    let asked = Instant::now();
    assert_eq!(
        through(&proxy).call("GET", &lease_at(&ns, "l1"), None).0,
        200
    );
    assert!(asked.elapsed() >= ms(300));
}

#[test]
fn fault_proxy_stall_holds_watch_events_without_closing() {
    let cluster = Cluster::shared();
    let ns = Namespace::new(cluster, "fp-stall");
    let created = ns.api.post(&leases(&ns), &lease("l1", "a"));
    let rv = created["metadata"]["resourceVersion"].as_str().unwrap();
    let proxy = FaultProxy::start(cluster);
    let rx = raw_watch(&proxy, &lease_watch(&ns, "l1", rv));
    proxy.wait_for(Kind::Watch, secs(5), "the watch answered", |r| {
        r.answered == Some(200)
    });
    ns.api
        .patch(&lease_at(&ns, "l1"), MERGE, &holder_patch("b"));
    next_holder(&rx, "b", secs(5));

    proxy.set(Kind::Watch, Some(Fault::Stall));
    ns.api
        .patch(&lease_at(&ns, "l1"), MERGE, &holder_patch("c"));
    // The event reached the proxy and is held there...
    let w = proxy.wait_for(Kind::Watch, secs(5), "the event held", |r| r.held);
    assert!(!w.done);
    assert_eq!(holder_at_server(&ns, "l1").as_deref(), Some("c"));
    // ...and the client sees nothing: no event, no FIN, no RST.
    match rx.recv_timeout(ms(500)) {
        Err(mpsc::RecvTimeoutError::Timeout) => {}
        other => panic!("a stalled watch delivered {other:?}"),
    }
    // The stall ends: the held event arrives, nothing lost, the stream goes on.
    proxy.set(Kind::Watch, None);
    next_holder(&rx, "c", secs(5));
    ns.api
        .patch(&lease_at(&ns, "l1"), MERGE, &holder_patch("d"));
    next_holder(&rx, "d", secs(5));
}

#[test]
fn fault_proxy_stalled_requests_are_held_then_forwarded_only_to_a_waiting_client() {
    let cluster = Cluster::shared();
    let ns = Namespace::new(cluster, "fp-stall-req");
    let proxy = FaultProxy::start(cluster);

    // A client that gives up: its stalled write is never forwarded.
    proxy.set(Kind::LeaseWrite, Some(Fault::Stall));
    let result = send_json(
        &impatient(ms(300)),
        "POST",
        &format!("{}{}", proxy.url(), leases(&ns)),
        &lease("l1", "stalled"),
    );
    assert!(result.is_err(), "{result:?}");
    proxy.wait_for(Kind::LeaseWrite, secs(5), "the write held", |r| r.held);
    proxy.set(Kind::LeaseWrite, None);
    let r = proxy.wait_for(Kind::LeaseWrite, secs(5), "the write done", |r| r.done);
    assert!(!r.forwarded, "{r:?}");
    assert_eq!(holder_at_server(&ns, "l1"), None);

    // A client that waits: answered once the stall ends.
    ns.api.post(&leases(&ns), &lease("l1", "a"));
    proxy.set(Kind::LeaseRead, Some(Fault::Stall));
    let (tx, rx) = mpsc::channel();
    let api = through(&proxy);
    let path = lease_at(&ns, "l1");
    std::thread::spawn(move || {
        let _ = tx.send(api.call("GET", &path, None).0);
    });
    proxy.wait_for(Kind::LeaseRead, secs(5), "the read held", |r| r.held);
    assert!(rx.try_recv().is_err(), "a stalled read was answered");
    proxy.clear();
    assert_eq!(rx.recv_timeout(secs(5)), Ok(200));
}

#[test]
fn fault_proxy_slow_chunks_delays_each_watch_event() {
    let cluster = Cluster::shared();
    let ns = Namespace::new(cluster, "fp-slow");
    let created = ns.api.post(&leases(&ns), &lease("l1", "a"));
    let rv = created["metadata"]["resourceVersion"].as_str().unwrap();
    let proxy = FaultProxy::start(cluster);
    let rx = raw_watch(&proxy, &lease_watch(&ns, "l1", rv));
    proxy.wait_for(Kind::Watch, secs(5), "the watch answered", |r| {
        r.answered == Some(200)
    });
    // Set on the open stream.
    let slow = ms(400);
    proxy.set(Kind::Watch, Some(Fault::SlowChunks(slow)));
    let t0 = Instant::now();
    ns.api
        .patch(&lease_at(&ns, "l1"), MERGE, &holder_patch("b"));
    ns.api
        .patch(&lease_at(&ns, "l1"), MERGE, &holder_patch("c"));
    let first = next_holder(&rx, "b", secs(5));
    let second = next_holder(&rx, "c", secs(5));
    assert!(first - t0 >= slow, "first event after {:?}", first - t0);
    assert!(
        second - first >= slow - ms(20),
        "events {:?} apart",
        second - first
    );
    proxy.set(Kind::Watch, None);
    ns.api
        .patch(&lease_at(&ns, "l1"), MERGE, &holder_patch("d"));
    let t1 = Instant::now();
    let third = next_holder(&rx, "d", secs(5));
    assert!(third - t1 < slow, "back to fast: {:?}", third - t1);
}

#[test]
fn fault_proxy_refuse_resets_and_never_forwards() {
    let cluster = Cluster::shared();
    let ns = Namespace::new(cluster, "fp-refuse");
    let proxy = FaultProxy::start(cluster);
    let api = through(&proxy);
    proxy.set(Kind::LeaseWrite, Some(Fault::Refuse));
    let (code, err) = api.call(
        "POST",
        &leases(&ns),
        Some(("application/json", &lease("l1", "a"))),
    );
    eprintln!("ureq on a refused request: {err}");
    assert_eq!(code, 0, "{err}");
    let n = proxy.count(Kind::LeaseWrite);
    assert!(
        proxy
            .records()
            .iter()
            .all(|r| !r.forwarded && r.done && r.answered.is_none()),
        "{:?}",
        proxy.records()
    );
    assert_eq!(n, 1, "the client did not retry");
    assert_eq!(holder_at_server(&ns, "l1"), None);
    // Reads still pass on a new connection.
    assert_eq!(api.call("GET", &lease_at(&ns, "l1"), None).0, 404);
    proxy.clear();
    api.post(&leases(&ns), &lease("l1", "a"));
}

#[test]
fn fault_proxy_once_applies_to_the_next_request_only() {
    let cluster = Cluster::shared();
    let ns = Namespace::new(cluster, "fp-once");
    ns.api.post(&leases(&ns), &lease("l1", "a"));
    let proxy = FaultProxy::start(cluster);
    let api = through(&proxy);
    let get = || api.call("GET", &lease_at(&ns, "l1"), None).0;
    proxy.once(Kind::LeaseRead, Fault::ErrorAfterApply(504));
    assert_eq!(get(), 504);
    assert_eq!(get(), 200);
    assert_eq!(get(), 200);
    // A queued `once` comes before the persistent fault; `clear` removes both.
    proxy.set(Kind::LeaseRead, Some(Fault::ErrorAfterApply(503)));
    proxy.once(Kind::LeaseRead, Fault::ErrorAfterApply(500));
    assert_eq!(get(), 500);
    assert_eq!(get(), 503);
    proxy.once(Kind::LeaseRead, Fault::ErrorAfterApply(500));
    proxy.clear();
    assert_eq!(get(), 200);
    let faults: Vec<_> = proxy.records().iter().map(|r| r.fault).collect();
    assert_eq!(
        faults,
        [
            Some(Fault::ErrorAfterApply(504)),
            None,
            None,
            Some(Fault::ErrorAfterApply(500)),
            Some(Fault::ErrorAfterApply(503)),
            None
        ]
    );
    assert_eq!(proxy.wait_count(Kind::LeaseRead, 6, secs(1)), 6);
}

#[test]
fn fault_proxy_drop_closes_everything() {
    let cluster = Cluster::shared();
    let proxy = FaultProxy::start(cluster);
    let port = proxy.port;
    proxy.set(Kind::Other, Some(Fault::Stall));
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    proxy.wait_for(Kind::Other, secs(5), "the request held", |r| r.held);
    let dropped = Instant::now();
    drop(proxy);
    assert!(
        dropped.elapsed() < secs(2),
        "drop took {:?}",
        dropped.elapsed()
    );
    s.set_read_timeout(Some(secs(5))).unwrap();
    let mut buf = [0u8; 64];
    let n = std::io::Read::read(&mut s, &mut buf);
    assert!(
        matches!(n, Ok(0))
            || n.as_ref()
                .is_err_and(|e| e.kind() != std::io::ErrorKind::WouldBlock),
        "the held connection is closed: {n:?}"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "no listener"
    );
}

#[test]
fn fault_proxy_carries_a_real_sidecar_to_leadership() {
    let cluster = Cluster::shared();
    let ns = Namespace::new(cluster, "fp-sidecar");
    ns.create_pod("pod-a", true);
    let observer = Observer::start(&ns);
    let proxy = FaultProxy::start(cluster);
    let sidecar = Sidecar::spawn_with(
        &ns,
        "pod-a",
        SidecarOptions {
            server: Some(proxy.url()),
            extra: &[],
        },
    );
    assert_eq!(observer.wait_for_single_leader(secs(15)), "pod-a");
    let lease = ns.get_lease().expect("the sidecar created the lease");
    assert_eq!(lease["spec"]["holderIdentity"], "pod-a");
    proxy.wait_count(Kind::LeaseWrite, 1, secs(5));
    proxy.wait_count(Kind::PodWrite, 1, secs(5));
    proxy.wait_count(Kind::Watch, 1, secs(5));
    assert!(
        !sidecar.output().contains("ca-file"),
        "{}",
        sidecar.output()
    );
    observer.assert_never_two_leaders();
}
