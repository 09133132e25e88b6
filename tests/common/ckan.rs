//! Test fixture: one real CKAN 2.11.6 per test process, on loopback.
//!
//! [`ckan()`] starts it on first use with `tests/support/ckan-up.sh` (a private PostgreSQL
//! cluster, redis and `ckan run`, all in `$CARGO_TARGET_TMPDIR/ckan-<pid>`, on free ports)
//! and leaves behind a small watchdog process that runs `tests/support/ckan-down.sh` once
//! this test process has exited (normally, by panic, or killed), then deletes the dir.
//! Set `CKAN_VAULT_KEEP_CKAN=1` to keep the dir (stopped) for a post-mortem.
//!
//! Instances are seeded from a template (see tests/support/README.md), so every instance
//! has the same sysadmin `admin` and token, plus a DataStore table and a few storage files.
//! State is shared by all tests of one process: use unique user names (CKAN never purges).
//!
//! Uses only std, so it can be included from any integration test:
//! `mod common;` (tests/common/mod.rs) or `#[path = "common/ckan.rs"] mod ckan;`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// A running CKAN. Secrets are only in files (0600); read them with the helpers.
#[derive(Debug)]
pub struct Ckan {
    /// `http://127.0.0.1:<port>` (no trailing slash).
    pub url: String,
    /// `ckan.ini` (0600; holds the DB passwords and `SECRET_KEY`).
    pub ini: PathBuf,
    /// File holding the sysadmin `admin`'s API token (a JWT, one line, 0600).
    pub admin_token_file: PathBuf,
    /// `ckan.storage_path` (has `resources/abc/def/example.csv` and friends).
    pub storage: PathBuf,
    /// The instance directory (`$CARGO_TARGET_TMPDIR/ckan-<pid>`).
    pub dir: PathBuf,
    /// CKAN's HTTP port.
    pub port: u16,
    /// PostgreSQL on `127.0.0.1:pg_port`; databases `ckan_default` and `datastore_default`.
    pub pg_port: u16,
    /// Unix socket dir of that cluster; superuser `postgres` connects here without password.
    pub pg_socket_dir: PathBuf,
    /// Password of the role `ckan_default` (owner of both databases).
    pub pg_password_file: PathBuf,
    pub redis_port: u16,
    /// The CKAN virtualenv (`venv/bin/ckan`, `venv/bin/python`).
    pub venv: PathBuf,
}

/// An Action API reply: HTTP status and the raw JSON body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    /// True if the body is CKAN's envelope with `"success": true`.
    pub fn success(&self) -> bool {
        self.body
            .replace([' ', '\n'], "")
            .contains("\"success\":true")
    }
}

impl Ckan {
    /// The sysadmin `admin`'s API token.
    pub fn admin_token(&self) -> String {
        read_trimmed(&self.admin_token_file)
    }

    /// Password of the PostgreSQL role `ckan_default`.
    pub fn pg_password(&self) -> String {
        read_trimmed(&self.pg_password_file)
    }

    /// `ckan -c <ini> ...` from the fixture's virtualenv (stdin is null).
    pub fn cli(&self) -> Command {
        let mut c = Command::new(self.venv.join("bin/ckan"));
        c.arg("-c").arg(&self.ini).stdin(Stdio::null());
        c
    }

    /// `psql` as superuser `postgres` over the cluster's unix socket, on database `db`.
    pub fn psql_superuser(&self, db: &str) -> Command {
        let mut c = Command::new("psql");
        c.args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-U",
            "postgres",
            "-d",
            db,
        ])
        .arg("-h")
        .arg(&self.pg_socket_dir)
        .arg("-p")
        .arg(self.pg_port.to_string());
        c
    }

    /// GET `/api/3/action/<action_and_query>` (e.g. `"api_token_list?user_id=admin"`).
    /// The token goes raw into `Authorization`, as CKAN wants.
    pub fn get(&self, action_and_query: &str, token: Option<&str>) -> Reply {
        self.request("GET", action_and_query, token, None)
    }

    /// POST a JSON body to `/api/3/action/<action>`.
    pub fn post(&self, action: &str, token: Option<&str>, json: &str) -> Reply {
        self.request("POST", action, token, Some(json))
    }

    /// A minimal HTTP/1.1 client (std only, loopback only).
    pub fn request(
        &self,
        method: &str,
        action: &str,
        token: Option<&str>,
        json: Option<&str>,
    ) -> Reply {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))
            .unwrap_or_else(|e| panic!("connect to CKAN at {}: {e}", self.url));
        s.set_read_timeout(Some(Duration::from_secs(120))).ok();
        let body = json.unwrap_or("");
        let mut req = format!(
            "{method} /api/3/action/{action} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\
             Connection: close\r\nAccept: application/json\r\nContent-Length: {}\r\n",
            self.port,
            body.len()
        );
        if let Some(t) = token {
            req.push_str(&format!("Authorization: {t}\r\n"));
        }
        if json.is_some() {
            req.push_str("Content-Type: application/json\r\n");
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes())
            .expect("send HTTP request to CKAN");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).expect("read HTTP reply from CKAN");
        parse_reply(&raw).unwrap_or_else(|| {
            panic!(
                "unparsable HTTP reply from CKAN: {:?}",
                String::from_utf8_lossy(&raw)
            )
        })
    }
}

fn parse_reply(raw: &[u8]) -> Option<Reply> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut body = raw[split + 4..].to_vec();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let nl = rest.windows(2).position(|w| w == b"\r\n")?;
            let size_str = std::str::from_utf8(&rest[..nl]).ok()?;
            let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
            rest = &rest[nl + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(rest.get(..size)?);
            rest = rest.get(size + 2..)?;
        }
        body = out;
    }
    Some(Reply {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn read_trimmed(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
        .trim()
        .to_string()
}

static CKAN: OnceLock<Result<Ckan, String>> = OnceLock::new();

/// The CKAN of this test process, started on first call (about 6 s with a warm cache,
/// about 90 s the very first time on a machine: pip install + template). Panics with
/// instructions if it cannot start; every later call panics with the same message.
pub fn ckan() -> &'static Ckan {
    match CKAN.get_or_init(start) {
        Ok(c) => c,
        Err(msg) => panic!("{msg}"),
    }
}

const HINT: &str = "The CKAN test fixture needs python3 (with venv), PostgreSQL server binaries, \
redis-server, gcc, libpq-dev and python3-dev, and network access to PyPI the first time. \
On Debian 12 as root: `bash .ci/run install` (or apt-get install postgresql redis-server \
python3-venv gcc libpq-dev python3-dev), then rerun the tests.";

fn free_ports() -> [u16; 3] {
    // Hold all three listeners at once so the ports differ.
    let ls: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    let p: Vec<u16> = ls.iter().map(|l| l.local_addr().unwrap().port()).collect();
    [p[0], p[1], p[2]]
}

fn start() -> Result<Ckan, String> {
    let support = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support");
    let up = support.join("ckan-up.sh");
    let down = support.join("ckan-down.sh");
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("ckan-{}", std::process::id()));

    if dir.exists() {
        // Left over from an earlier process with the same pid.
        let _ = Command::new("bash")
            .arg(&down)
            .arg(&dir)
            .arg("--purge")
            .stdin(Stdio::null())
            .status();
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;

    // Watchdog first, so that even a half-started instance is stopped when we are gone.
    // Own process group: a Ctrl-C on the test run does not kill it before cleanup.
    let keep = std::env::var("CKAN_VAULT_KEEP_CKAN")
        .map(|v| v == "1")
        .unwrap_or(false);
    Command::new("sh")
        .arg("-c")
        .arg(
            r#"while kill -0 "$1" 2>/dev/null; do sleep 1; done
               if [ "$4" = 1 ]; then exec bash "$2" "$3"; else exec bash "$2" "$3" --purge; fi"#,
        )
        .arg("ckan-vault-test-watchdog")
        .arg(std::process::id().to_string())
        .arg(&down)
        .arg(&dir)
        .arg(if keep { "1" } else { "0" })
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot spawn the CKAN watchdog (sh): {e}"))?;

    let [cp, pp, rp] = free_ports();
    let log_path = dir.join("ckan-up.log");
    let log = File::create(&log_path).map_err(|e| format!("create {}: {e}", log_path.display()))?;
    let t0 = std::time::Instant::now();
    let out = Command::new("bash")
        .arg(&up)
        .arg(&dir)
        .args([cp.to_string(), pp.to_string(), rp.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .output()
        .map_err(|e| format!("cannot run bash {}: {e}\n{HINT}", up.display()))?;
    let log_text = std::fs::read_to_string(&log_path).unwrap_or_default();
    if !out.status.success() {
        let tail: Vec<&str> = log_text.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!(
            "CKAN test instance did not start ({}; {}).\n--- last lines of {}:\n{}\n---\n{HINT}",
            up.display(),
            out.status,
            log_path.display(),
            tail.join("\n")
        ));
    }
    eprintln!(
        "[ckan fixture] CKAN up in {:.1}s at http://127.0.0.1:{cp} ({})",
        t0.elapsed().as_secs_f64(),
        dir.display()
    );

    let vars: HashMap<String, String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let var = |k: &str| -> Result<String, String> {
        vars.get(k)
            .cloned()
            .ok_or_else(|| format!("ckan-up.sh did not print {k}=...; log:\n{log_text}"))
    };
    Ok(Ckan {
        url: var("CKAN_URL")?,
        ini: var("CKAN_INI")?.into(),
        admin_token_file: var("CKAN_ADMIN_TOKEN_FILE")?.into(),
        storage: var("CKAN_STORAGE")?.into(),
        dir,
        port: cp,
        pg_port: pp,
        pg_socket_dir: var("CKAN_PG_SOCKET_DIR")?.into(),
        pg_password_file: var("CKAN_PG_PASSWORD_FILE")?.into(),
        redis_port: rp,
        venv: var("CKAN_VENV")?.into(),
    })
}
