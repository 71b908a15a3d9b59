//! What the manager keeps about sandboxes, as a trait: one row per [`SandboxStatus`] (with
//! the instance working on it and a version every write bumps), looked up by id, tenant
//! and idempotency key, paged by creation time, counted by state; and the lease coverage
//! of running sandboxes. The SQLite store is `storage::sqlite::sandboxes`; a PostgreSQL
//! one implements the same trait beside its `CreditsStore`.
//!
//! Every write names whether the caller waits for it to be durable: a status write that
//! a ledger write follows before anyone is answered rides on that write's fsync (both
//! live in one database), see docs/manager.md.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::domain::{SandboxState, SandboxStatus};

/// The status store could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sandbox store {path}: {message}")]
pub struct StoreError {
    /// The database (file, or a description of the server).
    pub path: PathBuf,
    /// What went wrong.
    pub message: String,
}

/// What [`SandboxStore::insert`] found.
#[derive(Debug)]
pub enum Inserted {
    /// The row is new.
    New,
    /// A row with the same tenant and idempotency key exists (another caller won), with
    /// its request fingerprint.
    Existing(Box<SandboxStatus>, String),
    /// The pool named in `slot` is already full (another process took the last slot).
    PoolFull,
}

/// Where a page of sandboxes stopped: the sort key (creation time, id) of its last row.
/// The next page starts strictly after it, so rows inserted meanwhile (newer, hence
/// before it in the order) neither repeat nor push rows out of later pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxKey {
    /// `created_at` of the last row, in Unix milliseconds (as stored).
    pub created_at_ms: i64,
    /// Its id (the tie-break between rows created in the same millisecond).
    pub id: String,
}

/// One page of a list: at most the asked number of items, and where the next page
/// starts (`None`: this was the last).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T, K> {
    /// The items, in the list's order.
    pub items: Vec<T>,
    /// The key of the last item when more follow it.
    pub next: Option<K>,
}

/// A row: the status, the instance with an operation in flight on it, if any, and the
/// row's version (what [`SandboxStore::transition`] compares).
#[derive(Debug, Clone)]
pub struct Row {
    /// The status.
    pub status: SandboxStatus,
    /// The manager instance working on it.
    pub owner: Option<String>,
    /// Incremented by every write of the row.
    pub version: i64,
}

/// How far a running sandbox's credits lease is paid, and since when a renewal is
/// refused (see `lease.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRow {
    /// Seconds of running time the current hold covers.
    pub covered_secs: u64,
    /// When a renewal was first refused (Unix ms), while it stays refused.
    pub unpaid_since_ms: Option<u64>,
}

/// Durable sandbox statuses. Thread safe; every method is one short transaction.
pub trait SandboxStore: Send + Sync {
    /// Records a new sandbox (the create intent) with its request fingerprint, owned by
    /// `owner`. When the tenant already used the idempotency key, nothing is written and
    /// the existing row is returned. With `slot = (extension, max)`, nothing is written
    /// when that extension already has `max` live sandboxes. Not waited durable: the
    /// hold that follows covers it.
    fn insert(
        &self,
        st: &SandboxStatus,
        fingerprint: &str,
        owner: &str,
        slot: Option<(&str, u32)>,
    ) -> Result<Inserted, StoreError>;

    /// Rewrites a sandbox's row. `owner` is the instance still working on it (`None` once
    /// the operation is over). `durable`: returns once the write survives power loss.
    fn update(
        &self,
        st: &SandboxStatus,
        owner: Option<&str>,
        durable: bool,
    ) -> Result<(), StoreError>;

    /// Writes `st` only if the row is still in state `from` with owner `from_owner` at
    /// version `from_version` (compare-and-set): how an instance claims a sandbox, and
    /// how a writer avoids writing back fields that changed meanwhile. Returns whether it
    /// was written; on `false`, read the row again.
    fn transition(
        &self,
        st: &SandboxStatus,
        from: SandboxState,
        from_owner: Option<&str>,
        from_version: i64,
        owner: Option<&str>,
    ) -> Result<bool, StoreError>;

    /// Gives up `owner`'s claim on a row it could not finish, so any process may retry.
    fn release(&self, id: &str, owner: &str) -> Result<(), StoreError>;

    /// Forgets a sandbox that never reached an extension.
    fn delete(&self, id: &str) -> Result<(), StoreError>;

    /// One sandbox.
    fn get(&self, id: &str) -> Result<Option<Row>, StoreError>;

    /// The sandbox a tenant created with an idempotency key, with its fingerprint.
    fn by_key(
        &self,
        tenant: &str,
        key: &str,
    ) -> Result<Option<(SandboxStatus, String)>, StoreError>;

    /// Sandboxes, newest first, optionally of one tenant and in one state.
    fn list(
        &self,
        tenant: Option<&str>,
        state: Option<SandboxState>,
    ) -> Result<Vec<SandboxStatus>, StoreError>;

    /// At most `limit` sandboxes, newest first, after `after` (exclusive), optionally of
    /// one tenant and in one state (a keyset range; `limit` 0 answers an empty page).
    fn list_page(
        &self,
        tenant: Option<&str>,
        state: Option<SandboxState>,
        after: Option<&SandboxKey>,
        limit: usize,
    ) -> Result<Page<SandboxStatus, SandboxKey>, StoreError>;

    /// How many sandboxes are in each (state, extension) pair.
    fn counts_by_state(&self) -> Result<Vec<(SandboxState, Option<String>, u64)>, StoreError>;

    /// Rows caught between two steps (`creating`, `destroying`), oldest first.
    fn in_flight(&self) -> Result<Vec<Row>, StoreError>;

    /// Sandboxes occupying a slot (`creating`, `running`, `destroying`) per extension.
    fn live_counts(&self) -> Result<HashMap<String, u32>, StoreError>;

    /// The lease coverage recorded for a sandbox.
    fn lease(&self, id: &str) -> Result<Option<LeaseRow>, StoreError>;

    /// Records a sandbox's lease coverage.
    fn set_lease(&self, id: &str, lease: LeaseRow) -> Result<(), StoreError>;

    /// Forgets the leases of sandboxes that are no longer running.
    fn forget_finished_leases(&self) -> Result<(), StoreError>;
}
