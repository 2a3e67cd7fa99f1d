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
        // A repeated event bumps the count of the first one with a merge patch.
        Need {
            optional: Some("no Kubernetes events will be recorded"),
            ..Need::new("", "events", "patch", None)
        },
    ]
}

/// The verdict of the check.
#[derive(Debug)]
pub enum Verdict {
    /// Everything required is granted; `events` tells whether both `events` verbs are.
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
    let mut lost = Vec::new();
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
                    (false, Some(_)) => lost.push(need),
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
    // Said once, after the last answer: a check retried after a transient error does
    // not repeat it.
    for warning in optional_warnings(&lost) {
        log::warn!("{warning}");
    }
    let events = !lost.iter().any(|n| n.resource == "events");
    Ok(if missing.is_empty() {
        Verdict::AllGranted { events }
    } else {
        Verdict::Missing(missing)
    })
}

/// One warning per loss, naming every missing optional permission that causes it.
pub fn optional_warnings(lost: &[Need]) -> Vec<String> {
    let mut out: Vec<(&str, Vec<String>)> = Vec::new();
    for need in lost {
        let loss = need.optional.unwrap_or("");
        match out.iter_mut().find(|(l, _)| *l == loss) {
            Some((_, labels)) => labels.push(need.label()),
            None => out.push((loss, vec![need.label()])),
        }
    }
    out.into_iter()
        .map(|(loss, labels)| {
            format!(
                "missing optional RBAC permission(s) {}: {loss}",
                labels.join(", ")
            )
        })
        .collect()
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

    fn cfg() -> Config {
        use crate::flags::{ELECTION_NAME, NAMESPACE, POD_NAME, SERVER};
        let raw = crate::config::RawArgs::default()
            .with(&ELECTION_NAME, "my-app")
            .with(&POD_NAME, "web-0")
            .with(&NAMESPACE, "prod")
            .with(&SERVER, "http://127.0.0.1:8001");
        Config::build(raw, &crate::config::Environment::fake(&[])).unwrap()
    }

    type Grants = std::collections::BTreeSet<(String, String)>;

    /// (resource, verb) of every need.
    fn checked() -> Grants {
        needs(&cfg())
            .iter()
            .map(|n| (n.resource.to_string(), n.verb.to_string()))
            .collect()
    }

    /// The items of a YAML flow list: `["a", "b"]` -> a, b.
    fn flow_list(text: &str) -> Vec<String> {
        text.trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .split(',')
            .map(|s| s.trim().trim_matches('"').to_string())
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// (resource, verb) of every rule of the Role in deploy/rbac.yaml.
    fn granted_by_manifest() -> Grants {
        let mut out = Grants::new();
        let mut resources = Vec::new();
        for line in include_str!("../deploy/rbac.yaml").lines() {
            let line = line.trim().trim_start_matches("- ");
            if let Some(list) = line.strip_prefix("resources:") {
                resources = flow_list(list);
            } else if let Some(list) = line.strip_prefix("verbs:") {
                for r in &resources {
                    for v in flow_list(list) {
                        out.insert((r.clone(), v));
                    }
                }
            }
        }
        out
    }

    /// (resource, verb) of every row of the README's RBAC table.
    fn listed_in_readme() -> Grants {
        let mut out = Grants::new();
        for cells in crate::readme::table_rows("RBAC") {
            let resource = cells[1].split('`').nth(1).unwrap().to_string();
            for verb in cells[2].split('`').skip(1).step_by(2) {
                out.insert((resource.clone(), verb.to_string()));
            }
        }
        out
    }

    #[test]
    fn checks_every_verb_the_role_grants_and_the_readme_lists() {
        let checked = checked();
        let manifest = granted_by_manifest();
        let readme = listed_in_readme();
        assert!(manifest.len() >= 9, "parsed deploy/rbac.yaml: {manifest:?}");
        assert_eq!(
            manifest.difference(&checked).collect::<Vec<_>>(),
            Vec::<&(String, String)>::new(),
            "granted by deploy/rbac.yaml but not checked at start"
        );
        assert_eq!(
            readme.difference(&checked).collect::<Vec<_>>(),
            Vec::<&(String, String)>::new(),
            "listed in the README but not checked at start"
        );
        assert_eq!(
            checked.difference(&manifest).collect::<Vec<_>>(),
            Vec::<&(String, String)>::new(),
            "checked at start but not granted by deploy/rbac.yaml"
        );
    }

    #[test]
    fn one_warning_per_loss() {
        let all = needs(&cfg());
        let lost: Vec<Need> = all.into_iter().filter(|n| n.optional.is_some()).collect();
        assert_eq!(
            optional_warnings(&lost),
            [
                "missing optional RBAC permission(s) leases.coordination.k8s.io/list, \
                 leases.coordination.k8s.io/watch: the Lease will be polled every retry \
                 period instead of watched",
                "missing optional RBAC permission(s) events/create, events/patch: no \
                 Kubernetes events will be recorded",
            ]
        );
        assert!(optional_warnings(&[]).is_empty());
    }

    #[test]
    fn events_are_optional_and_nothing_else_is_but_the_lease_watch() {
        for n in needs(&cfg()) {
            let optional = n.resource == "events"
                || (n.resource == "leases" && matches!(n.verb, "list" | "watch"));
            assert_eq!(n.optional.is_some(), optional, "{}", n.label());
        }
    }
}
