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
use sandboxer_host::domain::{Currency, Money};
use sandboxer_host::layers::payments::{CreditsStore, SqliteCreditsStore};

/// How long each measurement round runs.
const RUN: Duration = Duration::from_secs(1);
/// Rounds per scenario, alternating ledger and baseline so load from other processes on
/// the machine hits both alike.
const ROUNDS: u32 = 4;
const THREADS: usize = 8;

fn usd(s: &str) -> Money {
    Money {
        amount: Decimal::from_str(s).unwrap(),
        currency: Currency::new("USD").unwrap(),
    }
}

/// One hold+settle pair: `(thread, round, i)`.
type Pair = Arc<dyn Fn(usize, u32, u64) + Send + Sync>;

/// Runs `pair` on `threads` threads for [`RUN`]; returns (pairs, seconds).
fn measure(threads: usize, round: u32, pair: &Pair) -> (u64, f64) {
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (pair, done) = (pair.clone(), done.clone());
            thread::spawn(move || {
                let mut i = 0u64;
                while start.elapsed() < RUN {
                    pair(t, round, i);
                    i += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    (done.load(Ordering::Relaxed), start.elapsed().as_secs_f64())
}

fn ledger(dir: &Path, run: &str) -> Pair {
    let store = SqliteCreditsStore::open(dir.join(format!("ledger-{run}.sqlite3"))).unwrap();
    store
        .grant("bench", &usd("1000000000"), "bench", "grant")
        .unwrap();
    let cost = usd("0.0162");
    Arc::new(move |t, r, i| {
        let id = format!("{t}-{r}-{i}");
        let hold = store
            .hold(
                "bench",
                &usd("0.05"),
                &format!("sbx-{id}"),
                "ext",
                &format!("h-{id}"),
            )
            .unwrap();
        store
            .settle(&hold.id, &cost, &format!("s-{id}"), None)
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

fn baseline(dir: &Path, threads: usize, run: &str) -> Pair {
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
    Arc::new(move |t, r, i| {
        let mut conn = conns[t].lock();
        for op in ["hold", "settle"] {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .unwrap();
            let key = format!("{op}-{t}-{r}-{i}");
            tx.execute(
                "INSERT INTO ops (k, amount) VALUES (?1, ?2)",
                params![key, 50_000_000],
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
        "ledger bench: {ROUNDS} alternating rounds of {} s per side, files in {}",
        RUN.as_secs(),
        dir.path().display()
    );
    println!(
        "{:<22} {:>16} {:>18} {:>16}",
        "scenario", "ledger pairs/s", "baseline pairs/s", "baseline/ledger"
    );
    for (name, threads) in [("sequential", 1), ("concurrent (8 threads)", THREADS)] {
        let run = name.split(' ').next().unwrap_or(name);
        let (l, b) = (ledger(dir.path(), run), baseline(dir.path(), threads, run));
        let (mut lt, mut bt) = ((0u64, 0f64), (0u64, 0f64));
        for round in 0..ROUNDS {
            let (n, s) = measure(threads, round, &l);
            lt = (lt.0 + n, lt.1 + s);
            let (n, s) = measure(threads, round, &b);
            bt = (bt.0 + n, bt.1 + s);
        }
        let (l, b) = (lt.0 as f64 / lt.1, bt.0 as f64 / bt.1);
        println!("{name:<22} {l:>16.0} {b:>18.0} {:>15.2}x", b / l);
    }
}
