//! Hold+settle pairs per second through `CreditsStore` (SQLite) against a bare rusqlite
//! baseline doing one durable INSERT+COMMIT per operation with the same pragmas, on the
//! same disk, sequentially and from 8 threads. Run: `cargo bench --profile dev --bench ledger`.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use rusqlite::{Connection, TransactionBehavior, params};
use rust_decimal::Decimal;
use sandboxer_host::money::{Currency, Money};
use sandboxer_host::payments::{CreditsStore, SqliteCreditsStore};

/// How long each measurement runs.
const RUN: Duration = Duration::from_secs(3);
const THREADS: usize = 8;

fn usd(s: &str) -> Money {
    Money {
        amount: Decimal::from_str(s).unwrap(),
        currency: Currency::new("USD").unwrap(),
    }
}

/// Runs `pair(thread, i)` on `threads` threads for [`RUN`]; returns pairs per second.
fn measure(threads: usize, pair: impl Fn(usize, u64) + Send + Sync + 'static) -> f64 {
    let pair = Arc::new(pair);
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (pair, done) = (pair.clone(), done.clone());
            thread::spawn(move || {
                let mut i = 0u64;
                while start.elapsed() < RUN {
                    pair(t, i);
                    i += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn ledger(dir: &Path, threads: usize, run: &str) -> f64 {
    let store =
        Arc::new(SqliteCreditsStore::open(dir.join(format!("ledger-{run}.sqlite3"))).unwrap());
    store
        .grant("bench", &usd("1000000000"), "bench", "grant")
        .unwrap();
    let cost = usd("0.0162");
    measure(threads, move |t, i| {
        let hold = store
            .hold(
                "bench",
                &usd("0.05"),
                &format!("sbx-{t}-{i}"),
                "ext",
                &format!("h-{t}-{i}"),
            )
            .unwrap();
        store
            .settle(&hold.id, &cost, &format!("s-{t}-{i}"), None)
            .unwrap();
    })
}

fn baseline_conn(path: &Path) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.busy_timeout(Duration::from_secs(30)).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    conn.execute_batch("PRAGMA synchronous = FULL;").unwrap();
    conn
}

fn baseline(dir: &Path, threads: usize, run: &str) -> f64 {
    let path = dir.join(format!("baseline-{run}.sqlite3"));
    baseline_conn(&path)
        .execute_batch("CREATE TABLE ops (id INTEGER PRIMARY KEY, k TEXT NOT NULL UNIQUE, amount INTEGER NOT NULL)")
        .unwrap();
    // One connection per thread, as a hand-written app would have.
    let conns: Arc<Vec<parking_lot::Mutex<Connection>>> = Arc::new(
        (0..threads)
            .map(|_| parking_lot::Mutex::new(baseline_conn(&path)))
            .collect(),
    );
    measure(threads, move |t, i| {
        let mut conn = conns[t].lock();
        for op in ["hold", "settle"] {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .unwrap();
            tx.execute(
                "INSERT INTO ops (k, amount) VALUES (?1, ?2)",
                params![format!("{op}-{t}-{i}"), 50_000_000],
            )
            .unwrap();
            tx.commit().unwrap();
        }
    })
}

fn main() {
    // Both databases live side by side in one temporary folder: same disk, same pragmas.
    let dir = tempfile::tempdir().unwrap();
    println!(
        "ledger bench: {} s per measurement, files in {}",
        RUN.as_secs(),
        dir.path().display()
    );
    println!(
        "{:<22} {:>16} {:>18} {:>16}",
        "scenario", "ledger pairs/s", "baseline pairs/s", "baseline/ledger"
    );
    for (name, threads) in [("sequential", 1), ("concurrent (8 threads)", THREADS)] {
        let l = ledger(dir.path(), threads, name.split(' ').next().unwrap_or(name));
        let b = baseline(dir.path(), threads, name.split(' ').next().unwrap_or(name));
        println!("{name:<22} {l:>16.0} {b:>18.0} {:>15.2}x", b / l);
    }
}
