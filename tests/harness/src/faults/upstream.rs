//! The fault proxy's upstream side: one TLS connection to kube-apiserver per client
//! connection, reused across requests.

use super::http::{parse_response_head, read_chunked, read_head, Framing, Request, ResponseHead};
use super::{Shared, SocketGuard};
use std::io::{self, BufReader, Read, Write};
use std::net::TcpStream;

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

pub(super) struct Upstream<'a> {
    pub(super) conn: BufReader<Tls>,
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

pub(super) fn read_body(up: &mut Upstream, framing: &Framing) -> io::Result<Vec<u8>> {
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
pub(super) fn forward<'a>(
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
