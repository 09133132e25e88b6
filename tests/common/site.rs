//! A CKAN-shaped site in the shared cluster, with its ckan.ini, storage, vault and config,
//! and a way to run the real `ckan-vault` binary against it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use ckan_vault::demo::SampleSite;

use super::pg::{Cluster, cluster, unique};

/// What every site's vault password file holds.
pub const VAULT_PASSWORD: &str = "correct horse battery staple";

pub struct Site {
    pub dir: tempfile::TempDir,
    pub main_db: String,
    pub datastore_db: String,
    pub storage: PathBuf,
    pub ini: PathBuf,
    pub vault: PathBuf,
    pub password_file: PathBuf,
    pub config: PathBuf,
    pub sample: SampleSite,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ckan-vault")
}

impl Site {
    /// A fresh site with `packages` packages, an initialised vault and a config file.
    pub fn new(packages: u32) -> Site {
        let c = cluster();
        let dir = tempfile::Builder::new()
            .prefix("ckan-vault-test.")
            .tempdir()
            .unwrap();
        let sample = SampleSite { packages };
        let main_db = unique("ckan");
        let datastore_db = unique("datastore");
        c.create_db(&main_db);
        c.create_db(&datastore_db);
        c.sql(&main_db, &sample.main_sql());
        c.sql(&datastore_db, &sample.datastore_sql());
        let storage = dir.path().join("storage");
        sample.write_storage(&storage).unwrap();
        let ini = dir.path().join("ckan.ini");
        std::fs::write(
            &ini,
            format!(
                "[app:main]\nuse = egg:ckan\nSECRET_KEY = test-secret-key\n\
                 sqlalchemy.url = {}\nckan.datastore.write_url = {}\n\
                 ckan.site_url = https://ckan.test.invalid\nckan.storage_path = {}\n",
                c.url(&main_db),
                c.url(&datastore_db),
                storage.display()
            ),
        )
        .unwrap();
        let vault = dir.path().join("vault");
        let password_file = dir.path().join("vault.pass");
        std::fs::write(&password_file, format!("{VAULT_PASSWORD}\n")).unwrap();
        std::fs::set_permissions(
            &password_file,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let config = dir.path().join("ckan-vault.toml");
        std::fs::write(
            &config,
            format!(
                "[repository]\nrepository = \"{}\"\npassword-file = \"{}\"\n\n[ckan]\nini = \"{}\"\n\n\
                 [database]\nadmin-url = \"{}\"\n",
                vault.display(),
                password_file.display(),
                ini.display(),
                c.url("postgres")
            ),
        )
        .unwrap();
        let site = Site {
            dir,
            main_db,
            datastore_db,
            storage,
            ini,
            vault,
            password_file,
            config,
            sample,
        };
        site.ok(&["init"]);
        site
    }

    pub fn cluster(&self) -> &'static Cluster {
        cluster()
    }

    /// A directory of PostgreSQL programs where `pg_dump` is a bash script (`REAL` in it
    /// stands for the real pg_dump, `PSQL` for psql) and the others are the real ones: a
    /// way to make dumps fail on purpose. Use it as `[database] bin-dir`.
    pub fn fake_bindir(&self, pg_dump_script: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let real = ckan_vault::pg::BinDir::for_major(None);
        let dir = self.path().join(unique("bin"));
        std::fs::create_dir(&dir).unwrap();
        for tool in ["psql", "pg_dumpall", "pg_restore"] {
            std::os::unix::fs::symlink(real.program(tool), dir.join(tool)).unwrap();
        }
        let script = pg_dump_script
            .replace("REAL", &real.program("pg_dump").display().to_string())
            .replace("PSQL", &real.program("psql").display().to_string());
        let p = dir.join("pg_dump");
        std::fs::write(&p, format!("#!/bin/bash\n{script}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    /// The site's vault, opened through the library (to look inside or to plant snapshots
    /// that ckan-vault itself would never write).
    pub fn open_vault(&self) -> ckan_vault::vault::Vault {
        ckan_vault::vault::Vault::open(&ckan_vault::vault::VaultConfig {
            repository: self.vault.display().to_string(),
            options: Default::default(),
            password: VAULT_PASSWORD.into(),
            cache_dir: None,
        })
        .unwrap()
    }

    /// Runs ckan-vault with this site's config.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_env(args, &[])
    }

    pub fn cli_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = Command::new(bin());
        c.args(args)
            .env("CKAN_VAULT_CONFIG", &self.config)
            .env_remove("CKAN_VAULT_PASSWORD")
            .env_remove("CKAN_INI")
            .stdin(Stdio::null());
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().expect("run ckan-vault")
    }

    /// Runs ckan-vault and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "ckan-vault {args:?} failed ({:?}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs ckan-vault with --json and parses stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.ok(&a);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// The backup snapshots in the vault.
    pub fn backups(&self) -> Vec<serde_json::Value> {
        self.json(&["snapshots"])["snapshots"]
            .as_array()
            .unwrap()
            .clone()
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// stderr of an output as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every file of the vault's latest backup, in memory: to save doctored or relabelled
/// copies of it.
pub fn files_of_latest(
    vault: &ckan_vault::vault::Vault,
) -> (ckan_vault::vault::Snapshot, Vec<(String, Vec<u8>)>) {
    use ckan_vault::vault::Kind;
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

/// Seconds since the Unix epoch, as metrics files record times.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}
