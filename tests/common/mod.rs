//! Shared fixtures for the integration tests: a real PostgreSQL cluster and a real CKAN.
#![allow(dead_code)]

pub mod ckan;
pub mod pg;
pub mod site;
pub mod tokens;
