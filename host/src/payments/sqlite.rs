//! The embedded ledger: one SQLite file in WAL mode, one `BEGIN IMMEDIATE` transaction
//! per write, and the WAL fsynced after the commit and before the answer (group commit,
//! see `crate::sqlite_gate`), so every acknowledged operation survives a crash or power
//! loss. Concurrent writers of one process queue on the file's gate; other processes meet
//! SQLite's own lock.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use rusqlite::{
    Connection, ErrorCode, OpenFlags, OptionalExtension, Transaction, TransactionBehavior, params,
};
use rust_decimal::Decimal;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::LedgerError;
use super::money::{Rounding, Units, from_units, to_units};
use super::schema::MIGRATIONS;
use super::store::{
    Balance, CreditsStore, Entry, EntryKind, Grant, Hold, HoldState, OutboxEvent, OverdraftPolicy,
    Settlement, StatementPage, VerifyReport, Void, validate_tenant,
};
use crate::money::{Currency, Money};
use crate::sqlite_cached::CachedStatements;
use crate::sqlite_gate::DbGate;

/// How long a writer waits for another writer's transaction before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle connections kept for reuse.
const MAX_IDLE: usize = 16;

const GRANTS_ACCOUNT: &str = "grants";
const WRITE_OFF_ACCOUNT: &str = "write-off";

/// The SQLite-backed [`CreditsStore`]. Cheap to share (`Arc`); each call borrows a
/// pooled connection.
pub struct SqliteCreditsStore {
    path: PathBuf,
    policy: OverdraftPolicy,
    idle: Mutex<Vec<Connection>>,
    /// The file's writer lock and group commit (see `crate::sqlite_gate`).
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

/// Maps SQLite errors to [`LedgerError`]s naming the file.
trait AtPath<T> {
    fn at(self, path: &Path) -> Result<T, LedgerError>;
}

impl<T> AtPath<T> for rusqlite::Result<T> {
    fn at(self, path: &Path) -> Result<T, LedgerError> {
        self.map_err(|e| sql_error(path, e))
    }
}

fn sql_error(path: &Path, e: rusqlite::Error) -> LedgerError {
    let path = path.to_owned();
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => LedgerError::Corrupt {
            path,
            message: e.to_string(),
        },
        Some(ErrorCode::ReadOnly) => LedgerError::Storage {
            path,
            message: format!("{e} (the file or its folder is read-only; check permissions)"),
        },
        Some(ErrorCode::CannotOpen) => LedgerError::Storage {
            path,
            message: format!("{e} (does the folder exist, and may this user write to it?)"),
        },
        _ => LedgerError::Storage {
            path,
            message: e.to_string(),
        },
    }
}

fn corrupt(path: &Path, message: impl Into<String>) -> LedgerError {
    LedgerError::Corrupt {
        path: path.to_owned(),
        message: message.into(),
    }
}

fn invalid(what: &'static str, reason: impl Into<String>) -> LedgerError {
    LedgerError::InvalidInput {
        what,
        reason: reason.into(),
    }
}

fn check_text(
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

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn money(units: Units, currency: &Currency) -> Money {
    Money {
        amount: from_units(units),
        currency: currency.clone(),
    }
}

/// An account's cached sums.
#[derive(Debug, Clone, Copy)]
struct Sums {
    debits_pending: i64,
    debits_posted: i64,
    credits_posted: i64,
}

impl Sums {
    /// Tenant view (credit-normal): posted = credits − debits.
    fn posted(&self) -> Option<i64> {
        self.credits_posted.checked_sub(self.debits_posted)
    }
    fn available(&self) -> Option<i64> {
        self.posted()?.checked_sub(self.debits_pending)
    }
}

/// A hold as stored.
struct HoldRow {
    id: i64,
    uid: String,
    tenant: String,
    currency: Currency,
    sandbox_id: String,
    extension: String,
    amount: i64,
    exact: Decimal,
    debit: i64,
    credit: i64,
    at: DateTime<Utc>,
    state: HoldState,
}

impl HoldRow {
    fn to_hold(&self) -> Hold {
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

const HOLD_SELECT: &str = "SELECT t.id, t.uid, a.name, t.currency, t.sandbox_id, t.extension, t.amount, \
     t.exact, t.debit_account, t.credit_account, t.created_at, r.kind \
     FROM transfers t JOIN accounts a ON a.id = t.debit_account \
     LEFT JOIN transfers r ON r.pending_id = t.id WHERE t.kind = 'hold'";

/// A transfer about to be inserted.
struct NewTransfer<'a> {
    kind: &'static str,
    ikey: String,
    debit: i64,
    credit: i64,
    amount: i64,
    exact: Option<Decimal>,
    currency: &'a Currency,
    pending_id: Option<i64>,
    hold_id: Option<i64>,
    sandbox_id: Option<&'a str>,
    extension: Option<&'a str>,
    note: Option<&'a str>,
    at: i64,
}

/// One write transaction plus the file it is on (for error messages).
struct Tx<'c> {
    tx: Transaction<'c>,
    path: &'c Path,
}

impl Tx<'_> {
    fn account_id(
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

    fn ensure_account(
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

    fn sums(&self, account: i64) -> Result<Sums, LedgerError> {
        sums(&self.tx, self.path, account)
    }

    fn insert(&self, t: NewTransfer<'_>) -> Result<(i64, String), LedgerError> {
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
    fn apply(&self, debit: i64, credit: i64, pending: i64, posted: i64) -> Result<(), LedgerError> {
        for (sql, account) in [
            (
                "UPDATE accounts SET debits_pending = debits_pending + ?2, debits_posted = debits_posted + ?3 WHERE id = ?1",
                debit,
            ),
            (
                "UPDATE accounts SET credits_pending = credits_pending + ?2, credits_posted = credits_posted + ?3 WHERE id = ?1",
                credit,
            ),
        ] {
            self.tx
                .exec_cached(sql, params![account, pending, posted])
                .at(self.path)?;
        }
        Ok(())
    }

    fn hold(&self, hold_id: &str) -> Result<HoldRow, LedgerError> {
        let sql = format!("{HOLD_SELECT} AND t.uid = ?1");
        query_holds(&self.tx, self.path, &sql, params![hold_id])?
            .pop()
            .ok_or_else(|| LedgerError::HoldNotFound(hold_id.to_owned()))
    }
}

/// The ledger schema version of the open database, refusing a database that has tables
/// but is not a ledger (version 0 with tables).
fn refuse_foreign(conn: &Connection, path: &Path) -> Result<i64, LedgerError> {
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

fn connect(path: &Path) -> Result<Connection, LedgerError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).at(path)?;
    conn.busy_timeout(BUSY_TIMEOUT).at(path)?;
    conn.set_prepared_statement_cache_capacity(crate::sqlite_cached::STATEMENT_CACHE);
    // Refuse a file that is not a ledger before anything (such as the switch to WAL)
    // writes to it. Reading the header also catches files that are not SQLite at all.
    refuse_foreign(&conn, path)?;
    // WAL: readers never block the writer and a commit is one sequential append.
    // synchronous=NORMAL: the commit itself does not fsync; `write` fsyncs the WAL
    // after the writer lock is released and before answering (group commit), which is
    // what FULL would do inside the lock.
    let mode: String = conn
        .row_cached("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .at(path)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(LedgerError::Storage {
            path: path.to_path_buf(),
            message: format!("could not switch the journal to WAL (it is {mode:?})"),
        });
    }
    // A small page cache: another connection's commit empties it anyway (SQLite drops a
    // connection's cache when the file changed under it), and the service keeps up to
    // `MAX_IDLE` connections; the OS page cache holds the file.
    conn.execute_batch(
        "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA cache_size = -1024;",
    )
    .at(path)?;
    Ok(conn)
}

fn sums(conn: &Connection, path: &Path, account: i64) -> Result<Sums, LedgerError> {
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

fn parse_time(path: &Path, ms: i64) -> Result<DateTime<Utc>, LedgerError> {
    DateTime::from_timestamp_millis(ms).ok_or_else(|| corrupt(path, format!("bad timestamp {ms}")))
}

fn parse_currency(path: &Path, code: &str) -> Result<Currency, LedgerError> {
    Currency::new(code).map_err(|e| corrupt(path, e.to_string()))
}

fn parse_exact(path: &Path, s: Option<String>) -> Result<Option<Decimal>, LedgerError> {
    s.map(|s| {
        Decimal::from_str(&s).map_err(|e| corrupt(path, format!("bad exact amount {s:?}: {e}")))
    })
    .transpose()
}

fn query_holds(
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
        .query_map(args, |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
                r.get(9)?,
                r.get(10)?,
                r.get(11)?,
            ))
        })
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
        let gate = crate::sqlite_gate::gate(&path);
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
        let version: i64 = conn
            .row_cached("PRAGMA user_version", [], |r| r.get(0))
            .at(path)?;
        let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
        if version == known {
            return Ok(());
        }
        if version > known {
            return Err(corrupt(
                path,
                format!("schema version {version} is newer than this build understands ({known})"),
            ));
        }
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .at(path)?;
        // Re-read under the write lock: another process may have migrated meanwhile.
        let version = refuse_foreign(&tx, path)?;
        for (i, sql) in MIGRATIONS
            .iter()
            .enumerate()
            .skip(usize::try_from(version).unwrap_or(0))
        {
            tx.execute_batch(sql).at(path)?;
            tx.pragma_update(None, "user_version", i + 1).at(path)?;
        }
        tx.commit().at(path)
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

    /// Runs one idempotent write: `BEGIN IMMEDIATE`; if `key` was used before, return
    /// its stored answer (same request) or refuse (different request); else run `f`,
    /// store its answer under `key`, and commit.
    fn write<T: Serialize + DeserializeOwned>(
        &self,
        operation: &'static str,
        key: &str,
        fingerprint: &str,
        f: impl FnOnce(&Tx<'_>) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        check_text("idempotency key", key, 256, false)?;
        let path = self.path.clone();
        // The writer lock before a pooled connection: writers waiting their turn do not
        // each hold (or open) a connection.
        let writer = self.gate.writer();
        let answer = self.with_conn(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).at(&path)?;
            let prior: Option<(String, String, String)> = tx
                .row_cached(
                    "SELECT operation, fingerprint, response FROM requests WHERE ikey = ?1",
                    params![key],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .at(&path)?;
            if let Some((op, fp, response)) = prior {
                if op != operation || fp != fingerprint {
                    return Err(LedgerError::IdempotencyConflict { key: key.to_owned(), operation: op });
                }
                return serde_json::from_str(&response)
                    .map_err(|e| corrupt(&path, format!("stored answer for key {key:?}: {e}")));
            }
            let tx = Tx { tx, path: &path };
            let answer = f(&tx)?;
            let response = serde_json::to_string(&answer)
                .map_err(|e| invalid("answer", e.to_string()))?;
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

    fn tenant_exists(conn: &Connection, path: &Path, tenant: &str) -> Result<bool, LedgerError> {
        conn.row_cached(
            "SELECT EXISTS (SELECT 1 FROM accounts WHERE kind = 'tenant' AND name = ?1)",
            params![tenant],
            |r| r.get(0),
        )
        .at(path)
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
        rows.into_iter()
            .map(|(name, cur, s)| {
                let overflow = || corrupt(path, format!("balance of {name} overflows"));
                Ok(Balance {
                    currency: parse_currency(path, &cur)?,
                    posted: from_units(s.posted().ok_or_else(overflow)?),
                    held: from_units(s.debits_pending),
                    available: from_units(s.available().ok_or_else(overflow)?),
                    tenant: name,
                })
            })
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
        validate_tenant(tenant)?;
        check_text("note", note, 1024, true)?;
        let units = to_units(amount.amount, Rounding::Exact)
            .map_err(|e| invalid("amount", e.to_string()))?;
        if units.units <= 0 {
            return Err(invalid("amount", "a grant must be greater than zero"));
        }
        let cur = &amount.currency;
        let fingerprint = format!("{tenant}\n{cur}\n{}\n{note}", units.units);
        self.write("grant", idempotency_key, &fingerprint, |tx| {
            let at = now_ms();
            let source = tx.ensure_account("grants", GRANTS_ACCOUNT, cur, at)?;
            let account = tx.ensure_account("tenant", tenant, cur, at)?;
            let (_, uid) = tx.insert(NewTransfer {
                kind: "grant",
                ikey: format!("grant:{idempotency_key}"),
                debit: source,
                credit: account,
                amount: units.units,
                exact: Some(amount.amount),
                currency: cur,
                pending_id: None,
                hold_id: None,
                sandbox_id: None,
                extension: None,
                note: Some(note),
                at,
            })?;
            tx.apply(source, account, 0, units.units)?;
            tracing::info!(tenant, amount = %money(units.units, cur), transfer = %uid, "credits granted");
            Ok(Grant {
                transfer_id: uid,
                tenant: tenant.to_owned(),
                amount: money(units.units, cur),
                note: note.to_owned(),
                at: parse_time(tx.path, at)?,
            })
        })
    }

    fn hold(
        &self,
        tenant: &str,
        amount: &Money,
        sandbox_id: &str,
        extension: &str,
        idempotency_key: &str,
    ) -> Result<Hold, LedgerError> {
        validate_tenant(tenant)?;
        check_text("sandbox id", sandbox_id, 256, false)?;
        check_text("extension", extension, 128, false)?;
        let rounded = to_units(amount.amount, Rounding::Hold)
            .map_err(|e| invalid("amount", e.to_string()))?;
        let cur = &amount.currency;
        let fingerprint = format!(
            "{tenant}\n{cur}\n{}\n{sandbox_id}\n{extension}",
            amount.amount.normalize()
        );
        self.write("hold", idempotency_key, &fingerprint, |tx| {
            let at = now_ms();
            let Some(account) = tx.account_id("tenant", tenant, cur)? else {
                return Err(if Self::tenant_exists(&tx.tx, tx.path, tenant)? {
                    LedgerError::InsufficientCredits { need: money(rounded.units, cur), available: money(0, cur) }
                } else {
                    LedgerError::UnknownTenant(tenant.to_owned())
                });
            };
            let available = tx
                .sums(account)?
                .available()
                .ok_or_else(|| corrupt(tx.path, format!("balance of {tenant} overflows")))?;
            if rounded.units > available {
                return Err(LedgerError::InsufficientCredits {
                    need: money(rounded.units, cur),
                    available: money(available, cur),
                });
            }
            let revenue = tx.ensure_account("revenue", extension, cur, at)?;
            let (_, uid) = tx.insert(NewTransfer {
                kind: "hold",
                ikey: format!("hold:{idempotency_key}"),
                debit: account,
                credit: revenue,
                amount: rounded.units,
                exact: Some(amount.amount),
                currency: cur,
                pending_id: None,
                hold_id: None,
                sandbox_id: Some(sandbox_id),
                extension: Some(extension),
                note: None,
                at,
            })?;
            tx.apply(account, revenue, rounded.units, 0)?;
            tracing::debug!(tenant, sandbox_id, extension, hold = %uid, amount = %money(rounded.units, cur), "credits held");
            Ok(Hold {
                id: uid,
                tenant: tenant.to_owned(),
                sandbox_id: sandbox_id.to_owned(),
                extension: extension.to_owned(),
                amount: money(rounded.units, cur),
                exact: amount.amount,
                state: HoldState::Open,
                at: parse_time(tx.path, at)?,
            })
        })
    }

    fn settle(
        &self,
        hold_id: &str,
        actual: &Money,
        idempotency_key: &str,
        event: Option<OutboxEvent>,
    ) -> Result<Settlement, LedgerError> {
        let charge = to_units(actual.amount, Rounding::Charge)
            .map_err(|e| invalid("amount", e.to_string()))?;
        if let Some(ev) = &event {
            check_text("event id", &ev.id, 256, false)?;
        }
        let fingerprint = format!(
            "{hold_id}\n{}\n{}",
            actual.currency,
            actual.amount.normalize()
        );
        let policy = self.policy;
        self.write("settle", idempotency_key, &fingerprint, |tx| {
            let at = now_ms();
            let hold = tx.hold(hold_id)?;
            if hold.state != HoldState::Open {
                return Err(LedgerError::HoldAlreadyResolved { hold_id: hold.uid, state: hold.state.to_string() });
            }
            let cur = &hold.currency;
            if &actual.currency != cur {
                return Err(invalid("amount", format!("hold {hold_id} is in {cur}, the charge in {}", actual.currency)));
            }
            let posted = charge.units.min(hold.amount);
            let (_, uid) = tx.insert(NewTransfer {
                kind: "post",
                ikey: format!("settle:{idempotency_key}"),
                debit: hold.debit,
                credit: hold.credit,
                amount: posted,
                exact: Some(actual.amount),
                currency: cur,
                pending_id: Some(hold.id),
                hold_id: None,
                sandbox_id: Some(&hold.sandbox_id),
                extension: Some(&hold.extension),
                note: None,
                at,
            })?;
            tx.apply(hold.debit, hold.credit, -hold.amount, posted)?;
            let released = hold.amount - posted;
            let excess = charge.units - posted;
            let (mut covered, mut written_off, mut debt) = (0, 0, 0);
            if excess > 0 {
                let available = tx
                    .sums(hold.debit)?
                    .available()
                    .ok_or_else(|| corrupt(tx.path, format!("balance of {} overflows", hold.tenant)))?;
                covered = excess.min(available.max(0));
                let rest = excess - covered;
                match policy {
                    OverdraftPolicy::WriteOff => written_off = rest,
                    OverdraftPolicy::Debt => debt = rest,
                }
                let extra = [
                    ("overdraft", covered, hold.debit),
                    ("debt", debt, hold.debit),
                    (
                        "write_off",
                        written_off,
                        if written_off > 0 { tx.ensure_account("write_off", WRITE_OFF_ACCOUNT, cur, at)? } else { 0 },
                    ),
                ];
                for (kind, amount, debit) in extra {
                    if amount == 0 {
                        continue;
                    }
                    tx.insert(NewTransfer {
                        kind,
                        ikey: format!("settle:{idempotency_key}#{kind}"),
                        debit,
                        credit: hold.credit,
                        amount,
                        exact: None,
                        currency: cur,
                        pending_id: None,
                        hold_id: Some(hold.id),
                        sandbox_id: Some(&hold.sandbox_id),
                        extension: Some(&hold.extension),
                        note: None,
                        at,
                    })?;
                    tx.apply(debit, hold.credit, 0, amount)?;
                }
                tracing::warn!(
                    tenant = %hold.tenant, sandbox_id = %hold.sandbox_id, hold = %hold.uid,
                    excess = %money(excess, cur), written_off = %money(written_off, cur), debt = %money(debt, cur),
                    "settlement exceeded its hold"
                );
            }
            let event_id = match event {
                Some(ev) => {
                    let taken: bool = tx
                        .tx
                        .row_cached("SELECT EXISTS (SELECT 1 FROM outbox WHERE id = ?1)", params![ev.id], |r| r.get(0))
                        .at(tx.path)?;
                    if taken {
                        return Err(invalid("event id", format!("{:?} is already in the outbox", ev.id)));
                    }
                    tx.tx
                        .exec_cached(
                            "INSERT INTO outbox (id, payload, created_at) VALUES (?1, ?2, ?3)",
                            params![ev.id, ev.payload, at],
                        )
                        .at(tx.path)?;
                    Some(ev.id)
                }
                None => None,
            };
            Ok(Settlement {
                hold_id: hold.uid.clone(),
                transfer_id: uid,
                tenant: hold.tenant.clone(),
                held: money(hold.amount, cur),
                exact: actual.amount,
                charged: money(charge.units, cur),
                from_tenant: money(posted + covered + debt, cur),
                released: money(released, cur),
                written_off: money(written_off, cur),
                debt: money(debt, cur),
                event_id,
            })
        })
    }

    fn void(&self, hold_id: &str, idempotency_key: &str) -> Result<Void, LedgerError> {
        self.write("void", idempotency_key, hold_id, |tx| {
            let hold = tx.hold(hold_id)?;
            if hold.state != HoldState::Open {
                return Err(LedgerError::HoldAlreadyResolved {
                    hold_id: hold.uid,
                    state: hold.state.to_string(),
                });
            }
            let (_, uid) = tx.insert(NewTransfer {
                kind: "void",
                ikey: format!("void:{idempotency_key}"),
                debit: hold.debit,
                credit: hold.credit,
                amount: hold.amount,
                exact: None,
                currency: &hold.currency,
                pending_id: Some(hold.id),
                hold_id: None,
                sandbox_id: Some(&hold.sandbox_id),
                extension: Some(&hold.extension),
                note: None,
                at: now_ms(),
            })?;
            tx.apply(hold.debit, hold.credit, -hold.amount, 0)?;
            Ok(Void {
                hold_id: hold.uid,
                transfer_id: uid,
                released: money(hold.amount, &hold.currency),
            })
        })
    }

    fn replace_hold(
        &self,
        old_hold_id: &str,
        new_amount: &Money,
        idempotency_key: &str,
    ) -> Result<Hold, LedgerError> {
        let rounded = to_units(new_amount.amount, Rounding::Hold)
            .map_err(|e| invalid("amount", e.to_string()))?;
        let cur = &new_amount.currency;
        let fingerprint = format!("{old_hold_id}\n{cur}\n{}", new_amount.amount.normalize());
        self.write("replace_hold", idempotency_key, &fingerprint, |tx| {
            let at = now_ms();
            let old = tx.hold(old_hold_id)?;
            if old.state != HoldState::Open {
                return Err(LedgerError::HoldAlreadyResolved {
                    hold_id: old.uid,
                    state: old.state.to_string(),
                });
            }
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
                .sums(old.debit)?
                .available()
                .and_then(|a| a.checked_add(old.amount))
                .ok_or_else(|| corrupt(tx.path, format!("balance of {} overflows", old.tenant)))?;
            if rounded.units > available {
                return Err(LedgerError::InsufficientCredits {
                    need: money(rounded.units, cur),
                    available: money(available, cur),
                });
            }
            tx.insert(NewTransfer {
                kind: "void",
                ikey: format!("replace:{idempotency_key}#void"),
                debit: old.debit,
                credit: old.credit,
                amount: old.amount,
                exact: None,
                currency: cur,
                pending_id: Some(old.id),
                hold_id: None,
                sandbox_id: Some(&old.sandbox_id),
                extension: Some(&old.extension),
                note: None,
                at,
            })?;
            let (_, uid) = tx.insert(NewTransfer {
                kind: "hold",
                ikey: format!("replace:{idempotency_key}#hold"),
                debit: old.debit,
                credit: old.credit,
                amount: rounded.units,
                exact: Some(new_amount.amount),
                currency: cur,
                pending_id: None,
                hold_id: None,
                sandbox_id: Some(&old.sandbox_id),
                extension: Some(&old.extension),
                note: None,
                at,
            })?;
            tx.apply(old.debit, old.credit, rounded.units - old.amount, 0)?;
            tracing::debug!(
                tenant = %old.tenant, sandbox_id = %old.sandbox_id, extension = %old.extension,
                old_hold = %old.uid, hold = %uid, amount = %money(rounded.units, cur),
                "hold replaced"
            );
            Ok(Hold {
                id: uid,
                tenant: old.tenant.clone(),
                sandbox_id: old.sandbox_id.clone(),
                extension: old.extension.clone(),
                amount: money(rounded.units, cur),
                exact: new_amount.amount,
                state: HoldState::Open,
                at: parse_time(tx.path, at)?,
            })
        })
    }

    fn balance(&self, tenant: &str, currency: &Currency) -> Result<Balance, LedgerError> {
        validate_tenant(tenant)?;
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
            validate_tenant(t)?;
        }
        self.read(|tx, path| {
            let rows = Self::balances_where(tx, path, tenant)?;
            match tenant {
                Some(t) if rows.is_empty() => Err(LedgerError::UnknownTenant(t.to_owned())),
                _ => Ok(rows),
            }
        })
    }

    fn statement(&self, tenant: &str) -> Result<Vec<Entry>, LedgerError> {
        Ok(self.statement_page(tenant, None, usize::MAX)?.entries)
    }

    fn statement_page(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<StatementPage, LedgerError> {
        validate_tenant(tenant)?;
        if let Some(a) = after {
            check_text("after", a, 200, false)?;
        }
        let limit = limit.max(1);
        // One row more than asked tells whether another page follows.
        let fetch = i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1);
        self.read(|tx, path| {
            if !Self::tenant_exists(tx, path, tenant)? {
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
            type Raw = (i64, String, String, i64, Option<String>, String, Option<String>, Option<String>, Option<String>, Option<i64>, Option<String>);
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
                     COALESCE(p.uid, h.uid), p.amount, NULL \
                     FROM page JOIN transfers t ON t.id = page.id LEFT JOIN transfers p ON p.id = t.pending_id \
                     LEFT JOIN transfers h ON h.id = t.hold_id \
                     ORDER BY t.id LIMIT ?3",
                )
                .at(path)?;
            let mut raws: Vec<Raw> = stmt
                .query_map(params![tenant, after_seq, fetch], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                        r.get(8)?,
                        r.get(9)?,
                        r.get(10)?,
                    ))
                })
                .at(path)?
                .collect::<rusqlite::Result<_>>()
                .at(path)?;
            let more = raws.len() > limit;
            raws.truncate(limit);
            let next = if more { raws.last().map(|r| r.2.clone()) } else { None };
            let entries = raws.into_iter()
                .map(|(at, kind, uid, amount, exact, cur, sandbox, note, related, pending_amount, _)| {
                    let a = from_units(amount);
                    let (kind, posted, held, hold_id) = match kind.as_str() {
                        "grant" => (EntryKind::Grant, a, Decimal::ZERO, None),
                        "hold" => (EntryKind::Hold, Decimal::ZERO, a, Some(uid.clone())),
                        "post" => (EntryKind::Charge, -a, -from_units(pending_amount.unwrap_or(0)), related),
                        "void" => (EntryKind::Void, Decimal::ZERO, -a, related),
                        "overdraft" => (EntryKind::Overdraft, -a, Decimal::ZERO, related),
                        "debt" => (EntryKind::Debt, -a, Decimal::ZERO, related),
                        other => return Err(corrupt(path, format!("unknown transfer kind {other:?}"))),
                    };
                    Ok(Entry {
                        at: parse_time(path, at)?,
                        kind,
                        transfer_id: uid,
                        hold_id,
                        currency: parse_currency(path, &cur)?,
                        posted_delta: posted,
                        held_delta: held,
                        exact: parse_exact(path, exact)?,
                        sandbox_id: sandbox,
                        note,
                    })
                })
                .collect::<Result<Vec<Entry>, LedgerError>>()?;
            Ok(StatementPage { entries, next })
        })
    }

    fn verify(&self) -> Result<VerifyReport, LedgerError> {
        self.read(|tx, path| {
            let mut problems = Vec::new();
            let check: String = tx.row_cached("PRAGMA quick_check", [], |r| r.get(0)).at(path)?;
            if check != "ok" {
                problems.push(format!("SQLite quick_check: {check}"));
            }
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
            type Raw = (String, String, i64, i64, i64, Option<String>, Option<i64>, Option<i64>, Option<i64>);
            let mut stmt = tx
                .prepare(
                    "SELECT t.uid, t.kind, t.debit_account, t.credit_account, t.amount, p.kind, p.amount, \
                     p.debit_account, p.credit_account \
                     FROM transfers t LEFT JOIN transfers p ON p.id = t.pending_id ORDER BY t.id",
                )
                .at(path)?;
            let rows: Vec<Raw> = stmt
                .query_map([], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?))
                })
                .at(path)?
                .collect::<rusqlite::Result<_>>()
                .at(path)?;
            let transfers = rows.len() as u64;
            for (uid, kind, d, c, amount, pkind, pamount, pd, pc) in rows {
                let a = i128::from(amount);
                let (mut pend, mut post) = (0i128, 0i128);
                match kind.as_str() {
                    "hold" => pend = a,
                    "post" | "void" => {
                        let (Some("hold"), Some(held), Some(pd), Some(pc)) = (pkind.as_deref(), pamount, pd, pc) else {
                            problems.push(format!("transfer {uid} ({kind}) does not resolve a hold"));
                            continue;
                        };
                        if (pd, pc) != (d, c) {
                            problems.push(format!("transfer {uid} ({kind}) moves between other accounts than its hold"));
                        }
                        if kind == "void" && amount != held {
                            problems.push(format!("void {uid} releases {amount} units of a {held}-unit hold"));
                        }
                        if kind == "post" && amount > held {
                            problems.push(format!("post {uid} posts {amount} units of a {held}-unit hold"));
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
            let mut stmt = tx
                .prepare(
                    "SELECT id, kind, name, currency, debits_pending, debits_posted, credits_pending, credits_posted FROM accounts",
                )
                .at(path)?;
            type Acc = (i64, String, String, String, i64, i64, i64, i64);
            let accounts: Vec<Acc> = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?)))
                .at(path)?
                .collect::<rusqlite::Result<_>>()
                .at(path)?;
            let mut totals: HashMap<String, [i128; 4]> = HashMap::new();
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
                let t = totals.entry(cur.clone()).or_default();
                for (slot, v) in t.iter_mut().zip(derived) {
                    *slot += v;
                }
                if kind == "tenant" {
                    let available = f.cpost - f.dpost - f.dpend;
                    if available < 0 && !f.debt {
                        problems.push(format!("tenant {name} ({cur}) has negative available credits without debt"));
                    }
                }
                if f.dpend < 0 || f.cpend < 0 {
                    problems.push(format!("{kind} account {name} ({cur}) has negative pending sums"));
                }
            }
            for (cur, [dpend, dpost, cpend, cpost]) in totals {
                if dpost != cpost {
                    problems.push(format!("{cur}: posted debits {dpost} ≠ posted credits {cpost} (sum over accounts is not zero)"));
                }
                if dpend != cpend {
                    problems.push(format!("{cur}: pending debits {dpend} ≠ pending credits {cpend}"));
                }
            }
            let open_holds: i64 = tx
                .row_cached(
                    "SELECT COUNT(*) FROM transfers t WHERE t.kind = 'hold' AND NOT EXISTS (SELECT 1 FROM transfers r WHERE r.pending_id = t.id)",
                    [],
                    |r| r.get(0),
                )
                .at(path)?;
            Ok(VerifyReport {
                ok: problems.is_empty(),
                accounts: accounts.len() as u64,
                transfers,
                open_holds: u64::try_from(open_holds).unwrap_or(0),
                problems,
            })
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

    fn pending_events(&self, limit: usize) -> Result<Vec<OutboxEvent>, LedgerError> {
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

    fn mark_delivered(&self, ids: &[String]) -> Result<(), LedgerError> {
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

    fn outbox_lag(&self) -> Result<(u64, Option<Duration>), LedgerError> {
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
