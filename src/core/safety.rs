//! Why there can never be two pods labeled leader, and the rules that make it so.
//!
//! A pod writes `true` on itself only while it leads, and it leads only after a
//! successful write of the Lease that names it, until that write's send time plus the
//! renew deadline. The rules below close the gaps that faults open:
//!
//! 1. **Fence every other pod after every takeover**, resumes included (`plan_fencing`,
//!    `next_fence`): an unconditional `false` plus an annotation stamp made unique by the
//!    new Lease resourceVersion. Every claim of `true` carries the resourceVersion it was
//!    decided on, so any claim an earlier leader still has in flight (held by the network,
//!    or sent by a leader whose takeover answer was lost) fails with 409 once the fence
//!    lands. The pod labeled `true` is fenced last, just before our claim.
//!    Proved by `tests::takeover_applied_with_its_answer_lost_still_fences_the_old_leader`,
//!    `tests::fence_changes_the_pod_even_when_the_transition_count_repeats`,
//!    `tests::claim_held_in_the_network_is_stale_after_the_next_takeover`,
//!    `faults::takeover_applied_with_its_answer_lost_still_fences_the_old_leader`,
//!    `faults::fence_changes_the_pod_even_when_the_lease_was_recreated`.
//! 2. **Wait out a holder that did not let go** (`note_rival`): after a normal expiry or
//!    a release the previous holder has stopped. When the Lease is deleted, emptied,
//!    renamed or shortened by someone else, its holder may not have seen it and can act
//!    until its renew deadline, which ends before its record's observed expiry; a new
//!    leader writes no label before that. A release proves only its own holder stopped
//!    (same transition count), and a process whose first view is a Lease deleted or
//!    emptied by hand (`first_lease_view`) waits a renew deadline if a pod is labeled
//!    leader.
//!    Proved by `tests::lease_deleted_by_hand_new_leader_waits_out_the_old_holder`,
//!    `tests::lease_emptied_by_hand_waits_out_the_old_holder`,
//!    `tests::lease_duration_lowered_by_hand_waits_out_the_old_holder`,
//!    `tests::a_sidecar_booting_into_a_deleted_lease_waits_out_a_leader_it_cannot_see`,
//!    `tests::a_release_by_a_holder_we_never_saw_does_not_prove_the_old_one_stopped`,
//!    `tests::a_cold_start_beside_a_new_leader_waits_out_nobody`,
//!    `faults::lease_deleted_or_rewritten_by_hand_under_a_live_leader`.
//! 3. **Stop leading before releasing** (`Core::next_action`): the role changes before
//!    the release is sent, so a release applied with its answer lost leaves nobody
//!    claiming; one the server refused for sure gives the leadership back (`handover`).
//!    Proved by `tests::release_applied_with_its_answer_lost_claims_nothing_back`,
//!    `tests::a_release_refused_with_409_is_decided_again_at_once`,
//!    `tests::a_release_whose_answer_never_came_is_decided_again_within_a_retry_period`,
//!    `faults::release_applied_with_its_answer_lost_claims_nothing_back`,
//!    `faults::a_refused_release_is_tried_again_within_a_retry_period`.
//! 4. **After a write whose outcome is unknown, assume it may have been applied**: a
//!    Lease that names us is only ever resumed through another successful write, and
//!    then fenced as after any takeover (`Core::own_lease`).
//!    Proved by `tests::failed_resume_after_a_restart_keeps_the_label`,
//!    `tests::restarted_sidecar_resumes_its_own_lease`,
//!    `faults::failed_resume_after_a_restart_keeps_the_label`.
//! 5. **Only a leaving pod writes `false` over its own `true`** (`labels`): the next
//!    leader's fence does it otherwise, so a failed renewal or resume never empties the
//!    Service by itself, and a draining leader keeps it until the fence or its deadline.
//!    Proved by `tests::leader_renews_every_retry_period_and_steps_down_at_the_renew_deadline`,
//!    `tests::a_draining_leader_keeps_its_true_until_the_successor_fences_it`,
//!    `faults::a_drain_keeps_its_leader_until_a_successor_told_to_back_off_claims`,
//!    `outage::apiserver_outages_do_not_move_leadership`.
//! 6. **A pod competes only once it carries the label** (`Core::may_compete`), so every
//!    pod that can ever claim is in the other sidecars' caches and gets fenced, a resume
//!    of our own Lease included; and a process whose pod was recreated under its name
//!    (another uid) leaves untouched.
//!    Proved by `tests::first_pod_creates_the_lease_and_labels_itself_leader`,
//!    `tests::the_own_name_resume_waits_for_the_label`,
//!    `tests::pod_recreated_under_the_same_name_is_not_adopted`,
//!    `faults::pod_recreated_under_the_same_name_is_left_to_its_new_sidecar`.
//!
//! Every test in `src/core/tests.rs` runs `World::check_one_leader` after each write; the
//! end-to-end observer checks every pod event (`Observer::assert_never_two_leaders`); the
//! seeded chaos test (`chaos::chaos`) samples all of the faults together. `tests::` names
//! a unit test in `src/core/tests.rs`, `faults::` and the others a test in `tests/`; the
//! test below checks that each named test exists.
//!
//! What this does not cover is in docs/design.md ("Fault model").

use super::*;
use crate::api::types::{Lease, LeaseRecord};

impl Core {
    /// A record naming `prev`'s holder was replaced. If the holder did not release it
    /// itself, the holder may not have seen the change yet and can act as leader until its
    /// renew deadline, which ends before its record's observed expiry (renew deadline <
    /// lease duration): a takeover that did not wait out the lease waits that long before
    /// writing labels. After a normal expiry this moment has already passed.
    pub(super) fn note_rival(&mut self, prev: &Observed, next: Option<&LeaseRecord>) {
        let holder = prev.holder();
        if holder.is_empty() || holder == self.settings.me {
            return;
        }
        if next.is_some_and(|r| {
            r.holder == holder && r.duration_seconds >= prev.lease.record.duration_seconds
        }) {
            return; // a renewal
        }
        // The holder stopped leading before it released. A release with another
        // transition count was made by a holder we never saw (our view skipped records):
        // it proves nothing about this one.
        if next.is_some_and(|r| {
            election::is_release(r) && r.transitions == prev.lease.record.transitions
        }) {
            return;
        }
        let until = prev.expires_at();
        if self.lease.rivals_until.is_none_or(|t| t < until) {
            self.lease.rivals_until = Some(until);
        }
    }

    /// The first Lease this process sees. Deleted, or emptied by hand (not a release):
    /// there is no record of who held it, and that holder may act until its renew deadline,
    /// which ends before our first view plus the renew deadline. A pod labeled leader in
    /// our first pod list (or in the cache now, if the list came first) may be that holder.
    pub(super) fn first_lease_view(&mut self, lease: Option<&Lease>, now: Instant) {
        let record = lease.map(|l| &l.record);
        if record.is_none_or(|r| r.holder.is_empty() && !election::is_release(r)) {
            if self.pods.listed {
                self.wait_out_unseen_holder(now);
            } else {
                self.lease.unseen_holder_since = Some(now);
            }
        }
    }

    /// See `first_lease_view`; also called with the first pod list, if it came after.
    pub(super) fn wait_out_unseen_holder(&mut self, since: Instant) {
        let keys = &self.settings.keys;
        let me = &self.settings.me;
        if self
            .pods
            .labeled
            .values()
            .any(|p| p.name != *me && keys.says_leader(p))
        {
            let until = since + self.settings.renew_deadline;
            if self.lease.rivals_until.is_none_or(|t| t < until) {
                self.lease.rivals_until = Some(until);
            }
        }
    }

    /// After the list that follows a takeover: every other pod in the election, and the
    /// previous holder's pod wherever it is, gets the fence.
    pub(super) fn plan_fencing(&mut self) {
        let me = self.settings.me.clone();
        let mut listed = BTreeSet::new();
        listed.extend(self.pods.labeled.keys().filter(|n| **n != me).cloned());
        if let Role::Leader(l) = &mut self.role {
            if let Fencing::Listing { stamp, previous } = &l.fencing {
                let mut pods = listed;
                if !previous.is_empty() && *previous != me {
                    pods.insert(previous.clone());
                }
                l.fencing = if pods.is_empty() {
                    Fencing::Done
                } else {
                    Fencing::Pending {
                        stamp: stamp.clone(),
                        previous: previous.clone(),
                        pods,
                    }
                };
            }
        }
    }

    /// A fence was written (or its pod is gone).
    pub(super) fn fenced(&mut self, pod: &str) {
        if let Role::Leader(l) = &mut self.role {
            if let Fencing::Pending { pods, .. } = &mut l.fencing {
                pods.remove(pod);
                if pods.is_empty() {
                    l.fencing = Fencing::Done;
                }
            }
        }
    }

    /// The pod to fence next: pods not labeled `true` first and the previous holder
    /// last, so the pod that serves now keeps serving until just before our claim.
    pub(super) fn next_fence(
        &self,
        stamp: &str,
        previous: &str,
        pods: &BTreeSet<String>,
    ) -> Option<Fence> {
        let serving = |name: &str| {
            self.pods
                .labeled
                .get(name)
                .is_some_and(|p| self.settings.keys.says_leader(p))
        };
        let pod = pods
            .iter()
            .min_by_key(|name| (name.as_str() == previous || serving(name), serving(name)))?;
        Some(Fence {
            pod: pod.clone(),
            stamp: stamp.to_string(),
            drop_participation: pod == previous,
        })
    }
}

#[cfg(test)]
mod named_tests {
    /// Every test this file names as proof exists.
    #[test]
    fn every_test_named_as_proof_exists() {
        let doc: String = include_str!("safety.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("//!"))
            .collect();
        let files: [(&str, &str); 5] = [
            ("tests", include_str!("tests.rs")),
            ("faults", include_str!("../../tests/faults.rs")),
            ("outage", include_str!("../../tests/outage.rs")),
            ("chaos", include_str!("../../tests/chaos.rs")),
            ("e2e", include_str!("../../tests/e2e.rs")),
        ];
        let mut named = 0;
        for span in doc.split('`').skip(1).step_by(2) {
            let Some((file, test)) = span.split_once("::").filter(|(_, t)| !t.is_empty()) else {
                continue;
            };
            let Some((_, text)) = files.iter().find(|(f, _)| *f == file) else {
                continue;
            };
            named += 1;
            assert!(
                text.contains(&format!("fn {test}(")),
                "safety.rs names {span}, which does not exist"
            );
        }
        assert!(named >= 20, "only {named} tests named");
    }
}
