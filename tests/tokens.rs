//! The token workflow end to end, with the real `ckan-vault` binary against a real CKAN
//! 2.11.6 (tests/common/ckan.rs), a real vault, Debian's `age` and `restic`, and Python's
//! `zipfile` reading the issued file as DCOR-Aid does:
//! issue → inspect → verify → list (no key) → recover → revoke → verify fails; TLS pinned
//! to a self-signed CA:TRUE certificate; escrow failure revokes the token again; intents
//! without escrow are reported and resolved; backups seal ckan.ini; revocations survive a
//! restore of an older backup.
//!
//! Needs python3, age, restic and the CKAN fixture's packages (see docs/development.md).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use base64::Engine as _;
use common::ckan;
use common::tokens::{
    TokenEnv, TokenSite, ckan_token_ids, fixture, root, text, unique, user_exists,
};
use serde_json::Value;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Python's zipfile reads the token as dclab does (tests/interop/read_token.py).
fn read_with_python(path: &Path, password: &str) -> Value {
    let out = Command::new("python3")
        .arg(root().join("tests/interop/read_token.py"))
        .arg(path)
        .env("TOKEN_PASSWORD", password)
        .output()
        .expect("python3 is needed");
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn first_line(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string()
}

/// `age -d -i KEY` on `data`.
fn age_decrypt(key: &Path, data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("age is needed: apt-get install -y age");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    out.stdout
}

#[test]
fn issue_inspect_verify_list_recover_revoke() {
    let c = ckan::ckan();
    let env = TokenEnv::new(&TokenSite::http());
    let user = unique("alice");
    let email = format!("{user}@example.org");
    let t0 = std::time::Instant::now();
    let issued = env.json(&[
        "token",
        "issue",
        &user,
        "--create-user",
        "--email",
        &email,
        "--password-out",
        "alice.pw",
    ]);
    eprintln!("token issue (create user, API) took {:?}", t0.elapsed());
    let token_id = issued["token_id"].as_str().unwrap().to_string();
    let file = env.path(&format!("{user}.dcor-access"));
    let pw_file = env.path("alice.pw");
    assert_eq!(issued["out"], format!("{user}.dcor-access"));
    assert!(issued.get("password").is_none(), "{issued}");
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(&pw_file), 0o600);
    let password = first_line(&pw_file);
    assert_eq!(password.len(), 35, "six groups of five: {password}");
    assert_eq!(ckan_token_ids(&user), std::slice::from_ref(&token_id));

    // DCOR-Aid's way of reading it: Python's zipfile, hostname from the CN.
    let py = read_with_python(&file, &password);
    assert_eq!(py["hostname"], "localhost");
    let cert = std::fs::read(fixture("localhost.pem")).unwrap();
    assert_eq!(py["cert_sha256"], hex::encode(sha2_digest(&cert)));
    let api_key = py["api_key"].as_str().unwrap().to_string();
    assert_eq!(
        ckan_vault::ckan::api::jwt_id(&api_key.clone().into()).unwrap(),
        token_id
    );

    // inspect: offline, members without the password; with it, CN and token id only.
    let listing = env.json(&["token", "inspect", file.to_str().unwrap()]);
    let names: Vec<&str> = listing["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["api_key.txt", "server.cert"]);
    assert!(listing["content"].is_null());
    let inspected = env.json(&[
        "token",
        "inspect",
        file.to_str().unwrap(),
        "--password-file",
        "alice.pw",
    ]);
    assert_eq!(inspected["content"]["token_id"], token_id.as_str());
    assert_eq!(inspected["content"]["certificate"]["hostname"], "localhost");
    let wrong = env
        .cmd(&["token", "inspect", file.to_str().unwrap()])
        .env("CKAN_VAULT_TOKEN_PASSWORD", "not-the-password")
        .output()
        .unwrap();
    assert_eq!(wrong.status.code(), Some(2), "{}", text(&wrong));
    assert!(text(&wrong).contains("wrong password"), "{}", text(&wrong));

    // verify: CKAN accepts the token (plain http: the key only).
    let url = format!("http://localhost:{}", c.port);
    let verified = env.json(&[
        "token",
        "verify",
        file.to_str().unwrap(),
        "--password-file",
        "alice.pw",
        "--url",
        &url,
    ]);
    assert_eq!(verified["user"], user.as_str());
    assert_eq!(verified["tls_pinned"], false);

    // list: from the vault alone, no escrow key anywhere in sight.
    let hidden_key = env.path("officer.key.away");
    std::fs::rename(&env.key, &hidden_key).unwrap();
    let listed = env.json(&["token", "list"]);
    let tokens = listed["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 1, "{listed}");
    assert_eq!(tokens[0]["user"], user.as_str());
    assert_eq!(tokens[0]["token_id"], token_id.as_str());
    assert!(tokens[0]["revoked"].is_null());
    assert_eq!(listed["unescrowed_intents"].as_array().unwrap().len(), 0);
    std::fs::rename(&hidden_key, &env.key).unwrap();

    // Debian's age opens the escrow copy that Debian's restic reads out of the vault.
    let snaps = env.restic(&["snapshots", "--json", "--tag", "escrow"]);
    assert!(snaps.status.success(), "{}", text(&snaps));
    let snaps: Value = serde_json::from_slice(&snaps.stdout).unwrap();
    let snap_id = snaps[0]["id"].as_str().unwrap();
    assert_eq!(snap_id, issued["escrow_snapshot"].as_str().unwrap());
    let sealed = env.restic(&["dump", snap_id, "/escrow.age"]);
    assert!(sealed.status.success(), "{}", text(&sealed));
    let bundle: Value = serde_json::from_slice(&age_decrypt(&env.key, &sealed.stdout)).unwrap();
    assert_eq!(bundle["password"], password.as_str());
    assert_eq!(bundle["token_id"], token_id.as_str());
    assert!(bundle["user_password"].as_str().unwrap().len() >= 30);
    let zip = base64::engine::general_purpose::STANDARD
        .decode(bundle["access_file_base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(zip, std::fs::read(&file).unwrap());

    // recover with the officer's identity gives back the same file and password.
    let recovered = env.json(&[
        "token",
        "recover",
        &user,
        "--identity",
        env.key.to_str().unwrap(),
        "--out",
        "recovered.dcor-access",
        "--password-out",
        "recovered.pw",
    ]);
    assert_eq!(recovered["token_id"], token_id.as_str());
    assert_eq!(
        std::fs::read(env.path("recovered.dcor-access")).unwrap(),
        std::fs::read(&file).unwrap()
    );
    assert_eq!(first_line(&env.path("recovered.pw")), password);
    assert_eq!(mode(&env.path("recovered.dcor-access")), 0o600);
    // Another key cannot.
    let other_key = env.path("other.key");
    Command::new("age-keygen")
        .arg("-o")
        .arg(&other_key)
        .output()
        .unwrap();
    let denied = env.run(&[
        "token",
        "recover",
        &user,
        "--identity",
        other_key.to_str().unwrap(),
        "--out",
        "denied.dcor-access",
        "--password-out",
        "denied.pw",
    ]);
    assert_eq!(denied.status.code(), Some(2), "{}", text(&denied));
    assert!(
        text(&denied).contains("none of the given identities"),
        "{}",
        text(&denied)
    );
    assert!(!env.path("denied.dcor-access").exists());
    assert!(!env.path("denied.pw").exists());

    // revoke: at CKAN, then recorded; the file stops working.
    let revoked = env.json(&["token", "revoke", &user]);
    assert_eq!(revoked["revoked"][0]["token_id"], token_id.as_str());
    assert!(ckan_token_ids(&user).is_empty());
    let failed = env.run(&[
        "token",
        "verify",
        file.to_str().unwrap(),
        "--password-file",
        "alice.pw",
        "--url",
        &url,
    ]);
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed));
    assert!(
        text(&failed).contains("token is not valid"),
        "{}",
        text(&failed)
    );
    let listed = env.json(&["token", "list"]);
    assert!(!listed["tokens"][0]["revoked"].is_null(), "{listed}");
    let snaps = env.restic(&["snapshots", "--json", "--tag", "revocation"]);
    let snaps: Value = serde_json::from_slice(&snaps.stdout).unwrap();
    assert_eq!(snaps.as_array().unwrap().len(), 1);
    // Revoking the user again finds nothing left to do.
    let again = env.json(&["token", "revoke", &user]);
    assert_eq!(again["revoked"].as_array().unwrap().len(), 0);
    assert_eq!(again["already_revoked"][0], token_id.as_str());

    // The token never showed up in any output above.
    for args in [vec!["token", "list"], vec!["snapshots", "--all"]] {
        let out = env.run(&args);
        assert!(!text(&out).contains(&api_key), "{args:?} leaked the token");
        assert!(
            !text(&out).contains(&password),
            "{args:?} leaked the password"
        );
    }
}

fn sha2_digest(bytes: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).to_vec()
}

/// `tests/interop/tls_proxy.py`: Python's ssl in front of CKAN; killed on drop.
struct TlsProxy {
    child: Child,
    port: u16,
}

impl TlsProxy {
    fn start(cert: &str) -> TlsProxy {
        use std::io::BufRead;
        let mut child = Command::new("python3")
            .arg(root().join("tests/interop/tls_proxy.py"))
            .arg(fixture(cert))
            .arg(fixture("key.pem"))
            .arg(ckan::ckan().port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 is needed");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .strip_prefix("READY ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("tls_proxy.py said {line:?}"));
        TlsProxy { child, port }
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// DCOR's certificates are often self-signed with CA:TRUE, which webpki refuses as a
/// server certificate; pinning accepts exactly that certificate and nothing else.
#[test]
fn tls_is_pinned_to_the_bundled_self_signed_ca_certificate() {
    let proxy = TlsProxy::start("localhost-ca.pem");
    let url = format!("https://localhost:{}", proxy.port);
    let env = TokenEnv::new(&TokenSite {
        url: url.clone(),
        certificate: fixture("localhost-ca.pem"),
        ..TokenSite::http()
    });
    let user = unique("tls");
    // The admin's API calls go through the same pinned TLS (and check the served cert).
    let issued = env.json(&[
        "token",
        "issue",
        &user,
        "--create-user",
        "--email",
        &format!("{user}@example.org"),
        "--password-out",
        "tls.pw",
        "--check-served",
    ]);
    let file = env.path(&format!("{user}.dcor-access"));
    let t0 = std::time::Instant::now();
    let verified = env.json(&[
        "token",
        "verify",
        file.to_str().unwrap(),
        "--password-file",
        "tls.pw",
        "--url",
        &url,
    ]);
    eprintln!("token verify over pinned TLS took {:?}", t0.elapsed());
    assert_eq!(verified["user"], user.as_str());
    assert_eq!(verified["tls_pinned"], true);
    assert_eq!(verified["token_id"], issued["token_id"]);

    // The same valid token bundled with another certificate: the handshake is refused.
    let password = first_line(&env.path("tls.pw"));
    let good = ckan_vault::token::access_file::AccessFile::from_bytes(
        &std::fs::read(&file).unwrap(),
        &password.clone().into(),
    )
    .unwrap();
    let other = ckan_vault::token::access_file::AccessFile::new(
        good.api_key,
        std::fs::read(fixture("dcor.example.com.pem")).unwrap(),
    );
    let other_file = env.path("other-cert.dcor-access");
    std::fs::write(&other_file, other.to_bytes(&password.into()).unwrap()).unwrap();
    let refused = env.run(&[
        "token",
        "verify",
        other_file.to_str().unwrap(),
        "--password-file",
        "tls.pw",
        "--url",
        &url,
    ]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains("not the bundled one"),
        "{}",
        text(&refused)
    );

    // An issuing config whose certificate is not the served one stops before CKAN.
    let wrong = TokenEnv::new(&TokenSite {
        url: url.clone(),
        certificate: fixture("localhost.pem"),
        ..TokenSite::http()
    });
    let user2 = unique("tls2");
    let out = wrong.run(&[
        "token",
        "issue",
        &user2,
        "--create-user",
        "--email",
        &format!("{user2}@example.org"),
        "--password-out",
        "x.pw",
    ]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("not the bundled one"), "{}", text(&out));
    assert!(!user_exists(&user2));
    assert_eq!(
        wrong.json(&["token", "list"])["unescrowed_intents"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

/// A `ckan` wrapper for `--via cli` that breaks the vault right after CKAN created the
/// token (its snapshots directory becomes a file, so no snapshot can be saved: a real
/// write failure, even for root), and can make `user token revoke` fail.
fn sabotaging_ckan(env_dir: &Path, vault: &Path) -> PathBuf {
    let script = env_dir.join("ckan-wrapper");
    let real = ckan::ckan().venv.join("bin/ckan");
    std::fs::write(
        &script,
        format!(
            r#"#!/bin/sh
# args: -c INI user token add|revoke ...
if [ "$3 $4 $5" = "user token revoke" ] && [ -e {dir}/fail-revoke ]; then
    echo "revoke disabled by the test" >&2
    exit 1
fi
{real} "$@"
rc=$?
if [ $rc = 0 ] && [ "$3 $4 $5" = "user token add" ] && [ -e {dir}/break-vault ]; then
    mv {vault}/snapshots {vault}/snapshots.aside && : > {vault}/snapshots
fi
exit $rc
"#,
            dir = env_dir.display(),
            real = real.display(),
            vault = vault.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

fn mend_vault(vault: &Path) {
    std::fs::remove_file(vault.join("snapshots")).unwrap();
    std::fs::rename(vault.join("snapshots.aside"), vault.join("snapshots")).unwrap();
}

#[test]
fn escrow_failure_revokes_the_token_and_the_intent_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let env = TokenEnv::new(&TokenSite {
        ckan_command: Some(dir.path().join("ckan-wrapper")),
        ..TokenSite::http()
    });
    sabotaging_ckan(dir.path(), &env.vault);
    std::fs::write(dir.path().join("break-vault"), "").unwrap();
    let user = unique("carol");
    let t0 = std::time::Instant::now();
    let out = env.run(&[
        "token",
        "issue",
        &user,
        "--via",
        "cli",
        "--create-user",
        "--email",
        &format!("{user}@example.org"),
        "--password-out",
        "carol.pw",
        "--json",
    ]);
    eprintln!(
        "failed token issue (CLI, create user) took {:?}",
        t0.elapsed()
    );
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(shown.contains("revoked at CKAN again"), "{shown}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false, "{v}");
    // The user was created through the ckan command; the token is gone; no file stayed.
    assert!(user_exists(&user));
    assert!(ckan_token_ids(&user).is_empty(), "the token survived");
    assert!(!env.path(&format!("{user}.dcor-access")).exists());
    assert!(!env.path("carol.pw").exists());
    let leftovers: Vec<_> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".ckan-vault-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // The vault comes back; its intent (which could not be deleted) is reported.
    std::fs::remove_file(dir.path().join("break-vault")).unwrap();
    mend_vault(&env.vault);
    let listed = env.json(&["token", "list"]);
    let intents = listed["unescrowed_intents"].as_array().unwrap();
    assert_eq!(intents.len(), 1, "{listed}");
    assert_eq!(intents[0]["user"], user.as_str());
    let msg = intents[0]["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("token revoke {user}")) && msg.contains("no escrow copy"),
        "{msg}"
    );
    let human = env.run(&["token", "list"]);
    assert!(text(&human).contains("WARNING"), "{}", text(&human));

    // The next issue (for the same user, now existing) reports it too, and succeeds.
    let issued = env.json(&[
        "token",
        "issue",
        &user,
        "--via",
        "cli",
        "--password-out",
        "carol2.pw",
    ]);
    let warnings = issued["warnings"].to_string();
    assert!(warnings.contains("no escrow copy"), "{issued}");
    assert_eq!(
        ckan_token_ids(&user),
        [issued["token_id"].as_str().unwrap()]
    );

    // revoke USER resolves the intent (CKAN holds no unescrowed token for it) and
    // revokes the escrowed token.
    let revoked = env.json(&["token", "revoke", &user, "--via", "cli"]);
    assert_eq!(revoked["revoked"].as_array().unwrap().len(), 1, "{revoked}");
    assert_eq!(
        revoked["intents_cleared"].as_array().unwrap().len(),
        1,
        "{revoked}"
    );
    assert!(ckan_token_ids(&user).is_empty());
    let listed = env.json(&["token", "list"]);
    assert_eq!(listed["unescrowed_intents"].as_array().unwrap().len(), 0);
}

/// When even the revoke fails, the exit code is 3 and the message names the token.
/// The next `token revoke USER` finds that unescrowed token at CKAN and revokes it.
#[test]
fn escrow_failure_with_a_failing_revoke_exits_3_and_revoke_finds_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let env = TokenEnv::new(&TokenSite {
        ckan_command: Some(dir.path().join("ckan-wrapper")),
        ..TokenSite::http()
    });
    sabotaging_ckan(dir.path(), &env.vault);
    std::fs::write(dir.path().join("break-vault"), "").unwrap();
    std::fs::write(dir.path().join("fail-revoke"), "").unwrap();
    let c = ckan::ckan();
    let user = unique("dave");
    let created = c
        .cli()
        .args(["user", "add", &user, &format!("email={user}@example.org")])
        .arg("password=A-long-enough-password-1")
        .output()
        .unwrap();
    assert!(created.status.success(), "{}", text(&created));
    let out = env.run(&[
        "token",
        "issue",
        &user,
        "--via",
        "cli",
        "--token-name",
        "dcor-aid-laptop",
        "--password-out",
        "dave.pw",
    ]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(3), "{shown}");
    let live = ckan_token_ids(&user);
    assert_eq!(live.len(), 1, "{shown}");
    assert!(
        shown.contains(&live[0]) && shown.contains("revoke it now"),
        "{shown}"
    );

    std::fs::remove_file(dir.path().join("break-vault")).unwrap();
    std::fs::remove_file(dir.path().join("fail-revoke")).unwrap();
    mend_vault(&env.vault);
    // Through the API this time: CKAN says when the token was made.
    let revoked = env.json(&["token", "revoke", &user]);
    assert_eq!(
        revoked["revoked"][0]["token_id"],
        live[0].as_str(),
        "{revoked}"
    );
    assert_eq!(revoked["revoked"][0]["escrowed"], false);
    assert!(ckan_token_ids(&user).is_empty());
    let listed = env.json(&["token", "list"]);
    assert_eq!(listed["unescrowed_intents"].as_array().unwrap().len(), 0);
    assert_eq!(listed["other_revocations"], 1);
}

#[test]
fn nothing_is_created_when_issue_is_refused() {
    let env = TokenEnv::new(&TokenSite::http());
    let user = unique("erin");
    let email = format!("{user}@example.org");
    // The password would go to a pipe: refused before CKAN or the vault are touched.
    let out = env.run(&["token", "issue", &user, "--create-user", "--email", &email]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--password-out"), "{}", text(&out));
    // A user that does not exist, without --create-user.
    let out = env.run(&["token", "issue", &user, "--password-out", "p"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--create-user"), "{}", text(&out));
    // A certificate for another host.
    let other = TokenEnv::new(&TokenSite {
        certificate: fixture("dcor.example.com.pem"),
        ..TokenSite::http()
    });
    let out = other.run(&[
        "token",
        "issue",
        &user,
        "--create-user",
        "--email",
        &email,
        "--password-out",
        "p",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("dcor.example.com"), "{}", text(&out));
    assert!(!user_exists(&user));
    for e in [&env, &other] {
        let all = e.json(&["snapshots", "--all"]);
        assert_eq!(all["snapshots"].as_array().unwrap().len(), 0, "{all}");
        assert!(!e.path("p").exists());
        assert!(!e.path(&format!("{user}.dcor-access")).exists());
    }
    // --password-out - prints it, explicitly asked for.
    let issued = env.json(&[
        "token",
        "issue",
        &user,
        "--create-user",
        "--email",
        &email,
        "--password-out",
        "-",
    ]);
    let password = issued["password"].as_str().unwrap();
    let py = read_with_python(&env.path(&format!("{user}.dcor-access")), password);
    assert_eq!(py["hostname"], "localhost");
    // A second issue does not overwrite the first file.
    let out = env.run(&["token", "issue", &user, "--password-out", "-"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("already exists"), "{}", text(&out));
    assert_eq!(ckan_token_ids(&user).len(), 1);
}

/// Backups seal ckan.ini to the escrow recipients; `restore --config-out --identity`
/// gives back the exact bytes; and a restore of a backup older than a revocation
/// re-applies it, so the revoked token does not come back.
#[test]
fn sealed_config_and_revocations_survive_a_restore() {
    let c = ckan::ckan();
    let admin_url = format!(
        "postgresql://postgres@/postgres?host={}&port={}",
        c.pg_socket_dir.display(),
        c.pg_port
    );
    let extra = format!("\n[database]\nadmin-url = {admin_url:?}\n");
    let env = TokenEnv::new(&TokenSite {
        extra: &extra,
        ..TokenSite::http()
    });
    let user = unique("frank");
    let first = env.json(&[
        "token",
        "issue",
        &user,
        "--create-user",
        "--email",
        &format!("{user}@example.org"),
        "--password-out",
        "f1.pw",
    ]);
    let second = env.json(&[
        "token",
        "issue",
        &user,
        "--token-name",
        "second",
        "--out",
        "second.dcor-access",
        "--password-out",
        "f2.pw",
    ]);
    let (t1, t2) = (
        first["token_id"].as_str().unwrap().to_string(),
        second["token_id"].as_str().unwrap().to_string(),
    );
    // A token made the old way, by hand at CKAN: no escrow copy.
    let made = c.post(
        "api_token_create",
        Some(&c.admin_token()),
        &format!("{{\"user\": \"{user}\", \"name\": \"by-hand\"}}"),
    );
    assert!(made.success(), "{made:?}");
    let legacy: String = ckan_token_ids(&user)
        .into_iter()
        .find(|t| *t != t1 && *t != t2)
        .expect("the hand-made token is listed");

    let t0 = std::time::Instant::now();
    let backup = env.json(&["backup"]);
    eprintln!("backup of the CKAN fixture took {:?}", t0.elapsed());
    let snapshot = backup["snapshot"].as_str().unwrap().to_string();
    let ini = std::fs::read(&c.ini).unwrap();

    // Only the sealed copy is in the backup, and Debian's age opens it.
    let plain = env.run(&["dump", &snapshot, "config/ckan.ini"]);
    assert!(!plain.status.success(), "ckan.ini is stored in plain text");
    let sealed = env.run(&["dump", &snapshot, "config/ckan.ini.age"]);
    assert!(sealed.status.success(), "{}", text(&sealed));
    assert!(sealed.stdout.starts_with(b"age-encryption.org/v1"));
    assert_eq!(age_decrypt(&env.key, &sealed.stdout), ini);

    // The first token is revoked after the backup, and so is the hand-made one: by its id,
    // which ckan-vault refuses to guess about without --not-escrowed.
    env.json(&["token", "revoke", &t1]);
    let refused = env.run(&["token", "revoke", &legacy]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(
        text(&refused).contains("--not-escrowed"),
        "{}",
        text(&refused)
    );
    assert!(ckan_token_ids(&user).contains(&legacy));
    let by_hand = env.json(&["token", "revoke", &legacy, "--not-escrowed"]);
    assert_eq!(
        by_hand["revoked"][0]["token_id"],
        legacy.as_str(),
        "{by_hand}"
    );
    assert_eq!(by_hand["revoked"][0]["escrowed"], false, "{by_hand}");
    assert_eq!(ckan_token_ids(&user), std::slice::from_ref(&t2));

    // Restore the older backup into a new database, with the config.
    let db = unique("restored").replace('-', "_");
    let db_url = format!(
        "postgresql://postgres@/{db}?host={}&port={}",
        c.pg_socket_dir.display(),
        c.pg_port
    );
    let config_out = env.path("restored-ckan.ini");
    let no_key = env.run(&[
        "restore",
        &snapshot,
        "--config-out",
        config_out.to_str().unwrap(),
    ]);
    assert_eq!(no_key.status.code(), Some(2), "{}", text(&no_key));
    assert!(text(&no_key).contains("--identity"), "{}", text(&no_key));
    assert!(!config_out.exists());
    let t0 = std::time::Instant::now();
    let restored = env.json(&[
        "restore",
        &snapshot,
        "--db",
        &db_url,
        "--config-out",
        config_out.to_str().unwrap(),
        "--identity",
        env.key.to_str().unwrap(),
    ]);
    eprintln!("restore of the CKAN fixture took {:?}", t0.elapsed());
    assert_eq!(std::fs::read(&config_out).unwrap(), ini);
    assert_eq!(mode(&config_out), 0o600);
    assert_eq!(restored["config"]["sealed"], true);
    assert_eq!(restored["revocations"]["recorded"], 2, "{restored}");
    assert_eq!(restored["revocations"]["re_revoked"], 2, "{restored}");
    let count = |db: &str, id: &str| -> String {
        let out = c
            .psql_superuser(db)
            .args(["-At", "-c"])
            .arg(format!("SELECT count(*) FROM api_token WHERE id = '{id}'"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    assert_eq!(count(&db, &t1), "0", "the revoked token came back");
    assert_eq!(
        count(&db, &legacy),
        "0",
        "the revoked hand-made token came back"
    );
    assert_eq!(count(&db, &t2), "1", "a token that was not revoked is gone");

    // Without re-applying, the older backup does hold the revoked token.
    let db2 = unique("restored_raw").replace('-', "_");
    let db2_url = db_url.replace(&db, &db2);
    let raw = env.json(&[
        "restore",
        &snapshot,
        "--db",
        &db2_url,
        "--keep-revoked-tokens",
    ]);
    assert!(raw["revocations"].is_null(), "{raw}");
    assert_eq!(count(&db2, &t1), "1");

    // A drill of that backup re-applies the revocation in its scratch copy and says so.
    let drilled = env.json(&["drill", &snapshot]);
    let check = drilled["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "ckan: revocations")
        .unwrap_or_else(|| panic!("no revocation check: {drilled}"));
    assert_eq!(check["ok"], true, "{check}");
    assert!(
        check["detail"]
            .as_str()
            .unwrap()
            .contains("2 recorded, 2 token(s) of this backup revoked again"),
        "{check}"
    );
}

/// hooks/token/issue-token as an onboarding workflow runs it: one JSON line and its exit code.
fn issue_token_hook(env: &TokenEnv, program: &Path, args: &[&str]) -> (Option<i32>, Value) {
    let out = Command::new(root().join("hooks/token/issue-token"))
        .args(args)
        .env("CKAN_VAULT", program)
        .env("CKAN_VAULT_CONFIG", &env.config)
        .env("CKAN_VAULT_TOKEN_DIR", env.path("outbox/tokens"))
        .env("CKAN_VAULT_PASSWORD_DIR", env.path("outbox/passwords"))
        .env_remove("CKAN_VAULT_USER")
        .env_remove("CKAN_VAULT_EMAIL")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{}", text(&out));
    let v = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    (out.status.code(), v)
}

fn outbox(env: &TokenEnv) -> Vec<String> {
    let mut names: Vec<String> = ["outbox/tokens", "outbox/passwords"]
        .iter()
        .flat_map(|d| std::fs::read_dir(env.path(d)).unwrap().flatten())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn issue_token_hook_issues_escrows_and_maps_failures_to_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let env = TokenEnv::new(&TokenSite {
        ckan_command: Some(dir.path().join("ckan-wrapper")),
        ..TokenSite::http()
    });
    sabotaging_ckan(dir.path(), &env.vault);
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_ckan-vault"));

    // Issued: the file and its password in separate 0600 files, the token live at CKAN, its
    // escrow copy the snapshot the JSON line names.
    let user = unique("onboard");
    let email = format!("{user}@example.org");
    let (code, v) = issue_token_hook(&env, &bin, &[&user, &email]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["user"], user.as_str());
    let live = ckan_token_ids(&user);
    assert_eq!(live.len(), 1);
    assert_eq!(v["token_id"], live[0].as_str(), "{v}");
    let file = PathBuf::from(v["file"].as_str().unwrap());
    let password_file = PathBuf::from(v["password_file"].as_str().unwrap());
    assert_eq!(file, env.path(&format!("outbox/tokens/{user}.dcor-access")));
    assert_eq!(
        password_file,
        env.path(&format!("outbox/passwords/{user}.password"))
    );
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(&password_file), 0o600);
    let py = read_with_python(&file, &first_line(&password_file));
    assert_eq!(py["hostname"], "localhost");
    let snaps = env.restic(&["snapshots", "--json", "--tag", "escrow"]);
    assert!(snaps.status.success(), "{}", text(&snaps));
    let snaps: Value = serde_json::from_slice(&snaps.stdout).unwrap();
    assert_eq!(snaps[0]["id"], v["escrow_snapshot"], "{v}");
    let listed = env.json(&["token", "list"]);
    assert_eq!(listed["tokens"][0]["token_id"], v["token_id"], "{listed}");
    let delivered = outbox(&env);

    // Refused by CKAN (that e-mail address is taken): exit 1, nothing delivered or escrowed.
    let other = unique("onboard");
    let (code, v) = issue_token_hook(&env, &bin, &[&other, &email]);
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(v["ok"], false);
    assert!(v["error"].as_str().unwrap().contains("CKAN refused"), "{v}");
    assert!(!user_exists(&other));
    assert_eq!(outbox(&env), delivered);

    // The escrow copy fails after CKAN made the token (the vault breaks under the run): exit
    // 3, the token revoked again, nothing delivered.
    let via_cli = dir.path().join("ckan-vault-via-cli");
    std::fs::write(
        &via_cli,
        format!("#!/bin/sh\nexec {} \"$@\" --via cli\n", bin.display()),
    )
    .unwrap();
    std::fs::set_permissions(&via_cli, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.path().join("break-vault"), "").unwrap();
    let third = unique("onboard");
    let (code, v) = issue_token_hook(&env, &via_cli, &[&third, &format!("{third}@example.org")]);
    assert_eq!(code, Some(3), "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("revoked at CKAN again"),
        "{v}"
    );
    assert!(user_exists(&third));
    assert!(ckan_token_ids(&third).is_empty(), "the token survived");
    assert_eq!(outbox(&env), delivered);
    std::fs::remove_file(dir.path().join("break-vault")).unwrap();
    mend_vault(&env.vault);
}
