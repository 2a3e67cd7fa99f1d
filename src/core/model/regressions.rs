//! Counterexamples the model checker found, each written down as a unit test of the
//! single-core world (`world.rs`), with the checker's trace in short.
//!
//! Each failed on the core before its fix (seen).

use super::super::world::*;
use super::super::*;

/// Steps the clock every 250 ms up to `until_ms`, running the core at each step.
fn run_until(w: &mut World, from_ms: u64, until_ms: u64) {
    for ms in (from_ms..=until_ms).step_by(250) {
        w.at(ms);
        w.run();
    }
}

/// Two retry periods (2 s each) after `from_ms`, the release is out (for pod-a, or for
/// anyone once pod-a let it pass), or this pod leads again: the handover did not stall.
fn assert_handed_over_or_leading(w: &mut World, from_ms: u64, after: &str) {
    run_until(w, from_ms + 250, from_ms + 2 * 2000);
    let record = &w.lease.as_ref().unwrap().record;
    let released = record.holder.is_empty() && ["pod-a", ""].contains(&record.handover_to.as_str());
    assert!(
        released || w.core.is_leader(),
        "two retry periods after {after}: role {:?}, Lease {:?}",
        w.core.role(),
        w.lease.as_ref().map(|l| &l.record)
    );
}

/// The next Lease write gets a 429 asking for 30 s (the most honoured).
fn busy_next_lease_write(w: &mut World) {
    w.fail_next_of(
        1,
        Calls::LeaseWrites,
        KubeError::Busy {
            code: 429,
            message: "too many requests".into(),
            retry_after: Duration::from_secs(30),
        },
    );
}

/// Leader pod-b (the core) with a ready follower pod-a.
fn leader_and_follower() -> World {
    let mut w = World::leading();
    w.join("pod-a");
    w.run();
    w
}

/// Checker trace (2 sidecars, faults: readiness flip, then a held write; 26 steps): the
/// leader turns unready, drops its participation and sends the release to the ready
/// follower; the release times out (held in the network, or refused with 503 or 409).
/// The leader stays `HandingOver` with nothing left to do, so nobody leads for a lease
/// duration. Required: the handover completes within two retry periods of the failure.
#[test]
fn a_failed_release_is_sent_again_or_leadership_resumed_within_two_retries() {
    let mut w = leader_and_follower();
    w.at(1000);
    w.fail_next_of(
        1,
        Calls::LeaseWrites,
        KubeError::Status {
            code: 503,
            message: "unavailable".into(),
        },
    );
    w.update_pod(ME, |p| p.ready = false);
    w.run();
    assert!(
        matches!(w.core.role(), Role::HandingOver { .. }),
        "the release was decided: {:?}",
        w.core.role()
    );
    assert_eq!(w.lease.as_ref().unwrap().record.holder, ME, "refused");
    assert_handed_over_or_leading(&mut w, 1000, "the 503");
}

/// Checker trace (2 sidecars, faults: pod-b's sidecar dies for good, SIGTERM to the
/// leader pod-a; 18 steps): the leader drains and releases to pod-b, which looks like a
/// ready participant (its pod is Ready and labeled) but whose sidecar is gone. The
/// leader keeps its `true` until its drain deadline, exits, its container restarts, and
/// the new process leaves the Lease to pod-b for another lease duration: no leader for
/// longer than a lease plus two retry periods after the last fault, while a ready
/// participant (the restarted pod) could lead. The courtesy wait trusts a designee
/// nobody knows to be alive: now the releaser, seeing it pass, frees the Lease for the
/// next pod (here nobody: for anyone), and the restarted process takes it at once.
#[test]
fn a_release_to_a_dead_designee_is_freed_for_the_next_pod() {
    let mut w = leader_and_follower();
    w.at(1000);
    w.feed(Observation::Signal);
    w.run();
    assert_eq!(w.lease.as_ref().unwrap().record.handover_to, "pod-a");
    // pod-a's sidecar never claims. This process drains and exits.
    let mut exited_at = None;
    for ms in (1250..40_000).step_by(250) {
        w.at(ms);
        if w.run().iter().any(|a| matches!(a, Action::Exit(_))) {
            exited_at = Some(ms);
            break;
        }
    }
    let exited_at = exited_at.expect("the drained sidecar exits");
    // The kubelet restarts the container: a new process in the same pod.
    w.core = Core::new(settings(), crate::backoff::Jitter::new(9));
    w.boot();
    w.run();
    assert_eq!(
        w.lease.as_ref().unwrap().record.handover_to,
        "",
        "freed for anyone"
    );
    // Within two retry periods of its start, the restarted pod leads.
    run_until(&mut w, exited_at, exited_at + 4_000);
    assert!(
        w.core.is_leader(),
        "4 s after the restart (exit at {exited_at} ms): role {:?}, Lease {:?}",
        w.core.role(),
        w.lease.as_ref().map(|l| &l.record)
    );
}

/// Checker trace (2 sidecars, faults: the API server gone for longer than the renew
/// deadline, then a 429 with Retry-After longer than the lease on the old leader's first
/// write; 29 steps): the old leader, a follower by then, honours Retry-After while the
/// other pod, in contact again, sees the lease run out and takes it. Required (issue 17
/// path 2): the holder resumes within a retry period of the API server answering.
#[test]
fn the_holder_resumes_after_an_outage_whatever_retry_after_says() {
    let mut w = leader_and_follower();
    w.at(1000);
    w.fail_next(1000, KubeError::Transport("connection refused".into()));
    w.feed(Observation::LeaseContact(Contact::Lost));
    run_until(&mut w, 1000, 12_000);
    assert!(!w.core.is_leader(), "past the renew deadline");
    // The API server is back; its first answer to this pod's Lease write is a 429.
    w.fail = None;
    w.feed(Observation::LeaseContact(Contact::Restored));
    w.feed(Observation::Lease(w.lease.clone()));
    busy_next_lease_write(&mut w);
    let mut answered = None;
    for ms in (12_000..20_000).step_by(250) {
        w.at(ms);
        w.run();
        if matches!(w.fail, Some((0, _))) {
            answered = Some(ms);
            break;
        }
    }
    let answered = answered.expect("the holder writes the Lease once the server is back");
    run_until(&mut w, answered, answered + 2 * 2000);
    assert!(
        w.core.is_leader(),
        "two retry periods after the 429 at {answered} ms: role {:?}",
        w.core.role()
    );
}

/// Checker trace (2 sidecars, faults: the leader's renewal held in the network, its pod
/// turns unready; 20 steps): the held renewal lands just before the release, so the
/// release (decided on the older resourceVersion) gets a real 409. The leader re-reads the
/// Lease, still its own, and stays `HandingOver` with nothing to do: nobody takes over and
/// it renews nothing for a lease duration. The same path 1 as above, with a conflict no
/// one injected.
#[test]
fn a_release_that_conflicts_with_a_late_renewal_is_decided_again() {
    let mut w = leader_and_follower();
    w.delay_next(Calls::LeaseWrites);
    w.at(2000);
    w.run(); // the renewal is held: a timeout here, applied later
    w.at(2500);
    w.update_pod(ME, |p| p.ready = false);
    w.run(); // participation dropped; the release waits for the retry after the timeout
    assert_eq!(w.deliver_delayed(), [true], "the held renewal lands");
    run_until(&mut w, 2750, 3000);
    assert!(
        matches!(w.core.role(), Role::HandingOver { .. }),
        "the release was decided and refused: {:?}",
        w.core.role()
    );
    assert_handed_over_or_leading(&mut w, 3000, "the 409");
}

/// Checker trace (2 sidecars, faults: the leader's sidecar crashes and restarts, its
/// first Lease write (the resume) gets a 429 with Retry-After past the lease; 15 steps):
/// the new process is no leader yet, so it honours Retry-After, and the follower takes
/// the Lease when it runs out. The same path 2, without an outage.
#[test]
fn a_restarted_holder_resumes_whatever_retry_after_says() {
    let mut w = leader_and_follower();
    w.at(1000);
    w.core = Core::new(settings(), crate::backoff::Jitter::new(9));
    busy_next_lease_write(&mut w);
    w.boot();
    w.run();
    assert!(matches!(w.fail, Some((0, _))), "the resume got the 429");
    run_until(&mut w, 1250, 1000 + 2 * 2000);
    assert!(
        w.core.is_leader(),
        "two retry periods after the 429: role {:?}",
        w.core.role()
    );
}

/// Checker trace (3 sidecars, faults: pod-c's sidecar dies for good, the leader pod-a
/// turns unready; 21 steps): pod-a hands over to pod-c, which looks like a ready
/// participant (its pod is Ready and labeled) but has no sidecar; pod-b leaves the Lease
/// to pod-c for a whole lease duration, so the planned handover takes a lease instead of
/// two retry periods. Issue 17 paths 5 and 6: the courtesy wait needs a designee known to
/// be alive.
#[test]
fn a_follower_takes_a_release_its_designee_does_not_claim_within_two_retries() {
    let mut w = World::following("pod-a", 0);
    w.join("pod-c");
    w.run();
    w.at(1000);
    w.set_lease_silently("", 0);
    let lease = w.lease.as_mut().unwrap();
    lease.record.duration_seconds = 1;
    lease.record.handover_to = "pod-c".into();
    w.lease_event();
    w.run();
    assert!(!w.core.is_leader(), "left to pod-c at first");
    run_until(&mut w, 1250, 1000 + 2 * 2000);
    assert!(
        w.core.is_leader(),
        "two retry periods after a release pod-c never claimed: role {:?}",
        w.core.role()
    );
}
