//! The SQLite backend: one database file in the state folder (`ledger.sqlite3`) holding
//! the ledger and the sandbox statuses, and the plumbing both stores share: how a
//! connection is opened (WAL, `synchronous=NORMAL`, small page cache, prepared-statement
//! cache, busy timeout), how a schema is migrated, and how an SQLite error names the file.
//!
//! Why one file for both: every write a caller waits on costs an fsync of the WAL, and
//! the ledger's next durable write covers the status writes made before it (see
//! docs/manager.md). The writer lock and group commit of the file are in [`gate`].

pub(crate) mod cached;
pub(crate) mod gate;
pub(crate) mod ledger;
pub(crate) mod sandboxes;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior, params};

use cached::CachedStatements;

/// An SQLite failure, naming the database file and, where it helps, what to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SqlError {
    /// The database file.
    pub path: PathBuf,
    /// Whether the file is damaged or not a database of ours.
    pub corrupt: bool,
    /// What went wrong.
    pub message: String,
}

impl SqlError {
    /// A damaged file, or one that is not the expected database.
    pub(crate) fn corrupt(path: &Path, message: impl Into<String>) -> Self {
        Self {
            path: path.to_owned(),
            corrupt: true,
            message: message.into(),
        }
    }

    /// Any other failure.
    pub(crate) fn other(path: &Path, message: impl Into<String>) -> Self {
        Self {
            path: path.to_owned(),
            corrupt: false,
            message: message.into(),
        }
    }

    /// What `e`, raised on `path`, means for the operator.
    pub(crate) fn from_sqlite(path: &Path, e: &rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
                Self::corrupt(path, e.to_string())
            }
            Some(ErrorCode::ReadOnly) => Self::other(
                path,
                format!("{e} (the file or its folder is read-only; check permissions)"),
            ),
            Some(ErrorCode::CannotOpen) => Self::other(
                path,
                format!("{e} (does the folder exist, and may this user write to it?)"),
            ),
            _ => Self::other(path, e.to_string()),
        }
    }
}

/// Attaches the database file to an SQLite error (`.at(path)?`). Each store has its own
/// trait of the same shape returning its own error type, built on [`SqlError`].
pub(crate) trait AtPath<T> {
    /// The result with its error naming `path`.
    fn at(self, path: &Path) -> Result<T, SqlError>;
}

impl<T> AtPath<T> for rusqlite::Result<T> {
    fn at(self, path: &Path) -> Result<T, SqlError> {
        self.map_err(|e| SqlError::from_sqlite(path, &e))
    }
}

/// How a store opens its connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectOptions {
    /// Create the file when it is missing (only the ledger does: it owns the file).
    pub create: bool,
    /// How long a writer waits for another process's write transaction.
    pub busy_timeout: Duration,
    /// `PRAGMA foreign_keys = ON` (the ledger's transfers reference its accounts).
    pub foreign_keys: bool,
}

/// Opens a connection to `path`: checks it with `check` before anything writes to the
/// file (the ledger refuses a database that is not a ledger), then switches to WAL with
/// `synchronous=NORMAL` (a commit appends to the WAL; callers that must survive power
/// loss wait for the file's group commit, [`gate::DbGate::wait_durable`]) and a small page
/// cache (another connection's commit empties it anyway; the OS page cache holds the file).
pub(crate) fn connect<E: From<SqlError>>(
    path: &Path,
    options: ConnectOptions,
    check: impl FnOnce(&Connection) -> Result<(), E>,
) -> Result<Connection, E> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if options.create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn = Connection::open_with_flags(path, flags).at(path)?;
    // SQLite creates the WAL and shared-memory files with the database file's mode.
    super::private::private_file(path)
        .map_err(|e| SqlError::other(path, format!("cannot make the file private (0600): {e}")))?;
    conn.busy_timeout(options.busy_timeout).at(path)?;
    conn.set_prepared_statement_cache_capacity(cached::STATEMENT_CACHE);
    check(&conn)?;
    let mode: String = conn
        .row_cached("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .at(path)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(SqlError::other(
            path,
            format!("could not switch the journal to WAL (it is {mode:?})"),
        )
        .into());
    }
    let pragmas = if options.foreign_keys {
        "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA cache_size = -1024;"
    } else {
        "PRAGMA synchronous = NORMAL; PRAGMA cache_size = -1024;"
    };
    conn.execute_batch(pragmas).at(path)?;
    Ok(conn)
}

/// Where a schema records how many of its migrations were applied.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SchemaVersion {
    /// `PRAGMA user_version` (the ledger: it owns the file).
    UserVersion,
    /// A one-row table of its own (the sandbox store, beside the ledger).
    Table(&'static str),
}

/// A versioned schema: append-only migrations, migration `i` bringing version `i` to
/// `i + 1`. Never edit a migration that has shipped.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Schema {
    /// Names the schema in messages (`""` for the ledger, `"sandbox "` for the statuses).
    pub label: &'static str,
    /// Where the version lives.
    pub version: SchemaVersion,
    /// The migrations.
    pub migrations: &'static [&'static str],
}

impl Schema {
    fn known(&self) -> i64 {
        i64::try_from(self.migrations.len()).unwrap_or(i64::MAX)
    }

    fn read_version(&self, conn: &Connection, path: &Path) -> Result<i64, SqlError> {
        match self.version {
            SchemaVersion::UserVersion => conn
                .row_cached("PRAGMA user_version", [], |r| r.get(0))
                .at(path),
            SchemaVersion::Table(table) => {
                let exists: bool = conn
                    .row_cached(
                        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
                        params![table],
                        |r| r.get(0),
                    )
                    .at(path)?;
                if !exists {
                    return Ok(0);
                }
                let v: Option<i64> = conn
                    .row_cached(&format!("SELECT version FROM {table}"), [], |r| r.get(0))
                    .optional()
                    .at(path)?;
                Ok(v.unwrap_or(0))
            }
        }
    }

    /// Brings the schema up to date in one `BEGIN IMMEDIATE` transaction; `recheck` runs
    /// inside it on the version read under the write lock (another process may have
    /// migrated meanwhile). A file from a newer build is refused as corrupt.
    pub(crate) fn migrate<E: From<SqlError>>(
        &self,
        conn: &mut Connection,
        path: &Path,
        recheck: impl FnOnce(&Connection, i64) -> Result<(), E>,
    ) -> Result<(), E> {
        let known = self.known();
        let newer = |v: i64| {
            SqlError::corrupt(
                path,
                format!(
                    "{}schema version {v} is newer than this build understands ({known})",
                    self.label
                ),
            )
        };
        let version = self.read_version(conn, path)?;
        if version == known {
            return Ok(());
        }
        if version > known {
            return Err(newer(version).into());
        }
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .at(path)?;
        let version = self.read_version(&tx, path)?;
        if version > known {
            return Err(newer(version).into());
        }
        recheck(&tx, version)?;
        for (i, sql) in self
            .migrations
            .iter()
            .enumerate()
            .skip(usize::try_from(version).unwrap_or(0))
        {
            tx.execute_batch(sql).at(path)?;
            if let SchemaVersion::UserVersion = self.version {
                tx.pragma_update(None, "user_version", i + 1).at(path)?;
            }
        }
        if let SchemaVersion::Table(table) = self.version {
            tx.execute_batch(&format!(
                "CREATE TABLE IF NOT EXISTS {table} (version INTEGER NOT NULL) STRICT; DELETE FROM {table};"
            ))
            .at(path)?;
            tx.exec_cached(
                &format!("INSERT INTO {table} (version) VALUES (?1)"),
                params![known],
            )
            .at(path)?;
        }
        tx.commit().at(path)?;
        Ok(())
    }
}

/// Unix milliseconds of a time, as the stores keep it.
pub(crate) fn millis(t: chrono::DateTime<chrono::Utc>) -> i64 {
    t.timestamp_millis()
}
