//! Cleanup of a node on success, failure and panic: its processes, every container task,
//! any process still referring to its folder, the mounts under it, the host folders it
//! created; and the folders of test processes that died before their cleanup ran.

use super::Running;
use crate::process::signal;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Host folders outside the node's folder that containerd, its shims or the kubelet
/// create when missing.
pub(super) fn host_folders() -> Vec<PathBuf> {
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

/// Stops what `r` started and removes every trace under its folder: the kubelet, every
/// container task (killed and deleted through containerd, so the shims exit),
/// containerd, then any process still referring to the folder (by PID), the mounts
/// under it, the kubelet's /var/log/containers links into it, and the folder.
pub(super) fn teardown(r: Running) {
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
pub(super) fn sweep_stale(root: &Path) {
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
