//! The decision core: observed state and a clock in, one action at a time out.
//!
//! `Core` owns everything this sidecar believes: the Lease as last seen (and when it last
//! changed), the labeled pods, its own pod, its role and any drain in progress. It does no
//! I/O. The controller feeds it observations from the sensor threads, asks for the next
//! action, performs it, and reports the outcome. Time comes in as an argument, so the
//! tests drive it to the millisecond without a server or a sleep.

use crate::api::types::{is_older, Lease, LeaseRecord, Pod};
use crate::api::KubeError;
use crate::backoff::Jitter;
use drain::{Cause, Drain};
use election::Observed;
use labels::{Fence, Keys, Patch, Standing};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime};

/// The current time, both clocks: monotonic for decisions, wall for Lease timestamps.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub mono: Instant,
    pub wall: SystemTime,
}

impl Now {
    pub fn system() -> Now {
        Now {
            mono: Instant::now(),
            wall: SystemTime::now(),
        }
    }
}

/// Timings and names the core needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub me: String,
    pub keys: Keys,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
    pub resync_period: Duration,
    /// Pods in this zone (`topology.kubernetes.io/zone`) are preferred at equal priority.
    pub prefer_zone: Option<String>,
    /// How long a more preferred pod must have been a ready participant before the
    /// leader hands over to it; None: never fail back.
    pub failback_after: Option<Duration>,
}

/// Something the sensors saw.
#[derive(Debug, Clone)]
pub enum Observation {
    /// The Lease as listed or watched; None: it does not exist.
    Lease(Option<Lease>),
    /// Every labeled pod (after a list): replaces the cache.
    PodsListed(Vec<Pod>),
    PodChanged(Pod),
    /// Deleted, or no longer carries the leadership label.
    PodGone(Pod),
    /// This pod, read directly (at start).
    OwnPod(Pod),
    /// SIGTERM or SIGINT.
    Signal,
    /// Whether the Lease sensor is in contact with the API server: `Lost` on the first
    /// failure of its list, watch or poll; `Restored` when one succeeds again (a watch
    /// answered 200, a list or poll answered). Silence only counts while in contact.
    LeaseContact(Contact),
}

/// See [`Observation::LeaseContact`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contact {
    Lost,
    Restored,
}

/// What the core wants done next.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    CreateLease(LeaseRecord),
    UpdateLease { base: Lease, record: LeaseRecord },
    GetLease,
    Patch(Patch),
    GetPod(String),
    ListPods,
    Exit(Exit),
}

/// How the process ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Drained as planned.
    Clean,
    /// The drain ran out of time before the API server answered.
    Incomplete,
    /// This pod was deleted and recreated under the same name: the process belongs to
    /// the old pod and leaves without touching the new one or the Lease.
    Replaced,
}

/// The result of an action.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Create, update or get of the Lease. A get that found nothing is Ok(None).
    Lease(Result<Option<Lease>, KubeError>),
    /// Patch or get of a pod.
    Pod(Result<Pod, KubeError>),
    Pods(Result<Vec<Pod>, KubeError>),
}

/// Something worth telling the outside world (events, metrics), drained by the
/// controller after each step.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    BecameLeader {
        transition: i64,
        resumed: bool,
    },
    SteppedDown(String),
    DrainStarted(String),
    /// Released the lease for a ready successor (`to`; empty: whoever takes it), and why.
    HandedOver {
        to: String,
        why: &'static str,
    },
    /// A switchover request on the Lease could not be carried out; it was removed.
    SwitchoverRefused(String),
    /// A renewal as leader, successful or not.
    Renewed {
        ok: bool,
    },
}

/// What the controller publishes about the core's state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub is_leader: bool,
    /// The Lease holder as last seen; empty when free.
    pub holder: String,
    /// Ready participants, this pod included when it participates.
    pub participants: Vec<String>,
    pub draining: bool,
    /// The Lease and this pod have been read, and the API server answers (false again
    /// while the Lease sensor or our own Lease calls fail).
    pub connected: bool,
    /// When the last renewal (or acquisition) succeeded, by the local monotonic clock.
    pub renewed_at: Option<Instant>,
    /// This pod carries the leader value of the leadership label (as last seen).
    pub labeled_leader: bool,
}

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

#[derive(Debug, Clone, PartialEq)]
enum LeaseView {
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
    s: Settings,
    lease: LeaseView,
    /// Labeled pods (those carrying the leadership key), including our own when labeled.
    pods: BTreeMap<String, Pod>,
    own: Option<Pod>,
    own_gone: bool,
    role: Role,
    drain: Option<Drain>,
    pending: Option<Pending>,
    /// Back-off: no lease write before this.
    lease_retry_at: Option<Instant>,
    lease_failures: u32,
    /// Lease calls answered 403 in a row.
    forbidden_in_a_row: u32,
    /// Back-off: no pod write before this.
    labels_retry_at: Option<Instant>,
    label_failures: u32,
    /// A lease read is needed (after a conflict).
    lease_stale: bool,
    /// Pods to re-read (after a conflict).
    stale_pods: Vec<String>,
    relist_due: Option<Instant>,
    jitter: Jitter,
    forbidden_logged: bool,
    notices: Vec<Notice>,
    /// Until then another process may still believe it leads: a holder whose claim was
    /// ended by someone else's write (the Lease deleted, emptied or rewritten by hand)
    /// rather than by its own release or by expiry. A new leader writes no label before.
    rivals_until: Option<Instant>,
    /// Since when the Lease sensor or our own Lease calls have failed; None: in contact.
    contact_lost: Option<Instant>,
    /// When a Lease read last succeeded: a takeover after expiry needs one made after
    /// the expiry, so a stalled watch or an outage is never mistaken for a dead holder.
    confirmed_at: Option<Instant>,
    /// Our pod was deleted and recreated under the same name (another uid).
    replaced: bool,
    /// Pods of another election sharing the label key, already reported.
    foreign_seen: BTreeSet<String>,
    /// Since when each pod has been a ready participant, by our clock (failback waits).
    ready_since: BTreeMap<String, Instant>,
    /// Pods that let a Lease released for them pass (someone else took it after the
    /// courtesy wait): their sidecar may be hung, so no failback to them until they
    /// leave and rejoin the ready participants.
    declined: BTreeSet<String>,
    /// This process's first view of the Lease showed no holder and no release (deleted or
    /// emptied by hand) before any pod list: whoever held it may still act, unseen
    /// (`safety`, rule 2); the first pod list tells.
    unseen_holder_since: Option<Instant>,
    /// A pod list has been taken in.
    pods_listed: bool,
    /// The switchover refusal last reported, until the request is gone from the Lease.
    refused: Option<String>,
    /// Why a pending release is sent (its target is in the record written).
    release_why: Option<&'static str>,
    /// `<election>/priority`, the pod annotation that ranks pods.
    priority_key: String,
    /// Drained after a deletion, waiting for the kubelet's signal (said once).
    awaiting_signal: bool,
}

impl Core {
    pub fn new(s: Settings, jitter: Jitter) -> Core {
        Core {
            priority_key: format!("{}/priority", s.keys.election),
            s,
            lease: LeaseView::Unknown,
            pods: BTreeMap::new(),
            own: None,
            own_gone: false,
            role: Role::Follower,
            drain: None,
            pending: None,
            lease_retry_at: None,
            lease_failures: 0,
            forbidden_in_a_row: 0,
            labels_retry_at: None,
            label_failures: 0,
            lease_stale: false,
            stale_pods: Vec::new(),
            relist_due: None,
            jitter,
            forbidden_logged: false,
            notices: Vec::new(),
            rivals_until: None,
            contact_lost: None,
            confirmed_at: None,
            replaced: false,
            foreign_seen: BTreeSet::new(),
            ready_since: BTreeMap::new(),
            declined: BTreeSet::new(),
            unseen_holder_since: None,
            pods_listed: false,
            refused: None,
            release_why: None,
            awaiting_signal: false,
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
        match &self.lease {
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
                .values()
                .filter(|p| {
                    p.ready && !p.deleting && p.label(&self.s.keys.participant) == Some("true")
                })
                .map(|p| p.name.clone())
                .collect(),
            draining: self.drain.is_some(),
            connected: self.lease != LeaseView::Unknown
                && self.own.is_some()
                && self.contact_lost.is_none(),
            renewed_at: match &self.role {
                Role::Leader(l) => Some(l.renewed_at),
                _ => None,
            },
            labeled_leader: self
                .own
                .as_ref()
                .is_some_and(|p| self.s.keys.says_leader(p)),
        }
    }

    fn step_down(&mut self, why: String) {
        log::warn!("{why}; stepping down");
        self.notices.push(Notice::SteppedDown(why));
        self.role = Role::Follower;
    }

    /// Whether this pod should carry the participation label and compete.
    fn eligible(&self) -> bool {
        self.own.as_ref().is_some_and(|p| p.ready && !p.deleting)
            && self.drain.is_none()
            && !self.own_gone
    }

    /// Whether this pod may take the lease: eligible, and already labeled, so that it is
    /// in every other sidecar's pod cache (and fenced by the next leader) before it can
    /// ever claim `true`.
    fn may_compete(&self) -> bool {
        self.eligible() && self.own.as_ref().is_some_and(|p| self.priority(p) > 0) && self.labeled()
    }

    /// Our pod carries the leadership label (any value).
    fn labeled(&self) -> bool {
        self.own
            .as_ref()
            .is_some_and(|p| p.labels.contains_key(&self.s.keys.leader))
    }

    fn leaving(&self) -> bool {
        self.drain.is_some() || self.own_gone
    }

    // ---- observations ----------------------------------------------------------------

    pub fn observe(&mut self, obs: Observation, now: Now) {
        match obs {
            Observation::Lease(lease) => self.observe_lease(lease, now),
            Observation::PodsListed(pods) => {
                // A list is the whole truth: forget pods it no longer holds.
                self.pods
                    .retain(|name, _| pods.iter().any(|p| p.name == *name));
                self.ready_since
                    .retain(|name, _| pods.iter().any(|p| p.name == *name));
                for p in pods {
                    self.note_pod(p, now);
                }
                self.pods_listed = true;
                if let Some(since) = self.unseen_holder_since.take() {
                    self.wait_out_unseen_holder(since);
                }
            }
            Observation::PodChanged(p) => self.note_pod(p, now),
            Observation::PodGone(p) => {
                self.pods.remove(&p.name);
                self.ready_since.remove(&p.name);
                self.declined.remove(&p.name);
                if p.name == self.s.me {
                    if p.deleting && !self.replaced {
                        // Deleted at once (a force deletion, grace 0): the release still
                        // goes out, which usually fits before the kubelet's SIGKILL.
                        self.start_deletion_drain(&p, now);
                    }
                    // Deleted, or someone removed our label: forget our labels so they
                    // are written again (a 404 then tells us the pod is gone).
                    if let Some(own) = &mut self.own {
                        own.labels.remove(&self.s.keys.leader);
                        own.labels.remove(&self.s.keys.participant);
                    }
                }
            }
            Observation::OwnPod(p) => self.note_pod(p, now),
            Observation::LeaseContact(Contact::Lost) => self.contact_lost(now.mono),
            Observation::LeaseContact(Contact::Restored) => self.contact_restored(now.mono),
            Observation::Signal => {
                let grace = self
                    .own
                    .as_ref()
                    .map_or(30, |p| p.termination_grace_seconds);
                self.start_drain(Cause::Signal, Duration::from_secs(grace), now);
            }
        }
    }

    fn observe_lease(&mut self, lease: Option<Lease>, now: Now) {
        if self.lease == LeaseView::Unknown {
            self.first_lease_view(lease.as_ref(), now.mono);
        }
        match lease {
            None => {
                if self.is_leader() {
                    self.step_down("the Lease was deleted while we led".into());
                }
                let prev = std::mem::replace(&mut self.lease, LeaseView::Absent);
                if let LeaseView::Present(prev) = prev {
                    self.note_rival(&prev, None);
                }
            }
            Some(l) => {
                let prev = match &self.lease {
                    LeaseView::Present(o) => Some(o.clone()),
                    _ => None,
                };
                if prev
                    .as_ref()
                    .is_some_and(|o| is_older(&l.resource_version, &o.lease.resource_version))
                {
                    return;
                }
                if let Some(p) = &prev {
                    if p.lease.record != l.record {
                        self.note_rival(p, Some(&l.record));
                        self.note_declined(&p.lease.record, &l.record);
                    }
                }
                let o = Observed::update(prev.as_ref(), l, now.mono);
                if self.is_leader() && o.holder() != self.s.me {
                    self.step_down(format!(
                        "lost leadership: the Lease now names {:?}",
                        o.holder()
                    ));
                }
                self.lease = LeaseView::Present(o);
            }
        }
    }

    /// Takes in a pod as read or watched, unless we already know a newer version of it
    /// (a write response can overtake the watch event of an older write).
    fn note_pod(&mut self, p: Pod, now: Now) {
        let mine = p.name == self.s.me;
        let known = if mine {
            self.own.as_ref()
        } else {
            self.pods.get(&p.name)
        };
        if known.is_some_and(|o| is_older(&p.resource_version, &o.resource_version)) {
            return;
        }
        if mine {
            if let Some(own) = &self.own {
                if !own.uid.is_empty() && !p.uid.is_empty() && own.uid != p.uid {
                    if !self.replaced {
                        log::error!(
                            "pod {} was deleted and recreated (uid {} is now {}): this process belongs to the old pod; leaving without touching the new one",
                            p.name, own.uid, p.uid
                        );
                    }
                    self.replaced = true;
                    return;
                }
            }
            // A deletion starts the drain; a later one with a shorter grace (kubectl
            // delete --grace-period=5 after a 30 s delete) shortens it.
            let seen = self
                .own
                .as_ref()
                .filter(|o| o.deleting)
                .map(|o| o.deletion_grace_seconds);
            if p.deleting && seen != Some(p.deletion_grace_seconds) {
                self.start_deletion_drain(&p, now);
            }
            let was = self.own.as_ref().map(|o| self.priority(o));
            if self.priority(&p) == 0 && was != Some(0) {
                log::info!("this pod's priority is 0: it serves as a replica and never leads");
            }
            let was_ready = self.own.as_ref().map(|o| o.ready);
            if was_ready.is_some() && was_ready != Some(p.ready) {
                log::info!("pod is now {}", if p.ready { "Ready" } else { "not Ready" });
            }
            self.own = Some(p.clone());
        }
        let foreign = !mine && self.foreign(&p);
        if p.ready && !p.deleting && p.label(&self.s.keys.participant) == Some("true") {
            self.ready_since.entry(p.name.clone()).or_insert(now.mono);
        } else {
            self.ready_since.remove(&p.name);
            self.declined.remove(&p.name);
        }
        if p.labels.contains_key(&self.s.keys.leader) && !foreign {
            self.pods.insert(p.name.clone(), p);
        } else {
            self.pods.remove(&p.name);
        }
    }

    /// Whether the pod belongs to another election that uses the same leadership label
    /// key (said once per pod): it is neither fenced nor marked nor handed over to.
    fn foreign(&mut self, p: &Pod) -> bool {
        let keys = &self.s.keys;
        let Some(other) = labels::election_of(keys, p).filter(|e| *e != keys.election) else {
            return false;
        };
        if self.foreign_seen.insert(p.name.clone()) {
            log::error!(
                "pod {} carries the label {} but belongs to election {other:?}: two elections in this namespace share --leadership-label {}; leaving that pod alone. Give each election its own key (the default, <election>/is-leader, is unique).",
                p.name, keys.leader, keys.leader
            );
        }
        true
    }

    fn start_deletion_drain(&mut self, p: &Pod, now: Now) {
        let grace = p
            .deletion_grace_seconds
            .unwrap_or(p.termination_grace_seconds);
        self.start_drain(Cause::Deletion, Duration::from_secs(grace), now);
    }

    fn start_drain(&mut self, cause: Cause, grace: Duration, now: Now) {
        let d = Drain::start(cause, now.mono, grace);
        match &mut self.drain {
            Some(existing) => {
                existing.merge(d);
                if existing.signals >= 2 && cause == Cause::Signal {
                    log::warn!("second signal: releasing and leaving now");
                }
            }
            None => {
                let why = format!(
                    "draining ({}): {} before leaving",
                    match cause {
                        Cause::Signal => "signal received",
                        Cause::Deletion => "pod is being deleted",
                    },
                    crate::duration::format_duration(d.deadline - now.mono)
                );
                log::info!("{why}");
                self.notices.push(Notice::DrainStarted(why));
                self.drain = Some(d);
            }
        }
    }

    // ---- decisions -------------------------------------------------------------------

    /// The next action, or None until an observation arrives or `next_wakeup` passes.
    /// Each action must be followed by `complete` with its outcome.
    pub fn next_action(&mut self, now: Now) -> Option<Action> {
        debug_assert!(
            self.pending.is_none(),
            "next_action while an action is pending"
        );
        if self.replaced {
            return Some(Action::Exit(Exit::Replaced));
        }
        self.check_timers(now.mono);
        if let Some(d) = &self.drain {
            if now.mono >= d.give_up {
                if self.settled() {
                    log::info!("grace period over without a signal; leaving");
                    return Some(Action::Exit(Exit::Clean));
                }
                log::warn!("drain deadline passed before the API server answered; exiting");
                return Some(Action::Exit(Exit::Incomplete));
            }
        }
        if self.lease == LeaseView::Unknown || self.own.is_none() {
            return None;
        }
        let action = self
            .lease_action(now)
            .or_else(|| self.label_action(now.mono))
            .or_else(|| self.exit_action());
        if let Some(a) = &action {
            self.pending = match a {
                Action::UpdateLease { record, .. } | Action::CreateLease(record) => {
                    let kind = if record.holder.is_empty() {
                        let forced = self.drain.as_ref().is_some_and(|d| d.must_leave(now.mono))
                            || self.own_gone;
                        // Stop acting as leader *before* the release is sent: if it is
                        // applied and the answer lost, a successor may already lead.
                        let was = match std::mem::replace(
                            &mut self.role,
                            Role::HandingOver {
                                since: now.mono,
                                wait: !forced,
                            },
                        ) {
                            Role::Leader(l) => Some(Box::new(l)),
                            _ => None,
                        };
                        LeaseWrite::Release { forced, was }
                    } else if self.is_leader() {
                        LeaseWrite::Renew
                    } else {
                        LeaseWrite::Acquire
                    };
                    Some(Pending::LeaseWrite(kind, now.mono))
                }
                Action::GetLease => Some(Pending::GetLease),
                Action::Patch(p) => Some(Pending::Patch(p.clone())),
                Action::GetPod(n) => Some(Pending::GetPod(n.clone())),
                Action::ListPods => Some(Pending::ListPods),
                Action::Exit(_) => None,
            };
        }
        action
    }

    fn check_timers(&mut self, now: Instant) {
        if let Role::Leader(l) = &self.role {
            if now >= l.renewed_at + self.s.renew_deadline {
                self.step_down(format!(
                    "lost leadership: no renewal succeeded within the renew deadline ({})",
                    crate::duration::format_duration(self.s.renew_deadline)
                ));
            }
        }
        if let Role::HandingOver { since, wait } = self.role {
            let own_false = self
                .own
                .as_ref()
                .is_some_and(|p| !self.s.keys.says_leader(p));
            // A leaving pod keeps its `true` until the successor's fence or its own drain
            // deadline: a successor told to back off may take longer than a lease.
            let waited_enough = match &self.drain {
                Some(d) => d.must_leave(now),
                None => now >= since + self.s.lease_duration,
            };
            if own_false || !wait || waited_enough {
                if own_false {
                    log::info!("handover complete: the successor has taken over");
                }
                self.role = Role::Follower;
            }
        }
    }

    fn lease_action(&mut self, now: Now) -> Option<Action> {
        if self.lease_stale {
            return Some(Action::GetLease);
        }
        if self.lease_retry_at.is_some_and(|t| now.mono < t) {
            return None;
        }
        let must_leave =
            self.own_gone || self.drain.as_ref().is_some_and(|d| d.must_leave(now.mono));
        match (&self.role, &self.lease) {
            (Role::Leader(l), LeaseView::Present(o)) => {
                // A new leader finishes its fence before any planned handover: the dead
                // holder's participation must go, and a release now would leave it.
                if o.lease.switchover_to().is_none() {
                    self.refused = None;
                }
                let plan = if l.fencing == Fencing::Done || must_leave {
                    self.plan_handover(o, now.mono, must_leave)
                } else {
                    Plan::Stay
                };
                let action = match &plan {
                    // DropParticipationFirst: the successor's fencing patch on our pod
                    // must not be spoiled by a conflict with that write; renew meanwhile,
                    // as a label write that keeps failing must never cost the lease.
                    Plan::Stay | Plan::DropParticipationFirst => {
                        (now.mono >= l.renew_due).then(|| self.claim(o, now))
                    }
                    // Both answer a switchover request: the write removes it.
                    Plan::Release { to, .. } => Some(Action::UpdateLease {
                        base: o.lease.without_switchover(),
                        record: election::release(&o.lease.record, now.wall, to),
                    }),
                    Plan::Refuse(_) => Some(Action::UpdateLease {
                        base: o.lease.without_switchover(),
                        record: self.claim_record(o, now),
                    }),
                };
                match plan {
                    Plan::Release { to, why } => {
                        if to.is_empty() {
                            log::info!("releasing the Lease: {why}");
                        } else {
                            log::info!("handing over to {to}: {why}");
                        }
                        self.release_why = Some(why);
                    }
                    // Once per request, however often the refusal's write is retried.
                    Plan::Refuse(why) if !why.is_empty() && self.refused.as_ref() != Some(&why) => {
                        log::warn!("{why}");
                        self.notices.push(Notice::SwitchoverRefused(why.clone()));
                        self.refused = Some(why);
                    }
                    _ => {}
                }
                action
            }
            (Role::Follower, LeaseView::Absent) if self.contact_lost.is_some() => {
                Some(Action::GetLease)
            }
            (Role::Follower, LeaseView::Absent) if self.may_compete() => Some(Action::CreateLease(
                election::claim(None, &self.s.me, now.wall, self.s.lease_duration),
            )),
            // A release whose answer never came: while the Lease we saw names us, decide
            // again (see `handover`).
            (Role::HandingOver { .. }, LeaseView::Present(o)) if o.holder() == self.s.me => {
                self.own_lease(o, now, must_leave)
            }
            // Our release's designee let its courtesy wait pass: free it for the next.
            (Role::HandingOver { .. }, LeaseView::Present(o)) if self.passed_over(o, now.mono) => {
                let to = o.lease.record.handover_to.clone();
                if self.declined.insert(to.clone()) {
                    log::warn!("{to} did not take the Lease released for it (is its sidecar running?); releasing it for another pod");
                }
                let next = self
                    .successor()
                    .filter(|p| !self.declined.contains(&p.name))
                    .map(|p| p.name.clone())
                    .unwrap_or_default();
                let record = election::release(&o.lease.record, now.wall, &next);
                let base = o.lease.clone();
                self.release_why = Some("the pod it was released for did not take it");
                Some(Action::UpdateLease { base, record })
            }
            (Role::Follower, LeaseView::Present(o)) => {
                if o.holder() == self.s.me {
                    return self.own_lease(o, now, must_leave);
                }
                if self.contact_lost.is_some() {
                    // Probe until the API server answers; judge nothing meanwhile.
                    return Some(Action::GetLease);
                }
                if !self.may_compete() {
                    return None;
                }
                if o.holder().is_empty() {
                    // Released for another pod: leave it to that pod for a while.
                    if self.waiting_for_designee(o, now.mono) {
                        return None;
                    }
                    return Some(self.claim(o, now));
                }
                if now.mono < o.expires_at() {
                    return None;
                }
                // Expired by our clock. Read it once more before taking it: a stalled
                // watch or an API outage looks exactly like a dead holder.
                if self.confirmed_at.is_some_and(|t| t >= o.expires_at()) {
                    Some(self.claim(o, now))
                } else {
                    Some(Action::GetLease)
                }
            }
            _ => None,
        }
    }

    /// Our own name on a Lease we do not lead by: a restart of this sidecar in the same
    /// pod (or a StatefulSet pod recreated under the same name), a Lease that outlived our
    /// leadership (past the renew deadline in an outage), or a release whose answer never
    /// came. Resume at once: the lease is ours and the label is on this same pod. But if
    /// this pod is leaving, never leads (priority 0), or cannot serve while a ready
    /// participant can, release it rather than make everyone wait out a lease nobody
    /// renews (not leading, so nothing to stop first).
    fn own_lease(&self, o: &Observed, now: Now, must_leave: bool) -> Option<Action> {
        let best = self.successor().map(|p| p.name.as_str());
        let never = self.own.as_ref().is_some_and(|p| self.priority(p) == 0);
        if must_leave || never || (!self.eligible() && best.is_some()) {
            log::info!("releasing the Lease that still names this pod: it cannot lead");
            return Some(Action::UpdateLease {
                base: o.lease.clone(),
                record: election::release(&o.lease.record, now.wall, best.unwrap_or_default()),
            });
        }
        // Rule 6 (`safety`): labeled first, so that the next leader knows to fence us.
        if !self.labeled() {
            return None;
        }
        // Only a successful write makes us leader again (and then we fence as after any
        // takeover): after a restart, after a renewal or takeover whose answer was lost,
        // after an outage.
        Some(self.claim(o, now))
    }

    /// Acquire, resume or renew: write our name on the lease we last saw.
    fn claim(&self, o: &Observed, now: Now) -> Action {
        Action::UpdateLease {
            base: o.lease.clone(),
            record: self.claim_record(o, now),
        }
    }

    fn claim_record(&self, o: &Observed, now: Now) -> LeaseRecord {
        election::claim(
            Some(&o.lease.record),
            &self.s.me,
            now.wall,
            self.s.lease_duration,
        )
    }

    fn label_action(&mut self, now: Instant) -> Option<Action> {
        if let Some(name) = self.stale_pods.first() {
            return Some(Action::GetPod(name.clone()));
        }
        if self.labels_retry_at.is_some_and(|t| now < t) || self.own_gone {
            return None;
        }
        let standing = match &self.role {
            Role::Leader(l) => {
                if self.relist_due.is_none_or(|t| now >= t) {
                    return Some(Action::ListPods);
                }
                if self.rivals_until.is_some_and(|t| now < t) {
                    return None;
                }
                let fence = match &l.fencing {
                    Fencing::Listing { .. } => return None,
                    Fencing::Pending {
                        stamp,
                        previous,
                        pods,
                    } => self.next_fence(stamp, previous, pods),
                    Fencing::Done => None,
                };
                Standing::Leader { fence }
            }
            Role::HandingOver { .. } => Standing::NotLeader { keep_true: true },
            Role::Follower => Standing::NotLeader {
                keep_true: !self.leaving(),
            },
        };
        let own = self.own.as_ref()?;
        labels::next_patch(&self.s.keys, own, &self.pods, &standing, self.eligible())
            .map(Action::Patch)
    }

    /// A leaving pod's work is done: not leading, not participating, not labeled leader.
    fn settled(&self) -> bool {
        match &self.role {
            Role::Follower => self.own.as_ref().is_some_and(|p| {
                p.label(&self.s.keys.participant).is_none() && !self.s.keys.says_leader(p)
            }),
            _ => false,
        }
    }

    fn exit_action(&mut self) -> Option<Action> {
        if !self.leaving() {
            return None;
        }
        if self.own_gone {
            return Some(Action::Exit(Exit::Clean));
        }
        if !self.settled() {
            return None;
        }
        // A drain that began with the pod's deletion waits, settled, for the kubelet's
        // SIGTERM: a container that exits first is restarted by the kubelet, and a native
        // sidecar would stop before the app it serves (found under a real kubelet).
        if self.drain.as_ref().is_some_and(|d| d.signals == 0) {
            if !self.awaiting_signal {
                log::info!("drained; waiting for the kubelet's SIGTERM");
                self.awaiting_signal = true;
            }
            return None;
        }
        Some(Action::Exit(Exit::Clean))
    }

    // ---- outcomes --------------------------------------------------------------------

    pub fn complete(&mut self, outcome: Outcome, now: Now) {
        let Some(pending) = self.pending.take() else {
            debug_assert!(false, "outcome without a pending action");
            return;
        };
        match (pending, outcome) {
            (Pending::LeaseWrite(kind, sent), Outcome::Lease(r)) => {
                self.lease_written(kind, sent, r, now)
            }
            (Pending::GetLease, Outcome::Lease(r)) => match r {
                Ok(l) => {
                    self.lease_stale = false;
                    self.lease_answered(now.mono);
                    self.observe_lease(l, now);
                    self.confirmed_at = Some(now.mono);
                }
                Err(e) => self.lease_failed(&e, now.mono, "read the Lease"),
            },
            (Pending::Patch(p), Outcome::Pod(r)) => self.patched(p, r, now),
            (Pending::GetPod(name), Outcome::Pod(r)) => {
                self.stale_pods.retain(|n| n != &name);
                match r {
                    Ok(pod) => self.observe(Observation::PodChanged(pod), now),
                    Err(KubeError::NotFound(_)) => self.pod_not_found(&name),
                    Err(e) => self.labels_failed(&e, now.mono, "read pod", &name),
                }
            }
            (Pending::ListPods, Outcome::Pods(r)) => match r {
                Ok(pods) => {
                    self.relist_due = Some(now.mono + self.s.resync_period);
                    self.observe(Observation::PodsListed(pods), now);
                    self.plan_fencing();
                }
                Err(e) => {
                    // Fencing waits for this list: retry it after the back-off.
                    let fencing = matches!(&self.role, Role::Leader(l) if matches!(l.fencing, Fencing::Listing { .. }));
                    self.relist_due = (!fencing).then(|| now.mono + self.s.resync_period);
                    self.labels_failed(&e, now.mono, "list pods", "");
                }
            },
            (p, o) => debug_assert!(false, "outcome {o:?} does not match {p:?}"),
        }
    }

    fn lease_written(
        &mut self,
        kind: LeaseWrite,
        sent: Instant,
        result: Result<Option<Lease>, KubeError>,
        now: Now,
    ) {
        if let (LeaseWrite::Release { was, .. }, Err(e)) = (&kind, &result) {
            self.release_refused(was.as_deref(), e);
        }
        let lease = match result {
            Ok(Some(l)) => l,
            Ok(None) => return,
            Err(KubeError::Conflict(_)) => {
                // Someone else wrote first: re-read and decide again, never retry blindly.
                log::debug!("Lease write conflicted; reading it again");
                self.lease_stale = true;
                return;
            }
            Err(KubeError::NotFound(_)) => {
                self.observe_lease(None, now);
                return;
            }
            Err(e) => {
                let what = match kind {
                    LeaseWrite::Acquire => "acquire the Lease",
                    LeaseWrite::Renew => "renew the Lease",
                    LeaseWrite::Release { .. } => "release the Lease",
                };
                self.lease_failed(&e, now.mono, what);
                return;
            }
        };
        self.lease_answered(now.mono);
        let previous = match &self.lease {
            LeaseView::Present(o) => o.holder().to_string(),
            _ => String::new(),
        };
        let transitions = lease.record.transitions;
        let handed_to = lease.record.handover_to.clone();
        if let LeaseWrite::Release { .. } = kind {
            // Our own release: not a loss of leadership to report.
            self.role = Role::Follower;
        }
        self.observe_lease(Some(lease), now);
        match kind {
            LeaseWrite::Acquire => {
                // The Lease's new resourceVersion makes the stamp unique to this takeover
                // (transitions restart at 0 when the Lease is recreated).
                let stamp = self.s.keys.stamp(&self.s.me, self.lease_version());
                if previous == self.s.me {
                    log::info!("resumed leadership: the Lease still named this pod");
                } else if previous.is_empty() {
                    log::info!("became leader (lease transition {transitions})");
                } else {
                    log::info!(
                        "became leader after {previous:?}'s lease expired (transition {transitions})"
                    );
                }
                self.notices.push(Notice::BecameLeader {
                    transition: transitions,
                    resumed: previous == self.s.me,
                });
                self.role = Role::Leader(Leading {
                    since: now.mono,
                    renewed_at: sent,
                    renew_due: sent + self.s.retry_period,
                    fencing: Fencing::Listing { stamp, previous },
                });
                self.relist_due = Some(now.mono);
            }
            LeaseWrite::Renew => {
                self.notices.push(Notice::Renewed { ok: true });
                if let Role::Leader(l) = &mut self.role {
                    l.renewed_at = sent;
                    l.renew_due = sent + self.s.retry_period;
                }
            }
            LeaseWrite::Release { forced, .. } => {
                log::info!("released the Lease");
                let why = self.release_why.take().unwrap_or_default();
                if !forced {
                    self.notices.push(Notice::HandedOver { to: handed_to, why });
                }
                self.role = Role::HandingOver {
                    since: now.mono,
                    wait: !forced,
                };
            }
        }
    }

    fn lease_version(&self) -> &str {
        match &self.lease {
            LeaseView::Present(o) => &o.lease.resource_version,
            _ => "",
        }
    }

    fn lease_failed(&mut self, e: &KubeError, now: Instant, what: &str) {
        self.lease_failures += 1;
        self.forbidden_in_a_row = match e {
            KubeError::Forbidden(_) => self.forbidden_in_a_row + 1,
            _ => 0,
        };
        self.log_failure(e, self.lease_failures, what, "");
        // Any failure: an answer that did not show the Lease (see `outage`).
        self.contact_lost(now);
        let holder = self.lease_holder() == self.s.me;
        // The leader keeps trying every retry period until its renew deadline; others
        // retry with jitter, as client-go's candidates do.
        if self.is_leader() {
            self.notices.push(Notice::Renewed { ok: false });
        }
        // A server that says when to come back (429/5xx with Retry-After) is believed,
        // except by the holder past a retry period: leading or not (past its renew
        // deadline in an outage), it must be back before anyone sees the lease run out.
        let delay = match (&mut self.role, e) {
            (Role::Leader(l), _) => {
                let delay = e.pause(self.s.retry_period / 2).min(self.s.retry_period);
                l.renew_due = now + delay;
                delay
            }
            // A missing permission stays missing, but a kube-apiserver that is starting
            // answers 403 for a while until its RBAC cache is synced.
            (_, KubeError::Forbidden(_)) if self.forbidden_in_a_row > FORBIDDEN_BEFORE_SLOWING => {
                self.s.retry_period * 5
            }
            _ => e.pause(self.jitter.stretch(self.s.retry_period, 1.2)),
        };
        let delay = if holder {
            delay.min(self.s.retry_period)
        } else {
            delay
        };
        self.lease_retry_at = Some(now + delay);
    }

    fn patched(&mut self, patch: Patch, result: Result<Pod, KubeError>, now: Now) {
        match result {
            Ok(pod) => {
                Self::recovered(&mut self.label_failures, "pod calls");
                if patch.precondition.is_none() {
                    self.fenced(&patch.pod);
                }
                log::info!(
                    "{}: {} {}",
                    patch.reason,
                    patch.pod,
                    patch
                        .labels
                        .iter()
                        .map(|(k, v)| format!("{k}={}", v.as_deref().unwrap_or("(removed)")))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
                self.observe(Observation::PodChanged(pod), now);
            }
            Err(KubeError::Conflict(_)) => {
                log::debug!("pod {} changed under us; reading it again", patch.pod);
                self.stale_pods.push(patch.pod);
            }
            Err(KubeError::NotFound(_)) => {
                self.fenced(&patch.pod);
                self.pod_not_found(&patch.pod);
            }
            Err(e) => self.labels_failed(&e, now.mono, "patch pod", &patch.pod),
        }
    }

    /// A Lease call succeeded: the failure streak ends and we are in contact.
    fn lease_answered(&mut self, now: Instant) {
        Self::recovered(&mut self.lease_failures, "Lease calls");
        self.forbidden_in_a_row = 0;
        self.contact_restored(now);
    }

    /// Ends a failure streak, with one line if there was one.
    fn recovered(failures: &mut u32, what: &str) {
        if *failures > 0 {
            log::info!("{what} succeed again after {} failure(s)", *failures);
        }
        *failures = 0;
    }

    fn pod_not_found(&mut self, name: &str) {
        self.pods.remove(name);
        if name == self.s.me {
            if !self.own_gone {
                log::warn!("this pod no longer exists; leaving");
            }
            self.own_gone = true;
        }
    }

    fn labels_failed(&mut self, e: &KubeError, now: Instant, what: &str, pod: &str) {
        self.label_failures += 1;
        self.log_failure(e, self.label_failures, what, pod);
        let exp = self.label_failures.min(6);
        let base = (self.s.retry_period / 4).max(Duration::from_millis(50)) * (1 << (exp - 1));
        let backoff = self.jitter.stretch(base.min(self.s.retry_period * 4), 0.5);
        // Until a new leader has fenced and claimed, the Service may have no endpoint: a
        // Retry-After is honoured up to one retry period then, as for its renewals.
        let claiming = match &self.role {
            Role::Leader(l) => {
                l.fencing != Fencing::Done
                    || !self
                        .own
                        .as_ref()
                        .is_some_and(|p| self.s.keys.says_leader(p))
            }
            _ => false,
        };
        let asked = e.retry_after().unwrap_or_default();
        let asked = if claiming {
            asked.min(self.s.retry_period)
        } else {
            asked
        };
        let delay = backoff.max(asked);
        self.labels_retry_at = Some(now + delay);
    }

    fn log_failure(&mut self, e: &KubeError, count: u32, what: &str, pod: &str) {
        let target = if pod.is_empty() {
            String::new()
        } else {
            format!(" {pod}")
        };
        match e {
            // Not while out of contact: a kube-apiserver that is starting answers 403
            // until its RBAC cache has synced.
            KubeError::Forbidden(m) if !self.forbidden_logged && self.contact_lost.is_none() => {
                self.forbidden_logged = true;
                log::error!("cannot {what}{target}: {m}. Check the Role (deploy/rbac.yaml).");
            }
            _ if count == 1 => log::warn!("cannot {what}{target}: {e}; retrying"),
            _ => log::debug!("cannot {what}{target} ({count}x): {e}"),
        }
    }

    /// The earliest moment a decision may change without a new observation.
    pub fn next_wakeup(&self, now: Instant) -> Option<Instant> {
        let mut times: Vec<Instant> = Vec::new();
        times.extend(self.lease_retry_at.filter(|t| *t > now));
        times.extend(self.labels_retry_at.filter(|t| *t > now));
        if let Some(d) = &self.drain {
            times.push(d.deadline);
            times.push(d.give_up);
        }
        match &self.role {
            Role::Leader(l) => {
                times.push(l.renew_due);
                times.push(l.renewed_at + self.s.renew_deadline);
                times.extend(self.relist_due);
                times.extend(self.rivals_until);
                times.extend(self.failback_due());
            }
            Role::HandingOver { since, .. } => times.push(*since + self.s.lease_duration),
            Role::Follower => {
                if let LeaseView::Present(o) = &self.lease {
                    if !o.holder().is_empty() && self.contact_lost.is_none() {
                        times.push(o.expires_at());
                    }
                    if o.holder().is_empty() && !o.lease.record.handover_to.is_empty() {
                        times.push(o.observed_at + self.s.lease_duration);
                    }
                }
            }
        }
        times.into_iter().filter(|t| *t > now).min()
    }
}

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
