//! ckan-vault's configuration: a TOML file, environment variables and flags, merged once into
//! typed settings (as rustic does with its profiles).
//!
//! Precedence: flags, then `CKAN_VAULT_<SECTION>_<KEY>` environment variables, then the file,
//! then `ckan.ini` for what CKAN already knows (database URLs, storage path, site URL).
//! Unknown keys are errors, so a typo never silently falls back to a default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::Deserialize;

use crate::backup::{BackupPlan, Globals};
use crate::ckan::ini::{CkanIni, IniError};
use crate::error::{Categorized, Category};
use crate::pg::{BinDir, ConnInfo, Target};
use crate::secret::{SecretError, SecretSource};
use crate::vault::VaultConfig;

/// Where the configuration file is looked for when `--config` and `$CKAN_VAULT_CONFIG` are unset.
pub const DEFAULT_PATHS: &[&str] = &["/etc/ckan-vault/ckan-vault.toml", "ckan-vault.toml"];
/// Where `ckan.ini` is looked for when neither the config nor `$CKAN_INI` names it.
pub const DEFAULT_CKAN_INI: &str = "/etc/ckan/default/ckan.ini";

/// Configuration errors: each names the file or key and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error(
        "no vault configured; set [repository] repository in ckan-vault.toml or $CKAN_VAULT_REPOSITORY"
    )]
    NoRepository,
    #[error(
        "no vault password; set [repository] password-file or password-command, or $CKAN_VAULT_PASSWORD"
    )]
    NoPassword,
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Ini(#[from] IniError),
    #[error("{key}: {source}")]
    Url {
        key: String,
        source: crate::pg::conninfo::ConnInfoError,
    },
    #[error(
        "{key}: no database name in {url}; CKAN would connect to the database named like the user ({guess}), ckan-vault does not guess: write it into the URL, as in postgresql://USER:PASSWORD@HOST:PORT/DBNAME"
    )]
    NoDatabase {
        key: String,
        /// The URL with its password replaced by `***`.
        url: String,
        guess: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Escrow(#[from] crate::escrow::Error),
    #[error(transparent)]
    Ckan(#[from] crate::ckan::api::Error),
    #[error("no CKAN URL: set [ckan] url, or ckan.site_url in ckan.ini ([ckan] ini)")]
    NoCkanUrl,
    #[error(
        "[ckan] certificate is not set: point it at the site's PEM certificate, the one DCOR-Aid users will trust (e.g. /etc/ssl/certs/FQDN.cert)"
    )]
    NoCertificate,
    #[error("cannot read [ckan] certificate {path}: {source}; check the path and its permissions")]
    Certificate {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "[escrow] seal-config = true but no recipients: set [escrow] recipients or recipients-file"
    )]
    SealWithoutRecipients,
    #[error("no ckan.ini for `--via cli`: set [ckan] ini or $CKAN_INI")]
    NoCkanIni,
}

impl Categorized for ConfigError {
    fn category(&self) -> Category {
        Category::Usage
    }
}

/// The configuration file's content.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    pub repository: RepositorySection,
    pub ckan: CkanSection,
    pub database: DatabaseSection,
    pub escrow: EscrowSection,
    pub retention: RetentionSection,
    pub monitoring: MonitoringSection,
    pub drill: DrillSection,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct RepositorySection {
    /// A local path, `rest:http://host:port/path` or `opendal:s3`.
    pub repository: Option<String>,
    pub password_file: Option<PathBuf>,
    /// A command (argv list, no shell) printing the password.
    pub password_command: Option<Vec<String>>,
    pub cache_dir: Option<PathBuf>,
    /// Backend options (S3: bucket, root, endpoint, region, access_key_id, …).
    pub options: BTreeMap<String, String>,
    /// A file holding the S3 secret key (kept out of the config file).
    pub secret_access_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct CkanSection {
    /// `ckan.ini` (default: `$CKAN_INI`, then /etc/ckan/default/ckan.ini).
    pub ini: Option<PathBuf>,
    /// The snapshot label (default: the host of the site URL).
    pub site: Option<String>,
    /// The site URL for the Action API (default: `ckan.site_url`).
    pub url: Option<String>,
    /// Overrides `sqlalchemy.url`.
    pub database_url: Option<String>,
    /// Overrides `ckan.datastore.write_url`; set to "" to leave the DataStore out.
    pub datastore_url: Option<String>,
    /// Overrides `ckan.storage_path`; set to "" to leave storage out.
    pub storage_path: Option<PathBuf>,
    /// Whether to store `ckan.ini` in backups (default true).
    pub backup_config: Option<bool>,
    /// A sysadmin's API token (0600 file).
    pub api_token_file: Option<PathBuf>,
    /// The server's PEM certificate, bundled into access tokens.
    pub certificate: Option<PathBuf>,
    /// The `ckan` program for `--via cli` (argv list).
    pub ckan_command: Option<Vec<String>>,
    /// Seconds to wait for CKAN's API.
    pub timeout: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct DatabaseSection {
    /// A superuser connection for `pg_dumpall --globals-only`.
    pub admin_url: Option<String>,
    /// Run pg_dump as this OS user (peer authentication, e.g. "postgres").
    pub run_as: Option<String>,
    /// Parallel sessions of `restore` and `drill` (a big table's rows, the read-back, indexes
    /// and constraints; default: number of cores); dumps stay one stream per database.
    pub jobs: Option<usize>,
    /// Where pg_dump, pg_restore and psql live (default: the server's version under
    /// /usr/lib/postgresql, else PATH).
    pub bin_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct EscrowSection {
    /// age recipients (`age1…`, `ssh-ed25519 …`, `ssh-rsa …`).
    pub recipients: Vec<String>,
    pub recipients_file: Option<PathBuf>,
    /// Seal ckan.ini in backups to the recipients (default: true when recipients are set).
    pub seal_config: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct RetentionSection {
    pub keep_last: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
    /// e.g. "30d".
    pub keep_within: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct MonitoringSection {
    /// Prometheus textfile-collector file.
    pub metrics_file: Option<PathBuf>,
    /// healthchecks.io-style URL (`/start`, `/fail` are appended).
    pub ping_url: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct DrillSection {
    /// Percent of storage files a drill reads back (default 100).
    pub storage_sample: Option<f64>,
}

/// A config file found and parsed, with where it came from.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub config: Config,
    pub path: Option<PathBuf>,
}

/// Keys that environment variables may set, as `section.key`.
const KEYS: &[&str] = &[
    "repository.repository",
    "repository.password-file",
    "repository.password-command",
    "repository.cache-dir",
    "repository.secret-access-key-file",
    "ckan.ini",
    "ckan.site",
    "ckan.url",
    "ckan.database-url",
    "ckan.datastore-url",
    "ckan.storage-path",
    "ckan.backup-config",
    "ckan.api-token-file",
    "ckan.certificate",
    "ckan.ckan-command",
    "ckan.timeout",
    "database.admin-url",
    "database.run-as",
    "database.jobs",
    "database.bin-dir",
    "escrow.recipients",
    "escrow.recipients-file",
    "escrow.seal-config",
    "retention.keep-last",
    "retention.keep-daily",
    "retention.keep-weekly",
    "retention.keep-monthly",
    "retention.keep-yearly",
    "retention.keep-within",
    "monitoring.metrics-file",
    "monitoring.ping-url",
    "drill.storage-sample",
];

/// The environment variable for a `section.key`.
pub fn env_var(key: &str) -> String {
    format!("CKAN_VAULT_{}", key.replace(['.', '-'], "_").to_uppercase())
}

impl Loaded {
    /// Reads the config file (explicit path, else the defaults; none found is fine), then
    /// applies environment variables and `overrides` (`section.key` → TOML value text).
    pub fn load(
        explicit: Option<&Path>,
        overrides: &[(String, String)],
    ) -> Result<Self, ConfigError> {
        let path = match explicit {
            Some(p) => Some(p.to_path_buf()),
            None => DEFAULT_PATHS.iter().map(PathBuf::from).find(|p| p.exists()),
        };
        let mut table = match &path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.clone(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Parse {
                        path: p.display().to_string(),
                        message: one_line(&e.to_string()),
                    })?
            }
            None => toml::Table::new(),
        };
        for key in KEYS {
            let var = env_var(key);
            if let Ok(v) = std::env::var(&var) {
                set(&mut table, key, &v).map_err(|message| ConfigError::Env { var, message })?;
            }
        }
        // Shortcuts operators already know.
        if let Ok(v) = std::env::var("CKAN_VAULT_REPOSITORY") {
            set(&mut table, "repository.repository", &v).map_err(|message| ConfigError::Env {
                var: "CKAN_VAULT_REPOSITORY".into(),
                message,
            })?;
        }
        for (k, v) in overrides {
            set(&mut table, k, v)
                .map_err(|message| ConfigError::Invalid(format!("--{k}: {message}")))?;
        }
        let shown = path
            .as_ref()
            .map_or_else(|| "(environment)".to_string(), |p| p.display().to_string());
        let config: Config = table
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                path: shown,
                message: one_line(&e.to_string()),
            })?;
        Ok(Self { config, path })
    }
}

fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with('|') && !l.chars().all(|c| c == '^' || c == ' ')
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Parses a `--set section.key=VALUE` flag into an override for [`Loaded::load`]. Only the
/// keys environment variables may set are accepted, and a value holding a password is
/// refused: a command line is readable by every user of the host (`/proc/*/cmdline`).
pub fn parse_override(arg: &str) -> Result<(String, String), ConfigError> {
    let (key, value) = arg.split_once('=').ok_or_else(|| {
        ConfigError::Invalid(format!(
            "--set {}: write it as section.key=VALUE, e.g. --set database.jobs=2",
            arg.split('=').next().unwrap_or(arg)
        ))
    })?;
    let key = key.trim();
    if !KEYS.contains(&key) {
        return Err(ConfigError::Invalid(format!(
            "--set {key}: not a setting; the keys are listed in docs/configuration.md (e.g. database.jobs, ckan.ini)"
        )));
    }
    if crate::pg::conninfo::redact_url(value) != value || value.contains("password=") {
        return Err(ConfigError::Invalid(format!(
            "--set {key}: the value holds a password, which a command line shows to every user of this host; put it in the config file or in ${}",
            env_var(key)
        )));
    }
    Ok((key.to_string(), value.to_string()))
}

/// Keys whose values are not strings: numbers, booleans and lists.
const TYPED_KEYS: &[&str] = &[
    "repository.password-command",
    "ckan.backup-config",
    "ckan.ckan-command",
    "ckan.timeout",
    "database.jobs",
    "escrow.recipients",
    "escrow.seal-config",
    "retention.keep-last",
    "retention.keep-daily",
    "retention.keep-weekly",
    "retention.keep-monthly",
    "retention.keep-yearly",
    "drill.storage-sample",
];

/// Sets `section.key` in the TOML table. Values of typed keys are parsed as TOML (`7`,
/// `true`, `["a", "b"]`); every other value is taken as the string it is.
fn set(table: &mut toml::Table, key: &str, raw: &str) -> Result<(), String> {
    let (section, name) = key.split_once('.').ok_or("not a section.key")?;
    let value = if TYPED_KEYS.contains(&key) {
        format!("v = {raw}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.to_string()))
    } else {
        toml::Value::String(raw.to_string())
    };
    let sec = table
        .entry(section.to_string())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let sec = sec.as_table_mut().ok_or("section is not a table")?;
    sec.insert(name.to_string(), value);
    Ok(())
}

/// What CKAN's own config says, with ckan-vault's overrides applied.
#[derive(Debug, Clone)]
pub struct Site {
    pub label: String,
    pub site_url: Option<String>,
    pub ini_path: Option<PathBuf>,
    pub main: Target,
    pub datastore: Option<Target>,
    pub storage: Option<PathBuf>,
}

impl Config {
    /// The vault's location and password.
    pub fn vault(&self) -> Result<VaultConfig, ConfigError> {
        let r = &self.repository;
        let repository = r.repository.clone().ok_or(ConfigError::NoRepository)?;
        let password: SecretString = if let Ok(p) = std::env::var("CKAN_VAULT_PASSWORD") {
            SecretString::from(p)
        } else if let Some(f) = &r.password_file {
            SecretSource::File(f.clone()).read()?
        } else if let Some(cmd) = &r.password_command {
            SecretSource::Command(cmd.clone()).read()?
        } else {
            return Err(ConfigError::NoPassword);
        };
        let mut options = r.options.clone();
        if let Some(f) = &r.secret_access_key_file {
            use secrecy::ExposeSecret;
            let s = SecretSource::File(f.clone()).read()?;
            options.insert("secret_access_key".into(), s.expose_secret().to_string());
        }
        Ok(VaultConfig {
            repository,
            options,
            password,
            cache_dir: r.cache_dir.clone(),
        })
    }

    /// The `[retention]` policy (`keep-within` as a span such as "30d" or "P1M").
    pub fn retention(&self) -> Result<crate::vault::maintenance::Retention, ConfigError> {
        let r = &self.retention;
        let keep_within = match r.keep_within.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(s) => Some(s.parse::<jiff::Span>().map_err(|e| {
                ConfigError::Invalid(format!(
                    "[retention] keep-within = {s:?}: {e}; use a span such as \"30d\" or \"2w 3d\""
                ))
            })?),
        };
        Ok(crate::vault::maintenance::Retention {
            keep_last: r.keep_last,
            keep_daily: r.keep_daily,
            keep_weekly: r.keep_weekly,
            keep_monthly: r.keep_monthly,
            keep_yearly: r.keep_yearly,
            keep_within,
        })
    }

    /// The `ckan.ini` path to use, if any.
    pub fn ini_path(&self) -> Option<PathBuf> {
        self.ckan
            .ini
            .clone()
            .or_else(|| std::env::var_os("CKAN_INI").map(PathBuf::from))
            .or_else(|| {
                let p = PathBuf::from(DEFAULT_CKAN_INI);
                p.exists().then_some(p)
            })
    }

    /// Reads `ckan.ini` (when there is one) and resolves the site's databases and storage.
    pub fn site(&self) -> Result<Site, ConfigError> {
        let c = &self.ckan;
        let ini_path = self.ini_path();
        let ini = match &ini_path {
            Some(p) if c.database_url.is_none() || p.exists() => Some(CkanIni::load(p)?),
            _ => None,
        };
        let from_ini = |key: &str| ini.as_ref().and_then(|i| i.get(key)).map(str::to_string);
        let main_url = match &c.database_url {
            Some(u) => u.clone(),
            None => match &ini {
                Some(i) => i.require("sqlalchemy.url")?.to_string(),
                None => {
                    return Err(ConfigError::Invalid(format!(
                        "no ckan.ini found (looked at $CKAN_INI and {DEFAULT_CKAN_INI}); set [ckan] ini or [ckan] database-url"
                    )));
                }
            },
        };
        let datastore_url = match &c.datastore_url {
            Some(u) if u.is_empty() => None,
            Some(u) => Some(u.clone()),
            None => from_ini("ckan.datastore.write_url"),
        };
        let storage = match &c.storage_path {
            Some(p) if p.as_os_str().is_empty() => None,
            Some(p) => Some(p.clone()),
            None => from_ini("ckan.storage_path").map(PathBuf::from),
        };
        let site_url = c.url.clone().or_else(|| from_ini("ckan.site_url"));
        let label = c.site.clone().unwrap_or_else(|| {
            site_url
                .as_deref()
                .and_then(|u| url::Url::parse(u).ok())
                .and_then(|u| u.host_str().map(str::to_string))
                .unwrap_or_else(|| "ckan".to_string())
        });
        let target = |key: &str, url: &str| -> Result<Target, ConfigError> {
            let conn = ConnInfo::parse(url).map_err(|source| ConfigError::Url {
                key: key.to_string(),
                source,
            })?;
            // libpq would fall back to the user's name (or $PGDATABASE): a backup must
            // name what it dumps.
            if conn.dbname.is_none() {
                return Err(ConfigError::NoDatabase {
                    key: key.to_string(),
                    url: crate::pg::conninfo::redact_url(url),
                    guess: conn.user.clone().unwrap_or_else(|| "the OS user".into()),
                });
            }
            Ok(self.target(conn))
        };
        Ok(Site {
            label,
            site_url,
            main: target("sqlalchemy.url", &main_url)?,
            datastore: datastore_url
                .map(|u| target("ckan.datastore.write_url", &u))
                .transpose()?,
            storage,
            ini_path: if c.backup_config == Some(false) {
                None
            } else {
                ini.as_ref().map(|i| i.path().to_path_buf())
            },
        })
    }

    /// A database target with the configured run-as user and binaries.
    pub fn target(&self, conn: ConnInfo) -> Target {
        let mut t = Target::new(conn);
        t.run_as = self.database.run_as.clone();
        if let Some(dir) = &self.database.bin_dir {
            t.bindir = BinDir::pinned(dir.clone());
        }
        t
    }

    /// Where the cluster's globals come from.
    pub fn globals(&self, site: &Site) -> Result<Globals, ConfigError> {
        if let Some(url) = &self.database.admin_url {
            let conn = ConnInfo::parse(url).map_err(|source| ConfigError::Url {
                key: "[database] admin-url".into(),
                source,
            })?;
            return Ok(Globals::Dump(self.target(conn)));
        }
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let local = site.main.conn.host.as_deref().is_none_or(|h| {
            h.starts_with('/') || h == "localhost" || h == "127.0.0.1" || h == "::1"
        });
        if root && local {
            // As sites do today with `su - postgres -c pg_dumpall`: peer auth on the socket.
            let mut conn = site.main.conn.with_user("postgres").with_dbname("postgres");
            if conn.host.as_deref().is_some_and(|h| !h.starts_with('/')) {
                conn.host = None;
            }
            let mut t = self.target(conn);
            t.run_as = Some("postgres".into());
            return Ok(Globals::Dump(t));
        }
        Ok(Globals::Skip(
            "no [database] admin-url (a superuser connection) is configured".into(),
        ))
    }

    /// A complete backup plan. `seal_config` comes from the escrow settings.
    pub fn backup_plan(
        &self,
        seal_config: Option<crate::backup::Sealer>,
    ) -> Result<BackupPlan, ConfigError> {
        let site = self.site()?;
        let globals = self.globals(&site)?;
        Ok(BackupPlan {
            site: site.label,
            site_url: site.site_url,
            main: site.main,
            datastore: site.datastore,
            globals,
            config_file: site.ini_path,
            seal_config,
            storage: site.storage,
            extra_tags: Vec::new(),
        })
    }
}

/// Seconds to wait for CKAN's API when `[ckan] timeout` is not set.
pub const DEFAULT_CKAN_TIMEOUT_SECS: u64 = 60;
/// Largest certificate file read for `[ckan] certificate`.
const MAX_CERTIFICATE_BYTES: u64 = 1024 * 1024;

/// Settings of the token workflow and the sealed config.
impl Config {
    /// The escrow recipients from `[escrow] recipients` and `recipients-file`; None when
    /// neither is set. Set but empty is an error (nothing could be sealed).
    pub fn escrow_recipients(&self) -> Result<Option<crate::escrow::Recipients>, ConfigError> {
        let e = &self.escrow;
        if e.recipients.is_empty() && e.recipients_file.is_none() {
            return Ok(None);
        }
        let mut r = crate::escrow::Recipients::parse(&e.recipients)?;
        if let Some(f) = &e.recipients_file {
            r.extend(crate::escrow::Recipients::from_file(f)?);
        }
        if r.is_empty() {
            return Err(crate::escrow::Error::NoRecipients.into());
        }
        Ok(Some(r))
    }

    /// How backups store `ckan.ini`: sealed to the escrow recipients when there are some
    /// (unless `[escrow] seal-config = false`), else as plain text (None).
    pub fn config_sealer(&self) -> Result<Option<crate::backup::Sealer>, ConfigError> {
        if self.escrow.seal_config == Some(false) {
            return Ok(None);
        }
        match self.escrow_recipients()? {
            Some(r) => Ok(Some(Box::new(move |bytes: &[u8]| {
                crate::escrow::seal(&r, bytes).map_err(|e| e.to_string())
            }))),
            None if self.escrow.seal_config == Some(true) => {
                Err(ConfigError::SealWithoutRecipients)
            }
            None => Ok(None),
        }
    }

    /// The site's URL for the Action API: `[ckan] url`, else `ckan.site_url` in ckan.ini.
    pub fn ckan_url(&self) -> Result<String, ConfigError> {
        if let Some(u) = &self.ckan.url {
            return Ok(u.clone());
        }
        let Some(path) = self.ini_path() else {
            return Err(ConfigError::NoCkanUrl);
        };
        let ini = CkanIni::load(&path)?;
        ini.get("ckan.site_url")
            .filter(|u| !u.trim().is_empty())
            .map(str::to_string)
            .ok_or(ConfigError::NoCkanUrl)
    }

    /// The label of token records: `[ckan] site`, else the host of the CKAN URL.
    pub fn site_label(&self) -> String {
        if let Some(s) = &self.ckan.site {
            return s.clone();
        }
        self.ckan_url()
            .ok()
            .and_then(|u| url::Url::parse(&u).ok())
            .and_then(|u| u.host_str().map(str::to_string))
            .unwrap_or_else(|| "ckan".to_string())
    }

    /// How long to wait for CKAN's API.
    pub fn ckan_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.ckan.timeout.unwrap_or(DEFAULT_CKAN_TIMEOUT_SECS))
    }

    /// The sysadmin's API token from `[ckan] api-token-file`, if set.
    pub fn ckan_admin_token(&self) -> Result<Option<SecretString>, ConfigError> {
        match &self.ckan.api_token_file {
            Some(f) => Ok(Some(crate::secret::read_secret_file(f)?)),
            None => Ok(None),
        }
    }

    /// `[ckan] certificate`'s path.
    pub fn ckan_certificate_path(&self) -> Result<&Path, ConfigError> {
        self.ckan
            .certificate
            .as_deref()
            .ok_or(ConfigError::NoCertificate)
    }

    /// `[ckan] certificate`'s bytes (at most 1 MiB).
    pub fn ckan_certificate_pem(&self) -> Result<Vec<u8>, ConfigError> {
        use std::io::Read;
        let path = self.ckan_certificate_path()?;
        let err = |source| ConfigError::Certificate {
            path: path.to_owned(),
            source,
        };
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .map_err(err)?
            .take(MAX_CERTIFICATE_BYTES)
            .read_to_end(&mut bytes)
            .map_err(err)?;
        Ok(bytes)
    }

    /// A client for CKAN's Action API with the sysadmin's token (when configured). For
    /// an `https` site with `[ckan] certificate` set, the connection trusts exactly that
    /// certificate (pinned), the one DCOR-Aid users get: so every call also checks that
    /// the site serves it. Otherwise the system's roots are trusted.
    pub fn ckan_client(&self) -> Result<crate::ckan::api::Client, ConfigError> {
        let url = self.ckan_url()?;
        let token = self.ckan_admin_token()?;
        let timeout = self.ckan_timeout();
        let https = url.trim_start().to_ascii_lowercase().starts_with("https:");
        if https && self.ckan.certificate.is_some() {
            let pem = self.ckan_certificate_pem()?;
            return Ok(crate::ckan::api::Client::pinned(
                &url, token, timeout, &pem,
            )?);
        }
        Ok(crate::ckan::api::Client::new(&url, token, timeout)?)
    }

    /// The `ckan` command (`[ckan] ckan-command`, default `ckan`) and the ckan.ini it
    /// gets with `-c`, for `--via cli`.
    pub fn ckan_cli(&self) -> Result<(Vec<String>, PathBuf), ConfigError> {
        let command = match &self.ckan.ckan_command {
            Some(c) if !c.is_empty() => c.clone(),
            _ => vec!["ckan".to_string()],
        };
        let ini = self.ini_path().ok_or(ConfigError::NoCkanIni)?;
        Ok((command, ini))
    }
}

#[cfg(test)]
mod tests {
    use super::parse_override;

    #[test]
    fn set_flags_name_known_keys_and_carry_no_password() {
        assert_eq!(
            parse_override("database.jobs=2").unwrap(),
            ("database.jobs".to_string(), "2".to_string())
        );
        let l = super::Loaded::load(None, &[parse_override("database.jobs=3").unwrap()]).unwrap();
        assert_eq!(l.config.database.jobs, Some(3));
        for (bad, want) in [
            ("database.jobs", "section.key=VALUE"),
            ("database.job=2", "not a setting"),
            ("repository.password=x", "not a setting"),
            (
                "database.admin-url=postgresql://u:s3cret@h/postgres",
                "holds a password",
            ),
            (
                "database.admin-url=host=h password=s3cret dbname=x",
                "holds a password",
            ),
        ] {
            let e = parse_override(bad).unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
            assert!(!e.contains("s3cret"), "{bad}: {e}");
        }
    }

    use super::*;

    fn load_text(text: &str) -> Result<Loaded, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, text).unwrap();
        Loaded::load(Some(&p), &[])
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let err = load_text("[repository]\nrepositry = \"/x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("repositry"), "{err}");
        let err = load_text("[nope]\n").unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
        let err = load_text("[repository\n").unwrap_err().to_string();
        assert!(err.contains("c.toml"), "{err}");
    }

    #[test]
    fn overrides_win_and_parse_types() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "[repository]\nrepository = \"/a\"\n[retention]\nkeep-last = 3\n",
        )
        .unwrap();
        let l = Loaded::load(
            Some(&p),
            &[
                ("repository.repository".into(), "/b".into()),
                ("retention.keep-daily".into(), "7".into()),
                ("escrow.recipients".into(), "[\"age1x\", \"age1y\"]".into()),
            ],
        )
        .unwrap();
        assert_eq!(l.config.repository.repository.as_deref(), Some("/b"));
        assert_eq!(l.config.retention.keep_last, Some(3));
        assert_eq!(l.config.retention.keep_daily, Some(7));
        assert_eq!(l.config.escrow.recipients.len(), 2);
        assert_eq!(
            env_var("repository.password-file"),
            "CKAN_VAULT_REPOSITORY_PASSWORD_FILE"
        );
    }

    #[test]
    fn site_from_ckan_ini_with_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let ini = dir.path().join("ckan.ini");
        std::fs::write(
            &ini,
            "[app:main]\nsqlalchemy.url = postgresql://u:pw@db.example:5432/ckan\n\
             ckan.site_url = https://dcor.example.com\nckan.storage_path = %(here)s/files\n\
             ckan.datastore.write_url = postgresql://w:pw@db.example/datastore\n",
        )
        .unwrap();
        let mut c = Config::default();
        c.ckan.ini = Some(ini.clone());
        let s = c.site().unwrap();
        assert_eq!(s.label, "dcor.example.com");
        assert_eq!(s.main.conn.database(), "ckan");
        assert_eq!(s.datastore.as_ref().unwrap().conn.database(), "datastore");
        assert_eq!(s.storage, Some(dir.path().join("files")));
        c.ckan.datastore_url = Some(String::new());
        c.ckan.site = Some("prod".into());
        let s = c.site().unwrap();
        assert!(s.datastore.is_none());
        assert_eq!(s.label, "prod");
    }

    #[test]
    fn escrow_recipients_sealer_and_ckan_settings() {
        let key = age::x25519::Identity::generate();
        let public = key.to_public().to_string();
        let dir = tempfile::tempdir().unwrap();
        let mut c = Config::default();
        assert!(c.escrow_recipients().unwrap().is_none());
        assert!(c.config_sealer().unwrap().is_none());
        c.escrow.seal_config = Some(true);
        assert!(matches!(
            c.config_sealer(),
            Err(ConfigError::SealWithoutRecipients)
        ));

        let file = dir.path().join("recipients.txt");
        std::fs::write(&file, format!("# officer\n{public}\n")).unwrap();
        c.escrow.recipients_file = Some(file.clone());
        c.escrow.recipients = vec![public.clone()];
        assert_eq!(c.escrow_recipients().unwrap().unwrap().len(), 2);
        let seal = c.config_sealer().unwrap().unwrap();
        let sealed = seal(b"SECRET_KEY = x").unwrap();
        assert!(sealed.starts_with(b"age-encryption.org/v1"));
        c.escrow.seal_config = Some(false);
        assert!(c.config_sealer().unwrap().is_none());
        std::fs::write(&file, "# nobody\n").unwrap();
        c.escrow.recipients.clear();
        assert!(c.escrow_recipients().is_err());
        c.escrow.recipients = vec!["AGE-SECRET-KEY-1XYZ".into()];
        let err = c.escrow_recipients().unwrap_err().to_string();
        assert!(!err.contains("XYZ") && err.contains("private key"), "{err}");

        // The URL: [ckan] url, else ckan.site_url from ckan.ini.
        let ini = dir.path().join("ckan.ini");
        std::fs::write(
            &ini,
            "[app:main]\nckan.site_url = https://dcor.example.com\n",
        )
        .unwrap();
        let mut c = Config::default();
        c.ckan.ini = Some(ini);
        assert_eq!(c.ckan_url().unwrap(), "https://dcor.example.com");
        assert_eq!(c.site_label(), "dcor.example.com");
        c.ckan.url = Some("https://other.example.org".into());
        assert_eq!(c.ckan_url().unwrap(), "https://other.example.org");
        assert!(matches!(
            c.ckan_certificate_path(),
            Err(ConfigError::NoCertificate)
        ));
        // An https site with a certificate: the client pins it (so it must parse).
        c.ckan.certificate = Some(dir.path().join("missing.pem"));
        assert!(matches!(
            c.ckan_client(),
            Err(ConfigError::Certificate { .. })
        ));
        let (cmd, _) = c.ckan_cli().unwrap();
        assert_eq!(cmd, ["ckan"]);
    }
}
