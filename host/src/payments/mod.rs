//! Payments: prepaid credits on a double-entry ledger.
//!
//! Every movement of money is an immutable transfer between two accounts (a tenant's
//! credits, the grants source, revenue per extension, write-offs). A hold is a pending
//! transfer, resolved exactly once by posting (fully or partly) or voiding. Balances are
//! derived from transfers, and [`CreditsStore::verify`] re-derives them.
//!
//! This module knows neither routing nor the runtime; the manager drives it.

pub mod error;
pub mod money;
mod schema;
pub mod sqlite;
pub mod store;

pub use error::LedgerError;
pub use sqlite::SqliteCreditsStore;
pub use store::{
    Balance, CreditsStore, Entry, EntryKind, Grant, Hold, HoldState, OutboxEvent, OverdraftPolicy,
    Settlement, StatementPage, VerifyReport, Void, validate_tenant,
};
