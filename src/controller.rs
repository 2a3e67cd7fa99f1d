//! The controller thread: the one owner of state. It feeds observations from the sensor
//! channel into the core, carries out the core's actions over HTTP, and sleeps until the
//! next observation or the core's next deadline, whichever comes first.

use crate::backoff::{Backoff, Jitter, Streak};
use crate::config::Config;
use crate::core::{Action, Core, Exit, Notice, Now, Observation, Outcome};
use crate::kube::types::{lease_body, Lease, Pod};
use crate::kube::{watch, Client, KubeError};
use crate::telemetry::{unix_now, Snapshot, Telemetry};
use crate::{api, events, http, rbac, sensors};
use serde_json::Value;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

/// Why the sidecar could not run. Each is fatal: exit code 1.
#[derive(Debug)]
pub enum RunError {
    /// The Role lacks rules; the message lists them.
    Permissions(String),
    /// The pod named by --pod-name does not exist in the namespace.
    PodNotFound { pod: String, namespace: String },
    /// Anything else that stops start-up (unreadable CA, threads).
    Setup(String),
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Permissions(m) => write!(f, "{m}"),
            RunError::PodNotFound { pod, namespace } => write!(
                f,
                "pod {pod:?} not found in namespace {namespace:?}: check --pod-name and --namespace (POD_NAME / POD_NAMESPACE from the downward API)"
            ),
            RunError::Setup(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for RunError {}

/// Runs the sidecar until it has drained. Returns how it ended.
/// A leader reads the Lease only to decide again after a conflict: client-go's slow path
/// (`leader_election_slowpath_total`).
fn is_lease_reread(action: &Action, leading: bool) -> bool {
    leading && *action == Action::GetLease
}

pub fn run(cfg: &Config, client: Client, telemetry: Arc<Telemetry>) -> Result<Exit, RunError> {
    let (tx, rx) = mpsc::channel();
    // Signals first: a SIGTERM during start-up must not kill us with the default action.
    sensors::start_signal_sensor(tx.clone())
        .map_err(|e| RunError::Setup(format!("cannot install signal handlers: {e}")))?;
    // The probes answer from the start, also while the API server is out of reach.
    if let Some(addr) = cfg.http_address {
        let bound = http::serve(&addr.to_string(), telemetry.clone())
            .map_err(|e| RunError::Setup(format!("--http-address {addr}: cannot listen: {e}")))?;
        log::info!("serving /healthz /readyz /metrics /leader on {bound}");
    }

    let events_allowed = check_permissions(cfg, &client, &rx, &telemetry)?;
    let own = read_own_pod(cfg, &client, &rx, &telemetry)?;
    let events = events::start(
        client.clone(),
        events_allowed,
        events::Subject {
            namespace: cfg.namespace.clone(),
            pod: cfg.pod_name.clone(),
            uid: own.uid.clone(),
        },
    );

    let mut core = Core::new(cfg.core_settings(), Jitter::from_entropy());
    core.observe(Observation::OwnPod(own), Now::system());
    // Signals that arrived while starting.
    while let Ok(obs) = rx.try_recv() {
        core.observe(obs, Now::system());
    }
    sensors::start_lease_sensor(cfg, client.clone(), tx.clone())
        .and_then(|_| sensors::start_pod_sensor(cfg, client.clone(), tx))
        .map_err(|e| RunError::Setup(format!("cannot start watch threads: {e}")))?;
    log::info!(
        "started: pod {} in namespace {}, election {:?}, labels {} / {}",
        cfg.pod_name,
        cfg.namespace,
        cfg.election_name,
        cfg.leadership_label,
        cfg.participation_label
    );

    let exec = Executor { cfg, client };
    let mut report = Reporter {
        telemetry,
        events,
        leader_file: cfg.leader_file.clone(),
        written: None,
        file_error_logged: false,
        last_action: Duration::ZERO,
    };
    loop {
        while let Some(action) = core.next_action(Now::system()) {
            if let Action::Exit(how) = action {
                report.publish(&mut core);
                report.events.finish(Duration::from_secs(1));
                return Ok(how);
            }
            if is_lease_reread(&action, core.is_leader()) {
                report.telemetry.count_lease_reread();
            }
            let started = std::time::Instant::now();
            let outcome = match core.call_deadline(started) {
                Some(by) => exec.execute(&exec.client.bounded(by - started), &action),
                None => exec.execute(&exec.client, &action),
            };
            report.last_action = started.elapsed();
            core.complete(outcome, Now::system());
            // Fold in what the sensors saw meanwhile before deciding again.
            while let Ok(obs) = rx.try_recv() {
                core.observe(obs, Now::system());
            }
            report.publish(&mut core);
        }
        report.publish(&mut core);
        let now = Now::system();
        // Wake at least every few seconds: the heartbeat behind /healthz.
        let wait = core
            .next_wakeup(now.mono)
            .map_or(HEARTBEAT, |t| t - now.mono)
            .min(HEARTBEAT);
        match rx.recv_timeout(wait) {
            Ok(obs) => core.observe(obs, Now::system()),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return Err(RunError::Setup("all sensor threads stopped".into()))
            }
        }
    }
}

/// The longest the controller sleeps without a turn of its loop.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// Turns the core's state and notices into metrics, events and the leader file.
struct Reporter {
    telemetry: Arc<Telemetry>,
    events: events::Recorder,
    leader_file: Option<PathBuf>,
    /// What the leader file holds now.
    written: Option<bool>,
    file_error_logged: bool,
    /// How long the last action took (the renewal latency when it was a renewal).
    last_action: Duration,
}

impl Reporter {
    fn publish(&mut self, core: &mut Core) {
        for notice in core.take_notices() {
            let event = |reason, message: String, kind| events::Event {
                reason,
                message,
                kind,
            };
            let e = match notice {
                Notice::Renewed { ok } => {
                    self.telemetry.observe_renewal(ok, self.last_action);
                    None
                }
                Notice::BecameLeader {
                    transition,
                    resumed,
                } => {
                    self.telemetry.transitions.fetch_add(1, Ordering::Relaxed);
                    Some(event(
                        "BecameLeader",
                        if resumed {
                            "resumed leadership after a restart of the sidecar".into()
                        } else {
                            format!("became leader (lease transition {transition})")
                        },
                        "Normal",
                    ))
                }
                Notice::SteppedDown(why) => Some(event("SteppedDown", why, "Warning")),
                Notice::DrainStarted(why) => Some(event("Draining", why, "Normal")),
                Notice::HandedOver { to, why } => Some(event(
                    "HandedOver",
                    if to.is_empty() {
                        format!("released the lease: {why}")
                    } else {
                        format!("handed the lease over to {to}: {why}")
                    },
                    "Normal",
                )),
                Notice::SwitchoverRefused(why) => Some(event("SwitchoverRefused", why, "Warning")),
            };
            if let Some(e) = e {
                self.events.send(e);
            }
        }
        let state = core.summary();
        self.telemetry
            .observe_leadership(&state, std::time::Instant::now());
        let old = self.telemetry.snapshot();
        // The wall-clock time of a renewal is taken when we first see it.
        let renewed_unix = match state.renewed_at {
            Some(t) if Some(t) != old.state.renewed_at => Some(unix_now()),
            _ => old.renewed_unix,
        };
        let is_leader = state.is_leader;
        let snapshot = Snapshot {
            state,
            renewed_unix,
        };
        if snapshot != old {
            self.telemetry.publish(snapshot);
        } else {
            self.telemetry.beat();
        }
        self.write_leader_file(is_leader);
    }

    fn write_leader_file(&mut self, is_leader: bool) {
        let Some(path) = &self.leader_file else {
            return;
        };
        if self.written == Some(is_leader) {
            return;
        }
        // Write a sibling, then rename: readers never see a half-written file.
        let tmp = path.with_extension("tmp");
        let result = std::fs::write(&tmp, if is_leader { "true\n" } else { "false\n" })
            .and_then(|_| std::fs::rename(&tmp, path));
        match result {
            Ok(()) => self.written = Some(is_leader),
            Err(e) => {
                if !self.file_error_logged {
                    log::warn!("cannot write --leader-file {}: {e}", path.display());
                    self.file_error_logged = true;
                }
            }
        }
    }
}

/// Retries `f` on transient errors (logging the streak once) until it answers, or until
/// a signal asks us to stop.
fn patiently<T>(
    what: &'static str,
    rx: &Receiver<Observation>,
    telemetry: &Telemetry,
    mut f: impl FnMut() -> Result<T, KubeError>,
) -> Result<Option<T>, KubeError> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut streak = Streak::new(what);
    loop {
        telemetry.beat();
        match f() {
            Ok(v) => {
                streak.succeeded();
                return Ok(Some(v));
            }
            Err(e) if e.is_transient() => {
                streak.failed(&e);
                if let Ok(Observation::Signal) = rx.recv_timeout(e.pause(backoff.next_delay())) {
                    return Ok(None);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

fn stopped_while_starting() -> RunError {
    RunError::Setup("stopped by a signal before start-up completed".into())
}

fn check_permissions(
    cfg: &Config,
    client: &Client,
    rx: &Receiver<Observation>,
    telemetry: &Telemetry,
) -> Result<bool, RunError> {
    let verdict = patiently("permission check", rx, telemetry, || {
        rbac::check(client, cfg)
    })
    .map_err(|e| RunError::Setup(e.to_string()))?
    .ok_or_else(stopped_while_starting)?;
    match verdict {
        rbac::Verdict::AllGranted { events } => Ok(events),
        rbac::Verdict::Missing(m) => Err(RunError::Permissions(rbac::explain(&m, cfg))),
        rbac::Verdict::Unknown(why) => {
            log::warn!("cannot check permissions up front ({why}); going on");
            Ok(true)
        }
    }
}

fn read_own_pod(
    cfg: &Config,
    client: &Client,
    rx: &Receiver<Observation>,
    telemetry: &Telemetry,
) -> Result<Pod, RunError> {
    let path = format!("{}/{}", api::pods_path(&cfg.namespace), cfg.pod_name);
    let got = patiently("reading this pod", rx, telemetry, || {
        client
            .get(&path)
            .and_then(|v| Pod::from_json(&v).map_err(KubeError::Decode))
    });
    match got {
        Ok(Some(p)) => Ok(p),
        Ok(None) => Err(stopped_while_starting()),
        Err(KubeError::NotFound(_)) => Err(RunError::PodNotFound {
            pod: cfg.pod_name.clone(),
            namespace: cfg.namespace.clone(),
        }),
        Err(e) => Err(RunError::Setup(format!(
            "cannot read pod {}: {e}",
            cfg.pod_name
        ))),
    }
}

/// Carries out the core's actions over HTTP.
struct Executor<'a> {
    cfg: &'a Config,
    client: Client,
}

impl Executor<'_> {
    fn lease_path(&self) -> String {
        format!(
            "{}/{}",
            api::leases_path(&self.cfg.namespace),
            self.cfg.election_name
        )
    }

    fn execute(&self, client: &Client, action: &Action) -> Outcome {
        let lease = |r: Result<Value, KubeError>| {
            Outcome::Lease(
                r.and_then(|v| Lease::from_json(&v).map(Some).map_err(KubeError::Decode)),
            )
        };
        let pod = |r: Result<Value, KubeError>| {
            Outcome::Pod(r.and_then(|v| Pod::from_json(&v).map_err(KubeError::Decode)))
        };
        let (name, ns) = (&self.cfg.election_name, &self.cfg.namespace);
        match action {
            Action::CreateLease(record) => lease(client.post(
                &api::leases_path(&self.cfg.namespace),
                &lease_body(name, ns, None, record),
            )),
            Action::UpdateLease { base, record } => lease(client.put(
                &self.lease_path(),
                &lease_body(name, ns, Some(base), record),
            )),
            Action::GetLease => Outcome::Lease(client.get_lease(&self.lease_path())),
            Action::Patch(p) => pod(client.merge_patch(
                &format!("{}/{}", api::pods_path(&self.cfg.namespace), p.pod),
                &p.body(),
            )),
            Action::GetPod(n) => {
                pod(client.get(&format!("{}/{}", api::pods_path(&self.cfg.namespace), n)))
            }
            Action::ListPods => Outcome::Pods(
                watch::list(
                    client,
                    &format!(
                        "{}?{}",
                        api::pods_path(&self.cfg.namespace),
                        api::pod_selector(&self.cfg.leadership_label)
                    ),
                )
                .map(|(pods, _)| pods),
            ),
            Action::Exit(_) => unreachable!("Exit is handled by the loop"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_leaders_lease_reads_are_re_reads() {
        assert!(is_lease_reread(&Action::GetLease, true));
        assert!(
            !is_lease_reread(&Action::GetLease, false),
            "a follower's read"
        );
        assert!(
            !is_lease_reread(&Action::ListPods, true),
            "a leader's other calls"
        );
    }
}
