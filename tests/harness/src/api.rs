//! The harness's own client for the API server: with the admin token (system:masters)
//! in `Cluster::api` and `Namespace::api`, or with a service-account token
//! (`Namespace::sa_api`). Synchronous ureq, trusting only the test CA.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use ureq::http;

pub const MERGE: &str = "application/merge-patch+json";
pub const STRATEGIC: &str = "application/strategic-merge-patch+json";

/// A bearer-token client for one API server.
#[derive(Clone)]
pub struct Api {
    base: String,
    agent: ureq::Agent,
    stream_agent: ureq::Agent,
    token: String,
}

impl Api {
    /// A client for `base` (`https://127.0.0.1:PORT`) trusting only `ca_file`.
    pub fn new(base: &str, ca_file: &Path, token: &str) -> Api {
        let pem = std::fs::read(ca_file).expect("read CA");
        let certs: Vec<_> = ureq::tls::parse_pem(&pem)
            .filter_map(|i| match i {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
            .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .build();
        let builder = || {
            ureq::Agent::config_builder()
                .tls_config(tls.clone())
                .proxy(None)
                .http_status_as_error(false)
                .user_agent("e2e-harness")
                .timeout_connect(Some(Duration::from_secs(5)))
        };
        Api {
            base: base.to_string(),
            agent: builder()
                .timeout_global(Some(Duration::from_secs(30)))
                .build()
                .new_agent(),
            stream_agent: builder()
                .timeout_per_read(Some(Duration::from_secs(2)))
                .build()
                .new_agent(),
            token: token.to_string(),
        }
    }

    /// Any call; returns the status and the JSON body (Null when not JSON). Transport
    /// errors come back as status 0.
    pub fn call(&self, method: &str, path: &str, body: Option<(&str, &Value)>) -> (u16, Value) {
        let builder = http::Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path))
            .header("Authorization", format!("Bearer {}", self.token))
            .header("Accept", "application/json");
        let result = match body {
            Some((ct, v)) => self.agent.run(
                builder
                    .header("Content-Type", ct)
                    .body(serde_json::to_vec(v).unwrap())
                    .unwrap(),
            ),
            None => self.agent.run(builder.body(()).unwrap()),
        };
        match result {
            Ok(mut resp) => {
                let code = resp.status().as_u16();
                let text = resp.body_mut().read_to_string().unwrap_or_default();
                (code, serde_json::from_str(&text).unwrap_or(Value::Null))
            }
            Err(e) => (0, Value::String(e.to_string())),
        }
    }

    fn ok(&self, method: &str, path: &str, body: Option<(&str, &Value)>) -> Value {
        let (code, v) = self.call(method, path, body);
        assert!(
            (200..300).contains(&code),
            "{method} {path} answered {code}: {v}"
        );
        v
    }

    /// GET; panics unless 2xx. Likewise `post`, `put`, `patch`, `delete`.
    pub fn get(&self, path: &str) -> Value {
        self.ok("GET", path, None)
    }

    pub fn post(&self, path: &str, body: &Value) -> Value {
        self.ok("POST", path, Some(("application/json", body)))
    }

    pub fn put(&self, path: &str, body: &Value) -> Value {
        self.ok("PUT", path, Some(("application/json", body)))
    }

    pub fn patch(&self, path: &str, content_type: &str, body: &Value) -> Value {
        self.ok("PATCH", path, Some((content_type, body)))
    }

    pub fn delete(&self, path: &str, body: &Value) -> Value {
        self.ok("DELETE", path, Some(("application/json", body)))
    }

    /// Lists `path`, then watches it from the list's resourceVersion until `stop` is set:
    /// `on_list` gets the full set after every (re-)list, `on_event` each watch event
    /// (type, object). Re-lists after a 410 or an error; reopens ended watches.
    pub fn list_watch(
        &self,
        path: &str,
        stop: &std::sync::atomic::AtomicBool,
        mut on_list: impl FnMut(&[Value]),
        mut on_event: impl FnMut(&str, &Value),
    ) {
        use std::sync::atomic::Ordering;
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut rv: Option<String> = None;
        while !stop.load(Ordering::SeqCst) {
            let Some(from) = rv.clone() else {
                let (code, list) = self.call("GET", path, None);
                if code != 200 {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                on_list(list["items"].as_array().map(Vec::as_slice).unwrap_or(&[]));
                rv = list["metadata"]["resourceVersion"]
                    .as_str()
                    .map(str::to_string);
                continue;
            };
            let url = format!(
                "{path}{sep}watch=true&allowWatchBookmarks=true&resourceVersion={from}&timeoutSeconds=60"
            );
            let mut latest = from;
            let mut expired = false;
            let result = self.stream(&url, |ev| {
                if stop.load(Ordering::SeqCst) {
                    return false;
                }
                let obj = &ev["object"];
                let kind = ev["type"].as_str().unwrap_or("");
                if kind == "ERROR" {
                    expired = obj["code"] == 410;
                    return false;
                }
                if let Some(r) = obj["metadata"]["resourceVersion"].as_str() {
                    latest = r.to_string();
                }
                if kind != "BOOKMARK" {
                    on_event(kind, obj);
                }
                true
            });
            rv = if expired || result.is_err() {
                None
            } else {
                Some(latest)
            };
            if result.is_err() {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Opens a watch and calls `f` with each event until it returns false or the read
    /// times out (2 s of silence: the caller decides whether to reopen).
    pub fn stream(&self, path: &str, mut f: impl FnMut(Value) -> bool) -> Result<bool, String> {
        let req = http::Request::builder()
            .method("GET")
            .uri(format!("{}{}", self.base, path))
            .header("Authorization", format!("Bearer {}", self.token))
            .body(())
            .unwrap();
        let resp = self.stream_agent.run(req).map_err(|e| e.to_string())?;
        if resp.status().as_u16() != 200 {
            return Err(format!("watch answered {}", resp.status()));
        }
        let mut reader = BufReader::new(resp.into_body().into_reader());
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) => return Ok(true),
                Ok(_) => {
                    let v: Value = serde_json::from_str(line.trim()).map_err(|e| e.to_string())?;
                    if !f(v) {
                        return Ok(false);
                    }
                }
                Err(_) => return Ok(true),
            }
        }
    }
}
