//! What users actually get: a Service whose endpoints follow the leader. A real
//! kube-controller-manager computes EndpointSlices from the labels the sidecars write,
//! for the Service in deploy/service.yaml; the tests watch those EndpointSlices.

use harness::{secs, wait};
use harness::{Cluster, EndpointWatcher, Namespace, Observer, Sidecar};
use std::time::Instant;

struct Fixture<'c> {
    ns: Namespace<'c>,
    observer: Observer,
    endpoints: EndpointWatcher,
    sidecars: Vec<Sidecar>,
}

impl<'c> Fixture<'c> {
    fn new(cluster: &'c Cluster, tag: &str, pods: &[&str]) -> Fixture<'c> {
        let ns = Namespace::new(cluster, tag);
        let service = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/service.yaml");
        let out = cluster.kubectl(&["apply", "-n", &ns.name, "-f", service], None);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for p in pods {
            ns.create_pod(p, true);
        }
        let observer = Observer::start(&ns);
        let endpoints = EndpointWatcher::start(&ns, "my-app");
        let sidecars = pods.iter().map(|p| Sidecar::spawn(&ns, p, &[])).collect();
        let f = Fixture {
            ns,
            observer,
            endpoints,
            sidecars,
        };
        let leader = f.observer.wait_for_single_leader(secs(15));
        f.endpoints.wait_for_only(&f.ns.pod_ip(&leader), secs(10));
        f
    }

    fn leader(&self) -> String {
        self.observer.leader().expect("a leader")
    }

    fn sidecar(&mut self, pod: &str) -> &mut Sidecar {
        self.sidecars.iter_mut().find(|s| s.pod == pod).unwrap()
    }

    fn assert_never_two_endpoints(&self) {
        let v = self.endpoints.with(|e| e.violations.clone());
        assert!(v.is_empty(), "{v:#?}");
    }
}

#[test]
fn steady_state_routes_to_the_leader_only() {
    let f = Fixture::new(
        Cluster::with_controllers(),
        "svc-steady",
        &["pod-a", "pod-b", "pod-c"],
    );
    let leader = f.leader();
    let ready = f.endpoints.with(|e| e.ready());
    assert_eq!(
        ready.into_iter().collect::<Vec<_>>(),
        [f.ns.pod_ip(&leader)]
    );
    f.assert_never_two_endpoints();
}

#[test]
fn rolling_update_handover_keeps_one_endpoint() {
    let mut f = Fixture::new(
        Cluster::with_controllers(),
        "svc-rolling",
        &["pod-a", "pod-b"],
    );
    let leader = f.leader();
    // maxSurge: 1 -- the new pod starts and becomes ready first.
    f.ns.create_pod("pod-new", true);
    let s = Sidecar::spawn(&f.ns, "pod-new", &[]);
    f.sidecars.push(s);
    f.observer.wait_until(secs(5), "pod-new participates", |s| {
        s.label("pod-new", harness::PARTICIPANT_KEY) == Some("true")
    });
    // The kubelet's part: the pod is deleted and its containers get SIGTERM.
    f.ns.delete_pod(&leader, 30);
    f.sidecar(&leader).sigterm();
    let new_leader = {
        f.observer.wait_until(secs(5), "a new leader", |s| {
            s.leader().is_some_and(|l| l != leader)
        });
        f.leader()
    };
    f.endpoints
        .wait_for_only(&f.ns.pod_ip(&new_leader), secs(5));
    let status = f
        .sidecar(&leader)
        .wait_exit(secs(5))
        .expect("old leader exits");
    assert!(status.success());
    f.assert_never_two_endpoints();
    // The old pod's endpoint turns not-ready (terminating) at deletion; the new
    // leader's label follows milliseconds later, and the EndpointSlice controller, seeing
    // its informer cache behind its own write, retries that second change after up to a
    // second. Recorded here; kube-proxy keeps routing to the old pod's serving,
    // terminating endpoint meanwhile.
    let gaps = f.endpoints.with(|e| e.gaps());
    eprintln!("rolling update: windows with no ready endpoint: {gaps:?}");
    assert!(gaps.iter().all(|g| *g < secs(2)), "{gaps:?}");
}

#[test]
fn crash_moves_the_endpoint_to_the_new_leader() {
    let mut f = Fixture::new(
        Cluster::with_controllers(),
        "svc-crash",
        &["pod-a", "pod-b"],
    );
    let leader = f.leader();
    f.sidecar(&leader).sigkill();
    f.observer.wait_until(secs(8), "a new leader", |s| {
        s.leader().is_some_and(|l| l != leader)
    });
    let new_leader = f.leader();
    f.endpoints
        .wait_for_only(&f.ns.pod_ip(&new_leader), secs(5));
    f.assert_never_two_endpoints();
}

#[test]
fn unready_leader_loses_the_label_within_a_second_and_the_endpoint_soon_after() {
    let f = Fixture::new(
        Cluster::with_controllers(),
        "svc-unready",
        &["pod-a", "pod-b"],
    );
    let leader = f.leader();
    let other = if leader == "pod-a" { "pod-b" } else { "pod-a" };
    let t0 = Instant::now();
    f.ns.set_ready(&leader, false);
    // leader-labeler's part: the label moves within a second.
    let labeled = f.observer.wait_until(secs(5), "the other pod leads", |s| {
        s.leader().as_deref() == Some(other)
    });
    assert!(
        labeled - t0 < secs(1),
        "label moved after {:?}",
        labeled - t0
    );
    // The EndpointSlice controller's: usually tens of milliseconds more, but when its
    // cache lags its own last write (the leader's endpoint was written a moment ago) it
    // retries after up to a second (seen: 1.02 s in one run of many).
    let moved = f.endpoints.wait_for_only(&f.ns.pod_ip(other), secs(5));
    assert!(
        moved - t0 < secs(2),
        "endpoints moved after {:?}",
        moved - t0
    );
    eprintln!(
        "unready: label moved in {:?}, endpoint in {:?}",
        labeled - t0,
        moved - t0
    );
    f.assert_never_two_endpoints();
}

/// Label values of the user's choosing drive a Service: one selecting `role: primary`
/// (deploy/service.yaml with only its selector changed) follows the leader when the
/// sidecars run with `--leadership-label=role --leader-value=primary
/// --follower-value=replica`, also through a handover.
#[test]
fn custom_label_values_drive_the_service() {
    let cluster = Cluster::with_controllers();
    let ns = Namespace::new(cluster, "svc-values");
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/service.yaml"))
            .unwrap();
    let service = shipped.replace("my-app/is-leader: \"true\"", "role: primary");
    assert_ne!(service, shipped, "deploy/service.yaml's selector moved");
    let out = cluster.kubectl(&["apply", "-n", &ns.name, "-f", "-"], Some(&service));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ns.create_pod("pod-a", true);
    ns.create_pod("pod-b", true);
    let endpoints = EndpointWatcher::start(&ns, "my-app");
    let args = [
        "--leadership-label=role",
        "--leader-value=primary",
        "--follower-value=replica",
    ];
    let mut a = Sidecar::spawn(&ns, "pod-a", &args);
    endpoints.wait_for_only(&ns.pod_ip("pod-a"), secs(15));
    let _b = Sidecar::spawn(&ns, "pod-b", &args);
    wait::until("pod-b labeled role=replica", secs(10), || {
        ns.label("pod-b", "role").as_deref() == Some("replica")
    });
    assert_eq!(ns.label("pod-a", "role").as_deref(), Some("primary"));
    a.sigterm();
    endpoints.wait_for_only(&ns.pod_ip("pod-b"), secs(5));
    assert_eq!(ns.label("pod-b", "role").as_deref(), Some("primary"));
    assert!(a.wait_exit(secs(10)).expect("pod-a exits").success());
    let v = endpoints.with(|e| e.violations.clone());
    assert!(v.is_empty(), "{v:#?}");
}
