//! The sidecar runs under any user the platform picks: the manifests fix no UID, and the
//! binary leads as an arbitrary non-root UID on a read-only root filesystem.
//!
//! OpenShift's restricted-v2 SCC rejects a fixed `runAsUser` outside the namespace's UID
//! range and runs the container as an arbitrary UID from that range instead. So:
//!
//! - the manifests in `deploy/` set no `runAsUser` (or `runAsGroup`), only
//!   `runAsNonRoot: true`, and keep the sidecar's root filesystem read-only (a plain test,
//!   no cluster);
//! - the real binary, started as UID 1000730000 with no capabilities on a read-only root
//!   filesystem, with only its `--leader-file` folder writable (an emptyDir), becomes
//!   leader against the real control plane (needs root here, for a mount namespace and
//!   setpriv; it fails, never skips, when that is not allowed).

use harness::namespace::ELECTION;
use harness::sidecar::FAST;
use harness::{Cluster, Namespace, Observer, LEADER_KEY};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One container of a manifest, as far as these tests care.
#[derive(Debug, Default)]
struct Container {
    name: String,
    image: String,
    /// The scalar keys of its `securityContext` (nested maps left out).
    security: BTreeMap<String, String>,
}

/// A line without its comment, or None for a blank or comment-only line.
fn content(line: &str) -> Option<&str> {
    let line = match line.find(" #") {
        Some(i) => &line[..i],
        None => line,
    };
    let trimmed = line.trim();
    (!trimmed.is_empty() && !trimmed.starts_with('#')).then_some(line.trim_end())
}

/// `key: value` -> (key, value); the value is empty when a block follows.
fn key_value(body: &str) -> Option<(&str, &str)> {
    let (k, v) = body.split_once(':')?;
    Some((k.trim(), v.trim().trim_matches('"')))
}

/// The containers (`containers:` and `initContainers:` lists) of a YAML manifest, read by
/// indentation: enough for the block style `deploy/` uses. A `securityContext` written as
/// a flow map is refused, so the test cannot pass by not seeing it.
fn containers(file: &str, text: &str) -> Vec<Container> {
    let mut out = Vec::new();
    // Indentation of the list key, of its items' dashes, and of the securityContext key.
    let mut list: Option<usize> = None;
    let mut dash: Option<usize> = None;
    let mut security: Option<usize> = None;
    let mut current: Option<Container> = None;
    for (n, raw) in text.lines().enumerate() {
        let Some(line) = content(raw) else { continue };
        let indent = line.len() - line.trim_start().len();
        let mut body = line.trim_start();
        if let Some(k) = list {
            let is_item = body.starts_with("- ") && indent >= k;
            if is_item && dash.is_none_or(|d| d == indent) {
                out.extend(current.take());
                current = Some(Container::default());
                dash = Some(indent);
                security = None;
                body = &body[2..];
            } else if indent < k || (indent == k && !is_item) || dash.is_some_and(|d| indent <= d) {
                out.extend(current.take());
                (list, dash, security) = (None, None, None);
            }
        }
        if let (Some(c), Some(d)) = (current.as_mut(), dash) {
            let item_indent = if raw.trim_start().starts_with("- ") && indent == d {
                d + 2
            } else {
                indent
            };
            let (key, value) = key_value(body).unwrap_or((body, ""));
            if item_indent == d + 2 {
                security = None;
                match key {
                    "name" => c.name = value.to_string(),
                    "image" => c.image = value.to_string(),
                    "securityContext" => {
                        assert!(
                            value.is_empty(),
                            "{file}:{}: write securityContext as a block, not {value:?}",
                            n + 1
                        );
                        security = Some(item_indent);
                    }
                    _ => {}
                }
            } else if let Some(s) = security {
                if item_indent == s + 2 && !value.is_empty() {
                    c.security.insert(key.to_string(), value.to_string());
                }
            }
            continue;
        }
        if matches!(body, "containers:" | "initContainers:") {
            list = Some(indent);
        }
    }
    out.extend(current);
    out
}

fn manifests() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    files.sort();
    files
}

#[test]
fn container_reader_sees_nested_lists_and_both_container_kinds() {
    let text = "spec:\n  initContainers:\n    - name: a\n      image: x/leader-labeler:1\n      ports:\n        - name: p # not a container\n      securityContext:\n        runAsNonRoot: true\n        capabilities:\n          drop: [\"ALL\"]\n  containers:\n  - name: b\n    securityContext:\n      readOnlyRootFilesystem: true\n  volumes:\n  - name: v\n";
    let c = containers("t.yaml", text);
    assert_eq!(c.len(), 2, "{c:?}");
    assert_eq!(
        (c[0].name.as_str(), c[0].image.as_str()),
        ("a", "x/leader-labeler:1")
    );
    assert_eq!(c[0].security.len(), 1, "{c:?}");
    assert_eq!(c[0].security["runAsNonRoot"], "true");
    assert_eq!(c[1].name, "b");
    assert_eq!(c[1].security["readOnlyRootFilesystem"], "true");
}

/// Every container may run as any non-root UID the platform assigns; the sidecar's root
/// filesystem stays read-only.
#[test]
fn manifests_leave_the_uid_to_the_platform() {
    let mut sidecars = 0;
    for (file, text) in manifests() {
        for (n, line) in text.lines().enumerate() {
            let Some(line) = content(line) else { continue };
            for fixed in ["runAsUser", "runAsGroup"] {
                assert!(
                    !line.contains(fixed),
                    "{file}:{}: {line:?}: a fixed {fixed} is rejected by OpenShift's \
                     restricted-v2 SCC outside the namespace's range; rely on runAsNonRoot \
                     and the image's numeric USER",
                    n + 1
                );
            }
        }
        let found = containers(&file, &text);
        if text.contains("kind: Deployment") || text.contains("kind: StatefulSet") {
            assert!(found.len() >= 2, "{file}: containers {found:?}");
        }
        for c in found {
            let sc = |k: &str| c.security.get(k).map(String::as_str);
            assert_eq!(sc("runAsNonRoot"), Some("true"), "{file}: {}", c.name);
            if c.image.contains("leader-labeler") {
                sidecars += 1;
                assert_eq!(
                    sc("readOnlyRootFilesystem"),
                    Some("true"),
                    "{file}: {}",
                    c.name
                );
                assert_eq!(
                    sc("allowPrivilegeEscalation"),
                    Some("false"),
                    "{file}: {}",
                    c.name
                );
            }
        }
    }
    // deployment.yaml, statefulset.yaml, native-sidecar.yaml.
    assert!(sidecars >= 3, "found {sidecars} leader-labeler containers");
}

/// The image runs as a numeric non-root user, which is what lets `runAsNonRoot: true`
/// admit it without a `runAsUser`.
#[test]
fn images_run_as_a_numeric_non_root_user() {
    for file in ["Containerfile", "Containerfile.multistage"] {
        let text =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
        let user = text
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("USER "))
            .unwrap_or_else(|| panic!("{file}: no USER"));
        let uid: u32 = user
            .split(':')
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{file}: USER {user:?} is not numeric"));
        assert_ne!(uid, 0, "{file}: USER {user}");
    }
}

/// A UID from OpenShift's default namespace ranges (1000xx0000/10000).
const UID: u32 = 1_000_730_000;

/// Makes a private mount namespace, keeps only the leader file's folder writable, makes
/// the root filesystem read-only, checks that it is, and starts the sidecar as UID with
/// no capabilities and no way to gain privileges. Arguments: writable folder, then the
/// program and its arguments.
const CONTAINERIZE: &str = r#"set -eu
shared=$1; shift
mount --bind "$shared" "$shared"
mount -o remount,bind,ro /
if touch "$shared/../root-was-writable" 2>/dev/null; then
  echo "nonroot test: the root filesystem is still writable"; exit 97
fi
exec setpriv --reuid=UID --regid=UID --clear-groups --inh-caps=-all --bounding-set=-all \
  --no-new-privs --pdeathsig=SIGKILL -- "$@"
"#;

/// The pod's files and the sidecar process; cleans up on drop, printing the log if the
/// test failed.
struct Pod {
    dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Pod {
    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- sidecar log ({}) ----\n{}",
                self.log.display(),
                self.output()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The lines of /proc/PID/status starting with `key`.
fn proc_status(pid: u32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn leads_as_an_arbitrary_uid_on_a_read_only_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test makes a mount namespace and switches user: run it as root"
    );
    let cluster = Cluster::shared();
    let ns = Namespace::new(cluster, "nonroot");
    let pod = "pod-a";
    ns.create_pod(pod, true);
    let observer = Observer::start(&ns);

    // What the kubelet would mount: the service-account files (readable by anyone, as
    // projected volumes are by default) and an emptyDir (world-writable).
    let dir = std::env::temp_dir().join(format!("leader-labeler-nonroot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let sa = dir.join("serviceaccount");
    let shared = dir.join("shared");
    for d in [&dir, &sa, &shared] {
        std::fs::create_dir_all(d).unwrap();
    }
    let mut p = Pod {
        log: dir.join("sidecar.log"),
        dir: dir.clone(),
        child: None,
    };
    for d in [&dir, &sa] {
        mode(d, 0o755);
    }
    mode(&shared, 0o777);
    let token = sa.join("token");
    let ca = sa.join("ca.crt");
    std::fs::copy(ns.token_file(), &token).unwrap();
    std::fs::copy(cluster.ca_file(), &ca).unwrap();
    for f in [&token, &ca] {
        mode(f, 0o644);
    }
    // The binary, where the arbitrary user can surely execute it.
    let bin = dir.join("leader-labeler");
    std::fs::copy(env!("CARGO_BIN_EXE_leader-labeler"), &bin).unwrap();
    mode(&bin, 0o755);
    let leader_file = shared.join("is-leader");

    let log = std::fs::File::create(&p.log).unwrap();
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(CONTAINERIZE.replace("UID", &UID.to_string()))
        .arg("sh")
        .arg(&shared)
        .arg(&bin)
        .args([
            format!("--election-name={ELECTION}"),
            format!("--pod-name={pod}"),
            format!("--namespace={}", ns.name),
            format!("--server={}", cluster.server_url()),
            format!("--token-file={}", token.display()),
            format!("--ca-file={}", ca.display()),
            format!("--leader-file={}", leader_file.display()),
            "--http-address=127.0.0.1:0".into(),
        ])
        .args(FAST)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let child = harness::process::spawn_scoped(cmd)
        .unwrap_or_else(|e| panic!("cannot start unshare (util-linux): {e}"));
    let pid = child.id();
    p.child = Some(child);

    // Leader: pod labeled, Lease held, leader file written. An exit before that (mount or
    // setpriv refused, the sidecar failing) fails the test with the log.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = p.child.as_mut().unwrap().try_wait().unwrap() {
            panic!(
                "exited ({status}) before leading; its output:\n{}",
                p.output()
            );
        }
        let labeled = observer.with(|s| s.leader()).as_deref() == Some(pod);
        let holder = ns
            .get_lease()
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string));
        let file = std::fs::read_to_string(&leader_file).unwrap_or_default();
        if labeled && holder.as_deref() == Some(pod) && file.trim() == "true" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not leader after 20 s: label {:?}, Lease holder {holder:?}, leader file {file:?}",
            ns.label(pod, LEADER_KEY)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // And it really ran as the arbitrary user, unprivileged, on a read-only root.
    let uid = UID.to_string();
    let uids = proc_status(pid, "Uid:");
    assert_eq!(
        uids.split_whitespace().skip(1).collect::<Vec<_>>(),
        [uid.as_str(); 4],
        "{uids}"
    );
    let gids = proc_status(pid, "Gid:");
    assert_eq!(
        gids.split_whitespace().skip(1).collect::<Vec<_>>(),
        [uid.as_str(); 4],
        "{gids}"
    );
    assert_eq!(proc_status(pid, "CapEff:"), "CapEff:\t0000000000000000");
    assert_eq!(proc_status(pid, "NoNewPrivs:"), "NoNewPrivs:\t1");
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .expect("a root mount");
    assert!(
        root.split_whitespace()
            .nth(5)
            .unwrap()
            .split(',')
            .any(|o| o == "ro"),
        "root mount not read-only: {root}"
    );
    let file = std::fs::metadata(&leader_file).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&file),
        UID,
        "the leader file was written by the sidecar"
    );
    let out = p.output();
    assert!(!out.contains(" ERROR "), "{out}");
    observer.assert_never_two_leaders();
}
