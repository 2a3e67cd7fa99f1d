//! Log setup: one line per event, with a UTC timestamp, to stderr. `RUST_LOG` sets the
//! levels (default info); `-v` turns on the API trace (target `api`), `-vv` its bodies.

use crate::kube::types::micro_time;
use std::io::Write;
use std::time::SystemTime;

pub fn init(verbosity: u8) {
    let mut b = env_logger::Builder::new();
    b.filter_level(log::LevelFilter::Info);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        b.parse_filters(&spec);
    }
    match verbosity {
        0 => {}
        1 => {
            b.filter_module("api", log::LevelFilter::Debug);
        }
        _ => {
            b.filter_module("api", log::LevelFilter::Trace);
        }
    }
    b.format(|buf, record| {
        // UTC with milliseconds, like 2026-01-02T03:04:05.123Z.
        let micro = micro_time(SystemTime::now());
        let ts = format!("{}Z", &micro[..23]);
        if record.target() == "api" {
            writeln!(buf, "{ts} api   {}", record.args())
        } else {
            writeln!(buf, "{ts} {:<5} {}", record.level(), record.args())
        }
    });
    b.init();
}
