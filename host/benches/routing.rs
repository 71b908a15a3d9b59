//! `resolve_extension` over 3 and 20 real candidates (the saas-stub component loaded under
//! that many ids with different prices), including their `estimate-cost` calls: µs per
//! decision, and the share spent inside extension calls vs in the router.
//!
//! Run: `cargo bench --profile dev --bench routing` (after `scripts/build-extensions.sh`).

use std::cell::Cell;
use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use sandboxer_host::domain::{
    Capacity, Cost, ExtensionError, ExtensionInfo, SandboxRequest, SandboxSpec,
};
use sandboxer_host::layers::routing::{
    ExtensionView, HealthTracker, LoadedExtensions, parse_profile, resolve_extension,
};
use sandboxer_host::layers::runtime::{Runtime, RuntimeConfig};

/// Wraps a view and adds up the time spent inside extension calls.
struct Timed<'a> {
    inner: &'a LoadedExtensions,
    spent: Cell<Duration>,
}

impl Timed<'_> {
    fn time<T>(&self, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = f();
        self.spent.set(self.spent.get() + start.elapsed());
        out
    }
}

impl ExtensionView for Timed<'_> {
    fn extension_ids(&self) -> Vec<String> {
        self.inner.extension_ids()
    }
    fn info(&self, id: &str) -> Option<&ExtensionInfo> {
        self.inner.info(id)
    }
    fn estimate_cost(&self, id: &str, req: &SandboxRequest) -> Result<Cost, ExtensionError> {
        self.time(|| self.inner.estimate_cost(id, req))
    }
    fn capacity(&self, id: &str) -> Result<Capacity, ExtensionError> {
        self.time(|| self.inner.capacity(id))
    }
    fn in_use(&self, id: &str) -> u32 {
        self.inner.in_use(id)
    }
}

/// The same extensions with every answer computed once beforehand: the router alone.
struct Canned<'a> {
    inner: &'a LoadedExtensions,
    costs: HashMap<String, Cost>,
    capacities: HashMap<String, Capacity>,
}

impl ExtensionView for Canned<'_> {
    fn extension_ids(&self) -> Vec<String> {
        self.inner.extension_ids()
    }
    fn info(&self, id: &str) -> Option<&ExtensionInfo> {
        self.inner.info(id)
    }
    fn estimate_cost(&self, id: &str, _req: &SandboxRequest) -> Result<Cost, ExtensionError> {
        Ok(self.costs[id].clone())
    }
    fn capacity(&self, id: &str) -> Result<Capacity, ExtensionError> {
        Ok(self.capacities[id])
    }
    fn in_use(&self, id: &str) -> u32 {
        self.inner.in_use(id)
    }
}

struct Row {
    candidates: usize,
    decision_us: f64,
    ext_share: f64,
    router_us: f64,
    estimates_only_us: f64,
    canned_us: f64,
}

fn measure(runtime: &Runtime, n: usize) -> Row {
    let dir = tempfile::tempdir().expect("temp dir");
    let wasm = Path::new(env!("CARGO_MANIFEST_DIR")).join("../extensions/saas-stub.wasm");
    assert!(
        wasm.is_file(),
        "{} is missing: run scripts/build-extensions.sh first",
        wasm.display()
    );
    std::fs::copy(&wasm, dir.path().join("saas-stub.wasm")).expect("copy wasm");
    for i in 0..n {
        // Every third candidate is a self-hosted pool (capacity call too); prices differ.
        let pool = i % 3 == 0;
        let sidecar = format!(
            "component = \"saas-stub.wasm\"\nid = \"ext-{i:02}\"\n[config]\nkind = \"{}\"\n{}price_vcpu_second = \"0.0000{:02}\"\nstartup_latency_ms = \"{}\"\n",
            if pool { "self-hosted" } else { "saas" },
            if pool { "capacity = \"4\"\n" } else { "" },
            10 + i,
            20 + 7 * i
        );
        std::fs::write(dir.path().join(format!("ext-{i:02}.toml")), sidecar).expect("sidecar");
    }
    let report = runtime.load_dir(dir.path()).expect("load");
    // The bare saas-stub.wasm loads too (as `saas-stub`); route over the sidecar ids only.
    let view = LoadedExtensions::new(report.loaded);
    let ids: Vec<String> = (0..n).map(|i| format!("\"ext-{i:02}\"")).collect();
    let text = format!(
        "template = \"base\"\nmax_duration_secs = 3600\n[resources]\nvcpus = 2\nmemory_mib = 2048\n[route]\nstrategy = \"prefer-self-hosted\"\ncandidates = [{}]\nmax_attempts = 3\n",
        ids.join(", ")
    );
    let profile = parse_profile(&text, Path::new("bench.toml")).expect("profile");
    let req = profile
        .request("bench", "sb-bench", &SandboxSpec::default())
        .expect("request");
    let health = HealthTracker::default();

    // Warm up every extension's instance pool.
    for _ in 0..200 {
        black_box(resolve_extension(&profile, &req, &view, &health).expect("route"));
    }
    let iters: u32 = if n > 5 { 2_000 } else { 10_000 };

    let start = Instant::now();
    for _ in 0..iters {
        black_box(resolve_extension(&profile, &req, &view, &health).expect("route"));
    }
    let plain = start.elapsed();

    let timed = Timed {
        inner: &view,
        spent: Cell::new(Duration::ZERO),
    };
    let start = Instant::now();
    for _ in 0..iters {
        black_box(resolve_extension(&profile, &req, &timed, &health).expect("route"));
    }
    let timed_total = start.elapsed();
    let ext = timed.spent.get();

    // The same extension calls made directly, with no router around them.
    let start = Instant::now();
    for _ in 0..iters {
        for i in 0..n {
            let id = format!("ext-{i:02}");
            if i % 3 == 0 {
                black_box(view.capacity(&id).expect("capacity"));
            }
            black_box(view.estimate_cost(&id, &req).expect("estimate"));
        }
    }
    let direct = start.elapsed();

    // The router over canned answers (no extension calls at all).
    let mut costs = HashMap::new();
    let mut capacities = HashMap::new();
    for i in 0..n {
        let id = format!("ext-{i:02}");
        costs.insert(id.clone(), view.estimate_cost(&id, &req).expect("estimate"));
        capacities.insert(id.clone(), view.capacity(&id).expect("capacity"));
    }
    let canned = Canned {
        inner: &view,
        costs,
        capacities,
    };
    let start = Instant::now();
    for _ in 0..iters {
        black_box(resolve_extension(&profile, &req, &canned, &health).expect("route"));
    }
    let canned_total = start.elapsed();

    let per = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(iters);
    Row {
        candidates: n,
        decision_us: per(plain),
        ext_share: ext.as_secs_f64() / timed_total.as_secs_f64(),
        router_us: per(timed_total.saturating_sub(ext)),
        estimates_only_us: per(direct),
        canned_us: per(canned_total),
    }
}

fn main() {
    let cache = tempfile::tempdir().expect("temp dir");
    let runtime = Runtime::new(RuntimeConfig::with_cache_dir(cache.path())).expect("runtime");
    let rows: Vec<Row> = [3, 20].into_iter().map(|n| measure(&runtime, n)).collect();
    println!();
    println!("resolve_extension over real saas-stub candidates (prefer-self-hosted, 1/3 pools)");
    println!(
        "{:>10} | {:>11} | {:>13} | {:>9} | {:>12} | {:>14} | {:>15}",
        "candidates",
        "µs/decision",
        "in extensions",
        "router µs",
        "router share",
        "calls alone µs",
        "router alone µs"
    );
    for r in &rows {
        println!(
            "{:>10} | {:>11.2} | {:>12.1}% | {:>9.2} | {:>11.1}% | {:>14.2} | {:>15.2}",
            r.candidates,
            r.decision_us,
            r.ext_share * 100.0,
            r.router_us,
            (1.0 - r.ext_share) * 100.0,
            r.estimates_only_us,
            r.canned_us
        );
    }
    println!(
        "router alone = the same decisions over canned answers (no extension calls); \
         calls alone = the same estimate/capacity calls made directly, without the router"
    );
    println!(
        "targets: 3-candidate decision < 50 µs ({}), router share < 10% ({})",
        if rows[0].decision_us < 50.0 {
            "met"
        } else {
            "MISSED"
        },
        if rows.iter().all(|r| 1.0 - r.ext_share < 0.10) {
            "met"
        } else {
            "MISSED"
        }
    );
}
