//! End-to-end proof of the fault paths (issue "never two leaders when responses are
//! lost"): each scenario is a fault a real cluster produces, against the real binary and
//! a real kube-apiserver. Each one failed on the code before the fix (run it with
//! `LEADER_LABELER_BIN=<old build>`); the observer fails any test in which two pods carry
//! `is-leader=true` at any resourceVersion.
//!
//! "A claim in flight" is written by the test itself: the conditional `true` a cut-off
//! old leader would have sent with the resourceVersion it last saw, arriving late.

use harness::faults::{Fault, FaultProxy, Kind};
use harness::namespace::{ELECTION, SWITCHOVER_KEY};
use harness::{secs, wait};
use harness::{Cluster, Namespace, Observer, Sidecar, SidecarOptions, LEADER_KEY, PARTICIPANT_KEY};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MERGE: &str = "application/merge-patch+json";

fn pod_path(ns: &Namespace, pod: &str) -> String {
    format!("/api/v1/namespaces/{}/pods/{pod}", ns.name)
}

/// What a cut-off old leader's delayed claim does when it finally arrives: a merge patch
/// of `true` conditional on the resourceVersion it was decided on. Returns the status.
fn late_claim(ns: &Namespace, pod: &str, resource_version: &str) -> u16 {
    let (code, _) = ns.api.call(
        "PATCH",
        &pod_path(ns, pod),
        Some((
            MERGE,
            &json!({"metadata": {"resourceVersion": resource_version,
                                 "labels": {LEADER_KEY: "true"}}}),
        )),
    );
    code
}

fn resource_version(v: &Value) -> String {
    v["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// A sidecar that talks to the API server through `proxy`, with `extra` arguments.
fn through(ns: &Namespace, pod: &str, proxy: &FaultProxy, extra: &[&str]) -> Sidecar {
    Sidecar::spawn_with(
        ns,
        pod,
        SidecarOptions {
            server: Some(proxy.url()),
            extra,
        },
    )
}

/// Path 1: the follower's takeover is applied but its answer is lost, so it learns of
/// its own takeover from the watch, while the old leader (its node hung) has a claim of
/// `true` in flight on a pod that says `false`.
#[test]
fn takeover_applied_with_its_answer_lost_still_fences_the_old_leader() {
    let cluster = Cluster::shared();
    let ns = Namespace::new(cluster, "lost-take");
    ns.create_pod("pod-a", true);
    ns.create_pod("pod-b", true);
    let observer = Observer::start(&ns);
    let a = Sidecar::spawn(&ns, "pod-a", &[]);
    observer.wait_for_leader("pod-a", secs(15));
    let pb = FaultProxy::start(cluster);
    let _b = through(&ns, "pod-b", &pb, &[]);
    observer.wait_until(secs(10), "pod-b participates", |s| {
        s.label("pod-b", PARTICIPANT_KEY) == Some("true")
    });
    // pod-a's node hangs. Its pod says false and its own claim of true is in flight
    // (as after it stepped down and took the lease back just before the hang).
    a.freeze();
    ns.set_label("pod-a", LEADER_KEY, "false");
    let in_flight = resource_version(&ns.get_pod("pod-a"));
    pb.once(Kind::LeaseWrite, Fault::DropResponse);
    pb.wait_for(
        Kind::LeaseWrite,
        secs(15),
        "pod-b's takeover applied, answer lost",
        |r| r.fault == Some(Fault::DropResponse) && r.applied(),
    );
    observer.wait_for_leader("pod-b", secs(10));
    assert_eq!(
        late_claim(&ns, "pod-a", &in_flight),
        409,
        "pod-b did not fence pod-a after a takeover it learned of from the watch"
    );
    a.resume();
    observer.assert_never_two_leaders();
}

/// Path 4: a restarted sidecar whose resume of its own Lease fails for a moment must not
/// label its pod `false` meanwhile (a leaderless moment nobody asked for).
#[test]
fn failed_resume_after_a_restart_keeps_the_label() {
    let cluster = Cluster::shared();
    let ns = Namespace::new(cluster, "resume");
    ns.create_pod("pod-a", true);
    ns.create_pod("pod-b", true);
    let observer = Observer::start(&ns);
    let pa = FaultProxy::start(cluster);
    let mut a = through(&ns, "pod-a", &pa, &[]);
    observer.wait_for_leader("pod-a", secs(15));
    let _b = Sidecar::spawn(&ns, "pod-b", &[]);
    observer.wait_until(secs(10), "pod-b participates", |s| {
        s.label("pod-b", PARTICIPANT_KEY) == Some("true")
    });
    let transitions = ns.get_lease().unwrap()["spec"]["leaseTransitions"].clone();
    a.sigkill();
    pa.set(Kind::LeaseWrite, Some(Fault::Refuse));
    let seen = pa.count(Kind::LeaseWrite);
    let _a2 = through(&ns, "pod-a", &pa, &[]);
    pa.wait_count(Kind::LeaseWrite, seen + 2, secs(10));
    let from = pa.records().len();
    pa.set(Kind::LeaseWrite, None);
    pa.wait_for(Kind::LeaseWrite, secs(10), "the resume applied", |r| {
        r.seq >= from && r.applied()
    });
    assert_eq!(
        ns.get_lease().unwrap()["spec"]["leaseTransitions"],
        transitions
    );
    assert_eq!(observer.leader().as_deref(), Some("pod-a"));
    assert!(
        observer.gaps().is_empty(),
        "pod-a's label left while it resumed: {:?}",
        observer.gaps()
    );
}

/// Path 3: after the Lease is recreated its transition count starts again, so a stamp
/// made of holder and transitions repeats; an identical merge patch does not change the
/// pod, and a delayed `true` survived the fence.
#[test]
fn fence_changes_the_pod_even_when_the_lease_was_recreated() {
    let cluster = Cluster::shared();
    let ns = Namespace::new(cluster, "stamp");
    ns.create_pod("pod-a", true);
    ns.create_pod("pod-b", true);
    // pod-a as an earlier takeover by pod-b left it (transition 1 of an earlier Lease),
    // and pod-a's sidecar holds the recreated Lease (transition 0), then dies.
    ns.api.patch(
        &pod_path(&ns, "pod-a"),
        MERGE,
        &json!({"metadata": {"labels": {LEADER_KEY: "false"},
                             "annotations": {LEADER_KEY: "pod-b:1"}}}),
    );
    let now = "2026-01-01T00:00:00.000000Z";
    ns.api.post(
        &format!("/apis/coordination.k8s.io/v1/namespaces/{}/leases", ns.name),
        &json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": ELECTION},
                "spec": {"holderIdentity": "pod-a", "leaseDurationSeconds": 3,
                         "leaseTransitions": 0, "acquireTime": now, "renewTime": now}}),
    );
    let observer = Observer::start(&ns);
    let in_flight = resource_version(&ns.get_pod("pod-a"));
    let _b = Sidecar::spawn(&ns, "pod-b", &[]);
    observer.wait_for_leader("pod-b", secs(15));
    assert_eq!(
        late_claim(&ns, "pod-a", &in_flight),
        409,
        "the fence did not change pod-a: the old leader's late claim was accepted"
    );
    observer.assert_never_two_leaders();
}

/// Path 6: a pod force-deleted and recreated under the same name while its old sidecar
/// process still runs, unaware (its node lost contact: here its pod watch is stalled, so
/// the deletion never reaches it). The old process must not adopt the new pod.
#[test]
fn pod_recreated_under_the_same_name_is_left_to_its_new_sidecar() {
    let cluster = Cluster::shared();
    let ns = Namespace::new(cluster, "uid");
    ns.create_pod("pod-a", true);
    ns.create_pod("pod-b", true);
    let observer = Observer::start(&ns);
    let pa = FaultProxy::start(cluster);
    let mut old = through(&ns, "pod-a", &pa, &[]);
    observer.wait_for_leader("pod-a", secs(15));
    let _b = Sidecar::spawn(&ns, "pod-b", &[]);
    observer.wait_until(secs(10), "pod-b participates", |s| {
        s.label("pod-b", PARTICIPANT_KEY) == Some("true")
    });
    pa.set(Kind::PodWatch, Some(Fault::Stall));
    ns.force_delete("pod-a");
    ns.create_pod("pod-a", true);
    let _new = Sidecar::spawn(&ns, "pod-a", &[]);
    let status = old
        .wait_exit(secs(15))
        .unwrap_or_else(|| panic!("the old process adopted the new pod:\n{}", old.output()));
    assert_eq!(status.code(), Some(1), "{}", old.output());
    assert!(
        old.output().contains("was deleted and recreated"),
        "{}",
        old.output()
    );
    pa.clear();
    observer.wait_until(secs(10), "both participate", |s| {
        ["pod-a", "pod-b"]
            .iter()
            .all(|p| s.label(p, PARTICIPANT_KEY) == Some("true"))
    });
    let leader = observer.wait_for_single_leader(secs(15));
    assert!(["pod-a", "pod-b"].contains(&leader.as_str()));
}

/// Path 2: a draining leader's release is applied but its answer is lost, and its Lease
/// stream is behind its pod stream: it sees the successor's fence before it sees the
/// successor's Lease. It must claim nothing back.
#[test]
fn release_applied_with_its_answer_lost_claims_nothing_back() {
    let cluster = Cluster::shared();
    let ns = Namespace::new(cluster, "lost-release");
    ns.create_pod("pod-a", true);
    ns.create_pod("pod-b", true);
    let observer = Observer::start(&ns);
    let pa = FaultProxy::start(cluster);
    let mut a = through(&ns, "pod-a", &pa, &[]);
    observer.wait_for_leader("pod-a", secs(15));
    let _b = Sidecar::spawn(&ns, "pod-b", &[]);
    observer.wait_until(secs(10), "pod-b participates", |s| {
        s.label("pod-b", PARTICIPANT_KEY) == Some("true")
    });
    pa.set(Kind::LeaseWatch, Some(Fault::Stall));
    pa.once(Kind::LeaseWrite, Fault::DropResponse);
    a.sigterm();
    pa.wait_for(
        Kind::LeaseWrite,
        secs(10),
        "the release applied, answer lost",
        |r| r.fault == Some(Fault::DropResponse) && r.applied(),
    );
    let took_over = observer.wait_for_leader("pod-b", secs(10));
    a.wait_exit(secs(10))
        .unwrap_or_else(|| panic!("pod-a did not finish its drain:\n{}", a.output()));
    let relapsed = observer.with(|s| {
        s.history
            .iter()
            .filter(|(t, _, l)| *t >= took_over && l.iter().any(|p| p == "pod-a"))
            .count()
    });
    assert_eq!(
        relapsed,
        0,
        "pod-a claimed leadership back:\n{}",
        a.output()
    );
    assert_eq!(observer.leader().as_deref(), Some("pod-b"));
}

/// Path 5: the Lease deleted, or rewritten to name a running follower, by hand, just
/// after a renewal, while the sidecars poll it (lease verbs get/update only, as a
/// cautious Role would have) so the old leader notices only at its next renewal. The
/// new holder must wait out the old one before touching labels.
#[test]
fn lease_deleted_or_rewritten_by_hand_under_a_live_leader() {
    let cluster = Cluster::shared();
    let ns = Namespace::with_rbac(cluster, "hands", |m| {
        m.replace(
            "verbs: [\"get\", \"list\", \"watch\", \"update\"]",
            "verbs: [\"get\", \"update\"]",
        )
    });
    let pods = ["pod-a", "pod-b", "pod-c"];
    for p in pods {
        ns.create_pod(p, true);
    }
    let observer = Observer::start(&ns);
    let _sidecars: Vec<_> = pods.iter().map(|p| Sidecar::spawn(&ns, p, &[])).collect();
    observer.wait_for_single_leader(secs(15));
    for round in 0..4 {
        observer.wait_until(secs(10), "all participate", |s| {
            pods.iter()
                .all(|p| s.label(p, PARTICIPANT_KEY) == Some("true"))
                && s.leader().is_some()
        });
        let leader = observer.leader().unwrap();
        let renewed = next_renewal(&ns, &leader);
        if round % 2 == 0 {
            ns.api.delete(&ns.lease_path(), &json!({}));
        } else {
            let follower = pods.iter().find(|p| **p != leader).unwrap();
            let mut lease = renewed.clone();
            lease["spec"]["holderIdentity"] = json!(follower);
            ns.api.put(&ns.lease_path(), &lease);
        }
        settled(&ns, &observer, secs(15));
        observer.assert_never_two_leaders();
    }
}

/// Waits until the Lease names a holder that is the one pod labeled leader (polled: a
/// Lease change is not a pod event the observer could wait for).
fn settled(ns: &Namespace, observer: &Observer, timeout: Duration) -> String {
    let what = "the Lease holder to be the one pod labeled leader";
    wait::until_every(what, timeout, Duration::from_millis(100), || {
        let holder = ns
            .get_lease()
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
            .unwrap_or_default();
        let labeled = observer.with(|s| s.leaders());
        match !holder.is_empty() && labeled == [holder.as_str()] {
            true => Ok(holder),
            false => Err(format!("Lease holder {holder:?}, labeled {labeled:?}")),
        }
    })
}

/// Waits for the next renewal of the Lease by `holder` (a watch from the current
/// version, by the admin) and returns the Lease as renewed.
fn next_renewal(ns: &Namespace, holder: &str) -> Value {
    let start = ns.get_lease().expect("lease");
    let from = resource_version(&start);
    let stop = Arc::new(AtomicBool::new(false));
    let mut found = None;
    let url = format!(
        "/apis/coordination.k8s.io/v1/namespaces/{}/leases?fieldSelector=metadata.name%3D{ELECTION}&watch=true&resourceVersion={from}",
        ns.name
    );
    let deadline = Instant::now() + secs(10);
    while found.is_none() {
        assert!(Instant::now() < deadline, "no renewal by {holder} in 10 s");
        let _ = ns.api.stream(&url, |ev| {
            let l = &ev["object"];
            if ev["type"] == "MODIFIED" && l["spec"]["holderIdentity"] == holder {
                found = Some(l.clone());
                return false;
            }
            !stop.load(Ordering::SeqCst)
        });
    }
    found.unwrap()
}

/// A slow API server cannot hold a drain past the grace period. Every write
/// hangs for 8 s; with the production timings one call may take 5 s, more than the
/// whole 3 s grace. The sidecar must still be gone before the kubelet's SIGKILL would
/// come, and say by its exit code that the drain did not complete.
#[test]
fn drain_under_a_hung_api_server_ends_within_the_grace_period() {
    let cluster = Cluster::shared();
    let ns = Namespace::new(cluster, "slow-drain");
    ns.create_pod_with_grace("pod-a", true, 3);
    let observer = Observer::start(&ns);
    let proxy = FaultProxy::start(cluster);
    let mut a = through(
        &ns,
        "pod-a",
        &proxy,
        &[
            "--lease-duration=15s",
            "--renew-deadline=10s",
            "--retry-period=2s",
        ],
    );
    observer.wait_for_leader("pod-a", secs(15));
    proxy.set(Kind::LeaseWrite, Some(Fault::Delay(secs(8))));
    proxy.set(Kind::PodWrite, Some(Fault::Delay(secs(8))));
    let sent = Instant::now();
    a.sigterm();
    let status = a.wait_exit(secs(20)).expect("exits");
    let took = sent.elapsed();
    assert!(
        took < secs(3),
        "exited {took:?} after SIGTERM, past the 3 s grace period\n{}",
        a.output()
    );
    assert_eq!(
        status.code(),
        Some(1),
        "an incomplete drain is not a clean shutdown\n{}",
        a.output()
    );
    proxy.clear();
}

/// A leader whose pod is force-deleted (grace 0) still releases the Lease, so the
/// follower takes over at once instead of after a full lease.
#[test]
fn force_deleted_leader_still_releases() {
    let cluster = Cluster::shared();
    let ns = Namespace::new(cluster, "force-del");
    ns.create_pod("pod-a", true);
    ns.create_pod("pod-b", true);
    let observer = Observer::start(&ns);
    // A long lease, so waiting it out cannot pass for a handover.
    let timings = [
        "--lease-duration=30s",
        "--renew-deadline=20s",
        "--retry-period=2s",
    ];
    let mut a = Sidecar::spawn(&ns, "pod-a", &timings);
    observer.wait_for_leader("pod-a", secs(15));
    let _b = Sidecar::spawn(&ns, "pod-b", &timings);
    observer.wait_until(secs(10), "pod-b participates", |s| {
        s.label("pod-b", PARTICIPANT_KEY) == Some("true")
    });
    ns.force_delete("pod-a");
    observer.wait_until(
        secs(5),
        "pod-b leads within 5 s of the force deletion",
        |s| s.leader().as_deref() == Some("pod-b"),
    );
    a.wait_exit(secs(10)).expect("pod-a's sidecar exits");
    observer.assert_never_two_leaders();
}

/// A rotated CA bundle (`kube-root-ca.crt`) is picked up: a sidecar
/// whose CA file does not (yet) vouch for the API server's certificate re-reads it when
/// verification fails, and carries on with the new bundle without a restart.
#[test]
fn rotated_ca_bundle_is_picked_up_without_a_restart() {
    let cluster = Cluster::shared();
    let ns = Namespace::new(cluster, "ca-rotate");
    ns.create_pod("pod-a", true);
    let observer = Observer::start(&ns);
    // A CA that signed nothing the API server serves.
    let ca = ns.dir.join("rotating-ca.crt");
    let status = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=some-other-ca", "-keyout"])
        .arg(ns.dir.join("other-ca.key"))
        .arg("-out")
        .arg(&ca)
        .output()
        .expect("openssl");
    assert!(status.status.success(), "{status:?}");
    let ca_arg = format!("--ca-file={}", ca.display());
    let mut a = Sidecar::spawn(&ns, "pod-a", &[&ca_arg]);
    a.wait_for_output("not signed by the CA file", secs(15));
    assert_eq!(
        ns.label("pod-a", LEADER_KEY),
        None,
        "labeled through a certificate it must not trust"
    );
    // The bundle is rotated: the API server's real CA arrives in the file.
    std::fs::copy(cluster.ca_file(), &ca).unwrap();
    observer.wait_until(secs(15), "pod-a leads with the new bundle", |s| {
        s.leader().as_deref() == Some("pod-a")
    });
    assert!(
        a.output().contains("CA file") && a.output().contains("changed"),
        "{}",
        a.output()
    );
}

/// After a 429 with `Retry-After: 3` (priority and fairness) the API server is not asked
/// again before those 3 s are up, as client-go honours it.
#[test]
fn retry_after_is_honoured() {
    let cluster = Cluster::shared();
    let ns = Namespace::new(cluster, "retry-after");
    ns.create_pod("pod-a", true);
    let observer = Observer::start(&ns);
    let proxy = FaultProxy::start(cluster);
    // Watches that end every second, so a new one is asked for soon.
    let _a = through(&ns, "pod-a", &proxy, &["--watch-timeout=1s"]);
    observer.wait_for_leader("pod-a", secs(15));
    proxy.set(Kind::LeaseWatch, Some(Fault::Busy(429, 3)));
    proxy.wait_count(
        Kind::LeaseWatch,
        proxy.count(Kind::LeaseWatch) + 3,
        secs(30),
    );
    proxy.clear();
    let busy: Vec<Instant> = proxy
        .records()
        .iter()
        .filter(|r| r.kind == Kind::LeaseWatch && r.fault == Some(Fault::Busy(429, 3)))
        .map(|r| r.at)
        .collect();
    assert!(busy.len() >= 3, "{busy:?}");
    for pair in busy.windows(2) {
        let waited = pair[1] - pair[0];
        assert!(
            waited >= Duration::from_millis(2_900),
            "asked again {waited:?} after a Retry-After of 3 s"
        );
    }
    observer.assert_never_two_leaders();
}

// ---- planned handovers that never stall, outages that never move leadership ---------
//
// Each failed on the binary before the fix (LEADER_LABELER_BIN=<old build>), seen.

/// Every kind of call a sidecar makes.
const ALL: [Kind; 5] = [
    Kind::LeaseWrite,
    Kind::LeaseRead,
    Kind::Watch,
    Kind::PodWrite,
    Kind::PodRead,
];

/// The Lease's holder and transition count.
fn holder_and_transitions(ns: &Namespace) -> (String, i64) {
    let l = ns.get_lease().expect("the Lease");
    (
        l["spec"]["holderIdentity"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        l["spec"]["leaseTransitions"].as_i64().unwrap_or_default(),
    )
}

/// pod-a leading and pod-b participating, each through its proxy if given, with `extra`
/// arguments.
fn leader_and_follower(
    ns: &Namespace,
    observer: &Observer,
    proxies: [Option<&FaultProxy>; 2],
    extra: &[&str],
) -> [Sidecar; 2] {
    let spawn = |pod: &str, proxy: Option<&FaultProxy>| match proxy {
        Some(p) => through(ns, pod, p, extra),
        None => Sidecar::spawn(ns, pod, extra),
    };
    let a = spawn("pod-a", proxies[0]);
    observer.wait_for_leader("pod-a", secs(15));
    let b = spawn("pod-b", proxies[1]);
    observer.wait_until(secs(10), "pod-b participates", |s| {
        s.label("pod-b", PARTICIPANT_KEY) == Some("true")
    });
    [a, b]
}

/// A switchover whose release is refused (429, Retry-After 30 s) is carried out within
/// about a retry period once the server accepts writes again: the leader leads on
/// meanwhile instead of sitting out a lease duration with nobody leading.
#[test]
fn a_refused_release_is_tried_again_within_a_retry_period() {
    let cluster = Cluster::shared();
    let ns = Namespace::new(cluster, "refused-release");
    ns.create_pod("pod-a", true);
    ns.create_pod("pod-b", true);
    let observer = Observer::start(&ns);
    let pa = FaultProxy::start(cluster);
    let _pair = leader_and_follower(
        &ns,
        &observer,
        [Some(&pa), None],
        &["--lease-duration=15s", "--renew-deadline=10s"],
    );
    pa.set(Kind::LeaseWrite, Some(Fault::Busy(429, 30)));
    let seen = pa.count(Kind::LeaseWrite);
    ns.annotate_lease(SWITCHOVER_KEY, "pod-b");
    // The release and the writes after it refused: the leader keeps trying.
    let tried = pa.wait_count(Kind::LeaseWrite, seen + 3, secs(10));
    assert!(
        tried >= seen + 3,
        "pod-a stopped writing the Lease after a refused release ({} writes)",
        tried - seen
    );
    assert_eq!(holder_and_transitions(&ns).0, "pod-a");
    pa.set(Kind::LeaseWrite, None);
    let cleared = Instant::now();
    let led = observer.wait_for_leader("pod-b", secs(5));
    eprintln!(
        "switchover carried out {:?} after writes were accepted again",
        led - cleared
    );
    observer.assert_never_two_leaders();
}

/// The API server is down for longer than the renew deadline, then its first answer to
/// the old leader is 503 with Retry-After: 30. The old leader still holds the Lease and
/// resumes within a retry period; the follower, whose watch returned at once, must not
/// see the lease run out first.
#[test]
fn the_holder_resumes_after_an_outage_whatever_retry_after_says() {
    let cluster = Cluster::shared();
    let ns = Namespace::new(cluster, "retry-after-holder");
    ns.create_pod("pod-a", true);
    ns.create_pod("pod-b", true);
    let observer = Observer::start(&ns);
    let pa = FaultProxy::start(cluster);
    let pb = FaultProxy::start(cluster);
    let _pair = leader_and_follower(&ns, &observer, [Some(&pa), Some(&pb)], &[]);
    let before = holder_and_transitions(&ns);
    for p in [&pa, &pb] {
        for k in ALL {
            p.set(k, Some(Fault::Refuse));
        }
    }
    // Past pod-a's renew deadline (2 s).
    std::thread::sleep(secs(3));
    // Back: pod-a's first Lease call is told to come back in 30 s.
    let from = pa.records().len();
    pa.clear();
    pa.set(Kind::LeaseWrite, Some(Fault::Busy(503, 30)));
    pa.set(Kind::LeaseRead, Some(Fault::Busy(503, 30)));
    pb.clear();
    let busy = pa.wait_for(Kind::LeaseWrite, secs(5), "pod-a told to wait", |r| {
        r.seq >= from && r.fault == Some(Fault::Busy(503, 30))
    });
    pa.set(Kind::LeaseWrite, None);
    pa.set(Kind::LeaseRead, None);
    let resumed = pa.wait_for(Kind::LeaseWrite, secs(2), "pod-a resumes its Lease", |r| {
        r.seq > busy.seq && r.fault.is_none() && r.applied()
    });
    eprintln!(
        "pod-a resumed {:?} after Retry-After: 30",
        resumed.at - busy.at
    );
    assert_eq!(holder_and_transitions(&ns), before, "leadership moved");
    observer.assert_never_two_leaders();
}

/// A kube-apiserver that restarts answers 403 to every Lease call until its RBAC cache
/// syncs, here for longer than a lease, and syncs for pod-b's connection 3 s before
/// pod-a's (two API servers behind a load balancer). A 403 is no contact: pod-b must not
/// count the silence meanwhile, so pod-a, which could not renew either, keeps the Lease.
#[test]
fn forbidden_for_longer_than_a_lease_after_a_restart_moves_no_leadership() {
    let cluster = Cluster::shared();
    let ns = Namespace::new(cluster, "forbidden-restart");
    ns.create_pod("pod-a", true);
    ns.create_pod("pod-b", true);
    let observer = Observer::start(&ns);
    let timings = ["--lease-duration=6s", "--renew-deadline=4s"];
    let pa = FaultProxy::start(cluster);
    let pb = FaultProxy::start(cluster);
    let _pair = leader_and_follower(&ns, &observer, [Some(&pa), Some(&pb)], &timings);
    let before = holder_and_transitions(&ns);
    // Down for a moment, then up with an RBAC cache that has not synced.
    for p in [&pa, &pb] {
        for k in ALL {
            p.set(k, Some(Fault::Refuse));
        }
    }
    std::thread::sleep(secs(1));
    for p in [&pa, &pb] {
        p.clear();
        for k in [Kind::LeaseWrite, Kind::LeaseRead, Kind::Watch] {
            p.set(k, Some(Fault::Status(403)));
        }
    }
    // pod-b gives up on the refused watch and polls: from its first refused poll, the
    // 403s last longer than a lease.
    let from = pb.records().len();
    pb.wait_for(Kind::LeaseRead, secs(20), "pod-b polls the Lease", |r| {
        r.seq >= from && r.fault == Some(Fault::Status(403))
    });
    std::thread::sleep(secs(8));
    pb.clear();
    std::thread::sleep(secs(3));
    let from = pa.records().len();
    pa.clear();
    pa.wait_for(Kind::LeaseWrite, secs(3), "pod-a resumes its Lease", |r| {
        r.seq >= from && r.applied()
    });
    assert_eq!(holder_and_transitions(&ns), before, "leadership moved");
    assert_eq!(observer.leader().as_deref(), Some("pod-a"));
    observer.assert_never_two_leaders();
}

/// A deleted leader hands over to pod-b, whose fence of the old leader is told to come
/// back in 30 s. The old leader keeps its `true` until the fence lands, and pod-b fences
/// and claims within about a retry period: no leaderless Service for 30 s.
#[test]
fn a_drain_keeps_its_leader_until_a_successor_told_to_back_off_claims() {
    let cluster = Cluster::shared();
    let ns = Namespace::new(cluster, "drain-backoff");
    ns.create_pod_with_grace("pod-a", true, 30);
    ns.create_pod("pod-b", true);
    let observer = Observer::start(&ns);
    let pb = FaultProxy::start(cluster);
    let _pair = leader_and_follower(&ns, &observer, [None, Some(&pb)], &[]);
    pb.once(Kind::PodWrite, Fault::Busy(429, 30));
    let asked = Instant::now();
    ns.delete_pod("pod-a", 30);
    let led = observer.wait_for_leader("pod-b", secs(5));
    let gaps: Vec<Duration> = observer
        .gaps()
        .iter()
        .filter(|(from, _)| *from >= asked)
        .map(|(from, to)| *to - *from)
        .collect();
    eprintln!(
        "pod-b led {:?} after the deletion; leaderless spells {gaps:?}",
        led - asked
    );
    assert!(
        gaps.iter().all(|g| *g < Duration::from_millis(500)),
        "the Service had no leader for {gaps:?}"
    );
    observer.assert_never_two_leaders();
}
