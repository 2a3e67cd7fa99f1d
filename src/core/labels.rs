//! Label planning: which pod to patch next, and with what, so that no two pods are ever
//! labeled leader at the API server.
//!
//! The order is the guarantee (the whole argument is in `core::safety`). A new leader
//! first fences every other pod in the election (an unconditional write of `false` plus
//! an annotation stamp unique to this takeover, which always changes the pod's
//! resourceVersion; the pod labeled `true` last, so a handover has no leaderless moment),
//! and only then claims `true` on its own pod. Every other patch carries the
//! resourceVersion the decision was based on, so a write delayed in the network fails
//! with 409 instead of undoing a newer leader's work: the fence makes any in-flight
//! `true` from an earlier leader stale. A pod that is not the leader never writes `false`
//! over its own `true` unless it is leaving: the next leader's fence does it, so an
//! outage or a failed renewal never causes a leaderless moment by itself.

use crate::api::types::Pod;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// The two label keys, plus the annotation key used for fencing and for the election
/// mark (the leadership key itself, in the annotations map: valid by construction).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    pub leader: String,
    pub participant: String,
    /// The election's name (the Lease's).
    pub election: String,
    /// The leadership label's values (`--leader-value`, `--follower-value`; `true` and
    /// `false` by default).
    pub leader_value: String,
    pub follower_value: String,
}

impl Keys {
    /// Whether the pod's leadership label says leader.
    pub fn says_leader(&self, pod: &Pod) -> bool {
        pod.label(&self.leader) == Some(self.leader_value.as_str())
    }

    /// The annotation value that marks a pod as this election's (see `election_of`).
    pub fn mark(&self) -> String {
        format!("{}/", self.election)
    }

    /// A fence's annotation value: the mark, then the new holder and the Lease's
    /// resourceVersion after its takeover, unique to that takeover.
    pub fn stamp(&self, holder: &str, lease_version: &str) -> String {
        format!("{}/{holder}:{lease_version}", self.election)
    }
}

/// One merge patch of one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patch {
    pub pod: String,
    /// The resourceVersion the decision was based on; None for the fence.
    pub precondition: Option<String>,
    /// Label key to value; None removes the label.
    pub labels: Vec<(String, Option<String>)>,
    pub annotations: Vec<(String, String)>,
    pub reason: &'static str,
}

impl Patch {
    /// The JSON merge patch body.
    pub fn body(&self) -> Value {
        // Inserts, not collect: collecting into a map sorts first, and every sort
        // instantiated costs kilobytes of the 2 MB binary.
        let mut labels = Map::new();
        for (k, v) in &self.labels {
            labels.insert(k.clone(), v.as_ref().map_or(Value::Null, |s| json!(s)));
        }
        let mut meta = json!({ "labels": labels });
        if !self.annotations.is_empty() {
            let mut a = Map::new();
            for (k, v) in &self.annotations {
                a.insert(k.clone(), json!(v));
            }
            meta["annotations"] = Value::Object(a);
        }
        if let Some(rv) = &self.precondition {
            meta["resourceVersion"] = json!(rv);
        }
        json!({ "metadata": meta })
    }
}

/// The next pod a new leader fences.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub pod: String,
    /// The annotation value: unique per takeover, so the write always changes the pod.
    pub stamp: String,
    /// The previous holder stopped renewing (dead or cut off): drop its participation
    /// too, so nobody hands over to it; a live sidecar puts the label back itself.
    pub drop_participation: bool,
}

/// This pod's standing in the election, as far as labels are concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Holds a lease that is surely its own and has waited out any rival. `fence`: the
    /// next pod to fence, until every other pod is done.
    Leader { fence: Option<Fence> },
    /// Not the leader. `keep_true`: leave an existing `true` for the next leader's fence
    /// (set unless this pod is leaving).
    NotLeader { keep_true: bool },
}

/// The election a pod belongs to, from the mark its own sidecar writes with its labels
/// (`<election>/`) or a fence of its election's leader left (`<election>/<holder>:<rv>`),
/// both under the leadership key in the annotations. None: unmarked (labeled by hand or
/// by an older version), counted as ours.
pub fn election_of<'p>(keys: &Keys, pod: &'p Pod) -> Option<&'p str> {
    let mark = pod.annotations.get(&keys.leader)?;
    mark.split_once('/').map(|(election, _)| election)
}

/// The next patch, or None when the labels are as they should be.
pub fn next_patch(
    keys: &Keys,
    own: &Pod,
    others: &BTreeMap<String, Pod>,
    standing: &Standing,
    participating: bool,
) -> Option<Patch> {
    if let Standing::Leader { fence: Some(f) } = standing {
        let mut labels = vec![(keys.leader.clone(), Some(keys.follower_value.clone()))];
        if f.drop_participation {
            labels.push((keys.participant.clone(), None));
        }
        return Some(Patch {
            pod: f.pod.clone(),
            precondition: None,
            labels,
            annotations: vec![(keys.leader.clone(), f.stamp.clone())],
            reason: if f.drop_participation {
                "fence the previous leader"
            } else {
                "fence"
            },
        });
    }
    if matches!(standing, Standing::Leader { .. }) {
        if let Some(p) = others
            .values()
            .find(|p| p.name != own.name && p.label(&keys.leader) != Some(&keys.follower_value))
        {
            return Some(Patch {
                pod: p.name.clone(),
                precondition: Some(p.resource_version.clone()),
                labels: vec![(keys.leader.clone(), Some(keys.follower_value.clone()))],
                annotations: vec![],
                reason: "mark follower",
            });
        }
    }
    let current = own.label(&keys.leader);
    let says_leader = keys.says_leader(own);
    let leader_value = match standing {
        Standing::Leader { .. } => keys.leader_value.as_str(),
        Standing::NotLeader { keep_true: true } if says_leader => keys.leader_value.as_str(),
        _ => keys.follower_value.as_str(),
    };
    let participant_value = participating.then(|| "true".to_string());
    let mut labels = Vec::new();
    if current != Some(leader_value) {
        labels.push((keys.leader.clone(), Some(leader_value.to_string())));
    }
    if own.label(&keys.participant).map(str::to_string) != participant_value {
        labels.push((keys.participant.clone(), participant_value));
    }
    // Our election's mark rides along, so that another election configured with the
    // same label key can tell this pod is not one of its own; a pod labeled by an older
    // version gets it on its own.
    let unmarked = election_of(keys, own) != Some(keys.election.as_str());
    if labels.is_empty() && !unmarked {
        return None;
    }
    let reason = if labels.is_empty() {
        "mark the election"
    } else if current == Some(leader_value) {
        "update participation"
    } else if leader_value == keys.leader_value {
        "claim leadership"
    } else if says_leader {
        "step down"
    } else {
        "label follower"
    };
    let mut annotations = vec![];
    if unmarked {
        annotations.push((keys.leader.clone(), keys.mark()));
    }
    Some(Patch {
        pod: own.name.clone(),
        precondition: Some(own.resource_version.clone()),
        labels,
        annotations,
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FOLLOWER: Standing = Standing::NotLeader { keep_true: true };

    fn keys() -> Keys {
        Keys {
            leader: "e/is-leader".into(),
            participant: "e/participant".into(),
            election: "my-app".into(),
            leader_value: "true".into(),
            follower_value: "false".into(),
        }
    }

    fn pod(name: &str, rv: &str, leader: Option<&str>, participant: bool) -> Pod {
        let mut p = Pod {
            name: name.into(),
            resource_version: rv.into(),
            ready: true,
            termination_grace_seconds: 30,
            ..Default::default()
        };
        if let Some(l) = leader {
            p.labels.insert("e/is-leader".into(), l.into());
            p.annotations.insert("e/is-leader".into(), "my-app/".into());
        }
        if participant {
            p.labels.insert("e/participant".into(), "true".into());
        }
        p
    }

    fn cache(pods: &[Pod]) -> BTreeMap<String, Pod> {
        pods.iter().map(|p| (p.name.clone(), p.clone())).collect()
    }

    /// Applies patches in the planned order and checks the invariant after each write.
    fn converge(
        own: &mut Pod,
        others: &mut BTreeMap<String, Pod>,
        standing: Standing,
    ) -> Vec<Patch> {
        let mut standing = standing;
        let mut done = vec![];
        while let Some(p) = next_patch(&keys(), own, others, &standing, true) {
            assert!(done.len() < 10, "no convergence: {done:?}");
            let target = if p.pod == own.name {
                &mut *own
            } else {
                others.get_mut(&p.pod).unwrap()
            };
            if let Some(rv) = &p.precondition {
                assert_eq!(rv, &target.resource_version, "patch based on stale state");
            }
            for (k, v) in &p.labels {
                match v {
                    Some(v) => target.labels.insert(k.clone(), v.clone()),
                    None => target.labels.remove(k),
                };
            }
            target.resource_version =
                format!("{}", target.resource_version.parse::<u32>().unwrap() + 1);
            let trues = others
                .values()
                .chain(std::iter::once(&*own))
                .filter(|p| p.label("e/is-leader") == Some("true"))
                .count();
            assert!(trues <= 1, "two leaders after {p:?}");
            if let Standing::Leader { fence } = &mut standing {
                *fence = None;
            }
            done.push(p);
        }
        done
    }

    #[test]
    fn new_leader_fences_then_demotes_then_claims() {
        let mut own = pod("b", "10", Some("false"), true);
        let mut others = cache(&[
            pod("a", "20", Some("true"), true),
            pod("c", "30", Some("false"), true),
            pod("d", "40", None, false),
        ]);
        let done = converge(
            &mut own,
            &mut others,
            Standing::Leader {
                fence: Some(Fence {
                    pod: "a".into(),
                    stamp: "b:5".into(),
                    drop_participation: true,
                }),
            },
        );
        let order: Vec<_> = done.iter().map(|p| (p.pod.as_str(), p.reason)).collect();
        assert_eq!(
            order,
            [
                ("a", "fence the previous leader"),
                ("d", "mark follower"),
                ("b", "claim leadership")
            ]
        );
        assert_eq!(done[0].precondition, None);
        assert_eq!(
            done[0].annotations,
            [("e/is-leader".to_string(), "b:5".to_string())]
        );
        assert_eq!(
            done[0].labels,
            [
                ("e/is-leader".to_string(), Some("false".to_string())),
                ("e/participant".to_string(), None)
            ]
        );
        assert_eq!(done[2].precondition.as_deref(), Some("10"));
    }

    #[test]
    fn steady_state_needs_no_patch() {
        let own = pod("b", "1", Some("true"), true);
        let others = cache(&[pod("a", "2", Some("false"), true)]);
        assert_eq!(
            next_patch(
                &keys(),
                &own,
                &others,
                &Standing::Leader { fence: None },
                true
            ),
            None
        );
        let own = pod("a", "2", Some("false"), true);
        assert_eq!(next_patch(&keys(), &own, &others, &FOLLOWER, true), None);
    }

    #[test]
    fn follower_labels_itself_at_start_in_one_patch() {
        let own = pod("a", "5", None, false);
        let p = next_patch(&keys(), &own, &BTreeMap::new(), &FOLLOWER, true).unwrap();
        assert_eq!(
            p.body(),
            json!({"metadata": {"labels": {"e/is-leader": "false", "e/participant": "true"},
                                "annotations": {"e/is-leader": "my-app/"},
                                "resourceVersion": "5"}})
        );
        // Marked once: later patches carry labels only.
        let mut own = own;
        own.annotations
            .insert("e/is-leader".into(), "my-app/".into());
        let p = next_patch(&keys(), &own, &BTreeMap::new(), &FOLLOWER, false).unwrap();
        assert!(p.annotations.is_empty(), "{p:?}");
    }

    #[test]
    fn unready_pod_drops_participation() {
        let own = pod("a", "5", Some("false"), true);
        let p = next_patch(&keys(), &own, &BTreeMap::new(), &FOLLOWER, false).unwrap();
        assert_eq!(p.labels, [("e/participant".to_string(), None)]);
        assert_eq!(p.reason, "update participation");
        assert_eq!(p.body()["metadata"]["labels"]["e/participant"], Value::Null);
    }

    #[test]
    fn not_leader_keeps_true_for_the_fence_unless_leaving() {
        let own = pod("a", "5", Some("true"), false);
        assert_eq!(
            next_patch(&keys(), &own, &BTreeMap::new(), &FOLLOWER, false),
            None
        );
        let leaving = Standing::NotLeader { keep_true: false };
        let p = next_patch(&keys(), &own, &BTreeMap::new(), &leaving, false).unwrap();
        assert_eq!(p.reason, "step down");
        assert_eq!(
            p.labels,
            [("e/is-leader".to_string(), Some("false".to_string()))]
        );
    }

    #[test]
    fn fence_of_a_live_pod_keeps_its_participation() {
        let own = pod("b", "1", Some("false"), true);
        let others = cache(&[pod("c", "2", Some("false"), true)]);
        let standing = Standing::Leader {
            fence: Some(Fence {
                pod: "c".into(),
                stamp: "b:77".into(),
                drop_participation: false,
            }),
        };
        let p = next_patch(&keys(), &own, &others, &standing, true).unwrap();
        assert_eq!((p.reason, p.precondition.as_deref()), ("fence", None));
        assert_eq!(
            p.labels,
            [("e/is-leader".to_string(), Some("false".to_string()))]
        );
        assert_eq!(
            p.body(),
            json!({"metadata": {"labels": {"e/is-leader": "false"},
                                "annotations": {"e/is-leader": "b:77"}}})
        );
    }

    #[test]
    fn leader_demotes_stale_true_before_claiming() {
        // A pod of an older leader still says true and is not a participant any more.
        let mut own = pod("c", "1", Some("false"), true);
        let mut others = cache(&[pod("x", "7", Some("true"), false)]);
        let done = converge(&mut own, &mut others, Standing::Leader { fence: None });
        assert_eq!(done[0].pod, "x");
        assert_eq!(done[1].pod, "c");
    }
}
