//! One throwaway PostgreSQL cluster per test process (initdb in a temp dir, unix socket
//! only), stopped and removed by a watchdog once the test process has exited.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use ckan_vault::pg::cluster::{ClusterOptions, ScratchCluster};
use ckan_vault::pg::{ConnInfo, Pg, Target};

pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
    pub pg: Pg,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

/// The shared cluster of this test process.
pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| {
        let c = ScratchCluster::start(&ClusterOptions::default())
            .expect("cannot start a PostgreSQL cluster: install postgresql (or run `bash .ci/run`)");
        let port = c.port();
        let pg_ctl = c.bindir().program("pg_ctl");
        let dir = c.keep();
        let root = unsafe_is_root();
        let stop = if root {
            format!("runuser -u postgres -- {} -D {}/data -m immediate -w stop", pg_ctl.display(), dir.display())
        } else {
            format!("{} -D {}/data -m immediate -w stop", pg_ctl.display(), dir.display())
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop} >/dev/null 2>&1; rm -rf {dir}",
            pid = std::process::id(),
            dir = dir.display()
        );
        use std::os::unix::process::CommandExt;
        // The watchdog outlives this process on purpose: it cleans up after it has exited.
        #[allow(clippy::zombie_processes)]
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("watchdog");
        Cluster {
            dir,
            port,
            pg: Pg::new().expect("pg env"),
        }
    })
}

fn unsafe_is_root() -> bool {
    std::env::var("USER").map(|u| u == "root").unwrap_or(false)
        || Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout == b"0\n")
            .unwrap_or(false)
}

impl Cluster {
    /// A URL for database `db` as superuser `postgres` over the private socket.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgresql://postgres@/{db}?host={}&port={}",
            self.dir.display(),
            self.port
        )
    }

    pub fn target(&self, db: &str) -> Target {
        Target::new(ConnInfo::socket(&self.dir, self.port, "postgres", db))
    }

    /// Runs SQL in `db` and returns psql's unaligned output.
    pub fn sql(&self, db: &str, sql: &str) -> String {
        self.pg
            .query(&self.target(db), sql)
            .unwrap_or_else(|e| panic!("SQL failed: {e}\n{sql}"))
    }

    pub fn create_db(&self, db: &str) {
        self.pg
            .create_database(&self.target("postgres"), db)
            .expect("create database");
    }

    /// Every index, constraint and trigger definition of `db`'s own schemas, sorted: the
    /// post-data section a restore must bring back.
    #[allow(dead_code)]
    pub fn schema_objects(&self, db: &str) -> Vec<String> {
        let q = "SELECT 'index ' || indexdef FROM pg_indexes \
                 WHERE schemaname NOT IN ('pg_catalog', 'information_schema') \
                 UNION ALL SELECT 'constraint ' || conrelid::regclass || ' ' || conname || ' ' \
                 || pg_get_constraintdef(oid) FROM pg_constraint \
                 WHERE connamespace::regnamespace::text NOT IN ('pg_catalog', 'information_schema') \
                 UNION ALL SELECT 'trigger ' || pg_get_triggerdef(oid) FROM pg_trigger \
                 WHERE NOT tgisinternal ORDER BY 1";
        self.sql(db, q).lines().map(str::to_string).collect()
    }

    /// Every table's rows as sorted text, for comparing two databases independently of
    /// ckan-vault's own checksums.
    pub fn fingerprint(&self, db: &str) -> Vec<(String, String)> {
        let tables = self.pg.list_tables(&self.target(db)).expect("tables");
        tables
            .into_iter()
            .map(|t| {
                let (schema, name) = t.split_once('.').unwrap();
                let q = format!(
                    "SELECT count(*) || ':' || coalesce(md5(string_agg(x::text, '|' ORDER BY x::text)), '') FROM \"{schema}\".\"{name}\" x"
                );
                let v = self.sql(db, &q);
                (t, v)
            })
            .collect()
    }
}

/// A name unique within this test run.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}
