//! Scenario 14: bad flags and values. The real binary, as a process: exit code 2 and one
//! line on stderr that names the flag, the value and the rule. No cluster needed.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_leader-labeler");

/// Runs the binary with a clean environment (no POD_NAME, no KUBERNETES_SERVICE_HOST).
fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_clear()
        .env("POD_NAME", "web-0")
        .env("POD_NAMESPACE", "prod")
        .output()
        .expect("run leader-labeler");
    (
        out.status.code().expect("exited, not killed"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_usage_error(args: &[&str], expected: &[&str]) {
    let (code, stdout, stderr) = run(args);
    assert_eq!(code, 2, "{args:?}: stderr {stderr}");
    assert!(
        stdout.is_empty(),
        "{args:?}: nothing on stdout, got {stdout}"
    );
    assert_eq!(
        stderr.lines().count(),
        1,
        "{args:?}: one line, got {stderr}"
    );
    for part in expected {
        assert!(
            stderr.contains(part),
            "{args:?}: {stderr:?} should mention {part:?}"
        );
    }
}

const SERVER: &str = "--server=https://127.0.0.1:6443";

#[test]
fn missing_election_name() {
    assert_usage_error(&[SERVER], &["--election-name", "required"]);
}

#[test]
fn unknown_flag() {
    assert_usage_error(
        &["--election-name=a", "--leader-label=x"],
        &["unknown flag --leader-label=x"],
    );
}

#[test]
fn flag_without_value() {
    assert_usage_error(&["--election-name"], &["--election-name needs a value"]);
}

#[test]
fn bad_duration() {
    assert_usage_error(
        &["--election-name=a", SERVER, "--retry-period=2 seconds"],
        &["--retry-period", "\"2 seconds\"", "duration like 500ms"],
    );
}

#[test]
fn timing_rule() {
    assert_usage_error(
        &[
            "--election-name=a",
            SERVER,
            "--lease-duration=10s",
            "--renew-deadline=10s",
        ],
        &[
            "--lease-duration",
            "\"10s\"",
            "greater than --renew-deadline",
        ],
    );
    assert_usage_error(
        &[
            "--election-name=a",
            SERVER,
            "--renew-deadline=2s",
            "--retry-period=2s",
        ],
        &["--renew-deadline", "1.2 x --retry-period"],
    );
}

#[test]
fn bad_label_key_and_name() {
    assert_usage_error(
        &["--election-name=a", SERVER, "--leadership-label=bad key"],
        &["--leadership-label", "\"bad key\"", "label key"],
    );
    assert_usage_error(
        &["--election-name=My.App", SERVER],
        &["--election-name", "\"My.App\"", "DNS subdomain"],
    );
}

#[test]
fn no_server_outside_a_pod() {
    assert_usage_error(
        &["--election-name=a"],
        &["--server", "KUBERNETES_SERVICE_HOST"],
    );
}

#[test]
fn help_and_version_succeed() {
    let (code, stdout, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--election-name",
        "--pod-name",
        "--namespace",
        "--leadership-label",
        "--participation-label",
        "--lease-duration",
        "--renew-deadline",
        "--retry-period",
        "--server",
        "--token-file",
        "--ca-file",
        "--verbose",
    ] {
        assert!(stdout.contains(flag), "help mentions {flag}");
    }
    let (code, stdout, _) = run(&["--version"]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("leader-labeler "), "{stdout}");
    assert!(stdout.contains("commit "), "{stdout}");
}
