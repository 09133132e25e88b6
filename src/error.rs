//! How a failure is classified for the operator.
//!
//! Exit codes are part of ckan-vault's interface (cron, systemd and backup frameworks act on
//! them), so every library error says whether the *input* was wrong (fix the config or the
//! command line, exit 2) or the *run* failed (the site, the database or the vault, exit 1).

/// What kind of failure an error is, which decides the process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// The configuration, the command line or an input file is wrong: exit code 2.
    Usage,
    /// The run itself failed (a dump, the vault, the network, a check): exit code 1.
    Failure,
}

impl Category {
    /// The process exit code for this category.
    pub fn exit_code(self) -> u8 {
        match self {
            Category::Usage => 2,
            Category::Failure => 1,
        }
    }
}

/// Implemented by every error type the library returns.
pub trait Categorized {
    fn category(&self) -> Category;
}
