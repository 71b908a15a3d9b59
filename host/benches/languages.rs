//! Extensions per language: component size, cold compile, cached load, `estimate-cost` in
//! a fresh instance and in a warm one, side by side in one run, with ratios to the Rust extension.
//!
//! Run: `scripts/build-extensions.sh && cargo bench --profile dev --bench languages`.
//! The figures go into docs/extensions.md ("Cost of a language").

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sandboxer_host::domain::{Resources, SandboxRequest};
use sandboxer_host::layers::runtime::{
    ArtifactSource, ExtensionSpec, PoolPolicy, Runtime, RuntimeConfig,
};

const FRESH_CALLS: u32 = 10;

struct Row {
    language: &'static str,
    extension: &'static str,
    size_bytes: u64,
    cold_compile: Duration,
    cached_load: Duration,
    fresh_call: Duration,
    ns_per_call: f64,
}

fn request() -> SandboxRequest {
    SandboxRequest {
        sandbox_id: "bench".into(),
        tenant: "acme".into(),
        profile: "bench".into(),
        template: "base".into(),
        resources: Resources {
            vcpus: 2,
            memory_mib: 2048,
            disk_mib: 0,
            gpu: None,
        },
        max_duration_secs: 3600,
        region: None,
        env: vec![],
        metadata: vec![],
        byok: Default::default(),
    }
}

fn spec(root: &Path, extension: &str) -> ExtensionSpec {
    let sidecar = root.join(format!("extensions/{extension}.toml"));
    let mut spec = if sidecar.is_file() {
        ExtensionSpec::from_sidecar(&sidecar).unwrap_or_else(|e| panic!("{e}"))
    } else {
        ExtensionSpec::from_file(&root.join(format!("extensions/{extension}.wasm")))
            .unwrap_or_else(|e| panic!("{e}"))
    };
    spec.id = extension.to_owned();
    spec
}

fn measure(root: &Path, language: &'static str, extension: &'static str) -> Row {
    let wasm: PathBuf = root.join(format!("extensions/{extension}.wasm"));
    assert!(
        wasm.is_file(),
        "{} is missing: run scripts/build-extensions.sh first",
        wasm.display()
    );
    let size_bytes = std::fs::metadata(&wasm).map(|m| m.len()).unwrap_or(0);
    let cache = tempfile::tempdir().expect("temp dir");

    let cold_rt = Runtime::new(RuntimeConfig::with_cache_dir(cache.path())).expect("runtime");
    let started = Instant::now();
    let cold = cold_rt
        .load_spec(spec(root, extension))
        .unwrap_or_else(|e| panic!("{e}"));
    let cold_compile = started.elapsed();
    assert_eq!(cold.artifact_source(), &ArtifactSource::Compiled);
    drop(cold);
    drop(cold_rt);

    // A second process: a new runtime on the same cache folder.
    let rt = Runtime::new(RuntimeConfig::with_cache_dir(cache.path())).expect("runtime");
    let started = Instant::now();
    let ext = rt
        .load_spec(spec(root, extension))
        .unwrap_or_else(|e| panic!("{e}"));
    let cached_load = started.elapsed();
    assert_eq!(ext.artifact_source(), &ArtifactSource::Cache);

    let req = request();
    // Calls in a fresh instance each (no warm pool): what every call costs after a trap
    // or with pooling off.
    let fresh_rt = Runtime::new(RuntimeConfig {
        pool: PoolPolicy {
            max_idle: 0,
            ..PoolPolicy::default()
        },
        ..RuntimeConfig::with_cache_dir(cache.path())
    })
    .expect("runtime");
    let fresh = fresh_rt
        .load_spec(spec(root, extension))
        .unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    for _ in 0..FRESH_CALLS {
        fresh.estimate_cost(&req).unwrap_or_else(|e| panic!("{e}"));
    }
    let fresh_call = started.elapsed() / FRESH_CALLS;

    // Warm calls for about a second (at least 20).
    let mut calls = 0u32;
    let started = Instant::now();
    while calls < 20 || started.elapsed() < Duration::from_secs(1) {
        std::hint::black_box(
            ext.estimate_cost(std::hint::black_box(&req))
                .unwrap_or_else(|e| panic!("{e}")),
        );
        calls += 1;
    }
    let ns_per_call = started.elapsed().as_nanos() as f64 / f64::from(calls);
    Row {
        language,
        extension,
        size_bytes,
        cold_compile,
        cached_load,
        fresh_call,
        ns_per_call,
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let rows = [
        measure(&root, "Rust", "saas-stub"),
        measure(&root, "Python", "python-pool"),
        measure(&root, "JavaScript", "js-tiered"),
    ];
    let base = &rows[0];
    println!("languages: one run, warm instances; ratios are to the Rust extension");
    println!(
        "{:<11} {:<12} {:>9} {:>11} {:>11} {:>13} {:>13} {:>8} {:>8} {:>8}",
        "language",
        "extension",
        "size KiB",
        "cold ms",
        "cached ms",
        "fresh call ms",
        "estimate ns",
        "size x",
        "cold x",
        "call x"
    );
    for r in &rows {
        println!(
            "{:<11} {:<12} {:>9} {:>11.0} {:>11.1} {:>13.2} {:>13.0} {:>8.1} {:>8.1} {:>8.1}",
            r.language,
            r.extension,
            r.size_bytes / 1024,
            r.cold_compile.as_secs_f64() * 1e3,
            r.cached_load.as_secs_f64() * 1e3,
            r.fresh_call.as_secs_f64() * 1e3,
            r.ns_per_call,
            r.size_bytes as f64 / base.size_bytes as f64,
            r.cold_compile.as_secs_f64() / base.cold_compile.as_secs_f64(),
            r.ns_per_call / base.ns_per_call,
        );
    }
}
