//! Finding and running PostgreSQL's client and server programs.
//!
//! Every child gets the same environment: a 0600 `PGPASSFILE` for the password (never argv),
//! `PGTZ=UTC` and ISO date styles so that COPY text is identical between the dump and a later
//! check, and no `psqlrc`. When a site authenticates as `postgres` by peer (root running
//! `su - postgres -c pg_dump`, as sites do today), the program runs through `runuser`.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use secrecy::ExposeSecret;

use super::{ConnInfo, PgError};

/// The directory holding one PostgreSQL version's binaries, or PATH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinDir {
    dir: Option<PathBuf>,
    /// Set by the operator (`[database] bin-dir`): never replaced by a version match.
    pinned: bool,
}

impl BinDir {
    /// A directory the operator chose.
    pub fn pinned(dir: PathBuf) -> Self {
        Self {
            dir: Some(dir),
            pinned: true,
        }
    }

    /// Whether the operator chose this directory.
    pub fn is_pinned(&self) -> bool {
        self.pinned
    }

    fn found(dir: Option<PathBuf>) -> Self {
        Self { dir, pinned: false }
    }

    /// Binaries of major version `major` (Debian layout), else the newest installed, else PATH.
    pub fn for_major(major: Option<u32>) -> Self {
        let installed = installed_majors();
        if let Some(m) = major {
            if let Some((_, dir)) = installed.iter().find(|(v, _)| *v == m) {
                return Self::found(Some(dir.clone()));
            }
            // A newer client can dump an older server; an older one cannot.
            if let Some((_, dir)) = installed.iter().rev().find(|(v, _)| *v >= m) {
                return Self::found(Some(dir.clone()));
            }
        }
        Self::found(installed.last().map(|(_, d)| d.clone()))
    }

    /// The path of a program in this directory (or its bare name for PATH lookup).
    pub fn program(&self, name: &str) -> PathBuf {
        match &self.dir {
            Some(dir) if self.pinned || dir.join(name).exists() => dir.join(name),
            _ => PathBuf::from(name),
        }
    }

    /// Whether `name` can be run from here.
    pub fn has(&self, name: &str) -> bool {
        let p = self.program(name);
        if p.is_absolute() {
            return p.exists();
        }
        std::env::var_os("PATH")
            .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(name).is_file()))
    }
}

/// Installed PostgreSQL majors under /usr/lib/postgresql (Debian) in ascending order.
pub fn installed_majors() -> Vec<(u32, PathBuf)> {
    let mut v: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.is_dir().then_some((major, bin))
        })
        .collect();
    v.sort();
    v
}

/// The environment shared by every PostgreSQL program ckan-vault runs in one process.
pub struct PgEnv {
    dir: tempfile::TempDir,
    passfiles: Mutex<Vec<(String, PathBuf)>>,
}

impl PgEnv {
    pub fn new() -> Result<Self, PgError> {
        let dir = crate::secret::private_tempdir("ckan-vault-pg.").map_err(PgError::Io)?;
        Ok(Self {
            dir,
            passfiles: Mutex::new(Vec::new()),
        })
    }

    /// A command for `program` talking to `conn`: conninfo goes on argv via `-d`/`--dbname`
    /// by the caller; the password goes into a passfile.
    pub fn command(
        &self,
        program: &Path,
        conn: &ConnInfo,
        run_as: Option<&str>,
    ) -> Result<Command, PgError> {
        let mut cmd = match run_as {
            Some(user) if needs_runuser(user) => runuser(user, program),
            _ => Command::new(program),
        };
        crate::secret::scrub_env(&mut cmd);
        cmd.env("PGTZ", "UTC")
            .env("PGDATESTYLE", "ISO")
            .env("PSQLRC", "/dev/null")
            .env_remove("PGPASSWORD")
            .stdin(Stdio::null());
        match conn.password() {
            Some(pw) if !run_as.is_some_and(needs_runuser) => {
                cmd.env("PGPASSFILE", self.passfile(pw.expose_secret())?);
            }
            // No password in the URL: libpq's usual sources (~/.pgpass, peer) apply.
            _ => {}
        }
        Ok(cmd)
    }

    fn passfile(&self, password: &str) -> Result<PathBuf, PgError> {
        let mut files = self.passfiles.lock().expect("passfile lock");
        if let Some((_, p)) = files.iter().find(|(pw, _)| pw == password) {
            return Ok(p.clone());
        }
        let path = self.dir.path().join(format!("pgpass{}", files.len()));
        let mut f = crate::secret::create_private_file(&path)
            .map_err(|e| PgError::Io(std::io::Error::other(e.to_string())))?;
        let escaped = password.replace('\\', "\\\\").replace(':', "\\:");
        writeln!(f, "*:*:*:*:{escaped}").map_err(PgError::Io)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(PgError::Io)?;
        files.push((password.to_string(), path.clone()));
        Ok(path)
    }
}

/// `runuser -u USER -- PROGRAM`. runuser lives in /usr/sbin, which the PATH of cron jobs
/// (`/usr/bin:/bin`) and of many service managers lacks: look there first.
pub(crate) fn runuser(user: &str, program: &Path) -> Command {
    let found = ["/usr/sbin/runuser", "/sbin/runuser"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists());
    let mut c = Command::new(found.unwrap_or(Path::new("runuser")));
    c.arg("-u").arg(user).arg("--").arg(program);
    c
}

/// Root switches to the named user; anyone else runs the program as themselves.
fn needs_runuser(user: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    uid == 0 && user != "root"
}

/// Runs a command to completion, returning stdout, or an error with stderr's last lines.
pub fn run_capture(mut cmd: Command, what: &str) -> Result<Vec<u8>, PgError> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| PgError::Spawn {
        program: what.to_string(),
        source: e,
    })?;
    let mut err = child.stderr.take().expect("piped stderr");
    let stderr_thread = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let mut out = Vec::new();
    child
        .stdout
        .take()
        .expect("piped stdout")
        .read_to_end(&mut out)
        .map_err(PgError::Io)?;
    let status = child.wait().map_err(PgError::Io)?;
    let stderr = stderr_thread.join().unwrap_or_default();
    if !status.success() {
        return Err(PgError::Failed {
            program: what.to_string(),
            status: status.to_string(),
            stderr: last_lines(&stderr),
        });
    }
    Ok(out)
}

/// The last few non-empty lines of a program's stderr, for an error message.
/// Reads `r` to its end on a thread of its own (a child's stderr, so that a child that writes
/// much there never blocks on a full pipe while its other pipes are served).
pub fn read_in_background<R: Read + Send + 'static>(mut r: R) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        v
    })
}

pub fn last_lines(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(3);
    lines[start..].join(" | ")
}
