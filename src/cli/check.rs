//! `ckan-vault check [--read-data[=SUBSET]]`

use std::process::ExitCode;

use anyhow::Result;

use super::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Also read and verify the data: all of it, or a subset (10%, 1/7 for one seventh, 500M)
    #[arg(long, value_name = "SUBSET", num_args = 0..=1, default_missing_value = "all", require_equals = true)]
    read_data: Option<String>,
}

pub fn run(g: &Global, args: Args) -> Result<ExitCode> {
    let loaded = g.load()?;
    let vault = super::open_vault(&loaded)?;
    let report = vault.check(args.read_data.as_deref())?;
    let ok = report.ok();
    let mut json = serde_json::to_value(&report)?;
    json["ok"] = ok.into();
    let mut human = String::new();
    for e in &report.errors {
        human.push_str(&format!("error: {e}\n"));
    }
    for w in &report.warnings {
        human.push_str(&format!("warning: {w}\n"));
    }
    let scope = match &report.read_data {
        None => "structure and indexes".to_string(),
        Some(s) if s == "all" => "structure, indexes and all data".to_string(),
        Some(s) => format!("structure, indexes and data subset {s}"),
    };
    if ok {
        human.push_str(&format!("vault {}: {scope} ok\n", vault.name()));
    } else {
        human.push_str(&format!(
            "FAILED: vault {}: {} errors in {scope}\n",
            vault.name(),
            report.errors.len()
        ));
    }
    g.print(&json, &human);
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
