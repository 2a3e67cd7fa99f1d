//! What the core learns from the answer to its own action: success, conflict, refusal
//! or silence, and the back-off that follows a failure.

use super::*;

impl Core {
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
                    self.lease.stale = false;
                    self.lease_answered(now.mono);
                    self.observe_lease(l, now);
                    self.lease.confirmed_at = Some(now.mono);
                }
                Err(e) => self.lease_failed(&e, now.mono, "read the Lease"),
            },
            (Pending::Patch(p), Outcome::Pod(r)) => self.patched(p, r, now),
            (Pending::GetPod(name), Outcome::Pod(r)) => {
                self.pods.stale.retain(|n| n != &name);
                match r {
                    Ok(pod) => self.observe(Observation::PodChanged(pod), now),
                    Err(KubeError::NotFound(_)) => self.pod_not_found(&name),
                    Err(e) => self.labels_failed(&e, now.mono, "read pod", &name),
                }
            }
            (Pending::ListPods, Outcome::Pods(r)) => match r {
                Ok(pods) => {
                    self.pods.relist_due = Some(now.mono + self.settings.resync_period);
                    self.observe(Observation::PodsListed(pods), now);
                    self.plan_fencing();
                }
                Err(e) => {
                    // Fencing waits for this list: retry it after the back-off.
                    let fencing = matches!(&self.role, Role::Leader(l) if matches!(l.fencing, Fencing::Listing { .. }));
                    self.pods.relist_due =
                        (!fencing).then(|| now.mono + self.settings.resync_period);
                    self.labels_failed(&e, now.mono, "list pods", "");
                }
            },
            (p, o) => debug_assert!(false, "outcome {o:?} does not match {p:?}"),
        }
    }

    pub(super) fn lease_written(
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
                self.lease.stale = true;
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
        let previous = match &self.lease.view {
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
                let stamp = self
                    .settings
                    .keys
                    .stamp(&self.settings.me, self.lease_version());
                if previous == self.settings.me {
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
                    resumed: previous == self.settings.me,
                });
                self.role = Role::Leader(Leading {
                    since: now.mono,
                    renewed_at: sent,
                    renew_due: sent + self.settings.retry_period,
                    fencing: Fencing::Listing { stamp, previous },
                });
                self.pods.relist_due = Some(now.mono);
            }
            LeaseWrite::Renew => {
                self.notices.push(Notice::Renewed { ok: true });
                if let Role::Leader(l) = &mut self.role {
                    l.renewed_at = sent;
                    l.renew_due = sent + self.settings.retry_period;
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

    pub(super) fn lease_version(&self) -> &str {
        match &self.lease.view {
            LeaseView::Present(o) => &o.lease.resource_version,
            _ => "",
        }
    }

    pub(super) fn lease_failed(&mut self, e: &KubeError, now: Instant, what: &str) {
        self.retry.lease_failures += 1;
        self.retry.forbidden_in_a_row = match e {
            KubeError::Forbidden(_) => self.retry.forbidden_in_a_row + 1,
            _ => 0,
        };
        self.log_failure(e, self.retry.lease_failures, what, "");
        // Any failure: an answer that did not show the Lease (see `outage`).
        self.contact_lost(now);
        let holder = self.lease_holder() == self.settings.me;
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
                let delay = e
                    .pause(self.settings.retry_period / 2)
                    .min(self.settings.retry_period);
                l.renew_due = now + delay;
                delay
            }
            // A missing permission stays missing, but a kube-apiserver that is starting
            // answers 403 for a while until its RBAC cache is synced.
            (_, KubeError::Forbidden(_))
                if self.retry.forbidden_in_a_row > FORBIDDEN_BEFORE_SLOWING =>
            {
                self.settings.retry_period * 5
            }
            _ => e.pause(self.retry.jitter.stretch(self.settings.retry_period, 1.2)),
        };
        let delay = if holder {
            delay.min(self.settings.retry_period)
        } else {
            delay
        };
        self.retry.lease_at = Some(now + delay);
    }

    pub(super) fn patched(&mut self, patch: Patch, result: Result<Pod, KubeError>, now: Now) {
        match result {
            Ok(pod) => {
                Self::recovered(&mut self.retry.label_failures, "pod calls");
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
                self.pods.stale.push(patch.pod);
            }
            Err(KubeError::NotFound(_)) => {
                self.fenced(&patch.pod);
                self.pod_not_found(&patch.pod);
            }
            Err(e) => self.labels_failed(&e, now.mono, "patch pod", &patch.pod),
        }
    }

    /// A Lease call succeeded: the failure streak ends and we are in contact.
    pub(super) fn lease_answered(&mut self, now: Instant) {
        Self::recovered(&mut self.retry.lease_failures, "Lease calls");
        self.retry.forbidden_in_a_row = 0;
        self.contact_restored(now);
    }

    /// Ends a failure streak, with one line if there was one.
    pub(super) fn recovered(failures: &mut u32, what: &str) {
        if *failures > 0 {
            log::info!("{what} succeed again after {} failure(s)", *failures);
        }
        *failures = 0;
    }

    pub(super) fn pod_not_found(&mut self, name: &str) {
        self.pods.labeled.remove(name);
        if name == self.settings.me {
            if !self.pods.own_gone {
                log::warn!("this pod no longer exists; leaving");
            }
            self.pods.own_gone = true;
        }
    }

    pub(super) fn labels_failed(&mut self, e: &KubeError, now: Instant, what: &str, pod: &str) {
        self.retry.label_failures += 1;
        self.log_failure(e, self.retry.label_failures, what, pod);
        let exp = self.retry.label_failures.min(6);
        let base =
            (self.settings.retry_period / 4).max(Duration::from_millis(50)) * (1 << (exp - 1));
        let backoff = self
            .retry
            .jitter
            .stretch(base.min(self.settings.retry_period * 4), 0.5);
        // Until a new leader has fenced and claimed, the Service may have no endpoint: a
        // Retry-After is honoured up to one retry period then, as for its renewals.
        let claiming = match &self.role {
            Role::Leader(l) => {
                l.fencing != Fencing::Done
                    || !self
                        .pods
                        .own
                        .as_ref()
                        .is_some_and(|p| self.settings.keys.says_leader(p))
            }
            _ => false,
        };
        let asked = e.retry_after().unwrap_or_default();
        let asked = if claiming {
            asked.min(self.settings.retry_period)
        } else {
            asked
        };
        let delay = backoff.max(asked);
        self.retry.labels_at = Some(now + delay);
    }

    pub(super) fn log_failure(&mut self, e: &KubeError, count: u32, what: &str, pod: &str) {
        let target = if pod.is_empty() {
            String::new()
        } else {
            format!(" {pod}")
        };
        match e {
            // Not while out of contact: a kube-apiserver that is starting answers 403
            // until its RBAC cache has synced.
            KubeError::Forbidden(m)
                if !self.said.forbidden && self.lease.contact_lost.is_none() =>
            {
                self.said.forbidden = true;
                log::error!("cannot {what}{target}: {m}. Check the Role (deploy/rbac.yaml).");
            }
            _ if count == 1 => log::warn!("cannot {what}{target}: {e}; retrying"),
            _ => log::debug!("cannot {what}{target} ({count}x): {e}"),
        }
    }
}
