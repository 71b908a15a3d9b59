//! One in-process writer at a time per SQLite database file.
//!
//! SQLite admits one writer; a `BEGIN IMMEDIATE` that finds the lock taken waits in
//! SQLite's busy handler, which sleeps 1, 2, 5, 10… ms between tries. Under concurrent
//! requests that sleeping, not the work, bounds throughput. Writers of one process (the
//! ledger and the sandbox status store share a file) queue on this mutex instead and start
//! the moment the previous commit ends; other processes still meet SQLite's own lock.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

/// The gate every writer of the database at `path` takes around its write transaction.
pub fn writer_gate(path: &Path) -> Arc<Mutex<()>> {
    static GATES: OnceLock<Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>> = OnceLock::new();
    let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut gates = GATES.get_or_init(|| Mutex::new(HashMap::new())).lock();
    Arc::clone(gates.entry(key).or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_gate_per_file_whatever_the_spelling() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ledger.sqlite3");
        std::fs::write(&file, b"").unwrap();
        let a = writer_gate(&file);
        let b = writer_gate(&dir.path().join(".").join("ledger.sqlite3"));
        assert!(Arc::ptr_eq(&a, &b));
        let other = writer_gate(&dir.path().join("other.sqlite3"));
        assert!(!Arc::ptr_eq(&a, &other));
    }
}
