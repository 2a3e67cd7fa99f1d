//! A tiny HTTP listener, std only: health probes, Prometheus metrics and the current
//! leader for applications that can read a local URL but not the Kubernetes API.
//!
//! Guarantees, so that no client can starve the kubelet's probes or grow the process:
//! each connection has [`DEADLINE`] in total to send its request head (the read timeout
//! shrinks to the time left before every read), the head is read into a fixed
//! [`MAX_HEAD`]-byte buffer (414 for a request line over [`MAX_LINE`], 431 for a longer
//! head), and at most [`MAX_CONNS`] connections are served at once, each on a short-lived
//! thread with a small stack. When all are busy a new connection is not refused: the
//! oldest one, which has had the longest to send its request, is shut down and the new
//! one takes its place. A probe sends its request at once and is answered in
//! milliseconds, so it is never the oldest while slow clients hold the other places.

use crate::telemetry::Telemetry;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Time a client has to send its whole request head, and to take each write.
const DEADLINE: Duration = Duration::from_secs(2);
/// Longest request line accepted, newline included; longer is answered 414.
const MAX_LINE: usize = 2048;
/// Longest request head (line and headers) accepted; longer is answered 431.
const MAX_HEAD: usize = 8192;
/// Connections served at once, one thread each.
const MAX_CONNS: usize = 8;

/// Connections being served, oldest first: an id and a handle to shut each down.
type Slots = Mutex<Vec<(u64, TcpStream)>>;

/// Binds now (so a taken port is reported at start), serves on a thread.
pub fn serve(address: &str, telemetry: Arc<Telemetry>) -> std::io::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind(address)?;
    let local = listener.local_addr()?;
    let slots: Arc<Slots> = Arc::default();
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            for (id, stream) in (0..).zip(listener.incoming().flatten()) {
                let Ok(handle) = stream.try_clone() else {
                    continue;
                };
                {
                    let mut busy = slots.lock().unwrap_or_else(PoisonError::into_inner);
                    if busy.len() >= MAX_CONNS {
                        // Its thread sees end of file or a failed write, and ends.
                        let _ = busy.remove(0).1.shutdown(Shutdown::Both);
                    }
                    busy.push((id, handle));
                }
                let (slots2, telemetry) = (slots.clone(), telemetry.clone());
                let spawned = std::thread::Builder::new()
                    .name("http-conn".into())
                    .stack_size(64 << 10)
                    .spawn(move || {
                        if let Err(e) = answer(&stream, &telemetry) {
                            log::debug!("http: {e}");
                        }
                        release(&slots2, id);
                    });
                if spawned.is_err() {
                    release(&slots, id);
                }
            }
        })?;
    Ok(local)
}

fn release(slots: &Slots, id: u64) {
    let mut busy = slots.lock().unwrap_or_else(PoisonError::into_inner);
    busy.retain(|s| s.0 != id);
}

fn answer(mut stream: &TcpStream, telemetry: &Telemetry) -> std::io::Result<()> {
    stream.set_write_timeout(Some(DEADLINE))?;
    let mut buf = [0; MAX_HEAD];
    let (method, (code, content_type, body)) = match read_head(stream, &mut buf)? {
        Ok(line) => {
            let line = std::str::from_utf8(line).unwrap_or("");
            let mut parts = line.split_whitespace();
            let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let path = target.split('?').next().unwrap_or("");
            (method, route(method, path, telemetry))
        }
        Err(code) => ("", (code, "text/plain", String::new())),
    };
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    // One write: no small segments held back by Nagle's algorithm.
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if method != "HEAD" {
        out += &body;
    }
    stream.write_all(out.as_bytes())
}

/// Reads the request head into `buf`, within [`DEADLINE`]: the request line once a blank
/// line ends the head, or the status refusing it when it outgrows the caps. End of file or
/// the deadline is an error: the connection is closed unanswered.
fn read_head<'b>(
    mut stream: &TcpStream,
    buf: &'b mut [u8],
) -> std::io::Result<Result<&'b [u8], u16>> {
    let deadline = Instant::now() + DEADLINE;
    let mut len = 0;
    loop {
        let head = &buf[..len];
        let line = head.iter().position(|&b| b == b'\n').unwrap_or(len);
        if line >= MAX_LINE {
            return Ok(Err(414));
        }
        if head.windows(2).any(|w| w == b"\n\n") || head.windows(3).any(|w| w == b"\n\r\n") {
            return Ok(Ok(&buf[..line]));
        }
        if len == buf.len() {
            return Ok(Err(431));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf[len..])? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => len += n,
        }
    }
}

fn route(method: &str, path: &str, t: &Telemetry) -> (u16, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != "GET" && method != "HEAD" {
        return (405, TEXT, "only GET\n".into());
    }
    match path {
        "/healthz" | "/livez" => match t.health(Instant::now()) {
            Ok(()) => (200, TEXT, "ok\n".into()),
            Err(why) => (503, TEXT, format!("unhealthy: {why}\n")),
        },
        "/readyz" => {
            if t.snapshot().state.connected {
                (200, TEXT, "ok\n".into())
            } else {
                (
                    503,
                    TEXT,
                    "not connected: the Lease or this pod has not been read yet\n".into(),
                )
            }
        }
        "/metrics" => (200, "text/plain; version=0.0.4; charset=utf-8", t.metrics()),
        "/leader" => (200, "application/json", t.leader_json() + "\n"),
        _ => (
            404,
            TEXT,
            "endpoints: /healthz /readyz /metrics /leader\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread::{sleep, spawn};

    fn server() -> std::net::SocketAddr {
        serve(
            "127.0.0.1:0",
            Arc::new(Telemetry::new("p", Duration::from_secs(10))),
        )
        .unwrap()
    }

    fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    /// Sends `request`, then reads until the server closes, a reset, or `wait` passes:
    /// what arrived before a reset still counts.
    fn exchange(addr: std::net::SocketAddr, request: &[u8], wait: Duration) -> String {
        let Ok(mut s) = TcpStream::connect(addr) else {
            return String::new();
        };
        s.set_read_timeout(Some(wait)).unwrap();
        let _ = s.write_all(request);
        let (mut out, mut chunk) = (Vec::new(), [0; 512]);
        while let Ok(n @ 1..) = s.read(&mut chunk) {
            out.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    fn timed_out(e: &std::io::Error) -> bool {
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )
    }

    /// `GET /healthz` every 50 ms for `run`; each must answer 200 within 100 ms.
    fn probe_for(addr: std::net::SocketAddr, run: Duration) {
        let (start, mut n) = (Instant::now(), 0);
        while start.elapsed() < run {
            let t = Instant::now();
            let got = exchange(
                addr,
                b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
                Duration::from_secs(1),
            );
            let took = t.elapsed();
            assert!(
                got.starts_with("HTTP/1.1 200") && took < Duration::from_millis(100),
                "probe #{n} at {:?}: took {took:?}, got {:?}",
                start.elapsed(),
                got.lines().next()
            );
            n += 1;
            sleep(Duration::from_millis(50));
        }
    }

    /// Sends `request` one byte per `gap`, never finishing the head, until the server cuts
    /// the connection or `end`; returns how long the connection lasted.
    fn trickle(addr: std::net::SocketAddr, gap: Duration, end: Instant) -> Option<Duration> {
        let mut s = TcpStream::connect(addr).ok()?;
        let start = Instant::now();
        s.set_read_timeout(Some(gap)).unwrap();
        for b in b"GET /healthz HTTP/1.1\r\n"
            .iter()
            .chain(std::iter::repeat(&b'a'))
        {
            if Instant::now() >= end {
                return None;
            }
            if s.write_all(&[*b]).is_err() {
                break;
            }
            match s.read(&mut [0; 64]) {
                Err(e) if timed_out(&e) => {}
                _ => break, // answered or closed: cut
            }
        }
        Some(start.elapsed())
    }

    #[test]
    fn endpoints_answer() {
        let t = Arc::new(Telemetry::new("p", Duration::from_secs(10)));
        let addr = serve("127.0.0.1:0", t.clone()).unwrap();
        assert!(get(addr, "/healthz").starts_with("HTTP/1.1 200 OK"));
        assert!(get(addr, "/readyz").starts_with("HTTP/1.1 503"));
        t.publish(crate::telemetry::Snapshot {
            state: crate::core::Summary {
                connected: true,
                ..Default::default()
            },
            ..Default::default()
        });
        assert!(get(addr, "/readyz").starts_with("HTTP/1.1 200 OK"));
        let m = get(addr, "/metrics");
        assert!(m.contains("text/plain; version=0.0.4"));
        assert!(m.contains("leader_labeler_is_leader 0"));
        assert!(get(addr, "/leader").contains("\"isLeader\":false"));
        assert!(get(addr, "/nope").starts_with("HTTP/1.1 404"));
    }

    #[test]
    fn slowloris_does_not_starve_probes() {
        let addr = server();
        let end = Instant::now() + Duration::from_millis(3500);
        // 12 clients, more than the server serves at once, each one byte per 1.5 s,
        // reconnecting 100 ms after each cut.
        let slow: Vec<_> = (0..12)
            .map(|_| {
                spawn(move || {
                    while Instant::now() < end {
                        trickle(addr, Duration::from_millis(1500), end);
                        sleep(Duration::from_millis(100));
                    }
                })
            })
            .collect();
        sleep(Duration::from_millis(300));
        probe_for(addr, Duration::from_secs(3));
        slow.into_iter().for_each(|t| t.join().unwrap());
    }

    #[test]
    fn floods_do_not_starve_probes() {
        let addr = server();
        let end = Instant::now() + Duration::from_millis(3500);
        let mut line = b"GET /".to_vec();
        line.resize(32 << 20, b'a'); // 32 MiB, no newline
        let mut headers = b"GET /healthz HTTP/1.1\r\n".to_vec();
        while headers.len() < 1 << 20 {
            headers.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        let floods: Vec<_> = [Arc::new(line), Arc::new(headers)]
            .into_iter()
            .cycle()
            .take(6)
            .map(|request| {
                spawn(move || {
                    while Instant::now() < end {
                        exchange(addr, &request, Duration::from_millis(500));
                        sleep(Duration::from_millis(50));
                    }
                })
            })
            .collect();
        sleep(Duration::from_millis(300));
        probe_for(addr, Duration::from_secs(3));
        floods.into_iter().for_each(|t| t.join().unwrap());
    }

    #[test]
    fn oversize_requests_are_refused() {
        let addr = server();
        let wait = Duration::from_secs(3);
        let mut line = b"GET /".to_vec();
        line.resize(16 << 10, b'a');
        let got = exchange(addr, &line, wait);
        assert!(got.starts_with("HTTP/1.1 414"), "16 KiB line: {got:?}");
        let mut head = b"GET /healthz HTTP/1.1\r\n".to_vec();
        while head.len() < 16 << 10 {
            head.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaa\r\n");
        }
        let got = exchange(addr, &head, wait);
        assert!(
            got.starts_with("HTTP/1.1 431"),
            "16 KiB of headers: {got:?}"
        );
        // A 32 MiB line is refused before the server has taken it all in.
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        line.resize(32 << 20, b'a');
        assert!(s.write_all(&line).is_err(), "the server read a 32 MiB line");
    }

    #[test]
    fn slow_client_is_cut_at_the_deadline() {
        let addr = server();
        let end = Instant::now() + Duration::from_secs(6);
        let lasted = trickle(addr, Duration::from_millis(300), end);
        let lasted = lasted.expect("a client sending a byte every 300 ms was held 6 s");
        assert!(
            lasted > Duration::from_millis(1500) && lasted < Duration::from_millis(2600),
            "cut after {lasted:?}, the deadline is 2 s"
        );
    }
}
