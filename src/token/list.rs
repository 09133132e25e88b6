//! `token list`: the escrowed tokens, from the vault's snapshot descriptions alone (no
//! private key needed), with their revocations and any intents that never got an
//! escrow copy.

use jiff::Timestamp;
use serde::Serialize;

use crate::ledger::Via;
use crate::vault::Vault;

use super::TokenError;
use super::records::{self, Records};

/// One escrowed token.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    pub user: String,
    pub token_id: String,
    pub token_name: String,
    pub created: Timestamp,
    pub site_url: String,
    pub hostname: String,
    pub cert_sha256: String,
    pub cert_not_after: Timestamp,
    /// The age recipients the escrow copy is sealed to.
    pub recipients: Vec<String>,
    pub via: Via,
    pub user_created: bool,
    /// The escrow snapshot.
    pub snapshot: String,
    /// When it was revoked, if it was.
    pub revoked: Option<Timestamp>,
}

/// An intent that no escrow entry or revocation resolves.
#[derive(Debug, Clone, Serialize)]
pub struct Unescrowed {
    pub user: String,
    pub token_name: String,
    pub started: Timestamp,
    pub host: String,
    pub snapshot: String,
    /// What it means and what to do.
    pub message: String,
}

/// The result of `token list`.
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    pub tokens: Vec<Listed>,
    pub unescrowed_intents: Vec<Unescrowed>,
    /// Revocations of tokens that were never escrowed (e.g. found for an intent).
    pub other_revocations: usize,
    /// Record snapshots that could not be read.
    pub unreadable: Vec<String>,
}

/// Lists the escrowed tokens, oldest first.
pub fn list(vault: &Vault, now: Timestamp) -> Result<Listing, TokenError> {
    let r = Records::load(vault)?;
    let tokens = r
        .escrows
        .iter()
        .map(|e| {
            let x = &e.record;
            Listed {
                user: x.user.clone(),
                token_id: x.token_id.clone(),
                token_name: x.token_name.clone(),
                created: x.created,
                site_url: x.site_url.clone(),
                hostname: x.hostname.clone(),
                cert_sha256: x.cert_sha256.clone(),
                cert_not_after: x.cert_not_after,
                recipients: x.recipients.clone(),
                via: x.via,
                user_created: x.user_created,
                snapshot: records::snapshot_id(&e.snapshot),
                revoked: r.revocation(&x.token_id).map(|v| v.record.revoked),
            }
        })
        .collect();
    let unescrowed_intents = r
        .unresolved_intents()
        .into_iter()
        .map(|i| Unescrowed {
            user: i.record.user.clone(),
            token_name: i.record.token_name.clone(),
            started: i.record.started,
            host: i.record.host.clone(),
            snapshot: records::snapshot_id(&i.snapshot),
            message: records::describe_intent(i, now),
        })
        .collect();
    let other_revocations = r
        .revocations
        .iter()
        .filter(|v| r.escrow_of(&v.record.token_id).is_none())
        .count();
    Ok(Listing {
        tokens,
        unescrowed_intents,
        other_revocations,
        unreadable: r.unreadable,
    })
}
