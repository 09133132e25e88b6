//! Framework integration: restic runs hooks/restic/ckan-backup.sh for real, the rustic
//! profile's hooks run with the environment and process layout rustic gives them, retention
//! keeps what it must, the run lock excludes a second run, the metrics file parses and is
//! replaced atomically, and pings reach a server on 127.0.0.1.
//!
//! rustic itself is not in Debian and its CLI (rustic-rs, ~500 crates) takes too long to
//! build in CI, so `rustic_like` below replays what rustic 0.11's `backup` does with the
//! profile: the hooks run without a shell as children of one "rustic" process, in rustic's
//! order (run-before; the stdin-commands; run-after or run-failed; run-finally), with
//! RUSTIC_HOOK_TYPE, RUSTIC_ACTION, RUSTIC_BACKUP_LABEL and RUSTIC_BACKUP_TAGS set as rustic
//! sets them (src/config/hooks.rs, src/commands/backup.rs).

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::pg::unique;
use common::site::{Site, bin, now, stderr};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Appends TOML to the site's config.
fn add_config(site: &Site, toml: &str) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&site.config)
        .unwrap();
    writeln!(f, "\n{toml}").unwrap();
}

/// The lock file of this site's vault.
fn lock_file(site: &Site) -> PathBuf {
    ckan_vault::vault::lock::state_file(
        &ckan_vault::vault::lock::state_dir(),
        site.vault.to_str().unwrap(),
        "lock",
    )
}

fn restic(site: &Site, args: &[&str]) -> Output {
    Command::new("restic")
        .args(["-r", site.vault.to_str().unwrap(), "--no-cache"])
        .args(args)
        .env("RESTIC_PASSWORD_FILE", &site.password_file)
        .output()
        .expect("restic is not installed: apt-get install restic (or run `bash .ci/run`)")
}

fn restic_snapshots(site: &Site, tag: &str) -> Vec<serde_json::Value> {
    let o = restic(site, &["--no-lock", "snapshots", "--json", "--tag", tag]);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice::<Vec<serde_json::Value>>(&o.stdout).unwrap()
}

/// A strict reader of the Prometheus text format (only what ckan-vault writes: gauges).
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let mut typed = std::collections::HashSet::new();
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    assert!(
        text.ends_with('\n'),
        "the file must end with a newline: {text:?}"
    );
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (n, _) = rest.split_once(' ').expect("HELP has a text");
            assert!(name_ok(n), "{line}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (n, t) = rest.split_once(' ').expect("TYPE has a type");
            assert!(name_ok(n) && t == "gauge", "{line}");
            assert!(typed.insert(n.to_string()), "TYPE twice: {line}");
        } else {
            let (n, v) = line
                .split_once(' ')
                .unwrap_or_else(|| panic!("bad line {line:?}"));
            assert!(name_ok(n), "{line}");
            assert!(typed.contains(n), "sample before its TYPE: {line}");
            let v: f64 = v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}"));
            assert!(
                out.insert(n.to_string(), v).is_none(),
                "sample twice: {line}"
            );
        }
    }
    out
}

/// A sleeping process to own a lock, killed when dropped.
struct Sleeper(std::process::Child);

impl Sleeper {
    fn new() -> Self {
        Self(Command::new("sleep").arg("600").spawn().unwrap())
    }
    fn pid(&self) -> String {
        self.0.id().to_string()
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn restic_runs_the_script_and_a_failing_dump_leaves_no_snapshot() {
    let site = Site::new(60);
    let metrics = site.path().join("metrics/ckan_vault.prom");
    std::fs::create_dir_all(metrics.parent().unwrap()).unwrap();
    add_config(
        &site,
        &format!("[monitoring]\nmetrics-file = \"{}\"", metrics.display()),
    );
    let script = root().join("hooks/restic/ckan-backup.sh");
    let run = |bindir: Option<&Path>| {
        let mut c = Command::new("bash");
        c.arg(&script)
            .env("CKAN_VAULT_CONFIG", &site.config)
            .env("CKAN_VAULT", bin())
            .env("RESTIC_REPOSITORY", &site.vault)
            .env("RESTIC_PASSWORD_FILE", &site.password_file)
            .env("RESTIC_CACHE_DIR", site.path().join("restic-cache"))
            .env_remove("CKAN_VAULT_PASSWORD")
            .stdin(Stdio::null());
        if let Some(b) = bindir {
            c.env("CKAN_VAULT_DATABASE_BIN_DIR", b);
        }
        c.output().unwrap()
    };
    let t = Instant::now();
    let ok = run(None);
    eprintln!("restic script: {:.1} s", t.elapsed().as_secs_f64());
    assert!(ok.status.success(), "{}", stderr(&ok));
    let snaps = restic_snapshots(&site, "ckan");
    assert_eq!(snaps.len(), 2, "{snaps:?}");
    assert!(!lock_file(&site).exists(), "hook finally released the lock");
    let listed = restic(&site, &["--no-lock", "list", "locks"]);
    assert!(
        String::from_utf8_lossy(&listed.stdout).trim().is_empty(),
        "no lock object left"
    );
    // The stored stream is a complete dump: restore it and compare the rows.
    let dumped = restic(
        &site,
        &[
            "--no-lock",
            "dump",
            "latest",
            "/main.pgdump",
            "--tag",
            "db=main",
        ],
    );
    assert!(dumped.status.success(), "{}", stderr(&dumped));
    assert!(dumped.stdout.starts_with(b"PGDMP"));
    let c = site.cluster();
    let target = unique("from_script");
    c.create_db(&target);
    let mut pr = Command::new(ckan_vault::pg::BinDir::for_major(None).program("pg_restore"))
        .args([
            "--no-owner",
            "-d",
            &format!(
                "host={} port={} user=postgres dbname={target}",
                c.dir.display(),
                c.port
            ),
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    pr.stdin.take().unwrap().write_all(&dumped.stdout).unwrap();
    assert!(pr.wait().unwrap().success());
    assert_eq!(c.fingerprint(&site.main_db), c.fingerprint(&target));
    let m = parse_metrics(&std::fs::read_to_string(&metrics).unwrap());
    assert!(
        m["ckan_vault_last_backup_success_timestamp_seconds"] > now() - 300.0,
        "{m:?}"
    );
    assert!(m["ckan_vault_snapshot_count"] >= 2.0, "{m:?}");

    // Retention reaches the script's snapshots: `hook post-backup` applies [retention] to
    // each database's history (restic's own forget would refuse beside the run lock).
    let ids = |snaps: &[serde_json::Value]| -> Vec<String> {
        snaps
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    };
    let first = ids(&snaps);
    add_config(&site, "[retention]\nkeep-last = 1");
    let again = run(None);
    assert!(again.status.success(), "{}", stderr(&again));
    let snaps = restic_snapshots(&site, "ckan");
    assert_eq!(snaps.len(), 2, "one per database is kept: {snaps:?}");
    assert!(
        ids(&snaps).iter().all(|i| !first.contains(i)),
        "the newer run's snapshots stay: {snaps:?}"
    );
    for db in ["db=main", "db=datastore"] {
        assert_eq!(restic_snapshots(&site, db).len(), 1, "{db}");
    }

    // pg_dump dies half-way: the script fails and restic keeps no snapshot.
    for (what, script) in [
        (
            "exit 1 half-way",
            "set -o pipefail; REAL \"$@\" | head -c 50000; exit 1",
        ),
        ("truncated, exit 0", "REAL \"$@\" | head -c 50000; exit 0"),
    ] {
        let bad = site.fake_bindir(script);
        let out = run(Some(&bad));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        assert!(err.contains("no snapshot saved"), "{what}: {err}");
        assert_eq!(
            restic_snapshots(&site, "ckan").len(),
            2,
            "{what}: a snapshot was saved"
        );
        assert!(!lock_file(&site).exists(), "{what}: lock left behind");
        let m = parse_metrics(&std::fs::read_to_string(&metrics).unwrap());
        assert!(m["ckan_vault_last_backup_failure_timestamp_seconds"] > now() - 300.0);
    }
    let check = restic(&site, &["check"]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}

/// Runs the profile's backup the way rustic does; returns the emulator's output and the
/// log of what it did (`saved NAME` for each stdin snapshot rustic would have saved).
fn rustic_like(
    site: &Site,
    profile: &toml::Table,
    extra_env: &[(&str, &str)],
    cli_label: Option<&str>,
) -> (Output, String) {
    let hooks = profile["backup"]["hooks"].as_table().unwrap();
    let words = |cmd: &str| -> Vec<String> {
        let mut w: Vec<String> = cmd.split_whitespace().map(str::to_string).collect();
        assert_eq!(w[0], "ckan-vault", "{cmd}");
        w[0] = bin().to_string();
        w
    };
    let quote = |w: &[String]| {
        w.iter()
            .map(|x| format!("'{}'", x.replace('\'', "'\\''")))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let log = site.path().join(unique("rustic-log"));
    let mut s = String::from(
        "#!/bin/bash\n# what rustic does for `backup` (see the comment at the top of tests/hooks.rs)\n",
    );
    s.push_str("export RUSTIC_ACTION=backup\n");
    if let Some(l) = cli_label {
        s.push_str(&format!(
            "export RUSTIC_BACKUP_LABEL='{l}'\nexport RUSTIC_BACKUP_TAGS='{l}'\n"
        ));
    }
    let run_hooks = |kind: &str, s: &mut String, on_fail: &str| {
        for c in hooks[kind].as_array().unwrap() {
            s.push_str(&format!(
                "RUSTIC_HOOK_TYPE={kind} {} || {on_fail}\n",
                quote(&words(c.as_str().unwrap()))
            ));
        }
    };
    s.push_str("failed=0\n");
    run_hooks("run-before", &mut s, "failed=1");
    s.push_str("if [ $failed = 0 ]; then\n");
    for snap in profile["backup"]["snapshots"].as_array().unwrap() {
        let Some(cmd) = snap.get("stdin-command") else {
            continue;
        };
        let name = snap["stdin-filename"].as_str().unwrap();
        // rustic reads the command's stdout into the snapshot, saves it, then checks the status.
        s.push_str(&format!(
            "  {} > '{dir}/{name}'; rc=$?\n  echo \"saved {name}\" >> '{log}'\n  [ $rc = 0 ] || failed=1\n",
            quote(&words(cmd.as_str().unwrap())),
            dir = site.path().display(),
            log = log.display()
        ));
    }
    s.push_str("fi\nif [ $failed = 0 ]; then\n");
    run_hooks("run-after", &mut s, "failed=1");
    s.push_str("fi\nif [ $failed = 1 ]; then\n");
    run_hooks("run-failed", &mut s, "true");
    s.push_str("fi\n");
    run_hooks("run-finally", &mut s, "true");
    s.push_str("exit $failed\n");
    let script = site.path().join(unique("rustic-like"));
    std::fs::write(&script, s).unwrap();
    let mut c = Command::new("bash");
    c.arg(&script)
        .env("CKAN_VAULT_CONFIG", &site.config)
        .env_remove("CKAN_VAULT_PASSWORD")
        .stdin(Stdio::null());
    for (k, v) in extra_env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    let done = std::fs::read_to_string(&log).unwrap_or_default();
    (out, done)
}

#[test]
fn rustic_profile_hooks_run_with_rustics_environment() {
    let site = Site::new(40);
    let metrics = site.path().join("ckan_vault.prom");
    let (port, requests, _server) = ping_server();
    add_config(
        &site,
        &format!(
            "[monitoring]\nmetrics-file = \"{}\"\nping-url = \"http://127.0.0.1:{port}/ping/rustic\"",
            metrics.display()
        ),
    );
    let profile: toml::Table = std::fs::read_to_string(root().join("hooks/rustic/ckan.toml"))
        .unwrap()
        .parse()
        .unwrap();
    // The profile is what rustic expects: hooks and stdin-commands as ckan-vault commands.
    let hooks = profile["backup"]["hooks"].as_table().unwrap();
    for (k, want) in [
        ("run-before", "ckan-vault hook pre-backup"),
        ("run-after", "ckan-vault hook post-backup"),
        ("run-failed", "ckan-vault hook failed"),
        ("run-finally", "ckan-vault hook finally"),
    ] {
        assert_eq!(hooks[k].as_array().unwrap()[0].as_str(), Some(want));
    }
    let (out, log) = rustic_like(&site, &profile, &[], Some("ckan-test"));
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    assert_eq!(log.lines().count(), 2, "{log}");
    for f in ["ckan.pgdump", "datastore.pgdump"] {
        let bytes = std::fs::read(site.path().join(f)).unwrap();
        assert!(bytes.starts_with(b"PGDMP") && bytes.len() > 10_000, "{f}");
    }
    assert!(!lock_file(&site).exists(), "finally released the lock");
    let m = parse_metrics(&std::fs::read_to_string(&metrics).unwrap());
    assert!(m.contains_key("ckan_vault_last_backup_success_timestamp_seconds"));
    assert!(m.contains_key("ckan_vault_repository_size_bytes"));
    assert!(m["ckan_vault_backup_duration_seconds"] > 0.0);
    {
        let r = requests.lock().unwrap();
        let paths: Vec<&str> = r.iter().map(|x| x.1.as_str()).collect();
        assert_eq!(paths, ["/ping/rustic/start", "/ping/rustic"], "{r:?}");
        assert!(r[0].2.contains("rustic backup of ckan-test"), "{r:?}");
    }

    // The database dump fails: stdin-dump stops "rustic" before it can save the truncated
    // stream, reports the failure itself, and the lock goes stale with rustic.
    let bad = site.fake_bindir("set -o pipefail; REAL \"$@\" | head -c 30000; exit 1");
    requests.lock().unwrap().clear();
    let (out, log) = rustic_like(
        &site,
        &profile,
        &[("CKAN_VAULT_DATABASE_BIN_DIR", bad.to_str().unwrap())],
        None,
    );
    assert!(!out.status.success());
    assert!(log.is_empty(), "rustic would have saved: {log}");
    assert!(stderr(&out).contains("exit status: 1"), "{}", stderr(&out));
    {
        let r = requests.lock().unwrap();
        let fail = r
            .iter()
            .find(|x| x.1 == "/ping/rustic/fail")
            .unwrap_or_else(|| panic!("{r:?}"));
        assert!(fail.2.contains("pg_dump exit status: 1"), "{r:?}");
    }
    let m = parse_metrics(&std::fs::read_to_string(&metrics).unwrap());
    assert!(m["ckan_vault_last_backup_failure_timestamp_seconds"] > now() - 300.0);
    assert!(
        lock_file(&site).exists(),
        "the dead run's lock stays until someone needs it"
    );
    // The next run takes over the stale lock.
    let (out, log) = rustic_like(&site, &profile, &[], None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("stale lock"), "{}", stderr(&out));
    assert_eq!(log.lines().count(), 2);
    assert!(!lock_file(&site).exists());

    // The failed hook with the error text a wrapper gives it.
    requests.lock().unwrap().clear();
    let o = site.cli_env(
        &["hook", "failed", "--json"],
        &[("CKAN_VAULT_HOOK_ERROR", "disk full")],
    );
    assert!(o.status.success());
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["ok"], true);
    assert_eq!(requests.lock().unwrap()[0].2, "disk full");

    // pre-backup refuses when a database does not answer, and takes no lock.
    let o = site.cli_env(
        &["hook", "pre-backup"],
        &[(
            "CKAN_VAULT_CKAN_DATABASE_URL",
            "postgresql://ckan:hunter2pw@127.0.0.1:1/ckan",
        )],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("pre-backup checks failed: database main"),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("hunter2pw"));
    assert!(!lock_file(&site).exists());
}

#[test]
fn stdin_dump_writes_a_complete_dump_or_fails() {
    let site = Site::new(30);
    let out = site.cli(&["stdin-dump", "--db", "datastore"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout.starts_with(b"PGDMP"));
    let list = Command::new(ckan_vault::pg::BinDir::for_major(None).program("pg_restore"))
        .arg("--list")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(&out.stdout)?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(list.status.success());
    for (script, expect) in [
        ("REAL \"$@\" | head -c 20000; exit 0", "ended early"),
        ("REAL \"$@\"; exit 3", "exit status: 3"),
    ] {
        let bad = site.fake_bindir(script);
        let o = site.cli_env(
            &["stdin-dump", "--json"],
            &[("CKAN_VAULT_DATABASE_BIN_DIR", bad.to_str().unwrap())],
        );
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(stderr(&o).contains(expect), "{}", stderr(&o));
        assert!(stderr(&o).contains("\"ok\":false"), "{}", stderr(&o));
    }
}

/// Saves a small snapshot of `kind` through the library.
fn save(
    site: &Site,
    kind: ckan_vault::vault::Kind,
    tags: &[String],
    files: Vec<(String, Vec<u8>)>,
) -> String {
    let cfg = ckan_vault::vault::VaultConfig {
        repository: site.vault.to_str().unwrap().to_string(),
        options: Default::default(),
        password: std::fs::read_to_string(&site.password_file)
            .unwrap()
            .trim()
            .to_string()
            .into(),
        cache_dir: None,
    };
    let v = ckan_vault::vault::Vault::open(&cfg).unwrap();
    let mut meta = ckan_vault::vault::SnapshotMeta::new(kind, "ckan.test.invalid");
    meta.extra_tags = tags.to_vec();
    v.save_files(&meta, files).unwrap().id.to_string()
}

#[test]
fn retention_keeps_what_it_must() {
    use ckan_vault::vault::Kind;
    let site = Site::new(20);
    // No policy: refused, nothing removed.
    let o = site.cli(&["forget"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("[retention]"), "{}", stderr(&o));
    let ids: Vec<String> = (0..4)
        .map(|_| {
            site.json(&["backup"])["snapshot"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    // The oldest backup passed a drill, the second failed one; other kinds are around too.
    let drill = |id: &str, verdict: &str| {
        save(
            &site,
            Kind::Drill,
            &[format!("snapshot:{id}")],
            vec![(
                "drill.json".into(),
                format!("{{\"snapshot\":\"{id}\",\"verdict\":\"{verdict}\"}}").into_bytes(),
            )],
        )
    };
    drill(&ids[0], "pass");
    drill(&ids[1], "fail");
    save(
        &site,
        Kind::Escrow,
        &["user:alice".into()],
        vec![("escrow.age".into(), b"x".to_vec())],
    );
    save(
        &site,
        Kind::Revocation,
        &[],
        vec![("revocation.json".into(), b"{}".to_vec())],
    );
    save(
        &site,
        Kind::Intent,
        &[],
        vec![("intent.json".into(), b"{}".to_vec())],
    );
    // A backup snapshot without a manifest (a run that died) is not a backup.
    let broken = save(
        &site,
        Kind::Backup,
        &[],
        vec![("db/ckan.pgdump".into(), b"PGDMP".to_vec())],
    );
    add_config(&site, "[retention]\nkeep-last = 1");

    let all_before = site.json(&["snapshots", "--all"])["snapshots"]
        .as_array()
        .unwrap()
        .len();
    let dry = site.json(&["forget", "--dry-run"]);
    assert_eq!(dry["ok"], true);
    let decided: BTreeMap<String, bool> = dry["plan"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["id"].as_str().unwrap().to_string(),
                i["keep"].as_bool().unwrap(),
            )
        })
        .collect();
    let want: BTreeMap<String, bool> = [
        (&ids[0], true),
        (&ids[1], false),
        (&ids[2], false),
        (&ids[3], true),
    ]
    .into_iter()
    .map(|(k, v)| (k.clone(), v))
    .collect();
    assert_eq!(decided, want, "{dry}");
    assert!(
        !decided.contains_key(&broken),
        "a fresh incomplete snapshot is left alone"
    );
    assert_eq!(dry["plan"]["drilled"].as_str(), Some(ids[0].as_str()));
    assert_eq!(
        site.json(&["snapshots", "--all"])["snapshots"]
            .as_array()
            .unwrap()
            .len(),
        all_before
    );

    let done = site.json(&["forget", "--prune"]);
    assert_eq!(done["removed"], 2, "{done}");
    assert!(done["prune"].is_object(), "{done}");
    let left: Vec<String> = site
        .backups()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    assert!(
        left.contains(&ids[0]) && left.contains(&ids[3]) && !left.contains(&ids[1]),
        "{left:?}"
    );
    let all = site.json(&["snapshots", "--all"]);
    let kinds: Vec<&str> = all["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    for k in ["drill", "escrow", "revocation", "token-intent"] {
        assert!(kinds.contains(&k), "{k} gone: {kinds:?}");
    }
    assert_eq!(kinds.iter().filter(|k| **k == "drill").count(), 2);
    // The vault is sound after forget and prune, for ckan-vault and for restic.
    let check = site.json(&["check", "--read-data"]);
    assert_eq!(check["ok"], true, "{check}");
    let o = restic(&site, &["--no-lock", "check", "--read-data"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    // A restore of the drilled backup still works.
    let c = site.cluster();
    let db = unique("kept");
    let r = site.json(&["restore", &ids[0], "--db", &c.url(&db)]);
    assert_eq!(r["ok"], true, "{r}");
    // check with a subset, and a bad subset is a usage error.
    assert_eq!(site.json(&["check", "--read-data=50%"])["ok"], true);
    assert_eq!(
        site.cli(&["check", "--read-data=lots"]).status.code(),
        Some(2)
    );
}

#[test]
fn a_second_run_waits_for_the_lock() {
    let site = Site::new(10);
    let owner = Sleeper::new();
    let j = site.json(&["hook", "pre-backup", "--owner-pid", &owner.pid()]);
    assert_eq!(j["ok"], true, "{j}");
    assert!(lock_file(&site).exists());
    // restic sees ckan-vault's lock object and refuses to prune meanwhile.
    let locks = restic(&site, &["--no-lock", "list", "locks"]);
    let ids = String::from_utf8_lossy(&locks.stdout).to_string();
    assert_eq!(ids.lines().count(), 1, "{ids}");
    let cat = restic(&site, &["--no-lock", "cat", "lock", ids.trim()]);
    let lock: serde_json::Value =
        serde_json::from_slice(&cat.stdout).unwrap_or_else(|_| panic!("{}", stderr(&cat)));
    assert_eq!(lock["pid"].as_u64().unwrap().to_string(), owner.pid());
    let prune = restic(&site, &["prune"]);
    assert!(!prune.status.success());
    assert!(stderr(&prune).contains("locked"), "{}", stderr(&prune));

    for args in [&["backup"][..], &["forget", "--prune"][..]] {
        let o = site.cli_env(args, &[("CKAN_VAULT_RETENTION_KEEP_LAST", "3")]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("another run holds the lock since"), "{err}");
        assert!(err.contains(&format!("pid {}", owner.pid())), "{err}");
        assert_eq!(err.matches("ckan-vault: error:").count(), 1, "{err}");
    }
    assert!(site.backups().is_empty());
    // `finally` of another process leaves the live owner's lock alone.
    let j = site.json(&["hook", "finally"]);
    assert!(
        j["released"].as_str().unwrap().contains("another run"),
        "{j}"
    );
    assert!(lock_file(&site).exists());

    // Another host (no local lock file, but its lock object in the vault): a prune waits.
    let record = std::fs::read(lock_file(&site)).unwrap();
    std::fs::remove_file(lock_file(&site)).unwrap();
    let o = site.cli_env(
        &["forget", "--prune"],
        &[("CKAN_VAULT_RETENTION_KEEP_LAST", "3")],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("a lock object in the vault"),
        "{}",
        stderr(&o)
    );
    // ... while a backup (a shared lock) may run alongside another host's backup.
    site.ok(&["backup"]);
    std::fs::write(lock_file(&site), record).unwrap();

    // The owner finishes: its finally releases everything.
    let j = site.json(&["hook", "finally", "--owner-pid", &owner.pid()]);
    assert!(
        j["released"].as_str().unwrap().starts_with("released"),
        "{j}"
    );
    assert!(!lock_file(&site).exists());
    let locks = restic(&site, &["--no-lock", "list", "locks"]);
    assert!(String::from_utf8_lossy(&locks.stdout).trim().is_empty());

    // An owner that died leaves a stale lock, which the next run takes over.
    let dead = Sleeper::new();
    site.ok(&["hook", "pre-backup", "--owner-pid", &dead.pid()]);
    drop(dead);
    let o = site.cli(&["backup"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("stale lock"), "{}", stderr(&o));
    assert!(!lock_file(&site).exists());
    assert_eq!(site.backups().len(), 2);
}

#[test]
fn metrics_file_parses_and_is_replaced_atomically() {
    let site = Site::new(10);
    let metrics = site.path().join("textfile/ckan_vault.prom");
    std::fs::create_dir_all(metrics.parent().unwrap()).unwrap();
    add_config(
        &site,
        &format!("[monitoring]\nmetrics-file = \"{}\"", metrics.display()),
    );
    let b = site.json(&["backup"]);
    let m = parse_metrics(&std::fs::read_to_string(&metrics).unwrap());
    for name in [
        "ckan_vault_last_backup_success_timestamp_seconds",
        "ckan_vault_backup_duration_seconds",
        "ckan_vault_backup_added_bytes",
        "ckan_vault_snapshot_count",
        "ckan_vault_repository_size_bytes",
    ] {
        assert!(m.contains_key(name), "{name} missing: {m:?}");
    }
    assert_eq!(
        m["ckan_vault_backup_added_bytes"],
        b["data_added"].as_f64().unwrap()
    );
    assert_eq!(m["ckan_vault_snapshot_count"], 1.0);
    let du: u64 = walkdir::WalkDir::new(&site.vault)
        .into_iter()
        .flatten()
        .filter(|e| {
            e.file_type().is_file()
                && !e.path().starts_with(site.vault.join("locks"))
                && e.path() != site.vault.join("config")
        })
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert_eq!(m["ckan_vault_repository_size_bytes"], du as f64);
    // A failure adds its timestamp and keeps the success figures.
    let o = site.cli_env(
        &["backup"],
        &[(
            "CKAN_VAULT_CKAN_DATABASE_URL",
            "postgresql://x@127.0.0.1:1/x",
        )],
    );
    assert!(!o.status.success());
    let m2 = parse_metrics(&std::fs::read_to_string(&metrics).unwrap());
    assert!(m2.contains_key("ckan_vault_last_backup_failure_timestamp_seconds"));
    assert_eq!(
        m2["ckan_vault_backup_added_bytes"],
        m["ckan_vault_backup_added_bytes"]
    );
    // Readers never see a partial file: watch it while runs rewrite it.
    use std::os::unix::fs::MetadataExt;
    // Held open, the old file keeps its inode number: a freed one can be handed to a later
    // temporary file, and the comparison below would then fail for no fault.
    let original = std::fs::File::open(&metrics).unwrap();
    let inode = original.metadata().unwrap().ino();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (stop, path) = (stop.clone(), metrics.clone());
        std::thread::spawn(move || {
            let mut reads = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let text = std::fs::read_to_string(&path).unwrap();
                let m = parse_metrics(&text);
                assert!(m.len() >= 6, "partial file: {text}");
                reads += 1;
            }
            reads
        })
    };
    for _ in 0..3 {
        site.cli_env(&["hook", "failed"], &[("CKAN_VAULT_HOOK_ERROR", "test")]);
    }
    site.ok(&["backup"]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reader.join().unwrap();
    assert!(reads > 10, "{reads}");
    assert_ne!(
        std::fs::metadata(&metrics).unwrap().ino(),
        inode,
        "replaced by rename"
    );
    assert_eq!(
        parse_metrics(&std::fs::read_to_string(&metrics).unwrap())["ckan_vault_snapshot_count"],
        2.0
    );
}

type Requests = Arc<Mutex<Vec<(String, String, String)>>>;

/// A tiny HTTP server on 127.0.0.1 that records (method, path, body) and answers 200.
/// It stops by itself after two minutes.
fn ping_server() -> (u16, Requests, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let requests: Requests = Arc::default();
    let r = requests.clone();
    let h = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            let (stream, _) = match listener.accept() {
                Ok(s) => s,
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            };
            stream.set_nonblocking(false).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let method = parts.next().unwrap_or("").to_string();
            let path = parts.next().unwrap_or("").to_string();
            let mut len = 0;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                if let Some((k, v)) = h.split_once(':')
                    && k.eq_ignore_ascii_case("content-length")
                {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            r.lock()
                .unwrap()
                .push((method, path, String::from_utf8_lossy(&body).into_owned()));
            let mut stream = reader.into_inner();
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nOK");
        }
    });
    (port, requests, h)
}

#[test]
fn backup_pings_start_success_and_fail_with_the_error() {
    let site = Site::new(10);
    let (port, requests, _server) = ping_server();
    add_config(
        &site,
        &format!("[monitoring]\nping-url = \"http://127.0.0.1:{port}/hc/uuid-1234/\""),
    );
    site.ok(&["backup"]);
    {
        let r = requests.lock().unwrap();
        let got: Vec<(&str, &str)> = r.iter().map(|x| (x.0.as_str(), x.1.as_str())).collect();
        assert_eq!(
            got,
            [("POST", "/hc/uuid-1234/start"), ("POST", "/hc/uuid-1234")],
            "{r:?}"
        );
        assert!(r[1].2.contains("tables"), "{r:?}");
    }
    requests.lock().unwrap().clear();
    let o = site.cli_env(
        &["backup"],
        &[(
            "CKAN_VAULT_CKAN_DATABASE_URL",
            "postgresql://ckan:pw@127.0.0.1:1/ckan",
        )],
    );
    assert_eq!(o.status.code(), Some(2));
    let r = requests.lock().unwrap();
    let fail = r
        .iter()
        .find(|x| x.1 == "/hc/uuid-1234/fail")
        .unwrap_or_else(|| panic!("{r:?}"));
    assert!(
        fail.2
            .contains("cannot connect to postgresql://ckan@127.0.0.1:1/ckan"),
        "{r:?}"
    );
    assert!(!fail.2.contains(":pw@"));
    drop(r);
    // An unreachable ping URL is a warning, never a failed backup.
    let o = site.cli_env(
        &["backup"],
        &[(
            "CKAN_VAULT_MONITORING_PING_URL",
            "http://127.0.0.1:1/nothing",
        )],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("ping http://127.0.0.1/… failed"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn issue_token_hook_reports_configuration_errors_as_json() {
    // The full path needs `ckan-vault token issue` and a CKAN (tests/tokens.rs covers the
    // command); here: the hook's own argument handling and exit codes.
    let site = Site::new(1);
    let hook = root().join("hooks/token/issue-token");
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = Command::new(&hook);
        c.args(args)
            .env("CKAN_VAULT", bin())
            .env("CKAN_VAULT_CONFIG", &site.config)
            .env("CKAN_VAULT_TOKEN_DIR", site.path().join("out/tokens"))
            .env("CKAN_VAULT_PASSWORD_DIR", site.path().join("out/passwords"))
            .env_remove("CKAN_VAULT_USER");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let o = run(&[], &[]);
    assert_eq!(o.status.code(), Some(2));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["ok"], false);
    assert!(j["error"].as_str().unwrap().contains("CKAN_VAULT_USER"));
    let o = run(&["../evil"], &[]);
    assert_eq!(o.status.code(), Some(2));
    // No escrow recipients configured: a configuration error, and nothing was written.
    let o = run(&["alice"], &[]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&o.stdout)));
    assert_eq!(j["ok"], false, "{j}");
    assert_eq!(o.status.code(), Some(2), "{j}");
    assert_eq!(
        std::fs::read_dir(site.path().join("out/tokens"))
            .unwrap()
            .count(),
        0
    );
    let mode = std::fs::metadata(site.path().join("out/passwords"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
}

/// `KEY=VALUE` lines of a systemd unit, per `[Section]`, in order.
fn unit_entries(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not KEY=VALUE: {line:?}"));
        out.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
    }
    out
}

/// Runs one command line of a unit or the cron file with ckan-vault as built here.
fn run_hook_command(line: &str, env: &BTreeMap<String, String>) {
    let mut words = line.split_whitespace();
    let program = words.next().unwrap();
    assert!(
        program == "ckan-vault" || program == "/usr/local/bin/ckan-vault",
        "{line}"
    );
    let args: Vec<&str> = words.collect();
    let o = Command::new(bin())
        .args(&args)
        .env_clear()
        .envs(
            ["PATH", "HOME", "TMPDIR"]
                .iter()
                .filter_map(|k| Some((k, std::env::var(k).ok()?))),
        )
        .envs(env)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "`{line}` failed ({:?}):\n{}",
        o.status,
        stderr(&o)
    );
}

/// The systemd units and the cron file, run as systemd and cron would run them: every
/// command line with the unit's environment (credentials through `%d`, the state directory
/// through `$STATE_DIRECTORY`), against a real site; and the hardening the docs promise.
#[test]
fn systemd_units_and_cron_file_run_for_real() {
    let site = Site::new(20);
    let state = site.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let config = std::fs::read_to_string(&site.config).unwrap();
    // systemd: the vault password only through the credential the unit names.
    let unit_config = site.path().join("unit.toml");
    let without_password: String = config
        .lines()
        .filter(|l| !l.starts_with("password-file"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(
        &unit_config,
        format!("{without_password}\n[retention]\nkeep-last = 2\n"),
    )
    .unwrap();
    let creds = site.path().join("credentials");
    std::fs::create_dir_all(&creds).unwrap();
    std::fs::copy(&site.password_file, creds.join("vault-password")).unwrap();
    std::fs::write(creds.join("ckan-api-token"), "unused\n").unwrap();
    for f in ["vault-password", "ckan-api-token"] {
        std::fs::set_permissions(creds.join(f), std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    let dir = root().join("hooks/systemd");
    let mut services: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "service"))
        .collect();
    services.sort(); // backup before drill
    assert_eq!(services.len(), 2, "{services:?}");
    for service in &services {
        let name = service.file_name().unwrap().to_string_lossy().into_owned();
        let entries = unit_entries(&std::fs::read_to_string(service).unwrap());
        let get = |key: &str| -> Vec<&str> {
            entries
                .iter()
                .filter(|(s, k, _)| s == "Service" && k == key)
                .map(|(_, _, v)| v.as_str())
                .collect()
        };
        for (key, want) in [
            ("Type", "oneshot"),
            ("ProtectSystem", "strict"),
            ("PrivateTmp", "yes"),
            ("NoNewPrivileges", "yes"),
            ("UMask", "0077"),
        ] {
            assert_eq!(get(key), [want], "{name}: {key}");
        }
        assert!(
            get("LoadCredential")
                .iter()
                .any(|c| c.starts_with("vault-password:")),
            "{name}: the vault password comes as a credential"
        );
        assert!(
            get("ReadWritePaths").contains(&"-/var/lib/prometheus/node-exporter"),
            "{name}: the metrics directory of docs/monitoring.md must be writable"
        );
        // Environment: no secret values, only paths to credentials.
        let mut env = BTreeMap::new();
        for e in get("Environment") {
            let (k, v) = e.split_once('=').unwrap();
            assert!(k != "CKAN_VAULT_PASSWORD", "{name}: a password in the unit");
            env.insert(
                k.to_string(),
                v.replace("%d", creds.to_str().unwrap()).to_string(),
            );
        }
        assert!(
            env.contains_key("CKAN_VAULT_REPOSITORY_PASSWORD_FILE"),
            "{name}"
        );
        env.insert(
            "CKAN_VAULT_CONFIG".into(),
            unit_config.display().to_string(),
        );
        env.insert("STATE_DIRECTORY".into(), state.display().to_string());
        // systemd's PATH for services: PostgreSQL's server programs are not on it.
        env.insert(
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        );
        let mut commands = get("ExecStart");
        commands.extend(get("ExecStartPost"));
        assert!(!commands.is_empty(), "{name}");
        for line in commands {
            run_hook_command(line, &env);
        }
        // Its timer.
        let timer = service.with_extension("timer");
        let t = unit_entries(&std::fs::read_to_string(&timer).unwrap());
        let has = |k: &str| t.iter().any(|(s, key, _)| s == "Timer" && key == k);
        assert!(
            has("OnCalendar") && has("Persistent"),
            "{}",
            timer.display()
        );
    }
    assert_eq!(site.backups().len(), 1, "systemd's backup");
    let history = site.json(&["drill", "--history"]);
    assert!(history.to_string().contains("pass"), "{history}");

    // cron: the same commands from /etc/cron.d's format, with the file's environment.
    let cron_config = site.path().join("cron.toml");
    std::fs::write(
        &cron_config,
        format!("{config}\n[retention]\nkeep-last = 2\n"),
    )
    .unwrap();
    let text = std::fs::read_to_string(root().join("hooks/cron/ckan-vault")).unwrap();
    let mut env = BTreeMap::new();
    let mut entries = 0;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields[0].contains('=') {
            let (k, v) = line.split_once('=').unwrap();
            env.insert(k.to_string(), v.to_string());
            continue;
        }
        assert!(fields.len() > 6, "{line}");
        for f in &fields[..5] {
            assert!(
                f.chars().all(|c| c.is_ascii_digit() || "*/,-".contains(c)),
                "time field {f:?} in {line}"
            );
        }
        assert_eq!(fields[5], "root", "{line}");
        entries += 1;
        let mut run_env = env.clone();
        run_env.insert(
            "CKAN_VAULT_CONFIG".into(),
            cron_config.display().to_string(),
        );
        run_env.insert("CKAN_VAULT_STATE_DIR".into(), state.display().to_string());
        for command in fields[6..].join(" ").split("&&") {
            run_hook_command(command.trim(), &run_env);
        }
    }
    assert_eq!(entries, 2, "backup and drill");
    assert_eq!(site.backups().len(), 2, "cron's backup, retention keeps 2");
}
