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
//! 2. **Wait out a holder that did not let go** (`note_rival`): after a normal expiry or
//!    a release the previous holder has stopped. When the Lease is deleted, emptied,
//!    renamed or shortened by someone else, its holder may not have seen it and can act
//!    until its renew deadline, which ends before its record's observed expiry; a new
//!    leader writes no label before that. A release proves only its own holder stopped
//!    (same transition count), and a process whose first view is a Lease deleted or
//!    emptied by hand (`first_lease_view`) waits a renew deadline if a pod is labeled
//!    leader.
//! 3. **Stop leading before releasing** (`Core::next_action`): the role changes before
//!    the release is sent, so a release applied with its answer lost leaves nobody
//!    claiming.
//! 4. **After a write whose outcome is unknown, assume it may have been applied**: a
//!    Lease that names us is only ever resumed through another successful write, and
//!    then fenced as after any takeover.
//! 5. **Only a leaving pod writes `false` over its own `true`** (`labels`): the next
//!    leader's fence does it otherwise, so a failed renewal or resume never empties the
//!    Service by itself.
//! 6. **A pod competes only once it carries the label** (`Core::may_compete`), so every
//!    pod that can ever claim is in the other sidecars' caches and gets fenced; and a
//!    process whose pod was recreated under its name (another uid) leaves untouched.
//!
//! What this does not cover is in docs/design.md ("Fault model").

use super::*;
use crate::kube::types::{Lease, LeaseRecord};

impl Core {
    /// A record naming `prev`'s holder was replaced. If the holder did not release it
    /// itself, the holder may not have seen the change yet and can act as leader until its
    /// renew deadline, which ends before its record's observed expiry (renew deadline <
    /// lease duration): a takeover that did not wait out the lease waits that long before
    /// writing labels. After a normal expiry this moment has already passed.
    pub(super) fn note_rival(&mut self, prev: &Observed, next: Option<&LeaseRecord>) {
        let holder = prev.holder();
        if holder.is_empty() || holder == self.s.me {
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
        if self.rivals_until.is_none_or(|t| t < until) {
            self.rivals_until = Some(until);
        }
    }

    /// The first Lease this process sees. Deleted, or emptied by hand (not a release):
    /// there is no record of who held it, and that holder may act until its renew deadline,
    /// which ends before our first view plus the renew deadline. A pod labeled leader in
    /// our first pod list (or in the cache now, if the list came first) may be that holder.
    pub(super) fn first_lease_view(&mut self, lease: Option<&Lease>, now: Instant) {
        let record = lease.map(|l| &l.record);
        if record.is_none_or(|r| r.holder.is_empty() && !election::is_release(r)) {
            if self.pods_listed {
                self.wait_out_unseen_holder(now);
            } else {
                self.unseen_holder_since = Some(now);
            }
        }
    }

    /// See `first_lease_view`; also called with the first pod list, if it came after.
    pub(super) fn wait_out_unseen_holder(&mut self, since: Instant) {
        let keys = &self.s.keys;
        let me = &self.s.me;
        if self
            .pods
            .values()
            .any(|p| p.name != *me && keys.says_leader(p))
        {
            let until = since + self.s.renew_deadline;
            if self.rivals_until.is_none_or(|t| t < until) {
                self.rivals_until = Some(until);
            }
        }
    }

    /// After the list that follows a takeover: every other pod in the election, and the
    /// previous holder's pod wherever it is, gets the fence.
    pub(super) fn plan_fencing(&mut self) {
        let me = self.s.me.clone();
        let mut listed = BTreeSet::new();
        listed.extend(self.pods.keys().filter(|n| **n != me).cloned());
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
                .get(name)
                .is_some_and(|p| self.s.keys.says_leader(p))
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
