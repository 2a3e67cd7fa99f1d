//! A tiny HTTP listener on its own thread, std only: health probes, Prometheus metrics
//! and the current leader for applications that can read a local URL but not the
//! Kubernetes API. One connection at a time with short timeouts: probes and scrapes are
//! small and rare, and a slow client must not hold anything the election needs.

use crate::telemetry::Telemetry;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Binds now (so a taken port is reported at start), serves on a thread.
pub fn serve(address: &str, telemetry: Arc<Telemetry>) -> std::io::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind(address)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(e) = handle(stream, &telemetry) {
                    log::debug!("http: {e}");
                }
            }
        })?;
    Ok(local)
}

fn handle(stream: TcpStream, telemetry: &Telemetry) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Drain the headers; nothing in them matters here.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (code, content_type, body) = route(method, path, telemetry);
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let mut out = stream;
    write!(
        out,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    if method != "HEAD" {
        out.write_all(body.as_bytes())?;
    }
    out.flush()
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
    use std::io::Read;

    fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
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
}
