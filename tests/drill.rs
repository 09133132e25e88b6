//! Restore drills against a real PostgreSQL: clean, tampered, broken and incomplete
//! snapshots, history, and cleanup of the scratch cluster on every path.

mod common;

use std::path::Path;

use ckan_vault::vault::{Kind, Snapshot, SnapshotMeta, Vault};
use common::site::{Site, stderr};

/// Every file of the latest backup, in memory.
fn files_of_latest(vault: &Vault) -> (Snapshot, Vec<(String, Vec<u8>)>) {
    let reader = vault.reader().unwrap();
    let snap = reader.snapshots(Kind::Backup).unwrap().pop().unwrap();
    let mut files = Vec::new();
    for p in [
        "config/ckan.ini",
        "db/ckan.pgdump",
        "db/datastore.pgdump",
        "db/globals.sql",
        "manifest.json",
        "storage.sha256",
    ] {
        if reader.node(&snap, p).unwrap().is_some() {
            files.push((p.to_string(), reader.read(&snap, p, 1 << 30).unwrap()));
        }
    }
    for (p, _) in reader.walk(&snap, "storage").unwrap() {
        let bytes = reader.read(&snap, &p, 1 << 30).unwrap();
        files.push((p, bytes));
    }
    (snap, files)
}

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
    let (code, rep) = drill(&site, &[&id]);
    assert_eq!(code, Some(1), "{rep}");
    assert_eq!(rep["verdict"], "fail");
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
