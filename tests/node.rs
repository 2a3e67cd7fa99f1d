//! The last layer: the shipped image and manifests under a real kubelet. containerd 1.6
//! and runc from Debian, kubelet v1.36.3 built from Go modules, registered with a real
//! control plane (see tests/harness/src/node.rs). The image comes from the air-gap tarball
//! through `ctr -n k8s.io images import`; pods are the templates of deploy/*.yaml with only
//! what a single loopback node needs changed (harness::node::render), created with
//! nodeName set (no Deployment/StatefulSet controllers). The kubelet mounts the projected
//! token, CA and namespace, runs the probes, sends SIGTERM and SIGKILL, and reports status.
//!
//! `make test-node`; run with `--test-threads=8`: the token rotation takes about 9 minutes
//! (the API server's minimum token lifetime is 10 minutes, the kubelet renews at 80%) and
//! the other scenarios run beside it.

use harness::inject::{self, sidecars, ELECTION_LABEL};
use harness::node::{self, container, container_id, container_status, Manifest, Node};
use harness::{secs, wait, ELECTION};
use harness::{Namespace, Observer, LEADER_KEY, PARTICIPANT_KEY};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Creates pods from a manifest's template (each edited by `edit`), waits until the
/// kubelet reports them Ready and one of them leads. Returns the observer, the leader
/// and the pods as stored.
fn start_pods(
    n: &'static Node,
    ns: &Namespace,
    manifest: Manifest,
    names: &[&str],
    edit: impl Fn(&mut Value),
) -> (Observer, String) {
    start_pods_from(n, ns, &node::template(n.cluster, manifest), names, edit)
}

/// Like `start_pods`, from a pod template.
fn start_pods_from(
    n: &'static Node,
    ns: &Namespace,
    template: &Value,
    names: &[&str],
    edit: impl Fn(&mut Value),
) -> (Observer, String) {
    let observer = Observer::start(ns);
    for name in names {
        let (mut pod, _) = node::render(n, template, name);
        edit(&mut pod);
        node::create(ns, &pod);
    }
    for name in names {
        node::wait_ready(n, ns, name, secs(120));
    }
    let leader = observer.wait_for_single_leader(secs(30));
    let count = names.len();
    observer.wait_until(secs(30), "every pod participates", |s| {
        s.pods
            .values()
            .filter(|p| p.labels.get(PARTICIPANT_KEY).map(String::as_str) == Some("true"))
            .count()
            == count
    });
    (observer, leader)
}

fn other<'a>(names: &[&'a str], leader: &str) -> &'a str {
    names.iter().find(|p| **p != leader).copied().unwrap()
}

fn sidecar_log(n: &Node, ns: &Namespace, pod: &Value) -> String {
    n.container_log(&ns.name, pod, "leader-labeler")
}

/// The audit log's lines for requests made with this namespace's service account.
fn sa_requests(n: &Node, ns: &Namespace) -> Vec<Value> {
    let user = format!("system:serviceaccount:{}:leader-labeler", ns.name);
    std::fs::read_to_string(n.cluster.audit_log())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["user"]["username"] == user.as_str())
        .collect()
}

fn credential_id(v: &Value) -> String {
    v["user"]["extra"]["authentication.kubernetes.io/credential-id"][0]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// The `jti` claim of a JWT (base64url payload, decoded by hand).
fn jti(token: &str) -> String {
    let payload = token.split('.').nth(1).expect("JWT payload");
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in payload.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => continue,
        } as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    let claims: Value = serde_json::from_slice(&out).expect("JWT claims");
    claims["jti"].as_str().expect("jti claim").to_string()
}

/// Pods from deploy/deployment.yaml under a real kubelet elect one leader with the
/// in-cluster defaults and the projected token (every Lease request carries it), as user
/// 65532 with no capabilities on a read-only root.
#[test]
fn deployment_pods_elect_one_leader_with_the_projected_credentials() {
    let n = Node::shared();
    eprintln!("node started in {:?}", n.started_in);
    let ns = n.namespace("node-elect");
    let names = ["pod-a", "pod-b"];
    let (observer, leader) = start_pods(n, &ns, Manifest::Deployment, &names, |_| {});
    let follower = other(&names, &leader);
    assert_eq!(
        observer.labels(&leader).get(LEADER_KEY).map(String::as_str),
        Some("true")
    );
    assert_eq!(
        observer
            .labels(follower)
            .get(LEADER_KEY)
            .map(String::as_str),
        Some("false")
    );
    let lease = ns.get_lease().expect("Lease my-app");
    assert_eq!(
        lease["spec"]["holderIdentity"],
        leader.as_str(),
        "{lease:#}"
    );
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 15, "{lease:#}");

    let pod = ns.get_pod(&leader);
    let spec_sidecar = pod["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "leader-labeler")
        .unwrap()
        .clone();
    for flag in ["--server", "--token-file", "--ca-file"] {
        assert!(
            !spec_sidecar["args"].to_string().contains(flag),
            "the sidecar must use the in-cluster defaults, not {flag}"
        );
    }
    // The ServiceAccount admission plugin's projected volume, mounted where the sidecar
    // looks by default.
    let mount = spec_sidecar["volumeMounts"]
        .as_array()
        .and_then(|m| {
            m.iter()
                .find(|m| m["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount")
        })
        .cloned()
        .unwrap_or_else(|| panic!("no service-account mount: {spec_sidecar:#}"));
    let volume = mount["name"].as_str().unwrap();
    assert!(volume.starts_with("kube-api-access-"), "{mount}");
    let files = n.volume_dir(&pod, "kubernetes.io~projected", volume);
    let token = std::fs::read_to_string(files.join("token")).expect("projected token");
    let namespace_file = std::fs::read_to_string(files.join("namespace")).unwrap();
    assert_eq!(namespace_file, ns.name);
    let ca = std::fs::read_to_string(files.join("ca.crt")).unwrap();
    assert_eq!(ca, std::fs::read_to_string(n.cluster.ca_file()).unwrap());

    // Every Lease request of the service account carried the projected token.
    let lease_requests: Vec<Value> = sa_requests(n, &ns)
        .into_iter()
        .filter(|v| v["objectRef"]["resource"] == "leases")
        .collect();
    assert!(
        !lease_requests.is_empty(),
        "no Lease request by the service account"
    );
    let tokens: std::collections::BTreeSet<String> =
        lease_requests.iter().map(credential_id).collect();
    let leader_jti = format!("JTI={}", jti(token.trim()));
    assert!(
        tokens.contains(&leader_jti),
        "the leader's projected token ({leader_jti}) made no Lease request; seen: {tokens:?}"
    );

    // User 65532 on a read-only root, no capabilities.
    let cid = container_id(&pod, "leader-labeler").unwrap();
    let pid = n.task_pid(&cid);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uid_line.split_whitespace().skip(1).collect::<Vec<_>>(),
        ["65532"; 4],
        "{uid_line}"
    );
    let cap_eff = status.lines().find(|l| l.starts_with("CapEff:")).unwrap();
    assert!(cap_eff.ends_with("0000000000000000"), "{cap_eff}");
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root = mountinfo
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .unwrap();
    let opts = root.split_whitespace().nth(5).unwrap();
    assert!(
        opts.split(',').any(|o| o == "ro"),
        "root not read-only: {root}"
    );
    let cstatus = container_status(&pod, "leader-labeler");
    assert_eq!(cstatus["restartCount"], 0, "{cstatus:#}");
    eprintln!(
        "scenario 1: leader {leader}, Lease holder {}, {} Lease requests by the service account with {} token(s); sidecar pid {pid} {uid_line}, root {opts}",
        lease["spec"]["holderIdentity"],
        lease_requests.len(),
        tokens.len()
    );
    eprintln!(
        "kubelet RSS {} KiB, containerd RSS {} KiB",
        Node::rss_kib(n.kubelet_pid),
        Node::rss_kib(n.containerd_pid)
    );
}

/// The leader's app failing its readiness probe hands leadership over; once ready again
/// it rejoins as a follower (no failback at equal priority, no restart).
#[test]
fn failing_readiness_probe_hands_over_and_recovery_rejoins() {
    let n = Node::shared();
    let ns = n.namespace("node-ready");
    let names = ["pod-a", "pod-b"];
    let (observer, leader) = start_pods(n, &ns, Manifest::Deployment, &names, |_| {});
    let follower = other(&names, &leader);
    let app = container_id(&ns.get_pod(&leader), "app").unwrap();

    let t0 = Instant::now();
    n.exec(&app, &["rm", "/tmp/ready"]);
    let unready = observer.wait_until(secs(30), "the kubelet reports the leader unready", |s| {
        s.pods.get(&leader).is_some_and(|p| !p.ready)
    });
    let handed = observer.wait_until(secs(15), "the follower leads", |s| {
        s.leader().as_deref() == Some(follower)
    });
    observer.wait_until(secs(15), "the old leader is labeled false", |s| {
        s.label(&leader, LEADER_KEY) == Some("false")
    });
    eprintln!(
        "scenario 2: probe failing -> unready after {} ms (probe period 2 s x 3), handover {} ms after the Ready=False event",
        (unready - t0).as_millis(),
        (handed - unready).as_millis()
    );

    let t1 = Instant::now();
    n.exec(&app, &["touch", "/tmp/ready"]);
    let back = observer.wait_until(
        secs(30),
        "the old leader is ready and participates again",
        |s| {
            s.pods.get(&leader).is_some_and(|p| p.ready)
                && s.label(&leader, PARTICIPANT_KEY) == Some("true")
        },
    );
    // Equal priority: no failback; the new leader keeps the Lease.
    std::thread::sleep(secs(5));
    assert_eq!(observer.leader().as_deref(), Some(follower));
    assert_eq!(ns.get_lease().unwrap()["spec"]["holderIdentity"], follower);
    let pod = ns.get_pod(&leader);
    assert_eq!(container_status(&pod, "leader-labeler")["restartCount"], 0);
    eprintln!(
        "scenario 2: recovered and rejoined {} ms after the file came back",
        (back - t1).as_millis()
    );
}

/// Kubelet log lines about a pod (`pod="ns/name"`) that contain `needle`.
fn kubelet_lines(n: &Node, ns: &Namespace, pod: &str, needle: &str) -> Vec<String> {
    let pod_ref = format!("pod=\"{}/{pod}\"", ns.name);
    std::fs::read_to_string(n.dir.join("kubelet.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&pod_ref) && l.contains(needle))
        .map(str::to_string)
        .collect()
}

/// What happened to a deleted leader pod's containers, measured from the delete.
struct Deletion {
    handover_ms: u128,
    sidecar: node::TaskExit,
    app: node::TaskExit,
    sidecar_ms: u128,
    app_ms: u128,
    /// The kubelet's "Killing container" line for the original sidecar container, if any.
    sigterm_by_kubelet: bool,
    /// Containers the kubelet started in the pod after the delete.
    started_after_delete: usize,
    sidecar_log: String,
}

/// `kubectl delete pod` of the leader (the shipped grace period), then: the follower
/// leads, the sidecar and the app exit, the pod is gone.
fn delete_leader(
    n: &'static Node,
    ns: &Namespace,
    observer: &Observer,
    leader: &str,
    follower: &str,
) -> Deletion {
    let pod = ns.get_pod(leader);
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    assert_eq!(grace, 30, "the shipped grace period");
    let sidecar = container_id(&pod, "leader-labeler").unwrap();
    let app = container_id(&pod, "app").unwrap();
    let started_before = kubelet_lines(n, ns, leader, "\"Type\":\"ContainerStarted\"").len();

    let t0 = Instant::now();
    let out = n.cluster.kubectl(
        &["delete", "pod", leader, "-n", &ns.name, "--wait=false"],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let handed = observer.wait_until(secs(20), "the follower leads", |s| {
        s.leader().as_deref() == Some(follower)
    });
    let sidecar_exit = n.wait_exit(&sidecar, secs(grace + 5));
    // Read now: the kubelet removes the logs with the pod.
    let sidecar_log = sidecar_log(n, ns, &pod);
    let app_exit = n.wait_exit(&app, secs(grace + 5));
    observer.wait_until(secs(grace + 10), "the pod is gone", |s| {
        !s.pods.contains_key(leader)
    });
    assert_eq!(ns.get_lease().unwrap()["spec"]["holderIdentity"], follower);
    let killing = kubelet_lines(n, ns, leader, "Killing container");
    let started = kubelet_lines(n, ns, leader, "\"Type\":\"ContainerStarted\"");
    let d = Deletion {
        handover_ms: (handed - t0).as_millis(),
        sidecar_ms: (sidecar_exit.at - t0).as_millis(),
        app_ms: (app_exit.at - t0).as_millis(),
        sidecar: sidecar_exit,
        app: app_exit,
        sigterm_by_kubelet: killing.iter().any(|l| l.contains(&sidecar)),
        started_after_delete: started.len() - started_before,
        sidecar_log,
    };
    eprintln!(
        "{}: handover {} ms after kubectl delete; sidecar exited {} at {} ms (SIGTERM from the kubelet: {}); app exited {} at {} ms; containers started after the delete: {}\nkubelet:\n{}\nsidecar log:\n{}",
        ns.name,
        d.handover_ms,
        d.sidecar.status,
        d.sidecar_ms,
        d.sigterm_by_kubelet,
        d.app.status,
        d.app_ms,
        d.started_after_delete,
        killing.join("\n"),
        d.sidecar_log
    );
    d
}

/// `kubectl delete` of the leader's pod: handover within 2 s, and the sidecar waits for
/// the kubelet's SIGTERM and exits 0 within the grace (the kubelet restarts nothing).
#[test]
fn kubectl_delete_of_the_leader_drains_and_exits_zero_within_the_grace() {
    let n = Node::shared();
    let ns = n.namespace("node-delete");
    let names = ["pod-a", "pod-b"];
    let (observer, leader) = start_pods(n, &ns, Manifest::Deployment, &names, |_| {});
    let follower = other(&names, &leader);
    let d = delete_leader(n, &ns, &observer, &leader, follower);
    assert!(d.handover_ms < 2000, "handover took {} ms", d.handover_ms);
    assert_eq!(d.sidecar.status, 0, "sidecar exit status");
    assert!(d.sidecar_ms < 30_000, "the sidecar outlived the 30 s grace");
    assert_eq!(d.app.status, 0, "app exit status");
    // A regular container that exits while its pod is terminating, before the kubelet
    // has killed it, is started again by the kubelet (restartPolicy Always).
    assert_eq!(
        d.started_after_delete, 0,
        "the kubelet restarted a container of the deleted pod: the sidecar exited {} ms after the delete without waiting for the kubelet's SIGTERM (SIGTERM from the kubelet: {})",
        d.sidecar_ms, d.sigterm_by_kubelet
    );
    assert!(
        d.sigterm_by_kubelet,
        "the kubelet never sent the sidecar SIGTERM"
    );
}

/// As a native sidecar (deploy/native-sidecar.yaml) it drains while the app still runs
/// and stops after it when the leader's pod is deleted.
#[test]
fn native_sidecar_drains_while_the_app_runs_and_stops_last() {
    let n = Node::shared();
    let ns = n.namespace("node-native");
    let names = ["pod-a", "pod-b"];
    let (observer, leader) = start_pods(n, &ns, Manifest::NativeSidecar, &names, |_| {});
    let follower = other(&names, &leader);
    let pod = ns.get_pod(&leader);
    assert!(
        pod["status"]["initContainerStatuses"][0]["name"] == "leader-labeler",
        "the sidecar runs as a native sidecar (init container): {:#}",
        pod["status"]
    );
    let d = delete_leader(n, &ns, &observer, &leader, follower);
    assert_native_sidecar_drain(&d);
}

/// What deploy/native-sidecar.yaml promises for a deleted leader: the handover while the
/// app runs, both exit 0, nothing restarted, the sidecar stopped after the app.
fn assert_native_sidecar_drain(d: &Deletion) {
    assert!(
        d.handover_ms < d.app_ms,
        "the handover ({} ms) must happen while the app still runs (it exited at {} ms)",
        d.handover_ms,
        d.app_ms
    );
    assert_eq!(d.app.status, 0, "app exit status");
    assert_eq!(d.sidecar.status, 0, "sidecar exit status");
    assert_eq!(
        d.started_after_delete, 0,
        "the kubelet restarted a container of the deleted pod"
    );
    // deploy/native-sidecar.yaml: "stopped only after the app has exited".
    assert!(
        d.app.at <= d.sidecar.at,
        "the native sidecar exited at {} ms, before the app ({} ms): the manifest says it is stopped only after the app has exited",
        d.sidecar_ms,
        d.app_ms
    );
}

/// The liveness probe on /healthz (deploy/statefulset.yaml) passes for a minute: no
/// failed probe, no restart.
#[test]
fn liveness_probe_on_healthz_passes_for_a_minute() {
    let n = Node::shared();
    let ns = n.namespace("node-live");
    let names = ["my-app-0", "my-app-1"];
    let (observer, _leader) = start_pods(n, &ns, Manifest::StatefulSet, &names, |_| {});
    let count = |metrics: &str, pod: &str, result: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("prober_probe_total{")
                    && l.contains("container=\"leader-labeler\"")
                    && l.contains(&format!("namespace=\"{}\"", ns.name))
                    && l.contains(&format!("pod=\"{pod}\""))
                    && l.contains("probe_type=\"Liveness\"")
                    && l.contains(&format!("result=\"{result}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let before = n.probe_metrics();
    std::thread::sleep(secs(62));
    let after = n.probe_metrics();
    for pod in names {
        let ok = count(&after, pod, "successful") - count(&before, pod, "successful");
        let failed = count(&after, pod, "failed") + count(&after, pod, "unknown");
        assert!(
            ok >= 6.0,
            "{pod}: only {ok} successful liveness probes in 62 s:\n{after}"
        );
        assert_eq!(failed, 0.0, "{pod}: failed liveness probes");
        let p = ns.get_pod(pod);
        assert_eq!(
            container_status(&p, "leader-labeler")["restartCount"],
            0,
            "{pod}"
        );
        eprintln!(
            "scenario 5: {pod}: {ok} successful liveness probes in 62 s, 0 failed, 0 restarts"
        );
    }
    assert!(observer.leader().is_some());
}

/// A projected token the kubelet rotates keeps working: the sidecar's next Lease update
/// uses the new token and nothing is rejected with 401.
#[test]
fn projected_token_rotated_by_the_kubelet_keeps_working() {
    let n = Node::shared();
    let ns = n.namespace("node-token");
    let names = ["pod-a"];
    // The test's copy: the projected volume written out (as the admission plugin would
    // add it) with the shortest lifetime the API server allows.
    let (observer, leader) = start_pods(n, &ns, Manifest::Deployment, &names, |pod| {
        pod["spec"]["automountServiceAccountToken"] = json!(false);
        pod["spec"]["volumes"] = json!([{
            "name": "kube-api-access",
            "projected": {"sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 600}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}
            ]}
        }]);
        container(pod, "leader-labeler")["volumeMounts"] = json!([{
            "name": "kube-api-access",
            "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
            "readOnly": true
        }]);
    });
    let pod = ns.get_pod(&leader);
    let file = n
        .volume_dir(&pod, "kubernetes.io~projected", "kube-api-access")
        .join("token");
    let first = jti(std::fs::read_to_string(&file).unwrap().trim());
    let t0 = Instant::now();
    let rotated = loop {
        let now = jti(std::fs::read_to_string(&file).unwrap_or_default().trim());
        if now != first {
            break now;
        }
        assert!(
            t0.elapsed() < secs(560),
            "the kubelet did not rotate the 600 s token within 560 s"
        );
        std::thread::sleep(secs(1));
    };
    let rotated_after = t0.elapsed();
    // The sidecar re-reads its token every minute: a Lease write with the new token.
    let what = format!("a Lease update with the rotated token {rotated}");
    let first_write = wait::until_every(&what, secs(90), secs(1), || {
        sa_requests(n, &ns).into_iter().find(|v| {
            v["objectRef"]["resource"] == "leases"
                && v["verb"] == "update"
                && credential_id(v) == format!("JTI={rotated}")
        })
    });
    assert_eq!(
        first_write["responseStatus"]["code"], 200,
        "{first_write:#}"
    );
    let rejected: Vec<Value> = sa_requests(n, &ns)
        .into_iter()
        .filter(|v| v["responseStatus"]["code"] == 401)
        .collect();
    assert!(rejected.is_empty(), "requests rejected: {rejected:#?}");
    assert_eq!(observer.leader().as_deref(), Some(leader.as_str()));
    let p = ns.get_pod(&leader);
    assert_eq!(container_status(&p, "leader-labeler")["restartCount"], 0);
    eprintln!(
        "scenario 6: token {first} rotated to {rotated} {} s after the pod was ready; first Lease update with it {} s after the rotation (at {})",
        rotated_after.as_secs(),
        (t0.elapsed() - rotated_after).as_secs(),
        first_write["stageTimestamp"]
    );
}

/// `--leader-file` on an emptyDir (deploy/statefulset.yaml) is read by the app: `true`
/// in the leader's pod, `false` in the follower's.
#[test]
fn leader_file_on_an_empty_dir_is_read_by_the_app() {
    let n = Node::shared();
    let ns = n.namespace("node-file");
    let names = ["my-app-0", "my-app-1"];
    let (observer, leader) = start_pods(n, &ns, Manifest::StatefulSet, &names, |pod| {
        pod["spec"]["volumes"] = json!([{"name": "leader", "emptyDir": {}}]);
        let sidecar = container(pod, "leader-labeler");
        sidecar["args"]
            .as_array_mut()
            .unwrap()
            .push(json!("--leader-file=/leader/is-leader"));
        sidecar["volumeMounts"] = json!([{"name": "leader", "mountPath": "/leader"}]);
        let app = container(pod, "app");
        app["command"] = json!(["sh", "-c",
            "trap 'exit 0' TERM; touch /tmp/ready; while true; do echo \"leader-file: $(cat /leader/is-leader 2>&1)\"; sleep 1 & wait $!; done"]);
        app["volumeMounts"] = json!([{"name": "leader", "mountPath": "/leader", "readOnly": true}]);
    });
    let follower = other(&names, &leader);
    let deadline = Instant::now() + secs(20);
    loop {
        let last = |pod: &str| -> String {
            let p = ns.get_pod(pod);
            n.container_log(&ns.name, &p, "app")
                .lines()
                .filter_map(|l| l.split_once("leader-file: ").map(|(_, v)| v.to_string()))
                .next_back()
                .unwrap_or_default()
        };
        let (l, f) = (last(&leader), last(follower));
        if l == "true" && f == "false" {
            eprintln!("scenario 7: the leader's app reads {l:?}, the follower's {f:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the apps read leader {l:?}, follower {f:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(observer.leader().as_deref(), Some(leader.as_str()));
}

/// Pods whose template carries only the label `leader-labeler.io/election: my-app` (deploy/deployment.yaml without its sidecar), the
/// sidecar added by deploy/inject/'s MutatingAdmissionPolicy, elect a leader under the
/// kubelet and hand over when the leader is deleted, as a hand-written native sidecar does.
/// What a loopback node needs goes through the policy's annotations: the API server's
/// address (with the projected token), and an HTTP port of each pod's own on 127.0.0.1
/// (hostNetwork pods share ports).
#[test]
fn injected_sidecars_elect_and_hand_over_on_deletion() {
    static POLICIES: std::sync::Once = std::sync::Once::new();
    let n = Node::shared();
    let ns = n.namespace("node-inject");
    POLICIES.call_once(|| inject::apply(n.cluster, &ns.name));
    let mut template = node::template(n.cluster, Manifest::Deployment);
    template["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .retain(|c| c["name"] != "leader-labeler");
    template["metadata"]["labels"][ELECTION_LABEL] = json!(ELECTION);
    let names = ["pod-a", "pod-b"];
    let (observer, leader) = start_pods_from(n, &ns, &template, &names, |pod| {
        pod["metadata"]["annotations"] = json!({
            "leader-labeler.io/server": format!("https://127.0.0.1:{}", n.cluster.port),
            // With --server the token is the in-cluster one only when named.
            "leader-labeler.io/token-file": "/var/run/secrets/kubernetes.io/serviceaccount/token",
            "leader-labeler.io/http-address": format!("127.0.0.1:{}", node::pod_port()),
        });
    });
    let follower = other(&names, &leader);
    let pod = ns.get_pod(&leader);
    assert_eq!(sidecars(&pod), 1, "{:#}", pod["spec"]);
    let injected = &pod["spec"]["initContainers"][0];
    assert_eq!(injected["name"], "leader-labeler", "{:#}", pod["spec"]);
    assert_eq!(
        injected["image"],
        n.image.as_str(),
        "the policy's image is the tarball's"
    );
    assert_eq!(
        pod["status"]["initContainerStatuses"][0]["name"], "leader-labeler",
        "{:#}",
        pod["status"]
    );
    let d = delete_leader(n, &ns, &observer, &leader, follower);
    assert_native_sidecar_drain(&d);
    eprintln!(
        "scenario 8: injected sidecars: leader {leader}, handover {} ms after the delete, app exited at {} ms, sidecar at {} ms",
        d.handover_ms, d.app_ms, d.sidecar_ms
    );
}
