//! `ckan-vault hook pre-backup|post-backup|failed|finally`

use std::process::ExitCode;

use anyhow::Result;
use ckan_vault::hooks::{self, HookKind, HookOutcome, Settings};
use ckan_vault::report;
use ckan_vault::vault::lock::Owner;

use super::{Global, UsageError};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Kind {
    /// Check the databases, the vault and temp space; take the run lock
    PreBackup,
    /// Apply retention, write metrics, ping success
    PostBackup,
    /// Write failure metrics, ping /fail with the error
    Failed,
    /// Release the run lock
    Finally,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(value_enum)]
    kind: Kind,
    /// post-backup: also prune (needs the vault to itself)
    #[arg(long)]
    prune: bool,
    /// failed: the error text for the /fail ping
    #[arg(long, env = "CKAN_VAULT_HOOK_ERROR", value_name = "TEXT")]
    message: Option<String>,
    /// The process the run lock belongs to [default: the parent process, e.g. rustic]
    #[arg(long, value_name = "PID")]
    owner_pid: Option<u32>,
    /// pre-backup: free space temp directories need
    #[arg(long, default_value = "1GiB", value_name = "SIZE")]
    min_free: String,
}

pub fn run(g: &Global, args: Args) -> Result<ExitCode> {
    let kind = match args.kind {
        Kind::PreBackup => HookKind::PreBackup,
        Kind::PostBackup => HookKind::PostBackup,
        Kind::Failed => HookKind::Failed,
        Kind::Finally => HookKind::Finally,
    };
    let min_free: bytesize::ByteSize = args
        .min_free
        .parse()
        .map_err(|e| UsageError(format!("--min-free {}: {e}", args.min_free)))?;
    let loaded = g.load()?;
    let mut s = Settings::new(match args.owner_pid {
        Some(pid) => Owner::of_pid(pid),
        None => Owner::parent_process(),
    });
    s.prune = args.prune;
    s.message = args.message;
    s.min_free_bytes = min_free.as_u64();
    let out = hooks::run(kind, &loaded.config, &s)?;
    let mut json = serde_json::to_value(&out)?;
    json["ok"] = true.into();
    g.print(&json, &human(&out));
    Ok(ExitCode::SUCCESS)
}

fn human(o: &HookOutcome) -> String {
    let mut s = String::new();
    for c in &o.checks {
        s.push_str(&format!(
            "  {} {}: {}\n",
            if c.ok { "ok  " } else { "FAIL" },
            c.name,
            c.detail
        ));
    }
    if o.hook == HookKind::PreBackup
        && let Some(l) = &o.lock
    {
        s.push_str(&format!(
            "took the run lock for pid {} ({})\n",
            l.owner.pid, l.command
        ));
    }
    if let Some(f) = &o.forget {
        let kept = f.plan.items.iter().filter(|i| i.keep).count();
        s.push_str(&format!(
            "retention: kept {kept} backups, removed {}\n",
            f.removed
        ));
        if let Some(p) = &f.prune {
            s.push_str(&format!(
                "prune: removed {} packs ({}), marked {}\n",
                p.packs_removed,
                report::bytes(p.bytes_removed),
                p.packs_marked
            ));
        }
    }
    if let Some(st) = &o.stats {
        s.push_str(&format!(
            "vault: {} snapshots, {}\n",
            st.snapshots,
            report::bytes(st.size_bytes)
        ));
    }
    if let Some(m) = &o.message {
        s.push_str(&format!("reported failure: {m}\n"));
    }
    if let Some(r) = &o.released {
        s.push_str(&format!("{r}\n"));
    }
    for w in &o.warnings {
        s.push_str(&format!("  warning: {w}\n"));
    }
    s
}
