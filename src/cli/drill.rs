//! `ckan-vault drill`

use std::process::ExitCode;

use anyhow::Result;
use ckan_vault::drill::{self, DrillOptions, DrillReport};
use ckan_vault::pg::{ConnInfo, Target};
use ckan_vault::report;

use super::{Global, UsageError};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// `latest`, `latest~N` or a snapshot id
    #[arg(default_value = "latest")]
    snapshot: String,
    /// Only backups of this site (the snapshot label `ckan-vault snapshots` shows) count
    /// for `latest`, in a vault several sites share [default: every site's]
    #[arg(long, value_name = "LABEL")]
    site: Option<String>,
    /// Restore into uniquely named databases on this server (dropped afterwards) instead of
    /// a throwaway cluster
    #[arg(long, value_name = "URL")]
    scratch: Option<String>,
    /// Keep the scratch cluster or databases for inspection
    #[arg(long)]
    keep: bool,
    /// Percent of storage files to read back and hash [default: [drill] storage-sample or 100]
    #[arg(long, value_name = "PERCENT")]
    storage_sample: Option<f64>,
    /// Sessions that load big tables, read them back and build indexes in parallel
    /// [default: [database] jobs, else one per core]
    #[arg(long, short = 'j', value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    jobs: Option<u16>,
    /// List past drills instead of running one
    #[arg(long, conflicts_with_all = ["scratch", "keep", "storage_sample", "jobs"])]
    history: bool,
}

pub fn run(g: &Global, args: Args) -> Result<ExitCode> {
    let loaded = g.load()?;
    let vault = super::open_vault_with_progress(g, &loaded)?;
    if args.history {
        let past = drill::history(&vault)?;
        let mut human = format!(
            "{:<20} {:<10} {:<8} {:>8} {:>8}  {}\n",
            "DRILLED (UTC)", "SNAPSHOT", "VERDICT", "RTO", "TOTAL", "FAILED CHECKS"
        );
        for r in &past {
            let failed: Vec<&str> = r.failed_checks().map(|c| c.name.as_str()).collect();
            human.push_str(&format!(
                "{:<20} {:<10} {:<8} {:>8} {:>8}  {}\n",
                r.finished.strftime("%Y-%m-%d %H:%M:%S"),
                &r.snapshot[..8],
                r.verdict,
                report::duration(r.timings.rto_seconds),
                report::duration(r.timings.total_seconds),
                failed.join(", ")
            ));
        }
        human.push_str(&format!("{} drills\n", past.len()));
        g.print(&serde_json::json!({"ok": true, "drills": past}), &human);
        return Ok(ExitCode::SUCCESS);
    }
    let scratch = match &args.scratch {
        Some(url) => Some(
            loaded
                .config
                .target(ConnInfo::parse(url).map_err(|e| UsageError(e.to_string()))?),
        ),
        None => None,
    };
    let sample = args
        .storage_sample
        .or(loaded.config.drill.storage_sample)
        .unwrap_or(100.0);
    if !(0.0..=100.0).contains(&sample) {
        return Err(UsageError(format!(
            "--storage-sample {sample}: give a percentage from 0 to 100"
        ))
        .into());
    }
    let pg = ckan_vault::pg::Pg::new()?;
    if args.scratch.is_none() && !args.keep {
        super::interrupt::remove_scratch_clusters_on_signal();
    }
    let rep = drill::run(
        &vault,
        &pg,
        &DrillOptions {
            snapshot: args.snapshot,
            scratch: scratch.map(|t: Target| t),
            keep: args.keep,
            storage_sample: sample,
            jobs: args
                .jobs
                .map(usize::from)
                .or(loaded.config.database.jobs)
                .unwrap_or(0),
            site: args.site,
        },
    );
    super::interrupt::settle();
    let rep = rep?;
    if let Some(path) = &loaded.config.monitoring.metrics_file
        && let Err(e) = report::update_metrics(path, &rep.metrics())
    {
        log::warn!("cannot write metrics file {}: {e}", path.display());
    }
    let mut json = serde_json::to_value(&rep)?;
    json["ok"] = rep.passed().into();
    g.print_result(&json, &human(&rep), rep.passed());
    Ok(if rep.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn human(r: &DrillReport) -> String {
    let mut s = format!(
        "drill of snapshot {} ({}) in {}\n",
        &r.snapshot[..8],
        r.snapshot_time,
        r.scratch
    );
    for c in &r.checks {
        s.push_str(&format!(
            "  [{}] {}: {}\n",
            if c.ok { " ok " } else { "FAIL" },
            c.name,
            c.detail
        ));
    }
    s.push_str(&format!(
        "  restored {} in {} (RTO), {} in all, {}/s, peak RSS {}\n",
        report::bytes(r.timings.bytes_read),
        report::duration(r.timings.rto_seconds),
        report::duration(r.timings.total_seconds),
        report::bytes(r.timings.bytes_per_second as u64),
        report::bytes(r.timings.peak_rss_bytes),
    ));
    if r.passed() {
        s.push_str(&format!(
            "PASS, recorded as snapshot {}\n",
            r.recorded_as.as_deref().map_or("?", |x| &x[..8])
        ));
    } else {
        let failed: Vec<&str> = r.failed_checks().map(|c| c.name.as_str()).collect();
        s.push_str(&format!(
            "FAILED: {} (recorded as snapshot {})\n",
            failed.join(", "),
            r.recorded_as.as_deref().map_or("?", |x| &x[..8])
        ));
    }
    s
}
