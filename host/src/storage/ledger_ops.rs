//! The ledger's rules, once for every store: what each write checks, what it records and
//! answers (grant, hold, settle, void, replace), how a replayed idempotency key is
//! answered, and how rows become balances, holds, statement lines and a verify report.
//! A store supplies only its SQL, behind [`LedgerTx`] (one write transaction) and its
//! read queries; SQLite (`sqlite::ledger`) and PostgreSQL (`postgres::ledger`) run the
//! same code here, so they cannot drift apart.
//!
//! Concurrency is the store's part: every operation locks the tenant's account (through
//! [`LedgerTx::lock_account`] or [`LedgerTx::hold`]) before it reads a balance or a hold's
//! state, so a store that serialises on that lock (SQLite's single writer, PostgreSQL's
//! `SELECT … FOR UPDATE`) never overspends and resolves a hold once.

use std::collections::HashMap;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::domain::money::{Rounding, Units, from_units, to_units};
use crate::domain::{Balance, Currency, Entry, EntryKind, Grant, Money, TenantId};
use crate::payments::{
    Hold, HoldState, LedgerError, OutboxEvent, OverdraftPolicy, Settlement, VerifyReport, Void,
    settlement,
};

/// The account grants are paid from.
pub(crate) const GRANTS_ACCOUNT: &str = "grants";
/// The account excess beyond a tenant's means is booked to (policy write-off).
pub(crate) const WRITE_OFF_ACCOUNT: &str = "write-off";

/// The most any of an account's sums may reach, in ledger units: below `i64::MAX` by a
/// margin, so the guard in [`apply`] compares exactly whatever the database's arithmetic.
pub(crate) const MAX_ACCOUNT_UNITS: i64 = 9_000_000_000_000_000_000;

/// Builds the store's "corrupt" error (naming its file or URL) from a message.
pub(crate) type Corrupt<'a> = &'a dyn Fn(String) -> LedgerError;

pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> LedgerError {
    LedgerError::InvalidInput {
        what,
        reason: reason.into(),
    }
}

pub(crate) fn check_text(
    what: &'static str,
    value: &str,
    max: usize,
    allow_empty: bool,
) -> Result<(), LedgerError> {
    if !allow_empty && value.is_empty() {
        return Err(invalid(what, "must not be empty"));
    }
    if value.len() > max {
        return Err(invalid(what, format!("longer than {max} bytes")));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(what, "contains control characters"));
    }
    Ok(())
}

/// The ledger's tenant check (the one rule of [`TenantId`]).
pub(crate) fn check_tenant(tenant: &str) -> Result<(), LedgerError> {
    TenantId::parse(tenant)?;
    Ok(())
}

/// Checks an idempotency key: room for a surface's scope before the caller's key
/// (`grant:<64-char tenant>:<200-char key>`).
pub(crate) fn check_key(key: &str) -> Result<(), LedgerError> {
    check_text("idempotency key", key, 512, false)
}

/// Unix milliseconds on the host clock, as the ledger stores times.
pub(crate) fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

pub(crate) fn money(units: Units, currency: &Currency) -> Money {
    Money {
        amount: from_units(units),
        currency: currency.clone(),
    }
}

pub(crate) fn parse_time(corrupt: Corrupt<'_>, ms: i64) -> Result<DateTime<Utc>, LedgerError> {
    DateTime::from_timestamp_millis(ms).ok_or_else(|| corrupt(format!("bad timestamp {ms}")))
}

pub(crate) fn parse_currency(corrupt: Corrupt<'_>, code: &str) -> Result<Currency, LedgerError> {
    Currency::new(code).map_err(|e| corrupt(e.to_string()))
}

pub(crate) fn parse_exact(
    corrupt: Corrupt<'_>,
    s: Option<String>,
) -> Result<Option<Decimal>, LedgerError> {
    s.map(|s| Decimal::from_str(&s).map_err(|e| corrupt(format!("bad exact amount {s:?}: {e}"))))
        .transpose()
}

/// An account's cached sums.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sums {
    pub(crate) debits_pending: i64,
    pub(crate) debits_posted: i64,
    pub(crate) credits_posted: i64,
}

impl Sums {
    /// Tenant view (credit-normal): posted = credits − debits.
    pub(crate) fn posted(&self) -> Option<i64> {
        self.credits_posted.checked_sub(self.debits_posted)
    }
    pub(crate) fn available(&self) -> Option<i64> {
        self.posted()?.checked_sub(self.debits_pending)
    }
}

/// A tenant's balance from its account's sums.
pub(crate) fn balance(
    corrupt: Corrupt<'_>,
    tenant: String,
    currency: &str,
    s: Sums,
) -> Result<Balance, LedgerError> {
    let overflow = || corrupt(format!("balance of {tenant} overflows"));
    Ok(Balance {
        currency: parse_currency(corrupt, currency)?,
        posted: from_units(s.posted().ok_or_else(overflow)?),
        held: from_units(s.debits_pending),
        available: from_units(s.available().ok_or_else(overflow)?),
        tenant,
    })
}

/// A hold as stored.
pub(crate) struct HoldRow {
    pub(crate) id: i64,
    pub(crate) uid: String,
    pub(crate) tenant: String,
    pub(crate) currency: Currency,
    pub(crate) sandbox_id: String,
    pub(crate) extension: String,
    pub(crate) amount: i64,
    pub(crate) exact: Decimal,
    pub(crate) debit: i64,
    pub(crate) credit: i64,
    pub(crate) at: DateTime<Utc>,
    pub(crate) state: HoldState,
}

/// A hold row as read: `HOLD_SELECT`'s columns, in order (the last one is the kind of
/// the transfer resolving it, if any).
pub(crate) type HoldRaw = (
    i64,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    i64,
    Option<String>,
    i64,
    i64,
    i64,
    Option<String>,
);

/// The query every store reads holds with (both dialects take it; the caller appends
/// its condition with its own placeholders).
pub(crate) const HOLD_SELECT: &str = "SELECT t.id, t.uid, a.name, t.currency, t.sandbox_id, t.extension, t.amount, \
     t.exact, t.debit_account, t.credit_account, t.created_at, r.kind \
     FROM transfers t JOIN accounts a ON a.id = t.debit_account \
     LEFT JOIN transfers r ON r.pending_id = t.id WHERE t.kind = 'hold'";

impl HoldRow {
    pub(crate) fn from_raw(corrupt: Corrupt<'_>, raw: HoldRaw) -> Result<Self, LedgerError> {
        let (id, uid, tenant, cur, sandbox, ext, amount, exact, debit, credit, at, res) = raw;
        let state = match res.as_deref() {
            None => HoldState::Open,
            Some("post") => HoldState::Posted,
            Some("void") => HoldState::Voided,
            Some(other) => {
                return Err(corrupt(format!(
                    "hold {uid} resolved by a {other} transfer"
                )));
            }
        };
        Ok(HoldRow {
            id,
            tenant,
            currency: parse_currency(corrupt, &cur)?,
            sandbox_id: sandbox.unwrap_or_default(),
            extension: ext.unwrap_or_default(),
            amount,
            exact: parse_exact(corrupt, exact)?.unwrap_or_else(|| from_units(amount)),
            debit,
            credit,
            at: parse_time(corrupt, at)?,
            state,
            uid,
        })
    }

    pub(crate) fn to_hold(&self) -> Hold {
        Hold {
            id: self.uid.clone(),
            tenant: self.tenant.clone(),
            sandbox_id: self.sandbox_id.clone(),
            extension: self.extension.clone(),
            amount: money(self.amount, &self.currency),
            exact: self.exact,
            state: self.state,
            at: self.at,
        }
    }

    /// A transfer between this hold's accounts, for its sandbox and extension.
    pub(crate) fn transfer(
        &self,
        kind: &'static str,
        ikey: String,
        amount: i64,
        at: i64,
    ) -> NewTransfer<'_> {
        NewTransfer {
            sandbox_id: Some(&self.sandbox_id),
            extension: Some(&self.extension),
            ..NewTransfer::new(
                kind,
                ikey,
                (self.debit, self.credit),
                amount,
                &self.currency,
                at,
            )
        }
    }

    fn refuse_resolved(self) -> Result<Self, LedgerError> {
        if self.state != HoldState::Open {
            return Err(LedgerError::HoldAlreadyResolved {
                hold_id: self.uid,
                state: self.state.to_string(),
            });
        }
        Ok(self)
    }
}

/// A transfer about to be inserted.
pub(crate) struct NewTransfer<'a> {
    pub(crate) kind: &'static str,
    pub(crate) ikey: String,
    pub(crate) debit: i64,
    pub(crate) credit: i64,
    pub(crate) amount: i64,
    pub(crate) exact: Option<Decimal>,
    pub(crate) currency: &'a Currency,
    pub(crate) pending_id: Option<i64>,
    pub(crate) hold_id: Option<i64>,
    pub(crate) sandbox_id: Option<&'a str>,
    pub(crate) extension: Option<&'a str>,
    pub(crate) note: Option<&'a str>,
    pub(crate) at: i64,
}

impl<'a> NewTransfer<'a> {
    /// A transfer of `amount` from `debit` to `credit` with no link, sandbox or note: the
    /// base the others are written over (`NewTransfer { note: Some(..), ..base }`).
    pub(crate) fn new(
        kind: &'static str,
        ikey: String,
        (debit, credit): (i64, i64),
        amount: i64,
        currency: &'a Currency,
        at: i64,
    ) -> Self {
        Self {
            kind,
            ikey,
            debit,
            credit,
            amount,
            exact: None,
            currency,
            pending_id: None,
            hold_id: None,
            sandbox_id: None,
            extension: None,
            note: None,
            at,
        }
    }
}

/// One write transaction of a store: the statements the rules are written in.
pub(crate) trait LedgerTx {
    /// The store's "corrupt" error (naming its file or URL).
    fn corrupt(&self, message: String) -> LedgerError;
    /// The id of an account, if it exists.
    fn account_id(
        &mut self,
        kind: &str,
        name: &str,
        currency: &Currency,
    ) -> Result<Option<i64>, LedgerError>;
    /// Creates an account unless it exists (safe against a concurrent creator).
    fn ensure_account(
        &mut self,
        kind: &str,
        name: &str,
        currency: &Currency,
        at: i64,
    ) -> Result<i64, LedgerError>;
    /// Whether the tenant has an account in any currency.
    fn tenant_exists(&mut self, tenant: &str) -> Result<bool, LedgerError>;
    /// Locks a (tenant) account until the transaction ends, against every other write
    /// to it, and returns its sums as of then.
    fn lock_account(&mut self, account: i64) -> Result<Sums, LedgerError>;
    /// Adds to one side of an account's sums (`debit` or credit side) unless a sum would
    /// pass [`MAX_ACCOUNT_UNITS`]; false when it would (nothing changed).
    fn add_sums(
        &mut self,
        account: i64,
        debit: bool,
        pending: i64,
        posted: i64,
    ) -> Result<bool, LedgerError>;
    /// Whether `units` more can enter the account on either side with every hold on it
    /// posted in full: `posted + pending + units <= MAX_ACCOUNT_UNITS` on both sides.
    /// What keeps a later settlement from passing the limit (see [`shared_account`]).
    fn has_room(&mut self, account: i64, units: i64) -> Result<bool, LedgerError>;
    /// An account's kind, name and currency (for messages).
    fn account_label(&mut self, account: i64) -> Result<(String, String, String), LedgerError>;
    /// Inserts a transfer; its row id and its uid.
    fn insert(&mut self, t: NewTransfer<'_>) -> Result<(i64, String), LedgerError>;
    /// A hold by id, read after locking its tenant's account ([`Self::lock_account`]),
    /// so its state is the one every later write sees.
    fn hold(&mut self, hold_id: &str) -> Result<HoldRow, LedgerError>;
    /// Whether an event with this id is in the outbox.
    fn outbox_has(&mut self, id: &str) -> Result<bool, LedgerError>;
    /// Stores an event in the outbox.
    fn outbox_insert(&mut self, event: &OutboxEvent, at: i64) -> Result<(), LedgerError>;
}

/// How many series a shared account may roll over to. Each holds ~9 × 10⁹ currency
/// units, so this bound is never reached in practice; it stops a runaway loop.
const MAX_SERIES: u32 = 10_000;

/// The name of series `n` of a shared account: the base name, then `base#2`, `base#3`…
fn series_name(base: &str, n: u32) -> String {
    if n == 1 {
        base.to_owned()
    } else {
        format!("{base}#{n}")
    }
}

/// The shared account (`grants`, `revenue`, `write_off`) a new transfer of `units`
/// books to: the first series of `kind`/`base` with room for it (see
/// [`LedgerTx::has_room`]), created when needed. Shared accounts only grow; rolling over
/// to a fresh series instead of refusing means they never reach the limit in a ledger's
/// lifetime, whatever the currency's denomination, and a settlement never fails on one
/// (its hold's accounts had room for the whole hold when it was taken).
pub(crate) fn shared_account(
    tx: &mut dyn LedgerTx,
    kind: &str,
    base: &str,
    currency: &Currency,
    at: i64,
    units: i64,
) -> Result<i64, LedgerError> {
    if units > MAX_ACCOUNT_UNITS {
        return Err(invalid(
            "amount",
            format!("{units} units is more than one account can hold ({MAX_ACCOUNT_UNITS})"),
        ));
    }
    for n in 1..=MAX_SERIES {
        let name = series_name(base, n);
        let id = tx.ensure_account(kind, &name, currency, at)?;
        if tx.has_room(id, units)? {
            if n > 1 {
                tracing::debug!(kind, account = %name, %currency, "shared account rolled over");
            }
            return Ok(id);
        }
    }
    Err(invalid(
        "amount",
        format!("the {kind} account {base} ({currency}) has no series with room left"),
    ))
}

/// Moves the cached sums of both sides of a transfer; a sum that would pass the limit
/// is refused, naming the account (the transaction is then rolled back by the caller).
pub(crate) fn apply(
    tx: &mut dyn LedgerTx,
    debit: i64,
    credit: i64,
    pending: i64,
    posted: i64,
) -> Result<(), LedgerError> {
    for (account, side) in [(debit, true), (credit, false)] {
        if !tx.add_sums(account, side, pending, posted)? {
            let (kind, name, cur) = tx.account_label(account)?;
            return Err(invalid(
                "amount",
                format!(
                    "the {kind} account {name} ({cur}) would pass its limit of {MAX_ACCOUNT_UNITS} units; nothing was written \
                     (see docs/payments.md, \"Account limits\")"
                ),
            ));
        }
    }
    Ok(())
}

/// What the store found under an idempotency key before running a write: its operation,
/// fingerprint and stored answer.
pub(crate) type Prior = (String, String, String);

/// The answer to a request whose key was used before: the stored answer when it is the
/// same request, else [`LedgerError::IdempotencyConflict`].
pub(crate) fn replay<T: DeserializeOwned>(
    corrupt: Corrupt<'_>,
    key: &str,
    operation: &str,
    fingerprint: &str,
    (op, fp, response): Prior,
) -> Result<T, LedgerError> {
    if op != operation || fp != fingerprint {
        return Err(LedgerError::IdempotencyConflict {
            key: key.to_owned(),
            operation: op,
        });
    }
    serde_json::from_str(&response)
        .map_err(|e| corrupt(format!("stored answer for key {key:?}: {e}")))
}

/// The stored form of an answer.
pub(crate) fn response<T: Serialize>(answer: &T) -> Result<String, LedgerError> {
    serde_json::to_string(answer).map_err(|e| invalid("answer", e.to_string()))
}

/// One idempotent write, checked and fingerprinted before its transaction; `run` is the
/// transaction's body (it may run more than once when a store retries a transaction).
pub(crate) trait Op {
    /// What it answers.
    type Out: Serialize + DeserializeOwned;
    /// The operation's name, stored with the key.
    fn operation(&self) -> &'static str;
    /// The caller's idempotency key.
    fn key(&self) -> &str;
    /// What identifies the request under its key.
    fn fingerprint(&self) -> &str;
    /// The writes and the answer.
    fn run(&self, tx: &mut dyn LedgerTx) -> Result<Self::Out, LedgerError>;
}

/// `grant`.
pub(crate) struct GrantOp<'a> {
    tenant: &'a str,
    amount: &'a Money,
    note: &'a str,
    key: &'a str,
    units: i64,
    fingerprint: String,
}

impl<'a> GrantOp<'a> {
    pub(crate) fn new(
        tenant: &'a str,
        amount: &'a Money,
        note: &'a str,
        key: &'a str,
    ) -> Result<Self, LedgerError> {
        check_tenant(tenant)?;
        check_text("note", note, 1024, true)?;
        check_key(key)?;
        let units = to_units(amount.amount, Rounding::Exact)
            .map_err(|e| invalid("amount", e.to_string()))?
            .units;
        if units <= 0 {
            return Err(invalid("amount", "a grant must be greater than zero"));
        }
        let fingerprint = format!("{tenant}\n{}\n{units}\n{note}", amount.currency);
        Ok(Self {
            tenant,
            amount,
            note,
            key,
            units,
            fingerprint,
        })
    }
}

impl Op for GrantOp<'_> {
    type Out = Grant;
    fn operation(&self) -> &'static str {
        "grant"
    }
    fn key(&self) -> &str {
        self.key
    }
    fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
    fn run(&self, tx: &mut dyn LedgerTx) -> Result<Grant, LedgerError> {
        let (tenant, cur, units) = (self.tenant, &self.amount.currency, self.units);
        let at = now_ms();
        let account = tx.ensure_account("tenant", tenant, cur, at)?;
        tx.lock_account(account)?;
        let source = shared_account(tx, "grants", GRANTS_ACCOUNT, cur, at, units)?;
        let (_, uid) = tx.insert(NewTransfer {
            exact: Some(self.amount.amount),
            note: Some(self.note),
            ..NewTransfer::new(
                "grant",
                format!("grant:{}", self.key),
                (source, account),
                units,
                cur,
                at,
            )
        })?;
        apply(tx, source, account, 0, units)?;
        tracing::info!(tenant, amount = %money(units, cur), transfer = %uid, "credits granted");
        Ok(Grant {
            transfer_id: uid,
            tenant: tenant.to_owned(),
            amount: money(units, cur),
            note: self.note.to_owned(),
            at: parse_time(&|m| tx.corrupt(m), at)?,
        })
    }
}

/// `hold`.
pub(crate) struct HoldOp<'a> {
    tenant: &'a str,
    amount: &'a Money,
    sandbox_id: &'a str,
    extension: &'a str,
    key: &'a str,
    units: i64,
    fingerprint: String,
}

impl<'a> HoldOp<'a> {
    pub(crate) fn new(
        tenant: &'a str,
        amount: &'a Money,
        sandbox_id: &'a str,
        extension: &'a str,
        key: &'a str,
    ) -> Result<Self, LedgerError> {
        check_tenant(tenant)?;
        check_text("sandbox id", sandbox_id, 256, false)?;
        check_text("extension", extension, 128, false)?;
        check_key(key)?;
        let units = to_units(amount.amount, Rounding::Hold)
            .map_err(|e| invalid("amount", e.to_string()))?
            .units;
        let fingerprint = format!(
            "{tenant}\n{}\n{}\n{sandbox_id}\n{extension}",
            amount.currency,
            amount.amount.normalize()
        );
        Ok(Self {
            tenant,
            amount,
            sandbox_id,
            extension,
            key,
            units,
            fingerprint,
        })
    }
}

impl Op for HoldOp<'_> {
    type Out = Hold;
    fn operation(&self) -> &'static str {
        "hold"
    }
    fn key(&self) -> &str {
        self.key
    }
    fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
    fn run(&self, tx: &mut dyn LedgerTx) -> Result<Hold, LedgerError> {
        let (tenant, cur, units) = (self.tenant, &self.amount.currency, self.units);
        let at = now_ms();
        let Some(account) = tx.account_id("tenant", tenant, cur)? else {
            return Err(if tx.tenant_exists(tenant)? {
                LedgerError::InsufficientCredits {
                    need: money(units, cur),
                    available: money(0, cur),
                }
            } else {
                LedgerError::UnknownTenant(tenant.to_owned())
            });
        };
        let available = tx
            .lock_account(account)?
            .available()
            .ok_or_else(|| tx.corrupt(format!("balance of {tenant} overflows")))?;
        if units > available {
            return Err(LedgerError::InsufficientCredits {
                need: money(units, cur),
                available: money(available, cur),
            });
        }
        let revenue = shared_account(tx, "revenue", self.extension, cur, at, units)?;
        let (_, uid) = tx.insert(NewTransfer {
            exact: Some(self.amount.amount),
            sandbox_id: Some(self.sandbox_id),
            extension: Some(self.extension),
            ..NewTransfer::new(
                "hold",
                format!("hold:{}", self.key),
                (account, revenue),
                units,
                cur,
                at,
            )
        })?;
        apply(tx, account, revenue, units, 0)?;
        tracing::debug!(tenant, sandbox_id = self.sandbox_id, extension = self.extension, hold = %uid, amount = %money(units, cur), "credits held");
        Ok(Hold {
            id: uid,
            tenant: tenant.to_owned(),
            sandbox_id: self.sandbox_id.to_owned(),
            extension: self.extension.to_owned(),
            amount: money(units, cur),
            exact: self.amount.amount,
            state: HoldState::Open,
            at: parse_time(&|m| tx.corrupt(m), at)?,
        })
    }
}

/// `settle`.
pub(crate) struct SettleOp<'a> {
    hold_id: &'a str,
    actual: &'a Money,
    key: &'a str,
    event: Option<OutboxEvent>,
    policy: OverdraftPolicy,
    charge: i64,
    fingerprint: String,
}

impl<'a> SettleOp<'a> {
    pub(crate) fn new(
        hold_id: &'a str,
        actual: &'a Money,
        key: &'a str,
        event: Option<OutboxEvent>,
        policy: OverdraftPolicy,
    ) -> Result<Self, LedgerError> {
        check_key(key)?;
        let charge = to_units(actual.amount, Rounding::Charge)
            .map_err(|e| invalid("amount", e.to_string()))?
            .units;
        if let Some(ev) = &event {
            check_text("event id", &ev.id, 256, false)?;
        }
        let fingerprint = format!(
            "{hold_id}\n{}\n{}",
            actual.currency,
            actual.amount.normalize()
        );
        Ok(Self {
            hold_id,
            actual,
            key,
            event,
            policy,
            charge,
            fingerprint,
        })
    }
}

impl Op for SettleOp<'_> {
    type Out = Settlement;
    fn operation(&self) -> &'static str {
        "settle"
    }
    fn key(&self) -> &str {
        self.key
    }
    fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
    fn run(&self, tx: &mut dyn LedgerTx) -> Result<Settlement, LedgerError> {
        let (hold_id, actual, key) = (self.hold_id, self.actual, self.key);
        let at = now_ms();
        let hold = tx.hold(hold_id)?.refuse_resolved()?;
        let cur = &hold.currency;
        if &actual.currency != cur {
            return Err(invalid(
                "amount",
                format!(
                    "hold {hold_id} is in {cur}, the charge in {}",
                    actual.currency
                ),
            ));
        }
        let split = settlement::split(hold.amount, self.charge);
        let posted = split.posted;
        let (_, uid) = tx.insert(NewTransfer {
            exact: Some(actual.amount),
            pending_id: Some(hold.id),
            ..hold.transfer("post", format!("settle:{key}"), posted, at)
        })?;
        apply(tx, hold.debit, hold.credit, -hold.amount, posted)?;
        let (released, excess) = (split.released, split.excess);
        let (mut covered, mut written_off, mut debt) = (0, 0, 0);
        if excess > 0 {
            let available = tx
                .lock_account(hold.debit)?
                .available()
                .ok_or_else(|| tx.corrupt(format!("balance of {} overflows", hold.tenant)))?;
            let over = settlement::cover_excess(excess, available, self.policy);
            (covered, written_off, debt) = (over.covered, over.written_off, over.debt);
            let write_off = if written_off > 0 {
                shared_account(tx, "write_off", WRITE_OFF_ACCOUNT, cur, at, written_off)?
            } else {
                0
            };
            let extra = [
                ("overdraft", covered, hold.debit),
                ("debt", debt, hold.debit),
                ("write_off", written_off, write_off),
            ];
            for (kind, amount, debit) in extra {
                if amount == 0 {
                    continue;
                }
                tx.insert(NewTransfer {
                    debit,
                    hold_id: Some(hold.id),
                    ..hold.transfer(kind, format!("settle:{key}#{kind}"), amount, at)
                })?;
                apply(tx, debit, hold.credit, 0, amount)?;
            }
            tracing::warn!(
                tenant = %hold.tenant, sandbox_id = %hold.sandbox_id, hold = %hold.uid,
                excess = %money(excess, cur), written_off = %money(written_off, cur), debt = %money(debt, cur),
                "settlement exceeded its hold"
            );
        }
        let event_id = match &self.event {
            Some(ev) => {
                if tx.outbox_has(&ev.id)? {
                    return Err(invalid(
                        "event id",
                        format!("{:?} is already in the outbox", ev.id),
                    ));
                }
                tx.outbox_insert(ev, at)?;
                Some(ev.id.clone())
            }
            None => None,
        };
        Ok(Settlement {
            hold_id: hold.uid.clone(),
            transfer_id: uid,
            tenant: hold.tenant.clone(),
            held: money(hold.amount, cur),
            exact: actual.amount,
            charged: money(self.charge, cur),
            from_tenant: money(posted + covered + debt, cur),
            released: money(released, cur),
            written_off: money(written_off, cur),
            debt: money(debt, cur),
            event_id,
        })
    }
}

/// `void`.
pub(crate) struct VoidOp<'a> {
    hold_id: &'a str,
    key: &'a str,
}

impl<'a> VoidOp<'a> {
    pub(crate) fn new(hold_id: &'a str, key: &'a str) -> Result<Self, LedgerError> {
        check_key(key)?;
        Ok(Self { hold_id, key })
    }
}

impl Op for VoidOp<'_> {
    type Out = Void;
    fn operation(&self) -> &'static str {
        "void"
    }
    fn key(&self) -> &str {
        self.key
    }
    fn fingerprint(&self) -> &str {
        self.hold_id
    }
    fn run(&self, tx: &mut dyn LedgerTx) -> Result<Void, LedgerError> {
        let hold = tx.hold(self.hold_id)?.refuse_resolved()?;
        let (_, uid) = tx.insert(NewTransfer {
            pending_id: Some(hold.id),
            ..hold.transfer("void", format!("void:{}", self.key), hold.amount, now_ms())
        })?;
        apply(tx, hold.debit, hold.credit, -hold.amount, 0)?;
        Ok(Void {
            hold_id: hold.uid.clone(),
            transfer_id: uid,
            released: money(hold.amount, &hold.currency),
        })
    }
}

/// `replace_hold`.
pub(crate) struct ReplaceOp<'a> {
    old_hold_id: &'a str,
    new_amount: &'a Money,
    key: &'a str,
    units: i64,
    fingerprint: String,
}

impl<'a> ReplaceOp<'a> {
    pub(crate) fn new(
        old_hold_id: &'a str,
        new_amount: &'a Money,
        key: &'a str,
    ) -> Result<Self, LedgerError> {
        check_key(key)?;
        let units = to_units(new_amount.amount, Rounding::Hold)
            .map_err(|e| invalid("amount", e.to_string()))?
            .units;
        let fingerprint = format!(
            "{old_hold_id}\n{}\n{}",
            new_amount.currency,
            new_amount.amount.normalize()
        );
        Ok(Self {
            old_hold_id,
            new_amount,
            key,
            units,
            fingerprint,
        })
    }
}

impl Op for ReplaceOp<'_> {
    type Out = Hold;
    fn operation(&self) -> &'static str {
        "replace_hold"
    }
    fn key(&self) -> &str {
        self.key
    }
    fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
    fn run(&self, tx: &mut dyn LedgerTx) -> Result<Hold, LedgerError> {
        let (old_hold_id, cur, units, key) = (
            self.old_hold_id,
            &self.new_amount.currency,
            self.units,
            self.key,
        );
        let at = now_ms();
        let old = tx.hold(old_hold_id)?.refuse_resolved()?;
        if &old.currency != cur {
            return Err(invalid(
                "amount",
                format!(
                    "hold {old_hold_id} is in {}, the new amount in {cur}",
                    old.currency
                ),
            ));
        }
        // What the tenant could hold once the old hold is released.
        let available = tx
            .lock_account(old.debit)?
            .available()
            .and_then(|a| a.checked_add(old.amount))
            .ok_or_else(|| tx.corrupt(format!("balance of {} overflows", old.tenant)))?;
        if units > available {
            return Err(LedgerError::InsufficientCredits {
                need: money(units, cur),
                available: money(available, cur),
            });
        }
        tx.insert(NewTransfer {
            pending_id: Some(old.id),
            ..old.transfer("void", format!("replace:{key}#void"), old.amount, at)
        })?;
        // The new hold stays on the old hold's revenue series while it has room for the
        // increment, else it moves to the next series (the void above frees the old one).
        let credit = if tx.has_room(old.credit, units - old.amount)? {
            old.credit
        } else {
            shared_account(tx, "revenue", &old.extension, cur, at, units)?
        };
        let (_, uid) = tx.insert(NewTransfer {
            exact: Some(self.new_amount.amount),
            credit,
            ..old.transfer("hold", format!("replace:{key}#hold"), units, at)
        })?;
        if credit == old.credit {
            apply(tx, old.debit, old.credit, units - old.amount, 0)?;
        } else {
            apply(tx, old.debit, old.credit, -old.amount, 0)?;
            apply(tx, old.debit, credit, units, 0)?;
        }
        tracing::debug!(
            tenant = %old.tenant, sandbox_id = %old.sandbox_id, extension = %old.extension,
            old_hold = %old.uid, hold = %uid, amount = %money(units, cur),
            "hold replaced"
        );
        Ok(Hold {
            id: uid,
            tenant: old.tenant.clone(),
            sandbox_id: old.sandbox_id.clone(),
            extension: old.extension.clone(),
            amount: money(units, cur),
            exact: self.new_amount.amount,
            state: HoldState::Open,
            at: parse_time(&|m| tx.corrupt(m), at)?,
        })
    }
}

/// A statement line as read: created_at, kind, uid, amount, exact, currency, sandbox id,
/// note, the related hold's uid, the resolved hold's amount.
pub(crate) type EntryRaw = (
    i64,
    String,
    String,
    i64,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
);

/// One line of a tenant's statement from its transfer.
pub(crate) fn entry(corrupt: Corrupt<'_>, raw: EntryRaw) -> Result<Entry, LedgerError> {
    let (at, kind, uid, amount, exact, cur, sandbox, note, related, pending_amount) = raw;
    let a = from_units(amount);
    let (kind, posted, held, hold_id) = match kind.as_str() {
        "grant" => (EntryKind::Grant, a, Decimal::ZERO, None),
        "hold" => (EntryKind::Hold, Decimal::ZERO, a, Some(uid.clone())),
        "post" => (
            EntryKind::Charge,
            -a,
            -from_units(pending_amount.unwrap_or(0)),
            related,
        ),
        "void" => (EntryKind::Void, Decimal::ZERO, -a, related),
        "overdraft" => (EntryKind::Overdraft, -a, Decimal::ZERO, related),
        "debt" => (EntryKind::Debt, -a, Decimal::ZERO, related),
        other => return Err(corrupt(format!("unknown transfer kind {other:?}"))),
    };
    Ok(Entry {
        at: parse_time(corrupt, at)?,
        kind,
        transfer_id: uid,
        hold_id,
        currency: parse_currency(corrupt, &cur)?,
        posted_delta: posted,
        held_delta: held,
        exact: parse_exact(corrupt, exact)?,
        sandbox_id: sandbox,
        note,
    })
}

/// A transfer as `verify` reads it: uid, kind, debit, credit, amount, and the kind,
/// amount, debit and credit of the transfer it resolves (post / void).
pub(crate) type VerifyTransfer = (
    String,
    String,
    i64,
    i64,
    i64,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
);

/// An account as `verify` reads it: id, kind, name, currency and its four sums.
pub(crate) type VerifyAccount = (i64, String, String, String, i64, i64, i64, i64);

/// Re-derives every account's sums from the transfers and checks the ledger's
/// invariants (sums agree, every currency sums to zero, no negative available credits
/// without debt, every resolution matches its hold). `problems` may hold the store's
/// own findings (an integrity check of the file).
pub(crate) fn verify(
    transfers: Vec<VerifyTransfer>,
    accounts: Vec<VerifyAccount>,
    open_holds: i64,
    mut problems: Vec<String>,
) -> VerifyReport {
    // Fold every transfer into per-account sums, in i128 so the check cannot overflow.
    #[derive(Default, Clone, Copy, PartialEq, Debug)]
    struct Fold {
        dpend: i128,
        dpost: i128,
        cpend: i128,
        cpost: i128,
        debt: bool,
    }
    let mut folds: HashMap<i64, Fold> = HashMap::new();
    let count = transfers.len() as u64;
    for (uid, kind, d, c, amount, pkind, pamount, pd, pc) in transfers {
        let a = i128::from(amount);
        let (mut pend, mut post) = (0i128, 0i128);
        match kind.as_str() {
            "hold" => pend = a,
            "post" | "void" => {
                let (Some("hold"), Some(held), Some(pd), Some(pc)) =
                    (pkind.as_deref(), pamount, pd, pc)
                else {
                    problems.push(format!("transfer {uid} ({kind}) does not resolve a hold"));
                    continue;
                };
                if (pd, pc) != (d, c) {
                    problems.push(format!(
                        "transfer {uid} ({kind}) moves between other accounts than its hold"
                    ));
                }
                if kind == "void" && amount != held {
                    problems.push(format!(
                        "void {uid} releases {amount} units of a {held}-unit hold"
                    ));
                }
                if kind == "post" && amount > held {
                    problems.push(format!(
                        "post {uid} posts {amount} units of a {held}-unit hold"
                    ));
                }
                pend = -i128::from(held);
                if kind == "post" {
                    post = a;
                }
            }
            "grant" | "overdraft" | "debt" | "write_off" => post = a,
            other => problems.push(format!("transfer {uid} has unknown kind {other:?}")),
        }
        let df = folds.entry(d).or_default();
        df.dpend += pend;
        df.dpost += post;
        df.debt |= kind == "debt";
        let cf = folds.entry(c).or_default();
        cf.cpend += pend;
        cf.cpost += post;
    }
    let mut totals: HashMap<String, [i128; 4]> = HashMap::new();
    let mut warnings = Vec::new();
    for (id, kind, name, cur, dpend, dpost, cpend, cpost) in &accounts {
        let f = folds.get(id).copied().unwrap_or_default();
        let cached = [*dpend, *dpost, *cpend, *cpost].map(i128::from);
        let derived = [f.dpend, f.dpost, f.cpend, f.cpost];
        if cached != derived {
            problems.push(format!(
                "{kind} account {name} ({cur}): stored sums {cached:?} differ from the transfers' {derived:?} \
                 (debits pending, debits posted, credits pending, credits posted)"
            ));
        }
        let highest = cached.iter().copied().max().unwrap_or(0);
        // Shared accounts roll over to a fresh series (`shared_account`); a tenant's own
        // account cannot, so only those are worth a warning.
        if kind == "tenant" && highest > i128::from(MAX_ACCOUNT_UNITS / 2) {
            warnings.push(format!(
                "{kind} account {name} ({cur}) is at {highest} units, past half its limit of {MAX_ACCOUNT_UNITS}; \
                 writes that would pass the limit are refused (docs/payments.md, \"Account limits\")"
            ));
        }
        let t = totals.entry(cur.clone()).or_default();
        for (slot, v) in t.iter_mut().zip(derived) {
            *slot += v;
        }
        if kind == "tenant" {
            let available = f.cpost - f.dpost - f.dpend;
            if available < 0 && !f.debt {
                problems.push(format!(
                    "tenant {name} ({cur}) has negative available credits without debt"
                ));
            }
        }
        if f.dpend < 0 || f.cpend < 0 {
            problems.push(format!(
                "{kind} account {name} ({cur}) has negative pending sums"
            ));
        }
    }
    for (cur, [dpend, dpost, cpend, cpost]) in totals {
        if dpost != cpost {
            problems.push(format!(
                "{cur}: posted debits {dpost} ≠ posted credits {cpost} (sum over accounts is not zero)"
            ));
        }
        if dpend != cpend {
            problems.push(format!(
                "{cur}: pending debits {dpend} ≠ pending credits {cpend}"
            ));
        }
    }
    VerifyReport {
        ok: problems.is_empty(),
        accounts: accounts.len() as u64,
        transfers: count,
        open_holds: u64::try_from(open_holds).unwrap_or(0),
        problems,
        warnings,
    }
}
