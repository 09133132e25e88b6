//! Backup: the whole CKAN site as ONE fail-closed snapshot.
//!
//! The main database, the DataStore database, the cluster's globals, `ckan.ini` and the
//! storage tree stream into one vault snapshot. pg_dump runs in custom format without
//! compression (the vault compresses and deduplicates); its output passes through
//! [`crate::pg::archive::ArchiveTap`], which sums every table for the manifest on the way.
//! Nothing is written to local disk.
//!
//! Fail-closed: each stream reports success only when its program exited 0 and the archive
//! proved complete. `manifest.json` comes after the database streams and is produced only
//! if all of them succeeded; after archiving, any failure deletes the snapshot. A snapshot
//! without a manifest (a crash in the moment between saving and deleting) is never taken as
//! a backup by restore, drill or retention.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::error::{Categorized, Category};
use crate::manifest::{
    self, ConfigRecord, DatabaseRecord, GlobalsRecord, Manifest, StorageRecord, StreamRecord,
};
use crate::pg::archive::{ArchiveSummary, ArchiveTap};
use crate::pg::{Pg, PgError, ServerInfo, Target};
use crate::vault::{BoxRead, Entries, EntryMeta, Kind, SnapshotMeta, Vault, VaultError};

pub use crate::manifest::paths;

/// Seals the config file's bytes (with the escrow recipients); errors are messages.
pub type Sealer = Box<dyn Fn(&[u8]) -> Result<Vec<u8>, String> + Send + Sync>;

/// Where the cluster's roles and grants come from.
#[derive(Debug, Clone)]
pub enum Globals {
    /// Dump them with `pg_dumpall --globals-only` through this superuser connection.
    Dump(Target),
    /// Leave them out, for this reason (recorded in the manifest).
    Skip(String),
}

/// Everything a backup needs, resolved from the configuration.
pub struct BackupPlan {
    /// The snapshot label (the site's host name).
    pub site: String,
    pub site_url: Option<String>,
    pub main: Target,
    pub datastore: Option<Target>,
    pub globals: Globals,
    /// `ckan.ini` to store.
    pub config_file: Option<PathBuf>,
    /// When set, the config is stored sealed as `config/ckan.ini.age`.
    pub seal_config: Option<Sealer>,
    pub storage: Option<PathBuf>,
    pub extra_tags: Vec<String>,
}

/// What a backup produced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackupOutcome {
    pub snapshot: String,
    pub time: String,
    /// Bytes read from all sources.
    pub bytes_processed: u64,
    /// New data (before compression) that this snapshot added to the vault.
    pub data_added: u64,
    /// New data as stored (compressed, encrypted).
    pub data_added_packed: u64,
    pub duration_seconds: f64,
    pub tables: usize,
    pub rows: u64,
    pub storage_files: u64,
    pub warnings: Vec<String>,
    #[serde(skip)]
    pub manifest: Manifest,
}

/// Why a backup failed. No variant carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("cannot read {path}: {source}")]
    ReadFile { path: PathBuf, source: io::Error },
    #[error(
        "storage path {path} is not a readable directory: {detail}; fix [ckan] storage-path or ckan.storage_path"
    )]
    Storage { path: PathBuf, detail: String },
    #[error("sealing ckan.ini failed: {0}")]
    Seal(String),
    #[error(transparent)]
    Order(#[from] crate::vault::source::OrderError),
    #[error("backup failed, no snapshot kept: {reason}")]
    Failed {
        reason: String,
        details: Vec<String>,
    },
    #[error(
        "backup failed: {reason}; ALSO: could not delete the incomplete snapshot {snapshot} ({delete_error}); it has no manifest and is never used as a backup"
    )]
    FailedKept {
        reason: String,
        snapshot: String,
        delete_error: String,
        details: Vec<String>,
    },
}

impl Categorized for BackupError {
    fn category(&self) -> Category {
        match self {
            BackupError::Pg(e) => e.category(),
            BackupError::Vault(e) => e.category(),
            BackupError::ReadFile { .. } | BackupError::Storage { .. } | BackupError::Seal(_) => {
                Category::Usage
            }
            BackupError::Failed { .. } | BackupError::FailedKept { .. } | BackupError::Order(_) => {
                Category::Failure
            }
        }
    }
}

/// The result of one stream, as its reader saw it end.
#[derive(Debug, Clone)]
struct StreamResult {
    size: u64,
    sha256: String,
    archive: Option<ArchiveSummary>,
}

/// Collects stream results; readers report exactly once (see [`Slot`]).
#[derive(Default)]
struct Collector {
    results: Mutex<BTreeMap<String, Result<StreamResult, String>>>,
    changed: Condvar,
}

impl Collector {
    fn report(&self, name: &str, result: Result<StreamResult, String>) {
        let mut r = self.results.lock().expect("collector lock");
        r.entry(name.to_string()).or_insert(result);
        self.changed.notify_all();
    }

    /// Waits until `names` all reported; returns their results.
    fn wait_for(&self, names: &[String]) -> BTreeMap<String, Result<StreamResult, String>> {
        let mut r = self.results.lock().expect("collector lock");
        while !names.iter().all(|n| r.contains_key(n)) {
            r = self.changed.wait(r).expect("collector lock");
        }
        names.iter().map(|n| (n.clone(), r[n].clone())).collect()
    }

    fn snapshot(&self) -> BTreeMap<String, Result<StreamResult, String>> {
        self.results.lock().expect("collector lock").clone()
    }
}

/// A promise to report one stream's result, kept even if the archiver drops it unread.
struct Slot {
    name: String,
    collector: Arc<Collector>,
    done: bool,
}

impl Slot {
    fn new(name: &str, collector: &Arc<Collector>) -> Self {
        Self {
            name: name.to_string(),
            collector: collector.clone(),
            done: false,
        }
    }

    fn report(&mut self, result: Result<StreamResult, String>) {
        if !self.done {
            self.done = true;
            self.collector.report(&self.name, result);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.report(Err("the stream was not read to its end".into()));
    }
}

/// Reads a child's stdout for the archiver, hashing and (for pg_dump) parsing on the way.
struct StreamTap {
    slot: Slot,
    child: Child,
    stdout: ChildStdout,
    stderr: Option<JoinHandle<Vec<u8>>>,
    sha: Sha256,
    size: u64,
    archive: Option<ArchiveTap>,
    program: &'static str,
    failed: Option<String>,
    finished: bool,
}

impl StreamTap {
    fn new(slot: Slot, mut child: Child, program: &'static str, parse_archive: bool) -> Self {
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child
            .stderr
            .take()
            .map(crate::pg::tools::read_in_background);
        Self {
            slot,
            child,
            stdout,
            stderr,
            sha: Sha256::new(),
            size: 0,
            archive: parse_archive.then(ArchiveTap::new),
            program,
            failed: None,
            finished: false,
        }
    }

    fn finish(&mut self) -> Result<(), String> {
        self.finished = true;
        let status = self.child.wait().map_err(|e| e.to_string())?;
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let tail = crate::pg::tools::last_lines(&stderr);
        if !status.success() {
            return Err(format!("{} {status}: {tail}", self.program));
        }
        if !tail.is_empty() {
            log::warn!("{}: {tail}", self.program);
        }
        let archive = match self.archive.take() {
            Some(tap) => Some(tap.finish().map_err(|e| format!("{}: {e}", self.program))?),
            None => None,
        };
        self.slot.report(Ok(StreamResult {
            size: self.size,
            sha256: hex::encode(self.sha.finalize_reset()),
            archive,
        }));
        Ok(())
    }
}

impl Read for StreamTap {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(f) = &self.failed {
            return Err(io::Error::other(f.clone()));
        }
        if self.finished {
            return Ok(0);
        }
        let n = match self.stdout.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return self.read(buf),
            Err(e) => {
                let msg = format!("reading {} output: {e}", self.program);
                self.fail(msg.clone());
                return Err(io::Error::other(msg));
            }
        };
        if n == 0 {
            if let Err(msg) = self.finish() {
                self.fail(msg.clone());
                return Err(io::Error::other(msg));
            }
            return Ok(0);
        }
        self.size += n as u64;
        self.sha.update(&buf[..n]);
        if let Some(tap) = &mut self.archive {
            tap.feed(&buf[..n]);
        }
        Ok(n)
    }
}

impl StreamTap {
    fn fail(&mut self, msg: String) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.slot.report(Err(msg.clone()));
        self.failed = Some(msg);
    }
}

impl Drop for StreamTap {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Hashes a storage file as the archiver reads it.
struct FileTap {
    slot: Slot,
    file: std::fs::File,
    sha: Sha256,
    size: u64,
}

impl Read for FileTap {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.file.read(buf) {
            Ok(0) => {
                self.slot.report(Ok(StreamResult {
                    size: self.size,
                    sha256: hex::encode(self.sha.finalize_reset()),
                    archive: None,
                }));
                Ok(0)
            }
            Ok(n) => {
                self.size += n as u64;
                self.sha.update(&buf[..n]);
                Ok(n)
            }
            Err(e) => {
                self.slot.report(Err(e.to_string()));
                Err(e)
            }
        }
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A storage file or directory found by the walk.
struct StorageItem {
    rel: PathBuf,
    abs: PathBuf,
    meta: std::fs::Metadata,
}

fn walk_storage(root: &Path) -> Result<Vec<StorageItem>, BackupError> {
    let fail = |detail: String| BackupError::Storage {
        path: root.to_owned(),
        detail,
    };
    let meta = std::fs::metadata(root).map_err(|e| fail(e.to_string()))?;
    if !meta.is_dir() {
        return Err(fail("not a directory".into()));
    }
    let mut items = Vec::new();
    for entry in walkdir::WalkDir::new(root)
        .min_depth(1)
        .follow_links(false)
        .sort_by_file_name()
    {
        let entry = entry.map_err(|e| fail(e.to_string()))?;
        let ft = entry.file_type();
        if !(ft.is_file() || ft.is_dir()) {
            log::warn!(
                "skipping {} (not a regular file or directory)",
                entry.path().display()
            );
            continue;
        }
        let meta = entry.metadata().map_err(|e| fail(e.to_string()))?;
        let rel = entry
            .path()
            .strip_prefix(root)
            .expect("walk stays below its root")
            .to_path_buf();
        items.push(StorageItem {
            rel,
            abs: entry.path().to_path_buf(),
            meta,
        });
    }
    Ok(items)
}

struct DbStream {
    role: &'static str,
    path: &'static str,
    target: Target,
    server: ServerInfo,
}

/// Checks that the databases answer and picks matching pg_dump binaries.
fn preflight(
    pg: &Pg,
    plan: &BackupPlan,
) -> Result<(Vec<DbStream>, Globals, Vec<String>), BackupError> {
    let mut warnings = Vec::new();
    let mut dbs = Vec::new();
    let mut add = |role, path, t: &Target| -> Result<(), BackupError> {
        let server = pg.server_info(t)?;
        let mut target = t.clone();
        if !target.bindir.is_pinned() {
            target.bindir = crate::pg::BinDir::for_major(Some(server.major()));
        }
        dbs.push(DbStream {
            role,
            path,
            target,
            server,
        });
        Ok(())
    };
    add("main", paths::MAIN_DB, &plan.main)?;
    if let Some(ds) = &plan.datastore {
        add("datastore", paths::DATASTORE_DB, ds)?;
    }
    let globals = match &plan.globals {
        Globals::Skip(why) => Globals::Skip(why.clone()),
        Globals::Dump(t) => {
            let probe = pg
                .query(
                    t,
                    "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
                )
                .map_err(|e| e.to_string());
            match probe.as_deref() {
                Ok("t") => {
                    let mut t = t.clone();
                    if !t.bindir.is_pinned() {
                        t.bindir = dbs[0].target.bindir.clone();
                    }
                    Globals::Dump(t)
                }
                Ok(_) => Globals::Skip(format!(
                    "{} is not a superuser; set [database] admin-url to a superuser connection",
                    t.conn
                )),
                Err(e) => Globals::Skip(format!(
                    "cannot connect as a superuser ({e}); set [database] admin-url"
                )),
            }
        }
    };
    if let Globals::Skip(why) = &globals {
        warnings.push(format!("globals (roles) not backed up: {why}"));
    }
    Ok((dbs, globals, warnings))
}

/// Runs one backup into `vault`. On any failure no snapshot is left behind.
pub fn run(vault: &Vault, pg: &Pg, plan: &BackupPlan) -> Result<BackupOutcome, BackupError> {
    let clock = Instant::now();
    let started = jiff::Timestamp::now();
    let (dbs, globals, warnings) = preflight(pg, plan)?;
    for w in &warnings {
        log::warn!("{w}");
    }
    let storage_items = match &plan.storage {
        Some(root) => Some((root.clone(), walk_storage(root)?)),
        None => None,
    };

    let collector = Arc::new(Collector::default());
    let storage_collector = Arc::new(Collector::default());
    let mut entries = Entries::new();
    let mut fixed_streams: BTreeMap<String, StreamRecord> = BTreeMap::new();

    // config/ckan.ini (small: read now, sealed when escrow recipients are configured)
    let mut config_record = None;
    if let Some(path) = &plan.config_file {
        let bytes = std::fs::read(path).map_err(|source| BackupError::ReadFile {
            path: path.clone(),
            source,
        })?;
        let (stored_path, stored, sealed) = match &plan.seal_config {
            Some(seal) => (
                paths::CONFIG_SEALED,
                seal(&bytes).map_err(BackupError::Seal)?,
                true,
            ),
            None => (paths::CONFIG, bytes, false),
        };
        fixed_streams.insert(
            stored_path.to_string(),
            StreamRecord {
                size: stored.len() as u64,
                sha256: sha256_hex(&stored),
            },
        );
        config_record = Some(ConfigRecord {
            path: stored_path.to_string(),
            source: path.display().to_string(),
            sealed,
        });
        entries.push_bytes(stored_path, stored)?;
    }

    // Database streams, spawned when the archiver's worker opens them.
    let mut expected: Vec<String> = Vec::new();
    let mut stream_specs: Vec<(&'static str, Target, bool, &'static str)> = dbs
        .iter()
        .map(|d| (d.path, d.target.clone(), true, "pg_dump"))
        .collect();
    if let Globals::Dump(t) = &globals {
        stream_specs.push((paths::GLOBALS, t.clone(), false, "pg_dumpall"));
    }
    stream_specs.sort_by_key(|s| s.0);
    for (path, target, is_dump, program) in stream_specs {
        expected.push(path.to_string());
        let slot = Slot::new(path, &collector);
        let mut command = if is_dump {
            pg.dump_command(&target)?
        } else {
            pg.globals_command(&target)?
        };
        let opener = Box::new(move || -> io::Result<BoxRead> {
            let mut slot = slot;
            match command.spawn() {
                Ok(child) => Ok(Box::new(StreamTap::new(slot, child, program, is_dump)) as BoxRead),
                Err(e) => {
                    let msg = format!("cannot start {program}: {e}");
                    slot.report(Err(msg.clone()));
                    Err(io::Error::other(msg))
                }
            }
        });
        entries.push_file(path, EntryMeta::stream(), opener)?;
    }

    // manifest.json: produced only once every database stream ended well.
    let manifest_cell: Arc<Mutex<Option<Manifest>>> = Arc::new(Mutex::new(None));
    let mut base = Manifest {
        format: manifest::FORMAT,
        ckan_vault_version: env!("CARGO_PKG_VERSION").to_string(),
        site: plan.site.clone(),
        site_url: plan.site_url.clone(),
        host: crate::vault::hostname(),
        started,
        finished: started,
        streams: fixed_streams,
        databases: BTreeMap::new(),
        globals: match &globals {
            Globals::Dump(_) => GlobalsRecord {
                path: Some(paths::GLOBALS.into()),
                skipped: None,
            },
            Globals::Skip(why) => GlobalsRecord {
                path: None,
                skipped: Some(why.clone()),
            },
        },
        config: config_record,
        storage: storage_items.as_ref().map(|(root, items)| StorageRecord {
            source: root.display().to_string(),
            files: items.iter().filter(|i| i.meta.is_file()).count() as u64,
            bytes: items
                .iter()
                .filter(|i| i.meta.is_file())
                .map(|i| i.meta.len())
                .sum(),
        }),
    };
    {
        let collector = collector.clone();
        let expected = expected.clone();
        let cell = manifest_cell.clone();
        let db_info: Vec<(&'static str, &'static str, String, ServerInfo)> = dbs
            .iter()
            .map(|d| {
                (
                    d.role,
                    d.path,
                    d.target.conn.database().to_string(),
                    d.server.clone(),
                )
            })
            .collect();
        entries.push_file(
            manifest::MANIFEST_PATH,
            EntryMeta::stream(),
            Box::new(move || -> io::Result<BoxRead> {
                let results = collector.wait_for(&expected);
                let mut failures = Vec::new();
                for (path, r) in &results {
                    match r {
                        Ok(s) => {
                            base.streams.insert(
                                path.clone(),
                                StreamRecord {
                                    size: s.size,
                                    sha256: s.sha256.clone(),
                                },
                            );
                        }
                        Err(e) => failures.push(format!("{path}: {e}")),
                    }
                }
                if !failures.is_empty() {
                    return Err(io::Error::other(format!(
                        "not writing the manifest: {}",
                        failures.join("; ")
                    )));
                }
                for (role, path, name, server) in db_info {
                    let dump = results[path]
                        .as_ref()
                        .ok()
                        .and_then(|s| s.archive.clone())
                        .unwrap_or_default();
                    base.databases.insert(
                        role.to_string(),
                        DatabaseRecord {
                            path: path.to_string(),
                            name,
                            server,
                            dump,
                        },
                    );
                }
                base.finished = jiff::Timestamp::now();
                let bytes = base.to_json();
                *cell.lock().expect("manifest cell") = Some(base);
                Ok(Box::new(io::Cursor::new(bytes)) as BoxRead)
            }),
        )?;
    }

    // storage/… and storage.sha256
    let mut storage_names = Vec::new();
    if let Some((_, items)) = storage_items {
        let root_meta = plan
            .storage
            .as_ref()
            .and_then(|r| std::fs::metadata(r).ok())
            .map_or_else(EntryMeta::default, |m| EntryMeta::from_fs(&m));
        entries.push_dir(manifest::STORAGE_DIR, root_meta)?;
        for item in items {
            let snap_path = Path::new(manifest::STORAGE_DIR).join(&item.rel);
            let meta = EntryMeta::from_fs(&item.meta);
            if item.meta.is_dir() {
                entries.push_dir(snap_path, meta)?;
                continue;
            }
            let name = item.rel.to_string_lossy().into_owned();
            storage_names.push(name.clone());
            let mut slot = Slot::new(&name, &storage_collector);
            let abs = item.abs;
            entries.push_file(
                snap_path,
                meta,
                Box::new(move || -> io::Result<BoxRead> {
                    match std::fs::File::open(&abs) {
                        Ok(file) => Ok(Box::new(FileTap {
                            slot,
                            file,
                            sha: Sha256::new(),
                            size: 0,
                        }) as BoxRead),
                        Err(e) => {
                            slot.report(Err(e.to_string()));
                            Err(e)
                        }
                    }
                }),
            )?;
        }
        let collector = storage_collector.clone();
        let names = storage_names.clone();
        entries.push_file(
            manifest::STORAGE_SUMS_PATH,
            EntryMeta::stream(),
            Box::new(move || -> io::Result<BoxRead> {
                let results = collector.wait_for(&names);
                let mut text = String::new();
                let mut failures = Vec::new();
                for (name, r) in &results {
                    match r {
                        Ok(s) => text.push_str(&manifest::storage_sum_line(&s.sha256, name)),
                        Err(e) => failures.push(format!("{name}: {e}")),
                    }
                }
                if !failures.is_empty() {
                    return Err(io::Error::other(format!(
                        "storage files could not be read: {}",
                        failures.join("; ")
                    )));
                }
                Ok(Box::new(io::Cursor::new(text.into_bytes())) as BoxRead)
            }),
        )?;
    }

    let expected_files = entries.files();
    let mut meta = SnapshotMeta::new(Kind::Backup, plan.site.clone());
    meta.extra_tags = plan.extra_tags.clone();
    let archived = vault.archive(entries, &meta);

    // Decide whether the snapshot may stand.
    let mut reasons: Vec<String> = Vec::new();
    for (path, r) in collector.snapshot() {
        if let Err(e) = r {
            reasons.push(format!("{path}: {e}"));
        }
    }
    for (path, r) in storage_collector.snapshot() {
        if let Err(e) = r {
            reasons.push(format!("storage/{path}: {e}"));
        }
    }
    let snap = match archived {
        Ok(s) => s,
        Err(e) => {
            reasons.insert(0, e.to_string());
            return Err(BackupError::Failed {
                reason: reasons[0].clone(),
                details: reasons,
            });
        }
    };
    let processed = snap.summary.as_ref().map_or(0, |s| s.total_files_processed) as usize;
    let manifest = manifest_cell.lock().expect("manifest cell").take();
    if processed != expected_files {
        reasons.push(format!("{processed} of {expected_files} files were stored"));
    }
    if manifest.is_none() && reasons.is_empty() {
        reasons.push("the manifest was not written".into());
    }
    if !reasons.is_empty() {
        if let Err(e) = vault.delete(std::slice::from_ref(&snap)) {
            // The snapshot stays: say so instead of "no snapshot kept".
            return Err(BackupError::FailedKept {
                reason: reasons[0].clone(),
                snapshot: snap.id.to_string(),
                delete_error: e.to_string(),
                details: reasons,
            });
        }
        return Err(BackupError::Failed {
            reason: reasons[0].clone(),
            details: reasons,
        });
    }
    let manifest = manifest.expect("checked above");
    let summary = snap.summary.clone().unwrap_or_default();
    let outcome = BackupOutcome {
        snapshot: snap.id.to_hex().to_string(),
        time: snap.time.timestamp().to_string(),
        bytes_processed: summary.total_bytes_processed,
        data_added: summary.data_added,
        data_added_packed: summary.data_added_packed,
        duration_seconds: clock.elapsed().as_secs_f64(),
        tables: manifest
            .databases
            .values()
            .map(|d| d.dump.tables.len())
            .sum(),
        rows: manifest.total_rows(),
        storage_files: manifest.storage.as_ref().map_or(0, |s| s.files),
        warnings,
        manifest,
    };
    Ok(outcome)
}
