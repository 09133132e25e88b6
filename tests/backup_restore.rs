//! Backup and restore against a real PostgreSQL: round trip, dedup, fail-closed, errors,
//! and Debian's restic reading the vault.

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::pg::unique;
use common::site::{Site, stderr};

/// Without the cluster's roles (no `--globals-db`), a parallel restore leaves out every
/// GRANT, also the default privileges CKAN's `datastore set-permissions` makes, which
/// pg_dump puts in the post-data section: a role the target lacks must not fail it.
#[test]
fn parallel_restore_without_roles_leaves_out_grants_and_default_privileges() {
    let site = Site::new(20);
    let c = site.cluster();
    let role = unique("ds_reader");
    c.sql(
        &site.main_db,
        &format!(
            "CREATE ROLE {role}; GRANT SELECT ON package TO {role}; \
             ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {role};"
        ),
    );
    assert_eq!(site.json(&["backup"])["ok"], true);
    // The role is gone on the host the backup comes back to.
    c.sql(
        &site.main_db,
        &format!("DROP OWNED BY {role}; DROP ROLE {role};"),
    );
    for jobs in ["2", "1"] {
        let db = unique("no_roles");
        let r = site.json(&["restore", "latest", "--db", &c.url(&db), "--jobs", jobs]);
        assert_eq!(r["ok"], true, "--jobs {jobs}: {r}");
        assert_eq!(
            c.fingerprint(&site.main_db),
            c.fingerprint(&db),
            "--jobs {jobs}"
        );
        assert_eq!(
            c.schema_objects(&site.main_db),
            c.schema_objects(&db),
            "--jobs {jobs}"
        );
    }
}

#[test]
fn round_trip_restores_every_row_and_file() {
    let site = Site::new(150);
    let c = site.cluster();
    // A local vault is private to its owner.
    let mode = std::fs::metadata(&site.vault).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "vault directory mode {mode:o}");
    let b = site.json(&["backup"]);
    assert_eq!(b["ok"], true);
    assert!(b["tables"].as_u64().unwrap() >= 10, "{b}");
    assert_eq!(site.backups().len(), 1);

    let main = unique("restored");
    let ds = unique("restored_ds");
    let out_dir = site.path().join("restored-storage");
    let r = site.json(&[
        "restore",
        "latest",
        "--db",
        &c.url(&main),
        "--datastore-db",
        &c.url(&ds),
        "--storage",
        out_dir.to_str().unwrap(),
    ]);
    assert_eq!(r["ok"], true, "{r}");
    // Independent of ckan-vault's checksums: compare the rows themselves.
    assert_eq!(c.fingerprint(&site.main_db), c.fingerprint(&main));
    assert_eq!(c.fingerprint(&site.datastore_db), c.fingerprint(&ds));
    // Indexes and constraints, built after the data in parallel sessions, all came back.
    let objects = c.schema_objects(&site.main_db);
    assert!(
        objects.iter().any(|o| o.contains("FOREIGN KEY"))
            && objects.iter().any(|o| o.contains("PRIMARY KEY")),
        "{objects:?}"
    );
    assert_eq!(objects, c.schema_objects(&main));
    assert_eq!(c.schema_objects(&site.datastore_db), c.schema_objects(&ds));
    for entry in walkdir::WalkDir::new(&site.storage).into_iter().flatten() {
        if entry.file_type().is_file() {
            let rel = entry.path().strip_prefix(&site.storage).unwrap();
            assert_eq!(
                std::fs::read(entry.path()).unwrap(),
                std::fs::read(out_dir.join(rel)).unwrap(),
                "{}",
                rel.display()
            );
        }
    }
    // A second restore into the same, now non-empty, database is refused with a hint.
    let again = site.cli(&["restore", "latest", "--db", &c.url(&main)]);
    assert_eq!(again.status.code(), Some(2), "{}", stderr(&again));
    assert!(stderr(&again).contains("--clean"), "{}", stderr(&again));
    // With --clean it replaces what is there (one pg_restore, one transaction), rows changed
    // since the backup included.
    c.sql(
        &main,
        "DELETE FROM package_extra; UPDATE package SET title = 'changed'",
    );
    let clean = site.json(&["restore", "latest", "--db", &c.url(&main), "--clean"]);
    assert_eq!(clean["ok"], true, "{clean}");
    assert_eq!(c.fingerprint(&site.main_db), c.fingerprint(&main));
    assert_eq!(objects, c.schema_objects(&main));
    // One session, one transaction: the same database.
    let single = unique("restored_single");
    let one = site.json(&["restore", "latest", "--db", &c.url(&single), "--jobs", "1"]);
    assert_eq!(one["ok"], true, "{one}");
    assert_eq!(c.fingerprint(&site.main_db), c.fingerprint(&single));
    assert_eq!(objects, c.schema_objects(&single));
}

#[test]
fn second_backup_after_one_percent_churn_adds_little() {
    let site = Site::new(1500);
    let c = site.cluster();
    let first = site.json(&["backup"]);
    c.sql(&site.main_db, &site.sample.churn_sql(1.0, 1));
    let second = site.json(&["backup"]);
    let a = first["data_added"].as_f64().unwrap();
    let b = second["data_added"].as_f64().unwrap();
    eprintln!(
        "day 2 added {b} bytes = {:.1} % of day 1 ({a})",
        b / a * 100.0
    );
    assert!(b < a * 0.10, "day 2 added {b} bytes, day 1 {a}");
    assert_eq!(site.backups().len(), 2);
}

fn assert_backup_fails_without_snapshot(site: &Site, bindir: &std::path::Path, expect: &str) {
    let before = site.backups().len();
    let out = site.cli_env(
        &["backup"],
        &[("CKAN_VAULT_DATABASE_BIN_DIR", bindir.to_str().unwrap())],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no snapshot kept"), "{err}");
    assert!(err.contains(expect), "expected {expect:?} in: {err}");
    assert_eq!(
        site.backups().len(),
        before,
        "a failed dump left a snapshot"
    );
    // Raw listing too, with incomplete snapshots of every kind.
    let all = site.json(&["snapshots", "--all"]);
    assert_eq!(all["snapshots"].as_array().unwrap().len(), before);
}

#[test]
fn a_failing_dump_never_becomes_a_snapshot() {
    let site = Site::new(300);
    let first = site.json(&["backup"])["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    // Exits 1 half-way through the stream.
    let half = site.fake_bindir("set -o pipefail; REAL \"$@\" | head -c 200000; exit 1");
    assert_backup_fails_without_snapshot(&site, &half, "pg_dump exit status: 1");
    // Truncated, but claims success: the archive's own structure gives it away.
    let lying = site.fake_bindir("REAL \"$@\" | head -c 300000; exit 0");
    assert_backup_fails_without_snapshot(&site, &lying, "ended early");
    // A complete-looking stream, then a non-zero exit.
    let late = site.fake_bindir("REAL \"$@\"; exit 3");
    assert_backup_fails_without_snapshot(&site, &late, "exit status: 3");
    // Killed by a signal in the middle.
    let killed = site.fake_bindir("REAL \"$@\" | head -c 100000; kill -9 $$");
    assert_backup_fails_without_snapshot(&site, &killed, "pg_dump");
    // The database dropped under it: pg_dump cannot even start.
    let c = site.cluster();
    let doomed = unique("doomed");
    c.create_db(&doomed);
    c.sql(
        &doomed,
        "CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g",
    );
    let drop_it = site.fake_bindir(&format!(
            "psql -X -q -d \"host={} port={} user=postgres dbname=postgres\" -c 'DROP DATABASE {doomed} WITH (FORCE)' >/dev/null; REAL \"$@\"",
            c.dir.display(),
            c.port
        ),
    );
    let before = site.backups().len();
    let out = site.cli_env(
        &["backup"],
        &[
            ("CKAN_VAULT_DATABASE_BIN_DIR", drop_it.to_str().unwrap()),
            ("CKAN_VAULT_CKAN_DATABASE_URL", &c.url(&doomed)),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    assert_eq!(site.backups().len(), before);
    // And the next ordinary backup works.
    site.ok(&["backup"]);
    assert_eq!(site.backups().len(), before + 1);
    // None of the failures damaged the vault or the backup made before them.
    let check = site.json(&["check", "--read-data"]);
    assert_eq!(check["ok"], true, "{check}");
    let out = site.cli(&["dump", &first, "db/ckan.pgdump"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout.starts_with(b"PGDMP"));
}

#[test]
fn operator_errors_are_one_line_with_exit_code_2() {
    let site = Site::new(20);
    // Wrong vault password.
    let out = site.cli_env(
        &["snapshots"],
        &[("CKAN_VAULT_PASSWORD", "not the password")],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("wrong password") && !err.contains("not the password"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // Unknown key in the config file.
    let bad = site.path().join("bad.toml");
    std::fs::write(&bad, "[repository]\nrepositry = \"/x\"\n").unwrap();
    let out = site.cli(&["backup", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("repositry"), "{}", stderr(&out));
    // Malformed ckan.ini.
    let ini = site.path().join("broken.ini");
    std::fs::write(&ini, "[app:main]\nsqlalchemy.url = a\nsqlalchemy.url = b\n").unwrap();
    let out = site.cli_env(
        &["backup"],
        &[("CKAN_VAULT_CKAN_INI", ini.to_str().unwrap())],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("appears twice"), "{}", stderr(&out));
    // Unreachable database: names the target, not the password; nothing written.
    let before = site.backups().len();
    let out = site.cli_env(
        &["backup"],
        &[(
            "CKAN_VAULT_CKAN_DATABASE_URL",
            "postgresql://ckan:hunter2secret@127.0.0.1:1/ckan",
        )],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("cannot connect to postgresql://ckan@127.0.0.1:1/ckan"),
        "{err}"
    );
    assert!(!err.contains("hunter2secret"), "{err}");
    assert_eq!(site.backups().len(), before);
    // --repo overrides the configured vault, before or after the subcommand.
    for args in [
        ["--repo", "/nonexistent/flag-vault", "snapshots"],
        ["snapshots", "--repo", "/nonexistent/flag-vault"],
    ] {
        let out = site.cli(&args);
        assert_eq!(out.status.code(), Some(2));
        assert!(
            stderr(&out).contains("no vault at /nonexistent/flag-vault;"),
            "{}",
            stderr(&out)
        );
    }
    // Missing vault.
    let out = site.cli_env(
        &["snapshots"],
        &[("CKAN_VAULT_REPOSITORY_REPOSITORY", "/nonexistent/vault")],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("ckan-vault init"), "{}", stderr(&out));
}

#[test]
fn debian_restic_reads_the_vault() {
    let site = Site::new(100);
    site.ok(&["backup"]);
    let restic = |args: &[&str]| {
        Command::new("restic")
            .args([
                "-r",
                site.vault.to_str().unwrap(),
                "--no-cache",
                "--no-lock",
            ])
            .args(args)
            .env("RESTIC_PASSWORD_FILE", &site.password_file)
            .output()
            .expect("restic is not installed: apt-get install restic (or run `bash .ci/run`)")
    };
    // One key file, written by ckan-vault with restic's memory budget (32 MiB for scrypt,
    // not rustic_core's 128 MiB), which restic opens like its own.
    let keys: Vec<_> = std::fs::read_dir(site.vault.join("keys"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let key: serde_json::Value =
        serde_json::from_slice(&std::fs::read(keys[0].path()).unwrap()).unwrap();
    assert_eq!(
        (&key["N"], &key["r"], &key["p"]),
        (&32768.into(), &8.into(), &4.into())
    );
    let listed = restic(&["key", "list", "--json"]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    let snaps = restic(&["snapshots", "--json"]);
    assert!(snaps.status.success(), "{}", stderr(&snaps));
    let list: serde_json::Value = serde_json::from_slice(&snaps.stdout).unwrap();
    let tags = &list[0]["tags"];
    assert!(
        tags.as_array().unwrap().iter().any(|t| t == "backup"),
        "{list}"
    );
    let dumped = restic(&["dump", "latest", "/db/ckan.pgdump"]);
    assert!(dumped.status.success(), "{}", stderr(&dumped));
    let ours = site.cli(&["dump", "latest", "db/ckan.pgdump"]);
    assert!(ours.status.success(), "{}", stderr(&ours));
    assert_eq!(dumped.stdout.len(), ours.stdout.len());
    assert!(dumped.stdout == ours.stdout);
    assert!(dumped.stdout.starts_with(b"PGDMP"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&restic(&["dump", "latest", "/manifest.json"]).stdout).unwrap();
    let size = manifest["streams"]["db/ckan.pgdump"]["size"]
        .as_u64()
        .unwrap();
    assert_eq!(size as usize, dumped.stdout.len());
    // And the dump restic hands out restores with pg_restore.
    let c = site.cluster();
    let target = unique("from_restic");
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
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    pr.stdin.take().unwrap().write_all(&dumped.stdout).unwrap();
    assert!(pr.wait().unwrap().success());
    assert_eq!(c.fingerprint(&site.main_db), c.fingerprint(&target));
    let check = restic(&["check", "--read-data"]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}

/// `dump … | head`: the reader closing the pipe early is not reported as a vault error; the
/// exit code is a shell's SIGPIPE code (141), so `set -o pipefail` still notices.
#[test]
fn dump_into_a_closed_pipe_is_quiet() {
    use std::io::Read;
    let site = Site::new(300);
    site.ok(&["backup"]);
    let mut child = std::process::Command::new(common::site::bin())
        .args(["dump", "latest", "db/ckan.pgdump"])
        .env("CKAN_VAULT_CONFIG", &site.config)
        .env_remove("CKAN_VAULT_PASSWORD")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut head = [0u8; 5];
    child.stdout.take().unwrap().read_exact(&mut head).unwrap(); // then closed
    assert_eq!(&head, b"PGDMP");
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(141), "{err}");
    assert!(!err.contains("error"), "{err}");
}

/// An init that died after writing its key file but before the config left a key behind:
/// the next init removes it, so the vault has exactly the key that opens it.
#[test]
fn init_replaces_the_key_of_an_init_that_did_not_finish() {
    let dir = tempfile::tempdir().unwrap();
    let vault = dir.path().join("vault");
    std::fs::create_dir_all(vault.join("keys")).unwrap();
    let stale = vault.join("keys").join("ab".repeat(32));
    std::fs::write(&stale, b"{\"kdf\":\"scrypt\"}").unwrap();
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "pw\n").unwrap();
    std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[repository]\nrepository = {:?}\npassword-file = {:?}\n",
            vault, pass
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        Command::new(common::site::bin())
            .args(args)
            .env("CKAN_VAULT_CONFIG", &config)
            .env_remove("CKAN_VAULT_PASSWORD")
            .output()
            .unwrap()
    };
    let out = run(&["init"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stale.exists());
    assert_eq!(std::fs::read_dir(vault.join("keys")).unwrap().count(), 1);
    let out = run(&["snapshots"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // A second init refuses: the vault exists.
    let out = run(&["init"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

/// Several sites in one vault: `--site` makes `latest` mean that site's latest backup.
#[test]
fn latest_of_one_site_in_a_shared_vault() {
    use ckan_vault::vault::{Kind, SnapshotMeta};
    let site = Site::new(10);
    let ours = site.json(&["backup"]);
    let ours_id = ours["snapshot"].as_str().unwrap().to_string();
    let label = site.backups()[0]["label"].as_str().unwrap().to_string();
    // Another site's backup, saved later into the same vault (a copy of ours, relabelled).
    let vault = site.open_vault();
    let (_, files) = common::site::files_of_latest(&vault);
    let other = vault
        .save_files(&SnapshotMeta::new(Kind::Backup, "other.example.org"), files)
        .unwrap()
        .id
        .to_hex()
        .to_string();
    let picked = |args: &[&str]| -> String {
        let dir = site.path().join(unique("files"));
        let mut a = vec!["restore", "latest", "--storage", dir.to_str().unwrap()];
        a.extend_from_slice(args);
        site.json(&a)["snapshot"].as_str().unwrap().to_string()
    };
    assert_eq!(picked(&[]), other, "without --site: the vault's latest");
    assert_eq!(picked(&["--site", &label]), ours_id);
    assert_eq!(picked(&["--site", "other.example.org"]), other);
    let o = site.cli(&[
        "dump",
        "latest",
        "manifest.json",
        "--site",
        "nobody.example",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("`latest` of site `nobody.example`"),
        "{}",
        stderr(&o)
    );
}

/// Big tables are read back in page ranges by several sessions at once; the parts must add up
/// to exactly the table (no page read twice or left out), and a changed or lost row in any part
/// must still show.
#[test]
fn verification_in_page_ranges_sums_to_the_whole_table_and_still_sees_damage() {
    use ckan_vault::restore::{ReadBack, find_backup, verify_database};
    let site = Site::new(150);
    let c = site.cluster();
    assert_eq!(site.json(&["backup"])["ok"], true);
    let db = unique("parts");
    let r = site.json(&["restore", "latest", "--db", &c.url(&db)]);
    assert_eq!(r["ok"], true, "{r}");
    let vault = site.open_vault();
    let reader = vault.reader().unwrap();
    let backup = find_backup(&reader, "latest", None).unwrap();
    let record = backup.manifest.main().unwrap();
    let pg = ckan_vault::pg::Pg::new().unwrap();
    let pages: u64 = c
        .sql(&db, "SELECT pg_relation_size('activity') / 8192")
        .trim()
        .parse()
        .unwrap();
    assert!(
        pages >= 9,
        "activity has {pages} pages: too few to split in 3"
    );
    // Every table of at least 1 byte in up to 3 parts: more parts than cores, on purpose.
    let split = ReadBack {
        sessions: 3,
        split_bytes: 1,
    };
    let target = c.target(&db);
    let (bad, extra) = verify_database(&pg, &target, record, &split).unwrap();
    assert!(bad.is_empty() && extra.is_empty(), "{bad:?} {extra:?}");
    // A row lost from the last part, one changed in the first: both named.
    c.sql(
        &db,
        "DELETE FROM activity WHERE ctid = (SELECT max(ctid) FROM activity); \
         UPDATE package SET title = title || '!' WHERE ctid = '(0,1)'",
    );
    let (bad, _) = verify_database(&pg, &target, record, &split).unwrap();
    let detail = |t: &str| {
        bad.iter()
            .find(|m| m.table == t)
            .map(|m| m.detail.clone())
            .unwrap_or_else(|| panic!("{t} not reported: {bad:?}"))
    };
    let rows = record.dump.tables["public.activity"].sum.rows;
    assert_eq!(
        detail("public.activity"),
        format!("{} rows, manifest says {rows}", rows - 1)
    );
    assert_eq!(
        detail("public.package"),
        "checksum differs (same row count)"
    );
    assert_eq!(bad.len(), 2, "{bad:?}");
    // Whole-table reads (the default split size) agree.
    let (whole, _) = verify_database(&pg, &target, record, &ReadBack::default()).unwrap();
    assert_eq!(whole, bad);
}

/// A restore into a database it creates loads each table's rows through several COPY
/// sessions (here every table is split over 3, more than there are cores): the rows, the
/// indexes and constraints and the sequence values come back exactly, and the read-back check
/// of the same restore agrees.
#[test]
fn a_table_split_over_several_load_sessions_restores_exactly() {
    use ckan_vault::restore::{RestorePlan, find_backup, restore_database};
    let site = Site::new(150);
    let c = site.cluster();
    c.sql(
        &site.main_db,
        "CREATE SEQUENCE ticket_seq; SELECT setval('ticket_seq', 4242); \
         CREATE TABLE \"Odd Name\" (id serial PRIMARY KEY, \"a b\" text); \
         INSERT INTO \"Odd Name\" (\"a b\") SELECT 'row ' || i FROM generate_series(1, 5000) i",
    );
    assert_eq!(site.json(&["backup"])["ok"], true);
    let vault = site.open_vault();
    let reader = vault.reader().unwrap();
    let backup = find_backup(&reader, "latest", None).unwrap();
    let pg = ckan_vault::pg::Pg::new().unwrap();
    let db = unique("split_load");
    let plan = RestorePlan {
        jobs: 3,
        split_bytes: Some(1),
        ..Default::default()
    };
    let rep = restore_database(&pg, &reader, &backup, "main", &c.target(&db), &plan).unwrap();
    assert!(rep.mismatches.is_empty(), "{:?}", rep.mismatches);
    assert_eq!(c.fingerprint(&site.main_db), c.fingerprint(&db));
    assert_eq!(c.schema_objects(&site.main_db), c.schema_objects(&db));
    for seq in ["ticket_seq", "\"Odd Name_id_seq\""] {
        let q = format!("SELECT last_value FROM {seq}");
        assert_eq!(c.sql(&site.main_db, &q), c.sql(&db, &q), "{seq}");
    }
    assert_eq!(c.sql(&db, "SELECT nextval('ticket_seq')"), "4243");
}
