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
const RENEW_BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// The core's state as the controller last published it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub state: Summary,
    /// When `state.renewed_at` was first seen, on the wall clock, for the metric.
    pub renewed_unix: Option<f64>,
}

#[derive(Debug, Default)]
struct Histogram {
    buckets: [u64; RENEW_BUCKETS.len()],
    count: u64,
    sum: f64,
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
    pub renewals_ok: AtomicU64,
    pub renewals_failed: AtomicU64,
    pub transitions: AtomicU64,
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
            renew_latency: Mutex::new(Histogram::default()),
            renewals_ok: AtomicU64::new(0),
            renewals_failed: AtomicU64::new(0),
            transitions: AtomicU64::new(0),
            unhealthy_after: renew_deadline + Duration::from_secs(5),
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
        let secs = latency.as_secs_f64();
        let mut h = self.renew_latency.lock().unwrap_or_else(|e| e.into_inner());
        for (i, bound) in RENEW_BUCKETS.iter().enumerate() {
            if secs <= *bound {
                h.buckets[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
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
        let mut gauge = |name: &str, help: &str, value: f64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        };
        gauge(
            "leader_labeler_is_leader",
            "1 while this pod holds the lease and acts as leader.",
            f64::from(u8::from(s.is_leader)),
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
        let h = self.renew_latency.lock().unwrap_or_else(|e| e.into_inner());
        let name = "leader_labeler_renew_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Latency of successful lease renewals.\n# TYPE {name} histogram"
        );
        for (i, bound) in RENEW_BUCKETS.iter().enumerate() {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {}", h.buckets[i]);
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "{name}_sum {}", h.sum);
        let _ = writeln!(out, "{name}_count {}", h.count);
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

    #[test]
    fn leader_document() {
        let t = Telemetry::new("p", Duration::from_secs(10));
        let v: serde_json::Value = serde_json::from_str(&t.leader_json()).unwrap();
        assert_eq!(v["leader"], serde_json::Value::Null);
        assert_eq!(v["isLeader"], false);
    }
}
