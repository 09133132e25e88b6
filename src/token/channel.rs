//! The two ways to ask CKAN for users and tokens: its Action API with a sysadmin's token
//! (`--via api`), or the `ckan` command on the CKAN host (`--via cli`).
//!
//! With the command, secrets never go into argv (`/proc/*/cmdline` is world-readable):
//! the new user's password goes to `ckan user add` on stdin (its prompt falls back to
//! reading stdin when there is no terminal), and `ckan user token add -q` prints the
//! token as the last line of stdout, which is read into zeroizing memory.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use jiff::Timestamp;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use crate::ckan::api::{self, Client, NewToken};
use crate::ledger::Via;

use super::TokenError;

/// Largest output read from the `ckan` command.
const MAX_OUTPUT_BYTES: u64 = 1024 * 1024;

/// The `ckan` command and the ckan.ini it is given with `-c`.
#[derive(Debug, Clone)]
pub struct CkanCli {
    /// Program and leading arguments, e.g. `["/usr/lib/ckan/default/bin/ckan"]` or
    /// `["sudo", "-u", "www-data", "ckan"]`.
    pub command: Vec<String>,
    pub ini: PathBuf,
}

/// A token CKAN lists for a user (no secret).
#[derive(Debug, Clone)]
pub struct ListedToken {
    pub id: String,
    pub name: String,
    /// When CKAN created it (the Action API says; the `ckan` command does not).
    pub created: Option<Timestamp>,
}

/// How to reach CKAN.
#[derive(Debug, Clone, Copy)]
pub enum Channel<'a> {
    Api(&'a Client),
    Cli(&'a CkanCli),
}

impl Channel<'_> {
    /// Which channel this is, for the records.
    #[must_use]
    pub fn via(&self) -> Via {
        match self {
            Channel::Api(_) => Via::Api,
            Channel::Cli(_) => Via::Cli,
        }
    }

    /// Whether the user exists. The `ckan` command has no cheap check, so there the
    /// answer is None and a missing user shows when the token is created.
    pub fn user_exists(&self, user: &str) -> Result<Option<bool>, TokenError> {
        match self {
            Channel::Api(c) => match c.user_show(Some(user)) {
                Ok(u) => Ok(Some(u.state != "deleted")),
                Err(api::Error::NotFound { .. }) => Ok(Some(false)),
                Err(e) => Err(e.into()),
            },
            Channel::Cli(_) => Ok(None),
        }
    }

    /// Creates the user with `password`.
    pub fn create_user(
        &self,
        user: &str,
        email: &str,
        password: &SecretString,
    ) -> Result<(), TokenError> {
        match self {
            Channel::Api(c) => c
                .user_create(user, email, password)
                .map(|_| ())
                .map_err(Into::into),
            Channel::Cli(cli) => {
                let mut input = Zeroizing::new(String::new());
                for _ in 0..2 {
                    input.push_str(password.expose_secret());
                    input.push('\n');
                }
                let email_arg = format!("email={email}");
                cli.run(
                    &["user", "add", "--", user, &email_arg],
                    Some(input.as_bytes()),
                    Some(password),
                )?;
                Ok(())
            }
        }
    }

    /// Creates an API token for `user` named `name`.
    pub fn create_token(&self, user: &str, name: &str) -> Result<NewToken, TokenError> {
        match self {
            Channel::Api(c) => Ok(c.api_token_create(user, name)?),
            Channel::Cli(cli) => {
                let out = cli.run(
                    &["user", "token", "add", "-q", "--", user, name],
                    None,
                    None,
                )?;
                let text = std::str::from_utf8(&out).map_err(|_| TokenError::CkanCli {
                    command: cli.shown(&["user", "token", "add"]),
                    detail: "it printed something that is not text".into(),
                })?;
                let line = text
                    .lines()
                    .map(str::trim)
                    .rfind(|l| !l.is_empty())
                    .unwrap_or_default();
                let token = SecretString::from(line.to_owned());
                // A JWT with a jti, or the output was something else: never echo it.
                let id = api::jwt_id(&token).map_err(|_| TokenError::CkanCli {
                    command: cli.shown(&["user", "token", "add", "-q"]),
                    detail: "its last line of output is not a token".into(),
                })?;
                Ok(NewToken { token, id })
            }
        }
    }

    /// Revokes a token by id.
    pub fn revoke(&self, token_id: &str) -> Result<(), TokenError> {
        match self {
            Channel::Api(c) => Ok(c.api_token_revoke_jti(token_id)?),
            Channel::Cli(cli) => {
                // `--`: a token id may start with `-` (base64url).
                match cli.run(&["user", "token", "revoke", "--", token_id], None, None) {
                    Ok(_) => Ok(()),
                    // CKAN's command fails for an id it does not know: already gone.
                    Err(TokenError::CkanCli { detail, .. })
                        if detail.contains("API Token not found") =>
                    {
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// The user's tokens at CKAN.
    pub fn list_tokens(&self, user: &str) -> Result<Vec<ListedToken>, TokenError> {
        match self {
            Channel::Api(c) => Ok(c
                .api_token_list(user)?
                .into_iter()
                .map(|t| ListedToken {
                    created: t.created_at.as_deref().and_then(parse_ckan_time),
                    id: t.id,
                    name: t.name,
                })
                .collect()),
            Channel::Cli(cli) => {
                let out = cli.run(&["user", "token", "list", "--", user], None, None)?;
                Ok(parse_token_list(&String::from_utf8_lossy(&out)))
            }
        }
    }
}

/// CKAN's timestamps are naive UTC (`2026-12-03T15:55:10.488540`).
fn parse_ckan_time(s: &str) -> Option<Timestamp> {
    if let Ok(t) = s.parse::<Timestamp>() {
        return Some(t);
    }
    let dt: jiff::civil::DateTime = s.parse().ok()?;
    dt.to_zoned(jiff::tz::TimeZone::UTC)
        .ok()
        .map(|z| z.timestamp())
}

/// `ckan user token list USER` prints `\t[<jti>] <name> - <last access>` lines.
fn parse_token_list(text: &str) -> Vec<ListedToken> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l.strip_prefix('[')?;
            let (id, rest) = rest.split_once("] ")?;
            let name = rest.rsplit_once(" - ").map_or(rest, |(n, _)| n);
            Some(ListedToken {
                id: id.to_string(),
                name: name.to_string(),
                created: None,
            })
        })
        .collect()
}

impl CkanCli {
    fn shown(&self, args: &[&str]) -> String {
        let mut parts: Vec<&str> = self.command.iter().map(String::as_str).collect();
        parts.extend(args);
        parts.join(" ")
    }

    /// Runs `COMMAND -c INI ARGS…` and returns its stdout. `secret` is scrubbed from any
    /// error detail (defence in depth: CKAN does not echo it).
    fn run(
        &self,
        args: &[&str],
        stdin: Option<&[u8]>,
        secret: Option<&SecretString>,
    ) -> Result<Zeroizing<Vec<u8>>, TokenError> {
        // Messages name the subcommand (`user token add`), never its operands.
        let words: Vec<&str> = args.iter().copied().filter(|a| *a != "--").collect();
        let shown = self.shown(&words[..words.len().min(3)]);
        let fail = |detail: String| TokenError::CkanCli {
            command: shown.clone(),
            detail,
        };
        let (program, lead) = self
            .command
            .split_first()
            .ok_or_else(|| fail("[ckan] ckan-command is empty".into()))?;
        let mut cmd = Command::new(program);
        cmd.args(lead)
            .arg("-c")
            .arg(&self.ini)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        log::debug!("running {shown}");
        let mut child = cmd.spawn().map_err(|e| fail(e.to_string()))?;
        if let Some(data) = stdin {
            let mut input = child.stdin.take().expect("stdin is piped");
            // A command that exits early closes its stdin: its exit status tells more.
            let _ = input.write_all(data);
        }
        let stderr = child.stderr.take().expect("stderr is piped");
        let errs = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = stderr.take(MAX_OUTPUT_BYTES).read_to_end(&mut v);
            v
        });
        let mut out = Zeroizing::new(Vec::new());
        let stdout = child.stdout.take().expect("stdout is piped");
        let _ = stdout.take(MAX_OUTPUT_BYTES).read_to_end(&mut out);
        let status = child.wait().map_err(|e| fail(e.to_string()))?;
        let err = errs.join().unwrap_or_default();
        if status.success() {
            return Ok(out);
        }
        let mut detail = format!("{status}");
        let last = |bytes: &[u8]| -> Option<String> {
            String::from_utf8_lossy(bytes)
                .lines()
                .map(|l| {
                    l.replace("Password :", "")
                        .replace("Repeat for confirmation:", "")
                })
                .map(|l| l.trim().to_string())
                .rfind(|l| {
                    !l.is_empty()
                        && l != "Aborted!"
                        && !l.starts_with("Warning: Password input")
                        && !l.chars().next().is_some_and(|c| c.is_ascii_digit())
                })
        };
        for part in [last(&out), last(&err)].into_iter().flatten() {
            detail.push_str(": ");
            detail.push_str(&part);
        }
        let mut detail: String = detail.chars().take(300).collect();
        if let Some(s) = secret {
            detail = detail.replace(s.expose_secret(), "[REDACTED]");
        }
        Err(fail(redact_jwts(&detail)))
    }
}

/// Cuts anything shaped like a JWT (`eyJ…` with two dots) out of a message: the `ckan`
/// command prints the new token as its last line, which may be all it printed before failing.
pub(crate) fn redact_jwts(s: &str) -> String {
    let is_part = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '=');
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find("eyJ") {
        let (before, from) = rest.split_at(at);
        out.push_str(before);
        let end = from.find(|c: char| !is_part(c)).unwrap_or(from.len());
        let word = &from[..end];
        if word.trim_end_matches('.').matches('.').count() >= 2 {
            out.push_str("[REDACTED]");
        } else {
            out.push_str(word);
        }
        rest = &from[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwts_are_cut_out_of_messages() {
        let msg = "`ckan user token add` failed (exit status: 1: eyJhbGciOi.eyJqdGkiOiJ4In0.c2ln-_x: boom)";
        assert_eq!(
            redact_jwts(msg),
            "`ckan user token add` failed (exit status: 1: [REDACTED]: boom)"
        );
        assert_eq!(redact_jwts("eyJ alone. eyJx.y"), "eyJ alone. eyJx.y");
    }

    #[test]
    fn parses_the_cli_token_list() {
        let text = "Tokens([id] name - lastAccess):\n\t[Ltwap3Cs] tok - Never\n\t[abc-_1] my - name - 2026-01-01\n";
        let l = parse_token_list(text);
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].id, "Ltwap3Cs");
        assert_eq!(l[0].name, "tok");
        assert_eq!(l[1].name, "my - name");
    }

    #[test]
    fn parses_ckan_times_as_utc() {
        let t = parse_ckan_time("2026-12-03T15:55:10.488540").unwrap();
        assert_eq!(t.to_string(), "2026-12-03T15:55:10.48854Z");
        assert!(parse_ckan_time("2026-12-03T15:55:10Z").is_some());
        assert!(parse_ckan_time("yesterday").is_none());
    }

    #[test]
    fn cli_errors_are_one_line_and_scrub_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("fake-ckan");
        std::fs::write(
            &script,
            "#!/bin/sh\nread pw\necho \"None - {'password': ['bad $pw']}\"\necho Aborted! >&2\nexit 1\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cli = CkanCli {
            command: vec![script.display().to_string()],
            ini: dir.path().join("ckan.ini"),
        };
        let pw = SecretString::from("s3cret-pw-value".to_owned());
        let err = Channel::Cli(&cli)
            .create_user("alice", "a@example.org", &pw)
            .unwrap_err();
        let msg = err.to_string();
        assert!(!msg.contains("s3cret-pw-value"), "{msg}");
        assert!(msg.contains("[REDACTED]") && !msg.contains('\n'), "{msg}");
        assert!(msg.contains("user add alice"), "{msg}");
        assert!(!msg.contains("a@example.org"), "{msg}");
    }
}
