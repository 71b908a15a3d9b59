//! Host overhead of an E2B create through the component (`extensions/e2b` over
//! `wasi:http`, grant check, response cap) vs the same two HTTP calls made natively
//! (`POST /sandboxes` then `GET /sandboxes/{id}`) against the same fake E2B server, in
//! one run. wasmtime-wasi-http's sender opens a connection per request, so the native
//! client is measured both with a fresh connection per request (like for like) and with
//! a keep-alive pool. Target: component / native (fresh) under 1.5× at p50.
//!
//! Run: `scripts/build-extensions.sh && cargo bench --profile dev --bench e2b`.

use std::path::Path;
use std::time::{Duration, Instant};

use fake_e2b::FakeE2b;
use sandboxer_host::domain::{Resources, SandboxRequest};
use sandboxer_host::layers::runtime::{ExtensionSpec, Runtime, RuntimeConfig};

const KEY: &str = "e2b_bench_key";
const WARMUP: usize = 30;
const ROUNDS: usize = 400;

fn request(i: usize) -> SandboxRequest {
    SandboxRequest {
        sandbox_id: format!("bench-{i}"),
        tenant: "acme".into(),
        profile: "bench".into(),
        template: "base".into(),
        resources: Resources {
            vcpus: 2,
            memory_mib: 512,
            disk_mib: 0,
            gpu: None,
        },
        max_duration_secs: 3600,
        region: None,
        env: vec![("MODE".into(), "bench".into())],
        metadata: vec![],
        byok: Default::default(),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn run(mut f: impl FnMut(usize)) -> Vec<Duration> {
    for i in 0..WARMUP {
        f(i);
    }
    let mut times: Vec<Duration> = (0..ROUNDS)
        .map(|i| {
            let started = Instant::now();
            f(i);
            started.elapsed()
        })
        .collect();
    times.sort();
    times
}

fn native_create(client: &reqwest::blocking::Client, base: &str, i: usize) {
    let body = serde_json::json!({
        "templateID": "base",
        "timeout": 3600,
        "metadata": { "sandboxer_id": format!("bench-{i}"), "sandboxer_tenant": "acme", "sandboxer_profile": "bench" },
        "envVars": { "MODE": "bench" },
    });
    let created: serde_json::Value = client
        .post(format!("{base}/sandboxes"))
        .header("X-API-Key", KEY)
        .json(&body)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let id = created["sandboxID"].as_str().unwrap();
    let detail: serde_json::Value = client
        .get(format!("{base}/sandboxes/{id}"))
        .header("X-API-Key", KEY)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(detail["cpuCount"], 2);
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let wasm = root.join("extensions/e2b.wasm");
    assert!(
        wasm.is_file(),
        "{} is missing: run scripts/build-extensions.sh first",
        wasm.display()
    );
    let fake = FakeE2b::start(KEY).expect("fake E2B server");
    let base = fake.base_url();

    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("e2b.key"), KEY).expect("key file");
    let sidecar = dir.path().join("e2b.toml");
    std::fs::write(
        &sidecar,
        format!(
            "component = {:?}\ncall_timeout_ms = 10000\nallowed_outbound_hosts = [\"http://127.0.0.1:*\"]\n\
             [secrets]\napi_key = {{ file = \"e2b.key\" }}\n[config]\nbase_url = \"{base}\"\n",
            wasm.display().to_string()
        ),
    )
    .expect("sidecar");
    let runtime =
        Runtime::new(RuntimeConfig::with_cache_dir(dir.path().join("cache"))).expect("runtime");
    let ext = runtime
        .load_spec(ExtensionSpec::from_sidecar(&sidecar).unwrap_or_else(|e| panic!("{e}")))
        .unwrap_or_else(|e| panic!("{e}"));

    let component = run(|i| {
        ext.create(&request(i)).unwrap_or_else(|e| panic!("{e}"));
    });
    let fresh = reqwest::blocking::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let native_fresh = run(|i| native_create(&fresh, &base, i));
    let pooled = reqwest::blocking::Client::builder()
        .build()
        .expect("client");
    let native_pooled = run(|i| native_create(&pooled, &base, i));

    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "E2B create (POST /sandboxes + GET /sandboxes/{{id}}) against the fake server, {ROUNDS} rounds"
    );
    println!(
        "{:<34} {:>10} {:>10} {:>10} {:>12}",
        "path", "p50 µs", "p90 µs", "p99 µs", "p50 ratio"
    );
    let p50_fresh = us(percentile(&native_fresh, 0.5));
    for (name, times) in [
        ("native, fresh connection", &native_fresh),
        ("native, keep-alive pool", &native_pooled),
        ("component over wasi:http", &component),
    ] {
        let p50 = us(percentile(times, 0.5));
        println!(
            "{:<34} {:>10.0} {:>10.0} {:>10.0} {:>11.2}x",
            name,
            p50,
            us(percentile(times, 0.9)),
            us(percentile(times, 0.99)),
            p50 / p50_fresh
        );
    }
    println!("sandboxes created on the fake: {}", fake.created_count());
}
