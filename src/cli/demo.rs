//! `ckan-vault demo`

use std::process::ExitCode;

use anyhow::Result;
use ckan_vault::demo::SampleSite;

use super::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Size of the sample site, in packages
    #[arg(long, default_value_t = 2000)]
    packages: u32,
    /// Print the sample site's SQL instead of running the demo (for bench/run)
    #[arg(long, value_name = "PART", value_parser = ["main", "datastore", "churn", "changed"], hide = true)]
    print_sql: Option<String>,
    /// Churn round for --print-sql churn and changed
    #[arg(long, default_value_t = 1, hide = true)]
    round: u32,
}

pub fn run(g: &Global, args: Args) -> Result<ExitCode> {
    let site = SampleSite {
        packages: args.packages,
    };
    match args.print_sql.as_deref() {
        Some("main") => print!("{}", site.main_sql()),
        Some("datastore") => print!("{}", site.datastore_sql()),
        Some("changed") => println!("{}", site.changed_bytes_sql(1.0, args.round)),
        Some(_) => print!("{}", site.churn_sql(1.0, args.round)),
        None => {
            super::interrupt::remove_scratch_clusters_on_signal();
            let report = ckan_vault::demo::run(&ckan_vault::demo::DemoOptions {
                packages: args.packages,
            })?;
            let ok = report.ok;
            g.print(&serde_json::to_value(&report)?, &report.human());
            return Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}
