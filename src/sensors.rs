//! Sensor threads: they watch the world and send what they see to the controller. They
//! own no state and make no decisions.
//!
//! - the Lease: a single-object watch, so a released lease is seen within milliseconds.
//!   Polling is a fallback, not a destination: only a watch the server refuses (403,
//!   405) is replaced by polling every retry period, and the watch is tried again every
//!   few minutes; any other failure backs off and returns to the watch. It also reports
//!   whether the API server answers (`Observation::LeaseContact`);
//! - the labeled pods (the leadership key exists): readiness, deletion and labels of
//!   this pod and of every other participant;
//! - SIGTERM and SIGINT.

use crate::api;
use crate::backoff::Streak;
use crate::config::Config;
use crate::core::{Contact, Observation};
use crate::kube::types::{Lease, Pod};
use crate::kube::watch::{self, Stopped, Target, Update};
use crate::kube::{Client, KubeError};
use std::sync::mpsc::Sender;
use std::thread;
use std::time::Duration;

/// While polling because the watch is refused, how soon the watch is tried again (the
/// Role may have been fixed): the first time soon, then every few minutes.
const WATCH_RETRY_WHILE_POLLING: [Duration; 2] =
    [Duration::from_secs(30), Duration::from_secs(300)];

/// Refusals in a row before polling: a kube-apiserver that is starting answers 403 until
/// its RBAC cache has synced, which says nothing about the Role.
const REFUSALS_BEFORE_POLLING: u32 = 4;

/// Whether the server refuses to watch: 403 or 405. Anything else is worth retrying as
/// a watch.
pub fn refusal(e: &KubeError) -> bool {
    matches!(
        e,
        KubeError::Forbidden(_) | KubeError::Status { code: 405, .. }
    )
}

/// Counts refusals in a row (any other outcome ends the run) and says when polling is
/// the only way left.
#[derive(Debug, Default)]
pub struct Refusals(std::cell::Cell<u32>);

impl Refusals {
    /// After a failure: whether to give up watching.
    pub fn failed(&self, e: &KubeError) -> bool {
        let n = if refusal(e) { self.0.get() + 1 } else { 0 };
        self.0.set(n);
        n >= REFUSALS_BEFORE_POLLING
    }

    /// After an answer.
    pub fn answered(&self) {
        self.0.set(0);
    }
}

/// Turns successes and failures into contact changes: one `Lost` at the start of a
/// failure streak, one `Restored` at its end.
#[derive(Debug)]
pub struct ContactTracker {
    lost: bool,
}

impl ContactTracker {
    pub fn new() -> Self {
        ContactTracker { lost: false }
    }

    /// `ok`: the API server answered. Returns the change to report, if any.
    pub fn update(&mut self, ok: bool) -> Option<Contact> {
        if ok == self.lost {
            self.lost = !ok;
            Some(if ok { Contact::Restored } else { Contact::Lost })
        } else {
            None
        }
    }
}

impl Default for ContactTracker {
    fn default() -> Self {
        Self::new()
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map(|_| ())
}

pub fn start_lease_sensor(
    cfg: &Config,
    client: Client,
    tx: Sender<Observation>,
) -> std::io::Result<()> {
    let target = Target::field_name(
        api::leases_path(&cfg.namespace),
        &cfg.election_name,
        cfg.watch_timeout,
        "Lease watch",
    );
    let get_path = format!("{}/{}", api::leases_path(&cfg.namespace), cfg.election_name);
    let retry = cfg.retry_period;
    spawn("lease-watch", move || {
        let mut contact = ContactTracker::new();
        let mut polled = 0;
        let refusals = Refusals::default();
        loop {
            let sink = |u: Update<Lease>| {
                let obs = match u {
                    Update::Listed(mut items) => Observation::Lease(items.pop()),
                    Update::Changed(l) => Observation::Lease(Some(l)),
                    Update::Deleted(_) => Observation::Lease(None),
                    Update::Connected => {
                        refusals.answered();
                        match contact.update(true) {
                            Some(c) => Observation::LeaseContact(c),
                            None => return true,
                        }
                    }
                    Update::Failed => match contact.update(false) {
                        Some(c) => Observation::LeaseContact(c),
                        None => return true,
                    },
                };
                tx.send(obs).is_ok()
            };
            match watch::run(&client, &target, sink, |_, e| refusals.failed(e)) {
                Stopped::ByOwner => return,
                Stopped::GaveUp(e) => {
                    let every = WATCH_RETRY_WHILE_POLLING[polled.min(1)];
                    if polled == 0 {
                        log::warn!(
                            "cannot watch the Lease ({e}); polling it every {} instead, and trying the watch again every {}",
                            crate::duration::format_duration(retry),
                            crate::duration::format_duration(WATCH_RETRY_WHILE_POLLING[1])
                        );
                    }
                    polled += 1;
                    if !poll_lease(&client, &get_path, retry, every, &tx, &mut contact) {
                        return;
                    }
                }
            }
        }
    })
}

/// Polls the Lease every `every` for `span`; false when the controller has gone.
fn poll_lease(
    client: &Client,
    path: &str,
    every: Duration,
    span: Duration,
    tx: &Sender<Observation>,
    contact: &mut ContactTracker,
) -> bool {
    let mut streak = Streak::new("Lease poll");
    let until = std::time::Instant::now() + span;
    while std::time::Instant::now() < until {
        let (ok, obs, pause) = match client.get_lease(path) {
            Ok(lease) => {
                streak.succeeded();
                (true, Some(Observation::Lease(lease)), every)
            }
            // Contact is an answer that showed the Lease: a 403 while a restarted
            // kube-apiserver syncs its RBAC cache is not (see `core::outage`).
            Err(e) => {
                streak.failed(&e);
                (false, None, e.pause(every))
            }
        };
        let change = contact.update(ok).map(Observation::LeaseContact);
        for o in change.into_iter().chain(obs) {
            if tx.send(o).is_err() {
                return false;
            }
        }
        thread::sleep(pause);
    }
    true
}

pub fn start_pod_sensor(
    cfg: &Config,
    client: Client,
    tx: Sender<Observation>,
) -> std::io::Result<()> {
    let target = Target {
        path: api::pods_path(&cfg.namespace),
        selector: api::pod_selector(&cfg.leadership_label),
        timeout: cfg.watch_timeout,
        what: "pod watch",
    };
    spawn("pod-watch", move || {
        let sink = |u: Update<Pod>| {
            let obs = match u {
                Update::Listed(items) => Observation::PodsListed(items),
                Update::Changed(p) => Observation::PodChanged(p),
                Update::Deleted(p) => Observation::PodGone(p),
                Update::Connected | Update::Failed => return true,
            };
            tx.send(obs).is_ok()
        };
        watch::run(&client, &target, sink, |_, _| false);
    })
}

pub fn start_signal_sensor(tx: Sender<Observation>) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    spawn("signals", move || {
        for sig in signals.forever() {
            log::info!(
                "received {}",
                if sig == SIGTERM { "SIGTERM" } else { "SIGINT" }
            );
            if tx.send(Observation::Signal).is_err() {
                return;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refusals_in_a_row_mean_polling() {
        let forbidden = KubeError::Forbidden("no".into());
        let refused = Refusals::default();
        let down = KubeError::Transport("refused".into());
        // An outage, then a kube-apiserver that answers 403 while it starts.
        for _ in 0..10 {
            assert!(!refused.failed(&down));
        }
        for _ in 1..REFUSALS_BEFORE_POLLING {
            assert!(!refused.failed(&forbidden));
        }
        refused.answered();
        for _ in 1..REFUSALS_BEFORE_POLLING {
            assert!(!refused.failed(&forbidden), "an answer ends the run");
        }
        assert!(refused.failed(&forbidden), "a Role without watch");
        assert!(refusal(&KubeError::Status {
            code: 405,
            message: "method not allowed".into()
        }));
        for transient in [
            KubeError::Transport("refused".into()),
            KubeError::Status {
                code: 503,
                message: "etcd".into(),
            },
            KubeError::Status {
                code: 429,
                message: "slow down".into(),
            },
        ] {
            assert!(!refusal(&transient), "{transient:?}");
        }
    }

    #[test]
    fn contact_changes_are_reported_once_per_streak() {
        let mut c = ContactTracker::new();
        assert_eq!(c.update(true), None, "in contact from the start");
        assert_eq!(c.update(false), Some(Contact::Lost));
        assert_eq!(c.update(false), None);
        assert_eq!(c.update(true), Some(Contact::Restored));
        assert_eq!(c.update(true), None);
    }
}
