//! The monitoring kit in deploy/monitoring/: its alert rules pass the real promtool (rule
//! check and unit tests, via scripts/promtool.sh), and the rules and the Grafana dashboard
//! name only metrics the sidecar exports, each of the right type. No cluster needed.
//! promtool is installed when missing; a machine where that fails fails this test.

use leader_labeler::telemetry::Telemetry;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("read {}: {e}", full.display()))
}

#[test]
fn promtool_checks_the_rules_and_their_unit_tests_pass() {
    let out = Command::new("scripts/promtool.sh")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run scripts/promtool.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let all = format!("{stdout}\n{stderr}");
    assert!(
        out.status.success(),
        "scripts/promtool.sh failed ({}):\n{all}",
        out.status
    );
    // promtool check rules: every rule of the PrometheusRule was read.
    assert!(stdout.contains("SUCCESS: 4 rules found"), "{all}");
    // promtool test rules.
    assert!(stdout.contains("Unit Testing: "), "{all}");
    assert!(!stdout.contains("FAILED"), "{all}");
}

/// Metric name → type, from the `# TYPE` lines of a rendered exposition.
fn exported() -> BTreeMap<String, String> {
    let t = Telemetry::new("web-0", Duration::from_secs(10));
    let text = t.metrics();
    let types: BTreeMap<String, String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, k)| (n.to_string(), k.to_string()))
        .collect();
    assert!(types.len() >= 8, "too few metrics in\n{text}");
    types
}

/// Every metric name in `text` (words starting `leader_`), each with whether it is read
/// by rate() or increase().
fn metric_refs(text: &str) -> Vec<(String, bool)> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut refs = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("leader_") {
        let before = &rest[..i];
        let after = &rest[i..];
        let len = after.find(|c: char| !ident(c)).unwrap_or(after.len());
        if !before.ends_with(ident) {
            let counted = before.ends_with("rate(") || before.ends_with("increase(");
            refs.push((after[..len].to_string(), counted));
        }
        rest = &after[len..];
    }
    refs
}

/// Fails unless every metric `what` names is exported, histograms by their series, and
/// rate()/increase() read only counters.
fn check_names(what: &str, text: &str, types: &BTreeMap<String, String>) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, counted) in metric_refs(text) {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|b| types.get(*b).is_some_and(|k| k == "histogram"));
        let kind = match base {
            Some(b) => {
                if name.ends_with("_bucket") {
                    "counter"
                } else {
                    types[b].as_str()
                }
            }
            None => match types.get(&name) {
                Some(k) => k.as_str(),
                None => {
                    problems.push(format!("{what}: {name} is not exported"));
                    continue;
                }
            },
        };
        if counted && kind != "counter" {
            problems.push(format!("{what}: rate/increase of {name}, a {kind}"));
        }
    }
    problems
}

#[test]
fn rules_and_dashboard_name_only_exported_metrics() {
    let types = exported();
    let rules = read("deploy/monitoring/prometheusrule.yaml");
    let mut problems = check_names("prometheusrule.yaml", &rules, &types);
    let used: Vec<String> = metric_refs(&rules).into_iter().map(|(n, _)| n).collect();
    for name in [
        "leader_election_master_status",
        "leader_labeler_label_disagrees",
        "leader_labeler_is_leader",
        "leader_labeler_last_renewal_timestamp_seconds",
        "leader_labeler_leader_transitions_total",
    ] {
        if !used.iter().any(|u| u == name) {
            problems.push(format!("prometheusrule.yaml: no alert uses {name}"));
        }
    }

    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/monitoring/grafana-dashboard.json"))
            .expect("grafana-dashboard.json is JSON");
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            exprs.push(target["expr"].as_str().expect("expr").to_string());
        }
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if let Some(q) = var["query"].as_str() {
            exprs.push(q.to_string());
        }
    }
    let exprs = exprs.join("\n");
    problems.extend(check_names("grafana-dashboard.json", &exprs, &types));
    for name in [
        "leader_election_master_status",
        "leader_labeler_leader_transitions_total",
        "leader_labeler_handover_seconds_bucket",
        "leader_labeler_renew_duration_seconds_bucket",
        "leader_labeler_api_requests_total",
    ] {
        if !metric_refs(&exprs).iter().any(|(u, _)| u == name) {
            problems.push(format!("grafana-dashboard.json: no panel uses {name}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn pod_monitor_scrapes_the_sidecar_port_and_kustomize_finds_every_file() {
    let deployment = read("deploy/deployment.yaml");
    let monitor = read("deploy/monitoring/podmonitor.yaml");
    assert!(deployment.contains("- name: ll-http\n              containerPort: 8089"));
    assert!(monitor.contains("- port: ll-http\n"), "{monitor}");
    let kustomization = read("deploy/monitoring/kustomization.yaml");
    let files: Vec<&str> = kustomization
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .filter(|f| f.ends_with(".yaml") || f.ends_with(".json"))
        .collect();
    assert_eq!(
        files,
        [
            "podmonitor.yaml",
            "prometheusrule.yaml",
            "grafana-dashboard.json"
        ]
    );
    for f in files {
        read(&format!("deploy/monitoring/{f}"));
    }
}
