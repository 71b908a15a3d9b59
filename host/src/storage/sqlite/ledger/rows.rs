//! The ledger's rows and the statements that read and write them inside a transaction:
//! accounts and their cached sums, transfers, holds, and the checks on text arguments.

use std::path::Path;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use rust_decimal::Decimal;

use super::At;
use crate::domain::money::{Units, from_units};
use crate::domain::{Currency, Money};
use crate::payments::{Hold, HoldState, LedgerError};
use crate::storage::sqlite::SqlError;
use crate::storage::sqlite::cached::CachedStatements;

pub(super) fn corrupt(path: &Path, message: impl Into<String>) -> LedgerError {
    SqlError::corrupt(path, message).into()
}

pub(super) fn invalid(what: &'static str, reason: impl Into<String>) -> LedgerError {
    LedgerError::InvalidInput {
        what,
        reason: reason.into(),
    }
}

pub(super) fn check_text(
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

/// Unix milliseconds on the host clock, as the ledger stores times.
pub(super) fn now_ms() -> i64 {
    crate::storage::sqlite::millis(Utc::now())
}

pub(super) fn money(units: Units, currency: &Currency) -> Money {
    Money {
        amount: from_units(units),
        currency: currency.clone(),
    }
}

/// An account's cached sums.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sums {
    pub(super) debits_pending: i64,
    pub(super) debits_posted: i64,
    pub(super) credits_posted: i64,
}

impl Sums {
    /// Tenant view (credit-normal): posted = credits − debits.
    pub(super) fn posted(&self) -> Option<i64> {
        self.credits_posted.checked_sub(self.debits_posted)
    }
    pub(super) fn available(&self) -> Option<i64> {
        self.posted()?.checked_sub(self.debits_pending)
    }
}

/// A hold as stored.
pub(super) struct HoldRow {
    pub(super) id: i64,
    pub(super) uid: String,
    pub(super) tenant: String,
    pub(super) currency: Currency,
    pub(super) sandbox_id: String,
    pub(super) extension: String,
    pub(super) amount: i64,
    pub(super) exact: Decimal,
    pub(super) debit: i64,
    pub(super) credit: i64,
    pub(super) at: DateTime<Utc>,
    pub(super) state: HoldState,
}

impl HoldRow {
    pub(super) fn to_hold(&self) -> Hold {
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
}

pub(super) const HOLD_SELECT: &str = "SELECT t.id, t.uid, a.name, t.currency, t.sandbox_id, t.extension, t.amount, \
     t.exact, t.debit_account, t.credit_account, t.created_at, r.kind \
     FROM transfers t JOIN accounts a ON a.id = t.debit_account \
     LEFT JOIN transfers r ON r.pending_id = t.id WHERE t.kind = 'hold'";

/// A transfer about to be inserted.
pub(super) struct NewTransfer<'a> {
    pub(super) kind: &'static str,
    pub(super) ikey: String,
    pub(super) debit: i64,
    pub(super) credit: i64,
    pub(super) amount: i64,
    pub(super) exact: Option<Decimal>,
    pub(super) currency: &'a Currency,
    pub(super) pending_id: Option<i64>,
    pub(super) hold_id: Option<i64>,
    pub(super) sandbox_id: Option<&'a str>,
    pub(super) extension: Option<&'a str>,
    pub(super) note: Option<&'a str>,
    pub(super) at: i64,
}

impl<'a> NewTransfer<'a> {
    /// A transfer of `amount` from `debit` to `credit` with no link, sandbox or note: the
    /// base the others are written over (`NewTransfer { note: Some(..), ..base }`).
    pub(super) fn new(
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

impl HoldRow {
    /// A transfer between this hold's accounts, for its sandbox and extension.
    pub(super) fn transfer(
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
}

/// The most any of an account's sums may reach, in ledger units: below `i64::MAX` by a
/// margin, so the guard in [`Tx::apply`] compares exactly even where SQLite's arithmetic
/// would overflow into a float.
pub(super) const MAX_ACCOUNT_UNITS: i64 = 9_000_000_000_000_000_000;

/// One write transaction plus the file it is on (for error messages).
pub(super) struct Tx<'c> {
    pub(super) tx: Transaction<'c>,
    pub(super) path: &'c Path,
}

impl Tx<'_> {
    pub(super) fn account_id(
        &self,
        kind: &str,
        name: &str,
        currency: &Currency,
    ) -> Result<Option<i64>, LedgerError> {
        self.tx
            .row_cached(
                "SELECT id FROM accounts WHERE kind = ?1 AND name = ?2 AND currency = ?3",
                params![kind, name, currency.as_str()],
                |r| r.get(0),
            )
            .optional()
            .at(self.path)
    }

    pub(super) fn ensure_account(
        &self,
        kind: &str,
        name: &str,
        currency: &Currency,
        at: i64,
    ) -> Result<i64, LedgerError> {
        if let Some(id) = self.account_id(kind, name, currency)? {
            return Ok(id);
        }
        self.tx
            .exec_cached(
                "INSERT INTO accounts (kind, name, currency, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![kind, name, currency.as_str(), at],
            )
            .at(self.path)?;
        Ok(self.tx.last_insert_rowid())
    }

    pub(super) fn sums(&self, account: i64) -> Result<Sums, LedgerError> {
        sums(&self.tx, self.path, account)
    }

    pub(super) fn insert(&self, t: NewTransfer<'_>) -> Result<(i64, String), LedgerError> {
        let uid = uuid::Uuid::now_v7().to_string();
        self.tx
            .exec_cached(
                "INSERT INTO transfers (uid, ikey, kind, debit_account, credit_account, amount, exact, \
                 currency, pending_id, hold_id, sandbox_id, extension, note, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                params![
                    uid,
                    t.ikey,
                    t.kind,
                    t.debit,
                    t.credit,
                    t.amount,
                    t.exact.map(|d| d.to_string()),
                    t.currency.as_str(),
                    t.pending_id,
                    t.hold_id,
                    t.sandbox_id,
                    t.extension,
                    t.note,
                    t.at
                ],
            )
            .at(self.path)?;
        Ok((self.tx.last_insert_rowid(), uid))
    }

    /// Moves the cached sums of both sides of a transfer.
    pub(super) fn apply(
        &self,
        debit: i64,
        credit: i64,
        pending: i64,
        posted: i64,
    ) -> Result<(), LedgerError> {
        // A sum that would pass MAX_ACCOUNT_UNITS matches no row: refused here, naming the
        // account, instead of SQLite turning the integer into a float.
        for (sql, account) in [
            (
                "UPDATE accounts SET debits_pending = debits_pending + ?2, debits_posted = debits_posted + ?3 \
                 WHERE id = ?1 AND debits_pending + ?2 <= ?4 AND debits_posted + ?3 <= ?4",
                debit,
            ),
            (
                "UPDATE accounts SET credits_pending = credits_pending + ?2, credits_posted = credits_posted + ?3 \
                 WHERE id = ?1 AND credits_pending + ?2 <= ?4 AND credits_posted + ?3 <= ?4",
                credit,
            ),
        ] {
            let n = self
                .tx
                .exec_cached(sql, params![account, pending, posted, MAX_ACCOUNT_UNITS])
                .at(self.path)?;
            if n != 1 {
                let (kind, name, cur): (String, String, String) = self
                    .tx
                    .row_cached(
                        "SELECT kind, name, currency FROM accounts WHERE id = ?1",
                        params![account],
                        |r| <_>::try_from(r),
                    )
                    .at(self.path)?;
                return Err(invalid(
                    "amount",
                    format!(
                        "the {kind} account {name} ({cur}) would pass its limit of {} units; nothing was written \
                         (see docs/payments.md, \"Account limits\")",
                        MAX_ACCOUNT_UNITS
                    ),
                ));
            }
        }
        Ok(())
    }

    pub(super) fn hold(&self, hold_id: &str) -> Result<HoldRow, LedgerError> {
        let sql = format!("{HOLD_SELECT} AND t.uid = ?1");
        query_holds(&self.tx, self.path, &sql, params![hold_id])?
            .pop()
            .ok_or_else(|| LedgerError::HoldNotFound(hold_id.to_owned()))
    }
}

/// The ledger schema version of the open database, refusing a database that has tables
/// but is not a ledger (version 0 with tables).
pub(super) fn refuse_foreign(conn: &Connection, path: &Path) -> Result<i64, LedgerError> {
    let version: i64 = conn
        .row_cached("PRAGMA user_version", [], |r| r.get(0))
        .at(path)?;
    if version == 0 {
        let tables: i64 = conn
            .row_cached(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'",
                [],
                |r| r.get(0),
            )
            .at(path)?;
        if tables > 0 {
            return Err(corrupt(
                path,
                "an SQLite database, but not a sandboxer ledger",
            ));
        }
    }
    Ok(version)
}

pub(super) fn sums(conn: &Connection, path: &Path, account: i64) -> Result<Sums, LedgerError> {
    conn.row_cached(
        "SELECT debits_pending, debits_posted, credits_posted FROM accounts WHERE id = ?1",
        params![account],
        |r| {
            Ok(Sums {
                debits_pending: r.get(0)?,
                debits_posted: r.get(1)?,
                credits_posted: r.get(2)?,
            })
        },
    )
    .at(path)
}

pub(super) fn parse_time(path: &Path, ms: i64) -> Result<DateTime<Utc>, LedgerError> {
    DateTime::from_timestamp_millis(ms).ok_or_else(|| corrupt(path, format!("bad timestamp {ms}")))
}

pub(super) fn parse_currency(path: &Path, code: &str) -> Result<Currency, LedgerError> {
    Currency::new(code).map_err(|e| corrupt(path, e.to_string()))
}

pub(super) fn parse_exact(path: &Path, s: Option<String>) -> Result<Option<Decimal>, LedgerError> {
    s.map(|s| {
        Decimal::from_str(&s).map_err(|e| corrupt(path, format!("bad exact amount {s:?}: {e}")))
    })
    .transpose()
}

pub(super) fn query_holds(
    conn: &Connection,
    path: &Path,
    sql: &str,
    args: impl rusqlite::Params,
) -> Result<Vec<HoldRow>, LedgerError> {
    type Raw = (
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
    let mut stmt = conn.prepare_cached(sql).at(path)?;
    let raws: Vec<Raw> = stmt
        .query_map(args, |r| <_>::try_from(r))
        .at(path)?
        .collect::<rusqlite::Result<_>>()
        .at(path)?;
    raws.into_iter()
        .map(
            |(id, uid, tenant, cur, sandbox, ext, amount, exact, debit, credit, at, res)| {
                let state = match res.as_deref() {
                    None => HoldState::Open,
                    Some("post") => HoldState::Posted,
                    Some("void") => HoldState::Voided,
                    Some(other) => {
                        return Err(corrupt(
                            path,
                            format!("hold {uid} resolved by a {other} transfer"),
                        ));
                    }
                };
                Ok(HoldRow {
                    id,
                    tenant,
                    currency: parse_currency(path, &cur)?,
                    sandbox_id: sandbox.unwrap_or_default(),
                    extension: ext.unwrap_or_default(),
                    amount,
                    exact: parse_exact(path, exact)?.unwrap_or_else(|| from_units(amount)),
                    debit,
                    credit,
                    at: parse_time(path, at)?,
                    state,
                    uid,
                })
            },
        )
        .collect()
}
