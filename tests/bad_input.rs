//! The bad-input matrix (issue 7): malformed ckan.ini and ckan-vault.toml, bad database
//! URLs, flags out of range, snapshots and paths that do not exist. Each case must end
//! within a bound, without a panic, with a clear one-line error and a non-zero exit code
//! (2 when the input is at fault).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ckan_vault::ckan::ini::CkanIni;
use ckan_vault::vault::{Kind, SnapshotMeta};
use common::pg::unique;
use common::site::{Site, bin};

/// Longest any single bad-input run may take.
const BOUND: Duration = Duration::from_secs(60);

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn new_site(packages: u32) -> Site {
    let site = Site::new(packages);
    std::fs::set_permissions(&site.password_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    site
}

/// Runs ckan-vault with the site's config, killing it after [`BOUND`].
fn run(site: &Site, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut c = Command::new(bin());
    c.args(args)
        .env("CKAN_VAULT_CONFIG", &site.config)
        .env_remove("CKAN_VAULT_PASSWORD")
        .env_remove("CKAN_INI")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    let t = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if t.elapsed() > BOUND {
            child.kill().unwrap();
            panic!("ckan-vault {args:?} {env:?} did not end within {BOUND:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The run failed with `code`, printed exactly one line on stderr (the error) naming every
/// string in `expect`, and did not panic.
fn rejects(site: &Site, args: &[&str], env: &[(&str, &str)], code: i32, expect: &[&str]) -> String {
    let r = run(site, args, env);
    let what = format!("ckan-vault {args:?} {env:?}");
    assert!(
        !r.stderr.contains("panicked"),
        "{what} panicked:\n{}",
        r.stderr
    );
    assert_eq!(r.code, Some(code), "{what}:\n{}{}", r.stdout, r.stderr);
    let lines: Vec<&str> = r.stderr.trim().lines().collect();
    assert_eq!(lines.len(), 1, "{what}: not one line:\n{}", r.stderr);
    assert!(
        lines[0].starts_with("ckan-vault: error: "),
        "{what}: {}",
        r.stderr
    );
    for e in expect {
        assert!(
            lines[0].contains(e),
            "{what}: expected {e:?} in\n{}",
            lines[0]
        );
    }
    lines[0].to_string()
}

fn write(site: &Site, name: &str, bytes: &[u8]) -> PathBuf {
    let p = site.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Runs `f` in a thread and fails if it takes longer than `limit` (a hang).
fn bounded<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("did not end within {limit:?}"))
}

// ---------------------------------------------------------------------------------------
// ckan.ini

#[test]
fn malformed_ckan_ini() {
    let site = new_site(10);
    let url = site.cluster().url(&site.main_db);
    let cases: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        (
            "no [app:main]",
            b"[DEFAULT]\ndebug = false\n[server:main]\nport = 5000\n".to_vec(),
            vec!["no [app:main] section"],
        ),
        (
            "duplicate key",
            format!("[app:main]\nsqlalchemy.url = {url}\nckan.site_url = x\nsqlalchemy.url = {url}\n")
                .into_bytes(),
            vec!["appears twice", ":4:", "line 2", "sqlalchemy.url"],
        ),
        (
            "duplicate key differing in case",
            format!("[app:main]\nsqlalchemy.url = {url}\nSQLAlchemy.URL = {url}\n").into_bytes(),
            vec!["appears twice"],
        ),
        (
            "non-UTF-8",
            b"[app:main]\nckan.site_title = Caf\xe9\n".to_vec(),
            vec![":2:", "not UTF-8"],
        ),
        (
            "key before a section",
            format!("sqlalchemy.url = {url}\n[app:main]\n").into_bytes(),
            vec![":1:", "before any [section]"],
        ),
        (
            "unclosed section header",
            b"[app:main\nsqlalchemy.url = x\n".to_vec(),
            vec![":1:", "closing `]`"],
        ),
        (
            "a line that is not key = value",
            b"[app:main]\njust some words\n".to_vec(),
            vec![":2:", "key = value"],
        ),
        (
            "no sqlalchemy.url",
            b"[app:main]\nckan.site_url = https://x.example\n".to_vec(),
            vec!["sqlalchemy.url", "missing"],
        ),
        (
            "empty sqlalchemy.url",
            b"[app:main]\nsqlalchemy.url =\n".to_vec(),
            vec!["sqlalchemy.url", "missing"],
        ),
        (
            "undefined interpolation",
            b"[app:main]\nsqlalchemy.url = postgresql://u@h/%(dbname)s\n".to_vec(),
            vec!["%(dbname)s", "not defined"],
        ),
        (
            "an interpolation loop",
            b"[app:main]\nsqlalchemy.url = %(a)s\na = %(b)s\nb = %(a)s\n".to_vec(),
            vec!["nest"],
        ),
        (
            "URL without a database",
            format!(
                "[app:main]\nsqlalchemy.url = postgresql://postgres:pw@/?host={}&port={}\n",
                site.cluster().dir.display(),
                site.cluster().port
            )
            .into_bytes(),
            vec!["sqlalchemy.url", "no database name", "postgres:***@"],
        ),
        (
            "datastore URL without a database",
            format!("[app:main]\nsqlalchemy.url = {url}\nckan.datastore.write_url = postgresql://w:pw@localhost\n")
                .into_bytes(),
            vec!["ckan.datastore.write_url", "no database name"],
        ),
        (
            "a MySQL URL",
            b"[app:main]\nsqlalchemy.url = mysql://ckan:s3cret@db/ckan\n".to_vec(),
            vec!["unsupported scheme `mysql`", "ckan:***@db"],
        ),
        ("empty file", Vec::new(), vec!["no [app:main] section"]),
        (
            "binary garbage",
            (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect(),
            vec!["not UTF-8"],
        ),
    ];
    for (what, bytes, expect) in cases {
        let ini = write(&site, &format!("{}.ini", unique("bad")), &bytes);
        let line = rejects(
            &site,
            &["backup"],
            &[("CKAN_VAULT_CKAN_INI", ini.to_str().unwrap())],
            2,
            &expect,
        );
        assert!(
            !line.contains("s3cret") && !line.contains(":pw@"),
            "{what}: {line}"
        );
    }
    // Not a file at all.
    rejects(
        &site,
        &["backup"],
        &[("CKAN_VAULT_CKAN_INI", "/nonexistent/ckan.ini")],
        2,
        &["/nonexistent/ckan.ini"],
    );
    rejects(
        &site,
        &["backup"],
        &[("CKAN_VAULT_CKAN_INI", site.path().to_str().unwrap())],
        2,
        &["cannot read"],
    );
    assert!(site.backups().is_empty());
}

#[test]
fn ckan_ini_parser_is_bounded_on_hostile_input() {
    // A "billion laughs" through %(name)s: ten levels, each referring to the next ten times.
    let mut text = String::from("[app:main]\nsqlalchemy.url = %(x0)s\n");
    for i in 0..10 {
        text.push_str(&format!(
            "x{i} = {}\n",
            format!("%(x{})s", i + 1).repeat(10)
        ));
    }
    text.push_str("x10 = abcdefghij\n");
    let err = bounded(Duration::from_secs(10), move || {
        CkanIni::parse(Path::new("laughs.ini"), text.as_bytes()).map(|_| ())
    });
    let err = err
        .expect_err("an exponential expansion must be refused")
        .to_string();
    assert!(err.contains("laughs.ini"), "{err}");
    // The same with empty leaves: no output grows, only the work.
    let mut text = String::from("[app:main]\nsqlalchemy.url = %(x0)s\n");
    for i in 0..10 {
        text.push_str(&format!(
            "x{i} = {}\n",
            format!("%(x{})s", i + 1).repeat(10)
        ));
    }
    text.push_str("x10 =\n");
    let r = bounded(Duration::from_secs(10), move || {
        CkanIni::parse(Path::new("empty-laughs.ini"), text.as_bytes()).map(|_| ())
    });
    assert!(r.is_err());
    // A 20 MB line, ten thousand sections, deep continuation lines: parsed or refused, fast.
    let long = format!(
        "[app:main]\nsqlalchemy.url = postgresql://u@h/{}\n",
        "d".repeat(20 << 20)
    );
    bounded(Duration::from_secs(10), move || {
        let _ = CkanIni::parse(Path::new("long.ini"), long.as_bytes());
    });
    let mut many = String::new();
    for i in 0..10_000 {
        many.push_str(&format!("[s{i}]\nk = v\n"));
    }
    many.push_str("[app:main]\nsqlalchemy.url = postgresql://u@h/d\n");
    let ini = bounded(Duration::from_secs(10), move || {
        CkanIni::parse(Path::new("many.ini"), many.as_bytes()).unwrap()
    });
    assert_eq!(ini.get("sqlalchemy.url"), Some("postgresql://u@h/d"));
    let cont = format!("[app:main]\nckan.plugins = a\n{}", "  b\n".repeat(100_000));
    bounded(Duration::from_secs(10), move || {
        CkanIni::parse(Path::new("cont.ini"), cont.as_bytes()).unwrap();
    });
    // CRLF line endings and a %% escape are fine.
    let ini = CkanIni::parse(
        Path::new("crlf.ini"),
        b"[app:main]\r\nsqlalchemy.url = postgresql://u@h/d\r\nx = 100%%\r\n",
    )
    .unwrap();
    assert_eq!(ini.get("sqlalchemy.url"), Some("postgresql://u@h/d"));
    assert_eq!(ini.get("x"), Some("100%"));
}

// ---------------------------------------------------------------------------------------
// ckan-vault.toml

#[test]
fn malformed_ckan_vault_toml() {
    let site = new_site(10);
    let good = std::fs::read_to_string(&site.config).unwrap();
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "unknown key",
            good.replace("password-file", "pasword-file"),
            vec!["pasword-file"],
        ),
        (
            "unknown section",
            format!("{good}\n[retension]\nkeep-last = 3\n"),
            vec!["retension"],
        ),
        (
            "wrong type",
            format!("{good}\n[retention]\nkeep-last = \"three\"\n"),
            vec!["keep-last", "three"],
        ),
        (
            "negative count",
            format!("{good}\n[retention]\nkeep-daily = -1\n"),
            vec!["keep-daily"],
        ),
        (
            "out of range",
            format!("{good}\n[retention]\nkeep-weekly = 99999999999\n"),
            vec!["keep-weekly"],
        ),
        (
            "a section that is a value",
            format!("repository = \"/x\"\n{good}"),
            vec!["repository"],
        ),
        (
            "bad TOML",
            format!("{good}\n[database\n"),
            vec![".toml", "line 11", "unclosed table"],
        ),
        (
            "duplicate key",
            format!("{good}\n[drill]\nstorage-sample = 5\nstorage-sample = 6\n"),
            vec!["storage-sample"],
        ),
        (
            "storage sample out of range",
            format!("{good}\n[drill]\nstorage-sample = 250.0\n"),
            vec!["storage-sample", "250"],
        ),
        (
            "storage sample not a number",
            format!("{good}\n[drill]\nstorage-sample = nan\n"),
            vec!["storage-sample", "NaN"],
        ),
    ];
    for (what, text, expect) in cases {
        let path = site.path().join(format!("{}.toml", unique("cfg")));
        std::fs::write(&path, &text).unwrap();
        let args: &[&str] = if what.starts_with("storage sample") {
            &["drill"]
        } else {
            &["backup"]
        };
        let line = rejects(
            &site,
            args,
            &[("CKAN_VAULT_CONFIG", path.to_str().unwrap())],
            2,
            &expect,
        );
        assert!(!line.contains("correct horse"), "{what}: {line}");
    }
    // Not UTF-8, a directory, missing.
    let latin1 = write(&site, "latin1.toml", b"[ckan]\nsite = \"caf\xe9\"\n");
    rejects(
        &site,
        &["backup"],
        &[("CKAN_VAULT_CONFIG", latin1.to_str().unwrap())],
        2,
        &["latin1.toml"],
    );
    rejects(
        &site,
        &["backup"],
        &[("CKAN_VAULT_CONFIG", site.path().to_str().unwrap())],
        2,
        &["cannot read config file"],
    );
    rejects(
        &site,
        &["backup", "--config", "/nonexistent/ckan-vault.toml"],
        &[],
        2,
        &["/nonexistent/ckan-vault.toml"],
    );
    // Environment variables of the wrong type name the variable's key.
    rejects(
        &site,
        &["backup"],
        &[("CKAN_VAULT_RETENTION_KEEP_LAST", "many")],
        2,
        &["keep-last"],
    );
    // Password sources that give nothing.
    let empty = write(&site, "empty.pass", b"");
    std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o600)).unwrap();
    rejects(
        &site,
        &["snapshots"],
        &[(
            "CKAN_VAULT_REPOSITORY_PASSWORD_FILE",
            empty.to_str().unwrap(),
        )],
        2,
        &["empty.pass", "is empty"],
    );
    rejects(
        &site,
        &["snapshots"],
        &[("CKAN_VAULT_REPOSITORY_PASSWORD_FILE", "/nonexistent/pass")],
        2,
        &["/nonexistent/pass"],
    );
    let cfg = site.path().join("cmd.toml");
    std::fs::write(
        &cfg,
        good.replace(
            &format!("password-file = \"{}\"", site.password_file.display()),
            "password-command = [\"sh\", \"-c\", \"exit 7\"]",
        ),
    )
    .unwrap();
    rejects(
        &site,
        &["snapshots"],
        &[("CKAN_VAULT_CONFIG", cfg.to_str().unwrap())],
        2,
        &["password command `sh` failed", "7"],
    );
    std::fs::write(
        &cfg,
        good.replace(
            &format!("password-file = \"{}\"", site.password_file.display()),
            "password-command = []",
        ),
    )
    .unwrap();
    rejects(
        &site,
        &["snapshots"],
        &[("CKAN_VAULT_CONFIG", cfg.to_str().unwrap())],
        2,
        &["empty"],
    );
}

// ---------------------------------------------------------------------------------------
// database URLs

#[test]
fn bad_database_urls() {
    let site = new_site(10);
    site.ok(&["backup"]);
    let c = site.cluster();
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            "mysql://ckan:s3cret@db/ckan".into(),
            vec!["unsupported scheme"],
        ),
        ("not a url".into(), vec!["no scheme"]),
        (
            "postgresql://ckan:s3cret@db:notaport/ckan".into(),
            vec!["bad port"],
        ),
        (
            "postgresql://ckan:s3cret@db:99999/ckan".into(),
            vec!["bad port"],
        ),
        (
            "postgresql://ckan:s3%zzcret@db/ckan".into(),
            vec!["%-escape"],
        ),
        (
            "postgresql://ckan:s3cret@[::1/ckan".into(),
            vec!["unclosed"],
        ),
        (
            "postgresql://ckan:s3cret@db".into(),
            vec!["no database name"],
        ),
        (
            "postgresql://ckan:s3cret@db/".into(),
            vec!["no database name"],
        ),
        (
            "postgresql://ckan:s3cret@db/ckan?password=s3cret&port=x".into(),
            vec!["bad port"],
        ),
    ];
    let target = c.url(&unique("never"));
    for (url, expect) in &cases {
        // As the site's database, as a restore target and as a drill scratch server.
        let line = rejects(
            &site,
            &["backup"],
            &[("CKAN_VAULT_CKAN_DATABASE_URL", url)],
            2,
            expect,
        );
        assert!(
            !line.contains("s3cret") && !line.contains("s3%zz"),
            "{line}"
        );
        let line = rejects(&site, &["restore", "latest", "--db", url], &[], 2, expect);
        assert!(!line.contains("s3cret"), "{line}");
        let line = rejects(
            &site,
            &["restore", "latest", "--db", &target, "--datastore-db", url],
            &[],
            2,
            expect,
        );
        assert!(!line.contains("s3cret"), "{line}");
        if !expect.contains(&"no database name") {
            let line = rejects(&site, &["drill", "--scratch", url], &[], 2, expect);
            assert!(!line.contains("s3cret"), "{line}");
        }
    }
    // A server that does not answer: names the target without the password.
    let line = rejects(
        &site,
        &["backup"],
        &[(
            "CKAN_VAULT_CKAN_DATABASE_URL",
            "postgresql://ckan:s3cret@127.0.0.1:1/ckan",
        )],
        2,
        &["cannot connect to postgresql://ckan@127.0.0.1:1/ckan"],
    );
    assert!(!line.contains("s3cret"), "{line}");
    // A database that does not exist, in the site's cluster.
    let nodb = format!(
        "postgresql://postgres@/{}?host={}&port={}",
        unique("nodb"),
        c.dir.display(),
        c.port
    );
    rejects(
        &site,
        &["backup"],
        &[("CKAN_VAULT_CKAN_DATABASE_URL", &nodb)],
        2,
        &["does not exist"],
    );
    assert_eq!(site.backups().len(), 1);
}

// ---------------------------------------------------------------------------------------
// flags, snapshots and paths

#[test]
fn flags_snapshots_and_paths_that_do_not_exist() {
    let site = new_site(10);
    site.ok(&["backup"]);
    let c = site.cluster();
    let target = c.url(&unique("never"));
    for sample in ["101", "-1", "NaN", "inf", "1e400"] {
        let flag = format!("--storage-sample={sample}");
        rejects(
            &site,
            &["drill", &flag],
            &[],
            2,
            &["--storage-sample", "0 to 100"],
        );
    }
    // Not a number at all: clap's own message (several lines, exit 2).
    let r = run(&site, &["drill", "--storage-sample", "half"], &[]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("invalid value 'half'"), "{}", r.stderr);
    rejects(
        &site,
        &["restore", "latest"],
        &[],
        2,
        &["nothing to restore"],
    );
    // --set: known keys only, never a password on the command line.
    rejects(
        &site,
        &["snapshots", "--set", "jobs=2"],
        &[],
        2,
        &["not a setting"],
    );
    rejects(
        &site,
        &["--set", "database.jobs", "snapshots"],
        &[],
        2,
        &["section.key=VALUE"],
    );
    let line = rejects(
        &site,
        &[
            "snapshots",
            "--set",
            "database.admin-url=postgresql://u:s3cret@h/x",
        ],
        &[],
        2,
        &["holds a password", "CKAN_VAULT_DATABASE_ADMIN_URL"],
    );
    assert!(!line.contains("s3cret"), "{line}");
    rejects(
        &site,
        &[
            "snapshots",
            "--set",
            "repository.repository=/nonexistent/vault",
        ],
        &[],
        2,
        &["no vault at /nonexistent/vault"],
    );
    for spec in [
        "latest~1",
        "latest~x",
        "latest~-1",
        "latest~99999999999999999999999",
    ] {
        rejects(
            &site,
            &["restore", spec, "--db", &target],
            &[],
            2,
            &["no complete backup matches"],
        );
        rejects(
            &site,
            &["drill", spec],
            &[],
            2,
            &["no complete backup matches"],
        );
        rejects(&site, &["dump", spec, "manifest.json"], &[], 2, &[spec]);
    }
    for spec in [
        "deadbeef",
        "",
        "LATEST",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0",
    ] {
        rejects(
            &site,
            &["restore", spec, "--db", &target],
            &[],
            2,
            &["no backup snapshot matches"],
        );
        rejects(
            &site,
            &["drill", spec],
            &[],
            2,
            &["no backup snapshot matches"],
        );
    }
    // A drill snapshot's id is not a backup.
    let out = run(&site, &["drill", "--json"], &[]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let rep: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let drill_id = rep["recorded_as"].as_str().unwrap();
    rejects(
        &site,
        &["restore", drill_id, "--db", &target],
        &[],
        2,
        &["no backup snapshot matches"],
    );
    // Paths inside a snapshot that are not files.
    for path in [
        "no/such/file",
        "../../etc/passwd",
        "manifest.json/x",
        "db/ckan.pgdump/..",
    ] {
        rejects(
            &site,
            &["dump", "latest", path],
            &[],
            1,
            &["has no file", path],
        );
    }
    rejects(
        &site,
        &["dump", "latest", "storage"],
        &[],
        1,
        &["has no file storage"],
    );
    // Restore into a storage directory that is a file.
    let file = write(&site, "a-file", b"x");
    rejects(
        &site,
        &["restore", "latest", "--storage", file.to_str().unwrap()],
        &[],
        1,
        &["a-file"],
    );
    assert_eq!(site.backups().len(), 1);
    // No database was created by any of the refused restores.
    let n = c.sql(
        "postgres",
        &format!(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'never_{}_%'",
            std::process::id()
        ),
    );
    assert_eq!(n, "0");
}

#[test]
fn damaged_manifests_and_checksum_lists_in_a_snapshot() {
    let site = new_site(10);
    site.ok(&["backup"]);
    let vault = site.open_vault();
    let reader = vault.reader().unwrap();
    let snap = reader.snapshots(Kind::Backup).unwrap().pop().unwrap();
    let manifest = reader.read(&snap, "manifest.json", 1 << 20).unwrap();
    drop(reader);
    let save = |files: Vec<(&str, Vec<u8>)>| -> String {
        vault
            .save_files(
                &SnapshotMeta::new(Kind::Backup, snap.label.clone()),
                files.into_iter().map(|(p, b)| (p.to_string(), b)).collect(),
            )
            .unwrap()
            .id
            .to_hex()
            .to_string()
    };
    let garbage = save(vec![("manifest.json", b"{\"format\": 1,".to_vec())]);
    let wrong_type = save(vec![("manifest.json", b"[1, 2, 3]".to_vec())]);
    let extra_field = {
        let mut m: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
        m["surprise"] = true.into();
        save(vec![("manifest.json", serde_json::to_vec(&m).unwrap())])
    };
    let bad_sums = save(vec![
        ("manifest.json", manifest.clone()),
        ("storage.sha256", b"not a checksum line\n".to_vec()),
    ]);
    drop(vault);
    let target = site.cluster().url(&unique("never"));
    for id in [&garbage, &wrong_type, &extra_field] {
        rejects(
            &site,
            &["restore", id, "--db", &target],
            &[],
            1,
            &["manifest is not valid"],
        );
    }
    // `latest` is a damaged manifest: an error, not a quiet fallback to an older backup.
    rejects(
        &site,
        &["dump", "latest~1", "manifest.json"],
        &[],
        1,
        &["manifest is not valid"],
    );
    let dir = site.path().join(unique("restored"));
    rejects(
        &site,
        &["restore", &bad_sums, "--storage", dir.to_str().unwrap()],
        &[],
        1,
        &["storage.sha256"],
    );
}

// ---------------------------------------------------------------------------------------
// token files and escrow recipients, through the command line

/// A ZipCrypto (or plain) zip of `members`, as a hostile or broken token file.
fn token_zip(members: &[(&str, &[u8])], password: Option<&[u8]>) -> Vec<u8> {
    use std::io::Write;
    use zip::unstable::write::FileOptionsExt;
    use zip::write::SimpleFileOptions;
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data) in members {
        let mut o =
            SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        if let Some(p) = password {
            o = o.with_deprecated_encryption(p).unwrap();
        }
        z.start_file(*name, o).unwrap();
        z.write_all(data).unwrap();
    }
    z.finish().unwrap().into_inner()
}

#[test]
fn token_files_that_are_wrong_fail_cleanly_at_the_command_line() {
    let site = new_site(10);
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/token");
    let cert = std::fs::read(fixtures.join("dcor.example.com.pem")).unwrap();
    let key: &[u8] = b"eyJhbGciOiJIUzI1NiJ9.eyJqdGkiOiJhYmMifQ.c2lnbmF0dXJl\n";
    let pw = write(&site, "token.pw", b"pw\n");
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    let bomb = vec![0u8; 10 << 20];
    let good = |extra: &[(&str, &[u8])]| {
        let mut m: Vec<(&str, &[u8])> = vec![("api_key.txt", key), ("server.cert", &cert)];
        m.extend_from_slice(extra);
        token_zip(&m, Some(b"pw"))
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "aes",
            std::fs::read(fixtures.join("aes.dcor-access")).unwrap(),
            "AES",
        ),
        (
            "missing member",
            token_zip(&[("api_key.txt", key)], Some(b"pw")),
            "lacks",
        ),
        (
            "extra member",
            good(&[("notes.txt", b"hi")]),
            "unexpected member",
        ),
        (
            "dot-dot name",
            token_zip(
                &[("../api_key.txt", key), ("server.cert", &cert)],
                Some(b"pw"),
            ),
            "unsafe member name",
        ),
        (
            "absolute name",
            token_zip(
                &[("/api_key.txt", key), ("server.cert", &cert)],
                Some(b"pw"),
            ),
            "unsafe member name",
        ),
        (
            "zip bomb",
            token_zip(&[("api_key.txt", key), ("server.cert", &bomb)], Some(b"pw")),
            "larger than",
        ),
        (
            "not encrypted",
            token_zip(&[("api_key.txt", key), ("server.cert", &cert)], None),
            "not encrypted",
        ),
        (
            "wrong password",
            token_zip(
                &[("api_key.txt", key), ("server.cert", &cert)],
                Some(b"other"),
            ),
            "wrong password",
        ),
        ("empty", Vec::new(), "empty"),
        ("not a zip", b"hello, not a zip".to_vec(), "not a ZIP"),
        ("oversize", vec![b'P'; 4 << 20], "larger than"),
    ];
    for (what, bytes, expect) in cases {
        let file = write(&site, &format!("{}.dcor-access", unique("bad")), &bytes);
        for cmd in ["inspect", "verify"] {
            let r = run(
                &site,
                &[
                    "token",
                    cmd,
                    file.to_str().unwrap(),
                    "--password-file",
                    pw.to_str().unwrap(),
                ],
                &[],
            );
            let said = format!("{}{}", r.stdout, r.stderr);
            assert!(!said.contains("panicked"), "{what} ({cmd}): {said}");
            assert!(
                matches!(r.code, Some(c) if c != 0),
                "{what} ({cmd}): exit {:?}: {said}",
                r.code
            );
            assert!(
                said.contains(expect),
                "{what} ({cmd}): {expect:?} not in {said}"
            );
            assert!(
                !said.contains("eyJhbGci"),
                "{what} ({cmd}): the key shown: {said}"
            );
        }
    }
    // The good file opens (the cases above fail for their own reason).
    let file = write(&site, "good.dcor-access", &good(&[]));
    let r = run(
        &site,
        &[
            "token",
            "inspect",
            file.to_str().unwrap(),
            "--password-file",
            pw.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
}

#[test]
fn malformed_escrow_recipients_are_named() {
    let site = new_site(10);
    let config = std::fs::read_to_string(&site.config).unwrap();
    for (recipients, expect) in [
        ("[\"age1notarecipient\"]", "recipient"),
        ("[\"ssh-ed25519 AAAAnotbase64!\"]", "recipient"),
        ("[\"AGE-SECRET-KEY-1QQQQ\"]", "recipient"),
    ] {
        let bad = write(
            &site,
            &format!("{}.toml", unique("escrow")),
            format!("{config}\n[escrow]\nrecipients = {recipients}\n").as_bytes(),
        );
        let before = site.backups().len();
        let line = rejects(
            &site,
            &["backup", "--config", bad.to_str().unwrap()],
            &[],
            2,
            &[expect],
        );
        assert!(
            !line.contains("AGE-SECRET-KEY-1QQQQ"),
            "a secret key echoed: {line}"
        );
        assert_eq!(
            site.backups().len(),
            before,
            "{recipients}: a backup was made"
        );
    }
}
