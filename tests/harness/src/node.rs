//! A real node for the tests: containerd 1.6 and runc from Debian, and a kubelet v1.36.3
//! built from Go modules (tests/control-plane/build-kubelet.sh), registered with a
//! control plane of its own (kube-apiserver with the ServiceAccount admission plugin,
//! kube-controller-manager with root-ca-cert-publisher). See ../shared/notes/kubelet.md.
//!
//! - Started once per test binary ([`Node::shared`]); a failed start fails every test
//!   with the same message (never a skip).
//! - Images come in as air-gapped users bring them: scripts/image-check.sh builds the
//!   image and writes `target/leader-labeler-<version>.tar` (what `make image-tar`
//!   writes), imported with `ctr -n k8s.io images import`; plus a local busybox image
//!   (Debian's static busybox, user 65532) that serves as sandbox and app image.
//! - Everything stays on loopback: hostNetwork pods, the kubelet on 127.0.0.1, the
//!   sidecar's KUBERNETES_SERVICE_HOST/PORT set to 127.0.0.1 and the API server's port,
//!   probes with `host: 127.0.0.1`.
//! - Cleanup on success, failure and panic: an atexit handler stops the kubelet, kills
//!   and deletes every container task through containerd, stops containerd, kills any
//!   process still referring to the node's folder (shims, container processes) by PID,
//!   unmounts everything under the folder and removes it. A test process killed with
//!   SIGKILL leaves its folder behind; the next start sweeps it the same way.
//!
//! Files: `$TMPDIR/leader-labeler-node/<pid>/` (containerd, kubelet, pod logs, the logs
//! `containerd.log`, `kubelet.log`, `events.log`).

use crate::api::Api;
use crate::cluster::{free_port, tail, Cluster, ClusterOptions};
use crate::namespace::Namespace;
use crate::process::{signal, spawn_long_lived};
use serde_json::{json, Value};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

/// The Node the kubelet registers.
pub const NODE_NAME: &str = "ll-node";
/// The local sandbox and app image (Debian's static busybox, user 65532).
pub const BUSYBOX: &str = "localhost/leader-labeler-node/busybox:1";

/// A container task's exit as containerd reported it (`ctr events`, topic /tasks/exit).
#[derive(Debug, Clone)]
pub struct TaskExit {
    pub container_id: String,
    pub status: i64,
    /// When the event reached the test.
    pub at: Instant,
    pub wall: SystemTime,
}

/// The running node.
pub struct Node {
    pub cluster: &'static Cluster,
    pub dir: PathBuf,
    /// The leader-labeler image as the tarball names it.
    pub image: String,
    /// The kubelet's --root-dir.
    pub kubelet_root: PathBuf,
    /// The kubelet's HTTPS port on 127.0.0.1 (/metrics/probes).
    pub kubelet_port: u16,
    pub kubelet_pid: u32,
    pub containerd_pid: u32,
    sock: PathBuf,
    exits: Arc<Mutex<Vec<TaskExit>>>,
    /// How long the start took (images, containerd, kubelet, Node registered).
    pub started_in: Duration,
}

/// What a cleanup needs, kept where the atexit handler finds it.
struct Running {
    dir: PathBuf,
    sock: PathBuf,
    /// In stop order: kubelet, ctr events, containerd.
    children: Vec<(&'static str, Child)>,
    /// Host folders the runtime creates outside `dir` that did not exist before: removed
    /// at the end if empty (shim sockets' /run/containerd/s, ctr's fifos, the kubelet's
    /// /var/log/containers, containerd's `k8s.io` cgroup parent in each hierarchy).
    created: Vec<PathBuf>,
}

/// Host folders outside the node's folder that containerd, its shims or the kubelet
/// create when missing.
fn host_folders() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = [
        "/run/containerd/s",
        "/run/containerd/fifo",
        "/run/containerd",
        "/var/log/containers",
        "/var/lib/cni/results",
        "/var/lib/cni",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    let mut hierarchies = vec![PathBuf::from("/sys/fs/cgroup/unified")];
    if let Ok(d) = std::fs::read_dir("/sys/fs/cgroup") {
        hierarchies.extend(d.flatten().map(|e| e.path()));
    }
    hierarchies.sort();
    hierarchies.dedup();
    // cgroup v2 only: /sys/fs/cgroup itself is the hierarchy.
    hierarchies.push(PathBuf::from("/sys/fs/cgroup"));
    v.extend(hierarchies.into_iter().map(|h| h.join("k8s.io")));
    v
}

static RUNNING: Mutex<Option<Running>> = Mutex::new(None);

extern "C" fn stop_at_exit() {
    let running = RUNNING.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(r) = running {
        teardown(r);
    }
}

/// Runs a script of the repository; panics with its exit status (its stderr is
/// inherited, so its message is in the test output). Returns stdout.
fn script(path: &str, args: &[&str], env: &[(&str, &str)], why: &str) -> String {
    let mut cmd = Command::new("bash");
    cmd.arg(crate::repo_root().join(path))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(crate::repo_root())
        .stderr(Stdio::inherit());
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {path}: {e}"));
    assert!(
        out.status.success(),
        "{path} {args:?} failed ({}): {why}; see its messages above. The node tests never skip.",
        out.status
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command; panics with its output unless it exits 0. Returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The control plane the node registers with: the ServiceAccount admission plugin on
/// (projected token volumes), kube-controller-manager with root-ca-cert-publisher
/// (`kube-root-ca.crt` in every namespace).
pub fn node_cluster() -> &'static Cluster {
    static C: OnceLock<Cluster> = OnceLock::new();
    C.get_or_init(|| {
        Cluster::start(ClusterOptions {
            controller_manager: true,
            service_account_admission: true,
            extra_controllers: vec!["root-ca-cert-publisher"],
            ..Default::default()
        })
    })
}

/// What must be ready before the node starts, done by scripts that may need the network
/// on a fresh machine (Debian packages, the Go module proxy, a Rust target): the traffic
/// rig runs them before it enters its network namespace.
#[derive(Clone)]
pub struct Prepared {
    /// The folder with the kubelet (and whatever else was asked for).
    pub bin: PathBuf,
    /// The leader-labeler image as the tarball names it.
    pub image: String,
    pub tarball: PathBuf,
}

impl Prepared {
    /// `scripts/deps.sh <deps>`, `build-kubelet.sh <binaries>`, and scripts/image-check.sh
    /// (static binary, image, the air-gap tarball).
    pub fn new(deps: &str, binaries: &[&str]) -> Prepared {
        script(
            "scripts/deps.sh",
            &[deps],
            &[],
            "containerd, runc, busybox-static and buildah are needed",
        );
        let bin = PathBuf::from(
            script(
                "tests/control-plane/build-kubelet.sh",
                binaries,
                &[],
                "the node's binaries could not be built",
            )
            .lines()
            .last()
            .unwrap_or_default()
            .trim(),
        );
        let version = std::fs::read_to_string(crate::repo_root().join("Cargo.toml"))
            .unwrap()
            .lines()
            .find_map(|l| {
                l.strip_prefix("version = \"")?
                    .strip_suffix('"')
                    .map(str::to_string)
            })
            .expect("version in Cargo.toml");
        let image = format!("ghcr.io/middlendian/leader-labeler:{version}");
        let tarball = crate::repo_root().join(format!("target/leader-labeler-{version}.tar"));
        // The same script `make test` runs: static binary, image, --version inside it,
        // user 65532, and the air-gap tarball `make image-tar` writes.
        script(
            "scripts/image-check.sh",
            &[],
            &[
                ("IMAGE", image.as_str()),
                ("TARBALL", tarball.to_str().unwrap()),
            ],
            "the image tarball could not be built",
        );
        Prepared {
            bin,
            image,
            tarball,
        }
    }
}

/// Pod networking for the node: the CNI bridge and host-local plugins of Debian's
/// containernetworking-plugins. Only inside a network namespace the test created.
#[derive(Clone, Debug)]
pub struct PodNetwork {
    /// The kubelet's --node-ip (an address of the test's namespace).
    pub node_ip: &'static str,
    /// host-local's range; the bridge takes its first address as the pods' gateway.
    pub pod_cidr: &'static str,
    pub bridge: &'static str,
}

/// The CNI network's name (also the prefix of libcni's cache files in /var/lib/cni).
pub const CNI_NETWORK: &str = "leader-labeler-pods";

#[derive(Clone, Debug, Default)]
pub struct NodeOptions {
    /// None: hostNetwork pods only (the node suite).
    pub network: Option<PodNetwork>,
    /// More image tarballs to import.
    pub images: Vec<PathBuf>,
}

impl Node {
    /// The node of this test binary, started on first use. If the start failed, every
    /// caller panics with that failure.
    pub fn shared() -> &'static Node {
        static NODE: OnceLock<Result<Node, String>> = OnceLock::new();
        let r = NODE.get_or_init(|| {
            std::panic::catch_unwind(|| Node::start(node_cluster())).map_err(|e| {
                e.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".into())
            })
        });
        match r {
            Ok(n) => n,
            Err(e) => panic!("the node could not start: {e}"),
        }
    }

    fn start(cluster: &'static Cluster) -> Node {
        Node::launch(
            cluster,
            &Prepared::new("node", &["kubelet"]),
            NodeOptions::default(),
        )
    }

    /// Starts containerd and the kubelet (see [`Prepared`] for what must come first) and
    /// waits until the Node is registered.
    pub fn launch(cluster: &'static Cluster, prepared: &Prepared, opts: NodeOptions) -> Node {
        let t0 = Instant::now();
        // SAFETY: registering a plain extern "C" fn.
        unsafe {
            libc::atexit(stop_at_exit);
        }
        let root = std::env::temp_dir().join("leader-labeler-node");
        std::fs::create_dir_all(&root).unwrap();
        sweep_stale(&root);
        let dir = root.join(std::process::id().to_string());
        if dir.exists() {
            teardown(Running {
                dir: dir.clone(),
                sock: dir.join("containerd.sock"),
                children: vec![],
                created: vec![],
            });
        }
        std::fs::create_dir_all(&dir).unwrap();
        let created: Vec<PathBuf> = host_folders().into_iter().filter(|p| !p.exists()).collect();
        let Prepared {
            bin,
            image,
            tarball,
        } = prepared.clone();
        let busybox_tar = build_busybox_image(&dir);

        let sock = dir.join("containerd.sock");
        *RUNNING.lock().unwrap() = Some(Running {
            dir: dir.clone(),
            sock: sock.clone(),
            children: vec![],
            created,
        });
        let containerd = start_containerd(&dir, &sock, opts.network.as_ref());
        let containerd_pid = containerd.id();
        push_child("containerd", containerd);
        for tar in [&tarball, &busybox_tar].into_iter().chain(&opts.images) {
            run(Command::new("ctr")
                .args([
                    "--address",
                    sock.to_str().unwrap(),
                    "-n",
                    "k8s.io",
                    "images",
                    "import",
                    // As the README says: the tarball is an index of two platforms.
                    "--all-platforms",
                ])
                .args(["--snapshotter", "native"])
                .arg(tar));
        }
        let listed = run(Command::new("ctr").args([
            "--address",
            sock.to_str().unwrap(),
            "-n",
            "k8s.io",
            "images",
            "ls",
            "-q",
        ]));
        for want in [image.as_str(), BUSYBOX] {
            assert!(
                listed.lines().any(|l| l == want),
                "{want} is not in containerd after the import: {listed}"
            );
        }
        let table = run(Command::new("ctr")
            .args(["--address", sock.to_str().unwrap(), "-n", "k8s.io"])
            .args(["images", "ls"]));
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(&format!("{image} "))
                    && l.contains("linux/amd64,linux/arm64")),
            "{image} was imported without both platforms:\n{table}"
        );
        let exits = Arc::new(Mutex::new(Vec::new()));
        let events = start_events(&dir, &sock, exits.clone());
        push_child("ctr events", events);

        let kubelet_root = dir.join("kubelet");
        let kubelet_port = pod_port();
        let node_ip = match &opts.network {
            Some(n) => n.node_ip.to_string(),
            None => node_ip(),
        };
        let kubelet = start_kubelet(
            cluster,
            &bin,
            &dir,
            &sock,
            &kubelet_root,
            kubelet_port,
            &node_ip,
        );
        let kubelet_pid = kubelet.id();
        push_child("kubelet", kubelet);
        wait_registered(cluster, &dir, kubelet_pid);
        Node {
            cluster,
            dir,
            image,
            kubelet_root,
            kubelet_port,
            kubelet_pid,
            containerd_pid,
            sock,
            exits,
            started_in: t0.elapsed(),
        }
    }

    /// A fresh namespace with deploy/rbac.yaml applied, once its `kube-root-ca.crt`
    /// ConfigMap exists (the projected volume needs it).
    pub fn namespace(&self, prefix: &str) -> Namespace<'static> {
        let ns = Namespace::new(self.cluster, prefix);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (code, cm) = self.cluster.api.call(
                "GET",
                &format!("/api/v1/namespaces/{}/configmaps/kube-root-ca.crt", ns.name),
                None,
            );
            if code == 200 && cm["data"]["ca.crt"].as_str().is_some_and(|c| !c.is_empty()) {
                return ns;
            }
            assert!(
                Instant::now() < deadline,
                "kube-root-ca.crt never appeared in {} ({code} {cm}):\n{}",
                ns.name,
                tail(&self.cluster.dir.join("kube-controller-manager.log"), 20)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        c.args(["--address", self.sock.to_str().unwrap(), "-n", "k8s.io"]);
        c
    }

    /// Runs a command inside a running container (through containerd, as `kubectl exec`
    /// would through the kubelet); panics unless it exits 0.
    pub fn exec(&self, container_id: &str, args: &[&str]) {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let id = format!(
            "test-exec-{}",
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        run(self
            .ctr()
            .args(["tasks", "exec", "--exec-id", &id, container_id])
            .args(args));
    }

    /// The host PID of a container's main process (`ctr tasks ls`).
    pub fn task_pid(&self, container_id: &str) -> u32 {
        let out = run(self.ctr().args(["tasks", "ls"]));
        out.lines()
            .find_map(|l| {
                let mut w = l.split_whitespace();
                (w.next()? == container_id).then(|| w.next()?.parse().ok())?
            })
            .unwrap_or_else(|| panic!("no task {container_id} in containerd:\n{out}"))
    }

    /// Every container exit seen so far.
    pub fn exits(&self) -> Vec<TaskExit> {
        self.exits.lock().unwrap().clone()
    }

    /// Waits for the exit of a container (by id); panics after `timeout`.
    pub fn wait_exit(&self, container_id: &str, timeout: Duration) -> TaskExit {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self
                .exits()
                .into_iter()
                .find(|e| e.container_id == container_id)
            {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "container {container_id} did not exit within {timeout:?}; exits seen: {:?}\nkubelet log:\n{}",
                self.exits(),
                tail(&self.dir.join("kubelet.log"), 30)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident memory of a process in KiB (VmRSS).
    pub fn rss_kib(pid: u32) -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// The kubelet's probe metrics (GET https://127.0.0.1:<port>/metrics/probes).
    pub fn probe_metrics(&self) -> String {
        run(Command::new("curl").args([
            "-sSk",
            "--noproxy",
            "*",
            "--max-time",
            "5",
            &format!("https://127.0.0.1:{}/metrics/probes", self.kubelet_port),
        ]))
    }

    /// A container's log as the kubelet wrote it (CRI format: time, stream, tag, text).
    pub fn container_log(&self, ns: &str, pod: &Value, container: &str) -> String {
        let uid = pod["metadata"]["uid"].as_str().unwrap_or("");
        let name = pod["metadata"]["name"].as_str().unwrap_or("");
        let folder = self
            .dir
            .join("pod-logs")
            .join(format!("{ns}_{name}_{uid}"))
            .join(container);
        let mut text = String::new();
        let mut files: Vec<_> = std::fs::read_dir(&folder)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        for f in files {
            text.push_str(&std::fs::read_to_string(f).unwrap_or_default());
        }
        text
    }

    /// Where the kubelet mounted a pod's volume (`kubernetes.io~projected`,
    /// `kubernetes.io~empty-dir`).
    pub fn volume_dir(&self, pod: &Value, plugin: &str, volume: &str) -> PathBuf {
        self.kubelet_root
            .join("pods")
            .join(pod["metadata"]["uid"].as_str().unwrap_or(""))
            .join("volumes")
            .join(plugin)
            .join(volume)
    }

    /// The last lines of the kubelet's log.
    pub fn kubelet_log(&self, lines: usize) -> String {
        tail(&self.dir.join("kubelet.log"), lines)
    }
}

fn push_child(name: &'static str, child: Child) {
    let mut r = RUNNING.lock().unwrap();
    let r = r.as_mut().expect("node running");
    // Stop order: kubelet first, containerd last.
    if name == "containerd" {
        r.children.push((name, child));
    } else {
        r.children.insert(0, (name, child));
    }
}

/// The sandbox and app image: `FROM scratch`, Debian's static busybox with its applets
/// linked into /bin, a world-writable /tmp, user 65532 (the manifests' runAsNonRoot).
fn build_busybox_image(dir: &Path) -> PathBuf {
    let ctx = dir.join("busybox-image");
    let tar = dir.join("busybox.tar");
    build_image(
        &ctx,
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nRUN [\"/bin/busybox\", \"mkdir\", \"-m\", \"1777\", \"/tmp\"]\nUSER 65532:65532\nCMD [\"sleep\", \"2147483647\"]\n",
        BUSYBOX,
        &tar,
    );
    tar
}

/// Builds `containerfile` in `ctx` (which gets Debian's static busybox as `busybox`) with
/// buildah (vfs, chroot isolation: no daemon) as `tag`, written to `tar` as a
/// docker-archive for `ctr images import`.
pub fn build_image(ctx: &Path, containerfile: &str, tag: &str, tar: &Path) {
    std::fs::create_dir_all(ctx).unwrap();
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox-static (scripts/deps.sh node installs it)");
    std::fs::copy(busybox, ctx.join("busybox")).unwrap();
    std::fs::write(ctx.join("Containerfile"), containerfile).unwrap();
    let buildah = || {
        let mut c = Command::new("buildah");
        c.args(["--storage-driver", "vfs"]);
        c
    };
    run(buildah()
        .args(["bud", "--isolation", "chroot", "--quiet", "-t", tag, "-f"])
        .arg(ctx.join("Containerfile"))
        .arg(ctx));
    let _ = std::fs::remove_file(tar);
    run(buildah()
        .args(["push", "--quiet", tag])
        .arg(format!("docker-archive:{}:{tag}", tar.display())));
}

fn logged(dir: &Path, name: &str) -> (Stdio, Stdio) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))
        .unwrap();
    (log.try_clone().unwrap().into(), log.into())
}

fn start_containerd(dir: &Path, sock: &Path, network: Option<&PodNetwork>) -> Child {
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
fn start_events(dir: &Path, sock: &Path, exits: Arc<Mutex<Vec<TaskExit>>>) -> Child {
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
fn node_ip() -> String {
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

fn start_kubelet(
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
fn wait_registered(cluster: &Cluster, dir: &Path, kubelet_pid: u32) {
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

/// Stops what `r` started and removes every trace under its folder: the kubelet, every
/// container task (killed and deleted through containerd, so the shims exit),
/// containerd, then any process still referring to the folder (by PID), the mounts
/// under it, the kubelet's /var/log/containers links into it, and the folder.
fn teardown(r: Running) {
    let Running {
        dir,
        sock,
        mut children,
        created,
    } = r;
    let containerd_alive = children.iter().any(|(n, _)| *n == "containerd");
    for (name, child) in children.iter_mut() {
        if *name == "containerd" {
            if containerd_alive {
                delete_tasks(&sock);
            }
            stop(child, Duration::from_secs(10));
        } else {
            stop(child, Duration::from_secs(5));
        }
    }
    kill_referring(&dir);
    unmount_under(&dir);
    if let Ok(entries) = std::fs::read_dir("/var/log/containers") {
        for e in entries.flatten() {
            if std::fs::read_link(e.path()).is_ok_and(|t| t.starts_with(&dir)) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    // libcni caches each pod's result in /var/lib/cni/results (not configurable in
    // containerd 1.6), for the pod network and containerd's loopback alike: this run's
    // are those naming a network namespace under `dir`.
    if let Ok(entries) = std::fs::read_dir("/var/lib/cni/results") {
        let needle = dir.to_string_lossy().into_owned();
        for e in entries.flatten() {
            if std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains(&needle)) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    // Shim sockets live in /run/containerd/s/; each task folder names its own.
    let tasks = dir.join("containerd/state/io.containerd.runtime.v2.task/k8s.io");
    if let Ok(entries) = std::fs::read_dir(&tasks) {
        for e in entries.flatten() {
            if let Ok(addr) = std::fs::read_to_string(e.path().join("address")) {
                if let Some(p) = addr.trim().strip_prefix("unix://") {
                    let _ = std::fs::remove_file(p);
                }
            }
        }
    }
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        eprintln!("node: could not remove {}: {e}", dir.display());
    }
    // Only what this run created, only when empty (rmdir fails otherwise; an empty
    // cgroup has no processes and no children).
    for p in created {
        let _ = std::fs::remove_dir(p);
    }
}

fn stop(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    signal(child.id(), libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Kills (SIGKILL) and deletes every task in containerd's k8s.io namespace, then
/// deletes the containers; the shims exit with their tasks.
fn delete_tasks(sock: &Path) {
    let ctr = |args: &[&str]| {
        Command::new("ctr")
            .args(["--address", sock.to_str().unwrap(), "-n", "k8s.io"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    for id in ctr(&["tasks", "ls", "-q"]).lines() {
        ctr(&["tasks", "kill", "-a", "-s", "SIGKILL", id]);
    }
    for id in ctr(&["tasks", "ls", "-q"]).lines() {
        ctr(&["tasks", "delete", "-f", id]);
    }
    for id in ctr(&["containers", "ls", "-q"]).lines() {
        ctr(&["containers", "delete", id]);
    }
}

fn ppid_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(1)?.parse().ok()
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// SIGKILLs, by PID, every process whose command line or working folder names `dir`
/// (containerd shims run in their task folder and name the socket), and all their
/// descendants (container processes).
fn kill_referring(dir: &Path) {
    let me = std::process::id();
    let needle = dir.to_string_lossy().into_owned();
    for _ in 0..5 {
        let pids = all_pids();
        let mut roots: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|&p| p != me)
            .filter(|&p| {
                let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
                let cwd = std::fs::read_link(format!("/proc/{p}/cwd")).unwrap_or_default();
                String::from_utf8_lossy(&cmdline).contains(&needle) || cwd.starts_with(dir)
            })
            .collect();
        if roots.is_empty() {
            return;
        }
        let parents: Vec<(u32, u32)> = pids
            .iter()
            .filter_map(|&p| Some((p, ppid_of(p)?)))
            .collect();
        let mut i = 0;
        while i < roots.len() {
            let r = roots[i];
            for &(p, pp) in &parents {
                if pp == r && !roots.contains(&p) && p != me {
                    roots.push(p);
                }
            }
            i += 1;
        }
        for p in roots.iter().rev() {
            signal(*p, libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Unmounts (lazily, deepest first) every mount point under `dir`.
fn unmount_under(dir: &Path) {
    for _ in 0..5 {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<String> = info
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4))
            .map(|p| p.replace("\\040", " "))
            .filter(|p| Path::new(p).starts_with(dir))
            .collect();
        if points.is_empty() {
            return;
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let c = std::ffi::CString::new(p).unwrap();
            // SAFETY: umount2 on a path string we own.
            unsafe {
                libc::umount2(c.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
}

/// Folders of earlier test processes that are gone (killed before their atexit ran).
fn sweep_stale(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("node: cleaning up after dead test process {pid}");
            // Which host folders it created is unknown: remove them if empty (rmdir
            // only; a runtime that needs them creates them again).
            teardown(Running {
                dir: e.path(),
                sock: e.path().join("containerd.sock"),
                children: vec![],
                created: host_folders(),
            });
        }
    }
}

// ---------------------------------------------------------------------------------
// Pods rendered from the shipped manifests.

/// Which shipped manifest a pod comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Manifest {
    Deployment,
    StatefulSet,
    NativeSidecar,
}

impl Manifest {
    fn file(self) -> &'static str {
        match self {
            Manifest::Deployment => "deploy/deployment.yaml",
            Manifest::StatefulSet => "deploy/statefulset.yaml",
            Manifest::NativeSidecar => "deploy/native-sidecar.yaml",
        }
    }
}

/// The busybox app: ready while /tmp/ready exists, exits 0 on SIGTERM.
pub const APP_SCRIPT: &str =
    "trap 'echo app: SIGTERM; exit 0' TERM; touch /tmp/ready; echo app: started; sleep 2147483647 & wait";

/// The pod template of a shipped manifest (its Deployment or StatefulSet), as JSON,
/// read with kubectl so the YAML is parsed the way users' kubectl parses it.
pub fn template(cluster: &Cluster, manifest: Manifest) -> Value {
    let text = std::fs::read_to_string(crate::repo_root().join(manifest.file())).unwrap();
    cluster
        .manifest_objects(&text, manifest.file())
        .into_iter()
        .find(|i| i["kind"] == "Deployment" || i["kind"] == "StatefulSet")
        .map(|w| w["spec"]["template"].clone())
        .unwrap_or_else(|| panic!("{} has no Deployment or StatefulSet", manifest.file()))
}

/// A pod from a template, with only what this node needs changed: name and nodeName,
/// hostNetwork, the images (the tarball's, busybox for the app, pulled never), the app
/// as busybox with an exec readiness probe instead of nginx's HTTP one, the ports made
/// unique (hostNetwork pods share the host's), the sidecar's HTTP listener and its
/// liveness probe on 127.0.0.1, and KUBERNETES_SERVICE_HOST/PORT pointed at the API
/// server on 127.0.0.1. Returns the pod and the sidecar's HTTP port.
pub fn render(node: &Node, template: &Value, name: &str) -> (Value, u16) {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": template["metadata"].clone(),
        "spec": template["spec"].clone(),
    });
    pod["metadata"]["name"] = json!(name);
    let spec = &mut pod["spec"];
    spec["nodeName"] = json!(NODE_NAME);
    spec["hostNetwork"] = json!(true);
    let http_port = pod_port();
    let api_port = node.cluster.port;
    for list in ["initContainers", "containers"] {
        let Some(containers) = spec[list].as_array_mut() else {
            continue;
        };
        for c in containers {
            match c["name"].as_str() {
                Some("app") => {
                    c["image"] = json!(BUSYBOX);
                    c["imagePullPolicy"] = json!("Never");
                    c["command"] = json!(["sh", "-c", APP_SCRIPT]);
                    let probe = c["readinessProbe"]
                        .as_object_mut()
                        .expect("app readinessProbe");
                    probe.remove("httpGet");
                    probe.insert("exec".into(), json!({"command": ["cat", "/tmp/ready"]}));
                    c["ports"] = json!([{"name": "http", "containerPort": pod_port()}]);
                }
                Some("leader-labeler") => {
                    c["image"] = json!(node.image);
                    c["imagePullPolicy"] = json!("Never");
                    c["args"]
                        .as_array_mut()
                        .expect("sidecar args")
                        .push(json!(format!("--http-address=127.0.0.1:{http_port}")));
                    for p in c["ports"].as_array_mut().expect("sidecar ports") {
                        if p["name"] == "ll-http" {
                            p["containerPort"] = json!(http_port);
                        }
                    }
                    c["livenessProbe"]["httpGet"]["host"] = json!("127.0.0.1");
                    c["env"].as_array_mut().expect("sidecar env").extend([
                        json!({"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"}),
                        json!({"name": "KUBERNETES_SERVICE_PORT", "value": api_port.to_string()}),
                    ]);
                }
                other => panic!("unexpected container {other:?} in the template"),
            }
        }
    }
    (pod, http_port)
}

/// The container named `name` (in containers or initContainers) of a rendered pod.
pub fn container<'a>(pod: &'a mut Value, name: &str) -> &'a mut Value {
    let spec = &mut pod["spec"];
    let in_init = spec["initContainers"]
        .as_array()
        .is_some_and(|l| l.iter().any(|c| c["name"] == name));
    let list = if in_init {
        "initContainers"
    } else {
        "containers"
    };
    spec[list]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// A free port never handed out before by this test process. The kubelet admits a
/// hostNetwork pod only if no other pod on the node declares the same ports, bound or not
/// (a pod still starting, or terminating, holds them): a port that is merely free now
/// could be one another pod has declared (seen: "Predicate NodePorts failed").
pub fn pod_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let p = free_port();
        if GIVEN.lock().unwrap_or_else(|e| e.into_inner()).insert(p) {
            return p;
        }
    }
}

/// Creates the pod in the namespace; returns it as the API server stored it.
pub fn create(ns: &Namespace, pod: &Value) -> Value {
    ns.api
        .post(&format!("/api/v1/namespaces/{}/pods", ns.name), pod)
}

/// Waits until the kubelet reports the pod Ready; returns the pod.
pub fn wait_ready(node: &Node, ns: &Namespace, name: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let pod = ns.get_pod(name);
        let ready = pod["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        });
        if ready {
            return pod;
        }
        assert!(
            Instant::now() < deadline,
            "pod {name} not Ready after {timeout:?}: {:#}\nkubelet log:\n{}",
            pod["status"],
            node.kubelet_log(40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The containerd id of a container of the pod (from its status), None before it runs.
pub fn container_id(pod: &Value, name: &str) -> Option<String> {
    ["containerStatuses", "initContainerStatuses"]
        .iter()
        .filter_map(|k| pod["status"][k].as_array())
        .flatten()
        .find(|s| s["name"] == name)
        .and_then(|s| s["containerID"].as_str())
        .map(|id| id.trim_start_matches("containerd://").to_string())
}

/// A container's status entry.
pub fn container_status(pod: &Value, name: &str) -> Value {
    ["containerStatuses", "initContainerStatuses"]
        .iter()
        .filter_map(|k| pod["status"][k].as_array())
        .flatten()
        .find(|s| s["name"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

/// An admin client of the node's control plane.
pub fn admin(node: &Node) -> Api {
    node.cluster.api.clone()
}
