//! The API server every sidecar of the model talks to: one Lease (compare-and-swap on its
//! resourceVersion, as the real one), the pods (merge patches, conditional when they carry
//! a resourceVersion; one that changes nothing keeps it), and what the watches see of each
//! change. The world of `world.rs` holds the same rules for a single core; this one only
//! stores and answers, and leaves delivery (each sidecar's own streams, their lag) to the
//! model.

use super::super::labels::Keys;
use super::super::*;
use crate::api::types::lease_body;
use serde_json::json;

/// The Lease's name (and its annotations' prefix), as in `world.rs`.
pub const LEASE: &str = "my-app";

#[derive(Debug, Clone)]
pub struct Server {
    pub lease: Option<Lease>,
    pub pods: BTreeMap<String, Pod>,
    rv: u64,
    /// Counts pods created, for their uids (a pod recreated under its name gets a new one).
    uids: u64,
    /// The leadership key, to tell which pods the pod watches see.
    leader_key: String,
}

/// What the watches see of a change: every sidecar's Lease or pod stream gets it.
#[derive(Debug, Clone)]
pub enum Event {
    Lease(Observation),
    Pod(Observation),
}

impl Server {
    pub fn new(leader_key: &str) -> Server {
        Server {
            lease: None,
            pods: BTreeMap::new(),
            rv: 100,
            uids: 0,
            leader_key: leader_key.into(),
        }
    }

    fn next_rv(&mut self) -> String {
        self.rv += 1;
        self.rv.to_string()
    }

    /// A new pod, ready and unlabeled (its sidecar labels it).
    pub fn create_pod(&mut self, name: &str, grace: u64) {
        self.uids += 1;
        let pod = Pod {
            name: name.into(),
            uid: format!("uid-{name}-{}", self.uids),
            resource_version: self.next_rv(),
            ready: true,
            termination_grace_seconds: grace,
            ..Default::default()
        };
        self.pods.insert(name.into(), pod);
    }

    /// The pods the pod watches select (those carrying the leadership key).
    pub fn labeled(&self) -> Vec<Pod> {
        self.pods
            .values()
            .filter(|p| p.labels.contains_key(&self.leader_key))
            .cloned()
            .collect()
    }

    /// Carries out a sidecar's call.
    pub fn call(&mut self, a: &Action) -> (Outcome, Vec<Event>) {
        match a {
            Action::CreateLease(_) | Action::UpdateLease { .. } => self.write_lease(a),
            Action::GetLease => (Outcome::Lease(Ok(self.lease.clone())), vec![]),
            Action::Patch(p) => self.patch(p),
            Action::GetPod(name) => match self.pods.get(name) {
                Some(p) => (Outcome::Pod(Ok(p.clone())), vec![]),
                None => (Outcome::Pod(Err(KubeError::NotFound(name.clone()))), vec![]),
            },
            Action::ListPods => (Outcome::Pods(Ok(self.labeled())), vec![]),
            Action::Exit(_) => unreachable!("an exit is no call"),
        }
    }

    fn write_lease(&mut self, a: &Action) -> (Outcome, Vec<Event>) {
        let (base, record) = match a {
            Action::UpdateLease { base, record } => {
                match &self.lease {
                    Some(cur) if cur.resource_version == base.resource_version => {}
                    Some(_) => {
                        return (
                            Outcome::Lease(Err(KubeError::Conflict("stale".into()))),
                            vec![],
                        )
                    }
                    None => {
                        return (
                            Outcome::Lease(Err(KubeError::NotFound("gone".into()))),
                            vec![],
                        )
                    }
                }
                (Some(base), record)
            }
            Action::CreateLease(record) if self.lease.is_some() => {
                let _ = record;
                return (
                    Outcome::Lease(Err(KubeError::Conflict("exists".into()))),
                    vec![],
                );
            }
            Action::CreateLease(record) => (None, record),
            _ => unreachable!(),
        };
        // As the real server stores it: the body the client sent, a new version.
        let body = lease_body(LEASE, "ns", base, record);
        let l = self.store_lease(body);
        (
            Outcome::Lease(Ok(Some(l.clone()))),
            vec![Self::lease_event(Some(l))],
        )
    }

    fn store_lease(&mut self, mut body: serde_json::Value) -> Lease {
        body["metadata"]["resourceVersion"] = json!(self.next_rv());
        let l = Lease::from_json(&body).expect("a Lease");
        self.lease = Some(l.clone());
        l
    }

    fn lease_event(l: Option<Lease>) -> Event {
        Event::Lease(Observation::Lease(l))
    }

    /// A person edits the Lease (`kubectl edit`): `f` gets the record and the metadata.
    /// None: it did not exist.
    pub fn edit_lease(
        &mut self,
        f: impl FnOnce(&mut LeaseRecord, &mut serde_json::Value),
    ) -> Vec<Event> {
        let (mut record, mut metadata) = match &self.lease {
            Some(l) => (l.record.clone(), l.metadata.clone()),
            None => (
                LeaseRecord::default(),
                json!({"name": LEASE, "namespace": "ns"}),
            ),
        };
        f(&mut record, &mut metadata);
        let base = Lease {
            resource_version: String::new(),
            metadata,
            record: record.clone(),
        };
        let body = lease_body(LEASE, "ns", Some(&base), &record);
        let l = self.store_lease(body);
        vec![Self::lease_event(Some(l))]
    }

    pub fn delete_lease(&mut self) -> Vec<Event> {
        self.lease = None;
        vec![Self::lease_event(None)]
    }

    /// A merge patch: conditional on the resourceVersion when it carries one; a patch
    /// that changes nothing keeps the resourceVersion, as the real server's does.
    fn patch(&mut self, p: &Patch) -> (Outcome, Vec<Event>) {
        let Some(cur) = self.pods.get(&p.pod).cloned() else {
            return (
                Outcome::Pod(Err(KubeError::NotFound(p.pod.clone()))),
                vec![],
            );
        };
        if p.precondition
            .as_ref()
            .is_some_and(|rv| rv != &cur.resource_version)
        {
            return (
                Outcome::Pod(Err(KubeError::Conflict("modified".into()))),
                vec![],
            );
        }
        let mut new = cur.clone();
        for (k, v) in &p.labels {
            match v {
                Some(v) => new.labels.insert(k.clone(), v.clone()),
                None => new.labels.remove(k),
            };
        }
        for (k, v) in &p.annotations {
            new.annotations.insert(k.clone(), v.clone());
        }
        if new == cur {
            return (Outcome::Pod(Ok(new)), vec![]);
        }
        let events = self.store_pod(&cur, new.clone());
        let stored = self.pods[&p.pod].clone();
        (Outcome::Pod(Ok(stored)), events)
    }

    /// Someone else changes a pod (the kubelet's readiness, a deletion).
    pub fn update_pod(&mut self, name: &str, f: impl FnOnce(&mut Pod)) -> Vec<Event> {
        let cur = self.pods[name].clone();
        let mut new = cur.clone();
        f(&mut new);
        self.store_pod(&cur, new)
    }

    fn store_pod(&mut self, cur: &Pod, mut new: Pod) -> Vec<Event> {
        new.resource_version = self.next_rv();
        self.pods.insert(new.name.clone(), new.clone());
        let key = &self.leader_key;
        if new.labels.contains_key(key) {
            vec![Event::Pod(Observation::PodChanged(new))]
        } else if cur.labels.contains_key(key) {
            // No longer selected: the watch says it is gone.
            vec![Event::Pod(Observation::PodGone(new))]
        } else {
            vec![]
        }
    }

    /// The pod object goes away (its containers have stopped).
    pub fn remove_pod(&mut self, name: &str) -> Vec<Event> {
        let Some(mut p) = self.pods.remove(name) else {
            return vec![];
        };
        if !p.labels.contains_key(&self.leader_key) {
            return vec![];
        }
        p.resource_version = self.next_rv();
        vec![Event::Pod(Observation::PodGone(p))]
    }

    /// The pods labeled leader, as the Service would select them.
    pub fn leaders(&self, keys: &Keys) -> Vec<String> {
        self.pods
            .values()
            .filter(|p| keys.says_leader(p))
            .map(|p| p.name.clone())
            .collect()
    }
}
