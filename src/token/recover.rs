//! `token recover`: an escrow officer brings an identity (private key) and gets a token's
//! `.dcor-access` file and password back from its escrow copy.
//!
//! The copy is checked on the way: it must unseal, its facts must match the listing in
//! the snapshot's description, its file must have the recorded SHA-256, and the file
//! must open with the escrowed password.

use std::path::PathBuf;

use jiff::Timestamp;
use secrecy::SecretString;
use sha2::{Digest, Sha256};

use crate::escrow::{self, Identities};
use crate::ledger::{self, EscrowBundle, EscrowEntry};
use crate::vault::Vault;

use super::TokenError;
use super::access_file::AccessFile;
use super::files::PendingFile;
use super::records::{Recorded, Records, Selection};

/// What to recover, and where to put it.
#[derive(Debug, Clone)]
pub struct RecoverRequest {
    /// `USER` (their newest token that is not revoked) or a token id (or a unique prefix).
    pub spec: String,
    /// Default: `USER.dcor-access` in the current directory.
    pub out: Option<PathBuf>,
    /// Where the password goes (0600); None: only returned.
    pub password_out: Option<PathBuf>,
}

/// A recovered token. `Debug` hides the password.
pub struct Recovered {
    pub entry: EscrowEntry,
    pub snapshot: String,
    pub out: PathBuf,
    pub password_out: Option<PathBuf>,
    pub password: SecretString,
    /// When the token was revoked, if it was (the file then no longer works).
    pub revoked: Option<Timestamp>,
    /// Whether the escrow copy also holds the CKAN password ckan-vault set for the user.
    pub has_user_password: bool,
}

impl std::fmt::Debug for Recovered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recovered")
            .field("entry", &self.entry)
            .field("snapshot", &self.snapshot)
            .field("out", &self.out)
            .field("password", &"[REDACTED]")
            .finish_non_exhaustive()
    }
}

fn pick<'a>(records: &'a Records, spec: &str) -> Result<&'a Recorded<EscrowEntry>, TokenError> {
    match records.select(spec)? {
        Selection::Token(e) => Ok(e),
        Selection::User { user, escrows, .. } => escrows
            .into_iter()
            .rev()
            .find(|e| !records.is_revoked(&e.record.token_id))
            .ok_or(TokenError::AllRevoked { user }),
    }
}

/// Recovers a token from its escrow copy with the officer's identities.
pub fn recover(
    vault: &Vault,
    identities: &Identities,
    req: &RecoverRequest,
) -> Result<Recovered, TokenError> {
    let records = Records::load(vault)?;
    let chosen = pick(&records, &req.spec)?;
    let entry = &chosen.record;
    let out_path = req
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.dcor-access", entry.user)));
    if req.password_out.as_ref() == Some(&out_path) {
        return Err(TokenError::Exists { path: out_path });
    }
    let mut out = PendingFile::new(&out_path)?;
    let mut pw_out = req
        .password_out
        .as_deref()
        .map(PendingFile::new)
        .transpose()?;

    let snapshot = super::records::snapshot_id(&chosen.snapshot);
    let sealed = {
        let reader = vault.reader()?;
        reader.read(
            &chosen.snapshot,
            ledger::files::ESCROW,
            ledger::MAX_SEALED_BYTES,
        )?
    };
    let plain = escrow::unseal(identities, &sealed)?;
    let bundle = EscrowBundle::parse(&plain)?;
    let mismatch = |detail: &str| TokenError::BundleMismatch {
        snapshot: snapshot[..8].to_string(),
        detail: detail.to_string(),
    };
    if bundle.entry != *entry {
        return Err(mismatch("its facts differ from the snapshot's description"));
    }
    if hex::encode(Sha256::digest(bundle.access_file.as_slice())) != entry.file_sha256 {
        return Err(mismatch("the file's SHA-256 differs from the recorded one"));
    }
    AccessFile::from_bytes(&bundle.access_file, &bundle.password)
        .map_err(|e| mismatch(&format!("the file does not open with its password: {e}")))?;

    out.write(&bundle.access_file)?;
    if let Some(f) = &mut pw_out {
        let mut line = zeroize::Zeroizing::new(
            secrecy::ExposeSecret::expose_secret(&bundle.password).to_string(),
        );
        line.push('\n');
        f.write(line.as_bytes())?;
    }
    let out = out.commit()?;
    let password_out = pw_out.map(PendingFile::commit).transpose()?;
    Ok(Recovered {
        entry: entry.clone(),
        snapshot,
        out,
        password_out,
        password: bundle.password.clone(),
        revoked: records
            .revocation(&entry.token_id)
            .map(|r| r.record.revoked),
        has_user_password: bundle.user_password.is_some(),
    })
}
