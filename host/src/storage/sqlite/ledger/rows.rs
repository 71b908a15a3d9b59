//! The SQLite statements the ledger's rules (`storage::ledger_ops`) are written in: one
//! write transaction ([`Tx`], a [`LedgerTx`]), the hold query, and the check that a file
//! is a ledger.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::At;
use crate::domain::Currency;
use crate::payments::{LedgerError, OutboxEvent};
use crate::storage::ledger_ops::{
    HOLD_SELECT, HoldRaw, HoldRow, LedgerTx, MAX_ACCOUNT_UNITS, NewTransfer, Sums,
};
use crate::storage::sqlite::SqlError;
use crate::storage::sqlite::cached::CachedStatements;

pub(super) fn corrupt(path: &Path, message: impl Into<String>) -> LedgerError {
    SqlError::corrupt(path, message).into()
}

/// One write transaction plus the file it is on (for error messages). SQLite has one
/// writer at a time (`BEGIN IMMEDIATE`), so every account is locked for the whole
/// transaction already.
pub(super) struct Tx<'c> {
    pub(super) tx: Transaction<'c>,
    pub(super) path: &'c Path,
}

impl LedgerTx for Tx<'_> {
    fn corrupt(&self, message: String) -> LedgerError {
        corrupt(self.path, message)
    }

    fn account_id(
        &mut self,
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

    fn ensure_account(
        &mut self,
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

    fn tenant_exists(&mut self, tenant: &str) -> Result<bool, LedgerError> {
        tenant_exists(&self.tx, self.path, tenant)
    }

    fn lock_account(&mut self, account: i64) -> Result<Sums, LedgerError> {
        self.tx
            .row_cached(
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
            .at(self.path)
    }

    fn add_sums(
        &mut self,
        account: i64,
        debit: bool,
        pending: i64,
        posted: i64,
    ) -> Result<bool, LedgerError> {
        // A sum that would pass MAX_ACCOUNT_UNITS matches no row: refused by the caller,
        // naming the account, instead of SQLite turning the integer into a float.
        let sql = if debit {
            "UPDATE accounts SET debits_pending = debits_pending + ?2, debits_posted = debits_posted + ?3 \
             WHERE id = ?1 AND debits_pending + ?2 <= ?4 AND debits_posted + ?3 <= ?4"
        } else {
            "UPDATE accounts SET credits_pending = credits_pending + ?2, credits_posted = credits_posted + ?3 \
             WHERE id = ?1 AND credits_pending + ?2 <= ?4 AND credits_posted + ?3 <= ?4"
        };
        let n = self
            .tx
            .exec_cached(sql, params![account, pending, posted, MAX_ACCOUNT_UNITS])
            .at(self.path)?;
        Ok(n == 1)
    }

    fn has_room(&mut self, account: i64, units: i64) -> Result<bool, LedgerError> {
        // `limit` is computed here, exactly; a sum of two cached sums past i64 becomes a
        // REAL in SQLite, which is then far above `limit` anyway.
        let Some(limit) = MAX_ACCOUNT_UNITS.checked_sub(units) else {
            return Ok(false);
        };
        self.tx
            .row_cached(
                "SELECT debits_posted + debits_pending <= ?2 AND credits_posted + credits_pending <= ?2 \
                 FROM accounts WHERE id = ?1",
                params![account, limit],
                |r| r.get(0),
            )
            .at(self.path)
    }

    fn account_label(&mut self, account: i64) -> Result<(String, String, String), LedgerError> {
        self.tx
            .row_cached(
                "SELECT kind, name, currency FROM accounts WHERE id = ?1",
                params![account],
                |r| <_>::try_from(r),
            )
            .at(self.path)
    }

    fn insert(&mut self, t: NewTransfer<'_>) -> Result<(i64, String), LedgerError> {
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

    fn hold(&mut self, hold_id: &str) -> Result<HoldRow, LedgerError> {
        let sql = format!("{HOLD_SELECT} AND t.uid = ?1");
        query_holds(&self.tx, self.path, &sql, params![hold_id])?
            .pop()
            .ok_or_else(|| LedgerError::HoldNotFound(hold_id.to_owned()))
    }

    fn outbox_has(&mut self, id: &str) -> Result<bool, LedgerError> {
        self.tx
            .row_cached(
                "SELECT EXISTS (SELECT 1 FROM outbox WHERE id = ?1)",
                params![id],
                |r| r.get(0),
            )
            .at(self.path)
    }

    fn outbox_insert(&mut self, event: &OutboxEvent, at: i64) -> Result<(), LedgerError> {
        self.tx
            .exec_cached(
                "INSERT INTO outbox (id, payload, created_at) VALUES (?1, ?2, ?3)",
                params![event.id, event.payload, at],
            )
            .at(self.path)?;
        Ok(())
    }
}

pub(super) fn tenant_exists(
    conn: &Connection,
    path: &Path,
    tenant: &str,
) -> Result<bool, LedgerError> {
    conn.row_cached(
        "SELECT EXISTS (SELECT 1 FROM accounts WHERE kind = 'tenant' AND name = ?1)",
        params![tenant],
        |r| r.get(0),
    )
    .at(path)
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

pub(super) fn query_holds(
    conn: &Connection,
    path: &Path,
    sql: &str,
    args: impl rusqlite::Params,
) -> Result<Vec<HoldRow>, LedgerError> {
    let mut stmt = conn.prepare_cached(sql).at(path)?;
    let raws: Vec<HoldRaw> = stmt
        .query_map(args, |r| <_>::try_from(r))
        .at(path)?
        .collect::<rusqlite::Result<_>>()
        .at(path)?;
    let c = |m: String| corrupt(path, m);
    raws.into_iter()
        .map(|raw| HoldRow::from_raw(&c, raw))
        .collect()
}
