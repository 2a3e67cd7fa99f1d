//! A small synchronous client for the Kubernetes REST API.
//!
//! It trusts exactly the configured CA, sends the service-account token (re-read from its
//! file every minute and after a 401, because the kubelet rotates bound tokens in place),
//! and traces every call at `-v` like curl would, without ever printing the token.

pub mod watch;

// The plain data the client sends and returns.
pub use crate::api::{encode_query, error, types, KubeError};

use serde_json::Value;
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use ureq::http::{self, Method};
use ureq::Agent;

/// How often the token file is re-read even without a 401 (client-go does the same).
const TOKEN_MAX_AGE: Duration = Duration::from_secs(60);
/// Bodies longer than this are cut in `-vv` traces.
const TRACE_BODY_LIMIT: usize = 8 * 1024;
/// Largest response body accepted for a plain call.
const MAX_BODY: u64 = 16 * 1024 * 1024;

pub const MERGE_PATCH: &str = "application/merge-patch+json";
pub const JSON: &str = "application/json";

/// A cheaply cloneable client; clones share one connection pool.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    /// A shorter bound than the agent's for calls made through this clone.
    timeout: Option<Duration>,
}

struct Inner {
    base: String,
    /// Rebuilt when the CA bundle changes.
    agents: RwLock<Agents>,
    ca: Option<CaFile>,
    shape: Shape,
    token: Option<TokenFile>,
    verbosity: u8,
    on_response: Option<OnResponse>,
}

struct Agents {
    call: Agent,
    watch: Agent,
}

/// What the agents are built from, besides the CA.
struct Shape {
    call_timeout: Duration,
    watch_idle_timeout: Duration,
    user_agent: String,
}

impl Shape {
    fn agents(&self, tls: ureq::tls::TlsConfig) -> Agents {
        let builder = || {
            Agent::config_builder()
                .tls_config(tls.clone())
                .proxy(None)
                .http_status_as_error(false)
                .user_agent(&self.user_agent)
                // ureq's 128 KiB defaults, per connection, are most of a small
                // process's memory; API objects here are a few KiB.
                .input_buffer_size(32 * 1024)
                .output_buffer_size(16 * 1024)
                .timeout_connect(Some(self.call_timeout.min(Duration::from_secs(5))))
        };
        Agents {
            call: builder()
                .timeout_global(Some(self.call_timeout))
                .build()
                .new_agent(),
            watch: builder()
                .timeout_per_read(Some(self.watch_idle_timeout))
                .build()
                .new_agent(),
        }
    }
}

/// The CA bundle as last read.
struct CaFile {
    path: PathBuf,
    pem: Mutex<Vec<u8>>,
}

/// A TLS configuration trusting exactly the certificates in `pem`; None if it holds none.
fn trusting(pem: &[u8]) -> Option<ureq::tls::TlsConfig> {
    let certs: Vec<_> = ureq::tls::parse_pem(pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    (!certs.is_empty()).then(|| {
        ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
            .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .build()
    })
}

struct TokenFile {
    path: PathBuf,
    cached: Mutex<Option<(String, Instant)>>,
}

impl TokenFile {
    fn get(&self, force: bool) -> Result<String, KubeError> {
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((token, read_at)) = cached.as_ref() {
            if !force && read_at.elapsed() < TOKEN_MAX_AGE {
                return Ok(token.clone());
            }
        }
        match std::fs::read_to_string(&self.path) {
            Ok(t) if !t.trim().is_empty() => {
                let token = t.trim().to_string();
                *cached = Some((token.clone(), Instant::now()));
                Ok(token)
            }
            // Keep using the last good token while the file is being replaced.
            _ if cached.is_some() => Ok(cached.as_ref().map(|c| c.0.clone()).unwrap_or_default()),
            Ok(_) => Err(KubeError::Setup(format!(
                "token file {} is empty",
                self.path.display()
            ))),
            Err(e) => Err(KubeError::Setup(format!(
                "cannot read token file {}: {e}",
                self.path.display()
            ))),
        }
    }
}

/// How to reach the API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// Base URL without a trailing slash, e.g. `https://10.0.0.1:443`.
    pub server: String,
    /// Bearer token file, re-read regularly (the kubelet rotates it). None: no auth
    /// (for `kubectl proxy`).
    pub token_file: Option<PathBuf>,
    /// CA bundle to trust, and nothing else. None for plain http.
    pub ca_file: Option<PathBuf>,
}

/// Options that are not part of the user's configuration.
pub struct ClientOptions {
    /// Upper bound for one non-watch call, connection included.
    pub call_timeout: Duration,
    /// A watch that delivers nothing for this long is treated as dead.
    pub watch_idle_timeout: Duration,
    pub verbosity: u8,
    /// Added to the User-Agent, so audit logs tell the pods apart.
    pub identity: String,
    /// Told of every response (`main` counts them in the metrics).
    pub on_response: Option<OnResponse>,
}

/// Called with each request's method and the status of its answer ("error": none came).
pub type OnResponse = Arc<dyn Fn(&str, &str) + Send + Sync>;

impl Client {
    pub fn new(conn: &Connection, opts: ClientOptions) -> Result<Client, KubeError> {
        let shape = Shape {
            call_timeout: opts.call_timeout,
            watch_idle_timeout: opts.watch_idle_timeout,
            user_agent: format!(
                "leader-labeler/{} ({})",
                env!("CARGO_PKG_VERSION"),
                opts.identity
            ),
        };
        let (tls, ca) = match &conn.ca_file {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    KubeError::Setup(format!("cannot read CA file {}: {e}", path.display()))
                })?;
                let tls = trusting(&pem).ok_or_else(|| {
                    KubeError::Setup(format!(
                        "CA file {} holds no PEM certificate",
                        path.display()
                    ))
                })?;
                let ca = CaFile {
                    path: path.clone(),
                    pem: Mutex::new(pem),
                };
                (tls, Some(ca))
            }
            None => (ureq::tls::TlsConfig::default(), None),
        };
        Ok(Client {
            inner: Arc::new(Inner {
                base: conn.server.clone(),
                agents: RwLock::new(shape.agents(tls)),
                ca,
                shape,
                token: conn.token_file.clone().map(|path| TokenFile {
                    path,
                    cached: Mutex::new(None),
                }),
                verbosity: opts.verbosity,
                on_response: opts.on_response,
            }),
            timeout: None,
        })
    }

    /// After a certificate the CA file does not vouch for: re-reads the file (clusters
    /// rotate the `kube-root-ca.crt` bundle the pod sees) and, if it changed, trusts the
    /// new bundle from the next call on. Returns whether it changed.
    fn reload_ca(&self) -> bool {
        let Some(ca) = &self.inner.ca else {
            return false;
        };
        let Ok(pem) = std::fs::read(&ca.path) else {
            return false;
        };
        let mut current = ca.pem.lock().unwrap_or_else(|e| e.into_inner());
        if *current == pem {
            return false;
        }
        let Some(tls) = trusting(&pem) else {
            return false;
        };
        log::info!(
            "CA file {} changed: trusting the new bundle",
            ca.path.display()
        );
        *self.inner.agents.write().unwrap_or_else(|e| e.into_inner()) =
            self.inner.shape.agents(tls);
        *current = pem;
        true
    }

    /// The same client, with every call ending within `timeout` (if sooner than the
    /// configured call timeout): a drain must end before the kubelet's SIGKILL.
    pub fn bounded(&self, timeout: Duration) -> Client {
        Client {
            inner: self.inner.clone(),
            timeout: Some(timeout.min(self.inner.shape.call_timeout)),
        }
    }

    fn agent(&self, streaming: bool) -> Agent {
        let agents = self.inner.agents.read().unwrap_or_else(|e| e.into_inner());
        if streaming {
            agents.watch.clone()
        } else {
            agents.call.clone()
        }
    }

    pub fn get(&self, path: &str) -> Result<Value, KubeError> {
        self.call(Method::GET, path, None)
    }

    /// The Lease at `path`; Ok(None) when it does not exist.
    pub fn get_lease(&self, path: &str) -> Result<Option<types::Lease>, KubeError> {
        match self.get(path) {
            Ok(v) => types::Lease::from_json(&v)
                .map(Some)
                .map_err(KubeError::Decode),
            Err(KubeError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn put(&self, path: &str, body: &Value) -> Result<Value, KubeError> {
        self.call(Method::PUT, path, Some((JSON, body)))
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<Value, KubeError> {
        self.call(Method::POST, path, Some((JSON, body)))
    }

    pub fn merge_patch(&self, path: &str, body: &Value) -> Result<Value, KubeError> {
        self.call(Method::PATCH, path, Some((MERGE_PATCH, body)))
    }

    /// One API call with a JSON answer.
    pub fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, &Value)>,
    ) -> Result<Value, KubeError> {
        let body = body.map(|(ct, v)| (ct, serde_json::to_vec(v).unwrap_or_default()));
        let (mut resp, started) = self.exchange(false, &method, path, body.as_ref())?;
        let code = resp.status().as_u16();
        let retry_after = retry_after(&resp);
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_vec()
            .map_err(|e| KubeError::Transport(describe(&e)));
        self.trace_response(&method, path, started, code, bytes.as_deref().ok());
        decode(code, &method, path, &bytes?, retry_after)
    }

    /// Opens a watch (or any streaming GET) and returns its body once the status is 200.
    pub fn stream(&self, path: &str) -> Result<Box<dyn Read + Send>, KubeError> {
        let (mut resp, started) = self.exchange(true, &Method::GET, path, None)?;
        let code = resp.status().as_u16();
        if code == 200 {
            self.trace_response(&Method::GET, path, started, code, None);
            return Ok(Box::new(resp.into_body().into_reader()));
        }
        let retry_after = retry_after(&resp);
        let bytes = resp.body_mut().read_to_vec().unwrap_or_default();
        self.trace_response(&Method::GET, path, started, code, Some(&bytes));
        match decode(code, &Method::GET, path, &bytes, retry_after) {
            Ok(_) => Err(KubeError::Decode(format!("watch answered HTTP {code}"))),
            Err(e) => Err(e),
        }
    }

    /// Sends a request and returns the response with its start time, body unread. A 401
    /// re-reads the token file (the kubelet may have rotated it) and tries once more; so
    /// does a server certificate the CA file does not vouch for, if the file changed.
    fn exchange(
        &self,
        streaming: bool,
        method: &Method,
        path: &str,
        body: Option<&(&str, Vec<u8>)>,
    ) -> Result<(http::Response<ureq::Body>, Instant), KubeError> {
        let mut retried = false;
        let mut ca_retried = false;
        loop {
            let started = Instant::now();
            let sent = self.send(&self.agent(streaming), method, path, body, retried);
            let mut resp = match sent {
                Err(KubeError::Untrusted(_)) if !ca_retried && self.reload_ca() => {
                    ca_retried = true;
                    continue;
                }
                other => other.inspect_err(|e| self.trace_failure(method, path, started, e))?,
            };
            if resp.status().as_u16() != 401 || retried || self.inner.token.is_none() {
                return Ok((resp, started));
            }
            let bytes = resp.body_mut().read_to_vec().unwrap_or_default();
            self.trace_response(method, path, started, 401, Some(&bytes));
            retried = true;
        }
    }

    /// Whether `-vv` body tracing is on (the watch readers trace events themselves).
    pub fn traces_bodies(&self) -> bool {
        self.inner.verbosity >= 2
    }

    fn send(
        &self,
        agent: &Agent,
        method: &Method,
        path: &str,
        body: Option<&(&str, Vec<u8>)>,
        fresh_token: bool,
    ) -> Result<http::Response<ureq::Body>, KubeError> {
        let url = format!("{}{}", self.inner.base, path);
        let mut builder = http::Request::builder()
            .method(method.clone())
            .uri(&url)
            .header("Accept", JSON);
        if let Some(token) = &self.inner.token {
            let t = token.get(fresh_token)?;
            builder = builder.header("Authorization", format!("Bearer {t}"));
        }
        if self.inner.verbosity >= 1 {
            log::info!(target: "api", "> {method} {path}");
        }
        let result = match body {
            Some((ct, bytes)) => {
                if self.inner.verbosity >= 2 {
                    log::info!(target: "api::body", "> {}", clip(bytes));
                }
                let req = builder
                    .header("Content-Type", *ct)
                    .body(bytes.clone())
                    .map_err(|e| KubeError::Setup(format!("bad request {url}: {e}")))?;
                run(agent, req, self.timeout)
            }
            None => {
                let req = builder
                    .body(())
                    .map_err(|e| KubeError::Setup(format!("bad request {url}: {e}")))?;
                run(agent, req, self.timeout)
            }
        };
        if let Some(tell) = &self.inner.on_response {
            match &result {
                Ok(r) => tell(method.as_str(), r.status().as_str()),
                Err(_) => tell(method.as_str(), "error"),
            }
        }
        result.map_err(|e| {
            if untrusted(&e) {
                KubeError::Untrusted(describe(&e))
            } else {
                KubeError::Transport(describe(&e))
            }
        })
    }

    fn trace_response(
        &self,
        method: &Method,
        path: &str,
        started: Instant,
        code: u16,
        body: Option<&[u8]>,
    ) {
        if self.inner.verbosity >= 1 {
            let reason = http::StatusCode::from_u16(code)
                .ok()
                .and_then(|c| c.canonical_reason())
                .unwrap_or("");
            log::info!(
                target: "api",
                "< {code} {reason} {method} {path} ({:.1} ms)",
                started.elapsed().as_secs_f64() * 1000.0
            );
            if self.inner.verbosity >= 2 {
                if let Some(b) = body {
                    log::info!(target: "api::body", "< {}", clip(b));
                }
            }
        }
    }

    fn trace_failure(&self, method: &Method, path: &str, started: Instant, e: &KubeError) {
        if self.inner.verbosity >= 1 {
            log::info!(
                target: "api",
                "! {method} {path} failed after {:.1} ms: {e}",
                started.elapsed().as_secs_f64() * 1000.0
            );
        }
    }
}

fn clip(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    if text.len() > TRACE_BODY_LIMIT {
        let mut end = TRACE_BODY_LIMIT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}... ({} bytes)", &text[..end], text.len())
    } else {
        text.into_owned()
    }
}

/// Runs a request, within `timeout` when it is shorter than the agent's own.
fn run<B: ureq::AsSendBody>(
    agent: &Agent,
    req: http::Request<B>,
    timeout: Option<Duration>,
) -> Result<http::Response<ureq::Body>, ureq::Error> {
    match timeout {
        Some(t) => agent.run(agent.configure_request(req).timeout_global(Some(t)).build()),
        None => agent.run(req),
    }
}

/// Whether the server's certificate failed verification against the CA bundle.
fn untrusted(e: &ureq::Error) -> bool {
    let tls = match e {
        ureq::Error::Rustls(r) => Some(r),
        ureq::Error::Io(io) => io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()),
        _ => None,
    };
    matches!(tls, Some(rustls::Error::InvalidCertificate(_)))
}

/// A transport error in words, with the io error's cause when there is one.
fn describe(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Io(io) => match io.get_ref() {
            Some(inner) => format!("{io}: {inner}"),
            None => io.to_string(),
        },
        other => other.to_string(),
    }
}

/// The `Retry-After` of a 429 or 5xx answer, in seconds (the form kube-apiserver sends),
/// capped at `MAX_RETRY_AFTER`.
fn retry_after(resp: &http::Response<ureq::Body>) -> Option<Duration> {
    let code = resp.status().as_u16();
    if code != 429 && code < 500 {
        return None;
    }
    let secs: u64 = resp
        .headers()
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(error::MAX_RETRY_AFTER))
}

/// Turns a status code and body into the JSON value or the matching error.
fn decode(
    code: u16,
    method: &Method,
    path: &str,
    body: &[u8],
    retry_after: Option<Duration>,
) -> Result<Value, KubeError> {
    if (200..300).contains(&code) {
        return serde_json::from_slice(body)
            .map_err(|e| KubeError::Decode(format!("{method} {path}: {e}")));
    }
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .map(|v| types::Status::from_json(&v).message)
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| format!("{method} {path} answered HTTP {code}"));
    Err(match code {
        401 => KubeError::Unauthorized(message),
        403 => KubeError::Forbidden(message),
        404 => KubeError::NotFound(message),
        409 => KubeError::Conflict(message),
        410 => KubeError::Gone(message),
        _ => match retry_after {
            Some(retry_after) => KubeError::Busy {
                code,
                message,
                retry_after,
            },
            None => KubeError::Status { code, message },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_map_to_errors() {
        let body = br#"{"kind":"Status","code":409,"message":"the object has been modified"}"#;
        assert_eq!(
            decode(409, &Method::PUT, "/x", body, None),
            Err(KubeError::Conflict("the object has been modified".into()))
        );
        assert!(matches!(
            decode(403, &Method::GET, "/x", b"not json", None),
            Err(KubeError::Forbidden(m)) if m.contains("GET /x answered HTTP 403")
        ));
        let e = decode(503, &Method::GET, "/x", b"", None).unwrap_err();
        assert!(e.is_transient());
        assert!(!decode(422, &Method::GET, "/x", b"", None)
            .unwrap_err()
            .is_transient());
        assert_eq!(
            decode(200, &Method::GET, "/x", b"{}", None),
            Ok(serde_json::json!({}))
        );
    }

    /// A one-shot HTTP server on loopback that answers every request with `answer`.
    fn answering(answer: &'static str) -> String {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for mut s in listener.incoming().flatten() {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = s.write_all(answer.as_bytes());
            }
        });
        format!("http://{addr}")
    }

    fn plain_client(server: String) -> Client {
        Client::new(
            &Connection {
                server,
                token_file: None,
                ca_file: None,
            },
            ClientOptions {
                call_timeout: Duration::from_secs(2),
                watch_idle_timeout: Duration::from_secs(2),
                verbosity: 0,
                identity: "t".into(),
                on_response: None,
            },
        )
        .unwrap()
    }

    #[test]
    fn retry_after_is_read_and_capped() {
        let c = plain_client(answering(
            "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ));
        let e = c.get("/x").unwrap_err();
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)), "{e:?}");
        assert!(e.is_transient());
        assert!(c.stream("/x").err().and_then(|e| e.retry_after()).is_some());
        let c = plain_client(answering(
            "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 86400\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ));
        assert_eq!(
            c.get("/x").unwrap_err().retry_after(),
            Some(error::MAX_RETRY_AFTER)
        );
        // Only for 429 and 5xx.
        let c = plain_client(answering(
            "HTTP/1.1 409 Conflict\r\nRetry-After: 3\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ));
        assert_eq!(c.get("/x").unwrap_err().retry_after(), None);
    }

    #[test]
    fn query_encoding() {
        assert_eq!(encode_query("my-app/is-leader"), "my-app%2Fis-leader");
        assert_eq!(encode_query("metadata.name=x"), "metadata.name%3Dx");
    }

    #[test]
    fn token_file_is_reread_when_forced() {
        let dir = std::env::temp_dir().join(format!("ll-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "one\n").unwrap();
        let t = TokenFile {
            path: path.clone(),
            cached: Mutex::new(None),
        };
        assert_eq!(t.get(false).unwrap(), "one");
        std::fs::write(&path, "two").unwrap();
        assert_eq!(t.get(false).unwrap(), "one", "cached within a minute");
        assert_eq!(t.get(true).unwrap(), "two", "re-read after a 401");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            t.get(true).unwrap(),
            "two",
            "last good token while replaced"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
