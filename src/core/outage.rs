//! What happens when the API server goes away, and why an outage never moves leadership.
//!
//! - A leader that cannot renew stops leading at its renew deadline, but keeps its
//!   `true` (see `safety`, rule 5): the Service keeps its endpoint.
//! - A follower judges the holder dead only by silence it could have heard: while the
//!   Lease sensor or our own Lease calls fail, expiry does not advance and the core
//!   probes with reads; when contact returns, an unchanged record gets a fresh
//!   observation time, so the old leader (which resumes with one write of the record it
//!   still holds) always wins the race. A leader that really died during the outage is
//!   replaced one lease duration after the outage ends.
//! - Contact means an answer that showed the Lease. Any failed Lease call counts as lost
//!   contact, a 403 included: a kube-apiserver that restarts answers 403 until its RBAC
//!   cache syncs, and the holder, refused too, could not renew meanwhile. The Lease
//!   sensor's polls count the same way (`sensors`).
//! - The holder of the Lease, leading or past its renew deadline, never waits longer
//!   than a retry period after a failure, whatever Retry-After says: others start
//!   counting when the server answers them, and the holder must be back first.
//! - Before taking over an expired lease, a follower reads it once more
//!   (`Core::lease_action`): a stalled watch, or an outage the watch did not notice (etcd
//!   down behind a live kube-apiserver), looks exactly like a dead holder, and the read
//!   tells them apart without risking a takeover write.

use super::*;

impl Core {
    pub(super) fn contact_lost(&mut self, now: Instant) {
        if self.lease.contact_lost.is_none() {
            self.lease.contact_lost = Some(now);
        }
    }

    /// Back in contact: an unchanged record gets a fresh observation time, since the
    /// silence we could not hear says nothing about its holder (it may have been cut off
    /// exactly as we were).
    pub(super) fn contact_restored(&mut self, now: Instant) {
        let Some(since) = self.lease.contact_lost.take() else {
            return;
        };
        if let LeaseView::Present(o) = &mut self.lease.view {
            if o.observed_at < now {
                o.observed_at = now;
            }
        }
        log::info!(
            "in contact with the API server again after {}; the Lease holder's silence meanwhile does not count",
            crate::duration::format_duration(now - since)
        );
    }
}
