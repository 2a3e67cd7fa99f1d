//! Label planning: which pod to patch next, and with what, so that no two pods are ever
//! labeled leader at the API server.
//!
//! The order is the guarantee. A new leader first fences the previous holder's pod (an
//! unconditional write of `false` plus an annotation, which changes its resourceVersion),
//! then sets every other pod it knows that is not `false` to `false`, and only then
//! claims `true` on its own pod. Every patch except the fence carries the resourceVersion
//! the decision was based on, so a write delayed in the network fails with 409 instead of
//! undoing a newer leader's work: the fence makes any in-flight `true` from the old holder
//! stale.

use crate::kube::types::Pod;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// The two label keys, plus the annotation key used for fencing (the leadership key
/// itself, in the annotations map: valid by construction).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    pub leader: String,
    pub participant: String,
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
        let labels: Map<String, Value> = self
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.as_ref().map_or(Value::Null, |s| json!(s))))
            .collect();
        let mut meta = json!({ "labels": labels });
        if !self.annotations.is_empty() {
            let a: Map<String, Value> = self
                .annotations
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            meta["annotations"] = Value::Object(a);
        }
        if let Some(rv) = &self.precondition {
            meta["resourceVersion"] = json!(rv);
        }
        json!({ "metadata": meta })
    }
}

/// This pod's standing in the election, as far as labels are concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Holds a lease that is surely its own. `fence`: the previous holder's pod and the
    /// annotation value to stamp on it, until done.
    Leader {
        fence: Option<(String, String)>,
    },
    /// Just handed over: keep an existing `true` until the successor fences it.
    HandingOver,
    Follower,
}

/// The next patch, or None when the labels are as they should be.
pub fn next_patch(
    keys: &Keys,
    own: &Pod,
    others: &BTreeMap<String, Pod>,
    standing: &Standing,
    participating: bool,
) -> Option<Patch> {
    if let Standing::Leader {
        fence: Some((pod, stamp)),
    } = standing
    {
        return Some(Patch {
            pod: pod.clone(),
            precondition: None,
            // Its sidecar stopped renewing: dead or cut off. Drop its participation too,
            // so nobody hands over to it; a live sidecar puts the label back itself.
            labels: vec![
                (keys.leader.clone(), Some("false".into())),
                (keys.participant.clone(), None),
            ],
            annotations: vec![(keys.leader.clone(), stamp.clone())],
            reason: "fence the previous leader",
        });
    }
    if matches!(standing, Standing::Leader { .. }) {
        if let Some(p) = others
            .values()
            .find(|p| p.name != own.name && p.label(&keys.leader) != Some("false"))
        {
            return Some(Patch {
                pod: p.name.clone(),
                precondition: Some(p.resource_version.clone()),
                labels: vec![(keys.leader.clone(), Some("false".into()))],
                annotations: vec![],
                reason: "mark follower",
            });
        }
    }
    let current = own.label(&keys.leader);
    let leader_value = match standing {
        Standing::Leader { .. } => "true",
        Standing::HandingOver if current == Some("true") => "true",
        _ => "false",
    };
    let participant_value = participating.then(|| "true".to_string());
    let mut labels = Vec::new();
    if current != Some(leader_value) {
        labels.push((keys.leader.clone(), Some(leader_value.to_string())));
    }
    if own.label(&keys.participant).map(str::to_string) != participant_value {
        labels.push((keys.participant.clone(), participant_value));
    }
    if labels.is_empty() {
        return None;
    }
    let reason = if current == Some(leader_value) {
        "update participation"
    } else if leader_value == "true" {
        "claim leadership"
    } else if current == Some("true") {
        "step down"
    } else {
        "label follower"
    };
    Some(Patch {
        pod: own.name.clone(),
        precondition: Some(own.resource_version.clone()),
        labels,
        annotations: vec![],
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys {
            leader: "e/is-leader".into(),
            participant: "e/participant".into(),
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
                fence: Some(("a".into(), "b:5".into())),
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
        assert_eq!(
            next_patch(&keys(), &own, &others, &Standing::Follower, true),
            None
        );
    }

    #[test]
    fn follower_labels_itself_at_start_in_one_patch() {
        let own = pod("a", "5", None, false);
        let p = next_patch(&keys(), &own, &BTreeMap::new(), &Standing::Follower, true).unwrap();
        assert_eq!(
            p.body(),
            json!({"metadata": {"labels": {"e/is-leader": "false", "e/participant": "true"},
                                "resourceVersion": "5"}})
        );
    }

    #[test]
    fn unready_pod_drops_participation() {
        let own = pod("a", "5", Some("false"), true);
        let p = next_patch(&keys(), &own, &BTreeMap::new(), &Standing::Follower, false).unwrap();
        assert_eq!(p.labels, [("e/participant".to_string(), None)]);
        assert_eq!(p.reason, "update participation");
        assert_eq!(p.body()["metadata"]["labels"]["e/participant"], Value::Null);
    }

    #[test]
    fn handing_over_keeps_true_until_fenced_and_follower_steps_down() {
        let own = pod("a", "5", Some("true"), false);
        assert_eq!(
            next_patch(
                &keys(),
                &own,
                &BTreeMap::new(),
                &Standing::HandingOver,
                false
            ),
            None
        );
        let p = next_patch(&keys(), &own, &BTreeMap::new(), &Standing::Follower, false).unwrap();
        assert_eq!(p.reason, "step down");
        assert_eq!(
            p.labels,
            [("e/is-leader".to_string(), Some("false".to_string()))]
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
