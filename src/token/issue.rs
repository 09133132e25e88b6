//! `token issue`: create a CKAN API token, write it as a `.dcor-access` file, and keep a
//! sealed escrow copy in the vault. No token may exist without its escrow copy.
//!
//! The steps, in order (each fails before the next one starts):
//! 1. Check the inputs: user and token name, recipients, the certificate for the site
//!    (CN or SAN names the site's host, valid now; a warning within 30 days of expiry),
//!    that the output files do not exist yet and their directories are writable, and
//!    that the user exists (or, with `--create-user`, does not).
//! 2. Report earlier intents that never got an escrow copy.
//! 3. Save an [`Intent`] in the vault: if this process dies after CKAN made the token,
//!    the next `token issue` or `token list` says so.
//! 4. Create the user if asked (with a generated password that goes only into the
//!    escrow copy), then the API token. If CKAN refuses, the intent is deleted. If the
//!    outcome is unclear (a timeout, a 5xx, a garbled reply, a connection that broke
//!    after the request went out), CKAN may have made the token anyway: ckan-vault
//!    lists the user's tokens and revokes the ones this run may have made; the intent
//!    is deleted only when that surely leaves no token behind, else it stays for
//!    `token revoke USER`.
//! 5. Build the `.dcor-access` file with a generated password, write it (and the
//!    password file) to 0600 temporary files, seal the escrow bundle to every recipient
//!    and save it as an escrow snapshot whose description lists the non-secret facts.
//! 6. Only then move the files into place and report success. If step 5 fails, the
//!    token is revoked at CKAN again; if even that fails, the error says which token
//!    to revoke by hand.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::ckan::api::{self, Client};
use crate::escrow::{self, Recipients};
use crate::ledger::{self, EscrowBundle, EscrowEntry, EscrowFacts, Intent};
use crate::vault::{Kind, Snapshot, Vault};

use super::access_file::AccessFile;
use super::cert::{self, CertReport, Certificate};
use super::channel::{Channel, ListedToken};
use super::files::PendingFile;
use super::records::{self, Records};
use super::{TokenError, password};

/// The token name when `--token-name` is not given.
pub const DEFAULT_TOKEN_NAME: &str = "dcor-aid";

/// What to issue.
#[derive(Debug, Clone)]
pub struct IssueRequest {
    pub user: String,
    /// Needed with `create_user`.
    pub email: Option<String>,
    pub create_user: bool,
    pub token_name: String,
    /// Where the `.dcor-access` file goes (created 0600, never overwritten).
    pub out: PathBuf,
    /// Where the file's password goes (created 0600); None: only returned.
    pub password_out: Option<PathBuf>,
    /// Also check over TLS that the site serves the certificate (always the case for
    /// `--via api` on an https site, whose connection is pinned to it).
    pub check_served: bool,
}

/// Where and how to issue.
pub struct IssueSite<'a> {
    pub vault: &'a Vault,
    pub channel: Channel<'a>,
    /// The site's URL (`[ckan] url` or `ckan.site_url`).
    pub site_url: &'a str,
    /// The label of the record snapshots (the site's host).
    pub label: &'a str,
    /// The site's certificate, bundled as `server.cert`.
    pub certificate: &'a Certificate,
    pub recipients: &'a Recipients,
    pub timeout: Duration,
}

/// A token issued and escrowed. `Debug` hides the password.
pub struct Issued {
    pub entry: EscrowEntry,
    /// The escrow snapshot's id.
    pub escrow_snapshot: String,
    pub out: PathBuf,
    pub password_out: Option<PathBuf>,
    /// The file's password, for the caller to show on a terminal when there is no
    /// `password_out`.
    pub password: SecretString,
    pub cert: CertReport,
    /// Things the operator should know (certificate, earlier intents without escrow).
    pub warnings: Vec<String>,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("entry", &self.entry)
            .field("escrow_snapshot", &self.escrow_snapshot)
            .field("out", &self.out)
            .field("password_out", &self.password_out)
            .field("password", &"[REDACTED]")
            .finish_non_exhaustive()
    }
}

/// Checks a token name: what CKAN stores, on one line, within reason.
fn check_token_name(name: &str) -> Result<(), TokenError> {
    let ok = !name.trim().is_empty()
        && name.chars().count() <= 100
        && !name.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(TokenError::BadTokenName {
            name: name.chars().take(40).collect(),
        })
    }
}

/// The host of a site URL.
pub(crate) fn site_host(site_url: &str) -> Result<String, TokenError> {
    let url = url::Url::parse(site_url.trim()).map_err(|e| api::Error::InvalidUrl {
        url: site_url.to_string(),
        reason: e.to_string(),
    })?;
    url.host_str()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
        .filter(|h| !h.is_empty())
        .ok_or_else(|| {
            api::Error::InvalidUrl {
                url: site_url.to_string(),
                reason: "no host".into(),
            }
            .into()
        })
}

/// Whether a URL uses https.
pub(crate) fn is_https(site_url: &str) -> bool {
    site_url
        .trim_start()
        .get(..6)
        .is_some_and(|s| s.eq_ignore_ascii_case("https:"))
}

/// Issues a token; see the module documentation for the steps.
pub fn issue(
    site: &IssueSite<'_>,
    req: &IssueRequest,
    now: Timestamp,
) -> Result<Issued, TokenError> {
    // 1. Inputs.
    if !ledger::is_valid_user_name(&req.user) {
        return Err(TokenError::BadUserName {
            name: req.user.chars().take(40).collect(),
        });
    }
    check_token_name(&req.token_name)?;
    let email = match (&req.email, req.create_user) {
        (Some(e), true) => Some(e.as_str()),
        (None, true) => return Err(TokenError::NeedsEmail),
        (_, false) => None,
    };
    if site.recipients.is_empty() {
        return Err(TokenError::NoRecipients);
    }
    let host = site_host(site.site_url)?;
    let report = cert::check_for_site(site.certificate, &host, now)?;
    let mut warnings: Vec<String> = report.warnings.iter().map(ToString::to_string).collect();
    if !is_https(site.site_url) {
        warnings.push(format!(
            "the site URL {} is not https: DCOR-Aid connects to https://{} and trusts only the bundled certificate",
            site.site_url, report.hostname
        ));
    }
    if req.password_out.as_ref() == Some(&req.out) {
        return Err(TokenError::Exists {
            path: req.out.clone(),
        });
    }
    let mut out_file = PendingFile::new(&req.out)?;
    let mut pw_file = req
        .password_out
        .as_deref()
        .map(PendingFile::new)
        .transpose()?;
    if req.check_served && is_https(site.site_url) {
        // The handshake fails unless the site serves exactly this certificate.
        Client::pinned(site.site_url, None, site.timeout, site.certificate.pem())?.status_show()?;
    } else if req.check_served {
        warnings.push(format!(
            "--check-served: {} serves no certificate (not https); nothing was compared",
            site.site_url
        ));
    }
    match (site.channel.user_exists(&req.user)?, req.create_user) {
        (Some(false), false) => {
            return Err(TokenError::NoSuchUser {
                user: req.user.clone(),
            });
        }
        (Some(true), true) => {
            return Err(TokenError::UserExists {
                user: req.user.clone(),
            });
        }
        _ => {}
    }

    // 2. Earlier intents without escrow.
    let records = Records::load(site.vault)?;
    for i in records.unresolved_intents() {
        let text = records::describe_intent(i, now);
        log::warn!("{text}");
        warnings.push(text);
    }

    // 3. The intent, before CKAN is asked for anything.
    let host_name = records::hostname();
    let via = site.channel.via();
    let intent = Intent::new(
        &req.user,
        &req.token_name,
        site.site_url,
        via,
        &host_name,
        now,
    );
    let intent_snap = records::save(
        site.vault,
        Kind::Intent,
        site.label,
        Some(&req.user),
        intent.to_json(),
        ledger::files::INTENT,
        Vec::new(),
    )?;

    // 4. User and token.
    let user_password = req.create_user.then(password::generate);
    if let (Some(pw), Some(email)) = (&user_password, email) {
        if let Err(e) = site.channel.create_user(&req.user, email, pw) {
            // No token was asked for: the intent has nothing to guard.
            forget_intent(site.vault, &intent_snap);
            return Err(e);
        }
        log::info!("created CKAN user {}", req.user);
    }
    let token = match site.channel.create_token(&req.user, &req.token_name) {
        Ok(t) => t,
        Err(e) => match unclear_creation(&e) {
            // CKAN refused: it made nothing.
            None => {
                forget_intent(site.vault, &intent_snap);
                return Err(e);
            }
            Some(still_running) => {
                return Err(settle_unclear_creation(
                    site,
                    &records,
                    &intent,
                    &intent_snap,
                    e,
                    still_running,
                ));
            }
        },
    };
    let created_at = Timestamp::now();
    log::info!("CKAN created token {} for {}", token.id, req.user);

    // 5. File, password, escrow.
    let file_password = password::generate();
    let escrowed = (|| -> Result<(EscrowEntry, Snapshot), TokenError> {
        let access = AccessFile::new(token.token.clone(), site.certificate.pem().to_vec());
        let bytes = Zeroizing::new(access.to_bytes(&file_password)?);
        let entry: EscrowEntry = EscrowFacts {
            user: req.user.clone(),
            token_id: token.id.clone(),
            token_name: req.token_name.clone(),
            created: created_at,
            site_url: site.site_url.to_string(),
            hostname: report.hostname.clone(),
            cert_sha256: report.fingerprint_sha256.clone(),
            cert_not_after: report.not_after,
            file_sha256: hex::encode(Sha256::digest(bytes.as_slice())),
            recipients: site.recipients.to_strings(),
            intent: intent.id.clone(),
            via,
            user_created: req.create_user,
            issued_on: host_name.clone(),
        }
        .into();
        out_file.write(&bytes)?;
        if let Some(f) = &mut pw_file {
            let mut line =
                Zeroizing::new(secrecy::ExposeSecret::expose_secret(&file_password).to_string());
            line.push('\n');
            f.write(line.as_bytes())?;
        }
        let bundle = EscrowBundle {
            entry: entry.clone(),
            access_file: bytes,
            password: file_password.clone(),
            user_password: user_password.clone(),
        };
        let sealed = escrow::seal(site.recipients, &bundle.to_bytes())?;
        let snap = records::save(
            site.vault,
            Kind::Escrow,
            site.label,
            Some(&req.user),
            entry.to_json(),
            ENTRY_FILE,
            vec![(ledger::files::ESCROW.to_string(), sealed)],
        )?;
        Ok((entry, snap))
    })();
    let (entry, snap) = match escrowed {
        Ok(v) => v,
        Err(e) => {
            drop(out_file);
            drop(pw_file);
            let reason = e.to_string();
            log::error!(
                "escrow failed: {reason}; revoking token {} at CKAN",
                token.id
            );
            return Err(match site.channel.revoke(&token.id) {
                Ok(()) => {
                    forget_intent(site.vault, &intent_snap);
                    TokenError::EscrowFailed {
                        user: req.user.clone(),
                        token_id: token.id.clone(),
                        reason,
                    }
                }
                Err(re) => TokenError::EscrowFailedTokenLive {
                    user: req.user.clone(),
                    token_id: token.id.clone(),
                    reason,
                    revoke_error: re.to_string(),
                },
            });
        }
    };
    let escrow_snapshot = records::snapshot_id(&snap);
    log::info!(
        "escrow copy of token {} saved as snapshot {}",
        entry.token_id,
        &escrow_snapshot[..8]
    );

    // 6. Files into place.
    let not_written = |e: TokenError| TokenError::WrittenOnlyToEscrow {
        user: req.user.clone(),
        snapshot: escrow_snapshot[..8].to_string(),
        reason: e.to_string(),
    };
    let out = out_file.commit().map_err(not_written)?;
    let password_out = pw_file
        .map(PendingFile::commit)
        .transpose()
        .map_err(not_written)?;
    Ok(Issued {
        entry,
        escrow_snapshot,
        out,
        password_out,
        password: file_password,
        cert: report,
        warnings,
    })
}

/// The name of the entry's JSON inside an escrow snapshot (the description holds it too).
pub const ENTRY_FILE: &str = "entry.json";

/// Clock skew allowed between the host that wrote an intent and CKAN's host when telling
/// which tokens an intent may have made (`token revoke USER` uses the same).
pub(crate) const CLOCK_SLACK: SignedDuration = SignedDuration::from_mins(10);

/// How far before the intent's start CKAN may date the token of this very run (CKAN and
/// ckan-vault usually share a host and its clock).
const THIS_RUN_SLACK: SignedDuration = SignedDuration::from_secs(5);

/// The tokens CKAN lists that an unresolved intent may have made: named as the intent
/// says, neither escrowed nor recorded as revoked, not claimed already (`taken`), and,
/// when CKAN says when (the Action API does, the `ckan` command does not), made after the
/// intent started, allowing for [`CLOCK_SLACK`]. Used by `token issue` after an unclear
/// failure and by `token revoke USER`.
pub(crate) fn unescrowed_for_intent<'a>(
    records: &Records,
    intent: &Intent,
    listed: &'a [ListedToken],
    taken: &BTreeSet<String>,
) -> Vec<&'a ListedToken> {
    listed
        .iter()
        .filter(|t| {
            t.name == intent.token_name
                && records.escrow_of(&t.id).is_none()
                && !records.is_revoked(&t.id)
                && !taken.contains(&t.id)
                && t.created.is_none_or(|c| c >= intent.started - CLOCK_SLACK)
        })
        .collect()
}

/// Whether CKAN may have made the token although `create_token` failed: None when CKAN
/// refused or was never reached (it made nothing), else whether it may still be working
/// on the request (no answer came back).
fn unclear_creation(e: &TokenError) -> Option<bool> {
    match e {
        TokenError::Ckan(e) => match e {
            api::Error::Timeout { .. } => Some(true),
            api::Error::Connect { reason, .. } => (!never_sent(reason)).then_some(true),
            // A gateway in front of CKAN gave up waiting for it.
            api::Error::Server {
                status: 502..=504, ..
            } => Some(true),
            // CKAN answered, but without a usable token: it commits the token before it
            // encodes it, so a 500 may come after the token exists; or the reply was
            // garbled or cut off.
            api::Error::Server { .. }
            | api::Error::Unexpected { .. }
            | api::Error::MalformedJwt { .. } => Some(false),
            _ => None,
        },
        TokenError::CkanCli { detail, .. } => {
            if detail.starts_with("signal") {
                // Killed: it may have committed the token, or be about to.
                Some(true)
            } else if detail.starts_with("exit status") {
                // `ckan user token add` reports a missing user and invalid input before
                // it saves anything; any other failure may come after.
                let refused =
                    detail.contains("User not found") || detail.contains("ValidationError");
                (!refused).then_some(false)
            } else {
                // It ran successfully but printed no token (it made one), or it never
                // started (it made none).
                (detail.contains("not a token") || detail.contains("not text")).then_some(false)
            }
        }
        _ => None,
    }
}

/// Whether a connection error happened before the request was sent (nothing listened,
/// the name did not resolve, no route), as opposed to a connection that broke after.
fn never_sent(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    [
        "refused",
        "lookup",
        "resolve",
        "dns",
        "name or service",
        "unreachable",
        "no route",
        "network is down",
        "assign requested address",
    ]
    .iter()
    .any(|m| r.contains(m))
}

/// After `create_token` failed in a way that leaves open whether CKAN made the token:
/// look for it at CKAN and revoke it. Only when that certainly leaves no token of this
/// run behind is the intent deleted; otherwise it stays, so that `token list` reports
/// it and `token revoke USER` resolves it.
fn settle_unclear_creation(
    site: &IssueSite<'_>,
    earlier: &Records,
    intent: &Intent,
    intent_snap: &Snapshot,
    err: TokenError,
    still_running: bool,
) -> TokenError {
    // The `ckan` command may have printed the token before it failed.
    let reason = super::channel::redact_jwts(&err.to_string());
    let user = &intent.user;
    log::warn!(
        "creating the token of {user} failed ({reason}); CKAN may have made it anyway: looking for it"
    );
    let may_exist = |detail: String| {
        log::warn!(
            "a token of {user} may exist at CKAN without escrow ({detail}); intent snapshot {} stays",
            &records::snapshot_id(intent_snap)[..8]
        );
        TokenError::TokenMayExist {
            user: user.clone(),
            token_name: intent.token_name.clone(),
            reason: reason.clone(),
            detail,
        }
    };
    // Fresh records: a token escrowed meanwhile by another run is not unescrowed.
    let fresh = Records::load(site.vault);
    let records = match &fresh {
        Ok(r) => r,
        Err(e) => {
            log::warn!("cannot read the token records again ({e}); using those read before");
            earlier
        }
    };
    let listed = match site.channel.list_tokens(user) {
        Ok(l) => l,
        Err(e) => {
            return may_exist(format!(
                "listing the user's tokens at CKAN failed too ({e})"
            ));
        }
    };
    let found = unescrowed_for_intent(records, intent, &listed, &BTreeSet::new());
    for t in &found {
        if let Err(e) = site.channel.revoke(&t.id) {
            return may_exist(format!(
                "revoking token {} found at CKAN failed ({e})",
                t.id
            ));
        }
        log::warn!(
            "revoked token {} of {user}, made by CKAN although creating it failed",
            t.id
        );
    }
    // Without an answer, CKAN may still be working on the request; a token it dates to
    // this run shows that the request is done.
    let done = !still_running
        || found.iter().any(|t| {
            t.created
                .is_some_and(|c| c >= intent.started - THIS_RUN_SLACK)
        });
    if !done {
        return may_exist(if found.is_empty() {
            "CKAN lists no such token yet, but it may still be working on the request".into()
        } else {
            format!(
                "{} unescrowed token(s) found at CKAN were revoked, but CKAN may still be working on the request",
                found.len()
            )
        });
    }
    forget_intent(site.vault, intent_snap);
    TokenError::CreationFailedNoneLeft {
        user: user.clone(),
        reason,
        detail: if found.is_empty() {
            format!(
                "CKAN holds no token named {:?} of this run",
                intent.token_name
            )
        } else {
            format!(
                "CKAN had made it anyway and it was revoked again ({} token(s) named {:?})",
                found.len(),
                intent.token_name
            )
        },
    }
}

/// Deletes an intent that turned out to need no escrow copy (nothing was created, or the
/// token was revoked again). If that fails, the intent stays and is reported later.
fn forget_intent(vault: &Vault, snap: &Snapshot) {
    if let Err(e) = vault.delete(std::slice::from_ref(snap)) {
        log::warn!(
            "could not delete intent snapshot {} ({e}); `token list` will report it until `token revoke` resolves it",
            &snap.id.to_string()[..8]
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Via;

    fn ckan(e: api::Error) -> TokenError {
        TokenError::Ckan(e)
    }

    fn cli(detail: &str) -> TokenError {
        TokenError::CkanCli {
            command: "ckan user token add".into(),
            detail: detail.into(),
        }
    }

    #[test]
    fn refusals_are_clear_and_lost_answers_are_not() {
        let connect = |reason: &str| {
            ckan(api::Error::Connect {
                host: "localhost:1".into(),
                reason: reason.into(),
            })
        };
        let server = |status| {
            ckan(api::Error::Server {
                action: "api_token_create".into(),
                status,
                message: "boom".into(),
            })
        };
        let cases = [
            (connect("Connection refused (os error 111)"), None),
            (
                connect("failed to lookup address information: Name or service not known"),
                None,
            ),
            (
                connect("connection closed before message completed"),
                Some(true),
            ),
            (
                connect("Connection reset by peer (os error 104)"),
                Some(true),
            ),
            (
                ckan(api::Error::Timeout {
                    host: "h".into(),
                    action: "api_token_create".into(),
                    secs: 3,
                }),
                Some(true),
            ),
            (server(500), Some(false)),
            (server(504), Some(true)),
            (
                ckan(api::Error::Unexpected {
                    action: "api_token_create".into(),
                    status: 200,
                    reason: "no token in the reply".into(),
                }),
                Some(false),
            ),
            (
                ckan(api::Error::Validation {
                    action: "api_token_create".into(),
                    fields: vec![],
                }),
                None,
            ),
            (
                ckan(api::Error::NotFound {
                    action: "api_token_create".into(),
                    message: "User not found".into(),
                }),
                None,
            ),
            (
                ckan(api::Error::Authorization {
                    action: "api_token_create".into(),
                    message: "no".into(),
                }),
                None,
            ),
            (cli("exit status: 1: User not found"), None),
            (
                cli(
                    "exit status: 1: ckan.logic.ValidationError: None - {'name': ['Missing value']}",
                ),
                None,
            ),
            (
                cli(
                    "exit status: 1: sqlalchemy.exc.OperationalError: server closed the connection",
                ),
                Some(false),
            ),
            (cli("signal: 9 (SIGKILL)"), Some(true)),
            (cli("its last line of output is not a token"), Some(false)),
            (cli("No such file or directory (os error 2)"), None),
        ];
        for (e, want) in cases {
            assert_eq!(unclear_creation(&e), want, "{e}");
        }
    }

    #[test]
    fn an_intent_claims_only_unescrowed_tokens_of_its_name_and_time() {
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        let intent = Intent::new(
            "alice",
            "dcor-aid",
            "https://x",
            Via::Api,
            "h",
            at("2026-01-01T12:00:00Z"),
        );
        let escrowed = EscrowFacts {
            user: "alice".into(),
            token_id: "escrowed".into(),
            token_name: "dcor-aid".into(),
            created: at("2026-01-01T11:00:00Z"),
            site_url: "https://x".into(),
            hostname: "x".into(),
            cert_sha256: "AA".into(),
            cert_not_after: at("2027-01-01T00:00:00Z"),
            file_sha256: "00".into(),
            recipients: vec![],
            intent: "other".into(),
            via: Via::Api,
            user_created: false,
            issued_on: "h".into(),
        };
        let records = Records {
            escrows: vec![records::Recorded {
                snapshot: Snapshot::default(),
                record: escrowed.into(),
            }],
            ..Records::default()
        };
        let token = |id: &str, name: &str, created: Option<&str>| ListedToken {
            id: id.into(),
            name: name.into(),
            created: created.map(at),
        };
        let listed = [
            token("escrowed", "dcor-aid", Some("2026-01-01T12:00:01Z")),
            token("other-name", "laptop", Some("2026-01-01T12:00:01Z")),
            token("too-old", "dcor-aid", Some("2026-01-01T11:00:00Z")),
            token("skewed", "dcor-aid", Some("2026-01-01T11:55:00Z")),
            token("fresh", "dcor-aid", Some("2026-01-01T12:00:01Z")),
            token("undated", "dcor-aid", None),
        ];
        let ids = |taken: &BTreeSet<String>| -> Vec<String> {
            unescrowed_for_intent(&records, &intent, &listed, taken)
                .iter()
                .map(|t| t.id.clone())
                .collect()
        };
        assert_eq!(ids(&BTreeSet::new()), ["skewed", "fresh", "undated"]);
        assert_eq!(
            ids(&BTreeSet::from(["fresh".to_string()])),
            ["skewed", "undated"]
        );
    }
}
