//! The bodies of ckan-vault's fuzz targets, shared by the libFuzzer binaries in
//! `fuzz_targets/` and by `tests/corpus.rs`, which replays the stored corpora as plain tests
//! (on a stable toolchain, without libFuzzer). Each function panics only on a broken
//! property: a crash, or an answer that contradicts another way of computing it.

use std::path::Path;

use ckan_vault::ckan::ini::CkanIni;
use ckan_vault::manifest::{self, Manifest};
use ckan_vault::pg::archive::ArchiveTap;
use ckan_vault::token::access_file::AccessFile;
use secrecy::SecretString;

/// `ckan.ini`: any bytes parse or fail with an error; the first key's lookup never panics.
pub fn ckan_ini(data: &[u8]) {
    if let Ok(ini) = CkanIni::parse(Path::new("/etc/ckan/default/ckan.ini"), data) {
        let _ = ini.get("sqlalchemy.url");
        let _ = ini.site();
    }
}

/// `manifest.json`: whatever parses serializes and parses back to the same manifest.
pub fn manifest(data: &[u8]) {
    if let Ok(m) = Manifest::parse(data) {
        let again = Manifest::parse(&m.to_json()).expect("a manifest we wrote parses");
        assert_eq!(m, again, "manifest round trip");
    }
}

/// `storage.sha256`: parsed entries written back with `storage_sum_line` parse the same.
pub fn storage_sums(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(map) = manifest::parse_storage_sums(text) {
        let mut out = String::new();
        for (path, hash) in &map {
            out.push_str(&manifest::storage_sum_line(hash, path));
        }
        let again = manifest::parse_storage_sums(&out).expect("lines we wrote parse");
        assert_eq!(map, again, "storage.sha256 round trip");
    }
}

/// The pg_dump archive tap: the verdict does not depend on how the stream is cut into
/// pieces (the first byte picks the piece sizes).
pub fn archive_tap(data: &[u8]) {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let mut whole = ArchiveTap::new();
    whole.feed(stream);
    let whole = whole.finish();
    let mut pieces = ArchiveTap::new();
    let mut rest = stream;
    let mut step = usize::from(seed % 31) + 1;
    while !rest.is_empty() {
        let n = step.min(rest.len());
        pieces.feed(&rest[..n]);
        rest = &rest[n..];
        step = step * 7 % 61 + 1;
    }
    let pieces = pieces.finish();
    assert_eq!(whole, pieces, "the verdict depends on the piece sizes");
}

/// `.dcor-access` tokens: listing and decrypting never panic and stay within the bounds.
pub fn access_file(data: &[u8]) {
    let _ = AccessFile::inspect_bytes(data);
    // The fixtures' passwords, so that well-formed inputs get past the decryption.
    for pw in ["42", "correct horse"] {
        let _ = AccessFile::from_bytes(data, &SecretString::from(pw));
    }
}
