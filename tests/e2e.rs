//! End-to-end proof: the real binary, as several processes, against a real kube-apiserver
//! and etcd, with the shipped RBAC and real service-account tokens. Timings are short
//! (lease 3s, renew deadline 2s, retry 500ms). An observer watching every pod fails any
//! test in which two pods carry is-leader=true at any resourceVersion.

use harness::{secs, start, wait};
use harness::{
    Cluster, ClusterOptions, Namespace, Observer, Proxy, Sidecar, SidecarOptions, LEADER_KEY,
    PARTICIPANT_KEY,
};
use std::time::{Duration, Instant};

const SECOND: Duration = Duration::from_secs(1);

/// Ready pods with a sidecar each, and the observer; waits for the first leader.
fn by_pod<'a>(sidecars: &'a mut [Sidecar], pod: &str) -> &'a mut Sidecar {
    sidecars.iter_mut().find(|s| s.pod == pod).expect("sidecar")
}

fn is_micro_time(v: &serde_json::Value) -> bool {
    let s = v.as_str().unwrap_or("");
    // 2026-01-02T03:04:05.123456Z
    s.len() == 27
        && s.ends_with('Z')
        && s.as_bytes()[19] == b'.'
        && s[20..26].bytes().all(|b| b.is_ascii_digit())
}

/// Three ready pods: exactly one leads (`true`), the others say `false`, all participate;
/// the Lease names the leader with MicroTime stamps, and the leader renews it.
#[test]
fn three_ready_pods_elect_exactly_one_leader() {
    let cluster = Cluster::shared();
    let ns = Namespace::new(cluster, "three");
    let (observer, _sidecars, leader) = start(&ns, &["pod-a", "pod-b", "pod-c"]);
    observer.with(|s| {
        for (name, p) in &s.pods {
            let expected = if *name == leader { "true" } else { "false" };
            assert_eq!(
                p.labels.get(LEADER_KEY).map(String::as_str),
                Some(expected),
                "{name}"
            );
            assert_eq!(
                p.labels.get(PARTICIPANT_KEY).map(String::as_str),
                Some("true"),
                "{name}"
            );
        }
    });
    let lease = ns.get_lease().expect("lease exists");
    let spec = &lease["spec"];
    assert_eq!(spec["holderIdentity"], leader.as_str());
    assert_eq!(spec["leaseDurationSeconds"], 3);
    assert_eq!(spec["leaseTransitions"], 0);
    assert!(is_micro_time(&spec["acquireTime"]), "{spec}");
    assert!(is_micro_time(&spec["renewTime"]), "{spec}");
    // The leader renews: renewTime moves, acquireTime stays.
    let renewed = wait::until_every("a renewal", secs(3), Duration::from_millis(100), || {
        let now = ns.get_lease().unwrap();
        (now["spec"]["renewTime"] != spec["renewTime"]).then_some(now)
    });
    assert_eq!(renewed["spec"]["acquireTime"], spec["acquireTime"]);
    assert_eq!(renewed["spec"]["holderIdentity"], leader.as_str());
}

/// Only ready pods participate and lead: an unready pod is labeled `false` and joins when
/// ready; a leader that turns unready hands over within a second and rejoins as follower.
#[test]
fn readiness_gates_participation_and_leadership() {
    let cluster = Cluster::shared();
    let ns = Namespace::new(cluster, "ready");
    ns.create_pod("pod-a", false);
    ns.create_pod("pod-b", true);
    let observer = Observer::start(&ns);
    let _a = Sidecar::spawn(&ns, "pod-a", &[]);
    let _b = Sidecar::spawn(&ns, "pod-b", &[]);
    assert_eq!(observer.wait_for_single_leader(secs(15)), "pod-b");
    observer.wait_until(
        secs(5),
        "unready pod-a labeled false, not participating",
        |s| {
            s.label("pod-a", LEADER_KEY) == Some("false")
                && s.label("pod-a", PARTICIPANT_KEY).is_none()
        },
    );
    // pod-a becomes ready: it joins as a follower.
    ns.set_ready("pod-a", true);
    observer.wait_until(secs(5), "pod-a participates", |s| {
        s.label("pod-a", PARTICIPANT_KEY) == Some("true")
    });
    assert_eq!(observer.leader().as_deref(), Some("pod-b"));
    // The leader turns unready: it hands over to pod-a within a second.
    let t0 = Instant::now();
    ns.set_ready("pod-b", false);
    let seen = observer.wait_for_leader("pod-a", secs(5));
    let took = seen - t0;
    assert!(took < SECOND, "unready handover took {took:?}");
    observer.wait_until(secs(5), "pod-b stops participating", |s| {
        s.label("pod-b", PARTICIPANT_KEY).is_none()
    });
    // And rejoins when ready again, as a follower.
    ns.set_ready("pod-b", true);
    observer.wait_until(secs(5), "pod-b participates again", |s| {
        s.label("pod-b", PARTICIPANT_KEY) == Some("true")
            && s.label("pod-b", LEADER_KEY) == Some("false")
    });
    assert_eq!(observer.leader().as_deref(), Some("pod-a"));
}

/// A follower's SIGTERM: it exits within a second, its participation label goes, and the
/// leader's labels are never touched.
#[test]
fn follower_sigterm_leaves_within_a_second() {
    let cluster = Cluster::shared();
    let ns = Namespace::new(cluster, "fterm");
    let (observer, mut sidecars, leader) = start(&ns, &["pod-a", "pod-b", "pod-c"]);
    let changes = observer.history_len();
    let follower = ["pod-a", "pod-b", "pod-c"]
        .into_iter()
        .find(|p| *p != leader)
        .unwrap();
    let s = by_pod(&mut sidecars, follower);
    s.sigterm();
    let status = s.wait_exit(SECOND).expect("follower exits within a second");
    assert!(status.success(), "exit status {status}");
    observer.wait_until(secs(2), "follower's participation label is gone", |s| {
        s.label(follower, PARTICIPANT_KEY).is_none()
    });
    assert_eq!(observer.leader().as_deref(), Some(leader.as_str()));
    assert_eq!(
        observer.history_len(),
        changes,
        "the leader was never touched"
    );
}

/// The leader's SIGTERM hands over to the other pod with one leaderless gap under a
/// second; the old leader exits 0 labeled `false`.
#[test]
fn leader_sigterm_hands_over_in_under_a_second() {
    let cluster = Cluster::shared();
    let ns = Namespace::new(cluster, "lterm");
    let (observer, mut sidecars, leader) = start(&ns, &["pod-a", "pod-b"]);
    let other = if leader == "pod-a" { "pod-b" } else { "pod-a" };
    let t0 = Instant::now();
    by_pod(&mut sidecars, &leader).sigterm();
    let seen = observer.wait_until(secs(5), "the other pod leads", |s| {
        s.leader().as_deref() == Some(other)
    });
    let status = by_pod(&mut sidecars, &leader)
        .wait_exit(secs(5))
        .expect("old leader exits");
    assert!(status.success(), "exit status {status}");
    let gaps = observer.gaps();
    assert_eq!(gaps.len(), 1, "one handover, one gap: {gaps:?}");
    let gap = gaps[0].1 - gaps[0].0;
    assert!(gap < SECOND, "leaderless gap {gap:?}");
    eprintln!(
        "handover: {:?} from SIGTERM to new leader, leaderless gap {gap:?}",
        seen - t0
    );
    assert_eq!(
        observer
            .with(|s| s.label(&leader, LEADER_KEY).map(str::to_string))
            .as_deref(),
        Some("false")
    );
}

/// A lone leader on SIGTERM keeps leading (and renewing) until the grace period minus
/// its margin, then releases the Lease, turns its label `false` and exits 0.
#[test]
fn lone_leader_sigterm_leads_until_the_grace_deadline() {
    let cluster = Cluster::shared();
    let ns = Namespace::new(cluster, "lone");
    ns.create_pod_with_grace("pod-a", true, 5);
    ns.create_pod("pod-b", false);
    let observer = Observer::start(&ns);
    let mut a = Sidecar::spawn(&ns, "pod-a", &[]);
    let _b = Sidecar::spawn(&ns, "pod-b", &[]);
    assert_eq!(observer.wait_for_single_leader(secs(15)), "pod-a");
    let renew_before = ns.get_lease().unwrap()["spec"]["renewTime"].clone();
    let t0 = Instant::now();
    a.sigterm();
    // Grace 5s, margin 1s: leads for about 4s, then releases and exits.
    let status = a
        .wait_exit(secs(7))
        .expect("exits before the grace period ends");
    let took = t0.elapsed();
    assert!(status.success(), "exit status {status}");
    assert!(
        took >= Duration::from_millis(3800) && took < secs(5),
        "left after {took:?}"
    );
    // The process has exited; its last write reaches the observer a moment later.
    observer.wait_until(secs(2), "pod-a's label turned false", |s| {
        s.leaderless_since().is_some()
    });
    let lost = observer.with(|s| s.leaderless_since()).unwrap();
    let led_for = lost - t0;
    assert!(
        led_for >= Duration::from_millis(3800),
        "stopped leading after only {led_for:?}"
    );
    let lease = ns.get_lease().unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "");
    assert_ne!(
        lease["spec"]["renewTime"], renew_before,
        "renewed while draining"
    );
    assert!(
        a.output().contains("renew") || a.output().contains("releasing"),
        "{}",
        a.output()
    );
    assert_eq!(ns.label("pod-a", LEADER_KEY).as_deref(), Some("false"));
}

/// Deleting the leader's pod hands over within a second without any signal; the drained
/// sidecar then waits for the kubelet's SIGTERM and exits 0 on it.
#[test]
fn pod_deletion_starts_the_drain_without_a_signal() {
    let cluster = Cluster::shared();
    let ns = Namespace::new(cluster, "delete");
    let (observer, mut sidecars, leader) = start(&ns, &["pod-a", "pod-b"]);
    let other = if leader == "pod-a" { "pod-b" } else { "pod-a" };
    let t0 = Instant::now();
    ns.delete_pod(&leader, 30);
    let seen = observer.wait_until(secs(5), "the other pod leads", |s| {
        s.leader().as_deref() == Some(other)
    });
    assert!(seen - t0 < SECOND, "handover took {:?}", seen - t0);
    // Drained, it stays for the kubelet's SIGTERM: a container that exits first is
    // restarted by the kubelet (tests/node.rs found it), and a native sidecar would stop
    // before its app.
    let s = by_pod(&mut sidecars, &leader);
    s.wait_for_output("waiting for the kubelet's SIGTERM", secs(5));
    assert!(s.is_running());
    assert!(s.output().contains("pod is being deleted"));
    // The kubelet's part.
    s.sigterm();
    let status = s.wait_exit(secs(5)).expect("exits on SIGTERM");
    assert!(status.success());
}

/// A SIGKILLed leader is replaced within lease + retry + 1 s, and the dead pod's stale
/// `true` is corrected to `false`.
#[test]
fn leader_sigkill_fails_over_after_the_lease_expires() {
    let cluster = Cluster::shared();
    let ns = Namespace::new(cluster, "kill");
    let (observer, mut sidecars, leader) = start(&ns, &["pod-a", "pod-b", "pod-c"]);
    let t0 = Instant::now();
    by_pod(&mut sidecars, &leader).sigkill();
    let seen = observer.wait_until(secs(8), "another pod leads", |s| {
        s.leader().is_some_and(|l| l != leader)
    });
    let took = seen - t0;
    assert!(
        took < Duration::from_millis(4500),
        "failover took {took:?} (lease 3s + retry 0.5s + 1s)"
    );
    assert_eq!(
        ns.label(&leader, LEADER_KEY).as_deref(),
        Some("false"),
        "dead pod's stale true corrected"
    );
    eprintln!("crash failover: {took:?}");
}

/// A leader cut off from the API server is replaced within 6 s and never claims while
/// cut; once healed it rejoins as a follower and leadership does not flap.
#[test]
fn partitioned_leader_is_replaced_and_rejoins_as_follower() {
    let cluster = Cluster::shared();
    let ns = Namespace::new(cluster, "cut");
    let pods = ["pod-a", "pod-b", "pod-c"];
    for p in pods {
        ns.create_pod(p, true);
    }
    let observer = Observer::start(&ns);
    let proxies: Vec<_> = pods.iter().map(|_| Proxy::start(cluster.port)).collect();
    let _sidecars: Vec<_> = pods
        .iter()
        .zip(&proxies)
        .map(|(p, proxy)| {
            Sidecar::spawn_with(
                &ns,
                p,
                SidecarOptions {
                    server: Some(proxy.url()),
                    extra: &[],
                },
            )
        })
        .collect();
    let leader = observer.wait_for_single_leader(secs(15));
    let cut = &proxies[pods.iter().position(|p| *p == leader).unwrap()];
    cut.blackhole(true);
    let t0 = Instant::now();
    let seen = observer.wait_until(secs(10), "another pod leads", |s| {
        s.leader().is_some_and(|l| l != leader)
    });
    assert!(seen - t0 < secs(6), "takeover took {:?}", seen - t0);
    assert_eq!(ns.label(&leader, LEADER_KEY).as_deref(), Some("false"));
    let new_leader = observer.leader().unwrap();
    // Stay cut for a while: the old leader must not claim anything.
    std::thread::sleep(secs(3));
    cut.blackhole(false);
    observer.wait_until(secs(10), "the old leader rejoins as a follower", |s| {
        s.label(&leader, PARTICIPANT_KEY) == Some("true")
            && s.label(&leader, LEADER_KEY) == Some("false")
    });
    std::thread::sleep(secs(2));
    assert_eq!(
        observer.leader(),
        Some(new_leader),
        "no flapping after the cut healed"
    );
}

/// kube-apiserver stopped for longer than the lease and started again: every sidecar
/// keeps running and a single leader is elected afterwards.
#[test]
fn apiserver_restart_mid_run() {
    let cluster = Cluster::start(ClusterOptions::default());
    let ns = Namespace::new(&cluster, "restart");
    let (observer, mut sidecars, _leader) = start(&ns, &["pod-a", "pod-b"]);
    drop(observer);
    cluster.stop_apiserver();
    // Longer than the lease: the leader must stop acting as leader meanwhile.
    std::thread::sleep(secs(5));
    cluster.start_apiserver();
    let observer = Observer::start(&ns);
    observer.wait_for_single_leader(secs(20));
    for s in &mut sidecars {
        assert!(s.is_running(), "{} exited:\n{}", s.pod, s.output());
    }
}

/// A revoked token (401s) is recovered from once a fresh token lands in the file, with no
/// restart; even at -vv no token or Authorization header is ever printed.
#[test]
fn token_rotation_recovers_without_restart_and_never_prints_the_token() {
    let cluster = Cluster::shared();
    let ns = Namespace::new(cluster, "token");
    for p in ["pod-a", "pod-b"] {
        ns.create_pod(p, true);
    }
    let observer = Observer::start(&ns);
    let first_token = std::fs::read_to_string(ns.token_file()).unwrap();
    let mut sidecars: Vec<_> = ["pod-a", "pod-b"]
        .iter()
        .map(|p| Sidecar::spawn(&ns, p, &["-vv"]))
        .collect();
    observer.wait_for_single_leader(secs(15));
    // The token in use is revoked and the file holds a bad one: calls fail with 401
    // until a good token appears in the file.
    ns.write_token("not-a-valid-token");
    ns.recreate_service_account();
    wait::until_every(
        "a 401 with the bad token",
        secs(10),
        Duration::from_millis(100),
        || sidecars.iter().any(|s| s.output().contains("< 401")),
    );
    let fresh = ns.fresh_token();
    ns.write_token(&fresh);
    observer.wait_until(secs(15), "a leader after the fresh token", |s| {
        s.leader().is_some()
    });
    // Leader keeps renewing with the fresh token.
    let renew = ns.get_lease().unwrap()["spec"]["renewTime"].clone();
    wait::until_every(
        "a renewal after the token came back",
        secs(5),
        Duration::from_millis(100),
        || ns.get_lease().unwrap()["spec"]["renewTime"] != renew,
    );
    for s in &mut sidecars {
        assert!(s.is_running(), "{} exited", s.pod);
        let out = s.output();
        for secret in [first_token.trim(), fresh.trim(), "not-a-valid-token"] {
            assert!(!out.contains(secret), "{} printed a token", s.pod);
        }
        assert!(
            !out.contains("Bearer"),
            "{} printed an Authorization header",
            s.pod
        );
        assert!(
            out.contains("> GET ") || out.contains("> PUT "),
            "-vv traces calls"
        );
    }
}

/// Without `patch` on pods the sidecar exits 1 naming exactly the missing permission
/// (`pods/patch`, the rule to add), and nothing else.
#[test]
fn missing_patch_permission_is_named() {
    let cluster = Cluster::shared();
    let ns = Namespace::with_rbac(cluster, "norbac", |m| {
        m.replace(
            "verbs: [\"get\", \"list\", \"watch\", \"patch\"]",
            "verbs: [\"get\", \"list\", \"watch\"]",
        )
    });
    ns.create_pod("pod-a", true);
    let mut s = Sidecar::spawn(&ns, "pod-a", &[]);
    let status = s.wait_exit(secs(10)).expect("exits");
    assert_eq!(status.code(), Some(1), "{}", s.output());
    let out = s.output();
    assert!(out.contains("pods/patch"), "{out}");
    assert!(out.contains("verbs: [\"patch\"]"), "{out}");
    assert!(
        !out.contains("leases"),
        "only the missing permission is named: {out}"
    );
}

/// Watches the server ends every few seconds are re-opened quietly: for a minute no
/// leader change, no label write, no warning or error.
#[test]
fn server_ended_watches_reconnect_quietly() {
    let cluster = Cluster::start(ClusterOptions {
        min_request_timeout: Some(5),
        ..Default::default()
    });
    let ns = Namespace::new(&cluster, "rewatch");
    for p in ["pod-a", "pod-b", "pod-c"] {
        ns.create_pod(p, true);
    }
    let observer = Observer::start(&ns);
    let sidecars: Vec<_> = ["pod-a", "pod-b", "pod-c"]
        .iter()
        .map(|p| Sidecar::spawn(&ns, p, &["--watch-timeout=0", "-v"]))
        .collect();
    let leader = observer.wait_for_single_leader(secs(15));
    let changes = observer.history_len();
    std::thread::sleep(secs(60));
    assert_eq!(observer.leader(), Some(leader), "no leader change");
    assert_eq!(observer.history_len(), changes, "labels never moved");
    for s in &sidecars {
        let out = s.output();
        let watches = out.matches("watch=true").count() / 2;
        assert!(
            watches >= 6,
            "{}: the server ended watches only {watches} times in 60s",
            s.pod
        );
        let noisy: Vec<_> = out
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .collect();
        assert!(noisy.is_empty(), "{}: {noisy:#?}", s.pod);
    }
}

/// Ten sidecars started at once elect one leader (nine `false`), none crashes, and the
/// write conflicts between them stay quiet.
#[test]
fn ten_sidecars_at_once() {
    let cluster = Cluster::shared();
    let ns = Namespace::new(cluster, "ten");
    let pods: Vec<String> = (0..10).map(|i| format!("pod-{i}")).collect();
    let names: Vec<&str> = pods.iter().map(String::as_str).collect();
    let (observer, mut sidecars, _) = start(&ns, &names);
    observer.with(|s| {
        assert_eq!(
            s.pods
                .values()
                .filter(|p| p.labels.get(LEADER_KEY).map(String::as_str) == Some("false"))
                .count(),
            9
        );
    });
    for s in &mut sidecars {
        assert!(s.is_running(), "{} crashed:\n{}", s.pod, s.output());
        let out = s.output();
        let noisy: Vec<_> = out
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .collect();
        assert!(
            noisy.is_empty(),
            "{}: conflicts must be quiet: {noisy:#?}",
            s.pod
        );
    }
}

/// Every shipped manifest passes the real API server's validation (server-side
/// dry run), and the kustomization re-targets the RBAC subject to another namespace.
#[test]
fn deploy_manifests_pass_server_side_dry_run() {
    let cluster = Cluster::shared();
    let ns = Namespace::new(cluster, "manifests");
    let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");
    for f in [
        "deployment.yaml",
        "service.yaml",
        "statefulset.yaml",
        "native-sidecar.yaml",
    ] {
        let path = format!("{deploy}/{f}");
        let out = cluster.kubectl(
            &["apply", "--dry-run=server", "-n", &ns.name, "-f", &path],
            None,
        );
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // kubectl apply -k with a namespace override, as the kustomization's comment says.
    let overlay = ns.dir.join("overlay");
    std::fs::create_dir_all(&overlay).unwrap();
    let rel = relative(&overlay, std::path::Path::new(deploy));
    std::fs::write(
        overlay.join("kustomization.yaml"),
        format!("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: {}\nresources:\n  - {rel}\n", ns.name),
    )
    .unwrap();
    let out = cluster.kubectl(
        &["apply", "--dry-run=server", "-k", overlay.to_str().unwrap()],
        None,
    );
    assert!(
        out.status.success(),
        "kustomization: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = cluster.kubectl(&["kustomize", overlay.to_str().unwrap()], None);
    let text = String::from_utf8_lossy(&rendered.stdout);
    assert!(
        text.contains(&format!("  namespace: {}\n", ns.name)),
        "{text}"
    );
    assert!(!text.contains("namespace: default"), "{text}");
}

/// A relative path from `from` (a folder) to `to`: kustomize refuses absolute ones.
fn relative(from: &std::path::Path, to: &std::path::Path) -> String {
    let from: Vec<_> = from.components().collect();
    let to: Vec<_> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = vec!["..".into(); from.len() - common];
    parts.extend(
        to[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    parts.join("/")
}

/// Checks the Prometheus text format line by line; returns the samples.
fn parse_prometheus(text: &str) -> Vec<(String, f64)> {
    let mut samples = vec![];
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            assert!(
                rest.starts_with("HELP ") || rest.starts_with("TYPE "),
                "bad comment: {line}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':'),
            "bad metric name in {line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(
                    labels.starts_with('{') && labels.ends_with('}'),
                    "bad labels in {line}"
                );
            }
        }
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        samples.push((series.to_string(), v));
    }
    samples
}

fn sample(samples: &[(String, f64)], series: &str) -> Option<f64> {
    samples.iter().find(|(s, _)| s == series).map(|(_, v)| *v)
}

/// Probes, metrics, /leader, the leader file and Kubernetes events all follow
/// leadership through a handover.
#[test]
fn operator_endpoints_follow_leadership() {
    let cluster = Cluster::shared();
    let ns = Namespace::new(cluster, "operate");
    let pods = ["pod-a", "pod-b"];
    for p in pods {
        ns.create_pod(p, true);
    }
    let observer = Observer::start(&ns);
    let file = |p: &str| ns.dir.join(format!("{p}.is-leader"));
    let mut sidecars: Vec<_> = pods
        .iter()
        .map(|p| {
            let arg = format!("--leader-file={}", file(p).display());
            Sidecar::spawn(&ns, p, &[arg.as_str()])
        })
        .collect();
    let leader = observer.wait_for_single_leader(secs(15));
    let other = pods.iter().find(|p| **p != leader).unwrap().to_string();
    let li = pods.iter().position(|p| *p == leader).unwrap();
    let oi = 1 - li;

    for s in &sidecars {
        assert_eq!(s.http_get("/healthz").0, 200);
        assert_eq!(s.http_get("/readyz").0, 200);
    }
    let doc: serde_json::Value = wait::until("/leader names the leader", secs(5), || {
        let v: serde_json::Value =
            serde_json::from_str(&sidecars[oi].http_get("/leader").1).ok()?;
        (v["leader"] == leader.as_str() && v["participants"].as_array()?.len() == 2).then_some(v)
    });
    assert_eq!(doc["isLeader"], false);
    assert_eq!(doc["pod"], other.as_str());
    wait::until("leader's /leader says isLeader", secs(5), || {
        let v: serde_json::Value =
            serde_json::from_str(&sidecars[li].http_get("/leader").1).ok()?;
        (v["isLeader"] == true).then_some(())
    });
    let read = |p: &str| std::fs::read_to_string(file(p)).unwrap_or_default();
    wait::until("leader files", secs(5), || {
        (read(&leader) == "true\n" && read(&other) == "false\n").then_some(())
    });

    // Metrics after a few renewals.
    let samples = wait::until("two renewals in /metrics", secs(5), || {
        let (code, text) = sidecars[li].http_get("/metrics");
        assert_eq!(code, 200);
        let s = parse_prometheus(&text);
        (sample(
            &s,
            "leader_labeler_lease_renewals_total{result=\"success\"}",
        )? >= 2.0)
            .then_some(s)
    });
    assert_eq!(sample(&samples, "leader_labeler_is_leader"), Some(1.0));
    assert_eq!(
        sample(&samples, "leader_labeler_leader_transitions_total"),
        Some(1.0)
    );
    assert_eq!(sample(&samples, "leader_labeler_participants"), Some(2.0));
    assert_eq!(sample(&samples, "leader_labeler_draining"), Some(0.0));
    assert!(
        sample(
            &samples,
            "leader_labeler_api_requests_total{verb=\"PUT\",code=\"200\"}"
        )
        .unwrap_or(0.0)
            >= 2.0
    );
    assert!(sample(&samples, "leader_labeler_renew_duration_seconds_count").unwrap_or(0.0) >= 2.0);
    assert!(
        sample(&samples, "leader_labeler_last_renewal_timestamp_seconds").unwrap_or(0.0) > 1.7e9
    );
    let follower_metrics = parse_prometheus(&sidecars[oi].http_get("/metrics").1);
    assert_eq!(
        sample(&follower_metrics, "leader_labeler_is_leader"),
        Some(0.0)
    );

    // Handover: the files, /leader and the events follow.
    sidecars[li].sigterm();
    observer.wait_until(secs(5), "the other pod leads", |s| {
        s.leader().as_deref() == Some(other.as_str())
    });
    wait::until("leader files after the handover", secs(5), || {
        (read(&leader) == "false\n" && read(&other) == "true\n").then_some(())
    });
    wait::until("new leader's /leader", secs(5), || {
        let v: serde_json::Value =
            serde_json::from_str(&sidecars[oi].http_get("/leader").1).ok()?;
        (v["isLeader"] == true).then_some(())
    });
    sidecars[li].wait_exit(secs(5)).expect("old leader exits");
    let reasons = |pod: &str| -> Vec<String> {
        let list = ns.api.get(&format!(
            "/api/v1/namespaces/{}/events?fieldSelector=involvedObject.name%3D{pod}",
            ns.name
        ));
        list["items"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e["reason"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let old = wait::until("events on the old leader", secs(5), || {
        let r = reasons(&leader);
        (r.contains(&"HandedOver".to_string())).then_some(r)
    });
    for reason in ["BecameLeader", "Draining", "HandedOver"] {
        assert!(
            old.iter().any(|r| r == reason),
            "{leader}: {reason} missing from {old:?}"
        );
    }
    wait::until("BecameLeader on the new leader", secs(5), || {
        reasons(&other)
            .iter()
            .any(|r| r == "BecameLeader")
            .then_some(())
    });
}

/// Without the optional events permission the sidecar warns once and works.
#[test]
fn events_forbidden_warns_once_and_carries_on() {
    let cluster = Cluster::shared();
    let ns = Namespace::with_rbac(cluster, "noevents", |m| {
        let start = m
            .find("  # Record leadership changes")
            .expect("events rule in rbac.yaml");
        let end = m[start..].find("---").map(|i| start + i).unwrap();
        format!("{}{}", &m[..start], &m[end..])
    });
    let (observer, mut sidecars, leader) = start(&ns, &["pod-a", "pod-b"]);
    let li = sidecars.iter().position(|s| s.pod == leader).unwrap();
    sidecars[li].sigterm();
    observer.wait_until(secs(5), "handover", |s| {
        s.leader().is_some_and(|l| l != leader)
    });
    sidecars[li].wait_exit(secs(5)).expect("exits");
    let out = sidecars[li].output();
    assert!(
        out.contains(
            "missing optional RBAC permission(s) events/create, events/patch: no Kubernetes events"
        ),
        "{out}"
    );
    let warnings = out.lines().filter(|l| l.contains(" WARN ")).count();
    assert_eq!(
        warnings, 1,
        "one warning about events, nothing else:\n{out}"
    );
}

/// A Lease watch that is forbidden falls back to polling, said once.
#[test]
fn forbidden_lease_watch_falls_back_to_polling() {
    let cluster = Cluster::shared();
    let ns = Namespace::with_rbac(cluster, "poll", |m| {
        assert!(m.contains("verbs: [\"get\", \"list\", \"watch\", \"update\"]"));
        m.replace(
            "verbs: [\"get\", \"list\", \"watch\", \"update\"]",
            "verbs: [\"get\", \"update\"]",
        )
    });
    let (observer, sidecars, leader) = start(&ns, &["pod-a", "pod-b"]);
    let li = sidecars.iter().position(|s| s.pod == leader).unwrap();
    sidecars[li].sigterm();
    // Polling every 500 ms: the follower takes the released lease within a second or so.
    observer.wait_until(secs(3), "handover by polling", |s| {
        s.leader().is_some_and(|l| l != leader)
    });
    for s in &sidecars {
        let out = s.output();
        assert_eq!(
            out.matches("polling it every 500ms instead").count(),
            1,
            "{}:\n{out}",
            s.pod
        );
        assert!(
            out.contains(
                "missing optional RBAC permission(s) leases.coordination.k8s.io/list, \
                 leases.coordination.k8s.io/watch: the Lease will be polled"
            ),
            "{out}"
        );
    }
}

/// Two elections in one namespace with the same `--leadership-label` leave each
/// other's pods alone. Each sidecar marks its pod with its election, so neither leader
/// fences or demotes the other election's pods: both leaders keep `true` throughout.
#[test]
fn elections_sharing_a_label_key_leave_each_other_alone() {
    let cluster = Cluster::shared();
    let ns = Namespace::new(cluster, "shared-key");
    let mut role = ns.shipped_role();
    for rule in role["rules"].as_array_mut().unwrap() {
        if let Some(names) = rule["resourceNames"].as_array_mut() {
            names.push("other-app".into());
        }
    }
    ns.apply_role(role);
    wait::until("the Role update to take", secs(10), || {
        ns.sa_can("update", "leases", Some("other-app"))
    });
    const SHARED: &str = "shared/is-leader";
    ns.create_pod("pod-a", true);
    ns.create_pod("pod-b", true);
    let observer = Observer::start_for(&ns, SHARED).lenient();
    let label = format!("--leadership-label={SHARED}");
    let _a = Sidecar::spawn(&ns, "pod-a", &[&label]);
    observer.wait_until(secs(15), "pod-a leads my-app", |s| {
        s.leader().as_deref() == Some("pod-a")
    });
    let b = Sidecar::spawn(
        &ns,
        "pod-b",
        &[
            &label,
            "--election-name=other-app",
            "--participation-label=other-app/participant",
        ],
    );
    observer.wait_until(secs(15), "pod-b leads other-app", |s| {
        s.label("pod-b", SHARED) == Some("true")
    });
    // pod-b's takeover fences first and claims last: by now any demotion of pod-a is in
    // the history.
    observer.with(|s| {
        let first = s
            .history
            .iter()
            .position(|(_, _, set)| set.contains(&"pod-a".to_string()))
            .expect("pod-a led");
        for (_, rv, set) in &s.history[first..] {
            assert!(
                set.contains(&"pod-a".to_string()),
                "pod-a demoted at resourceVersion {rv} by the other election: {:?}",
                s.history
            );
        }
    });
    assert!(
        b.output().contains("belongs to election \"my-app\""),
        "the shared key was not reported:\n{}",
        b.output()
    );
    assert_eq!(ns.label("pod-a", SHARED).as_deref(), Some("true"));
}
