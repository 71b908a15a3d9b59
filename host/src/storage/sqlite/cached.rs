//! Statements prepared once per connection: SQLite parses a statement's text on every
//! `execute`/`query_row`, which costs about as much as running the small statements the
//! ledger and the status store issue. These run them from the connection's statement cache.

use rusqlite::{Connection, Params, Row};

/// Cache capacity set on the ledger's and the status store's connections: room for every
/// statement either issues, so none is evicted and parsed again.
pub const STATEMENT_CACHE: usize = 64;

/// `execute` and `query_row` through the connection's prepared-statement cache.
pub trait CachedStatements {
    /// Like `Connection::execute`, with the statement taken from the cache.
    fn exec_cached<P: Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;
    /// Like `Connection::query_row`, with the statement taken from the cache.
    fn row_cached<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: Params,
        F: FnOnce(&Row<'_>) -> rusqlite::Result<T>;
    /// Every row of a query, mapped by `f`, with the statement taken from the cache.
    fn rows_cached<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<Vec<T>>
    where
        P: Params,
        F: FnMut(&Row<'_>) -> rusqlite::Result<T>;
}

impl CachedStatements for Connection {
    fn exec_cached<P: Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    fn row_cached<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: Params,
        F: FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    {
        self.prepare_cached(sql)?.query_row(params, f)
    }

    fn rows_cached<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<Vec<T>>
    where
        P: Params,
        F: FnMut(&Row<'_>) -> rusqlite::Result<T>,
    {
        self.prepare_cached(sql)?.query_map(params, f)?.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_statements_run_and_are_reused() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (x INTEGER)").unwrap();
        for i in 0..3 {
            assert_eq!(
                conn.exec_cached("INSERT INTO t VALUES (?1)", [i]).unwrap(),
                1
            );
        }
        let n: i64 = conn
            .row_cached("SELECT COUNT(*) FROM t WHERE x >= ?1", [1], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
        let xs: Vec<i64> = conn
            .rows_cached("SELECT x FROM t ORDER BY x DESC", [], |r| r.get(0))
            .unwrap();
        assert_eq!(xs, [2, 1, 0]);
        // The INSERT and the SELECT are in the cache: flushing it finds two.
        conn.flush_prepared_statement_cache();
    }
}
