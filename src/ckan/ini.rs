//! Reading `ckan.ini` the way CKAN does, for the few keys a backup needs.
//!
//! CKAN reads its config with Python's `configparser` (through paste.deploy): sections,
//! `key = value`, `#`/`;` comments, indented continuation lines, `%(here)s` and other
//! `%(name)s` interpolation from `[DEFAULT]` and the same section, and duplicate keys are an
//! error. Environment variables such as `CKAN_SQLALCHEMY_URL` override the file, as in CKAN.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The section CKAN's own settings live in.
pub const APP_SECTION: &str = "app:main";

/// Errors reading `ckan.ini`. Each names the file, the line or key, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum IniError {
    #[error("cannot read {path}: {source}; set [ckan] ini in ckan-vault.toml or $CKAN_INI")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: not UTF-8 text; save ckan.ini as UTF-8")]
    NotUtf8 { path: PathBuf, line: usize },
    #[error("{path}:{line}: {what}")]
    Syntax {
        path: PathBuf,
        line: usize,
        what: String,
    },
    #[error(
        "{path}:{line}: key `{key}` appears twice in [{section}] (first on line {first}); keep one"
    )]
    Duplicate {
        path: PathBuf,
        line: usize,
        first: usize,
        section: String,
        key: String,
    },
    #[error("{path}: no [app:main] section; is this a CKAN config file?")]
    NoAppSection { path: PathBuf },
    #[error("{path}: `{key}` is missing in [app:main]; add it or set it in ckan-vault.toml")]
    Missing { path: PathBuf, key: String },
    #[error(
        "{path}: `{key}` refers to %({name})s, which is not defined; define it in [DEFAULT] or [app:main]"
    )]
    Interpolation {
        path: PathBuf,
        key: String,
        name: String,
    },
    #[error("{path}: `{key}`: {what}; simplify its %(name)s references")]
    Expansion {
        path: PathBuf,
        key: String,
        what: String,
    },
}

/// How deep `%(name)s` references may nest (Python's configparser has the same limit).
const MAX_DEPTH: usize = 10;
/// Substitutions and expanded bytes one file may need in all: references that repeat
/// each other ("billion laughs") are refused instead of taking forever.
const MAX_SUBSTITUTIONS: usize = 100_000;
const MAX_EXPANDED_BYTES: usize = 16 << 20;

/// What is left of the expansion budget while one file is interpolated.
struct Budget {
    substitutions: usize,
    bytes: usize,
}

impl crate::error::Categorized for IniError {
    fn category(&self) -> crate::error::Category {
        crate::error::Category::Usage
    }
}

/// A parsed `ckan.ini`: the `[app:main]` keys with `[DEFAULT]` underneath, interpolated.
#[derive(Debug, Clone)]
pub struct CkanIni {
    path: PathBuf,
    values: BTreeMap<String, String>,
}

/// Environment variables CKAN itself lets override `ckan.ini` keys.
const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("CKAN_SQLALCHEMY_URL", "sqlalchemy.url"),
    ("CKAN_DATASTORE_WRITE_URL", "ckan.datastore.write_url"),
    ("CKAN_DATASTORE_READ_URL", "ckan.datastore.read_url"),
    ("CKAN_SITE_URL", "ckan.site_url"),
    ("CKAN_STORAGE_PATH", "ckan.storage_path"),
];

impl CkanIni {
    /// Reads and parses the file, applying CKAN's environment overrides.
    pub fn load(path: &Path) -> Result<Self, IniError> {
        let bytes = std::fs::read(path).map_err(|source| IniError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut ini = Self::parse(path, &bytes)?;
        for (var, key) in ENV_OVERRIDES {
            if let Ok(v) = std::env::var(var)
                && !v.is_empty()
            {
                ini.values.insert((*key).to_string(), v);
            }
        }
        Ok(ini)
    }

    /// Parses `bytes` as the content of `path` (used for `%(here)s` and in messages).
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self, IniError> {
        let sections = parse_sections(path, bytes)?;
        let defaults = sections.get("DEFAULT").cloned().unwrap_or_default();
        let app = sections
            .get(APP_SECTION)
            .ok_or_else(|| IniError::NoAppSection {
                path: path.to_owned(),
            })?;
        let mut raw: BTreeMap<String, String> =
            defaults.into_iter().map(|(k, (v, _))| (k, v)).collect();
        for (k, (v, _)) in app {
            raw.insert(k.clone(), v.clone());
        }
        let here = path
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .unwrap_or(Path::new("."));
        let here = std::path::absolute(here).unwrap_or_else(|_| here.to_owned());
        raw.entry("here".into())
            .or_insert_with(|| here.display().to_string());
        raw.entry("__file__".into())
            .or_insert_with(|| path.display().to_string());
        let mut values = BTreeMap::new();
        let mut budget = Budget {
            substitutions: MAX_SUBSTITUTIONS,
            bytes: MAX_EXPANDED_BYTES,
        };
        for (k, v) in &raw {
            values.insert(k.clone(), interpolate(path, k, v, &raw, 0, &mut budget)?);
        }
        Ok(Self {
            path: path.to_owned(),
            values,
        })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A key of `[app:main]` (or `[DEFAULT]`), interpolated; empty values count as absent.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// A key that must be present.
    pub fn require(&self, key: &str) -> Result<&str, IniError> {
        self.get(key).ok_or_else(|| IniError::Missing {
            path: self.path.clone(),
            key: key.to_string(),
        })
    }

    /// The keys a backup needs, read once.
    pub fn site(&self) -> Result<SiteSettings, IniError> {
        Ok(SiteSettings {
            sqlalchemy_url: self.require("sqlalchemy.url")?.to_string(),
            datastore_write_url: self.get("ckan.datastore.write_url").map(str::to_string),
            storage_path: self.get("ckan.storage_path").map(PathBuf::from),
            site_url: self.get("ckan.site_url").map(str::to_string),
        })
    }
}

/// What ckan-vault takes from `ckan.ini`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteSettings {
    /// The main database (holds a password: never print it as is).
    pub sqlalchemy_url: String,
    /// The DataStore database, written through this URL, when the site has one.
    pub datastore_write_url: Option<String>,
    /// Where uploaded files live.
    pub storage_path: Option<PathBuf>,
    /// The public URL, used as the snapshot label and for token checks.
    pub site_url: Option<String>,
}

type Section = BTreeMap<String, (String, usize)>;

fn parse_sections(path: &Path, bytes: &[u8]) -> Result<BTreeMap<String, Section>, IniError> {
    let mut sections: BTreeMap<String, Section> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut last_key: Option<String> = None;
    for (idx, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        let line_no = idx + 1;
        let line = std::str::from_utf8(raw).map_err(|_| IniError::NotUtf8 {
            path: path.to_owned(),
            line: line_no,
        })?;
        let line = line.strip_suffix('\r').unwrap_or(line);
        let trimmed = line.trim();
        if trimmed.is_empty() {
            last_key = None;
            continue;
        }
        if trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        let indented = line.starts_with([' ', '\t']);
        if indented && let (Some(sec), Some(key)) = (&current, &last_key) {
            // A continuation line of a multi-line value.
            let entry = sections
                .get_mut(sec)
                .and_then(|s| s.get_mut(key))
                .expect("continued key exists");
            if !entry.0.is_empty() {
                entry.0.push('\n');
            }
            entry.0.push_str(trimmed);
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix('[') {
            let name = rest.strip_suffix(']').ok_or_else(|| IniError::Syntax {
                path: path.to_owned(),
                line: line_no,
                what: "section header without a closing `]`".into(),
            })?;
            sections.entry(name.to_string()).or_default();
            current = Some(name.to_string());
            last_key = None;
            continue;
        }
        let Some(sec) = &current else {
            return Err(IniError::Syntax {
                path: path.to_owned(),
                line: line_no,
                what: "a key before any [section] header; put it under [app:main]".into(),
            });
        };
        let split = trimmed.find(['=', ':']).ok_or_else(|| IniError::Syntax {
            path: path.to_owned(),
            line: line_no,
            what: "expected `key = value`".into(),
        })?;
        let key = trimmed[..split].trim().to_lowercase();
        let value = trimmed[split + 1..].trim().to_string();
        if key.is_empty() {
            return Err(IniError::Syntax {
                path: path.to_owned(),
                line: line_no,
                what: "a value without a key".into(),
            });
        }
        let section = sections.get_mut(sec).expect("current section exists");
        if let Some((_, first)) = section.get(&key) {
            return Err(IniError::Duplicate {
                path: path.to_owned(),
                line: line_no,
                first: *first,
                section: sec.clone(),
                key,
            });
        }
        section.insert(key.clone(), (value, line_no));
        last_key = Some(key);
    }
    Ok(sections)
}

fn interpolate(
    path: &Path,
    key: &str,
    value: &str,
    vars: &BTreeMap<String, String>,
    depth: usize,
    budget: &mut Budget,
) -> Result<String, IniError> {
    if !value.contains('%') {
        return Ok(value.to_string());
    }
    let fail = |what: String| IniError::Expansion {
        path: path.to_owned(),
        key: key.to_string(),
        what,
    };
    if depth > MAX_DEPTH {
        return Err(fail(format!(
            "%(name)s references nest deeper than {MAX_DEPTH} levels (a reference loop?)"
        )));
    }
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(pos) = rest.find('%') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(r) = after.strip_prefix('%') {
            out.push('%');
            rest = r;
        } else if let Some(r) = after.strip_prefix('(')
            && let Some(end) = r.find(")s")
        {
            let name = r[..end].to_lowercase();
            let sub = vars.get(&name).ok_or_else(|| IniError::Interpolation {
                path: path.to_owned(),
                key: key.to_string(),
                name: name.clone(),
            })?;
            budget.substitutions = budget.substitutions.checked_sub(1).ok_or_else(|| {
                fail(format!(
                    "more than {MAX_SUBSTITUTIONS} %(name)s substitutions in the file"
                ))
            })?;
            let expanded = interpolate(path, key, sub, vars, depth + 1, budget)?;
            budget.bytes = budget.bytes.checked_sub(expanded.len()).ok_or_else(|| {
                fail(format!(
                    "%(name)s references expand to more than {} MiB",
                    MAX_EXPANDED_BYTES >> 20
                ))
            })?;
            out.push_str(&expanded);
            rest = &r[end + 2..];
        } else {
            out.push('%');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<CkanIni, IniError> {
        CkanIni::parse(Path::new("/etc/ckan/default/ckan.ini"), text.as_bytes())
    }

    #[test]
    fn reads_app_main_with_defaults_and_here() {
        let ini = parse(
            "[DEFAULT]\ndebug = false\n\n[app:main]\nuse = egg:ckan\n\
             sqlalchemy.url = postgresql://u:p@db/ckan\nckan.storage_path = %(here)s/storage\n\
             # comment\n; other\nckan.plugins = a\n  b\n",
        )
        .unwrap();
        assert_eq!(ini.get("debug"), Some("false"));
        assert_eq!(
            ini.get("ckan.storage_path"),
            Some("/etc/ckan/default/storage")
        );
        assert_eq!(ini.get("ckan.plugins"), Some("a\nb"));
        let site = ini.site().unwrap();
        assert_eq!(site.sqlalchemy_url, "postgresql://u:p@db/ckan");
        assert_eq!(site.datastore_write_url, None);
    }

    #[test]
    fn duplicate_keys_are_rejected_with_both_lines() {
        let err = parse("[app:main]\na = 1\nb = 2\na = 3\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(":4:") && err.contains("line 2") && err.contains("`a`"),
            "{err}"
        );
    }

    #[test]
    fn missing_section_and_key_and_bad_bytes() {
        assert!(matches!(
            parse("[DEFAULT]\na = 1\n"),
            Err(IniError::NoAppSection { .. })
        ));
        let ini = parse("[app:main]\nckan.site_url = http://x\n").unwrap();
        let err = ini.site().unwrap_err().to_string();
        assert!(err.contains("sqlalchemy.url"), "{err}");
        let err = CkanIni::parse(Path::new("x.ini"), b"[app:main]\na = \xff\n").unwrap_err();
        assert!(matches!(err, IniError::NotUtf8 { line: 2, .. }));
        assert!(matches!(
            parse("a = 1\n"),
            Err(IniError::Syntax { line: 1, .. })
        ));
        assert!(matches!(parse("[app:main\n"), Err(IniError::Syntax { .. })));
        assert!(matches!(
            parse("[app:main]\nx = %(nope)s\n"),
            Err(IniError::Interpolation { .. })
        ));
    }
}
