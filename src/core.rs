//! The decision core: observed state and a clock in, one action at a time out.
//!
//! `Core` owns everything this sidecar believes: the Lease as last seen (and when it last
//! changed), the labeled pods, its own pod, its role and any drain in progress. It does no
//! I/O. The controller feeds it observations from the sensor threads, asks for the next
//! action, performs it, and reports the outcome. Time comes in as an argument, so the
//! tests drive it to the millisecond without a server or a sleep.

use crate::backoff::Jitter;
use crate::drain::{Cause, Drain};
use crate::election::{self, Observed};
use crate::kube::types::{is_older, Lease, LeaseRecord, Pod};
use crate::kube::KubeError;
use crate::labels::{self, Keys, Patch, Standing};
use std::collections::BTreeMap;
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
    /// Released the lease for a ready successor.
    HandedOver,
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
    /// The Lease and this pod have been read and the watches deliver.
    pub connected: bool,
    /// When the last renewal (or acquisition) succeeded, by the local monotonic clock.
    pub renewed_at: Option<Instant>,
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
    pub fence: Option<(String, String)>,
}

#[derive(Debug, Clone, PartialEq)]
enum LeaseView {
    Unknown,
    Absent,
    Present(Observed),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeaseWrite {
    Acquire,
    Renew,
    Release { forced: bool },
}

#[derive(Debug, Clone, PartialEq)]
enum Pending {
    LeaseWrite(LeaseWrite, Instant),
    GetLease,
    Patch(Patch),
    GetPod(String),
    ListPods,
}

/// The decision core. See the module documentation.
#[derive(Debug)]
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
}

impl Core {
    pub fn new(s: Settings, jitter: Jitter) -> Core {
        Core {
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
            labels_retry_at: None,
            label_failures: 0,
            lease_stale: false,
            stale_pods: Vec::new(),
            relist_due: None,
            jitter,
            forbidden_logged: false,
            notices: Vec::new(),
        }
    }

    pub fn role(&self) -> &Role {
        &self.role
    }

    pub fn is_leader(&self) -> bool {
        matches!(self.role, Role::Leader(_))
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
            connected: self.lease != LeaseView::Unknown && self.own.is_some(),
            renewed_at: match &self.role {
                Role::Leader(l) => Some(l.renewed_at),
                _ => None,
            },
        }
    }

    fn step_down(&mut self, why: String) {
        log::warn!("{why}; stepping down");
        self.notices.push(Notice::SteppedDown(why));
        self.role = Role::Follower;
    }

    /// Ready participants other than this pod.
    fn successor(&self) -> Option<&Pod> {
        self.pods.values().find(|p| {
            p.name != self.s.me
                && p.ready
                && !p.deleting
                && p.label(&self.s.keys.participant) == Some("true")
        })
    }

    /// Whether this pod should carry the participation label and compete.
    fn eligible(&self) -> bool {
        self.own.as_ref().is_some_and(|p| p.ready && !p.deleting)
            && self.drain.is_none()
            && !self.own_gone
    }

    // ---- observations ----------------------------------------------------------------

    pub fn observe(&mut self, obs: Observation, now: Now) {
        match obs {
            Observation::Lease(lease) => self.observe_lease(lease, now),
            Observation::PodsListed(pods) => {
                // A list is the whole truth: forget pods it no longer holds.
                let listed: std::collections::BTreeSet<&str> =
                    pods.iter().map(|p| p.name.as_str()).collect();
                self.pods.retain(|name, _| listed.contains(name.as_str()));
                for p in pods {
                    self.note_pod(p, now);
                }
            }
            Observation::PodChanged(p) => self.note_pod(p, now),
            Observation::PodGone(p) => {
                self.pods.remove(&p.name);
                if p.name == self.s.me {
                    // Deleted, or someone removed our label: forget our labels so they
                    // are written again (a 404 then tells us the pod is gone).
                    if let Some(own) = &mut self.own {
                        own.labels.remove(&self.s.keys.leader);
                        own.labels.remove(&self.s.keys.participant);
                    }
                }
            }
            Observation::OwnPod(p) => self.note_pod(p, now),
            Observation::LeaseContact(_) => {}
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
        match lease {
            None => {
                if self.is_leader() {
                    self.step_down("the Lease was deleted while we led".into());
                }
                self.lease = LeaseView::Absent;
            }
            Some(l) => {
                let prev = match &self.lease {
                    LeaseView::Present(o) => Some(o),
                    _ => None,
                };
                if prev.is_some_and(|o| is_older(&l.resource_version, &o.lease.resource_version)) {
                    return;
                }
                let o = Observed::update(prev, l, now.mono);
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
            if p.deleting
                && !self
                    .drain
                    .as_ref()
                    .is_some_and(|d| d.cause == Cause::Deletion)
            {
                let grace = p
                    .deletion_grace_seconds
                    .unwrap_or(p.termination_grace_seconds);
                self.start_drain(Cause::Deletion, Duration::from_secs(grace), now);
            }
            let was_ready = self.own.as_ref().map(|o| o.ready);
            if was_ready.is_some() && was_ready != Some(p.ready) {
                log::info!("pod is now {}", if p.ready { "Ready" } else { "not Ready" });
            }
            self.own = Some(p.clone());
        }
        if p.labels.contains_key(&self.s.keys.leader) {
            self.pods.insert(p.name.clone(), p);
        } else {
            self.pods.remove(&p.name);
        }
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
                    crate::config::format_duration(d.deadline - now.mono)
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
        self.check_timers(now.mono);
        if let Some(d) = &self.drain {
            if now.mono >= d.give_up {
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
                        LeaseWrite::Release { forced }
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
                    crate::config::format_duration(self.s.renew_deadline)
                ));
            }
        }
        if let Role::HandingOver { since, wait } = self.role {
            let own_false = self
                .own
                .as_ref()
                .is_some_and(|p| p.label(&self.s.keys.leader) != Some("true"));
            let waited_enough = now >= since + self.s.lease_duration
                || self.drain.as_ref().is_some_and(|d| d.must_leave(now));
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
                let handing_over = !self.eligible() && self.successor().is_some();
                let participating = self
                    .own
                    .as_ref()
                    .is_some_and(|p| p.label(&self.s.keys.participant).is_some());
                if handing_over && participating && !must_leave {
                    // Drop the participation label first, so the successor's fencing
                    // patch on our pod is not spoiled by a conflict with it.
                    return None;
                }
                if must_leave || handing_over {
                    if must_leave {
                        log::info!("releasing the Lease: time to leave");
                    } else {
                        log::info!(
                            "handing over: releasing the Lease ({} is a ready participant)",
                            self.successor().map_or("", |p| &p.name)
                        );
                    }
                    return Some(Action::UpdateLease {
                        base: o.lease.clone(),
                        record: election::release(&o.lease.record, now.wall),
                    });
                }
                (now.mono >= l.renew_due).then(|| self.claim(o, now))
            }
            (Role::Follower, LeaseView::Absent) if self.eligible() => Some(Action::CreateLease(
                election::claim(None, &self.s.me, now.wall, self.s.lease_duration),
            )),
            (Role::Follower, LeaseView::Present(o)) => {
                // Our own name on the lease: a restart of this sidecar in the same pod (or
                // a StatefulSet pod recreated under the same name). Resume at once: the
                // lease is ours and the label is on this same pod. But if this pod cannot
                // serve and a ready participant can, release instead of making everyone
                // wait out a lease nobody renews.
                if o.holder() == self.s.me && !self.eligible() && self.successor().is_some() {
                    log::info!(
                        "releasing the Lease this pod held before a restart: it is not ready"
                    );
                    return Some(Action::UpdateLease {
                        base: o.lease.clone(),
                        record: election::release(&o.lease.record, now.wall),
                    });
                }
                let resume = o.holder() == self.s.me && !must_leave;
                (resume || (self.eligible() && o.is_free(now.mono))).then(|| self.claim(o, now))
            }
            _ => None,
        }
    }

    /// Acquire, resume or renew: write our name on the lease we last saw.
    fn claim(&self, o: &Observed, now: Now) -> Action {
        Action::UpdateLease {
            base: o.lease.clone(),
            record: election::claim(
                Some(&o.lease.record),
                &self.s.me,
                now.wall,
                self.s.lease_duration,
            ),
        }
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
                Standing::Leader {
                    fence: l.fence.clone(),
                }
            }
            Role::HandingOver { .. } => Standing::HandingOver,
            Role::Follower => Standing::Follower,
        };
        let own = self.own.as_ref()?;
        labels::next_patch(&self.s.keys, own, &self.pods, &standing, self.eligible())
            .map(Action::Patch)
    }

    fn exit_action(&self) -> Option<Action> {
        let leaving = self.drain.is_some() || self.own_gone;
        let settled = match &self.role {
            Role::Follower => self.own.as_ref().is_some_and(|p| {
                p.label(&self.s.keys.participant).is_none()
                    && p.label(&self.s.keys.leader) != Some("true")
            }),
            _ => false,
        };
        (leaving && (settled || self.own_gone)).then_some(Action::Exit(Exit::Clean))
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
                    Self::recovered(&mut self.lease_failures, "Lease calls");
                    self.observe_lease(l, now);
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
                }
                Err(e) => {
                    self.relist_due = Some(now.mono + self.s.resync_period);
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
        Self::recovered(&mut self.lease_failures, "Lease calls");
        let previous = match &self.lease {
            LeaseView::Present(o) => o.holder().to_string(),
            _ => String::new(),
        };
        let transitions = lease.record.transitions;
        if let LeaseWrite::Release { .. } = kind {
            // Our own release: not a loss of leadership to report.
            self.role = Role::Follower;
        }
        self.observe_lease(Some(lease), now);
        match kind {
            LeaseWrite::Acquire => {
                let fence = (!previous.is_empty() && previous != self.s.me)
                    .then(|| (previous.clone(), format!("{}:{transitions}", self.s.me)));
                if previous == self.s.me {
                    log::info!("resumed leadership held by this pod before a restart");
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
                    fence,
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
            LeaseWrite::Release { forced } => {
                log::info!("released the Lease");
                if !forced {
                    self.notices.push(Notice::HandedOver);
                }
                self.role = Role::HandingOver {
                    since: now.mono,
                    wait: !forced,
                };
            }
        }
    }

    fn lease_failed(&mut self, e: &KubeError, now: Instant, what: &str) {
        self.lease_failures += 1;
        self.log_failure(e, self.lease_failures, what, "");
        // The leader keeps trying every retry period until its renew deadline; others
        // retry with jitter, as client-go's candidates do.
        if self.is_leader() {
            self.notices.push(Notice::Renewed { ok: false });
        }
        let delay = match (&mut self.role, e) {
            (Role::Leader(l), _) => {
                l.renew_due = now + self.s.retry_period / 2;
                self.s.retry_period / 2
            }
            (_, KubeError::Forbidden(_)) => self.s.retry_period * 5,
            _ => self.jitter.stretch(self.s.retry_period, 1.2),
        };
        self.lease_retry_at = Some(now + delay);
    }

    fn patched(&mut self, patch: Patch, result: Result<Pod, KubeError>, now: Now) {
        match result {
            Ok(pod) => {
                Self::recovered(&mut self.label_failures, "pod calls");
                if let Role::Leader(l) = &mut self.role {
                    if l.fence.as_ref().is_some_and(|(p, _)| p == &patch.pod) {
                        l.fence = None;
                    }
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
                if let Role::Leader(l) = &mut self.role {
                    if l.fence.as_ref().is_some_and(|(p, _)| p == &patch.pod) {
                        l.fence = None;
                    }
                }
                self.pod_not_found(&patch.pod);
            }
            Err(e) => self.labels_failed(&e, now.mono, "patch pod", &patch.pod),
        }
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
        let delay = self.jitter.stretch(base.min(self.s.retry_period * 4), 0.5);
        self.labels_retry_at = Some(now + delay);
    }

    fn log_failure(&mut self, e: &KubeError, count: u32, what: &str, pod: &str) {
        let target = if pod.is_empty() {
            String::new()
        } else {
            format!(" {pod}")
        };
        match e {
            KubeError::Forbidden(m) if !self.forbidden_logged => {
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
            }
            Role::HandingOver { since, .. } => times.push(*since + self.s.lease_duration),
            Role::Follower => {
                if let LeaseView::Present(o) = &self.lease {
                    if !o.holder().is_empty() {
                        times.push(o.expires_at());
                    }
                }
            }
        }
        times.into_iter().filter(|t| *t > now).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ME: &str = "pod-b";

    fn settings() -> Settings {
        Settings {
            me: ME.into(),
            keys: Keys {
                leader: "e/is-leader".into(),
                participant: "e/participant".into(),
            },
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            resync_period: Duration::from_secs(5),
        }
    }

    /// A test clock and a core, plus a fake API server's view of the world so actions can
    /// be carried out the way the real one would.
    struct World {
        core: Core,
        t0: Instant,
        now: Now,
        lease: Option<Lease>,
        pods: BTreeMap<String, Pod>,
        rv: u64,
        /// Every write the core made, in order.
        writes: Vec<String>,
        /// Make the next N calls fail with this error.
        fail: Option<(u32, KubeError)>,
    }

    impl World {
        fn new() -> World {
            let t0 = Instant::now();
            let mut w = World {
                core: Core::new(settings(), Jitter::new(7)),
                t0,
                now: Now {
                    mono: t0,
                    wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_323_045),
                },
                lease: None,
                pods: BTreeMap::new(),
                rv: 100,
                writes: vec![],
                fail: None,
            };
            w.add_pod(ME, true, &[]);
            w
        }

        fn next_rv(&mut self) -> String {
            self.rv += 1;
            self.rv.to_string()
        }

        fn add_pod(&mut self, name: &str, ready: bool, labels: &[(&str, &str)]) {
            let rv = self.next_rv();
            let p = Pod {
                name: name.into(),
                resource_version: rv,
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ready,
                termination_grace_seconds: 30,
                ..Default::default()
            };
            self.pods.insert(name.into(), p);
        }

        fn at(&mut self, ms: u64) {
            let target = self.t0 + Duration::from_millis(ms);
            let delta = target - self.now.mono;
            self.now.mono = target;
            self.now.wall += delta;
        }

        fn feed(&mut self, obs: Observation) {
            self.core.observe(obs, self.now);
        }

        /// Start-up observations: own pod read, lease listed, labeled pods listed.
        fn boot(&mut self) {
            let own = self.pods[ME].clone();
            self.feed(Observation::OwnPod(own));
            self.feed(Observation::Lease(self.lease.clone()));
            let labeled = self.labeled();
            self.feed(Observation::PodsListed(labeled));
        }

        /// Booted alone: it created the lease and leads.
        fn leading() -> World {
            let mut w = World::new();
            w.boot();
            w.run();
            w
        }

        /// Booted as a follower of `leader`, a ready participant labeled leader.
        fn following(leader: &str, transitions: i64) -> World {
            let mut w = World::new();
            w.add_pod(
                leader,
                true,
                &[("e/is-leader", "true"), ("e/participant", "true")],
            );
            w.set_lease(leader, transitions);
            w.boot();
            w.run();
            w
        }

        fn labeled(&self) -> Vec<Pod> {
            self.pods
                .values()
                .filter(|p| p.labels.contains_key("e/is-leader"))
                .cloned()
                .collect()
        }

        /// Runs actions until the core waits; returns them. Watch events for each write
        /// are delivered right after it, as the sensors would.
        fn run(&mut self) -> Vec<Action> {
            let mut done = vec![];
            while let Some(a) = self.core.next_action(self.now) {
                assert!(done.len() < 50, "runaway actions: {done:?}");
                done.push(a.clone());
                if let Action::Exit(_) = a {
                    break;
                }
                let outcome = self.execute(&a);
                self.core.complete(outcome, self.now);
                self.check_one_leader();
            }
            done
        }

        fn fail_next(&mut self, n: u32, e: KubeError) {
            self.fail = Some((n, e));
        }

        fn take_failure(&mut self) -> Option<KubeError> {
            match &mut self.fail {
                Some((n, e)) if *n > 0 => {
                    *n -= 1;
                    Some(e.clone())
                }
                _ => None,
            }
        }

        fn execute(&mut self, a: &Action) -> Outcome {
            let failure = self.take_failure();
            match a {
                Action::CreateLease(record) | Action::UpdateLease { record, .. } => {
                    if let Some(e) = failure {
                        return Outcome::Lease(Err(e));
                    }
                    if let Action::UpdateLease { base, .. } = a {
                        match &self.lease {
                            Some(cur) if cur.resource_version == base.resource_version => {}
                            Some(_) => {
                                return Outcome::Lease(Err(KubeError::Conflict("stale".into())))
                            }
                            None => return Outcome::Lease(Err(KubeError::NotFound("gone".into()))),
                        }
                    } else if self.lease.is_some() {
                        return Outcome::Lease(Err(KubeError::Conflict("exists".into())));
                    }
                    self.writes
                        .push(format!("lease holder={:?}", record.holder));
                    let rv = self.next_rv();
                    let l = Lease {
                        resource_version: rv.clone(),
                        metadata: json!({"name": "e", "resourceVersion": rv}),
                        record: record.clone(),
                    };
                    self.lease = Some(l.clone());
                    Outcome::Lease(Ok(Some(l)))
                }
                Action::GetLease => match failure {
                    Some(e) => Outcome::Lease(Err(e)),
                    None => Outcome::Lease(Ok(self.lease.clone())),
                },
                Action::Patch(p) => {
                    if let Some(e) = failure {
                        return Outcome::Pod(Err(e));
                    }
                    let Some(cur) = self.pods.get(&p.pod).cloned() else {
                        return Outcome::Pod(Err(KubeError::NotFound(p.pod.clone())));
                    };
                    if p.precondition
                        .as_ref()
                        .is_some_and(|rv| rv != &cur.resource_version)
                    {
                        return Outcome::Pod(Err(KubeError::Conflict("modified".into())));
                    }
                    let mut new = cur;
                    for (k, v) in &p.labels {
                        match v {
                            Some(v) => new.labels.insert(k.clone(), v.clone()),
                            None => new.labels.remove(k),
                        };
                    }
                    new.resource_version = self.next_rv();
                    self.writes.push(format!(
                        "{} {}",
                        p.pod,
                        p.labels
                            .iter()
                            .map(|(k, v)| format!(
                                "{}={}",
                                k.trim_start_matches("e/"),
                                v.as_deref().unwrap_or("-")
                            ))
                            .collect::<Vec<_>>()
                            .join(",")
                    ));
                    self.pods.insert(p.pod.clone(), new.clone());
                    Outcome::Pod(Ok(new))
                }
                Action::GetPod(name) => match (failure, self.pods.get(name)) {
                    (Some(e), _) => Outcome::Pod(Err(e)),
                    (None, Some(p)) => Outcome::Pod(Ok(p.clone())),
                    (None, None) => Outcome::Pod(Err(KubeError::NotFound(name.clone()))),
                },
                Action::ListPods => match failure {
                    Some(e) => Outcome::Pods(Err(e)),
                    None => Outcome::Pods(Ok(self.labeled())),
                },
                Action::Exit(_) => unreachable!(),
            }
        }

        fn check_one_leader(&self) {
            let leaders: Vec<_> = self
                .pods
                .values()
                .filter(|p| p.label("e/is-leader") == Some("true"))
                .map(|p| p.name.clone())
                .collect();
            assert!(leaders.len() <= 1, "two leaders: {leaders:?}");
        }

        fn label(&self, pod: &str, key: &str) -> Option<String> {
            self.pods[pod].labels.get(&format!("e/{key}")).cloned()
        }

        fn set_lease(&mut self, holder: &str, transitions: i64) {
            let rv = self.next_rv();
            self.lease = Some(Lease {
                resource_version: rv.clone(),
                metadata: json!({"name": "e", "resourceVersion": rv}),
                record: LeaseRecord {
                    holder: holder.into(),
                    duration_seconds: 15,
                    acquire_time: Some("t0".into()),
                    renew_time: Some(format!("t{rv}")),
                    transitions,
                },
            });
            self.feed(Observation::Lease(self.lease.clone()));
        }

        fn update_pod(&mut self, name: &str, f: impl FnOnce(&mut Pod)) {
            let mut p = self.pods[name].clone();
            f(&mut p);
            p.resource_version = self.next_rv();
            self.pods.insert(name.into(), p.clone());
            self.feed(Observation::PodChanged(p));
        }
    }

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
        assert!(matches!(actions[0], Action::CreateLease(_)));
        assert!(w.core.is_leader());
        assert_eq!(w.lease.as_ref().unwrap().record.transitions, 0);
        assert_eq!(w.label(ME, "is-leader").as_deref(), Some("true"));
        assert_eq!(w.label(ME, "participant").as_deref(), Some("true"));
        // One patch sets both labels.
        assert_eq!(
            w.writes,
            [
                "lease holder=\"pod-b\"",
                "pod-b is-leader=true,participant=true"
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
        w.set_lease("", 2);
        let actions = w.run();
        assert!(matches!(actions[0], Action::UpdateLease { .. }));
        assert!(w.core.is_leader());
        // No fence needed after a release, but the old leader's true is set false first.
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
        // It tries to label itself false, and never claims true without a fresh lease.
        assert!(actions.iter().any(
            |a| matches!(a, Action::Patch(p) if p.labels == [("e/is-leader".to_string(), Some("false".to_string()))])
        ));
        // Once the server is back and another pod holds the lease, the label lands.
        w.fail = None;
        w.set_lease("pod-a", 1);
        w.writes.clear();
        w.at(20_000);
        w.run();
        assert_eq!(w.writes, ["pod-b is-leader=false"]);
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
        assert_eq!(w.writes, ["pod-b is-leader=false"]);
    }

    #[test]
    fn conflicts_are_re_read_not_retried_blindly() {
        let mut w = World::new();
        w.add_pod("pod-a", true, &[("e/is-leader", "true")]);
        w.set_lease("", 0);
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

    impl World {
        fn set_lease_silently(&mut self, holder: &str, transitions: i64) {
            let rv = self.next_rv();
            self.lease = Some(Lease {
                resource_version: rv.clone(),
                metadata: json!({"name": "e", "resourceVersion": rv}),
                record: LeaseRecord {
                    holder: holder.into(),
                    duration_seconds: 15,
                    transitions,
                    ..Default::default()
                },
            });
        }
    }

    #[test]
    fn ten_candidates_create_conflict_quietly() {
        // Our create loses to another pod's: 409 AlreadyExists, re-read, follow.
        let mut w = World::new();
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
        w.add_pod(
            "pod-a",
            true,
            &[("e/is-leader", "false"), ("e/participant", "true")],
        );
        let a = w.pods["pod-a"].clone();
        w.feed(Observation::PodChanged(a));
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
        w.update_pod(ME, |p| {
            p.deleting = true;
            p.deletion_grace_seconds = Some(10);
        });
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
        w.update_pod(ME, |p| {
            p.labels.insert("e/is-leader".into(), "true".into());
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
        let own = w.core.own.clone().unwrap();
        w.feed(Observation::PodGone(own));
        let actions = w.run();
        assert_eq!(actions.last(), Some(&Action::Exit(Exit::Clean)));
        assert_eq!(w.lease.as_ref().unwrap().record.holder, "");
    }
}
