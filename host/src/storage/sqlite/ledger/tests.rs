//! The SQLite ledger on a real file (the invariants themselves are pinned by
//! `tests/ledger_*.rs` through the real store).

use super::*;

#[test]
fn the_store_is_shareable_between_threads() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<SqliteCreditsStore>();
}

#[test]
fn statement_pages_follow_the_transfer_sequence_of_one_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteCreditsStore::open(dir.path().join("ledger.sqlite3")).unwrap();
    let usd = |a: i64| Money {
        amount: Decimal::new(a, 0),
        currency: Currency::new("USD").unwrap(),
    };
    // Interleaved with another tenant's transfers, so the sequence has gaps.
    for i in 1..=23 {
        store.grant("acme", &usd(i), "", &format!("a{i}")).unwrap();
        store
            .grant("globex", &usd(i), "", &format!("g{i}"))
            .unwrap();
    }
    let all = store.statement("acme").unwrap();
    assert_eq!(all.len(), 23);
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = store.statement_page("acme", after.as_deref(), 10).unwrap();
        pages += 1;
        paged.extend(page.entries);
        if pages == 1 {
            // Recorded between pages: it comes last, once.
            store.grant("acme", &usd(99), "late", "a99").unwrap();
        }
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(paged[..23], all[..]);
    assert_eq!(paged.len(), 24);
    assert_eq!(paged[23].note.as_deref(), Some("late"));
    // Another tenant's transfer is no position on this statement.
    let theirs = store.statement_page("globex", None, 1).unwrap().entries[0]
        .transfer_id
        .clone();
    assert!(matches!(
        store.statement_page("acme", Some(&theirs), 10),
        Err(LedgerError::InvalidInput { what: "after", .. })
    ));
    assert!(matches!(
        store.statement_page("acme", Some("nope"), 10),
        Err(LedgerError::InvalidInput { what: "after", .. })
    ));
}
