//! Child processes that can never outlive the test run.
//!
//! Every child gets PR_SET_PDEATHSIG(SIGKILL): the kernel kills it when the thread that
//! spawned it exits, whatever the reason (pass, panic, SIGKILL of the test binary).
//! Processes that must live for the whole run (the shared control plane) are spawned by
//! one thread that never exits; per-test processes are spawned by the test's own thread,
//! so they die with the test.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

/// Makes the child die (SIGKILL) when the thread that spawns it exits.
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: prctl, getppid and raise are async-signal-safe; nothing else runs between
    // fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl: then no signal will come.
            if libc::getppid() != parent {
                libc::raise(libc::SIGKILL);
            }
            Ok(())
        })
    }
}

type Job = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns from a thread that lives as long as the test process.
pub fn spawn_long_lived(mut cmd: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("long-lived-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(die_with_parent(&mut cmd).spawn());
                }
                // Never return: the children die when this thread does.
                loop {
                    std::thread::park();
                }
            })
            .expect("spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    cmd.env_remove("RUST_LOG");
    tx.lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply_tx))
        .expect("spawner alive");
    reply_rx.recv().expect("spawner answers")
}

/// Spawns a child that dies with the calling (test) thread.
pub fn spawn_scoped(mut cmd: Command) -> std::io::Result<Child> {
    die_with_parent(&mut cmd).spawn()
}

/// Sends a signal to a process.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: plain kill(2) on a pid we own.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}
