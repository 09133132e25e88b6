//! Output files that hold secrets (`.dcor-access` files, passwords): written to a 0600
//! temporary file next to the destination first, and moved into place only when the
//! command has succeeded, never over an existing file.

use std::fs::Permissions;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::TokenError;

/// A secret file being prepared; dropped without [`PendingFile::commit`], it vanishes.
pub struct PendingFile {
    tmp: tempfile::NamedTempFile,
    dest: PathBuf,
}

impl std::fmt::Debug for PendingFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingFile")
            .field("dest", &self.dest)
            .finish_non_exhaustive()
    }
}

impl PendingFile {
    /// Prepares `dest`: refuses if it exists, creates a 0600 temporary file beside it
    /// (so a directory that is not writable fails now, before anything is created).
    pub fn new(dest: &Path) -> Result<PendingFile, TokenError> {
        if dest.symlink_metadata().is_ok() {
            return Err(TokenError::Exists {
                path: dest.to_owned(),
            });
        }
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let tmp = tempfile::Builder::new()
            .prefix(".ckan-vault-")
            .suffix(".tmp")
            .permissions(Permissions::from_mode(0o600))
            .tempfile_in(dir)
            .map_err(|source| TokenError::Write {
                path: dest.to_owned(),
                source,
            })?;
        Ok(PendingFile {
            tmp,
            dest: dest.to_owned(),
        })
    }

    /// The final path.
    #[must_use]
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Writes the content and flushes it to disk.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), TokenError> {
        let err = |source| TokenError::Write {
            path: self.dest.clone(),
            source,
        };
        let f = self.tmp.as_file_mut();
        f.write_all(bytes).map_err(err)?;
        f.sync_all().map_err(err)
    }

    /// Moves the file into place; fails if something appeared at the destination since.
    pub fn commit(self) -> Result<PathBuf, TokenError> {
        let dest = self.dest.clone();
        self.tmp.persist_noclobber(&dest).map_err(|e| {
            if e.error.kind() == std::io::ErrorKind::AlreadyExists {
                TokenError::Exists { path: dest.clone() }
            } else {
                TokenError::Write {
                    path: dest.clone(),
                    source: e.error,
                }
            }
        })?;
        Ok(dest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_0600_only_on_commit_and_never_over_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("a.dcor-access");
        let mut p = PendingFile::new(&dest).unwrap();
        p.write(b"secret").unwrap();
        assert!(!dest.exists());
        p.commit().unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"secret");
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            PendingFile::new(&dest),
            Err(TokenError::Exists { .. })
        ));

        // Dropped without commit: nothing stays behind.
        let other = dir.path().join("b");
        let mut p = PendingFile::new(&other).unwrap();
        p.write(b"x").unwrap();
        drop(p);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        // Something appearing meanwhile is not overwritten.
        let mut p = PendingFile::new(&other).unwrap();
        p.write(b"x").unwrap();
        std::fs::write(&other, b"theirs").unwrap();
        assert!(matches!(p.commit(), Err(TokenError::Exists { .. })));
        assert_eq!(std::fs::read(&other).unwrap(), b"theirs");

        let err = PendingFile::new(&dir.path().join("no/such/dir/f")).unwrap_err();
        assert!(matches!(err, TokenError::Write { .. }), "{err}");
    }
}
