//! What only the PostgreSQL ledger has, against a real server the test starts
//! (`support/pg.rs`): schema versions checked at open, another application's database
//! refused, clear errors for an unreachable server and wrong credentials that never show
//! the password, and row locks holding across two stores on one database (two hosts).
//! The rules themselves run on both stores in `ledger_rules.rs` and
//! `ledger_concurrency.rs`.

#[path = "support/pg.rs"]
mod pg;

use std::str::FromStr;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use sandboxer_host::domain::{Currency, Money};
use sandboxer_host::layers::payments::{
    CreditsStore, LedgerError, OverdraftPolicy, PgCreditsStore, redact,
};

fn usd(s: &str) -> Money {
    Money {
        amount: Decimal::from_str(s).unwrap(),
        currency: Currency::new("USD").unwrap(),
    }
}

fn cur() -> Currency {
    Currency::new("USD").unwrap()
}

/// The database name at the end of a test URL.
fn db_name(url: &str) -> &str {
    url.rsplit('/').next().unwrap()
}

/// Asserts the error names the URL with `***` for the password and never the password.
fn assert_redacted(err: &LedgerError, url: &str, password: &str) {
    let text = err.to_string();
    assert!(text.contains(&redact(url)), "{text}");
    assert!(redact(url).contains(":***@"), "{}", redact(url));
    assert!(!text.contains(password), "the password leaked: {text}");
    assert!(
        !format!("{err:?}").contains(password),
        "the password leaked: {err:?}"
    );
}

#[test]
fn a_database_from_a_newer_build_is_refused_naming_both_versions() {
    let url = pg::fresh_database();
    {
        let store = PgCreditsStore::open(&url).unwrap();
        store.grant("acme", &usd("5"), "", "g").unwrap();
    }
    let mut client = pg::server().client(db_name(&url));
    let known: i32 = client
        .query_one(
            "SELECT version FROM sandboxer_schema WHERE component = 'ledger'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(known >= 1);
    client
        .execute(
            "UPDATE sandboxer_schema SET version = 99 WHERE component = 'ledger'",
            &[],
        )
        .unwrap();
    let err = PgCreditsStore::open(&url).unwrap_err();
    assert!(matches!(err, LedgerError::Corrupt { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("schema version 99") && text.contains(&format!("({known})")),
        "{text}"
    );
    assert_redacted(&err, &url, pg::PASSWORD);
    // Nothing was changed by the refusal.
    let version: i32 = client
        .query_one(
            "SELECT version FROM sandboxer_schema WHERE component = 'ledger'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(version, 99);
    // Back at the version this build knows, the ledger opens with its data.
    client
        .execute(
            "UPDATE sandboxer_schema SET version = $1 WHERE component = 'ledger'",
            &[&known],
        )
        .unwrap();
    let store = PgCreditsStore::open(&url).unwrap();
    assert_eq!(
        store.balance("acme", &cur()).unwrap().posted,
        usd("5").amount
    );
}

#[test]
fn another_applications_database_is_refused_and_left_untouched() {
    let url = pg::fresh_database();
    let mut client = pg::server().client(db_name(&url));
    client
        .batch_execute("CREATE TABLE notes (x TEXT); INSERT INTO notes VALUES ('keep me');")
        .unwrap();
    let err = PgCreditsStore::open(&url).unwrap_err();
    assert!(matches!(err, LedgerError::Corrupt { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("another application"), "{text}");
    assert_redacted(&err, &url, pg::PASSWORD);
    let tables: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(tables, 1, "the foreign database was changed");
    let kept: String = client.query_one("SELECT x FROM notes", &[]).unwrap().get(0);
    assert_eq!(kept, "keep me");
}

#[test]
fn an_unreachable_server_is_a_clear_error_without_the_password() {
    // Nothing listens on a port just freed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://app:very-secret-pw@127.0.0.1:{port}/ledger");
    let started = Instant::now();
    let err = PgCreditsStore::open(&url).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(matches!(err, LedgerError::Storage { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("reachable"), "{text}");
    assert_redacted(&err, &url, "very-secret-pw");

    // A URL that is no URL at all is refused before any connection, as clearly.
    let err =
        PgCreditsStore::open("postgres://app:very-secret-pw@127.0.0.1:notaport/x").unwrap_err();
    assert!(
        !err.to_string().contains("very-secret-pw"),
        "the password leaked: {err}"
    );
}

#[test]
fn wrong_credentials_are_a_clear_error_without_the_password() {
    let url = pg::fresh_database();
    let wrong = url.replace(pg::PASSWORD, "not-the-password");
    let err = PgCreditsStore::open(&wrong).unwrap_err();
    assert!(matches!(err, LedgerError::Storage { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("password authentication failed"), "{text}");
    assert!(text.contains("check the user and password"), "{text}");
    assert_redacted(&err, &wrong, "not-the-password");

    // A database that does not exist says so.
    let missing = url.replace(db_name(&url), "no_such_db");
    let err = PgCreditsStore::open(&missing).unwrap_err();
    assert!(err.to_string().contains("no_such_db"), "{err}");
    assert_redacted(&err, &missing, pg::PASSWORD);
}

#[test]
fn commits_are_synchronous_and_transfers_immutable() {
    let url = pg::fresh_database();
    let store = PgCreditsStore::open(&url).unwrap();
    assert_eq!(store.durability().unwrap(), ("on".into(), "on".into()));
    assert!(store.url().contains(":***@"), "{}", store.url());
    assert!(!format!("{store:?}").contains(pg::PASSWORD));
    store.grant("acme", &usd("5"), "", "g").unwrap();
    let mut client = pg::server().client(db_name(&url));
    let err = client
        .execute("UPDATE transfers SET amount = amount + 1", &[])
        .unwrap_err();
    let message = err.as_db_error().map(|d| d.message().to_owned());
    assert!(
        message.as_deref().unwrap_or("").contains("immutable"),
        "{err:?}"
    );
    assert!(client.execute("DELETE FROM transfers", &[]).is_err());
}

#[test]
fn hosts_opening_a_new_database_at_once_migrate_it_once() {
    let url = pg::fresh_database();
    let barrier = Arc::new(Barrier::new(4));
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let (url, barrier) = (url.clone(), barrier.clone());
            thread::spawn(move || {
                barrier.wait();
                PgCreditsStore::open(&url).map(|_| ())
            })
        })
        .collect();
    for o in opens {
        o.join().unwrap().unwrap();
    }
    let store = PgCreditsStore::open(&url).unwrap();
    assert!(store.verify().unwrap().ok);
}

/// 64 holds of 10 at once against a balance of 100, spread over two stores (two pools,
/// as two hosts would have) on one database: the tenant's row lock lets exactly ten
/// through, and the balance never goes below zero.
#[test]
fn row_locks_hold_across_two_stores_on_one_database() {
    let url = pg::fresh_database();
    let hosts: Vec<Arc<PgCreditsStore>> = (0..2)
        .map(|_| Arc::new(PgCreditsStore::open_with(&url, OverdraftPolicy::WriteOff, 8).unwrap()))
        .collect();
    hosts[0].grant("acme", &usd("100"), "start", "g1").unwrap();

    let barrier = Arc::new(Barrier::new(64));
    let handles: Vec<_> = (0..64)
        .map(|i| {
            let (store, barrier) = (hosts[i % 2].clone(), barrier.clone());
            thread::spawn(move || {
                barrier.wait();
                store.hold(
                    "acme",
                    &usd("10"),
                    &format!("sbx-{i}"),
                    "ext",
                    &format!("h{i}"),
                )
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let won: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(won.len(), 10, "exactly ten holds of 10 fit in 100");
    for r in &results {
        if let Err(e) = r {
            assert!(
                matches!(e, LedgerError::InsufficientCredits { .. }),
                "unexpected error {e:?}"
            );
        }
    }
    for host in &hosts {
        let b = host.balance("acme", &cur()).unwrap();
        assert_eq!(
            (b.posted, b.held, b.available),
            (usd("100").amount, usd("100").amount, Decimal::ZERO)
        );
    }

    // The same key sent to both hosts at once: one hold, the same answer twice.
    hosts[0].grant("acme", &usd("10"), "more", "g2").unwrap();
    let barrier = Arc::new(Barrier::new(2));
    let same: Vec<_> = hosts
        .iter()
        .map(|store| {
            let (store, barrier) = (store.clone(), barrier.clone());
            thread::spawn(move || {
                barrier.wait();
                store.hold("acme", &usd("10"), "sbx-dup", "ext", "dup")
            })
        })
        .collect();
    let same: Vec<_> = same
        .into_iter()
        .map(|h| h.join().unwrap().unwrap())
        .collect();
    assert_eq!(same[0], same[1]);
    let report = hosts[1].verify().unwrap();
    assert!(report.ok, "{:?}", report.problems);
    assert_eq!(report.open_holds, 11);
    assert_eq!(report.transfers, 2 + 11);

    // Settled on one host, the hold is resolved for the other.
    let h = &same[0];
    hosts[0].settle(&h.id, &usd("4"), "s-dup", None).unwrap();
    assert!(matches!(
        hosts[1].void(&h.id, "v-dup"),
        Err(LedgerError::HoldAlreadyResolved { .. })
    ));
    assert!(hosts[1].verify().unwrap().ok);
}

#[test]
fn passwords_never_reach_a_message() {
    assert_eq!(
        redact("postgres://app:s3cret@db.example:5432/ledger"),
        "postgres://app:***@db.example:5432/ledger"
    );
    assert_eq!(
        redact("postgresql://app:p%40ss@db/ledger?sslmode=disable&password=x"),
        "postgresql://app:***@db/ledger?sslmode=disable&password=***"
    );
    // An unencoded @ in the password: everything up to the last @ is user info.
    assert_eq!(
        redact("postgres://app:p@ss@db/ledger"),
        "postgres://app:***@db/ledger"
    );
    assert_eq!(
        redact("postgres://app@db/ledger"),
        "postgres://app@db/ledger"
    );
    assert_eq!(redact("postgres://db"), "postgres://db");
    assert_eq!(
        redact("host=db user=app password=s3cret dbname=ledger"),
        "host=db user=app password=*** dbname=ledger"
    );
    assert_eq!(
        redact("host=db password = 'a b c' dbname=x"),
        "host=db password=*** dbname=x"
    );
}
