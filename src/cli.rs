//! The command line: flags to `RawArgs`, `--help` and `--version`, all by the table in
//! `flags`.
//!
//! Parsing takes an iterator of arguments rather than the process's, so tests can drive
//! it. Help and version return before anything is read from the environment.

use crate::flags::{self, DefaultTo, Flag, Kind, RawArgs, FLAGS};
use std::ffi::OsString;
use std::fmt::Write;

/// What `--help` prints before the flags.
const INTRO: &str = "\
leader-labeler: elect one leader among a workload's pods and label it

USAGE:
    leader-labeler --election-name NAME [OPTIONS]

Runs as a sidecar in every pod. The pods compete for a coordination.k8s.io Lease named
NAME; the holder labels itself <leadership-label>=true and every other pod =false, so a
Service selecting <leadership-label>: \"true\" reaches only the leader. Only Ready pods
compete; they carry <participation-label>=true. On SIGTERM or pod deletion a leader
keeps leading until another ready pod can take over, then hands over in milliseconds.
";

/// What `--help` prints after the flags.
const OUTRO: &str = "
EXIT STATUS:
    0 clean shutdown; 1 fatal runtime error (missing RBAC, pod not found);
    2 invalid flags or values.
";

/// The longest line of `--help`, and where each flag's text starts.
const WIDTH: usize = 88;
const COLUMN: usize = 32;

/// `--help`: the flags in groups, each with its value, help and default.
pub fn help() -> String {
    let mut out = String::from(INTRO);
    let mut group = "";
    for flag in FLAGS {
        let g = flag.group;
        if g.title != group {
            group = g.title;
            out.push('\n');
            if g.note.is_empty() {
                let _ = writeln!(out, "{}:", g.title);
            } else {
                let line = out.len();
                let note = format!("{} ({}):", g.title, g.note);
                wrap(&mut out, line, g.title.len() + 2, note.split(' '));
            }
        }
        let start = out.len();
        out.push_str("    ");
        if let Some(short) = flag.short {
            let _ = write!(out, "{short}, ");
        }
        out.push_str(flag.name);
        if let Kind::Value(v) = flag.kind {
            let _ = write!(out, " {v}");
        }
        let pad = (start + COLUMN).saturating_sub(out.len()).max(1);
        let _ = write!(out, "{:1$}", "", pad);
        let default = match flag.default {
            DefaultTo::Required => Some("(required)".to_string()),
            DefaultTo::Value(v) | DefaultTo::Derived(v) => Some(format!("[default: {v}]")),
            DefaultTo::Nothing => None,
        };
        // The default is kept whole, on a line of its own if need be.
        wrap(
            &mut out,
            start,
            COLUMN,
            flag.help.split(' ').chain(default.as_deref()),
        );
    }
    out + OUTRO
}

/// Appends `words` to the line begun at `out[line..]`, one space apart, starting a new
/// line, indented by `indent`, where the next word would pass `WIDTH`.
fn wrap<'a>(
    out: &mut String,
    mut line: usize,
    indent: usize,
    words: impl Iterator<Item = &'a str>,
) {
    let mut space = "";
    for word in words.filter(|w| !w.is_empty()) {
        if !space.is_empty() && out.len() - line + 1 + word.len() > WIDTH {
            out.push('\n');
            line = out.len();
            let _ = write!(out, "{:1$}", "", indent);
            space = "";
        }
        out.push_str(space);
        out.push_str(word);
        space = " ";
    }
    out.push('\n');
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    Run(RawArgs),
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

/// pico-args' keys of a flag: its long and short forms.
fn keys(flag: &Flag) -> pico_args::Keys {
    match flag.short {
        Some(short) => [short, flag.name].into(),
        None => flag.name.into(),
    }
}

pub fn parse(args: Vec<OsString>) -> Result<Command, UsageError> {
    let mut p = pico_args::Arguments::from_vec(args);
    if p.contains(keys(&flags::HELP)) {
        return Ok(Command::Help);
    }
    if p.contains(keys(&flags::VERSION)) {
        return Ok(Command::Version);
    }
    let mut raw = RawArgs::default();
    while p.contains("-vv") {
        raw.verbosity = raw.verbosity.saturating_add(2);
    }
    while p.contains(keys(&flags::VERBOSE)) {
        raw.verbosity = raw.verbosity.saturating_add(1);
    }
    for flag in FLAGS {
        if let Kind::Value(_) = flag.kind {
            let name = flag.name;
            match p.opt_value_from_str::<_, String>(name) {
                Ok(Some(v)) => raw.set(flag, v),
                Ok(None) => {}
                Err(pico_args::Error::OptionWithoutAValue(_)) => {
                    return Err(UsageError(format!("{name} needs a value")))
                }
                Err(other) => return Err(UsageError(format!("{name}: {other}"))),
            }
        }
    }
    let rest = p.finish();
    if let Some(first) = rest.first() {
        let text = first.to_string_lossy();
        return Err(UsageError(if text.starts_with('-') {
            format!("unknown flag {text}")
        } else {
            format!("unexpected argument {text:?}")
        }));
    }
    Ok(Command::Run(raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<RawArgs, UsageError> {
        match parse(args.iter().map(OsString::from).collect())? {
            Command::Run(r) => Ok(r),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn both_value_forms() {
        let r = run(&["--election-name=a", "--lease-duration", "3s", "-vv"]).unwrap();
        assert_eq!(r.given(&flags::ELECTION_NAME), Some("a"));
        assert_eq!(r.given(&flags::LEASE_DURATION), Some("3s"));
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

    #[test]
    fn help_shows_every_flag_with_its_value_and_default() {
        let help = help();
        for line in help.lines() {
            assert!(line.len() <= WIDTH, "longer than {WIDTH}: {line:?}");
        }
        // Help text, then the default, may run on over the following lines.
        let mut lines = help.lines().peekable();
        for flag in FLAGS {
            let mut entry = lines
                .by_ref()
                .find(|l| l.trim_start().starts_with(flag.short.unwrap_or(flag.name)))
                .unwrap_or_else(|| panic!("{} in --help", flag.name))
                .to_string();
            while let Some(next) = lines.next_if(|l| l.starts_with(&" ".repeat(COLUMN))) {
                entry = entry + " " + next.trim();
            }
            if let Kind::Value(v) = flag.kind {
                assert!(entry.contains(&format!("{} {v} ", flag.name)), "{entry}");
            }
            match flag.default {
                DefaultTo::Value(d) | DefaultTo::Derived(d) => {
                    assert!(entry.ends_with(&format!("[default: {d}]")), "{entry}")
                }
                DefaultTo::Required => assert!(entry.ends_with("(required)"), "{entry}"),
                DefaultTo::Nothing => assert!(!entry.ends_with(']'), "{entry}"),
            }
        }
    }
}
