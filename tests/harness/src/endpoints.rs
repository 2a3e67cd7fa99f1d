//! Watches the EndpointSlices of one Service, as a client of the Service would see them,
//! and records the set of ready endpoint addresses after every event. Two ready
//! addresses at once is recorded as a violation; windows with none are recorded as gaps.

use crate::namespace::Namespace;
use crate::wait::Watched;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct Endpoints {
    /// Slice name to its ready addresses.
    slices: BTreeMap<String, BTreeSet<String>>,
    pub history: Vec<(Instant, BTreeSet<String>)>,
    pub violations: Vec<String>,
    listed: bool,
}

impl Endpoints {
    pub fn ready(&self) -> BTreeSet<String> {
        self.slices.values().flatten().cloned().collect()
    }

    fn record(&mut self) {
        let ready = self.ready();
        if ready.len() > 1 {
            self.violations
                .push(format!("two ready endpoints: {ready:?}"));
        }
        if self.history.last().is_none_or(|(_, r)| *r != ready) {
            self.history.push((Instant::now(), ready));
        }
    }

    /// Closed windows with no ready endpoint, after the first one appeared.
    pub fn gaps(&self) -> Vec<Duration> {
        let mut out = vec![];
        let mut seen = false;
        let mut start = None;
        for (t, r) in &self.history {
            if r.is_empty() {
                if seen && start.is_none() {
                    start = Some(*t);
                }
            } else {
                seen = true;
                if let Some(s) = start.take() {
                    out.push(*t - s);
                }
            }
        }
        out
    }
}

fn ready_addresses(slice: &Value) -> BTreeSet<String> {
    slice["endpoints"]
        .as_array()
        .map(|eps| {
            eps.iter()
                .filter(|e| e["conditions"]["ready"] != false)
                .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
                .filter_map(|a| a.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

pub struct EndpointWatcher {
    shared: Arc<Watched<Endpoints>>,
    stop: Arc<AtomicBool>,
}

impl EndpointWatcher {
    pub fn start(ns: &Namespace, service: &str) -> EndpointWatcher {
        let shared = Arc::new(Watched::new(Endpoints::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st, api) = (shared.clone(), stop.clone(), ns.api.clone());
        let path = format!(
            "/apis/discovery.k8s.io/v1/namespaces/{}/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3D{service}",
            ns.name
        );
        std::thread::spawn(move || {
            let name = |o: &Value| o["metadata"]["name"].as_str().unwrap_or("").to_string();
            api.list_watch(
                &path,
                &st,
                |items| {
                    s.update(|e| {
                        e.slices = items
                            .iter()
                            .map(|i| (name(i), ready_addresses(i)))
                            .collect();
                        e.record();
                        e.listed = true;
                    })
                },
                |kind, obj| {
                    s.update(|e| {
                        if kind == "DELETED" {
                            e.slices.remove(&name(obj));
                        } else {
                            e.slices.insert(name(obj), ready_addresses(obj));
                        }
                        e.record();
                    })
                },
            );
        });
        let w = EndpointWatcher { shared, stop };
        w.wait_until(Duration::from_secs(10), "endpoint watcher listed", |e| {
            e.listed
        });
        w
    }

    pub fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Endpoints) -> bool,
    ) -> Instant {
        self.shared.wait_until_showing(
            what,
            timeout,
            |e| pred(e).then(Instant::now),
            |e| format!("ready endpoints: {:?}", e.ready()),
        )
    }

    /// Waits until the only ready endpoint is `ip`.
    pub fn wait_for_only(&self, ip: &str, timeout: Duration) -> Instant {
        self.wait_until(timeout, &format!("only {ip} ready"), |e| {
            let r = e.ready();
            r.len() == 1 && r.contains(ip)
        })
    }

    pub fn with<T>(&self, f: impl FnOnce(&Endpoints) -> T) -> T {
        self.shared.read(f)
    }
}

impl Drop for EndpointWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
