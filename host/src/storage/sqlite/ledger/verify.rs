//! `verify`: SQLite's integrity check, then the transfers and accounts that
//! `ledger_ops::verify` re-derives and checks.

use super::{At, SqliteCreditsStore};
use crate::payments::{LedgerError, VerifyReport};
use crate::storage::ledger_ops::{self, VerifyAccount, VerifyTransfer};
use crate::storage::sqlite::cached::CachedStatements;

impl SqliteCreditsStore {
    pub(super) fn run_verify(&self) -> Result<VerifyReport, LedgerError> {
        self.read(|tx, path| {
            let mut problems = Vec::new();
            let check: String = tx.row_cached("PRAGMA quick_check", [], |r| r.get(0)).at(path)?;
            if check != "ok" {
                problems.push(format!("SQLite quick_check: {check}"));
            }
            let mut stmt = tx
                .prepare(
                    "SELECT t.uid, t.kind, t.debit_account, t.credit_account, t.amount, p.kind, p.amount, \
                     p.debit_account, p.credit_account \
                     FROM transfers t LEFT JOIN transfers p ON p.id = t.pending_id ORDER BY t.id",
                )
                .at(path)?;
            let transfers: Vec<VerifyTransfer> = stmt
                .query_map([], |r| <_>::try_from(r))
                .at(path)?
                .collect::<rusqlite::Result<_>>()
                .at(path)?;
            let mut stmt = tx
                .prepare(
                    "SELECT id, kind, name, currency, debits_pending, debits_posted, credits_pending, credits_posted FROM accounts",
                )
                .at(path)?;
            let accounts: Vec<VerifyAccount> = stmt
                .query_map([], |r| <_>::try_from(r))
                .at(path)?
                .collect::<rusqlite::Result<_>>()
                .at(path)?;
            let open_holds: i64 = tx
                .row_cached(
                    "SELECT COUNT(*) FROM transfers t WHERE t.kind = 'hold' AND NOT EXISTS (SELECT 1 FROM transfers r WHERE r.pending_id = t.id)",
                    [],
                    |r| r.get(0),
                )
                .at(path)?;
            Ok(ledger_ops::verify(transfers, accounts, open_holds, problems))
        })
    }
}
