//! `sandboxer-host run` over HTTP on loopback: lifecycles (create + destroy, each settled
//! with its event) per second with 1 and 16 clients, the latency a create adds on top of
//! the extension's own calls, and the host's peak RSS with the shipped extensions loaded.
//!
//! `cargo bench --profile dev --bench http` (build the extensions first: `make extensions`).
//! The host is the real binary with a real SQLite ledger (WAL, every acknowledged write
//! fsynced) in a fresh state folder. The compiled-extension cache is kept in
//! `target/bench-http-cache`, and filled before anything is measured (`sandboxer extensions
//! list` compiles what is missing, timed and reported apart): otherwise the first run would
//! measure the host while the large Python and JavaScript components compile beside it.
//! Rates are medians of three interleaved rounds (1 client, then 16) on the same host.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOKEN: &str = "bench-tenant-token-0123456789";
const ADMIN: &str = "bench-admin-token-0123456789";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

struct HostProc {
    child: Child,
    base: String,
}

impl Drop for HostProc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path, extensions: &Path) -> HostProc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sandboxer-host"))
        .args(["--extensions-dir", extensions.to_str().unwrap()])
        .args(["--profiles-dir", dir.join("profiles").to_str().unwrap()])
        .args(["--state-dir", dir.join("state").to_str().unwrap()])
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--config",
            dir.join("sandboxer.toml").to_str().unwrap(),
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sandboxer-host");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.split("listening on ").nth(1)
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(addr.trim().to_owned());
            }
            if line.contains("WARN") || line.contains("ERROR") {
                eprintln!("host: {line}");
            }
        }
    });
    let base = rx
        .recv_timeout(Duration::from_secs(600))
        .expect("host did not start");
    HostProc { child, base }
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// One create + destroy; returns the create's round trip.
fn lifecycle(c: &reqwest::blocking::Client, base: &str, profile: &str) -> Duration {
    let t0 = Instant::now();
    let resp = c
        .post(format!("{base}/v1/sandboxes"))
        .bearer_auth(TOKEN)
        .body(format!(r#"{{"profile":"{profile}"}}"#))
        .send()
        .unwrap();
    let took = t0.elapsed();
    assert_eq!(
        resp.status().as_u16(),
        201,
        "{}",
        resp.text().unwrap_or_default()
    );
    let v: serde_json::Value = resp.json().unwrap();
    let id = v["id"].as_str().unwrap();
    let resp = c
        .delete(format!("{base}/v1/sandboxes/{id}"))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    took
}

fn run_clients(
    base: &str,
    clients: usize,
    duration: Duration,
    profile: &'static str,
) -> (usize, Vec<Duration>) {
    let base = Arc::new(base.to_owned());
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let base = base.clone();
            std::thread::spawn(move || {
                let c = client();
                let mut lat = Vec::new();
                let end = Instant::now() + duration;
                while Instant::now() < end {
                    lat.push(lifecycle(&c, &base, profile));
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.join().unwrap());
    }
    (all.len(), all)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Sum and count of a histogram's series for the given functions, from `/metrics`.
fn extension_seconds(metrics: &str, functions: &[&str]) -> (f64, f64) {
    let (mut sum, mut count) = (0.0, 0.0);
    for line in metrics.lines() {
        for f in functions {
            let tag = format!("function=\"{f}\"");
            if line.contains(&tag) {
                let value: f64 = line
                    .rsplit(' ')
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0.0);
                if line.starts_with("sandboxer_extension_call_seconds_sum") {
                    sum += value;
                } else if line.starts_with("sandboxer_extension_call_seconds_count")
                    && *f == "create"
                {
                    count += value;
                }
            }
        }
    }
    (sum, count)
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The bench's extensions: the shipped components and sidecars but `local` (its real
/// sandboxes are measured by the agent's own bench), plus the simulated `local-pool`
/// fixture; and the fixture profiles (burst-sandbox over local-pool and saas-stub).
fn bench_folders(src: &Path, dir: &Path) -> PathBuf {
    let ext = dir.join("extensions");
    std::fs::create_dir_all(&ext).unwrap();
    for e in std::fs::read_dir(src).unwrap().filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if (name.ends_with(".wasm") || name.ends_with(".toml")) && name != "local.wasm" {
            std::fs::copy(e.path(), ext.join(&name)).unwrap();
        }
    }
    std::fs::copy(
        repo().join("tests/fixtures/extensions/local-pool.toml"),
        ext.join("local-pool.toml"),
    )
    .unwrap();
    let prof = dir.join("profiles");
    std::fs::create_dir_all(&prof).unwrap();
    for f in [
        "tests/fixtures/profiles/burst-sandbox.toml",
        "profiles/saas-stub.toml",
    ] {
        let from = repo().join(f);
        std::fs::copy(&from, prof.join(from.file_name().unwrap())).unwrap();
    }
    ext
}

fn main() {
    let src_dir = std::env::var_os("SANDBOXER_BENCH_EXTENSIONS")
        .map_or_else(|| repo().join("extensions"), PathBuf::from);
    let dir = tempfile::tempdir().unwrap();
    let ext_dir = bench_folders(&src_dir, dir.path());
    let shipped: Vec<String> = std::fs::read_dir(&ext_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wasm"))
        .collect();
    assert!(
        shipped.iter().any(|n| n == "saas-stub.wasm"),
        "build the extensions first: make extensions"
    );

    // Keep compiled artifacts between runs: a fresh compile of every shipped component is
    // a one-off cost, not what this bench measures.
    let cache = repo().join("target/bench-http-cache");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    std::os::unix::fs::symlink(&cache, dir.path().join("state/cache")).unwrap();
    std::fs::write(
        dir.path().join("sandboxer.toml"),
        format!("[tenants.bench]\ntoken = \"{TOKEN}\"\n[admin]\ntoken = \"{ADMIN}\"\n[reload]\nenabled = false\n"),
    )
    .unwrap();
    // Fill the compile cache first (a no-op when it is warm).
    let t0 = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_sandboxer"))
        .args(["--extensions-dir", ext_dir.to_str().unwrap()])
        .args([
            "--profiles-dir",
            dir.path().join("profiles").to_str().unwrap(),
        ])
        .args(["--state-dir", dir.path().join("state").to_str().unwrap()])
        .args(["extensions", "list"])
        .output()
        .expect("run sandboxer extensions list");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fill_cache = t0.elapsed();
    let t0 = Instant::now();
    let host = start(dir.path(), &ext_dir);
    let startup = t0.elapsed();
    let c = client();
    let r = c
        .post(format!("{}/v1/tenants/bench/credits", host.base))
        .bearer_auth(ADMIN)
        .body(r#"{"amount":"1000000"}"#)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    // Warm up: instances, SQLite pages, connections.
    for _ in 0..50 {
        lifecycle(&c, &host.base, "saas-stub");
    }
    let rss_loaded = peak_rss_kib(host.child.id());

    let before = c
        .get(format!("{}/metrics", host.base))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let secs = Duration::from_secs(3);
    let (mut rates1, mut rates16) = (Vec::new(), Vec::new());
    let (mut lat1, mut lat16) = (Vec::new(), Vec::new());
    let mut after = String::new();
    for round in 0..3 {
        let (n, lat) = run_clients(&host.base, 1, secs, "saas-stub");
        rates1.push(n as f64 / secs.as_secs_f64());
        lat1.extend(lat);
        if round == 0 {
            // The extension's own time is read over single-client lifecycles only.
            after = c
                .get(format!("{}/metrics", host.base))
                .send()
                .unwrap()
                .text()
                .unwrap();
        }
        let (n, lat) = run_clients(&host.base, 16, secs, "saas-stub");
        rates16.push(n as f64 / secs.as_secs_f64());
        lat16.extend(lat);
    }
    let rss_peak = peak_rss_kib(host.child.id());

    // The HTTP layer alone (auth, routing, JSON, the status read; no durable write): a GET.
    let resp = c
        .post(format!("{}/v1/sandboxes", host.base))
        .bearer_auth(TOKEN)
        .body(r#"{"profile":"saas-stub"}"#)
        .send()
        .unwrap();
    let sb: serde_json::Value = resp.json().unwrap();
    let get_url = format!("{}/v1/sandboxes/{}", host.base, sb["id"].as_str().unwrap());
    let mut gets: Vec<Duration> = (0..2000)
        .map(|_| {
            let t = Instant::now();
            let r = c.get(&get_url).bearer_auth(TOKEN).send().unwrap();
            assert_eq!(r.status().as_u16(), 200);
            let _ = r.bytes();
            t.elapsed()
        })
        .collect();
    gets.sort();

    // The extension's own time per create inside the host: every extension call a create
    // makes (routing's estimate, the create itself), from the host's histograms.
    let create_fns = ["estimate-cost", "capacity", "create"];
    let (s0, c0) = extension_seconds(&before, &create_fns);
    let (s1, c1) = extension_seconds(&after, &create_fns);
    let ext_per_create = Duration::from_secs_f64(if c1 > c0 { (s1 - s0) / (c1 - c0) } else { 0.0 });

    lat1.sort();
    lat16.sort();
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let rate1 = median(&mut rates1);
    let rate16 = median(&mut rates16);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "sandboxer-host over HTTP (loopback), saas-stub, SQLite ledger with fsync; {} component files in the folder: {}",
        shipped.len(),
        shipped.join(", ")
    );
    println!(
        "filling the compile cache (once)       {:>10.0} ms",
        ms(fill_cache)
    );
    println!(
        "startup (cached artifacts)             {:>10.0} ms",
        ms(startup)
    );
    println!(
        "{:<38} {:>10} {:>12} {:>12}",
        "", "1 client", "16 clients", "ratio"
    );
    println!(
        "{:<38} {:>10.0} {:>12.0} {:>11.2}x",
        "lifecycles/s (create+destroy+settle)",
        rate1,
        rate16,
        rate16 / rate1
    );
    let spread = |v: &[f64]| {
        let (lo, hi) = v
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
        format!("{lo:.0}-{hi:.0}")
    };
    println!(
        "{:<38} {:>10} {:>12}",
        "  (range over 3 rounds)",
        spread(&rates1),
        spread(&rates16)
    );
    println!(
        "{:<38} {:>10.3} {:>12.3}",
        "create round trip p50 (ms)",
        ms(pct(&lat1, 0.5)),
        ms(pct(&lat16, 0.5))
    );
    println!(
        "{:<38} {:>10.3} {:>12.3}",
        "create round trip p99 (ms)",
        ms(pct(&lat1, 0.99)),
        ms(pct(&lat16, 0.99))
    );
    println!(
        "{:<38} {:>10.3}",
        "extension's own time per create (ms)",
        ms(ext_per_create)
    );
    println!(
        "{:<38} {:>10.3} {:>12.3}",
        "host's added latency p50 (ms)",
        ms(pct(&lat1, 0.5).saturating_sub(ext_per_create)),
        ms(pct(&lat16, 0.5).saturating_sub(ext_per_create))
    );
    println!(
        "{:<38} {:>10.3} {:>12.3}",
        "host's added latency p99 (ms)",
        ms(pct(&lat1, 0.99).saturating_sub(ext_per_create)),
        ms(pct(&lat16, 0.99).saturating_sub(ext_per_create))
    );
    println!(
        "{:<38} {:>10.3} {:>12.3}",
        "GET /v1/sandboxes/{id} p50 / p99 (ms)",
        ms(pct(&gets, 0.5)),
        ms(pct(&gets, 0.99))
    );
    println!(
        "{:<38} {:>10.1} MiB after warm-up, {:.1} MiB peak",
        "host RSS, all components",
        rss_loaded as f64 / 1024.0,
        rss_peak as f64 / 1024.0
    );
    drop(host);

    // The same host with only the saas-stub component (as saas-stub and local-pool): how
    // much of the RSS is the host and how much the large polyglot components.
    let small = tempfile::tempdir().unwrap();
    for f in ["saas-stub.wasm", "local-pool.toml"] {
        std::fs::copy(ext_dir.join(f), small.path().join(f)).unwrap();
    }
    let host = start(dir.path(), small.path());
    for _ in 0..200 {
        lifecycle(&c, &host.base, "burst-sandbox");
    }
    let _ = run_clients(&host.base, 16, Duration::from_secs(2), "saas-stub");
    println!(
        "{:<38} {:>10.1} MiB peak",
        "host RSS, saas-stub only",
        peak_rss_kib(host.child.id()) as f64 / 1024.0
    );
    drop(host);
}
