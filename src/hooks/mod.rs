//! Running under a backup framework (rustic, restic, systemd, cron): the hook actions, the
//! run lock around backups and prunes, retention, and monitoring.
//!
//! rustic runs `[backup.hooks]` commands without a shell, as its own children, with
//! `RUSTIC_HOOK_TYPE`, `RUSTIC_ACTION`, `RUSTIC_BACKUP_LABEL`, `RUSTIC_BACKUP_SOURCES` and
//! `RUSTIC_BACKUP_TAGS` in the environment, and no error text (rustic-rs/rustic#1578). So
//! `hook pre-backup` takes the run lock *for its parent* (the framework process), which
//! holds it until `hook finally` (another child of the same parent) releases it; if the
//! framework dies instead, the lock goes stale with it.

pub mod monitor;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::backup::{BackupError, BackupOutcome, BackupPlan};
use crate::config::{Config, ConfigError};
use crate::error::{Categorized, Category};
use crate::pg::{Pg, PgError};
use crate::vault::lock::{self, LockError, LockRecord, LockRequest, Owner, Released, RunLock};
use crate::vault::maintenance::{ForgetPlan, MaintenanceError, PruneSummary, VaultStats};
use crate::vault::{Vault, VaultConfig, VaultError};

pub use monitor::{Monitor, Signal};

/// The four hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookKind {
    PreBackup,
    PostBackup,
    Failed,
    Finally,
}

impl HookKind {
    pub fn name(self) -> &'static str {
        match self {
            HookKind::PreBackup => "pre-backup",
            HookKind::PostBackup => "post-backup",
            HookKind::Failed => "failed",
            HookKind::Finally => "finally",
        }
    }
}

/// What rustic tells a hook through its environment.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FrameworkEnv {
    /// `run-before`, `run-after`, `run-failed`, `run-finally`.
    pub hook_type: Option<String>,
    /// `backup`, `source-specific-backup`, `repository`, …
    pub action: Option<String>,
    pub label: Option<String>,
    pub sources: Option<String>,
    pub tags: Option<String>,
}

impl FrameworkEnv {
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Self {
            hook_type: var("RUSTIC_HOOK_TYPE"),
            action: var("RUSTIC_ACTION"),
            label: var("RUSTIC_BACKUP_LABEL"),
            sources: var("RUSTIC_BACKUP_SOURCES"),
            tags: var("RUSTIC_BACKUP_TAGS"),
        }
    }

    /// A short description of the framework run, for the lock file.
    pub fn describe(&self) -> String {
        match (&self.action, &self.label) {
            (Some(a), Some(l)) => format!("rustic {a} of {l}"),
            (Some(a), None) => format!("rustic {a}"),
            _ => "a backup framework run".into(),
        }
    }
}

/// How hooks and guarded runs behave.
#[derive(Debug, Clone)]
pub struct Settings {
    pub state_dir: PathBuf,
    /// Whose lock it is (`hook`: the parent process; a command: itself).
    pub owner: Owner,
    /// post-backup and forget: also prune.
    pub prune: bool,
    /// forget: only say what would go.
    pub dry_run: bool,
    /// failed: the error text (else the one stdin-dump left, else a generic one).
    pub message: Option<String>,
    /// pre-backup: the free space temp directories must have.
    pub min_free_bytes: u64,
}

impl Settings {
    pub fn new(owner: Owner) -> Self {
        Self {
            state_dir: lock::state_dir(),
            owner,
            prune: false,
            dry_run: false,
            message: None,
            min_free_bytes: 1 << 30,
        }
    }
}

/// Hook and guarded-run errors.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("pre-backup checks failed: {0}")]
    Checks(String),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Maintenance(#[from] MaintenanceError),
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error(transparent)]
    Pg(#[from] PgError),
}

impl Categorized for HookError {
    fn category(&self) -> Category {
        match self {
            HookError::Checks(_) => Category::Failure,
            HookError::Lock(e) => e.category(),
            HookError::Config(e) => e.category(),
            HookError::Vault(e) => e.category(),
            HookError::Maintenance(e) => e.category(),
            HookError::Backup(e) => e.category(),
            HookError::Pg(e) => e.category(),
        }
    }
}

/// One pre-backup check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// What retention did (or would do).
#[derive(Debug, Clone, Serialize)]
pub struct ForgetOutcome {
    pub dry_run: bool,
    pub plan: ForgetPlan,
    pub removed: usize,
    pub prune: Option<PruneSummary>,
}

/// What a hook did.
#[derive(Debug, Clone, Serialize)]
pub struct HookOutcome {
    pub hook: HookKind,
    pub framework: FrameworkEnv,
    pub checks: Vec<Check>,
    /// The lock taken (pre-backup) or released (finally).
    pub lock: Option<LockRecord>,
    /// finally: what happened to the lock.
    pub released: Option<String>,
    pub forget: Option<ForgetOutcome>,
    pub stats: Option<VaultStats>,
    pub message: Option<String>,
    pub warnings: Vec<String>,
}

impl HookOutcome {
    fn new(hook: HookKind) -> Self {
        Self {
            hook,
            framework: FrameworkEnv::from_env(),
            checks: Vec::new(),
            lock: None,
            released: None,
            forget: None,
            stats: None,
            message: None,
            warnings: Vec::new(),
        }
    }
}

/// Runs one hook.
pub fn run(kind: HookKind, config: &Config, s: &Settings) -> Result<HookOutcome, HookError> {
    match kind {
        HookKind::PreBackup => pre_backup(config, s),
        HookKind::PostBackup => post_backup(config, s),
        HookKind::Failed => Ok(failed(config, s)),
        HookKind::Finally => finally(config, s),
    }
}

/// Free bytes for unprivileged users on the filesystem holding `path`.
fn free_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("path contains NUL"))?;
    // SAFETY: statvfs writes into the zeroed struct; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// The directories whose free space pre-backup checks.
fn temp_dirs(config: &Config, state_dir: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![std::env::temp_dir(), PathBuf::from("/var/tmp")];
    if let Some(c) = &config.repository.cache_dir {
        dirs.push(c.clone());
    }
    let mut state = state_dir.to_path_buf();
    while !state.exists() {
        match state.parent() {
            Some(p) => state = p.to_path_buf(),
            None => break,
        }
    }
    dirs.push(state);
    dirs.retain(|d| d.exists());
    dirs.sort();
    dirs.dedup();
    dirs
}

/// pre-backup: the databases answer, the vault opens, temp space is free; then the lock is
/// taken for the framework process and `/start` is pinged.
pub fn pre_backup(config: &Config, s: &Settings) -> Result<HookOutcome, HookError> {
    let mut out = HookOutcome::new(HookKind::PreBackup);
    let mut failures = Vec::new();
    let mut check = |name: &str, r: Result<String, String>| {
        let (ok, detail) = match r {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        if !ok {
            failures.push(format!("{name}: {detail}"));
        }
        out.checks.push(Check {
            name: name.to_string(),
            ok,
            detail,
        });
    };
    let site = config.site()?;
    let pg = Pg::new()?;
    let mut dbs = vec![("database main", &site.main)];
    if let Some(ds) = &site.datastore {
        dbs.push(("database datastore", ds));
    }
    for (name, t) in dbs {
        check(
            name,
            pg.server_info(t)
                .map(|i| format!("{} answers (PostgreSQL {})", t.conn.database(), i.version))
                .map_err(|e| e.to_string()),
        );
    }
    let vcfg = config.vault()?;
    let vault = match Vault::open(&vcfg).and_then(|v| v.all_snapshots().map(|n| (v, n.len()))) {
        Ok((v, n)) => {
            check(
                "vault",
                Ok(format!("{} opens ({n} snapshots)", vcfg.shown())),
            );
            Some(v)
        }
        Err(e) => {
            check("vault", Err(e.to_string()));
            None
        }
    };
    for dir in temp_dirs(config, &s.state_dir) {
        let name = format!("free space {}", dir.display());
        let r = match free_bytes(&dir) {
            Ok(n) if n >= s.min_free_bytes => Ok(crate::report::bytes(n)),
            Ok(n) => Err(format!(
                "only {} free, need {}",
                crate::report::bytes(n),
                crate::report::bytes(s.min_free_bytes)
            )),
            Err(e) => Err(e.to_string()),
        };
        check(&name, r);
    }
    if !failures.is_empty() {
        return Err(HookError::Checks(failures.join("; ")));
    }
    // A new run: an error text left by an earlier one no longer applies.
    let _ = take_noted_failure(config, &s.state_dir, None);
    let vault = vault.expect("checked");
    let lock = RunLock::acquire(
        &vault,
        &vcfg,
        LockRequest {
            owner: s.owner.clone(),
            command: format!("{} (ckan-vault hook pre-backup)", out.framework.describe()),
            exclusive: false,
            state_dir: s.state_dir.clone(),
        },
    )?;
    out.lock = Some(lock.persist());
    let monitor = Monitor::new(&config.monitoring);
    out.warnings
        .extend(monitor.ping(Signal::Start, &out.framework.describe()));
    Ok(out)
}

/// Snapshots saved since `since` and the new data they added (a framework run's own).
fn added_since(vault: &Vault, since: jiff::Timestamp) -> Result<u64, VaultError> {
    Ok(vault
        .all_snapshots()?
        .iter()
        .filter(|s| s.time.timestamp() >= since)
        .filter_map(|s| s.summary.as_ref().map(|x| x.data_added))
        .sum())
}

/// post-backup: retention (and prune with `--prune`), metrics, the success ping.
pub fn post_backup(config: &Config, s: &Settings) -> Result<HookOutcome, HookError> {
    let mut out = HookOutcome::new(HookKind::PostBackup);
    let vcfg = config.vault()?;
    let vault = Vault::open(&vcfg)?;
    let held = lock::current(&vcfg.repository, &s.state_dir)?;
    let since = held
        .as_ref()
        .filter(|r| r.owner.pid == s.owner.pid && r.owner.host == s.owner.host)
        .map(|r| r.since);
    if since.is_none() {
        out.warnings
            .push("no lock of this run found: was `ckan-vault hook pre-backup` run first?".into());
    }
    let retention = config.retention()?;
    if !retention.is_empty() {
        out.forget = Some(forget(&vault, &vcfg, &retention, s)?);
    }
    let _ = take_noted_failure(config, &s.state_dir, None);
    let stats = vault.stats()?;
    out.stats = Some(stats);
    let monitor = Monitor::new(&config.monitoring);
    let success = monitor::Success {
        duration_seconds: since.map(|t| jiff::Timestamp::now().duration_since(t).as_secs_f64()),
        added_bytes: since.map(|t| added_since(&vault, t)).transpose()?,
        stats: Some(stats),
    };
    out.warnings.extend(monitor.record_success(&success));
    let body = format!(
        "{} done; {} snapshots, vault {}",
        out.framework.describe(),
        stats.snapshots,
        crate::report::bytes(stats.size_bytes)
    );
    out.warnings.extend(monitor.ping(Signal::Success, &body));
    Ok(out)
}

/// Leaves the error text of a failing `stdin-dump` for the `failed` hook of the framework
/// run it belongs to (only while a run holds the lock: there is no such hook otherwise).
pub fn note_failure(config: &Config, state_dir: &Path, message: &str) {
    let Some(repo) = config.repository.repository.as_deref() else {
        return;
    };
    if !matches!(lock::current(repo, state_dir), Ok(Some(_))) {
        return;
    }
    let path = lock::state_file(state_dir, repo, "last-error");
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(path.parent().expect("has a parent"))?;
        let mut tmp = tempfile::NamedTempFile::new_in(path.parent().expect("has a parent"))?;
        std::io::Write::write_all(&mut tmp, message.as_bytes())?;
        tmp.persist(&path).map_err(|e| e.error)?;
        Ok(())
    };
    if let Err(e) = write() {
        log::warn!("cannot record the error in {}: {e}", path.display());
    }
}

/// The error text `stdin-dump` left in this run (since `since`), taken once.
fn take_noted_failure(
    config: &Config,
    state_dir: &Path,
    since: Option<jiff::Timestamp>,
) -> Option<String> {
    let repo = config.repository.repository.as_deref()?;
    let path = lock::state_file(state_dir, repo, "last-error");
    let meta = std::fs::metadata(&path).ok()?;
    let modified = jiff::Timestamp::try_from(meta.modified().ok()?).ok()?;
    let fresh = match since {
        Some(t) => modified >= t,
        None => jiff::Timestamp::now().duration_since(modified).as_secs() < 24 * 3600,
    };
    let text = std::fs::read_to_string(&path).ok();
    let _ = std::fs::remove_file(&path);
    fresh.then_some(text?).filter(|t| !t.trim().is_empty())
}

/// failed: failure metrics and the `/fail` ping with the error text. Never fails itself
/// (it must not hide the framework's own error), and does not need the vault.
pub fn failed(config: &Config, s: &Settings) -> HookOutcome {
    let mut out = HookOutcome::new(HookKind::Failed);
    let since = config
        .repository
        .repository
        .as_deref()
        .and_then(|r| lock::current(r, &s.state_dir).ok().flatten())
        .filter(|r| r.owner.pid == s.owner.pid && r.owner.host == s.owner.host)
        .map(|r| r.since);
    let noted = take_noted_failure(config, &s.state_dir, since);
    let message = match (s.message.clone(), noted) {
        (Some(m), Some(n)) => Some(format!("{m}: {n}")),
        (m, n) => m.or(n),
    }
    .unwrap_or_else(|| {
        format!(
            "{} failed (the framework gives hooks no error text; see its log)",
            out.framework.describe()
        )
    });
    let monitor = Monitor::new(&config.monitoring);
    out.warnings.extend(monitor.record_failure());
    out.warnings.extend(monitor.ping(Signal::Fail, &message));
    out.message = Some(message);
    out
}

/// finally: releases the lock of this run (the hook's parent). Another live run's lock is
/// left alone (pre-backup may have failed because of it).
pub fn finally(config: &Config, s: &Settings) -> Result<HookOutcome, HookError> {
    let mut out = HookOutcome::new(HookKind::Finally);
    let vcfg = config.vault()?;
    let released = lock::release_for(&vcfg, &s.state_dir, &s.owner)?;
    out.released = Some(match released {
        Released::Released(r) => {
            let t = format!(
                "released the lock taken at {} for pid {}",
                r.since, r.owner.pid
            );
            out.lock = Some(r);
            t
        }
        Released::NoLock => "no lock was held".into(),
        Released::NotOurs(r) => {
            let t = format!(
                "the lock belongs to another run (pid {} on {}, {}); left alone",
                r.owner.pid, r.owner.host, r.command
            );
            out.lock = Some(r);
            t
        }
    });
    Ok(out)
}

/// Retention under the run lock: forget the backups the policy lets go, then (with
/// `s.prune`) prune, which needs the vault to itself.
pub fn forget(
    vault: &Vault,
    vcfg: &VaultConfig,
    retention: &crate::vault::maintenance::Retention,
    s: &Settings,
) -> Result<ForgetOutcome, HookError> {
    let plan = vault.forget_plan(retention, crate::manifest::MANIFEST_PATH)?;
    if s.dry_run {
        let prune = if s.prune {
            Some(vault.prune(true)?)
        } else {
            None
        };
        return Ok(ForgetOutcome {
            dry_run: true,
            removed: 0,
            plan,
            prune,
        });
    }
    let lock = RunLock::acquire(
        vault,
        vcfg,
        LockRequest {
            owner: s.owner.clone(),
            command: if s.prune { "forget --prune" } else { "forget" }.into(),
            exclusive: s.prune,
            state_dir: s.state_dir.clone(),
        },
    )?;
    let removed = vault.forget(&plan)?;
    let prune = if s.prune {
        Some(vault.prune(false)?)
    } else {
        None
    };
    lock.release()?;
    Ok(ForgetOutcome {
        dry_run: false,
        plan,
        removed,
        prune,
    })
}

/// Records a failure that happened before a guarded run could start (metrics, `/fail` ping).
pub fn report_failure(config: &Config, message: &str) {
    let monitor = Monitor::new(&config.monitoring);
    monitor.record_failure();
    monitor.ping(Signal::Fail, message);
}

/// What a guarded `ckan-vault backup` adds to the backup's own outcome.
#[derive(Debug, Clone, Serialize)]
pub struct GuardedOutcome {
    pub stats: Option<VaultStats>,
    pub warnings: Vec<String>,
}

/// `ckan-vault backup` under the run lock, with metrics and pings.
pub fn guarded_backup(
    config: &Config,
    vault: &Vault,
    pg: &Pg,
    plan: &BackupPlan,
    s: &Settings,
) -> Result<(BackupOutcome, GuardedOutcome), HookError> {
    let monitor = Monitor::new(&config.monitoring);
    let clock = Instant::now();
    let result = (|| -> Result<(BackupOutcome, GuardedOutcome), HookError> {
        let vcfg = config.vault()?;
        let mut lock = RunLock::acquire(
            vault,
            &vcfg,
            LockRequest {
                owner: s.owner.clone(),
                command: "ckan-vault backup".into(),
                exclusive: false,
                state_dir: s.state_dir.clone(),
            },
        )?;
        lock.keep_fresh();
        let mut warnings: Vec<String> = monitor
            .ping(Signal::Start, &format!("backup of {}", plan.site))
            .into_iter()
            .collect();
        let out = crate::backup::run(vault, pg, plan)?;
        lock.release()?;
        let stats = match vault.stats() {
            Ok(s) => Some(s),
            Err(e) => {
                warnings.push(format!("cannot measure the vault: {e}"));
                None
            }
        };
        warnings.extend(monitor.record_success(&monitor::Success {
            duration_seconds: Some(out.duration_seconds),
            added_bytes: Some(out.data_added),
            stats,
        }));
        let body = format!(
            "snapshot {} of {}: {} tables, {} rows, added {}",
            &out.snapshot[..8.min(out.snapshot.len())],
            plan.site,
            out.tables,
            out.rows,
            crate::report::bytes(out.data_added)
        );
        warnings.extend(monitor.ping(Signal::Success, &body));
        Ok((out, GuardedOutcome { stats, warnings }))
    })();
    if let Err(e) = &result {
        monitor.record_failure();
        monitor.ping(
            Signal::Fail,
            &format!(
                "backup of {} failed after {:.0} s: {e}",
                plan.site,
                clock.elapsed().as_secs_f64()
            ),
        );
    }
    result
}
