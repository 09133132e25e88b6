//! The secrets audit (issue 7): while a backup, a restore and a drill run, every process on
//! the machine is watched through /proc: no vault password and no database password may
//! appear in any argv, nor in the environment of any process but ckan-vault itself (where
//! the operator put it). Database passwords reach libpq only through a 0600 PGPASSFILE in
//! a 0700 directory that is gone afterwards. Logs at -vv and error messages never contain a
//! secret, and temporary directories are 0700 and removed on every exit path but SIGKILL.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::pg::unique;
use common::site::{Site, bin, stderr};
use common::tokens::{TokenEnv, TokenSite};

/// What the watcher saw.
#[derive(Debug, Default)]
struct Seen {
    /// `pid comm: where` for every secret found where it must not be.
    leaks: Vec<String>,
    /// Programs ckan-vault started for PostgreSQL (recognised by the PGTZ it sets), plus
    /// `postgres-server` for a scratch cluster's server.
    programs: BTreeSet<String>,
    /// PGPASSFILE paths seen, with the file's and its directory's modes at that moment, and
    /// whether the file held the database password.
    passfiles: BTreeSet<(PathBuf, u32, u32, bool)>,
    polls: usize,
}

struct Watcher {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Seen>,
}

fn read_proc(pid: &str, what: &str) -> Option<Vec<u8>> {
    std::fs::read(format!("/proc/{pid}/{what}")).ok()
}

/// Every process on the machine but `me`, as pid, `comm`, `cmdline` and `environ`.
fn processes(me: &str) -> Vec<(String, String, Vec<u8>, Vec<u8>)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
            continue;
        }
        let Some(cmdline) = read_proc(&pid, "cmdline") else {
            continue;
        };
        let environ = read_proc(&pid, "environ").unwrap_or_default();
        let comm = String::from_utf8_lossy(&read_proc(&pid, "comm").unwrap_or_default())
            .trim()
            .to_string();
        v.push((pid, comm, cmdline, environ));
    }
    v
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Watches every process until stopped. `db_password` is what a PGPASSFILE below `tmp`
/// (the TMPDIR of the runs watched) should hold.
fn watch(secrets: Vec<String>, db_password: String, tmp: PathBuf) -> Watcher {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let me = std::process::id().to_string();
    let handle = std::thread::spawn(move || {
        let mut seen = Seen::default();
        let ckan_vault = bin().as_bytes().to_vec();
        while !flag.load(Ordering::Relaxed) {
            seen.polls += 1;
            for (pid, comm, cmdline, environ) in processes(&me) {
                let is_ckan_vault = cmdline.starts_with(&ckan_vault);
                for s in &secrets {
                    if contains(&cmdline, s) {
                        seen.leaks.push(format!(
                            "{pid} {comm}: argv {:?}",
                            String::from_utf8_lossy(&cmdline).replace('\0', " ")
                        ));
                    }
                    // ckan-vault's own environment holds what the operator put there. A
                    // child between fork and exec still has it too, so a finding counts
                    // only if the process still has it once it runs another program.
                    if !is_ckan_vault && contains(&environ, s) && still_leaks(&pid, s, &ckan_vault)
                    {
                        let vars: Vec<String> = environ
                            .split(|b| *b == 0)
                            .filter(|v| contains(v, s))
                            .map(|v| {
                                let v = String::from_utf8_lossy(v);
                                v.split('=').next().unwrap_or_default().to_string()
                            })
                            .collect();
                        seen.leaks
                            .push(format!("{pid} {comm}: environment {vars:?}"));
                    }
                }
                let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
                if vars.contains(&&b"PGTZ=UTC"[..]) && !is_ckan_vault {
                    seen.programs.insert(comm.clone());
                }
                if contains(&cmdline, "ckan-vault-cluster.") && comm == "postgres" {
                    seen.programs.insert("postgres-server".into());
                }
                for v in &vars {
                    if let Some(p) = v.strip_prefix(b"PGPASSFILE=") {
                        let path = PathBuf::from(String::from_utf8_lossy(p).into_owned());
                        if !path.starts_with(&tmp) {
                            continue; // another test's run
                        }
                        let (Ok(f), Ok(d)) = (
                            std::fs::metadata(&path),
                            std::fs::metadata(path.parent().unwrap()),
                        ) else {
                            continue;
                        };
                        let holds =
                            std::fs::read_to_string(&path).is_ok_and(|t| t.contains(&db_password));
                        seen.passfiles.insert((
                            path,
                            f.permissions().mode() & 0o777,
                            d.permissions().mode() & 0o777,
                            holds,
                        ));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        seen
    });
    Watcher { stop, handle }
}

/// Whether `pid`, looked at again a moment later, runs a program other than ckan-vault with
/// `secret` in its environment.
fn still_leaks(pid: &str, secret: &str, ckan_vault: &[u8]) -> bool {
    std::thread::sleep(Duration::from_millis(3));
    let environ = read_proc(pid, "environ").unwrap_or_default();
    let cmdline = read_proc(pid, "cmdline").unwrap_or_default();
    !cmdline.is_empty() && !cmdline.starts_with(ckan_vault) && contains(&environ, secret)
}

impl Watcher {
    fn finish(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

/// A site whose databases are reached as a role with a recognisable password (the test
/// cluster trusts its socket, so the password is not checked, but it travels all the same)
/// and whose vault has a recognisable password.
struct SecretSite {
    site: Site,
    db_password: String,
    vault_password: String,
    role: String,
    tmp: PathBuf,
}

impl SecretSite {
    fn new() -> Self {
        let site = Site::new(150);
        let c = site.cluster();
        let role = unique("secrole");
        let db_password = format!("{}-7731", unique("PgPw-Zebra"));
        let vault_password = format!("{}-4417", unique("VaultPw-Quokka"));
        c.sql(
            "postgres",
            &format!("CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{db_password}'"),
        );
        let url = |db: &str| {
            format!(
                "postgresql://{role}:{db_password}@/{db}?host={}&port={}",
                c.dir.display(),
                c.port
            )
        };
        std::fs::write(
            &site.ini,
            format!(
                "[app:main]\nuse = egg:ckan\nSECRET_KEY = test-secret-key\n\
                 sqlalchemy.url = {}\nckan.datastore.write_url = {}\n\
                 ckan.site_url = https://ckan.test.invalid\nckan.storage_path = {}\n",
                url(&site.main_db),
                url(&site.datastore_db),
                site.storage.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&site.ini, std::fs::Permissions::from_mode(0o600)).unwrap();
        // A new vault with the recognisable password.
        let vault = site.path().join("secret-vault");
        let pass = site.path().join("secret-vault.pass");
        std::fs::write(&pass, format!("{vault_password}\n")).unwrap();
        std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(
            &site.config,
            format!(
                "[repository]\nrepository = \"{}\"\npassword-file = \"{}\"\n\n[ckan]\nini = \"{}\"\n\n\
                 [database]\nadmin-url = \"{}\"\n",
                vault.display(),
                pass.display(),
                site.ini.display(),
                url("postgres")
            ),
        )
        .unwrap();
        let tmp = site.path().join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        let s = SecretSite {
            site,
            db_password,
            vault_password,
            role,
            tmp,
        };
        let out = s.run(&["init"], &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        s
    }

    fn secrets(&self) -> Vec<String> {
        vec![self.db_password.clone(), self.vault_password.clone()]
    }

    fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut c = Command::new(bin());
        c.args(args)
            .env("CKAN_VAULT_CONFIG", &self.site.config)
            .env("TMPDIR", &self.tmp)
            .env_remove("CKAN_VAULT_PASSWORD")
            .env_remove("CKAN_INI")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            c.env(k, v);
        }
        c
    }

    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.command(args, env).output().unwrap()
    }

    /// Runs ckan-vault under the watcher; checks output, watcher findings and TMPDIR.
    fn audited(&self, args: &[&str], env: &[(&str, &str)], expect_success: bool) -> Seen {
        let w = watch(self.secrets(), self.db_password.clone(), self.tmp.clone());
        std::thread::sleep(Duration::from_millis(20));
        let out = self.run(args, env);
        std::thread::sleep(Duration::from_millis(20));
        let seen = w.finish();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.success(), expect_success, "{args:?}:\n{text}");
        for s in self.secrets() {
            assert!(!text.contains(&s), "{args:?} printed a secret:\n{text}");
        }
        let leaks: BTreeSet<&String> = seen.leaks.iter().collect();
        assert!(leaks.is_empty(), "{args:?}: {leaks:#?}");
        assert!(seen.polls > 10, "{args:?}: the watcher barely ran");
        for (path, file_mode, dir_mode, _) in &seen.passfiles {
            assert_eq!(*file_mode, 0o600, "{}", path.display());
            assert_eq!(*dir_mode, 0o700, "{}", path.display());
            assert!(!path.exists(), "{} outlived the run", path.display());
            assert!(!path.parent().unwrap().exists());
        }
        self.assert_tmp_empty(args);
        seen
    }

    fn assert_tmp_empty(&self, what: &[&str]) {
        let left: Vec<_> = std::fs::read_dir(&self.tmp)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "{what:?} left {left:?}");
    }
}

#[test]
fn no_secret_in_any_argv_environment_log_or_leftover_file() {
    let s = SecretSite::new();
    let c = s.site.cluster();
    let db_url = format!(
        "postgresql://{}:{}@/{}?host={}&port={}",
        s.role,
        s.db_password,
        s.site.main_db,
        c.dir.display(),
        c.port
    );

    // Backup with the secrets in files (ckan.ini, the password file), at -vv.
    let seen = s.audited(&["backup", "-vv"], &[], true);
    for p in ["psql", "pg_dump", "pg_dumpall"] {
        assert!(
            seen.programs.contains(p),
            "never saw {p}: {:?}",
            seen.programs
        );
    }
    assert!(
        seen.passfiles.iter().any(|(_, _, _, holds)| *holds),
        "no PGPASSFILE with the password was seen: {:?}",
        seen.passfiles
    );

    // Backup with the secrets in ckan-vault's environment: children must not inherit them.
    s.audited(
        &["backup", "-vv"],
        &[
            ("CKAN_VAULT_PASSWORD", &s.vault_password),
            ("CKAN_VAULT_CKAN_DATABASE_URL", &db_url),
            ("CKAN_SQLALCHEMY_URL", &db_url),
        ],
        true,
    );

    // Restore (the target URL has no password; the vault password comes from the
    // environment) into databases and a storage directory.
    let target = |db: &str| {
        format!(
            "postgresql://{}@/{db}?host={}&port={}",
            s.role,
            c.dir.display(),
            c.port
        )
    };
    let out_dir = s.site.path().join("restored");
    let seen = s.audited(
        &[
            "restore",
            "latest",
            "-vv",
            "--db",
            &target(&unique("r_main")),
            "--datastore-db",
            &target(&unique("r_ds")),
            "--storage",
            out_dir.to_str().unwrap(),
        ],
        &[("CKAN_VAULT_PASSWORD", &s.vault_password)],
        true,
    );
    assert!(seen.programs.contains("pg_restore"), "{:?}", seen.programs);

    // Drill: a scratch cluster whose server runs as another user (postgres, when root).
    let seen = s.audited(
        &["drill", "-vv"],
        &[("CKAN_VAULT_PASSWORD", &s.vault_password)],
        true,
    );
    assert!(seen.programs.contains("pg_restore"), "{:?}", seen.programs);
    assert!(
        seen.programs.contains("postgres-server"),
        "{:?}",
        seen.programs
    );

    // Error paths: a pg_dump that fails after its stream, a drill of nothing, a wrong
    // vault password. No secret in the messages, nothing left in TMPDIR.
    let bindir = s.site.fake_bindir(r#"REAL "$@"; exit 3"#);
    s.audited(
        &["backup", "-vv"],
        &[("CKAN_VAULT_DATABASE_BIN_DIR", bindir.to_str().unwrap())],
        false,
    );
    s.audited(
        &["drill", "-vv", "deadbeef"],
        &[("CKAN_VAULT_PASSWORD", &s.vault_password)],
        false,
    );
    let wrong = format!("{}-wrong", s.vault_password);
    let out = s.run(&["snapshots", "-vv"], &[("CKAN_VAULT_PASSWORD", &wrong)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!stderr(&out).contains(&wrong), "{}", stderr(&out));
    s.assert_tmp_empty(&["wrong password"]);
}

#[test]
fn error_messages_never_echo_a_password() {
    let site = Site::new(10);
    std::fs::set_permissions(&site.password_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    site.ok(&["backup"]);
    let secret = "Zz9-hunter2-Secret";
    // Passwords with characters that must be %-escaped in a URL make it invalid; the message
    // shows the URL without them.
    for url in [
        format!("postgresql://ckan:{secret}/x@db/ckan"),
        format!("postgresql://ckan:{secret}?x@db/ckan"),
        format!("postgresql://ckan:{secret}@db:5432:1/ckan"),
        format!("postgresql://ckan:{secret}%zz@db/ckan"),
        format!("mysql://ckan:{secret}@db/ckan"),
        format!("ckan:{secret}@db/ckan"),
        format!("host=db password={secret} dbname=ckan"),
        format!("postgresql://ckan:{secret}@db"),
        format!("postgresql://ckan:{secret}@127.0.0.1:1/ckan"),
    ] {
        for (args, env) in [
            (
                vec!["backup", "-vv"],
                vec![("CKAN_VAULT_CKAN_DATABASE_URL", url.as_str())],
            ),
            (
                vec!["restore", "latest", "-vv", "--db", url.as_str()],
                vec![],
            ),
            (vec!["drill", "-vv", "--scratch", url.as_str()], vec![]),
        ] {
            let out = site.cli_env(&args, &env);
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert_ne!(out.status.code(), Some(0), "{args:?} {env:?}: {text}");
            assert!(
                !text.contains(secret) && !text.contains("hunter2"),
                "{args:?} {env:?} printed the password:\n{text}"
            );
        }
    }
}

#[test]
fn sigkill_leaves_only_private_files_behind() {
    let s = SecretSite::new();
    // Killed while pg_dump runs (a pg_dump that takes its time, so the kill surely lands
    // then): Drop cannot run, so the PGPASSFILE directory stays. It is 0700 and the file
    // 0600 (documented in docs/reliability.md).
    let slow = s.site.fake_bindir(r#"sleep 5; exec REAL "$@""#);
    let mut child = s
        .command(
            &["backup"],
            &[("CKAN_VAULT_DATABASE_BIN_DIR", slow.to_str().unwrap())],
        )
        .spawn()
        .unwrap();
    let t = Instant::now();
    let passfile = loop {
        let found = walkdir::WalkDir::new(&s.tmp)
            .into_iter()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with("pgpass"));
        if let Some(f) = found {
            break f.path().to_path_buf();
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no PGPASSFILE appeared"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the backup ended too soon"
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    std::thread::sleep(Duration::from_millis(1000));
    child.kill().unwrap();
    child.wait().unwrap();
    let f = std::fs::metadata(&passfile).unwrap();
    let d = std::fs::metadata(passfile.parent().unwrap()).unwrap();
    assert_eq!(f.permissions().mode() & 0o777, 0o600);
    assert_eq!(d.permissions().mode() & 0o777, 0o700);
    assert_eq!(f.uid(), d.uid());
    // And the vault itself is closed to other users.
    let v = std::fs::metadata(s.site.path().join("secret-vault")).unwrap();
    assert_eq!(
        v.permissions().mode() & 0o077,
        0,
        "vault directory is open to others"
    );
    // The next run is not confused by the leftover.
    let out = s.run(&["backup"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A process as seen in /proc: `comm`, `cmdline` and `environ`.
type Process = (String, Vec<u8>, Vec<u8>);

/// Every distinct argv and environment of the machine's processes (but this test process)
/// while `run` runs; the secrets of a token issue (the new token, the file's password) are
/// only known afterwards, so everything is kept and searched then.
fn record_processes<T>(run: impl FnOnce() -> T) -> (T, BTreeSet<Process>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let me = std::process::id().to_string();
    let handle = std::thread::spawn(move || {
        let mut seen = BTreeSet::new();
        let mut polls = 0;
        while !flag.load(Ordering::Relaxed) {
            polls += 1;
            for (_, comm, cmdline, environ) in processes(&me) {
                seen.insert((comm, cmdline, environ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        (seen, polls)
    });
    std::thread::sleep(Duration::from_millis(20));
    let result = run();
    std::thread::sleep(Duration::from_millis(20));
    stop.store(true, Ordering::Relaxed);
    let (seen, polls) = handle.join().unwrap();
    assert!(polls > 10, "the watcher barely ran");
    (result, seen)
}

/// `token issue` through the Action API and through the `ckan` command: the sysadmin's
/// token, the vault password, the new token and the file's password appear in no argv, in
/// no environment but ckan-vault's own, and in none of its output at -vv; the files that
/// hold them are 0600.
#[test]
fn token_issue_keeps_tokens_and_passwords_out_of_argv_environment_and_logs() {
    use secrecy::SecretString;
    let c = common::ckan::ckan();
    let vault_password = format!("{}-9913", unique("VaultPw-Okapi"));
    let env = TokenEnv::with_password(&TokenSite::http(), &vault_password);
    let run = |args: &[&str]| env.run(args);
    let dir = &env.dir;
    let admin_token = c.admin_token();

    for via in ["api", "cli"] {
        let user = unique(&format!("sec{via}"));
        let email = format!("{user}@example.org");
        let pw_out = format!("{user}.pw");
        let args = [
            "token",
            "issue",
            &user,
            "--create-user",
            "--email",
            &email,
            "--via",
            via,
            "--password-out",
            &pw_out,
            "-vv",
        ];
        let (out, seen) = record_processes(|| run(&args));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{via}: {text}");
        let file = dir.path().join(format!("{user}.dcor-access"));
        let pw_file = dir.path().join(&pw_out);
        for f in [&file, &pw_file] {
            let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", f.display());
        }
        let zip_password = std::fs::read_to_string(&pw_file)
            .unwrap()
            .trim()
            .to_string();
        let access = ckan_vault::token::access_file::AccessFile::from_bytes(
            &std::fs::read(&file).unwrap(),
            &SecretString::from(zip_password.clone()),
        )
        .unwrap();
        let token = secrecy::ExposeSecret::expose_secret(&access.api_key).to_string();
        assert!(token.len() > 100, "not a JWT");
        let secrets = [
            ("the sysadmin's token", admin_token.as_str()),
            ("the vault password", vault_password.as_str()),
            ("the new token", token.as_str()),
            ("the file's password", zip_password.as_str()),
        ];
        let ckan_vault = bin().as_bytes().to_vec();
        let mut programs = BTreeSet::new();
        for (comm, cmdline, environ) in &seen {
            if cmdline.starts_with(&ckan_vault) {
                programs.insert("ckan-vault".to_string());
            } else if contains(cmdline, "user\0token\0add") || contains(cmdline, "user\0add") {
                programs.insert("ckan".to_string());
            }
            for (what, s) in secrets {
                assert!(
                    !contains(cmdline, s),
                    "{via}: {what} in the argv of {comm}: {:?}",
                    String::from_utf8_lossy(cmdline).replace('\0', " ")
                );
                assert!(
                    cmdline.starts_with(&ckan_vault) || !contains(environ, s),
                    "{via}: {what} in the environment of {comm}"
                );
            }
        }
        assert!(programs.contains("ckan-vault"), "{via}: {programs:?}");
        if via == "cli" {
            assert!(
                programs.contains("ckan"),
                "never saw the ckan command: {programs:?}"
            );
        }
        for (what, s) in secrets {
            assert!(
                !text.contains(s),
                "{via}: {what} in the output at -vv:\n{text}"
            );
        }
        // Nothing but the two outputs (0600) and the vault was left in the directory.
        let left: BTreeSet<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(left.is_empty(), "{via}: {left:?}");
    }
}
