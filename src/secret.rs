//! Secrets: where they come from, and files that hold them.
//!
//! A secret never travels on a command line (`/proc/*/cmdline` is world-readable) and never
//! appears in a log line or an error message. Files that hold one are created 0600.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use secrecy::SecretString;
use zeroize::Zeroizing;

/// Errors while reading or writing a secret. Messages never contain the secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "cannot read secret file {path}: {source}; check the path and that it is readable by this user"
    )]
    ReadFile { path: PathBuf, source: io::Error },
    #[error("secret file {path} is empty; put the secret on its first line")]
    EmptyFile { path: PathBuf },
    #[error("secret file {path} is not UTF-8 text; store the secret as text")]
    NotUtf8 { path: PathBuf },
    #[error("password command `{program}` failed ({reason}); run it by hand to see why")]
    Command { program: String, reason: String },
    #[error("cannot create {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
}

impl crate::error::Categorized for SecretError {
    fn category(&self) -> crate::error::Category {
        crate::error::Category::Usage
    }
}

/// Where a secret comes from, in the order the configuration allows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A file whose first line is the secret.
    File(PathBuf),
    /// A command (run without a shell) whose standard output's first line is the secret.
    Command(Vec<String>),
    /// An environment variable holding the secret.
    Env(String),
}

impl SecretSource {
    /// Reads the secret. Only the first line is used, without its line ending.
    pub fn read(&self) -> Result<SecretString, SecretError> {
        match self {
            SecretSource::File(path) => read_secret_file(path),
            SecretSource::Command(argv) => run_secret_command(argv),
            SecretSource::Env(var) => {
                let value = std::env::var(var).map_err(|_| SecretError::Command {
                    program: format!("${var}"),
                    reason: "the variable is not set or not UTF-8".into(),
                })?;
                Ok(first_line(&value).into())
            }
        }
    }
}

fn first_line(text: &str) -> &str {
    text.split(['\n', '\r']).next().unwrap_or("")
}

/// Reads the first line of a secret file, warning when others can read it.
pub fn read_secret_file(path: &Path) -> Result<SecretString, SecretError> {
    let mut file = File::open(path).map_err(|source| SecretError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    if let Ok(meta) = file.metadata()
        && meta.permissions().mode() & 0o077 != 0
    {
        log::warn!(
            "secret file {} is readable by group or others; run `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
    let mut raw = Zeroizing::new(Vec::new());
    file.read_to_end(&mut raw)
        .map_err(|source| SecretError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
    let text = std::str::from_utf8(&raw).map_err(|_| SecretError::NotUtf8 {
        path: path.to_owned(),
    })?;
    let line = first_line(text);
    if line.is_empty() {
        return Err(SecretError::EmptyFile {
            path: path.to_owned(),
        });
    }
    Ok(line.into())
}

fn run_secret_command(argv: &[String]) -> Result<SecretString, SecretError> {
    let program = argv.first().cloned().unwrap_or_default();
    let fail = |reason: String| SecretError::Command {
        program: program.clone(),
        reason,
    };
    if program.is_empty() {
        return Err(fail("the command is empty".into()));
    }
    let out = Command::new(&program)
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| fail(e.to_string()))?;
    let stdout = Zeroizing::new(out.stdout);
    if !out.status.success() {
        return Err(fail(out.status.to_string()));
    }
    let text = std::str::from_utf8(&stdout).map_err(|_| fail("output is not UTF-8".into()))?;
    let line = first_line(text);
    if line.is_empty() {
        return Err(fail("it printed nothing".into()));
    }
    Ok(line.into())
}

/// Creates a new file readable only by its owner (0600), truncating an existing one.
pub fn create_private_file(path: &Path) -> Result<File, SecretError> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| SecretError::Create {
            path: path.to_owned(),
            source,
        })?;
    // An existing file keeps its mode on open: force 0600 either way.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|source| SecretError::Create {
            path: path.to_owned(),
            source,
        })?;
    Ok(file)
}

/// Prefixes of environment variables that may hold ckan-vault's secrets: its own settings
/// (`CKAN_VAULT_PASSWORD`, `CKAN_VAULT_CKAN_DATABASE_URL`, …), CKAN's (`CKAN_SQLALCHEMY_URL`,
/// …) and the vault backends' credentials.
const SECRET_ENV_PREFIXES: &[&str] = &["CKAN_", "RESTIC_", "RUSTIC_", "AWS_"];

/// Keeps the variables that may hold ckan-vault's secrets out of a child's environment
/// (PostgreSQL's programs and server need none of them; a scratch server even runs as
/// another user, who could read its `/proc/PID/environ`).
pub fn scrub_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let name = key.to_string_lossy();
        if SECRET_ENV_PREFIXES.iter().any(|p| name.starts_with(p)) {
            cmd.env_remove(&key);
        }
    }
}

/// The private temporary directories this process made, for [`remove_private_dirs`].
static PRIVATE_DIRS: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());

/// A private (0700) temporary directory, removed when dropped.
pub fn private_tempdir(prefix: &str) -> io::Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
    PRIVATE_DIRS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(dir.path().to_path_buf());
    Ok(dir)
}

/// Removes every private temporary directory this process made (those already dropped
/// are gone anyway). For a signal handler's thread right before the process exits, since
/// a signal skips the `Drop` that removes them (they may hold a PGPASSFILE).
pub fn remove_private_dirs() {
    let dirs = std::mem::take(&mut *PRIVATE_DIRS.lock().unwrap_or_else(|e| e.into_inner()));
    for d in dirs {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::io::Write;

    #[test]
    fn secret_file_first_line_only() {
        let dir = private_tempdir("t").unwrap();
        let p = dir.path().join("pw");
        let mut f = create_private_file(&p).unwrap();
        f.write_all(b"s3cret\nsecond\n").unwrap();
        assert_eq!(read_secret_file(&p).unwrap().expose_secret(), "s3cret");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn empty_secret_file_is_an_error_without_content() {
        let dir = private_tempdir("t").unwrap();
        let p = dir.path().join("pw");
        create_private_file(&p).unwrap();
        let err = read_secret_file(&p).unwrap_err().to_string();
        assert!(err.contains("is empty"), "{err}");
    }

    #[test]
    fn command_source_reads_stdout() {
        let s = SecretSource::Command(vec!["printf".into(), "abc\\ndef".into()]);
        assert_eq!(s.read().unwrap().expose_secret(), "abc");
        let bad = SecretSource::Command(vec!["false".into()]);
        assert!(bad.read().is_err());
    }
}
