//! leader-labeler: a Kubernetes sidecar that elects one leader through a Lease and labels
//! the pods so that a Service selects only the leader.
//!
//! The decision core (`core`, with its `election`, `labels` and `drain`) is pure: state and
//! a clock in, actions out. `controller` runs it on one thread, fed by the sensor threads
//! in `sensors`; `kube` speaks HTTP to the API server. Both build on `api`, the API's
//! plain data (Lease, pod, errors, paths), which has no I/O. The layers point one way:
//! `api` <- `core` <- `telemetry`, `api` <- `kube`, and `controller` and `main` connect
//! them (the client reports each response through a callback `main` wires to the
//! metrics); the `layers` tests below hold it.
//!
//! Start-up: `cli` parses the command line by the flag table in `flags`, `config` checks
//! it once and hands each part its settings (`Config::client_options`,
//! `Config::core_settings`). `duration` is a leaf any module may use.

pub mod api;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod controller;
pub mod core;
pub mod duration;
pub mod events;
pub mod flags;
pub mod http;
pub mod kube;
pub mod logging;
pub mod rbac;
pub mod sensors;
pub mod telemetry;

/// The README's tables, for the tests that hold them to the code.
#[cfg(test)]
pub(crate) mod readme {
    /// The cells of each row, under `## {heading}`, whose first cell is code.
    pub fn table_rows(heading: &str) -> Vec<Vec<&'static str>> {
        let readme = include_str!("../README.md");
        let section = readme
            .split(&format!("\n## {heading}\n"))
            .nth(1)
            .unwrap_or_else(|| panic!("README has ## {heading}"));
        let section = section.split("\n## ").next().unwrap();
        section
            .lines()
            .filter(|l| l.starts_with("| `"))
            .map(|row| row.split('|').map(str::trim).collect())
            .collect()
    }
}

/// The layers point one way: the decision core and the API's plain data know nothing of
/// HTTP, threads, metrics or the command line.
#[cfg(test)]
mod layers {
    use std::path::Path;

    /// Every `crate::<module>` a source file (or folder of them) names.
    fn uses(path: &str) -> Vec<(String, String)> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = vec![];
        let mut todo = vec![root.join(path)];
        while let Some(p) = todo.pop() {
            if p.is_dir() {
                todo.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            } else if p.extension().is_some_and(|e| e == "rs") {
                files.push(p);
            }
        }
        assert!(!files.is_empty(), "no source under src/{path}");
        let mut out = vec![];
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for (i, _) in text.match_indices("crate::") {
                let module: String = text[i + 7..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                out.push((f.display().to_string(), module));
            }
        }
        out
    }

    fn assert_uses_only(path: &str, allowed: &[&str]) {
        for (file, module) in uses(path) {
            assert!(
                allowed.contains(&module.as_str()),
                "{file} uses crate::{module}; src/{path} may use only {allowed:?}"
            );
        }
    }

    #[test]
    fn the_core_uses_no_client_telemetry_or_config_only_plain_data_and_leaves() {
        assert_uses_only("core", &["api", "backoff", "core", "duration"]);
    }

    #[test]
    fn the_api_data_and_the_leaves_use_nothing_else() {
        assert_uses_only("api", &["api"]);
        assert_uses_only("duration.rs", &[]);
        assert_uses_only("backoff.rs", &["backoff"]);
    }
}
