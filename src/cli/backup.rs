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
    // With escrow recipients, ckan.ini (JWT secret!) is stored sealed to them.
    let mut plan = loaded.config.backup_plan(loaded.config.config_sealer()?)?;
    plan.extra_tags = args.tags;
    let vault = super::open_vault_with_progress(g, &loaded).inspect_err(|e| {
        ckan_vault::hooks::report_failure(&loaded.config, &format!("backup: {e:#}"))
    })?;
    let pg = ckan_vault::pg::Pg::new()?;
    // Under the run lock, with metrics and pings ([monitoring]).
    let settings = ckan_vault::hooks::Settings::new(ckan_vault::vault::lock::Owner::this_process());
    let (out, guard) =
        ckan_vault::hooks::guarded_backup(&loaded.config, &vault, &pg, &plan, &settings)?;
    let mut json = serde_json::to_value(&out)?;
    json["ok"] = true.into();
    json["vault"] = serde_json::to_value(guard.stats)?;
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
    for w in out.warnings.iter().chain(&guard.warnings) {
        human.push_str(&format!("  warning: {w}\n"));
    }
    g.print(&json, &human);
    Ok(ExitCode::SUCCESS)
}
