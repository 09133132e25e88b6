//! `ckan-vault forget [--prune] [--dry-run]`

use std::process::ExitCode;

use anyhow::Result;
use ckan_vault::hooks::{self, Settings};
use ckan_vault::report;
use ckan_vault::vault::lock::Owner;

use super::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Also remove the data no snapshot needs any more (takes the vault exclusively)
    #[arg(long)]
    prune: bool,
    /// Only show what would go
    #[arg(long, short = 'n')]
    dry_run: bool,
}

pub fn run(g: &Global, args: Args) -> Result<ExitCode> {
    let loaded = g.load()?;
    let retention = loaded.config.retention()?;
    let vcfg = loaded.config.vault()?;
    let vault = super::open_vault(&loaded)?;
    let mut s = Settings::new(Owner::this_process());
    s.prune = args.prune;
    s.dry_run = args.dry_run;
    let out = hooks::forget(&vault, &vcfg, &retention, &s)?;
    let mut json = serde_json::to_value(&out)?;
    json["ok"] = true.into();
    let mut human = String::new();
    for i in &out.plan.items {
        human.push_str(&format!(
            "{} {:<10} {:<26} {}\n",
            if i.keep { "keep  " } else { "remove" },
            &i.id[..8],
            i.time,
            i.reasons.join(", ")
        ));
    }
    let going = out.plan.items.iter().filter(|i| !i.keep).count();
    if out.dry_run {
        human.push_str(&format!(
            "would remove {going} of {} backup snapshots (dry run; {} other snapshots are never touched)\n",
            out.plan.items.len(),
            out.plan.other_snapshots
        ));
    } else {
        human.push_str(&format!(
            "removed {} of {} backup snapshots ({} other snapshots are never touched)\n",
            out.removed,
            out.plan.items.len(),
            out.plan.other_snapshots
        ));
    }
    if let Some(d) = &out.plan.drilled {
        human.push_str(&format!("newest drilled backup {} is kept\n", &d[..8]));
    }
    if let Some(p) = &out.prune {
        human.push_str(&format!(
            "prune{}: {} packs removed ({}), {} unused packs marked for deletion by a later prune, {} repacked\n",
            if p.dry_run { " (dry run)" } else { "" },
            p.packs_removed,
            report::bytes(p.bytes_removed),
            p.packs_marked,
            p.packs_repacked
        ));
    }
    g.print(&json, &human);
    Ok(ExitCode::SUCCESS)
}
