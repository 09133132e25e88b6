//! Restore drills: prove that a backup restores, and keep the evidence in the vault.
//!
//! A drill restores a backup snapshot into an isolated scratch database (by default a
//! throwaway cluster listening only on a unix socket in a private directory), checks it
//! against the manifest and against CKAN-level facts, measures the time to a usable
//! database, and stores its report in the vault as a small `drill` snapshot, so "when did a
//! restore last work, and how long did it take?" has an answer that travels with the backups.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::ckan::ini::CkanIni;
use crate::error::{Categorized, Category};
use crate::manifest::{DatabaseRecord, paths};
use crate::pg::cluster::{ClusterOptions, ScratchCluster};
use crate::pg::{Pg, PgError, Target};
use crate::report::Metric;
use crate::restore::{self, Backup, RestoreError, RestorePlan};
use crate::vault::{Kind, SnapshotMeta, Vault, VaultError, VaultReader};

/// The file holding the report inside a drill snapshot.
pub const REPORT_PATH: &str = "drill.json";

/// How to run a drill.
#[derive(Debug, Clone)]
pub struct DrillOptions {
    /// `latest`, `latest~N` or a snapshot id.
    pub snapshot: String,
    /// Restore into uniquely named databases on this server instead of a scratch cluster
    /// (a superuser-capable connection; the databases are dropped afterwards).
    pub scratch: Option<Target>,
    /// Leave the scratch cluster or databases in place.
    pub keep: bool,
    /// Percent of storage files to read back and hash (100 = all).
    pub storage_sample: f64,
    /// Parallel sessions for indexes and constraints (as `restore --jobs`); 0: one per core.
    pub jobs: usize,
    /// Only this site's backups count for `latest` (a vault several sites share).
    pub site: Option<String>,
}

/// One named check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// What a drill measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// Seconds from the start until the databases were restored and usable (the time spent
    /// verifying them afterwards is not included).
    pub rto_seconds: f64,
    pub total_seconds: f64,
    /// Bytes read from the vault: database dumps and storage files.
    pub bytes_read: u64,
    /// Database restore rate (dump bytes per second of pg_restore).
    pub bytes_per_second: f64,
    pub peak_rss_bytes: u64,
}

/// The drill report, stored in the vault as `drill.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillReport {
    pub snapshot: String,
    pub snapshot_time: String,
    pub site: String,
    pub host: String,
    pub ckan_vault_version: String,
    pub started: jiff::Timestamp,
    pub finished: jiff::Timestamp,
    /// `pass` when every check passed, else `fail`.
    pub verdict: String,
    pub scratch: String,
    pub checks: Vec<Check>,
    pub timings: Timings,
    /// The drill snapshot that holds this report, once recorded.
    #[serde(default)]
    pub recorded_as: Option<String>,
}

impl DrillReport {
    pub fn passed(&self) -> bool {
        self.verdict == "pass"
    }

    pub fn failed_checks(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| !c.ok)
    }

    /// The metrics a drill updates in the textfile-collector file.
    pub fn metrics(&self) -> Vec<Metric> {
        let mut m = vec![
            Metric::new(
                "ckan_vault_drill_duration_seconds",
                "Duration of the last restore drill.",
                self.timings.total_seconds,
            ),
            Metric::new(
                "ckan_vault_drill_rto_seconds",
                "Time to a usable restored database in the last drill.",
                self.timings.rto_seconds,
            ),
            Metric::new(
                "ckan_vault_drill_checks_failed",
                "Failed checks in the last restore drill.",
                self.failed_checks().count() as f64,
            ),
        ];
        if self.passed() {
            m.push(Metric::new(
                "ckan_vault_last_drill_success_timestamp_seconds",
                "When a restore drill last passed.",
                self.finished.as_second() as f64,
            ));
        }
        m
    }
}

/// Errors that stop a drill before it can judge the snapshot (exit code 2 or 1).
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error("cannot parse drill report {0}: {1}")]
    Report(String, String),
}

impl Categorized for DrillError {
    fn category(&self) -> Category {
        match self {
            DrillError::Restore(e) => e.category(),
            DrillError::Vault(e) => e.category(),
            DrillError::Pg(e) => e.category(),
            DrillError::Report(..) => Category::Failure,
        }
    }
}

/// Where the drill restores to; cleans up when dropped.
enum Scratch {
    Cluster(ScratchCluster),
    Server {
        pg: Pg,
        admin: Target,
        databases: Vec<String>,
        keep: bool,
    },
}

impl Scratch {
    fn target(&self, db: &str) -> Target {
        match self {
            Scratch::Cluster(c) => {
                let mut t = Target::new(c.conn(db));
                t.bindir = c.bindir().clone();
                t
            }
            Scratch::Server { admin, .. } => admin.with_dbname(db),
        }
    }

    fn describe(&self) -> String {
        match self {
            Scratch::Cluster(c) => format!("a throwaway cluster in {}", c.path().display()),
            Scratch::Server { admin, .. } => format!("scratch databases on {}", admin.conn),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Scratch::Server {
            pg,
            admin,
            databases,
            keep: false,
        } = self
        {
            for db in databases.iter() {
                if let Err(e) = pg.drop_database(&admin.with_dbname("postgres"), db) {
                    log::warn!("could not drop scratch database {db}: {e}");
                }
            }
        }
    }
}

/// `ckan: revocations`: every recorded revocation could be read and re-applied to the
/// restored copy.
fn revocation_check(pg: &Pg, reader: &VaultReader<'_>, target: &Target, checks: &mut Vec<Check>) {
    let (ok, detail) = match restore::reapply_revocations(pg, reader, target) {
        Ok(r) if !r.unreadable.is_empty() => (
            false,
            format!(
                "{} revocation record(s) unreadable, their tokens would be valid again after a restore: {}",
                r.unreadable.len(),
                r.unreadable.join("; ")
            ),
        ),
        Ok(r) => match r.skipped {
            Some(why) => (
                true,
                format!("{} recorded, not applicable: {why}", r.recorded),
            ),
            None => (
                true,
                format!(
                    "{} recorded, {} token(s) of this backup revoked again",
                    r.recorded, r.re_revoked
                ),
            ),
        },
        Err(e) => (false, e.to_string()),
    };
    check(checks, "ckan: revocations", ok, detail);
}

fn check(checks: &mut Vec<Check>, name: &str, ok: bool, detail: impl Into<String>) {
    checks.push(Check {
        name: name.to_string(),
        ok,
        detail: detail.into(),
    });
}

/// Peak resident memory of this process so far (VmHWM), in bytes.
pub fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Runs a drill and records its report in the vault. The report says whether it passed;
/// `Err` means the drill could not run at all.
pub fn run(vault: &Vault, pg: &Pg, opts: &DrillOptions) -> Result<DrillReport, DrillError> {
    let clock = Instant::now();
    let started = jiff::Timestamp::now();
    let reader = vault.reader()?;
    let backup = restore::find_backup(&reader, &opts.snapshot, opts.site.as_deref())?;
    let major = backup.manifest.main().map(|m| m.server.major());
    let suffix = format!("{}_{}", started.as_second(), std::process::id());
    let mut scratch = match &opts.scratch {
        None => Scratch::Cluster(ScratchCluster::start(&ClusterOptions {
            major,
            tcp_port: None,
            keep: opts.keep,
        })?),
        Some(server) => {
            // An unreachable scratch server is a configuration problem, not a failed drill.
            pg.server_info(&server.with_dbname("postgres"))?;
            Scratch::Server {
                pg: Pg::new()?,
                admin: server.clone(),
                databases: Vec::new(),
                keep: opts.keep,
            }
        }
    };
    let mut checks = Vec::new();
    let mut bytes_read = 0u64;

    // Globals first, so that GRANTs in the dumps find their roles. Only in our own cluster:
    // roles are cluster-wide and a shared server must not get them.
    let mut globals_restored = false;
    match (&scratch, &backup.manifest.globals.path) {
        (Scratch::Cluster(_), Some(_)) => {
            match restore::restore_globals(pg, &reader, &backup, &scratch.target("postgres")) {
                Ok(errors) => {
                    globals_restored = true;
                    check(
                        &mut checks,
                        "globals",
                        true,
                        format!(
                            "applied ({errors} statements failed, e.g. the existing postgres role)"
                        ),
                    );
                }
                Err(e) => check(&mut checks, "globals", false, e.to_string()),
            }
        }
        (Scratch::Server { .. }, Some(_)) => check(
            &mut checks,
            "globals",
            true,
            "not applied on a shared server (roles are cluster-wide)",
        ),
        (_, None) => check(
            &mut checks,
            "globals",
            true,
            format!(
                "not in the backup: {}",
                backup
                    .manifest
                    .globals
                    .skipped
                    .as_deref()
                    .unwrap_or("skipped")
            ),
        ),
    }

    let mut restored: Vec<(String, Target)> = Vec::new();
    // RTO: until the databases are restored and usable, without the verification after.
    let before_databases = clock.elapsed().as_secs_f64();
    let mut restore_seconds = 0.0;
    let mut db_bytes = 0u64;
    for role in backup.manifest.databases.keys() {
        let db = format!("ckan_vault_drill_{role}_{suffix}");
        if let Scratch::Server { databases, .. } = &mut scratch {
            databases.push(db.clone());
        }
        let target = scratch.target(&db);
        let plan = RestorePlan {
            keep_privileges: globals_restored,
            jobs: opts.jobs,
            ..Default::default()
        };
        match restore::restore_database(pg, &reader, &backup, role, &target, &plan) {
            Ok(rep) => {
                bytes_read += rep.bytes;
                db_bytes += rep.bytes;
                restore_seconds += rep.restore_seconds;
                // pg_restore stops at the first error (--exit-on-error), so it exited 0; what
                // it still printed is shown, and an error among it fails the check.
                let said = &rep.pg_restore_warnings;
                let errors = said.iter().any(|l| l.to_lowercase().contains("error"));
                check(
                    &mut checks,
                    &format!("{role}: restore"),
                    !errors,
                    format!(
                        "pg_restore exited 0{}; {} in {:.1} s",
                        match said.first() {
                            None => String::new(),
                            Some(first) =>
                                format!(" and printed {} line(s), the first: {}", said.len(), first),
                        },
                        crate::report::bytes(rep.bytes),
                        rep.restore_seconds
                    ),
                );
                let first: Vec<String> = rep
                    .mismatches
                    .iter()
                    .take(5)
                    .map(|m| format!("{} ({})", m.table, m.detail))
                    .collect();
                check(
                    &mut checks,
                    &format!("{role}: tables"),
                    rep.mismatches.is_empty(),
                    if rep.mismatches.is_empty() {
                        format!(
                            "{} tables, {} rows match the manifest",
                            rep.tables, rep.rows
                        )
                    } else {
                        format!(
                            "{} tables differ: {}",
                            rep.mismatches.len(),
                            first.join(", ")
                        )
                    },
                );
                check(
                    &mut checks,
                    &format!("{role}: no extra tables"),
                    rep.extra_tables.is_empty(),
                    if rep.extra_tables.is_empty() {
                        "none".to_string()
                    } else {
                        rep.extra_tables.join(", ")
                    },
                );
                restored.push((role.clone(), target));
            }
            Err(e) => check(
                &mut checks,
                &format!("{role}: restore"),
                false,
                e.to_string(),
            ),
        }
    }
    let rto = before_databases + restore_seconds;

    if let Some((_, target)) = restored.iter().find(|(r, _)| r == "main")
        && let Some(record) = backup.manifest.main()
    {
        ckan_checks(pg, target, record, &mut checks);
        // A real restore re-applies the token revocations recorded since the backup; the
        // drill does it too (after the counts above), so its evidence covers that step.
        revocation_check(pg, &reader, target, &mut checks);
    } else if backup.manifest.main().is_some() {
        check(
            &mut checks,
            "ckan: facts",
            false,
            "the main database did not restore",
        );
    }

    // Storage: read back (a sample of) the files and compare sizes and hashes.
    if backup.manifest.storage.is_some() {
        match restore::restore_storage(&reader, &backup, None, false, opts.storage_sample) {
            Ok(s) => {
                bytes_read += s.bytes;
                let bad: Vec<String> = s
                    .mismatches
                    .iter()
                    .map(|m| format!("{m} differs"))
                    .chain(s.missing.iter().map(|m| format!("{m} missing")))
                    .take(5)
                    .collect();
                check(
                    &mut checks,
                    "storage",
                    bad.is_empty(),
                    if bad.is_empty() {
                        format!(
                            "{} files ({}) match",
                            s.files,
                            crate::report::bytes(s.bytes)
                        )
                    } else {
                        format!(
                            "{} problems: {}",
                            s.mismatches.len() + s.missing.len(),
                            bad.join(", ")
                        )
                    },
                );
            }
            Err(e) => check(&mut checks, "storage", false, e.to_string()),
        }
    }

    config_check(&reader, &backup, &mut checks);
    drop(reader);

    let total = clock.elapsed().as_secs_f64();
    let passed = checks.iter().all(|c| c.ok);
    let mut report = DrillReport {
        snapshot: backup.snapshot.id.to_hex().to_string(),
        snapshot_time: backup.snapshot.time.timestamp().to_string(),
        site: backup.manifest.site.clone(),
        host: crate::vault::hostname(),
        ckan_vault_version: env!("CARGO_PKG_VERSION").to_string(),
        started,
        finished: jiff::Timestamp::now(),
        verdict: if passed { "pass" } else { "fail" }.to_string(),
        scratch: scratch.describe(),
        checks,
        timings: Timings {
            rto_seconds: rto,
            total_seconds: total,
            bytes_read,
            bytes_per_second: db_bytes as f64 / restore_seconds.max(1e-3),
            peak_rss_bytes: peak_rss(),
        },
        recorded_as: None,
    };
    if opts.keep {
        log::warn!("keeping the scratch {}", scratch.describe());
    }
    drop(scratch);
    report.recorded_as = Some(record(vault, &report)?);
    Ok(report)
}

fn ckan_checks(pg: &Pg, target: &Target, record: &DatabaseRecord, checks: &mut Vec<Check>) {
    let has = |t: &str| record.dump.tables.contains_key(&format!("public.{t}"));
    let version_table = if has("alembic_version") {
        Some("alembic_version")
    } else if has("migrate_version") {
        Some("migrate_version")
    } else {
        None
    };
    match version_table {
        Some(t) => match pg.query(target, &format!("SELECT count(*) FROM public.{t}")) {
            Ok(n) if n != "0" => check(
                checks,
                "ckan: schema version",
                true,
                format!("{t} has a row"),
            ),
            Ok(_) => check(
                checks,
                "ckan: schema version",
                false,
                format!("{t} is empty"),
            ),
            Err(e) => check(checks, "ckan: schema version", false, e.to_string()),
        },
        None => check(
            checks,
            "ckan: schema version",
            false,
            "no alembic_version or migrate_version table",
        ),
    }
    match pg.query(
        target,
        "SELECT count(*) FROM public.\"user\" WHERE sysadmin AND state = 'active'",
    ) {
        Ok(n) if n.parse::<u64>().unwrap_or(0) > 0 => check(
            checks,
            "ckan: sysadmin",
            true,
            format!("{n} active sysadmins"),
        ),
        Ok(_) => check(checks, "ckan: sysadmin", false, "no active sysadmin user"),
        Err(e) => check(checks, "ckan: sysadmin", false, e.to_string()),
    }
    let mut wrong = Vec::new();
    let mut seen = Vec::new();
    for t in ["user", "package", "resource", "api_token"] {
        let Some(expected) = record.rows(t) else {
            continue;
        };
        match pg.query(
            target,
            &format!("SELECT count(*) FROM public.{}", crate::pg::ident(t)),
        ) {
            Ok(n) if n == expected.to_string() => seen.push(format!("{t} {n}")),
            Ok(n) => wrong.push(format!("{t}: {n}, manifest {expected}")),
            Err(e) => wrong.push(format!("{t}: {e}")),
        }
    }
    check(
        checks,
        "ckan: counts",
        wrong.is_empty(),
        if wrong.is_empty() {
            seen.join(", ")
        } else {
            wrong.join("; ")
        },
    );
}

fn config_check(reader: &crate::vault::VaultReader<'_>, backup: &Backup, checks: &mut Vec<Check>) {
    let Some(cfg) = &backup.manifest.config else {
        check(
            checks,
            "config",
            true,
            "ckan.ini is not part of this backup (backup-config = false)",
        );
        return;
    };
    match reader.read(&backup.snapshot, &cfg.path, 16 << 20) {
        Ok(bytes) if cfg.sealed => check(
            checks,
            "config",
            !bytes.is_empty() && bytes.starts_with(b"age-encryption.org/"),
            format!("{} present, sealed to the escrow recipients", cfg.path),
        ),
        Ok(bytes) => match CkanIni::parse(std::path::Path::new(paths::CONFIG), &bytes) {
            Ok(ini) => check(
                checks,
                "config",
                ini.get("sqlalchemy.url").is_some(),
                format!("{} present and parses", cfg.path),
            ),
            Err(e) => check(checks, "config", false, e.to_string()),
        },
        Err(e) => check(checks, "config", false, format!("{}: {e}", cfg.path)),
    }
}

/// Stores the report as a `drill` snapshot tagged with the drilled snapshot's id.
fn record(vault: &Vault, report: &DrillReport) -> Result<String, DrillError> {
    let mut meta = SnapshotMeta::new(Kind::Drill, report.site.clone());
    meta.extra_tags = vec![
        format!("snapshot:{}", report.snapshot),
        format!("verdict:{}", report.verdict),
    ];
    meta.description = Some(
        serde_json::json!({
            "verdict": report.verdict,
            "snapshot": report.snapshot,
            "rto_seconds": report.timings.rto_seconds,
            "checks_failed": report.failed_checks().count(),
        })
        .to_string(),
    );
    let json = serde_json::to_vec_pretty(report).expect("report serializes");
    let snap = vault.save_files(&meta, vec![(REPORT_PATH.to_string(), json)])?;
    Ok(snap.id.to_hex().to_string())
}

/// Past drills, oldest first, read from the vault.
pub fn history(vault: &Vault) -> Result<Vec<DrillReport>, DrillError> {
    let snaps = vault.snapshots(Kind::Drill)?;
    let reader = vault.reader()?;
    let mut out = Vec::new();
    for s in snaps {
        let bytes = reader.read(&s, REPORT_PATH, 16 << 20)?;
        let mut r: DrillReport = serde_json::from_slice(&bytes)
            .map_err(|e| DrillError::Report(s.id.to_string(), e.to_string()))?;
        r.recorded_as = Some(s.id.to_hex().to_string());
        out.push(r);
    }
    Ok(out)
}
