//! Planned handovers: when a leader gives the lease away, and to whom.
//!
//! Every planned handover is a release (`election::release`), so it follows the drain's
//! order and keeps its guarantees (`safety`): the leader stops leading before it sends
//! the release and keeps its label until the successor's fence takes it. A release may
//! name the pod it is meant for (`handover_to`); the other followers leave it to that pod
//! for a lease duration, then it is anyone's. Reasons, in order:
//!
//! 1. **Switchover** (`<election>/switchover-to=<pod>` on the Lease): to that pod if it is
//!    a ready participant that may lead; otherwise refused, with an Event. Either way the
//!    annotation is removed by the same write.
//! 2. **Leaving** (drain deadline, second signal, pod gone): to the best successor, or to
//!    anyone when there is none.
//! 3. **Cannot serve** (unready, draining, priority 0): to the best successor once one
//!    exists, after dropping the participation label.
//! 4. **Failback**: to a pod that ranks higher (priority annotation `<election>/priority`,
//!    then `--prefer-zone`) once it has been a ready participant for `--failback-after`,
//!    so a flapping pod never pulls leadership back and forth, and only to a pod whose
//!    sidecar is alive as far as the leader can tell: it carries the participation label
//!    and has not let a Lease released for it pass since it last joined (`declined`; a
//!    hung sidecar cannot take the Lease). A new leader fences before any of these.
//!
//! Followers leave a release that names a pod to that pod for a retry period, but only
//! while it is a ready participant that may lead and has not declined one before. A
//! releaser that sees its designee let the wait pass (a hung sidecar looks ready) takes
//! the Lease back if it may lead, and otherwise frees it for the next pod, or for anyone,
//! so a pod that starts later takes it at once.
//!
//! A release the server refuses for sure (409: the Lease changed since we read it; 429:
//! not even looked at) changed nothing: the leader leads on as before and decides again
//! from the re-read Lease, so a switchover annotated twice costs a re-read, not a lease
//! duration. A release whose fate is unknown (a timeout, a 5xx) may have been applied:
//! the pod stays handing over, and while the Lease it last saw still names it, it
//! releases again or resumes through a successful write (`safety`, rule 4).
//!
//! Priority 0 means "never lead": such a pod serves as a replica, is never handed over to
//! and never takes the lease, even when it is the only ready pod.

use super::*;
use crate::api::types::LeaseRecord;

/// Pods without the annotation, or with a value that is not a whole number.
const DEFAULT_PRIORITY: u32 = 1;

/// The zone label Kubernetes puts on nodes (and, with pod topology labels, on pods).
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// What the leader does about handing over, this turn.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Plan {
    /// Keep leading.
    Stay,
    /// A handover is due once the participation label is gone; keep leading meanwhile.
    DropParticipationFirst,
    /// Release the lease for `to` (empty: for anyone).
    Release { to: String, why: &'static str },
    /// Answer a switchover request by removing it, with this complaint (empty: none).
    Refuse(String),
}

impl Core {
    /// The pod's priority (`<election>/priority`): higher leads; 0 never leads.
    pub(super) fn priority(&self, p: &Pod) -> u32 {
        p.annotations
            .get(&self.priority_key)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(DEFAULT_PRIORITY)
    }

    /// How much the election prefers this pod as leader.
    fn rank(&self, p: &Pod) -> (u32, bool) {
        let zone = self.settings.prefer_zone.as_deref();
        (
            self.priority(p),
            zone.is_some() && p.label(ZONE_LABEL) == zone,
        )
    }

    /// Why `p` cannot take over now; None: it can.
    fn unfit(&self, p: &Pod) -> Option<&'static str> {
        if !p.ready {
            Some("it is not Ready")
        } else if p.deleting {
            Some("it is being deleted")
        } else if p.label(&self.settings.keys.participant) != Some("true") {
            Some("it is not a participant")
        } else if self.priority(p) == 0 {
            Some("its priority is 0 (never leads)")
        } else {
            None
        }
    }

    /// The best-ranked pod other than this one that can take over now.
    pub(super) fn successor(&self) -> Option<&Pod> {
        self.pods
            .labeled
            .values()
            .filter(|p| p.name != self.settings.me && self.unfit(p).is_none())
            .max_by_key(|p| self.rank(p))
    }

    /// When leadership fails back to `best` (the successor), once it has been ready long
    /// enough; None: it does not rank above this pod, or failback is off.
    fn failback_at(&self, best: &Pod) -> Option<Instant> {
        let wait = self.settings.failback_after?;
        let own = self.pods.own.as_ref()?;
        if self.rank(best) <= self.rank(own) || self.pods.declined.contains(&best.name) {
            return None;
        }
        Some(*self.pods.ready_since.get(&best.name)? + wait)
    }

    /// When a failback becomes due, for `next_wakeup`.
    pub(super) fn failback_due(&self) -> Option<Instant> {
        self.failback_at(self.successor()?)
    }

    /// How long a release that names a pod is left to it: one retry period. A live
    /// designee watches the Lease and claims within milliseconds; this is courtesy, not
    /// safety (whoever takes it fences like any other leader), and a designee that looks
    /// ready but whose sidecar is gone must not hold a planned handover for a lease.
    pub(super) fn courtesy(&self) -> Duration {
        self.settings.retry_period
    }

    /// Whether a released Lease is meant for another pod that may still take it: a ready
    /// participant that may lead, for the courtesy wait. A designee that cannot take it
    /// (unready, being deleted, priority 0, gone) is not waited for.
    pub(super) fn waiting_for_designee(&self, o: &Observed, now: Instant) -> bool {
        let to = &o.lease.record.handover_to;
        !to.is_empty()
            && *to != self.settings.me
            && now < o.observed_at + self.courtesy()
            && !self.pods.declined.contains(to)
            && self
                .pods
                .labeled
                .get(to)
                .is_some_and(|p| self.unfit(p).is_none())
    }

    /// A release meant for another pod that has not taken it within the courtesy wait.
    pub(super) fn passed_over(&self, o: &Observed, now: Instant) -> bool {
        let to = &o.lease.record.handover_to;
        o.holder().is_empty()
            && !to.is_empty()
            && *to != self.settings.me
            && now >= o.observed_at + self.courtesy()
    }

    /// The Lease went from a release meant for `X` to another holder: `X` let it pass.
    pub(super) fn note_declined(&mut self, prev: &LeaseRecord, next: &LeaseRecord) {
        let to = &prev.handover_to;
        if prev.holder.is_empty() && !to.is_empty() && !next.holder.is_empty() {
            if next.holder == *to {
                return;
            }
            if self.pods.declined.insert(to.clone()) {
                log::warn!(
                    "{to} did not take the Lease released for it (is its sidecar running?); no failback to it until it rejoins"
                );
            }
        } else if !next.holder.is_empty() {
            self.pods.declined.remove(&next.holder);
        }
    }

    /// The server answered our release with an error. See the module documentation.
    pub(super) fn release_refused(&mut self, was: Option<&Leading>, e: &KubeError) {
        let refused = matches!(e, KubeError::Conflict(_))
            || matches!(
                e,
                KubeError::Busy { code: 429, .. } | KubeError::Status { code: 429, .. }
            );
        if let Some(l) = was.filter(|_| refused && self.lease_holder() == self.settings.me) {
            log::info!("the release was refused ({}); leading on", e.kind());
            self.role = Role::Leader(l.clone());
        }
    }

    pub(super) fn plan_handover(&self, o: &Observed, now: Instant, must_leave: bool) -> Plan {
        let best = self.successor();
        if must_leave {
            // No time for anything but the release (a valid switchover target first).
            let asked = o.lease.switchover_to().filter(|to| {
                *to != self.settings.me
                    && self
                        .pods
                        .labeled
                        .get(*to)
                        .is_some_and(|p| self.unfit(p).is_none())
            });
            return Plan::Release {
                to: asked
                    .or(best.map(|p| p.name.as_str()))
                    .unwrap_or_default()
                    .to_string(),
                why: "time to leave",
            };
        }
        if let Some(to) = o.lease.switchover_to() {
            if to == self.settings.me {
                return Plan::Refuse(String::new());
            }
            let why = match self.pods.labeled.get(to) {
                None => Some("no such pod carries the election's label"),
                Some(p) => self.unfit(p),
            };
            return match why {
                None => Plan::Release {
                    to: to.to_string(),
                    why: "switchover requested on the Lease",
                },
                Some(why) => Plan::Refuse(format!("switchover to {to} refused: {why}")),
            };
        }
        let own = self.pods.own.as_ref();
        let cannot_serve = !self.eligible() || own.is_some_and(|p| self.priority(p) == 0);
        let Some(best) = best else {
            return Plan::Stay;
        };
        if cannot_serve {
            let participating =
                own.is_some_and(|p| p.label(&self.settings.keys.participant).is_some());
            if participating && !self.eligible() {
                return Plan::DropParticipationFirst;
            }
            return Plan::Release {
                to: best.name.clone(),
                why: "this pod cannot serve and a ready participant can",
            };
        }
        match self.failback_at(best) {
            Some(at) if now >= at => Plan::Release {
                to: best.name.clone(),
                why: "failback to a more preferred pod",
            },
            _ => Plan::Stay,
        }
    }
}
