//! What the core does next: one action at a time from what it believes and the clock,
//! and when it must be asked again (`next_wakeup`).

use super::*;

impl Core {
    /// The next action, or None until an observation arrives or `next_wakeup` passes.
    /// Each action must be followed by `complete` with its outcome.
    pub fn next_action(&mut self, now: Now) -> Option<Action> {
        debug_assert!(
            self.pending.is_none(),
            "next_action while an action is pending"
        );
        if self.pods.replaced {
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
        if self.lease.view == LeaseView::Unknown || self.pods.own.is_none() {
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
                            || self.pods.own_gone;
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

    pub(super) fn check_timers(&mut self, now: Instant) {
        if let Role::Leader(l) = &self.role {
            if now >= l.renewed_at + self.settings.renew_deadline {
                self.step_down(format!(
                    "lost leadership: no renewal succeeded within the renew deadline ({})",
                    crate::duration::format_duration(self.settings.renew_deadline)
                ));
            }
        }
        if let Role::HandingOver { since, wait } = self.role {
            let own_false = self
                .pods
                .own
                .as_ref()
                .is_some_and(|p| !self.settings.keys.says_leader(p));
            // A leaving pod keeps its `true` until the successor's fence or its own drain
            // deadline: a successor told to back off may take longer than a lease.
            let waited_enough = match &self.drain {
                Some(d) => d.must_leave(now),
                None => now >= since + self.settings.lease_duration,
            };
            if own_false || !wait || waited_enough {
                if own_false {
                    log::info!("handover complete: the successor has taken over");
                }
                self.role = Role::Follower;
            }
        }
    }

    pub(super) fn lease_action(&mut self, now: Now) -> Option<Action> {
        if self.lease.stale {
            return Some(Action::GetLease);
        }
        if self.retry.lease_at.is_some_and(|t| now.mono < t) {
            return None;
        }
        let must_leave =
            self.pods.own_gone || self.drain.as_ref().is_some_and(|d| d.must_leave(now.mono));
        match (&self.role, &self.lease.view) {
            (Role::Leader(l), LeaseView::Present(o)) => {
                // A new leader finishes its fence before any planned handover: the dead
                // holder's participation must go, and a release now would leave it.
                if o.lease.switchover_to().is_none() {
                    self.said.refused = None;
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
                    Plan::Refuse(why)
                        if !why.is_empty() && self.said.refused.as_ref() != Some(&why) =>
                    {
                        log::warn!("{why}");
                        self.notices.push(Notice::SwitchoverRefused(why.clone()));
                        self.said.refused = Some(why);
                    }
                    _ => {}
                }
                action
            }
            (Role::Follower, LeaseView::Absent) if self.lease.contact_lost.is_some() => {
                Some(Action::GetLease)
            }
            (Role::Follower, LeaseView::Absent) if self.may_compete() => {
                Some(Action::CreateLease(election::claim(
                    None,
                    &self.settings.me,
                    now.wall,
                    self.settings.lease_duration,
                )))
            }
            // A release whose answer never came: while the Lease we saw names us, decide
            // again (see `handover`).
            (Role::HandingOver { .. }, LeaseView::Present(o)) if o.holder() == self.settings.me => {
                self.own_lease(o, now, must_leave)
            }
            // Our release's designee let its courtesy wait pass: take the Lease back if we
            // may lead, else free it for the next pod (see `handover`).
            (Role::HandingOver { .. }, LeaseView::Present(o)) if self.passed_over(o, now.mono) => {
                let to = o.lease.record.handover_to.clone();
                if self.pods.declined.insert(to.clone()) {
                    log::warn!(
                        "{to} did not take the Lease released for it (is its sidecar running?)"
                    );
                }
                if self.may_compete() {
                    return Some(self.claim(o, now));
                }
                let next = self
                    .successor()
                    .filter(|p| !self.pods.declined.contains(&p.name))
                    .map(|p| p.name.clone())
                    .unwrap_or_default();
                let record = election::release(&o.lease.record, now.wall, &next);
                let base = o.lease.clone();
                self.release_why = Some("the pod it was released for did not take it");
                Some(Action::UpdateLease { base, record })
            }
            (Role::Follower, LeaseView::Present(o)) => {
                if o.holder() == self.settings.me {
                    return self.own_lease(o, now, must_leave);
                }
                if self.lease.contact_lost.is_some() {
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
                if self.lease.confirmed_at.is_some_and(|t| t >= o.expires_at()) {
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
    pub(super) fn own_lease(&self, o: &Observed, now: Now, must_leave: bool) -> Option<Action> {
        let best = self.successor().map(|p| p.name.as_str());
        let never = self
            .pods
            .own
            .as_ref()
            .is_some_and(|p| self.priority(p) == 0);
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
    pub(super) fn claim(&self, o: &Observed, now: Now) -> Action {
        Action::UpdateLease {
            base: o.lease.clone(),
            record: self.claim_record(o, now),
        }
    }

    pub(super) fn claim_record(&self, o: &Observed, now: Now) -> LeaseRecord {
        election::claim(
            Some(&o.lease.record),
            &self.settings.me,
            now.wall,
            self.settings.lease_duration,
        )
    }

    pub(super) fn label_action(&mut self, now: Instant) -> Option<Action> {
        if let Some(name) = self.pods.stale.first() {
            return Some(Action::GetPod(name.clone()));
        }
        if self.retry.labels_at.is_some_and(|t| now < t) || self.pods.own_gone {
            return None;
        }
        let standing = match &self.role {
            Role::Leader(l) => {
                if self.pods.relist_due.is_none_or(|t| now >= t) {
                    return Some(Action::ListPods);
                }
                if self.lease.rivals_until.is_some_and(|t| now < t) {
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
        let own = self.pods.own.as_ref()?;
        labels::next_patch(
            &self.settings.keys,
            own,
            &self.pods.labeled,
            &standing,
            self.eligible(),
        )
        .map(Action::Patch)
    }

    /// A leaving pod's work is done: not leading, not participating, not labeled leader.
    pub(super) fn settled(&self) -> bool {
        match &self.role {
            Role::Follower => self.pods.own.as_ref().is_some_and(|p| {
                p.label(&self.settings.keys.participant).is_none()
                    && !self.settings.keys.says_leader(p)
            }),
            _ => false,
        }
    }

    pub(super) fn exit_action(&mut self) -> Option<Action> {
        if !self.leaving() {
            return None;
        }
        if self.pods.own_gone {
            return Some(Action::Exit(Exit::Clean));
        }
        if !self.settled() {
            return None;
        }
        // A drain that began with the pod's deletion waits, settled, for the kubelet's
        // SIGTERM: a container that exits first is restarted by the kubelet, and a native
        // sidecar would stop before the app it serves (found under a real kubelet).
        if self.drain.as_ref().is_some_and(|d| d.signals == 0) {
            if !self.said.awaiting_signal {
                log::info!("drained; waiting for the kubelet's SIGTERM");
                self.said.awaiting_signal = true;
            }
            return None;
        }
        Some(Action::Exit(Exit::Clean))
    }

    /// The earliest moment a decision may change without a new observation.
    pub fn next_wakeup(&self, now: Instant) -> Option<Instant> {
        let mut times: Vec<Instant> = Vec::new();
        times.extend(self.retry.lease_at.filter(|t| *t > now));
        times.extend(self.retry.labels_at.filter(|t| *t > now));
        if let Some(d) = &self.drain {
            times.push(d.deadline);
            times.push(d.give_up);
        }
        match &self.role {
            Role::Leader(l) => {
                times.push(l.renew_due);
                times.push(l.renewed_at + self.settings.renew_deadline);
                times.extend(self.pods.relist_due);
                times.extend(self.lease.rivals_until);
                times.extend(self.failback_due());
            }
            Role::HandingOver { since, .. } => times.push(*since + self.settings.lease_duration),
            Role::Follower => {
                if let LeaseView::Present(o) = &self.lease.view {
                    if !o.holder().is_empty() && self.lease.contact_lost.is_none() {
                        times.push(o.expires_at());
                    }
                    if o.holder().is_empty() && !o.lease.record.handover_to.is_empty() {
                        times.push(o.observed_at + self.courtesy());
                    }
                }
            }
        }
        times.into_iter().filter(|t| *t > now).min()
    }
}
