//! The `SandboxManager`: the one place that sequences a sandbox's lifecycle across
//! routing, payments and the runtime.
//!
//! ```text
//! create:  route → [intent: creating] → hold → create → [running]          (fail over: void, next)
//! destroy: [destroying @ t] → destroy → meter-actual → [reading] → settle+event → [destroyed] → deliver
//! ```
//!
//! Every step between two durable writes can be re-run after a crash without doing
//! anything twice: ledger writes carry idempotency keys derived from the sandbox id, the
//! usage window is fixed before the extension is asked, and [`SandboxManager::reconcile`]
//! finishes or rolls back whatever a dead process left in `creating` or `destroying`.
//! docs/manager.md walks through each crash point.

mod backend;
mod create;
mod destroy;
mod error;
mod lease;
pub mod meter;
mod outbox;
mod owner;
mod reconcile;
mod session;
pub mod store;
#[cfg(test)]
mod trial_tests;

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard, RwLock};

pub use backend::{Backend, Extensions, RouteView};
pub use error::ManagerError;
pub use lease::{LeasePolicy, LeaseReport};
pub use reconcile::ReconcileReport;
pub use store::{Page, SandboxKey, SandboxStore, StoreError};

use crate::domain::{
    RouteDecision, RouteError, SandboxRequest, SandboxSpec, SandboxState, SandboxStatus,
};
use crate::events::EventSink;
use crate::payments::CreditsStore;
use crate::routing::{HealthTracker, Profile, ProfileSet, resolve_extension};
use owner::OwnerLock;

/// Tunables of the manager.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// The CloudEvents `source` of meter events, e.g. `urn:sandboxer:host:myhost`.
    pub event_source: String,
    /// A hold with no sandbox record is voided by reconciliation only once it is this
    /// old (another process may be between taking it and recording it).
    pub orphan_hold_grace: Duration,
    /// Hold credits in leases renewed while a sandbox runs (`None`: hold the whole
    /// maximum duration at create). See [`SandboxManager::keep_leases`].
    pub lease: Option<LeasePolicy>,
    /// Deliver the outbox right after each settlement (the CLI's behaviour). A service
    /// may turn it off and call [`SandboxManager::deliver_outbox`] on a timer instead, so
    /// many settlements share one sink write and one acknowledgement commit.
    pub deliver_after_settle: bool,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            event_source: default_event_source(),
            orphan_hold_grace: Duration::from_secs(60),
            deliver_after_settle: true,
            lease: None,
        }
    }
}

/// `urn:sandboxer:host:<hostname>` (or `…:localhost` when the name is unknown).
pub fn default_event_source() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        })
        .unwrap_or_else(|| "localhost".to_owned());
    format!("urn:sandboxer:host:{host}")
}

/// Everything the manager is built from.
pub struct ManagerParts {
    /// The sandbox statuses (opened after the ledger, in the same database).
    pub store: Arc<dyn SandboxStore>,
    /// Folder for the liveness locks of manager instances (`<state>/run`).
    pub run_dir: PathBuf,
    /// The loaded extensions.
    pub extensions: Arc<Extensions>,
    /// The loaded profiles.
    pub profiles: Arc<ProfileSet>,
    /// The credits ledger (already opened: it owns the database's creation).
    pub ledger: Arc<dyn CreditsStore>,
    /// Health and latency per extension, shared with routing.
    pub health: HealthTracker,
    /// Where meter events are delivered.
    pub sinks: Vec<Arc<dyn EventSink>>,
    /// Tunables.
    pub config: ManagerConfig,
}

const STRIPES: usize = 64;

/// How long a background pass waits for its per-extension groups before returning.
const BACKGROUND_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Sequences sandbox lifecycles. Thread safe; share it in an `Arc`.
pub struct SandboxManager {
    extensions: Arc<Extensions>,
    profiles: RwLock<Arc<ProfileSet>>,
    ledger: Arc<dyn CreditsStore>,
    health: HealthTracker,
    sinks: Vec<Arc<dyn EventSink>>,
    config: ManagerConfig,
    store: Arc<dyn SandboxStore>,
    owner: OwnerLock,
    // Per-key serialisation (an idempotency key, a sandbox id) without a map that grows.
    // The stripe of a key is a keyed hash (random per process), so a tenant cannot pick
    // keys that land on every stripe and hold up other tenants' operations.
    stripes: Vec<Mutex<()>>,
    stripe_hasher: RandomState,
    // Extensions with a background group (reaper, lease keeper) still running.
    background: Mutex<HashSet<String>>,
    // Sandboxes with an operation running in this process: reconciliation leaves them.
    busy: Mutex<HashSet<String>>,
    // One delivery at a time.
    delivery: Mutex<()>,
    // Called at the named points of a race window, for tests only (see `set_test_hook`).
    test_hook: RwLock<Option<TestHook>>,
}

/// Where a [`TestHook`] is called: between two steps that another process may interleave.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookPoint {
    /// `destroy` read a `running` row and is about to claim it (compare-and-set).
    DestroyBeforeClaim,
    /// The lease keeper replaced a sandbox's hold and is about to record the new one.
    LeaseAfterReplace,
    /// The backend's `create` returned; its handle is not recorded yet.
    CreateAfterBackend,
}

/// A test's callback at a [`HookPoint`], with the sandbox id.
#[doc(hidden)]
pub type TestHook = Arc<dyn Fn(HookPoint, &str) + Send + Sync>;

impl SandboxManager {
    /// Opens the manager over an already opened ledger: creates or migrates its tables
    /// and takes its liveness lock. Call [`SandboxManager::reconcile`] next.
    pub fn open(parts: ManagerParts) -> Result<Self, ManagerError> {
        let store = parts.store;
        let owner = OwnerLock::acquire(&parts.run_dir).map_err(|e| {
            ManagerError::Setup(format!("cannot lock {}: {e}", parts.run_dir.display()))
        })?;
        Ok(Self {
            extensions: parts.extensions,
            profiles: RwLock::new(parts.profiles),
            ledger: parts.ledger,
            health: parts.health,
            sinks: parts.sinks,
            config: parts.config,
            store,
            owner,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            stripe_hasher: RandomState::new(),
            background: Mutex::new(HashSet::new()),
            busy: Mutex::new(HashSet::new()),
            delivery: Mutex::new(()),
            test_hook: RwLock::new(None),
        })
    }

    /// Installs (or with `None` removes) a callback run at each [`HookPoint`], so a test
    /// can interleave another process's step deterministically. Not for production use.
    #[doc(hidden)]
    pub fn set_test_hook(&self, hook: Option<TestHook>) {
        *self.test_hook.write() = hook;
    }

    fn hook(&self, point: HookPoint, id: &str) {
        let hook = self.test_hook.read().clone();
        if let Some(h) = hook {
            h(point, id);
        }
    }

    /// The profile `id`, or [`ManagerError::UnknownProfile`] naming the known ones.
    pub fn profile_named(&self, id: &str) -> Result<Profile, ManagerError> {
        self.profile(id)
    }

    /// The profiles in force.
    pub fn profiles(&self) -> Arc<ProfileSet> {
        self.profiles.read().clone()
    }

    /// Replaces the profiles (hot reload).
    pub fn set_profiles(&self, profiles: Arc<ProfileSet>) {
        *self.profiles.write() = profiles;
    }

    /// The ledger.
    pub fn ledger(&self) -> &Arc<dyn CreditsStore> {
        &self.ledger
    }

    /// One sandbox's status. With `tenant`, another tenant's sandbox is reported as not
    /// found (never reveal that it exists).
    pub fn status(&self, tenant: Option<&str>, id: &str) -> Result<SandboxStatus, ManagerError> {
        Ok(self.visible_row(tenant, id)?.status)
    }

    /// The row of sandbox `id`, as `tenant` may see it: another tenant's is not found.
    fn visible_row(&self, tenant: Option<&str>, id: &str) -> Result<store::Row, ManagerError> {
        let row = self
            .store
            .get(id)?
            .ok_or_else(|| ManagerError::NotFound { id: id.to_owned() })?;
        if tenant.is_some_and(|t| t != row.status.tenant) {
            return Err(ManagerError::NotFound { id: id.to_owned() });
        }
        Ok(row)
    }

    /// One page of sandboxes, newest first, after `after` (the previous page's `next`),
    /// optionally of one tenant and in one state: at most `limit` of them. A key from
    /// another listing only positions this one in time; the filters decide which rows
    /// can appear.
    pub fn list_page(
        &self,
        tenant: Option<&str>,
        state: Option<SandboxState>,
        after: Option<&SandboxKey>,
        limit: usize,
    ) -> Result<Page<SandboxStatus, SandboxKey>, ManagerError> {
        Ok(self.store.list_page(tenant, state, after, limit)?)
    }

    /// How many sandboxes are in each (state, extension) pair; `None` for sandboxes that
    /// never reached an extension. Counted in SQL, for gauges refreshed on every scrape.
    pub fn counts_by_state(
        &self,
    ) -> Result<Vec<(SandboxState, Option<String>, u64)>, ManagerError> {
        Ok(self.store.counts_by_state()?)
    }

    /// A routing view of the current extensions with the durable in-use counts: what
    /// `create` routes with, and what `route explain` shows.
    pub fn route_view(&self) -> Result<RouteView, ManagerError> {
        Ok(self.extensions.view(self.store.live_counts()?))
    }

    /// How `spec` would be routed for `tenant` right now: the request built from its
    /// profile and overrides, and the router's decision (or why nothing can serve). The
    /// very code `create` routes with; nothing is created or held.
    pub fn explain(
        &self,
        tenant: &str,
        spec: &SandboxSpec,
    ) -> Result<(SandboxRequest, Result<RouteDecision, RouteError>), ManagerError> {
        let profile = self.profile(&spec.profile)?;
        let request = profile.request(tenant, "explain", spec)?;
        let view = self.route_view()?;
        let decision = resolve_extension(&profile, &request, &view, &self.health);
        Ok((request, decision))
    }

    fn profile(&self, id: &str) -> Result<Profile, ManagerError> {
        let profiles = self.profiles.read();
        profiles.get(id).cloned().ok_or_else(|| {
            let mut known: Vec<String> = profiles.iter().map(|p| p.id.clone()).collect();
            known.sort();
            ManagerError::UnknownProfile {
                profile: id.to_owned(),
                known,
            }
        })
    }

    fn stripe(&self, key: &str) -> MutexGuard<'_, ()> {
        let i = usize::try_from(self.stripe_hasher.hash_one(key) % STRIPES as u64).unwrap_or(0);
        self.stripes[i].lock()
    }

    /// Runs `work` on each of `rows`, one thread per extension (the rows of one extension
    /// in turn), and returns what finished within [`BACKGROUND_WAIT`]: a background pass is
    /// never held up across extensions by a slow one. A group still running when the pass
    /// returns finishes on its own thread (its work logs and counts itself), and later
    /// passes skip that extension until it is done, so threads do not pile up behind it.
    pub(super) fn per_extension<T: Send + 'static>(
        self: &Arc<Self>,
        rows: Vec<SandboxStatus>,
        work: fn(&SandboxManager, &SandboxStatus) -> T,
    ) -> Vec<T> {
        let mut groups: std::collections::BTreeMap<String, Vec<SandboxStatus>> =
            std::collections::BTreeMap::new();
        for st in rows {
            groups
                .entry(st.extension_id.clone().unwrap_or_default())
                .or_default()
                .push(st);
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let mut started = 0;
        for (extension, rows) in groups {
            if !self.background.lock().insert(extension.clone()) {
                tracing::debug!(extension = %extension, "background work on it still running: skipped this pass");
                continue;
            }
            started += 1;
            let (me, tx) = (Arc::clone(self), tx.clone());
            let spawned = std::thread::Builder::new()
                .name("sandboxer-background".into())
                .spawn(move || {
                    let out: Vec<T> = rows.iter().map(|st| work(&me, st)).collect();
                    me.background.lock().remove(&extension);
                    // The pass may have stopped waiting: then nobody needs the results.
                    let _ = tx.send(out);
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "could not start a background thread");
                started -= 1;
            }
        }
        drop(tx);
        let deadline = std::time::Instant::now() + BACKGROUND_WAIT;
        let mut out = Vec::new();
        for _ in 0..started {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(done) => out.extend(done),
                Err(_) => break,
            }
        }
        out
    }

    /// Marks `id` as worked on by this process until the guard drops.
    fn mark_busy(&self, id: &str) -> BusyGuard<'_> {
        self.busy.lock().insert(id.to_owned());
        BusyGuard {
            manager: self,
            id: id.to_owned(),
        }
    }

    fn is_busy_here(&self, id: &str) -> bool {
        self.busy.lock().contains(id)
    }
}

struct BusyGuard<'a> {
    manager: &'a SandboxManager,
    id: String,
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.manager.busy.lock().remove(&self.id);
    }
}

/// Unix milliseconds on the host clock.
pub(crate) fn now_ms() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0)
}

fn ms_to_time(ms: u64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(i64::try_from(ms).unwrap_or(i64::MAX))
        .unwrap_or_default()
}
