//! `ckan-vault snapshots`

use std::process::ExitCode;

use anyhow::Result;
use ckan_vault::report;
use ckan_vault::vault::Kind;

use super::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Show every kind (drills, escrow, revocations), not only backups
    #[arg(long)]
    all: bool,
}

pub fn run(g: &Global, args: Args) -> Result<ExitCode> {
    let loaded = g.load()?;
    let vault = super::open_vault(&loaded)?;
    let snaps = if args.all {
        vault.all_snapshots()?
    } else {
        vault.snapshots(Kind::Backup)?
    };
    let mut rows = Vec::new();
    let mut human = format!(
        "{:<10} {:<20} {:<11} {:<24} {:>10} {:>10}\n",
        "ID", "TIME (UTC)", "KIND", "LABEL", "SIZE", "ADDED"
    );
    for s in &snaps {
        let kind = Kind::of(s).map_or("other", Kind::tag);
        let summary = s.summary.clone().unwrap_or_default();
        let time = s.time.timestamp().strftime("%Y-%m-%d %H:%M:%S").to_string();
        human.push_str(&format!(
            "{:<10} {:<20} {:<11} {:<24} {:>10} {:>10}\n",
            &s.id.to_string()[..8],
            time,
            kind,
            s.label,
            report::bytes(summary.total_bytes_processed),
            report::bytes(summary.data_added_packed),
        ));
        rows.push(serde_json::json!({
            "id": s.id.to_hex().to_string(),
            "time": s.time.timestamp().to_string(),
            "kind": kind,
            "label": s.label,
            "host": s.hostname,
            "tags": s.tags.iter().collect::<Vec<_>>(),
            "description": s.description,
            "bytes_processed": summary.total_bytes_processed,
            "data_added": summary.data_added,
            "data_added_packed": summary.data_added_packed,
        }));
    }
    human.push_str(&format!("{} snapshots\n", snaps.len()));
    g.print(&serde_json::json!({"ok": true, "snapshots": rows}), &human);
    Ok(ExitCode::SUCCESS)
}
