//! The in-memory API server the core's tests drive: one `Core` under test, the Lease and
//! the pods as the server holds them, and the faults real clusters produce, so every
//! fault the end-to-end suite finds can also be written down as a millisecond-exact test:
//!
//! - a write applied by the server whose answer never comes back (`lose_next`);
//! - a write held in the network and applied later (`delay_next`, `deliver_delayed`), and
//!   a write of another process arriving late (`apply_foreign`);
//! - the Lease and pod streams delivered out of step (`hold_lease_stream`,
//!   `hold_pod_stream`, then `flush_*`);
//! - calls that fail outright (`fail_next`).
//!
//! Merge patches behave like the real server's: a patch that changes nothing keeps the
//! resourceVersion. After every write, `check_one_leader` holds the product's promise.

use super::labels::Keys;
use super::*;
use serde_json::json;
use std::collections::VecDeque;
use std::time::SystemTime;

pub const ME: &str = "pod-b";

pub fn settings() -> Settings {
    Settings {
        me: ME.into(),
        keys: Keys {
            leader: "e/is-leader".into(),
            participant: "e/participant".into(),
            election: "my-app".into(),
            leader_value: "true".into(),
            follower_value: "false".into(),
        },
        lease_duration: Duration::from_secs(15),
        renew_deadline: Duration::from_secs(10),
        retry_period: Duration::from_secs(2),
        resync_period: Duration::from_secs(5),
        prefer_zone: None,
        failback_after: Some(Duration::from_secs(30)),
    }
}

/// Which calls a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Calls {
    LeaseWrites,
    /// Patches of this pod.
    PatchOf(&'static str),
    Any,
}

impl Calls {
    fn matches(self, a: &Action) -> bool {
        match self {
            Calls::Any => true,
            Calls::LeaseWrites => matches!(a, Action::CreateLease(_) | Action::UpdateLease { .. }),
            Calls::PatchOf(pod) => matches!(a, Action::Patch(p) if p.pod == pod),
        }
    }
}

/// A test clock and a core, plus the API server's state so actions are carried out the
/// way the real one would carry them out.
pub struct World {
    pub core: Core,
    pub t0: Instant,
    pub now: Now,
    pub lease: Option<Lease>,
    pub pods: BTreeMap<String, Pod>,
    /// Annotations by pod (the fence's stamp lives there).
    pub annotations: BTreeMap<String, BTreeMap<String, String>>,
    pub rv: u64,
    /// Every write the core made, in order.
    pub writes: Vec<String>,
    /// Make the next N calls fail with this error (not applied).
    pub fail: Option<(u32, KubeError)>,
    /// Which calls `fail` applies to.
    fail_calls: Calls,
    /// Apply the next N matching writes, then lose the answer.
    lose: Option<(u32, Calls)>,
    /// Hold the next matching write in the network: the core sees a timeout, the server
    /// applies it when `deliver_delayed` is called.
    delay: Option<Calls>,
    delayed: Vec<Action>,
    /// Watch streams: events wait here while held.
    lease_stream: VecDeque<Observation>,
    pod_stream: VecDeque<Observation>,
    hold_lease: bool,
    hold_pods: bool,
}

impl World {
    pub fn new() -> World {
        World::with(settings())
    }

    pub fn with(settings: Settings) -> World {
        let t0 = Instant::now();
        let mut w = World {
            core: Core::new(settings, Jitter::new(7)),
            t0,
            now: Now {
                mono: t0,
                wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_323_045),
            },
            lease: None,
            pods: BTreeMap::new(),
            annotations: BTreeMap::new(),
            rv: 100,
            writes: vec![],
            fail: None,
            fail_calls: Calls::Any,
            lose: None,
            delay: None,
            delayed: vec![],
            lease_stream: VecDeque::new(),
            pod_stream: VecDeque::new(),
            hold_lease: false,
            hold_pods: false,
        };
        w.add_pod(ME, true, &[]);
        w
    }

    /// Our pod carries the leadership label before boot (as after an earlier run).
    pub fn label_me(&mut self, value: &str) {
        let me = self.pods.get_mut(ME).expect("own pod");
        me.labels.insert("e/is-leader".into(), value.into());
        me.annotations
            .insert("e/is-leader".into(), "my-app/".into());
    }

    pub fn next_rv(&mut self) -> String {
        self.rv += 1;
        self.rv.to_string()
    }

    /// A pod; labeled with the leadership key, it carries the election's mark as a
    /// sidecar of this version writes it.
    pub fn add_pod(&mut self, name: &str, ready: bool, labels: &[(&str, &str)]) {
        let rv = self.next_rv();
        let mut p = Pod {
            name: name.into(),
            uid: format!("uid-{name}"),
            resource_version: rv,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ready,
            termination_grace_seconds: 30,
            ..Default::default()
        };
        if p.labels.contains_key("e/is-leader") {
            p.annotations.insert("e/is-leader".into(), "my-app/".into());
        }
        self.pods.insert(name.into(), p);
    }

    /// Sets the clock to `ms` after the start.
    pub fn at(&mut self, ms: u64) {
        let target = self.t0 + Duration::from_millis(ms);
        let delta = target - self.now.mono;
        self.now.mono = target;
        self.now.wall += delta;
    }

    pub fn feed(&mut self, obs: Observation) {
        self.core.observe(obs, self.now);
    }

    /// Start-up observations: own pod read, lease listed, labeled pods listed.
    pub fn boot(&mut self) {
        let own = self.pods[ME].clone();
        self.feed(Observation::OwnPod(own));
        self.feed(Observation::Lease(self.lease.clone()));
        let labeled = self.labeled();
        self.feed(Observation::PodsListed(labeled));
    }

    /// Booted alone: it created the lease and leads.
    pub fn leading() -> World {
        let mut w = World::new();
        w.boot();
        w.run();
        w
    }

    /// Booted as a follower of `leader`, a ready participant labeled leader.
    pub fn following(leader: &str, transitions: i64) -> World {
        let mut w = World::new();
        w.add_pod(
            leader,
            true,
            &[("e/is-leader", "true"), ("e/participant", "true")],
        );
        w.set_lease(leader, transitions);
        w.boot();
        w.run();
        w
    }

    pub fn labeled(&self) -> Vec<Pod> {
        self.pods
            .values()
            .filter(|p| p.labels.contains_key("e/is-leader"))
            .cloned()
            .collect()
    }

    /// Runs actions until the core waits; returns them. The core learns of its own
    /// writes from their answers, as the real one does; watch events of other writers
    /// come through the streams.
    pub fn run(&mut self) -> Vec<Action> {
        let mut done = vec![];
        while let Some(a) = self.core.next_action(self.now) {
            assert!(done.len() < 50, "runaway actions: {done:?}");
            done.push(a.clone());
            if let Action::Exit(_) = a {
                break;
            }
            let outcome = self.execute(&a);
            self.core.complete(outcome, self.now);
            // Then the watches deliver the write, unless held.
            if !self.hold_lease {
                self.flush_lease_stream();
            }
            if !self.hold_pods {
                self.flush_pod_stream();
            }
        }
        done
    }

    pub fn fail_next(&mut self, n: u32, e: KubeError) {
        self.fail_next_of(n, Calls::Any, e);
    }

    /// The next `n` calls of this kind fail with `e`, not applied.
    pub fn fail_next_of(&mut self, n: u32, calls: Calls, e: KubeError) {
        self.fail = Some((n, e));
        self.fail_calls = calls;
    }

    /// The next `n` writes of this kind are applied and their answers lost.
    pub fn lose_next(&mut self, n: u32, calls: Calls) {
        self.lose = Some((n, calls));
    }

    /// The next write of this kind is held in the network (the core times out).
    pub fn delay_next(&mut self, calls: Calls) {
        self.delay = Some(calls);
    }

    /// The held writes reach the server now; returns whether each was applied.
    pub fn deliver_delayed(&mut self) -> Vec<bool> {
        let held = std::mem::take(&mut self.delayed);
        held.iter()
            .map(|a| match self.apply(a) {
                Outcome::Lease(r) => r.is_ok(),
                Outcome::Pod(r) => r.is_ok(),
                Outcome::Pods(r) => r.is_ok(),
            })
            .collect()
    }

    /// Another process's write reaches the server (e.g. an old leader's delayed claim).
    pub fn apply_foreign(&mut self, p: &Patch) -> bool {
        matches!(self.apply_patch(p, false), Outcome::Pod(Ok(_)))
    }

    pub fn hold_lease_stream(&mut self, on: bool) {
        self.hold_lease = on;
        if !on {
            self.flush_lease_stream();
        }
    }

    pub fn hold_pod_stream(&mut self, on: bool) {
        self.hold_pods = on;
        if !on {
            self.flush_pod_stream();
        }
    }

    pub fn flush_lease_stream(&mut self) {
        while let Some(o) = self.lease_stream.pop_front() {
            self.feed(o);
        }
    }

    pub fn flush_pod_stream(&mut self) {
        while let Some(o) = self.pod_stream.pop_front() {
            self.feed(o);
        }
    }

    fn take_failure(&mut self, a: &Action) -> Option<KubeError> {
        if !self.fail_calls.matches(a) {
            return None;
        }
        match &mut self.fail {
            Some((n, e)) if *n > 0 => {
                *n -= 1;
                Some(e.clone())
            }
            _ => None,
        }
    }

    pub fn execute(&mut self, a: &Action) -> Outcome {
        if let Some(e) = self.take_failure(a) {
            return match a {
                Action::ListPods => Outcome::Pods(Err(e)),
                Action::Patch(_) | Action::GetPod(_) => Outcome::Pod(Err(e)),
                _ => Outcome::Lease(Err(e)),
            };
        }
        let timeout = || KubeError::Transport("timeout: no answer".into());
        if self.delay.is_some_and(|c| c.matches(a)) {
            self.delay = None;
            self.delayed.push(a.clone());
            return match a {
                Action::Patch(_) => Outcome::Pod(Err(timeout())),
                _ => Outcome::Lease(Err(timeout())),
            };
        }
        let outcome = self.apply(a);
        match &mut self.lose {
            Some((n, c)) if *n > 0 && c.matches(a) => {
                *n -= 1;
                match outcome {
                    Outcome::Pod(_) => Outcome::Pod(Err(timeout())),
                    _ => Outcome::Lease(Err(timeout())),
                }
            }
            _ => outcome,
        }
    }

    /// Carries out an action as the server would, and checks the promise.
    fn apply(&mut self, a: &Action) -> Outcome {
        match a {
            Action::CreateLease(record) | Action::UpdateLease { record, .. } => {
                if let Action::UpdateLease { base, .. } = a {
                    match &self.lease {
                        Some(cur) if cur.resource_version == base.resource_version => {}
                        Some(_) => return Outcome::Lease(Err(KubeError::Conflict("stale".into()))),
                        None => return Outcome::Lease(Err(KubeError::NotFound("gone".into()))),
                    }
                } else if self.lease.is_some() {
                    return Outcome::Lease(Err(KubeError::Conflict("exists".into())));
                }
                self.writes
                    .push(format!("lease holder={:?}", record.holder));
                let rv = self.next_rv();
                // As the real server stores it: the body the client sent, new version.
                let base = match a {
                    Action::UpdateLease { base, .. } => Some(base),
                    _ => None,
                };
                let mut body = crate::api::types::lease_body("my-app", "ns", base, record);
                body["metadata"]["resourceVersion"] = json!(rv);
                let l = Lease::from_json(&body).expect("a Lease");
                self.lease = Some(l.clone());
                self.lease_stream
                    .push_back(Observation::Lease(Some(l.clone())));
                Outcome::Lease(Ok(Some(l)))
            }
            Action::GetLease => Outcome::Lease(Ok(self.lease.clone())),
            Action::Patch(p) => self.apply_patch(p, true),
            Action::GetPod(name) => match self.pods.get(name) {
                Some(p) => Outcome::Pod(Ok(p.clone())),
                None => Outcome::Pod(Err(KubeError::NotFound(name.clone()))),
            },
            Action::ListPods => Outcome::Pods(Ok(self.labeled())),
            Action::Exit(_) => unreachable!(),
        }
    }

    /// A merge patch: conditional on the resourceVersion when it carries one; a patch
    /// that changes nothing keeps the resourceVersion, as the real server's does.
    fn apply_patch(&mut self, p: &Patch, ours: bool) -> Outcome {
        let Some(cur) = self.pods.get(&p.pod).cloned() else {
            return Outcome::Pod(Err(KubeError::NotFound(p.pod.clone())));
        };
        if p.precondition
            .as_ref()
            .is_some_and(|rv| rv != &cur.resource_version)
        {
            return Outcome::Pod(Err(KubeError::Conflict("modified".into())));
        }
        let mut new = cur.clone();
        for (k, v) in &p.labels {
            match v {
                Some(v) => new.labels.insert(k.clone(), v.clone()),
                None => new.labels.remove(k),
            };
        }
        let notes = self.annotations.entry(p.pod.clone()).or_default();
        let mut changed = new.labels != cur.labels;
        for (k, v) in &p.annotations {
            changed |= notes.insert(k.clone(), v.clone()).as_ref() != Some(v);
            new.annotations.insert(k.clone(), v.clone());
        }
        if ours && p.labels.is_empty() {
            self.writes.push(format!("{} mark", p.pod));
        } else if ours {
            self.writes.push(format!(
                "{} {}",
                p.pod,
                p.labels
                    .iter()
                    .map(|(k, v)| format!(
                        "{}={}",
                        k.trim_start_matches("e/"),
                        v.as_deref().unwrap_or("-")
                    ))
                    .collect::<Vec<_>>()
                    .join(",")
            ));
        }
        if changed {
            new.resource_version = self.next_rv();
            self.pods.insert(p.pod.clone(), new.clone());
            self.check_one_leader();
            if ours {
                // Delivered after the answer (see `run`).
                self.pod_stream
                    .push_back(Self::pod_observation(new.clone()));
            } else {
                self.pod_event(new.clone());
            }
        }
        Outcome::Pod(Ok(new))
    }

    fn pod_observation(p: Pod) -> Observation {
        if p.labels.contains_key("e/is-leader") {
            Observation::PodChanged(p)
        } else {
            Observation::PodGone(p)
        }
    }

    fn pod_event(&mut self, p: Pod) {
        let obs = Self::pod_observation(p);
        if self.hold_pods {
            self.pod_stream.push_back(obs);
        } else {
            self.feed(obs);
        }
    }

    /// The Lease as the server holds it reaches the core through the (maybe held) watch.
    pub fn lease_event(&mut self) {
        let obs = Observation::Lease(self.lease.clone());
        if self.hold_lease {
            self.lease_stream.push_back(obs);
        } else {
            self.feed(obs);
        }
    }

    pub fn check_one_leader(&self) {
        let leaders: Vec<_> = self
            .pods
            .values()
            .filter(|p| self.core.settings.keys.says_leader(p))
            // Pods of another election that shares the label key have leaders of their own.
            .filter(|p| {
                labels::election_of(&self.core.settings.keys, p).is_none_or(|e| e == "my-app")
            })
            .map(|p| p.name.clone())
            .collect();
        assert!(leaders.len() <= 1, "two leaders: {leaders:?}");
    }

    /// The election mark (or fence stamp) on a pod.
    pub fn mark(&self, pod: &str) -> Option<&str> {
        self.pods[pod]
            .annotations
            .get("e/is-leader")
            .map(String::as_str)
    }

    pub fn label(&self, pod: &str, key: &str) -> Option<String> {
        self.pods[pod].labels.get(&format!("e/{key}")).cloned()
    }

    /// Another process (or a person) writes the Lease; the watch delivers it.
    pub fn set_lease(&mut self, holder: &str, transitions: i64) {
        self.set_lease_silently(holder, transitions);
        self.lease_event();
    }

    /// Like `set_lease`, with any duration.
    pub fn set_lease_for(&mut self, holder: &str, transitions: i64, seconds: i64) {
        self.set_lease_silently(holder, transitions);
        if let Some(l) = &mut self.lease {
            l.record.duration_seconds = seconds;
        }
        self.lease_event();
    }

    /// A release as a sidecar writes it: no holder, one second.
    pub fn release_lease(&mut self, transitions: i64) {
        self.set_lease_for("", transitions, 1);
    }

    /// The Lease deleted (by hand).
    pub fn delete_lease(&mut self) {
        self.lease = None;
        self.lease_event();
    }

    /// The Lease changes at the server; no watch event (yet).
    pub fn set_lease_silently(&mut self, holder: &str, transitions: i64) {
        let rv = self.next_rv();
        self.lease = Some(Lease {
            resource_version: rv.clone(),
            metadata: json!({"name": "my-app", "namespace": "ns", "resourceVersion": rv}),
            record: LeaseRecord {
                holder: holder.into(),
                duration_seconds: 15,
                acquire_time: Some("t0".into()),
                renew_time: Some(format!("t{rv}")),
                transitions,
                handover_to: String::new(),
            },
        });
    }

    /// Forgets the notices so far.
    pub fn take_notices_for_test(&mut self) {
        self.core.take_notices();
    }

    /// An operator annotates the Lease (`kubectl annotate lease`); the watch delivers it.
    pub fn annotate_lease(&mut self, key: &str, value: &str) {
        let rv = self.next_rv();
        let l = self.lease.as_mut().expect("a Lease");
        l.metadata["annotations"][key] = json!(value);
        l.metadata["resourceVersion"] = json!(rv);
        l.resource_version = rv;
        self.lease_event();
    }

    /// Another ready participant joins, labeled follower; the watch delivers it.
    pub fn join(&mut self, name: &str) {
        self.add_pod(
            name,
            true,
            &[("e/is-leader", "false"), ("e/participant", "true")],
        );
        let p = self.pods[name].clone();
        self.feed(Observation::PodChanged(p));
    }

    /// Our pod is deleted with this grace period (seconds); the watch delivers it.
    pub fn delete_me(&mut self, grace: u64) {
        self.update_pod(ME, |p| {
            p.deleting = true;
            p.deletion_grace_seconds = Some(grace);
        });
    }

    /// Another process changes a pod; the watch delivers it.
    pub fn update_pod(&mut self, name: &str, f: impl FnOnce(&mut Pod)) {
        let mut p = self.pods[name].clone();
        f(&mut p);
        p.resource_version = self.next_rv();
        self.pods.insert(name.into(), p.clone());
        self.check_one_leader();
        self.pod_event(p);
    }
}
