//! The traffic rig: a one-node cluster with every part a rollout touches, inside a network
//! namespace the test process creates for itself, and a client sending requests through
//! the Service's ClusterIP.
//!
//! - [`enter_netns`]: the test process moves into a fresh network namespace (before any
//!   thread starts, so everything it spawns lives there too): loopback, and a veth pair
//!   whose one end carries the node's address. The host's own interfaces, routes and
//!   firewall rules are never touched; the namespace, the pods' namespaces (under the
//!   node's folder) and every rule kube-proxy writes vanish with the test's processes.
//! - Control plane: etcd, kube-apiserver (listening in the namespace, advertising the
//!   node's address as the `kubernetes` Service's endpoint), kube-controller-manager with
//!   the deployment, replicaset, endpointslice, serviceaccount and root-ca-cert-publisher
//!   controllers, kube-scheduler.
//! - Node: containerd + runc + the kubelet (harness::node), pods on a CNI bridge with
//!   host-local addresses, kube-proxy in nftables mode with its defaults.
//! - The shipped deploy/rbac.yaml, deploy/deployment.yaml and deploy/service.yaml, with
//!   only the image names rewritten (the app is examples/traffic_app.rs).
//! - [`Recorder`]: the Lease, the pods and the EndpointSlices as watched, plus kube-proxy's
//!   rule syncs from its log; [`Client`]: every request's time, outcome and answering pod.

use crate::cluster::{spawn_logged, tail, Cluster, ClusterOptions};
use crate::namespace::LEADER_KEY;
use crate::node::{run, Node, NodeOptions, PodNetwork, Prepared};
use crate::repo_root;
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const NODE_IP: &str = "10.200.0.1";
pub const POD_CIDR: &str = "10.88.0.0/16";
pub const BRIDGE: &str = "ll-cni0";
pub const APP_IMAGE: &str = "localhost/leader-labeler-traffic/app:1";

/// Seconds since the epoch: one clock for the test's events, the client's requests and
/// kube-proxy's log.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn ip(args: &str) {
    run(Command::new("ip").args(args.split_whitespace()));
}

/// Moves this process into a new network namespace and sets it up: `lo`, and a veth pair
/// `ll-node0`/`ll-node1` with the node's address on `ll-node0` and the default route
/// through it (the ClusterIPs need a route before kube-proxy's DNAT rewrites them; a
/// packet to any other address ends at the veth's peer, inside this namespace). Must run
/// before the process starts any thread: a thread keeps the namespace it was started in.
pub fn enter_netns() {
    let threads = std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(
        threads, 1,
        "enter_netns must run before any thread starts ({threads} threads)"
    );
    // SAFETY: unshare(2) on this single-threaded process.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET) failed: {} (the traffic rig needs root)",
        std::io::Error::last_os_error()
    );
    ip("link set lo up");
    ip("link add name ll-node0 type veth peer name ll-node1");
    ip(&format!("addr add {NODE_IP}/24 dev ll-node0"));
    ip("link set ll-node0 up");
    ip("link set ll-node1 up");
    ip("route add default dev ll-node0");
    let links = run(Command::new("ip").args(["-o", "link"]));
    let names: BTreeSet<&str> = links
        .lines()
        .filter_map(|l| {
            l.split(':')
                .nth(1)
                .map(|n| n.trim().split('@').next().unwrap())
        })
        .collect();
    assert_eq!(
        names,
        ["ll-node0", "ll-node1", "lo"].into(),
        "the new network namespace should hold only what the rig made"
    );
}

/// Everything that may need the network on a fresh machine, before [`enter_netns`]:
/// packages, the control plane and node binaries, the leader-labeler image tarball, the
/// app image.
pub struct Prereqs {
    pub node: Prepared,
    pub app_image_tar: PathBuf,
    /// The client-go baseline's image (bench/baseline), when asked for.
    pub baseline_image_tar: Option<PathBuf>,
}

pub const BASELINE_IMAGE: &str = "localhost/leader-labeler-traffic/client-go-baseline:1";

pub fn prepare(baseline: bool) -> Prereqs {
    crate::cluster::control_plane_bin();
    let node = Prepared::new("traffic", &["kubelet", "kube-proxy", "kube-scheduler"]);
    let app_image_tar = build_app_image();
    Prereqs {
        node,
        app_image_tar,
        baseline_image_tar: baseline.then(build_baseline_image),
    }
}

/// bench/baseline built static (CGO_ENABLED=0: a `FROM scratch` image has no libc) into
/// the cache bench/run.sh uses, in an image of its own; user 65532.
fn build_baseline_image() -> PathBuf {
    let cache = std::env::var("LEADER_LABELER_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/leader-labeler")
        });
    let bin = cache.join("client-go-baseline-v0.36.3-static");
    let src = repo_root().join("bench/baseline/main.go");
    let stale = |b: &Path| {
        let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        m(b).is_none() || m(&src) > m(b)
    };
    if stale(&bin) {
        let status = Command::new("go")
            .args(["build", "-trimpath", "-ldflags", "-s -w", "-o"])
            .arg(&bin)
            .arg(".")
            .current_dir(repo_root().join("bench/baseline"))
            .envs([
                ("CGO_ENABLED", "0"),
                ("GOTOOLCHAIN", "local"),
                ("GOFLAGS", "-mod=mod"),
            ])
            .status()
            .expect("go (bench/baseline)");
        assert!(
            status.success(),
            "building bench/baseline failed (see above)"
        );
    }
    let ctx = repo_root().join("target/traffic-baseline-image");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::copy(&bin, ctx.join("baseline")).unwrap();
    let tar = ctx.join("baseline.tar");
    crate::node::build_image(
        &ctx,
        "FROM scratch\nCOPY baseline /client-go-baseline\nUSER 65532:65532\nENTRYPOINT [\"/client-go-baseline\"]\n",
        BASELINE_IMAGE,
        &tar,
    );
    tar
}

/// The app: examples/traffic_app.rs built static (musl, or static glibc when the musl
/// target cannot be added, as scripts/static.sh does), in a `FROM scratch` image with
/// Debian's static busybox for the shipped preStop's `sleep`; user 65532.
fn build_app_image() -> PathBuf {
    let musl = Command::new("bash")
        .arg(repo_root().join("scripts/deps.sh"))
        .arg("musl")
        .status()
        .is_ok_and(|s| s.success());
    let target = if musl {
        "x86_64-unknown-linux-musl"
    } else {
        "x86_64-unknown-linux-gnu"
    };
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo
        .current_dir(repo_root())
        .args([
            "build",
            "--release",
            "--example",
            "traffic_app",
            "--target",
            target,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if musl {
        let cc = if Command::new("musl-gcc").arg("--version").output().is_ok() {
            "musl-gcc"
        } else {
            "gcc"
        };
        cargo.env("CC_x86_64_unknown_linux_musl", cc);
    } else {
        cargo.env("RUSTFLAGS", "-C target-feature=+crt-static");
    }
    let status = cargo.status().expect("cargo");
    assert!(status.success(), "building examples/traffic_app.rs failed");
    let ctx = repo_root().join("target/traffic-app-image");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::copy(
        repo_root().join(format!("target/{target}/release/examples/traffic_app")),
        ctx.join("app"),
    )
    .unwrap();
    let tar = ctx.join("app.tar");
    crate::node::build_image(
        &ctx,
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nCOPY app /app\nUSER 65532:65532\nENTRYPOINT [\"/app\"]\n",
        APP_IMAGE,
        &tar,
    );
    tar
}

/// The running rig.
pub struct Rig {
    pub cluster: &'static Cluster,
    pub node: &'static Node,
    pub proxy_log: PathBuf,
    /// The Service's ClusterIP and port.
    pub service: SocketAddr,
    _scheduler: Child,
    _proxy: Child,
}

impl Rig {
    /// Starts everything (inside the namespace [`enter_netns`] made) and applies the
    /// shipped manifests; returns once the Service answers from the leader.
    pub fn start(pre: &Prereqs) -> Rig {
        let cluster: &'static Cluster = Box::leak(Box::new(Cluster::start(ClusterOptions {
            controller_manager: true,
            service_account_admission: true,
            // nodelifecycle lifts the kubelet's node.kubernetes.io/not-ready taint once the
            // Node is Ready (the scheduler places nothing before).
            extra_controllers: vec![
                "root-ca-cert-publisher",
                "deployment",
                "replicaset",
                "nodelifecycle",
            ],
            node_ip: Some(NODE_IP),
            // TRAFFIC_KCM_ARGS="--endpointslice-updates-batch-period=200ms": what a
            // cluster's own settings change (docs/design.md).
            controller_manager_args: std::env::var("TRAFFIC_KCM_ARGS")
                .map(|a| a.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default(),
            ..Default::default()
        })));
        let scheduler = spawn_logged(
            &cluster.dir,
            "kube-scheduler",
            Command::new(pre.node.bin.join("kube-scheduler")).args([
                format!("--kubeconfig={}", cluster.kubeconfig.display()),
                "--leader-elect=false".into(),
                "--secure-port=0".into(),
            ]),
        );
        let node: &'static Node = Box::leak(Box::new(Node::launch(
            cluster,
            &pre.node,
            NodeOptions {
                network: Some(PodNetwork {
                    node_ip: NODE_IP,
                    pod_cidr: POD_CIDR,
                    bridge: BRIDGE,
                }),
                images: [pre.app_image_tar.clone()]
                    .into_iter()
                    .chain(pre.baseline_image_tar.clone())
                    .collect(),
            },
        )));
        let (proxy, proxy_log) = start_kube_proxy(cluster, &pre.node.bin);
        let mut rig = Rig {
            cluster,
            node,
            proxy_log,
            service: "0.0.0.0:0".parse().unwrap(),
            _scheduler: scheduler,
            _proxy: proxy,
        };
        rig.wait_proxy_synced(Duration::from_secs(60));
        rig.apply_manifests(&pre.node.image);
        rig
    }

    /// Copies every log of the run (control plane, kube-proxy, containerd, kubelet, pods)
    /// to target/traffic-logs/: the node's folder is removed at exit.
    pub fn keep_logs(&self) -> PathBuf {
        let to = repo_root().join("target/traffic-logs");
        let _ = std::fs::remove_dir_all(&to);
        std::fs::create_dir_all(&to).unwrap();
        for dir in [&self.cluster.dir, &self.node.dir] {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "log") {
                    let _ = std::fs::copy(&p, to.join(e.file_name()));
                }
            }
        }
        let _ = Command::new("cp")
            .arg("-r")
            .arg(self.node.dir.join("pod-logs"))
            .arg(&to)
            .status();
        to
    }

    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = self.cluster.kubectl(args, None);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait_proxy_synced(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while proxy_syncs(&self.proxy_log).is_empty() {
            assert!(
                Instant::now() < deadline,
                "kube-proxy never synced its rules within {timeout:?}:\n{}",
                tail(&self.proxy_log, 40)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Replaces the Deployment's leader-labeler sidecar with the client-go baseline
    /// (bench/baseline: its own flags, pointed at the in-cluster address, token and CA;
    /// no liveness probe, it serves no HTTP), from a fresh election: the Deployment and
    /// the Lease are deleted first. Returns once the Service answers from its leader.
    pub fn switch_to_baseline(&self, client: &Client) -> String {
        // Scaled to zero first: without the garbage collector (not started), deleting the
        // Deployment would leave its ReplicaSets and pods.
        self.kubectl(&["scale", "deployment/my-app", "--replicas=0"]);
        let deadline = Instant::now() + Duration::from_secs(120);
        while !self.pods().is_empty() {
            assert!(
                Instant::now() < deadline,
                "my-app's pods still exist after 120 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        self.kubectl(&["delete", "deployment", "my-app"]);
        self.kubectl(&["delete", "replicasets", "-l", "app=my-app"]);
        self.kubectl(&["delete", "lease", "my-app", "--ignore-not-found"]);
        let text = std::fs::read_to_string(repo_root().join("deploy/deployment.yaml")).unwrap();
        let mut deployment = self
            .cluster
            .manifest_objects(&text, "deploy/deployment.yaml")
            .into_iter()
            .find(|o| o["kind"] == "Deployment")
            .expect("a Deployment");
        let sa = "/var/run/secrets/kubernetes.io/serviceaccount";
        for c in deployment["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .unwrap()
        {
            if c["name"] == "app" {
                c["image"] = APP_IMAGE.into();
                continue;
            }
            c["image"] = BASELINE_IMAGE.into();
            c["args"] = serde_json::json!([
                "--election-name=my-app",
                "--server=https://$(KUBERNETES_SERVICE_HOST):$(KUBERNETES_SERVICE_PORT)",
                format!("--token-file={sa}/token"),
                format!("--ca-file={sa}/ca.crt"),
            ]);
            c.as_object_mut().unwrap().remove("livenessProbe");
        }
        let out = self
            .cluster
            .kubectl(&["apply", "-f", "-"], Some(&deployment.to_string()));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.settle(2, client, Duration::from_secs(180))
    }

    /// deploy/rbac.yaml and deploy/service.yaml as shipped; deploy/deployment.yaml with
    /// its two image names rewritten (the app's and the sidecar's), nothing else.
    fn apply_manifests(&mut self, sidecar_image: &str) {
        let deployment =
            std::fs::read_to_string(repo_root().join("deploy/deployment.yaml")).unwrap();
        let mut rewritten = 0;
        let text: Vec<String> = deployment
            .lines()
            .map(|l| {
                let Some((indent, image)) = l.split_once("image: ") else {
                    return l.to_string();
                };
                rewritten += 1;
                let to = if image.contains("leader-labeler") {
                    sidecar_image
                } else {
                    APP_IMAGE
                };
                format!("{indent}image: {to}")
            })
            .collect();
        assert_eq!(
            rewritten, 2,
            "deploy/deployment.yaml should name two images"
        );
        let shipped = |f: &str| std::fs::read_to_string(repo_root().join(f)).unwrap();
        for (what, yaml) in [
            ("deploy/rbac.yaml", shipped("deploy/rbac.yaml")),
            (
                "deploy/deployment.yaml (images rewritten)",
                text.join("\n") + "\n",
            ),
            ("deploy/service.yaml", shipped("deploy/service.yaml")),
        ] {
            let out = self.cluster.kubectl(&["apply", "-f", "-"], Some(&yaml));
            assert!(
                out.status.success(),
                "kubectl apply of {what}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let svc = self
            .cluster
            .api
            .get("/api/v1/namespaces/default/services/my-app");
        let ip = svc["spec"]["clusterIP"].as_str().expect("clusterIP");
        self.service = format!("{ip}:80").parse().unwrap();
    }

    /// The pods of the Deployment, as the API server has them now.
    pub fn pods(&self) -> Vec<Value> {
        self.cluster
            .api
            .get("/api/v1/namespaces/default/pods?labelSelector=app%3Dmy-app")["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The Lease's holder now ("" when released).
    pub fn holder(&self) -> String {
        let (code, lease) = self.cluster.api.call(
            "GET",
            "/apis/coordination.k8s.io/v1/namespaces/default/leases/my-app",
            None,
        );
        if code != 200 {
            return String::new();
        }
        lease["spec"]["holderIdentity"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// Waits for the steady state between scenarios: `replicas` pods, all Ready, none
    /// terminating, one Lease holder labeled leader, and the client's last 20 requests on
    /// new connections answered by it. Returns the leader.
    pub fn settle(&self, replicas: usize, client: &Client, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let pods = self.pods();
            let holder = self.holder();
            let all_ready = pods.len() == replicas
                && pods.iter().all(|p| {
                    p["metadata"]["deletionTimestamp"].is_null()
                        && p["status"]["conditions"].as_array().is_some_and(|c| {
                            c.iter()
                                .any(|c| c["type"] == "Ready" && c["status"] == "True")
                        })
                });
            let labeled = pods.iter().any(|p| {
                p["metadata"]["name"] == holder.as_str()
                    && p["metadata"]["labels"][LEADER_KEY] == "true"
            });
            let answered = client.last_fresh(20);
            if all_ready
                && labeled
                && answered.len() == 20
                && answered.iter().all(|a| a.as_deref() == Ok(holder.as_str()))
            {
                return holder;
            }
            assert!(
                Instant::now() < deadline,
                "no steady state within {timeout:?}: {} pods (want {replicas}), holder {holder:?}, last answers {answered:?}\nnode taints: {}\npods: {:#}\nkube-proxy:\n{}\nkubelet:\n{}",
                pods.len(),
                self.cluster.api.get(&format!("/api/v1/nodes/{}", crate::node::NODE_NAME))["spec"]["taints"],
                pods.iter()
                    .map(|p| serde_json::json!({
                        "name": p["metadata"]["name"],
                        "labels": p["metadata"]["labels"],
                        "deleting": !p["metadata"]["deletionTimestamp"].is_null(),
                        "phase": p["status"]["phase"],
                        "conditions": p["status"]["conditions"],
                    }))
                    .collect::<Vec<_>>()
                    .into_iter()
                    .collect::<Value>(),
                tail(&self.proxy_log, 10),
                self.node.kubelet_log(20),
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Counters that explain lost packets, printed at the end of a run: conntrack's
    /// (insert_failed, drop) in the node's namespace, and each pod's listen queue
    /// overflows and drops (`nstat` in the pod's namespace).
    pub fn diagnostics(&self) -> String {
        let mut out = String::new();
        let ct = Command::new("conntrack").arg("-S").output();
        if let Ok(o) = ct {
            out += &format!("conntrack -S:\n{}", String::from_utf8_lossy(&o.stdout));
        }
        let netns = self
            .node
            .dir
            .join("containerd/state/io.containerd.grpc.v1.cri/netns");
        for e in std::fs::read_dir(netns).into_iter().flatten().flatten() {
            let o = Command::new("nsenter")
                .arg(format!("--net={}", e.path().display()))
                .args([
                    "nstat",
                    "-az",
                    "TcpExtListenOverflows",
                    "TcpExtListenDrops",
                    "TcpExtTCPReqQFullDrop",
                    "TcpAttemptFails",
                    "TcpExtTCPTimeouts",
                ])
                .output();
            if let Ok(o) = o {
                out += &format!(
                    "{}:\n{}",
                    e.file_name().to_string_lossy(),
                    String::from_utf8_lossy(&o.stdout)
                );
            }
        }
        out
    }

    /// A pod's IP.
    pub fn pod_ip(&self, name: &str) -> String {
        let pod = self
            .cluster
            .api
            .get(&format!("/api/v1/namespaces/default/pods/{name}"));
        pod["status"]["podIP"].as_str().unwrap_or("").to_string()
    }
}

/// kube-proxy's backend: nftables, or TRAFFIC_PROXY_MODE (iptables, its other one).
/// nftables by default: an iptables sync swaps the filter and nat tables one after the
/// other, and a SYN between the two leaves an un-NATed conntrack entry that loses it and,
/// for 120 s, every connection reusing its source port (docs/design.md); an nftables sync
/// is one transaction.
pub fn proxy_mode() -> String {
    std::env::var("TRAFFIC_PROXY_MODE").unwrap_or_else(|_| "nftables".into())
}

/// kube-proxy in [`proxy_mode`] with its defaults (minSyncPeriod
/// 1 s, syncPeriod 30 s) but for what a network namespace allows: it leaves the conntrack
/// table's global size and timeouts alone. Logs at -v=2 for "SyncProxyRules complete".
fn start_kube_proxy(cluster: &Cluster, bin: &Path) -> (Child, PathBuf) {
    let dir = &cluster.dir;
    let config = dir.join("kube-proxy.yaml");
    std::fs::write(
        &config,
        format!(
            r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {kubeconfig}
hostnameOverride: {node}
mode: {mode}
clusterCIDR: {POD_CIDR}
metricsBindAddress: 127.0.0.1:{metrics}
healthzBindAddress: 127.0.0.1:{healthz}
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
"#,
            kubeconfig = cluster.kubeconfig.display(),
            node = crate::node::NODE_NAME,
            mode = proxy_mode(),
            metrics = crate::cluster::free_port(),
            healthz = crate::cluster::free_port(),
        ),
    )
    .unwrap();
    let child = spawn_logged(
        dir,
        "kube-proxy",
        Command::new(bin.join("kube-proxy"))
            .arg(format!("--config={}", config.display()))
            .arg("--v=2")
            // klog writes local time; the log is read back as UTC.
            .env("TZ", "UTC"),
    );
    (child, dir.join("kube-proxy.log"))
}

/// A kube-proxy rule sync, from its log: when it started and ended (epoch seconds).
#[derive(Debug, Clone, Copy)]
pub struct Sync {
    pub start: f64,
    pub end: f64,
}

/// Every "SyncProxyRules complete" line of kube-proxy's log (klog header `Immdd
/// hh:mm:ss.uuuuuu`, UTC; the year is this one).
pub fn proxy_syncs(log: &Path) -> Vec<Sync> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let (year, _, _) = civil((now() / 86400.0) as i64);
    text.lines()
        .filter(|l| l.contains("SyncProxyRules complete"))
        .filter_map(|l| {
            let month: i64 = l.get(1..3)?.parse().ok()?;
            let day: i64 = l.get(3..5)?.parse().ok()?;
            let h: f64 = l.get(6..8)?.parse().ok()?;
            let m: f64 = l.get(9..11)?.parse().ok()?;
            let s: f64 = l.get(12..21)?.parse().ok()?;
            let days = days_from_civil(year, month, day);
            let end = days as f64 * 86400.0 + h * 3600.0 + m * 60.0 + s;
            let elapsed = l
                .split("elapsed=\"")
                .nth(1)
                .and_then(|e| e.split('"').next())
                .and_then(go_duration)
                .unwrap_or(0.0);
            Some(Sync {
                start: end - elapsed,
                end,
            })
        })
        .collect()
}

fn go_duration(s: &str) -> Option<f64> {
    for (suffix, scale) in [
        ("ms", 1e-3),
        ("µs", 1e-6),
        ("us", 1e-6),
        ("ns", 1e-9),
        ("s", 1.0),
    ] {
        if let Some(v) = s.strip_suffix(suffix) {
            if let Ok(v) = v.parse::<f64>() {
                return Some(v * scale);
            }
        }
    }
    None
}

// Howard Hinnant's civil calendar algorithms.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

// ---------------------------------------------------------------------------------
// What the API server said, as watched.

/// One endpoint of the Service's EndpointSlices.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub pod: String,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

#[derive(Debug, Clone)]
pub enum What {
    Lease {
        holder: String,
    },
    Pod {
        name: String,
        leader: Option<String>,
        ready: bool,
        deleting: bool,
    },
    PodGone {
        name: String,
    },
    /// Every endpoint of the Service after the event.
    Slice {
        endpoints: Vec<Endpoint>,
    },
}

#[derive(Debug, Clone)]
pub struct Event {
    pub at: f64,
    pub what: What,
}

/// The pods kube-proxy sends new connections to for this set of endpoints: the ready
/// ones, or when there are none the serving, terminating ones (KEP-1669; kube-proxy's
/// CategorizeEndpoints).
pub fn routed(endpoints: &[Endpoint]) -> BTreeSet<String> {
    let ready: BTreeSet<String> = endpoints
        .iter()
        .filter(|e| e.ready)
        .map(|e| e.pod.clone())
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    endpoints
        .iter()
        .filter(|e| e.serving && e.terminating)
        .map(|e| e.pod.clone())
        .collect()
}

/// Watches the Lease, the Deployment's pods and the Service's EndpointSlices.
pub struct Recorder {
    events: Arc<Mutex<Vec<Event>>>,
    stop: Arc<AtomicBool>,
}

impl Recorder {
    pub fn start(cluster: &Cluster) -> Recorder {
        let events = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let api = cluster.api.clone();
        let push = |events: &Arc<Mutex<Vec<Event>>>, what: What| {
            events.lock().unwrap().push(Event { at: now(), what });
        };
        {
            let (events, stop, api) = (events.clone(), stop.clone(), api.clone());
            std::thread::spawn(move || {
                let lease = |o: &Value| What::Lease {
                    holder: o["spec"]["holderIdentity"].as_str().unwrap_or("").into(),
                };
                api.list_watch(
                    "/apis/coordination.k8s.io/v1/namespaces/default/leases?fieldSelector=metadata.name%3Dmy-app",
                    &stop,
                    |items| items.iter().for_each(|o| push(&events, lease(o))),
                    |kind, o| {
                        if kind != "DELETED" {
                            push(&events, lease(o))
                        }
                    },
                );
            });
        }
        {
            let (events, stop, api) = (events.clone(), stop.clone(), api.clone());
            std::thread::spawn(move || {
                let pod = |o: &Value| What::Pod {
                    name: o["metadata"]["name"].as_str().unwrap_or("").into(),
                    leader: o["metadata"]["labels"][LEADER_KEY]
                        .as_str()
                        .map(str::to_string),
                    ready: o["status"]["conditions"].as_array().is_some_and(|c| {
                        c.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    }),
                    deleting: !o["metadata"]["deletionTimestamp"].is_null(),
                };
                api.list_watch(
                    "/api/v1/namespaces/default/pods?labelSelector=app%3Dmy-app",
                    &stop,
                    |items| items.iter().for_each(|o| push(&events, pod(o))),
                    |kind, o| {
                        if kind == "DELETED" {
                            let name = o["metadata"]["name"].as_str().unwrap_or("").into();
                            push(&events, What::PodGone { name })
                        } else {
                            push(&events, pod(o))
                        }
                    },
                );
            });
        }
        {
            let (events, stop) = (events.clone(), stop.clone());
            std::thread::spawn(move || {
                let slices = Mutex::new(std::collections::BTreeMap::<String, Vec<Endpoint>>::new());
                let record = |events: &Arc<Mutex<Vec<Event>>>| {
                    let endpoints = slices.lock().unwrap().values().flatten().cloned().collect();
                    push(events, What::Slice { endpoints });
                };
                let name = |o: &Value| o["metadata"]["name"].as_str().unwrap_or("").to_string();
                api.list_watch(
                    "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3Dmy-app",
                    &stop,
                    |items| {
                        *slices.lock().unwrap() =
                            items.iter().map(|o| (name(o), slice_endpoints(o))).collect();
                        record(&events);
                    },
                    |kind, o| {
                        if kind == "DELETED" {
                            slices.lock().unwrap().remove(&name(o));
                        } else {
                            slices.lock().unwrap().insert(name(o), slice_endpoints(o));
                        }
                        record(&events);
                    },
                );
            });
        }
        Recorder { events, stop }
    }

    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn slice_endpoints(slice: &Value) -> Vec<Endpoint> {
    slice["endpoints"]
        .as_array()
        .map(|eps| {
            eps.iter()
                .map(|e| {
                    let c = &e["conditions"];
                    Endpoint {
                        pod: e["targetRef"]["name"].as_str().unwrap_or("").to_string(),
                        // Unset ready means ready (API doc); serving follows ready.
                        ready: c["ready"] != false,
                        serving: c["serving"].as_bool().unwrap_or(c["ready"] != false),
                        terminating: c["terminating"] == true,
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------
// The client.

/// One request through the Service.
#[derive(Debug, Clone)]
pub struct Sample {
    pub start: f64,
    pub end: f64,
    /// On a reused keep-alive connection (else a new connection per request).
    pub keepalive: bool,
    /// The answering pod, or what went wrong.
    pub outcome: Result<String, String>,
}

/// Requests to the Service at a bounded rate from two threads: one opens a new
/// connection per request, one keeps a connection alive (reconnecting when the server
/// closes it). Each request times out after 2 s.
pub struct Client {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

const TIMEOUT: Duration = Duration::from_secs(2);

impl Client {
    pub fn start(addr: SocketAddr, per_second: u32) -> Client {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let interval = Duration::from_secs_f64(1.0 / per_second as f64);
        let mut threads = vec![];
        for keepalive in [false, true] {
            let (samples, stop) = (samples.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let mut conn: Option<BufReader<TcpStream>> = None;
                let mut next = Instant::now();
                while !stop.load(Ordering::SeqCst) {
                    let start = now();
                    let outcome = if keepalive {
                        keepalive_request(addr, &mut conn)
                    } else {
                        fresh_request(addr)
                    };
                    samples.lock().unwrap().push(Sample {
                        start,
                        end: now(),
                        keepalive,
                        outcome,
                    });
                    next += interval;
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    } else {
                        next = now;
                    }
                }
            }));
        }
        Client {
            samples,
            stop,
            threads,
        }
    }

    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().unwrap().clone()
    }

    /// The outcomes of the last `n` requests on new connections.
    pub fn last_fresh(&self, n: usize) -> Vec<Result<String, String>> {
        let s = self.samples.lock().unwrap();
        let mut v: Vec<_> = s
            .iter()
            .rev()
            .filter(|s| !s.keepalive)
            .take(n)
            .map(|s| s.outcome.clone())
            .collect();
        v.reverse();
        v
    }

    pub fn stop(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.samples()
    }
}

fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let s = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

fn fresh_request(addr: SocketAddr) -> Result<String, String> {
    let s = connect(addr).map_err(|e| {
        if e.contains("timed out") {
            // Where did the lost SYN go? Its conntrack entry is still there, unreplied.
            let ct = Command::new("conntrack")
                .args(["-L", "-p", "tcp", "--state", "SYN_SENT"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).replace('\n', " | "))
                .unwrap_or_default();
            format!("{e} [conntrack SYN_SENT: {ct}]")
        } else {
            e
        }
    })?;
    let mut r = BufReader::new(s);
    r.get_mut()
        .write_all(b"GET / HTTP/1.1\r\nHost: my-app\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    read_response(&mut r).map(|(pod, _)| pod)
}

/// A request on the kept connection (opened when there is none). A reused connection
/// the server closed before answering (a keep-alive race every HTTP client meets) is
/// retried once on a new connection, as HTTP clients do for idempotent requests.
fn keepalive_request(
    addr: SocketAddr,
    conn: &mut Option<BufReader<TcpStream>>,
) -> Result<String, String> {
    let reused = conn.is_some();
    match keepalive_once(addr, conn) {
        Err(e) if reused && e.starts_with("closed before") => keepalive_once(addr, conn),
        other => other,
    }
}

fn keepalive_once(
    addr: SocketAddr,
    conn: &mut Option<BufReader<TcpStream>>,
) -> Result<String, String> {
    if conn.is_none() {
        *conn = Some(BufReader::new(connect(addr)?));
    }
    let r = conn.as_mut().unwrap();
    let result = r
        .get_mut()
        .write_all(b"GET / HTTP/1.1\r\nHost: my-app\r\n\r\n")
        .map_err(|_| "closed before the request was sent".to_string())
        .and_then(|_| read_response(r));
    match result {
        Ok((pod, close)) => {
            if close {
                *conn = None;
            }
            Ok(pod)
        }
        Err(e) => {
            *conn = None;
            Err(e)
        }
    }
}

/// Reads one response: the answering pod (the body) and whether the server closes.
fn read_response(r: &mut BufReader<TcpStream>) -> Result<(String, bool), String> {
    let mut status = String::new();
    match r.read_line(&mut status) {
        Ok(0) => return Err("closed before answering".into()),
        Ok(_) => {}
        Err(e) if status.is_empty() => {
            return Err(match e.kind() {
                std::io::ErrorKind::ConnectionReset => "closed before answering (reset)".into(),
                _ => format!("read: {e}"),
            })
        }
        Err(e) => return Err(format!("read: {e}")),
    }
    let code = status.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut len = 0usize;
    let mut close = false;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).map_err(|e| format!("read: {e}"))? == 0 {
            return Err("truncated headers".into());
        }
        let h = h.trim_end().to_ascii_lowercase();
        if h.is_empty() {
            break;
        }
        if let Some(v) = h.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        close |= h.starts_with("connection:") && h.contains("close");
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).map_err(|e| format!("body: {e}"))?;
    let body = String::from_utf8_lossy(&body).trim().to_string();
    if code != "200" {
        return Err(format!("HTTP {code} from {body}"));
    }
    Ok((body, close))
}

// ---------------------------------------------------------------------------------
// Judging the requests.

/// One change of Lease holder, and when each part of the system followed it.
#[derive(Debug, Clone, Default)]
pub struct Handover {
    pub from: String,
    pub to: String,
    /// What set it off: `from`'s pod seen deleted or unready (else the scenario's action).
    pub trigger: f64,
    /// The window opens when the Lease stops naming `from`, or when `from` loses its
    /// leader label if that came first.
    pub open: f64,
    /// The Lease names `to`.
    pub acquired: f64,
    /// `to` labeled leader; `from` labeled follower (or gone).
    pub labeled: Option<f64>,
    pub unlabeled: Option<f64>,
    /// The EndpointSlices route new connections to `to` only (ready endpoints, or
    /// serving terminating ones when none is ready: kube-proxy's rule).
    pub sliced: Option<f64>,
    /// The end of kube-proxy's first rule sync that began after `sliced`: the window
    /// closes here.
    pub synced: Option<f64>,
    /// The client's first answer from `to`, last from `from` (new connections).
    pub first_answer: Option<f64>,
    pub last_old_answer: Option<f64>,
}

impl Handover {
    /// Until kube-proxy synced; a window that never closed lasts to the end.
    pub fn close(&self) -> f64 {
        self.synced.unwrap_or(f64::INFINITY)
    }
}

/// What one client saw in one scenario.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub requests: usize,
    pub failed: usize,
    /// Failures that are not connections refused between a handover's trigger and its
    /// window's close (kube-proxy applying a Service with no endpoint).
    pub failed_unexplained: usize,
    /// Answered by a pod that was not the Lease holder when the request began, outside
    /// every handover window (or by a pod that was neither side of the handover).
    pub non_leader: usize,
    /// Answered by the old or the new leader inside a handover window.
    pub in_window: usize,
    /// The longest time without a successful answer (seconds).
    pub longest_gap: f64,
    /// From the first to the last non-leader answer outside a window (seconds).
    pub non_leader_span: f64,
    /// Failures and non-leader answers, first few, for the report.
    pub examples: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub name: String,
    pub start: f64,
    pub end: f64,
    pub handovers: Vec<Handover>,
    pub fresh: Stats,
    pub keepalive: Stats,
}

fn holder_timeline(events: &[Event]) -> Vec<(f64, String)> {
    events
        .iter()
        .filter_map(|e| match &e.what {
            What::Lease { holder } => Some((e.at, holder.clone())),
            _ => None,
        })
        .collect()
}

fn holder_at(timeline: &[(f64, String)], t: f64) -> &str {
    timeline
        .iter()
        .rev()
        .find(|(at, _)| *at <= t)
        .map(|(_, h)| h.as_str())
        .unwrap_or("")
}

/// Everything a run observed: the watched events, kube-proxy's syncs, the requests.
pub struct Observed {
    pub events: Vec<Event>,
    pub syncs: Vec<Sync>,
    pub samples: Vec<Sample>,
}

/// The handovers whose window opened in [start, end], each followed through labels,
/// EndpointSlices, kube-proxy and the client.
fn handovers(o: &Observed, actions: &[f64], start: f64, end: f64) -> Vec<Handover> {
    let timeline = holder_timeline(&o.events);
    let mut out = vec![];
    let mut cur = String::new();
    let mut left: Option<(String, f64)> = None;
    for (at, holder) in &timeline {
        if *holder == cur {
            continue;
        }
        if !cur.is_empty() && left.is_none() {
            left = Some((cur.clone(), *at));
        }
        if !holder.is_empty() {
            if let Some((from, released)) = left.take() {
                if from != *holder && released >= start && released <= end {
                    out.push(follow(o, actions, &from, holder, released, *at));
                }
            }
            cur = holder.clone();
        }
    }
    out
}

fn follow(
    o: &Observed,
    actions: &[f64],
    from: &str,
    to: &str,
    released: f64,
    acquired: f64,
) -> Handover {
    let (events, syncs, samples) = (&o.events, &o.syncs, &o.samples);
    let pod_events = |name: &str| {
        events
            .iter()
            .filter(move |e| match &e.what {
                What::Pod { name: n, .. } | What::PodGone { name: n } => n == name,
                _ => false,
            })
            .collect::<Vec<_>>()
    };
    let is_leader = |e: &Event| matches!(&e.what, What::Pod { leader: Some(l), .. } if l == "true");
    let old = pod_events(from);
    // `from` lost its label: the first event without it after it last had it before
    // the release.
    let last_true = old
        .iter()
        .filter(|e| e.at <= released && is_leader(e))
        .map(|e| e.at)
        .fold(f64::NEG_INFINITY, f64::max);
    let unlabeled = old
        .iter()
        .find(|e| e.at > last_true && !is_leader(e))
        .map(|e| e.at);
    let open = unlabeled.map_or(released, |u| u.min(released));
    // The trigger: the first deleting or unready event after `from` was last seen ready
    // and not deleting (its start-up events are not triggers).
    let healthy = |e: &&&Event| {
        matches!(
            &e.what,
            What::Pod {
                deleting: false,
                ready: true,
                ..
            }
        )
    };
    let last_healthy = old
        .iter()
        .filter(|e| e.at <= open)
        .filter(healthy)
        .map(|e| e.at)
        .fold(f64::NEG_INFINITY, f64::max);
    let trigger = old
        .iter()
        .find(|e| {
            e.at > last_healthy
                && e.at <= open
                && matches!(&e.what, What::Pod { deleting, ready, .. } if *deleting || !*ready)
        })
        .map(|e| e.at)
        .or_else(|| {
            actions
                .iter()
                .copied()
                .filter(|a| *a <= open)
                .reduce(f64::max)
        })
        .unwrap_or(open);
    let labeled = pod_events(to)
        .iter()
        .find(|e| e.at >= open - 1.0 && is_leader(e))
        .map(|e| e.at);
    let only_to: BTreeSet<String> = [to.to_string()].into();
    let sliced = events
        .iter()
        .find(|e| {
            e.at >= open
                && matches!(&e.what, What::Slice { endpoints } if routed(endpoints) == only_to)
        })
        .map(|e| e.at);
    // The first sync that began after the test saw the slice: kube-proxy sees the same
    // watch event at about the same time, so this may be one sync late (a window a
    // minSyncPeriod too long), never early (a sync that began just before may not have
    // had it: seen in a switchover, where the leaderless moment was synced and the
    // new leader waited for the next sync).
    let synced = sliced.and_then(|s| syncs.iter().find(|y| y.start >= s).map(|y| y.end));
    let fresh = || samples.iter().filter(|s| !s.keepalive);
    let first_answer = fresh()
        .filter(|s| s.start >= open && s.outcome.as_deref() == Ok(to))
        .map(|s| s.end)
        .reduce(f64::min);
    // Inside the window only: later answers from `from` are judged as non-leader ones (or
    // it leads again).
    let window_end = synced.unwrap_or(f64::INFINITY);
    let last_old_answer = fresh()
        .filter(|s| s.start >= open && s.start <= window_end && s.outcome.as_deref() == Ok(from))
        .map(|s| s.end)
        .reduce(f64::max);
    Handover {
        from: from.into(),
        to: to.into(),
        trigger,
        open,
        acquired,
        labeled,
        unlabeled,
        sliced,
        synced,
        first_answer,
        last_old_answer,
    }
}

/// Judges one client's requests that began in [start, end].
fn judge(o: &Observed, handovers: &[Handover], keepalive: bool, start: f64, end: f64) -> Stats {
    let timeline = holder_timeline(&o.events);
    let mut st = Stats::default();
    let mut last_ok = start;
    let mut wrong: Option<(f64, f64)> = None;
    for s in o
        .samples
        .iter()
        .filter(|s| s.keepalive == keepalive && s.start >= start && s.start <= end)
    {
        st.requests += 1;
        match &s.outcome {
            Err(e) => {
                st.failed += 1;
                let explained = e.starts_with("connect: Connection refused")
                    && handovers
                        .iter()
                        .any(|h| h.trigger <= s.start && s.start <= h.close());
                if !explained {
                    st.failed_unexplained += 1;
                }
                let near = handovers
                    .iter()
                    .map(|h| s.start - h.open)
                    .min_by(|a, b| a.abs().total_cmp(&b.abs()));
                if st.examples.len() < 10 || !e.starts_with("connect: Connection refused") {
                    // Which kube-proxy sync was nearest: a lost SYN during a rule sync?
                    let sync = o
                        .syncs
                        .iter()
                        .map(|y| (s.start - y.start, y.end - y.start))
                        .min_by(|a, b| a.0.abs().total_cmp(&b.0.abs()))
                        .map_or(String::new(), |(d, len)| {
                            format!(
                                "; {:+.0} ms from the start of a {:.0} ms kube-proxy sync",
                                d * 1000.0,
                                len * 1000.0
                            )
                        });
                    st.examples.push(match near {
                        Some(d) => format!(
                            "{:.3}, {:+.0} ms from a window's opening{sync}: {e}",
                            s.start,
                            d * 1000.0
                        ),
                        None => format!("{:.3} (no handover){sync}: {e}", s.start),
                    });
                }
            }
            Ok(pod) => {
                st.longest_gap = st.longest_gap.max(s.end - last_ok);
                last_ok = s.end;
                let holder = holder_at(&timeline, s.start);
                if pod == holder {
                    continue;
                }
                let window = handovers.iter().find(|h| {
                    h.open <= s.start && s.start <= h.close() && (*pod == h.from || *pod == h.to)
                });
                if window.is_some() {
                    st.in_window += 1;
                } else {
                    st.non_leader += 1;
                    wrong = Some(wrong.map_or((s.start, s.start), |(a, _)| (a, s.start)));
                    if st.examples.len() < 3 {
                        st.examples.push(format!(
                            "{:.3} answered by {pod}, the Lease named {holder:?}",
                            s.start
                        ));
                    }
                }
            }
        }
    }
    st.longest_gap = st.longest_gap.max(end - last_ok);
    st.non_leader_span = wrong.map_or(0.0, |(a, b)| b - a);
    st
}

impl Observed {
    /// What happened in [start, end]: the handovers and how each client fared.
    pub fn report(&self, name: &str, actions: &[f64], start: f64, end: f64) -> Report {
        let handovers = handovers(self, actions, start, end);
        Report {
            name: name.into(),
            start,
            end,
            fresh: judge(self, &handovers, false, start, end),
            keepalive: judge(self, &handovers, true, start, end),
            handovers,
        }
    }
}

fn ms(from: f64, to: Option<f64>) -> String {
    to.map_or("never".into(), |t| format!("{:.0}", (t - from) * 1000.0))
}

impl Report {
    /// A few lines for the test's output.
    pub fn render(&self) -> String {
        let mut s = format!("{} ({:.1} s)\n", self.name, self.end - self.start);
        for (label, st) in [
            ("new connections", &self.fresh),
            ("keep-alive", &self.keepalive),
        ] {
            s += &format!(
                "  {label:16} {:5} requests, {} failed ({} not refused inside a window), {} by a non-leader outside the window (over {:.0} ms), {} in the window, longest gap {:.0} ms\n",
                st.requests, st.failed, st.failed_unexplained, st.non_leader, st.non_leader_span * 1000.0, st.in_window, st.longest_gap * 1000.0
            );
            for e in &st.examples {
                s += &format!("      {e}\n");
            }
        }
        for h in &self.handovers {
            s += &format!(
                "  handover {} -> {}: ms after the window opened: lease taken {}, labels {}/{}, EndpointSlice {}, kube-proxy synced {} (window {}), first answer {}; old leader's last answer {}; window opened {} ms after the trigger\n",
                h.from,
                h.to,
                ms(h.open, Some(h.acquired)),
                ms(h.open, h.labeled),
                ms(h.open, h.unlabeled),
                ms(h.open, h.sliced),
                ms(h.open, h.synced),
                ms(h.open, h.synced),
                ms(h.open, h.first_answer),
                ms(h.open, h.last_old_answer),
                ((h.open - h.trigger) * 1000.0).round(),
            );
        }
        s
    }

    pub fn json(&self) -> Value {
        let stats = |st: &Stats| {
            serde_json::json!({
                "requests": st.requests,
                "failed": st.failed,
                "failed_unexplained": st.failed_unexplained,
                "non_leader_outside_window": st.non_leader,
                "non_leader_span_ms": (st.non_leader_span * 1000.0).round(),
                "in_window": st.in_window,
                "longest_gap_ms": (st.longest_gap * 1000.0).round(),
            })
        };
        let rel = |h: &Handover, t: Option<f64>| t.map(|t| ((t - h.open) * 1000.0).round());
        serde_json::json!({
            "scenario": self.name,
            "seconds": ((self.end - self.start) * 10.0).round() / 10.0,
            "new_connections": stats(&self.fresh),
            "keepalive": stats(&self.keepalive),
            "handovers": self.handovers.iter().map(|h| serde_json::json!({
                "from": h.from, "to": h.to,
                "trigger_to_open_ms": ((h.open - h.trigger) * 1000.0).round(),
                "lease_taken_ms": rel(h, Some(h.acquired)),
                "labeled_ms": rel(h, h.labeled),
                "old_unlabeled_ms": rel(h, h.unlabeled),
                "endpointslice_ms": rel(h, h.sliced),
                "kube_proxy_synced_ms": rel(h, h.synced),
                "first_answer_ms": rel(h, h.first_answer),
                "old_last_answer_ms": rel(h, h.last_old_answer),
            })).collect::<Vec<_>>(),
        })
    }
}
