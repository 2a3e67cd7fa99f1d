//! List-then-watch loops for the sensor threads.
//!
//! A watch resumes from the last resourceVersion it saw. "Too old" arrives either as HTTP
//! 410 or as an in-stream ERROR event with code 410 on a 200 response; both lead to a
//! fresh list. A stream ended by the server (timeoutSeconds, --min-request-timeout) is
//! simply reopened, after a back-off if it ended at once without delivering anything (a
//! proxy or server that closes every watch must not be hammered). A stream silent for
//! longer than the client's read deadline is dead (kube-apiserver sends a bookmark about
//! once a minute to watchers that allow them) and is reopened too.
//!
//! The owner also learns whether the API server answers (`Update::Connected`,
//! `Update::Failed`), so silence it could not hear is not taken for a dead holder.

use super::types::{Lease, Pod, WatchEvent};
use super::{encode_query, Client, KubeError};
use crate::backoff::{Backoff, Streak};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::time::Duration;

/// What a watch loop reports to its owner.
#[derive(Debug, Clone, PartialEq)]
pub enum Update<T> {
    /// The complete current set (after a list). Replace, don't merge.
    Listed(Vec<T>),
    Changed(T),
    Deleted(T),
    /// A list answered, or a watch answered 200 and streams: in contact.
    Connected,
    /// A list or watch failed (unreachable, timeout, 5xx, a broken stream): out of
    /// contact until the next `Connected`.
    Failed,
}

/// A watch that ends this soon after it opened, having delivered nothing, is backed off
/// like a failure.
const CLOSED_AT_ONCE: Duration = Duration::from_secs(1);

/// Whether a stream that ended after `lasted`, having delivered `events`, ended at once.
pub fn closed_at_once(lasted: Duration, events: usize) -> bool {
    events == 0 && lasted < CLOSED_AT_ONCE
}

/// Objects that carry a resourceVersion.
pub trait Versioned: Sized {
    fn parse(v: &Value) -> Result<Self, String>;
    fn version(&self) -> &str;
}

impl Versioned for Pod {
    fn parse(v: &Value) -> Result<Self, String> {
        Pod::from_json(v)
    }
    fn version(&self) -> &str {
        &self.resource_version
    }
}

impl Versioned for Lease {
    fn parse(v: &Value) -> Result<Self, String> {
        Lease::from_json(v)
    }
    fn version(&self) -> &str {
        &self.resource_version
    }
}

/// What to watch: a collection path and a selector query (without `?`).
pub struct Target {
    /// e.g. `/api/v1/namespaces/NS/pods`.
    pub path: String,
    /// e.g. `labelSelector=...` or `fieldSelector=metadata.name%3Dx`.
    pub selector: String,
    /// Asked of the server as `timeoutSeconds`; None lets the server choose.
    pub timeout: Option<Duration>,
    /// For log lines: "pod watch", "lease watch".
    pub what: &'static str,
}

impl Target {
    pub fn field_name(
        path: String,
        name: &str,
        timeout: Option<Duration>,
        what: &'static str,
    ) -> Self {
        Target {
            path,
            selector: format!(
                "fieldSelector={}",
                encode_query(&format!("metadata.name={name}"))
            ),
            timeout,
            what,
        }
    }
}

/// Why a watch loop stopped.
#[derive(Debug)]
pub enum Stopped {
    /// The sink asked to stop.
    ByOwner,
    /// `give_up` said so after this error.
    GaveUp(KubeError),
}

/// Lists and watches until the sink returns false or `give_up(failures, error)` returns
/// true. Errors are retried with back-off and logged once per streak.
pub fn run<T: Versioned>(
    client: &Client,
    target: &Target,
    mut sink: impl FnMut(Update<T>) -> bool,
    mut give_up: impl FnMut(u32, &KubeError) -> bool,
) -> Stopped {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(4));
    let mut streak = Streak::new(target.what);
    let mut version: Option<String> = None;
    loop {
        let step = match &version {
            None => {
                list(client, &format!("{}?{}", target.path, target.selector)).map(|(items, rv)| {
                    version = Some(rv);
                    (
                        sink(Update::Connected) && sink(Update::Listed(items)),
                        false,
                    )
                })
            }
            Some(rv) => watch(client, target, rv, &mut sink).map(|(latest, go_on, at_once)| {
                version = latest;
                (go_on, at_once)
            }),
        };
        match step {
            Ok((true, false)) => {
                streak.succeeded();
                backoff.reset();
            }
            Ok((true, true)) => {
                log::debug!("{}: closed at once; backing off", target.what);
                std::thread::sleep(backoff.next_delay());
            }
            Ok((false, _)) => return Stopped::ByOwner,
            Err(KubeError::Gone(_)) => {
                log::debug!("{}: resourceVersion expired, listing again", target.what);
                version = None;
            }
            Err(e) => {
                streak.failed(&e);
                if e.is_transient() && !sink(Update::Failed) {
                    return Stopped::ByOwner;
                }
                if give_up(streak.failures(), &e) {
                    return Stopped::GaveUp(e);
                }
                std::thread::sleep(e.pause(backoff.next_delay()));
            }
        }
    }
}

/// Lists a collection (`path?query`): the items and the list's resourceVersion.
pub fn list<T: Versioned>(
    client: &Client,
    path_and_query: &str,
) -> Result<(Vec<T>, String), KubeError> {
    let v = client.get(path_and_query)?;
    let rv = v
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .ok_or_else(|| KubeError::Decode("list without metadata.resourceVersion".into()))?
        .to_string();
    let items = v
        .get("items")
        .and_then(Value::as_array)
        .map(|items| items.iter().map(T::parse).collect::<Result<Vec<_>, _>>())
        .unwrap_or_else(|| Ok(Vec::new()))
        .map_err(KubeError::Decode)?;
    Ok((items, rv))
}

/// Streams one watch. Returns the resourceVersion to resume from (None: list again),
/// whether the owner wants more, and whether the stream ended at once.
fn watch<T: Versioned>(
    client: &Client,
    target: &Target,
    from: &str,
    sink: &mut impl FnMut(Update<T>) -> bool,
) -> Result<(Option<String>, bool, bool), KubeError> {
    let mut query = format!(
        "{}?{}&watch=true&allowWatchBookmarks=true&resourceVersion={}",
        target.path,
        target.selector,
        encode_query(from)
    );
    if let Some(t) = target.timeout {
        query += &format!("&timeoutSeconds={}", t.as_secs().max(1));
    }
    let body = client.stream(&query)?;
    let opened = std::time::Instant::now();
    if !sink(Update::Connected) {
        return Ok((Some(from.to_string()), false, false));
    }
    let mut reader = BufReader::new(body);
    let mut version = from.to_string();
    let mut line = String::new();
    let mut events = 0;
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            // The server closed the stream: resume from where we are.
            Ok(0) => {
                let at_once = closed_at_once(opened.elapsed(), events);
                return Ok((Some(version), true, at_once));
            }
            Ok(_) => {}
            Err(e) => {
                // An idle timeout is a normal end: nothing changed, reopen from `version`.
                let idle = e
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<ureq::Error>())
                    .is_some_and(|u| matches!(u, ureq::Error::Timeout(_)));
                log::debug!("{}: stream ended: {e}", target.what);
                return if idle || version != from {
                    Ok((Some(version), true, false))
                } else {
                    Err(KubeError::Transport(format!("{} stream: {e}", target.what)))
                };
            }
        }
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        events += 1;
        if client.traces_bodies() {
            log::info!(target: "api::body", "< {text}");
        }
        let event = WatchEvent::parse(text, T::parse).map_err(KubeError::Decode)?;
        let go_on = match event {
            WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                version = o.version().to_string();
                sink(Update::Changed(o))
            }
            WatchEvent::Deleted(o) => {
                version = o.version().to_string();
                sink(Update::Deleted(o))
            }
            WatchEvent::Bookmark(rv) => {
                if !rv.is_empty() {
                    version = rv;
                }
                true
            }
            WatchEvent::Error(status) if status.code == 410 => {
                return Err(KubeError::Gone(status.message));
            }
            WatchEvent::Error(status) => {
                return Err(KubeError::Status {
                    code: status.code,
                    message: status.message,
                });
            }
        };
        if !go_on {
            return Ok((Some(version), false, false));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_that_ends_at_once_without_events_is_backed_off() {
        assert!(closed_at_once(Duration::from_millis(5), 0));
        assert!(!closed_at_once(Duration::from_millis(5), 1), "it delivered");
        assert!(!closed_at_once(Duration::from_secs(300), 0), "a normal end");
    }
}
