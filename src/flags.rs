//! Every flag, defined once: its names, value, default, help and group.
//!
//! `cli` parses the command line by this table and renders `--help` from it, `config`
//! takes its defaults and the flag names of its messages from it, and a test holds the
//! README's Configuration table to it. A new flag is a `Flag` here, an entry in `FLAGS`,
//! and its use in `Config::build`.

/// One command-line flag.
#[derive(Debug)]
pub struct Flag {
    /// The long form, `--lease-duration`: also the name in every message about it.
    pub name: &'static str,
    /// The one-letter form, `-v`.
    pub short: Option<&'static str>,
    pub kind: Kind,
    pub default: DefaultTo,
    /// One paragraph; `--help` wraps it.
    pub help: &'static str,
    pub group: &'static Group,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Kind {
    /// Takes a value; how `--help` names it (`D`, `PATH`).
    Value(&'static str),
    /// Counted each time it is given (`-v`, `-vv`).
    Count,
    /// Answered before anything else is read; the process then exits (`--help`).
    Exit,
}

/// What a flag that is not given stands for.
#[derive(Debug, PartialEq, Eq)]
pub enum DefaultTo {
    Required,
    /// Off, or nothing.
    Nothing,
    /// This value, checked like a given one.
    Value(&'static str),
    /// Worked out at start from the pod or from other flags, as this says.
    Derived(&'static str),
}

/// A heading of `--help`, with a note that applies to all its flags.
#[derive(Debug)]
pub struct Group {
    pub title: &'static str,
    pub note: &'static str,
}

static ELECTION: Group = Group {
    title: "ELECTION",
    note: "",
};
static PREFERENCE: Group = Group {
    title: "PREFERENCE",
    note: "pod annotation <election-name>/priority: higher leads, 0 never leads, default 1; \
           handover on request: annotate the Lease with <election-name>/switchover-to=POD",
};
static TIMING: Group = Group {
    title: "TIMING",
    note: "Go durations: 500ms, 15s, 1m30s; rule: lease > renew > 1.2 x retry",
};
static CONNECTION: Group = Group {
    title: "CONNECTION",
    note: "default: in-cluster service account",
};
static OPERATORS: Group = Group {
    title: "FOR OPERATORS AND APPS",
    note: "",
};
static OUTPUT: Group = Group {
    title: "OUTPUT",
    note: "",
};

/// A flag that takes a value.
const fn value(
    name: &'static str,
    value: &'static str,
    default: DefaultTo,
    help: &'static str,
    group: &'static Group,
) -> Flag {
    Flag {
        name,
        short: None,
        kind: Kind::Value(value),
        default,
        help,
        group,
    }
}

/// A flag without a value.
const fn switch(name: &'static str, short: &'static str, kind: Kind, help: &'static str) -> Flag {
    Flag {
        name,
        short: Some(short),
        kind,
        default: DefaultTo::Nothing,
        help,
        group: &OUTPUT,
    }
}

use DefaultTo::{Derived, Nothing, Required, Value};

pub static ELECTION_NAME: Flag = value(
    "--election-name",
    "NAME",
    Required,
    "Lease name and default label prefix",
    &ELECTION,
);
pub static POD_NAME: Flag = value(
    "--pod-name",
    "NAME",
    Derived("$POD_NAME, then the hostname"),
    "This pod's name",
    &ELECTION,
);
pub static NAMESPACE: Flag = value(
    "--namespace",
    "NS",
    Derived("$POD_NAMESPACE, then the service-account file"),
    "Namespace of the pod and Lease",
    &ELECTION,
);
pub static LEADERSHIP_LABEL: Flag = value(
    "--leadership-label",
    "KEY",
    Derived("<election-name>/is-leader"),
    "",
    &ELECTION,
);
pub static PARTICIPATION_LABEL: Flag = value(
    "--participation-label",
    "KEY",
    Derived("<election-name>/participant"),
    "",
    &ELECTION,
);
pub static LEADER_VALUE: Flag = value(
    "--leader-value",
    "VALUE",
    Value("true"),
    "Leadership label value on the leader",
    &ELECTION,
);
pub static FOLLOWER_VALUE: Flag = value(
    "--follower-value",
    "VALUE",
    Value("false"),
    "... and on every other pod",
    &ELECTION,
);
pub static PREFER_ZONE: Flag = value(
    "--prefer-zone",
    "ZONE",
    Nothing,
    "Prefer pods labeled topology.kubernetes.io/zone=ZONE at equal priority",
    &PREFERENCE,
);
pub static FAILBACK_AFTER: Flag = value(
    "--failback-after",
    "D",
    Value("30s"),
    "Hand over to a more preferred pod once it has been ready this long; 0 never",
    &PREFERENCE,
);
pub static LEASE_DURATION: Flag = value(
    "--lease-duration",
    "D",
    Value("15s"),
    "How long followers wait on a silent leader",
    &TIMING,
);
pub static RENEW_DEADLINE: Flag = value(
    "--renew-deadline",
    "D",
    Value("10s"),
    "How long a leader may fail to renew before it stops acting as leader",
    &TIMING,
);
pub static RETRY_PERIOD: Flag = value(
    "--retry-period",
    "D",
    Value("2s"),
    "Leader renewal and retry interval",
    &TIMING,
);
pub static RESYNC_PERIOD: Flag = value(
    "--resync-period",
    "D",
    Value("5s"),
    "Leader re-checks every pod's labels",
    &TIMING,
);
pub static WATCH_TIMEOUT: Flag = value(
    "--watch-timeout",
    "D",
    Value("5m"),
    "Server-side timeout asked for each watch; 0 lets the server choose",
    &TIMING,
);
pub static SERVER: Flag = value(
    "--server",
    "URL",
    Derived("in-cluster"),
    "API server, e.g. https://127.0.0.1:6443, or http://127.0.0.1:8001 for `kubectl proxy`",
    &CONNECTION,
);
pub static TOKEN_FILE: Flag = value(
    "--token-file",
    "PATH",
    Derived("pod's service-account token if no --server"),
    "Bearer token, re-read every minute and after a 401",
    &CONNECTION,
);
pub static CA_FILE: Flag = value(
    "--ca-file",
    "PATH",
    Derived("service-account ca.crt for https"),
    "CA bundle to trust, and nothing else",
    &CONNECTION,
);
pub static HTTP_ADDRESS: Flag = value(
    "--http-address",
    "ADDR",
    Value("0.0.0.0:8089"),
    "/healthz, /readyz, /metrics (Prometheus) and /leader (JSON); `off` disables",
    &OPERATORS,
);
pub static LEADER_FILE: Flag = value(
    "--leader-file",
    "PATH",
    Nothing,
    "Keep `true` or `false` in this file (written atomically)",
    &OPERATORS,
);
pub static VERBOSE: Flag = switch(
    "--verbose",
    "-v",
    Kind::Count,
    "Trace every API call (method, path, status, latency); -vv adds bodies. The token is \
     never printed. Log levels otherwise follow RUST_LOG [default: info].",
);
pub static HELP: Flag = switch("--help", "-h", Kind::Exit, "Print this help");
pub static VERSION: Flag = switch(
    "--version",
    "-V",
    Kind::Exit,
    "Print the version and git commit",
);

/// Every flag, in the order of `--help`.
pub static FLAGS: &[&Flag] = &[
    &ELECTION_NAME,
    &POD_NAME,
    &NAMESPACE,
    &LEADERSHIP_LABEL,
    &PARTICIPATION_LABEL,
    &LEADER_VALUE,
    &FOLLOWER_VALUE,
    &PREFER_ZONE,
    &FAILBACK_AFTER,
    &LEASE_DURATION,
    &RENEW_DEADLINE,
    &RETRY_PERIOD,
    &RESYNC_PERIOD,
    &WATCH_TIMEOUT,
    &SERVER,
    &TOKEN_FILE,
    &CA_FILE,
    &HTTP_ADDRESS,
    &LEADER_FILE,
    &VERBOSE,
    &HELP,
    &VERSION,
];

/// The command line as typed, before validation: the value flags given, and `-v`s.
#[derive(Debug, Default, Clone)]
pub struct RawArgs {
    given: Vec<(&'static str, String)>,
    pub verbosity: u8,
}

impl RawArgs {
    /// Records `flag` as given with `value`, replacing an earlier value.
    pub fn set(&mut self, flag: &Flag, value: impl Into<String>) {
        self.given.retain(|(name, _)| *name != flag.name);
        self.given.push((flag.name, value.into()));
    }

    /// `set`, for building arguments in one expression.
    pub fn with(mut self, flag: &Flag, value: impl Into<String>) -> Self {
        self.set(flag, value);
        self
    }

    /// What was given for `flag`.
    pub fn given(&self, flag: &Flag) -> Option<&str> {
        self.given
            .iter()
            .find(|(name, _)| *name == flag.name)
            .map(|(_, v)| v.as_str())
    }

    /// What was given for `flag`, else its default value if it has one.
    pub fn value(&self, flag: &Flag) -> Option<&str> {
        match (self.given(flag), &flag.default) {
            (Some(v), _) => Some(v),
            (None, Value(v)) => Some(v),
            (None, _) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_well_formed() {
        for (i, f) in FLAGS.iter().enumerate() {
            assert!(f.name.starts_with("--"), "{}", f.name);
            for other in &FLAGS[i + 1..] {
                assert_ne!(f.name, other.name);
                assert!(f.short.is_none() || f.short != other.short, "{}", f.name);
            }
        }
    }

    #[test]
    fn given_values_win_over_defaults() {
        let r = RawArgs::default()
            .with(&LEASE_DURATION, "20s")
            .with(&LEASE_DURATION, "30s");
        assert_eq!(r.value(&LEASE_DURATION), Some("30s"));
        assert_eq!(r.value(&RENEW_DEADLINE), Some("10s"));
        assert_eq!(r.value(&SERVER), None);
        assert_eq!(r.given(&RENEW_DEADLINE), None);
    }

    /// The flag names and defaults of the README's Configuration table, one row per flag.
    fn readme_rows() -> Vec<(Vec<String>, String)> {
        crate::readme::table_rows("Configuration")
            .into_iter()
            .map(|cells| {
                let names = cells[1].split('`').skip(1).step_by(2).map(String::from);
                (names.collect(), cells[2].replace('`', ""))
            })
            .collect()
    }

    #[test]
    fn readme_configuration_table_lists_every_flag_and_its_default() {
        let expected: Vec<(Vec<String>, String)> = FLAGS
            .iter()
            .filter(|f| f.kind != Kind::Exit)
            .map(|f| {
                let names = f.short.into_iter().chain([f.name]).map(String::from);
                let default = match (&f.kind, &f.default) {
                    (Kind::Count, _) => "off",
                    (_, Required) => "required",
                    (_, Nothing) => "none",
                    (_, Value(v) | Derived(v)) => v,
                };
                (names.collect(), default.to_string())
            })
            .collect();
        assert_eq!(readme_rows(), expected);
    }
}
