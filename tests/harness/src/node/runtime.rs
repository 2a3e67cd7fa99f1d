//! The node's processes: containerd (its config, and the CNI config when pods get a
//! network), `ctr events` recording every task exit, and the kubelet, started until the
//! Node is registered.

use super::{pod_port, run, PodNetwork, TaskExit, BUSYBOX, CNI_NETWORK, NODE_NAME};
use crate::cluster::{tail, Cluster};
use crate::process::spawn_long_lived;
use serde_json::{json, Value};
use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

fn logged(dir: &Path, name: &str) -> (Stdio, Stdio) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))
        .unwrap();
    (log.try_clone().unwrap().into(), log.into())
}

pub(super) fn start_containerd(dir: &Path, sock: &Path, network: Option<&PodNetwork>) -> Child {
    let d = dir.join("containerd");
    let config = dir.join("containerd.toml");
    let cni_bin = match network {
        Some(n) => {
            write_cni_config(dir, n);
            "/usr/lib/cni".to_string()
        }
        None => format!("{}/cni/bin", d.display()),
    };
    // restrict_oom_score_adj: the kubelet asks for -998 and this VM lacks
    // CAP_SYS_RESOURCE (runc: "can't get final child's PID from pipe: EOF").
    // Every path under `dir`: opt, CNI's configuration, runc's state, the pods' network
    // namespaces (netns_mounts_under_state_dir; else /run/netns).
    std::fs::write(
        &config,
        format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{sock}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{BUSYBOX}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    conf_dir = "{d}/cni/conf"
    bin_dir = "{cni_bin}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{d}/runc"
"#,
            d = d.display(),
            sock = sock.display()
        ),
    )
    .unwrap();
    let (out, err) = logged(dir, "containerd");
    let mut cmd = Command::new("containerd");
    cmd.arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let mut child =
        spawn_long_lived(cmd).unwrap_or_else(|e| panic!("cannot start containerd: {e}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = Command::new("ctr")
            .args(["--address", sock.to_str().unwrap(), "version"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return child;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "containerd exited ({status}):\n{}",
                tail(&dir.join("containerd.log"), 30)
            );
        }
        assert!(
            Instant::now() < deadline,
            "containerd not answering after 30 s:\n{}",
            tail(&dir.join("containerd.log"), 30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The pods' network: a bridge in the node's namespace, addresses from host-local (its
/// state under `dir`, not /var/lib/cni/networks). No masquerading: nothing leaves the
/// test's namespace.
fn write_cni_config(dir: &Path, n: &PodNetwork) {
    let conf = dir.join("containerd/cni/conf");
    std::fs::create_dir_all(&conf).unwrap();
    let list = json!({
        "cniVersion": "0.4.0",
        "name": CNI_NETWORK,
        "plugins": [{
            "type": "bridge",
            "bridge": n.bridge,
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": n.pod_cidr}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": dir.join("cni-ipam").display().to_string(),
            },
        }],
    });
    std::fs::write(conf.join("10-pods.conflist"), list.to_string()).unwrap();
}

/// `ctr events`: every /tasks/exit of a container's main process, with its status.
pub(super) fn start_events(dir: &Path, sock: &Path, exits: Arc<Mutex<Vec<TaskExit>>>) -> Child {
    let mut cmd = Command::new("ctr");
    cmd.args([
        "--address",
        sock.to_str().unwrap(),
        "-n",
        "k8s.io",
        "events",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    let mut child = spawn_long_lived(cmd).expect("ctr events");
    let stdout = child.stdout.take().unwrap();
    let log_path = dir.join("events.log");
    std::thread::spawn(move || {
        use std::io::Write;
        let mut log = std::fs::File::create(log_path).ok();
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let (at, wall) = (Instant::now(), SystemTime::now());
            if let Some(l) = log.as_mut() {
                let _ = writeln!(l, "{line}");
            }
            if !line.contains("/tasks/exit") {
                continue;
            }
            let Some(start) = line.find('{') else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<Value>(&line[start..]) else {
                continue;
            };
            let (cid, id) = (v["container_id"].as_str(), v["id"].as_str());
            // Exec processes (probes, exec) report their own id.
            if cid.is_none() || cid != id {
                continue;
            }
            exits.lock().unwrap().push(TaskExit {
                container_id: cid.unwrap().to_string(),
                status: v["exit_status"].as_i64().unwrap_or(0),
                at,
                wall,
            });
        }
    });
    child
}

/// The first global IPv4 address of this machine: the kubelet's --node-ip (it refuses
/// loopback, and would otherwise look its own name up in DNS). Nothing is sent to it:
/// pods use hostNetwork, probes and the sidecar use 127.0.0.1.
pub(super) fn node_ip() -> String {
    let out = run(Command::new("ip").args(["-4", "-o", "addr", "show", "scope", "global"]));
    out.lines()
        .find_map(|l| {
            let mut it = l.split_whitespace();
            it.position(|w| w == "inet")?;
            it.next()?.split('/').next().map(str::to_string)
        })
        .unwrap_or_else(|| {
            panic!("no global IPv4 address on this machine: the kubelet refuses a loopback node IP")
        })
}

pub(super) fn start_kubelet(
    cluster: &Cluster,
    bin: &Path,
    dir: &Path,
    sock: &Path,
    root: &Path,
    port: u16,
    node_ip: &str,
) -> Child {
    let config = dir.join("kubelet.yaml");
    let healthz = pod_port();
    // ../shared/notes/kubelet.md's configuration, plus: every path under `dir`, no
    // iptables chains, a 10 s sync (projected tokens are rewritten on pod syncs), and
    // no image garbage collection or disk eviction (the imported images must stay).
    std::fs::write(
        &config,
        format!(
            r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failSwapOn: false
failCgroupV1: false
cgroupsPerQOS: false
enforceNodeAllocatable: []
containerRuntimeEndpoint: unix://{sock}
authentication: {{anonymous: {{enabled: true}}, webhook: {{enabled: false}}}}
authorization: {{mode: AlwaysAllow}}
address: 127.0.0.1
port: {port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz}
localStorageCapacityIsolation: false
podLogsDir: {logs}
volumePluginDir: {plugins}
makeIPTablesUtilChains: false
syncFrequency: 10s
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {{memory.available: "50Mi"}}
"#,
            sock = sock.display(),
            logs = dir.join("pod-logs").display(),
            plugins = dir.join("volume-plugins").display(),
        ),
    )
    .unwrap();
    let (out, err) = logged(dir, "kubelet");
    let mut cmd = Command::new(bin.join("kubelet"));
    cmd.arg(format!("--config={}", config.display()))
        .arg(format!("--kubeconfig={}", cluster.kubeconfig.display()))
        .arg(format!("--root-dir={}", root.display()))
        .arg(format!("--hostname-override={NODE_NAME}"))
        .arg(format!("--node-ip={node_ip}"))
        .arg("--v=2")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    spawn_long_lived(cmd).unwrap_or_else(|e| panic!("cannot start the kubelet: {e}"))
}

/// Waits until the Node exists and the kubelet reports its version.
pub(super) fn wait_registered(cluster: &Cluster, dir: &Path, kubelet_pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (code, node) = cluster
            .api
            .call("GET", &format!("/api/v1/nodes/{NODE_NAME}"), None);
        if code == 200 && node["status"]["nodeInfo"]["kubeletVersion"].as_str() == Some("v1.36.3") {
            return;
        }
        assert!(
            Path::new(&format!("/proc/{kubelet_pid}")).exists(),
            "the kubelet exited:\n{}",
            tail(&dir.join("kubelet.log"), 40)
        );
        assert!(
            Instant::now() < deadline,
            "the kubelet did not register Node {NODE_NAME} within 90 s ({code}):\n{}",
            tail(&dir.join("kubelet.log"), 40)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
