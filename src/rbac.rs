//! Start-up permission check. Asks the API server (SelfSubjectAccessReview, allowed to
//! every authenticated user) for each verb the sidecar needs, so a missing Role rule is
//! reported at start, by name, instead of as a 403 in the middle of a handover.

use crate::config::Config;
use crate::kube::{Client, KubeError};
use serde_json::{json, Value};

/// One permission the sidecar uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    pub group: &'static str,
    pub resource: &'static str,
    pub verb: &'static str,
    /// Checked against this object name (RBAC resourceNames), if any.
    pub name: Option<String>,
    /// Without it the sidecar still works; this says what is lost. None: required.
    pub optional: Option<&'static str>,
}

impl Need {
    fn new(
        group: &'static str,
        resource: &'static str,
        verb: &'static str,
        name: Option<&str>,
    ) -> Need {
        Need {
            group,
            resource,
            verb,
            name: name.map(str::to_string),
            optional: None,
        }
    }

    /// `pods/patch`, `leases.coordination.k8s.io/update`.
    pub fn label(&self) -> String {
        if self.group.is_empty() {
            format!("{}/{}", self.resource, self.verb)
        } else {
            format!("{}.{}/{}", self.resource, self.group, self.verb)
        }
    }

    /// The Role rule that grants it, as YAML.
    pub fn rule(&self) -> String {
        let names = self
            .name
            .as_ref()
            .map(|n| format!(", resourceNames: [\"{n}\"]"))
            .unwrap_or_default();
        format!(
            "- {{apiGroups: [\"{}\"], resources: [\"{}\"], verbs: [\"{}\"]{names}}}",
            self.group, self.resource, self.verb
        )
    }
}

/// Everything the sidecar does, for this configuration.
pub fn needs(cfg: &Config) -> Vec<Need> {
    let lease = Some(cfg.election_name.as_str());
    let coord = "coordination.k8s.io";
    vec![
        Need::new(coord, "leases", "create", None),
        Need::new(coord, "leases", "get", lease),
        Need::new(coord, "leases", "update", lease),
        Need {
            optional: Some("the Lease will be polled every retry period instead of watched"),
            ..Need::new(coord, "leases", "list", lease)
        },
        Need {
            optional: Some("the Lease will be polled every retry period instead of watched"),
            ..Need::new(coord, "leases", "watch", lease)
        },
        Need::new("", "pods", "get", Some(&cfg.pod_name)),
        Need::new("", "pods", "list", None),
        Need::new("", "pods", "watch", None),
        Need::new("", "pods", "patch", None),
        Need {
            optional: Some("no Kubernetes events will be recorded"),
            ..Need::new("", "events", "create", None)
        },
    ]
}

/// The verdict of the check.
#[derive(Debug)]
pub enum Verdict {
    /// Everything required is granted; `events` tells whether the optional one is.
    AllGranted {
        events: bool,
    },
    Missing(Vec<Need>),
    /// The review API itself was refused or unavailable: go on and find out the hard way.
    Unknown(String),
}

/// Asks about every need. Transport errors are returned so the caller can retry.
pub fn check(client: &Client, cfg: &Config) -> Result<Verdict, KubeError> {
    let mut missing = Vec::new();
    let mut events = true;
    for need in needs(cfg) {
        let mut attrs = json!({
            "namespace": cfg.namespace,
            "verb": need.verb,
            "group": need.group,
            "resource": need.resource,
        });
        if let Some(n) = &need.name {
            attrs["name"] = json!(n);
        }
        let body = json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attrs},
        });
        match client.post(
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            &body,
        ) {
            Ok(v) => {
                let allowed = v.pointer("/status/allowed").and_then(Value::as_bool) == Some(true);
                match (allowed, need.optional) {
                    (true, _) => {}
                    (false, Some(loss)) => {
                        events &= need.resource != "events";
                        log::warn!("optional permission {} is missing: {loss}", need.label());
                    }
                    (false, None) => missing.push(need),
                }
            }
            Err(e @ (KubeError::Forbidden(_) | KubeError::NotFound(_))) => {
                return Ok(Verdict::Unknown(e.to_string()))
            }
            Err(e) if e.is_transient() => return Err(e),
            Err(e) => return Ok(Verdict::Unknown(e.to_string())),
        }
    }
    Ok(if missing.is_empty() {
        Verdict::AllGranted { events }
    } else {
        Verdict::Missing(missing)
    })
}

/// The message for missing permissions: one line each, then the rules to add.
pub fn explain(missing: &[Need], cfg: &Config) -> String {
    let mut out = format!(
        "missing RBAC permission(s) in namespace {:?}: {}\nadd these rules to the Role bound to this pod's service account (see deploy/rbac.yaml):",
        cfg.namespace,
        missing.iter().map(Need::label).collect::<Vec<_>>().join(", ")
    );
    for n in missing {
        out.push_str("\n  ");
        out.push_str(&n.rule());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_rules() {
        let n = Need::new("", "pods", "patch", None);
        assert_eq!(n.label(), "pods/patch");
        assert_eq!(
            n.rule(),
            "- {apiGroups: [\"\"], resources: [\"pods\"], verbs: [\"patch\"]}"
        );
        let l = Need::new("coordination.k8s.io", "leases", "update", Some("my-app"));
        assert_eq!(l.label(), "leases.coordination.k8s.io/update");
        assert!(l.rule().ends_with("resourceNames: [\"my-app\"]}"));
    }
}
