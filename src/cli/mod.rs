//! The command-line interface: flags are parsed once into typed options, each subcommand
//! lives in its own file and only calls the library and prints.

mod backup;
mod check;
mod demo;
mod drill;
mod dump;
mod forget;
mod hook;
mod init;
mod interrupt;
mod logger;
mod progress;
mod restore;
mod snapshots;
mod stdin_dump;
mod token;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use ckan_vault::config::Loaded;
use ckan_vault::error::{Categorized, Category};

/// Backups, restore drills and escrowed access tokens for CKAN sites.
#[derive(Debug, Parser)]
#[command(name = "ckan-vault", version, about, max_term_width = 100)]
pub struct Cli {
    /// Configuration file [default: $CKAN_VAULT_CONFIG, /etc/ckan-vault/ckan-vault.toml, ./ckan-vault.toml]
    #[arg(long, global = true, env = "CKAN_VAULT_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// The vault (overrides [repository] repository)
    #[arg(long, global = true, value_name = "REPOSITORY")]
    repo: Option<String>,
    /// Set one configuration key (repeatable), e.g. --set database.jobs=2; wins over the
    /// file and the environment. Never a password: put those in files.
    #[arg(long = "set", global = true, value_name = "SECTION.KEY=VALUE")]
    set: Vec<String>,
    /// Print one JSON object on stdout (logs stay on stderr)
    #[arg(long, global = true)]
    json: bool,
    /// Only errors
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// More detail on stderr (-v: progress, -vv: debug)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the vault named in the configuration
    Init(init::Args),
    /// Back up the whole CKAN site as one snapshot
    Backup(backup::Args),
    /// List snapshots
    Snapshots(snapshots::Args),
    /// Restore a backup into databases and a storage directory, and verify it
    Restore(restore::Args),
    /// Write one file of a backup snapshot to stdout
    Dump(dump::Args),
    /// Restore a backup into a scratch database, check it and record the result in the vault
    Drill(drill::Args),
    /// Run the whole job on a throwaway sample site (needs only PostgreSQL's binaries)
    Demo(demo::Args),
    /// Remove old backup snapshots by the [retention] policy (and prune with --prune)
    Forget(forget::Args),
    /// Check the vault's integrity (with --read-data also the stored data)
    Check(check::Args),
    /// Write one database as a pg_dump stream to stdout, for rustic/restic to store
    StdinDump(stdin_dump::Args),
    /// Hooks for backup frameworks: pre-backup, post-backup, failed, finally
    Hook(hook::Args),
    /// Issue, inspect, verify, list, recover and revoke escrowed DCOR-Aid access tokens
    Token(token::Args),
}

/// Options every command sees, resolved once.
pub struct Global {
    pub config_path: Option<PathBuf>,
    pub overrides: Vec<(String, String)>,
    pub json: bool,
    pub quiet: bool,
}

impl Global {
    /// Loads the configuration file with environment and flag overrides.
    pub fn load(&self) -> Result<Loaded> {
        Ok(Loaded::load(self.config_path.as_deref(), &self.overrides)?)
    }

    /// Prints a JSON value (with --json) or the human text (not with --quiet).
    pub fn print(&self, json: &serde_json::Value, human: &str) {
        self.print_result(json, human, true);
    }

    /// Like [`Global::print`], but a report that failed is printed even with --quiet.
    pub fn print_result(&self, json: &serde_json::Value, human: &str, ok: bool) {
        if self.json {
            println!("{json}");
        } else if !self.quiet || !ok {
            print!("{human}");
        }
    }
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    logger::init(if cli.quiet { 0 } else { 1 + cli.verbose });
    let mut overrides = Vec::new();
    for s in &cli.set {
        match ckan_vault::config::parse_override(s) {
            Ok(o) => overrides.push(o),
            Err(e) => return report_error(cli.json, &e.into()),
        }
    }
    if let Some(r) = &cli.repo {
        overrides.push(("repository.repository".to_string(), r.clone()));
    }
    let global = Global {
        config_path: cli.config.clone(),
        overrides,
        json: cli.json,
        quiet: cli.quiet,
    };
    let result = match cli.command {
        Command::Init(a) => init::run(&global, a),
        Command::Backup(a) => backup::run(&global, a),
        Command::Snapshots(a) => snapshots::run(&global, a),
        Command::Restore(a) => restore::run(&global, a),
        Command::Dump(a) => dump::run(&global, a),
        Command::Demo(a) => demo::run(&global, a),
        Command::Drill(a) => drill::run(&global, a),
        Command::Forget(a) => forget::run(&global, a),
        Command::Check(a) => check::run(&global, a),
        Command::StdinDump(a) => stdin_dump::run(&global, a),
        Command::Hook(a) => hook::run(&global, a),
        Command::Token(a) => token::run(&global, a),
    };
    interrupt::settle();
    match result {
        Ok(code) => code,
        Err(e) => report_error(global.json, &e),
    }
}

/// One line on stderr (and the JSON object with --json); the exit code of its category.
fn report_error(json: bool, e: &anyhow::Error) -> ExitCode {
    let category = category(e);
    eprintln!("ckan-vault: error: {}", one_line(e));
    if json {
        println!(
            "{}",
            serde_json::json!({"ok": false, "error": one_line(e), "exit_code": category.exit_code()})
        );
    }
    ExitCode::from(category.exit_code())
}

/// The error and its causes on one line, without repeating a cause the message already has.
fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ").replace('\n', " ")
}

/// Finds the library error in the chain and asks it for its category.
fn category(e: &anyhow::Error) -> Category {
    macro_rules! try_types {
        ($($t:ty),*) => {
            for cause in e.chain() {
                $(if let Some(x) = cause.downcast_ref::<$t>() { return x.category(); })*
            }
        };
    }
    try_types!(
        ckan_vault::config::ConfigError,
        ckan_vault::backup::BackupError,
        ckan_vault::restore::RestoreError,
        ckan_vault::vault::VaultError,
        ckan_vault::pg::PgError,
        ckan_vault::ckan::ini::IniError,
        ckan_vault::secret::SecretError,
        ckan_vault::demo::DemoError,
        ckan_vault::drill::DrillError,
        ckan_vault::hooks::HookError,
        ckan_vault::vault::lock::LockError,
        ckan_vault::vault::maintenance::MaintenanceError,
        ckan_vault::stdin_dump::StdinDumpError,
        ckan_vault::token::TokenError,
        ckan_vault::ledger::LedgerError
    );
    if let Some(UsageError(_)) = e.downcast_ref::<UsageError>() {
        return Category::Usage;
    }
    Category::Failure
}

/// A command-line problem found after parsing (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Opens the vault named by the configuration.
pub fn open_vault(loaded: &Loaded) -> Result<ckan_vault::vault::Vault> {
    let cfg = loaded.config.vault()?;
    Ok(ckan_vault::vault::Vault::open(&cfg)?)
}

/// Opens the vault with progress bars when stderr is a terminal (and not --json/--quiet).
pub fn open_vault_with_progress(g: &Global, loaded: &Loaded) -> Result<ckan_vault::vault::Vault> {
    use std::io::IsTerminal;
    let cfg = loaded.config.vault()?;
    if std::io::stderr().is_terminal() && !g.json && !g.quiet {
        Ok(ckan_vault::vault::Vault::open_with_progress(
            &cfg,
            progress::Bars,
        )?)
    } else {
        Ok(ckan_vault::vault::Vault::open(&cfg)?)
    }
}
