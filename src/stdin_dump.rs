//! `ckan-vault stdin-dump`: one database as a dedup-friendly pg_dump stream on stdout, for
//! another framework (rustic's `stdin-command`, restic's `--stdin-from-command`) to store.
//!
//! The stream is pg_dump's custom format without compression (the framework's repository
//! compresses and deduplicates), passed through [`ArchiveTap`] on the way, exactly as a
//! ckan-vault backup reads it. The run fails (non-zero exit) if pg_dump cannot start, exits
//! non-zero or dies, or if the archive ends incomplete even though pg_dump said it succeeded.
//! restic ≥ 0.17 then saves no snapshot. rustic_core saves the snapshot *before* it looks at
//! the exit status, so under rustic `--abort-parent` also stops rustic before it can save one.

use std::io::{self, Read, Write};
use std::time::Instant;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{Categorized, Category};
use crate::pg::archive::ArchiveTap;
use crate::pg::{BinDir, Pg, PgError, Target};

/// What was written.
#[derive(Debug, Clone, Serialize)]
pub struct DumpOutcome {
    pub database: String,
    pub bytes: u64,
    pub sha256: String,
    pub tables: usize,
    pub rows: u64,
    pub duration_seconds: f64,
}

/// Why a dump failed; the consumer must not keep what it got.
#[derive(Debug, thiserror::Error)]
pub enum StdinDumpError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error("{0}")]
    Failed(String),
    #[error("writing the dump to stdout failed: {0}; did the reader (rustic/restic) stop?")]
    Write(io::Error),
    #[error("refusing to write a binary dump to a terminal; pipe it, or run it from rustic/restic")]
    Terminal,
}

impl Categorized for StdinDumpError {
    fn category(&self) -> Category {
        match self {
            StdinDumpError::Pg(e) => e.category(),
            StdinDumpError::Terminal => Category::Usage,
            _ => Category::Failure,
        }
    }
}

/// Dumps `target` to `out`, checking the stream on the way.
pub fn run(pg: &Pg, target: &Target, out: &mut impl Write) -> Result<DumpOutcome, StdinDumpError> {
    let clock = Instant::now();
    let server = pg.server_info(target)?;
    let mut target = target.clone();
    if !target.bindir.is_pinned() {
        target.bindir = BinDir::for_major(Some(server.major()));
    }
    let mut cmd = pg.dump_command(&target)?;
    let mut child = cmd.spawn().map_err(|source| PgError::Spawn {
        program: "pg_dump".into(),
        source,
    })?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child
        .stderr
        .take()
        .map(crate::pg::tools::read_in_background);
    let mut tap = ArchiveTap::new();
    let mut sha = Sha256::new();
    let mut bytes = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    let copied = loop {
        let n = match stdout.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                break Err(StdinDumpError::Failed(format!(
                    "reading pg_dump output: {e}"
                )));
            }
        };
        tap.feed(&buf[..n]);
        sha.update(&buf[..n]);
        bytes += n as u64;
        if let Err(e) = out.write_all(&buf[..n]) {
            break Err(StdinDumpError::Write(e));
        }
    };
    let copied = copied.and_then(|()| out.flush().map_err(StdinDumpError::Write));
    if copied.is_err() {
        let _ = child.kill();
    }
    let status = child
        .wait()
        .map_err(|e| StdinDumpError::Failed(e.to_string()))?;
    let err_text = stderr
        .and_then(|h| h.join().ok())
        .map(|v| crate::pg::tools::last_lines(&v))
        .unwrap_or_default();
    copied?;
    if !status.success() {
        return Err(StdinDumpError::Failed(format!(
            "pg_dump {status}: {err_text}"
        )));
    }
    if !err_text.is_empty() {
        log::warn!("pg_dump: {err_text}");
    }
    let summary = tap
        .finish()
        .map_err(|e| StdinDumpError::Failed(format!("pg_dump: {e}")))?;
    Ok(DumpOutcome {
        database: target.conn.database().to_string(),
        bytes,
        sha256: hex::encode(sha.finalize()),
        tables: summary.tables.len(),
        rows: summary.tables.values().map(|t| t.sum.rows).sum(),
        duration_seconds: clock.elapsed().as_secs_f64(),
    })
}

/// Stops the process that started this one (rustic) with SIGTERM, so that it cannot save
/// the stream it got as a snapshot. Returns the pid signalled.
pub fn abort_parent() -> io::Result<u32> {
    // SAFETY: getppid cannot fail; kill with a valid signal has no memory effects.
    let ppid = unsafe { libc::getppid() };
    if ppid <= 1 {
        return Err(io::Error::other("no parent process to stop"));
    }
    if unsafe { libc::kill(ppid, libc::SIGTERM) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ppid as u32)
}
