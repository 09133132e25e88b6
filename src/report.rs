//! Reports for people and machines: sizes and durations, and the Prometheus metrics file.

use std::io::Write;
use std::path::Path;

/// `1536` → `1.5 KiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Seconds as `1.2 s` or `3 min 4 s`.
pub fn duration(secs: f64) -> String {
    if secs < 60.0 {
        format!("{secs:.1} s")
    } else {
        let m = (secs / 60.0).floor();
        format!("{m:.0} min {:.0} s", secs - m * 60.0)
    }
}

/// One metric sample for the textfile collector.
#[derive(Debug, Clone)]
pub struct Metric {
    pub name: String,
    pub help: String,
    pub value: f64,
}

impl Metric {
    pub fn new(name: &str, help: &str, value: f64) -> Self {
        Self {
            name: name.to_string(),
            help: help.to_string(),
            value,
        }
    }
}

/// Updates metrics in a Prometheus textfile-collector file, atomically (write a temporary
/// file next to it, then rename), keeping the metrics this run does not set.
pub fn update_metrics(path: &Path, metrics: &[Metric]) -> std::io::Result<()> {
    let mut current: Vec<Metric> = Vec::new();
    if let Ok(text) = std::fs::read_to_string(path) {
        let mut help = std::collections::HashMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ")
                && let Some((n, h)) = rest.split_once(' ')
            {
                help.insert(n.to_string(), h.to_string());
            } else if !line.starts_with('#')
                && let Some((n, v)) = line.split_once(' ')
                && let Ok(v) = v.trim().parse::<f64>()
            {
                current.push(Metric {
                    name: n.to_string(),
                    help: help.get(n).cloned().unwrap_or_default(),
                    value: v,
                });
            }
        }
    }
    for m in metrics {
        match current.iter_mut().find(|c| c.name == m.name) {
            Some(c) => *c = m.clone(),
            None => current.push(m.clone()),
        }
    }
    current.sort_by(|a, b| a.name.cmp(&b.name));
    let mut text = String::new();
    for m in &current {
        text.push_str(&format!(
            "# HELP {} {}\n# TYPE {} gauge\n{} {}\n",
            m.name, m.help, m.name, m.name, m.value
        ));
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_all()?;
    let perm = std::fs::Permissions::from_mode(0o644);
    std::fs::set_permissions(tmp.path(), perm)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

use std::os::unix::fs::PermissionsExt;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(bytes(10), "10 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(duration(2.04), "2.0 s");
        assert_eq!(duration(125.0), "2 min 5 s");
    }

    #[test]
    fn metrics_file_is_merged_and_parses() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ckan_vault.prom");
        update_metrics(
            &p,
            &[
                Metric::new("a_total", "A.", 1.0),
                Metric::new("b", "B.", 2.5),
            ],
        )
        .unwrap();
        update_metrics(&p, &[Metric::new("a_total", "A.", 3.0)]).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.contains("a_total 3\n") && text.contains("b 2.5\n"),
            "{text}"
        );
        assert_eq!(text.matches("# TYPE").count(), 2);
    }
}
