//! An HTTP-aware fault proxy between one sidecar and the API server: it sees every
//! request, so it can inject the faults real clusters produce, per kind of request.
//!
//! The sidecar talks plain HTTP to the proxy (`--server=http://127.0.0.1:PORT`, no
//! `--ca-file`); the proxy parses each HTTP/1.1 request (keep-alive, `Content-Length` or
//! chunked bodies) and forwards it over TLS to the real kube-apiserver, trusting only the
//! test CA. The `Authorization` header goes through unchanged; redirects are not
//! followed. The client gets the server's status, `Content-Type` and body; watch answers
//! (`watch=true`) are streamed chunk by chunk as they arrive (`Transfer-Encoding:
//! chunked`, one write per chunk, `TCP_NODELAY`), so events reach the client within
//! milliseconds. Each client connection has its own upstream TLS connection.
//!
//! Faults are chosen per [`Kind`] of request, when the request arrives: the next
//! [`FaultProxy::once`] fault of its kind if one is queued, else the persistent one set
//! with [`FaultProxy::set`]. See [`Fault`] for what each does at the socket level. Open
//! watch streams re-read the persistent `Watch` fault before each chunk, so `Stall` and
//! `SlowChunks` act on streams that are already open.
//!
//! Tests never sleep and hope: every request is a [`Record`] in a log, updated as it
//! progresses (arrived, held, forwarded, answered by the server, answered to the
//! client), and [`FaultProxy::wait_for`] / [`FaultProxy::wait_count`] wait on the log
//! (a [`crate::wait::Watched`]) until what the test expects has happened.
//!
//! ```ignore
//! let proxy = FaultProxy::start(cluster);
//! let s = Sidecar::spawn_with(&ns, "pod-a", SidecarOptions { server: Some(proxy.url()), extra: &[] });
//! observer.wait_for_single_leader(secs(15));
//! // The next renewal is applied by the server, but its answer is lost.
//! proxy.once(Kind::LeaseWrite, Fault::DropResponse);
//! let r = proxy.wait_for(Kind::LeaseWrite, secs(5), "a dropped renewal applied", |r| {
//!     r.fault == Some(Fault::DropResponse) && r.applied()
//! });
//! // Cut the sidecar's watches off silently, then let them flow again.
//! proxy.set(Kind::Watch, Some(Fault::Stall));
//! proxy.set(Kind::Watch, None);
//! ```
//!
//! Dropping the proxy stops it: every client and upstream socket is shut down, held
//! requests are abandoned (never forwarded), and its threads are joined.
//!
//! Here: the API ([`Kind`], [`Fault`], [`Record`], [`FaultProxy`]) and the shared state;
//! `http.rs` the HTTP/1.1 framing, `upstream.rs` the TLS side towards kube-apiserver,
//! `serve.rs` the client side, where each fault is applied.

mod http;
mod serve;
mod upstream;

use crate::cluster::Cluster;
use crate::wait::Watched;
use std::collections::{HashMap, VecDeque};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What a request is, as far as faults are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// POST, PUT, PATCH or DELETE on leases (`.../leases[/NAME]`).
    LeaseWrite,
    /// GET on leases that is not a watch.
    LeaseRead,
    /// PATCH or PUT on pods, subresources (`pods/NAME/status`) included.
    PodWrite,
    /// GET on pods that is not a watch.
    PodRead,
    /// A watch on leases (`watch=true` or `watch=1` in the query, or the legacy
    /// `/watch/` path).
    LeaseWatch,
    /// A watch on pods.
    PodWatch,
    /// Any watch: faults and counts for `Watch` apply to every watch, `LeaseWatch` and
    /// `PodWatch` included (a fault set for the specific kind comes first).
    Watch,
    /// Everything else (`/readyz`, other resources, POST/DELETE on pods, ...).
    Other,
}

/// A fault the proxy injects into one request (or, for streams, each chunk).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward the request, read the server's full answer (for a watch: its head), then
    /// close the client connection (FIN, `shutdown(Both)`) without writing a byte of the
    /// answer: the request is applied, the answer is lost.
    DropResponse,
    /// Forward the request, read the server's full answer (for a watch: its head, then
    /// the upstream stream is closed), then answer the client with this status and a small
    /// `Status` JSON body (`reason` matching the code, `message` naming the server's real
    /// status). The connection stays open (keep-alive).
    ErrorAfterApply(u16),
    /// Hold the request this long, then forward it, even if the client has given up and
    /// closed its connection meanwhile (the write is applied late); the answer is written
    /// if the client is still there.
    Delay(Duration),
    /// Wait this long before writing each chunk of a streamed (watch) answer to the
    /// client; a non-streamed answer is one chunk, written this long after the server
    /// answered.
    SlowChunks(Duration),
    /// Stop forwarding silently: the request is read and held, not forwarded, not
    /// answered; an open watch stream (with `set(Kind::Watch, ..)`) stops delivering at
    /// its next chunk and stops reading from the server. No FIN, no RST: the connections
    /// stay open. When the stall ends (`set(kind, None)`, another fault, or `clear()`), a
    /// held stream resumes where it stopped (nothing lost, as after a healed partition);
    /// a held request is forwarded if its client is still connected, and dropped (never
    /// forwarded, connection closed) if the client has closed meanwhile. A stall from
    /// `once` sticks to its request until `clear()`.
    Stall,
    /// Read the request, then reset the client connection at once (`SO_LINGER` 0, RST):
    /// never forwarded, the client sees "connection reset".
    Refuse,
    /// Answer at once with this status and `Retry-After: <seconds>`, never forwarded, as
    /// kube-apiserver's priority and fairness (429) or a load balancer (503) does.
    Busy(u16, u32),
    /// Answer at once with this status, never forwarded, as a kube-apiserver that has just
    /// started answers 403 until its RBAC cache has synced.
    Status(u16),
}

/// One request seen by the proxy, updated as it progresses.
#[derive(Debug, Clone)]
pub struct Record {
    /// Position in the log (0 for the first request the proxy saw).
    pub seq: usize,
    pub kind: Kind,
    pub method: String,
    /// Path and query, as the client sent them.
    pub path: String,
    /// The fault chosen for it when it arrived.
    pub fault: Option<Fault>,
    /// Whether it has been sent to the server.
    pub forwarded: bool,
    /// The server's status, once its answer (head) came back.
    pub status: Option<u16>,
    /// The status written to the client (None: no answer was written).
    pub answered: Option<u16>,
    /// Chunks of a streamed answer written to the client.
    pub chunks: usize,
    /// Held by `Stall` right now (the request, or the stream's next chunk).
    pub held: bool,
    /// The proxy is finished with it (answered, dropped, refused, stream ended).
    pub done: bool,
    /// When it arrived.
    pub at: Instant,
}

impl Record {
    /// The server accepted it (2xx): for a write, the change was applied.
    pub fn applied(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// The persistent fault for a request of `kind`: its own, else the one for every watch.
fn persistent(st: &State, kind: Kind) -> Option<Fault> {
    st.persistent.get(&kind).copied().or_else(|| {
        kind.is_watch()
            .then(|| st.persistent.get(&Kind::Watch).copied())
            .flatten()
    })
}

/// The kind of a request from its method and target (path with query).
impl Kind {
    fn is_watch(self) -> bool {
        matches!(self, Kind::Watch | Kind::LeaseWatch | Kind::PodWatch)
    }

    /// Whether a request of kind `self` is one of `of` (a specific watch is a `Watch`).
    pub fn is(self, of: Kind) -> bool {
        self == of || (of == Kind::Watch && self.is_watch())
    }
}

pub fn classify(method: &str, target: &str) -> Kind {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let watch_param = query
        .split('&')
        .any(|p| p == "watch=true" || p == "watch=1");
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // /api/v1/... or /apis/GROUP/VERSION/...
    let rest: &[&str] = match segs.first() {
        Some(&"api") if segs.len() >= 2 => &segs[2..],
        Some(&"apis") if segs.len() >= 3 => &segs[3..],
        _ => {
            return if watch_param {
                Kind::Watch
            } else {
                Kind::Other
            }
        }
    };
    let (legacy_watch, rest) = match rest.first() {
        Some(&"watch") => (true, &rest[1..]),
        _ => (false, rest),
    };
    let resource = match rest {
        ["namespaces", _, resource, ..] => *resource,
        [resource, ..] => *resource,
        [] => "",
    };
    if watch_param || legacy_watch {
        return match resource {
            "leases" => Kind::LeaseWatch,
            "pods" => Kind::PodWatch,
            _ => Kind::Watch,
        };
    }
    let method = method.to_ascii_uppercase();
    match (resource, method.as_str()) {
        ("leases", "POST" | "PUT" | "PATCH" | "DELETE") => Kind::LeaseWrite,
        ("leases", "GET") => Kind::LeaseRead,
        ("pods", "PATCH" | "PUT") => Kind::PodWrite,
        ("pods", "GET") => Kind::PodRead,
        _ => Kind::Other,
    }
}

/// The proxy. See the module documentation.
pub struct FaultProxy {
    /// The proxy's own port on 127.0.0.1.
    pub port: u16,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

struct Shared {
    upstream_port: u16,
    tls: Arc<rustls::ClientConfig>,
    state: Watched<State>,
    stop: AtomicBool,
    sockets: Mutex<HashMap<u64, TcpStream>>,
    next_socket: AtomicU64,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

#[derive(Default)]
struct State {
    persistent: HashMap<Kind, Fault>,
    once: HashMap<Kind, VecDeque<Fault>>,
    /// Bumped by `clear()`: releases stalls that came from `once`.
    generation: u64,
    counts: HashMap<Kind, usize>,
    log: Vec<Record>,
}

/// Where a request's fault came from: `once` faults stick to their request (until
/// `clear()`), persistent ones are re-read while it is held or streaming.
#[derive(Clone, Copy)]
enum Source {
    Persistent,
    Once(u64),
}

impl FaultProxy {
    /// A proxy on a free loopback port to `cluster`'s kube-apiserver, with no faults.
    pub fn start(cluster: &Cluster) -> FaultProxy {
        let pem = std::fs::read(cluster.ca_file()).expect("read the test CA");
        let mut roots = rustls::RootCertStore::empty();
        for item in ureq::tls::parse_pem(&pem) {
            if let Ok(ureq::tls::PemItem::Certificate(c)) = item {
                roots
                    .add(rustls::pki_types::CertificateDer::from(c.der().to_vec()))
                    .expect("a CA certificate");
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            upstream_port: cluster.port,
            tls: Arc::new(tls),
            state: Watched::new(State::default()),
            stop: AtomicBool::new(false),
            sockets: Mutex::new(HashMap::new()),
            next_socket: AtomicU64::new(0),
            threads: Mutex::new(Vec::new()),
        });
        let sh = shared.clone();
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sh.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let sh2 = sh.clone();
                let t = std::thread::spawn(move || serve::serve(&sh2, client));
                let mut threads = sh.threads.lock().unwrap();
                threads.retain(|t| !t.is_finished());
                threads.push(t);
            }
        });
        FaultProxy {
            port,
            shared,
            accept: Some(accept),
        }
    }

    /// `http://127.0.0.1:PORT`, for a sidecar's `--server` (without `--ca-file`).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Sets (`Some`) or clears (`None`) the persistent fault for `kind`: every later
    /// request of that kind gets it (unless a `once` fault is queued) until changed.
    pub fn set(&self, kind: Kind, fault: Option<Fault>) {
        let mut st = self.shared.lock();
        match fault {
            Some(f) => st.persistent.insert(kind, f),
            None => st.persistent.remove(&kind),
        };
        self.shared.state.notify();
    }

    /// Queues `fault` for the next request of `kind` only (before the persistent one).
    pub fn once(&self, kind: Kind, fault: Fault) {
        self.shared
            .lock()
            .once
            .entry(kind)
            .or_default()
            .push_back(fault);
        self.shared.state.notify();
    }

    /// Removes every fault, persistent and queued; releases every stall.
    pub fn clear(&self) {
        let mut st = self.shared.lock();
        st.persistent.clear();
        st.once.clear();
        st.generation += 1;
        self.shared.state.notify();
    }

    /// Requests of `kind` seen so far (counted on arrival, before any fault).
    pub fn count(&self, kind: Kind) -> usize {
        self.shared.lock().counts.get(&kind).copied().unwrap_or(0)
    }

    /// The log so far.
    pub fn records(&self) -> Vec<Record> {
        self.shared.lock().log.clone()
    }

    /// Blocks until `count(kind) >= n`; returns the count. Panics after `timeout`.
    pub fn wait_count(&self, kind: Kind, n: usize, timeout: Duration) -> usize {
        self.wait_state(timeout, &format!("{n} {kind:?} requests"), |st| {
            let seen = st.counts.get(&kind).copied().unwrap_or(0);
            (seen >= n).then_some(seen)
        })
    }

    /// Blocks until a record of `kind` satisfies `pred` (checked on every change) and
    /// returns the first such one. Panics after `timeout` with `what` and the log.
    pub fn wait_for(
        &self,
        kind: Kind,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Record) -> bool,
    ) -> Record {
        self.wait_state(timeout, what, |st| {
            st.log.iter().find(|r| r.kind.is(kind) && pred(r)).cloned()
        })
    }

    /// Waits (woken by every change) until `done` returns Some; panics after `timeout`
    /// naming `what`, with the log.
    fn wait_state<R>(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&State) -> Option<R>,
    ) -> R {
        self.shared
            .state
            .wait_until_showing(what, timeout, done, |st| {
                let log: Vec<String> = st.log.iter().map(|r| format!("{r:?}")).collect();
                format!("fault proxy log:\n{}", log.join("\n"))
            })
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        {
            // Under the lock: a thread between its stop check and its wait sees it.
            let _st = self.shared.lock();
            self.shared.state.notify();
        }
        for s in self.shared.sockets.lock().unwrap().values() {
            let _ = s.shutdown(Shutdown::Both);
        }
        // Wake the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let threads = std::mem::take(&mut *self.shared.threads.lock().unwrap());
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn update(&self, seq: usize, f: impl FnOnce(&mut Record)) {
        let mut st = self.lock();
        f(&mut st.log[seq]);
        self.state.notify();
    }

    /// Counts and logs a new request and picks its fault.
    fn arrive(&self, kind: Kind, method: &str, path: &str) -> (usize, Option<Fault>, Source) {
        let mut st = self.lock();
        *st.counts.entry(kind).or_default() += 1;
        if kind != Kind::Watch && kind.is_watch() {
            *st.counts.entry(Kind::Watch).or_default() += 1;
        }
        let mut queued = st.once.get_mut(&kind).and_then(VecDeque::pop_front);
        if queued.is_none() && kind.is_watch() {
            queued = st.once.get_mut(&Kind::Watch).and_then(VecDeque::pop_front);
        }
        let (fault, source) = match queued {
            Some(f) => (Some(f), Source::Once(st.generation)),
            None => (persistent(&st, kind), Source::Persistent),
        };
        let seq = st.log.len();
        st.log.push(Record {
            seq,
            kind,
            method: method.to_string(),
            path: path.to_string(),
            fault,
            forwarded: false,
            status: None,
            answered: None,
            chunks: 0,
            held: false,
            done: false,
            at: Instant::now(),
        });
        self.state.notify();
        (seq, fault, source)
    }

    /// The fault in force now for a request whose own fault was `fault` from `source`.
    fn current(
        &self,
        st: &State,
        kind: Kind,
        fault: Option<Fault>,
        source: Source,
    ) -> Option<Fault> {
        match source {
            Source::Once(g) if g == st.generation => fault,
            Source::Once(_) => None,
            Source::Persistent => persistent(st, kind),
        }
    }

    /// Holds while the fault in force is `Stall`, marking the record held. Returns the
    /// fault in force afterwards, or Err when the proxy stops.
    fn hold_while_stalled(
        &self,
        seq: usize,
        kind: Kind,
        fault: Option<Fault>,
        source: Source,
    ) -> Result<Option<Fault>, ()> {
        let mut st = self.lock();
        let mut held = false;
        loop {
            if self.stopped() {
                return Err(());
            }
            let now = self.current(&st, kind, fault, source);
            if now != Some(Fault::Stall) {
                if held {
                    st.log[seq].held = false;
                    self.state.notify();
                }
                return Ok(now);
            }
            if !held {
                held = true;
                st.log[seq].held = true;
                self.state.notify();
            }
            st = self.state.wait(st, None);
        }
    }

    /// Sleeps `d`; false if the proxy stopped meanwhile.
    fn sleep(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let mut st = self.lock();
        loop {
            if self.stopped() {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            st = self.state.wait(st, Some(deadline - now));
        }
    }

    /// Registers a socket to be shut down when the proxy stops.
    fn register(&self, s: &TcpStream) -> Option<SocketGuard<'_>> {
        let mut sockets = self.sockets.lock().unwrap();
        let clone = s.try_clone().ok()?;
        if self.stopped() {
            let _ = s.shutdown(Shutdown::Both);
            return None;
        }
        let id = self.next_socket.fetch_add(1, Ordering::SeqCst);
        sockets.insert(id, clone);
        Some(SocketGuard { shared: self, id })
    }
}

struct SocketGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for SocketGuard<'_> {
    fn drop(&mut self) {
        self.shared.sockets.lock().unwrap().remove(&self.id);
    }
}
