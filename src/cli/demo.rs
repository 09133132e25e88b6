//! `ckan-vault demo`

use std::process::ExitCode;

use anyhow::Result;

use super::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Size of the sample site, in packages
    #[arg(long, default_value_t = 2000)]
    packages: u32,
}

pub fn run(g: &Global, args: Args) -> Result<ExitCode> {
    let report = ckan_vault::demo::run(&ckan_vault::demo::DemoOptions {
        packages: args.packages,
    })?;
    let ok = report.ok;
    g.print(&serde_json::to_value(&report)?, &report.human());
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
