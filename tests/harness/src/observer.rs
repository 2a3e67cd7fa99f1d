//! An independent witness: watches every pod of the namespace for the whole test and
//! records, after each event (each resourceVersion), which pods carry `is-leader=true`.
//! Two at once is a failure. It also records leaderless gaps, and lets a test wait for a
//! condition as an event instead of sleeping.
//!
//! ```ignore
//! let observer = Observer::start(&ns); // or Observer::start_for(&ns, "my-app/is-leader")
//! let leader = observer.wait_for_single_leader(Duration::from_secs(15));
//! observer.wait_until(Duration::from_secs(5), "pod-b leads", |s| s.leader().as_deref() == Some("pod-b"));
//! // dropping it asserts that two pods never carried the label at once
//! ```

use crate::namespace::{Namespace, LEADER_KEY};
use crate::wait::Watched;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One pod as last seen.
#[derive(Debug, Clone, Default)]
pub struct PodView {
    pub labels: BTreeMap<String, String>,
    pub ready: bool,
    pub deleting: bool,
    pub resource_version: String,
}

/// What the observer knows; predicates of `wait_until` get it.
#[derive(Debug, Default)]
pub struct State {
    /// The label that marks the leader (`my-app/is-leader`).
    pub key: String,
    pub pods: BTreeMap<String, PodView>,
    /// The leader set after every event that changed it: when it was seen (Instant), at
    /// which resourceVersion ("list" for a (re-)list), and the pods labeled `true`.
    /// Between two entries the set did not change.
    pub history: Vec<(Instant, String, Vec<String>)>,
    /// Every event after which two or more pods carried `key=true`.
    pub violations: Vec<String>,
    /// Watch events seen so far.
    pub events: u64,
    listed: bool,
}

impl State {
    /// Pods labeled `key=true` now.
    pub fn leaders(&self) -> Vec<String> {
        self.pods
            .iter()
            .filter(|(_, p)| p.labels.get(&self.key).map(String::as_str) == Some("true"))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The one pod labeled `key=true`, None when none or several are.
    pub fn leader(&self) -> Option<String> {
        match self.leaders().as_slice() {
            [one] => Some(one.clone()),
            _ => None,
        }
    }

    /// A label of a pod as last seen.
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

    /// Closed leaderless spells after the first leader appeared: (start, end).
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

/// A thread that lists and watches the namespace's pods for as long as it lives.
pub struct Observer {
    shared: Arc<Watched<State>>,
    stop: Arc<AtomicBool>,
    /// Whether dropping it asserts the no-two-leaders rule (off when measuring others).
    strict: bool,
}

impl Observer {
    /// Watches for `my-app/is-leader`; returns once the first list is in.
    pub fn start(ns: &Namespace) -> Observer {
        Self::start_for(ns, LEADER_KEY)
    }

    /// Watches for the leadership label `key`; returns once the first list is in.
    pub fn start_for(ns: &Namespace, key: &str) -> Observer {
        let state = State {
            key: key.to_string(),
            ..State::default()
        };
        let shared = Arc::new(Watched::new(state));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st, api) = (shared.clone(), stop.clone(), ns.api.clone());
        let path = format!("/api/v1/namespaces/{}/pods", ns.name);
        std::thread::spawn(move || {
            api.list_watch(
                &path,
                &st,
                |items| {
                    s.update(|state| {
                        state.pods = items.iter().map(pod_view).collect();
                        state.record("list");
                        state.listed = true;
                    })
                },
                |kind, obj| {
                    let (name, view) = pod_view(obj);
                    let at = view.resource_version.clone();
                    s.update(|state| {
                        state.events += 1;
                        if kind == "DELETED" {
                            state.pods.remove(&name);
                        } else {
                            state.pods.insert(name, view);
                        }
                        state.record(&at);
                    })
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

    /// Waits (woken by every event) until `pred` holds; returns the moment it was seen to
    /// hold. Panics after `timeout` naming `what`, with the pods' state.
    pub fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&State) -> bool,
    ) -> Instant {
        self.shared.wait_until_showing(
            what,
            timeout,
            |s| pred(s).then(Instant::now),
            |s| format!("state: {:#?}", s.pods),
        )
    }

    /// Waits until exactly one pod is leader and every other labeled pod says false.
    pub fn wait_for_single_leader(&self, timeout: Duration) -> String {
        self.wait_until(timeout, "exactly one leader, the rest false", |s| {
            s.leader().is_some() && s.pods.values().all(|p| p.labels.contains_key(&s.key))
        });
        self.leader().unwrap()
    }

    /// Waits until `pod` is the one pod labeled leader; returns when it was seen.
    pub fn wait_for_leader(&self, pod: &str, timeout: Duration) -> Instant {
        self.wait_until(timeout, &format!("{pod} leads"), |s| {
            s.leader().as_deref() == Some(pod)
        })
    }

    /// Runs `f` on the current state.
    pub fn with<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        self.shared.read(f)
    }

    /// The one pod labeled leader now, None when none or several are.
    pub fn leader(&self) -> Option<String> {
        self.with(State::leader)
    }

    /// A pod's labels as last seen (empty if the pod is unknown).
    pub fn labels(&self, pod: &str) -> BTreeMap<String, String> {
        self.with(|s| {
            s.pods
                .get(pod)
                .map(|p| p.labels.clone())
                .unwrap_or_default()
        })
    }

    /// Panics, listing each resourceVersion, if two pods were ever labeled leader at once.
    /// Dropping the observer checks this too (unless `lenient`).
    pub fn assert_never_two_leaders(&self) {
        let v = self.with(|s| s.violations.clone());
        assert!(v.is_empty(), "the no-two-leaders rule was broken: {v:#?}");
    }

    pub fn gaps(&self) -> Vec<(Instant, Instant)> {
        self.with(State::gaps)
    }

    /// Waits for any new pod event after `seen` events; returns the new count.
    pub fn next_event(&self, seen: u64, timeout: Duration) -> u64 {
        self.shared
            .try_wait_until(timeout, |s| (s.events > seen).then_some(s.events))
            .unwrap_or_else(|s| s.events)
    }

    /// Entries in the leader-set history.
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
