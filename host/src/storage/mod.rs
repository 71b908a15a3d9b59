//! Where the ledger and the sandbox statuses live. A backend gives the app the two stores
//! behind their traits (`payments::CreditsStore`, `manager::store::SandboxStore`) from
//! one database; the app never names SQL. [`sqlite`] is the default: one file in the
//! state folder. [`postgres`] holds both on a PostgreSQL database several hosts can
//! share ([`PostgresDatabase`], docs/database.md). The ledger's rules are written once,
//! in [`ledger_ops`], for both.

pub(crate) mod ledger_ops;
pub(crate) mod postgres;
pub(crate) mod private;
pub(crate) mod sqlite;

use std::path::PathBuf;
use std::sync::Arc;

use crate::manager::store::{SandboxStore, StoreError};
use crate::payments::{CreditsStore, LedgerError, OverdraftPolicy};

/// One database holding a host's ledger and sandbox statuses.
pub(crate) trait Database: Send + Sync {
    /// Whether the ledger exists yet: reading commands never create one.
    fn exists(&self) -> bool;
    /// Opens the ledger, creating and migrating it as needed.
    fn credits(&self, policy: OverdraftPolicy) -> Result<Arc<dyn CreditsStore>, LedgerError>;
    /// Opens the sandbox statuses (after the ledger: it owns the database's creation).
    fn sandboxes(&self) -> Result<Arc<dyn SandboxStore>, StoreError>;
    /// The database for messages: the file, or the URL with its password hidden.
    fn describe(&self) -> String;
}

/// The SQLite backend: the ledger file in the state folder.
pub(crate) struct SqliteDatabase {
    path: PathBuf,
}

impl SqliteDatabase {
    /// The database at `path` (`Settings::ledger_path()`).
    pub(crate) fn new(path: PathBuf) -> Self {
        Self { path }
    }
}

impl Database for SqliteDatabase {
    fn exists(&self) -> bool {
        self.path.exists()
    }

    fn credits(&self, policy: OverdraftPolicy) -> Result<Arc<dyn CreditsStore>, LedgerError> {
        Ok(Arc::new(
            sqlite::ledger::SqliteCreditsStore::open_with_policy(&self.path, policy)?,
        ))
    }

    fn sandboxes(&self) -> Result<Arc<dyn SandboxStore>, StoreError> {
        Ok(Arc::new(sqlite::sandboxes::SqliteSandboxStore::open(
            &self.path,
        )?))
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// The PostgreSQL backend: the ledger and the statuses in the database at a URL, which
/// several hosts may share. Each store keeps its own pool of connections to it.
pub(crate) struct PostgresDatabase {
    url: String,
}

impl PostgresDatabase {
    /// The database at `url` (`postgres://user:password@host:port/name?…`).
    pub(crate) fn new(url: String) -> Self {
        Self { url }
    }
}

impl Database for PostgresDatabase {
    /// A server's database always "exists": opening it creates the schema when missing
    /// (an empty database), and whether it can be reached is told by opening it.
    fn exists(&self) -> bool {
        true
    }

    fn credits(&self, policy: OverdraftPolicy) -> Result<Arc<dyn CreditsStore>, LedgerError> {
        Ok(Arc::new(
            postgres::ledger::PgCreditsStore::open_with_policy(&self.url, policy)?,
        ))
    }

    fn sandboxes(&self) -> Result<Arc<dyn SandboxStore>, StoreError> {
        Ok(Arc::new(postgres::sandboxes::PgSandboxStore::open(
            &self.url,
        )?))
    }

    fn describe(&self) -> String {
        postgres::redact(&self.url)
    }
}
