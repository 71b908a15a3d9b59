//! A tenant's statement, page by page: one line per transfer touching its account,
//! oldest first, as a keyset on the transfer sequence.

use rusqlite::{OptionalExtension, params};

use super::rows::{corrupt, tenant_exists};
use super::{At, SqliteCreditsStore};
use crate::domain::Entry;
use crate::payments::{LedgerError, StatementPage};
use crate::storage::ledger_ops::{self, EntryRaw, check_tenant, check_text, invalid};
use crate::storage::sqlite::cached::CachedStatements;

impl SqliteCreditsStore {
    pub(super) fn read_statement_page(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<StatementPage, LedgerError> {
        check_tenant(tenant)?;
        if let Some(a) = after {
            check_text("after", a, 200, false)?;
        }
        let limit = limit.max(1);
        // One row more than asked tells whether another page follows.
        let fetch = i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1);
        self.read(|tx, path| {
            if !tenant_exists(tx, path, tenant)? {
                return Err(LedgerError::UnknownTenant(tenant.to_owned()));
            }
            // The page starts after the sequence number of the transfer it is given,
            // which must be a line of this tenant's statement: another tenant's transfer
            // id positions nothing here.
            let after_seq: i64 = match after {
                None => 0,
                Some(uid) => tx
                    .row_cached(
                        "SELECT t.id FROM transfers t WHERE t.uid = ?1 AND t.kind <> 'write_off' \
                         AND (t.debit_account IN (SELECT id FROM accounts WHERE kind = 'tenant' AND name = ?2) \
                            OR t.credit_account IN (SELECT id FROM accounts WHERE kind = 'tenant' AND name = ?2))",
                        params![uid, tenant],
                        |r| r.get(0),
                    )
                    .optional()
                    .at(path)?
                    .ok_or_else(|| {
                        invalid("after", format!("{uid:?} is not a transfer on the statement of {tenant}"))
                    })?,
            };
            // Each side of the OR is a range scan of its account index (which ends in the
            // transfer's rowid) that stops at the LIMIT; the union of the two is sorted.
            let mut stmt = tx
                .prepare_cached(
                    "WITH acct AS (SELECT id FROM accounts WHERE kind = 'tenant' AND name = ?1), \
                     page AS ( \
                        SELECT id FROM (SELECT id FROM transfers WHERE debit_account IN (SELECT id FROM acct) \
                            AND kind <> 'write_off' AND id > ?2 ORDER BY id LIMIT ?3) \
                        UNION \
                        SELECT id FROM (SELECT id FROM transfers WHERE credit_account IN (SELECT id FROM acct) \
                            AND kind <> 'write_off' AND id > ?2 ORDER BY id LIMIT ?3)) \
                     SELECT t.created_at, t.kind, t.uid, t.amount, t.exact, t.currency, t.sandbox_id, t.note, \
                     COALESCE(p.uid, h.uid), p.amount \
                     FROM page JOIN transfers t ON t.id = page.id LEFT JOIN transfers p ON p.id = t.pending_id \
                     LEFT JOIN transfers h ON h.id = t.hold_id \
                     ORDER BY t.id LIMIT ?3",
                )
                .at(path)?;
            let mut raws: Vec<EntryRaw> = stmt
                .query_map(params![tenant, after_seq, fetch], |r| <_>::try_from(r))
                .at(path)?
                .collect::<rusqlite::Result<_>>()
                .at(path)?;
            let more = raws.len() > limit;
            raws.truncate(limit);
            let next = if more { raws.last().map(|r| r.2.clone()) } else { None };
            let c = |m: String| corrupt(path, m);
            let entries = raws
                .into_iter()
                .map(|raw| ledger_ops::entry(&c, raw))
                .collect::<Result<Vec<Entry>, LedgerError>>()?;
            Ok(StatementPage { entries, next })
        })
    }
}
