//! Real traffic through a real Service during real rolling updates: the shipped manifests
//! on a one-node cluster (kube-scheduler, the Deployment, ReplicaSet and EndpointSlice
//! controllers, the kubelet with containerd, runc and CNI pod networking, kube-proxy in
//! iptables mode), all inside a network namespace this test creates
//! (tests/support/traffic.rs). A client in that namespace sends requests to the
//! Service's ClusterIP without pause, on new connections and on a kept-alive one.
//!
//! Each request is judged against the Lease holder when it began. The handover window of
//! a change of holder from A to B opens when the Lease stops naming A (or when A loses its
//! leader label, if earlier) and closes when kube-proxy finishes its first rule sync that
//! began after the EndpointSlices routed new connections to B alone. Inside it an answer
//! from A or B is fine; outside it only the holder may answer.
//!
//! Asserted for every scenario: no failed request (either client), no answer by a
//! non-leader outside the window on new connections, every handover's window closed.
//! Kept-alive connections are reported, not judged: kube-proxy routes a connection once,
//! when it opens, so a kept connection stays on the old leader until the old pod's app
//! closes it (see the report's keep-alive line and docs/design.md).
//!
//! `cargo test --test traffic -- short` (make test: one rollout, one leader deletion) or
//! `-- full` (make test-traffic: ten rollouts, a scale-down that removes the leader, the
//! leader deleted, the leader's app unready, a switchover). Not a libtest harness: the
//! process enters its network namespace before any thread starts.

mod support;

use std::time::Duration;
use support::traffic::{self, now, Client, Recorder, Rig};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

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
    let deadline = std::time::Instant::now() + secs(60);
    while rig.holder() == leader
        || client
            .last_fresh(20)
            .iter()
            .any(|a| a.as_deref() == Ok(&leader))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the unready leader {leader} kept the Lease or the traffic for 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
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
        "my-app",
        &format!("my-app/switchover-to={to}"),
        "--overwrite",
    ]);
    let deadline = std::time::Instant::now() + secs(30);
    while rig.holder() != to {
        assert!(
            std::time::Instant::now() < deadline,
            "the switchover to {to} did not happen within 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
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

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let full = match std::env::var("TRAFFIC_SET").ok().as_deref() {
        Some("full") => true,
        Some("short") => false,
        _ => args.iter().any(|a| a == "full"),
    };
    let rollouts: usize = std::env::var("TRAFFIC_ROLLOUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 10 } else { 1 });
    let t0 = std::time::Instant::now();
    let pre = traffic::prepare();
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
    for i in 0..rollouts {
        run.scenario(&format!("rollout restart #{}", i + 1), rollout);
    }
    if full {
        run.scenario("scale down removing the leader", scale_down);
    }
    run.scenario("leader pod deleted", delete_leader);
    if full {
        run.scenario("leader's app unready", unready);
        run.scenario("switchover", switchover);
    }
    let scenarios = std::mem::take(&mut run.scenarios);
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
        let mut why = vec![];
        if r.fresh.failed + r.keepalive.failed > 0 {
            why.push(format!(
                "{} failed requests",
                r.fresh.failed + r.keepalive.failed
            ));
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
        "set": if full { "full" } else { "short" },
        "rate_per_client": RATE,
        "seconds": t0.elapsed().as_secs(),
        "scenarios": reports.iter().map(|r| r.json()).collect::<Vec<_>>(),
    });
    std::fs::write(&out, serde_json::to_string_pretty(&json).unwrap()).unwrap();
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
