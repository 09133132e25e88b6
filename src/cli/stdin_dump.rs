//! `ckan-vault stdin-dump [--db main|datastore]`

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::Result;
use ckan_vault::hooks::{self, Monitor, Signal};
use ckan_vault::report;

use super::{Global, UsageError};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Db {
    Main,
    Datastore,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which database to dump
    #[arg(long, value_enum, default_value = "main")]
    db: Db,
    /// On failure, also stop the process that started this one with SIGTERM (for rustic,
    /// which saves a stdin-command's snapshot before it checks the exit status)
    #[arg(long)]
    abort_parent: bool,
}

pub fn run(g: &Global, args: Args) -> Result<ExitCode> {
    let loaded = g.load()?;
    let site = loaded.config.site()?;
    let target = match args.db {
        Db::Main => site.main.clone(),
        Db::Datastore => site.datastore.clone().ok_or_else(|| {
            UsageError(
                "no DataStore database configured (ckan.datastore.write_url or [ckan] datastore-url)"
                    .into(),
            )
        })?,
    };
    let stdout = std::io::stdout();
    let result = if stdout.is_terminal() {
        Err(ckan_vault::stdin_dump::StdinDumpError::Terminal)
    } else {
        let pg = ckan_vault::pg::Pg::new()?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
        let r = ckan_vault::stdin_dump::run(&pg, &target, &mut out);
        let flushed = out.flush();
        r.and_then(|o| {
            flushed
                .map(|()| o)
                .map_err(ckan_vault::stdin_dump::StdinDumpError::Write)
        })
    };
    // stdout carries the dump: reports go to stderr, also with --json.
    match result {
        Ok(o) => {
            if g.json {
                let mut j = serde_json::to_value(&o)?;
                j["ok"] = true.into();
                eprintln!("{j}");
            } else if !g.quiet {
                eprintln!(
                    "ckan-vault: dumped {}: {} tables, {} rows, {} in {}",
                    o.database,
                    o.tables,
                    o.rows,
                    report::bytes(o.bytes),
                    report::duration(o.duration_seconds)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let category = ckan_vault::error::Categorized::category(&e);
            let msg = format!("stdin-dump of {}: {e}", target.conn.database());
            let state = ckan_vault::vault::lock::state_dir();
            hooks::note_failure(&loaded.config, &state, &msg);
            if args.abort_parent && !matches!(e, ckan_vault::stdin_dump::StdinDumpError::Terminal) {
                // The framework's own failure hooks will not run: report here.
                let m = Monitor::new(&loaded.config.monitoring);
                m.record_failure();
                m.ping(Signal::Fail, &msg);
                match ckan_vault::stdin_dump::abort_parent() {
                    Ok(pid) => {
                        log::warn!("stopped the parent process {pid} so it saves no snapshot")
                    }
                    Err(err) => log::warn!("could not stop the parent process: {err}"),
                }
            }
            eprintln!("ckan-vault: error: {msg}");
            if g.json {
                eprintln!(
                    "{}",
                    serde_json::json!({"ok": false, "error": msg, "exit_code": category.exit_code()})
                );
            }
            Ok(ExitCode::from(category.exit_code()))
        }
    }
}
