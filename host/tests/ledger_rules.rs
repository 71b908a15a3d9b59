//! The ledger's rules, through the real stores: settlement and the overdraft policy, the
//! rounding rule, the outbox, bad input, account limits and a state-machine property test
//! against an in-memory model run on SQLite and on a real PostgreSQL server alike
//! (`on_sqlite::*`, `on_postgres::*`); SQLite's own durability settings and damaged files
//! are tested here too (PostgreSQL's own cases: `ledger_postgres.rs`).

#[path = "support/pg.rs"]
mod pg;
#[path = "support/ledger_stores.rs"]
mod stores;

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;

use proptest::prelude::*;
use rust_decimal::Decimal;
use sandboxer_host::domain::money::{Rounding, SCALE, to_units};
use sandboxer_host::domain::{Currency, Money};
use sandboxer_host::layers::payments::{
    CreditsStore, EntryKind, HoldState, LedgerError, OutboxEvent, OverdraftPolicy,
    SqliteCreditsStore,
};

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

use stores::{Backend, TestLedger};

fn open(dir: &tempfile::TempDir, policy: OverdraftPolicy) -> SqliteCreditsStore {
    SqliteCreditsStore::open_with_policy(dir.path().join("ledger.sqlite3"), policy).unwrap()
}

fn balance(store: &dyn CreditsStore, tenant: &str) -> (Decimal, Decimal, Decimal) {
    let b = store.balance(tenant, &cur()).unwrap();
    (b.posted, b.held, b.available)
}

fn assert_verified(store: &dyn CreditsStore) {
    let report = store.verify().unwrap();
    assert!(report.ok, "ledger does not verify: {:?}", report.problems);
}

fn partial_settlement_posts_the_cost_and_releases_the_rest(backend: Backend) {
    let db = TestLedger::new(backend);
    let store = db.open(OverdraftPolicy::WriteOff);
    store.grant("acme", &usd("100"), "welcome", "g").unwrap();
    let hold = store
        .hold("acme", &usd("10"), "sbx-1", "saas-stub", "h")
        .unwrap();
    assert_eq!(balance(&*store, "acme"), (dec("100"), dec("10"), dec("90")));

    let s = store.settle(&hold.id, &usd("7.25"), "s", None).unwrap();
    assert_eq!(s.held, usd("10"));
    assert_eq!(s.charged, usd("7.25"));
    assert_eq!(s.from_tenant, usd("7.25"));
    assert_eq!(s.released, usd("2.75"));
    assert_eq!((s.written_off.amount, s.debt.amount), (dec("0"), dec("0")));
    assert_eq!(
        balance(&*store, "acme"),
        (dec("92.75"), dec("0"), dec("92.75"))
    );

    let kinds: Vec<_> = store
        .statement("acme")
        .unwrap()
        .iter()
        .map(|e| (e.kind, e.posted_delta, e.held_delta))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (EntryKind::Grant, dec("100"), dec("0")),
            (EntryKind::Hold, dec("0"), dec("10")),
            (EntryKind::Charge, dec("-7.25"), dec("-10")),
        ]
    );
    let charge = &store.statement("acme").unwrap()[2];
    assert_eq!(charge.hold_id.as_deref(), Some(hold.id.as_str()));
    assert_eq!(charge.sandbox_id.as_deref(), Some("sbx-1"));
    assert_verified(&*store);
}

fn excess_under_write_off_takes_what_is_available_and_writes_off_the_rest(backend: Backend) {
    let db = TestLedger::new(backend);
    let store = db.open(OverdraftPolicy::WriteOff);
    // Enough available: the whole excess comes from the tenant.
    store.grant("rich", &usd("100"), "", "g-rich").unwrap();
    let h = store
        .hold("rich", &usd("8"), "sbx-r", "ext", "h-rich")
        .unwrap();
    let s = store.settle(&h.id, &usd("12"), "s-rich", None).unwrap();
    assert_eq!(
        (
            s.from_tenant.clone(),
            s.written_off.amount,
            s.released.amount
        ),
        (usd("12"), dec("0"), dec("0"))
    );
    assert_eq!(balance(&*store, "rich"), (dec("88"), dec("0"), dec("88")));

    // Not enough: take the 2 still available, write off the other 2; never negative.
    store.grant("poor", &usd("10"), "", "g-poor").unwrap();
    let h = store
        .hold("poor", &usd("8"), "sbx-p", "ext", "h-poor")
        .unwrap();
    let s = store.settle(&h.id, &usd("12"), "s-poor", None).unwrap();
    assert_eq!(s.charged, usd("12"));
    assert_eq!(s.from_tenant, usd("10"));
    assert_eq!(s.written_off, usd("2"));
    assert_eq!(s.debt.amount, dec("0"));
    assert_eq!(balance(&*store, "poor"), (dec("0"), dec("0"), dec("0")));
    let kinds: Vec<_> = store
        .statement("poor")
        .unwrap()
        .iter()
        .map(|e| (e.kind, e.posted_delta))
        .collect();
    assert_eq!(
        kinds[2..],
        [
            (EntryKind::Charge, dec("-8")),
            (EntryKind::Overdraft, dec("-2"))
        ]
    );

    // Another tenant's open hold is not available to cover the excess.
    store.grant("busy", &usd("10"), "", "g-busy").unwrap();
    let h1 = store
        .hold("busy", &usd("5"), "sbx-b1", "ext", "h-b1")
        .unwrap();
    let _h2 = store
        .hold("busy", &usd("5"), "sbx-b2", "ext", "h-b2")
        .unwrap();
    let s = store.settle(&h1.id, &usd("6"), "s-b1", None).unwrap();
    assert_eq!((s.from_tenant, s.written_off), (usd("5"), usd("1")));
    assert_eq!(balance(&*store, "busy"), (dec("5"), dec("5"), dec("0")));
    assert_verified(&*store);
}

fn excess_under_debt_takes_everything_and_the_balance_goes_negative(backend: Backend) {
    let db = TestLedger::new(backend);
    let store = db.open(OverdraftPolicy::Debt);
    store.grant("acme", &usd("10"), "", "g").unwrap();
    let h = store.hold("acme", &usd("8"), "sbx", "ext", "h").unwrap();
    let s = store.settle(&h.id, &usd("12"), "s", None).unwrap();
    assert_eq!(
        (s.from_tenant, s.debt, s.written_off.amount),
        (usd("12"), usd("2"), dec("0"))
    );
    assert_eq!(balance(&*store, "acme"), (dec("-2"), dec("0"), dec("-2")));
    let last = store.statement("acme").unwrap().pop().unwrap();
    assert_eq!((last.kind, last.posted_delta), (EntryKind::Debt, dec("-2")));
    // In debt nothing more can be held, and the error says so.
    let err = store
        .hold("acme", &usd("1"), "sbx-2", "ext", "h2")
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "insufficient credits: need 1 USD, available -2 USD"
    );
    store.grant("acme", &usd("5"), "pay off", "g2").unwrap();
    assert_eq!(balance(&*store, "acme"), (dec("3"), dec("0"), dec("3")));
    assert_verified(&*store);
}

fn holds_round_up_and_charges_round_half_away_from_zero_keeping_the_exact_amount(backend: Backend) {
    let db = TestLedger::new(backend);
    let store = db.open(OverdraftPolicy::WriteOff);
    store.grant("acme", &usd("1"), "", "g").unwrap();
    let h = store
        .hold("acme", &usd("0.0000000001"), "sbx-1", "ext", "h1")
        .unwrap();
    assert_eq!(
        (h.amount.amount, h.exact),
        (dec("0.000000001"), dec("0.0000000001"))
    );
    let s = store
        .settle(&h.id, &usd("0.0000000004"), "s1", None)
        .unwrap();
    assert_eq!((s.charged.amount, s.exact), (dec("0"), dec("0.0000000004")));

    // 2.5 nano-units: banker's rounding would give 2, the rule gives 3.
    let h = store
        .hold("acme", &usd("0.0000000025"), "sbx-2", "ext", "h2")
        .unwrap();
    assert_eq!(h.amount.amount, dec("0.000000003"));
    let s = store
        .settle(&h.id, &usd("0.0000000025"), "s2", None)
        .unwrap();
    assert_eq!(s.charged.amount, dec("0.000000003"));
    assert_eq!(s.released.amount, dec("0"));

    // A per-second rate stays exact through a sandbox's total.
    let rate = dec("0.0000045");
    let total = rate * Decimal::from(3600);
    let h = store
        .hold("acme", &usd(&total.to_string()), "sbx-3", "ext", "h3")
        .unwrap();
    let s = store
        .settle(&h.id, &usd(&total.to_string()), "s3", None)
        .unwrap();
    assert_eq!(s.charged.amount, dec("0.0162"));
    let statement = store.statement("acme").unwrap();
    let charges: Vec<_> = statement
        .iter()
        .filter(|e| e.kind == EntryKind::Charge)
        .map(|e| e.exact)
        .collect();
    assert_eq!(
        charges,
        vec![
            Some(dec("0.0000000004")),
            Some(dec("0.0000000025")),
            Some(dec("0.0162000"))
        ]
    );
    assert_verified(&*store);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
    #[test]
    fn rounding_holds_cover_the_cost_and_charges_are_within_half_a_unit(
        mantissa in 0u64..=u64::MAX / 2, scale in 0u32..=20,
    ) {
        let exact = Decimal::from_i128_with_scale(i128::from(mantissa), scale);
        let unit = Decimal::new(1, SCALE);
        if let Ok(hold) = to_units(exact, Rounding::Hold) {
            let held = Decimal::from_i128_with_scale(i128::from(hold.units), SCALE);
            prop_assert!(held >= exact, "hold {held} below cost {exact}");
            prop_assert!(held - exact < unit, "hold {held} more than a unit above {exact}");
            prop_assert_eq!(hold.exact, exact);
        }
        if let Ok(charge) = to_units(exact, Rounding::Charge) {
            let charged = Decimal::from_i128_with_scale(i128::from(charge.units), SCALE);
            prop_assert!((charged - exact).abs() * Decimal::from(2) <= unit, "charge {charged} vs exact {exact}");
            // Ties go away from zero, never to even.
            if (charged - exact).abs() * Decimal::from(2) == unit {
                prop_assert!(charged > exact);
            }
        }
    }
}

#[test]
fn the_store_runs_in_wal_mode_and_fsyncs_the_wal_before_every_answer() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, OverdraftPolicy::WriteOff);
    store.grant("acme", &usd("1"), "", "g").unwrap();
    let (mode, sync) = store.durability().unwrap();
    assert_eq!(mode.to_lowercase(), "wal");
    // NORMAL: the commit does not fsync inside the lock; the ledger does it after the
    // lock, before answering (group commit). Every acknowledged write is one more fsync
    // when writes come one at a time (a replay too: what it answers must be on disk).
    assert_eq!(
        sync, 1,
        "synchronous must be NORMAL (1) with the ledger's own fsync"
    );
    let mut syncs = store.wal_syncs();
    for i in 0..5 {
        store
            .grant("acme", &usd("1"), "", &format!("g{i}"))
            .unwrap();
        assert_eq!(
            store.wal_syncs(),
            syncs + 1,
            "grant {i} answered without an fsync"
        );
        syncs += 1;
    }
    store.grant("acme", &usd("1"), "", "g0").unwrap();
    assert_eq!(
        store.wal_syncs(),
        syncs + 1,
        "replay answered without an fsync"
    );
    store.mark_delivered(&[]).unwrap();
    assert_eq!(
        store.wal_syncs(),
        syncs + 1,
        "marking delivered needs no fsync"
    );
    // WAL is a property of the file: a plain connection sees it too.
    let conn = rusqlite::Connection::open(dir.path().join("ledger.sqlite3")).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert!(version >= 1);
}

fn settlement_events_go_to_the_outbox_in_the_same_transaction(backend: Backend) {
    let db = TestLedger::new(backend);
    let store = db.open(OverdraftPolicy::WriteOff);
    store.grant("acme", &usd("10"), "", "g").unwrap();
    let h = store.hold("acme", &usd("5"), "sbx", "ext", "h").unwrap();
    let ev = OutboxEvent {
        id: "ev-1".into(),
        payload: r#"{"type":"sandbox.settled"}"#.into(),
    };
    let s = store
        .settle(&h.id, &usd("3"), "s", Some(ev.clone()))
        .unwrap();
    assert_eq!(s.event_id.as_deref(), Some("ev-1"));
    // A replay stores nothing new.
    store
        .settle(&h.id, &usd("3"), "s", Some(ev.clone()))
        .unwrap();
    assert_eq!(store.pending_events(10).unwrap(), vec![ev.clone()]);
    assert_eq!(store.outbox_lag().unwrap().0, 1);
    // A refused settlement stores no event.
    let late = OutboxEvent {
        id: "ev-2".into(),
        payload: "{}".into(),
    };
    assert!(matches!(
        store.settle(&h.id, &usd("3"), "s-again", Some(late)),
        Err(LedgerError::HoldAlreadyResolved { .. })
    ));
    assert_eq!(store.pending_events(10).unwrap().len(), 1);
    store.mark_delivered(&["ev-1".to_owned()]).unwrap();
    assert!(store.pending_events(10).unwrap().is_empty());
    assert_eq!(store.outbox_lag().unwrap(), (0, None));
}

fn holds_survive_a_reopen_and_can_be_found_for_recovery(backend: Backend) {
    let db = TestLedger::new(backend);
    let hold_id = {
        let store = db.open(OverdraftPolicy::WriteOff);
        store.grant("acme", &usd("10"), "", "g").unwrap();
        store
            .hold("acme", &usd("4"), "sbx-crash", "ext", "h")
            .unwrap()
            .id
    };
    let store = db.open(OverdraftPolicy::WriteOff);
    let open_holds = store.open_holds().unwrap();
    assert_eq!(open_holds.len(), 1);
    assert_eq!(
        (open_holds[0].id.as_str(), open_holds[0].state),
        (hold_id.as_str(), HoldState::Open)
    );
    let found = store.hold_for_sandbox("sbx-crash").unwrap().unwrap();
    assert_eq!(
        (found.id, found.tenant, found.amount),
        (hold_id.clone(), "acme".to_owned(), usd("4"))
    );
    assert!(store.hold_for_sandbox("nope").unwrap().is_none());
    store.void(&hold_id, "v").unwrap();
    assert!(store.open_holds().unwrap().is_empty());
    assert_eq!(balance(&*store, "acme"), (dec("10"), dec("0"), dec("10")));
}

fn bad_input_is_refused_and_changes_nothing(backend: Backend) {
    let db = TestLedger::new(backend);
    let store = db.open(OverdraftPolicy::WriteOff);
    store.grant("acme", &usd("10"), "", "g").unwrap();
    let h = store.hold("acme", &usd("1"), "sbx", "ext", "h").unwrap();
    let before = store.verify().unwrap();

    assert!(matches!(
        store.grant("acme", &usd("-5"), "", "k1"),
        Err(LedgerError::InvalidInput { .. })
    ));
    assert!(matches!(
        store.grant("acme", &usd("0"), "", "k2"),
        Err(LedgerError::InvalidInput { .. })
    ));
    assert!(matches!(
        store.grant("acme", &usd("0.0000000001"), "", "k3"),
        Err(LedgerError::InvalidInput { .. })
    ));
    assert!(matches!(
        store.grant("Acme", &usd("1"), "", "k4"),
        Err(LedgerError::InvalidTenant(_))
    ));
    assert!(matches!(
        store.grant("acme", &usd("1"), "", ""),
        Err(LedgerError::InvalidInput { .. })
    ));
    assert!(matches!(
        store.hold("acme", &usd("-1"), "sbx", "ext", "k5"),
        Err(LedgerError::InvalidInput { .. })
    ));
    assert!(matches!(
        store.hold("ghost", &usd("1"), "sbx", "ext", "k6"),
        Err(LedgerError::UnknownTenant(_))
    ));
    let eur = Money {
        amount: dec("1"),
        currency: Currency::new("EUR").unwrap(),
    };
    assert!(matches!(
        store.hold("acme", &eur, "sbx", "ext", "k7"),
        Err(LedgerError::InsufficientCredits { .. })
    ));
    assert!(matches!(
        store.settle(&h.id, &eur, "k8", None),
        Err(LedgerError::InvalidInput { .. })
    ));
    assert!(matches!(
        store.settle("no-such-hold", &usd("1"), "k9", None),
        Err(LedgerError::HoldNotFound(_))
    ));
    assert!(matches!(
        store.void("no-such-hold", "k10"),
        Err(LedgerError::HoldNotFound(_))
    ));
    assert!(matches!(
        store.balances(Some("ghost")),
        Err(LedgerError::UnknownTenant(_))
    ));
    assert!(matches!(
        store.statement("ghost"),
        Err(LedgerError::UnknownTenant(_))
    ));
    assert_eq!(
        store.statement("ghost").unwrap_err().to_string(),
        "unknown tenant \"ghost\": no credits were ever added for it"
    );

    assert_eq!(store.verify().unwrap(), before);
    assert_eq!(balance(&*store, "acme"), (dec("10"), dec("1"), dec("9")));
    // The refused requests did not consume their keys.
    store.grant("acme", &usd("1"), "", "k1").unwrap();
}

fn replacing_a_hold_needs_only_the_increment_and_is_one_step(backend: Backend) {
    let db = TestLedger::new(backend);
    let store = db.open(OverdraftPolicy::WriteOff);
    store.grant("acme", &usd("10"), "", "g").unwrap();
    let old = store.hold("acme", &usd("6"), "sbx-1", "ext", "h1").unwrap();
    assert_eq!(balance(&*store, "acme"), (dec("10"), dec("6"), dec("4")));

    // The old two-step renewal (new hold first, then void the old) is refused: it needs
    // the whole new amount available on top of the open hold.
    let err = store
        .hold("acme", &usd("10"), "sbx-1", "ext", "two-step")
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "insufficient credits: need 10 USD, available 4 USD"
    );

    // Exact fit: available 4 + old hold 6 = 10.
    let new = store.replace_hold(&old.id, &usd("10"), "r1").unwrap();
    assert_ne!(new.id, old.id);
    assert_eq!(
        (
            new.tenant.as_str(),
            new.sandbox_id.as_str(),
            new.extension.as_str()
        ),
        ("acme", "sbx-1", "ext")
    );
    assert_eq!(
        (new.amount.clone(), new.state),
        (usd("10"), HoldState::Open)
    );
    assert_eq!(balance(&*store, "acme"), (dec("10"), dec("10"), dec("0")));
    let current = store.hold_for_sandbox("sbx-1").unwrap().unwrap();
    assert_eq!(current, new);
    let open_ids: Vec<_> = store
        .open_holds()
        .unwrap()
        .into_iter()
        .map(|h| h.id)
        .collect();
    assert_eq!(open_ids, std::slice::from_ref(&new.id));

    // On the statement: the old hold's void, then the new hold.
    let lines: Vec<_> = store
        .statement("acme")
        .unwrap()
        .into_iter()
        .map(|e| {
            (
                e.kind,
                e.posted_delta,
                e.held_delta,
                e.hold_id,
                e.sandbox_id,
            )
        })
        .collect();
    let sbx = Some("sbx-1".to_owned());
    assert_eq!(
        lines[1..],
        [
            (
                EntryKind::Hold,
                dec("0"),
                dec("6"),
                Some(old.id.clone()),
                sbx.clone()
            ),
            (
                EntryKind::Void,
                dec("0"),
                dec("-6"),
                Some(old.id.clone()),
                sbx.clone()
            ),
            (
                EntryKind::Hold,
                dec("0"),
                dec("10"),
                Some(new.id.clone()),
                sbx.clone()
            ),
        ]
    );
    assert_verified(&*store);

    // The old hold is resolved: it can be neither settled, voided nor replaced again.
    for r in [
        store.settle(&old.id, &usd("1"), "s-old", None).map(|_| ()),
        store.void(&old.id, "v-old").map(|_| ()),
        store.replace_hold(&old.id, &usd("1"), "r-old").map(|_| ()),
    ] {
        assert!(
            matches!(&r, Err(LedgerError::HoldAlreadyResolved { state, .. }) if state == "voided"),
            "{r:?}"
        );
    }

    // The new hold settles like any other.
    let s = store.settle(&new.id, &usd("7"), "s", None).unwrap();
    assert_eq!((s.held, s.released), (usd("10"), usd("3")));
    assert_eq!(balance(&*store, "acme"), (dec("3"), dec("0"), dec("3")));
    assert_verified(&*store);
}

fn a_refused_replacement_says_need_and_available_and_changes_nothing(backend: Backend) {
    let db = TestLedger::new(backend);
    let store = db.open(OverdraftPolicy::WriteOff);
    store.grant("acme", &usd("10"), "", "g").unwrap();
    let old = store.hold("acme", &usd("6"), "sbx", "ext", "h").unwrap();
    let before = store.verify().unwrap();

    let err = store
        .replace_hold(&old.id, &usd("10.000000001"), "r")
        .unwrap_err();
    match &err {
        LedgerError::InsufficientCredits { need, available } => {
            assert_eq!((need, available), (&usd("10.000000001"), &usd("10")));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "insufficient credits: need 10.000000001 USD, available 10 USD"
    );
    let eur = Money {
        amount: dec("1"),
        currency: Currency::new("EUR").unwrap(),
    };
    assert!(matches!(
        store.replace_hold(&old.id, &eur, "r-eur"),
        Err(LedgerError::InvalidInput { what: "amount", .. })
    ));
    assert!(matches!(
        store.replace_hold("no-such-hold", &usd("1"), "r-ghost"),
        Err(LedgerError::HoldNotFound(_))
    ));
    assert!(matches!(
        store.replace_hold(&old.id, &usd("-1"), "r-neg"),
        Err(LedgerError::InvalidInput { .. })
    ));
    assert!(matches!(
        store.replace_hold(&old.id, &usd("1"), ""),
        Err(LedgerError::InvalidInput { .. })
    ));
    // A settled hold cannot be replaced either.
    let other = store.hold("acme", &usd("1"), "sbx-2", "ext", "h2").unwrap();
    store.settle(&other.id, &usd("1"), "s2", None).unwrap();
    let after_settle = store.verify().unwrap();
    assert!(matches!(
        store.replace_hold(&other.id, &usd("1"), "r-settled"),
        Err(LedgerError::HoldAlreadyResolved { state, .. }) if state == "posted"
    ));

    assert_eq!(store.verify().unwrap(), after_settle);
    assert_eq!(after_settle.transfers, before.transfers + 2);
    assert_eq!(balance(&*store, "acme"), (dec("9"), dec("6"), dec("3")));
    assert_eq!(store.hold_for_sandbox("sbx").unwrap().unwrap(), old);
    // The refused request did not consume its key: with more credits it goes through.
    store.grant("acme", &usd("2"), "", "g2").unwrap();
    let new = store
        .replace_hold(&old.id, &usd("10.000000001"), "r")
        .unwrap();
    assert_eq!(new.amount, usd("10.000000001"));
    assert_verified(&*store);
}

fn a_replacement_replayed_returns_the_same_hold_and_a_different_one_conflicts(backend: Backend) {
    let db = TestLedger::new(backend);
    let store = db.open(OverdraftPolicy::WriteOff);
    store.grant("acme", &usd("10"), "", "g").unwrap();
    let old = store.hold("acme", &usd("2"), "sbx", "ext", "h").unwrap();
    let first = store.replace_hold(&old.id, &usd("5"), "renew").unwrap();
    let transfers = store.verify().unwrap().transfers;
    for _ in 0..3 {
        assert_eq!(
            store.replace_hold(&old.id, &usd("5"), "renew").unwrap(),
            first
        );
    }
    assert_eq!(store.verify().unwrap().transfers, transfers);
    assert_eq!(balance(&*store, "acme"), (dec("10"), dec("5"), dec("5")));
    for r in [
        store.replace_hold(&old.id, &usd("6"), "renew"),
        store.replace_hold(&first.id, &usd("5"), "renew"),
    ] {
        assert!(
            matches!(&r, Err(LedgerError::IdempotencyConflict { operation, .. }) if operation == "replace_hold"),
            "{r:?}"
        );
    }
    // A key used by another operation conflicts too.
    assert!(matches!(
        store.replace_hold(&first.id, &usd("5"), "h"),
        Err(LedgerError::IdempotencyConflict { .. })
    ));
    assert_eq!(store.verify().unwrap().transfers, transfers);
    assert_verified(&*store);
}

#[test]
fn a_corrupt_or_foreign_database_file_is_refused_by_name_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.sqlite3");
    let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&path, &garbage).unwrap();
    let err = SqliteCreditsStore::open(&path).unwrap_err();
    assert!(matches!(err, LedgerError::Corrupt { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert!(
        std::fs::read(&path).unwrap() == garbage,
        "the corrupt file was modified"
    );

    let other = dir.path().join("other.sqlite3");
    {
        let conn = rusqlite::Connection::open(&other).unwrap();
        conn.execute_batch("CREATE TABLE notes (x TEXT); INSERT INTO notes VALUES ('keep me');")
            .unwrap();
    }
    let bytes = std::fs::read(&other).unwrap();
    let err = SqliteCreditsStore::open(&other).unwrap_err();
    assert!(err.to_string().contains("not a sandboxer ledger"), "{err}");
    assert!(
        std::fs::read(&other).unwrap() == bytes,
        "the foreign database was modified"
    );
}

/// Makes a file unwritable even for root (`chattr +i`), or with permissions otherwise.
fn make_read_only(path: &Path, on: bool) {
    let flag = if on { "+i" } else { "-i" };
    let chattr = std::process::Command::new("chattr")
        .arg(flag)
        .arg(path)
        .status();
    if !matches!(chattr, Ok(s) if s.success()) {
        let mut perms = std::fs::metadata(path).unwrap().permissions();
        perms.set_readonly(on);
        std::fs::set_permissions(path, perms).unwrap();
    }
    if on {
        assert!(
            std::fs::OpenOptions::new().write(true).open(path).is_err(),
            "could not make {} read-only",
            path.display()
        );
    }
}

#[test]
fn a_read_only_database_file_gives_a_clear_error_and_keeps_its_contents() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.sqlite3");
    {
        let store = SqliteCreditsStore::open(&path).unwrap();
        store.grant("acme", &usd("10"), "", "g").unwrap();
    }
    let bytes = std::fs::read(&path).unwrap();
    make_read_only(&path, true);
    let result = SqliteCreditsStore::open(&path).and_then(|s| s.grant("acme", &usd("5"), "", "g2"));
    make_read_only(&path, false);
    let err = result.unwrap_err();
    assert!(matches!(err, LedgerError::Storage { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert!(
        err.to_string().contains("read-only") || err.to_string().contains("readonly"),
        "{err}"
    );
    assert!(
        std::fs::read(&path).unwrap() == bytes,
        "the read-only file was modified"
    );
    let store = SqliteCreditsStore::open(&path).unwrap();
    assert_eq!(balance(&store, "acme"), (dec("10"), dec("0"), dec("10")));
}

// ---------------------------------------------------------------------------------------
// State machine: random sequences against an in-memory model.

const TENANTS: [&str; 3] = ["t0", "t1", "t2"];

#[derive(Debug, Clone)]
enum Op {
    Grant {
        tenant: usize,
        amount: Decimal,
    },
    Hold {
        tenant: usize,
        amount: Decimal,
    },
    Settle {
        hold: usize,
        amount: Decimal,
    },
    Void {
        hold: usize,
    },
    /// Replaces a hold by one of `amount` (a lease renewal).
    Replace {
        hold: usize,
        amount: Decimal,
    },
    /// Replays an earlier successful operation with its key.
    Duplicate {
        op: usize,
    },
    /// Drops the store and opens the file again.
    Reopen,
}

/// An exact amount `whole.frac` with `scale` decimals (up to 12: finer than the ledger).
fn amount(max_whole: u64, max_scale: u32) -> impl Strategy<Value = Decimal> {
    (0..=max_whole, any::<u64>(), 0..=max_scale).prop_map(|(whole, frac, scale)| {
        let pow = 10u64.pow(scale);
        let mantissa = i128::from(whole) * i128::from(pow) + i128::from(frac % pow);
        Decimal::from_i128_with_scale(mantissa, scale)
    })
}

/// An amount exactly half-way between two ledger units, where rounding rules differ.
fn tie() -> impl Strategy<Value = Decimal> {
    (0..=25i128, 0..1_000_000_000i128).prop_map(|(whole, nanos)| {
        Decimal::from_i128_with_scale((whole * 1_000_000_000 + nanos) * 10 + 5, 10)
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..TENANTS.len(), amount(40, 9)).prop_map(|(tenant, amount)| Op::Grant { tenant, amount }),
        4 => (0..TENANTS.len(), amount(20, 12)).prop_map(|(tenant, amount)| Op::Hold { tenant, amount }),
        3 => (any::<usize>(), prop_oneof![3 => amount(25, 12), 1 => tie()])
            .prop_map(|(hold, amount)| Op::Settle { hold, amount }),
        2 => any::<usize>().prop_map(|hold| Op::Void { hold }),
        3 => (any::<usize>(), amount(25, 12)).prop_map(|(hold, amount)| Op::Replace { hold, amount }),
        2 => any::<usize>().prop_map(|op| Op::Duplicate { op }),
        1 => Just(Op::Reopen),
    ]
}

/// Independent rounding for the model: exact × 10^9 in integers.
fn model_units(exact: Decimal, up: bool) -> i128 {
    let (m, s) = (exact.mantissa(), exact.scale());
    if s <= SCALE {
        return m * 10i128.pow(SCALE - s);
    }
    let div = 10i128.pow(s - SCALE);
    let (q, r) = (m / div, m % div);
    if up {
        q + i128::from(r > 0)
    } else {
        q + i128::from(2 * r >= div)
    }
}

#[derive(Default, Debug)]
struct Model {
    /// tenant → (posted, held) in ledger units.
    accounts: HashMap<usize, (i128, i128)>,
    /// hold id, tenant, units, open?
    holds: Vec<(String, usize, i128, bool)>,
}

/// A replayable operation and its answer, for Duplicate.
#[derive(Debug, Clone)]
enum Done {
    Grant(usize, Decimal, String, String),
    Hold(usize, Decimal, String, String, String),
    Settle(String, Decimal, String, String),
    Void(String, String, String),
    Replace(String, Decimal, String, String),
}

fn units(d: Decimal) -> i128 {
    model_units(d, false)
}

fn run_machine(
    backend: Backend,
    policy: OverdraftPolicy,
    ops: Vec<Op>,
) -> Result<(), TestCaseError> {
    let db = TestLedger::new(backend);
    let mut store = db.open(policy);
    let mut model = Model::default();
    let mut done: Vec<Done> = Vec::new();
    let mut transfers = 0u64;
    for (step, op) in ops.into_iter().enumerate() {
        let key = format!("k{step}");
        match op {
            Op::Grant { tenant, amount } => {
                let r = store.grant(TENANTS[tenant], &usd(&amount.to_string()), "n", &key);
                if amount.is_zero() {
                    prop_assert!(matches!(r, Err(LedgerError::InvalidInput { .. })), "{r:?}");
                    continue;
                }
                let g = r.map_err(|e| TestCaseError::fail(format!("grant: {e}")))?;
                model.accounts.entry(tenant).or_default().0 += model_units(amount, false);
                transfers += 1;
                done.push(Done::Grant(
                    tenant,
                    amount,
                    key,
                    serde_json::to_string(&g).unwrap(),
                ));
            }
            Op::Hold { tenant, amount } => {
                let r = store.hold(
                    TENANTS[tenant],
                    &usd(&amount.to_string()),
                    &format!("sbx{step}"),
                    "ext",
                    &key,
                );
                let need = model_units(amount, true);
                match model.accounts.get_mut(&tenant) {
                    None => prop_assert!(matches!(r, Err(LedgerError::UnknownTenant(_))), "{r:?}"),
                    Some((posted, held)) if need > *posted - *held => {
                        prop_assert!(
                            matches!(r, Err(LedgerError::InsufficientCredits { .. })),
                            "{r:?}"
                        )
                    }
                    Some((_, held)) => {
                        let h = r.map_err(|e| TestCaseError::fail(format!("hold: {e}")))?;
                        prop_assert_eq!(units(h.amount.amount), need);
                        prop_assert!(h.amount.amount >= amount);
                        *held += need;
                        model.holds.push((h.id.clone(), tenant, need, true));
                        transfers += 1;
                        done.push(Done::Hold(
                            tenant,
                            amount,
                            format!("sbx{step}"),
                            key,
                            serde_json::to_string(&h).unwrap(),
                        ));
                    }
                }
            }
            Op::Settle { hold, amount } => {
                if model.holds.is_empty() {
                    continue;
                }
                let i = hold % model.holds.len();
                let (id, tenant, held_units, open) = model.holds[i].clone();
                let r = store.settle(&id, &usd(&amount.to_string()), &key, None);
                if !open {
                    prop_assert!(
                        matches!(r, Err(LedgerError::HoldAlreadyResolved { .. })),
                        "{r:?}"
                    );
                    continue;
                }
                let s = r.map_err(|e| TestCaseError::fail(format!("settle: {e}")))?;
                let charge = model_units(amount, false);
                let acct = model.accounts.get_mut(&tenant).unwrap();
                let posted = charge.min(held_units);
                acct.1 -= held_units;
                acct.0 -= posted;
                let excess = charge - posted;
                let covered = excess.min((acct.0 - acct.1).max(0));
                acct.0 -= covered;
                let rest = excess - covered;
                let (written_off, debt) = match policy {
                    OverdraftPolicy::WriteOff => (rest, 0),
                    OverdraftPolicy::Debt => (0, rest),
                };
                acct.0 -= debt;
                prop_assert_eq!(units(s.charged.amount), charge);
                prop_assert_eq!(units(s.released.amount), held_units - posted);
                prop_assert_eq!(units(s.written_off.amount), written_off);
                prop_assert_eq!(units(s.debt.amount), debt);
                prop_assert_eq!(units(s.from_tenant.amount), posted + covered + debt);
                prop_assert_eq!(s.exact, amount);
                model.holds[i].3 = false;
                transfers +=
                    1 + u64::from(covered > 0) + u64::from(written_off > 0) + u64::from(debt > 0);
                done.push(Done::Settle(
                    id,
                    amount,
                    key,
                    serde_json::to_string(&s).unwrap(),
                ));
            }
            Op::Void { hold } => {
                if model.holds.is_empty() {
                    continue;
                }
                let i = hold % model.holds.len();
                let (id, tenant, held_units, open) = model.holds[i].clone();
                let r = store.void(&id, &key);
                if !open {
                    prop_assert!(
                        matches!(r, Err(LedgerError::HoldAlreadyResolved { .. })),
                        "{r:?}"
                    );
                    continue;
                }
                let v = r.map_err(|e| TestCaseError::fail(format!("void: {e}")))?;
                prop_assert_eq!(units(v.released.amount), held_units);
                model.accounts.get_mut(&tenant).unwrap().1 -= held_units;
                model.holds[i].3 = false;
                transfers += 1;
                done.push(Done::Void(id, key, serde_json::to_string(&v).unwrap()));
            }
            Op::Replace { hold, amount } => {
                if model.holds.is_empty() {
                    continue;
                }
                let i = hold % model.holds.len();
                let (id, tenant, old_units, open) = model.holds[i].clone();
                let r = store.replace_hold(&id, &usd(&amount.to_string()), &key);
                if !open {
                    prop_assert!(
                        matches!(r, Err(LedgerError::HoldAlreadyResolved { .. })),
                        "{r:?}"
                    );
                    continue;
                }
                let need = model_units(amount, true);
                let acct = model.accounts.get_mut(&tenant).unwrap();
                // As if the old hold were released first.
                let available = acct.0 - acct.1 + old_units;
                if need > available {
                    match r {
                        Err(LedgerError::InsufficientCredits {
                            need: n,
                            available: a,
                        }) => {
                            prop_assert_eq!(units(n.amount), need);
                            prop_assert_eq!(units(a.amount), available);
                        }
                        other => prop_assert!(false, "expected insufficient credits: {other:?}"),
                    }
                    continue;
                }
                let h = r.map_err(|e| TestCaseError::fail(format!("replace: {e}")))?;
                prop_assert_eq!(units(h.amount.amount), need);
                prop_assert_eq!(h.exact, amount);
                prop_assert_eq!(h.state, HoldState::Open);
                prop_assert_eq!(&h.tenant, TENANTS[tenant]);
                acct.1 += need - old_units;
                model.holds[i].3 = false;
                model.holds.push((h.id.clone(), tenant, need, true));
                // The void of the old hold and the new hold.
                transfers += 2;
                done.push(Done::Replace(
                    id,
                    amount,
                    key,
                    serde_json::to_string(&h).unwrap(),
                ));
            }
            Op::Duplicate { op } => {
                if done.is_empty() {
                    continue;
                }
                let replayed = match &done[op % done.len()] {
                    Done::Grant(t, a, k, answer) => (
                        serde_json::to_string(
                            &store
                                .grant(TENANTS[*t], &usd(&a.to_string()), "n", k)
                                .unwrap(),
                        )
                        .unwrap(),
                        answer.clone(),
                    ),
                    Done::Hold(t, a, sbx, k, answer) => (
                        serde_json::to_string(
                            &store
                                .hold(TENANTS[*t], &usd(&a.to_string()), sbx, "ext", k)
                                .unwrap(),
                        )
                        .unwrap(),
                        answer.clone(),
                    ),
                    Done::Settle(id, a, k, answer) => (
                        serde_json::to_string(
                            &store.settle(id, &usd(&a.to_string()), k, None).unwrap(),
                        )
                        .unwrap(),
                        answer.clone(),
                    ),
                    Done::Void(id, k, answer) => (
                        serde_json::to_string(&store.void(id, k).unwrap()).unwrap(),
                        answer.clone(),
                    ),
                    Done::Replace(id, a, k, answer) => (
                        serde_json::to_string(
                            &store.replace_hold(id, &usd(&a.to_string()), k).unwrap(),
                        )
                        .unwrap(),
                        answer.clone(),
                    ),
                };
                prop_assert_eq!(replayed.0, replayed.1);
            }
            Op::Reopen => {
                drop(store);
                store = db.open(policy);
            }
        }
        // After every step: balances equal the model, the ledger verifies (sum over
        // accounts is zero, balances = fold(transfers)), nothing forbidden is negative.
        for (t, (posted, held)) in &model.accounts {
            let b = store.balance(TENANTS[*t], &cur()).unwrap();
            prop_assert_eq!(
                (units(b.posted), units(b.held), units(b.available)),
                (*posted, *held, posted - held)
            );
            prop_assert!(*held >= 0);
            if policy == OverdraftPolicy::WriteOff {
                prop_assert!(
                    posted - held >= 0,
                    "tenant {} available {} under write-off",
                    t,
                    posted - held
                );
            }
        }
        let report = store.verify().unwrap();
        prop_assert!(report.ok, "{:?}", report.problems);
        prop_assert_eq!(report.transfers, transfers);
        prop_assert_eq!(
            report.open_holds,
            model.holds.iter().filter(|h| h.3).count() as u64
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, max_shrink_iters: 200, ..ProptestConfig::default() })]
    #[test]
    fn random_operation_sequences_match_the_model_on_sqlite(
        debt in any::<bool>(), ops in prop::collection::vec(op(), 1..40),
    ) {
        let policy = if debt { OverdraftPolicy::Debt } else { OverdraftPolicy::WriteOff };
        run_machine(Backend::Sqlite, policy, ops)?;
    }

    #[test]
    fn random_operation_sequences_match_the_model_on_postgres(
        debt in any::<bool>(), ops in prop::collection::vec(op(), 1..40),
    ) {
        let policy = if debt { OverdraftPolicy::Debt } else { OverdraftPolicy::WriteOff };
        run_machine(Backend::Postgres, policy, ops)?;
    }
}

/// Shared accounts only grow, so they roll over: a grant or hold that would take one
/// past its limit books to a fresh series, and settlements of holds taken near the limit
/// still go through. A tenant's own account is guarded (refused cleanly, nothing written)
/// and `verify` warns about it well before.
fn shared_accounts_roll_over_and_a_tenant_near_its_limit_is_refused_cleanly(backend: Backend) {
    let db = TestLedger::new(backend);
    let store = db.open(OverdraftPolicy::WriteOff);
    // 5e9 currency units at 9 decimal places: 5e18 of the grants account's ~9e18.
    store.grant("a", &usd("5000000000"), "", "g1").unwrap();
    // A second grant as large would pass the grants account's limit: it rolls over.
    store.grant("b", &usd("5000000000"), "", "g2").unwrap();
    assert_eq!(balance(&*store, "b").0, dec("5000000000"));
    assert_verified(&*store);

    // Two holds whose sum passes the revenue account's limit, each charged in full: the
    // second is on a fresh revenue series, so neither settlement can fail on the limit.
    let ha = store
        .hold("a", &usd("5000000000"), "sbx-a", "saas-stub", "ha")
        .unwrap();
    let hb = store
        .hold("b", &usd("5000000000"), "sbx-b", "saas-stub", "hb")
        .unwrap();
    let sa = store
        .settle(&ha.id, &usd("5000000000"), "sa", None)
        .unwrap();
    let sb = store
        .settle(&hb.id, &usd("5000000000"), "sb", None)
        .unwrap();
    assert_eq!(sa.charged, usd("5000000000"));
    assert_eq!(sb.charged, usd("5000000000"));
    assert_eq!(balance(&*store, "a").0, dec("0"));
    assert_eq!(balance(&*store, "b").0, dec("0"));
    let report = store.verify().unwrap();
    assert!(report.ok, "{report:?}");
    assert!(
        !report
            .warnings
            .iter()
            .any(|w| w.starts_with("grants") || w.starts_with("revenue")),
        "shared accounts roll over, they are never near their limit: {report:?}"
    );

    // A lease renewal (replace) past the series' room moves to the next series too.
    store.grant("c", &usd("8000000000"), "", "g3").unwrap();
    store.grant("d", &usd("8000000000"), "", "g4").unwrap();
    let hc = store
        .hold("c", &usd("1"), "sbx-c", "saas-stub", "hc")
        .unwrap();
    let _hd = store
        .hold("d", &usd("8000000000"), "sbx-d", "saas-stub", "hd")
        .unwrap();
    let hc2 = store
        .replace_hold(&hc.id, &usd("7000000000"), "rc")
        .unwrap();
    let sc = store
        .settle(&hc2.id, &usd("7000000000"), "sc", None)
        .unwrap();
    assert_eq!(sc.charged, usd("7000000000"));
    assert_verified(&*store);

    // The tenant's own sums are guarded: refused naming its account, nothing written,
    // and verify warns once a tenant's account is past half its limit.
    store.grant("e", &usd("5000000000"), "", "g5").unwrap();
    let report = store.verify().unwrap();
    assert!(report.ok, "{report:?}");
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("tenant account e")),
        "{report:?}"
    );
    let err = store
        .grant("e", &usd("4500000000"), "", "g6")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tenant account e") && err.contains("limit"),
        "{err}"
    );
    assert_eq!(balance(&*store, "e").0, dec("5000000000"));
    assert_verified(&*store);
}

on_both_stores!(
    partial_settlement_posts_the_cost_and_releases_the_rest,
    excess_under_write_off_takes_what_is_available_and_writes_off_the_rest,
    excess_under_debt_takes_everything_and_the_balance_goes_negative,
    holds_round_up_and_charges_round_half_away_from_zero_keeping_the_exact_amount,
    settlement_events_go_to_the_outbox_in_the_same_transaction,
    holds_survive_a_reopen_and_can_be_found_for_recovery,
    bad_input_is_refused_and_changes_nothing,
    replacing_a_hold_needs_only_the_increment_and_is_one_step,
    a_refused_replacement_says_need_and_available_and_changes_nothing,
    a_replacement_replayed_returns_the_same_hold_and_a_different_one_conflicts,
    shared_accounts_roll_over_and_a_tenant_near_its_limit_is_refused_cleanly,
);
