//! Validated configuration.
//!
//! Everything the user can get wrong is checked here, once, before anything touches the
//! cluster: durations, the client-go timing rule, the election name, label keys, the pod
//! identity. The rest of the program never sees raw strings and has no config error paths.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

// `crate::config::format_duration` is what src/core/ and sensors.rs name today.
pub use crate::duration::{format_duration, parse_duration};

/// Where the service-account files live inside a pod.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// client-go's JitterFactor: candidates retry every RetryPeriod to (1 + 1.2) x RetryPeriod.
pub const JITTER_FACTOR: f64 = 1.2;

/// A configuration problem: one line naming the flag, the value and the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub flag: String,
    pub value: String,
    pub rule: String,
}

impl ConfigError {
    pub fn new(flag: &str, value: impl Into<String>, rule: impl Into<String>) -> Self {
        ConfigError {
            flag: flag.to_string(),
            value: value.into(),
            rule: rule.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}: {}", self.flag, self.rule)
        } else {
            write!(f, "{} {:?}: {}", self.flag, self.value, self.rule)
        }
    }
}

impl std::error::Error for ConfigError {}

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

/// The validated configuration of one sidecar.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Lease name and default label prefix.
    pub election_name: String,
    /// This pod's name: the Lease holder identity.
    pub pod_name: String,
    pub namespace: String,
    /// Label key carrying `true` on the leader and `false` on everyone else.
    pub leadership_label: String,
    /// Label key carrying `true` on ready, competing pods.
    pub participation_label: String,
    /// The leadership label's value on the leader (`true`) and on every other pod
    /// (`false`): `role=primary|replica` for Services that select by value.
    pub leader_value: String,
    pub follower_value: String,
    /// Pods in this zone (`topology.kubernetes.io/zone`) are preferred at equal priority.
    pub prefer_zone: Option<String>,
    /// How long a more preferred pod must have been ready before the leader hands over
    /// to it; None (`0`): never. Defaults to 30s.
    pub failback_after: Option<Duration>,
    /// How long a lease is valid after it was last seen changing. Defaults to 15s.
    pub lease_duration: Duration,
    /// How long the leader keeps acting as leader without a successful renewal. Defaults
    /// to 10s.
    pub renew_deadline: Duration,
    /// How often the leader renews and followers retry. Defaults to 2s.
    pub retry_period: Duration,
    /// How often the leader re-lists the pods to correct labels. Defaults to 5s.
    pub resync_period: Duration,
    /// `timeoutSeconds` asked for each watch; None lets the server choose (its
    /// --min-request-timeout). Defaults to 5m.
    pub watch_timeout: Option<Duration>,
    pub connection: Connection,
    /// Where the health, metrics and leader endpoints listen; None: off. Defaults to
    /// 0.0.0.0:8089.
    pub http_address: Option<std::net::SocketAddr>,
    /// A file kept holding `true` or `false`, for apps that read a shared volume.
    pub leader_file: Option<PathBuf>,
    /// 0: normal logs; 1: one line per API call; 2: plus bodies.
    pub verbosity: u8,
}

/// The default listen address of the HTTP endpoints.
pub const DEFAULT_HTTP_ADDRESS: &str = "0.0.0.0:8089";

/// The command line as typed, before validation (see `cli`).
#[derive(Debug, Default, Clone)]
pub struct RawArgs {
    pub election_name: Option<String>,
    pub pod_name: Option<String>,
    pub namespace: Option<String>,
    pub leadership_label: Option<String>,
    pub participation_label: Option<String>,
    pub leader_value: Option<String>,
    pub follower_value: Option<String>,
    pub prefer_zone: Option<String>,
    pub failback_after: Option<String>,
    pub lease_duration: Option<String>,
    pub renew_deadline: Option<String>,
    pub retry_period: Option<String>,
    pub resync_period: Option<String>,
    pub watch_timeout: Option<String>,
    pub server: Option<String>,
    pub token_file: Option<String>,
    pub ca_file: Option<String>,
    pub http_address: Option<String>,
    pub leader_file: Option<String>,
    pub verbosity: u8,
}

/// What `Config::build` may read from its surroundings; injected so tests control it.
pub struct Environment {
    pub var: Lookup,
    /// Reads a small file (namespace, hostname); None when absent.
    pub read_file: Lookup,
    /// Whether a file the sidecar will read later (token, CA) is there and readable: Ok,
    /// or the rule it breaks (`does not exist`, `is a directory, not a file`, ...).
    pub check_readable: FileCheck,
}

/// A name-to-value lookup (environment variable or file path).
pub type Lookup = Box<dyn Fn(&str) -> Option<String>>;

/// A check of one file path: Ok, or what is wrong with it.
pub type FileCheck = Box<dyn Fn(&Path) -> Result<(), String>>;

/// Ok when `path` is a file this process can open for reading; otherwise why not.
pub fn check_readable_file(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "does not exist".to_string(),
        _ => format!("cannot be read: {e}"),
    })?;
    if meta.is_dir() {
        return Err("is a directory, not a file".into());
    }
    std::fs::File::open(path)
        .map(drop)
        .map_err(|e| format!("cannot be read: {e}"))
}

impl Environment {
    /// The real process environment and filesystem.
    pub fn system() -> Self {
        Environment {
            var: Box::new(|k| std::env::var(k).ok().filter(|v| !v.is_empty())),
            read_file: Box::new(|p| std::fs::read_to_string(p).ok()),
            check_readable: Box::new(check_readable_file),
        }
    }
}

impl Config {
    /// Validates raw arguments, filling defaults from the environment.
    pub fn build(raw: RawArgs, env: &Environment) -> Result<Config, ConfigError> {
        let election_name = raw
            .election_name
            .ok_or_else(|| ConfigError::new("--election-name", "", "is required"))?;
        check_dns_subdomain(&election_name).map_err(|rule| {
            ConfigError::new(
                "--election-name",
                &election_name,
                format!("must be a valid Lease name and label prefix: {rule}"),
            )
        })?;

        let pod_name = raw
            .pod_name
            .or_else(|| (env.var)("POD_NAME"))
            .or_else(|| (env.read_file)("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()))
            .or_else(|| (env.var)("HOSTNAME"))
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                ConfigError::new(
                    "--pod-name",
                    "",
                    "is required: set it, or POD_NAME through the downward API",
                )
            })?;
        check_dns_subdomain(&pod_name)
            .map_err(|rule| ConfigError::new("--pod-name", &pod_name, rule))?;

        let namespace = raw
            .namespace
            .or_else(|| (env.var)("POD_NAMESPACE"))
            .or_else(|| {
                (env.read_file)(&format!("{SERVICE_ACCOUNT_DIR}/namespace"))
                    .map(|n| n.trim().to_string())
            })
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                ConfigError::new(
                    "--namespace",
                    "",
                    "is required: set it, or POD_NAMESPACE through the downward API",
                )
            })?;
        check_dns_label(&namespace)
            .map_err(|rule| ConfigError::new("--namespace", &namespace, rule))?;

        let leadership_label = raw
            .leadership_label
            .unwrap_or_else(|| format!("{election_name}/is-leader"));
        check_qualified_name(&leadership_label)
            .map_err(|rule| ConfigError::new("--leadership-label", &leadership_label, rule))?;
        let participation_label = raw
            .participation_label
            .unwrap_or_else(|| format!("{election_name}/participant"));
        check_qualified_name(&participation_label).map_err(|rule| {
            ConfigError::new("--participation-label", &participation_label, rule)
        })?;
        if leadership_label == participation_label {
            return Err(ConfigError::new(
                "--participation-label",
                &participation_label,
                "must differ from --leadership-label",
            ));
        }
        let leader_value = raw.leader_value.unwrap_or_else(|| "true".into());
        check_label_value(&leader_value)
            .map_err(|rule| ConfigError::new("--leader-value", &leader_value, rule))?;
        let follower_value = raw.follower_value.unwrap_or_else(|| "false".into());
        check_label_value(&follower_value)
            .map_err(|rule| ConfigError::new("--follower-value", &follower_value, rule))?;
        if leader_value == follower_value {
            return Err(ConfigError::new(
                "--follower-value",
                &follower_value,
                "must differ from --leader-value",
            ));
        }

        let duration = |flag: &str, value: Option<String>, default: &str| {
            let text = value.unwrap_or_else(|| default.to_string());
            match parse_duration(&text) {
                Ok(d) if d.is_zero() => Err(ConfigError::new(flag, &text, "must be positive")),
                Ok(d) => Ok(d),
                Err(rule) => Err(ConfigError::new(flag, &text, rule)),
            }
        };
        let lease_duration = duration("--lease-duration", raw.lease_duration, "15s")?;
        let renew_deadline = duration("--renew-deadline", raw.renew_deadline, "10s")?;
        let retry_period = duration("--retry-period", raw.retry_period, "2s")?;
        let resync_period = duration("--resync-period", raw.resync_period, "5s")?;
        let watch_timeout = match raw.watch_timeout.as_deref().unwrap_or("5m") {
            "0" | "0s" => None,
            text => {
                let d = parse_duration(text)
                    .map_err(|rule| ConfigError::new("--watch-timeout", text, rule))?;
                if d < Duration::from_secs(1) {
                    return Err(ConfigError::new(
                        "--watch-timeout",
                        text,
                        "must be at least 1s, or 0 to let the server choose",
                    ));
                }
                Some(d)
            }
        };
        let failback_after = match raw.failback_after.as_deref().unwrap_or("30s") {
            "0" | "0s" => None,
            text => Some(
                parse_duration(text)
                    .map_err(|rule| ConfigError::new("--failback-after", text, rule))?,
            ),
        };
        let prefer_zone = raw.prefer_zone.filter(|z| !z.is_empty());
        if let Some(z) = &prefer_zone {
            check_label_value(z).map_err(|rule| ConfigError::new("--prefer-zone", z, rule))?;
        }
        if lease_duration.as_millis() % 1000 != 0 {
            return Err(ConfigError::new(
                "--lease-duration",
                format_duration(lease_duration),
                "must be whole seconds (the Lease stores leaseDurationSeconds)",
            ));
        }
        if lease_duration <= renew_deadline {
            return Err(ConfigError::new(
                "--lease-duration",
                format_duration(lease_duration),
                format!(
                    "must be greater than --renew-deadline ({})",
                    format_duration(renew_deadline)
                ),
            ));
        }
        if renew_deadline.as_secs_f64() <= JITTER_FACTOR * retry_period.as_secs_f64() {
            return Err(ConfigError::new(
                "--renew-deadline",
                format_duration(renew_deadline),
                format!(
                    "must be greater than 1.2 x --retry-period ({})",
                    format_duration(retry_period)
                ),
            ));
        }

        let connection = connection(raw.server, raw.token_file, raw.ca_file, env)?;
        let http_address = match raw.http_address.as_deref().unwrap_or(DEFAULT_HTTP_ADDRESS) {
            "off" => None,
            text => {
                let full = if text.starts_with(':') {
                    format!("0.0.0.0{text}")
                } else {
                    text.to_string()
                };
                Some(full.parse().map_err(|_| {
                    ConfigError::new(
                        "--http-address",
                        text,
                        "must be host:port (like 0.0.0.0:8089 or :8089), or off",
                    )
                })?)
            }
        };
        let leader_file = match raw.leader_file {
            Some(f) if f.is_empty() || f.ends_with('/') => {
                return Err(ConfigError::new(
                    "--leader-file",
                    f,
                    "must be a file path, like /shared/is-leader",
                ))
            }
            other => other.map(PathBuf::from),
        };
        Ok(Config {
            election_name,
            pod_name,
            namespace,
            leadership_label,
            participation_label,
            leader_value,
            follower_value,
            prefer_zone,
            failback_after,
            lease_duration,
            renew_deadline,
            retry_period,
            resync_period,
            watch_timeout,
            connection,
            http_address,
            leader_file,
            verbosity: raw.verbosity,
        })
    }
}

fn connection(
    server: Option<String>,
    token_file: Option<String>,
    ca_file: Option<String>,
    env: &Environment,
) -> Result<Connection, ConfigError> {
    let in_cluster = server.is_none();
    let server = match server {
        Some(s) => s,
        None => {
            let host = (env.var)("KUBERNETES_SERVICE_HOST").ok_or_else(|| {
                ConfigError::new(
                    "--server",
                    "",
                    "is required outside a pod (KUBERNETES_SERVICE_HOST is not set)",
                )
            })?;
            let port = (env.var)("KUBERNETES_SERVICE_PORT").unwrap_or_else(|| "443".into());
            // An IPv6 service address needs brackets in a URL.
            if host.contains(':') {
                format!("https://[{host}]:{port}")
            } else {
                format!("https://{host}:{port}")
            }
        }
    };
    let server = server.trim_end_matches('/').to_string();
    let (is_https, host_port) = if let Some(rest) = server.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = server.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(ConfigError::new(
            "--server",
            &server,
            "must start with https:// or http://",
        ));
    };
    if host_port.is_empty() || host_port.contains('/') {
        return Err(ConfigError::new(
            "--server",
            &server,
            "must be scheme://host[:port] without a path",
        ));
    }
    // Each file with whether it is the in-cluster default (the flag was not given).
    let sa = |f: &str| Some((format!("{SERVICE_ACCOUNT_DIR}/{f}"), true));
    let token_file = match token_file {
        Some(t) if t.is_empty() => None,
        Some(t) => Some((t, false)),
        None if in_cluster => sa("token"),
        None => None,
    };
    let ca_file = match ca_file {
        Some(c) => Some((c, false)),
        None if is_https => sa("ca.crt"),
        None => None,
    };
    if let (false, Some((c, _))) = (is_https, &ca_file) {
        return Err(ConfigError::new(
            "--ca-file",
            c,
            "only applies to an https:// --server",
        ));
    }
    // Both are read only once the sidecar runs (the token again at every rotation): a
    // path that cannot work is a bad value, reported now like any other.
    for (flag, file) in [("--token-file", &token_file), ("--ca-file", &ca_file)] {
        if let Some((path, default)) = file {
            (env.check_readable)(Path::new(path)).map_err(|rule| {
                let rule = if *default {
                    format!(
                        "{rule} ({flag} not given: this is the in-cluster default, from the \
                         pod's service-account token mount; set {flag}, or mount the token)"
                    )
                } else {
                    rule
                };
                ConfigError::new(flag, path, rule)
            })?;
        }
    }
    let (token_file, ca_file) = (token_file.map(|t| t.0), ca_file.map(|c| c.0));
    Ok(Connection {
        server,
        token_file: token_file.map(PathBuf::from),
        ca_file: ca_file.map(PathBuf::from),
    })
}

/// RFC 1123 DNS label: at most 63 lowercase alphanumerics or '-', alphanumeric at both ends.
pub fn check_dns_label(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err("must be a DNS label: at most 63 lowercase letters, digits or '-', starting and ending with a letter or digit".into())
    }
}

/// RFC 1123 DNS subdomain: at most 253 characters, dot-separated DNS labels.
pub fn check_dns_subdomain(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err("must be a DNS subdomain: lowercase letters, digits, '-' and '.', at most 253 characters, starting and ending with a letter or digit".into())
    }
}

/// Kubernetes qualified name (label or annotation key): `[prefix/]name`, the prefix a DNS
/// subdomain, the name at most 63 characters of `[A-Za-z0-9._-]`, alphanumeric at both ends.
pub fn check_qualified_name(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        check_dns_subdomain(p).map_err(|rule| format!("label key prefix {rule}"))?;
    }
    if is_name(name) {
        Ok(())
    } else {
        Err("must be a label key [prefix/]name: the name at most 63 characters of letters, digits, '-', '_' or '.', starting and ending with a letter or digit".into())
    }
}

/// A label value, not empty here: at most 63 characters of `[A-Za-z0-9._-]`,
/// alphanumeric at both ends.
pub fn check_label_value(value: &str) -> Result<(), String> {
    if is_name(value) {
        Ok(())
    } else {
        Err("must be a label value: 1 to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit".into())
    }
}

/// The name part of a qualified name, or a non-empty label value.
fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> Environment {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Environment {
            var: Box::new(move |k| vars.get(k).cloned()),
            read_file: Box::new(|_| None),
            check_readable: Box::new(|_| Ok(())),
        }
    }

    fn raw(name: &str) -> RawArgs {
        RawArgs {
            election_name: Some(name.into()),
            server: Some("https://127.0.0.1:6443".into()),
            ..Default::default()
        }
    }

    fn pod_env() -> Environment {
        env(&[("POD_NAME", "web-0"), ("POD_NAMESPACE", "prod")])
    }

    #[test]
    fn defaults_follow_the_spec() {
        let c = Config::build(raw("my-app"), &pod_env()).unwrap();
        assert_eq!(c.pod_name, "web-0");
        assert_eq!(c.namespace, "prod");
        assert_eq!(c.leadership_label, "my-app/is-leader");
        assert_eq!(c.participation_label, "my-app/participant");
        assert_eq!(c.lease_duration, Duration::from_secs(15));
        assert_eq!(c.renew_deadline, Duration::from_secs(10));
        assert_eq!(c.retry_period, Duration::from_secs(2));
        assert_eq!(c.resync_period, Duration::from_secs(5));
        assert_eq!(c.connection.token_file, None);
        assert_eq!(
            c.connection.ca_file.as_deref(),
            Some(std::path::Path::new(
                "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
            ))
        );
    }

    #[test]
    fn label_values_of_the_users_choosing() {
        let c = Config::build(raw("my-app"), &pod_env()).unwrap();
        assert_eq!(
            (c.leader_value.as_str(), c.follower_value.as_str()),
            ("true", "false")
        );
        let mut r = raw("my-app");
        r.leader_value = Some("primary".into());
        r.follower_value = Some("replica".into());
        let c = Config::build(r, &pod_env()).unwrap();
        assert_eq!(
            (c.leader_value.as_str(), c.follower_value.as_str()),
            ("primary", "replica")
        );
        for (leader, follower, flag) in [
            ("", "replica", "--leader-value"),
            ("-primary", "replica", "--leader-value"),
            ("primary", "a/b", "--follower-value"),
            ("same", "same", "--follower-value"),
        ] {
            let mut r = raw("my-app");
            r.leader_value = Some(leader.into());
            r.follower_value = Some(follower.into());
            let e = Config::build(r, &pod_env()).unwrap_err().to_string();
            assert!(e.starts_with(flag), "{leader}/{follower}: {e}");
        }
    }

    #[test]
    fn in_cluster_connection_from_service_env() {
        let e = env(&[
            ("POD_NAME", "a"),
            ("POD_NAMESPACE", "b"),
            ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
        ]);
        let mut r = raw("x");
        r.server = None;
        let c = Config::build(r, &e).unwrap();
        assert_eq!(c.connection.server, "https://10.0.0.1:443");
        assert!(c
            .connection
            .token_file
            .unwrap()
            .ends_with("serviceaccount/token"));

        let e6 = env(&[
            ("POD_NAME", "a"),
            ("POD_NAMESPACE", "b"),
            ("KUBERNETES_SERVICE_HOST", "fd00::1"),
        ]);
        let mut r = raw("x");
        r.server = None;
        assert_eq!(
            Config::build(r, &e6).unwrap().connection.server,
            "https://[fd00::1]:443"
        );
    }

    #[test]
    fn plain_http_for_kubectl_proxy() {
        let mut r = raw("x");
        r.server = Some("http://127.0.0.1:8001/".into());
        let c = Config::build(r, &pod_env()).unwrap();
        assert_eq!(c.connection.server, "http://127.0.0.1:8001");
        assert_eq!(c.connection.token_file, None);
        assert_eq!(c.connection.ca_file, None);
    }

    #[test]
    fn namespace_from_service_account_file() {
        let e = Environment {
            var: Box::new(|k| (k == "POD_NAME").then(|| "p".to_string())),
            read_file: Box::new(|p| p.ends_with("/namespace").then(|| "team-a\n".to_string())),
            check_readable: Box::new(|_| Ok(())),
        };
        assert_eq!(Config::build(raw("x"), &e).unwrap().namespace, "team-a");
    }

    fn err(r: RawArgs) -> String {
        Config::build(r, &pod_env()).unwrap_err().to_string()
    }

    #[test]
    fn timing_rule_of_client_go() {
        let mut r = raw("x");
        r.lease_duration = Some("10s".into());
        r.renew_deadline = Some("10s".into());
        assert_eq!(
            err(r),
            "--lease-duration \"10s\": must be greater than --renew-deadline (10s)"
        );
        let mut r = raw("x");
        r.renew_deadline = Some("2s".into());
        r.retry_period = Some("2s".into());
        assert_eq!(
            err(r),
            "--renew-deadline \"2s\": must be greater than 1.2 x --retry-period (2s)"
        );
        let mut r = raw("x");
        r.lease_duration = Some("3s".into());
        r.renew_deadline = Some("2s".into());
        r.retry_period = Some("500ms".into());
        assert!(Config::build(r, &pod_env()).is_ok());
    }

    #[test]
    fn bad_values_name_flag_value_and_rule() {
        let mut r = raw("x");
        r.retry_period = Some("fast".into());
        let e = err(r);
        assert!(
            e.starts_with("--retry-period \"fast\": must be a duration"),
            "{e}"
        );

        let mut r = raw("x");
        r.lease_duration = Some("0".into());
        assert_eq!(err(r), "--lease-duration \"0\": must be positive");

        let mut r = raw("x");
        r.lease_duration = Some("15500ms".into());
        assert!(err(r).contains("whole seconds"));

        let e = err(raw("My_App"));
        assert!(
            e.starts_with("--election-name \"My_App\": must be a valid Lease name"),
            "{e}"
        );

        let mut r = raw("x");
        r.leadership_label = Some("example.com/-bad".into());
        assert!(err(r).starts_with("--leadership-label \"example.com/-bad\""));

        let mut r = raw("x");
        r.participation_label = Some("x/is-leader".into());
        assert!(err(r).contains("must differ"));

        let mut r = raw("x");
        r.server = Some("ftp://host".into());
        assert!(err(r).starts_with("--server \"ftp://host\""));

        let r = RawArgs::default();
        assert_eq!(err(r), "--election-name: is required");
    }

    #[test]
    fn missing_identity_is_reported() {
        let e = env(&[]);
        let c = Config::build(raw("x"), &e).unwrap_err();
        assert_eq!(c.flag, "--pod-name");
        let e = env(&[("POD_NAME", "p")]);
        let c = Config::build(raw("x"), &e).unwrap_err();
        assert_eq!(c.flag, "--namespace");
    }

    #[test]
    fn http_address_forms() {
        let c = Config::build(raw("x"), &pod_env()).unwrap();
        assert_eq!(c.http_address, Some("0.0.0.0:8089".parse().unwrap()));
        let mut r = raw("x");
        r.http_address = Some(":9000".into());
        assert_eq!(
            Config::build(r, &pod_env()).unwrap().http_address,
            Some("0.0.0.0:9000".parse().unwrap())
        );
        let mut r = raw("x");
        r.http_address = Some("off".into());
        assert_eq!(Config::build(r, &pod_env()).unwrap().http_address, None);
        let mut r = raw("x");
        r.http_address = Some("localhost".into());
        assert!(err(r).starts_with("--http-address \"localhost\""));
    }

    /// An environment in which only the files in `present` exist, and `dir` is a folder.
    fn files(present: &'static [&'static str], dir: &'static str) -> Environment {
        let mut e = env(&[
            ("POD_NAME", "a"),
            ("POD_NAMESPACE", "b"),
            ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
        ]);
        e.check_readable = Box::new(move |p: &Path| {
            let p = p.to_str().unwrap();
            if p == dir {
                Err("is a directory, not a file".into())
            } else if present.contains(&p) {
                Ok(())
            } else {
                Err("does not exist".into())
            }
        });
        e
    }

    #[test]
    fn token_and_ca_files_must_be_readable() {
        let mut r = raw("x");
        r.ca_file = Some("/etc/ca.pem".into());
        r.token_file = Some("/etc/token".into());
        let both = files(&["/etc/ca.pem", "/etc/token"], "/etc");
        assert!(Config::build(r.clone(), &both).is_ok());

        let no_ca = files(&["/etc/token"], "/etc");
        assert_eq!(
            Config::build(r.clone(), &no_ca).unwrap_err().to_string(),
            "--ca-file \"/etc/ca.pem\": does not exist"
        );
        let no_token = files(&["/etc/ca.pem"], "/etc");
        assert_eq!(
            Config::build(r.clone(), &no_token).unwrap_err().to_string(),
            "--token-file \"/etc/token\": does not exist"
        );
        r.ca_file = Some("/etc".into());
        assert_eq!(
            Config::build(r, &both).unwrap_err().to_string(),
            "--ca-file \"/etc\": is a directory, not a file"
        );
    }

    #[test]
    fn missing_in_cluster_defaults_name_the_default_path() {
        let mut r = raw("x");
        r.server = None;
        let e = Config::build(r.clone(), &files(&[], "/")).unwrap_err();
        assert_eq!(e.flag, "--token-file");
        assert_eq!(e.value, format!("{SERVICE_ACCOUNT_DIR}/token"));
        assert!(e.rule.starts_with("does not exist"), "{e}");
        assert!(e.rule.contains("in-cluster default"), "{e}");

        let only_token = files(
            &["/var/run/secrets/kubernetes.io/serviceaccount/token"],
            "/",
        );
        let e = Config::build(r, &only_token).unwrap_err();
        assert_eq!(e.flag, "--ca-file");
        assert_eq!(e.value, format!("{SERVICE_ACCOUNT_DIR}/ca.crt"));
        assert!(e.rule.contains("in-cluster default"), "{e}");

        // `--token-file=` (empty) turns auth off, so nothing is checked.
        let mut r = raw("x");
        r.server = Some("http://127.0.0.1:8001".into());
        r.token_file = Some(String::new());
        assert!(Config::build(r, &files(&[], "/")).is_ok());
    }

    #[test]
    fn system_file_check() {
        let dir = std::env::temp_dir();
        assert_eq!(
            check_readable_file(&dir),
            Err("is a directory, not a file".into())
        );
        assert_eq!(
            check_readable_file(&dir.join("leader-labeler-no-such-file")),
            Err("does not exist".into())
        );
        assert_eq!(check_readable_file(Path::new("/proc/self/status")), Ok(()));
    }

    #[test]
    fn qualified_names() {
        for ok in ["is-leader", "a/b", "db.example.com/primary", "x/A_b.c-9"] {
            assert!(check_qualified_name(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(64);
        for bad in [
            "",
            "/x",
            "x/",
            "Example.com/x",
            "a/b/c",
            "-a",
            "a-",
            long.as_str(),
        ] {
            assert!(check_qualified_name(bad).is_err(), "{bad}");
        }
    }
}
