//! The app of the traffic rig (tests/traffic.rs), built static into a `FROM scratch` image
//! in place of deploy/deployment.yaml's nginx: an HTTP/1.1 server on :8080 (the shipped
//! containerPort) that answers every request with its pod name (the hostname the kubelet
//! gives the pod), so a client of the Service sees which pod answered.
//!
//! - Keep-alive honoured (Content-Length, `Connection: close` when asked).
//! - SIGTERM: keeps serving, readiness included, for 2 s more (the README's "Option A":
//!   the app stays ready while the sidecar drains), answering `Connection: close` so
//!   keep-alive clients reconnect through the Service; then exits 0.
//! - `/control/unready` and `/control/ready` (sent by the test to the pod's own IP) turn
//!   the readiness answer to 503 and back. Only the kubelet's probe (User-Agent
//!   `kube-probe/...`) sees the 503: the app still serves, as an overloaded app that sheds
//!   new work would, so the test measures the handover, not the app's failures.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DRAIN: Duration = Duration::from_secs(2);

static UNREADY: AtomicBool = AtomicBool::new(false);

fn main() {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let term = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, term.clone())
        .expect("SIGTERM handler");
    let listener = TcpListener::bind("0.0.0.0:8080").unwrap_or_else(|e| {
        eprintln!("app: cannot listen on 0.0.0.0:8080: {e}");
        std::process::exit(1)
    });
    println!("app: {name} serving on :8080");
    let name: Arc<str> = name.into();
    {
        let term = term.clone();
        std::thread::spawn(move || {
            while !term.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
            println!("app: SIGTERM, serving {DRAIN:?} more");
            let end = Instant::now() + DRAIN;
            while Instant::now() < end {
                std::thread::sleep(Duration::from_millis(20));
            }
            println!("app: exiting");
            std::process::exit(0);
        });
    }
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let (name, term) = (name.clone(), term.clone());
        std::thread::spawn(move || serve(conn, &name, &term));
    }
}

/// One connection: requests until the client closes, asks to, or a SIGTERM came.
fn serve(conn: TcpStream, name: &str, term: &AtomicBool) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
    let _ = conn.set_nodelay(true);
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut close = false;
        let mut probe = false;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let lower = h.to_ascii_lowercase();
            close |= lower.starts_with("connection:") && lower.contains("close");
            probe |= lower.starts_with("user-agent:") && lower.contains("kube-probe");
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or("/");
        match path {
            "/control/unready" => UNREADY.store(true, Ordering::SeqCst),
            "/control/ready" => UNREADY.store(false, Ordering::SeqCst),
            _ => {}
        }
        let (status, body) = if probe && UNREADY.load(Ordering::SeqCst) {
            ("503 Service Unavailable", format!("{name} unready\n"))
        } else {
            ("200 OK", format!("{name}\n"))
        };
        close |= term.load(Ordering::SeqCst);
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{body}",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        if out.write_all(response.as_bytes()).is_err() || close {
            return;
        }
    }
}
