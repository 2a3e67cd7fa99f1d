//! The few Kubernetes objects the sidecar reads and writes, converted from and to JSON by
//! plain functions. Only the fields the election and the labels need are kept; a Lease's
//! metadata is carried through untouched so an update never drops what others wrote.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The election state stored in a Lease's spec, as client-go's LeaderElectionRecord.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseRecord {
    /// Pod name of the holder; empty when the lease is free.
    pub holder: String,
    pub duration_seconds: i64,
    /// MicroTime strings, kept verbatim: they are compared, never parsed.
    pub acquire_time: Option<String>,
    pub renew_time: Option<String>,
    pub transitions: i64,
    /// Set by a release that hands over to one pod (failback, switchover, a drain with a
    /// preferred successor): the others leave it to that pod for a lease duration. Kept
    /// in the annotation `<lease name>/handover-to`; empty for anyone.
    pub handover_to: String,
}

/// A Lease as last read from the API server.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub resource_version: String,
    /// The whole metadata object, sent back on update.
    pub metadata: Value,
    pub record: LeaseRecord,
}

impl Lease {
    pub fn from_json(v: &Value) -> Result<Lease, String> {
        let metadata = v.get("metadata").cloned().unwrap_or(Value::Null);
        let resource_version = metadata
            .get("resourceVersion")
            .and_then(Value::as_str)
            .ok_or("Lease without metadata.resourceVersion")?
            .to_string();
        let spec = v.get("spec").cloned().unwrap_or(Value::Null);
        let s = |k: &str| spec.get(k).and_then(Value::as_str).map(str::to_string);
        let n = |k: &str| spec.get(k).and_then(Value::as_i64);
        let name = metadata.get("name").and_then(Value::as_str).unwrap_or("");
        let handover_to = annotation(&metadata, name, HANDOVER_TO)
            .unwrap_or_default()
            .to_string();
        Ok(Lease {
            resource_version,
            record: LeaseRecord {
                holder: s("holderIdentity").unwrap_or_default(),
                duration_seconds: n("leaseDurationSeconds").unwrap_or(0),
                acquire_time: s("acquireTime"),
                renew_time: s("renewTime"),
                transitions: n("leaseTransitions").unwrap_or(0),
                handover_to,
            },
            metadata,
        })
    }

    /// The pod an operator asked the leader to hand over to
    /// (`kubectl annotate lease <election> <election>/switchover-to=<pod>`).
    pub fn switchover_to(&self) -> Option<&str> {
        let name = self.metadata.get("name").and_then(Value::as_str)?;
        annotation(&self.metadata, name, SWITCHOVER_TO).filter(|s| !s.is_empty())
    }

    /// The same Lease with the switchover request removed (answered).
    pub fn without_switchover(&self) -> Lease {
        let mut l = self.clone();
        let name = l.metadata["name"].as_str().unwrap_or("").to_string();
        if let Some(a) = l
            .metadata
            .get_mut("annotations")
            .and_then(Value::as_object_mut)
        {
            a.remove(&format!("{name}/{SWITCHOVER_TO}"));
        }
        l
    }
}

/// Lease annotations, under `<lease name>/`.
const HANDOVER_TO: &str = "handover-to";
const SWITCHOVER_TO: &str = "switchover-to";

fn annotation<'v>(metadata: &'v Value, name: &str, key: &str) -> Option<&'v str> {
    metadata
        .get("annotations")?
        .get(format!("{name}/{key}"))?
        .as_str()
}

/// The body of a Lease create (no resourceVersion) or update (with one).
pub fn lease_body(
    name: &str,
    namespace: &str,
    base: Option<&Lease>,
    record: &LeaseRecord,
) -> Value {
    let mut metadata = match base {
        Some(l) => l.metadata.clone(),
        None => json!({"name": name, "namespace": namespace}),
    };
    let key = format!("{name}/{HANDOVER_TO}");
    if !record.handover_to.is_empty() {
        metadata["annotations"][key] = json!(record.handover_to);
    } else if let Some(a) = metadata
        .get_mut("annotations")
        .and_then(Value::as_object_mut)
    {
        a.remove(&key);
    }
    let mut spec = json!({
        "holderIdentity": record.holder,
        "leaseDurationSeconds": record.duration_seconds,
        "leaseTransitions": record.transitions,
    });
    if let Some(t) = &record.acquire_time {
        spec["acquireTime"] = json!(t);
    }
    if let Some(t) = &record.renew_time {
        spec["renewTime"] = json!(t);
    }
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": metadata,
        "spec": spec,
    })
}

/// What the sidecar needs to know about a pod.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pod {
    pub name: String,
    pub uid: String,
    pub resource_version: String,
    pub labels: BTreeMap<String, String>,
    /// Annotations of at most `MAX_ANNOTATION` bytes (the election mark, the fence
    /// stamp, the priority).
    pub annotations: BTreeMap<String, String>,
    /// `status.conditions[type=Ready].status == "True"`.
    pub ready: bool,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// `metadata.deletionGracePeriodSeconds`, set with the deletionTimestamp.
    pub deletion_grace_seconds: Option<u64>,
    /// `spec.terminationGracePeriodSeconds`, 30 when absent (the API default).
    pub termination_grace_seconds: u64,
}

/// The longest annotation value kept: a fence stamp is `<election>/<pod>:<rv>`, at most
/// 253 + 1 + 253 + 1 + 20 bytes.
const MAX_ANNOTATION: usize = 640;

/// The string values of a JSON object (labels, annotations) up to `max_len` bytes each.
fn strings(v: Option<&Value>, max_len: usize) -> BTreeMap<String, String> {
    // extend, not collect: collecting into a BTreeMap sorts first, and each sort
    // instantiated costs kilobytes of the 2 MB binary.
    let mut out = BTreeMap::new();
    if let Some(m) = v.and_then(Value::as_object) {
        out.extend(m.iter().filter_map(|(k, v)| {
            let v = v.as_str().filter(|v| v.len() <= max_len)?;
            Some((k.clone(), v.to_string()))
        }));
    }
    out
}

impl Pod {
    pub fn from_json(v: &Value) -> Result<Pod, String> {
        let meta = v.get("metadata").ok_or("Pod without metadata")?;
        let name = meta
            .get("name")
            .and_then(Value::as_str)
            .ok_or("Pod without metadata.name")?
            .to_string();
        let resource_version = meta
            .get("resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let labels = strings(meta.get("labels"), usize::MAX);
        // Only short annotations: the election mark and the fence stamp live there, and
        // a kubectl last-applied-configuration would cost kilobytes per pod.
        let annotations = strings(meta.get("annotations"), MAX_ANNOTATION);
        let ready = v
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .map(|cs| {
                cs.iter().any(|c| {
                    c.get("type").and_then(Value::as_str) == Some("Ready")
                        && c.get("status").and_then(Value::as_str) == Some("True")
                })
            })
            .unwrap_or(false);
        Ok(Pod {
            name,
            uid: meta
                .get("uid")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            resource_version,
            labels,
            annotations,
            ready,
            deleting: meta.get("deletionTimestamp").is_some_and(|t| !t.is_null()),
            deletion_grace_seconds: meta
                .get("deletionGracePeriodSeconds")
                .and_then(Value::as_u64),
            termination_grace_seconds: v
                .pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_u64)
                .unwrap_or(30),
        })
    }

    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }
}

/// A Kubernetes Status object, as found in error bodies and watch ERROR events.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Status {
    pub code: u16,
    pub reason: String,
    pub message: String,
}

impl Status {
    pub fn from_json(v: &Value) -> Status {
        let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        Status {
            code: v.get("code").and_then(Value::as_u64).unwrap_or(0) as u16,
            reason: s("reason"),
            message: s("message"),
        }
    }
}

/// One line of a watch stream.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent<T> {
    Added(T),
    Modified(T),
    Deleted(T),
    /// Progress marker: nothing changed up to this resourceVersion.
    Bookmark(String),
    /// In-stream error; code 410 means the resourceVersion is too old: list again.
    Error(Status),
}

impl<T> WatchEvent<T> {
    pub fn parse(line: &str, object: impl Fn(&Value) -> Result<T, String>) -> Result<Self, String> {
        let v: Value = serde_json::from_str(line).map_err(|e| format!("bad watch event: {e}"))?;
        let obj = v.get("object").ok_or("watch event without object")?;
        Ok(match v.get("type").and_then(Value::as_str) {
            Some("ADDED") => WatchEvent::Added(object(obj)?),
            Some("MODIFIED") => WatchEvent::Modified(object(obj)?),
            Some("DELETED") => WatchEvent::Deleted(object(obj)?),
            Some("BOOKMARK") => WatchEvent::Bookmark(
                obj.pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            ),
            Some("ERROR") => WatchEvent::Error(Status::from_json(obj)),
            other => return Err(format!("unknown watch event type {other:?}")),
        })
    }
}

/// Formats wall-clock time as a Kubernetes MicroTime: `2026-01-02T03:04:05.123456Z`.
pub fn micro_time(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

/// Days since 1970-01-01 to (year, month, day), after Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Whether `candidate` is an older version of the same object than `than`: it lets a
/// fresh write response win over an older watch event that arrives after it.
///
/// resourceVersions were opaque until KEP-5504 (stable in Kubernetes 1.35) made those of
/// one resource comparable: positive integers of any length, no leading zeros, ordered
/// by length, then digit by digit (client-go's `CompareResourceVersion`). Anything else
/// is not comparable and never counts as older, so the newest arrival wins.
pub fn is_older(candidate: &str, than: &str) -> bool {
    fn comparable(rv: &str) -> bool {
        rv.bytes().all(|b| b.is_ascii_digit()) && !rv.is_empty() && !rv.starts_with('0')
    }
    comparable(candidate) && comparable(than) && (candidate.len(), candidate) < (than.len(), than)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micro_time_format() {
        let t = UNIX_EPOCH + Duration::new(1_767_323_045, 123_456_789);
        assert_eq!(micro_time(t), "2026-01-02T03:04:05.123456Z");
        assert_eq!(micro_time(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        // A leap day.
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(micro_time(t), "2000-02-29T00:00:00.000000Z");
    }

    #[test]
    fn the_longest_fence_stamp_is_kept_and_a_huge_annotation_is_not() {
        let stamp = format!("{}/{}:{}", "e".repeat(253), "p".repeat(253), u64::MAX);
        let v = json!({"metadata": {"name": "p", "annotations": {
            "e/is-leader": stamp, "kubectl.kubernetes.io/last-applied-configuration": "x".repeat(4096)
        }}});
        let pod = Pod::from_json(&v).unwrap();
        assert_eq!(pod.annotations.get("e/is-leader"), Some(&stamp));
        assert_eq!(pod.annotations.len(), 1);
    }

    #[test]
    fn lease_round_trip_keeps_metadata() {
        let v = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "my-app", "namespace": "ns", "resourceVersion": "42",
                         "annotations": {"team": "blue"}},
            "spec": {"holderIdentity": "web-1", "leaseDurationSeconds": 15,
                     "acquireTime": "2026-01-02T03:04:05.000000Z",
                     "renewTime": "2026-01-02T03:04:07.500000Z", "leaseTransitions": 3}
        });
        let lease = Lease::from_json(&v).unwrap();
        assert_eq!(lease.resource_version, "42");
        assert_eq!(lease.record.holder, "web-1");
        assert_eq!(lease.record.transitions, 3);
        let body = lease_body("my-app", "ns", Some(&lease), &lease.record);
        assert_eq!(body, v);
        assert_eq!(Lease::from_json(&body).unwrap(), lease);
    }

    #[test]
    fn lease_create_body_has_no_resource_version() {
        let r = LeaseRecord {
            holder: "a".into(),
            duration_seconds: 15,
            ..Default::default()
        };
        let b = lease_body("e", "ns", None, &r);
        assert_eq!(b["metadata"], json!({"name": "e", "namespace": "ns"}));
        assert!(b["spec"].get("renewTime").is_none());
    }

    #[test]
    fn free_lease_has_empty_holder() {
        let v = json!({"metadata": {"resourceVersion": "1"}, "spec": {}});
        assert_eq!(Lease::from_json(&v).unwrap().record.holder, "");
        assert!(Lease::from_json(&json!({"spec": {}})).is_err());
    }

    #[test]
    fn pod_readiness_and_deletion() {
        let v = json!({
            "metadata": {"name": "p", "resourceVersion": "7",
                         "labels": {"app": "x", "x/is-leader": "true"},
                         "deletionTimestamp": "2026-01-01T00:00:00Z",
                         "deletionGracePeriodSeconds": 20},
            "spec": {"terminationGracePeriodSeconds": 45},
            "status": {"conditions": [{"type": "PodScheduled", "status": "True"},
                                      {"type": "Ready", "status": "True"}]}
        });
        let p = Pod::from_json(&v).unwrap();
        assert!(p.ready && p.deleting);
        assert_eq!(p.label("x/is-leader"), Some("true"));
        assert_eq!(p.deletion_grace_seconds, Some(20));
        assert_eq!(p.termination_grace_seconds, 45);

        let v = json!({"metadata": {"name": "q"},
                       "status": {"conditions": [{"type": "Ready", "status": "False"}]}});
        let q = Pod::from_json(&v).unwrap();
        assert!(!q.ready && !q.deleting);
        assert_eq!(q.termination_grace_seconds, 30);
    }

    #[test]
    fn watch_events() {
        let pod = |v: &Value| Pod::from_json(v);
        let e = WatchEvent::parse(
            r#"{"type":"MODIFIED","object":{"metadata":{"name":"p","resourceVersion":"9"}}}"#,
            pod,
        )
        .unwrap();
        assert!(matches!(e, WatchEvent::Modified(p) if p.name == "p"));
        let e = WatchEvent::parse(
            r#"{"type":"BOOKMARK","object":{"kind":"Pod","metadata":{"resourceVersion":"12"}}}"#,
            pod,
        )
        .unwrap();
        assert_eq!(e, WatchEvent::Bookmark("12".into()));
        // "too old resource version" arrives in-stream on an HTTP 200.
        let e = WatchEvent::parse(
            r#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","status":"Failure","message":"too old resource version: 5 (120)","reason":"Expired","code":410}}"#,
            pod,
        )
        .unwrap();
        match e {
            WatchEvent::Error(s) => {
                assert_eq!(s.code, 410);
                assert_eq!(s.reason, "Expired");
            }
            other => panic!("{other:?}"),
        }
        assert!(WatchEvent::parse("{", pod).is_err());
        assert!(WatchEvent::parse(r#"{"type":"X","object":{}}"#, pod).is_err());
    }

    #[test]
    fn resource_version_order() {
        assert!(is_older("9", "10"));
        assert!(!is_older("10", "10"));
        assert!(!is_older("abc", "10"));
        // KEP-5504's rules (Kubernetes 1.35): positive integers of any length, without
        // leading zeros; anything else is not comparable and never counts as older.
        assert!(is_older("99999999999999999999", "100000000000000000000"));
        assert!(!is_older("100000000000000000000", "99999999999999999999"));
        assert!(!is_older("0", "5"), "0 is no live resourceVersion");
        assert!(!is_older("007", "10"), "leading zeros: not comparable");
        assert!(!is_older("+7", "10"));
        assert!(!is_older("", "10"));
    }
}
