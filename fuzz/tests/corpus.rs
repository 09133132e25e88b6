//! Replays every stored corpus input through its target's body: the fuzz targets as plain
//! tests, on a stable toolchain (`cargo test` in fuzz/).

use std::path::Path;

fn replay(target: &str, body: fn(&[u8])) {
    let mut n = 0;
    for dir in ["seeds", "corpus", "artifacts"] {
        let d = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir).join(target);
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let bytes = std::fs::read(e.path()).unwrap();
            let name = e.path().display().to_string();
            let r = std::panic::catch_unwind(|| body(&bytes));
            assert!(r.is_ok(), "{target}: {name} fails");
            n += 1;
        }
    }
    eprintln!("{target}: {n} inputs");
    assert!(n > 0, "no corpus for {target}");
}

#[test]
fn ckan_ini() {
    replay("ckan_ini", ckan_vault_fuzz::ckan_ini);
}

#[test]
fn manifest() {
    replay("manifest", ckan_vault_fuzz::manifest);
}

#[test]
fn archive_tap() {
    replay("archive_tap", ckan_vault_fuzz::archive_tap);
}

#[test]
fn access_file() {
    replay("access_file", ckan_vault_fuzz::access_file);
}

#[test]
fn storage_sums() {
    replay("storage_sums", ckan_vault_fuzz::storage_sums);
}
