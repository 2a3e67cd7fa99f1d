//! A TCP proxy between a sidecar and the API server that can cut the link like a network
//! partition: while blackholed, bytes are neither forwarded nor are connections closed;
//! new connections are accepted and left hanging. When the link comes back, held bytes
//! flow again (like TCP retransmission after a partition heals).
//!
//! ```ignore
//! let proxy = Proxy::start(cluster.port);
//! let s = Sidecar::spawn_with(&ns, "pod-a", SidecarOptions { server: Some(proxy.url()), extra: &[] });
//! proxy.blackhole(true); // partition
//! ```

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A TCP forwarder on 127.0.0.1:`port` to 127.0.0.1:`upstream_port`. The TLS session is
/// end to end (the certificate's IP SAN 127.0.0.1 still matches).
pub struct Proxy {
    /// The proxy's own port.
    pub port: u16,
    blackhole: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// Forwards a free loopback port to `upstream_port` on loopback.
    pub fn start(upstream_port: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let blackhole = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (bh, st) = (blackhole.clone(), stop.clone());
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let (bh, st) = (bh.clone(), st.clone());
                        std::thread::spawn(move || connect(client, upstream_port, bh, st));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Proxy {
            port,
            blackhole,
            stop,
        }
    }

    /// `https://127.0.0.1:PORT`, for a sidecar's `--server`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Cuts (`true`) or restores (`false`) the link, both directions, all connections.
    pub fn blackhole(&self, on: bool) {
        self.blackhole.store(on, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.blackhole.store(false, Ordering::SeqCst);
    }
}

fn wait_while(flag: &AtomicBool, stop: &AtomicBool) -> bool {
    while flag.load(Ordering::SeqCst) {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    !stop.load(Ordering::SeqCst)
}

fn connect(client: TcpStream, upstream_port: u16, bh: Arc<AtomicBool>, st: Arc<AtomicBool>) {
    if !wait_while(&bh, &st) {
        return;
    }
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let (bh2, st2) = (bh.clone(), st.clone());
    std::thread::spawn(move || pump(c2, s2, bh2, st2));
    pump(server, client, bh, st);
}

fn pump(mut from: TcpStream, mut to: TcpStream, bh: Arc<AtomicBool>, st: Arc<AtomicBool>) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Hold the bytes while the link is cut, as a partitioned network would.
        if !wait_while(&bh, &st) || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    // A close is held too: across a partition the other side sees nothing.
    wait_while(&bh, &st);
    let _ = to.shutdown(Shutdown::Write);
}
