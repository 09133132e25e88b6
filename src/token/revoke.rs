//! `token revoke USER|TOKEN_ID`: revoke at CKAN, then record the revocation in the vault
//! (restores re-apply every recorded revocation to the restored database).
//!
//! A token id revokes that token. A user revokes every escrowed token of that user not
//! yet revoked, and resolves the user's intents that never got an escrow copy: tokens
//! CKAN lists for the user with the intent's token name, created after the intent
//! started (when CKAN says when), that are neither escrowed nor recorded as revoked,
//! are revoked too; an intent with no such token is deleted, since nothing of it is left.
//!
//! Tokens made before ckan-vault (by hand with `ckan user token add`) have no escrow copy;
//! with `not_escrowed` a token id that matches no escrow entry is revoked at CKAN and
//! recorded all the same, so that restores of older backups revoke it again too.

use std::collections::BTreeSet;

use jiff::Timestamp;
use serde::Serialize;

use crate::ckan::api;
use crate::ledger::{self, Revocation};
use crate::vault::{Kind, Vault};

use super::TokenError;
use super::channel::Channel;
use super::issue::unescrowed_for_intent;
use super::records::{self, Records, Selection};

/// One token revoked by this run.
#[derive(Debug, Clone, Serialize)]
pub struct Revoked {
    pub token_id: String,
    pub user: Option<String>,
    pub token_name: Option<String>,
    /// Whether ckan-vault holds an escrow copy of it.
    pub escrowed: bool,
    /// The revocation record's snapshot (None: it was recorded before).
    pub record_snapshot: Option<String>,
    /// Recorded earlier (this run revoked it at CKAN again).
    pub previously_recorded: Option<Timestamp>,
}

/// The result of `token revoke`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RevokeOutcome {
    pub revoked: Vec<Revoked>,
    /// Escrowed tokens of the user that were already revoked (left alone).
    pub already_revoked: Vec<String>,
    /// Intents resolved without finding a token (their snapshots were deleted).
    pub intents_cleared: Vec<String>,
}

/// Revokes what `spec` names; see the module documentation.
pub fn revoke(
    vault: &Vault,
    channel: Channel<'_>,
    label: &str,
    spec: &str,
    not_escrowed: bool,
    now: Timestamp,
) -> Result<RevokeOutcome, TokenError> {
    let records = Records::load(vault)?;
    let host = records::hostname();
    let mut out = RevokeOutcome::default();
    let record = |r: Revocation, user: Option<&str>| -> Result<String, TokenError> {
        let id = r.token_id.clone();
        records::save(
            vault,
            Kind::Revocation,
            label,
            user,
            r.to_json(),
            ledger::files::REVOCATION,
            Vec::new(),
        )
        .map(|s| records::snapshot_id(&s))
        .map_err(|e| TokenError::RevocationNotRecorded {
            user: user.unwrap_or("?").to_string(),
            token_id: id,
            reason: e.to_string(),
        })
    };
    let selection = match records.select(spec) {
        Err(TokenError::NoMatch { .. }) if not_escrowed => {
            channel.revoke(spec)?;
            let earlier = records.revocation(spec).map(|r| r.record.revoked);
            let record_snapshot = match earlier {
                Some(_) => None,
                None => Some(record(
                    Revocation::new(
                        spec,
                        "token without escrow copy (--not-escrowed)",
                        &host,
                        now,
                    ),
                    None,
                )?),
            };
            log::warn!("revoked token {spec}, which has no escrow copy");
            out.revoked.push(Revoked {
                token_id: spec.to_string(),
                user: None,
                token_name: None,
                escrowed: false,
                record_snapshot,
                previously_recorded: earlier,
            });
            return Ok(out);
        }
        other => other?,
    };
    match selection {
        Selection::Token(e) => {
            let x = &e.record;
            channel.revoke(&x.token_id)?;
            let earlier = records.revocation(&x.token_id).map(|r| r.record.revoked);
            let record_snapshot = match earlier {
                Some(_) => None,
                None => {
                    let mut r = Revocation::new(&x.token_id, "token revoke", &host, now);
                    r.user = Some(x.user.clone());
                    r.token_name = Some(x.token_name.clone());
                    Some(record(r, Some(&x.user))?)
                }
            };
            out.revoked.push(Revoked {
                token_id: x.token_id.clone(),
                user: Some(x.user.clone()),
                token_name: Some(x.token_name.clone()),
                escrowed: true,
                record_snapshot,
                previously_recorded: earlier,
            });
        }
        Selection::User {
            user,
            escrows,
            intents,
        } => {
            for e in escrows {
                let x = &e.record;
                if records.is_revoked(&x.token_id) {
                    out.already_revoked.push(x.token_id.clone());
                    continue;
                }
                channel.revoke(&x.token_id)?;
                let mut r = Revocation::new(&x.token_id, "token revoke", &host, now);
                r.user = Some(user.clone());
                r.token_name = Some(x.token_name.clone());
                let snap = record(r, Some(&user))?;
                log::info!("revoked token {} of {user}", x.token_id);
                out.revoked.push(Revoked {
                    token_id: x.token_id.clone(),
                    user: Some(user.clone()),
                    token_name: Some(x.token_name.clone()),
                    escrowed: true,
                    record_snapshot: Some(snap),
                    previously_recorded: None,
                });
            }
            if !intents.is_empty() {
                let listed = match channel.list_tokens(&user) {
                    Ok(l) => l,
                    // A user CKAN does not know has no tokens: `token issue --create-user`
                    // was stopped before CKAN created the user.
                    Err(TokenError::Ckan(api::Error::NotFound { .. })) => Vec::new(),
                    Err(TokenError::CkanCli { detail, .. })
                        if detail.contains("User not found") =>
                    {
                        Vec::new()
                    }
                    Err(e) => return Err(e),
                };
                let mut taken: BTreeSet<String> = BTreeSet::new();
                for i in intents {
                    let intent = &i.record;
                    let found = unescrowed_for_intent(&records, intent, &listed, &taken);
                    if found.is_empty() {
                        vault.delete(std::slice::from_ref(&i.snapshot))?;
                        log::info!(
                            "no unescrowed token of {user} named {:?} at CKAN: intent {} cleared",
                            intent.token_name,
                            i.short_id()
                        );
                        out.intents_cleared.push(records::snapshot_id(&i.snapshot));
                        continue;
                    }
                    for t in found {
                        channel.revoke(&t.id)?;
                        taken.insert(t.id.clone());
                        let mut r = Revocation::new(
                            &t.id,
                            "token without escrow copy (unresolved intent)",
                            &host,
                            now,
                        );
                        r.user = Some(user.clone());
                        r.token_name = Some(t.name.clone());
                        r.intent = Some(intent.id.clone());
                        let snap = record(r, Some(&user))?;
                        log::warn!("revoked unescrowed token {} of {user}", t.id);
                        out.revoked.push(Revoked {
                            token_id: t.id.clone(),
                            user: Some(user.clone()),
                            token_name: Some(t.name.clone()),
                            escrowed: false,
                            record_snapshot: Some(snap),
                            previously_recorded: None,
                        });
                    }
                }
            }
        }
    }
    Ok(out)
}
