//! Throwaway PostgreSQL clusters: for the demo, restore drills and tests.
//!
//! `initdb` in a private temporary directory, started with TCP switched off so the restored
//! data (e-mail addresses, token hashes) is reachable only through a unix socket inside that
//! directory. As root, the cluster runs as `postgres` (PostgreSQL refuses to run as root).
//! Dropping the handle stops the server and removes the directory, on every exit path that
//! unwinds. A signal does not unwind: [`remove_live`] is there for the program's signal
//! handling, so that an interrupted drill leaves no restored data behind either.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use super::tools::{BinDir, last_lines};
use super::{ConnInfo, PgError};

/// Options for a scratch cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// PostgreSQL major version to use (default: the newest installed).
    pub major: Option<u32>,
    /// Also listen on 127.0.0.1 at this port (tests only; drills never do).
    pub tcp_port: Option<u16>,
    /// Leave the cluster running and its directory in place when dropped.
    pub keep: bool,
}

/// A running throwaway cluster. The superuser is `postgres` with trust auth on the socket.
#[derive(Debug)]
pub struct ScratchCluster {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    port: u16,
    bindir: BinDir,
    run_as: Option<String>,
    keep: bool,
    stopped: bool,
}

const SOCKET_PORT: u16 = 5432;

/// The scratch clusters of this process that are not to be kept: directory, and the
/// command that stops the server (`pg_ctl -m immediate stop`).
static LIVE: Mutex<Vec<(PathBuf, Command)>> = Mutex::new(Vec::new());

/// Stops every live scratch cluster of this process at once and removes its directory.
/// For a signal handler's thread, right before the process exits; handles dropped later
/// find their cluster gone and do nothing harmful.
pub fn remove_live() {
    let live = std::mem::take(&mut *LIVE.lock().unwrap_or_else(|e| e.into_inner()));
    for (path, mut stop) in live {
        let _ = stop.stdout(Stdio::null()).stderr(Stdio::null()).status();
        let _ = std::fs::remove_dir_all(&path);
    }
}

fn unregister(path: &Path) {
    LIVE.lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|(p, _)| p != path);
}

impl ScratchCluster {
    /// Creates and starts a cluster; fails with install advice when the server is missing.
    pub fn start(opts: &ClusterOptions) -> Result<Self, PgError> {
        let bindir = BinDir::for_major(opts.major);
        if !bindir.has("initdb") || !bindir.has("pg_ctl") {
            return Err(PgError::ServerMissing);
        }
        let dir = tempfile::Builder::new()
            .prefix("ckan-vault-cluster.")
            .tempdir()
            .map_err(PgError::Io)?;
        let path = dir.path().to_path_buf();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
            .map_err(PgError::Io)?;
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let run_as = root.then(|| "postgres".to_string());
        if root {
            chown_to_postgres(&path)?;
        }
        let port = opts.tcp_port.unwrap_or(SOCKET_PORT);
        let mut cluster = ScratchCluster {
            dir: Some(dir),
            path,
            port,
            bindir,
            run_as,
            keep: opts.keep,
            stopped: true,
        };
        let data = cluster.data_dir();
        if !opts.keep {
            LIVE.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((cluster.path.clone(), cluster.stop_command()));
        }
        let initdb = cluster.bindir.program("initdb");
        let mut cmd = cluster.server_command(&initdb);
        cmd.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        ]);
        run_quiet(cmd, "initdb")?;
        let listen = match opts.tcp_port {
            Some(_) => "127.0.0.1",
            None => "",
        };
        let settings = format!(
            "-c listen_addresses='{listen}' -p {port} -k {} -c unix_socket_permissions=0700 \
             -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
             -c wal_level=minimal -c max_wal_senders=0 -c maintenance_work_mem=256MB \
             -c max_wal_size=1GB -c checkpoint_timeout=30min",
            cluster.path.display()
        );
        let pg_ctl = cluster.bindir.program("pg_ctl");
        let mut cmd = cluster.server_command(&pg_ctl);
        cmd.arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(cluster.path.join("server.log"))
            .args(["-w", "-t", "60", "-o", &settings, "start"]);
        run_quiet(cmd, "pg_ctl start").map_err(|e| {
            let log = std::fs::read(cluster.path.join("server.log")).unwrap_or_default();
            match e {
                PgError::Failed {
                    program, status, ..
                } => PgError::Failed {
                    program,
                    status,
                    stderr: last_lines(&log),
                },
                other => other,
            }
        })?;
        cluster.stopped = false;
        Ok(cluster)
    }

    /// The directory holding the data, the socket and the log.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn data_dir(&self) -> PathBuf {
        self.path.join("data")
    }

    /// The binaries this cluster runs with.
    pub fn bindir(&self) -> &BinDir {
        &self.bindir
    }

    /// A superuser connection to `dbname` over the private socket.
    pub fn conn(&self, dbname: &str) -> ConnInfo {
        ConnInfo::socket(&self.path, self.port, "postgres", dbname)
    }

    /// The TCP port (only meaningful when `tcp_port` was set).
    pub fn port(&self) -> u16 {
        self.port
    }

    fn server_command(&self, program: &Path) -> Command {
        let mut cmd = match &self.run_as {
            Some(user) => super::tools::runuser(user, program),
            None => Command::new(program),
        };
        crate::secret::scrub_env(&mut cmd);
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Stops the server now (also done on drop).
    pub fn stop(&mut self) -> Result<(), PgError> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        run_quiet(self.stop_command(), "pg_ctl stop")
    }

    fn stop_command(&self) -> Command {
        let pg_ctl = self.bindir.program("pg_ctl");
        let mut cmd = self.server_command(&pg_ctl);
        cmd.arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "stop"]);
        cmd
    }

    /// Keeps the cluster running and its directory after this handle is gone.
    pub fn keep(mut self) -> PathBuf {
        unregister(&self.path);
        self.keep = true;
        if let Some(d) = self.dir.take() {
            let _ = d.keep();
        }
        self.path.clone()
    }
}

impl Drop for ScratchCluster {
    fn drop(&mut self) {
        unregister(&self.path);
        if self.keep {
            if let Some(d) = self.dir.take() {
                let _ = d.keep();
            }
            return;
        }
        if let Err(e) = self.stop() {
            log::warn!(
                "could not stop the scratch cluster in {}: {e}",
                self.path.display()
            );
        }
    }
}

fn chown_to_postgres(path: &Path) -> Result<(), PgError> {
    let mut chown = Command::new("chown");
    crate::secret::scrub_env(&mut chown);
    let status = chown
        .arg("postgres:")
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .map_err(PgError::Io)?;
    if !status.success() {
        return Err(PgError::Failed {
            program: "chown postgres".into(),
            status: status.to_string(),
            stderr: "is there a `postgres` system user? (it comes with the postgresql package)"
                .into(),
        });
    }
    Ok(())
}

fn run_quiet(mut cmd: Command, what: &str) -> Result<(), PgError> {
    let out = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| PgError::Spawn {
            program: what.to_string(),
            source: e,
        })?;
    if !out.status.success() {
        let mut all = out.stdout;
        all.extend(out.stderr);
        return Err(PgError::Failed {
            program: what.to_string(),
            status: out.status.to_string(),
            stderr: last_lines(&all),
        });
    }
    Ok(())
}
