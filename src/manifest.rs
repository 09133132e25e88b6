//! The manifest: what a backup snapshot promises, taken while the dumps streamed.
//!
//! `manifest.json` is written into the snapshot after every database stream ended well, so a
//! snapshot without one is never a good backup. `storage.sha256` (sha256sum format, paths
//! relative to the storage root) follows the storage files for the same reason.
//! Restores and drills check what they read against both.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::pg::ServerInfo;
use crate::pg::archive::ArchiveSummary;

/// Paths of the streams inside a backup snapshot.
pub mod paths {
    pub const MAIN_DB: &str = "db/ckan.pgdump";
    pub const DATASTORE_DB: &str = "db/datastore.pgdump";
    pub const GLOBALS: &str = "db/globals.sql";
    pub const CONFIG: &str = "config/ckan.ini";
    pub const CONFIG_SEALED: &str = "config/ckan.ini.age";
}

/// The manifest's path inside a backup snapshot.
pub const MANIFEST_PATH: &str = "manifest.json";
/// The storage checksums' path inside a backup snapshot.
pub const STORAGE_SUMS_PATH: &str = "storage.sha256";
/// Where the storage files live inside a backup snapshot.
pub const STORAGE_DIR: &str = "storage";
/// The largest manifest ckan-vault will read (a site with 100k tables stays far below).
pub const MAX_MANIFEST_BYTES: usize = 64 << 20;
/// The manifest format this version writes and reads.
pub const FORMAT: u32 = 1;

/// Everything a backup snapshot holds, with sizes and checksums.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub ckan_vault_version: String,
    pub site: String,
    pub site_url: Option<String>,
    pub host: String,
    pub started: jiff::Timestamp,
    pub finished: jiff::Timestamp,
    /// Every stream in the snapshot: path → size and SHA-256.
    pub streams: BTreeMap<String, StreamRecord>,
    /// `main` and `datastore` → what was dumped.
    pub databases: BTreeMap<String, DatabaseRecord>,
    pub globals: GlobalsRecord,
    pub config: Option<ConfigRecord>,
    pub storage: Option<StorageRecord>,
}

/// One stored stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamRecord {
    pub size: u64,
    pub sha256: String,
}

/// One dumped database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseRecord {
    /// The stream's path in the snapshot (`db/ckan.pgdump`).
    pub path: String,
    pub name: String,
    pub server: ServerInfo,
    pub dump: ArchiveSummary,
}

impl DatabaseRecord {
    /// Rows of a CKAN core table (`public.<name>`), if it was dumped.
    pub fn rows(&self, table: &str) -> Option<u64> {
        self.dump
            .tables
            .get(&format!("public.{table}"))
            .map(|t| t.sum.rows)
    }
}

/// The cluster's roles and grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalsRecord {
    /// The stream's path, when the globals were dumped.
    pub path: Option<String>,
    /// Why they were not, otherwise.
    pub skipped: Option<String>,
}

/// The stored CKAN config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigRecord {
    pub path: String,
    /// The file on the CKAN host it came from.
    pub source: String,
    /// Sealed with age to the escrow recipients (`.age`), so the vault password alone does
    /// not yield the site's JWT secret.
    pub sealed: bool,
}

/// The storage tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageRecord {
    /// `ckan.storage_path` on the CKAN host.
    pub source: String,
    pub files: u64,
    pub bytes: u64,
}

/// Errors reading a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is larger than {MAX_MANIFEST_BYTES} bytes")]
    TooLarge,
    #[error("manifest is not valid: {0}")]
    Invalid(String),
    #[error(
        "manifest format {0} is newer than this ckan-vault understands ({FORMAT}); upgrade ckan-vault"
    )]
    Newer(u32),
}

impl Manifest {
    /// Parses a manifest, bounded in size.
    pub fn parse(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge);
        }
        #[derive(Deserialize)]
        struct Probe {
            format: u32,
        }
        let probe: Probe =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Invalid(e.to_string()))?;
        if probe.format > FORMAT {
            return Err(ManifestError::Newer(probe.format));
        }
        serde_json::from_slice(bytes).map_err(|e| ManifestError::Invalid(e.to_string()))
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("manifest serializes");
        v.push(b'\n');
        v
    }

    /// The main database's record.
    pub fn main(&self) -> Option<&DatabaseRecord> {
        self.databases.get("main")
    }

    /// Total rows over all dumped tables.
    pub fn total_rows(&self) -> u64 {
        self.databases
            .values()
            .flat_map(|d| d.dump.tables.values())
            .map(|t| t.sum.rows)
            .sum()
    }
}

/// Parses `storage.sha256`: `HEX  relative/path` lines → path → hash.
pub fn parse_storage_sums(text: &str) -> Result<BTreeMap<String, String>, ManifestError> {
    let mut map = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let (escaped, line) = match line.strip_prefix('\\') {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let (hash, path) = line
            .split_once("  ")
            .ok_or_else(|| ManifestError::Invalid(format!("storage.sha256 line {}", i + 1)))?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ManifestError::Invalid(format!(
                "storage.sha256 line {}: bad hash",
                i + 1
            )));
        }
        let path = if escaped {
            unescape(path)
        } else {
            path.to_string()
        };
        map.insert(path, hash.to_string());
    }
    Ok(map)
}

/// Formats one `storage.sha256` line like GNU sha256sum (escaping `\` and newlines).
pub fn storage_sum_line(hash: &str, path: &str) -> String {
    if path.contains(['\\', '\n', '\r']) {
        let p = path
            .replace('\\', "\\\\")
            .replace('\n', "\\n")
            .replace('\r', "\\r");
        format!("\\{hash}  {p}\n")
    } else {
        format!("{hash}  {path}\n")
    }
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some(o) => out.push(o),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_sums_round_trip_odd_names() {
        let h = "a".repeat(64);
        let mut text = storage_sum_line(&h, "resources/ab/c.csv");
        text += &storage_sum_line(&h, "odd\nname\\x");
        let map = parse_storage_sums(&text).unwrap();
        assert!(map.contains_key("resources/ab/c.csv"));
        assert!(map.contains_key("odd\nname\\x"));
        assert!(parse_storage_sums("zz  x\n").is_err());
    }

    #[test]
    fn rejects_newer_and_garbage_and_unknown_fields() {
        assert!(matches!(
            Manifest::parse(br#"{"format": 99}"#),
            Err(ManifestError::Newer(99))
        ));
        assert!(matches!(
            Manifest::parse(b"\xff"),
            Err(ManifestError::Invalid(_))
        ));
        assert!(matches!(
            Manifest::parse(br#"{"format": 1, "x": 2}"#),
            Err(ManifestError::Invalid(_))
        ));
    }
}
