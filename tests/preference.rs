//! Operator control against the real control plane: a preferred pod takes leadership
//! back after the hysteresis, priority 0 never leads, and a switchover to a named pod
//! hands over in milliseconds (refused when the pod cannot lead). Every handover is a
//! release, so the observer holds the usual promise (never two pods labeled leader) and
//! the gap with no leader stays in milliseconds.

use harness::namespace::{PRIORITY_KEY, SWITCHOVER_KEY};
use harness::{secs, wait};
use harness::{Cluster, Namespace, Observer, Sidecar, PARTICIPANT_KEY};
use serde_json::json;
use std::time::{Duration, Instant};

const MERGE: &str = "application/merge-patch+json";

fn annotate_pod(ns: &Namespace, pod: &str, key: &str, value: &str) {
    ns.api.patch(
        &format!("/api/v1/namespaces/{}/pods/{pod}", ns.name),
        MERGE,
        &json!({"metadata": {"annotations": {key: value}}}),
    );
}

/// The longest moment without a leader after `since`, from the observer's history.
fn longest_gap_after(observer: &Observer, since: Instant) -> Duration {
    observer
        .gaps()
        .iter()
        .filter(|(from, _)| *from >= since)
        .map(|(from, to)| *to - *from)
        .max()
        .unwrap_or_default()
}

/// Events of a reason in the namespace, as "reason: message" lines.
fn events(ns: &Namespace, reason: &str) -> Vec<String> {
    let list = ns
        .api
        .get(&format!("/api/v1/namespaces/{}/events", ns.name));
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["reason"] == reason)
        .map(|e| format!("{reason}: {}", e["message"].as_str().unwrap_or("")))
        .collect()
}

#[test]
fn failback_to_a_higher_priority_pod_after_the_hysteresis() {
    let cluster = Cluster::shared();
    let ns = Namespace::new(cluster, "failback");
    ns.create_pod("pod-a", true);
    ns.create_pod("pod-b", false);
    annotate_pod(&ns, "pod-b", PRIORITY_KEY, "5");
    let observer = Observer::start(&ns);
    let args = ["--failback-after=3s"];
    let _a = Sidecar::spawn(&ns, "pod-a", &args);
    observer.wait_for_leader("pod-a", secs(15));
    let _b = Sidecar::spawn(&ns, "pod-b", &args);
    observer.wait_until(secs(10), "pod-b labeled", |s| {
        s.label("pod-b", harness::LEADER_KEY) == Some("false")
    });
    ns.set_ready("pod-b", true);
    observer.wait_until(secs(10), "pod-b participates", |s| {
        s.label("pod-b", PARTICIPANT_KEY) == Some("true")
    });
    let ready = Instant::now();
    observer.wait_for_leader("pod-b", secs(10));
    let after = ready.elapsed();
    assert!(
        after >= Duration::from_millis(2_900),
        "failed back after {after:?}, before the 3 s hysteresis"
    );
    let gap = longest_gap_after(&observer, ready);
    assert!(gap < Duration::from_millis(500), "no leader for {gap:?}");
    eprintln!("failback: {after:?} after pod-b was ready; leaderless for {gap:?}");
    observer.assert_never_two_leaders();
}

#[test]
fn priority_zero_never_leads_even_when_it_is_the_only_ready_pod() {
    let cluster = Cluster::shared();
    let ns = Namespace::new(cluster, "prio-zero");
    ns.create_pod("pod-a", true);
    annotate_pod(&ns, "pod-a", PRIORITY_KEY, "0");
    let observer = Observer::start(&ns);
    let a = Sidecar::spawn(&ns, "pod-a", &[]);
    observer.wait_until(secs(15), "pod-a a ready replica", |s| {
        s.label("pod-a", harness::LEADER_KEY) == Some("false")
            && s.label("pod-a", PARTICIPANT_KEY) == Some("true")
    });
    assert!(a.output().contains("priority is 0"), "{}", a.output());
    // "Never" has no event to wait for: give it two lease durations (3 s each) in which
    // a candidate would have created the Lease.
    std::thread::sleep(secs(6));
    assert!(
        ns.get_lease().is_none(),
        "a priority-0 pod created the Lease"
    );
    // A pod of normal priority leads at once; pod-a stays a replica.
    ns.create_pod("pod-b", true);
    let _b = Sidecar::spawn(&ns, "pod-b", &[]);
    observer.wait_for_leader("pod-b", secs(15));
    assert_eq!(
        ns.label("pod-a", harness::LEADER_KEY).as_deref(),
        Some("false")
    );
    observer.assert_never_two_leaders();
}

#[test]
fn switchover_to_a_named_pod_in_milliseconds_and_refused_when_impossible() {
    let cluster = Cluster::shared();
    let ns = Namespace::new(cluster, "switchover");
    for p in ["pod-a", "pod-b", "pod-c"] {
        ns.create_pod(p, true);
    }
    let observer = Observer::start(&ns);
    let a = Sidecar::spawn(&ns, "pod-a", &[]);
    observer.wait_for_leader("pod-a", secs(15));
    let _b = Sidecar::spawn(&ns, "pod-b", &[]);
    let _c = Sidecar::spawn(&ns, "pod-c", &[]);
    observer.wait_until(secs(10), "all participate", |s| {
        ["pod-b", "pod-c"]
            .iter()
            .all(|p| s.label(p, PARTICIPANT_KEY) == Some("true"))
    });
    // The leader refuses a switchover to a pod it does not know as a participant yet:
    // wait until its own view (/leader) lists pod-c, not only pod-c's label.
    wait::until(
        "the leader (pod-a) to list pod-c among its participants",
        secs(10),
        || a.participants().iter().any(|p| p == "pod-c"),
    );
    // To pod-c, past pod-b (which would win a free-for-all as often as not).
    let asked = Instant::now();
    ns.annotate_lease(SWITCHOVER_KEY, "pod-c");
    observer.wait_for_leader("pod-c", secs(5));
    let took = asked.elapsed();
    let gap = longest_gap_after(&observer, asked);
    eprintln!("switchover: pod-c led {took:?} after the request; leaderless for {gap:?}");
    assert!(gap < Duration::from_millis(500), "no leader for {gap:?}");
    wait::until("HandedOver event", secs(10), || {
        events(&ns, "HandedOver")
            .iter()
            .any(|e| e.contains("pod-c") && e.contains("switchover"))
    });
    let lease = ns.get_lease().unwrap();
    assert!(
        lease["metadata"]["annotations"]
            .get(SWITCHOVER_KEY)
            .is_none(),
        "request left on the Lease: {lease}"
    );
    // To an unready pod and to an unknown one: refused, reported, removed.
    ns.set_ready("pod-b", false);
    observer.wait_until(secs(10), "pod-b leaves", |s| {
        s.label("pod-b", PARTICIPANT_KEY).is_none()
    });
    for target in ["pod-b", "pod-nope"] {
        ns.annotate_lease(SWITCHOVER_KEY, target);
        wait::until(&format!("refusal of {target}"), secs(10), || {
            events(&ns, "SwitchoverRefused")
                .iter()
                .any(|e| e.contains(target))
        });
        wait::until("the request removed", secs(10), || {
            ns.get_lease().unwrap()["metadata"]["annotations"]
                .get(SWITCHOVER_KEY)
                .is_none()
        });
        assert_eq!(observer.leader().as_deref(), Some("pod-c"));
    }
    observer.assert_never_two_leaders();
}
