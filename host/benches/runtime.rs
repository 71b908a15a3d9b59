//! The runtime's costs, measured side by side in one run on saas-stub:
//!
//! (a) a warm `estimate-cost` through the component vs the same pricing compiled natively
//!     into the host (targets: under 2 µs per call, within 10x of native);
//! (b) loading the extension from the precompiled cache vs compiling it from `.wasm`
//!     (target: cached load under 10 ms);
//! (c) a cold call: a fresh instance from the `InstancePre` plus the call.
//!
//! Run: `scripts/build-extensions.sh && cargo bench --profile dev --bench runtime`.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use sandboxer_host::domain::{Cost, LineItem, SandboxRequest};
use sandboxer_host::domain::{Currency, Money, parse_decimal};
use sandboxer_host::layers::runtime::bindings::{self, wit};
use sandboxer_host::layers::runtime::{
    ArtifactSource, PoolPolicy, Runtime, RuntimeConfig, conformance,
};

/// Rounds per measurement; the median round is reported.
const ROUNDS: usize = 7;

/// saas-stub's default price table, natively.
struct PriceTable {
    currency: Currency,
    vcpu_second: Decimal,
    gib_second: Decimal,
    per_sandbox: Decimal,
}

/// The pricing saas-stub's `estimate-cost` does (resources × duration × price table, line
/// items, exact total), compiled into the host.
fn native_estimate(prices: &PriceTable, request: &SandboxRequest) -> Option<Cost> {
    let secs = Decimal::from(request.max_duration_secs);
    let vcpu_seconds = Decimal::from(request.resources.vcpus).checked_mul(secs)?;
    let gib = Decimal::from(request.resources.memory_mib).checked_div(Decimal::from(1024))?;
    let gib_seconds = gib.checked_mul(secs)?;
    let mut lines = vec![
        ("vCPU time", "vcpu-second", vcpu_seconds, prices.vcpu_second),
        ("Memory", "gib-second", gib_seconds, prices.gib_second),
    ];
    if !prices.per_sandbox.is_zero() {
        lines.push(("Sandbox fee", "sandbox", Decimal::ONE, prices.per_sandbox));
    }
    let mut total = Decimal::ZERO;
    let mut line_items = Vec::with_capacity(lines.len());
    for (description, unit, quantity, unit_price) in lines {
        let amount = quantity.checked_mul(unit_price)?;
        total = total.checked_add(amount)?;
        line_items.push(LineItem {
            description: description.to_owned(),
            quantity,
            unit: unit.to_owned(),
            unit_price,
            amount,
        });
    }
    Some(Cost {
        total: Money {
            amount: total,
            currency: prices.currency.clone(),
        },
        line_items,
    })
}

/// The answer as the guest sent it: each decimal prints back to the guest's string (the
/// parsed value keeps the written scale).
fn wit_cost(c: &Cost) -> wit::Cost {
    wit::Cost {
        total: wit::Money {
            amount: c.total.amount.to_string(),
            currency: c.total.currency.as_str().to_owned(),
        },
        line_items: c
            .line_items
            .iter()
            .map(|l| wit::LineItem {
                description: l.description.clone(),
                quantity: l.quantity.to_string(),
                unit: l.unit.clone(),
                unit_price: l.unit_price.to_string(),
                amount: l.amount.to_string(),
            })
            .collect(),
    }
}

/// Median over `ROUNDS` rounds of `per_round` runs of `f`, per run.
fn per_call(per_round: u32, mut f: impl FnMut()) -> Duration {
    for _ in 0..per_round.min(1000) {
        f(); // warm-up
    }
    let mut rounds: Vec<Duration> = (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..per_round {
                f();
            }
            start.elapsed() / per_round
        })
        .collect();
    rounds.sort();
    rounds[ROUNDS / 2]
}

/// Median of `n` single runs of `f` (for slow things: compiles, loads).
fn median_of(n: usize, mut f: impl FnMut() -> Duration) -> Duration {
    let mut runs: Vec<Duration> = (0..n).map(|_| f()).collect();
    runs.sort();
    runs[n / 2]
}

fn fmt(d: Duration) -> String {
    let ns = d.as_nanos() as f64;
    if ns < 10_000.0 {
        format!("{:.2} µs", ns / 1e3)
    } else if ns < 10_000_000.0 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{:.1} ms", ns / 1e6)
    }
}

fn ratio(a: Duration, b: Duration) -> String {
    format!("{:.1}x", a.as_nanos() as f64 / b.as_nanos().max(1) as f64)
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let wasm: PathBuf = root.join("extensions/saas-stub.wasm");
    assert!(
        wasm.is_file(),
        "{} is missing: run scripts/build-extensions.sh first",
        wasm.display()
    );
    let size = std::fs::metadata(&wasm).map(|m| m.len()).unwrap_or(0);
    let request = conformance::sample_request();
    let cache = tempfile::tempdir().expect("temp dir");

    // (b) compile from .wasm (a fresh cache folder each time) vs load from the cache.
    let compile = median_of(3, || {
        let empty = tempfile::tempdir().expect("temp dir");
        let rt = Runtime::new(RuntimeConfig::with_cache_dir(empty.path())).expect("runtime");
        let start = Instant::now();
        let ext = rt.load_file(&wasm).expect("load");
        let took = start.elapsed();
        assert_eq!(ext.artifact_source(), &ArtifactSource::Compiled);
        took
    });
    Runtime::new(RuntimeConfig::with_cache_dir(cache.path()))
        .expect("runtime")
        .load_file(&wasm)
        .expect("load");
    let cached = median_of(21, || {
        let rt = Runtime::new(RuntimeConfig::with_cache_dir(cache.path())).expect("runtime");
        let start = Instant::now();
        let ext = rt.load_file(&wasm).expect("load");
        let took = start.elapsed();
        assert_eq!(ext.artifact_source(), &ArtifactSource::Cache);
        took
    });

    // (a) warm calls vs native.
    let rt = Runtime::new(RuntimeConfig::with_cache_dir(cache.path())).expect("runtime");
    let ext = rt.load_file(&wasm).expect("load");
    let prices = PriceTable {
        currency: Currency::new("USD").expect("USD"),
        vcpu_second: Decimal::new(14, 6),
        gib_second: Decimal::new(45, 7),
        per_sandbox: Decimal::ZERO,
    };
    let wasm_cost = ext.estimate_cost(&request).expect("estimate");
    let native_cost = native_estimate(&prices, &request).expect("native estimate");
    assert_eq!(
        wasm_cost.total, native_cost.total,
        "the native pricing must match the component's"
    );
    if let Some(what) = std::env::var_os("RUNTIME_BENCH_PROFILE") {
        // For a profiler (`perf record`): only warm calls, for three seconds.
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(3) {
            for _ in 0..1000 {
                if what == "create" {
                    black_box(ext.create(black_box(&request)).expect("create"));
                } else {
                    black_box(ext.estimate_cost(black_box(&request)).expect("estimate"));
                }
            }
        }
        return;
    }
    let warm = per_call(20_000, || {
        black_box(ext.estimate_cost(black_box(&request)).expect("estimate"));
    });
    let bare = per_call(20_000, || {
        black_box(ext.capacity().expect("capacity"));
    });
    let create = per_call(20_000, || {
        black_box(ext.create(black_box(&request)).expect("create"));
    });
    let native = per_call(200_000, || {
        black_box(native_estimate(black_box(&prices), black_box(&request)));
    });

    // Where a warm call's time goes, host side: the answer's validation (every decimal
    // parsed, every product and the sum checked) on the very strings the guest returned.
    let answer = wit_cost(&wasm_cost);
    let decimals = 1 + 3 * answer.line_items.len();
    let copy = per_call(200_000, || {
        black_box(black_box(&answer).clone());
    });
    let validate = per_call(200_000, || {
        let c = black_box(&answer).clone();
        black_box(bindings::cost_from_wit(c, &prices.currency).expect("valid"));
    })
    .saturating_sub(copy);
    let parse = per_call(200_000, || {
        for item in &black_box(&answer).line_items {
            black_box(parse_decimal(&item.unit_price).expect("decimal"));
        }
    }) / u32::try_from(answer.line_items.len()).unwrap_or(1);

    // (c) cold: no warm instances kept, every call instantiates from the InstancePre.
    let cold_rt = Runtime::new(RuntimeConfig {
        pool: PoolPolicy {
            max_idle: 0,
            ..PoolPolicy::default()
        },
        ..RuntimeConfig::with_cache_dir(cache.path())
    })
    .expect("runtime");
    let cold_ext = cold_rt.load_file(&wasm).expect("load");
    let cold = per_call(500, || {
        black_box(
            cold_ext
                .estimate_cost(black_box(&request))
                .expect("estimate"),
        );
    });

    let verdict = |ok: bool| if ok { "ok" } else { "MISSED" };
    println!();
    println!(
        "runtime bench: saas-stub.wasm ({:.0} KB), estimate-cost for 2 vCPU / 2 GiB / 1 h",
        size as f64 / 1024.0
    );
    println!("{:<44} {:>12}  {:<10}", "measure", "value", "target");
    let rows: Vec<(String, String, String, String)> = vec![
        (
            "(a) estimate-cost, warm instance (wasm)".into(),
            fmt(warm),
            "< 2 µs".into(),
            verdict(warm < Duration::from_micros(2)).into(),
        ),
        (
            "    estimate-cost, native Rust in the host".into(),
            fmt(native),
            String::new(),
            String::new(),
        ),
        (
            "    ratio wasm / native".into(),
            ratio(warm, native),
            "< 10x".into(),
            verdict(warm < native * 10).into(),
        ),
        (
            format!("    of which host validation ({decimals} decimals)"),
            fmt(validate),
            String::new(),
            String::new(),
        ),
        (
            "    parse_decimal, one unit price".into(),
            fmt(parse),
            String::new(),
            String::new(),
        ),
        (
            "    bare component call (capacity), warm".into(),
            fmt(bare),
            String::new(),
            String::new(),
        ),
        (
            "    create (request in, handle out), warm".into(),
            fmt(create),
            String::new(),
            String::new(),
        ),
        (
            "(b) load: compile from .wasm".into(),
            fmt(compile),
            String::new(),
            String::new(),
        ),
        (
            "    load: from the precompiled cache".into(),
            fmt(cached),
            "< 10 ms".into(),
            verdict(cached < Duration::from_millis(10)).into(),
        ),
        (
            "    ratio compile / cached".into(),
            ratio(compile, cached),
            String::new(),
            String::new(),
        ),
        (
            "(c) cold call: fresh instance + estimate-cost".into(),
            fmt(cold),
            String::new(),
            String::new(),
        ),
        (
            "    ratio cold / warm".into(),
            ratio(cold, warm),
            String::new(),
            String::new(),
        ),
    ];
    for (name, value, target, ok) in rows {
        println!("{name:<44} {value:>12}  {target:<10} {ok}");
    }
    println!(
        "(loads include instantiating and calling `info`; medians of {ROUNDS} rounds / repeated loads)"
    );
}
