//! One in-process writer at a time per SQLite database file, and group commit.
//!
//! SQLite admits one writer; a `BEGIN IMMEDIATE` that finds the lock taken waits in
//! SQLite's busy handler, which sleeps 1, 2, 5, 10… ms between tries. Under concurrent
//! requests that sleeping, not the work, bounds throughput. Writers of one process (the
//! ledger and the sandbox status store share a file) queue on the gate's mutex instead and
//! start the moment the previous commit ends; other processes still meet SQLite's own lock.
//!
//! Group commit: connections run `synchronous=NORMAL`, so a commit appends its frames to
//! the WAL without an fsync and the writer lock is held only for the transaction's own
//! work. A caller that must not answer before its write survives power loss then calls
//! [`DbGate::wait_durable`]: one thread fsyncs the WAL for every commit made so far while
//! the others wait for that fsync, so concurrent writers share one fsync instead of
//! taking turns for one each. `synchronous=FULL` in WAL mode is exactly NORMAL plus an
//! fsync of the WAL at commit; this moves that fsync after the lock and shares it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use parking_lot::{Condvar, Mutex, MutexGuard};

/// What a committed write is waiting for: the number of commits made through this gate
/// when it committed. Durable once a WAL fsync started after it has finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

#[derive(Default)]
struct SyncState {
    /// Commits made through the gate so far.
    committed: u64,
    /// Every commit up to this one is known durable.
    synced: u64,
    /// A thread is fsyncing now.
    syncing: bool,
    /// fsyncs performed (for tests and metrics).
    syncs: u64,
    /// The WAL file (device, inode) whose directory entry is known durable.
    wal_entry_synced: Option<(u64, u64)>,
    /// Directory fsyncs performed (for tests).
    dir_syncs: u64,
}

/// The writer lock and the group-commit state of one database file.
pub struct DbGate {
    writer: Mutex<()>,
    wal: PathBuf,
    state: Mutex<SyncState>,
    synced: Condvar,
    sync_fn: fn(&Path) -> std::io::Result<()>,
}

/// The gate of the database at `path`: one per file per process, whatever the spelling.
pub fn gate(path: &Path) -> Arc<DbGate> {
    static GATES: OnceLock<Mutex<HashMap<PathBuf, Arc<DbGate>>>> = OnceLock::new();
    let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut gates = GATES.get_or_init(|| Mutex::new(HashMap::new())).lock();
    Arc::clone(
        gates
            .entry(key.clone())
            .or_insert_with(|| Arc::new(DbGate::new(&key, fsync_file))),
    )
}

/// fsyncs the file at `path` (data and size). Opened anew each time: SQLite may delete
/// and recreate the WAL when the last connection to the database closes, and a kept
/// descriptor would then sync a file nobody writes any more.
fn fsync_file(path: &Path) -> std::io::Result<()> {
    match std::fs::File::open(path) {
        Ok(f) => f.sync_data(),
        // No WAL file: every commit is already in the (synced) database file, which is
        // how SQLite leaves it after the last connection's checkpoint.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

impl DbGate {
    fn new(db: &Path, sync_fn: fn(&Path) -> std::io::Result<()>) -> Self {
        let mut wal = db.as_os_str().to_owned();
        wal.push("-wal");
        Self {
            writer: Mutex::new(()),
            wal: PathBuf::from(wal),
            state: Mutex::new(SyncState::default()),
            synced: Condvar::new(),
            sync_fn,
        }
    }

    /// Takes the writer lock; hold it around a write transaction, from `BEGIN` to
    /// [`Self::committed`].
    pub fn writer(&self) -> MutexGuard<'_, ()> {
        self.writer.lock()
    }

    /// Records a commit just made under the writer lock; the ticket to wait on.
    pub fn committed(&self, _writer: &MutexGuard<'_, ()>) -> Ticket {
        let mut s = self.state.lock();
        s.committed += 1;
        Ticket(s.committed)
    }

    /// Returns once the commit behind `ticket` is on disk (the WAL fsynced after it).
    /// Call it without the writer lock, so other writers commit while this one waits.
    pub fn wait_durable(&self, ticket: Ticket) -> std::io::Result<()> {
        let mut s = self.state.lock();
        loop {
            if s.synced >= ticket.0 {
                return Ok(());
            }
            if s.syncing {
                self.synced.wait(&mut s);
                continue;
            }
            // Lead: one fsync for every commit made up to now.
            s.syncing = true;
            let target = s.committed;
            drop(s);
            let result = (self.sync_fn)(&self.wal).and_then(|()| self.sync_wal_entry());
            s = self.state.lock();
            s.syncing = false;
            s.syncs += 1;
            if result.is_ok() {
                s.synced = s.synced.max(target);
            }
            self.synced.notify_all();
            // On failure the waiters wake and try again themselves; this caller reports it.
            result?;
        }
    }

    /// fsyncs performed through this gate so far.
    pub fn syncs(&self) -> u64 {
        self.state.lock().syncs
    }

    /// Makes the WAL's directory entry durable once per WAL file. SQLite fsyncs the
    /// folder itself when it syncs a new WAL, but here the WAL is synced outside SQLite
    /// (by the group commit), so a WAL created since the last sync (a new database, or
    /// one SQLite deleted and recreated) could otherwise vanish with its commits on power
    /// loss. Only the leader of a sync calls this.
    fn sync_wal_entry(&self) -> std::io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let entry = match std::fs::metadata(&self.wal) {
            Ok(m) => (m.dev(), m.ino()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        if self.state.lock().wal_entry_synced == Some(entry) {
            return Ok(());
        }
        if let Some(dir) = self.wal.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        let mut s = self.state.lock();
        s.wal_entry_synced = Some(entry);
        s.dir_syncs += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn one_gate_per_file_whatever_the_spelling() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ledger.sqlite3");
        std::fs::write(&file, b"").unwrap();
        let a = gate(&file);
        let b = gate(&dir.path().join(".").join("ledger.sqlite3"));
        assert!(Arc::ptr_eq(&a, &b));
        let other = gate(&dir.path().join("other.sqlite3"));
        assert!(!Arc::ptr_eq(&a, &other));
        assert_eq!(
            a.wal,
            std::fs::canonicalize(&file)
                .unwrap()
                .with_extension("sqlite3-wal")
        );
    }

    // The test sync: counts calls, and records how many commits had been made when each
    // sync began, so a waiter can check that a sync started after its commit.
    static COMMITS: AtomicU64 = AtomicU64::new(0);
    static SYNCED_UP_TO: AtomicU64 = AtomicU64::new(0);
    fn slow_sync(_: &Path) -> std::io::Result<()> {
        let seen = COMMITS.load(Ordering::SeqCst);
        std::thread::sleep(std::time::Duration::from_millis(2));
        SYNCED_UP_TO.fetch_max(seen, Ordering::SeqCst);
        Ok(())
    }

    #[test]
    fn concurrent_writers_share_fsyncs_and_none_returns_before_its_commit_is_synced() {
        let g = Arc::new(DbGate::new(Path::new("/nonexistent/db"), slow_sync));
        let threads = 16;
        let per_thread = 20;
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let g = Arc::clone(&g);
                std::thread::spawn(move || {
                    for _ in 0..per_thread {
                        let (ticket, n) = {
                            let w = g.writer();
                            let n = COMMITS.fetch_add(1, Ordering::SeqCst) + 1;
                            (g.committed(&w), n)
                        };
                        g.wait_durable(ticket).unwrap();
                        assert!(
                            SYNCED_UP_TO.load(Ordering::SeqCst) >= n,
                            "commit {n} acknowledged before a sync covered it"
                        );
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let total = threads * per_thread;
        let syncs = g.syncs();
        assert!(syncs >= 1);
        assert!(
            syncs < total / 2,
            "{syncs} fsyncs for {total} commits: concurrent commits should share them"
        );
    }

    fn failing_sync(_: &Path) -> std::io::Result<()> {
        Err(std::io::Error::other("disk on fire"))
    }

    #[test]
    fn a_failed_fsync_is_reported_and_nothing_counts_as_durable() {
        let g = DbGate::new(Path::new("/nonexistent/db"), failing_sync);
        let t = {
            let w = g.writer();
            g.committed(&w)
        };
        let err = g.wait_durable(t).unwrap_err();
        assert!(err.to_string().contains("disk on fire"));
        assert_eq!(g.state.lock().synced, 0);
    }

    fn plain_sync(path: &Path) -> std::io::Result<()> {
        fsync_file(path)
    }

    #[test]
    fn a_new_wal_file_has_its_directory_entry_synced_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        let g = DbGate::new(&db, plain_sync);
        let commit_and_wait = || {
            let t = {
                let w = g.writer();
                g.committed(&w)
            };
            g.wait_durable(t).unwrap();
        };
        // No WAL yet: nothing to make durable.
        commit_and_wait();
        assert_eq!(g.state.lock().dir_syncs, 0);
        std::fs::write(dir.path().join("db-wal"), b"frames").unwrap();
        commit_and_wait();
        commit_and_wait();
        assert_eq!(g.state.lock().dir_syncs, 1, "one folder fsync per WAL file");
        // A new WAL file in its place (made while the old one exists, so it is surely
        // another inode): a new entry to make durable.
        std::fs::write(dir.path().join("db-wal.new"), b"frames").unwrap();
        std::fs::rename(dir.path().join("db-wal.new"), dir.path().join("db-wal")).unwrap();
        commit_and_wait();
        assert_eq!(g.state.lock().dir_syncs, 2);
    }

    #[test]
    fn a_missing_wal_needs_no_sync_and_a_present_one_is_synced() {
        let dir = tempfile::tempdir().unwrap();
        assert!(fsync_file(&dir.path().join("absent-wal")).is_ok());
        let wal = dir.path().join("db-wal");
        std::fs::write(&wal, b"frames").unwrap();
        assert!(fsync_file(&wal).is_ok());
    }
}
