//! Log setup: one line per event, with a UTC timestamp, to stderr. `RUST_LOG` sets the
//! levels (default info; debug-level lines exist in debug builds only); `-v` turns on
//! the API trace (target `api`), `-vv` its bodies (target `api::body`). The trace shows
//! every conflict, retry and reconnect, which is what debug lines would say.

use crate::api::types::micro_time;
use std::io::Write;
use std::time::SystemTime;

pub fn init(verbosity: u8) {
    let mut b = env_logger::Builder::new();
    b.filter_level(log::LevelFilter::Info);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        b.parse_filters(&spec);
    }
    // Release builds keep log calls up to info only (log's release_max_level_info: it
    // keeps the static binary under 2 MB). The API trace is therefore at info level,
    // under targets of its own that only -v and -vv switch on.
    b.filter_module(
        "api",
        if verbosity >= 1 {
            log::LevelFilter::Info
        } else {
            log::LevelFilter::Off
        },
    );
    b.filter_module(
        "api::body",
        if verbosity >= 2 {
            log::LevelFilter::Info
        } else {
            log::LevelFilter::Off
        },
    );
    b.format(|buf, record| {
        // UTC with milliseconds, like 2026-01-02T03:04:05.123Z.
        let micro = micro_time(SystemTime::now());
        let ts = format!("{}Z", &micro[..23]);
        if record.target().starts_with("api") {
            writeln!(buf, "{ts} api   {}", record.args())
        } else {
            writeln!(buf, "{ts} {:<5} {}", record.level(), record.args())
        }
    });
    b.init();
}
