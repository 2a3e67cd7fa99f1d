//! Entry point: parse, validate, run, and map the result to an exit code. Exit codes are
//! decided here and nowhere else: 0 clean, 1 fatal at run time, 2 bad usage.

use leader_labeler::cli::{self, Command};
use leader_labeler::config::{Config, Environment};
use leader_labeler::core::Exit;
use leader_labeler::kube::{Client, ClientOptions};
use leader_labeler::telemetry::Telemetry;
use leader_labeler::{controller, logging};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// The longest a watch may stay silent before it is taken for a dead connection (a
/// half-open TCP connection, a stalled proxy). kube-apiserver's watch cache sends a
/// bookmark to watchers that allow them about once a minute, so a live idle watch is
/// never cut by this (tests/outage.rs `stalled_watch_is_found_and_idle_ones_are_kept`).
const WATCH_SILENCE: Duration = Duration::from_secs(75);

fn main() -> ExitCode {
    let raw = match cli::parse(std::env::args_os().skip(1).collect()) {
        Ok(Command::Help) => {
            print!("{}", cli::HELP);
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("{}", cli::version());
            return ExitCode::SUCCESS;
        }
        Ok(Command::Run(raw)) => raw,
        Err(e) => {
            eprintln!("leader-labeler: {e}");
            return ExitCode::from(2);
        }
    };
    let cfg = match Config::build(*raw, &Environment::system()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("leader-labeler: {e}");
            return ExitCode::from(2);
        }
    };
    logging::init(cfg.verbosity);
    log::info!("{}", cli::version());

    // A renewal must not hang past the renew deadline. A watch that is silent for longer
    // than WATCH_SILENCE (or than the server's own timeout) is dead: kube-apiserver sends
    // watchers that allow bookmarks one about every minute.
    let call_timeout =
        (cfg.renew_deadline / 2).clamp(Duration::from_secs(1), Duration::from_secs(10));
    let watch_idle_timeout = cfg
        .watch_timeout
        .map_or(WATCH_SILENCE, |t| t + Duration::from_secs(30))
        .min(WATCH_SILENCE);
    let telemetry = Arc::new(
        Telemetry::new(&cfg.pod_name, cfg.renew_deadline).with_election(&cfg.election_name),
    );
    let client = match Client::new(
        &cfg.connection,
        ClientOptions {
            call_timeout,
            watch_idle_timeout,
            verbosity: cfg.verbosity,
            identity: cfg.pod_name.clone(),
            telemetry: Some(telemetry.clone()),
        },
    ) {
        Ok(c) => c,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(1);
        }
    };
    match controller::run(&cfg, client, telemetry) {
        Ok(Exit::Clean) => {
            log::info!("done");
            ExitCode::SUCCESS
        }
        // Logged by the core: the API server did not answer in time, so followers may
        // wait out the lease. Not a clean shutdown.
        Ok(Exit::Incomplete) => ExitCode::from(1),
        // Logged by the core; the old pod is gone, so is its container.
        Ok(Exit::Replaced) => ExitCode::from(1),
        Err(e) => {
            log::error!("{e}");
            ExitCode::from(1)
        }
    }
}
