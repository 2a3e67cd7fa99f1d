//! The fault proxy's client side: one thread per client connection reads its requests,
//! applies the fault chosen for each (see [`super::Fault`]), and forwards, answers or
//! streams them.

use super::http::{
    read_chunk, read_request, reason_for, status_body, write_chunk, write_response, Framing,
    Request, ResponseHead,
};
use super::upstream::{forward, read_body, Upstream};
use super::{classify, Fault, Kind, Shared, Source};
use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};

enum Next {
    KeepAlive,
    /// FIN: `shutdown(Both)`.
    Close,
    /// RST: `SO_LINGER` 0, then close.
    Reset,
}

impl Next {
    /// After an answer was written: keep the connection if the write went through.
    fn after(written: io::Result<()>) -> Next {
        match written {
            Ok(()) => Next::KeepAlive,
            Err(_) => Next::Close,
        }
    }
}

/// Marks request `seq` done, answered with `answered` (None: no answer reached the client).
fn finish(shared: &Shared, seq: usize, answered: Option<u16>) {
    shared.update(seq, |r| {
        r.answered = r.answered.or(answered);
        r.held = false;
        r.done = true;
    })
}

/// The faults that strike once the server has applied the request: its answer dropped,
/// or replaced by an error. Some((what the client got, next)) when one did.
fn replace_answer(
    client: &mut TcpStream,
    fault: Option<Fault>,
    server_status: u16,
) -> Option<(Option<u16>, Next)> {
    match fault {
        Some(Fault::DropResponse) => Some((None, Next::Close)),
        Some(Fault::ErrorAfterApply(code)) => {
            let written = write_response(
                client,
                code,
                reason_for(code),
                Some("application/json"),
                &status_body(code, server_status),
            );
            Some((Some(code), Next::after(written)))
        }
        _ => None,
    }
}

pub(super) fn serve(shared: &Shared, client: TcpStream) {
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
    let finish = |answered: Option<u16>| finish(shared, seq, answered);
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
            return Next::after(ok);
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
    if let Some((answered, next)) = replace_answer(client, fault, head.status) {
        finish(answered);
        return next;
    }
    if let Some(Fault::SlowChunks(d)) = fault {
        if !shared.sleep(d) {
            finish(None);
            return Next::Close;
        }
    }
    let ok = write_response(
        client,
        head.status,
        &head.reason,
        head.content_type.as_deref(),
        &body,
    );
    finish(Some(head.status));
    Next::after(ok)
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
    let finish = |answered: Option<u16>| finish(shared, seq, answered);
    let Some(mut up) = upstream.take() else {
        finish(None);
        return Next::Close;
    };
    if let Some((answered, next)) = replace_answer(client, fault, head.status) {
        finish(answered);
        return next;
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
                return Next::after(ok);
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
