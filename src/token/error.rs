//! Errors of the token workflow. Each message is one line that names the problem and
//! the fix, and none contains a token, a file password or a private key.

use std::path::PathBuf;

use crate::ckan::api;
use crate::error::{Categorized, Category};
use crate::escrow;
use crate::ledger::LedgerError;
use crate::vault::VaultError;

use super::{access_file, cert};

/// Why a token command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    #[error("{name:?} is not a CKAN user name: use 2 to 100 lowercase letters, digits, - or _")]
    BadUserName { name: String },
    #[error(
        "{name:?} is not a usable token name: use 1 to 100 printable characters without newlines"
    )]
    BadTokenName { name: String },
    #[error("--create-user needs --email: CKAN requires an e-mail address for every user")]
    NeedsEmail,
    #[error(
        "no escrow recipients: set [escrow] recipients or recipients-file (public keys from `age-keygen -y`); ckan-vault issues no token without an escrow copy"
    )]
    NoRecipients,
    #[error("{} already exists: remove it or choose another path", .path.display())]
    Exists { path: PathBuf },
    #[error("cannot write {}: {source}; check the directory and its permissions", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {}: {source}; check the path and its permissions", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "CKAN has no user {user}: check the name, or create it with --create-user --email ADDRESS"
    )]
    NoSuchUser { user: String },
    #[error(
        "CKAN already has a user {user}: leave out --create-user to issue a token for that user"
    )]
    UserExists { user: String },
    #[error(
        "the token of {user} is escrowed (snapshot {snapshot}) but the output file was not written ({reason}): get it with `ckan-vault token recover {user} --identity KEY`"
    )]
    WrittenOnlyToEscrow {
        user: String,
        snapshot: String,
        reason: String,
    },
    #[error(transparent)]
    Ckan(#[from] api::Error),
    #[error(
        "`{command}` failed ({detail}): run `{command} --help` on the CKAN host, and check [ckan] ckan-command and ini"
    )]
    CkanCli { command: String, detail: String },
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Escrow(#[from] escrow::Error),
    #[error(transparent)]
    AccessFile(#[from] access_file::Error),
    #[error(transparent)]
    Certificate(#[from] cert::Error),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(
        "the escrow copy was not saved ({reason}); token {token_id} of {user} was revoked at CKAN again and no file was written: fix the cause and run `token issue` again"
    )]
    EscrowFailed {
        user: String,
        token_id: String,
        reason: String,
    },
    #[error(
        "the escrow copy was not saved ({reason}) AND revoking token {token_id} of {user} at CKAN failed ({revoke_error}): a token exists without escrow; revoke it now with `ckan user token revoke {token_id}` on the CKAN host, then `ckan-vault token list`"
    )]
    EscrowFailedTokenLive {
        user: String,
        token_id: String,
        reason: String,
        revoke_error: String,
    },
    #[error(
        "creating the token of {user} at CKAN failed ({reason}); {detail}, so no token was left at CKAN and no file was written: fix the cause and run `token issue` again"
    )]
    CreationFailedNoneLeft {
        user: String,
        reason: String,
        detail: String,
    },
    #[error(
        "creating the token of {user} at CKAN failed ({reason}) and CKAN may have made it anyway; {detail}: a token named {token_name:?} may exist without escrow and the intent stays in the vault: once CKAN works, run `ckan-vault token revoke {user}`"
    )]
    TokenMayExist {
        user: String,
        token_name: String,
        reason: String,
        detail: String,
    },
    #[error(
        "token {token_id} of {user} was revoked at CKAN, but recording the revocation in the vault failed ({reason}): run `ckan-vault token revoke {token_id}` again so that restores re-apply it"
    )]
    RevocationNotRecorded {
        user: String,
        token_id: String,
        reason: String,
    },
    #[error(
        "no escrowed token or user matches {spec:?}: see `ckan-vault token list`; a token ckan-vault did not issue is revoked by its id with --not-escrowed"
    )]
    NoMatch { spec: String },
    #[error(
        "{spec:?} matches {count} escrowed tokens: give more of the token id (see `ckan-vault token list`)"
    )]
    Ambiguous { spec: String, count: usize },
    #[error(
        "every escrowed token of {user} is revoked: issue a new one with `ckan-vault token issue {user}`"
    )]
    AllRevoked { user: String },
    #[error(
        "the escrow copy in snapshot {snapshot} does not match its listing ({detail}): the vault may be damaged; check it with `restic check --read-data`"
    )]
    BundleMismatch { snapshot: String, detail: String },
    #[error(
        "no password for the token file: give --password-file FILE, set CKAN_VAULT_TOKEN_PASSWORD, or run on a terminal to be asked"
    )]
    NoPassword,
    #[error(
        "refusing to print the token file's password to a non-terminal: give --password-out FILE (created 0600), or --password-out - to print it anyway"
    )]
    PasswordToNonTerminal,
    #[error(
        "the token file's certificate has no usable CN, so there is no site to connect to: give --url https://HOST"
    )]
    NoSiteForVerify,
}

impl Categorized for TokenError {
    fn category(&self) -> Category {
        match self {
            TokenError::Ckan(e) => ckan_category(e),
            TokenError::Vault(e) => e.category(),
            TokenError::Escrow(e) => match e {
                escrow::Error::Damaged
                | escrow::Error::NotAge { .. }
                | escrow::Error::Seal { .. } => Category::Failure,
                _ => Category::Usage,
            },
            TokenError::AccessFile(e) => match e {
                access_file::Error::Write(_) | access_file::Error::Zip { .. } => Category::Failure,
                _ => Category::Usage,
            },
            TokenError::Ledger(e) => e.category(),
            TokenError::Write { .. }
            | TokenError::CkanCli { .. }
            | TokenError::EscrowFailed { .. }
            | TokenError::EscrowFailedTokenLive { .. }
            | TokenError::CreationFailedNoneLeft { .. }
            | TokenError::TokenMayExist { .. }
            | TokenError::RevocationNotRecorded { .. }
            | TokenError::WrittenOnlyToEscrow { .. }
            | TokenError::BundleMismatch { .. } => Category::Failure,
            TokenError::BadUserName { .. }
            | TokenError::BadTokenName { .. }
            | TokenError::NeedsEmail
            | TokenError::NoRecipients
            | TokenError::Exists { .. }
            | TokenError::Read { .. }
            | TokenError::NoSuchUser { .. }
            | TokenError::UserExists { .. }
            | TokenError::Certificate(_)
            | TokenError::NoMatch { .. }
            | TokenError::Ambiguous { .. }
            | TokenError::AllRevoked { .. }
            | TokenError::NoPassword
            | TokenError::PasswordToNonTerminal
            | TokenError::NoSiteForVerify => Category::Usage,
        }
    }
}

/// Wrong settings are usage errors; an unreachable or failing site, or a token CKAN does
/// not accept (what `token verify` checks), are failures.
fn ckan_category(e: &api::Error) -> Category {
    match e {
        api::Error::InvalidUrl { .. }
        | api::Error::InvalidTokenCharacters
        | api::Error::InvalidCertificate { .. }
        | api::Error::Redirect { .. }
        | api::Error::Validation { .. }
        | api::Error::Authorization { .. }
        | api::Error::NotFound { .. }
        | api::Error::NoToken { .. }
        | api::Error::MalformedJwt { .. } => Category::Usage,
        _ => Category::Failure,
    }
}
