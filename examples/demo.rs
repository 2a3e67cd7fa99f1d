//! `make demo`: leader-labeler on a machine with no cluster.
//!
//! Starts a real etcd and kube-apiserver on loopback (the test harness's), three pod
//! objects and one sidecar process per pod, then walks through what happens in
//! production, printing the pods' labels as they change and each handover's measured
//! time: a follower turning unready, the leader drained by SIGTERM, the leader killed, a
//! switchover to a named pod.
//! Everything it starts stops with it.

use harness::{Cluster, ClusterOptions, Namespace, Observer, Sidecar, LEADER_KEY, PARTICIPANT_KEY};
use std::time::{Duration, Instant};

const PODS: [&str; 3] = ["pod-a", "pod-b", "pod-c"];

struct Demo<'c> {
    ns: Namespace<'c>,
    observer: Observer,
    start: Instant,
    seen: u64,
}

impl Demo<'_> {
    fn holder(&self) -> String {
        self.ns
            .get_lease()
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "(free)".into())
    }

    fn table(&self) {
        let holder = self.holder();
        println!(
            "    {:<8} {:<6} {:<12} {:<10} lease holder",
            "pod", "ready", "participant", "is-leader"
        );
        self.observer.with(|s| {
            for (name, p) in &s.pods {
                let l = |k: &str| p.labels.get(k).cloned().unwrap_or_else(|| "-".into());
                let mark = if l(LEADER_KEY) == "true" {
                    "  <- leader"
                } else {
                    ""
                };
                println!(
                    "    {:<8} {:<6} {:<12} {:<10} {}{mark}",
                    name,
                    if p.ready { "yes" } else { "no" },
                    l(PARTICIPANT_KEY),
                    l(LEADER_KEY),
                    if holder == *name { "holder" } else { "" }
                );
            }
        });
        println!("    lease holder: {holder}\n");
    }

    /// Prints one line per label change for `window`.
    fn follow(&mut self, window: Duration) {
        let end = Instant::now() + window;
        let mut last = String::new();
        while Instant::now() < end {
            self.seen = self
                .observer
                .next_event(self.seen, end.saturating_duration_since(Instant::now()));
            let line = self.observer.with(|s| {
                s.pods
                    .iter()
                    .map(|(n, p)| {
                        let leader = match p.labels.get(LEADER_KEY).map(String::as_str) {
                            Some("true") => "LEADER",
                            Some(_) => "follower",
                            None => "unlabeled",
                        };
                        let part = if p.labels.contains_key(PARTICIPANT_KEY) {
                            ""
                        } else {
                            " (not participating)"
                        };
                        format!("{n}: {leader}{part}")
                    })
                    .collect::<Vec<_>>()
                    .join(" | ")
            });
            if line != last {
                println!("  {:>7.3}s  {line}", self.start.elapsed().as_secs_f64());
                last = line;
            }
        }
    }

    /// The latest moment with no pod labeled leader.
    fn last_gap(&self) -> Duration {
        self.observer
            .gaps()
            .last()
            .map(|(a, b)| *b - *a)
            .unwrap_or_default()
    }

    fn leader(&self) -> String {
        self.observer
            .wait_for_single_leader(Duration::from_secs(20))
    }
}

fn main() {
    println!(
        "leader-labeler demo: a real etcd + kube-apiserver on loopback, three pods, three sidecars"
    );
    println!("(timings: lease 3s, renew deadline 2s, retry 500ms)\n");
    let t = Instant::now();
    let cluster = Cluster::start(ClusterOptions::default());
    println!(
        "control plane ready in {:.1}s at {}\n",
        t.elapsed().as_secs_f64(),
        cluster.server_url()
    );
    let ns = Namespace::new(&cluster, "demo");
    for p in PODS {
        ns.create_pod(p, true);
    }
    let observer = Observer::start(&ns);
    let mut demo = Demo {
        ns,
        observer,
        start: Instant::now(),
        seen: 0,
    };
    let mut sidecars: Vec<Sidecar> = PODS
        .iter()
        .map(|p| Sidecar::spawn(&demo.ns, p, &[]))
        .collect();

    println!("1. Three ready pods start their sidecars");
    let leader = demo.leader();
    let elected = demo.start.elapsed();
    demo.follow(Duration::from_millis(800));
    println!(
        "   elected {leader} {:.0} ms after the sidecars started",
        elected.as_secs_f64() * 1000.0
    );
    demo.table();

    let follower = PODS.iter().find(|p| **p != leader).unwrap().to_string();
    println!("2. {follower}'s app turns unready: it stops participating; the leader is untouched");
    demo.ns.set_ready(&follower, false);
    demo.follow(Duration::from_millis(600));
    demo.ns.set_ready(&follower, true);
    demo.follow(Duration::from_millis(600));
    println!("   ...and rejoins when ready again\n");

    println!("3. The leader {leader} gets SIGTERM (a rolling update): it hands over, then exits");
    let t0 = Instant::now();
    let idx = PODS.iter().position(|p| *p == leader).unwrap();
    sidecars[idx].sigterm();
    let new_leader_seen = demo
        .observer
        .wait_until(Duration::from_secs(10), "a new leader", |s| {
            s.leader().is_some_and(|l| l != leader)
        });
    demo.follow(Duration::from_millis(500));
    let status = sidecars[idx].wait_exit(Duration::from_secs(5));
    let gap = demo.last_gap();
    println!(
        "   new leader {:.1} ms after SIGTERM; no pod labeled leader for {:.1} ms; old sidecar exited: {}",
        (new_leader_seen - t0).as_secs_f64() * 1000.0,
        gap.as_secs_f64() * 1000.0,
        status.map_or("no".into(), |s| s.to_string())
    );
    // The pod's container restarts, as the kubelet would do.
    sidecars[idx] = Sidecar::spawn(&demo.ns, &leader, &[]);
    demo.follow(Duration::from_millis(600));
    demo.table();

    let leader = demo.leader();
    println!("4. The leader {leader} is killed (SIGKILL): the others wait out the lease (3s), then take over");
    let t0 = Instant::now();
    let idx = PODS.iter().position(|p| *p == leader).unwrap();
    sidecars[idx].sigkill();
    let seen = demo
        .observer
        .wait_until(Duration::from_secs(10), "a new leader", |s| {
            s.leader().is_some_and(|l| l != leader)
        });
    demo.follow(Duration::from_millis(300));
    println!(
        "   new leader {:.0} ms after the crash (lease duration 3000 ms); {leader}'s stale label was set to false",
        (seen - t0).as_secs_f64() * 1000.0
    );
    demo.table();

    // The killed sidecar's container restarts, as the kubelet would do.
    sidecars[idx] = Sidecar::spawn(&demo.ns, &leader, &[]);
    demo.observer
        .wait_until(Duration::from_secs(10), "all participate", |s| {
            PODS.iter()
                .all(|p| s.label(p, PARTICIPANT_KEY) == Some("true"))
        });
    let current = demo.leader();
    let target = PODS.iter().rev().find(|p| **p != current).unwrap();
    println!(
        "5. An operator moves leadership to {target}: kubectl annotate lease my-app my-app/switchover-to={target}"
    );
    let t0 = Instant::now();
    demo.ns.api.patch(
        &format!(
            "/apis/coordination.k8s.io/v1/namespaces/{}/leases/my-app",
            demo.ns.name
        ),
        "application/merge-patch+json",
        &serde_json::json!({"metadata": {"annotations": {"my-app/switchover-to": target}}}),
    );
    let seen = demo
        .observer
        .wait_until(Duration::from_secs(10), "the named pod leads", |s| {
            s.leader().as_deref() == Some(*target)
        });
    demo.follow(Duration::from_millis(300));
    let gap = demo.last_gap();
    println!(
        "   {target} leads {:.1} ms after the request; no pod labeled leader for {:.1} ms",
        (seen - t0).as_secs_f64() * 1000.0,
        gap.as_secs_f64() * 1000.0
    );
    demo.table();

    demo.observer.assert_never_two_leaders();
    println!("Never two pods labeled leader at any resourceVersion. Stopping everything.");
    drop(sidecars);
    drop(demo);
}
