//! Log setup: one line per event, with a UTC timestamp, to stderr. `RUST_LOG` sets the
//! levels (default info); `-v` turns on the API trace (target `api`), `-vv` its bodies.

use std::io::Write;

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
        let ts = buf.timestamp_millis();
        if record.target() == "api" {
            writeln!(buf, "{ts} api   {}", record.args())
        } else {
            writeln!(buf, "{ts} {:<5} {}", record.level(), record.args())
        }
    });
    b.init();
}
