//! Faults during `token issue` (issue 7), against the real CKAN 2.11.6 fixture: CKAN down,
//! answering 500, answering too late, and ckan-vault SIGKILLed at several points. What must
//! hold: no token without escrow, and no escrow without a token; a run killed between
//! CKAN making the token and the escrow copy landing is reported by the next run and
//! resolved by `token revoke USER`; the vault stays consistent (`check --read-data`, and
//! Debian's `restic check --read-data`).
//!
//! A small HTTP proxy (std only, 127.0.0.1, a thread per connection) sits between
//! ckan-vault and CKAN and applies a per-test rule to `api_token_create`; every other
//! action is forwarded as is.
//!
//! Needs age, restic and the CKAN fixture (see docs/development.md).

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::ckan;
use common::tokens::{TokenEnv, TokenSite, ckan_token_ids, text, unique, user_exists};
use serde_json::Value;

// ---------------------------------------------------------------------------------------
// helpers

/// A token env whose `[ckan] url` is `url` (a proxy in front of the fixture, or nothing).
fn env(url: &str, timeout_secs: u64) -> TokenEnv {
    env_with_command(url, timeout_secs, None)
}

/// `ckan_command`: the `ckan` for `--via cli` (default: the fixture's).
fn env_with_command(url: &str, timeout_secs: u64, ckan_command: Option<&Path>) -> TokenEnv {
    TokenEnv::new(&TokenSite {
        url: url.to_string(),
        ckan_command: ckan_command.map(Path::to_path_buf),
        timeout_secs,
        ..TokenSite::http()
    })
}

/// What these tests ask of a token env beyond the shared helpers.
impl TokenEnv {
    /// `token issue USER --create-user`, quiet, with the password going to a file.
    fn issue_args(user: &str) -> Vec<String> {
        [
            "-q",
            "token",
            "issue",
            user,
            "--create-user",
            "--email",
            &format!("{user}@example.org"),
            "--password-out",
            &format!("{user}.pw"),
        ]
        .map(str::to_string)
        .to_vec()
    }

    fn spawn_issue(&self, user: &str) -> Child {
        let args = TokenEnv::issue_args(user);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.cmd(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ckan-vault")
    }

    fn issue(&self, user: &str) -> Output {
        let args = TokenEnv::issue_args(user);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run(&args)
    }

    /// The intents `token list` reports as having no escrow copy.
    fn intents(&self) -> Vec<Value> {
        self.json(&["token", "list"])["unescrowed_intents"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// Users with an escrowed token.
    fn escrowed_users(&self) -> Vec<String> {
        self.json(&["token", "list"])["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["user"].as_str().unwrap().to_string())
            .collect()
    }

    fn snapshot_count(&self) -> usize {
        self.json(&["snapshots", "--all"])["snapshots"]
            .as_array()
            .unwrap()
            .len()
    }

    /// `ckan-vault check --read-data` and Debian's `restic check --read-data` both pass.
    fn assert_consistent(&self) {
        let v = self.json(&["check", "--read-data"]);
        assert_eq!(v["ok"], true, "{v}");
        let out = self.restic(&["check", "--read-data"]);
        assert!(out.status.success(), "restic check: {}", text(&out));
    }

    /// The temporary files `token issue` prepares its outputs in.
    fn leftovers(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".ckan-vault-"))
            .map(|e| e.path())
            .collect()
    }

    /// Nothing of a failed issue stayed next to its destinations.
    fn assert_no_files(&self, user: &str) {
        assert!(!self.path(&format!("{user}.dcor-access")).exists());
        assert!(!self.path(&format!("{user}.pw")).exists());
        let leftovers = self.leftovers();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}

/// The one line ckan-vault printed as its error (with `-q` nothing else goes to stderr).
fn error_line(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{}", text(out));
    assert!(lines[0].starts_with("ckan-vault: error: "), "{}", text(out));
    // No token (CKAN's tokens are JWTs: `eyJ…`).
    assert!(!lines[0].contains("eyJ"), "{}", text(out));
    lines[0].to_string()
}

// ---------------------------------------------------------------------------------------
// the proxy

/// What the proxy does with the action a test picked (`api_token_create` unless said).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Rule {
    Forward,
    /// Never ask CKAN and never answer (until the client goes away).
    Swallow,
    /// Answer 500 without asking CKAN.
    Fail500,
    /// Ask CKAN (which makes the token), then answer 500 anyway.
    ForwardThen500,
    /// Ask CKAN, then hold its answer this long.
    Delay(Duration),
    /// Ask CKAN, then never answer (until the client goes away).
    Hold,
}

/// An HTTP proxy in front of the fixture CKAN that applies a rule to one action and
/// forwards the others. It reports `request ACTION` when a request arrives and
/// `answered ACTION` once CKAN has answered it.
struct Proxy {
    url: String,
    rule: Arc<Mutex<(&'static str, Rule)>>,
    events: Receiver<String>,
}

impl Proxy {
    /// A proxy with `rule` for `api_token_create`.
    fn start(rule: Rule) -> Proxy {
        Proxy::start_for("api_token_create", rule)
    }

    fn start_for(action: &'static str, rule: Rule) -> Proxy {
        let ckan_port = ckan::ckan().port;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let rule = Arc::new(Mutex::new((action, rule)));
        let (tx, events) = mpsc::channel();
        let shared = Arc::clone(&rule);
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let rule = *shared.lock().unwrap();
                let tx = tx.clone();
                std::thread::spawn(move || serve(client, rule, ckan_port, &tx));
            }
        });
        Proxy {
            url: format!("http://localhost:{port}"),
            rule,
            events,
        }
    }

    /// Sets the rule for the current action.
    fn set(&self, rule: Rule) {
        self.rule.lock().unwrap().1 = rule;
    }

    /// Waits for an event; false if it did not come within `limit`.
    fn wait_for(&self, event: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(e) if e == event => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    }

    /// Forgets the events so far.
    fn drain(&self) {
        while self.events.try_recv().is_ok() {}
    }
}

/// Reads one request: the head (without the blank line) and a Content-Length body.
fn read_request(s: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).ok()? == 0 {
            return None;
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf[..buf.len() - 4]).into_owned();
    let len = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    Some((head, body))
}

/// The head with its `Connection` header replaced by `Connection: close`.
fn closing(head: &str) -> String {
    let mut lines: Vec<&str> = head
        .split("\r\n")
        .filter(|l| {
            let name = l.split(':').next().unwrap_or("").trim();
            !name.eq_ignore_ascii_case("connection") && !name.eq_ignore_ascii_case("keep-alive")
        })
        .collect();
    lines.push("Connection: close");
    lines.join("\r\n") + "\r\n\r\n"
}

/// Sends the request to CKAN and returns its whole reply (head rewritten to close).
fn forward(head: &str, body: &[u8], ckan_port: u16) -> Vec<u8> {
    let mut up = TcpStream::connect(("127.0.0.1", ckan_port)).expect("connect to CKAN");
    up.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    up.write_all(closing(head).as_bytes()).unwrap();
    up.write_all(body).unwrap();
    let mut reply = Vec::new();
    let _ = up.read_to_end(&mut reply);
    let Some(at) = reply.windows(4).position(|w| w == b"\r\n\r\n") else {
        return reply;
    };
    let reply_head = String::from_utf8_lossy(&reply[..at]).into_owned();
    let mut out = closing(&reply_head).into_bytes();
    out.extend_from_slice(&reply[at + 4..]);
    out
}

fn serve(mut client: TcpStream, (ruled, rule): (&str, Rule), ckan_port: u16, tx: &Sender<String>) {
    let Some((head, body)) = read_request(&mut client) else {
        return;
    };
    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
    let action = path
        .split('?')
        .next()
        .unwrap_or("")
        .rsplit('/')
        .next()
        .unwrap_or("")
        .to_string();
    let _ = tx.send(format!("request {action}"));
    let rule = if action == ruled { rule } else { Rule::Forward };
    let hold = |client: &mut TcpStream| {
        let mut sink = [0u8; 256];
        while matches!(client.read(&mut sink), Ok(n) if n > 0) {}
    };
    let error_500 = || {
        let body = r#"{"help": "http://localhost/api/3/action/help_show?name=api_token_create", "success": false, "error": {"__type": "Internal Server Error", "message": "Internal Server Error"}}"#;
        format!(
            "HTTP/1.1 500 INTERNAL SERVER ERROR\r\nContent-Type: application/json;charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    };
    match rule {
        Rule::Fail500 => {
            let _ = client.write_all(&error_500());
            return;
        }
        Rule::Swallow => return hold(&mut client),
        _ => {}
    }
    let reply = forward(&head, &body, ckan_port);
    let _ = tx.send(format!("answered {action}"));
    match rule {
        Rule::Forward | Rule::Fail500 | Rule::Swallow => {
            let _ = client.write_all(&reply);
        }
        Rule::ForwardThen500 => {
            let _ = client.write_all(&error_500());
        }
        Rule::Delay(d) => {
            std::thread::sleep(d);
            let _ = client.write_all(&reply);
        }
        Rule::Hold => hold(&mut client),
    }
}

// ---------------------------------------------------------------------------------------
// CKAN down, failing, slow

/// Nothing listens at the configured URL: one line naming the host and the fix, and
/// nothing is left behind (no file, no intent, no snapshot).
#[test]
fn ckan_down_fails_with_one_line_and_leaves_nothing() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let env = env(&format!("http://localhost:{port}"), 3);
    let before = env.snapshot_count();
    let user = unique("down");
    let t0 = Instant::now();
    let out = env.issue(&user);
    eprintln!("token issue with CKAN down took {:?}", t0.elapsed());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let line = error_line(&out);
    assert!(line.contains(&format!("localhost:{port}")), "{line}");
    assert!(
        line.contains("check [ckan] url and that CKAN is running"),
        "{line}"
    );
    env.assert_no_files(&user);
    assert!(env.intents().is_empty());
    assert!(env.escrowed_users().is_empty());
    assert_eq!(env.snapshot_count(), before);
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
}

/// CKAN answers 500 to `api_token_create`: without having made the token (the proxy
/// answers) and after having made it (the proxy asks CKAN first). Either way no token
/// stays at CKAN, no escrow copy and no intent is left, and the message says so.
#[test]
fn ckan_answering_500_leaves_no_token_and_no_intent() {
    let proxy = Proxy::start(Rule::Fail500);
    let env = env(&proxy.url, 10);
    let before = env.snapshot_count();

    let user = unique("err500");
    let out = env.issue(&user);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let line = error_line(&out);
    assert!(line.contains("HTTP 500"), "{line}");
    assert!(line.contains("no token was left at CKAN"), "{line}");
    assert!(ckan_token_ids(&user).is_empty());
    env.assert_no_files(&user);

    proxy.set(Rule::ForwardThen500);
    proxy.drain();
    let made = unique("made500");
    let out = env.issue(&made);
    assert!(
        proxy.wait_for("answered api_token_create", Duration::ZERO),
        "CKAN was not asked"
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let line = error_line(&out);
    assert!(line.contains("revoked again"), "{line}");
    assert!(line.contains("no token was left at CKAN"), "{line}");
    assert!(ckan_token_ids(&made).is_empty(), "the token survived");
    env.assert_no_files(&made);

    assert!(env.intents().is_empty());
    assert!(env.escrowed_users().is_empty());
    assert_eq!(env.snapshot_count(), before);
}

/// CKAN makes the token but answers after the timeout: the run ends within a bound and
/// the late token is revoked ("no token without escrow").
#[test]
fn slow_ckan_is_bounded_and_its_late_token_is_revoked() {
    let timeout = 3;
    let proxy = Proxy::start(Rule::Delay(Duration::from_secs(8)));
    let env = env(&proxy.url, timeout);
    let before = env.snapshot_count();
    let user = unique("slow");
    let t0 = Instant::now();
    let out = env.issue(&user);
    let took = t0.elapsed();
    eprintln!("token issue against a slow CKAN took {took:?}");
    assert!(
        proxy.wait_for("answered api_token_create", Duration::ZERO),
        "CKAN was not asked"
    );
    assert!(took < Duration::from_secs(timeout + 30), "{took:?}");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let line = error_line(&out);
    assert!(
        line.contains(&format!(
            "did not answer api_token_create within {timeout} s"
        )),
        "{line}"
    );
    assert!(line.contains("revoked again"), "{line}");
    assert!(ckan_token_ids(&user).is_empty(), "the late token survived");
    env.assert_no_files(&user);
    assert!(env.intents().is_empty());
    assert!(env.escrowed_users().is_empty());
    assert_eq!(env.snapshot_count(), before);
}

// ---------------------------------------------------------------------------------------
// ckan-vault killed

/// SIGKILL after CKAN made the token, before the escrow copy landed: the next run reports
/// the intent, the vault is consistent, and `token revoke USER` revokes the token.
#[test]
fn sigkill_between_token_and_escrow_is_reported_and_resolved() {
    let proxy = Proxy::start(Rule::Hold);
    let env = env(&proxy.url, 60);
    let user = unique("killed");
    let mut child = env.spawn_issue(&user);
    let answered = proxy.wait_for("answered api_token_create", Duration::from_secs(60));
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(answered, "CKAN was not asked for the token ({status})");
    assert_eq!(status.signal(), Some(9), "{status}");
    proxy.set(Rule::Forward);

    let live = ckan_token_ids(&user);
    assert_eq!(live.len(), 1, "{live:?}");
    // SIGKILL leaves the (still empty) temporary output files behind, but no output.
    assert!(!env.path(&format!("{user}.dcor-access")).exists());
    assert!(!env.path(&format!("{user}.pw")).exists());
    for f in env.leftovers() {
        let meta = std::fs::metadata(&f).unwrap();
        assert_eq!(meta.len(), 0, "{}", f.display());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{}", f.display());
    }
    let intents = env.intents();
    assert_eq!(intents.len(), 1, "{intents:?}");
    assert_eq!(intents[0]["user"], user.as_str());
    let msg = intents[0]["message"].as_str().unwrap();
    assert!(msg.contains(&format!("token revoke {user}")), "{msg}");
    assert!(env.escrowed_users().is_empty());
    env.assert_consistent();

    let revoked = env.json(&["token", "revoke", &user]);
    assert_eq!(revoked["revoked"].as_array().unwrap().len(), 1, "{revoked}");
    assert_eq!(revoked["revoked"][0]["token_id"], live[0].as_str());
    assert_eq!(revoked["revoked"][0]["escrowed"], false);
    assert!(ckan_token_ids(&user).is_empty());
    assert!(env.intents().is_empty());
    env.assert_consistent();
}

/// SIGKILL at several points of `token issue --create-user`: while the vault opens, around
/// the intent save (right after the user check that precedes it), while CKAN creates the
/// user, and right after CKAN made the token (while the file and the escrow copy are
/// written). Afterwards the vault is consistent, every token at CKAN has an escrow copy
/// or a reported intent, every escrow copy has its token at CKAN, `token revoke USER`
/// resolves every intent, and the next `token issue` succeeds.
#[test]
fn sigkill_at_several_points_keeps_tokens_and_escrow_in_step() {
    let proxy = Proxy::start(Rule::Forward);
    let env = env(&proxy.url, 60);
    let mut killed = Vec::new();
    let mut results = Vec::new();
    // Wait for this event (none: right after spawning), then this many milliseconds.
    let points = [
        ("", 0),
        ("", 150),
        ("answered user_show", 0),
        ("answered user_show", 10),
        ("answered user_show", 30),
        ("request user_create", 0),
        ("answered api_token_create", 0),
        ("answered api_token_create", 15),
        ("answered api_token_create", 40),
    ];
    for (event, ms) in points {
        proxy.drain();
        let user = unique("kill");
        let mut child = env.spawn_issue(&user);
        if !event.is_empty() {
            assert!(
                proxy.wait_for(event, Duration::from_secs(60)),
                "no {event:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(ms));
        // The run may end on its own just before the signal: then it is not killed.
        child.kill().unwrap();
        let status = child.wait().unwrap();
        results.push(format!(
            "{event:?} +{ms} ms: {}",
            if status.signal() == Some(9) {
                "killed".to_string()
            } else {
                format!("finished first ({status})")
            }
        ));
        killed.push(user);
    }
    eprintln!("kill points: {results:#?}");
    // The points right after spawning and while CKAN works always land; a test in which
    // no kill landed would prove nothing.
    let landed = results.iter().filter(|r| r.ends_with(": killed")).count();
    assert!(landed >= 3, "only {landed} kills landed: {results:#?}");

    env.assert_consistent();
    let listed = env.json(&["token", "list"]);
    let intents = listed["unescrowed_intents"].as_array().unwrap();
    let escrows = listed["tokens"].as_array().unwrap();
    eprintln!(
        "after the kills: {} intent(s) without escrow, {} escrowed token(s)",
        intents.len(),
        escrows.len()
    );
    for e in escrows {
        // No escrow without a token.
        let user = e["user"].as_str().unwrap();
        assert!(
            ckan_token_ids(user).contains(&e["token_id"].as_str().unwrap().to_string()),
            "{e}"
        );
    }
    for user in &killed {
        let has_intent = intents.iter().any(|i| i["user"] == user.as_str());
        let escrowed: Vec<&str> = escrows
            .iter()
            .filter(|e| e["user"] == user.as_str())
            .map(|e| e["token_id"].as_str().unwrap())
            .collect();
        let live = ckan_token_ids(user);
        // No token without escrow, or at least without a reported intent.
        assert!(
            has_intent || live.iter().all(|t| escrowed.contains(&t.as_str())),
            "{user}: tokens {live:?} at CKAN, escrowed {escrowed:?}, no intent"
        );
        // An intent of a user CKAN never created is the next test's business.
        if has_intent && user_exists(user) {
            let revoked = env.json(&["token", "revoke", user]);
            eprintln!("token revoke {user}: {revoked}");
            assert!(ckan_token_ids(user).is_empty(), "{revoked}");
        }
    }
    for i in env.intents() {
        assert!(!user_exists(i["user"].as_str().unwrap()), "{i}");
    }

    let fresh = unique("after");
    let out = env.issue(&fresh);
    assert!(out.status.success(), "{}", text(&out));
    assert!(env.path(&format!("{fresh}.dcor-access")).exists());
    assert_eq!(ckan_token_ids(&fresh).len(), 1);
    assert!(env.escrowed_users().contains(&fresh));
    env.assert_consistent();
}

/// Killed after the intent was saved but before CKAN created the user (`--create-user`):
/// the intent is reported, and `token revoke USER` clears it although CKAN has no such
/// user (so no token of it either).
#[test]
fn sigkill_before_the_user_was_created_leaves_an_intent_that_revoke_clears() {
    let proxy = Proxy::start_for("user_create", Rule::Swallow);
    let env = env(&proxy.url, 60);
    let user = unique("nouser");
    let mut child = env.spawn_issue(&user);
    let asked = proxy.wait_for("request user_create", Duration::from_secs(60));
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(asked, "user_create was not asked for ({status})");
    proxy.set(Rule::Forward);
    let intents = env.intents();
    assert_eq!(intents.len(), 1, "{intents:?}");
    assert_eq!(intents[0]["user"], user.as_str());
    env.assert_consistent();
    let revoked = env.json(&["token", "revoke", &user]);
    assert_eq!(
        revoked["intents_cleared"].as_array().unwrap().len(),
        1,
        "{revoked}"
    );
    assert!(env.intents().is_empty());
}

// ---------------------------------------------------------------------------------------
// --via cli

/// A `ckan` wrapper whose `user token add` fails after the real one made (and printed)
/// the token, while the file `fail-add` exists.
fn failing_ckan(dir: &Path) -> PathBuf {
    let script = dir.join("ckan-wrapper");
    let real = ckan::ckan().venv.join("bin/ckan");
    std::fs::write(
        &script,
        format!(
            r#"#!/bin/sh
# args: -c INI user token add ...
{real} "$@"
rc=$?
if [ $rc = 0 ] && [ "$3 $4 $5" = "user token add" ] && [ -e {dir}/fail-add ]; then
    echo "RuntimeError: simulated failure after the token was made" >&2
    exit 1
fi
exit $rc
"#,
            dir = dir.display(),
            real = real.display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// `ckan user token add` fails after CKAN made the token (and printed it): the token is
/// revoked again, the user's escrowed token of the same name is left alone (the command
/// does not say when a token was made), and the message does not show the token.
#[test]
fn cli_failing_after_ckan_made_the_token_revokes_only_that_token() {
    let dir = tempfile::tempdir().unwrap();
    let env = env_with_command(
        &ckan::ckan().url.replace("127.0.0.1", "localhost"),
        60,
        Some(&failing_ckan(dir.path())),
    );
    let user = unique("cli");
    let c = ckan::ckan();
    let created = c.post(
        "user_create",
        Some(&c.admin_token()),
        &format!(
            r#"{{"name": "{user}", "email": "{user}@example.org", "password": "A-long-enough-password-1"}}"#
        ),
    );
    assert!(created.success(), "{created:?}");
    let first = env.json(&[
        "token",
        "issue",
        &user,
        "--via",
        "cli",
        "--password-out",
        "first.pw",
    ]);
    let kept = first["token_id"].as_str().unwrap().to_string();

    std::fs::write(dir.path().join("fail-add"), "").unwrap();
    let before = env.snapshot_count();
    let out = env.run(&[
        "-q",
        "token",
        "issue",
        &user,
        "--via",
        "cli",
        "--out",
        "second.dcor-access",
        "--password-out",
        "second.pw",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let line = error_line(&out);
    assert!(line.contains("revoked again"), "{line}");
    assert!(line.contains("[REDACTED]"), "{line}");
    assert_eq!(ckan_token_ids(&user), [kept], "{line}");
    assert!(!env.path("second.dcor-access").exists());
    assert!(!env.path("second.pw").exists());
    assert!(env.intents().is_empty());
    assert_eq!(env.snapshot_count(), before);
}
