//! What the sidecar tells the outside world about itself: a snapshot of its state for
//! the HTTP endpoints and the leader file, and counters for Prometheus.
//!
//! The controller thread is the only writer of the snapshot; the HTTP thread and the API
//! client only read it or bump counters. Nothing here makes decisions.

use crate::core::Summary;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Upper bounds (seconds) of the renewal latency histogram.
const RENEW_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];
/// Upper bounds (seconds) of the handover histogram: fencing takes a few calls.
const HANDOVER_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

// Histogram holds at most 11 buckets.
const _: () = assert!(RENEW_BUCKETS.len() <= 11 && HANDOVER_BUCKETS.len() <= 11);

/// The core's state as the controller last published it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub state: Summary,
    /// When `state.renewed_at` was first seen, on the wall clock, for the metric.
    pub renewed_unix: Option<f64>,
}

/// A Prometheus histogram with fixed bounds (at most 11); buckets are cumulative.
#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    buckets: [u64; 11],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: [0; 11],
            count: 0,
            sum: 0.0,
        }
    }

    fn observe(&mut self, took: Duration) {
        let secs = took.as_secs_f64();
        for (n, bound) in self.buckets.iter_mut().zip(self.bounds) {
            if secs <= *bound {
                *n += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (n, bound) in self.buckets.iter().zip(self.bounds) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {n}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", self.sum, self.count);
    }
}

/// Times each takeover, from winning the Lease to our own pod carrying the leader label.
#[derive(Debug)]
struct Handover {
    leading: bool,
    won_at: Option<Instant>,
    took: Histogram,
}

/// Shared between the controller, the API client and the HTTP thread.
#[derive(Debug)]
pub struct Telemetry {
    pod: String,
    snapshot: Mutex<Snapshot>,
    /// The controller loop's last turn: a stuck controller fails /healthz.
    heartbeat: Mutex<Instant>,
    api_requests: Mutex<BTreeMap<(String, String), u64>>,
    renew_latency: Mutex<Histogram>,
    handover: Mutex<Handover>,
    pub renewals_ok: AtomicU64,
    pub renewals_failed: AtomicU64,
    pub transitions: AtomicU64,
    /// Lease reads while leading: client-go's slow path.
    lease_rereads: AtomicU64,
    /// `{name="<election>"}`, the label of client-go's leader-election metrics.
    election_label: String,
    /// The renew deadline plus a margin: a leader that has not renewed for this long is
    /// unhealthy (client-go's healthz adaptor does the same).
    unhealthy_after: Duration,
}

impl Telemetry {
    pub fn new(pod: &str, renew_deadline: Duration) -> Telemetry {
        Telemetry {
            pod: pod.to_string(),
            snapshot: Mutex::new(Snapshot::default()),
            heartbeat: Mutex::new(Instant::now()),
            api_requests: Mutex::new(BTreeMap::new()),
            renew_latency: Mutex::new(Histogram::new(RENEW_BUCKETS)),
            handover: Mutex::new(Handover {
                leading: false,
                won_at: None,
                took: Histogram::new(HANDOVER_BUCKETS),
            }),
            renewals_ok: AtomicU64::new(0),
            renewals_failed: AtomicU64::new(0),
            transitions: AtomicU64::new(0),
            lease_rereads: AtomicU64::new(0),
            election_label: String::from("{name=\"\"}"),
            unhealthy_after: renew_deadline + Duration::from_secs(5),
        }
    }

    /// Names the election (the Lease) in client-go's metrics. A Lease name is a DNS
    /// subdomain: nothing in it needs escaping in a label value.
    pub fn with_election(mut self, name: &str) -> Telemetry {
        self.election_label = String::from("{name=\"");
        self.election_label.push_str(name);
        self.election_label.push_str("\"}");
        self
    }

    /// A leader read the Lease again (after a conflict).
    pub fn count_lease_reread(&self) {
        self.lease_rereads.fetch_add(1, Ordering::Relaxed);
    }

    /// Follows leadership as published, to time each takeover: from the Lease won
    /// (`is_leader` turns true) to our own label saying leader. A takeover where the label
    /// already said leader (a resumed lease) or that ends first is not observed.
    pub fn observe_leadership(&self, s: &Summary, now: Instant) {
        let mut h = self.handover.lock().unwrap_or_else(|e| e.into_inner());
        if s.is_leader && !h.leading && !s.labeled_leader {
            h.won_at = Some(now);
        }
        h.leading = s.is_leader;
        if !s.is_leader {
            h.won_at = None;
        } else if s.labeled_leader {
            if let Some(won) = h.won_at.take() {
                h.took.observe(now.saturating_duration_since(won));
            }
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        self.snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the snapshot; returns the previous one.
    pub fn publish(&self, s: Snapshot) -> Snapshot {
        *self.heartbeat.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        std::mem::replace(
            &mut *self.snapshot.lock().unwrap_or_else(|e| e.into_inner()),
            s,
        )
    }

    pub fn beat(&self) {
        *self.heartbeat.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    pub fn count_request(&self, verb: &str, code: &str) {
        *self
            .api_requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((verb.to_string(), code.to_string()))
            .or_insert(0) += 1;
    }

    pub fn observe_renewal(&self, ok: bool, latency: Duration) {
        if !ok {
            self.renewals_failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.renewals_ok.fetch_add(1, Ordering::Relaxed);
        self.renew_latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe(latency);
    }

    /// Healthy unless the controller is stuck or a leader has stopped renewing.
    pub fn health(&self, now: Instant) -> Result<(), String> {
        let beat = *self.heartbeat.lock().unwrap_or_else(|e| e.into_inner());
        let stuck_after = Duration::from_secs(30).max(self.unhealthy_after);
        if now.duration_since(beat) > stuck_after {
            return Err(format!(
                "controller loop has not run for {:.0}s",
                now.duration_since(beat).as_secs_f64()
            ));
        }
        let s = self.snapshot().state;
        if s.is_leader {
            let since = s.renewed_at.map(|t| now.duration_since(t));
            if since.is_none_or(|d| d > self.unhealthy_after) {
                return Err(format!(
                    "leading but the lease was not renewed for {:.1}s",
                    since.unwrap_or_default().as_secs_f64()
                ));
            }
        }
        Ok(())
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn metrics(&self) -> String {
        let Snapshot {
            state: s,
            renewed_unix,
        } = self.snapshot();
        let mut out = String::new();
        let mut labeled_gauge = |name: &str, help: &str, labels: &str, value: f64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{labels} {value}"
            );
        };
        let mut gauge = |name: &str, help: &str, value: f64| labeled_gauge(name, help, "", value);
        gauge(
            "leader_labeler_is_leader",
            "1 while this pod holds the lease and acts as leader.",
            f64::from(u8::from(s.is_leader)),
        );
        // Compared with the holder, not is_leader: past its renew deadline a leader stops
        // leading but keeps its label by design, and a restarted one resumes with it.
        let disagrees = s.connected && s.labeled_leader != (s.holder == self.pod);
        gauge(
            "leader_labeler_label_disagrees",
            "1 while this pod's leadership label and the Lease holder disagree, as last seen in contact with the API server (else 0): the label says leader but the Lease names another pod or none, or the Lease names this pod but the label does not. The holder, not is_leader: past its renew deadline a leader keeps its label by design. Brief in each takeover.",
            f64::from(u8::from(disagrees)),
        );
        gauge(
            "leader_labeler_draining",
            "1 while this pod is draining before shutdown or deletion.",
            f64::from(u8::from(s.draining)),
        );
        gauge(
            "leader_labeler_participants",
            "Ready participants seen, this pod included.",
            s.participants.len() as f64,
        );
        gauge(
            "leader_labeler_last_renewal_timestamp_seconds",
            "Unix time of the last successful lease renewal or acquisition by this pod (0: never).",
            renewed_unix.unwrap_or(0.0),
        );
        labeled_gauge(
            "leader_election_master_status",
            "client-go's gauge: 1 while this pod leads (as leader_labeler_is_leader), else 0. 'name': the election (Lease).",
            &self.election_label,
            f64::from(u8::from(s.is_leader)),
        );
        let mut counter = |name: &str, help: &str, samples: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        counter(
            "leader_labeler_leader_transitions_total",
            "Times this pod became leader.",
            &[(String::new(), self.transitions.load(Ordering::Relaxed))],
        );
        counter(
            "leader_labeler_lease_renewals_total",
            "Lease renewals by this pod as leader, by result.",
            &[
                (
                    "{result=\"success\"}".into(),
                    self.renewals_ok.load(Ordering::Relaxed),
                ),
                (
                    "{result=\"failure\"}".into(),
                    self.renewals_failed.load(Ordering::Relaxed),
                ),
            ],
        );
        counter(
            "leader_election_slowpath_total",
            "client-go's slow path: Lease reads (GET) while this pod leads. A leader renews from the Lease it last wrote; it reads it only after a renewal refused with a conflict (retries count). 'name': the election (Lease).",
            &[(
                self.election_label.clone(),
                self.lease_rereads.load(Ordering::Relaxed),
            )],
        );
        let requests: Vec<(String, u64)> = self
            .api_requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|((verb, code), n)| (format!("{{verb=\"{verb}\",code=\"{code}\"}}"), *n))
            .collect();
        counter(
            "leader_labeler_api_requests_total",
            "Requests to the API server, by HTTP method and status code (\"error\": no answer).",
            &requests,
        );
        self.renew_latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .render(
                &mut out,
                "leader_labeler_renew_duration_seconds",
                "Latency of successful lease renewals.",
            );
        self.handover
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .took
            .render(
                &mut out,
                "leader_labeler_handover_seconds",
                "Seconds from this pod winning the Lease to its pod carrying the leader label (others fenced first); not observed for a resumed lease (label already leader) or one lost first.",
            );
        out
    }

    /// The `/leader` document for applications.
    pub fn leader_json(&self) -> String {
        let s = self.snapshot().state;
        serde_json::json!({
            "pod": self.pod,
            "isLeader": s.is_leader,
            "leader": if s.holder.is_empty() { None } else { Some(&s.holder) },
            "participants": s.participants,
            "draining": s.draining,
        })
        .to_string()
    }
}

/// Seconds since the epoch, for the last-renewal metric.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_follows_renewals() {
        let t = Telemetry::new("p", Duration::from_secs(10));
        let now = Instant::now();
        assert!(t.health(now).is_ok(), "a follower is healthy");
        t.publish(Snapshot {
            state: Summary {
                is_leader: true,
                renewed_at: Some(now),
                ..Default::default()
            },
            ..Default::default()
        });
        assert!(t.health(now + Duration::from_secs(14)).is_ok());
        let e = t.health(now + Duration::from_secs(16)).unwrap_err();
        assert!(e.contains("not renewed"), "{e}");
    }

    #[test]
    fn stuck_controller_is_unhealthy() {
        let t = Telemetry::new("p", Duration::from_secs(10));
        assert!(t.health(Instant::now() + Duration::from_secs(31)).is_err());
    }

    #[test]
    fn metrics_text() {
        let t = Telemetry::new("p", Duration::from_secs(10));
        t.count_request("PUT", "200");
        t.count_request("PUT", "200");
        t.count_request("GET", "error");
        t.observe_renewal(true, Duration::from_millis(3));
        t.observe_renewal(false, Duration::ZERO);
        t.publish(Snapshot {
            state: Summary {
                is_leader: true,
                participants: vec!["a".into(), "b".into()],
                ..Default::default()
            },
            ..Default::default()
        });
        let m = t.metrics();
        for line in [
            "leader_labeler_is_leader 1",
            "leader_labeler_participants 2",
            "leader_labeler_api_requests_total{verb=\"PUT\",code=\"200\"} 2",
            "leader_labeler_api_requests_total{verb=\"GET\",code=\"error\"} 1",
            "leader_labeler_lease_renewals_total{result=\"failure\"} 1",
            "leader_labeler_renew_duration_seconds_bucket{le=\"0.005\"} 1",
            "leader_labeler_renew_duration_seconds_bucket{le=\"0.0025\"} 0",
            "leader_labeler_renew_duration_seconds_count 1",
        ] {
            assert!(m.lines().any(|l| l == line), "missing {line:?} in\n{m}");
        }
    }

    /// The election metrics, by the values and types Prometheus reads.
    #[test]
    fn election_metrics_text() {
        let t = Telemetry::new("web-0", Duration::from_secs(10)).with_election("web");
        let t0 = Instant::now();
        let leading = |labeled_leader| Summary {
            is_leader: true,
            holder: "web-0".into(),
            labeled_leader,
            connected: true,
            ..Default::default()
        };
        t.observe_leadership(&Summary::default(), t0);
        t.observe_leadership(&leading(false), t0);
        t.count_lease_reread();
        t.count_lease_reread();
        t.observe_leadership(&leading(true), t0 + Duration::from_millis(30));
        t.publish(Snapshot {
            state: leading(true),
            ..Default::default()
        });
        let m = t.metrics();
        for line in [
            "# TYPE leader_election_master_status gauge",
            "leader_election_master_status{name=\"web\"} 1",
            "# TYPE leader_election_slowpath_total counter",
            "leader_election_slowpath_total{name=\"web\"} 2",
            "# TYPE leader_labeler_label_disagrees gauge",
            "leader_labeler_label_disagrees 0",
            "# TYPE leader_labeler_handover_seconds histogram",
            "leader_labeler_handover_seconds_bucket{le=\"0.025\"} 0",
            "leader_labeler_handover_seconds_bucket{le=\"0.05\"} 1",
            "leader_labeler_handover_seconds_bucket{le=\"10\"} 1",
            "leader_labeler_handover_seconds_bucket{le=\"+Inf\"} 1",
            "leader_labeler_handover_seconds_sum 0.03",
            "leader_labeler_handover_seconds_count 1",
        ] {
            assert!(m.lines().any(|l| l == line), "missing {line:?} in\n{m}");
        }
        // A follower: 0, and the label out of step with the Lease shows.
        t.publish(Snapshot {
            state: Summary {
                holder: "web-1".into(),
                labeled_leader: true,
                connected: true,
                ..Default::default()
            },
            ..Default::default()
        });
        let m = t.metrics();
        for line in [
            "leader_election_master_status{name=\"web\"} 0",
            "leader_labeler_label_disagrees 1",
        ] {
            assert!(m.lines().any(|l| l == line), "missing {line:?} in\n{m}");
        }
    }

    #[test]
    fn label_disagrees_with_the_lease_holder() {
        let t = Telemetry::new("web-0", Duration::from_secs(10));
        // (holder, own label says leader, in contact) -> disagrees
        for (holder, labeled_leader, connected, want) in [
            ("web-0", true, true, 0),
            ("web-1", false, true, 0),
            ("", false, true, 0),
            // Our label, another holder (or none: released, not yet fenced).
            ("web-1", true, true, 1),
            ("", true, true, 1),
            // The Lease names us, our label does not say leader.
            ("web-0", false, true, 1),
            // Out of contact: what we last saw may be stale.
            ("web-1", true, false, 0),
            ("web-0", false, false, 0),
        ] {
            // is_leader does not matter: a leader past its renew deadline keeps its label.
            for is_leader in [false, true] {
                t.publish(Snapshot {
                    state: Summary {
                        is_leader,
                        holder: holder.into(),
                        labeled_leader,
                        connected,
                        ..Default::default()
                    },
                    ..Default::default()
                });
                let line = format!("leader_labeler_label_disagrees {want}");
                assert!(
                    t.metrics().lines().any(|l| l == line),
                    "{holder:?} labeled_leader={labeled_leader} connected={connected}: want {line}"
                );
            }
        }
    }

    /// Handover time: from winning the Lease to our label saying leader, each takeover once.
    #[test]
    fn handover_is_timed_from_win_to_label() {
        let t = Telemetry::new("web-0", Duration::from_secs(10));
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let s = |is_leader, labeled_leader| Summary {
            is_leader,
            labeled_leader,
            ..Default::default()
        };
        let count = |t: &Telemetry| {
            t.metrics()
                .lines()
                .find_map(|l| l.strip_prefix("leader_labeler_handover_seconds_count "))
                .map(|v| v.to_string())
        };
        t.observe_leadership(&s(false, false), ms(0));
        t.observe_leadership(&s(true, false), ms(100)); // won
        t.observe_leadership(&s(true, false), ms(200)); // fencing
        t.observe_leadership(&s(true, true), ms(350)); // labeled: 0.25 s
        t.observe_leadership(&s(true, true), ms(900)); // still leading: not again
        assert_eq!(count(&t).as_deref(), Some("1"));
        // Lost before the label said leader: nothing observed.
        t.observe_leadership(&s(false, false), ms(1000));
        t.observe_leadership(&s(true, false), ms(1100));
        t.observe_leadership(&s(false, false), ms(1200));
        t.observe_leadership(&s(false, true), ms(1300));
        // A resumed lease: the label already said leader.
        t.observe_leadership(&s(true, true), ms(1400));
        t.observe_leadership(&s(true, true), ms(1500));
        let m = t.metrics();
        assert_eq!(count(&t).as_deref(), Some("1"), "{m}");
        for line in [
            "leader_labeler_handover_seconds_bucket{le=\"0.1\"} 0",
            "leader_labeler_handover_seconds_bucket{le=\"0.25\"} 1",
            "leader_labeler_handover_seconds_sum 0.25",
        ] {
            assert!(m.lines().any(|l| l == line), "missing {line:?} in\n{m}");
        }
    }

    #[test]
    fn leader_document() {
        let t = Telemetry::new("p", Duration::from_secs(10));
        let v: serde_json::Value = serde_json::from_str(&t.leader_json()).unwrap();
        assert_eq!(v["leader"], serde_json::Value::Null);
        assert_eq!(v["isLeader"], false);
    }
}
