//! The vault: a deduplicated, encrypted, restic-format repository written with `rustic_core`.
//!
//! Everything ckan-vault keeps lives in one vault as snapshots, told apart by tags:
//! `ckan-vault` plus one kind tag (`backup`, `drill`, `escrow`, `revocation`, …). Debian's
//! `restic` can list and dump all of them.

mod crypt;
pub mod keyfile;
pub mod lock;
pub mod maintenance;
pub mod source;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rustic_backend::BackendOptions;
use rustic_core::repofile::{MasterKey, Node, SnapshotFile};
use rustic_core::{
    BackupOptions, ConfigOptions, Credentials, FileType, Id, IndexedFullStatus, KeyOptions,
    NoProgressBars, OpenStatus, ProgressBars, Repository, RepositoryOptions, RusticError,
    SnapshotOptions,
};
use secrecy::{ExposeSecret, SecretString};

pub use lock::hostname;
pub use rustic_core::repofile::SnapshotFile as Snapshot;
pub use source::{BoxRead, Entries, EntryMeta, Opener};

/// The tag every snapshot ckan-vault writes carries.
pub const TAG: &str = "ckan-vault";

/// What a snapshot is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Backup,
    Drill,
    Escrow,
    Revocation,
    Intent,
}

impl Kind {
    pub fn tag(self) -> &'static str {
        match self {
            Kind::Backup => "backup",
            Kind::Drill => "drill",
            Kind::Escrow => "escrow",
            Kind::Revocation => "revocation",
            Kind::Intent => "token-intent",
        }
    }

    /// The kind of a snapshot, from its tags (None: not written by ckan-vault).
    pub fn of(snap: &SnapshotFile) -> Option<Kind> {
        let tags: Vec<String> = snap.tags.iter().cloned().collect();
        if !tags.iter().any(|t| t == TAG) {
            return None;
        }
        [
            Kind::Backup,
            Kind::Drill,
            Kind::Escrow,
            Kind::Revocation,
            Kind::Intent,
        ]
        .into_iter()
        .find(|k| tags.iter().any(|t| t == k.tag()))
    }
}

/// Where the vault is and how to open it.
#[derive(Clone)]
pub struct VaultConfig {
    /// A local path, `rest:http://host:port/path`, or `opendal:s3` (rustic's spellings).
    pub repository: String,
    /// Backend options (for S3: bucket, root, endpoint, region, access_key_id, …).
    pub options: BTreeMap<String, String>,
    pub password: SecretString,
    /// Cache directory for remote vaults; None: no cache.
    pub cache_dir: Option<PathBuf>,
}

impl VaultConfig {
    /// The repository for messages and logs: a password in a `rest:` URL is replaced by `***`.
    pub fn shown(&self) -> String {
        redact_repository(&self.repository)
    }
}

/// `rest:http://user:secret@host/` → `rest:http://user:***@host/`.
pub fn redact_repository(repository: &str) -> String {
    let Some(scheme_end) = repository.find("://") else {
        return repository.to_string();
    };
    let rest = &repository[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!(
                "{}{user}:***@{host}{}",
                &repository[..scheme_end + 3],
                &rest[authority_end..]
            )
        }
        _ => repository.to_string(),
    }
}

impl std::fmt::Debug for VaultConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultConfig")
            .field("repository", &self.shown())
            .field("options", &self.options.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Vault errors. Messages name the vault and what to do, never a password.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error(
        "wrong password for vault {0}; check [repository] password-file / password-command / $CKAN_VAULT_PASSWORD"
    )]
    WrongPassword(String),
    #[error("no vault at {0}; create it with `ckan-vault init`")]
    NotFound(String),
    #[error("a vault already exists at {0}; nothing was changed")]
    AlreadyExists(String),
    #[error("vault {repo}: {message}")]
    Backend { repo: String, message: String },
    #[error("no {kind} snapshot matches `{spec}`; list them with `ckan-vault snapshots`")]
    NoSnapshot { kind: &'static str, spec: String },
    #[error("snapshot {snapshot} has no file {path}")]
    NoFile { snapshot: String, path: String },
    #[error("writing snapshot content failed: {0}")]
    Write(String),
    #[error(transparent)]
    Order(#[from] source::OrderError),
}

impl crate::error::Categorized for VaultError {
    fn category(&self) -> crate::error::Category {
        use crate::error::Category;
        match self {
            VaultError::WrongPassword(_)
            | VaultError::NotFound(_)
            | VaultError::AlreadyExists(_)
            | VaultError::NoSnapshot { .. } => Category::Usage,
            _ => Category::Failure,
        }
    }
}

fn rustic_error(repo: &str, e: Box<RusticError>) -> VaultError {
    rustic_error_ref(repo, &e)
}

fn rustic_error_ref(repo: &str, e: &RusticError) -> VaultError {
    if e.is_incorrect_password() {
        return VaultError::WrongPassword(repo.to_string());
    }
    let message = e.display_log();
    let first = message
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("unknown error")
        .to_string();
    log::debug!("rustic_core error: {message}");
    VaultError::Backend {
        repo: repo.to_string(),
        message: first,
    }
}

/// What to put on a new snapshot.
#[derive(Debug, Clone)]
pub struct SnapshotMeta {
    pub kind: Kind,
    /// The site (from `ckan.site_url`); restic shows it as the host-independent label.
    pub label: String,
    pub extra_tags: Vec<String>,
    pub description: Option<String>,
    pub host: Option<String>,
}

impl SnapshotMeta {
    pub fn new(kind: Kind, label: impl Into<String>) -> Self {
        Self {
            kind,
            label: label.into(),
            extra_tags: Vec::new(),
            description: None,
            host: None,
        }
    }
}

/// Whether a repository string names a local directory (rustic's other backends have a
/// `kind:` prefix).
fn is_local(repository: &str) -> bool {
    !["rest:", "opendal:", "rclone:", "s3:", "sftp:"]
        .iter()
        .any(|p| repository.starts_with(p))
}

/// Chunking for new vaults: 64 KiB average content-defined chunks instead of restic's 1 MiB.
/// A dump changes in many small scattered places from day to day (an UPDATE moves a row to
/// the end of its table), and each changed place costs one to two chunks of new data. Measured
/// on the test site after 1 % churn, day 2 added 4.4–6.7 % of day 1 at 64 KiB, 5.9–11.3 % at
/// 128 KiB and about 10 % at 256 KiB. The price is a larger index (about 40 bytes per chunk).
/// restic reads such vaults unchanged (chunk and pack sizes only matter when writing).
fn chunking() -> ConfigOptions {
    let mut c = ConfigOptions::default();
    c.set_chunk_size = Some(bytesize::ByteSize::kib(64));
    c.set_chunk_min_size = Some(bytesize::ByteSize::kib(16));
    c.set_chunk_max_size = Some(bytesize::ByteSize::mib(2));
    // restic's 16 MiB packs rather than rustic's 32 MiB (fewer bytes in flight per pack).
    c.set_datapack_size = Some(bytesize::ByteSize::mib(16));
    // zstd level 1 instead of the default 3: on the benchmark's 1.6 GB CKAN dump it used 8 %
    // less CPU and gave a 6 % smaller vault (204 against 217 MiB; 64 KiB chunks of JSON-heavy
    // COPY text), in five alternating pairs of runs. Negative (faster) levels doubled the size.
    c.set_compression = Some(1);
    c
}

/// An open vault.
///
/// rustic_core's `Repository` changes type as it loads indexes and cannot be cloned, so the
/// open repository sits in a slot: an operation takes it, and gives it back afterwards
/// (a [`VaultReader`] gives it back when dropped).
pub struct Vault {
    name: String,
    /// A REST or object-store vault: every read is a network request.
    remote: bool,
    repo: Mutex<Option<Repository<OpenStatus>>>,
}

impl Vault {
    fn backends(cfg: &VaultConfig) -> Result<rustic_core::RepositoryBackends, VaultError> {
        let mut be = BackendOptions::default().repository(cfg.repository.clone());
        be.options = cfg.options.clone();
        be.to_backends().map_err(|e| rustic_error(&cfg.shown(), e))
    }

    fn repository(cfg: &VaultConfig, pb: impl ProgressBars) -> Result<Repository<()>, VaultError> {
        let name = cfg.shown();
        let backends = Self::backends(cfg)?;
        let mut opts = RepositoryOptions::default();
        match &cfg.cache_dir {
            Some(dir) => opts = opts.cache_dir(dir.clone()),
            None => opts = opts.no_cache(true),
        }
        Repository::new_with_progress(&opts, &backends, pb).map_err(|e| rustic_error(&name, e))
    }

    /// Creates a new vault; refuses if one exists. A local vault's directory is made 0700
    /// so that other users cannot copy the key files and guess the password offline.
    pub fn init(cfg: &VaultConfig) -> Result<Self, VaultError> {
        if is_local(&cfg.repository) {
            let dir = Path::new(&cfg.repository);
            let io = |e: std::io::Error| VaultError::Backend {
                repo: cfg.shown(),
                message: format!("cannot create the directory: {e}"),
            };
            std::fs::create_dir_all(dir).map_err(io)?;
            std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .map_err(io)?;
        }
        let repo = Self::repository(cfg, NoProgressBars)?;
        if repo
            .config_id()
            .map_err(|e| rustic_error(&cfg.shown(), e))?
            .is_some()
        {
            return Err(VaultError::AlreadyExists(cfg.shown()));
        }
        // The key file first, as restic does: a vault with a config but no key could never
        // be opened. Key files left by an init that died before its config are removed.
        let err = |e| rustic_error(&cfg.shown(), e);
        let be = Self::backends(cfg)?.repository();
        be.create().map_err(err)?;
        for (stale, _) in be.list_with_size(FileType::Key).map_err(err)? {
            log::warn!("removing key file {stale} of an earlier init that did not finish");
            be.remove(FileType::Key, &stale, false).map_err(err)?;
        }
        let masterkey = MasterKey::new();
        let (id, json) = keyfile::new_key_file(
            &masterkey,
            cfg.password.expose_secret(),
            hostname(),
            Some(lock::username()),
        );
        let id: Id = id.parse().map_err(err)?;
        be.write_bytes(FileType::Key, &id, false, json.into())
            .map_err(err)?;
        let repo = repo
            .init(
                &Credentials::Masterkey(masterkey),
                &KeyOptions::default(),
                &chunking(),
            )
            .map_err(err)?;
        Ok(Self::from_repo(cfg, repo))
    }

    fn from_repo(cfg: &VaultConfig, repo: Repository<OpenStatus>) -> Self {
        Self {
            name: cfg.shown(),
            remote: !is_local(&cfg.repository),
            repo: Mutex::new(Some(repo)),
        }
    }

    fn take(&self) -> Result<Repository<OpenStatus>, VaultError> {
        self.repo.lock().expect("vault lock").take().ok_or_else(|| {
            VaultError::Write("the vault is in use by a reader of this process".into())
        })
    }

    fn give_back(&self, repo: Repository<OpenStatus>) {
        *self.repo.lock().expect("vault lock") = Some(repo);
    }

    /// Runs `f` with the open repository.
    pub fn with_repo<T>(
        &self,
        f: impl FnOnce(&Repository<OpenStatus>) -> Result<T, Box<RusticError>>,
    ) -> Result<T, VaultError> {
        let repo = self.take()?;
        let r = f(&repo);
        self.give_back(repo);
        r.map_err(|e| self.err(e))
    }

    /// Opens an existing vault.
    pub fn open(cfg: &VaultConfig) -> Result<Self, VaultError> {
        Self::open_with_progress(cfg, NoProgressBars)
    }

    /// Opens an existing vault, reporting the progress of long operations to `pb`.
    pub fn open_with_progress(
        cfg: &VaultConfig,
        pb: impl ProgressBars,
    ) -> Result<Self, VaultError> {
        let repo = Self::repository(cfg, pb)?;
        if repo
            .config_id()
            .map_err(|e| rustic_error(&cfg.shown(), e))?
            .is_none()
        {
            return Err(VaultError::NotFound(cfg.shown()));
        }
        let creds = Credentials::password(cfg.password.expose_secret());
        let repo = repo
            .open(&creds)
            .map_err(|e| rustic_error(&cfg.shown(), e))?;
        Ok(Self::from_repo(cfg, repo))
    }

    /// The repository string this vault was opened with.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn err(&self, e: Box<RusticError>) -> VaultError {
        rustic_error(&self.name, e)
    }

    /// Archives `entries` as one new snapshot and returns it (already saved).
    ///
    /// The caller decides afterwards whether the snapshot may stand (see the backup
    /// workflow); an entry whose reader failed is missing from it.
    pub fn archive(
        &self,
        entries: Entries,
        meta: &SnapshotMeta,
    ) -> Result<SnapshotFile, VaultError> {
        let mut tags = vec![TAG.to_string(), meta.kind.tag().to_string()];
        tags.extend(meta.extra_tags.iter().cloned());
        let mut sopts = SnapshotOptions::default().label(meta.label.clone());
        if let Some(h) = &meta.host {
            sopts = sopts.host(h.clone());
        }
        if let Some(d) = &meta.description {
            sopts = sopts.description(d.clone());
        }
        let mut sopts = sopts;
        for t in &tags {
            sopts = sopts.add_tags(t).map_err(|e| self.err(e))?;
        }
        let snap = sopts.to_snapshot().map_err(|e| self.err(e))?;
        let mut bopts = BackupOptions::default();
        // No parent: every entry is read, so every reader reports (streams never match a
        // parent anyway; storage files are deduplicated by content).
        bopts.parent_opts.force = true;
        let repo = self.take()?;
        let repo = match repo.to_indexed_ids() {
            Ok(r) => r,
            Err(e) => return Err(self.err(e)),
        };
        let src = source::Source::new(entries);
        let result = repo.archive(&bopts, &src, snap, &[PathBuf::from(meta.kind.tag())]);
        self.give_back(repo.drop_index());
        result.map_err(|e| self.err(e))
    }

    /// Saves a small snapshot of in-memory files (reports, escrow copies, records).
    pub fn save_files(
        &self,
        meta: &SnapshotMeta,
        files: Vec<(String, Vec<u8>)>,
    ) -> Result<SnapshotFile, VaultError> {
        let mut files = files;
        files.sort_by(|a, b| Path::new(&a.0).cmp(Path::new(&b.0)));
        let mut entries = Entries::new();
        let count = files.len();
        for (path, bytes) in files {
            entries.push_bytes(path, bytes)?;
        }
        let snap = self.archive(entries, meta)?;
        let processed = snap.summary.as_ref().map_or(0, |s| s.total_files_processed);
        if processed as usize != count {
            let _ = self.delete(std::slice::from_ref(&snap));
            return Err(VaultError::Write(format!(
                "only {processed} of {count} files were stored"
            )));
        }
        Ok(snap)
    }

    /// All snapshots of one kind, oldest first.
    pub fn snapshots(&self, kind: Kind) -> Result<Vec<SnapshotFile>, VaultError> {
        let mut v = self.with_repo(|r| r.get_matching_snapshots(|s| Kind::of(s) == Some(kind)))?;
        v.sort();
        Ok(v)
    }

    /// All snapshots, oldest first.
    pub fn all_snapshots(&self) -> Result<Vec<SnapshotFile>, VaultError> {
        let mut v = self.with_repo(|r| r.get_all_snapshots())?;
        v.sort();
        Ok(v)
    }

    /// Picks a snapshot by `latest`, `latest~N` or an id (prefix) among `candidates`
    /// (oldest first).
    pub fn pick(
        candidates: &[SnapshotFile],
        spec: &str,
        kind: Kind,
    ) -> Result<SnapshotFile, VaultError> {
        let none = || VaultError::NoSnapshot {
            kind: kind.tag(),
            spec: spec.to_string(),
        };
        if spec == "latest" {
            return candidates.last().cloned().ok_or_else(none);
        }
        if let Some(n) = spec.strip_prefix("latest~") {
            let n: usize = n.parse().map_err(|_| none())?;
            return candidates
                .len()
                .checked_sub(n + 1)
                .map(|i| candidates[i].clone())
                .ok_or_else(none);
        }
        let spec_l = spec.to_lowercase();
        if spec_l.is_empty() {
            // An empty prefix would match every snapshot.
            return Err(none());
        }
        let matches: Vec<&SnapshotFile> = candidates
            .iter()
            .filter(|s| s.id.to_hex().starts_with(&spec_l))
            .collect();
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            _ => Err(none()),
        }
    }

    /// A reader's view of the vault with the full index loaded. While it lives, other
    /// operations of this `Vault` wait for it (they return an error).
    pub fn reader(&self) -> Result<VaultReader<'_>, VaultError> {
        let repo = self.take()?;
        match repo.to_indexed() {
            Ok(repo) => Ok(VaultReader {
                vault: self,
                repo: Some(repo),
            }),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Deletes snapshots (their data goes with the next prune).
    pub fn delete(&self, snaps: &[SnapshotFile]) -> Result<(), VaultError> {
        let ids: Vec<_> = snaps.iter().map(|s| s.id).collect();
        self.with_repo(|r| r.delete_snapshots(&ids))
    }
}

/// Reads files out of snapshots.
pub struct VaultReader<'a> {
    vault: &'a Vault,
    repo: Option<Repository<IndexedFullStatus>>,
}

impl Drop for VaultReader<'_> {
    fn drop(&mut self) {
        if let Some(repo) = self.repo.take() {
            self.vault.give_back(repo.drop_index());
        }
    }
}

impl VaultReader<'_> {
    fn err(&self, e: Box<RusticError>) -> VaultError {
        rustic_error(&self.vault.name, e)
    }

    fn repo(&self) -> &Repository<IndexedFullStatus> {
        self.repo.as_ref().expect("present until drop")
    }

    /// Snapshots of one kind, oldest first (the vault itself is lent to this reader).
    pub fn snapshots(&self, kind: Kind) -> Result<Vec<SnapshotFile>, VaultError> {
        let mut v = self
            .repo()
            .get_matching_snapshots(|s| Kind::of(s) == Some(kind))
            .map_err(|e| self.err(e))?;
        v.sort();
        Ok(v)
    }

    /// The node at `path` in `snap`, if there is one. A tree that cannot be read (a damaged
    /// vault) is an error, not an absent file.
    pub fn node(&self, snap: &SnapshotFile, path: &str) -> Result<Option<Node>, VaultError> {
        let mut node = None;
        let mut subtree = Some(snap.tree);
        for name in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
            let Some(id) = subtree else {
                return Ok(None);
            };
            let tree = self.repo().get_tree(&id).map_err(|e| self.err(e))?;
            let Some(found) = tree
                .nodes
                .into_iter()
                .find(|n| n.name() == std::ffi::OsStr::new(name))
            else {
                return Ok(None);
            };
            subtree = found.subtree;
            node = Some(found);
        }
        Ok(node)
    }

    /// Streams a file of a snapshot into `w`.
    pub fn dump(
        &self,
        snap: &SnapshotFile,
        path: &str,
        w: &mut impl Write,
    ) -> Result<(), VaultError> {
        let node = self
            .node(snap, path)?
            .filter(Node::is_file)
            .ok_or_else(|| VaultError::NoFile {
                snapshot: snap.id.to_hex().to_string(),
                path: path.to_string(),
            })?;
        self.dump_node(&node, w)
    }

    /// Streams a file node into `w`.
    pub fn dump_node(&self, node: &Node, w: &mut impl Write) -> Result<(), VaultError> {
        match node.content.as_deref() {
            Some(blobs) if self.vault.remote && blobs.len() > 1 => self.dump_prefetching(blobs, w),
            _ => self.repo().dump(node, w).map_err(|e| self.err(e)),
        }
    }

    /// rustic_core's dump reads one blob per request, as many at a time as there are cores:
    /// from S3 that measured 375 s for a 1.6 GB dump of 64 KiB chunks on 2 cores (restic, with
    /// 1 MiB chunks, 76 s). Here `REMOTE_READS` requests are in flight, and the blobs are
    /// written in order from a bounded window, so memory stays a few megabytes.
    fn dump_prefetching(
        &self,
        blobs: &[rustic_core::DataId],
        w: &mut impl Write,
    ) -> Result<(), VaultError> {
        use std::collections::BTreeMap;
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::mpsc::sync_channel;

        let repo = self.repo();
        let next = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        // Each fetcher may run ahead of the writer by at most the window.
        let written = std::sync::Mutex::new(0usize);
        let moved = std::sync::Condvar::new();
        let (tx, rx) = sync_channel(REMOTE_READS);
        std::thread::scope(|s| -> Result<(), VaultError> {
            for _ in 0..REMOTE_READS {
                let tx = tx.clone();
                let (next, stop, written, moved) = (&next, &stop, &written, &moved);
                s.spawn(move || {
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= blobs.len() || stop.load(Ordering::SeqCst) {
                            break;
                        }
                        {
                            let mut done = written.lock().expect("window");
                            while i >= *done + REMOTE_WINDOW && !stop.load(Ordering::SeqCst) {
                                done = moved.wait(done).expect("window");
                            }
                        }
                        let blob = repo.get_blob_cached(
                            &rustic_core::BlobId::from(*blobs[i]),
                            rustic_core::repofile::BlobType::Data,
                        );
                        if tx.send((i, blob)).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(tx);
            let mut pending = BTreeMap::new();
            let mut want = 0usize;
            let result = (|| {
                for (i, blob) in rx.iter() {
                    pending.insert(i, blob);
                    while let Some(blob) = pending.remove(&want) {
                        let data = blob.map_err(|e| self.err(e))?;
                        w.write_all(&data)
                            .map_err(|e| VaultError::Write(e.to_string()))?;
                        want += 1;
                        *written.lock().expect("window") = want;
                        moved.notify_all();
                    }
                }
                if want < blobs.len() {
                    return Err(VaultError::Write(format!(
                        "{} of {} blobs arrived",
                        want,
                        blobs.len()
                    )));
                }
                Ok(())
            })();
            stop.store(true, Ordering::SeqCst);
            moved.notify_all();
            // Let blocked fetchers finish their sends.
            for _ in rx.iter() {}
            result
        })
    }

    /// Reads a small file of a snapshot into memory (at most `limit` bytes).
    pub fn read(
        &self,
        snap: &SnapshotFile,
        path: &str,
        limit: usize,
    ) -> Result<Vec<u8>, VaultError> {
        let mut w = LimitedVec {
            buf: Vec::new(),
            limit,
        };
        self.dump(snap, path, &mut w)?;
        Ok(w.buf)
    }

    /// Files (not directories) below `dir` in a snapshot, with their nodes, sorted by path.
    pub fn walk(&self, snap: &SnapshotFile, dir: &str) -> Result<Vec<(String, Node)>, VaultError> {
        let mut out = Vec::new();
        let Some(node) = self.node(snap, dir)? else {
            return Ok(out);
        };
        let Some(tree) = node.subtree else {
            return Ok(out);
        };
        self.walk_tree(tree, dir.to_string(), &mut out)?;
        Ok(out)
    }

    fn walk_tree(
        &self,
        id: rustic_core::TreeId,
        prefix: String,
        out: &mut Vec<(String, Node)>,
    ) -> Result<(), VaultError> {
        let tree = self.repo().get_tree(&id).map_err(|e| self.err(e))?;
        for node in tree.nodes {
            let path = format!("{prefix}/{}", node.name().to_string_lossy());
            if let Some(sub) = node.subtree {
                self.walk_tree(sub, path, out)?;
            } else if node.is_file() {
                out.push((path, node));
            }
        }
        Ok(())
    }
}

/// Blob reads in flight when dumping from a remote vault.
const REMOTE_READS: usize = 16;
/// How far ahead of the writer those reads may run, in blobs (64 KiB on average).
const REMOTE_WINDOW: usize = 32;

struct LimitedVec {
    buf: Vec<u8>,
    limit: usize,
}

impl Write for LimitedVec {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + data.len() > self.limit {
            return Err(std::io::Error::other(format!(
                "file is larger than {} bytes",
                self.limit
            )));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod redact_tests {
    use super::redact_repository;

    #[test]
    fn repository_passwords_are_hidden() {
        assert_eq!(
            redact_repository("rest:http://ckan:s3cret@127.0.0.1:8000/ckan"),
            "rest:http://ckan:***@127.0.0.1:8000/ckan"
        );
        assert_eq!(redact_repository("/var/backups/v"), "/var/backups/v");
        assert_eq!(redact_repository("rest:http://h:1/x"), "rest:http://h:1/x");
    }
}
