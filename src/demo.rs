//! `ckan-vault demo`: the whole job on a throwaway, CKAN-shaped sample site.
//!
//! It needs only PostgreSQL's server binaries: a private cluster in a temporary directory,
//! a generated site (users, packages, resources, activity with JSON payloads, API tokens, a
//! DataStore table, storage files), a local vault, two backups with 1 % churn between them,
//! a restore into fresh databases, and the check against the manifest. Everything is
//! removed afterwards. The same sample site serves the tests and the benchmark.

use std::path::{Path, PathBuf};
use std::time::Instant;

use secrecy::SecretString;
use serde::Serialize;

use crate::backup::{self, BackupOutcome};
use crate::config::Config;
use crate::pg::cluster::{ClusterOptions, ScratchCluster};
use crate::pg::{Pg, PgError, Target};
use crate::restore::{self, RestorePlan};
use crate::vault::{Vault, VaultConfig};

/// A generated CKAN-shaped site of a given size.
#[derive(Debug, Clone, Copy)]
pub struct SampleSite {
    pub packages: u32,
}

const WORDS: &str = "'{cell,flow,deformability,cytometry,channel,measurement,sample,blood,\
    leukocyte,erythrocyte,area,volume,brightness,fluorescence,image,event,dataset,resource,\
    analysis,quality,control,experiment,buffer,viscosity,temperature,pressure,tracking,\
    classification,population,ratio}'::text[]";

impl SampleSite {
    /// SQL creating and filling CKAN's core tables (a subset of their columns).
    pub fn main_sql(&self) -> String {
        let p = self.packages.max(10);
        let users = (p / 10).max(3);
        format!(
            r#"
CREATE FUNCTION demo_text(seed int, words int) RETURNS text LANGUAGE sql IMMUTABLE AS $$
  SELECT string_agg(CASE WHEN k % 4 = 0 THEN substr(md5(seed::text || '-' || k), 1, 6)
    ELSE ({WORDS})[1 + (((seed::bigint * 7919 + k * 104729) % 30 + 30) % 30)::int] END, ' ')
  FROM generate_series(1, words) k $$;
CREATE TABLE "user" (id text PRIMARY KEY, name text UNIQUE NOT NULL, email text, fullname text,
  about text, sysadmin boolean NOT NULL DEFAULT false, state text NOT NULL, created timestamp NOT NULL);
CREATE TABLE "group" (id text PRIMARY KEY, name text UNIQUE, title text, type text,
  is_organization boolean, state text);
CREATE TABLE package (id text PRIMARY KEY, name text UNIQUE NOT NULL, title text, notes text,
  owner_org text REFERENCES "group"(id), private boolean, state text, metadata_created timestamp,
  metadata_modified timestamp);
CREATE TABLE package_extra (id text PRIMARY KEY, package_id text REFERENCES package(id), key text, value text);
CREATE TABLE resource (id text PRIMARY KEY, package_id text REFERENCES package(id), url text,
  format text, size bigint, description text, created timestamp);
CREATE TABLE member (id text PRIMARY KEY, group_id text REFERENCES "group"(id), table_id text,
  table_name text, capacity text, state text);
CREATE TABLE activity (id text PRIMARY KEY, "timestamp" timestamp, user_id text, object_id text,
  activity_type text, data jsonb);
CREATE TABLE api_token (id text PRIMARY KEY, name text, user_id text REFERENCES "user"(id),
  created_at timestamp, last_access timestamp, plugin_extras jsonb);
CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY);
CREATE INDEX idx_activity_object ON activity (object_id, "timestamp");
CREATE INDEX idx_package_org ON package (owner_org);
INSERT INTO alembic_version VALUES ('4eaa5fcf1092');
INSERT INTO "user" SELECT md5('u'||i), 'user'||i, 'user'||i||'@example.org', demo_text(i, 3),
  demo_text(i, 20), i = 1, 'active', timestamp '2020-01-01' + i * interval '1 hour'
  FROM generate_series(1, {users}) i;
INSERT INTO "group" SELECT md5('g'||i), 'org'||i, demo_text(i, 4), 'organization', true, 'active'
  FROM generate_series(1, 20) i;
INSERT INTO package SELECT md5('p'||i), 'dataset-'||i, demo_text(i, 8), demo_text(i, 80),
  md5('g'||(1 + i % 20)), i % 7 = 0, 'active', timestamp '2021-01-01' + i * interval '5 min',
  timestamp '2021-01-01' + i * interval '5 min' FROM generate_series(1, {p}) i;
INSERT INTO package_extra SELECT md5('e'||i||'-'||k), md5('p'||i), 'key'||k, demo_text(i + k, 6)
  FROM generate_series(1, {p}) i, generate_series(1, 3) k;
INSERT INTO resource SELECT md5('r'||i||'-'||k), md5('p'||i),
  'https://dcor.example.com/dataset/'||i||'/resource/'||k||'.rtdc', 'RT-DC', 1000000 + i * k,
  demo_text(i * k, 15), timestamp '2021-01-01' + i * interval '5 min' FROM generate_series(1, {p}) i, generate_series(1, 2) k;
INSERT INTO member SELECT md5('m'||i), md5('g'||(1 + i % 20)), md5('p'||i), 'package', 'organization', 'active'
  FROM generate_series(1, {p}) i;
INSERT INTO activity SELECT md5('a'||i), timestamp '2021-01-01' + i * interval '1 min',
  md5('u'||(1 + i % {users})), md5('p'||(1 + i % {p})), 'changed package',
  jsonb_build_object('package', jsonb_build_object('id', md5('p'||(1 + i % {p})), 'notes',
    demo_text(i, 250 + (i % 4) * 150), 'extras', demo_text(i + 1, 60)))
  FROM generate_series(1, {acts}) i;
INSERT INTO api_token SELECT md5('t'||i), 'token'||i, md5('u'||(1 + i % {users})),
  timestamp '2022-01-01' + i * interval '1 day', NULL, NULL FROM generate_series(1, {tokens}) i;
"#,
            acts = p * 5,
            tokens = users * 2,
        )
    }

    /// SQL for a DataStore database with one resource table.
    pub fn datastore_sql(&self) -> String {
        let rows = self.packages.max(10) * 10;
        format!(
            r#"
CREATE TABLE "6f9a7c1e-0b1d-4e5a-9d3f-2a1b0c9d8e7f" (_id serial PRIMARY KEY, _full_text tsvector,
  event int, area double precision, deformation double precision, label text);
INSERT INTO "6f9a7c1e-0b1d-4e5a-9d3f-2a1b0c9d8e7f" (event, area, deformation, label)
  SELECT i, 20 + (i % 1000) / 10.0, (i % 97) / 1000.0, 'cell ' || (i % 13) FROM generate_series(1, {rows}) i;
CREATE TABLE "_table_metadata" (_id serial PRIMARY KEY, name text, oid oid);
"#
        )
    }

    /// SQL changing about `percent` % of the site: packages updated, activity added, users
    /// touched. Each round picks other packages and users and marks what it changed with its
    /// number, so [`Self::changed_bytes_sql`] can size one round's changes.
    pub fn churn_sql(&self, percent: f64, round: u32) -> String {
        let c = self.churn(percent, round);
        format!(
            r#"
UPDATE package SET notes = notes || ' revised r{round}', metadata_modified = metadata_modified + interval '1 day'
  WHERE name IN (SELECT 'dataset-'||(1 + (i * 7919 + {shift}) % {p}) FROM generate_series(1, {n}) i);
INSERT INTO activity SELECT md5('a'||i), {first} + i * interval '1 min',
  md5('u'||(1 + i % {users})), md5('p'||(1 + i % {p})), 'changed package',
  jsonb_build_object('package', jsonb_build_object('notes', demo_text(i, 300)))
  FROM generate_series({start} + 1, {start} + {acts}) i;
UPDATE "user" SET about = about || ' (updated r{round})'
  WHERE name IN (SELECT 'user'||(1 + (i * 31 + {shift}) % {users}) FROM generate_series(1, {un}) i);
"#,
            p = c.packages,
            n = c.updated,
            users = c.users,
            start = c.start,
            acts = c.updated * 5,
            un = c.users_touched,
            shift = c.shift,
            first = CHURN_EPOCH,
        )
    }

    /// A query for the size of what churn round `round` changed or added, as row text (about
    /// the COPY text of those rows): what an ideal incremental backup would have to store.
    pub fn changed_bytes_sql(&self, percent: f64, round: u32) -> String {
        let c = self.churn(percent, round);
        format!(
            r#"SELECT (SELECT coalesce(sum(length(p::text)), 0) FROM package p WHERE notes LIKE '% revised r{round}%')
  + (SELECT coalesce(sum(length(a::text)), 0) FROM activity a
     WHERE timestamp > {first} + {start} * interval '1 min' AND timestamp <= {first} + {end} * interval '1 min')
  + (SELECT coalesce(sum(length(u::text)), 0) FROM "user" u WHERE about LIKE '%(updated r{round})%');"#,
            first = CHURN_EPOCH,
            start = c.start,
            end = c.start + c.updated * 5,
        )
    }

    fn churn(&self, percent: f64, round: u32) -> Churn {
        let p = self.packages.max(10);
        let users = (p / 10).max(3);
        Churn {
            packages: p,
            updated: ((p as f64) * percent / 100.0).ceil().max(1.0) as u32,
            users,
            users_touched: ((users as f64) * percent / 100.0).ceil().max(1.0) as u32,
            start: p * 5 + round * 100_000,
            shift: round.saturating_sub(1) * 104_729,
        }
    }

    /// Writes a few resource files under `dir`, CKAN's storage layout.
    pub fn write_storage(&self, dir: &Path) -> std::io::Result<u64> {
        let mut total = 0;
        for i in 0..8u32 {
            let id = format!("{:032x}", u128::from(i) * 0x9e37_79b9_7f4a_7c15);
            let sub = dir.join("resources").join(&id[..3]).join(&id[3..6]);
            std::fs::create_dir_all(&sub)?;
            let mut body = String::new();
            for r in 0..(200 + i * 150) {
                body.push_str(&format!("{r},{},{}\n", r * 31 % 997, (r * 7) % 13));
            }
            std::fs::write(sub.join(&id[6..]), &body)?;
            total += body.len() as u64;
        }
        std::fs::create_dir_all(dir.join("storage/uploads/group"))?;
        std::fs::write(
            dir.join("storage/uploads/group/logo.svg"),
            b"<svg xmlns='http://www.w3.org/2000/svg'/>\n",
        )?;
        Ok(total + 41)
    }

    /// Creates databases `main` and `datastore` in `cluster` and loads the sample.
    pub fn load(
        &self,
        pg: &Pg,
        cluster: &ScratchCluster,
        main: &str,
        datastore: &str,
    ) -> Result<(), PgError> {
        let admin = Target::new(cluster.conn("postgres"));
        for (db, sql) in [(main, self.main_sql()), (datastore, self.datastore_sql())] {
            pg.create_database(&admin, db)?;
            pg.query(&Target::new(cluster.conn(db)), &sql)?;
        }
        Ok(())
    }
}

/// Activity added by churn is dated from here, after every generated row.
const CHURN_EPOCH: &str = "timestamp '2024-01-01'";

/// What one churn round touches: `updated` packages (and 5 new activities each) and
/// `users_touched` users, picked with `shift`; new activity numbers follow `start`.
struct Churn {
    packages: u32,
    updated: u32,
    users: u32,
    users_touched: u32,
    start: u32,
    shift: u32,
}

/// Options for the demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub packages: u32,
}

/// What the demo measured.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    pub ok: bool,
    pub postgres: String,
    pub first: BackupSummary,
    pub second: BackupSummary,
    pub restore_seconds: f64,
    pub tables_verified: usize,
    pub rows_verified: u64,
    pub storage_files_verified: u64,
    pub mismatches: Vec<String>,
    pub vault_bytes: u64,
    pub total_seconds: f64,
}

/// One backup's figures.
#[derive(Debug, Clone, Serialize)]
pub struct BackupSummary {
    pub snapshot: String,
    pub bytes_read: u64,
    pub added: u64,
    pub added_stored: u64,
    pub seconds: f64,
}

impl From<&BackupOutcome> for BackupSummary {
    fn from(b: &BackupOutcome) -> Self {
        Self {
            snapshot: b.snapshot.clone(),
            bytes_read: b.bytes_processed,
            added: b.data_added,
            added_stored: b.data_added_packed,
            seconds: b.duration_seconds,
        }
    }
}

impl DemoReport {
    /// The report as text for a person.
    pub fn human(&self) -> String {
        use crate::report::{bytes, duration};
        let ratio = self.second.added_stored as f64 / self.first.added_stored.max(1) as f64 * 100.0;
        let mut s = format!(
            "ckan-vault demo on PostgreSQL {}\n\
             day 1 backup  {}: read {}, stored {} in {}\n\
             day 2 backup  {}: read {}, stored {} more ({ratio:.1} % of day 1) in {}\n\
             restore       {} tables, {} rows, {} storage files in {}\n\
             vault size    {}\n",
            self.postgres,
            &self.first.snapshot[..8],
            bytes(self.first.bytes_read),
            bytes(self.first.added_stored),
            duration(self.first.seconds),
            &self.second.snapshot[..8],
            bytes(self.second.bytes_read),
            bytes(self.second.added_stored),
            duration(self.second.seconds),
            self.tables_verified,
            self.rows_verified,
            self.storage_files_verified,
            duration(self.restore_seconds),
            bytes(self.vault_bytes),
        );
        if self.ok {
            s.push_str("verified: every table and storage file matches the manifest\n");
        } else {
            s.push_str("FAILED: the restore does not match the manifest\n");
            for m in &self.mismatches {
                s.push_str(&format!("  {m}\n"));
            }
        }
        s.push_str(&format!(
            "done in {} (all temporary files removed)\n",
            duration(self.total_seconds)
        ));
        s
    }
}

/// Errors of the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(transparent)]
    Backup(#[from] backup::BackupError),
    #[error(transparent)]
    Restore(#[from] restore::RestoreError),
    #[error(transparent)]
    Vault(#[from] crate::vault::VaultError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("demo setup: {0}")]
    Io(#[from] std::io::Error),
}

impl crate::error::Categorized for DemoError {
    fn category(&self) -> crate::error::Category {
        match self {
            DemoError::Pg(e) => e.category(),
            _ => crate::error::Category::Failure,
        }
    }
}

fn random_password() -> SecretString {
    let mut b = [0u8; 24];
    getrandom::fill(&mut b).expect("OS random source");
    SecretString::from(hex::encode(b))
}

fn dir_size(p: &Path) -> u64 {
    walkdir::WalkDir::new(p)
        .into_iter()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// Runs the demo end to end; everything temporary is removed on return.
pub fn run(opts: &DemoOptions) -> Result<DemoReport, DemoError> {
    let clock = Instant::now();
    let work = crate::secret::private_tempdir("ckan-vault-demo.")?;
    let cluster = ScratchCluster::start(&ClusterOptions::default())?;
    let pg = Pg::new()?;
    let site = SampleSite {
        packages: opts.packages,
    };
    log::info!("loading a sample site with {} packages", site.packages);
    site.load(&pg, &cluster, "ckan_default", "datastore_default")?;
    let storage: PathBuf = work.path().join("storage");
    site.write_storage(&storage)?;
    let sock = cluster.path().display().to_string();
    let ini = work.path().join("ckan.ini");
    std::fs::write(
        &ini,
        format!(
            "[app:main]\nuse = egg:ckan\nSECRET_KEY = demo-not-secret\n\
             sqlalchemy.url = postgresql://postgres@/ckan_default?host={sock}&port={port}\n\
             ckan.datastore.write_url = postgresql://postgres@/datastore_default?host={sock}&port={port}\n\
             ckan.site_url = http://demo.ckan.invalid\nckan.storage_path = {}\n",
            storage.display(),
            port = cluster.port()
        ),
    )?;
    let mut config = Config::default();
    config.ckan.ini = Some(ini);
    config.database.admin_url = Some(format!(
        "postgresql://postgres@/postgres?host={sock}&port={}",
        cluster.port()
    ));
    let plan = config.backup_plan(None)?;
    let vault_dir = work.path().join("vault");
    let vault = Vault::init(&VaultConfig {
        repository: vault_dir.display().to_string(),
        options: Default::default(),
        password: random_password(),
        cache_dir: None,
    })?;
    let first = backup::run(&vault, &pg, &plan)?;
    pg.query(
        &Target::new(cluster.conn("ckan_default")),
        &site.churn_sql(1.0, 1),
    )?;
    let second = backup::run(&vault, &pg, &plan)?;
    let restored = RestorePlan {
        main: Some(Target::new(cluster.conn("ckan_restored"))),
        datastore: Some(Target::new(cluster.conn("datastore_restored"))),
        globals: None,
        storage: Some(work.path().join("storage-restored")),
        clean: false,
        keep_privileges: false,
        ..Default::default()
    };
    let out = restore::run(&vault, &pg, "latest", &restored)?;
    let mut mismatches: Vec<String> = out
        .databases
        .iter()
        .flat_map(|d| {
            d.mismatches
                .iter()
                .map(move |m| format!("{}: {} {}", d.role, m.table, m.detail))
        })
        .collect();
    if let Some(s) = &out.storage {
        mismatches.extend(
            s.mismatches
                .iter()
                .chain(&s.missing)
                .map(|m| format!("storage/{m}")),
        );
    }
    let server = pg.server_info(&Target::new(cluster.conn("postgres")))?;
    Ok(DemoReport {
        ok: out.verified(),
        postgres: server.version,
        first: (&first).into(),
        second: (&second).into(),
        restore_seconds: out.seconds,
        tables_verified: out.databases.iter().map(|d| d.tables).sum(),
        rows_verified: out.databases.iter().map(|d| d.rows).sum(),
        storage_files_verified: out.storage.as_ref().map_or(0, |s| s.files),
        mismatches,
        vault_bytes: dir_size(&vault_dir),
        total_seconds: clock.elapsed().as_secs_f64(),
    })
}
