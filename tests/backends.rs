//! The vault on a REST server (rustic_server, also append-only) and on S3 (moto's
//! moto_server), both started here on 127.0.0.1: init, backup, snapshots, restore, the run
//! lock, and forget (refused with a clear message in append-only mode).
//!
//! `.ci/run install` provides both servers under $CKAN_VAULT_TEST_CACHE (default
//! /work/cache/test): `rustic-server-0.4.4/bin/rustic-server` and `moto-venv/bin/moto_server`.
//! $CKAN_VAULT_RUSTIC_SERVER and $CKAN_VAULT_MOTO_SERVER override the paths.

mod common;

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::pg::unique;
use common::site::{Site, stderr};

fn cache() -> PathBuf {
    std::env::var_os("CKAN_VAULT_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/work/cache/test"))
}

fn tool(var: &str, default: &str) -> PathBuf {
    let p = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| cache().join(default));
    assert!(
        p.exists(),
        "{} is missing: run `bash .ci/run install` (or set ${var})",
        p.display()
    );
    p
}

/// A server process on 127.0.0.1, killed when dropped.
struct Server {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Server {
    fn start(mut cmd: Command, port: u16, log: PathBuf) -> Server {
        let f = std::fs::File::create(&log).unwrap();
        // With CI=true in its environment (as CI runs us), rustic_server 0.4.4 stopped
        // answering part-way through the test; the servers do not need it.
        cmd.env_remove("CI")
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f);
        let child = cmd.spawn().expect("start server");
        let mut s = Server { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = s.child.try_wait() {
                panic!(
                    "server exited ({status}): {}",
                    std::fs::read_to_string(&s.log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        s.port = port;
        s
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Points the site's config at another vault (`extra` goes after the repository line).
fn use_vault(site: &Site, repository: &str, extra: &str) {
    let text = std::fs::read_to_string(&site.config).unwrap();
    let local = format!("repository = \"{}\"", site.vault.display());
    assert!(text.contains(&local));
    let text = text.replace(&local, &format!("repository = \"{repository}\""));
    std::fs::write(&site.config, format!("{text}\n{extra}\n")).unwrap();
}

/// init, backup, snapshots, restore and the lock on whatever vault the config names.
fn exercise(site: &Site, what: &str) {
    let t = Instant::now();
    site.ok(&["init"]);
    let b = site.json(&["backup"]);
    assert_eq!(b["ok"], true, "{b}");
    let b2 = site.json(&["backup"]);
    assert!(b2["data_added"].as_u64().unwrap() < b["data_added"].as_u64().unwrap());
    assert_eq!(site.backups().len(), 2);
    let c = site.cluster();
    let (main, ds) = (unique("r_main"), unique("r_ds"));
    let out = site.path().join(unique("storage"));
    let r = site.json(&[
        "restore",
        "latest",
        "--db",
        &c.url(&main),
        "--datastore-db",
        &c.url(&ds),
        "--storage",
        out.to_str().unwrap(),
    ]);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(c.fingerprint(&site.main_db), c.fingerprint(&main));
    assert_eq!(c.fingerprint(&site.datastore_db), c.fingerprint(&ds));
    // The run lock's object lives in this vault too.
    let owner = Command::new("sleep").arg("300").spawn().unwrap();
    site.ok(&["hook", "pre-backup", "--owner-pid", &owner.id().to_string()]);
    let o = site.cli_env(
        &["forget", "--prune"],
        &[("CKAN_VAULT_RETENTION_KEEP_LAST", "1")],
    );
    assert!(
        stderr(&o).contains("another run holds the lock"),
        "{what}: {}",
        stderr(&o)
    );
    site.ok(&["hook", "finally", "--owner-pid", &owner.id().to_string()]);
    let mut owner = owner;
    let _ = owner.kill();
    let _ = owner.wait();
    let check = site.json(&["check"]);
    assert_eq!(check["ok"], true, "{check}");
    eprintln!(
        "{what}: init, 2 backups, restore, lock, check in {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

/// The two servers run one at a time: each picks a free port and binds it a moment later,
/// and with both starting at once one of them could be given the other's port.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn rest_server_vault_and_append_only_mode() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let site = Site::new(80);
    let bin = tool(
        "CKAN_VAULT_RUSTIC_SERVER",
        "rustic-server-0.4.4/bin/rustic-server",
    );
    let data = site.path().join("rest-data");
    std::fs::create_dir(&data).unwrap();
    // No per-repository ACL: the server's defaults apply (a user owns the repository of
    // its own name; --append-only then forbids deletes). --no-auth accepts any password.
    std::fs::write(data.join("acl.toml"), "").unwrap();
    let serve = |append_only: bool| {
        let port = free_port();
        let mut c = Command::new(&bin);
        c.args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--no-auth",
            "--path",
        ])
        .arg(&data);
        if append_only {
            c.arg("--append-only");
        }
        Server::start(c, port, site.path().join(unique("rest.log")))
    };
    let server = serve(false);
    let url = format!("rest:http://ckan:pw@127.0.0.1:{}/ckan", server.port);
    use_vault(&site, &url, "");
    exercise(&site, "REST");
    let ids: Vec<String> = site
        .backups()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    drop(server);

    // Append-only: backups work.
    let server = serve(true);
    let url2 = format!("rest:http://ckan:pw@127.0.0.1:{}/ckan", server.port);
    let text = std::fs::read_to_string(&site.config)
        .unwrap()
        .replace(&url, &url2);
    std::fs::write(&site.config, text).unwrap();
    site.ok(&["backup"]);
    assert_eq!(site.backups().len(), 3);
    // rustic_server 0.4.4 checks only "append" access for DELETE, so its --append-only does
    // not stop deletes (restic's rest-server answers 403). A per-repository ACL that denies
    // deletes does: there, forget is refused with one clear line and nothing is lost.
    drop(server);
    std::fs::write(data.join("acl.toml"), "[ckan]\nckan = \"Read\"\n").unwrap();
    let server = serve(true);
    let url3 = format!("rest:http://ckan:pw@127.0.0.1:{}/ckan", server.port);
    let text = std::fs::read_to_string(&site.config)
        .unwrap()
        .replace(&url2, &url3);
    std::fs::write(&site.config, text).unwrap();
    let o = site.cli_env(&["forget"], &[("CKAN_VAULT_RETENTION_KEEP_LAST", "1")]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("refused to delete snapshots") && err.contains("append-only"),
        "{err}"
    );
    assert_eq!(err.matches("ckan-vault: error:").count(), 1, "{err}");
    let left: Vec<String> = site
        .backups()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left.len(), 3);
    assert!(ids.iter().all(|i| left.contains(i)), "{left:?}");
    // The lock objects of the runs above were removed again (allowed in append-only mode).
    let locks = data.join("ckan/locks");
    let n = std::fs::read_dir(&locks).map(|d| d.count()).unwrap_or(0);
    assert_eq!(n, 0, "lock objects left in {}", locks.display());
    // restic reads the vault through the same server.
    let o = Command::new("restic")
        .args([
            "-r",
            &url3,
            "--no-cache",
            "--no-lock",
            "snapshots",
            "--json",
        ])
        .env("RESTIC_PASSWORD_FILE", &site.password_file)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}\nserver log:\n{}",
        stderr(&o),
        std::fs::read_to_string(&server.log).unwrap_or_default()
    );
    let list: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list.len(), 3);
}

#[test]
fn s3_vault_on_a_local_s3_server() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let site = Site::new(80);
    let bin = tool("CKAN_VAULT_MOTO_SERVER", "moto-venv/bin/moto_server");
    let port = free_port();
    let mut c = Command::new(&bin);
    c.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
    let server = Server::start(c, port, site.path().join("moto.log"));
    // moto accepts any credentials; the bucket must exist before the vault.
    let endpoint = format!("http://127.0.0.1:{}", server.port);
    let bucket = unique("ckan").replace('_', "-");
    let r = reqwest::blocking::Client::new()
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text());
    let secret = site.path().join("s3-secret");
    std::fs::write(&secret, "test-secret-key\n").unwrap();
    use_vault(
        &site,
        "opendal:s3",
        &format!(
            "[repository.options]\nbucket = \"{bucket}\"\nroot = \"/vault\"\nregion = \"us-east-1\"\n\
             endpoint = \"{endpoint}\"\naccess_key_id = \"testing\"\n"
        ),
    );
    // The secret key comes from a file, not from the config.
    let text = std::fs::read_to_string(&site.config).unwrap().replacen(
        "[repository]\n",
        &format!(
            "[repository]\nsecret-access-key-file = \"{}\"\n",
            secret.display()
        ),
        1,
    );
    std::fs::write(&site.config, text).unwrap();
    exercise(&site, "S3");
    // Retention works on S3 (deletes are allowed there).
    let o = site.cli_env(&["forget"], &[("CKAN_VAULT_RETENTION_KEEP_LAST", "1")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(site.backups().len(), 1);
    // restic reads the same bucket.
    let o = Command::new("restic")
        .args([
            "-r",
            &format!("s3:{endpoint}/{bucket}/vault"),
            "--no-cache",
            "--no-lock",
            "snapshots",
            "--json",
        ])
        .env("RESTIC_PASSWORD_FILE", &site.password_file)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "test-secret-key")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let list: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list.len(), 1);
}
