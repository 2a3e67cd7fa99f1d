//! Sensor threads: they watch the world and send what they see to the controller. They
//! own no state and make no decisions.
//!
//! - the Lease: a single-object watch, so a released lease is seen within milliseconds;
//!   if the watch is forbidden or keeps failing, polling every retry period instead;
//! - the labeled pods (the leadership key exists): readiness, deletion and labels of
//!   this pod and of every other participant;
//! - SIGTERM and SIGINT.

use crate::backoff::Streak;
use crate::config::Config;
use crate::core::Observation;
use crate::kube::types::{Lease, Pod};
use crate::kube::watch::{self, Stopped, Target, Update};
use crate::kube::{encode_query, Client, KubeError};
use std::sync::mpsc::Sender;
use std::thread;
use std::time::Duration;

/// Consecutive watch failures before the lease sensor falls back to polling.
const WATCH_FAILURES_BEFORE_POLLING: u32 = 5;

pub fn leases_path(cfg: &Config) -> String {
    format!(
        "/apis/coordination.k8s.io/v1/namespaces/{}/leases",
        cfg.namespace
    )
}

pub fn pods_path(cfg: &Config) -> String {
    format!("/api/v1/namespaces/{}/pods", cfg.namespace)
}

/// The label selector of the pods this election cares about: every pod carrying the
/// leadership key, whatever its value (sidecars label their own pod at start).
pub fn pod_selector(cfg: &Config) -> String {
    format!("labelSelector={}", encode_query(&cfg.leadership_label))
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
        leases_path(cfg),
        &cfg.election_name,
        cfg.watch_timeout,
        "Lease watch",
    );
    let get_path = format!("{}/{}", leases_path(cfg), cfg.election_name);
    let retry = cfg.retry_period;
    spawn("lease-watch", move || {
        let sink = |u: Update<Lease>| {
            let obs = match u {
                Update::Listed(mut items) => Observation::Lease(items.pop()),
                Update::Changed(l) => Observation::Lease(Some(l)),
                Update::Deleted(_) => Observation::Lease(None),
            };
            tx.send(obs).is_ok()
        };
        let give_up = |failures: u32, e: &KubeError| {
            matches!(e, KubeError::Forbidden(_)) || failures >= WATCH_FAILURES_BEFORE_POLLING
        };
        match watch::run(&client, &target, sink, give_up) {
            Stopped::ByOwner => {}
            Stopped::GaveUp(e) => {
                log::warn!(
                    "cannot watch the Lease ({e}); polling it every {} instead",
                    crate::config::format_duration(retry)
                );
                poll_lease(&client, &get_path, retry, &tx);
            }
        }
    })
}

fn poll_lease(client: &Client, path: &str, every: Duration, tx: &Sender<Observation>) {
    let mut streak = Streak::new("Lease poll");
    loop {
        match client.get_lease(path) {
            Ok(lease) => {
                streak.succeeded();
                if tx.send(Observation::Lease(lease)).is_err() {
                    return;
                }
            }
            Err(e) => streak.failed(&e),
        }
        thread::sleep(every);
    }
}

pub fn start_pod_sensor(
    cfg: &Config,
    client: Client,
    tx: Sender<Observation>,
) -> std::io::Result<()> {
    let target = Target {
        path: pods_path(cfg),
        selector: pod_selector(cfg),
        timeout: cfg.watch_timeout,
        what: "pod watch",
    };
    spawn("pod-watch", move || {
        let sink = |u: Update<Pod>| {
            let obs = match u {
                Update::Listed(items) => Observation::PodsListed(items),
                Update::Changed(p) => Observation::PodChanged(p),
                Update::Deleted(p) => Observation::PodGone(p),
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
