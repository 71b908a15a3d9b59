//! Payments: prepaid credits on a double-entry ledger.
//!
//! Every movement of money is an immutable transfer between two accounts (a tenant's
//! credits, the grants source, revenue per extension, write-offs). A hold is a pending
//! transfer, resolved exactly once by posting (fully or partly) or voiding. Balances are
//! derived from transfers, and [`CreditsStore::verify`] re-derives them.
//!
//! This module is the contract ([`CreditsStore`], its values and errors) and the rules
//! every store follows ([`settlement`]); the stores themselves are in `storage` (SQLite,
//! and PostgreSQL for several hosts), both behind the same trait and running the same
//! rules (`storage::ledger_ops`). It knows neither routing
//! nor the runtime; the manager drives it.

pub mod error;
pub mod settlement;
pub mod store;

pub use crate::domain::{Entry, EntryKind, VerifyReport};
pub use error::LedgerError;
pub use store::{
    CreditsStore, Hold, HoldState, OutboxEvent, OverdraftPolicy, Settlement, StatementPage, Void,
    validate_tenant,
};
