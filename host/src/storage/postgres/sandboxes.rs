//! The sandbox statuses on PostgreSQL ([`PgSandboxStore`]): the same rows as the SQLite
//! store (`storage::sqlite::sandboxes`), in the database the ledger uses, shared by every
//! host on it.
//!
//! - A slot is counted across hosts: an insert with a slot takes an advisory transaction
//!   lock on its extension before it counts the extension's live rows, so two hosts
//!   inserting into one pool at once count one after the other (read committed: the
//!   count runs after the lock, and sees the other's committed row).
//! - An idempotency key is unique per tenant (a unique index), and an insert with a key
//!   locks it first (advisory lock on tenant and key, always taken before the slot's), so
//!   the same key sent to two hosts at once makes one row and the other gets it back.
//! - [`SandboxStore::transition`] is a compare-and-set on (state, owner, version) in one
//!   `UPDATE`: of two hosts claiming a row, one wins.
//! - Durability: a write the caller does not wait on commits with
//!   `synchronous_commit = off` (the ledger write that follows flushes the server's WAL
//!   past it, as on SQLite); every other commit waits for the server's disk.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use postgres::types::ToSql;
use postgres::{Client, Transaction};
use r2d2_postgres::r2d2;

use super::schema::SANDBOXES;
use super::{AtUrl, PgError, Pool};
use crate::domain::{SandboxState, SandboxStatus};
use crate::manager::store::{Inserted, LeaseRow, Page, Row, SandboxKey, SandboxStore, StoreError};
use crate::storage::sqlite::millis;

/// Connections the store keeps at most, by default.
pub const DEFAULT_POOL_SIZE: u32 = 16;
/// How often a transaction that lost a deadlock or serialization conflict is run again.
const RETRIES: u32 = 8;
/// The advisory-lock class of an extension's slots (two-key form: class, hash of the id).
const SLOT_LOCK_CLASS: i32 = 0x5342_5853 + 1;
/// The advisory-lock class of (tenant, idempotency key) pairs.
const KEY_LOCK_CLASS: i32 = 0x5342_5853 + 2;

/// The states that hold a slot of their extension's pool.
const LIVE: &str = "('creating', 'running', 'destroying')";

impl From<PgError> for StoreError {
    fn from(e: PgError) -> Self {
        StoreError {
            path: PathBuf::from(e.url),
            message: e.message,
        }
    }
}

/// Sandbox statuses in PostgreSQL. Cheap to share (`Arc`); each call borrows a pooled
/// connection. Several stores (several hosts) may share one database.
pub struct PgSandboxStore {
    pool: Pool,
    /// The URL with its password hidden: every error names it.
    url: String,
}

impl std::fmt::Debug for PgSandboxStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSandboxStore")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

type Conn = r2d2::PooledConnection<r2d2_postgres::PostgresConnectionManager<postgres::NoTls>>;

impl PgSandboxStore {
    /// Opens the statuses in the database at `url`, creating or migrating their tables.
    /// Refuses a database of another application, or one migrated by a newer build,
    /// naming the URL without its password.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        Self::open_with(url, DEFAULT_POOL_SIZE)
    }

    /// Opens the statuses with a pool of at most `pool_size` connections.
    pub fn open_with(url: &str, pool_size: u32) -> Result<Self, StoreError> {
        let shown = super::redact(url);
        let config = super::config(url, &shown)?;
        let mut client = super::connect(&config, &shown)?;
        SANDBOXES.migrate(&mut client, &shown)?;
        drop(client);
        Ok(Self {
            pool: super::pool(config, pool_size),
            url: shown,
        })
    }

    /// The database URL, password hidden.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn err(&self, message: impl Into<String>) -> StoreError {
        StoreError {
            path: PathBuf::from(&self.url),
            message: message.into(),
        }
    }

    fn conn(&self) -> Result<Conn, StoreError> {
        self.pool.get().map_err(|e| {
            self.err(format!(
                "no connection to the database: {e} (is the server running and reachable?)"
            ))
        })
    }

    /// Runs `f` in one transaction, committed (durably unless `durable` is false), again
    /// when it lost a deadlock or serialization conflict.
    fn tx<T>(
        &self,
        durable: bool,
        f: impl Fn(&mut Transaction<'_>) -> Result<T, PgError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn()?;
        let mut attempt = 0;
        loop {
            match self.tx_once(&mut conn, durable, &f) {
                Err(e) if e.retry && attempt < RETRIES => {
                    attempt += 1;
                    tracing::debug!(attempt, error = %e.message, "sandbox transaction conflicted; retrying");
                    std::thread::sleep(Duration::from_millis(2 << attempt.min(6)));
                }
                other => return other.map_err(StoreError::from),
            }
        }
    }

    fn tx_once<T>(
        &self,
        conn: &mut Client,
        durable: bool,
        f: &impl Fn(&mut Transaction<'_>) -> Result<T, PgError>,
    ) -> Result<T, PgError> {
        let url = self.url.as_str();
        let mut tx = conn.transaction().at(url)?;
        if !durable {
            tx.batch_execute("SET LOCAL synchronous_commit TO off")
                .at(url)?;
        }
        let out = f(&mut tx)?;
        tx.commit().at(url)?;
        Ok(out)
    }

    /// One read statement's rows.
    fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<postgres::Row>, StoreError> {
        let mut conn = self.conn()?;
        conn.query(sql, params).at(&self.url).map_err(Into::into)
    }

    fn parse(&self, doc: &str) -> Result<SandboxStatus, StoreError> {
        serde_json::from_str(doc).map_err(|e| self.err(format!("unreadable sandbox record: {e}")))
    }

    fn doc(&self, st: &SandboxStatus) -> Result<String, StoreError> {
        serde_json::to_string(st).map_err(|e| self.err(e.to_string()))
    }

    /// A row of (doc, owner, version) as a [`Row`].
    fn row(&self, r: &postgres::Row) -> Result<Row, StoreError> {
        let (doc, owner, version): (String, Option<String>, i64) =
            (|| Ok::<_, postgres::Error>((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))()
                .at(&self.url)?;
        Ok(Row {
            status: self.parse(&doc)?,
            owner,
            version,
        })
    }

    /// The one UPDATE behind `update` and `transition`; the rows written.
    fn write_row(
        &self,
        st: &SandboxStatus,
        owner: Option<&str>,
        expect: Option<(SandboxState, Option<&str>, i64)>,
        durable: bool,
    ) -> Result<u64, StoreError> {
        let doc = self.doc(st)?;
        let url = self.url.as_str();
        let (from, from_owner, from_version) = match expect {
            Some((state, owner, version)) => (Some(state.as_str()), owner, Some(version)),
            None => (None, None, None),
        };
        let updated = millis(st.updated_at);
        self.tx(durable, |tx| {
            tx.execute(
                "UPDATE manager_sandboxes SET state = $2, extension_id = $3, owner = $4, \
                 updated_at = $5, doc = $6, version = version + 1 \
                 WHERE id = $1 AND ($7::text IS NULL OR \
                   (state = $7 AND owner IS NOT DISTINCT FROM $8::text AND version = $9::bigint))",
                &[
                    &st.id,
                    &st.state.as_str(),
                    &st.extension_id,
                    &owner,
                    &updated,
                    &doc,
                    &from,
                    &from_owner,
                    &from_version,
                ],
            )
            .at(url)
        })
    }
}

impl SandboxStore for PgSandboxStore {
    fn insert(
        &self,
        st: &SandboxStatus,
        fingerprint: &str,
        owner: &str,
        slot: Option<(&str, u32)>,
    ) -> Result<Inserted, StoreError> {
        let doc = self.doc(st)?;
        let url = self.url.as_str();
        let (created, updated) = (millis(st.created_at), millis(st.updated_at));
        enum Out {
            Done(Inserted),
            Prior(String, String),
            Duplicate,
        }
        let out = self.tx(false, |tx| {
            if let Some(key) = &st.idempotency_key {
                tx.execute(
                    "SELECT pg_advisory_xact_lock($1, hashtext($2::text || chr(1) || $3::text))",
                    &[&KEY_LOCK_CLASS, &st.tenant, key],
                )
                .at(url)?;
                let prior = tx
                    .query_opt(
                        "SELECT doc, fingerprint FROM manager_sandboxes \
                         WHERE tenant = $1 AND idempotency_key = $2",
                        &[&st.tenant, key],
                    )
                    .at(url)?;
                if let Some(r) = prior {
                    let (doc, fp) = (|| Ok::<_, postgres::Error>((r.try_get(0)?, r.try_get(1)?)))()
                        .at(url)?;
                    return Ok(Out::Prior(doc, fp));
                }
            }
            if let Some((ext, max)) = slot {
                tx.execute(
                    "SELECT pg_advisory_xact_lock($1, hashtext($2::text))",
                    &[&SLOT_LOCK_CLASS, &ext],
                )
                .at(url)?;
                let live: i64 = tx
                    .query_one(
                        &format!(
                            "SELECT count(*) FROM manager_sandboxes \
                             WHERE extension_id = $1 AND state IN {LIVE}"
                        ),
                        &[&ext],
                    )
                    .and_then(|r| r.try_get(0))
                    .at(url)?;
                if live >= i64::from(max) {
                    return Ok(Out::Done(Inserted::PoolFull));
                }
            }
            let n = tx
                .execute(
                    "INSERT INTO manager_sandboxes (id, tenant, state, extension_id, idempotency_key, \
                     fingerprint, owner, created_at, updated_at, doc) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (id) DO NOTHING",
                    &[
                        &st.id,
                        &st.tenant,
                        &st.state.as_str(),
                        &st.extension_id,
                        &st.idempotency_key,
                        &fingerprint,
                        &owner,
                        &created,
                        &updated,
                        &doc,
                    ],
                )
                .at(url)?;
            if n == 0 {
                return Ok(Out::Duplicate);
            }
            Ok(Out::Done(Inserted::New))
        })?;
        match out {
            Out::Done(i) => Ok(i),
            Out::Prior(doc, fp) => Ok(Inserted::Existing(Box::new(self.parse(&doc)?), fp)),
            Out::Duplicate => Err(self.err(format!("sandbox id {} already exists", st.id))),
        }
    }

    fn update(
        &self,
        st: &SandboxStatus,
        owner: Option<&str>,
        durable: bool,
    ) -> Result<(), StoreError> {
        if self.write_row(st, owner, None, durable)? != 1 {
            return Err(self.err(format!("sandbox {} is not recorded", st.id)));
        }
        Ok(())
    }

    fn transition(
        &self,
        st: &SandboxStatus,
        from: SandboxState,
        from_owner: Option<&str>,
        from_version: i64,
        owner: Option<&str>,
    ) -> Result<bool, StoreError> {
        Ok(self.write_row(st, owner, Some((from, from_owner, from_version)), true)? == 1)
    }

    fn release(&self, id: &str, owner: &str) -> Result<(), StoreError> {
        let url = self.url.as_str();
        self.tx(true, |tx| {
            tx.execute(
                "UPDATE manager_sandboxes SET owner = NULL, version = version + 1 \
                 WHERE id = $1 AND owner = $2",
                &[&id, &owner],
            )
            .at(url)
        })?;
        Ok(())
    }

    fn delete(&self, id: &str) -> Result<(), StoreError> {
        let url = self.url.as_str();
        self.tx(true, |tx| {
            tx.execute("DELETE FROM manager_sandboxes WHERE id = $1", &[&id])
                .at(url)
        })?;
        Ok(())
    }

    fn get(&self, id: &str) -> Result<Option<Row>, StoreError> {
        let rows = self.query(
            "SELECT doc, owner, version FROM manager_sandboxes WHERE id = $1",
            &[&id],
        )?;
        rows.first().map(|r| self.row(r)).transpose()
    }

    fn by_key(
        &self,
        tenant: &str,
        key: &str,
    ) -> Result<Option<(SandboxStatus, String)>, StoreError> {
        let rows = self.query(
            "SELECT doc, fingerprint FROM manager_sandboxes \
             WHERE tenant = $1 AND idempotency_key = $2",
            &[&tenant, &key],
        )?;
        let Some(r) = rows.first() else {
            return Ok(None);
        };
        let (doc, fp): (String, String) =
            (|| Ok::<_, postgres::Error>((r.try_get(0)?, r.try_get(1)?)))().at(&self.url)?;
        Ok(Some((self.parse(&doc)?, fp)))
    }

    fn list(
        &self,
        tenant: Option<&str>,
        state: Option<SandboxState>,
    ) -> Result<Vec<SandboxStatus>, StoreError> {
        let state = state.map(SandboxState::as_str);
        let rows = self.query(
            "SELECT doc FROM manager_sandboxes \
             WHERE ($1::text IS NULL OR tenant = $1) AND ($2::text IS NULL OR state = $2) \
             ORDER BY created_at DESC, id DESC",
            &[&tenant, &state],
        )?;
        rows.iter()
            .map(|r| {
                let doc: String = r.try_get(0).at(&self.url)?;
                self.parse(&doc)
            })
            .collect()
    }

    fn list_page(
        &self,
        tenant: Option<&str>,
        state: Option<SandboxState>,
        after: Option<&SandboxKey>,
        limit: usize,
    ) -> Result<Page<SandboxStatus, SandboxKey>, StoreError> {
        if limit == 0 {
            return Ok(Page {
                items: Vec::new(),
                next: None,
            });
        }
        // One statement per filter combination, so each is planned on its index.
        let mut conds: Vec<&str> = Vec::new();
        if tenant.is_some() {
            conds.push("tenant = $1");
        }
        if state.is_some() {
            conds.push("state = $2");
        }
        if after.is_some() {
            conds.push("(created_at, id) < ($3, $4)");
        }
        let filter = if conds.is_empty() {
            String::new()
        } else {
            format!("AND {}", conds.join(" AND "))
        };
        // Every parameter appears (typed) so each statement binds all five.
        let sql = format!(
            "SELECT doc, created_at, id FROM manager_sandboxes \
             WHERE ($1::text IS NULL OR TRUE) AND ($2::text IS NULL OR TRUE) \
               AND ($3::bigint IS NULL OR TRUE) AND ($4::text IS NULL OR TRUE) {filter} \
             ORDER BY created_at DESC, id DESC LIMIT $5"
        );
        let fetch = i64::try_from(limit)
            .unwrap_or(i64::MAX - 1)
            .saturating_add(1);
        let state = state.map(SandboxState::as_str);
        let after_ms = after.map(|k| k.created_at_ms);
        let after_id = after.map(|k| k.id.as_str());
        let rows = self.query(&sql, &[&tenant, &state, &after_ms, &after_id, &fetch])?;
        let mut rows: Vec<(String, i64, String)> = rows
            .iter()
            .map(|r| Ok::<_, postgres::Error>((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect::<Result<_, _>>()
            .at(&self.url)?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        let next = match rows.last() {
            Some((_, created_at_ms, id)) if more => Some(SandboxKey {
                created_at_ms: *created_at_ms,
                id: id.clone(),
            }),
            _ => None,
        };
        let items = rows
            .iter()
            .map(|(doc, _, _)| self.parse(doc))
            .collect::<Result<_, _>>()?;
        Ok(Page { items, next })
    }

    fn counts_by_state(&self) -> Result<Vec<(SandboxState, Option<String>, u64)>, StoreError> {
        let rows = self.query(
            "SELECT state, extension_id, count(*) FROM manager_sandboxes \
             GROUP BY state, extension_id",
            &[],
        )?;
        rows.iter()
            .map(|r| {
                let (state, ext, n): (String, Option<String>, i64) =
                    (|| Ok::<_, postgres::Error>((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))()
                        .at(&self.url)?;
                let state = state
                    .parse::<SandboxState>()
                    .map_err(|e| self.err(format!("unreadable sandbox row: {e}")))?;
                Ok((state, ext, u64::try_from(n).unwrap_or(0)))
            })
            .collect()
    }

    fn in_flight(&self) -> Result<Vec<Row>, StoreError> {
        let rows = self.query(
            "SELECT doc, owner, version FROM manager_sandboxes \
             WHERE state IN ('creating', 'destroying') ORDER BY created_at, id",
            &[],
        )?;
        rows.iter().map(|r| self.row(r)).collect()
    }

    fn live_counts(&self) -> Result<HashMap<String, u32>, StoreError> {
        let rows = self.query(
            &format!(
                "SELECT extension_id, count(*) FROM manager_sandboxes \
                 WHERE state IN {LIVE} AND extension_id IS NOT NULL GROUP BY extension_id"
            ),
            &[],
        )?;
        rows.iter()
            .map(|r| {
                let (id, n): (String, i64) =
                    (|| Ok::<_, postgres::Error>((r.try_get(0)?, r.try_get(1)?)))().at(&self.url)?;
                Ok((id, u32::try_from(n).unwrap_or(u32::MAX)))
            })
            .collect()
    }

    fn lease(&self, id: &str) -> Result<Option<LeaseRow>, StoreError> {
        let rows = self.query(
            "SELECT covered_secs, unpaid_since_ms FROM manager_leases WHERE sandbox_id = $1",
            &[&id],
        )?;
        let Some(r) = rows.first() else {
            return Ok(None);
        };
        let (covered, unpaid): (i64, Option<i64>) =
            (|| Ok::<_, postgres::Error>((r.try_get(0)?, r.try_get(1)?)))().at(&self.url)?;
        Ok(Some(LeaseRow {
            covered_secs: u64::try_from(covered).unwrap_or(0),
            unpaid_since_ms: unpaid.and_then(|v| u64::try_from(v).ok()),
        }))
    }

    fn set_lease(&self, id: &str, lease: LeaseRow) -> Result<(), StoreError> {
        let url = self.url.as_str();
        let covered = i64::try_from(lease.covered_secs).unwrap_or(i64::MAX);
        let unpaid = lease
            .unpaid_since_ms
            .map(|v| i64::try_from(v).unwrap_or(i64::MAX));
        self.tx(true, |tx| {
            tx.execute(
                "INSERT INTO manager_leases (sandbox_id, covered_secs, unpaid_since_ms) \
                 VALUES ($1, $2, $3) ON CONFLICT (sandbox_id) \
                 DO UPDATE SET covered_secs = EXCLUDED.covered_secs, \
                   unpaid_since_ms = EXCLUDED.unpaid_since_ms",
                &[&id, &covered, &unpaid],
            )
            .at(url)
        })?;
        Ok(())
    }

    fn forget_finished_leases(&self) -> Result<(), StoreError> {
        let url = self.url.as_str();
        self.tx(true, |tx| {
            tx.execute(
                "DELETE FROM manager_leases WHERE sandbox_id NOT IN \
                 (SELECT id FROM manager_sandboxes WHERE state = 'running')",
                &[],
            )
            .at(url)
        })?;
        Ok(())
    }
}
