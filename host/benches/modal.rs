//! Host overhead of Modal through the component (`extensions/modal`: gRPC over
//! `wasi:http`, the host's pooled HTTP/2 path, grant check, response cap) vs a native tonic
//! client against the same fake Modal (`tests/fake-modal`, h2c on loopback), in one run:
//!
//! - create: a warm component `create` (app and image ids cached: one `SandboxCreate`)
//!   vs a native `SandboxCreate` on a kept-alive connection (the host pools its HTTP/2
//!   connections, so that is like for like). Target: component / native under 1.5× at p50.
//! - exec round trip: `exec` of `echo hi` through the component (router URL and JWT
//!   cached: `TaskExecStart`, `TaskExecStdinWrite`, `TaskExecStdioRead` of both streams,
//!   `TaskExecPoll`) vs the native SDK sequence (`TaskExecStart`, `TaskExecStdinWrite`, two
//!   `TaskExecStdioRead`, `TaskExecWait`). Both run a real child process in the fake.
//!
//! Run: `make bench` (or `scripts/build-extensions.sh && cargo bench --profile dev -p
//! sandboxer-host --bench modal`; `ROUNDS=N` changes the 300 measured rounds).

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fake_modal::native::{self, with_token};
use fake_modal::{FakeModal, ModalClientClient, TaskCommandRouterClient};
use sandboxer_host::domain::{Command, ExecRequest, Resources, SandboxContext, SandboxRequest};
use sandboxer_host::layers::runtime::{ExtensionSpec, Runtime, RuntimeConfig};

const ID: &str = "ak-bench";
const SECRET: &str = "as-bench-secret";
const WARMUP: usize = 30;

fn request(i: usize) -> SandboxRequest {
    SandboxRequest {
        sandbox_id: format!("bench-{i}"),
        tenant: "acme".into(),
        profile: "bench".into(),
        template: "base".into(),
        resources: Resources {
            vcpus: 2,
            memory_mib: 1024,
            disk_mib: 0,
            gpu: None,
        },
        max_duration_secs: 600,
        region: None,
        env: vec![],
        metadata: vec![],
        byok: Default::default(),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// `WARMUP` unmeasured rounds, then `rounds` measured ones, sorted.
fn run(rounds: usize, mut f: impl FnMut(usize)) -> Vec<Duration> {
    for i in 0..WARMUP {
        f(i);
    }
    let mut times: Vec<Duration> = (0..rounds)
        .map(|i| {
            let started = Instant::now();
            f(WARMUP + i);
            started.elapsed()
        })
        .collect();
    times.sort();
    times
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn row(name: &str, times: &[Duration], floor: &[Duration]) {
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let p50 = us(percentile(times, 0.5));
    println!(
        "| {name:<42} | {p50:>8.0} | {:>8.0} | {:>8.0} | {:>5.2}x |",
        us(percentile(times, 0.9)),
        us(percentile(times, 0.99)),
        p50 / us(percentile(floor, 0.5)),
    );
}

fn main() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let wasm = root.join("extensions/modal.wasm");
    assert!(
        wasm.is_file(),
        "{} is missing: run scripts/build-extensions.sh first",
        wasm.display()
    );
    let fake = FakeModal::start(ID, SECRET).expect("fake Modal server");
    let url = fake.url();

    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("modal.secret"), SECRET).expect("secret file");
    let sidecar = dir.path().join("modal.toml");
    std::fs::write(
        &sidecar,
        format!(
            "component = {:?}\ncall_timeout_ms = 30000\nallowed_outbound_hosts = [\"{url}\"]\n\
             [secrets]\ntoken_secret = {{ file = \"modal.secret\" }}\n[config]\ntoken_id = \"{ID}\"\nserver_url = \"{url}\"\n",
            wasm.display().to_string()
        ),
    )
    .expect("sidecar");
    let runtime =
        Runtime::new(RuntimeConfig::with_cache_dir(dir.path().join("cache"))).expect("runtime");
    let ext = runtime
        .load_spec(ExtensionSpec::from_sidecar(&sidecar).unwrap_or_else(|e| panic!("{e}")))
        .unwrap_or_else(|e| panic!("{e}"));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let channel = rt
        .block_on(native::connect(&url))
        .expect("connect to the fake");
    let mut client = ModalClientClient::new(channel);
    let (app, image) = rt
        .block_on(native::app_and_image(
            &mut client,
            ID,
            SECRET,
            "python:3.13-slim",
        ))
        .expect("app and image");

    // Create, interleaved per round so both paths see the same machine load.
    let mut component_create = Vec::with_capacity(rounds);
    let mut native_create = Vec::with_capacity(rounds);
    let mut last = None;
    for i in 0..WARMUP + rounds {
        let t = Instant::now();
        let created = ext.create(&request(i)).unwrap_or_else(|e| panic!("{e}"));
        let component = t.elapsed();
        let req = native::sandbox_create_request(&app, &image, &format!("native-{i}"));
        let t = Instant::now();
        rt.block_on(client.sandbox_create(with_token(req, ID, SECRET)))
            .expect("native create");
        let native_t = t.elapsed();
        if i >= WARMUP {
            component_create.push(component);
            native_create.push(native_t);
        }
        last = Some(created);
    }
    component_create.sort();
    native_create.sort();

    // Exec round trip in one sandbox each.
    let created = last.expect("at least one create");
    let ctx = SandboxContext {
        request: request(0),
        handle: created.handle.clone(),
        created_at_ms: now_ms(),
        now_ms: now_ms(),
    };
    let exec = ExecRequest {
        command: Command::Argv(vec!["echo".into(), "hi".into()]),
        env: vec![],
        cwd: None,
        stdin: vec![],
        keep_stdin_open: false,
        timeout_ms: 10_000,
        output_limit_bytes: 1 << 20,
    };
    let component_exec = run(rounds, |_| {
        let out = ext.exec(&ctx, &exec).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out.stdout, b"hi\n");
    });
    let sandbox: serde_json::Value =
        serde_json::from_str(&created.handle).expect("the handle is JSON");
    let sandbox_id = sandbox["id"].as_str().expect("a sandbox id").to_owned();
    let (task, router_url, jwt) = rt
        .block_on(native::router_access(&mut client, ID, SECRET, &sandbox_id))
        .expect("router access");
    let mut router = TaskCommandRouterClient::new(
        rt.block_on(native::connect(&router_url))
            .expect("connect to the router"),
    );
    let native_exec = run(rounds, |i| {
        let (out, _, _) = rt
            .block_on(native::run_to_end(
                &mut router,
                &jwt,
                &task,
                &format!("bench-exec-{i}"),
                &["echo", "hi"],
                b"",
            ))
            .expect("native exec");
        assert_eq!(out, b"hi\n");
    });

    println!(
        "Modal through the component vs a native tonic client, fake-modal over h2c, {rounds} rounds after {WARMUP} warm-up"
    );
    println!(
        "| {:<42} | {:>8} | {:>8} | {:>8} | {:>6} |",
        "path", "p50 µs", "p90 µs", "p99 µs", "ratio"
    );
    println!(
        "|{:-<44}|{:->10}|{:->10}|{:->10}|{:->8}|",
        "", "", "", "", ""
    );
    row(
        "create: native SandboxCreate (kept-alive)",
        &native_create,
        &native_create,
    );
    row(
        "create: component (warm, pooled h2)",
        &component_create,
        &native_create,
    );
    row(
        "exec echo: native router sequence",
        &native_exec,
        &native_exec,
    );
    row("exec echo: component exec", &component_exec, &native_exec);
    println!("sandboxes running on the fake: {}", fake.running().len());
}
