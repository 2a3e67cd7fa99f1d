//! leader-labeler: a Kubernetes sidecar that elects one leader through a Lease and labels
//! the pods so that a Service selects only the leader.
//!
//! The decision core (`core`, with `election`, `labels` and `drain`) is pure: state and
//! a clock in, actions out. `controller` runs it on one thread, fed by the sensor threads
//! in `sensors`; `kube` speaks HTTP to the API server.
//!
//! Start-up: `cli` parses the command line by the flag table in `flags`, `config` checks
//! it once and hands each part its settings (`Config::client_options`,
//! `Config::core_settings`). `duration` is a leaf any module may use.

pub mod backoff;
pub mod cli;
pub mod config;
pub mod controller;
pub mod core;
pub mod drain;
pub mod duration;
pub mod election;
pub mod events;
pub mod flags;
pub mod http;
pub mod kube;
pub mod labels;
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
