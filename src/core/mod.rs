//! The decision core: observed state and a clock in, one action at a time out.
//!
//! `Core` owns everything this sidecar believes: the Lease as last seen (and when it last
//! changed), the labeled pods, its own pod, its role and any drain in progress. It does no
//! I/O. The controller feeds it observations from the sensor threads, asks for the next
//! action, performs it, and reports the outcome. Time comes in as an argument, so the
//! tests drive it to the millisecond without a server or a sleep.
//!
//! Where things are: `contract` (the types the controller sees), `observe`, `decide` and
//! `complete` (the three calls), `election`, `labels` and `drain` (pure rules),
//! `safety` (why never two leaders), `outage` (why an outage never moves leadership),
//! `handover` (planned handovers); `world` and `model` are the test doubles.

use crate::api::types::{is_older, Lease, LeaseRecord, Pod};
use crate::api::KubeError;
use crate::backoff::Jitter;
use drain::{Cause, Drain};
use election::Observed;
use labels::{Fence, Patch, Standing};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

pub use contract::*;

/// Leadership as this process holds it.
#[derive(Debug, Clone, PartialEq)]
pub enum Role {
    Follower,
    Leader(Leading),
    /// Released the lease for a successor; our `true` stays until it fences us.
    HandingOver {
        since: Instant,
        wait: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Leading {
    pub since: Instant,
    /// When the last successful write of the lease was *sent*: the lease is surely ours
    /// until this plus the renew deadline.
    pub renewed_at: Instant,
    pub renew_due: Instant,
    pub fencing: Fencing,
}

/// Fencing after a takeover (see `labels`): every other pod in the election gets an
/// unconditional `false` with a stamp unique to this takeover before we claim `true`.
#[derive(Debug, Clone, PartialEq)]
pub enum Fencing {
    /// Waiting for the pod list that follows the takeover: the set to fence comes from it.
    Listing {
        stamp: String,
        previous: String,
    },
    /// These pods still get the fence.
    Pending {
        stamp: String,
        previous: String,
        pods: BTreeSet<String>,
    },
    Done,
}

#[derive(Debug, Clone, PartialEq, Default)]
enum LeaseView {
    #[default]
    Unknown,
    Absent,
    Present(Observed),
}

#[derive(Debug, Clone, PartialEq)]
enum LeaseWrite {
    Acquire,
    Renew,
    /// `was`: the leadership given up to send it, restored if the server refuses it.
    Release {
        forced: bool,
        was: Option<Box<Leading>>,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Pending {
    LeaseWrite(LeaseWrite, Instant),
    GetLease,
    Patch(Patch),
    GetPod(String),
    ListPods,
}

/// 403s on Lease calls in a row probed at the normal pace before slowing down: a
/// kube-apiserver that restarts answers 403 for seconds until its RBAC cache syncs.
const FORBIDDEN_BEFORE_SLOWING: u32 = 4;

/// The decision core. See the module documentation.
#[derive(Debug, Clone)]
pub struct Core {
    settings: Settings,
    lease: LeaseKnowledge,
    pods: PodCache,
    role: Role,
    drain: Option<Drain>,
    pending: Option<Pending>,
    /// Why a pending release is sent (its target is in the record written).
    release_why: Option<&'static str>,
    retry: Retry,
    said: Said,
    notices: Vec<Notice>,
    /// `<election>/priority`, the pod annotation that ranks pods.
    priority_key: String,
}

/// What this process knows of the Lease, and how far it can trust that.
#[derive(Debug, Clone, Default)]
struct LeaseKnowledge {
    view: LeaseView,
    /// A lease read is needed (after a conflict).
    stale: bool,
    /// Since when the Lease sensor or our own Lease calls have failed; None: in contact.
    contact_lost: Option<Instant>,
    /// When a Lease read last succeeded: a takeover after expiry needs one made after
    /// the expiry, so a stalled watch or an outage is never mistaken for a dead holder.
    confirmed_at: Option<Instant>,
    /// Until then another process may still believe it leads: a holder whose claim was
    /// ended by someone else's write (the Lease deleted, emptied or rewritten by hand)
    /// rather than by its own release or by expiry. A new leader writes no label before.
    rivals_until: Option<Instant>,
    /// This process's first view of the Lease showed no holder and no release (deleted or
    /// emptied by hand) before any pod list: whoever held it may still act, unseen
    /// (`safety`, rule 2); the first pod list tells.
    unseen_holder_since: Option<Instant>,
}

/// The pods of the election as this process has seen them.
#[derive(Debug, Clone, Default)]
struct PodCache {
    /// Labeled pods (those carrying the leadership key), including our own when labeled.
    labeled: BTreeMap<String, Pod>,
    own: Option<Pod>,
    own_gone: bool,
    /// Our pod was deleted and recreated under the same name (another uid).
    replaced: bool,
    /// A pod list has been taken in.
    listed: bool,
    /// Pods to re-read (after a conflict).
    stale: Vec<String>,
    relist_due: Option<Instant>,
    /// Since when each pod has been a ready participant, by our clock (failback waits).
    ready_since: BTreeMap<String, Instant>,
    /// Pods that let a Lease released for them pass (someone else took it after the
    /// courtesy wait): their sidecar may be hung, so no failback to them until they
    /// leave and rejoin the ready participants.
    declined: BTreeSet<String>,
}

/// Back-off after failures, per kind of call.
#[derive(Debug, Clone)]
struct Retry {
    /// No Lease call before this.
    lease_at: Option<Instant>,
    lease_failures: u32,
    /// Lease calls answered 403 in a row.
    forbidden_in_a_row: u32,
    /// No pod call before this.
    labels_at: Option<Instant>,
    label_failures: u32,
    jitter: Jitter,
}

/// What has been said once and is not repeated.
#[derive(Debug, Clone, Default)]
struct Said {
    /// The "check the Role" error.
    forbidden: bool,
    /// Pods of another election sharing the label key.
    foreign: BTreeSet<String>,
    /// Drained after a deletion, waiting for the kubelet's signal.
    awaiting_signal: bool,
    /// The switchover refusal last reported, until the request is gone from the Lease.
    refused: Option<String>,
}

impl Core {
    pub fn new(settings: Settings, jitter: Jitter) -> Core {
        Core {
            priority_key: format!("{}/priority", settings.keys.election),
            settings,
            lease: LeaseKnowledge::default(),
            pods: PodCache::default(),
            role: Role::Follower,
            drain: None,
            pending: None,
            release_why: None,
            retry: Retry {
                lease_at: None,
                lease_failures: 0,
                forbidden_in_a_row: 0,
                labels_at: None,
                label_failures: 0,
                jitter,
            },
            said: Said::default(),
            notices: Vec::new(),
        }
    }

    pub fn role(&self) -> &Role {
        &self.role
    }

    pub fn is_leader(&self) -> bool {
        matches!(self.role, Role::Leader(_))
    }

    /// When the next call must have ended, if sooner than the client's own timeout:
    /// during a drain, half the time left before giving up, so that a release sent at
    /// the deadline always leaves time for the relabel after it, and a slow API server
    /// can never hold the process past the kubelet's SIGKILL.
    pub fn call_deadline(&self, now: Instant) -> Option<Instant> {
        self.drain
            .as_ref()
            .map(|d| now + d.give_up.saturating_duration_since(now) / 2)
    }

    pub fn draining(&self) -> bool {
        self.drain.is_some()
    }

    /// The holder named in the Lease as last seen ("" when free or unknown).
    pub fn lease_holder(&self) -> &str {
        match &self.lease.view {
            LeaseView::Present(o) => o.holder(),
            _ => "",
        }
    }

    /// Notices since the last call.
    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }

    pub fn summary(&self) -> Summary {
        Summary {
            is_leader: self.is_leader(),
            holder: self.lease_holder().to_string(),
            participants: self
                .pods
                .labeled
                .values()
                .filter(|p| {
                    p.ready
                        && !p.deleting
                        && p.label(&self.settings.keys.participant) == Some("true")
                })
                .map(|p| p.name.clone())
                .collect(),
            draining: self.drain.is_some(),
            connected: self.lease.view != LeaseView::Unknown
                && self.pods.own.is_some()
                && self.lease.contact_lost.is_none(),
            renewed_at: match &self.role {
                Role::Leader(l) => Some(l.renewed_at),
                _ => None,
            },
            labeled_leader: self
                .pods
                .own
                .as_ref()
                .is_some_and(|p| self.settings.keys.says_leader(p)),
        }
    }

    fn step_down(&mut self, why: String) {
        log::warn!("{why}; stepping down");
        self.notices.push(Notice::SteppedDown(why));
        self.role = Role::Follower;
    }

    /// Whether this pod should carry the participation label and compete.
    fn eligible(&self) -> bool {
        self.pods
            .own
            .as_ref()
            .is_some_and(|p| p.ready && !p.deleting)
            && self.drain.is_none()
            && !self.pods.own_gone
    }

    /// Whether this pod may take the lease: eligible, and already labeled, so that it is
    /// in every other sidecar's pod cache (and fenced by the next leader) before it can
    /// ever claim `true`.
    fn may_compete(&self) -> bool {
        self.eligible()
            && self.pods.own.as_ref().is_some_and(|p| self.priority(p) > 0)
            && self.labeled()
    }

    /// Our pod carries the leadership label (any value).
    fn labeled(&self) -> bool {
        self.pods
            .own
            .as_ref()
            .is_some_and(|p| p.labels.contains_key(&self.settings.keys.leader))
    }

    fn leaving(&self) -> bool {
        self.drain.is_some() || self.pods.own_gone
    }
}

mod complete;
mod contract;
mod decide;
mod observe;

pub mod drain;
pub mod election;
mod handover;
pub mod labels;
mod outage;
mod safety;

use handover::Plan;

#[cfg(test)]
mod world;

#[cfg(test)]
mod model;

#[cfg(test)]
mod tests;
