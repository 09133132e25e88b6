//! What ckan-vault records in the vault besides backups: the records of the token
//! workflow, as plain serde types with bounded parsing.
//!
//! Each record is a small snapshot of its own (see [`crate::vault::Kind`]), and its
//! non-secret JSON is also the snapshot's *description*, so listing needs neither the
//! escrow officers' private keys nor loading the vault's index:
//!
//! - [`EscrowEntry`]: one issued token (who, which token id, which certificate, sealed to
//!   which recipients). The snapshot also holds `escrow.age`: an [`EscrowBundle`] (the
//!   `.dcor-access` file and its password) sealed with age to the escrow recipients.
//! - [`Intent`]: written *before* CKAN is asked for a token. An intent that no escrow
//!   entry or revocation resolves means a token may exist without its escrow copy.
//! - [`Revocation`]: a token revoked at CKAN. Restores re-apply every revocation to the
//!   restored database, so an older backup does not bring revoked tokens back.
//!
//! Every record carries `record` (its kind) and `format`; a parser refuses the wrong kind,
//! a newer format, and text larger than its bound. Unknown fields are ignored, so a later
//! version may add some.

use std::fmt;

use base64::Engine as _;
use jiff::Timestamp;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// The record format this version writes and reads.
pub const FORMAT: u32 = 1;
/// Largest record JSON (a snapshot description) accepted.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;
/// Largest unsealed escrow bundle accepted (a `.dcor-access` file is at most 256 KiB).
pub const MAX_BUNDLE_BYTES: usize = 1024 * 1024;
/// Largest sealed escrow bundle read from the vault.
pub const MAX_SEALED_BYTES: usize = MAX_BUNDLE_BYTES + 64 * 1024;

/// File names inside the record snapshots.
pub mod files {
    /// The sealed [`super::EscrowBundle`] in an escrow snapshot.
    pub const ESCROW: &str = "escrow.age";
    /// The [`super::Intent`] JSON in an intent snapshot.
    pub const INTENT: &str = "intent.json";
    /// The [`super::Revocation`] JSON in a revocation snapshot.
    pub const REVOCATION: &str = "revocation.json";
}

/// The snapshot tag naming the CKAN user a record is about.
#[must_use]
pub fn user_tag(user: &str) -> String {
    format!("user:{user}")
}

/// Whether `name` is a CKAN user name (2–100 of `a-z`, `0-9`, `-`, `_`), which is also
/// what makes it safe inside a snapshot tag.
#[must_use]
pub fn is_valid_user_name(name: &str) -> bool {
    (2..=100).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Errors reading a record. Messages never contain a secret.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(
        "{what} record is larger than {limit} bytes: it was not written by ckan-vault; check the vault"
    )]
    TooLarge { what: &'static str, limit: usize },
    #[error(
        "malformed {what} record ({reason}): it was not written by ckan-vault; check the vault"
    )]
    Malformed { what: &'static str, reason: String },
    #[error("expected a {expected} record, found {found:?}: check the snapshot's tags")]
    WrongRecord {
        expected: &'static str,
        found: String,
    },
    #[error(
        "{what} record has format {format}, newer than this ckan-vault understands ({FORMAT}): upgrade ckan-vault"
    )]
    NewerFormat { what: &'static str, format: u32 },
}

impl crate::error::Categorized for LedgerError {
    fn category(&self) -> crate::error::Category {
        crate::error::Category::Failure
    }
}

/// How the token was created at CKAN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// The Action API with a sysadmin's token.
    Api,
    /// The `ckan` command on the CKAN host.
    Cli,
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Via::Api => "api",
            Via::Cli => "cli",
        })
    }
}

/// The non-secret facts about one issued token: the escrow snapshot's description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EscrowEntry {
    /// Always `"escrow"`.
    pub record: String,
    pub format: u32,
    /// The CKAN user name.
    pub user: String,
    /// The token id (the JWT's `jti`), used to revoke it.
    pub token_id: String,
    pub token_name: String,
    /// When CKAN created the token (as ckan-vault saw it).
    pub created: Timestamp,
    /// The site the token is for.
    pub site_url: String,
    /// The hostname DCOR-Aid takes from the certificate (its CN).
    pub hostname: String,
    /// SHA-256 fingerprint of the bundled certificate (`AB:CD:…`).
    pub cert_sha256: String,
    pub cert_not_after: Timestamp,
    /// SHA-256 (hex) of the `.dcor-access` file's bytes.
    pub file_sha256: String,
    /// The age recipients (public keys) the bundle is sealed to.
    pub recipients: Vec<String>,
    /// The [`Intent`] this issue started with.
    pub intent: String,
    pub via: Via,
    /// Whether ckan-vault created the CKAN user (its password is in the bundle).
    pub user_created: bool,
    /// The host that issued the token.
    pub issued_on: String,
}

/// Written before a token is created at CKAN: the snapshot's description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// Always `"intent"`.
    pub record: String,
    pub format: u32,
    /// A random id that the escrow entry (or a revocation) refers to.
    pub id: String,
    pub user: String,
    pub token_name: String,
    pub started: Timestamp,
    pub site_url: String,
    pub via: Via,
    /// The host running `token issue`.
    pub host: String,
}

/// A token revoked at CKAN: the snapshot's description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// Always `"revocation"`.
    pub record: String,
    pub format: u32,
    /// The token id (`jti`); the `api_token` row id in CKAN's database.
    pub token_id: String,
    /// The user, when known (from the escrow entry or the intent).
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub token_name: Option<String>,
    pub revoked: Timestamp,
    /// Why (e.g. "token revoke", "escrow failed", "unescrowed token found for an intent").
    pub reason: String,
    /// The intent this revocation resolves, if any.
    #[serde(default)]
    pub intent: Option<String>,
    /// The host that revoked it.
    pub host: String,
}

/// The record kinds, for parsing.
trait Record: Serialize + DeserializeOwned {
    const KIND: &'static str;
    fn header(&self) -> (&str, u32);
}

impl Record for EscrowEntry {
    const KIND: &'static str = "escrow";
    fn header(&self) -> (&str, u32) {
        (&self.record, self.format)
    }
}

impl Record for Intent {
    const KIND: &'static str = "intent";
    fn header(&self) -> (&str, u32) {
        (&self.record, self.format)
    }
}

impl Record for Revocation {
    const KIND: &'static str = "revocation";
    fn header(&self) -> (&str, u32) {
        (&self.record, self.format)
    }
}

fn parse_record<T: Record>(text: &str) -> Result<T, LedgerError> {
    if text.len() > MAX_RECORD_BYTES {
        return Err(LedgerError::TooLarge {
            what: T::KIND,
            limit: MAX_RECORD_BYTES,
        });
    }
    // Look at the header first, so the wrong kind is reported as such.
    #[derive(Deserialize)]
    struct Header {
        record: Option<String>,
        format: Option<u32>,
    }
    let header: Header = serde_json::from_str(text).map_err(|e| LedgerError::Malformed {
        what: T::KIND,
        reason: short(&e.to_string()),
    })?;
    match header.record.as_deref() {
        Some(k) if k == T::KIND => {}
        other => {
            return Err(LedgerError::WrongRecord {
                expected: T::KIND,
                found: short(other.unwrap_or("(none)")),
            });
        }
    }
    if let Some(f) = header.format
        && f > FORMAT
    {
        return Err(LedgerError::NewerFormat {
            what: T::KIND,
            format: f,
        });
    }
    let record: T = serde_json::from_str(text).map_err(|e| LedgerError::Malformed {
        what: T::KIND,
        reason: short(&e.to_string()),
    })?;
    debug_assert_eq!(record.header().0, T::KIND);
    Ok(record)
}

fn short(s: &str) -> String {
    let one: String = s.replace(['\n', '\r'], " ").chars().take(120).collect();
    one
}

fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("records always serialize")
}

impl EscrowEntry {
    /// The entry as snapshot description (compact JSON).
    #[must_use]
    pub fn to_json(&self) -> String {
        to_json(self)
    }

    /// Parses a snapshot description.
    pub fn parse(text: &str) -> Result<EscrowEntry, LedgerError> {
        parse_record(text)
    }
}

impl Intent {
    /// A new intent with a random id.
    ///
    /// # Panics
    ///
    /// If the operating system's random number generator fails.
    #[must_use]
    pub fn new(
        user: &str,
        token_name: &str,
        site_url: &str,
        via: Via,
        host: &str,
        now: Timestamp,
    ) -> Intent {
        let mut id = [0u8; 12];
        getrandom::fill(&mut id).expect("the OS random number generator failed");
        Intent {
            record: <Intent as Record>::KIND.into(),
            format: FORMAT,
            id: hex::encode(id),
            user: user.into(),
            token_name: token_name.into(),
            started: now,
            site_url: site_url.into(),
            via,
            host: host.into(),
        }
    }

    /// The intent as snapshot description (compact JSON).
    #[must_use]
    pub fn to_json(&self) -> String {
        to_json(self)
    }

    /// Parses a snapshot description.
    pub fn parse(text: &str) -> Result<Intent, LedgerError> {
        parse_record(text)
    }
}

impl Revocation {
    /// A revocation record made now.
    #[must_use]
    pub fn new(token_id: &str, reason: &str, host: &str, now: Timestamp) -> Revocation {
        Revocation {
            record: <Revocation as Record>::KIND.into(),
            format: FORMAT,
            token_id: token_id.into(),
            user: None,
            token_name: None,
            revoked: now,
            reason: reason.into(),
            intent: None,
            host: host.into(),
        }
    }

    /// The record as snapshot description (compact JSON).
    #[must_use]
    pub fn to_json(&self) -> String {
        to_json(self)
    }

    /// Parses a snapshot description.
    pub fn parse(text: &str) -> Result<Revocation, LedgerError> {
        parse_record(text)
    }
}

/// Builds an [`EscrowEntry`] with the header fields filled in.
#[derive(Debug, Clone)]
pub struct EscrowFacts {
    pub user: String,
    pub token_id: String,
    pub token_name: String,
    pub created: Timestamp,
    pub site_url: String,
    pub hostname: String,
    pub cert_sha256: String,
    pub cert_not_after: Timestamp,
    pub file_sha256: String,
    pub recipients: Vec<String>,
    pub intent: String,
    pub via: Via,
    pub user_created: bool,
    pub issued_on: String,
}

impl From<EscrowFacts> for EscrowEntry {
    fn from(f: EscrowFacts) -> EscrowEntry {
        EscrowEntry {
            record: <EscrowEntry as Record>::KIND.into(),
            format: FORMAT,
            user: f.user,
            token_id: f.token_id,
            token_name: f.token_name,
            created: f.created,
            site_url: f.site_url,
            hostname: f.hostname,
            cert_sha256: f.cert_sha256,
            cert_not_after: f.cert_not_after,
            file_sha256: f.file_sha256,
            recipients: f.recipients,
            intent: f.intent,
            via: f.via,
            user_created: f.user_created,
            issued_on: f.issued_on,
        }
    }
}

/// What an escrow copy holds (sealed to the escrow recipients): the entry's facts plus
/// the `.dcor-access` file, its password and, when ckan-vault created the user, the
/// user's CKAN password. `Debug` shows no secret.
pub struct EscrowBundle {
    pub entry: EscrowEntry,
    /// The `.dcor-access` file as issued.
    pub access_file: Zeroizing<Vec<u8>>,
    /// The `.dcor-access` file's password.
    pub password: SecretString,
    /// The CKAN password ckan-vault set when it created the user.
    pub user_password: Option<SecretString>,
}

impl fmt::Debug for EscrowBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EscrowBundle")
            .field("entry", &self.entry)
            .field(
                "access_file",
                &format_args!("{} bytes", self.access_file.len()),
            )
            .field("password", &"[REDACTED]")
            .field(
                "user_password",
                &self.user_password.as_ref().map(|_| "[REDACTED]"),
            )
            .finish()
    }
}

/// The bundle's JSON: the entry's fields, then the secrets. Pretty-printed, because an
/// escrow officer may read it straight from `age -d`.
#[derive(Serialize, Deserialize)]
struct BundleJson {
    #[serde(flatten)]
    entry: EscrowEntry,
    access_file_base64: String,
    password: String,
    #[serde(default)]
    user_password: Option<String>,
}

impl Drop for BundleJson {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.access_file_base64.zeroize();
        self.password.zeroize();
        if let Some(p) = &mut self.user_password {
            p.zeroize();
        }
    }
}

impl EscrowBundle {
    /// The bundle as JSON bytes (to be sealed; zeroized when dropped).
    #[must_use]
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let json = BundleJson {
            entry: self.entry.clone(),
            access_file_base64: base64::engine::general_purpose::STANDARD
                .encode(self.access_file.as_slice()),
            password: self.password.expose_secret().to_owned(),
            user_password: self
                .user_password
                .as_ref()
                .map(|p| p.expose_secret().to_owned()),
        };
        let mut out = serde_json::to_vec_pretty(&json).expect("bundles always serialize");
        out.push(b'\n');
        Zeroizing::new(out)
    }

    /// Parses unsealed bundle bytes (at most [`MAX_BUNDLE_BYTES`]).
    pub fn parse(bytes: &[u8]) -> Result<EscrowBundle, LedgerError> {
        const WHAT: &str = "escrow bundle";
        if bytes.len() > MAX_BUNDLE_BYTES {
            return Err(LedgerError::TooLarge {
                what: WHAT,
                limit: MAX_BUNDLE_BYTES,
            });
        }
        let json: BundleJson = serde_json::from_slice(bytes).map_err(|e| {
            // serde_json's messages quote no input, only positions and expectations.
            LedgerError::Malformed {
                what: WHAT,
                reason: short(&e.to_string()),
            }
        })?;
        let entry = &json.entry;
        if entry.record != <EscrowEntry as Record>::KIND {
            return Err(LedgerError::WrongRecord {
                expected: WHAT,
                found: short(&entry.record),
            });
        }
        if entry.format > FORMAT {
            return Err(LedgerError::NewerFormat {
                what: WHAT,
                format: entry.format,
            });
        }
        let access_file = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(json.access_file_base64.as_bytes())
                .map_err(|_| LedgerError::Malformed {
                    what: WHAT,
                    reason: "access_file_base64 is not base64".into(),
                })?,
        );
        Ok(EscrowBundle {
            entry: json.entry.clone(),
            access_file,
            password: SecretString::from(json.password.clone()),
            user_password: json.user_password.clone().map(SecretString::from),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> EscrowEntry {
        EscrowFacts {
            user: "alice".into(),
            token_id: "jti-1".into(),
            token_name: "dcor-aid".into(),
            created: "2026-05-01T10:00:00Z".parse().unwrap(),
            site_url: "https://dcor.example.com".into(),
            hostname: "dcor.example.com".into(),
            cert_sha256: "AB:CD".into(),
            cert_not_after: "2124-01-01T00:00:00Z".parse().unwrap(),
            file_sha256: "00".into(),
            recipients: vec!["age1xyz".into()],
            intent: "i1".into(),
            via: Via::Api,
            user_created: true,
            issued_on: "host".into(),
        }
        .into()
    }

    #[test]
    fn records_round_trip_and_refuse_the_wrong_kind() {
        let e = entry();
        assert_eq!(EscrowEntry::parse(&e.to_json()).unwrap(), e);
        let i = Intent::new(
            "alice",
            "dcor-aid",
            "https://x",
            Via::Cli,
            "h",
            Timestamp::now(),
        );
        assert_eq!(i.id.len(), 24);
        assert_eq!(Intent::parse(&i.to_json()).unwrap(), i);
        let mut r = Revocation::new("jti-1", "token revoke", "h", Timestamp::now());
        r.user = Some("alice".into());
        assert_eq!(Revocation::parse(&r.to_json()).unwrap(), r);

        let err = Revocation::parse(&e.to_json()).unwrap_err();
        assert!(matches!(err, LedgerError::WrongRecord { .. }), "{err}");
        let err = EscrowEntry::parse("{\"record\":\"escrow\"}").unwrap_err();
        assert!(matches!(err, LedgerError::Malformed { .. }), "{err}");
        let err = EscrowEntry::parse("not json").unwrap_err();
        assert!(matches!(err, LedgerError::Malformed { .. }), "{err}");
        let err = Intent::parse(&"x".repeat(MAX_RECORD_BYTES + 1)).unwrap_err();
        assert!(matches!(err, LedgerError::TooLarge { .. }), "{err}");
        let newer = i.to_json().replace("\"format\":1", "\"format\":9");
        let err = Intent::parse(&newer).unwrap_err();
        assert!(matches!(err, LedgerError::NewerFormat { .. }), "{err}");
        // A later version may add fields.
        let more = r.to_json().replacen('{', "{\"extra\":[1,2],", 1);
        assert_eq!(Revocation::parse(&more).unwrap(), r);
    }

    #[test]
    fn bundle_round_trip_hides_secrets_in_debug() {
        let b = EscrowBundle {
            entry: entry(),
            access_file: Zeroizing::new(b"PK\x03\x04zip bytes".to_vec()),
            password: SecretString::from("abcde-fghij".to_owned()),
            user_password: Some(SecretString::from("user-pw-123".to_owned())),
        };
        let bytes = b.to_bytes();
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(text.contains("\"user\": \"alice\""), "{text}");
        assert!(text.contains("abcde-fghij"));
        let back = EscrowBundle::parse(&bytes).unwrap();
        assert_eq!(back.entry, b.entry);
        assert_eq!(back.access_file.as_slice(), b.access_file.as_slice());
        assert_eq!(back.password.expose_secret(), "abcde-fghij");
        assert_eq!(
            back.user_password.as_ref().unwrap().expose_secret(),
            "user-pw-123"
        );
        let shown = format!("{back:?}");
        assert!(
            !shown.contains("abcde") && !shown.contains("user-pw"),
            "{shown}"
        );
        let err = EscrowBundle::parse(b"{\"password\":\"secret-value\"}").unwrap_err();
        assert!(!err.to_string().contains("secret-value"), "{err}");
        let err = EscrowBundle::parse(&vec![b' '; MAX_BUNDLE_BYTES + 1]).unwrap_err();
        assert!(matches!(err, LedgerError::TooLarge { .. }));
    }

    #[test]
    fn user_names() {
        for ok in ["alice", "a1", "bob_smith-2"] {
            assert!(is_valid_user_name(ok), "{ok}");
        }
        for bad in ["a", "Alice", "al ice", "al,ice", "", "ä1", &"a".repeat(101)] {
            assert!(!is_valid_user_name(bad), "{bad}");
        }
        assert_eq!(user_tag("alice"), "user:alice");
    }
}
