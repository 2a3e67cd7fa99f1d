//! Errors of the API layer. The controller branches on Conflict, NotFound, Forbidden and
//! Gone; everything transient is retried with back-off.

use std::fmt;
use std::time::Duration;

/// The longest `Retry-After` pause honoured: a server that asks for more is asked again
/// after this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeError {
    /// 409: someone else wrote first (stale resourceVersion, or the object already exists).
    Conflict(String),
    /// 404.
    NotFound(String),
    /// 403: RBAC does not allow the call. The message names the verb and resource.
    Forbidden(String),
    /// 401 even after re-reading the token file.
    Unauthorized(String),
    /// 410: the resourceVersion a watch asked for is too old; list again.
    Gone(String),
    /// Any other HTTP status (429, 5xx, 422...).
    Status { code: u16, message: String },
    /// 429 or 5xx with a `Retry-After` header: the server asks for this pause before the
    /// next call (capped at `MAX_RETRY_AFTER`).
    Busy {
        code: u16,
        message: String,
        retry_after: Duration,
    },
    /// Connection refused, TLS failure, timeout, broken stream.
    Transport(String),
    /// The API server's certificate is not signed by a CA in the CA file (retried: the
    /// file is re-read, as clusters rotate it).
    Untrusted(String),
    /// The server answered something that is not the JSON we expected.
    Decode(String),
    /// Local setup: unreadable CA or token file, bad URL.
    Setup(String),
}

impl KubeError {
    /// Worth retrying after a pause: the server or the network may recover.
    pub fn is_transient(&self) -> bool {
        match self {
            KubeError::Transport(_)
            | KubeError::Untrusted(_)
            | KubeError::Unauthorized(_)
            | KubeError::Decode(_)
            | KubeError::Busy { .. } => true,
            KubeError::Status { code, .. } => *code == 429 || *code >= 500,
            _ => false,
        }
    }

    /// The pause the server asked for, if it asked (honoured as client-go does).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            KubeError::Busy { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// The pause before the next call after this error: `backoff`, or the server's
    /// Retry-After if it asked for longer.
    pub fn pause(&self, backoff: Duration) -> Duration {
        backoff.max(self.retry_after().unwrap_or_default())
    }

    /// A short word for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            KubeError::Conflict(_) => "conflict",
            KubeError::NotFound(_) => "not found",
            KubeError::Forbidden(_) => "forbidden",
            KubeError::Unauthorized(_) => "unauthorized",
            KubeError::Gone(_) => "gone",
            KubeError::Status { .. } | KubeError::Busy { .. } => "server error",
            KubeError::Transport(_) => "unreachable",
            KubeError::Untrusted(_) => "untrusted certificate",
            KubeError::Decode(_) => "bad response",
            KubeError::Setup(_) => "setup",
        }
    }
}

impl fmt::Display for KubeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KubeError::Conflict(m) => write!(f, "conflict: {m}"),
            KubeError::NotFound(m) => write!(f, "not found: {m}"),
            KubeError::Forbidden(m) => write!(f, "forbidden: {m}"),
            KubeError::Unauthorized(m) => write!(f, "unauthorized (is the token valid?): {m}"),
            KubeError::Gone(m) => write!(f, "gone: {m}"),
            KubeError::Status { code, message } | KubeError::Busy { code, message, .. } => {
                write!(f, "HTTP {code}: {message}")
            }
            KubeError::Transport(m) => write!(f, "API server unreachable: {m}"),
            KubeError::Untrusted(m) => write!(
                f,
                "the API server's certificate is not signed by the CA file's: {m}"
            ),
            KubeError::Decode(m) => write!(f, "unexpected response: {m}"),
            KubeError::Setup(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for KubeError {}
