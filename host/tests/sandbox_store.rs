//! The sandbox status store on SQLite and on a real PostgreSQL server alike
//! (`on_sqlite::*`, `on_postgres::*`): inserts with idempotency keys and pool slots,
//! compare-and-set transitions, pages, in-flight rows, live counts and leases; and two
//! stores on one database (two hosts) inserting into one pool at once never exceed it.

#[path = "support/pg.rs"]
mod pg;
#[path = "support/ledger_stores.rs"]
mod stores;

use std::collections::HashMap;
use std::sync::{Arc, Barrier};
use std::thread;

use sandboxer_host::domain::{Resources, SandboxRequest, SandboxState, SandboxStatus};
use sandboxer_host::layers::manager::{
    Inserted, LeaseRow, PgSandboxStore, SandboxKey, SandboxStore, SqliteSandboxStore,
};
use sandboxer_host::layers::payments::SqliteCreditsStore;
use stores::{Backend, TestLedger};

/// One fresh database of the backend; `open` gives a store on it (again and again: two
/// opens are two hosts on one database).
struct Db {
    ledger: TestLedger,
}

impl Db {
    fn new(backend: Backend) -> Self {
        let ledger = TestLedger::new(backend);
        if backend == Backend::Sqlite {
            SqliteCreditsStore::open(ledger.dir.path().join("ledger.sqlite3")).unwrap();
        }
        Self { ledger }
    }

    fn open(&self) -> Arc<dyn SandboxStore> {
        match self.ledger.backend {
            Backend::Sqlite => Arc::new(
                SqliteSandboxStore::open(&self.ledger.dir.path().join("ledger.sqlite3")).unwrap(),
            ),
            Backend::Postgres => {
                Arc::new(PgSandboxStore::open(self.ledger.url.as_deref().unwrap()).unwrap())
            }
        }
    }
}

fn status(id: &str, tenant: &str, ms: i64, state: SandboxState) -> SandboxStatus {
    let at = chrono::DateTime::from_timestamp_millis(ms).unwrap();
    SandboxStatus {
        id: id.to_owned(),
        tenant: tenant.into(),
        profile: "p".into(),
        extension_id: Some("ext".into()),
        extension_version: None,
        handle: None,
        state,
        created_at: at,
        started_at_ms: None,
        destroy_at_ms: None,
        request: SandboxRequest {
            sandbox_id: id.to_owned(),
            tenant: tenant.into(),
            profile: "p".into(),
            template: "base".into(),
            resources: Resources {
                vcpus: 1,
                memory_mib: 512,
                disk_mib: 0,
                gpu: None,
            },
            max_duration_secs: 60,
            region: None,
            env: Vec::new(),
            metadata: Vec::new(),
            byok: Default::default(),
        },
        estimate: None,
        hold_id: Some("h1".into()),
        held: None,
        attempts: Vec::new(),
        reading: None,
        meter: None,
        idempotency_key: None,
        error: None,
        meter_failures: 0,
        updated_at: at,
    }
}

fn keyed(id: &str, tenant: &str, key: &str) -> SandboxStatus {
    let mut st = status(id, tenant, 1_000, SandboxState::Creating);
    st.idempotency_key = Some(key.into());
    st
}

fn ids(items: &[SandboxStatus]) -> Vec<String> {
    items.iter().map(|s| s.id.clone()).collect()
}

fn an_idempotency_key_is_unique_per_tenant(backend: Backend) {
    let db = Db::new(backend);
    let store = db.open();
    let first = keyed("sb-1", "acme", "k1");
    assert!(matches!(
        store.insert(&first, "fp1", "host-a", None).unwrap(),
        Inserted::New
    ));
    match store
        .insert(&keyed("sb-2", "acme", "k1"), "fp2", "host-b", None)
        .unwrap()
    {
        Inserted::Existing(st, fp) => {
            assert_eq!(st.id, "sb-1");
            assert_eq!(fp, "fp1");
        }
        other => panic!("expected the existing row, got {other:?}"),
    }
    assert!(store.get("sb-2").unwrap().is_none());
    // Another tenant's key is its own.
    assert!(matches!(
        store
            .insert(&keyed("sb-3", "globex", "k1"), "fp3", "host-a", None)
            .unwrap(),
        Inserted::New
    ));
    let (st, fp) = store.by_key("acme", "k1").unwrap().unwrap();
    assert_eq!((st.id.as_str(), fp.as_str()), ("sb-1", "fp1"));
    assert!(store.by_key("acme", "k2").unwrap().is_none());
    // The same id twice is an error, not a second row.
    let err = store
        .insert(
            &status("sb-1", "acme", 1, SandboxState::Creating),
            "fp",
            "h",
            None,
        )
        .unwrap_err();
    assert!(err.message.contains("already exists"), "{err}");
    let row = store.get("sb-1").unwrap().unwrap();
    assert_eq!(row.owner.as_deref(), Some("host-a"));
}

fn a_full_pool_refuses_until_a_slot_is_freed(backend: Backend) {
    let db = Db::new(backend);
    let store = db.open();
    let slot = Some(("ext", 2));
    for id in ["a", "b"] {
        let st = status(id, "acme", 1, SandboxState::Creating);
        assert!(matches!(
            store.insert(&st, "fp", "h", slot).unwrap(),
            Inserted::New
        ));
    }
    let c = status("c", "acme", 1, SandboxState::Creating);
    assert!(matches!(
        store.insert(&c, "fp", "h", slot).unwrap(),
        Inserted::PoolFull
    ));
    // Another extension's pool is its own.
    let mut other = status("d", "acme", 1, SandboxState::Creating);
    other.extension_id = Some("other".into());
    assert!(matches!(
        store.insert(&other, "fp", "h", Some(("other", 1))).unwrap(),
        Inserted::New
    ));
    assert_eq!(
        store.live_counts().unwrap(),
        HashMap::from([("ext".to_owned(), 2), ("other".to_owned(), 1)])
    );
    let mut a = store.get("a").unwrap().unwrap().status;
    a.state = SandboxState::Destroyed;
    store.update(&a, None, true).unwrap();
    assert!(matches!(
        store.insert(&c, "fp", "h", slot).unwrap(),
        Inserted::New
    ));
    assert_eq!(store.live_counts().unwrap()["ext"], 2);
}

fn a_transition_is_a_compare_and_set_on_state_owner_and_version(backend: Backend) {
    let db = Db::new(backend);
    let store = db.open();
    let st = status("sb", "acme", 1, SandboxState::Running);
    store.insert(&st, "fp", "host-a", None).unwrap();
    let row = store.get("sb").unwrap().unwrap();
    assert_eq!(row.owner.as_deref(), Some("host-a"));
    let v = row.version;
    let mut destroying = st.clone();
    destroying.state = SandboxState::Destroying;
    // Wrong state, wrong owner, stale version: nothing written.
    assert!(
        !store
            .transition(
                &destroying,
                SandboxState::Creating,
                Some("host-a"),
                v,
                Some("host-b")
            )
            .unwrap()
    );
    assert!(
        !store
            .transition(&destroying, SandboxState::Running, None, v, Some("host-b"))
            .unwrap()
    );
    assert!(
        !store
            .transition(
                &destroying,
                SandboxState::Running,
                Some("host-a"),
                v + 1,
                Some("host-b")
            )
            .unwrap()
    );
    assert_eq!(store.get("sb").unwrap().unwrap().version, v);
    // As read: written, and the version moves on.
    assert!(
        store
            .transition(
                &destroying,
                SandboxState::Running,
                Some("host-a"),
                v,
                Some("host-b")
            )
            .unwrap()
    );
    let row = store.get("sb").unwrap().unwrap();
    assert_eq!(row.status.state, SandboxState::Destroying);
    assert_eq!(row.owner.as_deref(), Some("host-b"));
    assert!(row.version > v);
    // The same claim again loses: the row changed.
    assert!(
        !store
            .transition(
                &destroying,
                SandboxState::Running,
                Some("host-a"),
                v,
                Some("host-b")
            )
            .unwrap()
    );
    // A claim given up leaves no owner; the release of another owner changes nothing.
    store.release("sb", "host-a").unwrap();
    assert_eq!(
        store.get("sb").unwrap().unwrap().owner.as_deref(),
        Some("host-b")
    );
    store.release("sb", "host-b").unwrap();
    let row = store.get("sb").unwrap().unwrap();
    assert_eq!(row.owner, None);
    // A NULL owner compares equal to NULL.
    let mut gone = st.clone();
    gone.state = SandboxState::Destroyed;
    assert!(
        store
            .transition(&gone, SandboxState::Destroying, None, row.version, None)
            .unwrap()
    );
    // An update of a row that is not there is an error; delete forgets a row.
    let missing = status("nope", "acme", 1, SandboxState::Running);
    assert!(store.update(&missing, None, false).is_err());
    store.delete("sb").unwrap();
    assert!(store.get("sb").unwrap().is_none());
}

fn pages_lists_counts_and_in_flight_rows(backend: Backend) {
    let db = Db::new(backend);
    let store = db.open();
    let rows = [
        ("s1", "acme", 10, SandboxState::Running),
        ("s2", "acme", 20, SandboxState::Creating),
        ("s3", "globex", 30, SandboxState::Running),
        ("s4", "acme", 40, SandboxState::Destroyed),
        ("s5", "acme", 40, SandboxState::Destroying),
    ];
    for (id, tenant, ms, state) in rows {
        store
            .insert(&status(id, tenant, ms, state), "fp", "h", None)
            .unwrap();
    }
    // Newest first, ties broken by id, descending.
    assert_eq!(
        ids(&store.list(None, None).unwrap()),
        ["s5", "s4", "s3", "s2", "s1"]
    );
    assert_eq!(
        ids(&store
            .list(Some("acme"), Some(SandboxState::Running))
            .unwrap()),
        ["s1"]
    );
    // Pages of two over acme's rows, each starting strictly after the last.
    let p1 = store.list_page(Some("acme"), None, None, 2).unwrap();
    assert_eq!(ids(&p1.items), ["s5", "s4"]);
    assert_eq!(
        p1.next,
        Some(SandboxKey {
            created_at_ms: 40,
            id: "s4".into()
        })
    );
    let p2 = store
        .list_page(Some("acme"), None, p1.next.as_ref(), 2)
        .unwrap();
    assert_eq!(ids(&p2.items), ["s2", "s1"]);
    assert_eq!(p2.next, None);
    let all = store.list_page(None, None, None, 10).unwrap();
    assert_eq!(all.items.len(), 5);
    assert_eq!(all.next, None);
    let running = store
        .list_page(None, Some(SandboxState::Running), None, 1)
        .unwrap();
    assert_eq!(ids(&running.items), ["s3"]);
    let rest = store
        .list_page(None, Some(SandboxState::Running), running.next.as_ref(), 1)
        .unwrap();
    assert_eq!(ids(&rest.items), ["s1"]);
    assert!(
        store
            .list_page(None, None, None, 0)
            .unwrap()
            .items
            .is_empty()
    );
    // Caught between steps: creating and destroying, oldest first.
    let flight: Vec<String> = store
        .in_flight()
        .unwrap()
        .iter()
        .map(|r| r.status.id.clone())
        .collect();
    assert_eq!(flight, ["s2", "s5"]);
    assert_eq!(store.live_counts().unwrap()["ext"], 4);
    let mut counts = store.counts_by_state().unwrap();
    counts.sort_by_key(|(s, _, _)| s.as_str());
    let counts: Vec<(&str, u64)> = counts.iter().map(|(s, _, n)| (s.as_str(), *n)).collect();
    assert_eq!(
        counts,
        [
            ("creating", 1),
            ("destroyed", 1),
            ("destroying", 1),
            ("running", 2)
        ]
    );
}

fn leases_are_recorded_and_forgotten_once_finished(backend: Backend) {
    let db = Db::new(backend);
    let store = db.open();
    store
        .insert(
            &status("run", "acme", 1, SandboxState::Running),
            "fp",
            "h",
            None,
        )
        .unwrap();
    store
        .insert(
            &status("done", "acme", 1, SandboxState::Destroyed),
            "fp",
            "h",
            None,
        )
        .unwrap();
    assert_eq!(store.lease("run").unwrap(), None);
    let lease = LeaseRow {
        covered_secs: 120,
        unpaid_since_ms: Some(5),
    };
    store.set_lease("run", lease).unwrap();
    store
        .set_lease(
            "done",
            LeaseRow {
                covered_secs: 60,
                unpaid_since_ms: None,
            },
        )
        .unwrap();
    assert_eq!(store.lease("run").unwrap(), Some(lease));
    let renewed = LeaseRow {
        covered_secs: 180,
        unpaid_since_ms: None,
    };
    store.set_lease("run", renewed).unwrap();
    assert_eq!(store.lease("run").unwrap(), Some(renewed));
    store.forget_finished_leases().unwrap();
    assert_eq!(store.lease("run").unwrap(), Some(renewed));
    assert_eq!(store.lease("done").unwrap(), None);
}

/// Two stores on one database (two hosts), 16 threads each racing for a pool of 2, ten
/// rounds: never more than 2 live, exactly 2 inserted per round.
fn two_hosts_racing_for_a_pool_of_two_never_exceed_it(backend: Backend) {
    let db = Db::new(backend);
    let hosts = [db.open(), db.open()];
    for round in 0..10 {
        let barrier = Arc::new(Barrier::new(16));
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let store = Arc::clone(&hosts[i % 2]);
                let barrier = Arc::clone(&barrier);
                thread::spawn(move || {
                    let st = status(&format!("r{round}-{i}"), "acme", 1, SandboxState::Creating);
                    barrier.wait();
                    matches!(
                        store.insert(&st, "fp", "h", Some(("ext", 2))).unwrap(),
                        Inserted::New
                    )
                })
            })
            .collect();
        let won = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|w| *w)
            .count();
        assert_eq!(won, 2, "round {round}");
        assert_eq!(hosts[1].live_counts().unwrap()["ext"], 2, "round {round}");
        // Free the pool for the next round.
        for row in hosts[0].list(None, Some(SandboxState::Creating)).unwrap() {
            let mut st = row;
            st.state = SandboxState::Destroyed;
            hosts[1].update(&st, None, true).unwrap();
        }
    }
}

/// The same idempotency key sent through two stores at once makes one row.
fn one_key_sent_to_two_hosts_at_once_makes_one_row(backend: Backend) {
    let db = Db::new(backend);
    let hosts = [db.open(), db.open()];
    for round in 0..5 {
        let barrier = Arc::new(Barrier::new(8));
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let store = Arc::clone(&hosts[i % 2]);
                let barrier = Arc::clone(&barrier);
                thread::spawn(move || {
                    let st = keyed(&format!("k{round}-{i}"), "acme", &format!("key-{round}"));
                    barrier.wait();
                    match store.insert(&st, "fp", "h", None).unwrap() {
                        Inserted::New => Some(st.id),
                        Inserted::Existing(..) => None,
                        Inserted::PoolFull => panic!("no slot was asked"),
                    }
                })
            })
            .collect();
        let new: Vec<String> = handles
            .into_iter()
            .filter_map(|h| h.join().unwrap())
            .collect();
        assert_eq!(new.len(), 1, "round {round}: {new:?}");
        let (st, _) = hosts[0]
            .by_key("acme", &format!("key-{round}"))
            .unwrap()
            .unwrap();
        assert_eq!(st.id, new[0]);
    }
}

on_both_stores!(
    an_idempotency_key_is_unique_per_tenant,
    a_full_pool_refuses_until_a_slot_is_freed,
    a_transition_is_a_compare_and_set_on_state_owner_and_version,
    pages_lists_counts_and_in_flight_rows,
    leases_are_recorded_and_forgotten_once_finished,
    two_hosts_racing_for_a_pool_of_two_never_exceed_it,
    one_key_sent_to_two_hosts_at_once_makes_one_row,
);

/// The statuses and the ledger share one PostgreSQL database, in either opening order,
/// and a schema newer than this build is refused naming both versions and the URL
/// without its password.
#[test]
fn on_postgres_the_statuses_share_the_ledgers_database_and_check_its_version() {
    use sandboxer_host::layers::payments::PgCreditsStore;
    let url = pg::fresh_database();
    PgSandboxStore::open(&url).unwrap();
    PgCreditsStore::open(&url).unwrap();
    PgSandboxStore::open(&url).unwrap();
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    client
        .batch_execute("UPDATE sandboxer_schema SET version = 99 WHERE component = 'sandboxes'")
        .unwrap();
    let err = PgSandboxStore::open(&url).unwrap_err().to_string();
    assert!(err.contains("99") && err.contains("(1)"), "{err}");
    assert!(
        !err.contains(pg::PASSWORD) && err.contains(":***@"),
        "{err}"
    );

    // Another application's database is refused untouched.
    let other = pg::fresh_database();
    let mut client = postgres::Client::connect(&other, postgres::NoTls).unwrap();
    client
        .batch_execute("CREATE TABLE orders (id INT)")
        .unwrap();
    let err = PgSandboxStore::open(&other).unwrap_err().to_string();
    assert!(err.contains("another application"), "{err}");
}
