//! Typed ledger errors.

use std::path::PathBuf;

use crate::domain::{InvalidTenant, Money};

/// Why a ledger operation was refused or failed. Nothing was changed when one is returned.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LedgerError {
    /// The hold would make `available` negative.
    #[error("insufficient credits: need {need}, available {available}")]
    InsufficientCredits {
        /// The (rounded-up) hold asked for.
        need: Money,
        /// What the tenant could still hold.
        available: Money,
    },
    /// The tenant has no account on this ledger.
    #[error("unknown tenant {0:?}: no credits were ever added for it")]
    UnknownTenant(String),
    /// The tenant id is not `[a-z0-9][a-z0-9_-]*`, at most 64 characters.
    #[error(transparent)]
    InvalidTenant(#[from] InvalidTenant),
    /// Some other argument is unusable (empty key, bad amount, mixed currencies, …).
    #[error("invalid {what}: {reason}")]
    InvalidInput {
        /// Which argument.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// No hold has this id.
    #[error("hold {0} not found")]
    HoldNotFound(String),
    /// The hold was already posted or voided (by another request).
    #[error("hold {hold_id} is already {state}")]
    HoldAlreadyResolved {
        /// The hold.
        hold_id: String,
        /// `posted` or `voided`.
        state: String,
    },
    /// The idempotency key was used before for a different request.
    #[error("idempotency key {key:?} was already used for a different {operation} request")]
    IdempotencyConflict {
        /// The key.
        key: String,
        /// The operation it was first used for.
        operation: String,
    },
    /// The database is not a ledger (or is damaged, or from a newer build).
    #[error("ledger {path} is corrupt or not a ledger database: {message}")]
    Corrupt {
        /// The file, or the PostgreSQL URL with its password as `***`.
        path: PathBuf,
        /// What SQLite or the schema check said.
        message: String,
    },
    /// The database could not be opened, read or written (permissions, disk, lock,
    /// an unreachable server, refused credentials).
    #[error("ledger {path}: {message}")]
    Storage {
        /// The file, or the PostgreSQL URL with its password as `***`.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}
