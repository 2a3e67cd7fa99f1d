//! What the core takes in: the Lease, the pods, signals and contact, as the sensors
//! report them. Nothing here acts; it only updates what the core believes.

use super::*;

impl Core {
    pub fn observe(&mut self, obs: Observation, now: Now) {
        match obs {
            Observation::Lease(lease) => self.observe_lease(lease, now),
            Observation::PodsListed(pods) => {
                // A list is the whole truth: forget pods it no longer holds.
                self.pods
                    .labeled
                    .retain(|name, _| pods.iter().any(|p| p.name == *name));
                self.pods
                    .ready_since
                    .retain(|name, _| pods.iter().any(|p| p.name == *name));
                for p in pods {
                    self.note_pod(p, now);
                }
                self.pods.listed = true;
                if let Some(since) = self.lease.unseen_holder_since.take() {
                    self.wait_out_unseen_holder(since);
                }
            }
            Observation::PodChanged(p) => self.note_pod(p, now),
            Observation::PodGone(p) => {
                self.pods.labeled.remove(&p.name);
                self.pods.ready_since.remove(&p.name);
                self.pods.declined.remove(&p.name);
                if p.name == self.settings.me {
                    if p.deleting && !self.pods.replaced {
                        // Deleted at once (a force deletion, grace 0): the release still
                        // goes out, which usually fits before the kubelet's SIGKILL.
                        self.start_deletion_drain(&p, now);
                    }
                    // Deleted, or someone removed our label: forget our labels so they
                    // are written again (a 404 then tells us the pod is gone).
                    if let Some(own) = &mut self.pods.own {
                        own.labels.remove(&self.settings.keys.leader);
                        own.labels.remove(&self.settings.keys.participant);
                    }
                }
            }
            Observation::OwnPod(p) => self.note_pod(p, now),
            Observation::LeaseContact(Contact::Lost) => self.contact_lost(now.mono),
            Observation::LeaseContact(Contact::Restored) => self.contact_restored(now.mono),
            Observation::Signal => {
                let grace = self
                    .pods
                    .own
                    .as_ref()
                    .map_or(30, |p| p.termination_grace_seconds);
                self.start_drain(Cause::Signal, Duration::from_secs(grace), now);
            }
        }
    }

    pub(super) fn observe_lease(&mut self, lease: Option<Lease>, now: Now) {
        if self.lease.view == LeaseView::Unknown {
            self.first_lease_view(lease.as_ref(), now.mono);
        }
        match lease {
            None => {
                if self.is_leader() {
                    self.step_down("the Lease was deleted while we led".into());
                }
                let prev = std::mem::replace(&mut self.lease.view, LeaseView::Absent);
                if let LeaseView::Present(prev) = prev {
                    self.note_rival(&prev, None);
                }
            }
            Some(l) => {
                let prev = match &self.lease.view {
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
                if self.is_leader() && o.holder() != self.settings.me {
                    self.step_down(format!(
                        "lost leadership: the Lease now names {:?}",
                        o.holder()
                    ));
                }
                self.lease.view = LeaseView::Present(o);
            }
        }
    }

    /// Takes in a pod as read or watched, unless we already know a newer version of it
    /// (a write response can overtake the watch event of an older write).
    pub(super) fn note_pod(&mut self, p: Pod, now: Now) {
        let mine = p.name == self.settings.me;
        let known = if mine {
            self.pods.own.as_ref()
        } else {
            self.pods.labeled.get(&p.name)
        };
        if known.is_some_and(|o| is_older(&p.resource_version, &o.resource_version)) {
            return;
        }
        if mine {
            if let Some(own) = &self.pods.own {
                if !own.uid.is_empty() && !p.uid.is_empty() && own.uid != p.uid {
                    if !self.pods.replaced {
                        log::error!(
                            "pod {} was deleted and recreated (uid {} is now {}): this process belongs to the old pod; leaving without touching the new one",
                            p.name, own.uid, p.uid
                        );
                    }
                    self.pods.replaced = true;
                    return;
                }
            }
            // A deletion starts the drain; a later one with a shorter grace (kubectl
            // delete --grace-period=5 after a 30 s delete) shortens it.
            let seen = self
                .pods
                .own
                .as_ref()
                .filter(|o| o.deleting)
                .map(|o| o.deletion_grace_seconds);
            if p.deleting && seen != Some(p.deletion_grace_seconds) {
                self.start_deletion_drain(&p, now);
            }
            let was = self.pods.own.as_ref().map(|o| self.priority(o));
            if self.priority(&p) == 0 && was != Some(0) {
                log::info!("this pod's priority is 0: it serves as a replica and never leads");
            }
            let was_ready = self.pods.own.as_ref().map(|o| o.ready);
            if was_ready.is_some() && was_ready != Some(p.ready) {
                log::info!("pod is now {}", if p.ready { "Ready" } else { "not Ready" });
            }
            self.pods.own = Some(p.clone());
        }
        let foreign = !mine && self.foreign(&p);
        if p.ready && !p.deleting && p.label(&self.settings.keys.participant) == Some("true") {
            self.pods
                .ready_since
                .entry(p.name.clone())
                .or_insert(now.mono);
        } else {
            self.pods.ready_since.remove(&p.name);
            self.pods.declined.remove(&p.name);
        }
        if p.labels.contains_key(&self.settings.keys.leader) && !foreign {
            self.pods.labeled.insert(p.name.clone(), p);
        } else {
            self.pods.labeled.remove(&p.name);
        }
    }

    /// Whether the pod belongs to another election that uses the same leadership label
    /// key (said once per pod): it is neither fenced nor marked nor handed over to.
    pub(super) fn foreign(&mut self, p: &Pod) -> bool {
        let keys = &self.settings.keys;
        let Some(other) = labels::election_of(keys, p).filter(|e| *e != keys.election) else {
            return false;
        };
        if self.said.foreign.insert(p.name.clone()) {
            log::error!(
                "pod {} carries the label {} but belongs to election {other:?}: two elections in this namespace share --leadership-label {}; leaving that pod alone. Give each election its own key (the default, <election>/is-leader, is unique).",
                p.name, keys.leader, keys.leader
            );
        }
        true
    }

    pub(super) fn start_deletion_drain(&mut self, p: &Pod, now: Now) {
        let grace = p
            .deletion_grace_seconds
            .unwrap_or(p.termination_grace_seconds);
        self.start_drain(Cause::Deletion, Duration::from_secs(grace), now);
    }

    pub(super) fn start_drain(&mut self, cause: Cause, grace: Duration, now: Now) {
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
}
