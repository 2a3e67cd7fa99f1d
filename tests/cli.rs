//! Bad flags and values make the real binary, as a process, exit 2 with one line on
//! stderr that names the flag, the value and the rule. No cluster needed.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_leader-labeler");

/// Runs the binary with a clean environment (no POD_NAME, no KUBERNETES_SERVICE_HOST).
fn run(args: &[&str]) -> (i32, String, String) {
    run_env(args, &[])
}

/// Like `run`, with extra environment variables. A binary that has not exited after 10 s
/// (it got past validation and is trying to reach a server) is killed, and the test fails.
fn run_env(args: &[&str], vars: &[(&str, &str)]) -> (i32, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .env_clear()
        .env("POD_NAME", "web-0")
        .env("POD_NAMESPACE", "prod")
        .envs(vars.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run leader-labeler");
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{args:?}: still running after 10 s, output:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().expect("exited, not killed"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_usage_error(args: &[&str], expected: &[&str]) {
    assert_usage_error_env(args, &[], expected)
}

fn assert_usage_error_env(args: &[&str], vars: &[(&str, &str)], expected: &[&str]) {
    let (code, stdout, stderr) = run_env(args, vars);
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
    assert_eq!(stdout, leader_labeler::cli::help());
    for flag in leader_labeler::flags::FLAGS {
        assert!(stdout.contains(flag.name), "help mentions {}", flag.name);
    }
    let (code, stdout, _) = run(&["--version"]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("leader-labeler "), "{stdout}");
    assert!(stdout.contains("commit "), "{stdout}");
}

/// A folder of this test's own, holding an existing (readable) file `ca.crt`.
fn scratch(name: &str) -> (PathBuf, String) {
    let dir =
        std::env::temp_dir().join(format!("leader-labeler-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.crt");
    std::fs::write(&ca, "not checked here\n").unwrap();
    (dir, ca.display().to_string())
}

#[test]
fn missing_ca_file() {
    let (dir, _) = scratch("no-ca");
    let missing = dir.join("missing-ca.crt").display().to_string();
    assert_usage_error(
        &["--election-name=a", SERVER, &format!("--ca-file={missing}")],
        &["--ca-file", &format!("{missing:?}"), "does not exist"],
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn missing_token_file() {
    let (dir, ca) = scratch("no-token");
    let missing = dir.join("missing-token").display().to_string();
    assert_usage_error(
        &[
            "--election-name=a",
            SERVER,
            &format!("--ca-file={ca}"),
            &format!("--token-file={missing}"),
        ],
        &["--token-file", &format!("{missing:?}"), "does not exist"],
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn directory_instead_of_a_file() {
    let (dir, ca) = scratch("dir");
    let folder = dir.display().to_string();
    assert_usage_error(
        &["--election-name=a", SERVER, &format!("--ca-file={folder}")],
        &["--ca-file", &format!("{folder:?}"), "is a directory"],
    );
    assert_usage_error(
        &[
            "--election-name=a",
            SERVER,
            &format!("--ca-file={ca}"),
            &format!("--token-file={folder}"),
        ],
        &["--token-file", &format!("{folder:?}"), "is a directory"],
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn missing_in_cluster_defaults_name_the_default_path() {
    const SA: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
    assert!(
        !std::path::Path::new(SA).exists(),
        "this test needs a machine without {SA}"
    );
    let in_pod = [("KUBERNETES_SERVICE_HOST", "10.0.0.1")];
    assert_usage_error_env(
        &["--election-name=a"],
        &in_pod,
        &[
            "--token-file",
            &format!("\"{SA}/token\""),
            "does not exist",
            "in-cluster default",
        ],
    );
    // With a token given, the CA default is checked too.
    let (dir, token) = scratch("default-ca");
    assert_usage_error_env(
        &["--election-name=a", &format!("--token-file={token}")],
        &in_pod,
        &[
            "--ca-file",
            &format!("\"{SA}/ca.crt\""),
            "does not exist",
            "in-cluster default",
        ],
    );
    // An https --server outside a pod defaults to the same CA file.
    assert_usage_error(
        &["--election-name=a", SERVER],
        &[
            "--ca-file",
            &format!("\"{SA}/ca.crt\""),
            "in-cluster default",
        ],
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn unreadable_ca_file() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, ca) = scratch("unreadable");
    std::fs::set_permissions(&ca, std::fs::Permissions::from_mode(0o000)).unwrap();
    let ca_arg = format!("--ca-file={ca}");
    let args = ["--election-name=a", SERVER, ca_arg.as_str()];
    // Root reads any file: run the binary as nobody then (setpriv, from util-linux).
    // SAFETY: geteuid has no preconditions.
    let out = if unsafe { libc::geteuid() } == 0 {
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--",
                BIN,
            ])
            .args(args)
            .env_clear()
            .env("POD_NAME", "web-0")
            .env("POD_NAMESPACE", "prod")
            .output()
            .expect("setpriv (util-linux) runs the binary as nobody")
    } else {
        Command::new(BIN)
            .args(args)
            .env_clear()
            .env("POD_NAME", "web-0")
            .env("POD_NAMESPACE", "prod")
            .output()
            .unwrap()
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "--ca-file {ca:?}: cannot be read: Permission denied"
        )),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
