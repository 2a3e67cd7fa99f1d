//! `make bench`: leader-labeler and a client-go sidecar (bench/baseline), measured the
//! same way on the same local control plane in one run, with the default timings
//! (15s / 10s / 2s). Prints a table and writes bench/results.json and bench/RESULTS.md.
//!
//! Usage: bench --baseline PATH [--quick]

use harness::{Cluster, ClusterOptions, EndpointWatcher, Namespace, Observer, Sidecar};
use leader_labeler::kube::types::micro_time;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

#[derive(Clone, Copy, PartialEq)]
enum Impl {
    LeaderLabeler,
    ClientGo,
}

struct Bench {
    cluster: Cluster,
    baseline: PathBuf,
    /// The static musl binary, as shipped in the image.
    static_bin: PathBuf,
    handovers: usize,
    crashes: usize,
    steady: Duration,
    growth_window: Duration,
    /// Control-plane outages per implementation, and how long each lasts.
    outages: usize,
    outage_length: Duration,
}

impl Impl {
    fn name(self) -> &'static str {
        match self {
            Impl::LeaderLabeler => "leader-labeler",
            Impl::ClientGo => "client-go",
        }
    }

    /// The User-Agent prefix its requests carry in the audit log.
    fn agent(self) -> &'static str {
        match self {
            Impl::LeaderLabeler => "leader-labeler/",
            Impl::ClientGo => "client-go-baseline",
        }
    }
}

fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let idx = ((p / 100.0) * (s.len() - 1) as f64).round() as usize;
    Some((s[idx] * 10.0).round() / 10.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Peak RSS (KiB) and CPU seconds (user + system) of a process, from /proc.
fn proc_stats(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // schedstat's first field: nanoseconds on CPU, far finer than clock ticks. It is per
    // thread, so sum over the process's threads.
    let cpu_ns: f64 = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
                .filter_map(|s| {
                    s.split_whitespace()
                        .next()
                        .and_then(|v| v.parse::<f64>().ok())
                })
                .sum()
        })
        .unwrap_or(0.0);
    (hwm, cpu_ns / 1e9)
}

/// Requests per user agent between two wall-clock times, from the audit log. A watch
/// counts once, when it starts; every other request when it completes.
fn audit_counts(log: &Path, from: &str, to: &str) -> BTreeMap<String, u64> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let stage = v["stage"].as_str().unwrap_or("");
        let watch = v["verb"] == "watch";
        if (watch && stage != "ResponseStarted") || (!watch && stage != "ResponseComplete") {
            continue;
        }
        let ts = v["stageTimestamp"].as_str().unwrap_or("");
        if ts < from || ts >= to {
            continue;
        }
        let ua = v["userAgent"].as_str().unwrap_or("").to_string();
        *counts.entry(ua).or_insert(0) += 1;
    }
    counts
}

fn pod_of(agent: &str) -> Option<&str> {
    agent.rsplit_once('(').map(|(_, p)| p.trim_end_matches(')'))
}

impl Bench {
    fn spawn(&self, ns: &Namespace, imp: Impl, pod: &str) -> Sidecar {
        match imp {
            Impl::LeaderLabeler => Sidecar::spawn_program(
                ns,
                pod,
                &self.static_bin,
                None,
                &["--http-address=127.0.0.1:0".to_string()],
            ),
            Impl::ClientGo => Sidecar::spawn_program(ns, pod, &self.baseline, None, &[]),
        }
    }

    fn setup(
        &self,
        imp: Impl,
        tag: &str,
        pods: &[String],
    ) -> (Namespace<'_>, Observer, Vec<Sidecar>) {
        let ns = Namespace::new(&self.cluster, &format!("{tag}-{}", imp.name()));
        for p in pods {
            ns.create_pod(p, true);
        }
        let observer = Observer::start(&ns).lenient();
        let sidecars = pods.iter().map(|p| self.spawn(&ns, imp, p)).collect();
        observer.wait_for_single_leader(Duration::from_secs(60));
        (ns, observer, sidecars)
    }

    /// Planned handovers: SIGTERM the leader, measure the leaderless gap and any overlap,
    /// restart its sidecar, repeat.
    fn handover(&self, imp: Impl) -> (Vec<f64>, f64, Vec<f64>) {
        let pods = vec!["pod-a".to_string(), "pod-b".to_string()];
        let (ns, observer, mut sidecars) = self.setup(imp, "handover", &pods);
        // The user's view: the EndpointSlices of deploy/service.yaml.
        let service = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/service.yaml");
        let out = self
            .cluster
            .kubectl(&["apply", "-n", &ns.name, "-f", service], None);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let endpoints = EndpointWatcher::start(&ns, "my-app");
        let leader = observer.leader().unwrap();
        endpoints.wait_for_only(&ns.pod_ip(&leader), Duration::from_secs(30));
        let mut gaps = vec![];
        for i in 0..self.handovers {
            std::thread::sleep(Duration::from_secs(1));
            let leader = observer.leader().expect("a leader");
            let idx = pods.iter().position(|p| *p == leader).unwrap();
            let before = observer.gaps().len();
            sidecars[idx].sigterm();
            observer.wait_until(Duration::from_secs(30), "a new leader", |s| {
                s.leader().is_some_and(|l| l != leader)
            });
            let g = observer.gaps();
            if g.len() > before {
                let (a, b) = g[g.len() - 1];
                gaps.push(ms(b - a));
            } else {
                gaps.push(0.0);
            }
            let new_leader = observer.leader().unwrap_or_default();
            endpoints.wait_for_only(&ns.pod_ip(&new_leader), Duration::from_secs(30));
            sidecars[idx].wait_exit(Duration::from_secs(30));
            sidecars[idx] = self.spawn(&ns, imp, &leader);
            eprintln!("  {} handover {}: gap {:.1} ms", imp.name(), i + 1, gaps[i]);
        }
        let overlap = observer
            .with(|s| s.overlaps())
            .into_iter()
            .map(ms)
            .fold(0.0, f64::max);
        let service_gaps: Vec<f64> = endpoints.with(|e| e.gaps()).into_iter().map(ms).collect();
        eprintln!("  {} service gaps (ms): {service_gaps:?}", imp.name());
        (gaps, overlap, service_gaps)
    }

    /// Crash failover: SIGKILL the leader; time until another pod is labeled leader.
    fn crash(&self, imp: Impl) -> Vec<f64> {
        let pods = vec![
            "pod-a".to_string(),
            "pod-b".to_string(),
            "pod-c".to_string(),
        ];
        let (ns, observer, mut sidecars) = self.setup(imp, "crash", &pods);
        let mut times = vec![];
        for i in 0..self.crashes {
            std::thread::sleep(Duration::from_secs(2));
            let leader = observer.leader().expect("a leader");
            let idx = pods.iter().position(|p| *p == leader).unwrap();
            let t0 = Instant::now();
            sidecars[idx].sigkill();
            let seen = observer.wait_until(Duration::from_secs(60), "a new leader", |s| {
                s.leader().is_some_and(|l| l != leader)
            });
            times.push(ms(seen - t0));
            eprintln!("  {} crash {}: {:.0} ms", imp.name(), i + 1, times[i]);
            sidecars[idx] = self.spawn(&ns, imp, &leader);
        }
        times
    }

    /// Planned switchover to a named pod (`<election>/switchover-to` on the Lease), which
    /// only leader-labeler offers: time from the request to the named pod leading, and
    /// the leaderless gap. Three pods; the target is never the one a free-for-all would
    /// favour by name.
    fn switchover(&self, imp: Impl) -> Option<(Vec<f64>, Vec<f64>)> {
        if imp != Impl::LeaderLabeler {
            return None;
        }
        let pods: Vec<String> = ["pod-a", "pod-b", "pod-c"].map(String::from).to_vec();
        let (ns, observer, _sidecars) = self.setup(imp, "switchover", &pods);
        observer.wait_until(Duration::from_secs(30), "all participate", |s| {
            pods.iter()
                .all(|p| s.label(p, "my-app/participant") == Some("true"))
        });
        let path = format!(
            "/apis/coordination.k8s.io/v1/namespaces/{}/leases/my-app",
            ns.name
        );
        let (mut took, mut gaps) = (vec![], vec![]);
        for i in 0..self.handovers {
            std::thread::sleep(Duration::from_secs(1));
            let leader = observer.leader().expect("a leader");
            let target = pods.iter().rev().find(|p| **p != leader).unwrap().clone();
            let before = observer.gaps().len();
            let t0 = Instant::now();
            ns.api.patch(
                &path,
                "application/merge-patch+json",
                &json!({"metadata": {"annotations": {"my-app/switchover-to": target}}}),
            );
            let seen = observer.wait_until(Duration::from_secs(30), "the named pod leads", |s| {
                s.leader().as_deref() == Some(target.as_str())
            });
            took.push(ms(seen - t0));
            let g = observer.gaps();
            gaps.push(if g.len() > before {
                let (a, b) = g[g.len() - 1];
                ms(b - a)
            } else {
                0.0
            });
            eprintln!(
                "  {} switchover {}: {:.1} ms to {target}, gap {:.1} ms",
                imp.name(),
                i + 1,
                took[i],
                gaps[i]
            );
        }
        Some((took, gaps))
    }

    /// Unready failover: the leader's Ready condition goes False.
    fn unready(&self, imp: Impl) -> Option<f64> {
        let pods = vec!["pod-a".to_string(), "pod-b".to_string()];
        let (ns, observer, _sidecars) = self.setup(imp, "unready", &pods);
        std::thread::sleep(Duration::from_secs(2));
        let leader = observer.leader().expect("a leader");
        let t0 = Instant::now();
        ns.set_ready(&leader, false);
        let deadline = t0 + Duration::from_secs(20);
        loop {
            if observer.with(|s| s.leader().is_some_and(|l| l != leader)) {
                let took = ms(t0.elapsed());
                eprintln!("  {} unready failover: {took:.1} ms", imp.name());
                return Some(took);
            }
            if Instant::now() >= deadline {
                eprintln!("  {} unready failover: never (20 s)", imp.name());
                return None;
            }
            observer.next_event(observer.with(|s| s.events), Duration::from_millis(200));
        }
    }

    /// A steady-state window: requests per minute per pod, leader CPU, peak RSS.
    fn steady(&self, imp: Impl, pods: usize, window: Duration) -> Steady {
        let names: Vec<String> = (0..pods).map(|i| format!("pod-{i}")).collect();
        let (_ns, observer, sidecars) = self.setup(imp, &format!("steady{pods}"), &names);
        // Let start-up traffic settle.
        std::thread::sleep(Duration::from_secs(5));
        let leader = observer.leader().expect("a leader");
        let cpu0: Vec<f64> = sidecars.iter().map(|s| proc_stats(s.pid()).1).collect();
        let from = micro_time(SystemTime::now());
        std::thread::sleep(window);
        let to = micro_time(SystemTime::now());
        let stats: Vec<(u64, f64)> = sidecars.iter().map(|s| proc_stats(s.pid())).collect();
        std::thread::sleep(Duration::from_millis(500)); // audit log flush
        let counts = audit_counts(&self.cluster.audit_log(), &from, &to);
        let per_min = 60.0 / window.as_secs_f64();
        let mut leader_rpm = 0.0;
        let mut follower_rpm: f64 = 0.0;
        let mut total = 0.0;
        for (agent, n) in &counts {
            if !agent.starts_with(imp.agent()) {
                continue;
            }
            let Some(pod) = pod_of(agent) else { continue };
            if !names.iter().any(|n| n == pod) {
                continue;
            }
            let rpm = *n as f64 * per_min;
            total += rpm;
            if pod == leader {
                leader_rpm = rpm;
            } else {
                follower_rpm = follower_rpm.max(rpm);
            }
        }
        let li = names.iter().position(|n| *n == leader).unwrap();
        Steady {
            leader_rpm: (leader_rpm * 10.0).round() / 10.0,
            follower_rpm: (follower_rpm * 10.0).round() / 10.0,
            total_rpm: (total * 10.0).round() / 10.0,
            peak_rss_kib: stats.iter().map(|s| s.0).max().unwrap_or(0),
            leader_cpu_per_min: ((stats[li].1 - cpu0[li]) * per_min * 10_000.0).round() / 10_000.0,
        }
    }
}

impl Bench {
    /// kube-apiserver outages: how often leadership moves, and what the followers ask
    /// of the API server afterwards. A sidecar that exits (client-go's RunOrDie returns
    /// when leadership is lost) is restarted, as the kubelet would.
    fn outages(&self, imp: Impl) -> (f64, f64) {
        let pods: Vec<String> = ["pod-a", "pod-b", "pod-c"].map(String::from).to_vec();
        let (ns, observer, mut sidecars) = self.setup(imp, "outage", &pods);
        let lease = |ns: &Namespace| {
            let spec = ns
                .get_lease()
                .map(|l| l["spec"].clone())
                .unwrap_or_default();
            (
                spec["holderIdentity"].as_str().unwrap_or("").to_string(),
                spec["leaseTransitions"].as_i64().unwrap_or(0),
            )
        };
        let mut moves = 0;
        for i in 0..self.outages {
            std::thread::sleep(Duration::from_secs(5));
            let before = lease(&ns);
            self.cluster.stop_apiserver();
            std::thread::sleep(self.outage_length);
            self.cluster.start_apiserver();
            // Settle: restart what exited, wait for one leader and for the lease to show it.
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                for (j, s) in sidecars.iter_mut().enumerate() {
                    if !s.is_running() {
                        *s = self.spawn(&ns, imp, &pods[j]);
                    }
                }
                let now = lease(&ns);
                if !now.0.is_empty() && observer.leader().as_deref() == Some(now.0.as_str()) {
                    break;
                }
                assert!(Instant::now() < deadline, "no leader 60 s after an outage");
                std::thread::sleep(Duration::from_millis(200));
            }
            let after = lease(&ns);
            let moved = after.0 != before.0 || after.1 != before.1;
            moves += moved as usize;
            eprintln!(
                "  {} outage {}: {}",
                imp.name(),
                i + 1,
                if moved {
                    "leadership moved"
                } else {
                    "same leader"
                }
            );
        }
        // Followers once things have settled after the last outage.
        std::thread::sleep(Duration::from_secs(30));
        let leader = observer.leader().expect("a leader");
        let from = micro_time(SystemTime::now());
        std::thread::sleep(self.steady);
        let to = micro_time(SystemTime::now());
        std::thread::sleep(Duration::from_millis(500));
        let counts = audit_counts(&self.cluster.audit_log(), &from, &to);
        let per_min = 60.0 / self.steady.as_secs_f64();
        let follower_rpm = counts
            .iter()
            .filter(|(agent, _)| agent.starts_with(imp.agent()))
            .filter_map(|(agent, n)| pod_of(agent).map(|p| (p, n)))
            .filter(|(p, _)| pods.iter().any(|x| x == p) && *p != leader)
            .map(|(_, n)| *n as f64 * per_min)
            .fold(0.0, f64::max);
        let rate = moves as f64 / self.outages as f64;
        eprintln!(
            "  {} outages: {moves}/{} moved leadership; follower {follower_rpm:.1} req/min afterwards",
            imp.name(),
            self.outages
        );
        (
            (rate * 100.0).round() / 100.0,
            (follower_rpm * 10.0).round() / 10.0,
        )
    }
}

struct Steady {
    leader_rpm: f64,
    follower_rpm: f64,
    total_rpm: f64,
    peak_rss_kib: u64,
    leader_cpu_per_min: f64,
}

fn file_size(p: &Path) -> Option<u64> {
    std::fs::metadata(p).ok().map(|m| m.len())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let baseline = args
        .iter()
        .position(|a| a == "--baseline")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .expect("--baseline PATH (bench/run.sh passes it)");
    let quick = args.iter().any(|a| a == "--quick");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let started = Instant::now();
    let bench = Bench {
        cluster: Cluster::start(ClusterOptions {
            controller_manager: true,
            ..Default::default()
        }),
        baseline: baseline.clone(),
        static_bin: root.join("target/static/leader-labeler"),
        handovers: if quick { 3 } else { 10 },
        crashes: if quick { 2 } else { 5 },
        steady: Duration::from_secs(if quick { 20 } else { 60 }),
        growth_window: Duration::from_secs(if quick { 10 } else { 30 }),
        outages: if quick { 2 } else { 5 },
        outage_length: Duration::from_secs(20),
    };
    let mut results = serde_json::Map::new();
    let mut growth = vec![];
    for imp in [Impl::LeaderLabeler, Impl::ClientGo] {
        eprintln!("== {}", imp.name());
        let (gaps, overlap, service_gaps) = bench.handover(imp);
        let crashes = bench.crash(imp);
        let unready = bench.unready(imp);
        let switchover = bench.switchover(imp);
        let steady = bench.steady(imp, 3, bench.steady);
        // Last: the outages stop the shared control plane.
        let (moves_per_outage, after_outage_rpm) = bench.outages(imp);
        eprintln!(
            "  {} steady: leader {} req/min, follower {} req/min, peak RSS {} KiB, leader CPU {} s/min",
            imp.name(),
            steady.leader_rpm,
            steady.follower_rpm,
            steady.peak_rss_kib,
            steady.leader_cpu_per_min
        );
        let (binary, image) = match imp {
            Impl::LeaderLabeler => (
                file_size(&root.join("target/static/leader-labeler")),
                std::fs::read_dir(root.join("target")).ok().and_then(|d| {
                    d.flatten()
                        .find(|e| e.file_name().to_string_lossy().ends_with(".tar"))
                        .and_then(|e| file_size(&e.path()))
                }),
            ),
            Impl::ClientGo => (file_size(&baseline), None),
        };
        results.insert(
            imp.name().into(),
            json!({
                "handover_gap_ms": {"p50": percentile(&gaps, 50.0), "p95": percentile(&gaps, 95.0)},
                "handover_overlap_ms": {"max": (overlap * 10.0).round() / 10.0},
                "service_gap_ms": {"p50": percentile(&service_gaps, 50.0), "p95": percentile(&service_gaps, 95.0)},
                "crash_failover_ms": {"p50": percentile(&crashes, 50.0), "p95": percentile(&crashes, 95.0)},
                "unready_failover_ms": {"p50": unready.map(|u| (u * 10.0).round() / 10.0)},
                "switchover_ms": switchover.as_ref().map(|(took, _)| json!({"p50": percentile(took, 50.0), "p95": percentile(took, 95.0)})),
                "switchover_gap_ms": switchover.as_ref().map(|(_, gaps)| json!({"p50": percentile(gaps, 50.0), "p95": percentile(gaps, 95.0)})),
                "requests_per_min": {"leader": steady.leader_rpm, "follower": steady.follower_rpm},
                "outages": {"count": bench.outages, "seconds_each": bench.outage_length.as_secs(),
                            "leadership_moves_per_outage": moves_per_outage,
                            "follower_requests_per_min_after": after_outage_rpm},
                "peak_rss_kib": steady.peak_rss_kib,
                "cpu_seconds_per_min": steady.leader_cpu_per_min,
                "binary_bytes": binary,
                "image_bytes": image,
                "samples": {"handovers": gaps.len(), "crashes": crashes.len()},
            }),
        );
        for pods in [3usize, 10, 30] {
            let s = bench.steady(imp, pods, bench.growth_window);
            eprintln!(
                "  {} growth {pods} pods: {} req/min, leader CPU {} s/min",
                imp.name(),
                s.total_rpm,
                s.leader_cpu_per_min
            );
            growth.push(json!({"implementation": imp.name(), "pods": pods,
                               "requests_per_min": s.total_rpm, "leader_cpu_seconds_per_min": s.leader_cpu_per_min}));
        }
    }
    let out = json!({
        "kubernetes": "v1.36.3",
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "timings": "lease 15s, renew deadline 10s, retry 2s",
        "implementations": results,
        "growth": growth,
        "duration_seconds": started.elapsed().as_secs(),
    });
    std::fs::write(
        root.join("bench/results.json"),
        serde_json::to_string_pretty(&out).unwrap() + "\n",
    )
    .unwrap();
    let md = report(&out, quick);
    std::fs::write(root.join("bench/RESULTS.md"), &md).unwrap();
    println!("{md}");
}

fn report(r: &Value, quick: bool) -> String {
    let ll = &r["implementations"]["leader-labeler"];
    let cg = &r["implementations"]["client-go"];
    let fmt = |v: &Value| match v {
        Value::Null => "never".to_string(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    };
    let ratio = |a: &Value, b: &Value| match (a.as_f64(), b.as_f64()) {
        (Some(a), Some(b)) if a > 0.0 => format!("{:.1}x", b / a),
        (Some(_), None) => "n/a".into(),
        _ => "-".into(),
    };
    let rows: Vec<(&str, &str)> = vec![
        ("planned handover gap p50 (ms)", "/handover_gap_ms/p50"),
        ("planned handover gap p95 (ms)", "/handover_gap_ms/p95"),
        ("double-leader overlap max (ms)", "/handover_overlap_ms/max"),
        (
            "Service with no ready endpoint p50 (ms)",
            "/service_gap_ms/p50",
        ),
        (
            "Service with no ready endpoint p95 (ms)",
            "/service_gap_ms/p95",
        ),
        ("crash failover p50 (ms)", "/crash_failover_ms/p50"),
        ("crash failover p95 (ms)", "/crash_failover_ms/p95"),
        ("unready failover (ms)", "/unready_failover_ms/p50"),
        ("switchover to a named pod p50 (ms)", "/switchover_ms/p50"),
        (
            "switchover leaderless gap p50 (ms)",
            "/switchover_gap_ms/p50",
        ),
        ("leader requests/min", "/requests_per_min/leader"),
        ("follower requests/min", "/requests_per_min/follower"),
        (
            "leadership moves per 20 s control-plane outage",
            "/outages/leadership_moves_per_outage",
        ),
        (
            "follower requests/min after an outage",
            "/outages/follower_requests_per_min_after",
        ),
        ("peak RSS (KiB)", "/peak_rss_kib"),
        ("leader CPU (s/min)", "/cpu_seconds_per_min"),
        ("binary (bytes)", "/binary_bytes"),
        ("image (bytes)", "/image_bytes"),
    ];
    let mut s = String::from("# Benchmark results\n\n");
    s += &format!(
        "Kubernetes {} (local etcd + kube-apiserver), {} cores, default timings (lease 15s, renew 10s, retry 2s); {} handovers, {} crashes per implementation{}. Run in {} s by `make bench`.\n\n",
        r["kubernetes"].as_str().unwrap_or(""),
        r["cores"],
        ll["samples"]["handovers"],
        ll["samples"]["crashes"],
        if quick { " (quick run)" } else { "" },
        r["duration_seconds"]
    );
    s += "| measure | leader-labeler | client-go | client-go / leader-labeler |\n|---|---:|---:|---:|\n";
    for (label, ptr) in rows {
        let a = ll.pointer(ptr).cloned().unwrap_or(Value::Null);
        let b = cg.pointer(ptr).cloned().unwrap_or(Value::Null);
        let (fa, fb) = (fmt(&a), fmt(&b));
        let fb = if ptr == "/image_bytes" && b.is_null() {
            "not built".into()
        } else if ptr.starts_with("/switchover") && b.is_null() {
            "not offered".into()
        } else {
            fb
        };
        s += &format!("| {label} | {fa} | {fb} | {} |\n", ratio(&a, &b));
    }
    s += "\n## Growth (steady state, all pods together)\n\n| pods | leader-labeler req/min | client-go req/min | leader-labeler leader CPU s/min | client-go leader CPU s/min |\n|---:|---:|---:|---:|---:|\n";
    for pods in [3, 10, 30] {
        let g = |imp: &str, k: &str| {
            r["growth"]
                .as_array()
                .and_then(|a| {
                    a.iter()
                        .find(|g| g["implementation"] == imp && g["pods"] == pods)
                })
                .map(|g| fmt(&g[k]))
                .unwrap_or_default()
        };
        s += &format!(
            "| {pods} | {} | {} | {} | {} |\n",
            g("leader-labeler", "requests_per_min"),
            g("client-go", "requests_per_min"),
            g("leader-labeler", "leader_cpu_seconds_per_min"),
            g("client-go", "leader_cpu_seconds_per_min")
        );
    }
    s
}
