//! Kubernetes Events on this pod when it becomes leader, steps down, starts draining or
//! hands over, posted from their own thread so a slow API server never delays a
//! handover. Repeats of the same reason and message are aggregated the usual way: the
//! first is created, later ones bump `count` and `lastTimestamp`. If events are forbidden
//! the sidecar warns once and carries on without them.

use crate::api::types::micro_time;
use crate::kube::{Client, KubeError};
use serde_json::json;
use std::collections::HashMap;
use std::sync::mpsc::{self, Sender};
use std::time::SystemTime;

/// One event to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub reason: &'static str,
    pub message: String,
    /// "Normal" or "Warning".
    pub kind: &'static str,
}

/// The pod the events are about.
pub struct Subject {
    pub namespace: String,
    pub pod: String,
    pub uid: String,
}

/// The handle of the recorder thread.
pub struct Recorder {
    tx: Option<Sender<Event>>,
    done: mpsc::Receiver<()>,
}

impl Recorder {
    pub fn send(&self, e: Event) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(e);
        }
    }

    /// Lets the thread post what is queued, for at most `timeout`: the last events
    /// (handing over, stepping down) are written just before the process exits.
    pub fn finish(mut self, timeout: std::time::Duration) {
        self.tx = None;
        let _ = self.done.recv_timeout(timeout);
    }
}

/// Starts the recorder thread. When `enabled` is false (the permission check found
/// events forbidden, and said so) events are dropped quietly.
pub fn start(client: Client, enabled: bool, subject: Subject) -> Recorder {
    let (tx, rx) = mpsc::channel::<Event>();
    let (done_tx, done) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("events".into())
        .spawn(move || {
            let mut seen: HashMap<(&'static str, String), (String, u64)> = HashMap::new();
            let path = format!("/api/v1/namespaces/{}/events", subject.namespace);
            let mut enabled = enabled;
            for e in rx {
                if !enabled {
                    continue;
                }
                let now = rfc3339(SystemTime::now());
                let key = (e.reason, e.message.clone());
                let result = match seen.get(&key) {
                    Some((name, count)) => client
                        .merge_patch(
                            &format!("{path}/{name}"),
                            &json!({"count": count + 1, "lastTimestamp": now}),
                        )
                        .map(|_| (name.clone(), count + 1)),
                    None => {
                        let name = format!(
                            "{}.{:x}",
                            subject.pod,
                            SystemTime::now()
                                .duration_since(SystemTime::UNIX_EPOCH)
                                .map(|d| d.as_nanos())
                                .unwrap_or(0)
                        );
                        client
                            .post(&path, &body(&subject, &name, &e, &now))
                            .map(|_| (name, 1))
                    }
                };
                match result {
                    Ok(entry) => {
                        seen.insert(key, entry);
                    }
                    Err(KubeError::Forbidden(m)) => {
                        log::warn!("cannot record Kubernetes events ({m}); going on without them");
                        enabled = false;
                    }
                    Err(err) => log::debug!("event {} not recorded: {err}", e.reason),
                }
            }
            let _ = done_tx.send(());
        });
    if let Err(e) = spawned {
        log::warn!("cannot start the event recorder: {e}");
    }
    Recorder { tx: Some(tx), done }
}

fn rfc3339(t: SystemTime) -> String {
    format!("{}Z", &micro_time(t)[..19])
}

fn body(s: &Subject, name: &str, e: &Event, now: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": s.namespace},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": s.pod,
                           "namespace": s.namespace, "uid": s.uid},
        "reason": e.reason,
        "message": e.message,
        "type": e.kind,
        "count": 1,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "source": {"component": "leader-labeler", "host": s.pod},
        "reportingComponent": "leader-labeler",
        "reportingInstance": s.pod,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_body() {
        let s = Subject {
            namespace: "ns".into(),
            pod: "p".into(),
            uid: "u".into(),
        };
        let e = Event {
            reason: "BecameLeader",
            message: "m".into(),
            kind: "Normal",
        };
        let b = body(&s, "p.1", &e, "2026-01-01T00:00:00Z");
        assert_eq!(b["involvedObject"]["uid"], "u");
        assert_eq!(b["count"], 1);
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }
}
