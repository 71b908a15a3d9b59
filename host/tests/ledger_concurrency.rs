//! The ledger under concurrency, on SQLite and on a real PostgreSQL server alike
//! (`on_sqlite::*`, `on_postgres::*`): concurrent holds cannot overspend, a hold is
//! resolved exactly once, and retried requests apply once.

#[path = "support/pg.rs"]
mod pg;
#[path = "support/ledger_stores.rs"]
mod stores;

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;

use rust_decimal::Decimal;
use sandboxer_host::domain::{Currency, Money};
use sandboxer_host::layers::payments::{CreditsStore, HoldState, LedgerError, OverdraftPolicy};
use stores::{Backend, TestLedger};

fn usd(s: &str) -> Money {
    Money {
        amount: Decimal::from_str(s).unwrap(),
        currency: Currency::new("USD").unwrap(),
    }
}

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn cur() -> Currency {
    Currency::new("USD").unwrap()
}

fn fresh(backend: Backend) -> (TestLedger, Arc<dyn CreditsStore>) {
    let db = TestLedger::new(backend);
    let store = db.open(OverdraftPolicy::default());
    (db, store)
}

fn sixty_four_concurrent_holds_of_ten_on_a_balance_of_100_exactly_ten_succeed(backend: Backend) {
    let (_db, store) = fresh(backend);
    store.grant("acme", &usd("100"), "start", "g1").unwrap();

    // A watcher reads balances the whole time: holds may never exceed the balance.
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (store, done) = (store.clone(), done.clone());
        thread::spawn(move || {
            let mut reads = 0u32;
            while !done.load(Ordering::SeqCst) || reads == 0 {
                let b = store.balance("acme", &cur()).unwrap();
                assert!(
                    b.held <= b.posted,
                    "held {} above posted {}",
                    b.held,
                    b.posted
                );
                assert!(
                    b.available >= Decimal::ZERO,
                    "available went negative: {}",
                    b.available
                );
                assert_eq!(b.posted, dec("100"));
                reads += 1;
            }
            reads
        })
    };

    let barrier = Arc::new(Barrier::new(64));
    let handles: Vec<_> = (0..64)
        .map(|i| {
            let (store, barrier) = (store.clone(), barrier.clone());
            thread::spawn(move || {
                barrier.wait();
                store.hold(
                    "acme",
                    &usd("10"),
                    &format!("sbx-{i}"),
                    "saas-stub",
                    &format!("h{i}"),
                )
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    done.store(true, Ordering::SeqCst);
    assert!(watcher.join().unwrap() > 0);

    let holds: Vec<_> = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .cloned()
        .collect();
    assert_eq!(holds.len(), 10, "exactly ten holds of 10 fit in 100");
    for r in &results {
        if let Err(e) = r {
            assert!(
                matches!(e, LedgerError::InsufficientCredits { .. }),
                "unexpected error {e:?}"
            );
            assert_eq!(
                e.to_string(),
                "insufficient credits: need 10 USD, available 0 USD"
            );
        }
    }
    let b = store.balance("acme", &cur()).unwrap();
    assert_eq!(
        (b.posted, b.held, b.available),
        (dec("100"), dec("100"), dec("0"))
    );
    assert_eq!(store.open_holds().unwrap().len(), 10);

    // Release them all, concurrently: the full 100 is available again.
    let voids: Vec<_> = holds
        .into_iter()
        .map(|h| {
            let store = store.clone();
            thread::spawn(move || store.void(&h.id, &format!("void-{}", h.id)).unwrap())
        })
        .collect();
    for v in voids {
        assert_eq!(v.join().unwrap().released, usd("10"));
    }
    let b = store.balance("acme", &cur()).unwrap();
    assert_eq!(
        (b.posted, b.held, b.available),
        (dec("100"), dec("0"), dec("100"))
    );
    assert!(store.open_holds().unwrap().is_empty());
    let report = store.verify().unwrap();
    assert!(report.ok, "{:?}", report.problems);
    assert_eq!(report.transfers, 1 + 10 + 10);
}

fn settle_and_void_racing_on_one_hold_exactly_one_wins(backend: Backend) {
    let (_db, store) = fresh(backend);
    store.grant("acme", &usd("1000"), "", "g").unwrap();
    let (mut settles_won, mut voids_won) = (0, 0);
    for round in 0..20 {
        let before = store.balance("acme", &cur()).unwrap();
        let hold = store
            .hold(
                "acme",
                &usd("10"),
                &format!("sbx-{round}"),
                "ext",
                &format!("h{round}"),
            )
            .unwrap();
        let barrier = Arc::new(Barrier::new(2));
        let settle = {
            let (store, barrier, id) = (store.clone(), barrier.clone(), hold.id.clone());
            thread::spawn(move || {
                barrier.wait();
                store.settle(&id, &usd("7"), &format!("s{round}"), None)
            })
        };
        let void = {
            let (store, barrier, id) = (store.clone(), barrier.clone(), hold.id.clone());
            thread::spawn(move || {
                barrier.wait();
                store.void(&id, &format!("v{round}"))
            })
        };
        let (s, v) = (settle.join().unwrap(), void.join().unwrap());
        let after = store.balance("acme", &cur()).unwrap();
        assert_eq!(after.held, before.held, "the hold is resolved either way");
        match (s, v) {
            (Ok(settlement), Err(LedgerError::HoldAlreadyResolved { state, .. })) => {
                assert_eq!(state, "posted");
                assert_eq!(settlement.charged, usd("7"));
                assert_eq!(after.posted, before.posted - dec("7"), "charged once");
                assert_eq!(
                    store
                        .hold_for_sandbox(&format!("sbx-{round}"))
                        .unwrap()
                        .unwrap()
                        .state,
                    HoldState::Posted
                );
                settles_won += 1;
            }
            (Err(LedgerError::HoldAlreadyResolved { state, .. }), Ok(void)) => {
                assert_eq!(state, "voided");
                assert_eq!(void.released, usd("10"));
                assert_eq!(after.posted, before.posted, "nothing charged");
                assert_eq!(
                    store
                        .hold_for_sandbox(&format!("sbx-{round}"))
                        .unwrap()
                        .unwrap()
                        .state,
                    HoldState::Voided
                );
                voids_won += 1;
            }
            (s, v) => panic!("round {round}: not exactly one winner: settle {s:?}, void {v:?}"),
        }
    }
    assert_eq!(settles_won + voids_won, 20);
    let report = store.verify().unwrap();
    assert!(report.ok, "{:?}", report.problems);
    assert_eq!(report.open_holds, 0);
}

fn replace_and_settle_racing_on_one_hold_exactly_one_wins(backend: Backend) {
    let (_db, store) = fresh(backend);
    store.grant("acme", &usd("1000"), "", "g").unwrap();
    let (mut settles_won, mut replaces_won) = (0, 0);
    for round in 0..20 {
        let sandbox = format!("sbx-{round}");
        let before = store.balance("acme", &cur()).unwrap();
        let hold = store
            .hold("acme", &usd("10"), &sandbox, "ext", &format!("h{round}"))
            .unwrap();
        let barrier = Arc::new(Barrier::new(2));
        let settle = {
            let (store, barrier, id) = (store.clone(), barrier.clone(), hold.id.clone());
            thread::spawn(move || {
                barrier.wait();
                store.settle(&id, &usd("7"), &format!("s{round}"), None)
            })
        };
        let replace = {
            let (store, barrier, id) = (store.clone(), barrier.clone(), hold.id.clone());
            thread::spawn(move || {
                barrier.wait();
                store.replace_hold(&id, &usd("15"), &format!("r{round}"))
            })
        };
        let (s, r) = (settle.join().unwrap(), replace.join().unwrap());
        let after = store.balance("acme", &cur()).unwrap();
        match (s, r) {
            (Ok(settlement), Err(LedgerError::HoldAlreadyResolved { state, .. })) => {
                assert_eq!(state, "posted");
                assert_eq!(settlement.charged, usd("7"));
                assert_eq!(after.posted, before.posted - dec("7"), "charged once");
                assert_eq!(after.held, before.held, "nothing left held");
                settles_won += 1;
            }
            (Err(LedgerError::HoldAlreadyResolved { state, .. }), Ok(new)) => {
                assert_eq!(state, "voided");
                assert_eq!(after.posted, before.posted, "nothing charged");
                assert_eq!(
                    after.held,
                    before.held + dec("15"),
                    "only the new hold is held"
                );
                assert_eq!(store.hold_for_sandbox(&sandbox).unwrap().unwrap(), new);
                // The sandbox's current hold settles normally.
                store
                    .settle(&new.id, &usd("7"), &format!("s{round}-new"), None)
                    .unwrap();
                replaces_won += 1;
            }
            (s, r) => panic!("round {round}: not exactly one winner: settle {s:?}, replace {r:?}"),
        }
    }
    assert_eq!(settles_won + replaces_won, 20);
    let report = store.verify().unwrap();
    assert!(report.ok, "{:?}", report.problems);
    assert_eq!(report.open_holds, 0);
    let b = store.balance("acme", &cur()).unwrap();
    assert_eq!(
        (b.posted, b.held),
        (dec("1000") - dec("7") * dec("20"), dec("0"))
    );
}

/// Runs `op` five times with the same key (three in a row, then two at once) and
/// checks it made exactly `transfers` transfers and gave the same answer every time.
fn five_times<T, F>(store: &Arc<dyn CreditsStore>, transfers: u64, op: F) -> T
where
    T: PartialEq + std::fmt::Debug + Send + 'static,
    F: Fn(&dyn CreditsStore) -> Result<T, LedgerError> + Send + Sync + 'static,
{
    let before = store.verify().unwrap().transfers;
    let op = Arc::new(op);
    let first = op(store.as_ref()).unwrap();
    for _ in 0..2 {
        assert_eq!(op(store.as_ref()).unwrap(), first);
    }
    let barrier = Arc::new(Barrier::new(2));
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let (store, op, barrier) = (store.clone(), op.clone(), barrier.clone());
            thread::spawn(move || {
                barrier.wait();
                op(store.as_ref()).unwrap()
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), first);
    }
    let report = store.verify().unwrap();
    assert!(report.ok, "{:?}", report.problems);
    assert_eq!(
        report.transfers - before,
        transfers,
        "replays must not add transfers"
    );
    first
}

fn every_operation_replayed_five_times_applies_once(backend: Backend) {
    let (_db, store) = fresh(backend);
    five_times(&store, 1, |s| {
        s.grant("acme", &usd("50"), "top-up", "grant-1")
    });
    assert_eq!(store.balance("acme", &cur()).unwrap().posted, dec("50"));

    let hold = five_times(&store, 1, |s| {
        s.hold("acme", &usd("20"), "sbx-1", "ext", "hold-1")
    });
    assert_eq!(store.balance("acme", &cur()).unwrap().held, dec("20"));

    let id = hold.id.clone();
    let settlement = five_times(&store, 1, move |s| {
        s.settle(&id, &usd("12.5"), "settle-1", None)
    });
    assert_eq!(settlement.charged, usd("12.5"));
    let b = store.balance("acme", &cur()).unwrap();
    assert_eq!((b.posted, b.held), (dec("37.5"), dec("0")));

    let hold2 = store
        .hold("acme", &usd("5"), "sbx-2", "ext", "hold-2")
        .unwrap();
    let id = hold2.id.clone();
    five_times(&store, 1, move |s| s.void(&id, "void-2"));
    let b = store.balance("acme", &cur()).unwrap();
    assert_eq!(
        (b.posted, b.held, b.available),
        (dec("37.5"), dec("0"), dec("37.5"))
    );

    // A replacement: one void and one new hold, however often it is replayed.
    let hold3 = store
        .hold("acme", &usd("5"), "sbx-3", "ext", "hold-3")
        .unwrap();
    let id = hold3.id.clone();
    let renewed = five_times(&store, 2, move |s| {
        s.replace_hold(&id, &usd("8"), "renew-3")
    });
    assert_eq!(renewed.amount, usd("8"));
    store.void(&renewed.id, "void-3").unwrap();

    // The same keys for a different request are refused, and change nothing.
    let transfers = store.verify().unwrap().transfers;
    let conflicts = [
        store
            .grant("acme", &usd("51"), "top-up", "grant-1")
            .map(|_| ()),
        store
            .grant("other", &usd("50"), "top-up", "grant-1")
            .map(|_| ()),
        store
            .hold("acme", &usd("21"), "sbx-1", "ext", "hold-1")
            .map(|_| ()),
        store
            .settle(&hold.id, &usd("12.6"), "settle-1", None)
            .map(|_| ()),
        store.void(&hold.id, "void-2").map(|_| ()),
        // A key used by one operation cannot be reused by another.
        store.void(&hold2.id, "grant-1").map(|_| ()),
    ];
    for c in conflicts {
        assert!(
            matches!(c, Err(LedgerError::IdempotencyConflict { .. })),
            "{c:?}"
        );
    }
    assert_eq!(store.verify().unwrap().transfers, transfers);
    assert_eq!(store.balance("acme", &cur()).unwrap().posted, dec("37.5"));
    assert!(matches!(
        store.balance("other", &cur()),
        Err(LedgerError::UnknownTenant(_))
    ));
}

on_both_stores!(
    sixty_four_concurrent_holds_of_ten_on_a_balance_of_100_exactly_ten_succeed,
    settle_and_void_racing_on_one_hold_exactly_one_wins,
    replace_and_settle_racing_on_one_hold_exactly_one_wins,
    every_operation_replayed_five_times_applies_once,
);
