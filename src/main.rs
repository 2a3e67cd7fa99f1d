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

fn main() -> ExitCode {
    let raw = match cli::parse(std::env::args_os().skip(1).collect()) {
        Ok(Command::Help) => {
            print!("{}", cli::help());
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
    let cfg = match Config::build(raw, &Environment::system()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("leader-labeler: {e}");
            return ExitCode::from(2);
        }
    };
    logging::init(cfg.verbosity);
    log::info!("{}", cli::version());

    let telemetry = Arc::new(
        Telemetry::new(&cfg.pod_name, cfg.renew_deadline).with_election(&cfg.election_name),
    );
    let client = match Client::new(
        &cfg.connection,
        ClientOptions {
            on_response: Some({
                let t = telemetry.clone();
                Arc::new(move |method, status| t.count_request(method, status))
            }),
            ..cfg.client_options()
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
