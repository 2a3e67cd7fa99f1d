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
//!
//! Here: [`Node`] and its start; `runtime.rs` the containerd and kubelet processes,
//! `cleanup.rs` the teardown, `render.rs` the pods rendered from the shipped manifests.

mod cleanup;
mod render;
mod runtime;

use cleanup::{host_folders, sweep_stale, teardown};
use runtime::{node_ip, start_containerd, start_events, start_kubelet, wait_registered};

pub use render::{
    admin, container, container_id, container_status, create, pod_port, render, template,
    wait_ready, Manifest, APP_SCRIPT,
};

use crate::cluster::{tail, Cluster, ClusterOptions};
use crate::namespace::Namespace;
use serde_json::Value;
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
