//! The core's unit tests, driven through the in-memory API server of `world`.

use super::world::*;
use super::*;

#[test]
fn waits_for_both_sensors_before_acting() {
    let mut w = World::new();
    assert_eq!(w.core.next_action(w.now), None);
    let own = w.pods[ME].clone();
    w.feed(Observation::OwnPod(own));
    assert_eq!(w.core.next_action(w.now), None, "lease still unknown");
}

#[test]
fn first_pod_creates_the_lease_and_labels_itself_leader() {
    let mut w = World::new();
    w.boot();
    let actions = w.run();
    assert!(matches!(actions[1], Action::CreateLease(_)));
    assert!(w.core.is_leader());
    assert_eq!(w.lease.as_ref().unwrap().record.transitions, 0);
    assert_eq!(w.label(ME, "is-leader").as_deref(), Some("true"));
    assert_eq!(w.label(ME, "participant").as_deref(), Some("true"));
    // It labels itself before it competes, so every other sidecar knows (and fences)
    // its pod before it can ever claim true.
    assert_eq!(
        w.writes,
        [
            "pod-b is-leader=false,participant=true",
            "lease holder=\"pod-b\"",
            "pod-b is-leader=true"
        ]
    );
}

#[test]
fn follower_labels_itself_false_and_waits_a_full_lease_duration() {
    let mut w = World::following("pod-a", 3);
    assert!(!w.core.is_leader());
    assert_eq!(w.label(ME, "is-leader").as_deref(), Some("false"));
    assert_eq!(w.label(ME, "participant").as_deref(), Some("true"));
    // No renewal seen: the lease expires 15 s after we first saw it, not before.
    assert_eq!(
        w.core.next_wakeup(w.now.mono),
        Some(w.t0 + Duration::from_secs(15))
    );
    w.at(14_999);
    assert!(w.run().is_empty());
    w.at(15_000);
    w.run();
    assert!(w.core.is_leader());
    let lease = w.lease.clone().unwrap();
    assert_eq!(lease.record.holder, ME);
    assert_eq!(lease.record.transitions, 4);
    // Fence first (unconditional false + annotation), then claim.
    assert_eq!(
        &w.writes[1..],
        [
            "lease holder=\"pod-b\"",
            "pod-a is-leader=false,participant=-",
            "pod-b is-leader=true"
        ]
    );
    assert_eq!(w.label("pod-a", "is-leader").as_deref(), Some("false"));
}

#[test]
fn renewals_seen_keep_the_follower_waiting() {
    let mut w = World::following("pod-a", 0);
    for s in 1..20 {
        w.at(s * 2000);
        w.set_lease("pod-a", 0);
        assert!(w.run().is_empty());
    }
    assert!(!w.core.is_leader());
}

#[test]
fn released_lease_is_taken_at_once() {
    let mut w = World::following("pod-a", 2);
    w.at(500);
    w.release_lease(2);
    let actions = w.run();
    assert!(matches!(actions[0], Action::UpdateLease { .. }));
    assert!(w.core.is_leader());
    // The old leader keeps its participation (it released, it is alive); its true is
    // fenced just before ours, so the Service always has exactly one pod.
    assert_eq!(
        &w.writes[1..],
        [
            "lease holder=\"pod-b\"",
            "pod-a is-leader=false",
            "pod-b is-leader=true"
        ]
    );
}

#[test]
fn leader_renews_every_retry_period_and_steps_down_at_the_renew_deadline() {
    let mut w = World::leading();
    w.writes.clear();
    w.at(2000);
    w.run();
    assert_eq!(w.writes, ["lease holder=\"pod-b\""]);
    // The API server goes away: renewals fail from t=4s on.
    w.fail_next(1000, KubeError::Transport("refused".into()));
    for ms in (4000..12_000).step_by(250) {
        w.at(ms);
        w.run();
        assert!(
            w.core.is_leader(),
            "still within the renew deadline at {ms}"
        );
    }
    w.at(12_000); // last successful renewal was sent at 2s, deadline 10s
    let actions = w.run();
    assert!(!w.core.is_leader());
    // It stops acting as leader but leaves its true for the next leader's fence: an
    // outage alone never empties the Service.
    assert!(actions.iter().all(|a| !matches!(a, Action::Patch(_))));
    // Once the server is back and another pod holds the lease, that pod fences us.
    w.fail = None;
    w.add_pod("pod-a", true, &[("e/is-leader", "false")]);
    w.set_lease("pod-a", 1);
    w.writes.clear();
    w.at(20_000);
    w.run();
    assert!(w.writes.is_empty(), "{:?}", w.writes);
    assert_eq!(w.label(ME, "is-leader").as_deref(), Some("true"));
}

#[test]
fn leader_that_sees_another_holder_steps_down_at_once() {
    let mut w = World::leading();
    w.add_pod("pod-a", true, &[("e/is-leader", "false")]);
    w.at(1000);
    w.set_lease("pod-a", 1);
    assert!(!w.core.is_leader());
    w.writes.clear();
    w.run();
    // pod-a's fence turns our true to false; we write nothing.
    assert!(w.writes.is_empty(), "{:?}", w.writes);
}

#[test]
fn conflicts_are_re_read_not_retried_blindly() {
    let mut w = World::new();
    w.label_me("false");
    w.add_pod("pod-a", true, &[("e/is-leader", "true")]);
    w.release_lease(0);
    w.boot();
    // Someone else takes the lease between our read and our write.
    let a = w.core.next_action(w.now).unwrap();
    assert!(matches!(a, Action::UpdateLease { .. }));
    w.set_lease_silently("pod-a", 1);
    let outcome = w.execute(&a);
    w.core.complete(outcome, w.now);
    assert_eq!(w.core.next_action(w.now), Some(Action::GetLease));
    let outcome = w.execute(&Action::GetLease);
    w.core.complete(outcome, w.now);
    w.run();
    assert!(!w.core.is_leader());
    assert_eq!(w.core.lease_holder(), "pod-a");
}

#[test]
fn ten_candidates_create_conflict_quietly() {
    // Our create loses to another pod's: 409 AlreadyExists, re-read, follow.
    let mut w = World::new();
    w.label_me("false");
    w.boot();
    let a = w.core.next_action(w.now).unwrap();
    assert!(matches!(a, Action::CreateLease(_)));
    w.set_lease_silently("pod-x", 0);
    let outcome = w.execute(&a);
    w.core.complete(outcome, w.now);
    w.run();
    assert!(!w.core.is_leader());
    assert_eq!(w.label(ME, "is-leader").as_deref(), Some("false"));
}

#[test]
fn unready_pod_neither_participates_nor_competes() {
    let mut w = World::new();
    w.update_pod(ME, |p| p.ready = false);
    w.boot();
    let actions = w.run();
    assert!(actions.iter().all(|a| !matches!(a, Action::CreateLease(_))));
    assert_eq!(w.label(ME, "is-leader").as_deref(), Some("false"));
    assert_eq!(w.label(ME, "participant"), None);
    // Ready again: joins and leads.
    w.update_pod(ME, |p| p.ready = true);
    w.run();
    assert!(w.core.is_leader());
}

/// Leader pod-b with a ready follower pod-a.
fn leader_with_follower() -> World {
    let mut w = World::leading();
    w.join("pod-a");
    w.run();
    assert!(w.core.is_leader());
    w.writes.clear();
    w
}

#[test]
fn unready_leader_hands_over_to_a_ready_participant() {
    let mut w = leader_with_follower();
    w.at(300);
    w.update_pod(ME, |p| p.ready = false);
    w.run();
    assert_eq!(w.writes, ["pod-b participant=-", "lease holder=\"\""]);
    assert_eq!(
        w.core.role(),
        &Role::HandingOver {
            since: w.now.mono,
            wait: true
        }
    );
    // Our true stays until the successor fences it (no leaderless moment).
    assert_eq!(w.label(ME, "is-leader").as_deref(), Some("true"));
    // The successor's patch arrives: handover done, we are a follower.
    w.update_pod(ME, |p| {
        p.labels.insert("e/is-leader".into(), "false".into());
    });
    w.run();
    assert_eq!(w.core.role(), &Role::Follower);
    // Ready again: rejoins as a participant, not as leader.
    w.set_lease("pod-a", 1);
    w.update_pod(ME, |p| p.ready = true);
    w.writes.clear();
    w.run();
    assert_eq!(w.writes, ["pod-b participant=true"]);
}

#[test]
fn unready_leader_without_successor_keeps_leading() {
    let mut w = World::leading();
    w.update_pod(ME, |p| p.ready = false);
    w.run();
    assert!(w.core.is_leader());
    assert_eq!(w.label(ME, "is-leader").as_deref(), Some("true"));
    assert_eq!(w.label(ME, "participant"), None);
}

#[test]
fn follower_sigterm_leaves_at_once() {
    let mut w = World::following("pod-a", 0);
    w.writes.clear();
    w.feed(Observation::Signal);
    let actions = w.run();
    assert_eq!(w.writes, ["pod-b participant=-"]);
    assert_eq!(actions.last(), Some(&Action::Exit(Exit::Clean)));
}

#[test]
fn leader_sigterm_hands_over_then_exits_when_fenced() {
    let mut w = leader_with_follower();
    w.feed(Observation::Signal);
    let actions = w.run();
    assert_eq!(w.writes, ["pod-b participant=-", "lease holder=\"\""]);
    assert!(
        !actions.contains(&Action::Exit(Exit::Clean)),
        "waits for the successor"
    );
    w.at(40);
    w.update_pod(ME, |p| {
        p.labels.insert("e/is-leader".into(), "false".into());
    });
    assert_eq!(w.run(), [Action::Exit(Exit::Clean)]);
}

#[test]
fn leader_sigterm_without_successor_leads_until_the_deadline() {
    let mut w = World::leading();
    w.writes.clear();
    w.feed(Observation::Signal);
    w.run();
    assert_eq!(w.writes, ["pod-b participant=-"]);
    // Keeps renewing through the drain (grace 30 s, margin 3 s).
    for s in 1..=13 {
        w.at(s * 2000);
        w.run();
        assert!(w.core.is_leader());
    }
    assert_eq!(
        w.core.next_wakeup(w.now.mono),
        Some(w.t0 + Duration::from_secs(27))
    );
    w.at(27_000);
    w.writes.clear();
    let actions = w.run();
    assert_eq!(w.writes, ["lease holder=\"\"", "pod-b is-leader=false"]);
    assert_eq!(actions.last(), Some(&Action::Exit(Exit::Clean)));
}

#[test]
fn second_signal_releases_now() {
    let mut w = World::leading();
    w.feed(Observation::Signal);
    w.run();
    w.at(100);
    w.writes.clear();
    w.feed(Observation::Signal);
    let actions = w.run();
    assert_eq!(w.writes, ["lease holder=\"\"", "pod-b is-leader=false"]);
    assert_eq!(actions.last(), Some(&Action::Exit(Exit::Clean)));
}

#[test]
fn deletion_starts_the_drain_without_a_signal() {
    let mut w = leader_with_follower();
    w.delete_me(10);
    assert!(w.core.draining());
    w.run();
    assert_eq!(w.writes, ["pod-b participant=-", "lease holder=\"\""]);
    // The SIGTERM that follows is the first signal, not an urgent second one.
    w.feed(Observation::Signal);
    w.writes.clear();
    w.run();
    assert!(w.writes.is_empty());
}

#[test]
fn drain_gives_up_when_the_server_never_answers() {
    let mut w = World::leading();
    w.fail_next(10_000, KubeError::Transport("down".into()));
    w.feed(Observation::Signal);
    let mut exit = None;
    for ms in (0..40_000).step_by(100) {
        w.at(ms);
        if let Some(Action::Exit(e)) = w.run().last() {
            exit = Some((ms, *e));
            break;
        }
    }
    let (ms, e) = exit.expect("must exit");
    assert_eq!(e, Exit::Incomplete);
    assert!((27_000..30_000).contains(&ms), "exited at {ms} ms");
}

#[test]
fn restarted_sidecar_resumes_its_own_lease() {
    let mut w = World::new();
    w.label_me("true");
    w.update_pod(ME, |p| {
        p.labels.insert("e/participant".into(), "true".into());
    });
    w.set_lease(ME, 2);
    w.boot();
    w.run();
    assert!(w.core.is_leader());
    // It never labeled itself false in between.
    assert_eq!(w.writes, ["lease holder=\"pod-b\""]);
    assert_eq!(w.lease.as_ref().unwrap().record.transitions, 2);
}

#[test]
fn restarted_unready_pod_releases_its_lease_to_a_ready_participant() {
    let mut w = World::new();
    w.update_pod(ME, |p| p.ready = false);
    w.add_pod(
        "pod-a",
        true,
        &[("e/is-leader", "false"), ("e/participant", "true")],
    );
    w.set_lease(ME, 2);
    w.boot();
    w.run();
    assert!(!w.core.is_leader());
    let lease = w.lease.clone().unwrap();
    assert_eq!(lease.record.holder, "", "released, not resumed");
    assert_eq!(lease.record.transitions, 2);
    assert_eq!(w.label(ME, "is-leader").as_deref(), Some("false"));
    // Without a ready participant it resumes, as any restart does.
    let mut w = World::new();
    w.update_pod(ME, |p| p.ready = false);
    w.set_lease(ME, 2);
    w.boot();
    w.run();
    assert!(w.core.is_leader());
}

#[test]
fn leader_corrects_stale_labels_on_resync() {
    let mut w = leader_with_follower();
    // Someone mislabels a follower by hand; the watch event is missed.
    let mut a = w.pods["pod-a"].clone();
    a.labels.insert("e/is-leader".into(), "yes".into());
    a.resource_version = w.next_rv();
    w.pods.insert("pod-a".into(), a);
    w.at(5000);
    let actions = w.run();
    assert!(actions.contains(&Action::ListPods));
    assert!(w.writes.contains(&"pod-a is-leader=false".to_string()));
}

#[test]
fn label_conflict_re_reads_the_pod() {
    let mut w = leader_with_follower();
    // The follower's pod changes; our cache is stale.
    let mut a = w.pods["pod-a"].clone();
    a.labels.insert("e/is-leader".into(), "bogus".into());
    a.resource_version = w.next_rv();
    let cached = a.clone();
    w.feed(Observation::PodChanged(cached));
    a.resource_version = w.next_rv();
    w.pods.insert("pod-a".into(), a);
    let actions = w.run();
    assert!(actions.contains(&Action::GetPod("pod-a".into())));
    assert_eq!(w.label("pod-a", "is-leader").as_deref(), Some("false"));
}

#[test]
fn forbidden_patch_backs_off() {
    let mut w = World::new();
    w.add_pod("pod-a", true, &[("e/is-leader", "true")]);
    w.set_lease("pod-a", 0);
    w.boot();
    w.fail_next(1, KubeError::Forbidden("pods is forbidden".into()));
    let actions = w.run();
    assert_eq!(actions.len(), 1);
    assert!(w.core.next_wakeup(w.now.mono).is_some());
}

#[test]
fn own_pod_gone_means_leave() {
    let mut w = leader_with_follower();
    w.pods.remove(ME);
    let own = w.core.pods.own.clone().unwrap();
    w.feed(Observation::PodGone(own));
    let actions = w.run();
    assert_eq!(actions.last(), Some(&Action::Exit(Exit::Clean)));
    assert_eq!(w.lease.as_ref().unwrap().record.holder, "");
}

// ---- faults: answers lost, streams out of step, hands on the Lease, outages -----------
//
// Each test below failed on the core before the fault handling in `safety` and
// `outage` (checked by running them against it).

/// pod-a's sidecar, cut off, still believes it leads: its claim of `true` on its own pod,
/// based on the resourceVersion it last saw, is held in the network.
fn claim_in_flight(w: &World, pod: &str) -> Patch {
    Patch {
        pod: pod.into(),
        precondition: Some(w.pods[pod].resource_version.clone()),
        labels: vec![("e/is-leader".into(), Some("true".into()))],
        annotations: vec![],
        reason: "claim leadership",
    }
}

/// Runs the core every `step` ms from `from` to `to` (exclusive).
fn run_until(w: &mut World, from: u64, to: u64, step: u64) {
    for ms in (from..to).step_by(step as usize) {
        w.at(ms);
        w.run();
    }
}

fn wrote_true(w: &World) -> bool {
    w.writes.iter().any(|x| x.contains("is-leader=true"))
}

#[test]
fn takeover_applied_with_its_answer_lost_still_fences_the_old_leader() {
    let mut w = World::following("pod-a", 0);
    // pod-a's pod says false (its own earlier step), and its claim of true is in flight.
    w.update_pod("pod-a", |p| {
        p.labels.insert("e/is-leader".into(), "false".into());
    });
    let late = claim_in_flight(&w, "pod-a");
    w.at(15_000);
    w.lose_next(1, Calls::LeaseWrites);
    w.run();
    assert!(!w.core.is_leader(), "the answer was lost");
    assert_eq!(
        w.lease.as_ref().unwrap().record.holder,
        ME,
        "but it was applied"
    );
    run_until(&mut w, 15_100, 20_000, 100);
    assert!(w.core.is_leader());
    assert_eq!(w.label(ME, "is-leader").as_deref(), Some("true"));
    assert!(
        !w.apply_foreign(&late),
        "the old leader's claim must be stale"
    );
}

#[test]
fn release_applied_with_its_answer_lost_claims_nothing_back() {
    let mut w = leader_with_follower();
    w.at(300);
    w.hold_lease_stream(true);
    w.lose_next(1, Calls::LeaseWrites);
    w.feed(Observation::Signal);
    w.run();
    assert_eq!(w.lease.as_ref().unwrap().record.holder, "");
    // pod-a takes the lease and fences us; our pod stream is ahead of our lease stream.
    w.at(310);
    w.set_lease("pod-a", 1);
    w.update_pod(ME, |p| {
        p.labels.insert("e/is-leader".into(), "false".into());
    });
    w.update_pod("pod-a", |p| {
        p.labels.insert("e/is-leader".into(), "true".into());
    });
    w.writes.clear();
    run_until(&mut w, 320, 5_000, 20);
    assert!(!wrote_true(&w), "claimed true again: {:?}", w.writes);
    assert!(
        w.writes.iter().all(|x| !x.starts_with("pod-a")),
        "touched the successor: {:?}",
        w.writes
    );
    assert_eq!(w.label("pod-a", "is-leader").as_deref(), Some("true"));
}

#[test]
fn fence_changes_the_pod_even_when_the_transition_count_repeats() {
    // An earlier takeover by this pod stamped pod-a; the Lease was recreated since, so
    // the transition count starts again and would repeat the old stamp.
    let mut w = World::new();
    w.label_me("false");
    w.add_pod("pod-a", true, &[("e/is-leader", "false")]);
    w.annotations.insert(
        "pod-a".into(),
        [("e/is-leader".to_string(), "pod-b:1".to_string())].into(),
    );
    w.set_lease("pod-a", 0);
    w.boot();
    w.run();
    let late = claim_in_flight(&w, "pod-a");
    run_until(&mut w, 15_000, 16_000, 100);
    assert!(w.core.is_leader());
    assert_eq!(w.label(ME, "is-leader").as_deref(), Some("true"));
    assert!(!w.apply_foreign(&late), "the fence must have changed pod-a");
}

#[test]
fn failed_resume_after_a_restart_keeps_the_label() {
    let mut w = World::new();
    w.label_me("true");
    w.set_lease_silently(ME, 2);
    w.boot();
    w.fail_next_of(
        3,
        Calls::LeaseWrites,
        KubeError::Status {
            code: 503,
            message: "unavailable".into(),
        },
    );
    run_until(&mut w, 0, 10_000, 100);
    assert!(w.core.is_leader());
    assert!(
        w.writes.iter().all(|x| !x.contains("is-leader=false")),
        "{:?}",
        w.writes
    );
}

/// A follower of pod-a that saw pod-a's last renewal at 1 s; at 1.5 s `edit` changes the
/// Lease by hand. pod-a's sidecar may lead until its renew deadline, which ends before
/// 1 s + the lease duration: no label may change before 16 s.
fn hand_edit_is_waited_out(edit: impl FnOnce(&mut World)) {
    let mut w = World::following("pod-a", 3);
    w.at(1_000);
    w.set_lease("pod-a", 3);
    w.at(1_500);
    edit(&mut w);
    w.writes.clear();
    for ms in (1_500..16_000).step_by(50) {
        w.at(ms);
        w.run();
        assert!(
            w.writes.iter().all(|x| x.starts_with("lease")),
            "a label written at {ms} ms: {:?}",
            w.writes
        );
    }
    run_until(&mut w, 16_000, 18_000, 50);
    assert!(w.core.is_leader());
    assert_eq!(w.label(ME, "is-leader").as_deref(), Some("true"));
    assert_eq!(w.label("pod-a", "is-leader").as_deref(), Some("false"));
}

#[test]
fn lease_deleted_by_hand_new_leader_waits_out_the_old_holder() {
    hand_edit_is_waited_out(|w| w.delete_lease());
}

#[test]
fn lease_rewritten_by_hand_to_name_us_waits_out_the_old_holder() {
    hand_edit_is_waited_out(|w| w.set_lease(ME, 3));
}

#[test]
fn lease_emptied_by_hand_waits_out_the_old_holder() {
    hand_edit_is_waited_out(|w| w.set_lease_for("", 3, 15));
}

#[test]
fn lease_duration_lowered_by_hand_waits_out_the_old_holder() {
    hand_edit_is_waited_out(|w| w.set_lease_for("pod-a", 3, 1));
}

#[test]
fn pod_recreated_under_the_same_name_is_not_adopted() {
    let mut w = leader_with_follower();
    // Force-deleted and recreated; the new pod's own sidecar labels it.
    w.at(100);
    w.update_pod(ME, |p| {
        p.uid = "uid-new".into();
        p.labels.insert("e/is-leader".into(), "false".into());
    });
    w.writes.clear();
    let actions = w.run();
    assert!(
        matches!(actions.last(), Some(Action::Exit(_))),
        "{actions:?}"
    );
    assert!(w.writes.is_empty(), "{:?}", w.writes);
}

// ---- outages -------------------------------------------------------------------------

#[test]
fn leader_cut_off_by_an_outage_resumes_quietly() {
    let mut w = leader_with_follower();
    w.fail_next(u32::MAX, KubeError::Transport("connection refused".into()));
    run_until(&mut w, 1_000, 31_000, 250);
    assert!(!w.core.is_leader(), "no renewal: not leading");
    w.fail = None;
    w.writes.clear();
    run_until(&mut w, 31_000, 34_000, 100);
    assert!(w.core.is_leader());
    assert_eq!(w.lease.as_ref().unwrap().record.transitions, 0);
    assert_eq!(w.label(ME, "is-leader").as_deref(), Some("true"));
    assert!(
        w.writes
            .iter()
            .all(|x| !x.contains("is-leader=false") || !x.starts_with(ME)),
        "{:?}",
        w.writes
    );
}

#[test]
fn silence_counts_only_while_in_contact() {
    let mut w = World::following("pod-a", 0);
    w.at(1_000);
    w.feed(Observation::LeaseContact(Contact::Lost));
    w.fail_next(u32::MAX, KubeError::Transport("connection refused".into()));
    run_until(&mut w, 1_000, 30_000, 250);
    w.at(30_000);
    w.fail = None;
    w.feed(Observation::LeaseContact(Contact::Restored));
    w.writes.clear();
    // pod-a's sidecar died during the outage: replaced a lease after the outage ends.
    run_until(&mut w, 30_000, 45_000, 100);
    assert!(w.writes.is_empty(), "{:?}", w.writes);
    assert!(!w.core.is_leader());
    run_until(&mut w, 45_000, 46_000, 100);
    assert!(w.core.is_leader());
}

#[test]
fn expiry_is_confirmed_by_a_read_before_a_takeover() {
    // The watch stalled silently: pod-a's renewals never reached us.
    let mut w = World::following("pod-a", 0);
    w.writes.clear();
    w.at(14_000);
    w.set_lease_silently("pod-a", 0);
    w.at(15_000);
    let actions = w.run();
    assert_eq!(actions, [Action::GetLease]);
    assert!(w.writes.is_empty());
    assert!(!w.core.is_leader());
}

#[test]
fn follower_that_meets_an_outage_at_expiry_waits_a_full_lease_after_it() {
    // etcd is down: nothing changes, every call answers 503.
    let mut w = World::following("pod-a", 0);
    w.writes.clear();
    w.fail_next(
        u32::MAX,
        KubeError::Status {
            code: 503,
            message: "etcdserver: request timed out".into(),
        },
    );
    run_until(&mut w, 15_000, 40_000, 100);
    assert!(w.writes.is_empty());
    w.fail = None;
    run_until(&mut w, 40_000, 44_000, 100);
    assert!(w.writes.is_empty(), "{:?}", w.writes);
    // The leader resumes and renews: the follower never takes over.
    for ms in (44_000..70_000).step_by(250) {
        w.at(ms);
        if ms % 2_000 == 0 {
            w.set_lease("pod-a", 0);
        }
        w.run();
    }
    assert!(w.writes.is_empty(), "{:?}", w.writes);
}

#[test]
fn claim_held_in_the_network_is_stale_after_the_next_takeover() {
    let mut w = World::following("pod-a", 0);
    w.at(500);
    w.delay_next(Calls::PatchOf(ME));
    w.release_lease(0);
    w.run();
    assert!(w.core.is_leader());
    assert_eq!(w.label(ME, "is-leader").as_deref(), Some("false"), "held");
    // We are cut off; pod-a takes over after our lease, fences us and claims.
    w.fail_next(u32::MAX, KubeError::Transport("unreachable".into()));
    run_until(&mut w, 600, 20_000, 250);
    w.set_lease("pod-a", 2);
    assert!(w.apply_foreign(&Patch {
        pod: ME.into(),
        precondition: None,
        labels: vec![("e/is-leader".into(), Some("false".into()))],
        annotations: vec![("e/is-leader".into(), "pod-a:9000".into())],
        reason: "fence",
    }));
    let mut claim = claim_in_flight(&w, "pod-a");
    claim.precondition = Some(w.pods["pod-a"].resource_version.clone());
    assert!(w.apply_foreign(&claim));
    // Our claim finally reaches the server: stale.
    assert_eq!(w.deliver_delayed(), [false]);
}

#[test]
fn pod_stream_behind_the_lease_stream_still_gives_one_leader() {
    let mut w = World::following("pod-a", 0);
    w.hold_pod_stream(true);
    // pod-a's sidecar drops its participation (unseen by us), then releases.
    w.update_pod("pod-a", |p| {
        p.labels.remove("e/participant");
    });
    w.at(500);
    w.release_lease(0);
    run_until(&mut w, 500, 3_000, 50);
    assert!(w.core.is_leader());
    assert_eq!(w.label(ME, "is-leader").as_deref(), Some("true"));
    assert_eq!(w.label("pod-a", "is-leader").as_deref(), Some("false"));
    w.hold_pod_stream(false);
    run_until(&mut w, 3_000, 6_000, 50);
    assert_eq!(w.label(ME, "is-leader").as_deref(), Some("true"));
}

// ---- drain and renewal under a slow or flaky API server ------------------------------

#[test]
fn renewal_never_waits_behind_a_failing_label_write() {
    let mut w = leader_with_follower();
    // Unready: it wants to drop its participation before handing over, but every patch
    // of its own pod fails for a long while.
    w.fail_next_of(
        u32::MAX,
        Calls::PatchOf(ME),
        KubeError::Transport("timeout".into()),
    );
    w.at(300);
    w.update_pod(ME, |p| p.ready = false);
    let mut renewed = 0;
    for ms in (300..30_000).step_by(100) {
        w.at(ms);
        let before = w.lease.as_ref().map(|l| l.resource_version.clone());
        w.run();
        if w.lease.as_ref().map(|l| l.resource_version.clone()) != before {
            renewed += 1;
        }
        assert!(w.core.is_leader(), "lost leadership at {ms} ms");
    }
    assert!(renewed >= 13, "renewed {renewed} times in 30 s");
}

#[test]
fn a_later_deletion_with_a_shorter_grace_shortens_the_drain() {
    let mut w = World::leading();
    w.delete_me(30);
    w.run();
    w.at(1_000);
    // kubectl delete --grace-period=5 after the first delete.
    w.update_pod(ME, |p| p.deletion_grace_seconds = Some(5));
    run_until(&mut w, 1_000, 5_000, 100);
    assert!(w.core.is_leader());
    // The new deadline: 5 s from 1 s, less the 1 s margin.
    w.writes.clear();
    w.at(5_000);
    w.run();
    assert_eq!(w.writes, ["lease holder=\"\"", "pod-b is-leader=false"]);
}

#[test]
fn force_deletion_still_sends_the_release() {
    let mut w = leader_with_follower();
    w.delete_me(0);
    let actions = w.run();
    assert!(
        matches!(actions.first(), Some(Action::UpdateLease { record, .. }) if record.holder.is_empty()),
        "{actions:?}"
    );
    // The release landed: the successor takes over at once instead of after the lease.
    assert_eq!(w.lease.as_ref().unwrap().record.holder, "");
}

#[test]
fn a_huge_grace_period_does_not_overflow() {
    let mut w = World::leading();
    w.update_pod(ME, |p| p.termination_grace_seconds = i64::MAX as u64);
    w.feed(Observation::Signal);
    w.run();
    assert!(w.core.is_leader());
    w.delete_me(u64::MAX);
    w.run();
    assert!(w.core.next_wakeup(w.now.mono).is_some());
}

#[test]
fn calls_shrink_to_fit_the_drain() {
    let mut w = World::leading();
    assert_eq!(
        w.core.call_deadline(w.now.mono),
        None,
        "no drain: the normal timeout"
    );
    w.feed(Observation::Signal); // grace 30 s: leave at 27 s, give up at 29.25 s
    w.at(26_000);
    w.run();
    let d = w.core.call_deadline(w.now.mono).expect("draining");
    assert!(d <= w.t0 + Duration::from_millis(29_250), "{:?}", d - w.t0);
    // At the deadline, the release must leave time for the relabel after it.
    w.at(27_000);
    let release_by = w.core.call_deadline(w.now.mono).unwrap();
    assert!(
        release_by - w.now.mono <= Duration::from_millis(1_125),
        "{:?}",
        release_by - w.now.mono
    );
}

#[test]
fn readiness_follows_contact_with_the_api_server() {
    let mut w = World::leading();
    assert!(w.core.summary().connected);
    w.feed(Observation::LeaseContact(Contact::Lost));
    assert!(
        !w.core.summary().connected,
        "the watches stopped delivering"
    );
    w.feed(Observation::LeaseContact(Contact::Restored));
    assert!(w.core.summary().connected);
}

// ---- API etiquette -------------------------------------------------------------------

fn busy(secs: u64) -> KubeError {
    KubeError::Busy {
        code: 429,
        message: "too many requests".into(),
        retry_after: Duration::from_secs(secs),
    }
}

#[test]
fn retry_after_is_honoured_by_candidates_and_label_writes() {
    let mut w = World::following("pod-a", 2);
    w.at(500);
    w.fail_next_of(1, Calls::LeaseWrites, busy(5));
    w.release_lease(2);
    w.run();
    assert!(!w.core.is_leader());
    w.writes.clear();
    run_until(&mut w, 500, 5_500, 50);
    assert!(w.writes.is_empty(), "asked to wait 5 s: {:?}", w.writes);
    run_until(&mut w, 5_500, 6_000, 50);
    assert!(w.core.is_leader());
    // A label write told to wait.
    w.fail_next_of(1, Calls::PatchOf(ME), busy(4));
    w.update_pod(ME, |p| {
        p.labels.remove("e/participant");
    });
    w.writes.clear();
    run_until(&mut w, 6_000, 10_000, 50);
    assert!(
        w.writes.iter().all(|x| x.starts_with("lease")),
        "asked to wait 4 s: {:?}",
        w.writes
    );
    run_until(&mut w, 10_000, 10_500, 50);
    assert!(w.writes.iter().any(|x| x.contains("participant=true")));
}

#[test]
fn a_leader_told_to_wait_still_renews_within_its_deadline() {
    let mut w = World::leading();
    w.at(2_000);
    w.fail_next_of(1, Calls::LeaseWrites, busy(30));
    w.run();
    run_until(&mut w, 2_000, 12_000, 100);
    assert!(w.core.is_leader(), "a Retry-After must not cost the lease");
}

#[test]
fn another_election_sharing_the_label_is_left_alone() {
    let mut w = World::leading();
    // The leader of election "other-app", configured with the same --leadership-label.
    w.add_pod(
        "pod-x",
        true,
        &[("e/is-leader", "true"), ("e/participant", "true")],
    );
    w.update_pod("pod-x", |p| {
        p.annotations
            .insert("e/is-leader".into(), "other-app/".into());
    });
    w.writes.clear();
    run_until(&mut w, 0, 20_000, 100);
    assert!(
        w.writes.iter().all(|x| !x.starts_with("pod-x")),
        "demoted another election's leader: {:?}",
        w.writes
    );
    assert_eq!(w.label("pod-x", "is-leader").as_deref(), Some("true"));
    // Nor is it a successor to hand over to.
    w.update_pod(ME, |p| p.ready = false);
    w.run();
    assert!(w.core.is_leader());
    // Our own pod carries our election's mark, so the other election leaves it alone.
    assert_eq!(w.mark(ME), Some("my-app/"));
}

#[test]
fn label_values_of_the_users_choosing() {
    let mut s = settings();
    s.keys.leader_value = "primary".into();
    s.keys.follower_value = "replica".into();
    let mut w = World::with(s);
    w.add_pod(
        "pod-a",
        true,
        &[("e/is-leader", "replica"), ("e/participant", "true")],
    );
    w.boot();
    w.run();
    assert!(w.core.is_leader());
    assert_eq!(w.label(ME, "is-leader").as_deref(), Some("primary"));
    assert_eq!(w.label("pod-a", "is-leader").as_deref(), Some("replica"));
    // Handover: the old leader keeps "primary" until the successor fences it.
    w.update_pod(ME, |p| p.ready = false);
    w.run();
    assert_eq!(w.label(ME, "is-leader").as_deref(), Some("primary"));
    assert!(w
        .writes
        .iter()
        .all(|x| !x.contains("=true") || x.contains("participant")));
}

// ---- preferred leaders and switchover --------------------------------------------------

fn released_to(w: &World) -> Option<String> {
    let l = w.lease.as_ref()?;
    (l.record.holder.is_empty()).then(|| l.record.handover_to.clone())
}

fn prioritise(w: &mut World, pod: &str, priority: &str) {
    w.update_pod(pod, |p| {
        p.annotations
            .insert("my-app/priority".into(), priority.into());
    });
}

#[test]
fn failback_to_a_preferred_pod_once_it_has_been_ready_long_enough() {
    let mut w = leader_with_follower(); // pod-a joined at 0 ms
    w.at(1_000);
    prioritise(&mut w, "pod-a", "5");
    run_until(&mut w, 1_000, 30_000, 100);
    assert!(w.core.is_leader(), "no failback before 30 s of readiness");
    w.at(30_000);
    w.run();
    assert_eq!(released_to(&w).as_deref(), Some("pod-a"));
    assert!(matches!(w.core.role(), Role::HandingOver { .. }));
    // Our true stays until pod-a's fence: no leaderless moment.
    assert_eq!(w.label(ME, "is-leader").as_deref(), Some("true"));
    assert!(w.core.take_notices().iter().any(|n| matches!(n,
        Notice::HandedOver { to, why } if to == "pod-a" && why.contains("failback"))));
}

#[test]
fn a_flapping_preferred_pod_does_not_pull_leadership() {
    let mut w = leader_with_follower();
    prioritise(&mut w, "pod-a", "5");
    for s in 1..6 {
        w.at(s * 20_000);
        w.update_pod("pod-a", |p| p.ready = s % 2 == 0);
        w.run();
        assert!(w.core.is_leader(), "handed over at {s}");
    }
}

#[test]
fn a_release_meant_for_another_pod_is_left_to_it() {
    let mut w = World::following("pod-a", 2);
    w.join("pod-c");
    w.at(500);
    let mut record = election::release(&w.lease.as_ref().unwrap().record, w.now.wall, "pod-c");
    record.transitions = 2;
    w.lease.as_mut().unwrap().record = record;
    w.lease_event();
    w.writes.clear();
    run_until(&mut w, 500, 2_500, 100);
    assert!(
        w.writes.is_empty(),
        "took a lease meant for pod-c: {:?}",
        w.writes
    );
    // pod-c never took it: after a retry period it is anyone's.
    run_until(&mut w, 2_500, 2_600, 100);
    assert!(w.core.is_leader());
}

#[test]
fn a_release_meant_for_us_is_taken_at_once() {
    let mut w = World::following("pod-a", 2);
    w.at(500);
    let record = election::release(&w.lease.as_ref().unwrap().record, w.now.wall, ME);
    w.lease.as_mut().unwrap().record = record;
    w.lease_event();
    w.run();
    assert!(w.core.is_leader());
}

#[test]
fn priority_zero_never_leads_even_alone() {
    let mut w = World::new();
    w.update_pod(ME, |p| {
        p.annotations.insert("my-app/priority".into(), "0".into());
    });
    w.boot();
    run_until(&mut w, 0, 40_000, 500);
    assert!(!w.core.is_leader());
    assert!(w.lease.is_none(), "created a Lease");
    // Still a ready replica, labeled follower.
    assert_eq!(w.label(ME, "is-leader").as_deref(), Some("false"));
    assert_eq!(w.label(ME, "participant").as_deref(), Some("true"));
}

#[test]
fn a_leader_set_to_priority_zero_hands_over() {
    let mut w = leader_with_follower();
    w.at(500);
    prioritise(&mut w, ME, "0");
    w.run();
    assert_eq!(released_to(&w).as_deref(), Some("pod-a"));
}

#[test]
fn switchover_to_a_named_pod() {
    let mut w = leader_with_follower();
    w.join("pod-c");
    w.run();
    w.take_notices_for_test();
    w.at(1_000);
    w.annotate_lease("my-app/switchover-to", "pod-c");
    w.run();
    assert_eq!(released_to(&w).as_deref(), Some("pod-c"));
    let l = w.lease.as_ref().unwrap();
    assert!(
        l.switchover_to().is_none(),
        "the request was not removed: {:?}",
        l.metadata
    );
    assert!(w.core.take_notices().iter().any(|n| matches!(n,
        Notice::HandedOver { to, why } if to == "pod-c" && why.contains("switchover"))));
}

#[test]
fn switchover_to_an_impossible_pod_is_refused_and_cleared() {
    let mut w = leader_with_follower();
    w.update_pod("pod-a", |p| p.ready = false);
    w.run();
    for target in ["pod-a", "pod-zz"] {
        w.take_notices_for_test();
        w.annotate_lease("my-app/switchover-to", target);
        w.run();
        assert!(w.core.is_leader());
        let l = w.lease.as_ref().unwrap();
        assert_eq!(l.record.holder, ME);
        assert!(l.switchover_to().is_none(), "not cleared: {:?}", l.metadata);
        let notices = w.core.take_notices();
        assert!(
            notices.iter().any(|n| matches!(n,
                Notice::SwitchoverRefused(why) if why.contains(target))),
            "{notices:?}"
        );
    }
}

#[test]
fn the_preferred_zone_wins_at_equal_priority() {
    let mut s = settings();
    s.prefer_zone = Some("zone-b".into());
    let mut w = World::with(s);
    w.boot();
    w.run();
    for (name, zone) in [
        ("pod-a", "zone-a"),
        ("pod-c", "zone-b"),
        ("pod-d", "zone-a"),
    ] {
        w.add_pod(
            name,
            true,
            &[
                ("e/is-leader", "false"),
                ("e/participant", "true"),
                ("topology.kubernetes.io/zone", zone),
            ],
        );
        let p = w.pods[name].clone();
        w.feed(Observation::PodChanged(p));
    }
    w.run();
    w.at(500);
    w.update_pod(ME, |p| p.ready = false);
    w.run();
    assert_eq!(released_to(&w).as_deref(), Some("pod-c"));
}

#[test]
fn a_leader_past_its_drain_deadline_releases_whatever_the_lease_asks() {
    let mut w = World::leading();
    w.feed(Observation::Signal);
    w.run();
    run_until(&mut w, 0, 26_900, 100);
    // Asked at the last moment, for a pod that cannot lead.
    w.annotate_lease("my-app/switchover-to", "pod-zz");
    w.at(27_000);
    w.writes.clear();
    w.run();
    assert_eq!(
        w.writes.first().map(String::as_str),
        Some("lease holder=\"\""),
        "{:?}",
        w.writes
    );
}

#[test]
fn a_leaving_pod_releases_a_lease_that_still_names_it() {
    // A leader cut off past its renew deadline (so no longer leading) gets SIGTERM; the
    // Lease still names it when the server answers again: release it on the way out,
    // rather than leave the others to wait it out.
    let mut w = World::leading();
    w.fail_next(u32::MAX, KubeError::Transport("unreachable".into()));
    run_until(&mut w, 0, 12_000, 100);
    assert!(!w.core.is_leader());
    // Twice: leave now.
    w.feed(Observation::Signal);
    w.feed(Observation::Signal);
    w.fail = None;
    w.writes.clear();
    run_until(&mut w, 12_000, 16_000, 100);
    assert_eq!(
        w.lease.as_ref().unwrap().record.holder,
        "",
        "{:?}",
        w.writes
    );
}

#[test]
fn a_deletion_drain_waits_for_the_kubelets_signal() {
    // Found under a real kubelet (tests/node.rs): a sidecar that exits as soon as its
    // deleted pod is settled is restarted by the kubelet, and a native sidecar would stop
    // before the app. It stays, as a non-leader, until the SIGTERM.
    let mut w = leader_with_follower();
    w.delete_me(30);
    w.run();
    // The successor fences us: handover done.
    w.update_pod(ME, |p| {
        p.labels.insert("e/is-leader".into(), "false".into());
    });
    for ms in (0..20_000).step_by(500) {
        w.at(ms);
        assert!(
            !w.run().iter().any(|a| matches!(a, Action::Exit(_))),
            "left at {ms} ms before the kubelet's signal"
        );
    }
    w.feed(Observation::Signal);
    assert_eq!(w.run(), [Action::Exit(Exit::Clean)]);
}

#[test]
fn a_settled_deletion_drain_without_a_signal_ends_clean_at_its_deadline() {
    let mut w = World::following("pod-a", 0);
    w.delete_me(10);
    w.run();
    let mut exit = None;
    for ms in (0..12_000).step_by(100) {
        w.at(ms);
        if let Some(Action::Exit(e)) = w.run().last() {
            exit = Some((ms, *e));
            break;
        }
    }
    let (ms, e) = exit.expect("exits");
    assert_eq!(e, Exit::Clean, "settled: a clean exit");
    assert!((9_000..10_000).contains(&ms), "{ms}");
}

// ---- planned handovers that never stall, outages that never move leadership ---------
//
// Each test below failed on the core before the fix it names (checked by running it).

/// Feeds a lease event whose record is a release meant for `to`, made by the holder.
fn release_for(w: &mut World, to: &str) {
    let record = election::release(&w.lease.as_ref().unwrap().record, w.now.wall, to);
    w.rv += 1;
    let l = w.lease.as_mut().unwrap();
    l.record = record;
    l.resource_version = w.rv.to_string();
    l.metadata["resourceVersion"] = serde_json::json!(w.rv.to_string());
    w.lease_event();
}

#[test]
fn a_release_refused_with_409_is_decided_again_at_once() {
    // `kubectl annotate` run twice: the leader's release, based on the first version,
    // meets 409. It must not sit in HandingOver with nothing to do for a lease duration.
    let mut w = leader_with_follower();
    w.join("pod-c");
    w.run();
    w.at(1_000);
    w.annotate_lease("my-app/switchover-to", "pod-c");
    let release = w.core.next_action(w.now).expect("the release");
    assert!(matches!(&release, Action::UpdateLease { record, .. } if record.holder.is_empty()));
    w.hold_lease_stream(true);
    w.annotate_lease("my-app/switchover-to", "pod-c");
    let outcome = w.execute(&release);
    assert!(matches!(
        outcome,
        Outcome::Lease(Err(KubeError::Conflict(_)))
    ));
    w.core.complete(outcome, w.now);
    assert!(
        w.core.is_leader(),
        "a refused release leaves the leader leading"
    );
    w.hold_lease_stream(false);
    w.run();
    assert_eq!(released_to(&w).as_deref(), Some("pod-c"));
}

#[test]
fn a_release_refused_with_retry_after_keeps_leading_and_retries_within_a_retry_period() {
    let mut w = leader_with_follower();
    w.at(300);
    w.fail_next_of(1, Calls::LeaseWrites, busy(30));
    w.update_pod(ME, |p| p.ready = false);
    w.run();
    assert_eq!(released_to(&w), None, "refused");
    let mut released_at = None;
    for ms in (300..20_000).step_by(50) {
        w.at(ms);
        w.run();
        if released_to(&w).is_some() {
            released_at = Some(ms);
            break;
        }
        assert!(
            w.core.is_leader(),
            "stopped leading at {ms} ms without a release"
        );
    }
    let at = released_at.expect("released again");
    assert!(at <= 2_300, "released again only at {at} ms");
    assert_eq!(released_to(&w).as_deref(), Some("pod-a"));
}

#[test]
fn a_release_whose_answer_never_came_is_decided_again_within_a_retry_period() {
    let mut w = leader_with_follower();
    w.at(300);
    // Not applied: the connection broke before the server read it.
    w.fail_next_of(
        1,
        Calls::LeaseWrites,
        KubeError::Transport("timeout".into()),
    );
    w.update_pod(ME, |p| p.ready = false);
    w.run();
    assert_eq!(w.lease.as_ref().unwrap().record.holder, ME);
    run_until(&mut w, 300, 2_800, 50);
    assert_eq!(released_to(&w).as_deref(), Some("pod-a"), "{:?}", w.writes);
    assert_eq!(w.label(ME, "is-leader").as_deref(), Some("true"));
}

#[test]
fn the_holder_resumes_within_a_retry_period_whatever_retry_after_says() {
    let mut w = World::leading();
    w.fail_next(u32::MAX, KubeError::Transport("unreachable".into()));
    run_until(&mut w, 0, 12_000, 100);
    assert!(!w.core.is_leader(), "past the renew deadline");
    run_until(&mut w, 12_000, 20_000, 100);
    // The server is back, busy: its first answer asks for 30 s.
    w.at(20_000);
    w.fail_next(
        1,
        KubeError::Busy {
            code: 503,
            message: "starting".into(),
            retry_after: Duration::from_secs(30),
        },
    );
    let mut resumed = None;
    for ms in (20_000..60_000).step_by(100) {
        w.at(ms);
        w.run();
        if w.core.is_leader() {
            resumed = Some(ms);
            break;
        }
    }
    let at = resumed.expect("resumes");
    // Another pod sees the lease run out 15 s after contact returns.
    assert!(at <= 22_600, "resumed only at {at} ms");
}

#[test]
fn a_403_while_the_api_server_starts_does_not_count_as_contact() {
    // A kube-apiserver that restarts answers 403 until its RBAC cache syncs. The holder
    // cannot renew meanwhile, so silence then must not count against it.
    let mut w = World::following("pod-a", 1);
    w.at(14_000);
    w.fail_next(
        u32::MAX,
        KubeError::Forbidden("RBAC: cache not synced".into()),
    );
    w.writes.clear();
    run_until(&mut w, 14_000, 24_000, 100);
    w.fail = None;
    // 403s end at 24 s; pod-a, which got them too, needs a retry period to resume.
    run_until(&mut w, 24_000, 26_000, 100);
    assert!(
        w.writes.iter().all(|x| !x.starts_with("lease")),
        "took over while the holder was refused too: {:?}",
        w.writes
    );
    w.set_lease("pod-a", 1);
    run_until(&mut w, 26_000, 40_000, 100);
    assert!(!w.core.is_leader());
}

#[test]
fn a_draining_leader_keeps_its_true_until_the_successor_fences_it() {
    // The successor took the Lease but its fence and claim are told to back off: the
    // draining leader must not empty the Service after a mere lease duration.
    let mut w = leader_with_follower();
    w.at(100);
    w.delete_me(60);
    w.run();
    assert_eq!(released_to(&w).as_deref(), Some("pod-a"));
    w.set_lease("pod-a", 1);
    w.writes.clear();
    run_until(&mut w, 100, 54_000, 200);
    assert_eq!(
        w.label(ME, "is-leader").as_deref(),
        Some("true"),
        "dropped true before the successor's fence or the drain deadline: {:?}",
        w.writes
    );
    run_until(&mut w, 54_000, 56_000, 200);
    assert_eq!(w.label(ME, "is-leader").as_deref(), Some("false"));
}

#[test]
fn a_successor_told_to_back_off_still_claims_within_a_retry_period() {
    let mut w = World::following("pod-a", 2);
    w.at(500);
    w.fail_next_of(1, Calls::PatchOf("pod-a"), busy(30));
    release_for(&mut w, ME);
    w.run();
    assert!(w.core.is_leader());
    run_until(&mut w, 500, 2_600, 50);
    assert_eq!(
        w.label(ME, "is-leader").as_deref(),
        Some("true"),
        "{:?}",
        w.writes
    );
}

#[test]
fn the_courtesy_wait_holds_only_for_a_designee_that_can_lead() {
    for (why, unfit) in [
        ("unready", (|p: &mut Pod| p.ready = false) as fn(&mut Pod)),
        ("being deleted", |p: &mut Pod| p.deleting = true),
        ("priority 0", |p: &mut Pod| {
            p.annotations.insert("my-app/priority".into(), "0".into());
        }),
        ("no participant", |p: &mut Pod| {
            p.labels.remove("e/participant");
        }),
    ] {
        let mut w = World::following("pod-a", 2);
        w.join("pod-c");
        w.update_pod("pod-c", unfit);
        w.at(500);
        release_for(&mut w, "pod-c");
        w.run();
        assert!(w.core.is_leader(), "waited for a designee that is {why}");
    }
    // Gone altogether.
    let mut w = World::following("pod-a", 2);
    w.at(500);
    release_for(&mut w, "pod-zz");
    w.run();
    assert!(
        w.core.is_leader(),
        "waited for a designee that does not exist"
    );
}

#[test]
fn a_new_leader_fences_before_any_failback() {
    let mut w = World::following("pod-a", 0);
    w.join("pod-c");
    prioritise(&mut w, "pod-c", "5");
    w.at(20_000);
    w.set_lease("pod-a", 0); // pod-a's last renewal; it dies after
    w.writes.clear();
    run_until(&mut w, 20_000, 36_000, 100);
    let fence = w
        .writes
        .iter()
        .position(|x| x.starts_with("pod-a") && x.contains("participant=-"));
    let release = w.writes.iter().position(|x| x == "lease holder=\"\"");
    assert!(
        fence.is_some(),
        "the dead holder was never fenced: {:?}",
        w.writes
    );
    if let Some(r) = release {
        assert!(fence < Some(r), "released before fencing: {:?}", w.writes);
    }
}

#[test]
fn a_pod_that_let_a_handover_pass_is_not_handed_over_to_again_until_it_rejoins() {
    // pod-a ranks higher, but its sidecar is hung: it never takes a Lease meant for it.
    let mut w = leader_with_follower();
    prioritise(&mut w, "pod-a", "5");
    run_until(&mut w, 0, 30_100, 100);
    assert_eq!(released_to(&w).as_deref(), Some("pod-a"));
    // Nobody takes it: after the courtesy wait we take it back and keep it.
    w.writes.clear();
    run_until(&mut w, 30_100, 120_000, 100);
    assert!(w.core.is_leader());
    let releases = w
        .writes
        .iter()
        .filter(|x| *x == "lease holder=\"\"")
        .count();
    assert_eq!(
        releases, 0,
        "handed over to the hung pod again: {:?}",
        w.writes
    );
    // Its sidecar comes back (it drops and re-adds its participation): failback again.
    w.update_pod("pod-a", |p| {
        p.labels.remove("e/participant");
    });
    w.update_pod("pod-a", |p| {
        p.labels.insert("e/participant".into(), "true".into());
    });
    run_until(&mut w, 120_000, 151_000, 100);
    assert_eq!(released_to(&w).as_deref(), Some("pod-a"));
}

#[test]
fn a_sidecar_booting_into_a_deleted_lease_waits_out_a_leader_it_cannot_see() {
    // pod-a leads (labeled true); the Lease was deleted by hand just before we booted.
    let mut w = World::new();
    w.label_me("false");
    w.add_pod(
        "pod-a",
        true,
        &[("e/is-leader", "true"), ("e/participant", "true")],
    );
    w.boot();
    w.run();
    assert!(w.core.is_leader());
    // pod-a has not seen the deletion: within its renew deadline it keeps its true
    // against a fence (it re-claims on the resourceVersion it sees).
    w.at(1_000);
    let again = claim_in_flight(&w, "pod-a");
    w.apply_foreign(&again);
    assert!(
        !wrote_true(&w),
        "claimed true within the old holder's renew deadline"
    );
    run_until(&mut w, 1_000, 11_000, 100);
    assert_eq!(w.label(ME, "is-leader").as_deref(), Some("true"));
    assert_eq!(w.label("pod-a", "is-leader").as_deref(), Some("false"));
}

#[test]
fn a_release_by_a_holder_we_never_saw_does_not_prove_the_old_one_stopped() {
    // Our view skips a record: pod-a's lease, then (unseen) pod-c's, then pod-c's
    // release. pod-a may still act until its renew deadline.
    let mut w = World::following("pod-a", 3);
    w.at(5_000);
    w.set_lease("pod-a", 3);
    w.at(6_000);
    w.set_lease_silently("pod-c", 4);
    release_for(&mut w, "");
    w.writes.clear();
    w.run();
    assert!(w.core.is_leader());
    assert!(!wrote_true(&w), "claimed true at once: {:?}", w.writes);
    run_until(&mut w, 6_000, 21_000, 100);
    assert!(wrote_true(&w));
}

#[test]
fn priority_zero_never_takes_the_lease_not_even_its_own_after_a_restart() {
    let mut w = World::new();
    w.label_me("true");
    w.update_pod(ME, |p| {
        p.annotations.insert("my-app/priority".into(), "0".into());
    });
    w.set_lease(ME, 3);
    w.boot();
    w.run();
    assert!(!w.core.is_leader());
    assert_eq!(w.lease.as_ref().unwrap().record.holder, "");
}

#[test]
fn the_own_name_resume_waits_for_the_label() {
    // Our pod was recreated under the same name (a StatefulSet) without its labels: it is
    // in nobody's pod cache yet, so it labels itself before it resumes (and is fenced).
    let mut w = World::new();
    w.set_lease(ME, 3);
    w.boot();
    let actions = w.run();
    let label = actions
        .iter()
        .position(|a| matches!(a, Action::Patch(p) if p.pod == ME));
    let claim = actions
        .iter()
        .position(|a| matches!(a, Action::UpdateLease { .. }));
    assert!(label.is_some() && label < claim, "{actions:?}");
}

#[test]
fn pods_labeled_before_the_mark_existed_get_it() {
    let mut w = World::new();
    w.label_me("false");
    w.update_pod(ME, |p| {
        p.labels.insert("e/participant".into(), "true".into());
        p.annotations.clear();
    });
    w.add_pod(
        "pod-a",
        true,
        &[("e/is-leader", "true"), ("e/participant", "true")],
    );
    w.set_lease("pod-a", 1);
    w.boot();
    w.run();
    assert_eq!(w.mark(ME), Some("my-app/"));
}

#[test]
fn a_refused_switchover_retried_is_reported_once() {
    let mut w = leader_with_follower();
    w.take_notices_for_test();
    w.at(1_000);
    w.fail_next_of(2, Calls::LeaseWrites, KubeError::Transport("reset".into()));
    w.annotate_lease("my-app/switchover-to", "pod-zz");
    run_until(&mut w, 1_000, 8_000, 100);
    assert!(w.lease.as_ref().unwrap().switchover_to().is_none());
    let refused = w
        .core
        .take_notices()
        .into_iter()
        .filter(|n| matches!(n, Notice::SwitchoverRefused(_)))
        .count();
    assert_eq!(refused, 1);
}

#[test]
fn a_cold_start_beside_a_new_leader_waits_out_nobody() {
    // Both sidecars start together: our first pod list shows pod-a labeled follower, our
    // first view of the Lease shows none. pod-a then creates the Lease, claims, and hands over to us
    // within our first renew deadline: the takeover claims at once (seen: 2 s late).
    let mut w = World::new();
    w.label_me("false");
    w.add_pod(
        "pod-a",
        true,
        &[("e/is-leader", "false"), ("e/participant", "true")],
    );
    // The pod list comes in before the Lease's.
    let own = w.pods[ME].clone();
    w.feed(Observation::OwnPod(own));
    let labeled = w.labeled();
    w.feed(Observation::PodsListed(labeled));
    w.feed(Observation::Lease(None));
    // pod-a's create wins before we act.
    w.at(100);
    w.set_lease("pod-a", 0);
    w.update_pod("pod-a", |p| {
        p.labels.insert("e/is-leader".into(), "true".into());
    });
    w.run();
    assert!(!w.core.is_leader());
    w.at(500);
    release_for(&mut w, ME);
    w.writes.clear();
    w.run();
    assert!(wrote_true(&w), "{:?}", w.writes);
}
