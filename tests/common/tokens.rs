//! A ckan-vault set up for the token commands against the CKAN fixture: a vault, an escrow
//! officer's key pair made with Debian's `age-keygen`, and a config; plus helpers that ask
//! CKAN directly. Shared by tests/tokens.rs, tests/token_faults.rs and tests/secrets.rs.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use super::ckan;

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A file of tests/fixtures/token (certificates, dclab's test vector).
pub fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures/token").join(name)
}

/// CKAN never purges users: every test uses fresh names, unique across test processes.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

/// Exit status, stdout and stderr, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A new escrow identity file in `dir` (`age-keygen`) and its public key.
pub fn age_keygen(dir: &Path) -> (PathBuf, String) {
    let key = dir.join("officer.key");
    let out = Command::new("age-keygen")
        .arg("-o")
        .arg(&key)
        .output()
        .expect("age-keygen is needed: apt-get install -y age");
    assert!(out.status.success(), "{}", text(&out));
    let out = Command::new("age-keygen")
        .arg("-y")
        .arg(&key)
        .output()
        .unwrap();
    let recipient = String::from_utf8(out.stdout).unwrap().trim().to_string();
    (key, recipient)
}

/// How ckan-vault reaches the site.
pub struct TokenSite<'a> {
    pub url: String,
    pub certificate: PathBuf,
    /// The `ckan` for `--via cli` (default: the fixture's).
    pub ckan_command: Option<PathBuf>,
    pub timeout_secs: u64,
    /// More TOML appended to the config.
    pub extra: &'a str,
}

impl TokenSite<'static> {
    /// The fixture CKAN over plain http, as `localhost` (the CN of localhost.pem).
    pub fn http() -> Self {
        TokenSite {
            url: format!("http://localhost:{}", ckan::ckan().port),
            certificate: fixture("localhost.pem"),
            ckan_command: None,
            timeout_secs: 120,
            extra: "",
        }
    }
}

/// A vault, an escrow key pair and a ckan-vault config for the fixture CKAN.
pub struct TokenEnv {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub vault: PathBuf,
    pub password_file: PathBuf,
    /// The escrow officer's identity (private key).
    pub key: PathBuf,
}

impl TokenEnv {
    /// Writes the config and runs `ckan-vault init`. `vault_password` is what the vault's
    /// password file holds.
    pub fn with_password(site: &TokenSite<'_>, vault_password: &str) -> TokenEnv {
        let c = ckan::ckan();
        let dir = tempfile::Builder::new()
            .prefix("ckan-vault-tokens.")
            .tempdir()
            .unwrap();
        let (key, recipient) = age_keygen(dir.path());
        let vault = dir.path().join("vault");
        let password_file = dir.path().join("vault.pass");
        std::fs::write(&password_file, format!("{vault_password}\n")).unwrap();
        std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let config = dir.path().join("ckan-vault.toml");
        let command = site
            .ckan_command
            .clone()
            .unwrap_or_else(|| c.venv.join("bin/ckan"));
        std::fs::write(
            &config,
            format!(
                "[repository]\nrepository = {:?}\npassword-file = {:?}\n\n\
                 [ckan]\nini = {:?}\nurl = {:?}\napi-token-file = {:?}\ncertificate = {:?}\n\
                 ckan-command = [{:?}]\ntimeout = {}\n\n\
                 [escrow]\nrecipients = [{:?}]\n{}",
                vault,
                password_file,
                c.ini,
                site.url,
                c.admin_token_file,
                site.certificate,
                command,
                site.timeout_secs,
                recipient,
                site.extra
            ),
        )
        .unwrap();
        let env = TokenEnv {
            dir,
            config,
            vault,
            password_file,
            key,
        };
        env.ok(&["init"]);
        env
    }

    pub fn new(site: &TokenSite<'_>) -> TokenEnv {
        TokenEnv::with_password(site, "vault password for tests")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// ckan-vault in the env's directory, with nothing from the caller's environment that
    /// would change its settings.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ckan-vault"));
        c.args(args)
            .current_dir(self.dir.path())
            .env("CKAN_VAULT_CONFIG", &self.config)
            .env_remove("CKAN_VAULT_PASSWORD")
            .env_remove("CKAN_VAULT_TOKEN_PASSWORD")
            .env_remove("CKAN_INI")
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run ckan-vault")
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "ckan-vault {args:?}: {}", text(&out));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs with `--json`, asserts `"ok": true`.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.ok(&a);
        let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        assert_eq!(v["ok"], true, "{v}");
        v
    }

    /// Debian's `restic` on this vault (it reads what ckan-vault writes).
    pub fn restic(&self, args: &[&str]) -> Output {
        Command::new("restic")
            .arg("-r")
            .arg(&self.vault)
            .args(["--no-cache", "--no-lock"])
            .args(args)
            .env("RESTIC_PASSWORD_FILE", &self.password_file)
            .stdin(Stdio::null())
            .output()
            .expect("restic is needed: apt-get install -y restic")
    }
}

/// Tokens CKAN lists for a user (none for a user it does not know), asked directly with
/// the fixture's admin token.
pub fn ckan_token_ids(user: &str) -> Vec<String> {
    let c = ckan::ckan();
    let r = c.get(
        &format!("api_token_list?user_id={user}"),
        Some(&c.admin_token()),
    );
    if r.status == 404 && r.body.contains("User not found") {
        return Vec::new();
    }
    assert!(r.success(), "{r:?}");
    let v: Value = serde_json::from_str(&r.body).unwrap();
    v["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect()
}

pub fn user_exists(user: &str) -> bool {
    let c = ckan::ckan();
    c.get(&format!("user_show?id={user}"), Some(&c.admin_token()))
        .success()
}
