//! `ckan-vault backup`

use std::process::ExitCode;

use anyhow::Result;
use ckan_vault::report;

use super::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Extra tag for the snapshot (repeatable)
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
}

pub fn run(g: &Global, args: Args) -> Result<ExitCode> {
    let loaded = g.load()?;
    let mut plan = loaded.config.backup_plan(None)?;
    plan.extra_tags = args.tags;
    let vault = super::open_vault(&loaded)?;
    let pg = ckan_vault::pg::Pg::new()?;
    let out = ckan_vault::backup::run(&vault, &pg, &plan)?;
    let mut json = serde_json::to_value(&out)?;
    json["ok"] = true.into();
    let mut human = format!(
        "snapshot {} of {}: {} tables, {} rows, {} storage files\n  read {}, added {} ({} stored) in {}\n",
        &out.snapshot[..8],
        plan.site,
        out.tables,
        out.rows,
        out.storage_files,
        report::bytes(out.bytes_processed),
        report::bytes(out.data_added),
        report::bytes(out.data_added_packed),
        report::duration(out.duration_seconds),
    );
    for w in &out.warnings {
        human.push_str(&format!("  warning: {w}\n"));
    }
    g.print(&json, &human);
    Ok(ExitCode::SUCCESS)
}
