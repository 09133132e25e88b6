//! The fault matrix (issue 7): each fault makes the run fail with a clear message, the vault
//! keeps every earlier snapshot, Debian's `restic check --read-data` passes afterwards, and
//! the next backup succeeds.
//!
//! Faults already covered in tests/backup_restore.rs (pg_dump exiting non-zero half-way,
//! truncating its stream while claiming success, a non-zero exit after a complete stream,
//! SIGKILL of pg_dump, the database dropped before pg_dump connects) are not repeated here.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ckan_vault::vault::{Kind, SnapshotMeta};
use common::pg::unique;
use common::site::{Site, bin, stderr};

// ---------------------------------------------------------------------------------------
// helpers

/// A fresh site whose vault password file is 0600 (else every run warns about it, which
/// would break the one-line checks).
fn new_site(packages: u32) -> Site {
    let site = Site::new(packages);
    std::fs::set_permissions(&site.password_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    site
}

/// Debian's restic on the site's vault (no cache, no lock: it must not change the vault).
fn restic(vault: &Path, password_file: &Path, args: &[&str]) -> Output {
    Command::new("restic")
        .args(["-r", vault.to_str().unwrap(), "--no-cache", "--no-lock"])
        .args(args)
        .env("RESTIC_PASSWORD_FILE", password_file)
        .stdin(Stdio::null())
        .output()
        .expect("restic is not installed: apt-get install restic (or run `bash .ci/run`)")
}

/// `restic check --read-data` passes (every pack that an index names is complete and
/// decrypts, and every snapshot's tree is there), and so does `ckan-vault check
/// --read-data`. `env` points ckan-vault at the vault when it is not the site's.
fn assert_vault_clean(site: &Site, vault: &Path, env: &[(&str, &str)], when: &str) {
    let out = restic(vault, &site.password_file, &["check", "--read-data"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("no errors were found"),
        "restic check --read-data after {when}:\n{text}"
    );
    let out = site.cli_env(&["check", "--read-data"], env);
    assert!(
        out.status.success(),
        "ckan-vault check --read-data after {when}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
}

fn backup_ids(site: &Site) -> Vec<String> {
    site.backups()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

/// Every id in `earlier` is still a backup snapshot of the vault, and its manifest reads.
fn assert_keeps(site: &Site, earlier: &[String]) {
    let now = backup_ids(site);
    for id in earlier {
        assert!(now.contains(id), "snapshot {id} is gone: {now:?}");
        let out = site.cli(&["dump", id, "manifest.json"]);
        assert!(out.status.success(), "{id}: {}", stderr(&out));
    }
}

/// Runs a backup that must fail with exit code `code`, naming `expect`, on one line, and
/// leave no new snapshot of any kind.
fn failing_backup(site: &Site, env: &[(&str, &str)], code: i32, expect: &str) -> String {
    let before = site.json(&["snapshots", "--all"])["snapshots"]
        .as_array()
        .unwrap()
        .len();
    let out = site.cli_env(&["backup"], env);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(code), "{err}");
    assert!(err.contains(expect), "expected {expect:?} in: {err}");
    let last = err.trim().lines().last().unwrap_or_default().to_string();
    assert!(last.starts_with("ckan-vault: error: "), "{err}");
    eprintln!("[fault] {last}");
    let after = site.json(&["snapshots", "--all"])["snapshots"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(after, before, "a failed backup left a snapshot: {err}");
    last
}

fn psql_conninfo(site: &Site, db: &str) -> String {
    let c = site.cluster();
    format!(
        "host={} port={} user=postgres dbname={db}",
        c.dir.display(),
        c.port
    )
}

fn spawn_cli(site: &Site, args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut c = Command::new(bin());
    c.args(args)
        .env("CKAN_VAULT_CONFIG", &site.config)
        .env_remove("CKAN_VAULT_PASSWORD")
        .env_remove("CKAN_INI")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().expect("spawn ckan-vault")
}

/// Files below `dir` whose name matches `pred`.
fn files_below(dir: &Path, pred: impl Fn(&Path) -> bool) -> Vec<PathBuf> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file() && pred(e.path()))
        .map(|e| e.path().to_path_buf())
        .collect()
}

/// pg_dump processes still working on database `db`.
fn pg_dumps_of(db: &str) -> Vec<String> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains("pg_dump") && c.contains(db) {
                v.push(c);
            }
        }
    }
    v
}

fn random_file(path: &Path, bytes: usize) {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut buf)
        .unwrap();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, buf).unwrap();
}

// ---------------------------------------------------------------------------------------
// pg_dump faults

#[test]
fn pg_dump_refused_at_start_by_the_server() {
    let site = new_site(30);
    let c = site.cluster();
    let good = site.json(&["backup"])["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    // The site's URL names a role the server does not know: the preflight stops the run
    // before anything is written (exit 2: fix the configuration).
    let nobody = format!(
        "postgresql://nosuchrole:pw@/{}?host={}&port={}",
        site.main_db,
        c.dir.display(),
        c.port
    );
    let line = failing_backup(
        &site,
        &[("CKAN_VAULT_CKAN_DATABASE_URL", &nobody)],
        2,
        "role \"nosuchrole\" does not exist",
    );
    assert!(
        line.contains("cannot connect to postgresql://nosuchrole@"),
        "{line}"
    );
    assert!(!line.contains(":pw@"), "{line}");
    // The preflight passes, then pg_dump itself is refused (its credentials changed between
    // the two, as when a password is rotated during the run): exit 1, nothing kept.
    let swapped =
        site.fake_bindir(r#"args=("${@//user=postgres/user=nosuchrole}"); exec REAL "${args[@]}""#);
    failing_backup(
        &site,
        &[("CKAN_VAULT_DATABASE_BIN_DIR", swapped.to_str().unwrap())],
        1,
        "role \"nosuchrole\" does not exist",
    );
    assert_keeps(&site, std::slice::from_ref(&good));
    assert_vault_clean(&site, &site.vault, &[], "refused pg_dumps");
    site.ok(&["backup"]);
    assert_eq!(site.backups().len(), 2);
}

#[test]
fn pg_dump_connection_terminated_or_database_dropped_mid_stream() {
    let site = new_site(30);
    let c = site.cluster();
    let good = site.json(&["backup"])["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    // A database large enough that pg_dump is still streaming after 300 kB.
    let big = unique("big");
    c.create_db(&big);
    c.sql(
        &big,
        "CREATE TABLE t AS SELECT g, md5(g::text) AS h, repeat(md5((g * 7)::text), 4) AS pad \
         FROM generate_series(1, 200000) g",
    );
    let big_url = c.url(&big);
    // pg_terminate_backend of pg_dump's own backend once 300 kB went through.
    let admin = psql_conninfo(&site, "postgres");
    let terminate = site.fake_bindir(&format!(
            "set -o pipefail\n\
             [[ \"$*\" == *{big}* ]] || exec REAL \"$@\"\n\
             REAL \"$@\" | {{ dd bs=100000 count=3 iflag=fullblock status=none; \
             PSQL -X -q -A -t -d \"{admin}\" -c \"SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = '{big}' AND application_name = 'pg_dump'\" >&2; cat; }}"
        ),
    );
    let line = failing_backup(
        &site,
        &[
            ("CKAN_VAULT_DATABASE_BIN_DIR", terminate.to_str().unwrap()),
            ("CKAN_VAULT_CKAN_DATABASE_URL", &big_url),
        ],
        1,
        "no snapshot kept",
    );
    assert!(line.contains("pg_dump"), "{line}");
    assert!(line.contains("terminat"), "{line}");
    // DROP DATABASE … WITH (FORCE) while pg_dump streams it.
    let drop = site.fake_bindir(&format!(
        "set -o pipefail\n\
             [[ \"$*\" == *{big}* ]] || exec REAL \"$@\"\n\
             REAL \"$@\" | {{ dd bs=100000 count=3 iflag=fullblock status=none; \
             PSQL -X -q -d \"{admin}\" -c 'DROP DATABASE \"{big}\" WITH (FORCE)' >&2; cat; }}"
    ));
    let line = failing_backup(
        &site,
        &[
            ("CKAN_VAULT_DATABASE_BIN_DIR", drop.to_str().unwrap()),
            ("CKAN_VAULT_CKAN_DATABASE_URL", &big_url),
        ],
        1,
        "no snapshot kept",
    );
    assert!(line.contains("pg_dump"), "{line}");
    assert_eq!(
        c.sql(
            "postgres",
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{big}'")
        ),
        "0"
    );
    assert_keeps(&site, std::slice::from_ref(&good));
    assert_vault_clean(&site, &site.vault, &[], "terminated pg_dumps");
    site.ok(&["backup"]);
    assert_eq!(site.backups().len(), 2);
}

// ---------------------------------------------------------------------------------------
// ckan-vault killed

/// When to SIGKILL a running backup.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// This long after the start.
    After(Duration),
    /// As soon as the vault holds `n` more pack files than before (packs being written).
    Packs(usize),
    /// As soon as a new index file appears (packs done, the snapshot not yet saved).
    Index,
}

/// Starts a backup and SIGKILLs it at `at`; returns whether it was killed (false: it had
/// finished first) and how long it ran.
fn kill_backup(site: &Site, at: KillAt, tmp: &Path) -> (bool, Duration) {
    let count = |sub: &str| files_below(&site.vault.join(sub), |_| true).len();
    let packs0 = count("data");
    let index0 = count("index");
    let t0 = Instant::now();
    let mut child = spawn_cli(site, &["backup"], &[("TMPDIR", tmp.to_str().unwrap())]);
    loop {
        if child.try_wait().unwrap().is_some() {
            return (false, t0.elapsed());
        }
        let fire = match at {
            KillAt::After(d) => t0.elapsed() >= d,
            KillAt::Packs(n) => count("data") >= packs0 + n,
            KillAt::Index => count("index") > index0,
        };
        if fire {
            child.kill().unwrap(); // SIGKILL
            let status = child.wait().unwrap();
            // It may have ended on its own just before the signal.
            let killed = std::os::unix::process::ExitStatusExt::signal(&status) == Some(9);
            return (killed, t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn sigkill_at_several_points_of_a_backup_keeps_the_vault_consistent() {
    let t = Instant::now();
    let site = new_site(1000);
    eprintln!("site: {:?}", t.elapsed());
    let tmp = site.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let mut results = Vec::new();
    // Into an empty vault first: everything is new data, packs are written all the time.
    for at in [KillAt::After(Duration::from_millis(100)), KillAt::Packs(1)] {
        let (killed, ran) = kill_backup(&site, at, &tmp);
        results.push(format!("{at:?}: killed={killed} after {ran:?}"));
        assert_vault_clean(&site, &site.vault, &[], &format!("{at:?}"));
        if killed {
            // Nothing that a restore would take for a backup.
            assert_eq!(site.backups().len(), 0, "{at:?}");
            let out = site.cli(&["dump", "latest", "manifest.json"]);
            assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
            assert!(
                stderr(&out).contains("no complete backup"),
                "{}",
                stderr(&out)
            );
        }
    }
    let first = site.json(&["backup"]);
    let good = first["snapshot"].as_str().unwrap().to_string();
    let secs = first["duration_seconds"].as_f64().unwrap();
    let mut good_manifest = site.ok(&["dump", &good, "manifest.json"]);
    // With an earlier backup in place: each attempt brings 4 MB of new, incompressible
    // storage data so that it writes packs too.
    let mut completed = vec![good.clone()];
    for (i, at) in [
        KillAt::After(Duration::from_secs_f64(secs * 0.3)),
        KillAt::Packs(1),
        KillAt::Index,
        KillAt::After(Duration::from_secs_f64(secs * 0.9)),
    ]
    .into_iter()
    .enumerate()
    {
        random_file(
            &site.storage.join(format!("resources/new/{i}.bin")),
            4 << 20,
        );
        let (killed, ran) = kill_backup(&site, at, &tmp);
        results.push(format!("{at:?}: killed={killed} after {ran:?}"));
        assert_vault_clean(&site, &site.vault, &[], &format!("{at:?}"));
        let ids = backup_ids(&site);
        if killed && ids.len() == completed.len() {
            // The earlier backups are what `latest` means.
            assert_eq!(site.ok(&["dump", "latest", "manifest.json"]), good_manifest);
        } else {
            // It finished (or was killed after saving its complete snapshot): a good backup,
            // and from now on what `latest` means.
            completed = ids;
            good_manifest = site.ok(&["dump", "latest", "manifest.json"]);
        }
        assert_keeps(&site, &completed);
        // pg_dump does not outlive its reader by long.
        let t = Instant::now();
        while !pg_dumps_of(&site.main_db).is_empty() {
            assert!(t.elapsed() < Duration::from_secs(10), "pg_dump lingers");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    eprintln!("kill points: {results:#?}");
    // Runs that ended on their own before the signal are allowed, but a test in which no
    // kill landed would prove nothing.
    let landed = results.iter().filter(|r| r.contains("killed=true")).count();
    assert!(
        landed >= 2,
        "only {landed} of the kills landed: {results:#?}"
    );
    // What a SIGKILL leaves in TMPDIR: the private PGPASSFILE directories (0700) that only
    // Drop removes (documented in docs/reliability.md).
    for e in std::fs::read_dir(&tmp).unwrap().flatten() {
        let mode = e.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", e.path().display());
    }
    // The next backup succeeds, and a drill of `latest` passes.
    let t = Instant::now();
    site.ok(&["backup"]);
    eprintln!("backup: {:?}", t.elapsed());
    let t = Instant::now();
    let out = site.cli(&["drill", "--json"]);
    eprintln!("drill: {:?}", t.elapsed());
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{rep}");
    assert_vault_clean(&site, &site.vault, &[], "the final backup");
}

/// Makes two backups, each with 1 MB of data of its own that the next one no longer has:
/// once the older ones are forgotten, a prune has packs to delete or repack.
fn two_backups_with_garbage(site: &Site, round: &mut u32) -> String {
    let mut last = String::new();
    for _ in 0..2 {
        *round += 1;
        let f = site.storage.join(format!("resources/tmp/{round}.bin"));
        random_file(&f, 1 << 20);
        last = site.json(&["backup"])["snapshot"]
            .as_str()
            .unwrap()
            .to_string();
        std::fs::remove_file(&f).unwrap();
    }
    last
}

#[test]
fn sigkill_during_forget_and_prune_keeps_the_vault_consistent() {
    let site = new_site(100);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&site.config)
        .unwrap();
    writeln!(f, "\n[retention]\nkeep-last = 1").unwrap();
    drop(f);
    let tmp = site.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let mut round = 0;
    // A complete forget --prune first, to know how long one takes.
    let newest = two_backups_with_garbage(&site, &mut round);
    let t = Instant::now();
    let done = site.json(&["forget", "--prune"]);
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(done["removed"], 1, "{done}");
    assert_eq!(backup_ids(&site), vec![newest]);
    let mut results = Vec::new();
    for frac in [0.1, 0.35, 0.6, 0.85] {
        let newest = two_backups_with_garbage(&site, &mut round);
        let before = backup_ids(&site);
        let at = Duration::from_secs_f64(secs * frac);
        let mut child = spawn_cli(
            &site,
            &["forget", "--prune"],
            &[("TMPDIR", tmp.to_str().unwrap())],
        );
        std::thread::sleep(at);
        let killed = child.try_wait().unwrap().is_none();
        child.kill().unwrap();
        child.wait().unwrap();
        results.push(format!("{at:?}: killed={killed}"));
        assert_vault_clean(
            &site,
            &site.vault,
            &[],
            &format!("forget --prune killed at {at:?}"),
        );
        // Every backup still listed reads back whole (its dump matches the manifest), and
        // the newest is always among them.
        let now = backup_ids(&site);
        assert!(now.contains(&newest), "{at:?}: {now:?}");
        assert!(now.iter().all(|id| before.contains(id)), "{at:?}");
        for id in &now {
            let out = site.cli(&["dump", id, "db/ckan.pgdump"]);
            assert!(out.status.success(), "{at:?} {id}: {}", stderr(&out));
        }
        // The next forget --prune takes over the dead run's lock and finishes the job.
        site.ok(&["forget", "--prune"]);
        assert_eq!(backup_ids(&site), vec![newest.clone()], "{at:?}");
    }
    assert_vault_clean(&site, &site.vault, &[], "the forgets after the kills");
    eprintln!("forget --prune ({secs:.2} s) kill points: {results:#?}");
    let landed = results.iter().filter(|r| r.contains("killed=true")).count();
    assert!(landed >= 1, "no kill landed: {results:#?}");
    site.ok(&["backup"]);
}

/// Switches the vault's append-only mode (rustic's `config --set-append-only`): snapshots
/// can be added but not deleted, as used against ransomware.
fn set_append_only(site: &Site, on: bool) {
    use rustic_core::{ConfigOptions, Credentials, Repository, RepositoryOptions};
    let backends = rustic_backend::BackendOptions::default()
        .repository(site.vault.display().to_string())
        .to_backends()
        .unwrap();
    let repo = Repository::new(&RepositoryOptions::default().no_cache(true), &backends).unwrap();
    let mut repo = repo
        .open(&Credentials::password(common::site::VAULT_PASSWORD))
        .unwrap();
    let mut opts = ConfigOptions::default();
    opts.set_append_only = Some(on);
    repo.apply_config(&opts).unwrap();
}

#[test]
fn a_snapshot_left_without_manifest_is_never_taken_for_a_backup() {
    let site = new_site(40);
    let good = site.json(&["backup"])["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    let good_manifest = site.ok(&["dump", &good, "manifest.json"]);
    // A backup whose pg_dump fails after a complete stream is saved by the archiver and
    // then deleted. In an append-only vault the delete is refused, which leaves the same
    // vault as a crash between the two: a snapshot without a manifest.
    set_append_only(&site, true);
    let late = site.fake_bindir("REAL \"$@\"; exit 3");
    let out = site.cli_env(
        &["backup"],
        &[("CKAN_VAULT_DATABASE_BIN_DIR", late.to_str().unwrap())],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("exit status: 3"), "{err}");
    let last = err.trim().lines().last().unwrap();
    assert!(
        last.contains("could not delete the incomplete snapshot")
            && last.contains("never used as a backup")
            && !last.contains("no snapshot kept"),
        "{err}"
    );
    let ids = backup_ids(&site);
    assert_eq!(ids.len(), 2, "{err}");
    let orphan = ids.into_iter().find(|i| *i != good).unwrap();
    // `latest` skips it, naming it; by id it is refused.
    let out = site.cli(&["dump", "latest", "manifest.json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), good_manifest);
    assert!(stderr(&out).contains(&orphan[..8]), "{}", stderr(&out));
    let out = site.cli(&[
        "restore",
        &orphan,
        "--db",
        &site.cluster().url(&unique("x")),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not a complete backup"),
        "{}",
        stderr(&out)
    );
    // restore latest and drill latest use the earlier good backup.
    let target = unique("after_orphan");
    let r = site.json(&["restore", "latest", "--db", &site.cluster().url(&target)]);
    assert_eq!(r["snapshot"], good.as_str(), "{r}");
    let out = site.cli(&["drill", "--json"]);
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{rep}");
    assert_eq!(rep["snapshot"], good.as_str());
    assert_vault_clean(&site, &site.vault, &[], "a manifest-less snapshot");
    // Backups go on in the append-only vault, and `latest` is the new one.
    let next = site.json(&["backup"])["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    let out = site.cli(&["dump", "latest~1", "manifest.json"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        good_manifest,
        "{next}"
    );
    set_append_only(&site, false);
}

// ---------------------------------------------------------------------------------------
// the vault's filesystem

/// A tmpfs mounted on a directory, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .expect("mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs needs root: {}",
            stderr(&out)
        );
        Self(dir.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn disk_full_on_the_vault_filesystem() {
    let site = new_site(20);
    let fs = Tmpfs::mount(&site.path().join("small"), "8m");
    let vault = fs.0.join("vault");
    let env = [("CKAN_VAULT_REPOSITORY_REPOSITORY", vault.to_str().unwrap())];
    let ok = |args: &[&str]| {
        let out = site.cli_env(args, &env);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    ok(&["init"]);
    let first: serde_json::Value = serde_json::from_str(&ok(&["backup", "--json"])).unwrap();
    let good = first["snapshot"].as_str().unwrap().to_string();
    // 12 MB of incompressible storage data cannot fit into what is left of 8 MB.
    random_file(&site.storage.join("resources/big/blob.bin"), 12 << 20);
    let out = site.cli_env(&["backup"], &env);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    eprintln!("[disk full] {err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains("no snapshot kept"), "{err}");
    assert_eq!(
        err.trim().lines().filter(|l| l.contains("error:")).count(),
        1,
        "{err}"
    );
    let list: serde_json::Value =
        serde_json::from_str(&ok(&["snapshots", "--all", "--json"])).unwrap();
    let ids: Vec<&str> = list["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![good.as_str()]);
    ok(&["dump", &good, "manifest.json"]);
    // A pack that another writer thread had under way may stay behind half-written as
    // `data/XX/ID-tmp-` (the process ended before rustic's clean-up): no index or snapshot
    // names it, so the vault is consistent; it only holds space until deleted.
    let tmp_files = files_below(&vault, |p| p.to_string_lossy().contains("-tmp-"));
    eprintln!("[disk full] left behind: {tmp_files:?}");
    assert_vault_clean(&site, &vault, &env, "a full disk");
    // With room again, the next backup succeeds.
    fs.resize("64m");
    ok(&["backup"]);
    assert_vault_clean(&site, &vault, &env, "the next backup");
}

// ---------------------------------------------------------------------------------------
// damage in the vault

#[test]
fn a_corrupted_pack_is_detected_and_never_restored() {
    let site = new_site(200);
    let c = site.cluster();
    let first = site.json(&["backup"])["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    let before: Vec<PathBuf> = files_below(&site.vault.join("data"), |_| true);
    c.sql(&site.main_db, &site.sample.churn_sql(5.0, 1));
    random_file(&site.storage.join("resources/new/x.bin"), 300 << 10);
    let second = site.json(&["backup"])["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    // Flip bytes in every pack the second backup added.
    let new_packs: Vec<PathBuf> = files_below(&site.vault.join("data"), |p| {
        !before.contains(&p.to_path_buf())
    });
    assert!(!new_packs.is_empty());
    for p in &new_packs {
        let mut bytes = std::fs::read(p).unwrap();
        let n = bytes.len();
        for at in [n / 5, n / 2, n * 4 / 5] {
            bytes[at] ^= 0x5a;
        }
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    // restic check --read-data reports it.
    let out = restic(&site.vault, &site.password_file, &["check", "--read-data"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("pack"), "{text}");
    // And so does ckan-vault's own check.
    let out = site.cli(&["check", "--read-data"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("FAILED"), "{report}");
    // restore of the damaged backup fails loudly, and leaves no data behind (one
    // transaction), and `latest` does not quietly fall back to the first backup.
    for spec in ["latest", second.as_str()] {
        let target = unique("from_damaged");
        let out = site.cli(&["restore", spec, "--db", &c.url(&target), "--json"]);
        let err = stderr(&out);
        eprintln!("restore {spec} of a damaged backup: {err}");
        assert_eq!(out.status.code(), Some(1), "{spec}: {err}");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        assert_ne!(json["ok"], true, "{spec}: {json}");
        assert!(err.contains("the vault may be damaged"), "{spec}: {err}");
        let tables = c.sql(
            "postgres",
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{target}'"),
        );
        if tables == "1" {
            assert!(
                c.pg.list_tables(&c.target(&target)).unwrap().is_empty(),
                "{spec}"
            );
        }
    }
    // drill of it fails, naming the damage.
    let out = site.cli(&["drill", "--json"]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    eprintln!("drill of a damaged backup: {text}");
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("the vault may be damaged"), "{text}");
    // The first backup does not share the damaged packs and still reads back exactly.
    let out = site.cli(&["dump", &first, "db/ckan.pgdump"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn wrong_password_missing_vault_and_newer_format_are_one_line_usage_errors() {
    let site = new_site(20);
    site.ok(&["backup"]);
    let one_line_usage = |args: &[&str], env: &[(&str, &str)], expect: &str| {
        let out = site.cli_env(args, env);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.contains(expect),
            "{args:?}: expected {expect:?} in {err}"
        );
        err
    };
    let target = site.cluster().url(&unique("never"));
    let commands: [&[&str]; 5] = [
        &["backup"],
        &["restore", "latest", "--db", &target],
        &["drill"],
        &["dump", "latest", "manifest.json"],
        &["snapshots"],
    ];
    for args in commands {
        let err = one_line_usage(
            args,
            &[("CKAN_VAULT_PASSWORD", "Tr0ub4dor&3-wrong")],
            "wrong password",
        );
        assert!(!err.contains("Tr0ub4dor"), "{err}");
        one_line_usage(
            args,
            &[("CKAN_VAULT_REPOSITORY_REPOSITORY", "/nonexistent/vault")],
            "ckan-vault init",
        );
        // A directory that exists but holds no vault.
        one_line_usage(
            args,
            &[(
                "CKAN_VAULT_REPOSITORY_REPOSITORY",
                site.storage.to_str().unwrap(),
            )],
            "ckan-vault init",
        );
    }
    // A backup written by a newer ckan-vault (manifest format 99).
    let vault = site.open_vault();
    let reader = vault.reader().unwrap();
    let snap = reader.snapshots(Kind::Backup).unwrap().pop().unwrap();
    let manifest = reader.read(&snap, "manifest.json", 1 << 20).unwrap();
    drop(reader);
    let mut m: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    m["format"] = 99.into();
    let newer = vault
        .save_files(
            &SnapshotMeta::new(Kind::Backup, snap.label.clone()),
            vec![("manifest.json".into(), serde_json::to_vec(&m).unwrap())],
        )
        .unwrap()
        .id
        .to_hex()
        .to_string();
    drop(vault);
    for args in [
        vec!["restore", newer.as_str(), "--db", &target],
        vec!["restore", "latest", "--db", &target],
        vec!["drill", "latest"],
        vec!["dump", "latest", "manifest.json"],
    ] {
        one_line_usage(&args, &[], "format 99 is newer");
    }
    assert_vault_clean(&site, &site.vault, &[], "usage errors");
}

// ---------------------------------------------------------------------------------------
// concurrent runs

/// Two backups started together, and a `forget --prune` started while a backup runs: the
/// lock lets the first through and refuses the other with one line naming the holder and
/// what to do; nothing is half-written, the vault stays clean, and the next run succeeds.
#[test]
fn concurrent_runs_are_serialised_by_the_lock() {
    let site = new_site(200);
    site.ok(&["backup"]);
    let earlier = backup_ids(&site);
    let lock = ckan_vault::vault::lock::state_file(
        &ckan_vault::vault::lock::state_dir(),
        site.vault.to_str().unwrap(),
        "lock",
    );
    // A pg_dump that takes its time keeps the first run inside its lock.
    let bindir = site.fake_bindir(r#"sleep 3; exec REAL "$@""#);
    let env = [
        ("CKAN_VAULT_DATABASE_BIN_DIR", bindir.to_str().unwrap()),
        ("CKAN_VAULT_RETENTION_KEEP_LAST", "1"),
    ];
    for second in [&["backup"][..], &["forget", "--prune"][..]] {
        let first = spawn_cli(&site, &["backup"], &env);
        let t = Instant::now();
        while !lock.exists() {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "no lock file appeared"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let out = site.cli_env(second, &env);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{second:?}: {err}");
        assert!(err.contains("another run holds the lock"), "{err}");
        assert!(err.contains(&format!("pid {}", first.id())), "{err}");
        assert_eq!(err.matches("ckan-vault: error:").count(), 1, "{err}");
        let first = first.wait_with_output().unwrap();
        assert!(first.status.success(), "{}", stderr(&first));
        assert!(!lock.exists(), "the lock outlived its run");
    }
    // Both first runs made their backup; the refused forget removed nothing.
    let now = backup_ids(&site);
    assert_eq!(now.len(), 3, "{now:?}");
    assert!(now.contains(&earlier[0]));
    assert_vault_clean(&site, &site.vault, &[], "refused concurrent runs");
    // With the lock free, the forget runs.
    let out = site.cli_env(
        &["forget", "--prune", "--json"],
        &[("CKAN_VAULT_RETENTION_KEEP_LAST", "1")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let done: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(done["removed"], 2, "{done}");
}

/// Another host's `forget --prune` holds an exclusive lock object in the shared vault: a
/// backup here is refused in one line (its new snapshot could reference data the prune is
/// deleting) and saves nothing; once that lock is gone, the backup runs.
#[test]
fn a_backup_while_another_host_prunes_is_refused() {
    use ckan_vault::vault::VaultConfig;
    use ckan_vault::vault::lock::{LockRequest, Owner, RunLock};
    let site = new_site(20);
    site.ok(&["backup"]);
    let before = backup_ids(&site);
    let vault = site.open_vault();
    let cfg = VaultConfig {
        repository: site.vault.display().to_string(),
        options: Default::default(),
        password: common::site::VAULT_PASSWORD.into(),
        cache_dir: None,
    };
    let prune = RunLock::acquire(
        &vault,
        &cfg,
        LockRequest {
            owner: Owner {
                pid: 4242,
                pid_start: None,
                host: "prune-host.example".into(),
            },
            command: "ckan-vault forget --prune".into(),
            exclusive: true,
            // The other host's lock file is on the other host.
            state_dir: site.path().join("other-host-state"),
        },
    )
    .unwrap();
    let out = site.cli(&["backup"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("prune-host.example") && err.contains("exclusive"),
        "{err}"
    );
    assert_eq!(err.matches("ckan-vault: error:").count(), 1, "{err}");
    assert_eq!(
        backup_ids(&site),
        before,
        "a backup was saved beside a prune"
    );
    prune.release().unwrap();
    site.ok(&["backup"]);
    assert_eq!(backup_ids(&site).len(), before.len() + 1);
    assert_vault_clean(&site, &site.vault, &[], "after the refused backup");
}
