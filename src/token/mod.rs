//! Access tokens for DCOR-Aid: the `.dcor-access` file and what goes into it.
//!
//! A `.dcor-access` file is a password-protected ZIP holding a user's CKAN API token
//! (`api_key.txt`) and the site's certificate (`server.cert`). DCOR-Aid opens it with
//! Python's `zipfile`, takes the hostname from the certificate's subject CN, and trusts
//! that certificate for the site. Today admins build these files by hand; this module
//! provides the pieces to build and check them safely:
//!
//! - [`access_file`]: write and strictly read the ZIP (legacy ZipCrypto, because that is
//!   all Python's `zipfile` can decrypt), and inspect one without its password.
//! - [`cert`]: check that a PEM certificate is one DCOR-Aid can use for a given site
//!   (CN, SANs, validity window, SHA-256 fingerprint).
//! - [`password`]: generate a file password from the OS CSPRNG that can be read out
//!   over the phone.
//!
//! The token workflow (issue, list, recover, revoke, with an escrow copy of every token
//! in the vault) composes these with [`crate::ckan`] and [`crate::escrow`]; it lands
//! once the vault API does.

pub mod access_file;
pub mod cert;
pub mod password;
