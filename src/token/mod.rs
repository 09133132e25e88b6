//! Access tokens for DCOR-Aid: issue them through CKAN, escrow every one in the vault,
//! list, inspect, verify, recover and revoke them.
//!
//! A `.dcor-access` file is a password-protected ZIP holding a user's CKAN API token
//! (`api_key.txt`) and the site's certificate (`server.cert`). DCOR-Aid opens it with
//! Python's `zipfile`, takes the hostname from the certificate's subject CN, and trusts
//! that certificate for the site.
//!
//! The building blocks (leaves of this workflow):
//! - [`access_file`]: write and strictly read the ZIP (legacy ZipCrypto, because that is
//!   all Python's `zipfile` can decrypt), and inspect one without its password.
//! - [`cert`]: check that a PEM certificate is one DCOR-Aid can use for a given site
//!   (CN, SANs, validity window, SHA-256 fingerprint).
//! - [`password`]: generate a file password from the OS CSPRNG that can be read out
//!   over the phone.
//!
//! The workflow composes them with [`crate::ckan`] (Action API, certificate pinning),
//! [`crate::escrow`] (age sealing), [`crate::ledger`] (the records' formats) and
//! [`crate::vault`]:
//! - [`issue`]: intent record → CKAN user/token ([`channel`]: Action API or the `ckan`
//!   command) → `.dcor-access` file → escrow copy sealed to every recipient → success.
//!   A token whose escrow copy cannot be saved is revoked again.
//! - [`list`]: the escrowed tokens from snapshot descriptions, without any private key,
//!   and intents that never got an escrow copy.
//! - [`inspect`]: `token inspect` (offline) and `token verify` (TLS pinned to the
//!   bundled certificate, and CKAN must accept the token).
//! - [`recover`]: an escrow officer's identity opens an escrow copy.
//! - [`revoke`]: revoke at CKAN and record it; restores re-apply recorded revocations
//!   (see [`crate::restore`]).
//!
//! Nothing here prints: the CLI shows what the functions return. No token, file
//! password, user password or private key reaches a log line, an error message or a
//! child's argv; files holding one are created 0600 ([`files`]).

pub mod access_file;
pub mod cert;
pub mod password;

pub mod channel;
mod error;
pub mod files;
pub mod inspect;
pub mod issue;
pub mod list;
pub mod records;
pub mod recover;
pub mod revoke;

pub use error::TokenError;
