//! Validated configuration.
//!
//! Everything the user can get wrong is checked here, once, before anything touches the
//! cluster: durations, the client-go timing rule, the election name, label keys, the pod
//! identity. The rest of the program never sees raw strings and has no config error paths:
//! it takes its part from `Config` (`client_options`, `core_settings`).
//!
//! The flags, their defaults and help are in `flags`; Kubernetes' naming rules in
//! `names`; what is read from the pod when a flag is not given in `environment`.

mod environment;
mod names;

pub use crate::flags::RawArgs;
pub use crate::kube::Connection;
pub use environment::{check_readable_file, Environment, FileCheck, Lookup, SERVICE_ACCOUNT_DIR};

use crate::core::labels::Keys;
use crate::core::Settings;
use crate::duration::{format_duration, parse_duration};
use crate::flags::*;
use crate::kube::ClientOptions;
use names::{check_dns_label, check_dns_subdomain, check_label_value, check_qualified_name};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// client-go's JitterFactor: candidates retry every RetryPeriod to (1 + 1.2) x RetryPeriod.
pub const JITTER_FACTOR: f64 = 1.2;

/// The longest a watch may stay silent before it is taken for a dead connection (a
/// half-open TCP connection, a stalled proxy). kube-apiserver's watch cache sends a
/// bookmark to watchers that allow them about once a minute, so a live idle watch is
/// never cut by this (tests/outage.rs `stalled_watch_is_found_and_idle_ones_are_kept`).
pub const WATCH_SILENCE: Duration = Duration::from_secs(75);

/// A configuration problem: one line naming the flag, the value and the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub flag: &'static str,
    pub value: String,
    pub rule: String,
}

impl ConfigError {
    pub fn new(flag: &Flag, value: impl Into<String>, rule: impl Into<String>) -> Self {
        ConfigError {
            flag: flag.name,
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

/// The validated configuration of one sidecar. Each field comes from the flag named in
/// its comment; the defaults are in `flags`.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `--election-name`: Lease name and default label prefix.
    pub election_name: String,
    /// `--pod-name`: the Lease holder identity.
    pub pod_name: String,
    /// `--namespace`: of this pod, the others and the Lease.
    pub namespace: String,
    /// `--leadership-label`: carries `leader_value` on the leader, `follower_value` on
    /// every other pod.
    pub leadership_label: String,
    /// `--participation-label`: carries `true` on ready, competing pods.
    pub participation_label: String,
    /// `--leader-value` and `--follower-value`: `role=primary|replica` for Services that
    /// select by value.
    pub leader_value: String,
    pub follower_value: String,
    /// `--prefer-zone`: pods in this `topology.kubernetes.io/zone` are preferred at equal
    /// priority.
    pub prefer_zone: Option<String>,
    /// `--failback-after`: how long a more preferred pod must have been ready before the
    /// leader hands over to it; None (`0`): never.
    pub failback_after: Option<Duration>,
    /// `--lease-duration`: how long a lease is valid after it was last seen changing.
    pub lease_duration: Duration,
    /// `--renew-deadline`: how long the leader keeps acting as leader without a
    /// successful renewal.
    pub renew_deadline: Duration,
    /// `--retry-period`: how often the leader renews and followers retry.
    pub retry_period: Duration,
    /// `--resync-period`: how often the leader re-lists the pods to correct labels.
    pub resync_period: Duration,
    /// `--watch-timeout`: `timeoutSeconds` asked for each watch; None lets the server
    /// choose (its --min-request-timeout).
    pub watch_timeout: Option<Duration>,
    /// `--server`, `--token-file`, `--ca-file`.
    pub connection: Connection,
    /// `--http-address`: where the health, metrics and leader endpoints listen; None: off.
    pub http_address: Option<std::net::SocketAddr>,
    /// `--leader-file`: kept holding `true` or `false`, for apps that read a shared volume.
    pub leader_file: Option<PathBuf>,
    /// `-v`: 0 normal logs; 1 one line per API call; 2 plus bodies.
    pub verbosity: u8,
}

/// `text` as the value of `flag` if it passes `check`; else the error naming all three.
fn checked(
    flag: &Flag,
    text: String,
    check: fn(&str) -> Result<(), String>,
) -> Result<String, ConfigError> {
    match check(&text) {
        Ok(()) => Ok(text),
        Err(rule) => Err(ConfigError::new(flag, text, rule)),
    }
}

/// A duration flag that must be positive.
fn positive(raw: &RawArgs, flag: &Flag) -> Result<Duration, ConfigError> {
    let text = raw.value(flag).unwrap_or_default();
    match parse_duration(text) {
        Ok(d) if d.is_zero() => Err(ConfigError::new(flag, text, "must be positive")),
        Ok(d) => Ok(d),
        Err(rule) => Err(ConfigError::new(flag, text, rule)),
    }
}

impl Config {
    /// Validates raw arguments, filling defaults from the flag table and the environment.
    pub fn build(raw: RawArgs, env: &Environment) -> Result<Config, ConfigError> {
        let raw = &raw;
        let election_name = raw
            .given(&ELECTION_NAME)
            .ok_or_else(|| ConfigError::new(&ELECTION_NAME, "", "is required"))?
            .to_string();
        check_dns_subdomain(&election_name).map_err(|rule| {
            ConfigError::new(
                &ELECTION_NAME,
                &election_name,
                format!("must be a valid Lease name and label prefix: {rule}"),
            )
        })?;
        let pod_name = environment::pod_name(raw.given(&POD_NAME), env)?;
        let pod_name = checked(&POD_NAME, pod_name, check_dns_subdomain)?;
        let namespace = environment::namespace(raw.given(&NAMESPACE), env)?;
        let namespace = checked(&NAMESPACE, namespace, check_dns_label)?;

        let label = |flag: &Flag, name: &str| {
            let key = raw
                .given(flag)
                .map_or_else(|| format!("{election_name}/{name}"), String::from);
            checked(flag, key, check_qualified_name)
        };
        let leadership_label = label(&LEADERSHIP_LABEL, "is-leader")?;
        let participation_label = label(&PARTICIPATION_LABEL, "participant")?;
        if leadership_label == participation_label {
            return Err(ConfigError::new(
                &PARTICIPATION_LABEL,
                &participation_label,
                format!("must differ from {}", LEADERSHIP_LABEL.name),
            ));
        }
        let value = |flag: &Flag| {
            let text = raw.value(flag).unwrap_or_default().to_string();
            checked(flag, text, check_label_value)
        };
        let leader_value = value(&LEADER_VALUE)?;
        let follower_value = value(&FOLLOWER_VALUE)?;
        if leader_value == follower_value {
            return Err(ConfigError::new(
                &FOLLOWER_VALUE,
                &follower_value,
                format!("must differ from {}", LEADER_VALUE.name),
            ));
        }

        let lease_duration = positive(raw, &LEASE_DURATION)?;
        let renew_deadline = positive(raw, &RENEW_DEADLINE)?;
        let retry_period = positive(raw, &RETRY_PERIOD)?;
        let resync_period = positive(raw, &RESYNC_PERIOD)?;
        let watch_timeout = match raw.value(&WATCH_TIMEOUT).unwrap_or_default() {
            "0" | "0s" => None,
            text => {
                let d = parse_duration(text)
                    .map_err(|rule| ConfigError::new(&WATCH_TIMEOUT, text, rule))?;
                if d < Duration::from_secs(1) {
                    return Err(ConfigError::new(
                        &WATCH_TIMEOUT,
                        text,
                        "must be at least 1s, or 0 to let the server choose",
                    ));
                }
                Some(d)
            }
        };
        let failback_after = match raw.value(&FAILBACK_AFTER).unwrap_or_default() {
            "0" | "0s" => None,
            text => Some(
                parse_duration(text)
                    .map_err(|rule| ConfigError::new(&FAILBACK_AFTER, text, rule))?,
            ),
        };
        let prefer_zone = match raw.given(&PREFER_ZONE) {
            None | Some("") => None,
            Some(z) => Some(checked(&PREFER_ZONE, z.to_string(), check_label_value)?),
        };
        if lease_duration.as_millis() % 1000 != 0 {
            return Err(ConfigError::new(
                &LEASE_DURATION,
                format_duration(lease_duration),
                "must be whole seconds (the Lease stores leaseDurationSeconds)",
            ));
        }
        if lease_duration <= renew_deadline {
            return Err(ConfigError::new(
                &LEASE_DURATION,
                format_duration(lease_duration),
                format!(
                    "must be greater than {} ({})",
                    RENEW_DEADLINE.name,
                    format_duration(renew_deadline)
                ),
            ));
        }
        if renew_deadline.as_secs_f64() <= JITTER_FACTOR * retry_period.as_secs_f64() {
            return Err(ConfigError::new(
                &RENEW_DEADLINE,
                format_duration(renew_deadline),
                format!(
                    "must be greater than {JITTER_FACTOR} x {} ({})",
                    RETRY_PERIOD.name,
                    format_duration(retry_period)
                ),
            ));
        }

        let connection = environment::connection(
            raw.given(&SERVER),
            raw.given(&TOKEN_FILE),
            raw.given(&CA_FILE),
            env,
        )?;
        let http_address = match raw.value(&HTTP_ADDRESS).unwrap_or_default() {
            "off" => None,
            text => {
                let full = if text.starts_with(':') {
                    format!("0.0.0.0{text}")
                } else {
                    text.to_string()
                };
                Some(full.parse().map_err(|_| {
                    ConfigError::new(
                        &HTTP_ADDRESS,
                        text,
                        "must be host:port (like 0.0.0.0:8089 or :8089), or off",
                    )
                })?)
            }
        };
        let leader_file = match raw.given(&LEADER_FILE) {
            Some(f) if f.is_empty() || f.ends_with('/') => {
                return Err(ConfigError::new(
                    &LEADER_FILE,
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

    /// What the API client needs besides the connection (`on_response` is left for `main`
    /// to connect). A renewal must not hang past the renew deadline, so a call gets half
    /// of it (1 to 10 s). A watch silent for longer than `WATCH_SILENCE`, or than the
    /// server's own timeout plus 30 s, is dead.
    pub fn client_options(&self) -> ClientOptions {
        ClientOptions {
            call_timeout: (self.renew_deadline / 2)
                .clamp(Duration::from_secs(1), Duration::from_secs(10)),
            watch_idle_timeout: self
                .watch_timeout
                .map_or(WATCH_SILENCE, |t| t + Duration::from_secs(30))
                .min(WATCH_SILENCE),
            verbosity: self.verbosity,
            identity: self.pod_name.clone(),
            on_response: None,
        }
    }

    /// The election core's settings.
    pub fn core_settings(&self) -> Settings {
        Settings {
            me: self.pod_name.clone(),
            keys: Keys {
                leader: self.leadership_label.clone(),
                participant: self.participation_label.clone(),
                election: self.election_name.clone(),
                leader_value: self.leader_value.clone(),
                follower_value: self.follower_value.clone(),
            },
            lease_duration: self.lease_duration,
            renew_deadline: self.renew_deadline,
            retry_period: self.retry_period,
            resync_period: self.resync_period,
            prefer_zone: self.prefer_zone.clone(),
            failback_after: self.failback_after,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(name: &str) -> RawArgs {
        RawArgs::default()
            .with(&ELECTION_NAME, name)
            .with(&SERVER, "https://127.0.0.1:6443")
    }

    fn pod_env() -> Environment {
        Environment::fake(&[("POD_NAME", "web-0"), ("POD_NAMESPACE", "prod")])
    }

    fn err(r: RawArgs) -> String {
        Config::build(r, &pod_env()).unwrap_err().to_string()
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
        assert_eq!(c.failback_after, Some(Duration::from_secs(30)));
        assert_eq!(c.watch_timeout, Some(Duration::from_secs(300)));
        assert_eq!(c.prefer_zone, None);
        assert_eq!(c.leader_file, None);
        assert_eq!(c.connection.token_file, None);
        assert_eq!(
            c.connection.ca_file.as_deref(),
            Some(std::path::Path::new(
                "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
            ))
        );
    }

    #[test]
    fn derived_label_defaults_are_what_the_table_says() {
        let c = Config::build(raw("my-app"), &pod_env()).unwrap();
        for (flag, built) in [
            (&LEADERSHIP_LABEL, &c.leadership_label),
            (&PARTICIPATION_LABEL, &c.participation_label),
        ] {
            let DefaultTo::Derived(text) = flag.default else {
                panic!("{}: {:?}", flag.name, flag.default)
            };
            assert_eq!(&text.replace("<election-name>", "my-app"), built);
        }
    }

    #[test]
    fn missing_identity_is_reported() {
        let c = Config::build(raw("x"), &Environment::fake(&[])).unwrap_err();
        assert_eq!(c.flag, "--pod-name");
        let c = Config::build(raw("x"), &Environment::fake(&[("POD_NAME", "p")])).unwrap_err();
        assert_eq!(c.flag, "--namespace");
        let c = Config::build(raw("x").with(&POD_NAME, "Web_0"), &pod_env()).unwrap_err();
        assert!(
            c.to_string()
                .starts_with("--pod-name \"Web_0\": must be a DNS subdomain"),
            "{c}"
        );
        let c = Config::build(raw("x").with(&NAMESPACE, "a.b"), &pod_env()).unwrap_err();
        assert!(
            c.to_string()
                .starts_with("--namespace \"a.b\": must be a DNS label"),
            "{c}"
        );
    }

    #[test]
    fn client_options_and_core_settings_come_from_the_config() {
        let c = Config::build(raw("my-app"), &pod_env()).unwrap();
        let o = c.client_options();
        assert_eq!(o.call_timeout, Duration::from_secs(5));
        assert_eq!(o.watch_idle_timeout, WATCH_SILENCE);
        assert_eq!((o.verbosity, o.identity.as_str()), (0, "web-0"));
        assert!(o.on_response.is_none());
        let s = c.core_settings();
        assert_eq!(s.me, "web-0");
        assert_eq!(s.keys.leader, "my-app/is-leader");
        assert_eq!(s.keys.election, "my-app");
        assert_eq!(s.renew_deadline, c.renew_deadline);
        assert_eq!(s.failback_after, c.failback_after);

        let short = raw("x")
            .with(&LEASE_DURATION, "3s")
            .with(&RENEW_DEADLINE, "1500ms")
            .with(&RETRY_PERIOD, "1s")
            .with(&WATCH_TIMEOUT, "10s");
        let o = Config::build(short, &pod_env()).unwrap().client_options();
        assert_eq!(o.call_timeout, Duration::from_secs(1), "at least 1 s");
        assert_eq!(
            o.watch_idle_timeout,
            Duration::from_secs(40),
            "the server's timeout + 30 s"
        );
        let long = raw("x")
            .with(&LEASE_DURATION, "2m")
            .with(&RENEW_DEADLINE, "1m");
        let o = Config::build(long, &pod_env()).unwrap().client_options();
        assert_eq!(o.call_timeout, Duration::from_secs(10), "at most 10 s");
    }

    #[test]
    fn label_values_of_the_users_choosing() {
        let c = Config::build(raw("my-app"), &pod_env()).unwrap();
        assert_eq!(
            (c.leader_value.as_str(), c.follower_value.as_str()),
            ("true", "false")
        );
        let r = raw("my-app")
            .with(&LEADER_VALUE, "primary")
            .with(&FOLLOWER_VALUE, "replica");
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
            let r = raw("my-app")
                .with(&LEADER_VALUE, leader)
                .with(&FOLLOWER_VALUE, follower);
            let e = Config::build(r, &pod_env()).unwrap_err().to_string();
            assert!(e.starts_with(flag), "{leader}/{follower}: {e}");
        }
    }

    #[test]
    fn timing_rule_of_client_go() {
        let r = raw("x")
            .with(&LEASE_DURATION, "10s")
            .with(&RENEW_DEADLINE, "10s");
        assert_eq!(
            err(r),
            "--lease-duration \"10s\": must be greater than --renew-deadline (10s)"
        );
        let r = raw("x")
            .with(&RENEW_DEADLINE, "2s")
            .with(&RETRY_PERIOD, "2s");
        assert_eq!(
            err(r),
            "--renew-deadline \"2s\": must be greater than 1.2 x --retry-period (2s)"
        );
        let r = raw("x")
            .with(&LEASE_DURATION, "3s")
            .with(&RENEW_DEADLINE, "2s")
            .with(&RETRY_PERIOD, "500ms");
        assert!(Config::build(r, &pod_env()).is_ok());
    }

    #[test]
    fn bad_values_name_flag_value_and_rule() {
        let e = err(raw("x").with(&RETRY_PERIOD, "fast"));
        assert!(
            e.starts_with("--retry-period \"fast\": must be a duration"),
            "{e}"
        );
        assert_eq!(
            err(raw("x").with(&LEASE_DURATION, "0")),
            "--lease-duration \"0\": must be positive"
        );
        assert!(err(raw("x").with(&LEASE_DURATION, "15500ms")).contains("whole seconds"));
        assert_eq!(
            err(raw("x").with(&WATCH_TIMEOUT, "500ms")),
            "--watch-timeout \"500ms\": must be at least 1s, or 0 to let the server choose"
        );
        assert!(
            err(raw("x").with(&FAILBACK_AFTER, "soon")).starts_with("--failback-after \"soon\"")
        );
        assert!(
            err(raw("x").with(&PREFER_ZONE, "eu west")).starts_with("--prefer-zone \"eu west\"")
        );
        assert_eq!(
            err(raw("x").with(&LEADER_FILE, "/shared/")),
            "--leader-file \"/shared/\": must be a file path, like /shared/is-leader"
        );

        let e = err(raw("My_App"));
        assert!(
            e.starts_with("--election-name \"My_App\": must be a valid Lease name"),
            "{e}"
        );
        let e = err(raw("x").with(&LEADERSHIP_LABEL, "example.com/-bad"));
        assert!(
            e.starts_with("--leadership-label \"example.com/-bad\""),
            "{e}"
        );
        assert_eq!(
            err(raw("x").with(&PARTICIPATION_LABEL, "x/is-leader")),
            "--participation-label \"x/is-leader\": must differ from --leadership-label"
        );
        assert!(err(raw("x").with(&SERVER, "ftp://host")).starts_with("--server \"ftp://host\""));
        assert_eq!(err(RawArgs::default()), "--election-name: is required");
    }

    #[test]
    fn unset_optional_values() {
        let r = raw("x")
            .with(&FAILBACK_AFTER, "0")
            .with(&WATCH_TIMEOUT, "0s")
            .with(&PREFER_ZONE, "")
            .with(&LEADER_FILE, "/shared/is-leader");
        let c = Config::build(r, &pod_env()).unwrap();
        assert_eq!(
            (c.failback_after, c.watch_timeout, c.prefer_zone),
            (None, None, None)
        );
        assert_eq!(c.leader_file, Some(PathBuf::from("/shared/is-leader")));
    }

    #[test]
    fn http_address_forms() {
        let c = Config::build(raw("x"), &pod_env()).unwrap();
        assert_eq!(c.http_address, Some("0.0.0.0:8089".parse().unwrap()));
        assert_eq!(
            Config::build(raw("x").with(&HTTP_ADDRESS, ":9000"), &pod_env())
                .unwrap()
                .http_address,
            Some("0.0.0.0:9000".parse().unwrap())
        );
        assert_eq!(
            Config::build(raw("x").with(&HTTP_ADDRESS, "off"), &pod_env())
                .unwrap()
                .http_address,
            None
        );
        assert!(err(raw("x").with(&HTTP_ADDRESS, "localhost"))
            .starts_with("--http-address \"localhost\""));
    }
}
