//! Where the ledger and the sandbox statuses live. A backend gives the app the two stores
//! behind their traits (`payments::CreditsStore`, `manager::store::SandboxStore`) from
//! one database; the app never names SQL. [`sqlite`] is the default: one file in the
//! state folder. [`postgres`] holds the ledger on a PostgreSQL database several hosts
//! can share (the sandbox statuses are not there yet, so it is no [`Database`] yet:
//! docs/database.md). The ledger's rules are written once, in [`ledger_ops`], for both.

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
}
