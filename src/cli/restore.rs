//! `ckan-vault restore SNAPSHOT --db URL …`

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use ckan_vault::config::Config;
use ckan_vault::pg::{ConnInfo, Target};
use ckan_vault::report;
use ckan_vault::restore::{ConfigOut, RestoreOutcome, RestorePlan};

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
    /// Restore the main database into this database (created if missing)
    #[arg(long, value_name = "URL")]
    db: Option<String>,
    /// Restore the DataStore database into this database
    #[arg(long, value_name = "URL")]
    datastore_db: Option<String>,
    /// Apply the cluster's roles and grants through this superuser connection
    #[arg(long, value_name = "URL")]
    globals_db: Option<String>,
    /// Write the storage files into this directory
    #[arg(long, value_name = "DIR")]
    storage: Option<PathBuf>,
    /// Replace objects in a non-empty database and overwrite storage files
    #[arg(long)]
    clean: bool,
    /// Run the PostgreSQL programs as this OS user (peer authentication)
    #[arg(long, value_name = "USER")]
    run_as: Option<String>,
    /// Write the backup's ckan.ini to this file (0600)
    #[arg(long, value_name = "FILE")]
    config_out: Option<PathBuf>,
    /// An escrow officer's age identity, to unseal a sealed ckan.ini (config/ckan.ini.age)
    #[arg(long, value_name = "KEY", requires = "config_out")]
    identity: Option<PathBuf>,
    /// Do not re-apply the token revocations recorded in the vault to the restored database
    #[arg(long)]
    keep_revoked_tokens: bool,
    /// Sessions that load big tables, read them back and build indexes in parallel
    /// [default: [database] jobs, else one per core]; 1 restores each database in a single
    /// transaction
    #[arg(long, short = 'j', value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    jobs: Option<u16>,
}

/// A target with the configured binaries and run-as user; `--run-as` wins.
fn target(config: &Config, flag: &str, url: &str, run_as: &Option<String>) -> Result<Target> {
    let conn = ConnInfo::parse(url).map_err(|e| UsageError(format!("{flag}: {e}")))?;
    // Without a name libpq would pick the user's database (often `postgres`): a restore
    // must say where it goes.
    if flag != "--globals-db" && conn.dbname.is_none() {
        return Err(UsageError(format!(
            "{flag}: no database name in {}; name the database to restore into, as in postgresql://USER@HOST/DBNAME",
            ckan_vault::pg::conninfo::redact_url(url)
        ))
        .into());
    }
    let mut t = config.target(conn);
    if run_as.is_some() {
        t.run_as = run_as.clone();
    }
    Ok(t)
}

pub fn run(g: &Global, args: Args) -> Result<ExitCode> {
    if args.db.is_none()
        && args.datastore_db.is_none()
        && args.storage.is_none()
        && args.globals_db.is_none()
        && args.config_out.is_none()
    {
        return Err(UsageError(
            "nothing to restore; give --db, --datastore-db, --globals-db, --storage and/or --config-out".into(),
        )
        .into());
    }
    let loaded = g.load()?;
    let config = &loaded.config;
    let plan = RestorePlan {
        main: args
            .db
            .as_deref()
            .map(|u| target(config, "--db", u, &args.run_as))
            .transpose()?,
        datastore: args
            .datastore_db
            .as_deref()
            .map(|u| target(config, "--datastore-db", u, &args.run_as))
            .transpose()?,
        globals: args
            .globals_db
            .as_deref()
            .map(|u| target(config, "--globals-db", u, &args.run_as))
            .transpose()?,
        storage: args.storage.clone(),
        clean: args.clean,
        keep_privileges: false,
        config_out: args.config_out.clone().map(|path| ConfigOut {
            path,
            identity: args.identity.clone(),
        }),
        reapply_revocations: !args.keep_revoked_tokens,
        jobs: args
            .jobs
            .map(usize::from)
            .or(config.database.jobs)
            .unwrap_or(0),
        site: args.site.clone(),
        split_bytes: None,
    };
    let vault = super::open_vault_with_progress(g, &loaded)?;
    let pg = ckan_vault::pg::Pg::new()?;
    let out = ckan_vault::restore::run(&vault, &pg, &args.snapshot, &plan)?;
    let ok = out.verified();
    let mut json = serde_json::to_value(&out)?;
    json["ok"] = ok.into();
    g.print_result(&json, &human(&out), ok);
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn human(out: &RestoreOutcome) -> String {
    let mut s = format!("restored snapshot {}\n", &out.snapshot[..8]);
    for d in &out.databases {
        s.push_str(&format!(
            "  {} → {}: {} tables, {} rows, {} in {} (verified in {})\n",
            d.role,
            d.database,
            d.tables,
            d.rows,
            report::bytes(d.bytes),
            report::duration(d.restore_seconds),
            report::duration(d.verify_seconds)
        ));
        for m in d.mismatches.iter().take(10) {
            s.push_str(&format!("    MISMATCH {}: {}\n", m.table, m.detail));
        }
    }
    if let Some(n) = out.globals_errors {
        s.push_str(&format!(
            "  globals applied ({n} errors, e.g. roles that already existed)\n"
        ));
    }
    if let Some(st) = &out.storage {
        s.push_str(&format!(
            "  storage: {} files, {}\n",
            st.files,
            report::bytes(st.bytes)
        ));
        for m in st.mismatches.iter().chain(&st.missing).take(10) {
            s.push_str(&format!("    MISMATCH storage/{m}\n"));
        }
    }
    if let Some(r) = &out.revocations {
        match &r.skipped {
            Some(why) => s.push_str(&format!(
                "  token revocations: {} recorded, not re-applied: {why}\n",
                r.recorded
            )),
            None => s.push_str(&format!(
                "  token revocations: {} recorded, {} token(s) revoked again in the restored database\n",
                r.recorded, r.re_revoked
            )),
        }
        for u in r.unreadable.iter().take(10) {
            s.push_str(&format!("    WARNING unreadable revocation record {u}\n"));
        }
    }
    if let Some(c) = &out.config {
        s.push_str(&format!(
            "  ckan.ini → {} ({}{})\n",
            c.path,
            report::bytes(c.bytes),
            if c.sealed { ", unsealed" } else { "" }
        ));
    }
    s.push_str(if out.verified() {
        "every table and file matches the manifest\n"
    } else {
        "FAILED: the restore does not match the manifest\n"
    });
    s
}
