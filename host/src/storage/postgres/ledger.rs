//! The ledger on PostgreSQL ([`PgCreditsStore`]): the same rules as the SQLite ledger
//! (`storage::ledger_ops`), the same tables, on a database several hosts can share.
//!
//! - Durable before acknowledged: every write is one transaction committed with
//!   `synchronous_commit = on` (set on every pooled connection) before it answers.
//! - Idempotent under retry: the request's key is locked (`pg_advisory_xact_lock`) before
//!   its stored answer is looked up, so the same key sent twice at once, to one host or
//!   two, runs once and the other answers the stored result.
//! - Safe under concurrency: every operation locks the tenant's account row
//!   (`SELECT … FOR UPDATE`) before it reads a balance or a hold's state (read committed),
//!   so concurrent holds never overspend and a hold is resolved once. The shared accounts
//!   (grants, revenue, write-off) are always locked after the tenant's, in one order; a
//!   deadlock or serialization failure all the same is retried.

use std::path::PathBuf;
use std::time::Duration;

use postgres::{IsolationLevel, Transaction};
use r2d2_postgres::r2d2;
use rust_decimal::Decimal;

use super::schema::LEDGER;
use super::{AtUrl, PgError, Pool};
use crate::domain::{Balance, Currency, Entry, Grant, Money};
use crate::payments::{
    CreditsStore, Hold, LedgerError, OutboxEvent, OverdraftPolicy, Settlement, StatementPage,
    VerifyReport, Void,
};
use crate::storage::ledger_ops::{
    self, EntryRaw, GrantOp, HOLD_SELECT, HoldOp, HoldRaw, HoldRow, LedgerTx, MAX_ACCOUNT_UNITS,
    NewTransfer, Op, ReplaceOp, SettleOp, Sums, VerifyAccount, VerifyTransfer, VoidOp,
    check_tenant, check_text, invalid, now_ms,
};

/// Connections a store keeps at most, by default.
pub const DEFAULT_POOL_SIZE: u32 = 16;
/// How often a transaction that lost a deadlock or serialization conflict is run again.
const RETRIES: u32 = 8;
/// The advisory-lock class of idempotency keys (two-key form: class, hash of the key).
const KEY_LOCK_CLASS: i32 = 0x5342_584b;

impl From<PgError> for LedgerError {
    fn from(e: PgError) -> Self {
        // The URL (password hidden) stands where the SQLite ledger names its file.
        let path = PathBuf::from(e.url);
        if e.corrupt {
            LedgerError::Corrupt {
                path,
                message: e.message,
            }
        } else {
            LedgerError::Storage {
                path,
                message: e.message,
            }
        }
    }
}

/// Collects the listed columns of a row as a tuple (`try_get`: a column of another type
/// is an error, not a panic).
macro_rules! cols {
    ($r:expr; $($i:tt),+ $(,)?) => { ( $( $r.try_get($i)?, )+ ) };
}

/// The PostgreSQL-backed [`CreditsStore`]. Cheap to share (`Arc`); each call borrows a
/// pooled connection. Several stores (several hosts) may share one database.
pub struct PgCreditsStore {
    pool: Pool,
    /// The URL with its password hidden: every error names it.
    url: String,
    policy: OverdraftPolicy,
}

impl std::fmt::Debug for PgCreditsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgCreditsStore")
            .field("url", &self.url)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl PgCreditsStore {
    /// Opens the ledger in the database at `url` with the default overdraft policy,
    /// creating or migrating its schema. Refuses a database of another application, or
    /// one migrated by a newer build, naming the URL without its password.
    pub fn open(url: &str) -> Result<Self, LedgerError> {
        Self::open_with(url, OverdraftPolicy::default(), DEFAULT_POOL_SIZE)
    }

    /// Opens the ledger with an explicit overdraft policy.
    pub fn open_with_policy(url: &str, policy: OverdraftPolicy) -> Result<Self, LedgerError> {
        Self::open_with(url, policy, DEFAULT_POOL_SIZE)
    }

    /// Opens the ledger with an explicit policy and pool size (connections at most).
    pub fn open_with(
        url: &str,
        policy: OverdraftPolicy,
        pool_size: u32,
    ) -> Result<Self, LedgerError> {
        let shown = super::redact(url);
        let config = super::config(url, &shown)?;
        // One connection made now, so a wrong URL or password fails here with the
        // server's own words, and the schema is checked before anything else runs.
        let mut client = super::connect(&config, &shown)?;
        LEDGER.migrate(&mut client, &shown)?;
        drop(client);
        Ok(Self {
            pool: super::pool(config, pool_size),
            url: shown,
            policy,
        })
    }

    /// The database URL, password hidden.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The overdraft policy settlements follow.
    pub fn policy(&self) -> OverdraftPolicy {
        self.policy
    }

    /// `synchronous_commit` and `fsync` as a pooled connection sees them (both `on`: a
    /// commit is on the server's disk before the ledger answers).
    pub fn durability(&self) -> Result<(String, String), LedgerError> {
        let mut conn = self.conn()?;
        let url = &self.url;
        let sync: String = conn
            .query_one("SHOW synchronous_commit", &[])
            .and_then(|r| r.try_get(0))
            .at(url)?;
        let fsync: String = conn
            .query_one("SHOW fsync", &[])
            .and_then(|r| r.try_get(0))
            .at(url)?;
        Ok((sync, fsync))
    }

    fn conn(
        &self,
    ) -> Result<
        r2d2::PooledConnection<r2d2_postgres::PostgresConnectionManager<postgres::NoTls>>,
        LedgerError,
    > {
        self.pool.get().map_err(|e| {
            PgError::other(
                &self.url,
                format!(
                    "no connection to the database: {e} (is the server running and reachable?)"
                ),
            )
            .into()
        })
    }

    /// Runs one idempotent write in one transaction: lock its key; if the key was used
    /// before, answer the stored result (same request) or refuse (different request);
    /// else run it, store its answer under the key, and commit. A transaction that lost
    /// a deadlock or serialization conflict runs again.
    fn write<O: Op>(&self, op: &O) -> Result<O::Out, LedgerError> {
        let mut conn = self.conn()?;
        let mut attempt = 0;
        loop {
            let mut retry = false;
            match self.write_once(&mut conn, op, &mut retry) {
                Err(e) if retry && attempt < RETRIES => {
                    attempt += 1;
                    tracing::debug!(attempt, error = %e, "ledger transaction conflicted; retrying");
                    std::thread::sleep(Duration::from_millis(2 << attempt.min(6)));
                }
                other => return other,
            }
        }
    }

    fn write_once<O: Op>(
        &self,
        conn: &mut postgres::Client,
        op: &O,
        retry: &mut bool,
    ) -> Result<O::Out, LedgerError> {
        let url = self.url.as_str();
        let (operation, key, fingerprint) = (op.operation(), op.key(), op.fingerprint());
        let mut tx = PgTx {
            tx: conn.transaction().at(url)?,
            url,
            retry: false,
        };
        let result = (|| {
            let r = tx.tx.execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                &[&KEY_LOCK_CLASS, &key],
            );
            tx.pg(r)?;
            let r = tx
                .tx
                .query_opt(
                    "SELECT operation, fingerprint, response FROM requests WHERE ikey = $1",
                    &[&key],
                )
                .and_then(|row| {
                    row.map(|r| -> Result<ledger_ops::Prior, postgres::Error> {
                        Ok(cols!(r; 0, 1, 2))
                    })
                    .transpose()
                });
            if let Some(prior) = tx.pg(r)? {
                return ledger_ops::replay(&|m| tx.corrupt(m), key, operation, fingerprint, prior);
            }
            let answer = op.run(&mut tx)?;
            let response = ledger_ops::response(&answer)?;
            let r = tx.tx.execute(
                "INSERT INTO requests (ikey, operation, fingerprint, response, created_at) \
                 VALUES ($1, $2, $3, $4, $5)",
                &[&key, &operation, &fingerprint, &response, &now_ms()],
            );
            tx.pg(r)?;
            Ok(answer)
        })();
        *retry = tx.retry;
        let answer = result?;
        let PgTx { tx, .. } = tx;
        match tx.commit() {
            Ok(()) => Ok(answer),
            Err(e) => {
                let e = PgError::from_pg(url, &e);
                *retry = e.retry;
                Err(e.into())
            }
        }
    }

    /// Runs `f` in one read-only snapshot (repeatable read).
    fn read<T>(
        &self,
        f: impl FnOnce(&mut Transaction<'_>, &str) -> Result<T, postgres::Error>,
    ) -> Result<T, LedgerError> {
        let mut conn = self.conn()?;
        let url = self.url.as_str();
        let mut tx = conn
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .at(url)?;
        let out = f(&mut tx, url).at(url)?;
        tx.commit().at(url)?;
        Ok(out)
    }

    fn corrupt(&self, message: String) -> LedgerError {
        PgError::corrupt(&self.url, message).into()
    }

    fn holds_where(&self, condition: &str, arg: Option<&str>) -> Result<Vec<HoldRow>, LedgerError> {
        let sql = format!("{HOLD_SELECT} {condition}");
        let raws: Vec<HoldRaw> = self.read(|tx, _| {
            let rows = match arg {
                Some(a) => tx.query(&sql, &[&a])?,
                None => tx.query(&sql, &[])?,
            };
            rows.iter()
                .map(|r| Ok(cols!(r; 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)))
                .collect()
        })?;
        let c = |m: String| self.corrupt(m);
        raws.into_iter()
            .map(|raw| HoldRow::from_raw(&c, raw))
            .collect()
    }
}

/// One write transaction on PostgreSQL, remembering whether a statement failed in a way
/// that a new attempt may not.
struct PgTx<'a> {
    tx: Transaction<'a>,
    url: &'a str,
    retry: bool,
}

impl PgTx<'_> {
    fn pg<T>(&mut self, r: Result<T, postgres::Error>) -> Result<T, LedgerError> {
        r.map_err(|e| {
            let e = PgError::from_pg(self.url, &e);
            self.retry |= e.retry;
            e.into()
        })
    }
}

impl LedgerTx for PgTx<'_> {
    fn corrupt(&self, message: String) -> LedgerError {
        PgError::corrupt(self.url, message).into()
    }

    fn account_id(
        &mut self,
        kind: &str,
        name: &str,
        currency: &Currency,
    ) -> Result<Option<i64>, LedgerError> {
        let r = self
            .tx
            .query_opt(
                "SELECT id FROM accounts WHERE kind = $1 AND name = $2 AND currency = $3",
                &[&kind, &name, &currency.as_str()],
            )
            .and_then(|row| row.map(|r| r.try_get(0)).transpose());
        self.pg(r)
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
        // A concurrent creator wins or waits for us; either way the row exists after.
        let r = self
            .tx
            .query_opt(
                "INSERT INTO accounts (kind, name, currency, created_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (kind, name, currency) DO NOTHING RETURNING id",
                &[&kind, &name, &currency.as_str(), &at],
            )
            .and_then(|row| row.map(|r| r.try_get(0)).transpose());
        match self.pg(r)? {
            Some(id) => Ok(id),
            None => self
                .account_id(kind, name, currency)?
                .ok_or_else(|| self.corrupt(format!("the {kind} account {name} vanished"))),
        }
    }

    fn tenant_exists(&mut self, tenant: &str) -> Result<bool, LedgerError> {
        let r = self.tx.query_one(
            "SELECT EXISTS (SELECT 1 FROM accounts WHERE kind = 'tenant' AND name = $1)",
            &[&tenant],
        );
        self.pg(r.and_then(|row| row.try_get(0)))
    }

    fn lock_account(&mut self, account: i64) -> Result<Sums, LedgerError> {
        let r = self.tx.query_one(
            "SELECT debits_pending, debits_posted, credits_posted FROM accounts WHERE id = $1 FOR UPDATE",
            &[&account],
        );
        let r = r.and_then(|row| -> Result<(i64, i64, i64), postgres::Error> {
            Ok(cols!(row; 0, 1, 2))
        });
        let (debits_pending, debits_posted, credits_posted) = self.pg(r)?;
        Ok(Sums {
            debits_pending,
            debits_posted,
            credits_posted,
        })
    }

    fn add_sums(
        &mut self,
        account: i64,
        debit: bool,
        pending: i64,
        posted: i64,
    ) -> Result<bool, LedgerError> {
        // Compared in numeric: the guard itself cannot overflow a bigint.
        let sql = if debit {
            "UPDATE accounts SET debits_pending = debits_pending + $2, debits_posted = debits_posted + $3 \
             WHERE id = $1 AND debits_pending::numeric + $2::bigint <= $4::bigint \
             AND debits_posted::numeric + $3::bigint <= $4::bigint"
        } else {
            "UPDATE accounts SET credits_pending = credits_pending + $2, credits_posted = credits_posted + $3 \
             WHERE id = $1 AND credits_pending::numeric + $2::bigint <= $4::bigint \
             AND credits_posted::numeric + $3::bigint <= $4::bigint"
        };
        let r = self
            .tx
            .execute(sql, &[&account, &pending, &posted, &MAX_ACCOUNT_UNITS]);
        Ok(self.pg(r)? == 1)
    }

    fn has_room(&mut self, account: i64, units: i64) -> Result<bool, LedgerError> {
        let Some(limit) = MAX_ACCOUNT_UNITS.checked_sub(units) else {
            return Ok(false);
        };
        // Summed in numeric: two bigint sums near the limit would overflow a bigint.
        let r = self.tx.query_one(
            "SELECT debits_posted::numeric + debits_pending <= $2::bigint \
             AND credits_posted::numeric + credits_pending <= $2::bigint \
             FROM accounts WHERE id = $1",
            &[&account, &limit],
        );
        let r = r.and_then(|row| row.try_get::<_, bool>(0));
        self.pg(r)
    }

    fn account_label(&mut self, account: i64) -> Result<(String, String, String), LedgerError> {
        let r = self.tx.query_one(
            "SELECT kind, name, currency FROM accounts WHERE id = $1",
            &[&account],
        );
        let r = r.and_then(|row| -> Result<(String, String, String), postgres::Error> {
            Ok(cols!(row; 0, 1, 2))
        });
        self.pg(r)
    }

    fn insert(&mut self, t: NewTransfer<'_>) -> Result<(i64, String), LedgerError> {
        let uid = uuid::Uuid::now_v7().to_string();
        let exact = t.exact.map(|d| d.to_string());
        let r = self.tx.query_one(
            "INSERT INTO transfers (uid, ikey, kind, debit_account, credit_account, amount, exact, \
             currency, pending_id, hold_id, sandbox_id, extension, note, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) RETURNING id",
            &[
                &uid,
                &t.ikey,
                &t.kind,
                &t.debit,
                &t.credit,
                &t.amount,
                &exact,
                &t.currency.as_str(),
                &t.pending_id,
                &t.hold_id,
                &t.sandbox_id,
                &t.extension,
                &t.note,
                &t.at,
            ],
        );
        let id = self.pg(r.and_then(|row| row.try_get(0)))?;
        Ok((id, uid))
    }

    fn hold(&mut self, hold_id: &str) -> Result<HoldRow, LedgerError> {
        // The tenant's account first (a hold's accounts never change), then the hold's
        // state as of that lock: a concurrent settle, void or replace has committed or
        // waits for us.
        let r = self
            .tx
            .query_opt(
                "SELECT debit_account FROM transfers WHERE uid = $1 AND kind = 'hold'",
                &[&hold_id],
            )
            .and_then(|row| row.map(|r| r.try_get(0)).transpose());
        let Some(account) = self.pg(r)? else {
            return Err(LedgerError::HoldNotFound(hold_id.to_owned()));
        };
        self.lock_account(account)?;
        let sql = format!("{HOLD_SELECT} AND t.uid = $1");
        let r = self.tx.query_opt(&sql, &[&hold_id]).and_then(|row| {
            row.map(|r| -> Result<HoldRaw, postgres::Error> {
                Ok(cols!(r; 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11))
            })
            .transpose()
        });
        let raw = self
            .pg(r)?
            .ok_or_else(|| LedgerError::HoldNotFound(hold_id.to_owned()))?;
        HoldRow::from_raw(&|m| self.corrupt(m), raw)
    }

    fn outbox_has(&mut self, id: &str) -> Result<bool, LedgerError> {
        let r = self
            .tx
            .query_one("SELECT EXISTS (SELECT 1 FROM outbox WHERE id = $1)", &[&id]);
        self.pg(r.and_then(|row| row.try_get(0)))
    }

    fn outbox_insert(&mut self, event: &OutboxEvent, at: i64) -> Result<(), LedgerError> {
        let r = self.tx.execute(
            "INSERT INTO outbox (id, payload, created_at) VALUES ($1, $2, $3)",
            &[&event.id, &event.payload, &at],
        );
        self.pg(r)?;
        Ok(())
    }
}

impl CreditsStore for PgCreditsStore {
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
        let rows: Vec<(String, String, i64, i64, i64)> = self.read(|tx, _| {
            tx.query(
                "SELECT name, currency, debits_pending, debits_posted, credits_posted FROM accounts \
                 WHERE kind = 'tenant' AND ($1::text IS NULL OR name = $1) \
                 ORDER BY name COLLATE \"C\", currency COLLATE \"C\"",
                &[&tenant],
            )?
            .iter()
            .map(|r| Ok(cols!(r; 0, 1, 2, 3, 4)))
            .collect()
        })?;
        if let Some(t) = tenant
            && rows.is_empty()
        {
            return Err(LedgerError::UnknownTenant(t.to_owned()));
        }
        let c = |m: String| self.corrupt(m);
        rows.into_iter()
            .map(|(name, cur, dpend, dpost, cpost)| {
                let sums = Sums {
                    debits_pending: dpend,
                    debits_posted: dpost,
                    credits_posted: cpost,
                };
                ledger_ops::balance(&c, name, &cur, sums)
            })
            .collect()
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
        check_tenant(tenant)?;
        if let Some(a) = after {
            check_text("after", a, 200, false)?;
        }
        let limit = limit.max(1);
        // One row more than asked tells whether another page follows.
        let fetch = i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1);
        enum Page {
            UnknownTenant,
            BadAfter(String),
            Rows(Vec<EntryRaw>),
        }
        let page = self.read(|tx, _| {
            let exists: bool = tx
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM accounts WHERE kind = 'tenant' AND name = $1)",
                    &[&tenant],
                )?
                .try_get(0)?;
            if !exists {
                return Ok(Page::UnknownTenant);
            }
            // The page starts after the sequence number of the transfer it is given,
            // which must be a line of this tenant's statement.
            let after_seq: i64 = match after {
                None => 0,
                Some(uid) => match tx.query_opt(
                    "SELECT t.id FROM transfers t WHERE t.uid = $1 AND t.kind <> 'write_off' \
                     AND (t.debit_account IN (SELECT id FROM accounts WHERE kind = 'tenant' AND name = $2) \
                        OR t.credit_account IN (SELECT id FROM accounts WHERE kind = 'tenant' AND name = $2))",
                    &[&uid, &tenant],
                )? {
                    Some(row) => row.try_get(0)?,
                    None => return Ok(Page::BadAfter(uid.to_owned())),
                },
            };
            let rows = tx.query(
                "WITH acct AS (SELECT id FROM accounts WHERE kind = 'tenant' AND name = $1) \
                 SELECT t.created_at, t.kind, t.uid, t.amount, t.exact, t.currency, t.sandbox_id, t.note, \
                 COALESCE(p.uid, h.uid), p.amount \
                 FROM transfers t LEFT JOIN transfers p ON p.id = t.pending_id \
                 LEFT JOIN transfers h ON h.id = t.hold_id \
                 WHERE (t.debit_account IN (SELECT id FROM acct) OR t.credit_account IN (SELECT id FROM acct)) \
                 AND t.kind <> 'write_off' AND t.id > $2 ORDER BY t.id LIMIT $3",
                &[&tenant, &after_seq, &fetch],
            )?;
            let raws = rows
                .iter()
                .map(|r| Ok(cols!(r; 0, 1, 2, 3, 4, 5, 6, 7, 8, 9)))
                .collect::<Result<Vec<EntryRaw>, postgres::Error>>()?;
            Ok(Page::Rows(raws))
        })?;
        let mut raws = match page {
            Page::UnknownTenant => return Err(LedgerError::UnknownTenant(tenant.to_owned())),
            Page::BadAfter(uid) => {
                return Err(invalid(
                    "after",
                    format!("{uid:?} is not a transfer on the statement of {tenant}"),
                ));
            }
            Page::Rows(raws) => raws,
        };
        let more = raws.len() > limit;
        raws.truncate(limit);
        let next = if more {
            raws.last().map(|r| r.2.clone())
        } else {
            None
        };
        let c = |m: String| self.corrupt(m);
        let entries = raws
            .into_iter()
            .map(|raw| ledger_ops::entry(&c, raw))
            .collect::<Result<Vec<Entry>, LedgerError>>()?;
        Ok(StatementPage { entries, next })
    }

    fn verify(&self) -> Result<VerifyReport, LedgerError> {
        let (transfers, accounts, open_holds) = self.read(|tx, _| {
            let transfers = tx
                .query(
                    "SELECT t.uid, t.kind, t.debit_account, t.credit_account, t.amount, p.kind, p.amount, \
                     p.debit_account, p.credit_account \
                     FROM transfers t LEFT JOIN transfers p ON p.id = t.pending_id ORDER BY t.id",
                    &[],
                )?
                .iter()
                .map(|r| Ok(cols!(r; 0, 1, 2, 3, 4, 5, 6, 7, 8)))
                .collect::<Result<Vec<VerifyTransfer>, postgres::Error>>()?;
            let accounts = tx
                .query(
                    "SELECT id, kind, name, currency, debits_pending, debits_posted, credits_pending, \
                     credits_posted FROM accounts ORDER BY id",
                    &[],
                )?
                .iter()
                .map(|r| Ok(cols!(r; 0, 1, 2, 3, 4, 5, 6, 7)))
                .collect::<Result<Vec<VerifyAccount>, postgres::Error>>()?;
            let open: i64 = tx
                .query_one(
                    "SELECT COUNT(*) FROM transfers t WHERE t.kind = 'hold' \
                     AND NOT EXISTS (SELECT 1 FROM transfers r WHERE r.pending_id = t.id)",
                    &[],
                )?
                .try_get(0)?;
            Ok((transfers, accounts, open))
        })?;
        Ok(ledger_ops::verify(
            transfers,
            accounts,
            open_holds,
            Vec::new(),
        ))
    }

    fn hold_for_sandbox(&self, sandbox_id: &str) -> Result<Option<Hold>, LedgerError> {
        Ok(self
            .holds_where(
                "AND t.sandbox_id = $1 ORDER BY t.id DESC LIMIT 1",
                Some(sandbox_id),
            )?
            .first()
            .map(HoldRow::to_hold))
    }

    fn open_holds(&self) -> Result<Vec<Hold>, LedgerError> {
        Ok(self
            .holds_where("AND r.id IS NULL ORDER BY t.id", None)?
            .iter()
            .map(HoldRow::to_hold)
            .collect())
    }

    fn pending_events(&self, limit: usize) -> Result<Vec<OutboxEvent>, LedgerError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|tx, _| {
            tx.query(
                "SELECT id, payload FROM outbox WHERE delivered_at IS NULL ORDER BY seq LIMIT $1",
                &[&limit],
            )?
            .iter()
            .map(|r| {
                Ok(OutboxEvent {
                    id: r.try_get(0)?,
                    payload: r.try_get(1)?,
                })
            })
            .collect()
        })
    }

    fn mark_delivered(&self, ids: &[String]) -> Result<(), LedgerError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn()?;
        conn.execute(
            "UPDATE outbox SET delivered_at = $2 WHERE id = ANY($1) AND delivered_at IS NULL",
            &[&ids, &now_ms()],
        )
        .at(&self.url)?;
        Ok(())
    }

    fn outbox_lag(&self) -> Result<(u64, Option<Duration>), LedgerError> {
        let (count, oldest): (i64, Option<i64>) = self.read(|tx, _| {
            let r = tx.query_one(
                "SELECT COUNT(*), MIN(created_at) FROM outbox WHERE delivered_at IS NULL",
                &[],
            )?;
            Ok(cols!(r; 0, 1))
        })?;
        let age = oldest.map(|ms| Duration::from_millis(u64::try_from(now_ms() - ms).unwrap_or(0)));
        Ok((u64::try_from(count).unwrap_or(0), age))
    }
}
