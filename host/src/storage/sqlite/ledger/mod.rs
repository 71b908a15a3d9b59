//! The embedded ledger ([`SqliteCreditsStore`]): one SQLite file in WAL mode, one
//! `BEGIN IMMEDIATE` transaction per write, and the WAL fsynced after the commit and
//! before the answer (group commit, see [`super::gate`]), so every acknowledged operation
//! survives a crash or power loss. Concurrent writers of one process queue on the file's
//! gate; other processes meet SQLite's own lock.
//!
//! By concern: this file opens the store and runs the idempotent write and the read
//! transactions; [`rows`] has the SQL the shared rules (`storage::ledger_ops`: grant,
//! hold, settle, void, replace) are written in, [`statement`] pages a tenant's lines,
//! [`verify`] reads what `ledger_ops::verify` checks, [`outbox`] hands out the meter
//! events stored with settlements.

mod outbox;
mod rows;
mod schema;
mod statement;
mod verify;

use std::path::{Path, PathBuf};
use std::time::Duration;

use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use rust_decimal::Decimal;

use super::cached::CachedStatements;
use super::gate::DbGate;
use super::{ConnectOptions, Schema, SchemaVersion, SqlError};
use crate::domain::{Balance, Currency, Grant, Money};
use crate::payments::{
    CreditsStore, Entry, Hold, LedgerError, OutboxEvent, OverdraftPolicy, Settlement,
    StatementPage, VerifyReport, Void,
};
use crate::storage::ledger_ops::{
    self, GrantOp, HOLD_SELECT, HoldOp, HoldRow, Op, ReplaceOp, SettleOp, Sums, VoidOp,
    check_tenant, now_ms,
};
use rows::{Tx, corrupt, query_holds, refuse_foreign};

/// How long a writer waits for another writer's transaction before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle connections kept for reuse.
const MAX_IDLE: usize = 16;

/// The ledger's schema: `PRAGMA user_version` counts the migrations applied.
const SCHEMA: Schema = Schema {
    label: "",
    version: SchemaVersion::UserVersion,
    migrations: schema::MIGRATIONS,
};

/// The SQLite-backed [`CreditsStore`]. Cheap to share (`Arc`); each call borrows a
/// pooled connection.
pub struct SqliteCreditsStore {
    path: PathBuf,
    policy: OverdraftPolicy,
    idle: Mutex<Vec<Connection>>,
    /// The file's writer lock and group commit (see [`super::gate`]).
    gate: std::sync::Arc<DbGate>,
}

impl std::fmt::Debug for SqliteCreditsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteCreditsStore")
            .field("path", &self.path)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl From<SqlError> for LedgerError {
    fn from(e: SqlError) -> Self {
        if e.corrupt {
            LedgerError::Corrupt {
                path: e.path,
                message: e.message,
            }
        } else {
            LedgerError::Storage {
                path: e.path,
                message: e.message,
            }
        }
    }
}

/// SQLite errors as [`LedgerError`]s naming the file.
trait At<T> {
    fn at(self, path: &Path) -> Result<T, LedgerError>;
}

impl<T> At<T> for rusqlite::Result<T> {
    fn at(self, path: &Path) -> Result<T, LedgerError> {
        self.map_err(|e| SqlError::from_sqlite(path, &e).into())
    }
}

/// A ledger connection: refuses a file that is not a ledger before anything (such as the
/// switch to WAL) writes to it; reading the header also catches files that are not SQLite.
fn connect(path: &Path) -> Result<Connection, LedgerError> {
    let options = ConnectOptions {
        create: true,
        busy_timeout: BUSY_TIMEOUT,
        foreign_keys: true,
    };
    super::connect(path, options, |conn| refuse_foreign(conn, path).map(|_| ()))
}

impl SqliteCreditsStore {
    /// Opens (creating if missing) the ledger at `path` with the default overdraft policy
    /// ([`OverdraftPolicy::WriteOff`]) and brings its schema up to date.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, LedgerError> {
        Self::open_with_policy(path, OverdraftPolicy::default())
    }

    /// Opens the ledger with an explicit overdraft policy.
    pub fn open_with_policy(
        path: impl AsRef<Path>,
        policy: OverdraftPolicy,
    ) -> Result<Self, LedgerError> {
        let path = path.as_ref().to_owned();
        let mut conn = connect(&path)?;
        // After connecting: the file exists, so every opener resolves the same gate.
        let gate = super::gate::gate(&path);
        let store = Self {
            path,
            policy,
            idle: Mutex::new(Vec::new()),
            gate,
        };
        store.migrate(&mut conn)?;
        store.idle.lock().push(conn);
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many times this process has fsynced the database's write-ahead log: every
    /// acknowledged write waited for one that started after its commit (concurrent writes
    /// share one).
    pub fn wal_syncs(&self) -> u64 {
        self.gate.syncs()
    }

    /// The overdraft policy settlements follow.
    pub fn policy(&self) -> OverdraftPolicy {
        self.policy
    }

    /// The effective `journal_mode` and `synchronous` (0 off, 1 normal, 2 full, 3 extra)
    /// of a pooled connection, so tests and `verify` can prove the durability settings.
    /// The ledger runs WAL with NORMAL and fsyncs the WAL itself before answering a write
    /// (see [`Self::wal_syncs`]).
    pub fn durability(&self) -> Result<(String, i64), LedgerError> {
        let path = self.path.clone();
        self.with_conn(|c| {
            let mode: String = c
                .row_cached("PRAGMA journal_mode", [], |r| r.get(0))
                .at(&path)?;
            let sync: i64 = c
                .row_cached("PRAGMA synchronous", [], |r| r.get(0))
                .at(&path)?;
            Ok((mode, sync))
        })
    }

    fn migrate(&self, conn: &mut Connection) -> Result<(), LedgerError> {
        let path = &self.path;
        // Re-read under the write lock: another process may have migrated meanwhile, and
        // a version 0 with tables is not a ledger.
        SCHEMA.migrate(conn, path, |tx, _| refuse_foreign(tx, path).map(|_| ()))
    }

    fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        let pooled = self.idle.lock().pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => connect(&self.path)?,
        };
        let out = f(&mut conn);
        let mut idle = self.idle.lock();
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
        out
    }

    /// Runs one idempotent write: `BEGIN IMMEDIATE`; if its key was used before, return
    /// its stored answer (same request) or refuse (different request); else run it,
    /// store its answer under the key, and commit.
    fn write<O: Op>(&self, op: &O) -> Result<O::Out, LedgerError> {
        let (operation, key, fingerprint) = (op.operation(), op.key(), op.fingerprint());
        let path = self.path.clone();
        // The writer lock before a pooled connection: writers waiting their turn do not
        // each hold (or open) a connection.
        let writer = self.gate.writer();
        let answer = self.with_conn(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).at(&path)?;
            let prior: Option<ledger_ops::Prior> = tx
                .row_cached(
                    "SELECT operation, fingerprint, response FROM requests WHERE ikey = ?1",
                    params![key],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .at(&path)?;
            if let Some(prior) = prior {
                return ledger_ops::replay(&|m| corrupt(&path, m), key, operation, fingerprint, prior);
            }
            let mut tx = Tx { tx, path: &path };
            let answer = op.run(&mut tx)?;
            let response = ledger_ops::response(&answer)?;
            tx.tx
                .exec_cached(
                    "INSERT INTO requests (ikey, operation, fingerprint, response, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![key, operation, fingerprint, response, now_ms()],
                )
                .at(&path)?;
            tx.tx.commit().at(&path)?;
            Ok(answer)
        })?;
        // A replay waits too: the write it repeats may be committed but not yet fsynced
        // (its own caller still waiting).
        let ticket = self.gate.committed(&writer);
        drop(writer);
        self.gate
            .wait_durable(ticket)
            .map_err(|e| LedgerError::Storage {
                path: self.path.clone(),
                message: format!("could not fsync the write-ahead log: {e}"),
            })?;
        Ok(answer)
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>, &Path) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        let path = self.path.clone();
        // A deferred transaction: one consistent snapshot for multi-statement reads.
        self.with_conn(|conn| {
            let tx = conn.transaction().at(&path)?;
            f(&tx, &path)
        })
    }

    fn balances_where(
        conn: &Connection,
        path: &Path,
        tenant: Option<&str>,
    ) -> Result<Vec<Balance>, LedgerError> {
        let mut stmt = conn
            .prepare_cached(
                "SELECT name, currency, debits_pending, debits_posted, credits_posted \
                 FROM accounts WHERE kind = 'tenant' AND (?1 IS NULL OR name = ?1) ORDER BY name, currency",
            )
            .at(path)?;
        let rows: Vec<(String, String, Sums)> = stmt
            .query_map(params![tenant], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    Sums {
                        debits_pending: r.get(2)?,
                        debits_posted: r.get(3)?,
                        credits_posted: r.get(4)?,
                    },
                ))
            })
            .at(path)?
            .collect::<rusqlite::Result<_>>()
            .at(path)?;
        let c = |m: String| corrupt(path, m);
        rows.into_iter()
            .map(|(name, cur, s)| ledger_ops::balance(&c, name, &cur, s))
            .collect()
    }
}

impl CreditsStore for SqliteCreditsStore {
    fn grant(
        &self,
        tenant: &str,
        amount: &Money,
        note: &str,
        idempotency_key: &str,
    ) -> Result<Grant, LedgerError> {
        self.write(&GrantOp::new(tenant, amount, note, idempotency_key)?)
    }

    fn hold(
        &self,
        tenant: &str,
        amount: &Money,
        sandbox_id: &str,
        extension: &str,
        idempotency_key: &str,
    ) -> Result<Hold, LedgerError> {
        self.write(&HoldOp::new(
            tenant,
            amount,
            sandbox_id,
            extension,
            idempotency_key,
        )?)
    }

    fn balance(&self, tenant: &str, currency: &Currency) -> Result<Balance, LedgerError> {
        check_tenant(tenant)?;
        let all = self.balances(Some(tenant))?;
        Ok(all
            .into_iter()
            .find(|b| &b.currency == currency)
            .unwrap_or_else(|| Balance {
                tenant: tenant.to_owned(),
                currency: currency.clone(),
                posted: Decimal::ZERO,
                held: Decimal::ZERO,
                available: Decimal::ZERO,
            }))
    }

    fn balances(&self, tenant: Option<&str>) -> Result<Vec<Balance>, LedgerError> {
        if let Some(t) = tenant {
            check_tenant(t)?;
        }
        self.read(|tx, path| {
            let rows = Self::balances_where(tx, path, tenant)?;
            match tenant {
                Some(t) if rows.is_empty() => Err(LedgerError::UnknownTenant(t.to_owned())),
                _ => Ok(rows),
            }
        })
    }

    fn hold_for_sandbox(&self, sandbox_id: &str) -> Result<Option<Hold>, LedgerError> {
        self.read(|tx, path| {
            let sql = format!("{HOLD_SELECT} AND t.sandbox_id = ?1 ORDER BY t.id DESC LIMIT 1");
            Ok(query_holds(tx, path, &sql, params![sandbox_id])?
                .first()
                .map(HoldRow::to_hold))
        })
    }

    fn open_holds(&self) -> Result<Vec<Hold>, LedgerError> {
        self.read(|tx, path| {
            let sql = format!("{HOLD_SELECT} AND r.id IS NULL ORDER BY t.id");
            Ok(query_holds(tx, path, &sql, [])?
                .iter()
                .map(HoldRow::to_hold)
                .collect())
        })
    }

    fn settle(
        &self,
        hold_id: &str,
        actual: &Money,
        idempotency_key: &str,
        event: Option<OutboxEvent>,
    ) -> Result<Settlement, LedgerError> {
        self.write(&SettleOp::new(
            hold_id,
            actual,
            idempotency_key,
            event,
            self.policy,
        )?)
    }

    fn void(&self, hold_id: &str, idempotency_key: &str) -> Result<Void, LedgerError> {
        self.write(&VoidOp::new(hold_id, idempotency_key)?)
    }

    fn replace_hold(
        &self,
        old_hold_id: &str,
        new_amount: &Money,
        idempotency_key: &str,
    ) -> Result<Hold, LedgerError> {
        self.write(&ReplaceOp::new(old_hold_id, new_amount, idempotency_key)?)
    }

    fn statement(&self, tenant: &str) -> Result<Vec<Entry>, LedgerError> {
        Ok(self.read_statement_page(tenant, None, usize::MAX)?.entries)
    }

    fn statement_page(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<StatementPage, LedgerError> {
        self.read_statement_page(tenant, after, limit)
    }

    fn verify(&self) -> Result<VerifyReport, LedgerError> {
        self.run_verify()
    }

    fn pending_events(&self, limit: usize) -> Result<Vec<OutboxEvent>, LedgerError> {
        self.outbox_pending(limit)
    }

    fn mark_delivered(&self, ids: &[String]) -> Result<(), LedgerError> {
        self.outbox_mark_delivered(ids)
    }

    fn outbox_lag(&self) -> Result<(u64, Option<Duration>), LedgerError> {
        self.outbox_backlog()
    }
}

#[cfg(test)]
mod tests;
