//! The real leader-labeler binary, one process per pod.
//!
//! `Sidecar::spawn(&ns, "pod-a", &["-v"])` runs
//! `leader-labeler --election-name=my-app --pod-name=pod-a --namespace=NS --server=URL
//! --token-file=F --ca-file=F --lease-duration=3s --renew-deadline=2s --retry-period=500ms
//! --http-address=127.0.0.1:0 -v`, with stdout and stderr in a log file (`output()`).
//! An extra argument naming one of the default timing/HTTP flags replaces that default.
//! The process dies with the test's thread (PR_SET_PDEATHSIG) and is killed on drop;
//! when the test panics, its log is printed.

use crate::namespace::{Namespace, ELECTION};
use crate::process::{signal, spawn_scoped};
use crate::wait;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The binary under test: `LEADER_LABELER_BIN` if set (e.g. an older build, to show that
/// a test fails on it), else the `leader-labeler` cargo built beside the running program:
/// `target/<profile>/deps/<test>` and `target/<profile>/examples/<example>` both find
/// `target/<profile>/leader-labeler` (cargo builds it for the root package's integration
/// tests; the demo example runs after `cargo build --release`). Panics naming the path
/// looked at when it is missing.
pub fn bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let path = match std::env::var_os("LEADER_LABELER_BIN") {
            Some(p) => PathBuf::from(p),
            None => beside_current_exe(),
        };
        assert!(
            path.is_file(),
            "the sidecar binary is missing: {} (build it with `cargo build`, or set \
             LEADER_LABELER_BIN to a leader-labeler binary)",
            path.display()
        );
        path
    })
    .clone()
}

/// `target/<profile>/leader-labeler` for a program in `target/<profile>/{deps,examples}`.
fn beside_current_exe() -> PathBuf {
    let exe = std::env::current_exe().expect("the path of the running test program");
    let mut dir = exe
        .parent()
        .expect("the test program's folder")
        .to_path_buf();
    if dir.ends_with("deps") || dir.ends_with("examples") {
        dir.pop();
    }
    dir.join("leader-labeler")
}

/// Test timings: lease 3s, renew deadline 2s, retry 500ms.
pub const FAST: [&str; 3] = [
    "--lease-duration=3s",
    "--renew-deadline=2s",
    "--retry-period=500ms",
];

/// One running (or exited) sidecar process.
pub struct Sidecar {
    /// The pod it runs for.
    pub pod: String,
    child: Child,
    /// Its stdout and stderr.
    pub log: PathBuf,
    status: Option<ExitStatus>,
}

/// Options of [`Sidecar::spawn_with`].
pub struct SidecarOptions<'a> {
    /// Defaults to the cluster's URL (a proxy's URL to cut it off later).
    pub server: Option<String>,
    /// Arguments after the defaults; a default flag named here is left out.
    pub extra: &'a [&'a str],
}

/// `--name` of `--name=value` or `--name`; None for values and short flags.
fn flag_name(arg: &str) -> Option<&str> {
    arg.starts_with("--")
        .then(|| arg.split_once('=').map_or(arg, |(name, _)| name))
}

impl Sidecar {
    /// leader-labeler for `pod` with the fast test timings, talking to the cluster
    /// directly, with `extra` arguments (which may override the timing flags).
    pub fn spawn(ns: &Namespace, pod: &str, extra: &[&str]) -> Sidecar {
        Self::spawn_with(
            ns,
            pod,
            SidecarOptions {
                server: None,
                extra,
            },
        )
    }

    /// Like `spawn`, optionally through another server URL (e.g. a [`crate::Proxy`]'s).
    pub fn spawn_with(ns: &Namespace, pod: &str, opts: SidecarOptions) -> Sidecar {
        // Many sidecars share this machine: each listens on a port of its own.
        let defaults = FAST.iter().copied().chain(["--http-address=127.0.0.1:0"]);
        let overridden: Vec<&str> = opts.extra.iter().filter_map(|a| flag_name(a)).collect();
        let mut args: Vec<String> = defaults
            .filter(|d| !flag_name(d).is_some_and(|n| overridden.contains(&n)))
            .map(str::to_string)
            .collect();
        args.extend(opts.extra.iter().map(|s| s.to_string()));
        Self::spawn_program(ns, pod, &bin(), opts.server, &args)
    }

    /// Any sidecar program that takes leader-labeler's connection flags (the client-go
    /// baseline does), with exactly `args` after them.
    pub fn spawn_program(
        ns: &Namespace,
        pod: &str,
        program: &std::path::Path,
        server: Option<String>,
        args: &[String],
    ) -> Sidecar {
        let log = ns.dir.join(format!("{pod}.{}.log", now_ms()));
        let file = std::fs::File::create(&log).unwrap();
        let server = server.unwrap_or_else(|| ns.cluster.server_url());
        let mut cmd = Command::new(program);
        // A test may name another election.
        if !args.iter().any(|a| a.starts_with("--election-name=")) {
            cmd.arg(format!("--election-name={ELECTION}"));
        }
        cmd.arg(format!("--pod-name={pod}"))
            .arg(format!("--namespace={}", ns.name))
            .arg(format!("--server={server}"))
            .arg(format!("--token-file={}", ns.token_file().display()));
        // A plain-HTTP server (the fault proxy) takes no CA file: the sidecar rejects one.
        // A test may give its own.
        if !server.starts_with("http://") && !args.iter().any(|a| a.starts_with("--ca-file=")) {
            cmd.arg(format!("--ca-file={}", ns.cluster.ca_file().display()));
        }
        cmd.args(args)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        let child = spawn_scoped(cmd).expect("start sidecar");
        Sidecar {
            pod: pod.to_string(),
            child,
            log,
            status: None,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM (as the kubelet does at pod deletion); does not wait.
    pub fn sigterm(&self) {
        signal(self.pid(), libc::SIGTERM);
    }

    /// Sends SIGKILL and reaps the process.
    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        self.status = self.child.wait().ok();
    }

    /// Sends SIGSTOP: the process freezes (a hung node) until `resume`.
    pub fn freeze(&self) {
        signal(self.pid(), libc::SIGSTOP);
    }

    /// Sends SIGCONT after `freeze`.
    pub fn resume(&self) {
        signal(self.pid(), libc::SIGCONT);
    }

    /// Whether the process has not exited yet.
    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits up to `timeout` for the process to exit; None if it still runs. Polls every
    /// 5 ms (a child's exit is an event we can only poll for without a reaper thread).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The port of the HTTP endpoints, from the start-up log line.
    pub fn http_port(&self) -> u16 {
        let what = format!("the HTTP listener line in {}", self.log.display());
        let line = wait::until_every(
            &what,
            Duration::from_secs(10),
            Duration::from_millis(20),
            || {
                let out = self.output();
                out.lines()
                    .find(|l| l.contains("serving /healthz"))
                    .map(str::to_string)
            },
        );
        line.rsplit(':')
            .next()
            .and_then(|p| p.trim().parse().ok())
            .expect("port in the serving line")
    }

    /// GET on the sidecar's HTTP endpoints: (status code, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.http_port())).expect("connect");
        write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (code, body)
    }

    /// The `/leader` document (pod, isLeader, leader, participants, draining); None while
    /// it does not answer with JSON.
    pub fn leader_doc(&self) -> Option<serde_json::Value> {
        let (code, body) = self.http_get("/leader");
        (code == 200).then(|| serde_json::from_str(&body).ok())?
    }

    /// The ready participants this sidecar knows of (`/leader`'s `participants`), itself
    /// included when it participates; empty while it does not answer.
    pub fn participants(&self) -> Vec<String> {
        self.leader_doc()
            .and_then(|d| serde_json::from_value(d["participants"].clone()).ok())
            .unwrap_or_default()
    }

    /// Everything it printed so far (stdout and stderr).
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until its output contains `text` while it keeps running; panics with the
    /// output if it exits first or `timeout` passes.
    pub fn wait_for_output(&mut self, text: &str, timeout: Duration) {
        let what = format!("{text:?} in the output of a running sidecar");
        wait::until(&what, timeout, || {
            let out = self.output();
            if out.contains(text) {
                return Ok(());
            }
            if let Some(status) = self.try_status() {
                panic!("the sidecar exited ({status}) before {what}:\n{out}");
            }
            Err(out)
        });
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- {} log ({}) ----\n{}",
                self.pod,
                self.log.display(),
                self.output()
            );
        }
    }
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}
