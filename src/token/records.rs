//! The token records in the vault ([`crate::ledger`]) as the workflow sees them: loaded
//! from snapshot descriptions (no private key, no index), matched against each other,
//! and saved as small snapshots.

use jiff::{SignedDuration, Timestamp};

use crate::ledger::{self, EscrowEntry, Intent, Revocation};
use crate::vault::{Kind, Snapshot, SnapshotMeta, Vault, VaultError};

use super::TokenError;

/// An intent younger than this may belong to a `token issue` that is still running.
pub const INTENT_GRACE: SignedDuration = SignedDuration::from_mins(15);

/// A record with the snapshot that holds it.
#[derive(Debug, Clone)]
pub struct Recorded<T> {
    pub snapshot: Snapshot,
    pub record: T,
}

impl<T> Recorded<T> {
    /// The snapshot id, shortened as restic shows it.
    #[must_use]
    pub fn short_id(&self) -> String {
        snapshot_id(&self.snapshot)[..8].to_string()
    }
}

/// Every token record in a vault, oldest first.
#[derive(Debug, Default)]
pub struct Records {
    pub escrows: Vec<Recorded<EscrowEntry>>,
    pub intents: Vec<Recorded<Intent>>,
    pub revocations: Vec<Recorded<Revocation>>,
    /// Record snapshots whose description could not be read (`ID: reason`).
    pub unreadable: Vec<String>,
}

/// What a `USER|TOKEN_ID` argument names.
#[derive(Debug)]
pub enum Selection<'a> {
    /// One escrowed token.
    Token(&'a Recorded<EscrowEntry>),
    /// A user: their escrowed tokens and unresolved intents.
    User {
        user: String,
        escrows: Vec<&'a Recorded<EscrowEntry>>,
        intents: Vec<&'a Recorded<Intent>>,
    },
}

impl Records {
    /// Reads the records from the snapshots' descriptions (one listing of the vault).
    pub fn load(vault: &Vault) -> Result<Records, VaultError> {
        let mut out = Records::default();
        for snap in vault.all_snapshots()? {
            let kind = Kind::of(&snap);
            let text = snap.description.clone().unwrap_or_default();
            let bad = |e: &dyn std::fmt::Display| format!("{}: {e}", &snap.id.to_string()[..8]);
            match kind {
                Some(Kind::Escrow) => match EscrowEntry::parse(&text) {
                    Ok(record) => out.escrows.push(Recorded {
                        snapshot: snap,
                        record,
                    }),
                    Err(e) => out.unreadable.push(bad(&e)),
                },
                Some(Kind::Intent) => match Intent::parse(&text) {
                    Ok(record) => out.intents.push(Recorded {
                        snapshot: snap,
                        record,
                    }),
                    Err(e) => out.unreadable.push(bad(&e)),
                },
                Some(Kind::Revocation) => match Revocation::parse(&text) {
                    Ok(record) => out.revocations.push(Recorded {
                        snapshot: snap,
                        record,
                    }),
                    Err(e) => out.unreadable.push(bad(&e)),
                },
                _ => {}
            }
        }
        for e in &out.unreadable {
            log::warn!("unreadable token record in snapshot {e}");
        }
        Ok(out)
    }

    /// The first recorded revocation of `token_id`.
    #[must_use]
    pub fn revocation(&self, token_id: &str) -> Option<&Recorded<Revocation>> {
        self.revocations
            .iter()
            .find(|r| r.record.token_id == token_id)
    }

    /// Whether the escrowed token is revoked (as recorded in the vault).
    #[must_use]
    pub fn is_revoked(&self, token_id: &str) -> bool {
        self.revocation(token_id).is_some()
    }

    /// Intents that neither an escrow entry nor a revocation resolves: a token may exist
    /// at CKAN without its escrow copy.
    #[must_use]
    pub fn unresolved_intents(&self) -> Vec<&Recorded<Intent>> {
        self.intents
            .iter()
            .filter(|i| {
                let id = &i.record.id;
                !self.escrows.iter().any(|e| &e.record.intent == id)
                    && !self
                        .revocations
                        .iter()
                        .any(|r| r.record.intent.as_ref() == Some(id))
            })
            .collect()
    }

    /// The escrow entry of a token id, if escrowed.
    #[must_use]
    pub fn escrow_of(&self, token_id: &str) -> Option<&Recorded<EscrowEntry>> {
        self.escrows.iter().find(|e| e.record.token_id == token_id)
    }

    /// Resolves `USER|TOKEN_ID`: a full token id, a unique prefix of one (at least 6
    /// characters), else a user with escrowed tokens or unresolved intents.
    pub fn select(&self, spec: &str) -> Result<Selection<'_>, TokenError> {
        if let Some(e) = self.escrow_of(spec) {
            return Ok(Selection::Token(e));
        }
        if spec.len() >= 6 {
            let hits: Vec<&Recorded<EscrowEntry>> = self
                .escrows
                .iter()
                .filter(|e| e.record.token_id.starts_with(spec))
                .collect();
            match hits.as_slice() {
                [one] => return Ok(Selection::Token(one)),
                [] => {}
                many => {
                    return Err(TokenError::Ambiguous {
                        spec: spec.to_string(),
                        count: many.len(),
                    });
                }
            }
        }
        let escrows: Vec<_> = self
            .escrows
            .iter()
            .filter(|e| e.record.user == spec)
            .collect();
        let intents: Vec<_> = self
            .unresolved_intents()
            .into_iter()
            .filter(|i| i.record.user == spec)
            .collect();
        if escrows.is_empty() && intents.is_empty() {
            return Err(TokenError::NoMatch {
                spec: spec.to_string(),
            });
        }
        Ok(Selection::User {
            user: spec.to_string(),
            escrows,
            intents,
        })
    }
}

/// Describes an unresolved intent for the operator: who, when, where, and what to do.
#[must_use]
pub fn describe_intent(i: &Recorded<Intent>, now: Timestamp) -> String {
    let r = &i.record;
    let running = if now.duration_since(r.started) < INTENT_GRACE {
        " (it may still be running)"
    } else {
        ""
    };
    format!(
        "`token issue {}` started {} on {}{running} has no escrow copy: a token named {:?} may exist at CKAN without escrow; run `ckan-vault token revoke {}`",
        r.user,
        r.started.strftime("%Y-%m-%d %H:%M:%S UTC"),
        r.host,
        r.token_name,
        r.user
    )
}

/// Saves a record snapshot: tags `ckan-vault`, the kind and `user:NAME`; the record's
/// JSON as description and as the file `name`, plus `extra` files.
pub fn save(
    vault: &Vault,
    kind: Kind,
    label: &str,
    user: Option<&str>,
    json: String,
    name: &str,
    extra: Vec<(String, Vec<u8>)>,
) -> Result<Snapshot, VaultError> {
    let mut meta = SnapshotMeta::new(kind, label);
    if let Some(u) = user {
        meta.extra_tags.push(ledger::user_tag(u));
    }
    meta.description = Some(json.clone());
    let mut files = vec![(name.to_string(), json.into_bytes())];
    files.extend(extra);
    vault.save_files(&meta, files)
}

/// A snapshot's full id (hex), as restic prints it in `--json` output.
#[must_use]
pub fn snapshot_id(s: &Snapshot) -> String {
    s.id.to_hex().as_str().to_string()
}

/// This machine's name, recorded with every record (defined once, in the vault leaf).
pub use crate::vault::hostname;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{EscrowFacts, Via};

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn escrow(user: &str, token_id: &str, intent: &str) -> Recorded<EscrowEntry> {
        Recorded {
            snapshot: Snapshot::default(),
            record: EscrowFacts {
                user: user.into(),
                token_id: token_id.into(),
                token_name: "dcor-aid".into(),
                created: at("2026-01-01T00:00:00Z"),
                site_url: "https://x".into(),
                hostname: "x".into(),
                cert_sha256: "AA".into(),
                cert_not_after: at("2027-01-01T00:00:00Z"),
                file_sha256: "00".into(),
                recipients: vec![],
                intent: intent.into(),
                via: Via::Api,
                user_created: false,
                issued_on: "h".into(),
            }
            .into(),
        }
    }

    fn intent(user: &str) -> Recorded<Intent> {
        Recorded {
            snapshot: Snapshot::default(),
            record: Intent::new(
                user,
                "dcor-aid",
                "https://x",
                Via::Api,
                "h",
                at("2026-01-01T00:00:00Z"),
            ),
        }
    }

    #[test]
    fn intents_are_resolved_by_escrow_or_revocation() {
        let (i1, i2, i3) = (intent("alice"), intent("bob"), intent("carol"));
        let mut rev = Revocation::new("t9", "x", "h", at("2026-01-02T00:00:00Z"));
        rev.intent = Some(i3.record.id.clone());
        let r = Records {
            escrows: vec![escrow("alice", "t1", &i1.record.id)],
            intents: vec![i1, i2, i3],
            revocations: vec![Recorded {
                snapshot: Snapshot::default(),
                record: rev,
            }],
            unreadable: vec![],
        };
        let open: Vec<&str> = r
            .unresolved_intents()
            .iter()
            .map(|i| i.record.user.as_str())
            .collect();
        assert_eq!(open, ["bob"]);
        let msg = describe_intent(r.unresolved_intents()[0], at("2026-01-01T00:05:00Z"));
        assert!(msg.contains("token revoke bob"), "{msg}");
        assert!(msg.contains("may still be running"), "{msg}");
        let later = describe_intent(r.unresolved_intents()[0], at("2026-01-02T00:00:00Z"));
        assert!(!later.contains("may still be running"), "{later}");
    }

    #[test]
    fn select_by_id_prefix_or_user() {
        let r = Records {
            escrows: vec![
                escrow("alice", "AbCdEf123", "i1"),
                escrow("alice", "AbCdXX456", "i2"),
                escrow("bob", "zz9", "i3"),
            ],
            intents: vec![intent("carol")],
            ..Records::default()
        };
        assert!(matches!(r.select("zz9"), Ok(Selection::Token(e)) if e.record.user == "bob"));
        assert!(
            matches!(r.select("AbCdEf"), Ok(Selection::Token(e)) if e.record.token_id == "AbCdEf123")
        );
        // Prefixes need 6 characters; a shared one is ambiguous.
        assert!(matches!(r.select("AbCd"), Err(TokenError::NoMatch { .. })));
        let both = Records {
            escrows: vec![
                escrow("a", "AbCdEf123", "i1"),
                escrow("b", "AbCdEf456", "i2"),
            ],
            ..Records::default()
        };
        assert!(matches!(
            both.select("AbCdEf"),
            Err(TokenError::Ambiguous { count: 2, .. })
        ));
        match r.select("alice").unwrap() {
            Selection::User {
                escrows, intents, ..
            } => {
                assert_eq!(escrows.len(), 2);
                assert!(intents.is_empty());
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(r.select("carol"), Ok(Selection::User { .. })));
        assert!(matches!(r.select("dave"), Err(TokenError::NoMatch { .. })));
    }
}
