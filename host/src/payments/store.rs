//! The `CreditsStore` trait and the values it trades in. No storage types appear here:
//! the SQLite store (`storage::sqlite::ledger`) and the PostgreSQL store
//! (`storage::postgres::ledger`) implement the same trait with the same rules
//! (`storage::ledger_ops`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::error::LedgerError;
use crate::domain::{Balance, Currency, Entry, Grant, Money, TenantId, VerifyReport};

/// What happens when a sandbox's metered cost is more than its hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OverdraftPolicy {
    /// Take what the tenant still has available; record the rest against the write-off
    /// account. A tenant's balance never goes negative.
    #[default]
    WriteOff,
    /// Take the whole excess from the tenant; its balance may go negative by it (debt).
    Debt,
}

impl FromStr for OverdraftPolicy {
    type Err = LedgerError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "write-off" => Ok(Self::WriteOff),
            "debt" => Ok(Self::Debt),
            other => Err(LedgerError::InvalidInput {
                what: "overdraft policy",
                reason: format!("{other:?} is neither \"write-off\" nor \"debt\""),
            }),
        }
    }
}

/// A durable event written in the same transaction as a settlement (transactional outbox).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEvent {
    /// Unique event id (the CloudEvents `id`).
    pub id: String,
    /// The serialized event (CloudEvents JSON).
    pub payload: String,
}

/// Where a hold stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldState {
    /// Still reserving credits.
    Open,
    /// Settled: the charge was posted, the remainder released.
    Posted,
    /// Released in full.
    Voided,
}

impl fmt::Display for HoldState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Open => "open",
            Self::Posted => "posted",
            Self::Voided => "voided",
        })
    }
}

/// A hold: a pending transfer reserving credits for a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// Hold id (the pending transfer's id); pass it to `settle` / `void`.
    pub id: String,
    /// The tenant whose credits are held.
    pub tenant: String,
    /// The sandbox it is for.
    pub sandbox_id: String,
    /// The extension whose revenue account receives the charge.
    pub extension: String,
    /// The amount held, rounded up to a ledger unit.
    pub amount: Money,
    /// The exact estimate before rounding.
    #[serde(with = "rust_decimal::serde::str")]
    pub exact: Decimal,
    /// Open, posted or voided (as of when this value was read).
    pub state: HoldState,
    /// When the hold was made.
    pub at: DateTime<Utc>,
}

/// The result of settling a hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settlement {
    /// The hold that was settled.
    pub hold_id: String,
    /// The posting transfer.
    pub transfer_id: String,
    /// The tenant.
    pub tenant: String,
    /// The amount that had been held.
    pub held: Money,
    /// The metered cost, exact.
    #[serde(with = "rust_decimal::serde::str")]
    pub exact: Decimal,
    /// The metered cost rounded half away from zero: what the extension earns.
    pub charged: Money,
    /// Taken from the tenant in total (from the hold, plus any excess it could cover).
    pub from_tenant: Money,
    /// Returned to the tenant's available credits (hold − charge, when the charge is less).
    pub released: Money,
    /// Excess the tenant could not cover, booked to the write-off account (policy WriteOff).
    pub written_off: Money,
    /// Excess that took the tenant's balance below zero (policy Debt).
    pub debt: Money,
    /// The outbox event stored with the settlement, if any.
    pub event_id: Option<String>,
}

/// The result of voiding a hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Void {
    /// The hold that was released.
    pub hold_id: String,
    /// The voiding transfer.
    pub transfer_id: String,
    /// The amount released.
    pub released: Money,
}

/// One page of a tenant's statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatementPage {
    /// The lines, oldest first.
    pub entries: Vec<Entry>,
    /// The transfer id of the last line when more lines follow it: pass it as `after`
    /// for the next page. `None`: this was the last page.
    pub next: Option<String>,
}

/// Prepaid credits on a double-entry ledger. Every write is one durable transaction,
/// and every write takes an idempotency key: replaying it returns the original result,
/// reusing it for a different request is [`LedgerError::IdempotencyConflict`].
pub trait CreditsStore: Send + Sync {
    /// Adds credits to `tenant` (creating its account on first use).
    fn grant(
        &self,
        tenant: &str,
        amount: &Money,
        note: &str,
        idempotency_key: &str,
    ) -> Result<Grant, LedgerError>;

    /// Reserves `amount` (exact; rounded up) of `tenant`'s credits for `sandbox_id`, to be
    /// paid to `extension`. Refused with [`LedgerError::InsufficientCredits`] when it would
    /// make `available` negative.
    fn hold(
        &self,
        tenant: &str,
        amount: &Money,
        sandbox_id: &str,
        extension: &str,
        idempotency_key: &str,
    ) -> Result<Hold, LedgerError>;

    /// Posts the metered cost `actual` (exact; rounded half away from zero) against a hold
    /// and releases the remainder; cost above the hold follows the overdraft policy. The
    /// optional `event` is stored in the outbox in the same transaction; it is not part
    /// of the request's identity (a replay returns the original settlement and stores
    /// no second event).
    fn settle(
        &self,
        hold_id: &str,
        actual: &Money,
        idempotency_key: &str,
        event: Option<OutboxEvent>,
    ) -> Result<Settlement, LedgerError>;

    /// Releases a hold in full (create failed).
    fn void(&self, hold_id: &str, idempotency_key: &str) -> Result<Void, LedgerError>;

    /// Replaces an open hold by one of `new_amount` (exact; rounded up) for the same
    /// tenant, sandbox and extension, in one transaction: the old hold is voided and the
    /// new one opened, so the two are never open together (a lease renewal). The new
    /// hold must fit as if the old one were released: `available + old ≥ new`, else
    /// [`LedgerError::InsufficientCredits`] with that sum as `available`. A hold that is
    /// not open is [`LedgerError::HoldAlreadyResolved`]; another currency than the old
    /// hold's is [`LedgerError::InvalidInput`]. Refusals change nothing.
    fn replace_hold(
        &self,
        old_hold_id: &str,
        new_amount: &Money,
        idempotency_key: &str,
    ) -> Result<Hold, LedgerError>;

    /// A tenant's balance in `currency`.
    fn balance(&self, tenant: &str, currency: &Currency) -> Result<Balance, LedgerError>;

    /// Balances of one tenant (every currency) or, with `None`, of every tenant.
    fn balances(&self, tenant: Option<&str>) -> Result<Vec<Balance>, LedgerError>;

    /// Every transfer touching the tenant, oldest first.
    fn statement(&self, tenant: &str) -> Result<Vec<Entry>, LedgerError>;

    /// At most `limit` (at least 1) lines of the tenant's statement, oldest first, after
    /// the line of transfer `after` (exclusive): a keyset on the transfer sequence, so
    /// transfers recorded between pages only ever appear at the end. An `after` that is
    /// not a line of this tenant's statement is [`LedgerError::InvalidInput`] (`after`).
    fn statement_page(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<StatementPage, LedgerError>;

    /// Re-derives every balance from the transfers and checks the invariants.
    fn verify(&self) -> Result<VerifyReport, LedgerError>;

    /// The most recent hold made for a sandbox, in any state.
    fn hold_for_sandbox(&self, sandbox_id: &str) -> Result<Option<Hold>, LedgerError>;

    /// Every hold not yet posted or voided, oldest first (for crash recovery).
    fn open_holds(&self) -> Result<Vec<Hold>, LedgerError>;

    /// Up to `limit` undelivered outbox events, oldest first.
    fn pending_events(&self, limit: usize) -> Result<Vec<OutboxEvent>, LedgerError>;

    /// Marks outbox events as delivered.
    fn mark_delivered(&self, ids: &[String]) -> Result<(), LedgerError>;

    /// Undelivered outbox events: how many, and the age of the oldest.
    fn outbox_lag(&self) -> Result<(u64, Option<Duration>), LedgerError>;
}

/// Checks a tenant id ([`TenantId`]'s rule).
pub fn validate_tenant(tenant: &str) -> Result<(), LedgerError> {
    TenantId::parse(tenant)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trait_is_object_safe_and_shareable() {
        fn shareable<T: Send + Sync + 'static>() {}
        shareable::<std::sync::Arc<dyn CreditsStore>>();
    }

    #[test]
    fn overdraft_policy_from_config() {
        assert_eq!(
            "write-off".parse::<OverdraftPolicy>().unwrap(),
            OverdraftPolicy::WriteOff
        );
        assert_eq!(
            "debt".parse::<OverdraftPolicy>().unwrap(),
            OverdraftPolicy::Debt
        );
        assert!("WriteOff".parse::<OverdraftPolicy>().is_err());
        assert_eq!(OverdraftPolicy::default(), OverdraftPolicy::WriteOff);
    }
}
