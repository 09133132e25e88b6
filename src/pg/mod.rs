//! PostgreSQL through its own programs: pg_dump, pg_restore, pg_dumpall, psql, initdb.
//!
//! Using the programs rather than a wire-protocol library keeps ckan-vault's dumps exactly the
//! ones operators know, works with peer authentication as `postgres`, and picks the binaries
//! that match the server's major version.

pub mod archive;
pub mod checksum;
pub mod cluster;
pub mod conninfo;
pub mod load;
pub mod tools;

use std::io::Read;
use std::process::{Child, Command, Stdio};

pub use conninfo::ConnInfo;
pub use tools::{BinDir, PgEnv};

use checksum::{LineSummer, TableSum};

/// Errors from PostgreSQL programs. None of them carries a password.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error(transparent)]
    ConnInfo(#[from] conninfo::ConnInfoError),
    #[error(
        "cannot connect to {target}: {detail}; check that the server runs and the URL, user and password are right"
    )]
    Connect { target: String, detail: String },
    #[error(
        "PostgreSQL server programs (initdb, pg_ctl) not found; install them, e.g. `apt-get install postgresql`"
    )]
    ServerMissing,
    #[error(
        "cannot run {program}: {source}; is the PostgreSQL client installed (`apt-get install postgresql-client`)?"
    )]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        program: String,
        status: String,
        stderr: String,
    },
    #[error("unexpected answer from the server: {0}")]
    Unexpected(String),
    #[error(transparent)]
    Archive(#[from] archive::ArchiveError),
    #[error("I/O error: {0}")]
    Io(#[source] std::io::Error),
}

impl crate::error::Categorized for PgError {
    fn category(&self) -> crate::error::Category {
        use crate::error::Category;
        match self {
            PgError::ConnInfo(_) | PgError::Connect { .. } | PgError::ServerMissing => {
                Category::Usage
            }
            _ => Category::Failure,
        }
    }
}

/// Facts about a server, recorded in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServerInfo {
    pub version_num: u32,
    pub version: String,
    pub encoding: String,
    /// `pg_current_wal_lsn()` when the dump started (absent on a standby).
    pub wal_lsn: Option<String>,
}

impl ServerInfo {
    pub fn major(&self) -> u32 {
        self.version_num / 10000
    }
}

/// A handle for running PostgreSQL programs with a shared private environment.
pub struct Pg {
    env: PgEnv,
}

/// How to reach one database: where, as whom, with which binaries.
#[derive(Debug, Clone)]
pub struct Target {
    pub conn: ConnInfo,
    /// Run the programs as this OS user (peer authentication as `postgres` when root).
    pub run_as: Option<String>,
    pub bindir: BinDir,
}

impl Target {
    pub fn new(conn: ConnInfo) -> Self {
        Self {
            conn,
            run_as: None,
            bindir: BinDir::for_major(None),
        }
    }

    pub fn with_dbname(&self, db: &str) -> Self {
        Self {
            conn: self.conn.with_dbname(db),
            ..self.clone()
        }
    }
}

impl Pg {
    pub fn new() -> Result<Self, PgError> {
        Ok(Self { env: PgEnv::new()? })
    }

    /// A command for a PostgreSQL program against `t` (conninfo still to be added).
    pub fn command(&self, t: &Target, program: &str) -> Result<Command, PgError> {
        self.env
            .command(&t.bindir.program(program), &t.conn, t.run_as.as_deref())
    }

    fn psql(&self, t: &Target) -> Result<Command, PgError> {
        let mut c = self.command(t, "psql")?;
        c.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(t.conn.to_conninfo());
        Ok(c)
    }

    /// Runs SQL and returns its unaligned, tuples-only output.
    pub fn query(&self, t: &Target, sql: &str) -> Result<String, PgError> {
        let mut c = self.psql(t)?;
        c.arg("-c").arg(sql);
        let out = tools::run_capture(c, "psql").map_err(|e| self.connect_error(t, e))?;
        Ok(String::from_utf8_lossy(&out).trim_end().to_string())
    }

    fn connect_error(&self, t: &Target, e: PgError) -> PgError {
        match e {
            PgError::Failed { stderr, .. }
                if stderr.contains("connection to server")
                    || stderr.contains("could not connect")
                    || stderr.contains("authentication failed")
                    || stderr.contains("does not exist") && stderr.contains("database") =>
            {
                PgError::Connect {
                    target: t.conn.to_string(),
                    detail: stderr,
                }
            }
            other => other,
        }
    }

    /// Server version, encoding and WAL position of `t`'s database.
    pub fn server_info(&self, t: &Target) -> Result<ServerInfo, PgError> {
        let out = self.query(
            t,
            "SELECT current_setting('server_version_num'), current_setting('server_version'), \
             pg_encoding_to_char(encoding), \
             CASE WHEN pg_is_in_recovery() THEN '' ELSE pg_current_wal_lsn()::text END \
             FROM pg_database WHERE datname = current_database()",
        )?;
        let f: Vec<&str> = out.split('|').collect();
        if f.len() != 4 {
            return Err(PgError::Unexpected(out));
        }
        Ok(ServerInfo {
            version_num: f[0].parse().map_err(|_| PgError::Unexpected(out.clone()))?,
            version: f[1].to_string(),
            encoding: f[2].to_string(),
            wal_lsn: (!f[3].is_empty()).then(|| f[3].to_string()),
        })
    }

    /// `pg_dump` in custom format without compression, writing to a pipe (not started).
    pub fn dump_command(&self, t: &Target) -> Result<Command, PgError> {
        let mut c = self.command(t, "pg_dump")?;
        c.args(["--format=custom", "--compress=0", "--no-password", "-d"])
            .arg(t.conn.to_conninfo())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Ok(c)
    }

    /// `pg_dumpall --globals-only` (roles, tablespaces, grants), writing to a pipe (not started).
    pub fn globals_command(&self, t: &Target) -> Result<Command, PgError> {
        let mut c = self.command(t, "pg_dumpall")?;
        c.args(["--globals-only", "--no-password", "-d"])
            .arg(t.conn.to_conninfo())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Ok(c)
    }

    fn restore_command(&self, t: &Target, extra: &[&str]) -> Result<Command, PgError> {
        let mut c = self.command(t, "pg_restore")?;
        c.args(["--no-owner", "--no-password", "--exit-on-error"])
            .args(extra)
            .arg("-d")
            .arg(t.conn.to_conninfo())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        Ok(c)
    }

    /// Starts `pg_restore` reading an archive from stdin into `t`.
    pub fn spawn_restore(&self, t: &Target, extra: &[&str]) -> Result<Child, PgError> {
        let mut c = self.restore_command(t, extra)?;
        c.stdin(Stdio::piped());
        c.spawn().map_err(|source| PgError::Spawn {
            program: "pg_restore".into(),
            source,
        })
    }

    /// Restores the post-data section (indexes, constraints, triggers) of an archive whose
    /// header and table of contents are `toc`, in `jobs` parallel sessions.
    ///
    /// `pg_restore --jobs` needs a seekable archive, and a stream from the vault is not one;
    /// but post-data entries carry no data, so the TOC alone is a complete archive for them.
    /// `extra` must repeat the options of the data restore that filter entries
    /// (`--no-privileges`): GRANTs and default privileges are post-data entries too. Returns
    /// pg_restore's stderr.
    pub fn restore_post_data(
        &self,
        t: &Target,
        toc: &[u8],
        jobs: usize,
        extra: &[&str],
    ) -> Result<Vec<u8>, PgError> {
        let jobs = jobs.max(1).to_string();
        let mut args = vec!["--section=post-data", "--jobs", &jobs];
        args.extend_from_slice(extra);
        self.restore_toc(t, toc, None, &args, "post-data")
    }

    /// Creates the tables, types and functions (the pre-data section) of the archive whose
    /// header and table of contents are `toc`, in one transaction. Returns pg_restore's stderr.
    pub fn restore_pre_data(
        &self,
        t: &Target,
        toc: &[u8],
        extra: &[&str],
    ) -> Result<Vec<u8>, PgError> {
        let mut args = vec!["--section=pre-data", "--single-transaction"];
        args.extend_from_slice(extra);
        self.restore_toc(t, toc, None, &args, "pre-data")
    }

    /// Restores what the data section holds besides table rows (sequence values) from the
    /// TOC alone; `list` names the entries (a `--use-list` file without table data).
    pub fn restore_data_without_rows(
        &self,
        t: &Target,
        toc: &[u8],
        list: &[u8],
        extra: &[&str],
    ) -> Result<Vec<u8>, PgError> {
        let mut args = vec!["--section=data", "--single-transaction"];
        args.extend_from_slice(extra);
        self.restore_toc(t, toc, Some(list), &args, "sequence values")
    }

    /// Runs pg_restore on an archive that is only `toc`, with an optional `--use-list` file.
    ///
    /// Both live in anonymous memory files (memfd) that the child opens as
    /// `/proc/self/fd/N`: nothing is written to disk.
    fn restore_toc(
        &self,
        t: &Target,
        toc: &[u8],
        list: Option<&[u8]>,
        args: &[&str],
        what: &str,
    ) -> Result<Vec<u8>, PgError> {
        let archive = MemFile::new(c"ckan-vault-toc", toc)?;
        let list = list
            .map(|l| MemFile::new(c"ckan-vault-list", l))
            .transpose()?;
        let mut c = self.restore_command(t, args)?;
        if let Some(list) = &list {
            c.arg("--use-list").arg(list.path());
            list.inherit(&mut c);
        }
        c.arg(archive.path()).stdin(Stdio::null());
        archive.inherit(&mut c);
        let out = c.output().map_err(|source| PgError::Spawn {
            program: "pg_restore".into(),
            source,
        })?;
        if !out.status.success() {
            return Err(PgError::Failed {
                program: format!("pg_restore ({what})"),
                status: out.status.to_string(),
                stderr: tools::last_lines(&out.stderr),
            });
        }
        Ok(out.stderr)
    }

    /// Starts `psql` running an SQL script from stdin against `t` (for globals).
    pub fn spawn_sql(&self, t: &Target) -> Result<Child, PgError> {
        let mut c = self.command(t, "psql")?;
        c.args(["-X", "-q", "-v", "ON_ERROR_STOP=0", "-d"])
            .arg(t.conn.to_conninfo())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c.spawn().map_err(|source| PgError::Spawn {
            program: "psql".into(),
            source,
        })
    }

    /// Creates database `name` (owned by the connecting user) unless it exists.
    /// Returns whether it was created.
    pub fn create_database(&self, admin: &Target, name: &str) -> Result<bool, PgError> {
        let exists = self.query(
            admin,
            &format!(
                "SELECT 1 FROM pg_database WHERE datname = {}",
                literal(name)
            ),
        )?;
        if exists == "1" {
            return Ok(false);
        }
        self.query(
            admin,
            &format!(
                "CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'",
                ident(name)
            ),
        )?;
        Ok(true)
    }

    /// Drops database `name` if it exists, disconnecting its sessions.
    pub fn drop_database(&self, admin: &Target, name: &str) -> Result<(), PgError> {
        self.query(
            admin,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", ident(name)),
        )?;
        Ok(())
    }

    /// User tables (`schema.table`) of `t`'s database, outside the system schemas.
    pub fn list_tables(&self, t: &Target) -> Result<Vec<String>, PgError> {
        let out = self.query(
            t,
            "SELECT n.nspname || '.' || c.relname FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
             AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%' ORDER BY 1",
        )?;
        Ok(out
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect())
    }

    /// Heap pages of the table of pg_dump's `COPY schema."name" (…) FROM stdin;`, for
    /// splitting its read.
    pub fn table_pages(&self, t: &Target, copy_from: &str) -> Result<u64, PgError> {
        let table = split_copy_head(copy_from)
            .map(|(table, _)| table)
            .ok_or_else(|| PgError::Unexpected(format!("not a COPY statement: {copy_from}")))?;
        let out = self.query(
            t,
            &format!(
                "SELECT pg_relation_size({}::regclass) / current_setting('block_size')::bigint",
                literal(table)
            ),
        )?;
        out.trim()
            .parse()
            .map_err(|_| PgError::Unexpected(format!("page count of {table}: {out}")))
    }

    /// Sums a table's rows exactly as the manifest did, from `COPY … TO STDOUT`.
    ///
    /// `copy_from` is pg_dump's `COPY schema.table (cols) FROM stdin;` so that the column list
    /// matches the dump's; `encoding` is the dumped database's encoding. With `part`, only
    /// the rows in that range of heap pages (a TID range scan, PostgreSQL 14 and later).
    pub fn copy_sum(
        &self,
        t: &Target,
        copy_from: &str,
        encoding: Option<&str>,
        part: Option<PageRange>,
    ) -> Result<TableSum, PgError> {
        let sql = copy_to_stdout(copy_from, encoding, part)?;
        let mut c = self.command(t, "psql")?;
        c.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(t.conn.to_conninfo())
            .arg("-c")
            .arg(&sql)
            .env(
                "PGOPTIONS",
                "-c extra_float_digits=3 -c IntervalStyle=postgres",
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().map_err(|source| PgError::Spawn {
            program: "psql".into(),
            source,
        })?;
        let errs = tools::read_in_background(child.stderr.take().expect("piped"));
        let mut out = child.stdout.take().expect("piped");
        let mut summer = LineSummer::default();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = out.read(&mut buf).map_err(PgError::Io)?;
            if n == 0 {
                break;
            }
            summer.feed(&buf[..n]);
        }
        let status = child.wait().map_err(PgError::Io)?;
        let stderr = errs.join().unwrap_or_default();
        if !status.success() {
            return Err(PgError::Failed {
                program: "psql COPY".into(),
                status: status.to_string(),
                stderr: tools::last_lines(&stderr),
            });
        }
        summer
            .finish()
            .map_err(|n| PgError::Unexpected(format!("COPY output ended inside a row ({n} bytes)")))
    }
}

/// An anonymous memory file that a child process inherits and opens by path.
struct MemFile {
    file: std::fs::File,
}

impl MemFile {
    fn new(name: &std::ffi::CStr, contents: &[u8]) -> Result<Self, PgError> {
        use std::io::Write;
        use std::os::fd::FromRawFd;
        // SAFETY: `name` is NUL-terminated; the result is checked below.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(PgError::Io(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
        let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
        file.write_all(contents).map_err(PgError::Io)?;
        Ok(Self { file })
    }

    fn path(&self) -> String {
        use std::os::fd::AsRawFd;
        format!("/proc/self/fd/{}", self.file.as_raw_fd())
    }

    /// Lets `c`'s process (through runuser, too) inherit the descriptor.
    fn inherit(&self, c: &mut Command) {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let raw = self.file.as_raw_fd();
        // SAFETY: fcntl is async-signal-safe; it only clears close-on-exec on our memfd in
        // the child.
        unsafe {
            c.pre_exec(move || {
                if libc::fcntl(raw, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

/// A range of a table's heap pages: `start` up to `end` (exclusive), or to the table's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRange {
    pub start: u64,
    pub end: Option<u64>,
}

impl PageRange {
    /// `parts` ranges that cover a table of `pages` pages; the last one is open, so rows in
    /// pages the count did not see are still read.
    pub fn split(pages: u64, parts: u64) -> Vec<PageRange> {
        let parts = parts.clamp(1, pages.max(1));
        let step = pages.div_ceil(parts).max(1);
        (0..parts)
            .map(|i| PageRange {
                start: i * step,
                end: (i + 1 < parts).then_some((i + 1) * step),
            })
            .collect()
    }
}

/// `COPY … TO STDOUT` for the rows pg_dump's `COPY … FROM stdin;` statement loaded, with
/// the same columns in the same text format; with `part`, only the rows in those pages.
fn copy_to_stdout(
    copy_from: &str,
    encoding: Option<&str>,
    part: Option<PageRange>,
) -> Result<String, PgError> {
    let not_copy = || PgError::Unexpected(format!("not a COPY statement: {copy_from}"));
    let head = copy_from
        .trim()
        .strip_suffix("FROM stdin;")
        .ok_or_else(not_copy)?;
    let enc = encoding
        .map(|e| format!(" WITH (ENCODING {})", literal(e)))
        .unwrap_or_default();
    let Some(part) = part else {
        return Ok(format!("{head}TO STDOUT{enc}"));
    };
    let (table, columns) = split_copy_head(head).ok_or_else(not_copy)?;
    let columns = columns
        .strip_prefix('(')
        .and_then(|c| c.strip_suffix(')'))
        .unwrap_or("*");
    let end = part
        .end
        .map(|e| format!(" AND ctid < '({e},0)'::tid"))
        .unwrap_or_default();
    // ONLY: COPY of a table never includes rows of tables that inherit from it.
    Ok(format!(
        "COPY (SELECT {columns} FROM ONLY {table} WHERE ctid >= '({},0)'::tid{end}) TO STDOUT{enc}",
        part.start
    ))
}

/// `COPY schema."name" (a, b) ` into the table name and the column list (may be empty).
fn split_copy_head(head: &str) -> Option<(&str, &str)> {
    let rest = head.trim().strip_prefix("COPY ")?.trim_start();
    let mut quoted = false;
    let end = rest
        .char_indices()
        .find(|&(_, c)| {
            if c == '"' {
                quoted = !quoted;
            }
            !quoted && c.is_whitespace()
        })
        .map_or(rest.len(), |(i, _)| i);
    let (table, columns) = rest.split_at(end);
    (!table.is_empty() && !quoted).then(|| (table, columns.trim()))
}

/// An SQL identifier, quoted.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// An SQL string literal, quoted.
pub fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_table_copies_as_dumped() {
        let sql = copy_to_stdout("COPY public.package (id, name) FROM stdin;", None, None);
        assert_eq!(sql.unwrap(), "COPY public.package (id, name) TO STDOUT");
    }

    #[test]
    fn a_part_selects_the_dumped_columns_from_its_pages_only() {
        let part = PageRange {
            start: 10,
            end: Some(20),
        };
        let sql = copy_to_stdout(
            "COPY public.\"user\" (id, \"full name\") FROM stdin;",
            Some("UTF8"),
            Some(part),
        );
        assert_eq!(
            sql.unwrap(),
            "COPY (SELECT id, \"full name\" FROM ONLY public.\"user\" \
             WHERE ctid >= '(10,0)'::tid AND ctid < '(20,0)'::tid) TO STDOUT WITH (ENCODING 'UTF8')"
        );
        let open = PageRange {
            start: 20,
            end: None,
        };
        let sql = copy_to_stdout("COPY s.\"a b\"  FROM stdin;", None, Some(open)).unwrap();
        assert_eq!(
            sql,
            "COPY (SELECT * FROM ONLY s.\"a b\" WHERE ctid >= '(20,0)'::tid) TO STDOUT"
        );
        assert!(copy_to_stdout("SELECT 1", None, Some(open)).is_err());
        assert!(copy_to_stdout("COPY \"unclosed FROM stdin;", None, Some(open)).is_err());
    }

    #[test]
    fn page_ranges_cover_the_table_without_overlap() {
        for (pages, parts) in [(0, 2), (1, 2), (7, 2), (100, 3), (5, 8)] {
            let ranges = PageRange::split(pages, parts);
            assert!(!ranges.is_empty() && ranges.len() as u64 <= parts.max(1));
            assert_eq!(ranges[0].start, 0);
            assert_eq!(ranges.last().unwrap().end, None, "the last range is open");
            for w in ranges.windows(2) {
                assert_eq!(w[0].end, Some(w[1].start), "{pages} pages in {parts}");
                assert!(w[0].start < w[1].start);
            }
        }
        assert_eq!(PageRange::split(100, 3).len(), 3);
    }
}
