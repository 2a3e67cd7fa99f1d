//! Real traffic through a real Service during real rolling updates: the shipped manifests
//! on a one-node cluster (kube-scheduler, the Deployment, ReplicaSet and EndpointSlice
//! controllers, the kubelet with containerd, runc and CNI pod networking, kube-proxy in
//! nftables mode), all inside a network namespace this test creates
//! (tests/harness/src/traffic.rs). A client in that namespace sends requests to the
//! Service's ClusterIP without pause, on new connections and on a kept-alive one.
//!
//! Each request is judged against the Lease holder when it began. The handover window of
//! a change of holder from A to B opens when the Lease stops naming A (or when A loses its
//! leader label, if earlier) and closes when kube-proxy finishes its first rule sync that
//! began after the EndpointSlices routed new connections to B alone. Inside it an answer
//! from A or B is fine; outside it only the holder may answer.
//!
//! Asserted for every scenario: no answer by a non-leader outside the window on new
//! connections, every handover's window closed, no failed request on the kept-alive
//! connection, and none on new connections in rollouts, scale-downs and deletions. In a
//! switchover and for an unready leader the only failures allowed are connections
//! refused between the trigger and the window's close: kube-proxy applying the Service's
//! leaderless moment and the new leader a minSyncPeriod later (docs/design.md).
//! Kept-alive connections are reported, not judged: kube-proxy routes a connection once,
//! when it opens, so a kept connection stays on the old leader until the old pod's app
//! closes it (see the report's keep-alive line and docs/design.md).
//!
//! `cargo test --test traffic -- short` (make test: one rollout, one leader deletion) or
//! `-- full` (make test-traffic: ten rollouts, a scale-down that removes the leader, the
//! leader deleted, the leader's app unready, a switchover). Not a libtest harness: the
//! process enters its network namespace before any thread starts.

use harness::namespace::{ELECTION, SWITCHOVER_KEY};
use harness::traffic::{self, now, Client, Recorder, Rig};
use harness::{secs, wait};
use std::time::Duration;

/// Requests per second, per client.
const RATE: u32 = 50;

struct Scenario {
    name: String,
    start: f64,
    end: f64,
    actions: Vec<f64>,
}

struct Run<'a> {
    rig: &'a Rig,
    client: &'a Client,
    scenarios: Vec<Scenario>,
}

impl Run<'_> {
    fn scenario(&mut self, name: &str, f: impl FnOnce(&Rig, &Client, &mut Vec<f64>)) {
        let start = now();
        let mut actions = vec![];
        eprintln!("traffic: {name}");
        f(self.rig, self.client, &mut actions);
        self.scenarios.push(Scenario {
            name: name.into(),
            start,
            end: now(),
            actions,
        });
    }
}

fn other(rig: &Rig, leader: &str) -> String {
    rig.pods()
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str())
        .find(|n| *n != leader)
        .expect("a second pod")
        .to_string()
}

fn gone(rig: &Rig, pod: &str) -> bool {
    !rig.pods().iter().any(|p| p["metadata"]["name"] == pod)
}

fn rollout(rig: &Rig, client: &Client, actions: &mut Vec<f64>) {
    actions.push(now());
    rig.kubectl(&["rollout", "restart", "deployment/my-app"]);
    rig.kubectl(&["rollout", "status", "deployment/my-app", "--timeout=180s"]);
    rig.settle(2, client, secs(120));
}

fn delete_leader(rig: &Rig, client: &Client, actions: &mut Vec<f64>) {
    let leader = rig.settle(2, client, secs(60));
    actions.push(now());
    rig.kubectl(&["delete", "pod", &leader, "--wait=false"]);
    let now_leader = rig.settle(2, client, secs(120));
    assert!(
        gone(rig, &leader),
        "{leader} still exists after its deletion"
    );
    assert_ne!(now_leader, leader);
}

/// Three replicas, the leader given the lowest deletion cost (the ReplicaSet controller
/// removes such pods first), then back to two.
fn scale_down(rig: &Rig, client: &Client, actions: &mut Vec<f64>) {
    rig.kubectl(&["scale", "deployment/my-app", "--replicas=3"]);
    let leader = rig.settle(3, client, secs(120));
    rig.kubectl(&[
        "annotate",
        "pod",
        &leader,
        "controller.kubernetes.io/pod-deletion-cost=-1000",
    ]);
    actions.push(now());
    rig.kubectl(&["scale", "deployment/my-app", "--replicas=2"]);
    rig.settle(2, client, secs(120));
    assert!(
        gone(rig, &leader),
        "scaling down did not remove the leader {leader}"
    );
}

/// The leader's app reports unready (its readiness probe sees 503); once the Service
/// follows the new leader, it is ready again and rejoins.
fn unready(rig: &Rig, client: &Client, actions: &mut Vec<f64>) {
    let leader = rig.settle(2, client, secs(60));
    let ip = rig.pod_ip(&leader);
    actions.push(now());
    control(&ip, "unready");
    let what = format!("the unready leader {leader} to lose the Lease and the traffic");
    wait::until(&what, secs(60), || {
        rig.holder() != leader
            && !client
                .last_fresh(20)
                .iter()
                .any(|a| a.as_deref() == Ok(&leader))
    });
    control(&ip, "ready");
    let now_leader = rig.settle(2, client, secs(60));
    assert_ne!(now_leader, leader);
}

fn switchover(rig: &Rig, client: &Client, actions: &mut Vec<f64>) {
    let leader = rig.settle(2, client, secs(60));
    let to = other(rig, &leader);
    actions.push(now());
    rig.kubectl(&[
        "annotate",
        "lease",
        ELECTION,
        &format!("{SWITCHOVER_KEY}={to}"),
        "--overwrite",
    ]);
    wait::until(&format!("the switchover to {to}"), secs(30), || {
        rig.holder() == to
    });
    assert_eq!(rig.settle(2, client, secs(60)), to);
}

/// GET http://<pod>:8080/control/<what>, straight to the pod (inside the namespace).
fn control(ip: &str, what: &str) {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect_timeout(&format!("{ip}:8080").parse().unwrap(), secs(2))
            .unwrap_or_else(|e| panic!("cannot reach the app at {ip}:8080: {e}"));
    s.write_all(
        format!("GET /control/{what} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "control/{what}: {answer}"
    );
}

#[derive(Clone, Copy, PartialEq)]
enum Set {
    Short,
    Full,
    /// make bench: rollouts and a leader deletion for leader-labeler, then the same for
    /// the client-go baseline in its place.
    Bench,
}

/// The scenarios of a set; names get `prefix`.
fn run_set(run: &mut Run, set: Set, rollouts: usize, prefix: &str) {
    for i in 0..rollouts {
        run.scenario(&format!("{prefix}rollout restart #{}", i + 1), rollout);
    }
    if set == Set::Full {
        run.scenario(
            &format!("{prefix}scale down removing the leader"),
            scale_down,
        );
    }
    run.scenario(&format!("{prefix}leader pod deleted"), delete_leader);
    if set == Set::Full {
        run.scenario(&format!("{prefix}leader's app unready"), unready);
        run.scenario(&format!("{prefix}switchover"), switchover);
    }
}

pub const BASELINE_PREFIX: &str = "client-go: ";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let named = std::env::var("TRAFFIC_SET").ok().or_else(|| {
        args.iter()
            .find(|a| ["short", "full", "bench"].contains(&a.as_str()))
            .cloned()
    });
    let set = match named.as_deref() {
        Some("full") => Set::Full,
        Some("bench") => Set::Bench,
        _ => Set::Short,
    };
    let rollouts: usize = std::env::var("TRAFFIC_ROLLOUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(match set {
            Set::Short => 1,
            Set::Full => 10,
            Set::Bench => 5,
        });
    let t0 = std::time::Instant::now();
    let pre = traffic::prepare(set == Set::Bench);
    traffic::enter_netns();
    let rig: &'static Rig = Box::leak(Box::new(Rig::start(&pre)));
    // A failed step panics: keep the logs first (the node's folder goes at exit).
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        hook(info);
        eprintln!("traffic: logs kept in {}", rig.keep_logs().display());
    }));
    let recorder = Recorder::start(rig.cluster);
    let client = Client::start(rig.service, RATE);
    let first = rig.settle(2, &client, secs(180));
    eprintln!(
        "traffic: ready after {:.0} s; {first} leads, Service {}",
        t0.elapsed().as_secs_f64(),
        rig.service
    );
    let mut run = Run {
        rig,
        client: &client,
        scenarios: vec![],
    };
    run_set(&mut run, set, rollouts, "");
    if set == Set::Bench {
        let leader = rig.switch_to_baseline(&client);
        eprintln!("traffic: the client-go baseline runs; {leader} leads");
        run_set(&mut run, set, rollouts, BASELINE_PREFIX);
    }
    let scenarios = std::mem::take(&mut run.scenarios);
    eprintln!("{}", rig.diagnostics());
    let observed = traffic::Observed {
        samples: client.stop(),
        syncs: traffic::proxy_syncs(&rig.proxy_log),
        events: recorder.events(),
    };
    let reports: Vec<_> = scenarios
        .iter()
        .map(|s| observed.report(&s.name, &s.actions, s.start, s.end))
        .collect();
    let mut failures = vec![];
    for r in &reports {
        println!("{}", r.render());
        // The baseline is measured, not judged.
        if r.name.starts_with(BASELINE_PREFIX) {
            continue;
        }
        let mut why = vec![];
        // A handover without a deletion (switchover, unready leader) may see kube-proxy
        // apply the leaderless EndpointSlice and the new leader a minSyncPeriod later:
        // refused connections inside the window, documented in docs/design.md. Anything
        // else fails, as does any failure in a rollout, scale-down or deletion.
        let tolerated = r.name.contains("switchover") || r.name.contains("unready");
        let counted = |st: &traffic::Stats| {
            if tolerated {
                st.failed_unexplained
            } else {
                st.failed
            }
        };
        let failed = counted(&r.fresh) + r.keepalive.failed;
        if failed > 0 {
            why.push(format!("{failed} failed requests"));
        }
        if r.fresh.non_leader > 0 {
            why.push(format!(
                "{} answers by a non-leader outside the handover window",
                r.fresh.non_leader
            ));
        }
        if r.handovers.is_empty() {
            why.push("no handover seen".into());
        }
        if r.handovers.iter().any(|h| h.synced.is_none()) {
            why.push(
                "a handover window never closed (EndpointSlice or kube-proxy never followed)"
                    .into(),
            );
        }
        if !why.is_empty() {
            failures.push(format!("{}: {}", r.name, why.join(", ")));
        }
    }
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/traffic-results.json");
    let json = serde_json::json!({
        "set": named.as_deref().unwrap_or("short"),
        "rate_per_client": RATE,
        "kube_proxy_mode": traffic::proxy_mode(),
        "seconds": t0.elapsed().as_secs(),
        "scenarios": reports.iter().map(|r| r.json()).collect::<Vec<_>>(),
    });
    std::fs::write(&out, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    if set == Set::Bench {
        bench_results(&reports, rollouts);
    }
    println!(
        "traffic: results in {} ({:.0} s in all)",
        out.display(),
        t0.elapsed().as_secs_f64()
    );
    println!(
        "{} passed, {} failed",
        reports.len() - failures.len(),
        failures.len()
    );
    if !failures.is_empty() {
        for f in &failures {
            eprintln!("FAILED {f}");
        }
        eprintln!("traffic: logs kept in {}", rig.keep_logs().display());
        std::process::exit(1);
    }
}

/// The medians and maxima `make bench` records for one implementation's scenarios.
fn summary(reports: &[&traffic::Report], rollouts: usize) -> serde_json::Value {
    let sum = |f: &dyn Fn(&traffic::Report) -> usize| reports.iter().map(|r| f(r)).sum::<usize>();
    let max = |f: &dyn Fn(&traffic::Report) -> f64| {
        let m = reports.iter().map(|r| f(r)).fold(0.0, f64::max);
        (m * 1000.0).round()
    };
    let handovers: Vec<&traffic::Handover> = reports.iter().flat_map(|r| &r.handovers).collect();
    let p50 = |f: &dyn Fn(&traffic::Handover) -> Option<f64>| {
        let mut v: Vec<f64> = handovers
            .iter()
            .filter_map(|h| f(h).map(|t| t - h.open))
            .collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).map(|x| (x * 1000.0).round())
    };
    serde_json::json!({
        "rollouts": rollouts,
        "leader_deletions": 1,
        "handovers": handovers.len(),
        "requests": sum(&|r| r.fresh.requests + r.keepalive.requests),
        "failed_new_connections": sum(&|r| r.fresh.failed),
        "failed_keepalive": sum(&|r| r.keepalive.failed),
        "non_leader_new_connections": sum(&|r| r.fresh.non_leader),
        "longest_gap_ms": max(&|r| r.fresh.longest_gap),
        "keepalive_on_old_leader_ms": max(&|r| r.keepalive.non_leader_span),
        "p50_ms_after_the_window_opened": {
            "lease_taken": p50(&|h| Some(h.acquired)),
            "labels_moved": p50(&|h| h.labeled),
            "endpointslice": p50(&|h| h.sliced),
            "kube_proxy_synced": p50(&|h| h.synced),
        },
    })
}

/// Adds "rolling_update_through_a_service" to bench/results.json (written by the bench
/// example just before) and its table to bench/RESULTS.md.
fn bench_results(reports: &[traffic::Report], rollouts: usize) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let (base, ours): (Vec<&traffic::Report>, Vec<&traffic::Report>) = reports
        .iter()
        .partition(|r| r.name.starts_with(BASELINE_PREFIX));
    let rows = serde_json::json!({
        "rate_per_client_per_second": RATE,
        "kube_proxy_mode": traffic::proxy_mode(),
        "leader-labeler": summary(&ours, rollouts),
        "client-go": summary(&base, rollouts),
    });
    let path = root.join("bench/results.json");
    let mut results: serde_json::Value = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| serde_json::json!({}));
    results["rolling_update_through_a_service"] = rows.clone();
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&results).unwrap() + "\n",
    )
    .unwrap();
    let mode = traffic::proxy_mode();
    let mut md = format!(
        "\n## Rolling update through a Service\n\n{rollouts} `kubectl rollout restart` and one leader deletion per implementation, the shipped manifests on one node with kube-proxy ({mode}) and CNI pod networking; {RATE} requests/s on new connections and {RATE} on a kept-alive one, through the ClusterIP.\n\n| | leader-labeler | client-go |\n|---|---|---|\n"
    );
    let cell = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "n/a".to_string(),
        v => v.to_string(),
    };
    for (label, key) in [
        ("handovers", "/handovers"),
        ("requests", "/requests"),
        ("failed, new connections", "/failed_new_connections"),
        ("failed, kept-alive", "/failed_keepalive"),
        (
            "answered by a non-leader outside the window",
            "/non_leader_new_connections",
        ),
        ("longest gap without an answer (ms)", "/longest_gap_ms"),
        (
            "kept-alive connection on the old leader (ms)",
            "/keepalive_on_old_leader_ms",
        ),
        (
            "lease taken, p50 (ms after the window opened)",
            "/p50_ms_after_the_window_opened/lease_taken",
        ),
        (
            "labels moved, p50",
            "/p50_ms_after_the_window_opened/labels_moved",
        ),
        (
            "EndpointSlice, p50",
            "/p50_ms_after_the_window_opened/endpointslice",
        ),
        (
            "kube-proxy synced, p50",
            "/p50_ms_after_the_window_opened/kube_proxy_synced",
        ),
    ] {
        md += &format!(
            "| {label} | {} | {} |\n",
            cell(
                &rows["leader-labeler"]
                    .pointer(key)
                    .cloned()
                    .unwrap_or_default()
            ),
            cell(&rows["client-go"].pointer(key).cloned().unwrap_or_default()),
        );
    }
    let md_path = root.join("bench/RESULTS.md");
    let mut text = std::fs::read_to_string(&md_path).unwrap_or_default();
    if let Some(i) = text.find("\n## Rolling update through a Service") {
        text.truncate(i);
    }
    text += &md;
    std::fs::write(&md_path, text).unwrap();
    println!("traffic: bench rows in bench/results.json and bench/RESULTS.md");
}
