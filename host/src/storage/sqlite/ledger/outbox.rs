//! The transactional outbox: meter events stored with their settlement, handed out
//! oldest first until marked delivered.

use std::time::Duration;

use rusqlite::{TransactionBehavior, params};

use super::{At, SqliteCreditsStore};
use crate::payments::{LedgerError, OutboxEvent};
use crate::storage::ledger_ops::now_ms;
use crate::storage::sqlite::cached::CachedStatements;

impl SqliteCreditsStore {
    pub(super) fn outbox_pending(&self, limit: usize) -> Result<Vec<OutboxEvent>, LedgerError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|tx, path| {
            let mut stmt = tx
                .prepare_cached("SELECT id, payload FROM outbox WHERE delivered_at IS NULL ORDER BY seq LIMIT ?1")
                .at(path)?;
            stmt.query_map(params![limit], |r| Ok(OutboxEvent { id: r.get(0)?, payload: r.get(1)? }))
                .at(path)?
                .collect::<rusqlite::Result<_>>()
                .at(path)
        })
    }

    pub(super) fn outbox_mark_delivered(&self, ids: &[String]) -> Result<(), LedgerError> {
        let path = self.path.clone();
        // Not waited durable: a lost mark only hands the events to the sinks again, and
        // sinks deduplicate by id.
        let _writer = self.gate.writer();
        self.with_conn(|conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .at(&path)?;
            let at = now_ms();
            for id in ids {
                tx.exec_cached(
                    "UPDATE outbox SET delivered_at = ?2 WHERE id = ?1 AND delivered_at IS NULL",
                    params![id, at],
                )
                .at(&path)?;
            }
            tx.commit().at(&path)
        })
    }

    pub(super) fn outbox_backlog(&self) -> Result<(u64, Option<Duration>), LedgerError> {
        self.read(|tx, path| {
            let (count, oldest): (i64, Option<i64>) = tx
                .row_cached(
                    "SELECT COUNT(*), MIN(created_at) FROM outbox WHERE delivered_at IS NULL",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .at(path)?;
            let age =
                oldest.map(|ms| Duration::from_millis(u64::try_from(now_ms() - ms).unwrap_or(0)));
            Ok((u64::try_from(count).unwrap_or(0), age))
        })
    }
}
