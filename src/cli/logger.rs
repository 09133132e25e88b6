//! A small stderr logger: warnings by default, more with -v, nothing but errors with -q.

use log::{Level, LevelFilter, Log, Metadata, Record};

struct Stderr {
    level: LevelFilter,
}

impl Log for Stderr {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= self.level
    }

    fn log(&self, r: &Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let tag = match r.level() {
            Level::Error => "error",
            Level::Warn => "warning",
            Level::Info => "info",
            Level::Debug => "debug",
            Level::Trace => "trace",
        };
        let msg = r.args().to_string();
        eprintln!("ckan-vault: {tag}: {}", msg.trim_end());
    }

    fn flush(&self) {}
}

/// 0: errors, 1: warnings, 2: info, 3+: debug.
pub fn init(verbosity: u8) {
    let level = match verbosity {
        0 => LevelFilter::Error,
        1 => LevelFilter::Warn,
        2 => LevelFilter::Info,
        _ => LevelFilter::Debug,
    };
    let _ = log::set_boxed_logger(Box::new(Stderr { level }));
    log::set_max_level(level);
}
