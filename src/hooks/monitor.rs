//! Monitoring: the Prometheus textfile-collector file and healthchecks.io-style pings.
//!
//! Neither may turn a good backup into a failed one: a metrics file that cannot be written
//! or a ping that does not arrive is a warning, returned to the caller and logged.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::MonitoringSection;
use crate::report::{Metric, update_metrics};
use crate::vault::maintenance::VaultStats;

/// Metric names (Prometheus textfile collector, all gauges).
pub mod names {
    pub const LAST_SUCCESS: &str = "ckan_vault_last_backup_success_timestamp_seconds";
    pub const LAST_FAILURE: &str = "ckan_vault_last_backup_failure_timestamp_seconds";
    pub const DURATION: &str = "ckan_vault_backup_duration_seconds";
    pub const ADDED: &str = "ckan_vault_backup_added_bytes";
    pub const SNAPSHOTS: &str = "ckan_vault_snapshot_count";
    pub const SIZE: &str = "ckan_vault_repository_size_bytes";
}

/// What a ping reports (healthchecks.io: `/start`, the bare URL, `/fail`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Start,
    Success,
    Fail,
}

/// A successful run's figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct Success {
    pub duration_seconds: Option<f64>,
    pub added_bytes: Option<u64>,
    pub stats: Option<VaultStats>,
}

/// Where monitoring goes.
#[derive(Debug, Clone, Default)]
pub struct Monitor {
    pub metrics_file: Option<PathBuf>,
    pub ping_url: Option<String>,
    pub timeout: Duration,
}

/// At most this much text goes into a ping body (healthchecks.io keeps 100 kB).
const MAX_BODY: usize = 10_000;

fn now_seconds() -> f64 {
    jiff::Timestamp::now().as_millisecond() as f64 / 1000.0
}

impl Monitor {
    pub fn new(section: &MonitoringSection) -> Self {
        Self {
            metrics_file: section.metrics_file.clone(),
            ping_url: section.ping_url.clone().filter(|u| !u.is_empty()),
            timeout: Duration::from_secs(10),
        }
    }

    /// The URL for a signal.
    pub fn url(&self, signal: Signal) -> Option<String> {
        let base = self.ping_url.as_deref()?.trim_end_matches('/');
        Some(match signal {
            Signal::Start => format!("{base}/start"),
            Signal::Success => base.to_string(),
            Signal::Fail => format!("{base}/fail"),
        })
    }

    /// Sends a ping (POST with `body`); returns a warning if it did not arrive.
    pub fn ping(&self, signal: Signal, body: &str) -> Option<String> {
        let url = self.url(signal)?;
        let mut body = body.to_string();
        if body.len() > MAX_BODY {
            let mut cut = MAX_BODY;
            while !body.is_char_boundary(cut) {
                cut -= 1;
            }
            body.truncate(cut);
        }
        // The path of a ping URL is its secret (anyone with it can ping): show the host only.
        let shown = url::Url::parse(&url)
            .ok()
            .and_then(|u| u.host_str().map(|h| format!("{}://{h}/…", u.scheme())))
            .unwrap_or_else(|| "(ping-url)".into());
        let result = reqwest::blocking::Client::builder()
            .timeout(self.timeout)
            .build()
            .and_then(|c| {
                c.post(&url)
                    .header("content-type", "text/plain; charset=utf-8")
                    .body(body)
                    .send()
            });
        let warning = match result {
            Ok(r) if r.status().is_success() => return None,
            Ok(r) => format!("ping {shown} answered {}", r.status()),
            Err(e) => format!("ping {shown} failed: {}", one_line(&e)),
        };
        log::warn!("{warning}");
        Some(warning)
    }

    fn write(&self, metrics: &[Metric]) -> Option<String> {
        let path = self.metrics_file.as_ref()?;
        match update_metrics(path, metrics) {
            Ok(()) => None,
            Err(e) => {
                let w = format!("cannot write metrics file {}: {e}", path.display());
                log::warn!("{w}");
                Some(w)
            }
        }
    }

    /// Records a successful backup in the metrics file.
    pub fn record_success(&self, s: &Success) -> Option<String> {
        let mut m = vec![Metric::new(
            names::LAST_SUCCESS,
            "Unix time of the last successful ckan-vault backup.",
            now_seconds(),
        )];
        if let Some(d) = s.duration_seconds {
            m.push(Metric::new(
                names::DURATION,
                "Duration of the last successful backup in seconds.",
                d,
            ));
        }
        if let Some(a) = s.added_bytes {
            m.push(Metric::new(
                names::ADDED,
                "New data (before compression) the last backup added to the vault.",
                a as f64,
            ));
        }
        if let Some(st) = s.stats {
            m.push(Metric::new(
                names::SNAPSHOTS,
                "Snapshots in the vault (all kinds).",
                st.snapshots as f64,
            ));
            m.push(Metric::new(
                names::SIZE,
                "Size of the vault's packs, indexes, snapshots and keys in bytes.",
                st.size_bytes as f64,
            ));
        }
        self.write(&m)
    }

    /// Records a failed backup in the metrics file.
    pub fn record_failure(&self) -> Option<String> {
        self.write(&[Metric::new(
            names::LAST_FAILURE,
            "Unix time of the last failed ckan-vault backup.",
            now_seconds(),
        )])
    }
}

fn one_line(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let m = Monitor {
            ping_url: Some("https://hc.example/ping/abc/".into()),
            ..Default::default()
        };
        assert_eq!(
            m.url(Signal::Start).unwrap(),
            "https://hc.example/ping/abc/start"
        );
        assert_eq!(
            m.url(Signal::Success).unwrap(),
            "https://hc.example/ping/abc"
        );
        assert_eq!(
            m.url(Signal::Fail).unwrap(),
            "https://hc.example/ping/abc/fail"
        );
        assert!(Monitor::default().url(Signal::Fail).is_none());
        assert!(Monitor::default().ping(Signal::Fail, "x").is_none());
    }
}
