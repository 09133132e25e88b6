//! The run lock: one ckan-vault run per vault at a time, across processes and hosts.
//!
//! rustic_core writes lock-free and never honours restic's locks, so ckan-vault keeps its own:
//!
//! - a **lock file** under the state directory (`$CKAN_VAULT_STATE_DIR`, systemd's
//!   `$STATE_DIRECTORY`, `/var/lib/ckan-vault` as root, else `~/.local/state/ckan-vault`), one
//!   per vault, created with `O_EXCL`. It names its owner (pid, the pid's start time, host,
//!   user, since when, the command). The owner may be another process than the one that took
//!   the lock: `ckan-vault hook pre-backup` takes it for the backup framework that ran the hook
//!   (its parent, rustic or a script), and `hook finally` releases it. A lock whose owner
//!   process is gone (or whose pid now belongs to a newer process) is stale and is taken over.
//! - a **lock object in the vault**, in restic's own format (`locks/<id>`, encrypted JSON with
//!   time, exclusive, hostname, username, pid). Other hosts sharing the vault see it, and so
//!   does restic: `restic prune` refuses to run while it is there. As in restic, a vault lock
//!   is stale after 30 minutes without a refresh, or at once when its process is gone on this
//!   host; long runs of ckan-vault itself refresh it.
//!
//! Backups take a shared vault lock (several hosts may back up into one vault at once), a
//! prune takes an exclusive one; on one host the lock file admits one run at a time.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::crypt::Crypt;
use super::{Vault, VaultConfig, VaultError};
use crate::error::{Categorized, Category};

/// restic treats a lock older than this as stale (and so do we, for vault lock objects).
pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);
/// How often a long run rewrites its vault lock object.
pub const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);

/// Lock errors: who holds the lock and what to do.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another run holds the lock since {since} (pid {pid}, host {host}: {command}); wait for it to finish (if pid {pid} is gone, `ckan-vault hook finally --owner-pid {pid}` or deleting {path} frees it)"
    )]
    Held {
        since: String,
        pid: u32,
        host: String,
        command: String,
        path: String,
    },
    #[error(
        "another run holds the lock since {since} (pid {pid}, host {host}, user {user}; a lock object in the vault{exclusive}); wait for it to finish, it goes stale 30 minutes after its last refresh"
    )]
    HeldInVault {
        since: String,
        pid: u32,
        host: String,
        user: String,
        exclusive: &'static str,
    },
    #[error(
        "cannot use the lock file {path}: {source}; set $CKAN_VAULT_STATE_DIR to a writable directory"
    )]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the lock file {path} is damaged ({detail}); delete it if no ckan-vault run is active")]
    Damaged { path: PathBuf, detail: String },
    #[error(transparent)]
    Vault(#[from] VaultError),
}

impl Categorized for LockError {
    fn category(&self) -> Category {
        match self {
            LockError::Io { .. } | LockError::Damaged { .. } => Category::Usage,
            LockError::Vault(e) => e.category(),
            _ => Category::Failure,
        }
    }
}

/// The process a lock belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub pid: u32,
    /// The process's start time (clock ticks since boot, from /proc), to tell a reused pid.
    pub pid_start: Option<u64>,
    pub host: String,
}

impl Owner {
    /// This process.
    pub fn this_process() -> Self {
        Self::of_pid(std::process::id())
    }

    /// The process that started this one (a backup framework running a hook).
    pub fn parent_process() -> Self {
        // SAFETY: getppid has no preconditions and cannot fail.
        Self::of_pid(unsafe { libc::getppid() } as u32)
    }

    pub fn of_pid(pid: u32) -> Self {
        Self {
            pid,
            pid_start: pid_start(pid),
            host: hostname(),
        }
    }

    /// Whether the owner process still runs (always true for another host's process).
    pub fn alive(&self) -> bool {
        if self.host != hostname() {
            return true;
        }
        if !pid_alive(self.pid) {
            return false;
        }
        match (self.pid_start, pid_start(self.pid)) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
    }
}

fn pid_alive(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid as i32, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Field 22 of /proc/PID/stat (start time in clock ticks after boot).
fn pid_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// This host's name.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The user a run acts as, for lock objects and key files (restic records it too).
pub(crate) fn username() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| {
            // SAFETY: getuid has no preconditions.
            format!("uid {}", unsafe { libc::getuid() })
        })
}

/// Where ckan-vault keeps lock files and run state.
pub fn state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CKAN_VAULT_STATE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("STATE_DIRECTORY").filter(|d| !d.is_empty()) {
        // systemd's StateDirectory= (may list several, separated by ':').
        let s = d.to_string_lossy().into_owned();
        return PathBuf::from(s.split(':').next().unwrap_or(&s));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/ckan-vault");
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("ckan-vault");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/state/ckan-vault"),
        None => std::env::temp_dir().join("ckan-vault-state"),
    }
}

/// A per-vault file in the state directory: `<state>/vaults/<hash of the vault>.<ext>`.
pub fn state_file(state_dir: &Path, repository: &str, ext: &str) -> PathBuf {
    let h = hex::encode(&Sha256::digest(repository.as_bytes())[..8]);
    state_dir.join("vaults").join(format!("{h}.{ext}"))
}

/// What the lock file says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockRecord {
    #[serde(flatten)]
    pub owner: Owner,
    pub user: String,
    pub since: jiff::Timestamp,
    /// What the owner is doing (e.g. `backup`, `rustic backup (hook)`, `forget --prune`).
    pub command: String,
    pub exclusive: bool,
    /// The vault it locks.
    pub vault: String,
    /// The id of the lock object in the vault.
    pub vault_lock: Option<String>,
}

/// restic's lock file (`locks/<id>` in the vault), as JSON before encryption.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ResticLock {
    time: jiff::Timestamp,
    exclusive: bool,
    hostname: String,
    username: String,
    pid: u32,
    #[serde(default)]
    uid: u32,
    #[serde(default)]
    gid: u32,
}

impl ResticLock {
    /// restic's rule: stale after 30 minutes, or at once when its process is gone on this host.
    fn stale(&self, now: jiff::Timestamp) -> bool {
        let age = now.duration_since(self.time);
        if age > jiff::SignedDuration::try_from(STALE_AFTER).unwrap_or_default() {
            return true;
        }
        self.hostname == hostname() && !pid_alive(self.pid)
    }
}

/// Where lock objects live: `locks/` of the vault, reached without rustic_core (whose
/// backends know no lock files).
enum LockStore {
    Local(PathBuf),
    Rest {
        client: reqwest::blocking::Client,
        base: url::Url,
    },
    OpenDal(opendal::blocking::Operator),
}

fn tokio_runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

impl LockStore {
    fn new(cfg: &VaultConfig) -> Result<Self, VaultError> {
        let repo = cfg.repository.as_str();
        let fail = |m: String| VaultError::Backend {
            repo: super::redact_repository(repo),
            message: m,
        };
        if let Some(rest) = repo.strip_prefix("rest:") {
            let mut base = url::Url::parse(rest).map_err(|e| fail(e.to_string()))?;
            if !base.path().ends_with('/') {
                base.set_path(&format!("{}/", base.path()));
            }
            let client = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .map_err(|e| fail(e.to_string()))?;
            return Ok(LockStore::Rest { client, base });
        }
        if let Some(scheme) = repo.strip_prefix("opendal:") {
            let scheme = scheme.split(':').next().unwrap_or(scheme);
            let op = opendal::Operator::via_iter(scheme, cfg.options.clone())
                .map_err(|e| fail(e.to_string()))?;
            let _guard = tokio_runtime().enter();
            let op = opendal::blocking::Operator::new(op).map_err(|e| fail(e.to_string()))?;
            return Ok(LockStore::OpenDal(op));
        }
        if repo.contains(':') && !repo.starts_with('/') && !repo.starts_with("local:") {
            return Err(fail(
                "lock objects are supported on local, rest: and opendal: vaults".into(),
            ));
        }
        Ok(LockStore::Local(
            PathBuf::from(repo.strip_prefix("local:").unwrap_or(repo)).join("locks"),
        ))
    }

    fn rest_url(base: &url::Url, name: &str) -> Result<url::Url, String> {
        base.join(&format!("locks/{name}"))
            .map_err(|e| e.to_string())
    }

    fn write(&self, name: &str, data: Vec<u8>) -> Result<(), String> {
        match self {
            LockStore::Local(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
                let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| e.to_string())?;
                tmp.write_all(&data).map_err(|e| e.to_string())?;
                tmp.persist(dir.join(name))
                    .map_err(|e| e.error.to_string())?;
                Ok(())
            }
            LockStore::Rest { client, base } => {
                let r = client
                    .post(Self::rest_url(base, name)?)
                    .body(data)
                    .send()
                    .map_err(|e| e.to_string())?;
                r.status()
                    .is_success()
                    .then_some(())
                    .ok_or_else(|| format!("writing a lock object: HTTP {}", r.status()))
            }
            LockStore::OpenDal(op) => op
                .write(&format!("locks/{name}"), data)
                .map(|_| ())
                .map_err(|e| e.to_string()),
        }
    }

    fn remove(&self, name: &str) -> Result<(), String> {
        match self {
            LockStore::Local(dir) => match std::fs::remove_file(dir.join(name)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
                _ => Ok(()),
            },
            LockStore::Rest { client, base } => {
                let r = client
                    .delete(Self::rest_url(base, name)?)
                    .send()
                    .map_err(|e| e.to_string())?;
                (r.status().is_success() || r.status() == reqwest::StatusCode::NOT_FOUND)
                    .then_some(())
                    .ok_or_else(|| format!("removing a lock object: HTTP {}", r.status()))
            }
            LockStore::OpenDal(op) => op
                .delete(&format!("locks/{name}"))
                .map_err(|e| e.to_string()),
        }
    }

    fn list(&self) -> Result<Vec<String>, String> {
        let names = match self {
            LockStore::Local(dir) => match std::fs::read_dir(dir) {
                Ok(rd) => rd
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(e.to_string()),
            },
            LockStore::Rest { client, base } => {
                let r = client
                    .get(base.join("locks/").map_err(|e| e.to_string())?)
                    .header("Accept", "application/vnd.x.restic.rest.v2")
                    .send()
                    .map_err(|e| e.to_string())?;
                if r.status() == reqwest::StatusCode::NOT_FOUND {
                    return Ok(Vec::new());
                }
                if !r.status().is_success() {
                    return Err(format!("listing lock objects: HTTP {}", r.status()));
                }
                let v: serde_json::Value = r.json().map_err(|e| e.to_string())?;
                v.as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| {
                                x.get("name")
                                    .and_then(|n| n.as_str())
                                    .or_else(|| x.as_str())
                                    .map(str::to_string)
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            }
            LockStore::OpenDal(op) => match op.list("locks/") {
                Ok(entries) => entries
                    .into_iter()
                    .map(|e| e.name().trim_end_matches('/').to_string())
                    .filter(|n| !n.is_empty() && n != "locks")
                    .collect(),
                Err(e) if e.kind() == opendal::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(e.to_string()),
            },
        };
        Ok(names
            .into_iter()
            .filter(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()))
            .collect())
    }

    fn read(&self, name: &str) -> Result<Vec<u8>, String> {
        match self {
            LockStore::Local(dir) => std::fs::read(dir.join(name)).map_err(|e| e.to_string()),
            LockStore::Rest { client, base } => {
                let r = client
                    .get(Self::rest_url(base, name)?)
                    .send()
                    .map_err(|e| e.to_string())?;
                if !r.status().is_success() {
                    return Err(format!("HTTP {}", r.status()));
                }
                r.bytes().map(|b| b.to_vec()).map_err(|e| e.to_string())
            }
            LockStore::OpenDal(op) => op
                .read(&format!("locks/{name}"))
                .map(|b| b.to_vec())
                .map_err(|e| e.to_string()),
        }
    }
}

struct VaultLock {
    store: LockStore,
    crypt: Crypt,
    repo: String,
}

impl VaultLock {
    fn err(&self, message: String) -> VaultError {
        VaultError::Backend {
            repo: super::redact_repository(&self.repo),
            message,
        }
    }

    fn write(&self, exclusive: bool, owner: &Owner) -> Result<String, VaultError> {
        let lock = ResticLock {
            time: jiff::Timestamp::now(),
            exclusive,
            hostname: owner.host.clone(),
            username: username(),
            pid: owner.pid,
            // SAFETY: getuid/getgid have no preconditions.
            uid: unsafe { libc::getuid() },
            gid: unsafe { libc::getgid() },
        };
        let data = self
            .crypt
            .encrypt(&serde_json::to_vec(&lock).expect("serializable"));
        let name = hex::encode(Sha256::digest(&data));
        self.store.write(&name, data).map_err(|e| self.err(e))?;
        Ok(name)
    }

    fn remove(&self, name: &str) -> Result<(), VaultError> {
        self.store.remove(name).map_err(|e| self.err(e))
    }

    /// The first live lock object, other than `ours`, that conflicts with a lock of this kind.
    fn conflict(&self, exclusive: bool, ours: &str) -> Result<Option<ResticLock>, VaultError> {
        let now = jiff::Timestamp::now();
        for name in self.store.list().map_err(|e| self.err(e))? {
            if name == ours {
                continue;
            }
            let Ok(data) = self.store.read(&name) else {
                continue; // removed meanwhile
            };
            let Some(lock) = self
                .crypt
                .decrypt(&data)
                .and_then(|p| serde_json::from_slice::<ResticLock>(&p).ok())
            else {
                log::warn!("ignoring unreadable lock object locks/{name}");
                continue;
            };
            if lock.stale(now) {
                log::debug!("ignoring stale lock object locks/{name}");
                continue;
            }
            if exclusive || lock.exclusive {
                return Ok(Some(lock));
            }
        }
        Ok(None)
    }
}

/// What to lock, for whom.
#[derive(Debug, Clone)]
pub struct LockRequest {
    pub owner: Owner,
    pub command: String,
    /// Exclusive in the vault (prune); shared otherwise (backups).
    pub exclusive: bool,
    pub state_dir: PathBuf,
}

/// A held run lock. Released when dropped, unless [`RunLock::persist`] hands it to its owner.
pub struct RunLock {
    path: PathBuf,
    record: LockRecord,
    /// Held already by this owner (or our parent): this handle releases nothing.
    reentrant: bool,
    vault: Option<Arc<Mutex<VaultLockState>>>,
    refresher: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
    done: bool,
}

struct VaultLockState {
    lock: VaultLock,
    id: Option<String>,
}

impl std::fmt::Debug for RunLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunLock")
            .field("path", &self.path)
            .field("record", &self.record)
            .field("reentrant", &self.reentrant)
            .finish_non_exhaustive()
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LockError + '_ {
    move |source| LockError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn read_record(path: &Path) -> Result<Option<LockRecord>, LockError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| LockError::Damaged {
                path: path.to_path_buf(),
                detail: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Writes the record atomically (temporary file, then rename).
fn write_record(path: &Path, record: &LockRecord) -> Result<(), LockError> {
    let dir = path.parent().expect("lock files live in a directory");
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io_err(path))?;
    tmp.write_all(&serde_json::to_vec_pretty(record).expect("serializable"))
        .map_err(io_err(path))?;
    tmp.persist(path).map_err(|e| io_err(path)(e.error))?;
    Ok(())
}

/// Whether `holder` counts as this request's owner: the same process, or the parent of the
/// process asking (a framework that took the lock with `hook pre-backup` and runs us).
fn same_owner(holder: &Owner, req: &Owner) -> bool {
    let me = Owner::this_process();
    let parent = Owner::parent_process();
    [req, &me, &parent]
        .iter()
        .any(|o| o.host == holder.host && o.pid == holder.pid && o.pid_start == holder.pid_start)
}

impl RunLock {
    /// Takes the run lock on `vault` (opened, for its key) described by `cfg`.
    pub fn acquire(vault: &Vault, cfg: &VaultConfig, req: LockRequest) -> Result<Self, LockError> {
        let path = state_file(&req.state_dir, &cfg.repository, "lock");
        let dir = path.parent().expect("has a parent");
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let record = LockRecord {
            owner: req.owner.clone(),
            user: username(),
            since: jiff::Timestamp::now(),
            command: req.command.clone(),
            exclusive: req.exclusive,
            vault: cfg.shown(),
            vault_lock: None,
        };
        // 1. The lock file.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    f.write_all(&serde_json::to_vec_pretty(&record).expect("serializable"))
                        .and_then(|_| f.sync_all())
                        .map_err(io_err(&path))?;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempts < 5 => {
                    let held = match read_record(&path) {
                        Ok(Some(r)) => r,
                        // Removed meanwhile, or still being written: look again.
                        Ok(None) | Err(LockError::Damaged { .. }) => {
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
                    if same_owner(&held.owner, &req.owner) {
                        return Ok(Self {
                            path,
                            record: held,
                            reentrant: true,
                            vault: None,
                            refresher: None,
                            done: true,
                        });
                    }
                    if held.owner.alive() {
                        return Err(LockError::Held {
                            since: held.since.strftime("%Y-%m-%d %H:%M:%S UTC").to_string(),
                            pid: held.owner.pid,
                            host: held.owner.host,
                            command: held.command,
                            path: path.display().to_string(),
                        });
                    }
                    log::warn!(
                        "taking over a stale lock: pid {} on {} ({}, since {}) is gone",
                        held.owner.pid,
                        held.owner.host,
                        held.command,
                        held.since
                    );
                    if let Some(id) = &held.vault_lock
                        && let Ok(store) = LockStore::new(cfg)
                    {
                        let _ = store.remove(id);
                    }
                    // Remove only what we read: rename it aside first, so two takers cannot
                    // both remove a fresh lock.
                    let aside = path.with_extension(format!("stale.{}", std::process::id()));
                    if std::fs::rename(&path, &aside).is_ok() {
                        let _ = std::fs::remove_file(&aside);
                    }
                }
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
        let mut lock = Self {
            path,
            record,
            reentrant: false,
            vault: None,
            refresher: None,
            done: false,
        };
        // 2. The lock object in the vault (dropping `lock` on error removes the file).
        let key = vault.with_repo(|r| Ok(r.key()))?;
        let vl = VaultLock {
            store: LockStore::new(cfg)?,
            crypt: Crypt::new(&key),
            repo: cfg.shown(),
        };
        let id = vl.write(req.exclusive, &req.owner)?;
        let state = Arc::new(Mutex::new(VaultLockState {
            lock: vl,
            id: Some(id.clone()),
        }));
        lock.vault = Some(state.clone());
        lock.record.vault_lock = Some(id.clone());
        write_record(&lock.path, &lock.record)?;
        let conflict = state
            .lock()
            .expect("vault lock state")
            .lock
            .conflict(req.exclusive, &id)?;
        if let Some(other) = conflict {
            return Err(LockError::HeldInVault {
                since: other.time.strftime("%Y-%m-%d %H:%M:%S UTC").to_string(),
                pid: other.pid,
                host: other.hostname,
                user: other.username,
                exclusive: if other.exclusive { ", exclusive" } else { "" },
            });
        }
        Ok(lock)
    }

    /// The lock file's content.
    pub fn record(&self) -> &LockRecord {
        &self.record
    }

    /// Where the lock file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this handle only found the lock already held by its owner.
    pub fn is_reentrant(&self) -> bool {
        self.reentrant
    }

    /// Rewrites the vault lock object every few minutes while this handle lives.
    pub fn keep_fresh(&mut self) {
        let Some(state) = self.vault.clone() else {
            return;
        };
        let (tx, rx) = mpsc::channel::<()>();
        let owner = self.record.owner.clone();
        let exclusive = self.record.exclusive;
        let path = self.path.clone();
        let record = Arc::new(Mutex::new(self.record.clone()));
        let handle = std::thread::spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(REFRESH_EVERY) {
                let mut s = state.lock().expect("vault lock state");
                match s.lock.write(exclusive, &owner) {
                    Ok(new_id) => {
                        if let Some(old) = s.id.replace(new_id.clone()) {
                            let _ = s.lock.remove(&old);
                        }
                        let mut r = record.lock().expect("record");
                        r.vault_lock = Some(new_id);
                        let _ = write_record(&path, &r);
                    }
                    Err(e) => log::warn!("could not refresh the vault lock: {e}"),
                }
            }
        });
        self.refresher = Some((tx, handle));
    }

    /// Leaves the lock in place for its owner (a framework process) to release later with
    /// [`release_for`]; returns the record.
    pub fn persist(mut self) -> LockRecord {
        self.stop_refresher();
        self.done = true;
        self.record.clone()
    }

    fn stop_refresher(&mut self) {
        if let Some((tx, h)) = self.refresher.take() {
            drop(tx);
            let _ = h.join();
        }
    }

    /// Releases the lock (the vault object, then the file).
    pub fn release(mut self) -> Result<(), LockError> {
        self.release_inner()
    }

    fn release_inner(&mut self) -> Result<(), LockError> {
        self.stop_refresher();
        if self.done {
            return Ok(());
        }
        self.done = true;
        let mut first_err = None;
        if let Some(state) = self.vault.take() {
            let s = state.lock().expect("vault lock state");
            if let Some(id) = &s.id
                && let Err(e) = s.lock.remove(id)
            {
                first_err = Some(LockError::Vault(e));
            }
        }
        if let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            first_err.get_or_insert(io_err(&self.path)(e));
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        if let Err(e) = self.release_inner() {
            log::warn!("releasing the run lock: {e}");
        }
    }
}

/// What [`release_for`] did.
#[derive(Debug, Clone, Serialize)]
pub enum Released {
    /// The owner's lock was released.
    Released(LockRecord),
    /// There was no lock.
    NoLock,
    /// The lock belongs to another run, which still runs: left alone.
    NotOurs(LockRecord),
}

/// Releases the lock held for `owner` (by `hook finally`), without opening the vault (no
/// password needed: removing a lock object needs no key). A lock of another live run is
/// left alone; a stale one is cleared.
pub fn release_for(
    cfg: &VaultConfig,
    state_dir: &Path,
    owner: &Owner,
) -> Result<Released, LockError> {
    let path = state_file(state_dir, &cfg.repository, "lock");
    let Some(record) = read_record(&path)? else {
        return Ok(Released::NoLock);
    };
    let ours = record.owner.host == owner.host && record.owner.pid == owner.pid;
    if !ours && record.owner.alive() {
        return Ok(Released::NotOurs(record));
    }
    if let Some(id) = &record.vault_lock {
        match LockStore::new(cfg).map(|store| store.remove(id)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log::warn!("could not remove the vault lock object locks/{id}: {e}"),
            Err(e) => log::warn!("could not remove the vault lock object locks/{id}: {e}"),
        }
    }
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&path)(e)),
    }
    Ok(Released::Released(record))
}

/// The current lock file of a vault, if any (for status output).
pub fn current(cfg_repository: &str, state_dir: &Path) -> Result<Option<LockRecord>, LockError> {
    read_record(&state_file(state_dir, cfg_repository, "lock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_and_staleness() {
        let me = Owner::this_process();
        assert!(me.alive());
        assert!(me.pid_start.is_some());
        let mut reused = me.clone();
        reused.pid_start = Some(me.pid_start.unwrap() + 1);
        assert!(!reused.alive(), "a reused pid is not the owner");
        let mut gone = me.clone();
        gone.pid = 0x3fff_fff0;
        assert!(!gone.alive());
        let mut remote = gone.clone();
        remote.host = "elsewhere.invalid".into();
        assert!(remote.alive(), "another host's process is presumed alive");
        let now = jiff::Timestamp::now();
        let l = ResticLock {
            time: now,
            exclusive: false,
            hostname: "elsewhere.invalid".into(),
            username: "u".into(),
            pid: 1,
            uid: 0,
            gid: 0,
        };
        assert!(!l.stale(now));
        assert!(l.stale(now + jiff::SignedDuration::from_secs(31 * 60)));
    }

    #[test]
    fn state_files_differ_per_vault() {
        let d = Path::new("/s");
        assert_ne!(state_file(d, "/a", "lock"), state_file(d, "/b", "lock"));
        assert!(state_file(d, "/a", "lock").starts_with("/s/vaults"));
    }
}
