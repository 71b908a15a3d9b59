//! The `CreditsStore` trait and the values it trades in. No storage types appear here so
//! a PostgreSQL store can implement the same trait.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::error::LedgerError;
use crate::money::{Currency, Money};

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

/// The result of a grant (`sandboxer credits add`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

/// A tenant's balance in one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

/// One page of a tenant's statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatementPage {
    /// The lines, oldest first.
    pub entries: Vec<Entry>,
    /// The transfer id of the last line when more lines follow it: pass it as `after`
    /// for the next page. `None`: this was the last page.
    pub next: Option<String>,
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

/// Checks a tenant id: `[a-z0-9][a-z0-9_-]*`, at most 64 characters.
pub fn validate_tenant(tenant: &str) -> Result<(), LedgerError> {
    let mut chars = tenant.chars();
    let ok = tenant.len() <= 64
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(LedgerError::InvalidTenant(tenant.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trait_is_object_safe_and_the_sqlite_store_shareable() {
        fn shareable<T: Send + Sync + 'static>() {}
        shareable::<std::sync::Arc<dyn CreditsStore>>();
        shareable::<crate::payments::SqliteCreditsStore>();
    }

    #[test]
    fn statement_pages_follow_the_transfer_sequence_of_one_tenant() {
        use crate::payments::SqliteCreditsStore;
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteCreditsStore::open(dir.path().join("ledger.sqlite3")).unwrap();
        let usd = |a: i64| Money {
            amount: Decimal::new(a, 0),
            currency: Currency::new("USD").unwrap(),
        };
        // Interleaved with another tenant's transfers, so the sequence has gaps.
        for i in 1..=23 {
            store.grant("acme", &usd(i), "", &format!("a{i}")).unwrap();
            store
                .grant("globex", &usd(i), "", &format!("g{i}"))
                .unwrap();
        }
        let all = store.statement("acme").unwrap();
        assert_eq!(all.len(), 23);
        let mut paged = Vec::new();
        let mut after: Option<String> = None;
        let mut pages = 0;
        loop {
            let page = store.statement_page("acme", after.as_deref(), 10).unwrap();
            pages += 1;
            paged.extend(page.entries);
            if pages == 1 {
                // Recorded between pages: it comes last, once.
                store.grant("acme", &usd(99), "late", "a99").unwrap();
            }
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        assert_eq!(pages, 3);
        assert_eq!(paged[..23], all[..]);
        assert_eq!(paged.len(), 24);
        assert_eq!(paged[23].note.as_deref(), Some("late"));
        // Another tenant's transfer is no position on this statement.
        let theirs = store.statement_page("globex", None, 1).unwrap().entries[0]
            .transfer_id
            .clone();
        assert!(matches!(
            store.statement_page("acme", Some(&theirs), 10),
            Err(LedgerError::InvalidInput { what: "after", .. })
        ));
        assert!(matches!(
            store.statement_page("acme", Some("nope"), 10),
            Err(LedgerError::InvalidInput { what: "after", .. })
        ));
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

    #[test]
    fn tenant_ids() {
        for ok in ["acme", "a", "0-x_y", &"a".repeat(64)] {
            assert!(validate_tenant(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Acme", "-a", "_a", "a b", "a.b", &"a".repeat(65), "é"] {
            assert!(validate_tenant(bad).is_err(), "{bad}");
        }
    }
}
