//! Records the git commit for `--version` as LEADER_LABELER_GIT_COMMIT.
//!
//! Order: the LEADER_LABELER_GIT_COMMIT environment variable when set (image builds whose
//! context has no .git), else `git rev-parse --short=12 HEAD`, else "unknown" (no git,
//! or a source tarball).
use std::path::PathBuf;
use std::process::Command;

const VAR: &str = "LEADER_LABELER_GIT_COMMIT";

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed={VAR}");
    let from_env = std::env::var(VAR).ok().filter(|s| !s.trim().is_empty());
    let commit = from_env
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env={VAR}={commit}");

    // Rebuild when HEAD moves: HEAD itself (checkout), the branches (commit) and
    // packed-refs (gc). Paths come from git, so worktrees work too. Outside a repository
    // only build.rs itself triggers a rerun.
    let Some(git_dir) = git(&["rev-parse", "--git-dir"]).map(PathBuf::from) else {
        println!("cargo:rerun-if-changed=build.rs");
        return;
    };
    println!("cargo:rerun-if-changed={}", git_dir.join("HEAD").display());
    // A folder is scanned recursively, so a branch ref created by a commit after a gc
    // (which packs refs) is noticed too. Only existing paths: a missing one would rerun
    // this script, and rebuild the crate, on every build.
    if let Some(common) = git(&["rev-parse", "--git-common-dir"]).map(PathBuf::from) {
        for p in [
            common.join("packed-refs"),
            common.join("refs").join("heads"),
        ] {
            if p.exists() {
                println!("cargo:rerun-if-changed={}", p.display());
            }
        }
    }
}
