//! `ckan-vault token …`: issue, inspect, verify, list, recover and revoke access tokens.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::{Subcommand, ValueEnum};
use jiff::Timestamp;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use ckan_vault::ckan::api::Client;
use ckan_vault::escrow::Identities;
use ckan_vault::token::TokenError;
use ckan_vault::token::access_file::MAX_FILE_BYTES;
use ckan_vault::token::cert::Certificate;
use ckan_vault::token::channel::{Channel, CkanCli};
use ckan_vault::token::{inspect, issue, list, recover, revoke};

use super::Global;

/// The environment variable `inspect` and `verify` read the file's password from.
const PASSWORD_ENV: &str = "CKAN_VAULT_TOKEN_PASSWORD";

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Via {
    /// CKAN's Action API with [ckan] api-token-file (a sysadmin's token)
    Api,
    /// The `ckan` command on the CKAN host ([ckan] ckan-command, -c [ckan] ini)
    Cli,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a CKAN API token, write USER.dcor-access and escrow a sealed copy in the vault
    Issue {
        /// The CKAN user name
        user: String,
        /// E-mail address for --create-user
        #[arg(long, value_name = "ADDRESS")]
        email: Option<String>,
        /// Create the CKAN user first (with a generated password kept only in the escrow copy)
        #[arg(long)]
        create_user: bool,
        /// Name of the API token at CKAN
        #[arg(long, value_name = "NAME", default_value = issue::DEFAULT_TOKEN_NAME)]
        token_name: String,
        /// Where to write the .dcor-access file [default: USER.dcor-access]
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Write the file's password here (created 0600); `-` prints it on stdout
        #[arg(long, value_name = "FILE")]
        password_out: Option<PathBuf>,
        /// How to reach CKAN
        #[arg(long, value_enum, default_value = "api")]
        via: Via,
        /// Also check over TLS that the site serves [ckan] certificate (always done with --via api on https)
        #[arg(long)]
        check_served: bool,
    },
    /// Show what a .dcor-access file holds (offline; the password is optional)
    Inspect {
        file: PathBuf,
        /// Read the file's password from this file [or $CKAN_VAULT_TOKEN_PASSWORD, or ask on a terminal]
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
    /// Check a .dcor-access file against its site: TLS trusting only the bundled certificate, and the token works
    Verify {
        file: PathBuf,
        /// Read the file's password from this file [or $CKAN_VAULT_TOKEN_PASSWORD, or ask on a terminal]
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
        /// The site to check [default: https://CN of the bundled certificate, as DCOR-Aid does]
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        /// Seconds to wait for the site
        #[arg(long, value_name = "SECONDS", default_value_t = 30)]
        timeout: u64,
    },
    /// List the escrowed tokens (needs the vault, not the escrow keys)
    List,
    /// Get a token's .dcor-access file and password back from its escrow copy
    Recover {
        /// A user (their newest token not revoked) or a token id
        spec: String,
        /// An escrow officer's age identity file (AGE-SECRET-KEY-1… or ssh private key)
        #[arg(long, value_name = "KEY")]
        identity: PathBuf,
        /// Where to write the .dcor-access file [default: USER.dcor-access]
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Write the file's password here (created 0600); `-` prints it on stdout
        #[arg(long, value_name = "FILE")]
        password_out: Option<PathBuf>,
    },
    /// Revoke a token (or all escrowed tokens of a user) at CKAN and record it in the vault
    Revoke {
        /// A user or a token id
        spec: String,
        /// SPEC is the id of a token ckan-vault did not issue (no escrow copy, e.g. made by
        /// hand with `ckan user token add`): revoke it at CKAN and record it all the same
        #[arg(long)]
        not_escrowed: bool,
        /// How to reach CKAN
        #[arg(long, value_enum, default_value = "api")]
        via: Via,
    },
}

pub fn run(g: &Global, args: Args) -> Result<ExitCode> {
    match args.command {
        TokenCommand::Issue {
            user,
            email,
            create_user,
            token_name,
            out,
            password_out,
            via,
            check_served,
        } => {
            password_destination(password_out.as_deref())?;
            let loaded = g.load()?;
            let config = &loaded.config;
            let recipients = config
                .escrow_recipients()?
                .ok_or(TokenError::NoRecipients)?;
            let certificate = Certificate::from_file(config.ckan_certificate_path()?)
                .map_err(TokenError::from)?;
            let site_url = config.ckan_url()?;
            let vault = super::open_vault(&loaded)?;
            let (client, cli) = channel_parts(config, via)?;
            let channel = match (&client, &cli) {
                (Some(c), _) => Channel::Api(c),
                (_, Some(c)) => Channel::Cli(c),
                _ => unreachable!("channel_parts returns one of them"),
            };
            let label = config.site_label();
            let site = issue::IssueSite {
                vault: &vault,
                channel,
                site_url: &site_url,
                label: &label,
                certificate: &certificate,
                recipients: &recipients,
                timeout: config.ckan_timeout(),
            };
            let req = issue::IssueRequest {
                out: out.unwrap_or_else(|| PathBuf::from(format!("{user}.dcor-access"))),
                user,
                email,
                create_user,
                token_name,
                password_out: password_out.filter(|p| p.as_os_str() != "-"),
                check_served,
            };
            let issued = match issue::issue(&site, &req, Timestamp::now()) {
                Ok(i) => i,
                Err(
                    e @ (TokenError::EscrowFailedTokenLive { .. }
                    | TokenError::TokenMayExist { .. }),
                ) => {
                    // Exit 3: a token exists (or may exist) at CKAN without escrow; act now.
                    return Ok(fail_with(g, &e, 3));
                }
                Err(e) => return Err(e.into()),
            };
            let e = &issued.entry;
            let mut j = json!({
                "ok": true,
                "user": e.user,
                "token_id": e.token_id,
                "token_name": e.token_name,
                "created": e.created.to_string(),
                "user_created": e.user_created,
                "out": issued.out.display().to_string(),
                "password_out": issued.password_out.as_ref().map(|p| p.display().to_string()),
                "escrow_snapshot": issued.escrow_snapshot,
                "recipients": e.recipients.len(),
                "site_url": e.site_url,
                "hostname": e.hostname,
                "cert_sha256": e.cert_sha256,
                "cert_not_after": e.cert_not_after.to_string(),
                "cert_days_left": issued.cert.days_left,
                "warnings": issued.warnings,
            });
            let mut human = format!(
                "issued token {} ({:?}) for {}{}\n  file:     {} (0600)\n",
                e.token_id,
                e.token_name,
                e.user,
                if e.user_created {
                    " (user created)"
                } else {
                    ""
                },
                issued.out.display()
            );
            match &issued.password_out {
                Some(p) => {
                    human.push_str(&format!("  password: written to {} (0600)\n", p.display()))
                }
                None => {
                    j["password"] = issued.password.expose_secret().into();
                    human.push_str(&format!(
                        "  password: {}\n",
                        issued.password.expose_secret()
                    ));
                }
            }
            human.push_str(&format!(
                "  site:     {} → DCOR-Aid connects to {}\n  cert:     SHA-256 {}\n            valid until {} ({} days)\n  escrow:   snapshot {}, sealed to {} recipient(s)\n",
                e.site_url,
                e.hostname,
                e.cert_sha256,
                e.cert_not_after.strftime("%Y-%m-%d"),
                issued.cert.days_left,
                &issued.escrow_snapshot[..8],
                e.recipients.len()
            ));
            for w in &issued.warnings {
                human.push_str(&format!("  warning: {w}\n"));
            }
            human.push_str("Send the file and its password on different channels.\n");
            g.print(&j, &human);
            if issued.password_out.is_none() {
                show_password_when_quiet(g, &issued.password);
            }
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Inspect {
            file,
            password_file,
        } => {
            let bytes = read_token_file(&file)?;
            let password = password_for(&file, password_file.as_deref(), true)?;
            let out = inspect::inspect(&bytes, password.as_ref(), Timestamp::now())?;
            let ok = out.problem.is_none()
                && out
                    .content
                    .as_ref()
                    .is_none_or(|c| c.certificate_problem.is_none());
            let mut j = serde_json::to_value(&out)?;
            j["ok"] = ok.into();
            let mut human = format!("{} ({} bytes)\n", file.display(), out.file_size);
            for m in &out.members {
                human.push_str(&format!(
                    "  {:<14} {:>6} bytes  {}{}\n",
                    m.name,
                    m.size,
                    m.method,
                    if m.encrypted {
                        ", encrypted"
                    } else {
                        ", NOT encrypted"
                    }
                ));
            }
            if let Some(p) = &out.problem {
                human.push_str(&format!("FAILED: {p}\n"));
            }
            match &out.content {
                None if out.problem.is_none() => human.push_str(
                    "  (give the password to see the hostname, certificate and token id)\n",
                ),
                None => {}
                Some(c) => {
                    human.push_str(&format!("  api_key:  {}\n", c.api_key));
                    if let Some(ci) = &c.certificate {
                        human.push_str(&format!(
                            "  hostname: {} (the certificate's CN, where DCOR-Aid connects)\n  cert:     SHA-256 {}\n            valid {} to {} ({} days left){}\n",
                            ci.hostname.as_deref().unwrap_or("(none)"),
                            ci.fingerprint_sha256,
                            ci.not_before.strftime("%Y-%m-%d"),
                            ci.not_after.strftime("%Y-%m-%d"),
                            ci.days_left,
                            if ci.is_ca { ", CA:TRUE (self-signed site certificate)" } else { "" }
                        ));
                    }
                    if let Some(p) = &c.certificate_problem {
                        human.push_str(&format!("FAILED: {p}\n"));
                    }
                }
            }
            g.print(&j, &human);
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        TokenCommand::Verify {
            file,
            password_file,
            url,
            timeout,
        } => {
            let bytes = read_token_file(&file)?;
            let password = password_for(&file, password_file.as_deref(), false)?
                .ok_or(TokenError::NoPassword)?;
            let v = inspect::verify(
                &bytes,
                &password,
                url.as_deref(),
                std::time::Duration::from_secs(timeout),
                Timestamp::now(),
            )?;
            let mut j = serde_json::to_value(&v)?;
            j["ok"] = true.into();
            let mut human = format!(
                "OK: {} works for CKAN user {} at {} (CKAN {})\n  {}\n",
                file.display(),
                v.user,
                v.url,
                v.ckan_version,
                if v.tls_pinned {
                    "TLS: the site presents the bundled certificate"
                } else {
                    "TLS: not used (http)"
                }
            );
            for w in &v.warnings {
                human.push_str(&format!("  warning: {w}\n"));
            }
            g.print(&j, &human);
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::List => {
            let loaded = g.load()?;
            let vault = super::open_vault(&loaded)?;
            let now = Timestamp::now();
            let l = list::list(&vault, now)?;
            let mut j = serde_json::to_value(&l)?;
            j["ok"] = true.into();
            let mut human = format!(
                "{:<20} {:<44} {:<16} {:<17} {}\n",
                "USER", "TOKEN ID", "NAME", "CREATED (UTC)", "STATUS"
            );
            for t in &l.tokens {
                human.push_str(&format!(
                    "{:<20} {:<44} {:<16} {:<17} {}\n",
                    t.user,
                    t.token_id,
                    t.token_name,
                    t.created.strftime("%Y-%m-%d %H:%M"),
                    match t.revoked {
                        Some(r) => format!("revoked {}", r.strftime("%Y-%m-%d %H:%M")),
                        None => "active".to_string(),
                    }
                ));
            }
            let active = l.tokens.iter().filter(|t| t.revoked.is_none()).count();
            human.push_str(&format!(
                "{} escrowed token(s), {active} active\n",
                l.tokens.len()
            ));
            for i in &l.unescrowed_intents {
                if g.json {
                    log::warn!("{}", i.message);
                }
                human.push_str(&format!("WARNING: {}\n", i.message));
            }
            for u in &l.unreadable {
                human.push_str(&format!("WARNING: unreadable record in snapshot {u}\n"));
            }
            g.print(&j, &human);
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Recover {
            spec,
            identity,
            out,
            password_out,
        } => {
            password_destination(password_out.as_deref())?;
            let identities = Identities::from_file(&identity).map_err(TokenError::from)?;
            let loaded = g.load()?;
            let vault = super::open_vault(&loaded)?;
            let r = recover::recover(
                &vault,
                &identities,
                &recover::RecoverRequest {
                    spec,
                    out,
                    password_out: password_out.filter(|p| p.as_os_str() != "-"),
                },
            )?;
            let e = &r.entry;
            let mut j = json!({
                "ok": true,
                "user": e.user,
                "token_id": e.token_id,
                "token_name": e.token_name,
                "created": e.created.to_string(),
                "snapshot": r.snapshot,
                "out": r.out.display().to_string(),
                "password_out": r.password_out.as_ref().map(|p| p.display().to_string()),
                "revoked": r.revoked.map(|t| t.to_string()),
                "user_password_escrowed": r.has_user_password,
            });
            let mut human = format!(
                "recovered token {} ({:?}) of {} from escrow snapshot {}\n  file:     {} (0600)\n",
                e.token_id,
                e.token_name,
                e.user,
                &r.snapshot[..8],
                r.out.display()
            );
            match &r.password_out {
                Some(p) => {
                    human.push_str(&format!("  password: written to {} (0600)\n", p.display()))
                }
                None => {
                    j["password"] = r.password.expose_secret().into();
                    human.push_str(&format!("  password: {}\n", r.password.expose_secret()));
                }
            }
            if r.password_out.is_none() {
                show_password_when_quiet(g, &r.password);
            }
            if let Some(t) = r.revoked {
                human.push_str(&format!(
                    "  warning: this token was revoked on {}: the file no longer works; issue a new one\n",
                    t.strftime("%Y-%m-%d %H:%M UTC")
                ));
            }
            g.print(&j, &human);
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Revoke {
            spec,
            not_escrowed,
            via,
        } => {
            let loaded = g.load()?;
            let config = &loaded.config;
            let vault = super::open_vault(&loaded)?;
            let (client, cli) = channel_parts(config, via)?;
            let channel = match (&client, &cli) {
                (Some(c), _) => Channel::Api(c),
                (_, Some(c)) => Channel::Cli(c),
                _ => unreachable!("channel_parts returns one of them"),
            };
            let out = revoke::revoke(
                &vault,
                channel,
                &config.site_label(),
                &spec,
                not_escrowed,
                Timestamp::now(),
            )?;
            let mut j = serde_json::to_value(&out)?;
            j["ok"] = true.into();
            let mut human = String::new();
            for r in &out.revoked {
                human.push_str(&format!(
                    "revoked token {} of {}{} at CKAN; {}\n",
                    r.token_id,
                    r.user.as_deref().unwrap_or("?"),
                    if r.escrowed {
                        ""
                    } else {
                        " (it had no escrow copy)"
                    },
                    match (&r.record_snapshot, r.previously_recorded) {
                        (Some(s), _) => format!("recorded in snapshot {}", &s[..8]),
                        (None, Some(t)) => format!(
                            "already recorded as revoked on {}",
                            t.strftime("%Y-%m-%d %H:%M UTC")
                        ),
                        (None, None) => "recorded".to_string(),
                    }
                ));
            }
            for t in &out.already_revoked {
                human.push_str(&format!("token {t} was already revoked\n"));
            }
            for i in &out.intents_cleared {
                human.push_str(&format!(
                    "intent {} cleared: CKAN has no unescrowed token for it\n",
                    &i[..8]
                ));
            }
            if out.revoked.is_empty() && out.intents_cleared.is_empty() {
                human.push_str("nothing to revoke\n");
            }
            g.print(&j, &human);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The channel to CKAN from the configuration.
fn channel_parts(
    config: &ckan_vault::config::Config,
    via: Via,
) -> Result<(Option<Client>, Option<CkanCli>)> {
    Ok(match via {
        Via::Api => (Some(config.ckan_client()?), None),
        Via::Cli => {
            let (command, ini) = config.ckan_cli()?;
            (None, Some(CkanCli { command, ini }))
        }
    })
}

/// Checks, before anything is created, where a generated password may go: a file,
/// stdout when asked for with `-`, or else stdout only when it is a terminal.
fn password_destination(password_out: Option<&Path>) -> Result<(), TokenError> {
    match password_out {
        Some(_) => Ok(()),
        None if std::io::stdout().is_terminal() => Ok(()),
        None => Err(TokenError::PasswordToNonTerminal),
    }
}

/// Reads a token file (at most one byte over the limit, so too large is detected).
fn read_token_file(path: &Path) -> Result<Vec<u8>, TokenError> {
    let err = |source| TokenError::Read {
        path: path.to_owned(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(err)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(err)?;
    Ok(bytes)
}

/// The token file's password: `--password-file`, `$CKAN_VAULT_TOKEN_PASSWORD`, or a
/// no-echo prompt when stdin is a terminal (`optional`: Enter skips).
fn password_for(
    file: &Path,
    password_file: Option<&Path>,
    optional: bool,
) -> Result<Option<SecretString>> {
    if let Some(p) = password_file {
        return Ok(Some(ckan_vault::secret::read_secret_file(p)?));
    }
    if let Ok(v) = std::env::var(PASSWORD_ENV) {
        return Ok(Some(SecretString::from(v)));
    }
    if !std::io::stdin().is_terminal() {
        return Ok(None);
    }
    let prompt = if optional {
        format!("Password for {} (Enter to skip): ", file.display())
    } else {
        format!("Password for {}: ", file.display())
    };
    let pw = SecretString::from(rpassword::prompt_password(prompt)?);
    Ok((!pw.expose_secret().is_empty()).then_some(pw))
}

/// `-q` hides the human output, but a generated password exists nowhere else on this
/// host: show it anyway.
fn show_password_when_quiet(g: &Global, password: &SecretString) {
    if g.quiet && !g.json {
        println!("password: {}", password.expose_secret());
    }
}

/// Reports an error like `main` does, with a specific exit code.
fn fail_with(g: &Global, e: &TokenError, code: u8) -> ExitCode {
    let msg = e.to_string().replace('\n', " ");
    eprintln!("ckan-vault: error: {msg}");
    if g.json {
        println!("{}", json!({"ok": false, "error": msg, "exit_code": code}));
    }
    ExitCode::from(code)
}
