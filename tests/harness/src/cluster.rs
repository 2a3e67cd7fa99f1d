//! A real control plane on loopback: etcd and kube-apiserver, built from Go modules by
//! tests/control-plane/build.sh. RBAC authorization, a test CA with a serving certificate
//! for 127.0.0.1, service-account signing keys, an admin token for the harness and an
//! audit log of every lease and pod request.
//!
//! - [`Cluster::shared`]: one control plane per test binary, started on first use.
//! - [`Cluster::start`]: a private one (e.g. with a short `--min-request-timeout`, or to
//!   restart its kube-apiserver without disturbing other tests).
//! - [`Cluster::with_controllers`]: shared, plus kube-controller-manager (EndpointSlices).
//!
//! The binaries come from `tests/control-plane/build.sh` (built once into
//! `~/.cache/leader-labeler`, or `KUBEBUILDER_ASSETS`); if that fails the caller panics
//! with the script's message: the suite never skips. The processes are children that die
//! with the test process, even on SIGKILL (see `process.rs`), and are killed on drop.

use crate::api::Api;
use crate::process::spawn_long_lived;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The harness's bearer token: user `e2e-admin` in group `system:masters`.
pub const ADMIN_TOKEN: &str = "e2e-admin-token";

/// How to start a private control plane; `Default` is what `Cluster::shared` uses.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// kube-apiserver --min-request-timeout (seconds): how soon the server ends watches
    /// that did not ask for timeoutSeconds.
    pub min_request_timeout: Option<u32>,
    /// Also run kube-controller-manager with the EndpointSlice controller, and create the
    /// Node the test pods name.
    pub controller_manager: bool,
    /// Keep kube-apiserver's ServiceAccount admission plugin on (the shared clusters turn
    /// it off): it gives each pod the projected `kube-api-access-*` volume (token, ca.crt,
    /// namespace) a kubelet mounts. For the node tests (`node.rs`).
    pub service_account_admission: bool,
    /// More kube-controller-manager controllers, after the default ones (with
    /// `controller_manager`). `root-ca-cert-publisher` also passes `--root-ca-file=ca.crt`,
    /// so the `kube-root-ca.crt` ConfigMap it publishes holds the test CA.
    pub extra_controllers: Vec<&'static str>,
    /// A node with pod networking (tests/traffic.rs, inside a network namespace of its
    /// own): kube-apiserver listens on every address of that namespace and advertises this
    /// one, the `kubernetes` Service's endpoint that pods reach through kube-proxy; its
    /// certificate also names that address and the Service's ClusterIP (10.0.0.1). No
    /// stand-in Node: the real kubelet's is the only one the scheduler may pick.
    pub node_ip: Option<&'static str>,
    /// More kube-controller-manager flags (the traffic rig's
    /// `--endpointslice-updates-batch-period` experiment).
    pub controller_manager_args: Vec<String>,
}

/// The node name every test pod carries.
pub const NODE: &str = "e2e-node";

/// etcd + kube-apiserver on free loopback ports, with their files in `dir`
/// (`$TMPDIR/leader-labeler-e2e/<pid>-<n>/`: `ca.crt`, `audit.log`, `*.log` of each
/// process, `kubeconfig`, and one folder per namespace).
pub struct Cluster {
    /// The cluster's working folder.
    pub dir: PathBuf,
    /// kube-apiserver's secure port on 127.0.0.1.
    pub port: u16,
    /// Admin client (system:masters).
    pub api: Api,
    /// The folder of the control-plane binaries (tests/control-plane/build.sh).
    pub bin: PathBuf,
    etcd: Mutex<Child>,
    apiserver: Mutex<Child>,
    apiserver_args: Vec<String>,
    /// Admin kubeconfig for kubectl.
    pub kubeconfig: PathBuf,
    controller_manager: Option<Mutex<Child>>,
}

/// The folder with etcd and kube-apiserver: the last stdout line of
/// tests/control-plane/build.sh, which builds them the first time. Panics if it fails.
pub fn control_plane_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let script = crate::repo_root().join("tests/control-plane/build.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "the control plane could not be built: see the messages above from {}. \
             The end-to-end suite needs a real kube-apiserver and etcd; it never skips.",
            script.display()
        );
        let dir = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_string();
        PathBuf::from(dir)
    })
    .clone()
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn openssl(dir: &Path, args: &[&str]) {
    run_ok(Command::new("openssl").args(args).current_dir(dir));
}

/// A fresh folder for one control plane. Old folders of dead test processes are removed.
fn workdir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let root = std::env::temp_dir().join("leader-labeler-e2e");
    std::fs::create_dir_all(&root).unwrap();
    if let Ok(entries) = std::fs::read_dir(&root) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name.split('-').next().and_then(|p| p.parse::<u32>().ok());
            if let Some(pid) = pid {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
    let dir = root.join(format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_pki(dir: &Path, node_ip: Option<&str>) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=leader-labeler-e2e-ca",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=kube-apiserver",
        ],
    );
    let sans = match node_ip {
        Some(ip) => format!("IP:127.0.0.1,IP:{ip},IP:10.0.0.1"),
        None => "IP:127.0.0.1".into(),
    };
    std::fs::write(
        dir.join("ext.cnf"),
        format!("subjectAltName={sans}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
    openssl(dir, &["genrsa", "-out", "sa.key", "2048"]);
    openssl(dir, &["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"]);
    std::fs::write(
        dir.join("tokens.csv"),
        format!("{ADMIN_TOKEN},e2e-admin,e2e-admin-uid,\"system:masters\"\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("audit.yaml"),
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [\"RequestReceived\"]\nrules:\n  - level: Metadata\n    resources:\n      - group: coordination.k8s.io\n        resources: [\"leases\"]\n      - group: \"\"\n        resources: [\"pods\", \"pods/status\"]\n  - level: None\n",
    )
    .unwrap();
}

impl Cluster {
    /// One control plane for the whole test binary, started on first use.
    pub fn shared() -> &'static Cluster {
        static SHARED: OnceLock<Cluster> = OnceLock::new();
        SHARED.get_or_init(|| Cluster::start(ClusterOptions::default()))
    }

    /// A private control plane; ready (`/readyz` 200, RBAC bootstrapped) on return.
    pub fn start(opts: ClusterOptions) -> Cluster {
        let bin = control_plane_bin();
        let dir = workdir();
        write_pki(&dir, opts.node_ip);
        let etcd_port = free_port();
        let peer_port = free_port();
        let port = free_port();
        let etcd = spawn_logged(
            &dir,
            "etcd",
            Command::new(bin.join("etcd")).args([
                format!("--data-dir={}", dir.join("etcd-data").display()),
                format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
                format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"),
                format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
                format!("--initial-cluster=default=http://127.0.0.1:{peer_port}"),
                "--unsafe-no-fsync".into(),
                "--log-level=warn".into(),
            ]),
        );
        let d = |f: &str| dir.join(f).display().to_string();
        let mut args = vec![
            format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
            format!("--secure-port={port}"),
            format!("--cert-dir={}", d("certs")),
            format!("--tls-cert-file={}", d("server.crt")),
            format!("--tls-private-key-file={}", d("server.key")),
            format!("--client-ca-file={}", d("ca.crt")),
            "--authorization-mode=RBAC".into(),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--allow-privileged=true".into(),
            if opts.service_account_admission {
                "--enable-admission-plugins=ServiceAccount".into()
            } else {
                "--disable-admission-plugins=ServiceAccount".into()
            },
            format!("--service-account-issuer=https://127.0.0.1:{port}/"),
            format!("--service-account-key-file={}", d("sa.pub")),
            format!("--service-account-signing-key-file={}", d("sa.key")),
            format!("--token-auth-file={}", d("tokens.csv")),
            format!("--audit-policy-file={}", d("audit.yaml")),
            format!("--audit-log-path={}", d("audit.log")),
            "--audit-log-mode=blocking".into(),
            "--v=0".into(),
        ];
        match opts.node_ip {
            // The default (lease) reconciler keeps the `kubernetes` Service's endpoint.
            Some(ip) => args.extend([
                "--bind-address=0.0.0.0".into(),
                format!("--advertise-address={ip}"),
            ]),
            None => args.extend([
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                "--endpoint-reconciler-type=none".into(),
            ]),
        }
        if let Some(t) = opts.min_request_timeout {
            args.push(format!("--min-request-timeout={t}"));
        }
        let apiserver = spawn_logged(
            &dir,
            "kube-apiserver",
            Command::new(bin.join("kube-apiserver")).args(&args),
        );
        let api = Api::new(
            &format!("https://127.0.0.1:{port}"),
            &dir.join("ca.crt"),
            ADMIN_TOKEN,
        );
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster: {{server: \"https://127.0.0.1:{port}\", certificate-authority: \"{}\"}}\nusers:\n- name: admin\n  user: {{token: {ADMIN_TOKEN}}}\ncontexts:\n- name: e2e\n  context: {{cluster: e2e, user: admin}}\ncurrent-context: e2e\n",
                d("ca.crt")
            ),
        )
        .unwrap();
        let mut c = Cluster {
            dir,
            port,
            api,
            bin,
            etcd: Mutex::new(etcd),
            apiserver: Mutex::new(apiserver),
            apiserver_args: args,
            kubeconfig,
            controller_manager: None,
        };
        c.wait_ready();
        if opts.controller_manager {
            c.start_controller_manager(&opts, opts.node_ip.is_none());
        }
        c
    }

    /// One control plane with kube-controller-manager for the whole test binary.
    pub fn with_controllers() -> &'static Cluster {
        static SHARED: OnceLock<Cluster> = OnceLock::new();
        SHARED.get_or_init(|| {
            Cluster::start(ClusterOptions {
                controller_manager: true,
                ..Default::default()
            })
        })
    }

    /// kube-controller-manager with only the controllers the Service proof needs:
    /// endpointslice, plus serviceaccount (creates each namespace's default account).
    /// Nothing that evicts or taints.
    fn start_controller_manager(&mut self, opts: &ClusterOptions, stand_in_node: bool) {
        let extra = &opts.extra_controllers;
        let kcm = self.bin.join("kube-controller-manager");
        assert!(
            kcm.exists(),
            "{} missing: envtest folders (KUBEBUILDER_ASSETS) have no kube-controller-manager; \
             unset KUBEBUILDER_ASSETS so tests/control-plane/build.sh builds it",
            kcm.display()
        );
        let mut controllers = String::from("endpointslice,serviceaccount");
        for c in extra {
            controllers.push(',');
            controllers.push_str(c);
        }
        let mut args = vec![
            format!("--kubeconfig={}", self.kubeconfig.display()),
            format!("--controllers={controllers}"),
            "--secure-port=0".into(),
            "--leader-elect=false".into(),
            "--use-service-account-credentials=false".into(),
            "--concurrent-service-endpoint-syncs=5".into(),
        ];
        if extra.contains(&"root-ca-cert-publisher") {
            args.push(format!("--root-ca-file={}", self.ca_file().display()));
        }
        args.extend(opts.controller_manager_args.iter().cloned());
        let child = spawn_logged(
            &self.dir,
            "kube-controller-manager",
            Command::new(kcm).args(&args),
        );
        self.controller_manager = Some(Mutex::new(child));
        if stand_in_node {
            self.api.post(
            "/api/v1/nodes",
                &serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}}),
            );
        }
    }

    /// `https://127.0.0.1:PORT`.
    pub fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The test CA that signed the serving certificate (IP SAN 127.0.0.1).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The audit log: one JSON line per lease, pod and pod-status request (level
    /// Metadata: `verb`, `user.username`, `userAgent`, `objectRef`, `responseStatus`).
    pub fn audit_log_path(&self) -> PathBuf {
        self.dir.join("audit.log")
    }

    /// Same as [`Cluster::audit_log_path`].
    pub fn audit_log(&self) -> PathBuf {
        self.audit_log_path()
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let (code, _) = self.api.call("GET", "/readyz", None);
            if code == 200 {
                return;
            }
            if let Ok(Some(status)) = self.apiserver.lock().unwrap().try_wait() {
                panic!(
                    "kube-apiserver exited ({status}) while starting:\n{}",
                    tail(&self.dir.join("kube-apiserver.log"), 30)
                );
            }
            if let Ok(Some(status)) = self.etcd.lock().unwrap().try_wait() {
                panic!(
                    "etcd exited ({status}):\n{}",
                    tail(&self.dir.join("etcd.log"), 30)
                );
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver not ready after 90 s:\n{}",
                tail(&self.dir.join("kube-apiserver.log"), 30)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Kills kube-apiserver (SIGKILL) and leaves it down.
    pub fn stop_apiserver(&self) {
        let mut child = self.apiserver.lock().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Kills kube-apiserver and starts it again on the same etcd, port and certificates;
    /// returns once it is ready. Clients see their connections drop and then 503s or
    /// refused connections until it is back.
    pub fn restart_apiserver(&self) {
        self.stop_apiserver();
        self.start_apiserver();
    }

    /// Starts kube-apiserver again on the same etcd, port and certificates (after
    /// [`Cluster::stop_apiserver`]); returns once it is ready.
    pub fn start_apiserver(&self) {
        let child = spawn_logged(
            &self.dir,
            "kube-apiserver",
            Command::new(self.bin.join("kube-apiserver")).args(&self.apiserver_args),
        );
        *self.apiserver.lock().unwrap() = child;
        self.wait_ready();
    }

    /// Freezes etcd (SIGSTOP) under the running kube-apiserver: reads and writes hang
    /// and end in timeouts or 5xx, watches stay open and go quiet.
    pub fn freeze_etcd(&self) {
        crate::process::signal(self.etcd.lock().unwrap().id(), libc::SIGSTOP);
    }

    /// Lets etcd run again after [`Cluster::freeze_etcd`].
    pub fn thaw_etcd(&self) {
        crate::process::signal(self.etcd.lock().unwrap().id(), libc::SIGCONT);
    }

    /// Runs kubectl against this cluster as admin.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        use std::io::Write;
        let mut cmd = Command::new("kubectl");
        cmd.env_remove("KUBECONFIG")
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child =
            crate::process::spawn_scoped(cmd).expect("kubectl is needed by the e2e suite");
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        drop(child.stdin.take());
        child.wait_with_output().unwrap()
    }

    /// The objects of a manifest as kubectl parses it (`create --dry-run=client`), one
    /// JSON value each; `what` names the manifest in the failure message.
    pub fn manifest_objects(&self, yaml: &str, what: &str) -> Vec<serde_json::Value> {
        let out = self.kubectl(
            &["create", "--dry-run=client", "-o", "json", "-f", "-"],
            Some(yaml),
        );
        assert!(
            out.status.success(),
            "kubectl could not read {what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // One JSON document per object (or a List, depending on the kubectl version).
        let docs: Vec<serde_json::Value> = serde_json::Deserializer::from_slice(&out.stdout)
            .into_iter()
            .collect::<Result<_, _>>()
            .expect("kubectl JSON");
        docs.into_iter()
            .flat_map(|d| match d["items"].as_array() {
                Some(items) => items.clone(),
                None => vec![d],
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(kcm) = &self.controller_manager {
            let mut c = kcm.lock().unwrap_or_else(|e| e.into_inner());
            let _ = c.kill();
            let _ = c.wait();
        }
        for child in [&self.apiserver, &self.etcd] {
            let mut c = child.lock().unwrap_or_else(|e| e.into_inner());
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn spawn_logged(dir: &Path, name: &str, cmd: &mut Command) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))
        .unwrap();
    let mut owned = std::mem::replace(cmd, Command::new("true"));
    owned
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    spawn_long_lived(owned).unwrap_or_else(|e| panic!("cannot start {name}: {e}"))
}

pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<_> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
