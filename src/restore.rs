//! Restore: from a backup snapshot back into PostgreSQL and onto disk, verified.
//!
//! Each dump streams from the vault straight into `pg_restore` (no temporary file). On the
//! way its size and SHA-256 are compared with the manifest, and the archive is parsed again
//! so the rows that went in are known; afterwards every table of the restored database is
//! summed with `COPY … TO STDOUT` and compared with the manifest.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{Categorized, Category};
use crate::manifest::{self, DatabaseRecord, Manifest, ManifestError};
use crate::pg::archive::{ArchiveTap, TableData};
use crate::pg::checksum::TableSum;
use crate::pg::{PageRange, Pg, PgError, Target};
use crate::vault::{Kind, Snapshot, Vault, VaultError, VaultReader};

/// Restore errors. None carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(
        "snapshot {0} has no readable manifest ({1}); it is not a complete backup, pick another with `ckan-vault snapshots`"
    )]
    NoManifest(String, String),
    #[error(
        "cannot read the manifest of snapshot {snapshot}: {detail}; the vault may be damaged: run `ckan-vault check --read-data`"
    )]
    ManifestUnreadable { snapshot: String, detail: String },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("no complete backup matches `{0}`; list them with `ckan-vault snapshots`")]
    NoBackup(String),
    #[error("database {0} already has tables; restore into an empty database or pass --clean")]
    NotEmpty(String),
    #[error("the snapshot has no {0}")]
    Missing(String),
    #[error("{path} exists in {dir}; restore storage into an empty directory or pass --clean")]
    StorageExists { dir: PathBuf, path: String },
    #[error("pg_restore into {database} failed: {detail}")]
    PgRestore { database: String, detail: String },
    #[error(
        "{path} read from the vault does not match the manifest ({detail}); the vault may be damaged: run `ckan-vault check --read-data`"
    )]
    StreamMismatch { path: String, detail: String },
    #[error(
        "reading {path} from the vault failed: {detail}; the vault may be damaged: run `ckan-vault check --read-data`"
    )]
    VaultRead { path: String, detail: String },
    #[error("I/O error on {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error(
        "the backup's ckan.ini is sealed to the escrow recipients: give --identity KEY (an escrow officer's age identity file)"
    )]
    ConfigSealed,
    #[error("cannot unseal the backup's ckan.ini: {0}")]
    Unseal(crate::escrow::Error),
    #[error("{0} exists; choose another --config-out, remove it, or pass --clean")]
    ConfigExists(PathBuf),
}

impl Categorized for RestoreError {
    fn category(&self) -> Category {
        match self {
            RestoreError::Pg(e) => e.category(),
            RestoreError::Vault(e) => e.category(),
            RestoreError::NoBackup(_)
            | RestoreError::Manifest(ManifestError::Newer(_))
            | RestoreError::NotEmpty(_)
            | RestoreError::StorageExists { .. }
            | RestoreError::ConfigSealed
            | RestoreError::ConfigExists(_) => Category::Usage,
            RestoreError::Unseal(e) => match e {
                crate::escrow::Error::Damaged | crate::escrow::Error::NotAge { .. } => {
                    Category::Failure
                }
                _ => Category::Usage,
            },
            _ => Category::Failure,
        }
    }
}

/// A backup snapshot with its manifest.
#[derive(Debug, Clone)]
pub struct Backup {
    pub snapshot: Snapshot,
    pub manifest: Manifest,
}

/// Reads a snapshot's manifest. A snapshot without one is [`RestoreError::NoManifest`]; one
/// that cannot be read or parsed is an error of its own (a damaged or newer vault).
pub fn read_manifest(reader: &VaultReader, snap: &Snapshot) -> Result<Manifest, RestoreError> {
    let bytes = match reader.read(snap, manifest::MANIFEST_PATH, manifest::MAX_MANIFEST_BYTES) {
        Ok(bytes) => bytes,
        Err(e @ VaultError::NoFile { .. }) => {
            return Err(RestoreError::NoManifest(snap.id.to_string(), e.to_string()));
        }
        Err(e) => {
            return Err(RestoreError::ManifestUnreadable {
                snapshot: snap.id.to_string(),
                detail: e.to_string(),
            });
        }
    };
    Ok(Manifest::parse(&bytes)?)
}

/// Finds a complete backup by `latest`, `latest~N` or id: snapshots without a manifest
/// (incomplete backups) are skipped for `latest…` and refused by id. A manifest that is
/// there but cannot be read or understood stops the search: restoring an older backup
/// instead would hide a damaged vault or a newer format.
///
/// With `site`, only that site's backups (snapshot label) count: several sites may share
/// one vault, and `latest` must not pick another site's backup.
pub fn find_backup(
    reader: &VaultReader<'_>,
    spec: &str,
    site: Option<&str>,
) -> Result<Backup, RestoreError> {
    let all: Vec<_> = reader
        .snapshots(Kind::Backup)?
        .into_iter()
        .filter(|s| site.is_none_or(|l| s.label == l))
        .collect();
    let shown = || match site {
        Some(l) => format!("{spec}` of site `{l}"),
        None => spec.to_string(),
    };
    if spec == "latest" || spec.starts_with("latest~") {
        let skip: usize = match spec.strip_prefix("latest~") {
            Some(n) => n.parse().map_err(|_| RestoreError::NoBackup(shown()))?,
            None => 0,
        };
        let mut seen = 0;
        for snap in all.iter().rev() {
            if seen < skip {
                // Only whether it is a backup matters here; a damaged one still counts.
                if let Ok(None) = reader.node(snap, manifest::MANIFEST_PATH) {
                    log::warn!("skipping snapshot {}: it has no manifest", snap.id);
                } else {
                    seen += 1;
                }
                continue;
            }
            match read_manifest(reader, snap) {
                Ok(manifest) => {
                    return Ok(Backup {
                        snapshot: snap.clone(),
                        manifest,
                    });
                }
                Err(e @ RestoreError::NoManifest(..)) => {
                    log::warn!("skipping snapshot {}: {e}", snap.id);
                }
                Err(e) => return Err(e),
            }
        }
        return Err(RestoreError::NoBackup(shown()));
    }
    let snapshot = Vault::pick(&all, spec, Kind::Backup)?;
    let manifest = read_manifest(reader, &snapshot)?;
    Ok(Backup { snapshot, manifest })
}

/// What to restore where.
#[derive(Debug, Clone, Default)]
pub struct RestorePlan {
    pub main: Option<Target>,
    pub datastore: Option<Target>,
    /// A superuser connection to apply `db/globals.sql` through.
    pub globals: Option<Target>,
    pub storage: Option<PathBuf>,
    /// Drop and recreate objects in a non-empty target database / overwrite storage files.
    pub clean: bool,
    /// Keep GRANTs even without restoring globals (the roles must exist).
    pub keep_privileges: bool,
    /// Write the backup's ckan.ini here (0600), unsealing it when it is sealed.
    pub config_out: Option<ConfigOut>,
    /// After restoring the main database, delete the `api_token` rows of every token
    /// revocation recorded in the vault, so an older backup brings no revoked token back.
    pub reapply_revocations: bool,
    /// Parallel sessions for each database's indexes and constraints; 0 means one per core.
    /// With 1 (and with `clean`) one pg_restore restores everything in one transaction.
    pub jobs: usize,
    /// Only this site's backups (snapshot label) count for `latest`; None: every site's.
    pub site: Option<String>,
    /// Tables with at least this much COPY text are loaded and read back by `jobs` sessions
    /// at once; None: 64 MiB.
    pub split_bytes: Option<u64>,
}

impl RestorePlan {
    /// How many post-data sessions a restore uses; 1 means the single-transaction path.
    fn post_data_jobs(&self) -> usize {
        if self.clean {
            // `--clean` must drop indexes and constraints before the tables they hang on,
            // which pg_restore only does when it restores every section in one run.
            return 1;
        }
        match self.jobs {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        }
    }
}

/// Where `restore --config-out` writes the backup's ckan.ini.
#[derive(Debug, Clone)]
pub struct ConfigOut {
    pub path: PathBuf,
    /// An age identity file of an escrow officer, for a sealed `config/ckan.ini.age`.
    pub identity: Option<PathBuf>,
}

/// The ckan.ini written by `--config-out`.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigReport {
    pub path: String,
    /// Whether it was stored sealed (and was unsealed here).
    pub sealed: bool,
    pub bytes: u64,
}

/// Token revocations re-applied to the restored main database.
#[derive(Debug, Clone, Serialize, Default)]
pub struct RevocationReport {
    /// Distinct token ids recorded as revoked in the vault.
    pub recorded: usize,
    /// `api_token` rows deleted from the restored database (tokens revoked again).
    pub re_revoked: u64,
    /// Why nothing was re-applied, when it was not (e.g. no `api_token` table).
    pub skipped: Option<String>,
    /// Revocation records that could not be read (their tokens may be valid again).
    pub unreadable: Vec<String>,
}

/// One table that did not come back as dumped.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TableMismatch {
    pub table: String,
    pub detail: String,
}

/// The check of one restored database against the manifest.
#[derive(Debug, Clone, Serialize)]
pub struct DatabaseReport {
    pub role: String,
    pub database: String,
    pub bytes: u64,
    pub restore_seconds: f64,
    pub verify_seconds: f64,
    pub tables: usize,
    pub rows: u64,
    pub mismatches: Vec<TableMismatch>,
    /// Tables present in the restored database but not in the manifest.
    pub extra_tables: Vec<String>,
    pub pg_restore_warnings: Vec<String>,
}

/// The storage restore.
#[derive(Debug, Clone, Serialize, Default)]
pub struct StorageReport {
    pub files: u64,
    pub bytes: u64,
    pub mismatches: Vec<String>,
    pub missing: Vec<String>,
}

/// Everything a restore did and found.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreOutcome {
    pub snapshot: String,
    pub databases: Vec<DatabaseReport>,
    pub globals_errors: Option<usize>,
    pub storage: Option<StorageReport>,
    /// The ckan.ini written by `--config-out`.
    pub config: Option<ConfigReport>,
    /// Recorded token revocations re-applied to the restored main database.
    pub revocations: Option<RevocationReport>,
    pub seconds: f64,
}

impl RestoreOutcome {
    /// True when every restored table and file matched the manifest.
    pub fn verified(&self) -> bool {
        self.databases.iter().all(|d| d.mismatches.is_empty())
            && self
                .storage
                .as_ref()
                .is_none_or(|s| s.mismatches.is_empty() && s.missing.is_empty())
    }
}

/// Hashes and parses what goes into pg_restore, or into the loaders of a parallel load.
struct TeeWriter<'a, W: Write> {
    inner: W,
    sha: Sha256,
    size: u64,
    tap: ArchiveTap,
    /// Whether writing to pg_restore (or a loader) failed.
    write_failed: bool,
    load: Option<ParallelLoad<'a>>,
}

impl<W: Write> Write for TeeWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self
            .inner
            .write(buf)
            .inspect_err(|_| self.write_failed = true)?;
        self.sha.update(&buf[..n]);
        self.size += n as u64;
        match &mut self.load {
            None => self.tap.feed(&buf[..n]),
            Some(load) => {
                self.tap.feed_into(&buf[..n], load);
                if load.failed.is_some() {
                    self.write_failed = true;
                    return Err(io::Error::other("the parallel load stopped"));
                }
            }
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The data of a restore into a database of its own making, in parallel: the tables are
/// created (and committed) from the archive's TOC as soon as it has streamed past, then each
/// table's rows stream into COPY sessions as they arrive: `sessions` of them for a table of
/// `split_bytes` or more, one for the others. Nothing waits on disk; a failure drops the
/// database (see [`restore_database`]).
struct ParallelLoad<'a> {
    pg: &'a Pg,
    target: &'a Target,
    record: &'a DatabaseRecord,
    filters: &'a [&'a str],
    sessions: usize,
    split_bytes: u64,
    /// The archive without data, and the `--use-list` file of its non-row entries.
    toc: Option<(Vec<u8>, Vec<u8>)>,
    /// The table whose rows are streaming, and its loader.
    loading: Option<(String, crate::pg::load::CopyLoader)>,
    stderr: Vec<u8>,
    failed: Option<String>,
}

impl ParallelLoad<'_> {
    fn finish_table(&mut self) {
        if let Some((_, loader)) = self.loading.take()
            && let Err(e) = loader.finish()
        {
            self.failed.get_or_insert(e.to_string());
        }
    }

    /// After the stream: sequence values and the like. Returns the TOC for post-data.
    fn finish(mut self) -> Result<(Vec<u8>, Vec<u8>), String> {
        self.finish_table();
        if let Some(e) = self.failed {
            return Err(e);
        }
        let (toc, list) = self
            .toc
            .ok_or_else(|| "the dump has no table of contents".to_string())?;
        let more = self
            .pg
            .restore_data_without_rows(self.target, &toc, &list, self.filters)
            .map_err(|e| e.to_string())?;
        self.stderr.extend(more);
        Ok((toc, self.stderr))
    }
}

impl crate::pg::archive::DataSink for ParallelLoad<'_> {
    fn head(&mut self, toc: &[u8], list: &[u8]) {
        match self.pg.restore_pre_data(self.target, toc, self.filters) {
            Ok(err) => self.stderr.extend(err),
            Err(e) => {
                self.failed.get_or_insert(e.to_string());
            }
        }
        self.toc = Some((toc.to_vec(), list.to_vec()));
    }

    fn data(&mut self, table: &str, copy: &str, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.loading.as_ref().is_some_and(|(t, _)| t != table) {
            // Each table's data is one block, ended before the next; a dump that says
            // otherwise still gets each table's rows into its own table.
            self.finish_table();
        }
        if self.loading.is_none() {
            let big = self
                .record
                .dump
                .tables
                .get(table)
                .is_some_and(|t| t.sum.bytes >= self.split_bytes.max(1));
            let sessions = if big { self.sessions } else { 1 };
            let encoding = self.record.dump.encoding.as_deref();
            match self.pg.copy_loader(self.target, copy, encoding, sessions) {
                Ok(l) => self.loading = Some((table.to_string(), l)),
                Err(e) => {
                    self.failed = Some(e.to_string());
                    return;
                }
            }
        }
        if let Some((_, l)) = &mut self.loading
            && !l.feed(bytes)
        {
            self.finish_table();
            self.failed
                .get_or_insert(format!("loading {table} stopped"));
        }
    }

    fn end(&mut self, _table: &str) {
        self.finish_table();
    }
}

/// Restores one database dump from a backup into `target` (created if missing).
///
/// A database it creates is loaded in parallel ([`ParallelLoad`]) and dropped again if that
/// fails; an existing (empty) one gets everything in one transaction instead, so either way a
/// failed load leaves nothing behind.
pub fn restore_database(
    pg: &Pg,
    reader: &VaultReader,
    backup: &Backup,
    role: &str,
    target: &Target,
    plan: &RestorePlan,
) -> Result<DatabaseReport, RestoreError> {
    let record = backup
        .manifest
        .databases
        .get(role)
        .ok_or_else(|| RestoreError::Missing(format!("{role} database")))?;
    let dbname = target.conn.database().to_string();
    // Connect to the target itself first: where pg_hba.conf limits the CKAN user to its own
    // database, the `postgres` database is only needed to create a missing one.
    let created = if pg.query(target, "SELECT 1").is_ok() {
        false
    } else {
        pg.create_database(&target.with_dbname("postgres"), &dbname)?
    };
    if !created && !plan.clean && !pg.list_tables(target)?.is_empty() {
        return Err(RestoreError::NotEmpty(target.conn.to_string()));
    }
    let clock = Instant::now();
    let jobs = plan.post_data_jobs();
    // Without the cluster's roles, GRANTs (and the DataStore's default privileges) name
    // roles the target may not have. The same filter applies to every restore step.
    let filters: &[&str] = if !plan.keep_privileges && plan.globals.is_none() {
        &["--no-privileges"]
    } else {
        &[]
    };
    let split_bytes = plan.split_bytes.unwrap_or(64 << 20);
    // A database of our own making can be loaded by several sessions, since a failure can
    // drop it again; into an existing one everything goes in one transaction instead.
    let (toc, mut stderr, sha, size, tap) = if jobs > 1 && created && record.dump.large_objects == 0
    {
        let load = ParallelLoad {
            pg,
            target,
            record,
            filters,
            sessions: jobs,
            split_bytes,
            toc: None,
            loading: None,
            stderr: Vec::new(),
            failed: None,
        };
        match load_in_parallel(reader, backup, &record.path, load) {
            Ok(done) => done,
            Err(e) => {
                let dropped = pg.drop_database(&target.with_dbname("postgres"), &dbname);
                return Err(match (e, dropped) {
                    (e, Ok(())) => e,
                    (e, Err(d)) => RestoreError::PgRestore {
                        database: target.conn.to_string(),
                        detail: format!(
                            "{e}; dropping the partly restored database failed too: {d}"
                        ),
                    },
                });
            }
        }
    } else {
        load_in_one_transaction(
            pg,
            reader,
            backup,
            &record.path,
            target,
            plan,
            jobs,
            filters,
        )?
    };
    log::debug!(
        "{}: tables and rows restored in {:.1} s",
        target.conn,
        clock.elapsed().as_secs_f64()
    );
    if let Some(toc) = toc {
        let more = pg
            .restore_post_data(target, &toc, jobs, filters)
            .map_err(|e| RestoreError::PgRestore {
                database: target.conn.to_string(),
                detail: format!(
                    "{e}; the tables and their rows are restored, their indexes and constraints are incomplete"
                ),
            })?;
        stderr.extend(more);
        log::debug!(
            "{}: indexes and constraints built ({jobs} sessions) by {:.1} s",
            target.conn,
            clock.elapsed().as_secs_f64()
        );
    }
    // What came out of the vault is compared with the manifest, table by table, so a damaged
    // or doctored dump names the tables it affects; the restored database is checked next.
    let mut mismatches = Vec::new();
    if let Err(e) = check_stream(
        &backup.manifest,
        &record.path,
        size,
        &hex::encode(sha.finalize()),
    ) {
        mismatches.push(TableMismatch {
            table: record.path.clone(),
            detail: e.to_string(),
        });
    }
    match tap.finish() {
        Ok(streamed) => {
            for (name, t) in &record.dump.tables {
                if streamed.tables.get(name) != Some(t) {
                    mismatches.push(TableMismatch {
                        table: name.clone(),
                        detail: "its rows in the vault's dump differ from the manifest".into(),
                    });
                }
            }
        }
        Err(e) => mismatches.push(TableMismatch {
            table: record.path.clone(),
            detail: e.to_string(),
        }),
    }
    let restore_seconds = clock.elapsed().as_secs_f64();
    let verify = Instant::now();
    let read = ReadBack {
        sessions: jobs.max(ReadBack::default().sessions),
        split_bytes,
    };
    let (in_db, extra_tables) = verify_database(pg, target, record, &read)?;
    for m in in_db {
        if !mismatches
            .iter()
            .any(|x: &TableMismatch| x.table == m.table)
        {
            mismatches.push(m);
        }
    }
    Ok(DatabaseReport {
        role: role.to_string(),
        database: dbname,
        bytes: size,
        restore_seconds,
        verify_seconds: verify.elapsed().as_secs_f64(),
        tables: record.dump.tables.len(),
        rows: record.dump.tables.values().map(|t| t.sum.rows).sum(),
        mismatches,
        extra_tables,
        pg_restore_warnings: String::from_utf8_lossy(&stderr)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect(),
    })
}

/// What a database's data restore leaves for the steps after it: the archive's TOC when the
/// post-data section is still to do, pg_restore's messages, the stream's SHA-256 and size, and
/// the tap that summed its tables.
type Loaded = (Option<Vec<u8>>, Vec<u8>, Sha256, u64, ArchiveTap);

/// The data restore of [`ParallelLoad`]. An error leaves a partly restored database behind.
fn load_in_parallel(
    reader: &VaultReader,
    backup: &Backup,
    path: &str,
    load: ParallelLoad<'_>,
) -> Result<Loaded, RestoreError> {
    let database = load.target.conn.to_string();
    let mut tee = TeeWriter {
        inner: io::sink(),
        sha: Sha256::new(),
        size: 0,
        tap: ArchiveTap::new(),
        write_failed: false,
        load: Some(load),
    };
    let dumped = reader.dump(&backup.snapshot, path, &mut tee);
    let TeeWriter {
        sha,
        size,
        mut tap,
        write_failed,
        load,
        ..
    } = tee;
    let mut load = load.expect("set above");
    tap.end_into(&mut load);
    if let Err(e) = &dumped
        && !write_failed
    {
        return Err(RestoreError::VaultRead {
            path: path.to_string(),
            detail: e.to_string(),
        });
    }
    let (toc, stderr) = load
        .finish()
        .map_err(|detail| RestoreError::PgRestore { database, detail })?;
    Ok((Some(toc), stderr, sha, size, tap))
}

/// Tables and their data stream into one pg_restore in one transaction, so a damaged or cut
/// stream leaves nothing behind; with `jobs` > 1 indexes and constraints come after it in
/// `jobs` sessions, as `pg_restore --jobs` does from a file.
#[allow(clippy::too_many_arguments)]
fn load_in_one_transaction(
    pg: &Pg,
    reader: &VaultReader,
    backup: &Backup,
    path: &str,
    target: &Target,
    plan: &RestorePlan,
    jobs: usize,
    filters: &[&str],
) -> Result<Loaded, RestoreError> {
    let mut extra: Vec<&str> = vec!["--single-transaction"];
    if jobs > 1 {
        extra.extend(["--section=pre-data", "--section=data"]);
    }
    if plan.clean {
        extra.extend(["--clean", "--if-exists"]);
    }
    extra.extend_from_slice(filters);
    let mut child = pg.spawn_restore(target, &extra)?;
    let stdin = child.stdin.take().expect("stdin piped");
    let errs = crate::pg::tools::read_in_background(child.stderr.take().expect("stderr piped"));
    let mut tee = TeeWriter {
        inner: io::BufWriter::with_capacity(1 << 20, stdin),
        sha: Sha256::new(),
        size: 0,
        tap: if jobs > 1 {
            ArchiveTap::keeping_toc()
        } else {
            ArchiveTap::new()
        },
        write_failed: false,
        load: None,
    };
    let dumped = reader.dump(&backup.snapshot, path, &mut tee);
    let flushed = tee.flush();
    let TeeWriter {
        inner,
        sha,
        size,
        mut tap,
        write_failed,
        ..
    } = tee;
    drop(inner);
    let status = child.wait().map_err(|source| RestoreError::Io {
        path: "pg_restore".into(),
        source,
    })?;
    let stderr = errs.join().unwrap_or_default();
    if let Err(e) = &dumped
        && !write_failed
    {
        // The vault could not deliver the whole dump; pg_restore's complaint about a stream
        // that ended early would hide that.
        return Err(RestoreError::VaultRead {
            path: path.to_string(),
            detail: e.to_string(),
        });
    }
    if !status.success() {
        return Err(RestoreError::PgRestore {
            database: target.conn.to_string(),
            detail: format!("{status}: {}", crate::pg::tools::last_lines(&stderr)),
        });
    }
    dumped?;
    flushed.map_err(|source| RestoreError::Io {
        path: path.to_string(),
        source,
    })?;
    let toc = if jobs > 1 {
        Some(tap.take_toc().ok_or_else(|| RestoreError::PgRestore {
            database: target.conn.to_string(),
            detail: format!("{path} has no table of contents"),
        })?)
    } else {
        None
    };
    Ok((toc, stderr, sha, size, tap))
}

fn check_stream(
    manifest: &Manifest,
    path: &str,
    size: u64,
    sha256: &str,
) -> Result<(), RestoreError> {
    let Some(rec) = manifest.streams.get(path) else {
        return Err(RestoreError::StreamMismatch {
            path: path.to_string(),
            detail: "the manifest does not list it".into(),
        });
    };
    if rec.size != size || rec.sha256 != sha256 {
        return Err(RestoreError::StreamMismatch {
            path: path.to_string(),
            detail: format!(
                "{size} bytes with SHA-256 {}…, manifest says {} bytes with {}…",
                &sha256[..12.min(sha256.len())],
                rec.size,
                &rec.sha256[..12.min(rec.sha256.len())]
            ),
        });
    }
    Ok(())
}

/// How a verification reads the restored tables back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadBack {
    /// Concurrent COPY sessions.
    pub sessions: usize,
    /// Tables of at least this much COPY text are read in page ranges, one session each.
    pub split_bytes: u64,
}

impl Default for ReadBack {
    fn default() -> Self {
        Self {
            sessions: std::thread::available_parallelism().map_or(2, |n| n.get()),
            split_bytes: 64 << 20,
        }
    }
}

/// Compares every manifest table with the restored database; also lists extra tables.
pub fn verify_database(
    pg: &Pg,
    target: &Target,
    record: &DatabaseRecord,
    read: &ReadBack,
) -> Result<(Vec<TableMismatch>, Vec<String>), RestoreError> {
    let present = pg.list_tables(target)?;
    let mut mismatches = Vec::new();
    // Largest tables first, over as many psql sessions as there are cores: each COPY is
    // bound by one server backend, so verification scales with parallel sessions.
    let mut work: Vec<(&String, &TableData)> = Vec::new();
    for (name, table) in &record.dump.tables {
        if present.iter().any(|p| unquote(p) == unquote(name)) {
            work.push((name, table));
        } else {
            mismatches.push(TableMismatch {
                table: name.clone(),
                detail: "missing".into(),
            });
        }
    }
    let work = read_parts(pg, target, work, read)?;
    let jobs = read.sessions.clamp(1, work.len().max(1));
    let queue = std::sync::Mutex::new(work.into_iter());
    let sums: std::sync::Mutex<BTreeMap<&String, Result<TableSum, String>>> = Default::default();
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                loop {
                    let next = queue.lock().expect("queue").next();
                    let Some((name, table, part)) = next else {
                        break;
                    };
                    let sum = pg
                        .copy_sum(target, &table.copy, record.dump.encoding.as_deref(), part)
                        .map_err(|e| e.to_string());
                    let mut sums = sums.lock().expect("sums");
                    match (sums.entry(name).or_insert(Ok(TableSum::default())), sum) {
                        (Ok(total), Ok(sum)) => total.merge(sum),
                        (total @ Ok(_), Err(e)) => *total = Err(e),
                        (Err(_), _) => {}
                    }
                }
            });
        }
    });
    let mut found = Vec::new();
    for (name, sum) in sums.into_inner().expect("sums") {
        let expected = &record.dump.tables[name].sum;
        let detail = match sum {
            Ok(sum) if sum == *expected => continue,
            Ok(sum) if sum.rows != expected.rows => {
                format!("{} rows, manifest says {}", sum.rows, expected.rows)
            }
            Ok(_) => "checksum differs (same row count)".to_string(),
            Err(e) => format!("cannot read: {e}"),
        };
        found.push(TableMismatch {
            table: name.clone(),
            detail,
        });
    }
    mismatches.extend(found);
    let known: Vec<String> = record.dump.tables.keys().map(|k| unquote(k)).collect();
    let extra = present
        .into_iter()
        .filter(|p| !known.contains(&unquote(p)))
        .collect();
    Ok((mismatches, extra))
}

/// One read of a verification: a table, and which of its pages (None: all).
type ReadPart<'a> = (&'a String, &'a TableData, Option<PageRange>);

/// The reads of a verification, largest first: each COPY is bound by one server backend,
/// and on CKAN sites one table (`activity`) holds most of the data, so a big table is read
/// in page ranges by up to `sessions` sessions at once (a TID range scan each, PostgreSQL 14+),
/// half of `split_bytes` or more each.
fn read_parts<'a>(
    pg: &Pg,
    target: &Target,
    tables: Vec<(&'a String, &'a TableData)>,
    read: &ReadBack,
) -> Result<Vec<ReadPart<'a>>, RestoreError> {
    let big = |t: &TableData| t.sum.bytes >= read.split_bytes.max(1);
    let splits = read.sessions > 1
        && tables.iter().any(|(_, t)| big(t))
        && pg.server_info(target)?.version_num >= 140_000;
    let mut work = Vec::new();
    for (name, table) in tables {
        let parts = (table.sum.bytes / (read.split_bytes / 2).max(1)).min(read.sessions as u64);
        if !splits || !big(table) || parts < 2 {
            work.push((table.sum.bytes, (name, table, None)));
            continue;
        }
        let pages = pg.table_pages(target, &table.copy)?;
        for part in PageRange::split(pages, parts) {
            work.push((table.sum.bytes / parts, (name, table, Some(part))));
        }
    }
    work.sort_by_key(|(bytes, _)| std::cmp::Reverse(*bytes));
    Ok(work.into_iter().map(|(_, w)| w).collect())
}

/// pg_dump quotes names that need it (`public."user"`); the catalog does not.
fn unquote(name: &str) -> String {
    name.replace('"', "")
}

/// Applies `db/globals.sql` through a superuser connection; returns the number of errors
/// (roles that already exist are expected ones).
pub fn restore_globals(
    pg: &Pg,
    reader: &VaultReader,
    backup: &Backup,
    admin: &Target,
) -> Result<usize, RestoreError> {
    let Some(path) = &backup.manifest.globals.path else {
        return Err(RestoreError::Missing(format!(
            "globals ({})",
            backup
                .manifest
                .globals
                .skipped
                .as_deref()
                .unwrap_or("not dumped")
        )));
    };
    let mut child = pg.spawn_sql(admin)?;
    let stdin = child.stdin.take().expect("stdin piped");
    let errs = crate::pg::tools::read_in_background(child.stderr.take().expect("stderr piped"));
    let mut w = HashingWriter {
        inner: stdin,
        sha: Sha256::new(),
        size: 0,
    };
    let dumped = reader.dump(&backup.snapshot, path, &mut w);
    let HashingWriter { inner, sha, size } = w;
    drop(inner);
    let _ = child.wait();
    dumped?;
    check_stream(&backup.manifest, path, size, &hex::encode(sha.finalize()))?;
    let stderr = errs.join().unwrap_or_default();
    let errors = String::from_utf8_lossy(&stderr)
        .lines()
        .filter(|l| l.contains("ERROR"))
        .count();
    Ok(errors)
}

struct HashingWriter<W: Write> {
    inner: W,
    sha: Sha256,
    size: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Restores (or, with `dest = None`, only reads and checks) the storage tree.
pub fn restore_storage(
    reader: &VaultReader,
    backup: &Backup,
    dest: Option<&Path>,
    clean: bool,
    sample_percent: f64,
) -> Result<StorageReport, RestoreError> {
    let mut report = StorageReport::default();
    if backup.manifest.storage.is_none() {
        return Ok(report);
    }
    let sums_text = reader
        .read(&backup.snapshot, manifest::STORAGE_SUMS_PATH, 256 << 20)
        .map_err(|e| RestoreError::Missing(format!("{} ({e})", manifest::STORAGE_SUMS_PATH)))?;
    let sums = manifest::parse_storage_sums(&String::from_utf8_lossy(&sums_text))?;
    let files = reader.walk(&backup.snapshot, manifest::STORAGE_DIR)?;
    let mut in_snapshot: BTreeMap<String, ()> = BTreeMap::new();
    let prefix = format!("{}/", manifest::STORAGE_DIR);
    for (i, (path, node)) in files.iter().enumerate() {
        let rel = path.strip_prefix(&prefix).unwrap_or(path).to_string();
        in_snapshot.insert(rel.clone(), ());
        if dest.is_none() && !sampled(i, sample_percent) {
            continue;
        }
        let mut w = HashingWriter {
            inner: open_dest(dest, &rel, clean)?,
            sha: Sha256::new(),
            size: 0,
        };
        reader.dump_node(node, &mut w)?;
        w.flush().map_err(|source| RestoreError::Io {
            path: rel.clone(),
            source,
        })?;
        let hash = hex::encode(w.sha.finalize_reset());
        report.files += 1;
        report.bytes += w.size;
        match sums.get(&rel) {
            Some(h) if *h == hash && w.size == node.meta.size => {}
            Some(_) => report.mismatches.push(rel),
            None => report
                .mismatches
                .push(format!("{rel} (not in storage.sha256)")),
        }
    }
    for name in sums.keys() {
        if !in_snapshot.contains_key(name) {
            report.missing.push(name.clone());
        }
    }
    Ok(report)
}

fn sampled(index: usize, percent: f64) -> bool {
    if percent >= 100.0 {
        return true;
    }
    // Deterministic spread: file i is checked when it crosses a multiple of 100/percent.
    let step = percent / 100.0;
    ((index + 1) as f64 * step).floor() > (index as f64 * step).floor()
}

fn open_dest(dest: Option<&Path>, rel: &str, clean: bool) -> Result<Box<dyn Write>, RestoreError> {
    let Some(dir) = dest else {
        return Ok(Box::new(io::sink()));
    };
    let path = dir.join(rel);
    if path.exists() && !clean {
        return Err(RestoreError::StorageExists {
            dir: dir.to_owned(),
            path: rel.to_string(),
        });
    }
    let io_err = |source| RestoreError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_err)?;
    }
    let f = std::fs::File::create(&path).map_err(io_err)?;
    Ok(Box::new(io::BufWriter::new(f)))
}

/// Runs a restore of everything `plan` asks for.
pub fn run(
    vault: &Vault,
    pg: &Pg,
    spec: &str,
    plan: &RestorePlan,
) -> Result<RestoreOutcome, RestoreError> {
    let clock = Instant::now();
    let reader = vault.reader()?;
    let backup = find_backup(&reader, spec, plan.site.as_deref())?;
    let config = match &plan.config_out {
        Some(out) => Some(restore_config(&reader, &backup, out, plan.clean)?),
        None => None,
    };
    let mut globals_errors = None;
    if let Some(admin) = &plan.globals {
        globals_errors = Some(restore_globals(pg, &reader, &backup, admin)?);
    }
    let mut databases = Vec::new();
    let mut revocations = None;
    if let Some(t) = &plan.main {
        databases.push(restore_database(pg, &reader, &backup, "main", t, plan)?);
        if plan.reapply_revocations {
            revocations = Some(reapply_revocations(pg, &reader, t)?);
        }
    }
    if let Some(t) = &plan.datastore {
        databases.push(restore_database(
            pg,
            &reader,
            &backup,
            "datastore",
            t,
            plan,
        )?);
    }
    let storage = match &plan.storage {
        Some(dir) => Some(restore_storage(
            &reader,
            &backup,
            Some(dir),
            plan.clean,
            100.0,
        )?),
        None => None,
    };
    Ok(RestoreOutcome {
        snapshot: backup.snapshot.id.to_hex().to_string(),
        databases,
        globals_errors,
        storage,
        config,
        revocations,
        seconds: clock.elapsed().as_secs_f64(),
    })
}

/// Largest ckan.ini read back from a backup.
const MAX_CONFIG_BYTES: usize = 16 << 20;
/// Token ids per DELETE statement (they travel in psql's argv; ids are not secret).
const REVOCATION_BATCH: usize = 500;

/// Writes the backup's ckan.ini (`config/ckan.ini`, or `config/ckan.ini.age` unsealed
/// with the escrow officer's identity) to `out.path`, created 0600. It is checked
/// against the manifest's size and SHA-256 before anything is written.
pub fn restore_config(
    reader: &VaultReader,
    backup: &Backup,
    out: &ConfigOut,
    clean: bool,
) -> Result<ConfigReport, RestoreError> {
    let record = backup.manifest.config.as_ref().ok_or_else(|| {
        RestoreError::Missing("ckan.ini (it was not backed up: [ckan] backup-config)".into())
    })?;
    let identities = match (&out.identity, record.sealed) {
        (Some(path), true) => {
            Some(crate::escrow::Identities::from_file(path).map_err(RestoreError::Unseal)?)
        }
        (None, true) => return Err(RestoreError::ConfigSealed),
        (_, false) => None,
    };
    if !clean && out.path.symlink_metadata().is_ok() {
        return Err(RestoreError::ConfigExists(out.path.clone()));
    }
    let stored =
        zeroize::Zeroizing::new(reader.read(&backup.snapshot, &record.path, MAX_CONFIG_BYTES)?);
    check_stream(
        &backup.manifest,
        &record.path,
        stored.len() as u64,
        &hex::encode(Sha256::digest(stored.as_slice())),
    )?;
    let plain = match &identities {
        Some(ids) => crate::escrow::unseal(ids, &stored).map_err(RestoreError::Unseal)?,
        None => stored,
    };
    let io_err = |source| RestoreError::Io {
        path: out.path.display().to_string(),
        source,
    };
    let mut f = crate::secret::create_private_file(&out.path).map_err(|e| match e {
        crate::secret::SecretError::Create { source, .. } => io_err(source),
        other => io_err(io::Error::other(other.to_string())),
    })?;
    f.write_all(&plain).map_err(io_err)?;
    f.sync_all().map_err(io_err)?;
    Ok(ConfigReport {
        path: out.path.display().to_string(),
        sealed: record.sealed,
        bytes: plain.len() as u64,
    })
}

/// Deletes from the restored database the `api_token` rows of every token revocation
/// recorded in the vault (`token revoke`), so tokens revoked after the backup was taken
/// stay revoked. Reads the records from the snapshots' descriptions.
pub fn reapply_revocations(
    pg: &Pg,
    reader: &VaultReader,
    target: &Target,
) -> Result<RevocationReport, RestoreError> {
    let mut report = RevocationReport::default();
    let mut ids = std::collections::BTreeSet::new();
    for snap in reader.snapshots(Kind::Revocation)? {
        let text = snap.description.as_deref().unwrap_or_default();
        match crate::ledger::Revocation::parse(text) {
            Ok(r) => {
                ids.insert(r.token_id);
            }
            Err(e) => {
                log::warn!("revocation record {} is unreadable: {e}", snap.id);
                report.unreadable.push(format!("{}: {e}", snap.id));
            }
        }
    }
    report.recorded = ids.len();
    if ids.is_empty() {
        return Ok(report);
    }
    let has_table = pg.query(target, "SELECT to_regclass('api_token') IS NOT NULL")?;
    if has_table.trim() != "t" {
        report.skipped =
            Some("the restored database has no api_token table (not a CKAN 2.10+ database)".into());
        return Ok(report);
    }
    let ids: Vec<String> = ids.into_iter().collect();
    for batch in ids.chunks(REVOCATION_BATCH) {
        let list: Vec<String> = batch.iter().map(|id| crate::pg::literal(id)).collect();
        let out = pg.query(
            target,
            &format!(
                "WITH d AS (DELETE FROM api_token WHERE id IN ({}) RETURNING 1) SELECT count(*) FROM d",
                list.join(", ")
            ),
        )?;
        report.re_revoked += out.trim().parse::<u64>().unwrap_or(0);
    }
    if report.re_revoked > 0 {
        log::info!(
            "re-revoked {} token(s) in the restored database",
            report.re_revoked
        );
    }
    Ok(report)
}

/// Streams one file of a backup to `w`, checking it against the manifest when listed.
pub fn dump_file(
    vault: &Vault,
    spec: &str,
    site: Option<&str>,
    path: &str,
    w: &mut impl Write,
) -> Result<u64, RestoreError> {
    let reader = vault.reader()?;
    let backup = find_backup(&reader, spec, site)?;
    let path = path.trim_start_matches('/');
    let mut hw = HashingWriter {
        inner: w,
        sha: Sha256::new(),
        size: 0,
    };
    reader.dump(&backup.snapshot, path, &mut hw)?;
    let (size, hash) = (hw.size, hex::encode(hw.sha.finalize()));
    if backup.manifest.streams.contains_key(path) {
        check_stream(&backup.manifest, path, size, &hash)?;
    }
    Ok(size)
}
