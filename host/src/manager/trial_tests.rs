//! The half-open circuit's single trial is handed back when the manager takes it but
//! never calls the extension (issue 14, item 18): here the status write before a
//! failover's call fails. Without the release the extension stays unroutable forever.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rust_decimal::Decimal;

use super::store::{Inserted, LeaseRow, Page, Row, SandboxKey, SandboxStore, StoreError};
use super::{Backend, Extensions, ManagerConfig, ManagerError, ManagerParts, SandboxManager};
use crate::domain::{
    BackendError, BackendState, BackendStatus, Capacity, Cost, Created, Currency, ExtensionError,
    ExtensionInfo, Fault, Function, HealthStatus, Kind, Money, SandboxContext, SandboxRequest,
    SandboxSpec, SandboxState, SandboxStatus, Usage,
};
use crate::payments::{CreditsStore, OverdraftPolicy};
use crate::routing::health::{HealthConfig, HealthTracker, ManualClock};
use crate::storage::sqlite::ledger::SqliteCreditsStore;
use crate::storage::sqlite::sandboxes::SqliteSandboxStore;

fn usd(amount: &str) -> Money {
    Money {
        amount: amount.parse::<Decimal>().expect("test amount"),
        currency: Currency::new("USD").expect("USD"),
    }
}

/// A backend whose `create` either succeeds or is `unavailable` (retryable: the
/// router fails over to the next candidate).
struct Fake {
    info: ExtensionInfo,
    price: &'static str,
    fail_create: bool,
}

impl Fake {
    fn backend(id: &str, price: &'static str, fail_create: bool) -> Arc<dyn Backend> {
        Arc::new(Self {
            info: ExtensionInfo {
                id: id.into(),
                name: id.into(),
                version: "1".into(),
                kind: Kind::Saas,
                currency: Currency::new("USD").expect("USD"),
                regions: vec![],
                startup_latency_ms: 1,
                capabilities: vec![],
            },
            price,
            fail_create,
        })
    }
}

impl Backend for Fake {
    fn id(&self) -> &str {
        &self.info.id
    }
    fn version(&self) -> &str {
        "v1"
    }
    fn info(&self) -> &ExtensionInfo {
        &self.info
    }
    fn estimate_cost(&self, _req: &SandboxRequest) -> Result<Cost, ExtensionError> {
        Ok(Cost {
            total: usd(self.price),
            line_items: vec![],
        })
    }
    fn create(&self, _req: &SandboxRequest) -> Result<Created, ExtensionError> {
        if self.fail_create {
            return Err(ExtensionError {
                extension: self.info.id.clone(),
                function: Function::Create,
                fault: Fault::Backend(BackendError::Unavailable("down".into())),
            });
        }
        Ok(Created {
            handle: "h-1".into(),
            region: None,
        })
    }
    fn status(&self, _ctx: &SandboxContext) -> Result<BackendStatus, ExtensionError> {
        Ok(BackendStatus {
            state: BackendState::Running,
            detail: String::new(),
        })
    }
    fn destroy(&self, _ctx: &SandboxContext) -> Result<Usage, ExtensionError> {
        Ok(Usage {
            duration_ms: 0,
            measures: vec![],
        })
    }
    fn meter_actual(&self, _req: &SandboxRequest, _usage: &Usage) -> Result<Cost, ExtensionError> {
        Ok(Cost {
            total: usd("0"),
            line_items: vec![],
        })
    }
    fn capacity(&self) -> Result<Capacity, ExtensionError> {
        Ok(Capacity {
            max_sandboxes: None,
        })
    }
}

/// The real SQLite store, except that while `broken` is set, the write that records a
/// failover to `second` (before `second` is called) fails.
struct FailingUpdates {
    inner: Arc<dyn SandboxStore>,
    broken: AtomicBool,
}

impl SandboxStore for FailingUpdates {
    fn insert(
        &self,
        st: &SandboxStatus,
        fingerprint: &str,
        owner: &str,
        slot: Option<(&str, u32)>,
    ) -> Result<Inserted, StoreError> {
        self.inner.insert(st, fingerprint, owner, slot)
    }
    fn update(
        &self,
        st: &SandboxStatus,
        owner: Option<&str>,
        durable: bool,
    ) -> Result<(), StoreError> {
        let failover_to_second =
            st.state == SandboxState::Creating && st.extension_id.as_deref() == Some("second");
        if self.broken.load(Ordering::SeqCst) && failover_to_second {
            return Err(StoreError {
                path: "test".into(),
                message: "disk I/O error (injected)".into(),
            });
        }
        self.inner.update(st, owner, durable)
    }
    fn transition(
        &self,
        st: &SandboxStatus,
        from: SandboxState,
        from_owner: Option<&str>,
        from_version: i64,
        owner: Option<&str>,
    ) -> Result<bool, StoreError> {
        self.inner
            .transition(st, from, from_owner, from_version, owner)
    }
    fn release(&self, id: &str, owner: &str) -> Result<(), StoreError> {
        self.inner.release(id, owner)
    }
    fn delete(&self, id: &str) -> Result<(), StoreError> {
        self.inner.delete(id)
    }
    fn get(&self, id: &str) -> Result<Option<Row>, StoreError> {
        self.inner.get(id)
    }
    fn by_key(
        &self,
        tenant: &str,
        key: &str,
    ) -> Result<Option<(SandboxStatus, String)>, StoreError> {
        self.inner.by_key(tenant, key)
    }
    fn list(
        &self,
        tenant: Option<&str>,
        state: Option<SandboxState>,
    ) -> Result<Vec<SandboxStatus>, StoreError> {
        self.inner.list(tenant, state)
    }
    fn list_page(
        &self,
        tenant: Option<&str>,
        state: Option<SandboxState>,
        after: Option<&SandboxKey>,
        limit: usize,
    ) -> Result<Page<SandboxStatus, SandboxKey>, StoreError> {
        self.inner.list_page(tenant, state, after, limit)
    }
    fn counts_by_state(&self) -> Result<Vec<(SandboxState, Option<String>, u64)>, StoreError> {
        self.inner.counts_by_state()
    }
    fn in_flight(&self) -> Result<Vec<Row>, StoreError> {
        self.inner.in_flight()
    }
    fn live_counts(&self) -> Result<HashMap<String, u32>, StoreError> {
        self.inner.live_counts()
    }
    fn lease(&self, id: &str) -> Result<Option<LeaseRow>, StoreError> {
        self.inner.lease(id)
    }
    fn set_lease(&self, id: &str, lease: LeaseRow) -> Result<(), StoreError> {
        self.inner.set_lease(id, lease)
    }
    fn forget_finished_leases(&self) -> Result<(), StoreError> {
        self.inner.forget_finished_leases()
    }
}

#[test]
fn a_trial_whose_status_write_failed_is_handed_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("ledger.sqlite");
    let ledger: Arc<dyn CreditsStore> = Arc::new(
        SqliteCreditsStore::open_with_policy(&db, OverdraftPolicy::WriteOff).expect("ledger"),
    );
    ledger
        .grant("acme", &usd("10"), "test", "grant-1")
        .expect("grant");
    let store = Arc::new(FailingUpdates {
        inner: Arc::new(SqliteSandboxStore::open(&db).expect("store")),
        broken: AtomicBool::new(false),
    });

    let profiles_dir = dir.path().join("profiles");
    std::fs::create_dir(&profiles_dir).expect("profiles dir");
    // `first` is cheaper, so it is tried first; it is down, so the create fails over
    // to `second`, whose circuit is half-open.
    std::fs::write(
        profiles_dir.join("p.toml"),
        "id = \"p\"\ntemplate = \"base\"\nmax_duration_secs = 600\n\
         [resources]\nvcpus = 1\nmemory_mib = 256\n\
         [route]\nstrategy = \"lowest-cost\"\ncandidates = [\"first\", \"second\"]\n\
         fallback = true\nmax_attempts = 2\n",
    )
    .expect("profile");
    let profiles = crate::routing::profile::load_profiles(&profiles_dir).expect("profiles");

    let extensions = Arc::new(Extensions::default());
    extensions.upsert(Fake::backend("first", "0.01", true));
    extensions.upsert(Fake::backend("second", "0.02", false));

    let clock = Arc::new(ManualClock::new());
    let health = HealthTracker::with_clock(
        HealthConfig {
            failure_threshold: 1,
            cool_down: Duration::from_secs(30),
            ..HealthConfig::default()
        },
        clock.clone(),
    );
    // Open `second`'s circuit with one failure, then let the cool-down pass: half-open,
    // no trial handed out yet.
    health.record_failure(
        "second",
        &ExtensionError {
            extension: "second".into(),
            function: Function::Create,
            fault: Fault::Backend(BackendError::Unavailable("earlier outage".into())),
        },
    );
    clock.advance(Duration::from_secs(31));
    assert_eq!(
        health.status("second"),
        HealthStatus::HalfOpen {
            trial_in_flight: false
        }
    );

    let manager = SandboxManager::open(ManagerParts {
        store: store.clone(),
        run_dir: dir.path().join("run"),
        extensions,
        profiles: Arc::new(profiles),
        ledger,
        health: health.clone(),
        sinks: vec![],
        config: ManagerConfig::default(),
    })
    .expect("manager");

    store.broken.store(true, Ordering::SeqCst);
    let spec = SandboxSpec {
        profile: "p".into(),
        ..SandboxSpec::default()
    };
    let err = manager
        .create("acme", &spec, None)
        .expect_err("the failover's status write fails");
    assert!(
        matches!(err, ManagerError::Store(_)),
        "the store error is the answer: {err:?}"
    );

    // The trial was handed back: the circuit is half-open with no trial in flight, so
    // the next create may try `second` again (and closes the circuit when it works).
    assert_eq!(
        health.status("second"),
        HealthStatus::HalfOpen {
            trial_in_flight: false
        },
        "the trial must not stay taken"
    );
    store.broken.store(false, Ordering::SeqCst);
    let st = manager
        .create("acme", &spec, None)
        .expect("the next create reaches `second`");
    assert_eq!(st.extension_id.as_deref(), Some("second"));
    assert_eq!(st.state, SandboxState::Running);
    assert!(matches!(
        health.status("second"),
        HealthStatus::Closed { .. }
    ));
}
