//! Restore drills against a real PostgreSQL: clean, tampered, broken and incomplete
//! snapshots, history, and cleanup of the scratch cluster on every path.

mod common;

use std::path::Path;

use ckan_vault::vault::{Kind, SnapshotMeta, Vault};
use common::site::{Site, files_of_latest, now, stderr};

/// Stores `files` as a new backup snapshot (with whatever manifest they carry) and returns its id.
fn save_doctored(vault: &Vault, label: &str, files: Vec<(String, Vec<u8>)>) -> String {
    let snap = vault
        .save_files(&SnapshotMeta::new(Kind::Backup, label), files)
        .unwrap();
    snap.id.to_hex().to_string()
}

/// A new backup snapshot whose main dump has `from` replaced by `to` and a stale manifest.
fn doctor_main_dump(site: &Site, from: &[u8], to: &[u8]) -> String {
    let vault = site.open_vault();
    let (snap, mut files) = files_of_latest(&vault);
    let dump = files
        .iter_mut()
        .find(|(p, _)| p == "db/ckan.pgdump")
        .unwrap();
    replace_same_length(&mut dump.1, from, to);
    save_doctored(&vault, &snap.label, files)
}

fn replace_same_length(bytes: &mut [u8], from: &[u8], to: &[u8]) {
    assert_eq!(from.len(), to.len());
    let pos = bytes
        .windows(from.len())
        .position(|w| w == from)
        .unwrap_or_else(|| panic!("{} not found", String::from_utf8_lossy(from)));
    bytes[pos..pos + to.len()].copy_from_slice(to);
}

fn check<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {report}"))
}

/// Runs a drill with a private TMPDIR and asserts nothing of the scratch cluster is left.
fn drill(site: &Site, args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let tmp = site.path().join(format!("tmp-{}", common::pg::unique("d")));
    std::fs::create_dir(&tmp).unwrap();
    let mut a = vec!["drill"];
    a.extend_from_slice(args);
    a.push("--json");
    let out = site.cli_env(&a, &[("TMPDIR", tmp.to_str().unwrap())]);
    let leftovers: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(leftovers.is_empty(), "scratch left behind: {leftovers:?}");
    assert!(
        !postgres_running_in(&tmp),
        "a scratch postgres still runs in {}",
        tmp.display()
    );
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {} / {}",
            String::from_utf8_lossy(&out.stdout),
            stderr(&out)
        )
    });
    (out.status.code(), json)
}

/// The samples of a Prometheus text file, by metric name.
fn metrics(path: &Path) -> std::collections::BTreeMap<String, f64> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

/// Points the site's `[monitoring] metrics-file` at a new file.
fn metrics_file(site: &Site) -> std::path::PathBuf {
    use std::io::Write;
    let path = site.path().join("drill.prom");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&site.config)
        .unwrap();
    writeln!(f, "\n[monitoring]\nmetrics-file = \"{}\"", path.display()).unwrap();
    path
}

fn postgres_running_in(dir: &Path) -> bool {
    let needle = dir.display().to_string();
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains(&needle))
            .unwrap_or(false)
    })
}

#[test]
fn a_good_backup_drills_clean_and_is_recorded() {
    let site = Site::new(120);
    site.ok(&["backup"]);
    let prom = metrics_file(&site);
    let (code, rep) = drill(&site, &[]);
    assert_eq!(code, Some(0), "{rep}");
    assert_eq!(rep["verdict"], "pass");
    for name in [
        "globals",
        "main: restore",
        "main: tables",
        "datastore: tables",
        "ckan: schema version",
        "ckan: sysadmin",
        "ckan: counts",
        "storage",
        "config",
    ] {
        assert_eq!(check(&rep, name)["ok"], true, "{name}: {rep}");
    }
    assert!(rep["timings"]["rto_seconds"].as_f64().unwrap() > 0.0);
    assert!(rep["timings"]["bytes_read"].as_u64().unwrap() > 100_000);
    // The metrics file says when a drill last passed.
    let m = metrics(&prom);
    assert!(
        m["ckan_vault_last_drill_success_timestamp_seconds"] > now() - 300.0,
        "{m:?}"
    );
    assert_eq!(m["ckan_vault_drill_checks_failed"], 0.0, "{m:?}");
    assert!(m["ckan_vault_drill_duration_seconds"] > 0.0, "{m:?}");
    assert!(m["ckan_vault_drill_rto_seconds"] > 0.0, "{m:?}");
    let hist = site.json(&["drill", "--history"]);
    let drills = hist["drills"].as_array().unwrap();
    assert_eq!(drills.len(), 1);
    assert_eq!(drills[0]["snapshot"], rep["snapshot"]);
    // Recorded as a drill snapshot, not a backup.
    assert_eq!(site.backups().len(), 1);
    let all = site.json(&["snapshots", "--all"]);
    assert!(
        all["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["kind"] == "drill")
    );
}

#[test]
fn a_changed_row_in_the_dump_fails_naming_the_table() {
    let site = Site::new(60);
    site.ok(&["backup"]);
    let id = doctor_main_dump(&site, b"user5@example.org", b"user5@examplf.org");
    let prom = metrics_file(&site);
    let (code, rep) = drill(&site, &[&id]);
    assert_eq!(code, Some(1), "{rep}");
    assert_eq!(rep["verdict"], "fail");
    let m = metrics(&prom);
    assert!(m["ckan_vault_drill_checks_failed"] >= 1.0, "{m:?}");
    assert!(
        !m.contains_key("ckan_vault_last_drill_success_timestamp_seconds"),
        "a failed drill is no success: {m:?}"
    );
    let tables = check(&rep, "main: tables");
    assert_eq!(tables["ok"], false);
    let detail = tables["detail"].as_str().unwrap();
    assert!(detail.contains("public.user"), "{detail}");
    assert!(!detail.contains("public.package "), "{detail}");
    assert_eq!(check(&rep, "datastore: tables")["ok"], true);
    // The plain restore of that snapshot fails loudly too.
    let c = site.cluster();
    let target = common::pg::unique("doctored");
    let out = site.cli(&["restore", &id, "--db", &c.url(&target)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAILED"));
}

#[test]
fn a_dump_that_restores_with_errors_fails() {
    let site = Site::new(30);
    site.ok(&["backup"]);
    let id = doctor_main_dump(
        &site,
        b"CREATE TABLE public.package ",
        b"CREATE TABLX public.package ",
    );
    let (code, rep) = drill(&site, &[&id]);
    assert_eq!(code, Some(1), "{rep}");
    let restore = check(&rep, "main: restore");
    assert_eq!(restore["ok"], false, "{rep}");
    assert!(
        restore["detail"].as_str().unwrap().contains("pg_restore"),
        "{rep}"
    );
}

#[test]
fn a_missing_storage_file_fails() {
    let site = Site::new(20);
    site.ok(&["backup"]);
    let vault = site.open_vault();
    let (snap, mut files) = files_of_latest(&vault);
    let gone = files
        .iter()
        .position(|(p, _)| p.ends_with("logo.svg"))
        .expect("sample site has a logo");
    files.remove(gone);
    let id = save_doctored(&vault, &snap.label, files);
    drop(vault);
    let (code, rep) = drill(&site, &[&id, "--storage-sample", "100"]);
    assert_eq!(code, Some(1), "{rep}");
    let storage = check(&rep, "storage");
    assert_eq!(storage["ok"], false);
    assert!(
        storage["detail"].as_str().unwrap().contains("logo.svg"),
        "{rep}"
    );
}

#[test]
fn drills_of_a_two_day_history_and_on_a_shared_server() {
    let site = Site::new(40);
    let c = site.cluster();
    site.ok(&["backup"]);
    c.sql(&site.main_db, &site.sample.churn_sql(1.0, 1));
    site.ok(&["backup"]);
    let (code, old) = drill(&site, &["latest~1"]);
    assert_eq!(code, Some(0), "{old}");
    // On a shared server: unique databases, dropped afterwards.
    let (code, new) = drill(&site, &["latest", "--scratch", &c.url("postgres")]);
    assert_eq!(code, Some(0), "{new}");
    assert_ne!(old["snapshot"], new["snapshot"]);
    let left = c.sql(
        "postgres",
        "SELECT count(*) FROM pg_database WHERE datname LIKE 'ckan_vault_drill_%'",
    );
    assert_eq!(left, "0");
    let hist = site.json(&["drill", "--history"]);
    let drills = hist["drills"].as_array().unwrap();
    assert_eq!(drills.len(), 2);
    assert_eq!(drills[0]["snapshot"], old["snapshot"]);
    assert_eq!(drills[1]["snapshot"], new["snapshot"]);
    let text = site.ok(&["drill", "--history"]);
    assert!(text.contains("pass") && text.contains("2 drills"), "{text}");
}

/// SIGTERM (cron's or systemd's stop, a terminal's Ctrl-C is SIGINT) while the scratch
/// cluster runs: the restored copy does not outlive the run.
#[test]
fn an_interrupted_drill_removes_its_scratch_cluster() {
    let site = Site::new(1000);
    site.ok(&["backup"]);
    let tmp = site.path().join("tmp-interrupted");
    std::fs::create_dir(&tmp).unwrap();
    let mut child = std::process::Command::new(common::site::bin())
        .args(["drill", "--json"])
        .env("CKAN_VAULT_CONFIG", &site.config)
        .env("TMPDIR", &tmp)
        .env_remove("CKAN_VAULT_PASSWORD")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The server is up once its socket exists (before that, initdb runs).
    let socket_exists = |tmp: &Path| {
        std::fs::read_dir(tmp)
            .unwrap()
            .flatten()
            .any(|d| d.path().join(".s.PGSQL.5432").exists())
    };
    let t = std::time::Instant::now();
    while !socket_exists(&tmp) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the drill ended before its scratch server ran"
        );
        assert!(t.elapsed().as_secs() < 60, "no scratch server started");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(128 + libc::SIGTERM), "{err}");
    assert!(err.contains("interrupted by signal"), "{err}");
    let leftovers: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().collect();
    assert!(leftovers.is_empty(), "scratch left behind: {leftovers:?}");
    // The server is stopped before the exit; a client of it (pg_restore, psql) that was
    // mid-request ends on its own once the server is gone: allow it a moment.
    let t = std::time::Instant::now();
    while postgres_running_in(&tmp) {
        assert!(
            t.elapsed().as_secs() < 10,
            "a process of the scratch cluster still runs"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
