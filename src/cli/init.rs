//! `ckan-vault init`

use std::process::ExitCode;

use anyhow::Result;

use super::Global;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(g: &Global, _args: Args) -> Result<ExitCode> {
    let loaded = g.load()?;
    let cfg = loaded.config.vault()?;
    ckan_vault::vault::Vault::init(&cfg)?;
    g.print(
        &serde_json::json!({"ok": true, "repository": cfg.shown()}),
        &format!("created vault {}\n", cfg.shown()),
    );
    Ok(ExitCode::SUCCESS)
}
