//! Progress bars on a terminal (bytes, rate, elapsed time) for rustic_core's long operations.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use rustic_core::{Progress, ProgressBars, ProgressType, RusticProgress};

/// indicatif bars on stderr.
#[derive(Debug, Clone, Copy)]
pub struct Bars;

impl ProgressBars for Bars {
    fn progress(&self, kind: ProgressType, prefix: &str) -> Progress {
        let template = match kind {
            ProgressType::Bytes => {
                "{spinner} {prefix} {bytes} at {binary_bytes_per_sec}, {elapsed}"
            }
            ProgressType::Counter => "{spinner} {prefix} {pos}, {elapsed}",
            ProgressType::Spinner => "{spinner} {prefix} {elapsed}",
        };
        let pb = ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        pb.set_prefix(prefix.trim_end_matches("...").to_string());
        pb.enable_steady_tick(Duration::from_millis(120));
        Progress::new(Bar { pb, kind })
    }
}

#[derive(Debug)]
struct Bar {
    pb: ProgressBar,
    kind: ProgressType,
}

impl RusticProgress for Bar {
    fn is_hidden(&self) -> bool {
        false
    }

    fn set_length(&self, len: u64) {
        let template = match self.kind {
            ProgressType::Bytes => {
                "{prefix} [{bar:30}] {bytes}/{total_bytes} at {binary_bytes_per_sec}, ETA {eta}"
            }
            _ => "{prefix} [{bar:30}] {pos}/{len}, ETA {eta}",
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            self.pb.set_style(style.progress_chars("=> "));
        }
        self.pb.set_length(len);
    }

    fn set_title(&self, title: &str) {
        self.pb.set_prefix(title.to_string());
    }

    fn inc(&self, inc: u64) {
        self.pb.inc(inc);
    }

    fn finish(&self) {
        self.pb.finish_and_clear();
    }
}
