//! The ledger tests run every rule against both stores: [`TestLedger`] is one fresh
//! ledger database on SQLite (a temp file) or PostgreSQL (a fresh database on the test
//! server, `support/pg.rs`), and [`on_both_stores!`] turns `fn name(backend: Backend)`
//! into one `#[test]` per store (`on_sqlite::name`, `on_postgres::name`).

#![allow(dead_code)]

use std::sync::Arc;

use sandboxer_host::layers::payments::{
    CreditsStore, OverdraftPolicy, PgCreditsStore, SqliteCreditsStore,
};

use super::pg;

/// Which store a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// One fresh ledger database, opened (and reopened) as a store of its backend.
pub struct TestLedger {
    pub backend: Backend,
    /// The SQLite file's folder (also scratch space for either backend).
    pub dir: tempfile::TempDir,
    /// The PostgreSQL database's URL.
    pub url: Option<String>,
}

impl TestLedger {
    pub fn new(backend: Backend) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = (backend == Backend::Postgres).then(pg::fresh_database);
        Self { backend, dir, url }
    }

    /// Opens the ledger (a second call opens the same database again).
    pub fn open(&self, policy: OverdraftPolicy) -> Arc<dyn CreditsStore> {
        match self.backend {
            Backend::Sqlite => Arc::new(
                SqliteCreditsStore::open_with_policy(
                    self.dir.path().join("ledger.sqlite3"),
                    policy,
                )
                .unwrap(),
            ),
            Backend::Postgres => Arc::new(self.open_pg(policy)),
        }
    }

    /// Opens the PostgreSQL ledger as its own type.
    pub fn open_pg(&self, policy: OverdraftPolicy) -> PgCreditsStore {
        let url = self.url.as_deref().expect("a PostgreSQL test ledger");
        PgCreditsStore::open_with_policy(url, policy).unwrap()
    }
}

/// `on_both_stores!(a, b)`: for each `fn a(backend: Backend)` in the file, the tests
/// `on_sqlite::a` and `on_postgres::a`.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),+ $(,)?) => {
        mod on_sqlite {
            $( #[test] fn $name() { super::$name($crate::stores::Backend::Sqlite) } )+
        }
        mod on_postgres {
            $( #[test] fn $name() { super::$name($crate::stores::Backend::Postgres) } )+
        }
    };
}
