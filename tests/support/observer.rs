//! An independent witness: watches every pod of the namespace for the whole test and
//! records, after each event (each resourceVersion), which pods carry `is-leader=true`.
//! Two at once is a failure. It also records leaderless gaps, and lets a test wait for a
//! condition as an event instead of sleeping.

use super::namespace::{Namespace, LEADER_KEY};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Default)]
pub struct PodView {
    pub labels: BTreeMap<String, String>,
    pub ready: bool,
    pub deleting: bool,
    pub resource_version: String,
}

#[derive(Debug, Default)]
pub struct State {
    pub pods: BTreeMap<String, PodView>,
    /// Every change of the leader set: when it was seen, at which resourceVersion.
    pub history: Vec<(Instant, String, Vec<String>)>,
    pub violations: Vec<String>,
    pub events: u64,
    listed: bool,
}

impl State {
    pub fn leaders(&self) -> Vec<String> {
        self.pods
            .iter()
            .filter(|(_, p)| p.labels.get(LEADER_KEY).map(String::as_str) == Some("true"))
            .map(|(n, _)| n.clone())
            .collect()
    }

    pub fn leader(&self) -> Option<String> {
        match self.leaders().as_slice() {
            [one] => Some(one.clone()),
            _ => None,
        }
    }

    pub fn label(&self, pod: &str, key: &str) -> Option<&str> {
        self.pods.get(pod)?.labels.get(key).map(String::as_str)
    }

    fn record(&mut self, rv: &str) {
        let leaders = self.leaders();
        if leaders.len() > 1 {
            self.violations
                .push(format!("two leaders at resourceVersion {rv}: {leaders:?}"));
        }
        if self.history.last().is_none_or(|(_, _, l)| *l != leaders) {
            self.history.push((Instant::now(), rv.to_string(), leaders));
        }
    }

    /// When the current leaderless spell began (None while someone leads).
    pub fn leaderless_since(&self) -> Option<Instant> {
        match self.history.last() {
            Some((t, _, l)) if l.is_empty() && self.history.len() > 1 => Some(*t),
            _ => None,
        }
    }

    /// Spans during which two or more pods were labeled leader.
    pub fn overlaps(&self) -> Vec<Duration> {
        let mut out = vec![];
        let mut start: Option<Instant> = None;
        for (t, _, leaders) in &self.history {
            match (leaders.len() > 1, start) {
                (true, None) => start = Some(*t),
                (false, Some(s)) => {
                    out.push(*t - s);
                    start = None;
                }
                _ => {}
            }
        }
        out
    }

    /// Closed leaderless intervals after the first leader appeared: (start, end).
    pub fn gaps(&self) -> Vec<(Instant, Instant)> {
        let mut gaps = vec![];
        let mut had_leader = false;
        let mut start = None;
        for (t, _, leaders) in &self.history {
            if leaders.is_empty() {
                if had_leader && start.is_none() {
                    start = Some(*t);
                }
            } else {
                had_leader = true;
                if let Some(s) = start.take() {
                    gaps.push((s, *t));
                }
            }
        }
        gaps
    }
}

fn pod_view(obj: &Value) -> (String, PodView) {
    let meta = &obj["metadata"];
    let labels = meta["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default();
    let ready = obj["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    });
    (
        meta["name"].as_str().unwrap_or("").to_string(),
        PodView {
            labels,
            ready,
            deleting: !meta["deletionTimestamp"].is_null(),
            resource_version: meta["resourceVersion"].as_str().unwrap_or("").to_string(),
        },
    )
}

pub struct Observer {
    shared: Arc<(Mutex<State>, Condvar)>,
    stop: Arc<AtomicBool>,
    /// Whether dropping it asserts the no-two-leaders rule (off when measuring others).
    strict: bool,
}

impl Observer {
    pub fn start(ns: &Namespace) -> Observer {
        let shared = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st, api) = (shared.clone(), stop.clone(), ns.api.clone());
        let path = format!("/api/v1/namespaces/{}/pods", ns.name);
        std::thread::spawn(move || {
            let (lock, cv) = &*s;
            api.list_watch(
                &path,
                &st,
                |items| {
                    let mut state = lock.lock().unwrap();
                    state.pods = items.iter().map(pod_view).collect();
                    state.record("list");
                    state.listed = true;
                    cv.notify_all();
                },
                |kind, obj| {
                    let (name, view) = pod_view(obj);
                    let at = view.resource_version.clone();
                    let mut state = lock.lock().unwrap();
                    state.events += 1;
                    if kind == "DELETED" {
                        state.pods.remove(&name);
                    } else {
                        state.pods.insert(name, view);
                    }
                    state.record(&at);
                    cv.notify_all();
                },
            );
        });
        let o = Observer {
            shared,
            stop,
            strict: true,
        };
        o.wait_until(Duration::from_secs(10), "observer listed the pods", |s| {
            s.listed
        });
        o
    }

    /// Waits until `pred` holds; returns the moment it was first seen to hold. Panics
    /// with the state after `timeout`.
    pub fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&State) -> bool,
    ) -> Instant {
        let (lock, cv) = &*self.shared;
        let deadline = Instant::now() + timeout;
        let mut state = lock.lock().unwrap();
        loop {
            if pred(&state) {
                return Instant::now();
            }
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for: {what}\nstate: {:#?}",
                    state.pods
                );
            }
            state = cv.wait_timeout(state, deadline - now).unwrap().0;
        }
    }

    /// Waits until exactly one pod is leader and every other labeled pod says false.
    pub fn wait_for_single_leader(&self, timeout: Duration) -> String {
        self.wait_until(timeout, "exactly one leader, the rest false", |s| {
            s.leader().is_some() && s.pods.values().all(|p| p.labels.contains_key(LEADER_KEY))
        });
        self.leader().unwrap()
    }

    pub fn with<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.shared.0.lock().unwrap())
    }

    pub fn leader(&self) -> Option<String> {
        self.with(State::leader)
    }

    pub fn assert_never_two_leaders(&self) {
        let v = self.with(|s| s.violations.clone());
        assert!(v.is_empty(), "the no-two-leaders rule was broken: {v:#?}");
    }

    pub fn gaps(&self) -> Vec<(Instant, Instant)> {
        self.with(State::gaps)
    }

    /// Waits for any new pod event after `seen` events; returns the new count.
    pub fn next_event(&self, seen: u64, timeout: Duration) -> u64 {
        let (lock, cv) = &*self.shared;
        let state = lock.lock().unwrap();
        let (state, _) = cv
            .wait_timeout_while(state, timeout, |s| s.events <= seen)
            .unwrap();
        state.events
    }

    pub fn history_len(&self) -> usize {
        self.with(|s| s.history.len())
    }
}

impl Observer {
    /// Records violations without failing on drop: for measuring other implementations.
    pub fn lenient(mut self) -> Self {
        self.strict = false;
        self
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if self.strict && !std::thread::panicking() {
            self.assert_never_two_leaders();
        }
    }
}
