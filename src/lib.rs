//! ckan-vault: keep a CKAN data portal recoverable and its credentials accountable.
//!
//! The crate reads in one direction. Leaves know nothing of each other:
//! [`vault`] (a restic-format repository through `rustic_core`), [`pg`] (PostgreSQL's
//! client and server binaries), [`ckan`] (`ckan.ini` and the Action API), [`escrow`]
//! (`age` sealing), [`manifest`] (what a backup promises), [`ledger`] (what ckan-vault
//! records in the vault besides backups: escrow entries, intents, revocations) and
//! [`report`] (metrics and output). Workflows compose leaves: [`backup`], [`restore`],
//! [`token`]. Above them [`drill`] and [`hooks`] compose workflows, and [`demo`] shows
//! the whole thing.
//! The command-line interface (`src/cli`) only parses and prints.

pub mod ckan;
pub mod config;
pub mod error;
pub mod escrow;
pub mod ledger;
pub mod manifest;
pub mod pg;
pub mod report;
pub mod secret;
pub mod vault;

pub mod backup;
pub mod restore;
pub mod stdin_dump;
pub mod token;

pub mod demo;
pub mod drill;
pub mod hooks;
