//! The command line: flags to `RawArgs`, `--help` and `--version`.
//!
//! Parsing takes an iterator of arguments rather than the process's, so tests can drive
//! it. Help and version return before anything is read from the environment.

use crate::config::RawArgs;
use std::ffi::OsString;

pub const HELP: &str = "\
leader-labeler: elect one leader among a workload's pods and label it

USAGE:
    leader-labeler --election-name NAME [OPTIONS]

Runs as a sidecar in every pod. The pods compete for a coordination.k8s.io Lease named
NAME; the holder labels itself <leadership-label>=true and every other pod =false, so a
Service selecting <leadership-label>: \"true\" reaches only the leader. Only Ready pods
compete; they carry <participation-label>=true. On SIGTERM or pod deletion a leader
keeps leading until another ready pod can take over, then hands over in milliseconds.

ELECTION:
    --election-name NAME        Lease name and default label prefix (required)
    --pod-name NAME             This pod's name [default: $POD_NAME, then the hostname]
    --namespace NS              Namespace of the pod and Lease
                                [default: $POD_NAMESPACE, then the service-account file]
    --leadership-label KEY      [default: <election-name>/is-leader]
    --participation-label KEY   [default: <election-name>/participant]
    --leader-value VALUE        Leadership label value on the leader [default: true]
    --follower-value VALUE      ... and on every other pod [default: false]

PREFERENCE (pod annotation <election-name>/priority: higher leads, 0 never leads,
            default 1; handover on request: annotate the Lease with
            <election-name>/switchover-to=POD):
    --prefer-zone ZONE          Prefer pods labeled topology.kubernetes.io/zone=ZONE
                                at equal priority
    --failback-after D          Hand over to a more preferred pod once it has been
                                ready this long; 0 never [default: 30s]

TIMING (Go durations: 500ms, 15s, 1m30s; rule: lease > renew > 1.2 x retry):
    --lease-duration D          How long followers wait on a silent leader [default: 15s]
    --renew-deadline D          How long a leader may fail to renew before it stops
                                acting as leader [default: 10s]
    --retry-period D            Leader renewal and retry interval [default: 2s]
    --resync-period D           Leader re-checks every pod's labels [default: 5s]
    --watch-timeout D           Server-side timeout asked for each watch; 0 lets the
                                server choose [default: 5m]

CONNECTION (default: in-cluster service account):
    --server URL                API server, e.g. https://127.0.0.1:6443, or
                                http://127.0.0.1:8001 for `kubectl proxy`
    --token-file PATH           Bearer token, re-read every minute and after a 401
                                [default in a pod: the service-account token]
    --ca-file PATH              CA bundle to trust, and nothing else
                                [default for https: the service-account ca.crt]

FOR OPERATORS AND APPS:
    --http-address ADDR         /healthz, /readyz, /metrics (Prometheus) and /leader
                                (JSON); `off` disables [default: 0.0.0.0:8089]
    --leader-file PATH          Keep `true` or `false` in this file (written atomically)

OUTPUT:
    -v, --verbose               Trace every API call (method, path, status, latency);
                                -vv adds bodies. The token is never printed.
                                Log levels otherwise follow RUST_LOG [default: info].
    -h, --help                  Print this help
    -V, --version               Print the version and git commit

EXIT STATUS:
    0 clean shutdown; 1 fatal runtime error (missing RBAC, pod not found);
    2 invalid flags or values.
";

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    Run(Box<RawArgs>),
    Help,
    Version,
}

/// A command-line error: exit code 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (see --help)", self.0)
    }
}

pub fn version() -> String {
    format!(
        "leader-labeler {} (commit {})",
        env!("CARGO_PKG_VERSION"),
        option_env!("LEADER_LABELER_GIT_COMMIT").unwrap_or("unknown")
    )
}

pub fn parse(args: Vec<OsString>) -> Result<Command, UsageError> {
    let mut p = pico_args::Arguments::from_vec(args);
    if p.contains(["-h", "--help"]) {
        return Ok(Command::Help);
    }
    if p.contains(["-V", "--version"]) {
        return Ok(Command::Version);
    }
    let mut verbosity = 0u8;
    while p.contains("-vv") {
        verbosity = verbosity.saturating_add(2);
    }
    while p.contains(["-v", "--verbose"]) {
        verbosity = verbosity.saturating_add(1);
    }
    let mut opt = |name: &'static str| -> Result<Option<String>, UsageError> {
        p.opt_value_from_str::<_, String>(name)
            .map_err(|e| match e {
                pico_args::Error::OptionWithoutAValue(_) => {
                    UsageError(format!("{name} needs a value"))
                }
                other => UsageError(format!("{name}: {other}")),
            })
    };
    let raw = RawArgs {
        election_name: opt("--election-name")?,
        pod_name: opt("--pod-name")?,
        namespace: opt("--namespace")?,
        leadership_label: opt("--leadership-label")?,
        participation_label: opt("--participation-label")?,
        leader_value: opt("--leader-value")?,
        follower_value: opt("--follower-value")?,
        prefer_zone: opt("--prefer-zone")?,
        failback_after: opt("--failback-after")?,
        lease_duration: opt("--lease-duration")?,
        renew_deadline: opt("--renew-deadline")?,
        retry_period: opt("--retry-period")?,
        resync_period: opt("--resync-period")?,
        watch_timeout: opt("--watch-timeout")?,
        server: opt("--server")?,
        token_file: opt("--token-file")?,
        ca_file: opt("--ca-file")?,
        http_address: opt("--http-address")?,
        leader_file: opt("--leader-file")?,
        verbosity,
    };
    let rest = p.finish();
    if let Some(first) = rest.first() {
        let text = first.to_string_lossy();
        return Err(UsageError(if text.starts_with('-') {
            format!("unknown flag {text}")
        } else {
            format!("unexpected argument {text:?}")
        }));
    }
    Ok(Command::Run(Box::new(raw)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<RawArgs, UsageError> {
        match parse(args.iter().map(OsString::from).collect())? {
            Command::Run(r) => Ok(*r),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn both_value_forms() {
        let r = run(&["--election-name=a", "--lease-duration", "3s", "-vv"]).unwrap();
        assert_eq!(r.election_name.as_deref(), Some("a"));
        assert_eq!(r.lease_duration.as_deref(), Some("3s"));
        assert_eq!(r.verbosity, 2);
        assert_eq!(run(&["-v"]).unwrap().verbosity, 1);
        assert_eq!(run(&["-v", "--verbose"]).unwrap().verbosity, 2);
    }

    #[test]
    fn help_and_version_win() {
        let p = |a: &[&str]| parse(a.iter().map(OsString::from).collect()).unwrap();
        assert!(matches!(p(&["--bogus", "-h"]), Command::Help));
        assert!(matches!(p(&["--version"]), Command::Version));
        assert!(version().starts_with("leader-labeler "));
    }

    #[test]
    fn unknown_and_stray_arguments() {
        assert_eq!(
            run(&["--election-name=a", "--lease=3s"])
                .unwrap_err()
                .to_string(),
            "unknown flag --lease=3s (see --help)"
        );
        assert_eq!(
            run(&["stray"]).unwrap_err().0,
            "unexpected argument \"stray\""
        );
        assert_eq!(
            run(&["--election-name"]).unwrap_err().0,
            "--election-name needs a value"
        );
    }
}
