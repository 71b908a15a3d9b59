//! What a tenant's prepaid credits look like to the people and programs reading them:
//! balances, statement lines, a grant's receipt and the ledger's self-check. The ledger
//! (`payments`) produces them; the surfaces render them.

use std::fmt;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::money::{Currency, Money};

/// The result of a grant (`sandboxer credits add`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Grant {
    /// The transfer that moved the credits.
    pub transfer_id: String,
    /// Who received them.
    pub tenant: String,
    /// How much.
    pub amount: Money,
    /// Free text recorded with the transfer.
    pub note: String,
    /// When it was recorded.
    pub at: DateTime<Utc>,
}

/// A tenant's balance in one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Balance {
    /// The tenant.
    pub tenant: String,
    /// The currency.
    pub currency: Currency,
    /// Granted minus charged.
    #[serde(with = "rust_decimal::serde::str")]
    pub posted: Decimal,
    /// Sum of open holds.
    #[serde(with = "rust_decimal::serde::str")]
    pub held: Decimal,
    /// `posted − held`: what new holds may use.
    #[serde(with = "rust_decimal::serde::str")]
    pub available: Decimal,
}

/// What a statement line records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// Credits added.
    Grant,
    /// Credits reserved for a sandbox.
    Hold,
    /// A settled sandbox's cost taken from its hold (the rest of the hold is released).
    Charge,
    /// A hold released in full.
    Void,
    /// Cost beyond the hold, taken from available credits.
    Overdraft,
    /// Cost beyond the hold taken as debt (the balance may go negative).
    Debt,
}

impl fmt::Display for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Grant => "grant",
            Self::Hold => "hold",
            Self::Charge => "charge",
            Self::Void => "void",
            Self::Overdraft => "overdraft",
            Self::Debt => "debt",
        })
    }
}

/// One line of a tenant's statement: one transfer touching the tenant's account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Entry {
    /// When the transfer was recorded.
    pub at: DateTime<Utc>,
    /// What kind of movement.
    pub kind: EntryKind,
    /// The transfer id.
    pub transfer_id: String,
    /// The hold this line belongs to, if any.
    pub hold_id: Option<String>,
    /// Currency of the amounts.
    pub currency: Currency,
    /// Change to the posted balance (negative for charges).
    #[serde(with = "rust_decimal::serde::str")]
    pub posted_delta: Decimal,
    /// Change to the held amount (positive for a hold, negative when it is resolved).
    #[serde(with = "rust_decimal::serde::str")]
    pub held_delta: Decimal,
    /// The exact amount before rounding (holds and charges).
    #[serde(with = "rust_decimal::serde::str_option")]
    pub exact: Option<Decimal>,
    /// The sandbox, for holds and their resolution.
    pub sandbox_id: Option<String>,
    /// The note given with a grant.
    pub note: Option<String>,
}

/// The outcome of re-deriving every balance from the transfers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// True when no problem was found.
    pub ok: bool,
    /// Accounts checked.
    pub accounts: u64,
    /// Transfers folded.
    pub transfers: u64,
    /// Holds still open.
    pub open_holds: u64,
    /// Each broken invariant, in words.
    pub problems: Vec<String>,
    /// What is not broken but needs the operator soon (an account past half its limit).
    #[serde(default)]
    pub warnings: Vec<String>,
}
