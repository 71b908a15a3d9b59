//! The SQLite [`SandboxStore`]: tables beside the ledger's, in the same database file
//! (see docs/manager.md for why).
//!
//! Each row is one [`SandboxStatus`]: the fields the manager queries by (tenant, state,
//! extension, idempotency key, owner) as columns, the whole status as JSON beside them.
//!
//! Durability: the connection runs `synchronous=NORMAL`, and a write waits for the WAL's
//! fsync (group commit, see [`super::gate`]) only when nothing durable follows it
//! before the caller is answered. In WAL mode all connections append to one WAL file, so
//! the ledger's next durable write (a hold, a settlement) covers every status write made
//! before it. A `NORMAL` write survives a process crash in any case (it is in the OS page
//! cache).

mod schema;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use parking_lot::Mutex;
use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};

use super::cached::CachedStatements;
use super::gate::Ticket;
use super::{ConnectOptions, Schema, SchemaVersion, SqlError, millis};
use crate::domain::{SandboxState, SandboxStatus};
use crate::manager::store::{Inserted, LeaseRow, Page, Row, SandboxKey, SandboxStore, StoreError};
use schema::MIGRATIONS;

const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The SQLite schema of the statuses, versioned in `manager_schema` (the ledger owns
/// `PRAGMA user_version`).
const SCHEMA: Schema = Schema {
    label: "sandbox ",
    version: SchemaVersion::Table("manager_schema"),
    migrations: MIGRATIONS,
};

/// Sandbox statuses in SQLite.
pub struct SqliteSandboxStore {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// The file's writer lock, held around every write transaction and always taken
    /// after `conn`, and its group commit (see [`super::gate`]).
    gate: std::sync::Arc<super::gate::DbGate>,
}

impl From<SqlError> for StoreError {
    fn from(e: SqlError) -> Self {
        StoreError {
            path: e.path,
            message: e.message,
        }
    }
}

/// SQLite errors as [`StoreError`]s naming the file.
trait At<T> {
    fn at(self, path: &Path) -> Result<T, StoreError>;
}

impl<T> At<T> for rusqlite::Result<T> {
    fn at(self, path: &Path) -> Result<T, StoreError> {
        self.map_err(|e| SqlError::from_sqlite(path, &e).into())
    }
}

impl SqliteSandboxStore {
    /// Opens the status tables in the ledger database at `path`, creating or migrating
    /// them. The ledger must have been opened (and migrated) first: the ledger refuses a
    /// fresh file that already holds tables.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let options = ConnectOptions {
            create: false,
            busy_timeout: BUSY_TIMEOUT,
            foreign_keys: false,
        };
        let mut conn = super::connect(path, options, |conn| {
            let ledger_version: i64 = conn
                .row_cached("PRAGMA user_version", [], |r| r.get(0))
                .at(path)?;
            if ledger_version == 0 {
                return Err(StoreError {
                    path: path.to_owned(),
                    message: "not a ledger database yet: open the ledger before the sandbox store"
                        .into(),
                });
            }
            Ok(())
        })?;
        SCHEMA.migrate(&mut conn, path, |_, _| Ok::<(), StoreError>(()))?;
        // Lease coverage lives in a small table of its own, created on first use by
        // earlier builds; not a migration, so older builds still open the file.
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS manager_leases (\
               sandbox_id TEXT PRIMARY KEY, covered_secs INTEGER NOT NULL, unpaid_since_ms INTEGER)",
        )
        .at(path)?;
        Ok(Self {
            path: path.to_owned(),
            conn: Mutex::new(conn),
            gate: super::gate::gate(path),
        })
    }

    /// The one UPDATE of a sandbox's row, behind [`SandboxStore::update`] and
    /// [`SandboxStore::transition`]: with `expect = (state, owner, version)` only while the
    /// row is still as it was read. Returns the rows written and the commit's ticket.
    fn write_row(
        &self,
        st: &SandboxStatus,
        owner: Option<&str>,
        expect: Option<(SandboxState, Option<&str>, i64)>,
    ) -> Result<(usize, Ticket), StoreError> {
        let doc = self.doc(st)?;
        let path = &self.path;
        let (from, from_owner, from_version) = match expect {
            Some((state, owner, version)) => (Some(state.as_str()), owner, Some(version)),
            None => (None, None, None),
        };
        let mut conn = self.conn.lock();
        let writer = self.gate.writer();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .at(path)?;
        let n = tx
            .exec_cached(
                "UPDATE manager_sandboxes SET state = ?2, extension_id = ?3, owner = ?4, updated_at = ?5, doc = ?6, \
                 version = version + 1 \
                 WHERE id = ?1 AND (?7 IS NULL OR (state = ?7 AND owner IS ?8 AND version = ?9))",
                params![
                    st.id,
                    st.state.as_str(),
                    st.extension_id,
                    owner,
                    millis(st.updated_at),
                    doc,
                    from,
                    from_owner,
                    from_version
                ],
            )
            .at(path)?;
        tx.commit().at(path)?;
        Ok((n, self.gate.committed(&writer)))
    }

    fn doc(&self, st: &SandboxStatus) -> Result<String, StoreError> {
        serde_json::to_string(st).map_err(|e| StoreError {
            path: self.path.clone(),
            message: e.to_string(),
        })
    }

    fn parse(&self, doc: &str) -> Result<SandboxStatus, StoreError> {
        serde_json::from_str(doc).map_err(|e| StoreError {
            path: self.path.clone(),
            message: format!("unreadable sandbox record: {e}"),
        })
    }
}

impl SandboxStore for SqliteSandboxStore {
    /// Records a new sandbox (the create intent). When the tenant already used the
    /// idempotency key, nothing is written and the existing row is returned with its
    /// request fingerprint. With `slot = (extension, max)`, nothing is written when that
    /// extension already has `max` live sandboxes.
    fn insert(
        &self,
        st: &SandboxStatus,
        fingerprint: &str,
        owner: &str,
        slot: Option<(&str, u32)>,
    ) -> Result<Inserted, StoreError> {
        let doc = self.doc(st)?;
        let path = &self.path;
        let mut conn = self.conn.lock();
        let _writer = self.gate.writer();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .at(path)?;
        if let Some(key) = &st.idempotency_key {
            let prior: Option<(String, String)> = tx
                .row_cached(
                    "SELECT doc, fingerprint FROM manager_sandboxes WHERE tenant = ?1 AND idempotency_key = ?2",
                    params![st.tenant, key],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .at(path)?;
            if let Some((doc, fp)) = prior {
                return Ok(Inserted::Existing(Box::new(self.parse(&doc)?), fp));
            }
        }
        if let Some((ext, max)) = slot {
            let live: i64 = tx
                .row_cached(
                    "SELECT COUNT(*) FROM manager_sandboxes \
                     WHERE extension_id = ?1 AND state IN ('creating', 'running', 'destroying')",
                    params![ext],
                    |r| r.get(0),
                )
                .at(path)?;
            if live >= i64::from(max) {
                return Ok(Inserted::PoolFull);
            }
        }
        let res = tx.exec_cached(
            "INSERT INTO manager_sandboxes (id, tenant, state, extension_id, idempotency_key, fingerprint, owner, \
             created_at, updated_at, doc) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                st.id,
                st.tenant,
                st.state.as_str(),
                st.extension_id,
                st.idempotency_key,
                fingerprint,
                owner,
                millis(st.created_at),
                millis(st.updated_at),
                doc
            ],
        );
        if let Err(rusqlite::Error::SqliteFailure(e, _)) = &res
            && e.code == ErrorCode::ConstraintViolation
        {
            return Err(StoreError {
                path: path.clone(),
                message: format!("sandbox id {} already exists", st.id),
            });
        }
        res.at(path)?;
        tx.commit().at(path)?;
        Ok(Inserted::New)
    }

    /// Rewrites a sandbox's row. `owner` is the instance still working on it (`None` once
    /// the operation is over). `durable` fsyncs the WAL at commit; leave it off when a
    /// ledger write follows before anyone is answered.
    fn update(
        &self,
        st: &SandboxStatus,
        owner: Option<&str>,
        durable: bool,
    ) -> Result<(), StoreError> {
        let (n, ticket) = self.write_row(st, owner, None)?;
        if n != 1 {
            return Err(StoreError {
                path: self.path.clone(),
                message: format!("sandbox {} is not recorded", st.id),
            });
        }
        if durable {
            self.gate.wait_durable(ticket).map_err(|e| StoreError {
                path: self.path.clone(),
                message: format!("could not fsync the write-ahead log: {e}"),
            })?;
        }
        Ok(())
    }

    /// Writes `st` only if the row is still in state `from` with owner `from_owner` at
    /// version `from_version`, i.e. nobody wrote it since it was read (compare-and-set):
    /// how an instance claims a sandbox for an operation, so two processes never work on
    /// one sandbox at once, and how a writer avoids writing back fields that changed
    /// meanwhile (a renewed hold). Returns whether it was written; on `false`, read the
    /// row again.
    fn transition(
        &self,
        st: &SandboxStatus,
        from: SandboxState,
        from_owner: Option<&str>,
        from_version: i64,
        owner: Option<&str>,
    ) -> Result<bool, StoreError> {
        let (n, _) = self.write_row(st, owner, Some((from, from_owner, from_version)))?;
        Ok(n == 1)
    }

    /// Gives up this instance's claim on a row it could not finish (the extension failed
    /// or is missing), so any process may retry it.
    fn release(&self, id: &str, owner: &str) -> Result<(), StoreError> {
        let path = &self.path;
        let conn = self.conn.lock();
        let _writer = self.gate.writer();
        conn.exec_cached(
            "UPDATE manager_sandboxes SET owner = NULL, version = version + 1 WHERE id = ?1 AND owner = ?2",
            params![id, owner],
        )
        .at(path)?;
        Ok(())
    }

    /// Forgets a sandbox that never reached an extension (its create was refused before
    /// any backend call, e.g. for insufficient credits).
    fn delete(&self, id: &str) -> Result<(), StoreError> {
        let path = &self.path;
        let conn = self.conn.lock();
        let _writer = self.gate.writer();
        conn.exec_cached("DELETE FROM manager_sandboxes WHERE id = ?1", params![id])
            .at(path)?;
        Ok(())
    }

    /// One sandbox.
    fn get(&self, id: &str) -> Result<Option<Row>, StoreError> {
        let path = &self.path;
        let conn = self.conn.lock();
        let row: Option<(String, Option<String>, i64)> = conn
            .prepare_cached("SELECT doc, owner, version FROM manager_sandboxes WHERE id = ?1")
            .at(path)?
            .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()
            .at(path)?;
        drop(conn);
        row.map(|(doc, owner, version)| {
            Ok(Row {
                status: self.parse(&doc)?,
                owner,
                version,
            })
        })
        .transpose()
    }

    /// The sandbox a tenant created with an idempotency key, with its request fingerprint.
    fn by_key(
        &self,
        tenant: &str,
        key: &str,
    ) -> Result<Option<(SandboxStatus, String)>, StoreError> {
        let path = &self.path;
        let conn = self.conn.lock();
        let row: Option<(String, String)> = conn
            .prepare_cached(
                "SELECT doc, fingerprint FROM manager_sandboxes WHERE tenant = ?1 AND idempotency_key = ?2",
            )
            .at(path)?
            .query_row(params![tenant, key], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .at(path)?;
        drop(conn);
        row.map(|(doc, fp)| Ok((self.parse(&doc)?, fp))).transpose()
    }

    /// Sandboxes, newest first, optionally of one tenant and in one state.
    fn list(
        &self,
        tenant: Option<&str>,
        state: Option<SandboxState>,
    ) -> Result<Vec<SandboxStatus>, StoreError> {
        let path = &self.path;
        let conn = self.conn.lock();
        let state = state.map(SandboxState::as_str);
        let values: Vec<&str> = tenant.into_iter().chain(state).collect();
        let docs: Vec<String> = conn
            .rows_cached(
                &list_sql(tenant.is_some(), state.is_some()),
                rusqlite::params_from_iter(values),
                |r| r.get(0),
            )
            .at(path)?;
        drop(conn);
        docs.iter().map(|d| self.parse(d)).collect()
    }

    /// At most `limit` sandboxes, newest first, after `after` (exclusive), optionally of
    /// one tenant and in one state: a keyset scan on (created_at, id) that reads
    /// `limit + 1` rows (one more tells whether a next page exists). `limit` 0 answers an
    /// empty page.
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
        // One statement text per filter combination: `?1 IS NULL OR tenant = ?1` would
        // keep SQLite from using the indexes. Unused parameters are bound as NULL.
        let mut conds: Vec<&str> = Vec::new();
        if tenant.is_some() {
            conds.push("tenant = ?1");
        }
        if state.is_some() {
            conds.push("state = ?2");
        }
        if after.is_some() {
            conds.push("(created_at, id) < (?3, ?4)");
        }
        let filter = if conds.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conds.join(" AND "))
        };
        let sql = format!(
            "SELECT doc, created_at, id FROM manager_sandboxes {filter} \
             ORDER BY created_at DESC, id DESC LIMIT ?5"
        );
        let fetch = i64::try_from(limit)
            .unwrap_or(i64::MAX - 1)
            .saturating_add(1);
        let path = &self.path;
        let conn = self.conn.lock();
        let mut rows: Vec<(String, i64, String)> = conn
            .prepare_cached(&sql)
            .at(path)?
            .query_map(
                params![
                    tenant,
                    state.map(SandboxState::as_str),
                    after.map(|k| k.created_at_ms),
                    after.map(|k| k.id.as_str()),
                    fetch
                ],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .at(path)?
            .collect::<rusqlite::Result<_>>()
            .at(path)?;
        drop(conn);
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

    /// How many sandboxes are in each (state, extension) pair, counted by SQLite from an
    /// index (no row is read or parsed). Sandboxes never routed have no extension.
    fn counts_by_state(&self) -> Result<Vec<(SandboxState, Option<String>, u64)>, StoreError> {
        let path = &self.path;
        let conn = self.conn.lock();
        let rows: Vec<(String, Option<String>, i64)> = conn
            .rows_cached(
                "SELECT state, extension_id, COUNT(*) FROM manager_sandboxes \
                 GROUP BY state, extension_id",
                [],
                |r| <_>::try_from(r),
            )
            .at(path)?;
        drop(conn);
        rows.into_iter()
            .map(|(state, ext, n)| {
                let state = state.parse::<SandboxState>().map_err(|e| StoreError {
                    path: path.clone(),
                    message: format!("unreadable sandbox row: {e}"),
                })?;
                Ok((state, ext, u64::try_from(n).unwrap_or(0)))
            })
            .collect()
    }

    /// Rows caught between two steps (`creating`, `destroying`), oldest first.
    fn in_flight(&self) -> Result<Vec<Row>, StoreError> {
        let path = &self.path;
        let conn = self.conn.lock();
        let rows: Vec<(String, Option<String>, i64)> = conn
            .rows_cached(
                "SELECT doc, owner, version FROM manager_sandboxes WHERE state IN ('creating', 'destroying') \
                 ORDER BY created_at, id",
                [],
                |r| <_>::try_from(r),
            )
            .at(path)?;
        drop(conn);
        rows.into_iter()
            .map(|(doc, owner, version)| {
                Ok(Row {
                    status: self.parse(&doc)?,
                    owner,
                    version,
                })
            })
            .collect()
    }

    /// Sandboxes occupying a slot (`creating`, `running`, `destroying`) per extension.
    fn live_counts(&self) -> Result<HashMap<String, u32>, StoreError> {
        let path = &self.path;
        let conn = self.conn.lock();
        let rows: Vec<(String, i64)> = conn
            .rows_cached(
                "SELECT extension_id, COUNT(*) FROM manager_sandboxes \
                 WHERE state IN ('creating', 'running', 'destroying') AND extension_id IS NOT NULL \
                 GROUP BY extension_id",
                [],
                |r| <_>::try_from(r),
            )
            .at(path)?;
        Ok(rows
            .into_iter()
            .map(|(id, n)| (id, u32::try_from(n).unwrap_or(u32::MAX)))
            .collect())
    }

    fn lease(&self, id: &str) -> Result<Option<LeaseRow>, StoreError> {
        let path = &self.path;
        let conn = self.conn.lock();
        conn.prepare_cached(
            "SELECT covered_secs, unpaid_since_ms FROM manager_leases WHERE sandbox_id = ?1",
        )
        .at(path)?
        .query_row(params![id], |r| {
            Ok(LeaseRow {
                covered_secs: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                unpaid_since_ms: r
                    .get::<_, Option<i64>>(1)?
                    .and_then(|v| u64::try_from(v).ok()),
            })
        })
        .optional()
        .at(path)
    }

    fn set_lease(&self, id: &str, lease: LeaseRow) -> Result<(), StoreError> {
        let path = &self.path;
        let conn = self.conn.lock();
        let _writer = self.gate.writer();
        conn.exec_cached(
            "INSERT INTO manager_leases (sandbox_id, covered_secs, unpaid_since_ms) VALUES (?1, ?2, ?3) \
             ON CONFLICT(sandbox_id) DO UPDATE SET covered_secs = ?2, unpaid_since_ms = ?3",
            params![
                id,
                i64::try_from(lease.covered_secs).unwrap_or(i64::MAX),
                lease
                    .unpaid_since_ms
                    .map(|v| i64::try_from(v).unwrap_or(i64::MAX))
            ],
        )
        .at(path)?;
        Ok(())
    }

    fn forget_finished_leases(&self) -> Result<(), StoreError> {
        let path = &self.path;
        let conn = self.conn.lock();
        let _writer = self.gate.writer();
        conn.exec_cached(
            "DELETE FROM manager_leases WHERE sandbox_id NOT IN \
             (SELECT id FROM manager_sandboxes WHERE state = 'running')",
            [],
        )
        .at(path)?;
        Ok(())
    }
}

/// The statement of [`SqliteSandboxStore::list`] for a tenant and/or a state filter.
/// One text per combination: a cached `(?1 IS NULL OR tenant = ?1)` is planned without
/// the values and scans every sandbox ever created, under the connection's lock, on every
/// reaper pass (latency grew with the history). Each of these is an index search.
fn list_sql(tenant: bool, state: bool) -> String {
    let filter = match (tenant, state) {
        (false, false) => "",
        (false, true) => "WHERE state = ?1",
        (true, false) => "WHERE tenant = ?1",
        (true, true) => "WHERE tenant = ?1 AND state = ?2",
    };
    format!("SELECT doc FROM manager_sandboxes {filter} ORDER BY created_at DESC, id DESC")
}

#[cfg(test)]
pub(crate) mod tests;
