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
//! client), and [`FaultProxy::wait_for`] / [`FaultProxy::wait_count`] block on a Condvar
//! until what the test expects has happened.
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

use crate::cluster::Cluster;
use std::collections::{HashMap, VecDeque};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
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
    state: Mutex<State>,
    changed: Condvar,
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
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
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
                let t = std::thread::spawn(move || serve(&sh2, client));
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
        self.shared.changed.notify_all();
    }

    /// Queues `fault` for the next request of `kind` only (before the persistent one).
    pub fn once(&self, kind: Kind, fault: Fault) {
        self.shared
            .lock()
            .once
            .entry(kind)
            .or_default()
            .push_back(fault);
        self.shared.changed.notify_all();
    }

    /// Removes every fault, persistent and queued; releases every stall.
    pub fn clear(&self) {
        let mut st = self.shared.lock();
        st.persistent.clear();
        st.once.clear();
        st.generation += 1;
        self.shared.changed.notify_all();
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
        let st = self.wait_state(timeout, &format!("{n} {kind:?} requests"), |st| {
            st.counts.get(&kind).copied().unwrap_or(0) >= n
        });
        st.counts.get(&kind).copied().unwrap_or(0)
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
        let found = |st: &State| st.log.iter().find(|r| r.kind.is(kind) && pred(r)).cloned();
        let st = self.wait_state(timeout, what, |st| found(st).is_some());
        found(&st).unwrap()
    }

    fn wait_state(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&State) -> bool,
    ) -> MutexGuard<'_, State> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        while !done(&st) {
            let now = Instant::now();
            if now >= deadline {
                let log: Vec<String> = st.log.iter().map(|r| format!("{r:?}")).collect();
                drop(st);
                panic!(
                    "fault proxy: not within {timeout:?}: {what}; log:\n{}",
                    log.join("\n")
                );
            }
            st = self
                .shared
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap()
                .0;
        }
        st
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        {
            // Under the lock: a thread between its stop check and its wait sees it.
            let _st = self.shared.lock();
            self.shared.changed.notify_all();
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
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn update(&self, seq: usize, f: impl FnOnce(&mut Record)) {
        let mut st = self.lock();
        f(&mut st.log[seq]);
        self.changed.notify_all();
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
        self.changed.notify_all();
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
                    self.changed.notify_all();
                }
                return Ok(now);
            }
            if !held {
                held = true;
                st.log[seq].held = true;
                self.changed.notify_all();
            }
            st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
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
            st = self
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
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

// ---------------------------------------------------------------------------------------
// HTTP/1.1 framing.

struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    close: bool,
}

fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn has_token(headers: &[(String, String)], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .any(|(_, v)| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// A start line and its headers.
type Head = (String, Vec<(String, String)>);

/// A start line and headers; None on a clean EOF before the first byte.
fn read_head(r: &mut impl BufRead) -> io::Result<Option<Head>> {
    let mut line = String::new();
    // Tolerate empty lines between messages.
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        if !line.trim().is_empty() {
            break;
        }
    }
    let start = line.trim_end().to_string();
    let mut headers = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            return Ok(Some((start, headers)));
        }
        if let Some((n, v)) = l.split_once(':') {
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
    }
}

/// One chunk of a chunked body; None at the last (empty) chunk, trailers consumed.
fn read_chunk(r: &mut impl BufRead) -> io::Result<Option<Vec<u8>>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let size = line.trim().split(';').next().unwrap_or("").trim();
    let size = usize::from_str_radix(size, 16)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
    if size == 0 {
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 || line.trim().is_empty() {
                return Ok(None);
            }
        }
    }
    let mut data = vec![0; size];
    r.read_exact(&mut data)?;
    line.clear();
    r.read_line(&mut line)?;
    Ok(Some(data))
}

fn read_chunked(r: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(c) = read_chunk(r)? {
        body.extend_from_slice(&c);
    }
    Ok(body)
}

fn read_request(r: &mut impl BufRead) -> io::Result<Option<Request>> {
    let Some((start, headers)) = read_head(r)? else {
        return Ok(None);
    };
    let mut parts = start.split_whitespace();
    let (Some(method), Some(target), version) = (parts.next(), parts.next(), parts.next()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad request line",
        ));
    };
    let body = if has_token(&headers, "Transfer-Encoding", "chunked") {
        read_chunked(r)?
    } else {
        let n: usize = header(&headers, "Content-Length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut b = vec![0; n];
        r.read_exact(&mut b)?;
        b
    };
    let close = has_token(&headers, "Connection", "close") || version == Some("HTTP/1.0");
    Ok(Some(Request {
        method: method.to_string(),
        target: target.to_string(),
        headers,
        body,
        close,
    }))
}

enum Framing {
    Empty,
    Length(usize),
    Chunked,
    UntilClose,
}

struct ResponseHead {
    status: u16,
    reason: String,
    content_type: Option<String>,
    framing: Framing,
    close: bool,
}

fn parse_response_head(
    method: &str,
    start: &str,
    headers: &[(String, String)],
) -> io::Result<ResponseHead> {
    let mut parts = start.splitn(3, ' ');
    let _version = parts.next();
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad status line"))?;
    let reason = parts.next().unwrap_or("").to_string();
    let framing = if method == "HEAD" || status == 204 || status == 304 || status < 200 {
        Framing::Empty
    } else if has_token(headers, "Transfer-Encoding", "chunked") {
        Framing::Chunked
    } else if let Some(n) = header(headers, "Content-Length").and_then(|v| v.parse().ok()) {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    Ok(ResponseHead {
        status,
        reason,
        content_type: header(headers, "Content-Type").map(str::to_string),
        close: has_token(headers, "Connection", "close") || matches!(framing, Framing::UntilClose),
        framing,
    })
}

fn write_response(
    w: &mut impl Write,
    status: u16,
    reason: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> io::Result<()> {
    let mut out = format!("HTTP/1.1 {status} {reason}\r\n").into_bytes();
    if let Some(ct) = content_type {
        out.extend_from_slice(format!("Content-Type: {ct}\r\n").as_bytes());
    }
    out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    w.write_all(&out)?;
    w.flush()
}

fn write_chunk(w: &mut impl Write, data: &[u8]) -> io::Result<()> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    w.write_all(&out)?;
    w.flush()
}

fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        410 => "Expired",
        429 => "TooManyRequests",
        500 => "InternalError",
        502 | 503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "Unknown",
    }
}

fn status_body(code: u16, server_status: u16) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": format!("fault proxy: answer {code} injected; the server answered {server_status}"),
        "reason": reason_for(code),
        "code": code,
    }))
    .unwrap()
}

// ---------------------------------------------------------------------------------------
// The upstream side: one TLS connection per client connection, reused across requests.

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

struct Upstream<'a> {
    conn: BufReader<Tls>,
    _guard: Option<SocketGuard<'a>>,
}

fn connect_upstream(shared: &Shared) -> io::Result<Upstream<'_>> {
    let tcp = TcpStream::connect(("127.0.0.1", shared.upstream_port))?;
    tcp.set_nodelay(true)?;
    let guard = shared.register(&tcp);
    if guard.is_none() {
        return Err(io::ErrorKind::ConnectionAborted.into());
    }
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = rustls::ClientConnection::new(shared.tls.clone(), name).map_err(io::Error::other)?;
    Ok(Upstream {
        conn: BufReader::new(rustls::StreamOwned::new(tls, tcp)),
        _guard: guard,
    })
}

/// Sends `req` upstream and reads the answer's head.
fn send(up: &mut Upstream, req: &Request) -> io::Result<ResponseHead> {
    let mut out = format!("{} {} HTTP/1.1\r\n", req.method, req.target).into_bytes();
    for (n, v) in &req.headers {
        let hop = [
            "host",
            "connection",
            "keep-alive",
            "transfer-encoding",
            "content-length",
            "te",
            "upgrade",
            "expect",
            "accept-encoding",
            "proxy-connection",
            "proxy-authorization",
        ];
        if !hop.iter().any(|h| n.eq_ignore_ascii_case(h)) {
            out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
    }
    out.extend_from_slice(b"Host: 127.0.0.1\r\n");
    if !req.body.is_empty() || matches!(req.method.as_str(), "POST" | "PUT" | "PATCH") {
        out.extend_from_slice(format!("Content-Length: {}\r\n", req.body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&req.body);
    let conn = up.conn.get_mut();
    conn.write_all(&out)?;
    conn.flush()?;
    let (start, headers) =
        read_head(&mut up.conn)?.ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
    parse_response_head(&req.method, &start, &headers)
}

fn read_body(up: &mut Upstream, framing: &Framing) -> io::Result<Vec<u8>> {
    match framing {
        Framing::Empty => Ok(Vec::new()),
        Framing::Length(n) => {
            let mut b = vec![0; *n];
            up.conn.read_exact(&mut b)?;
            Ok(b)
        }
        Framing::Chunked => read_chunked(&mut up.conn),
        Framing::UntilClose => {
            let mut b = Vec::new();
            up.conn.read_to_end(&mut b)?;
            Ok(b)
        }
    }
}

/// Sends `req` on the connection's upstream (a fresh one if there is none, or if a
/// reused one turns out closed before answering).
fn forward<'a>(
    shared: &'a Shared,
    upstream: &mut Option<Upstream<'a>>,
    req: &Request,
) -> io::Result<ResponseHead> {
    if let Some(up) = upstream.as_mut() {
        match send(up, req) {
            Ok(head) => return Ok(head),
            // The server closed the idle connection: nothing was read back, send again.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::UnexpectedEof
                        | io::ErrorKind::BrokenPipe
                        | io::ErrorKind::ConnectionReset
                ) => {}
            Err(e) => return Err(e),
        }
    }
    *upstream = None;
    let up = upstream.insert(connect_upstream(shared)?);
    send(up, req)
}

// ---------------------------------------------------------------------------------------
// The client side.

enum Next {
    KeepAlive,
    /// FIN: `shutdown(Both)`.
    Close,
    /// RST: `SO_LINGER` 0, then close.
    Reset,
}

fn serve(shared: &Shared, client: TcpStream) {
    let _ = client.set_nodelay(true);
    let Some(guard) = shared.register(&client) else {
        return;
    };
    let Ok(read_half) = client.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = client;
    let mut upstream: Option<Upstream> = None;
    let next = loop {
        if shared.stopped() {
            break Next::Close;
        }
        let req = match read_request(&mut reader) {
            Ok(Some(r)) => r,
            _ => break Next::Close,
        };
        match handle(shared, &mut writer, &mut upstream, &req) {
            Next::KeepAlive if !req.close => {}
            Next::KeepAlive => break Next::Close,
            other => break other,
        }
    };
    drop(upstream);
    match next {
        Next::Reset => {
            set_linger_zero(&writer);
            // Every descriptor of the socket must go for the kernel to send the RST.
            drop(guard);
            drop(reader);
            drop(writer);
        }
        _ => {
            let _ = writer.shutdown(Shutdown::Both);
        }
    }
}

fn set_linger_zero(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket descriptor and a correctly sized linger struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Whether the client has closed (or reset) its connection.
fn client_gone(s: &TcpStream) -> bool {
    if s.set_nonblocking(true).is_err() {
        return true;
    }
    let mut b = [0u8; 1];
    let r = s.peek(&mut b);
    let _ = s.set_nonblocking(false);
    match r {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != io::ErrorKind::WouldBlock,
    }
}

fn handle<'a>(
    shared: &'a Shared,
    client: &mut TcpStream,
    upstream: &mut Option<Upstream<'a>>,
    req: &Request,
) -> Next {
    let kind = classify(&req.method, &req.target);
    let (seq, fault, source) = shared.arrive(kind, &req.method, &req.target);
    let finish = |answered: Option<u16>| {
        shared.update(seq, |r| {
            r.answered = r.answered.or(answered);
            r.held = false;
            r.done = true;
        })
    };
    // Before forwarding.
    let mut fault = fault;
    match fault {
        Some(Fault::Refuse) => {
            finish(None);
            return Next::Reset;
        }
        Some(Fault::Busy(code, _) | Fault::Status(code)) => {
            let body = status_body(code, 0);
            let retry_after = match fault {
                Some(Fault::Busy(_, seconds)) => format!("Retry-After: {seconds}\r\n"),
                _ => String::new(),
            };
            let mut out = format!(
                "HTTP/1.1 {code} {}\r\n{retry_after}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                reason_for(code),
                body.len()
            )
            .into_bytes();
            out.extend_from_slice(&body);
            let ok = client.write_all(&out).and_then(|_| client.flush());
            finish(Some(code));
            return if ok.is_ok() {
                Next::KeepAlive
            } else {
                Next::Close
            };
        }
        Some(Fault::Stall) => match shared.hold_while_stalled(seq, kind, fault, source) {
            Err(()) => {
                finish(None);
                return Next::Close;
            }
            Ok(now) => {
                if client_gone(client) {
                    finish(None);
                    return Next::Close;
                }
                fault = now;
            }
        },
        Some(Fault::Delay(d)) if !shared.sleep(d) => {
            finish(None);
            return Next::Close;
        }
        _ => {}
    }
    let head = match forward(shared, upstream, req) {
        Ok(h) => h,
        Err(_) => {
            // The server cannot be reached or broke off: the client's connection goes too.
            *upstream = None;
            finish(None);
            return Next::Close;
        }
    };
    shared.update(seq, |r| {
        r.forwarded = true;
        r.status = Some(head.status);
    });
    let streaming = kind.is_watch()
        && head.status == 200
        && matches!(head.framing, Framing::Chunked | Framing::UntilClose);
    if streaming {
        return stream(shared, client, upstream, seq, kind, fault, source, head);
    }
    let body = match upstream.as_mut().map(|up| read_body(up, &head.framing)) {
        Some(Ok(b)) => b,
        _ => {
            *upstream = None;
            finish(None);
            return Next::Close;
        }
    };
    if head.close {
        *upstream = None;
    }
    match fault {
        Some(Fault::DropResponse) => {
            finish(None);
            return Next::Close;
        }
        Some(Fault::ErrorAfterApply(code)) => {
            let ok = write_response(
                client,
                code,
                reason_for(code),
                Some("application/json"),
                &status_body(code, head.status),
            );
            finish(Some(code));
            return if ok.is_ok() {
                Next::KeepAlive
            } else {
                Next::Close
            };
        }
        Some(Fault::SlowChunks(d)) if !shared.sleep(d) => {
            finish(None);
            return Next::Close;
        }
        _ => {}
    }
    let ok = write_response(
        client,
        head.status,
        &head.reason,
        head.content_type.as_deref(),
        &body,
    );
    finish(Some(head.status));
    if ok.is_ok() {
        Next::KeepAlive
    } else {
        Next::Close
    }
}

/// Streams a watch answer chunk by chunk, applying `Stall` and `SlowChunks` before each.
#[allow(clippy::too_many_arguments)]
fn stream<'a>(
    shared: &'a Shared,
    client: &mut TcpStream,
    upstream: &mut Option<Upstream<'a>>,
    seq: usize,
    kind: Kind,
    fault: Option<Fault>,
    source: Source,
    head: ResponseHead,
) -> Next {
    let finish = |answered: Option<u16>| {
        shared.update(seq, |r| {
            r.answered = r.answered.or(answered);
            r.held = false;
            r.done = true;
        })
    };
    let Some(mut up) = upstream.take() else {
        finish(None);
        return Next::Close;
    };
    match fault {
        Some(Fault::DropResponse) => {
            finish(None);
            return Next::Close;
        }
        Some(Fault::ErrorAfterApply(code)) => {
            let ok = write_response(
                client,
                code,
                reason_for(code),
                Some("application/json"),
                &status_body(code, head.status),
            );
            finish(Some(code));
            return if ok.is_ok() {
                Next::KeepAlive
            } else {
                Next::Close
            };
        }
        _ => {}
    }
    let mut out = format!("HTTP/1.1 {} {}\r\n", head.status, head.reason).into_bytes();
    if let Some(ct) = &head.content_type {
        out.extend_from_slice(format!("Content-Type: {ct}\r\n").as_bytes());
    }
    out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
    if client.write_all(&out).and_then(|_| client.flush()).is_err() {
        finish(None);
        return Next::Close;
    }
    shared.update(seq, |r| r.answered = Some(head.status));
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let chunk = match head.framing {
            Framing::Chunked => read_chunk(&mut up.conn),
            _ => match up.conn.read(&mut buf) {
                Ok(0) => Ok(None),
                Ok(n) => Ok(Some(buf[..n].to_vec())),
                Err(e) => Err(e),
            },
        };
        let data = match chunk {
            Ok(Some(d)) => d,
            Ok(None) => {
                // The server ended the watch: end it for the client too.
                let ok = client.write_all(b"0\r\n\r\n").and_then(|_| client.flush());
                finish(None);
                return if ok.is_ok() {
                    Next::KeepAlive
                } else {
                    Next::Close
                };
            }
            Err(_) => {
                // Broken off upstream: broken off for the client (no last chunk).
                finish(None);
                return Next::Close;
            }
        };
        let now = match shared.hold_while_stalled(seq, kind, fault, source) {
            Ok(f) => f,
            Err(()) => {
                finish(None);
                return Next::Close;
            }
        };
        if let Some(Fault::SlowChunks(d)) = now {
            if !shared.sleep(d) {
                finish(None);
                return Next::Close;
            }
        }
        if write_chunk(client, &data).is_err() {
            finish(None);
            return Next::Close;
        }
        shared.update(seq, |r| r.chunks += 1);
    }
}
