//! Sandbox lifecycles (create + destroy + settle + meter event) per second through the
//! app's use cases (the manager underneath, extensions instrumented as in a service) with
//! the real saas-stub component and the SQLite ledger, from 1 and 8
//! threads, beside the ledger's own hold+settle pairs per second measured in the same run
//! on the same disk. Run: `cargo bench --profile dev --bench manager`.
//!
//! Both are bound by fsync: a ledger pair makes 2 durable commits; a lifecycle makes 3
//! (the hold, the `running` record the caller is answered with, the settlement; the other
//! status writes ride on the next ledger fsync), plus 2 when the meter event is delivered
//! inline (the JSONL append and the outbox acknowledgement).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use sandboxer_host::Settings;
use sandboxer_host::app::{App, AppOptions, GrantRequest};
use sandboxer_host::domain::{Currency, Money, SandboxSpec, Scope, TenantId};
use sandboxer_host::layers::payments::{CreditsStore, SqliteCreditsStore};

const RUN: Duration = Duration::from_secs(3);
const THREADS: usize = 8;
const ROUNDS: usize = 3;

const PROFILE: &str = r#"
id = "bench"
description = "saas-stub, explicit"
template = "base"
max_duration_secs = 3600
[resources]
vcpus = 1
memory_mib = 1024
[route]
strategy = "explicit"
explicit = "saas-stub"
fallback = false
"#;

fn usd(s: &str) -> Money {
    Money {
        amount: Decimal::from_str(s).unwrap(),
        currency: Currency::new("USD").unwrap(),
    }
}

/// Runs `op(thread, i)` on `threads` threads for [`RUN`]; returns operations per second.
fn measure(threads: usize, op: impl Fn(usize, u64) + Send + Sync + 'static) -> f64 {
    let op = Arc::new(op);
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (op, done) = (op.clone(), done.clone());
            thread::spawn(move || {
                let mut i = 0u64;
                while start.elapsed() < RUN {
                    op(t, i);
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

/// The ledger alone: hold + settle, as the payments bench measures it.
fn ledger(dir: &Path, threads: usize) -> f64 {
    let store =
        Arc::new(SqliteCreditsStore::open(dir.join(format!("ledger-{threads}.sqlite3"))).unwrap());
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

fn host_dir(dir: &Path, name: &str) -> Settings {
    let root = dir.join(name);
    let ext = root.join("extensions");
    let prof = root.join("profiles");
    std::fs::create_dir_all(&ext).unwrap();
    std::fs::create_dir_all(&prof).unwrap();
    let wasm: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../extensions/saas-stub.wasm");
    assert!(
        wasm.exists(),
        "{} is missing: run `make extensions` first",
        wasm.display()
    );
    std::fs::copy(&wasm, ext.join("saas-stub.wasm")).unwrap();
    std::fs::write(prof.join("bench.toml"), PROFILE).unwrap();
    Settings {
        extensions_dir: ext,
        profiles_dir: prof,
        state_dir: root.join("state"),
    }
}

/// Full lifecycles through the app.
fn lifecycles(dir: &Path, threads: usize, deliver_inline: bool) -> f64 {
    let settings = host_dir(dir, &format!("host-{threads}-{deliver_inline}"));
    let options = AppOptions {
        deliver_after_settle: deliver_inline,
        ..AppOptions::default()
    };
    let app = App::open(&settings, options);
    app.start().unwrap();
    let tenant = TenantId::parse("bench").unwrap();
    app.grant_credits(
        &tenant,
        &GrantRequest {
            amount: usd("1000000000"),
            note: "bench".into(),
            idempotency_key: Some("grant".into()),
        },
    )
    .unwrap();
    let deliverer = (!deliver_inline).then(|| {
        // What a service does instead: deliver on a timer.
        let app = app.clone();
        thread::spawn(move || {
            let start = Instant::now();
            while start.elapsed() < RUN {
                thread::sleep(Duration::from_millis(100));
                app.deliver_once().unwrap();
            }
        })
    });
    let a = app.clone();
    let spec = SandboxSpec::of_profile("bench");
    let rate = measure(threads, move |_, _| {
        let st = a.create_sandbox(&tenant, &spec, None).unwrap();
        a.destroy_sandbox(&Scope::Operator, &st.id).unwrap();
    });
    if let Some(d) = deliverer {
        d.join().unwrap();
    }
    app.deliver_once().unwrap();
    let ledger = SqliteCreditsStore::open(settings.ledger_path()).unwrap();
    assert_eq!(ledger.outbox_lag().unwrap().0, 0);
    rate
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    println!(
        "manager bench: median of {ROUNDS} interleaved rounds, {} s per measurement, files in {} (same disk for all)",
        RUN.as_secs(),
        dir.path().display()
    );
    println!(
        "{:<10} {:>16} {:>22} {:>10} {:>22} {:>10}",
        "threads",
        "ledger pairs/s",
        "lifecycles/s (batched)",
        "added",
        "lifecycles/s (inline)",
        "added"
    );
    // Interleaved rounds, so a disturbance (another process's fsyncs) hits all three
    // alike; the median round is reported.
    for threads in [1, THREADS] {
        let mut rounds: Vec<(f64, f64, f64)> = (0..ROUNDS)
            .map(|r| {
                let sub = dir.path().join(format!("r{r}"));
                std::fs::create_dir_all(&sub).unwrap();
                (
                    ledger(&sub, threads),
                    lifecycles(&sub, threads, false),
                    lifecycles(&sub, threads, true),
                )
            })
            .collect();
        rounds.sort_by(|a, b| (a.0 / a.1).total_cmp(&(b.0 / b.1)));
        let (l, batched, inline) = rounds[rounds.len() / 2];
        // Added cost per lifecycle relative to the ledger's pair: time(lifecycle)/time(pair) − 1.
        let added = |rate: f64| format!("{:+.0}%", (l / rate - 1.0) * 100.0);
        println!(
            "{threads:<10} {l:>16.0} {batched:>22.0} {:>10} {inline:>22.0} {:>10}",
            added(batched),
            added(inline)
        );
    }
    println!(
        "batched: meter events delivered every 100 ms (a service's timer); inline: after each settlement (the CLI)."
    );
}
