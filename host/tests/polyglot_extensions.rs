//! Extensions written in Python (componentize-py) and JavaScript (componentize-js) are real
//! backends: they load through the precompiled cache, price exactly, fail with the WIT
//! error variant, survive the lifecycle, compete on cost with a Rust extension, and the
//! language templates built unchanged pass `sandboxer extensions check`.
//!
//! The components are built by `scripts/build-polyglot.sh` (run by
//! `scripts/build-extensions.sh`, `make extensions`, `make test` and CI) before this test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

#[path = "support/http_host.rs"]
mod http_host;

use rust_decimal::Decimal;
use sandboxer_host::Settings;
use sandboxer_host::app::{
    App, AppOptions, DEFER_COMPILE_ABOVE_BYTES, ExtensionStatus, GrantRequest,
};
use sandboxer_host::domain::{
    BackendError, BackendState, Currency, Fault, Kind, Money, Resources, SandboxContext,
    SandboxRequest, SandboxSpec, SandboxState, Scope, TenantId,
};
use sandboxer_host::layers::payments::{CreditsStore, HoldState, SqliteCreditsStore};
use sandboxer_host::layers::runtime::{
    ArtifactSource, Extension, ExtensionSpec, Runtime, RuntimeConfig,
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A build output, or a failure that says how to produce it.
fn built(relative: &str) -> PathBuf {
    let path = root().join(relative);
    assert!(
        path.is_file(),
        "{relative} is missing: build it with `scripts/build-polyglot.sh` (or `make extensions`) before `cargo test`"
    );
    path
}

fn runtime(cache: &Path) -> Runtime {
    Runtime::new(RuntimeConfig::with_cache_dir(cache)).unwrap()
}

/// One runtime for the tests that do not measure the cache: each component compiles once
/// per run, and the artifacts persist under target/ so the next run loads them.
fn shared() -> Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME
        .get_or_init(|| runtime(&root().join("target/test-cache/polyglot")))
        .clone()
}

fn spec(
    wasm: &Path,
    id: &str,
    config: &[(&str, &str)],
    memory_limit_mib: Option<u64>,
) -> ExtensionSpec {
    let mut spec = ExtensionSpec::from_file(wasm).unwrap();
    spec.id = id.to_owned();
    spec.config = config
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect::<BTreeMap<_, _>>();
    spec.memory_limit_mib = memory_limit_mib;
    spec
}

/// python-pool as shipped: its sidecar (memory limit, price, capacity).
fn python_pool(rt: &Runtime) -> Arc<Extension> {
    built("extensions/python-pool.wasm");
    let spec = ExtensionSpec::from_sidecar(&root().join("extensions/python-pool.toml")).unwrap();
    rt.load_spec(spec).unwrap()
}

fn request(vcpus: u32, memory_mib: u32, max_duration_secs: u64) -> SandboxRequest {
    SandboxRequest {
        sandbox_id: format!("sb-{vcpus}-{memory_mib}-{max_duration_secs}"),
        tenant: "acme".into(),
        profile: "polyglot".into(),
        template: "base".into(),
        resources: Resources {
            vcpus,
            memory_mib,
            disk_mib: 0,
            gpu: None,
        },
        max_duration_secs,
        region: None,
        env: vec![],
        metadata: vec![("team".into(), "ml".into())],
        byok: Default::default(),
    }
}

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn backend_error(err: sandboxer_host::domain::ExtensionError) -> BackendError {
    match err.fault {
        Fault::Backend(e) => e,
        other => panic!("expected the extension's error variant, got {other}"),
    }
}

/// create → status → destroy (twice) → meter: usage is stable and the meter stays within
/// the estimate.
fn lifecycle(ext: &Extension, req: &SandboxRequest, lived_ms: u64) {
    let estimate = ext.estimate_cost(req).unwrap();
    let created = ext.create(req).unwrap();
    // Realistic epoch timestamps: well above 2^31, so u64 must cross intact.
    let created_at_ms = 1_764_000_000_000;
    let ctx = SandboxContext {
        request: req.clone(),
        handle: created.handle.clone(),
        created_at_ms,
        now_ms: created_at_ms + lived_ms,
    };
    assert_eq!(ext.status(&ctx).unwrap().state, BackendState::Running);
    let usage = ext.destroy(&ctx).unwrap();
    assert_eq!(
        usage.duration_ms,
        lived_ms,
        "{}: destroy echoes the host-measured lifetime",
        ext.id()
    );
    assert_eq!(
        ext.destroy(&ctx).unwrap(),
        usage,
        "{}: a second destroy gives the same usage",
        ext.id()
    );
    let meter = ext.meter_actual(req, &usage).unwrap();
    assert!(
        meter.total.amount <= estimate.total.amount,
        "{}: meter {} above estimate {}",
        ext.id(),
        meter.total,
        estimate.total
    );
    assert!(meter.total.amount > Decimal::ZERO);
    let expired = SandboxContext {
        now_ms: created_at_ms + req.max_duration_secs * 1000,
        ..ctx.clone()
    };
    assert_eq!(ext.status(&expired).unwrap().state, BackendState::Stopped);
    let stranger = SandboxContext {
        handle: "not-a-handle".into(),
        ..ctx
    };
    assert!(matches!(
        backend_error(ext.status(&stranger).unwrap_err()),
        BackendError::NotFound(_)
    ));
}

#[test]
fn python_pool_prices_a_flat_rate_from_its_configuration() {
    let rt = shared();
    let ext = python_pool(&rt);
    let config = &ext.spec().config;
    assert_eq!(ext.info().kind, Kind::SelfHosted);
    assert_eq!(ext.info().currency.as_str(), "USD");

    let capacity: u32 = config["capacity"].parse().unwrap();
    assert_eq!(ext.capacity().unwrap().max_sandboxes, Some(capacity));

    let hourly = dec(&config["price_per_sandbox_hour"]);
    let two_hours = ext.estimate_cost(&request(4, 4096, 7200)).unwrap();
    assert_eq!(two_hours.total.amount, hourly * dec("2"));
    assert_eq!(two_hours.line_items.len(), 1);
    assert_eq!(two_hours.line_items[0].unit, "sandbox-hour");
    assert_eq!(two_hours.line_items[0].quantity, dec("2"));

    // Other prices through another configuration of the same component: a setup fee line
    // and a price small enough that a float would print an exponent.
    let priced = spec(
        &built("extensions/python-pool.wasm"),
        "tiny-pool",
        &[
            ("price_per_sandbox_hour", "0.0000001"),
            ("setup_fee", "0.25"),
            ("regions", "eu-west,eu-north"),
        ],
        ext.spec().memory_limit_mib,
    );
    let tiny = rt.load_spec(priced).unwrap();
    assert_eq!(
        tiny.info().regions,
        vec!["eu-west".to_owned(), "eu-north".to_owned()]
    );
    let cost = tiny.estimate_cost(&request(1, 512, 36)).unwrap();
    assert_eq!(cost.total.amount, dec("0.250000001"));
    assert_eq!(cost.line_items.len(), 2);

    // Requests it cannot serve fail with the WIT variant, naming the field.
    let mut bad = request(0, 512, 60);
    match backend_error(ext.estimate_cost(&bad).unwrap_err()) {
        BackendError::InvalidRequest(m) => assert!(m.contains("vcpus"), "{m}"),
        other => panic!("vcpus 0: {other:?}"),
    }
    bad = request(1, 512, 60);
    bad.resources.gpu = Some("a10g".into());
    assert!(matches!(
        backend_error(ext.create(&bad).unwrap_err()),
        BackendError::Unsupported(_)
    ));
    bad = request(1, 512, 60);
    bad.region = Some("us-east".into());
    assert!(matches!(
        backend_error(tiny.estimate_cost(&bad).unwrap_err()),
        BackendError::Unsupported(_)
    ));

    lifecycle(&ext, &request(2, 2048, 3600), 1_234_567);
}

#[test]
fn js_tiered_discounts_volume_with_exact_line_items() {
    let rt = shared();
    let ext = rt.load_file(&built("extensions/js-tiered.wasm")).unwrap();
    assert_eq!(ext.info().kind, Kind::Saas);
    assert_eq!(ext.capacity().unwrap().max_sandboxes, None);

    // 4 vCPUs for an hour = 14400 vCPU-seconds: the first 3600 at the tier-1 price, the
    // rest at the cheaper tier-2 price, and memory on its own line.
    let cost = ext.estimate_cost(&request(4, 1024, 3600)).unwrap();
    let vcpu: Vec<_> = cost
        .line_items
        .iter()
        .filter(|li| li.unit == "vcpu-second")
        .collect();
    assert_eq!(
        vcpu.iter().map(|li| li.quantity).collect::<Vec<_>>(),
        vec![dec("3600"), dec("10800")]
    );
    assert!(
        vcpu[1].unit_price < vcpu[0].unit_price,
        "volume discount: tier 2 is cheaper"
    );
    let memory = cost
        .line_items
        .iter()
        .find(|li| li.unit == "gib-second")
        .unwrap();
    assert_eq!(memory.quantity, dec("3600"));
    assert_eq!(
        cost.total.amount,
        cost.line_items.iter().map(|li| li.amount).sum::<Decimal>()
    );

    // u64 beyond 2^53 milliseconds arrives as BigInt and stays exact: every vCPU-second is
    // billed exactly once across the tiers.
    let long = 10_000_000_000_000u64;
    let cost = ext.estimate_cost(&request(3, 1536, long)).unwrap();
    let billed: Decimal = cost
        .line_items
        .iter()
        .filter(|li| li.unit == "vcpu-second")
        .map(|li| li.quantity)
        .sum();
    assert_eq!(billed, Decimal::from(3 * long));
    let memory = cost
        .line_items
        .iter()
        .find(|li| li.unit == "gib-second")
        .unwrap();
    assert_eq!(memory.quantity, dec("1.5") * Decimal::from(long));

    let mut bad = request(1, 0, 60);
    match backend_error(ext.estimate_cost(&bad).unwrap_err()) {
        BackendError::InvalidRequest(m) => assert!(m.contains("memory-mib"), "{m}"),
        other => panic!("memory 0: {other:?}"),
    }
    bad = request(1, 512, 60);
    bad.region = Some("mars-1".into());
    match backend_error(ext.create(&bad).unwrap_err()) {
        BackendError::Unsupported(m) => assert!(m.contains("mars-1"), "{m}"),
        other => panic!("region: {other:?}"),
    }
    // A broken configuration is the extension's fault, named by key, not a trap.
    let broken = rt
        .load_spec(spec(
            &built("extensions/js-tiered.wasm"),
            "broken",
            &[("gib_second_price", "4.5e-6")],
            None,
        ))
        .unwrap();
    match backend_error(broken.estimate_cost(&request(1, 512, 60)).unwrap_err()) {
        BackendError::Internal(m) => assert!(m.contains("gib_second_price"), "{m}"),
        other => panic!("config: {other:?}"),
    }

    lifecycle(&ext, &request(2, 2048, 7200), 5_400_321);
}

#[test]
fn lowest_cost_compares_rust_python_and_javascript_estimates() {
    let rt = shared();
    let rust = rt
        .load_spec(spec(
            &built("extensions/saas-stub.wasm"),
            "rust-stub",
            &[("price_vcpu_second", "0.00001")],
            None,
        ))
        .unwrap();
    let python = python_pool(&rt);
    let js = rt
        .load_spec(spec(
            &built("extensions/js-tiered.wasm"),
            "js-tiered",
            &[("vcpu_tiers", "3600:0.000014,0.000005")],
            None,
        ))
        .unwrap();
    let candidates = [&rust, &python, &js];
    let folder = polyglot_host_folder();
    let host = polyglot_host(folder.path());

    // Flat rate wins on big machines, tiered on long runs, per-second on short ones.
    let mut winners = Vec::new();
    for req in [
        request(8, 8192, 3600),
        request(1, 1024, 36_000),
        request(1, 512, 600),
    ] {
        let estimates: Vec<(Decimal, &str)> = candidates
            .iter()
            .map(|e| (e.estimate_cost(&req).unwrap().total.amount, e.id()))
            .collect();
        let (cheapest, id) = *estimates.iter().min().unwrap();
        assert_eq!(
            estimates.iter().filter(|(a, _)| *a == cheapest).count(),
            1,
            "a tie proves nothing: {estimates:?}"
        );
        // The router, through the app, picks the same one and the lifecycle settles there.
        let spec = SandboxSpec {
            vcpus: Some(req.resources.vcpus),
            memory_mib: Some(req.resources.memory_mib),
            max_duration_secs: Some(req.max_duration_secs),
            ..SandboxSpec::of_profile("polyglot")
        };
        let explained = host.app.explain_route(&acme(), &spec).unwrap();
        let decision = explained.decision.unwrap();
        assert_eq!(decision.attempts[0].extension_id, id, "{decision:?}");
        assert_eq!(decision.attempts[0].estimate.total.amount, cheapest);
        let priced_by = candidates.iter().find(|e| e.id() == id).unwrap();
        settles_through_the_manager(&host, &spec, priced_by, cheapest);
        winners.push(id.to_owned());
    }
    winners.sort();
    assert_eq!(
        winners,
        vec!["js-tiered", "python-pool", "rust-stub"],
        "each language is cheapest once"
    );
}

/// A host folder routing a `lowest-cost` profile over the three languages, configured as
/// in `lowest_cost_compares_rust_python_and_javascript_estimates`.
fn polyglot_host_folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let ext = dir.path().join("extensions");
    let prof = dir.path().join("profiles");
    std::fs::create_dir_all(&ext).unwrap();
    std::fs::create_dir_all(&prof).unwrap();
    let component = |rel: &str| format!("component = {:?}\n", built(rel).display().to_string());
    std::fs::write(
        ext.join("rust-stub.toml"),
        component("extensions/saas-stub.wasm")
            + "id = \"rust-stub\"\n[config]\nprice_vcpu_second = \"0.00001\"\n",
    )
    .unwrap();
    let shipped = std::fs::read_to_string(root().join("extensions/python-pool.toml")).unwrap();
    std::fs::write(
        ext.join("python-pool.toml"),
        component("extensions/python-pool.wasm") + &shipped,
    )
    .unwrap();
    std::fs::write(
        ext.join("js-tiered.toml"),
        component("extensions/js-tiered.wasm")
            + "id = \"js-tiered\"\n[config]\nvcpu_tiers = \"3600:0.000014,0.000005\"\n",
    )
    .unwrap();
    std::fs::write(
        prof.join("polyglot.toml"),
        r#"id = "polyglot"
description = "The cheapest of three languages"
template = "base"
max_duration_secs = 36000
[resources]
vcpus = 1
memory_mib = 512
[route]
strategy = "lowest-cost"
candidates = ["rust-stub", "python-pool", "js-tiered"]
fallback = false
"#,
    )
    .unwrap();
    dir
}

/// The app over a polyglot folder, and the ledger file it writes.
struct Host {
    app: App,
    ledger: SqliteCreditsStore,
}

fn acme() -> TenantId {
    TenantId::parse("acme").unwrap()
}

fn give(app: &App, amount: &str) {
    app.grant_credits(
        &acme(),
        &GrantRequest {
            amount: usd(amount),
            note: "test credits".into(),
            idempotency_key: Some("grant-acme".into()),
        },
    )
    .unwrap();
}

/// The loaded extensions' ids, as the operator's list shows them.
fn loaded_ids(app: &App) -> Vec<String> {
    let list = app.extensions(&Scope::Operator).unwrap();
    list.extensions
        .iter()
        .filter(|r| r.status != ExtensionStatus::Skipped)
        .filter_map(|r| r.id.clone())
        .collect()
}

/// The app over [`polyglot_host_folder`], with the shared precompiled cache and credits.
fn polyglot_host(folder: &Path) -> Host {
    let settings = Settings {
        extensions_dir: folder.join("extensions"),
        profiles_dir: folder.join("profiles"),
        state_dir: folder.join("state"),
    };
    let options = AppOptions {
        cache_dir: Some(root().join("target/test-cache/polyglot")),
        ..Default::default()
    };
    let app = App::open(&settings, options);
    let started = app.start().unwrap();
    assert!(started.skipped.is_empty(), "{:?}", started.skipped);
    let mut ids = loaded_ids(&app);
    ids.sort();
    assert_eq!(ids, ["js-tiered", "python-pool", "rust-stub"]);
    give(&app, "100");
    let ledger = SqliteCreditsStore::open(settings.ledger_path()).unwrap();
    Host { app, ledger }
}

fn usd(amount: &str) -> Money {
    Money {
        amount: dec(amount),
        currency: Currency::new("USD").unwrap(),
    }
}

/// create → destroy → settle through the app: served by `expected`, the estimate held,
/// the meter equal to the extension's own price of the recorded usage, the hold posted
/// and nothing left held.
fn settles_through_the_manager(
    host: &Host,
    spec: &SandboxSpec,
    expected: &Extension,
    estimate: Decimal,
) {
    let usd_currency = Currency::new("USD").unwrap();
    let held = || host.app.balance(&acme(), &usd_currency).unwrap().held;
    let expected_id = expected.id();
    let st = host.app.create_sandbox(&acme(), spec, None).unwrap();
    assert_eq!(st.extension_id.as_deref(), Some(expected_id));
    assert_eq!(st.estimate.as_ref().unwrap().total.amount, estimate);
    assert_eq!(held(), st.held.as_ref().unwrap().amount);
    std::thread::sleep(std::time::Duration::from_millis(50));
    let done = host
        .app
        .destroy_sandbox(&Scope::Tenant(acme()), &st.id)
        .unwrap();
    assert_eq!(done.state, SandboxState::Destroyed);
    let meter = done.meter.as_ref().unwrap();
    let lived = done.destroy_at_ms.unwrap() - done.started_at_ms.unwrap();
    assert_eq!(meter.usage.duration_ms, lived, "{expected_id}");
    // The same component with the same configuration prices the recorded usage alike.
    let priced = expected.meter_actual(&done.request, &meter.usage).unwrap();
    assert_eq!(meter.exact, priced.total.amount, "{expected_id}");
    assert!(
        meter.exact > Decimal::ZERO && meter.exact <= estimate,
        "{expected_id}: {meter:?}"
    );
    let hold = host.ledger.hold_for_sandbox(&st.id).unwrap().unwrap();
    assert_eq!(hold.state, HoldState::Posted, "{expected_id}");
    assert_eq!(held(), Decimal::ZERO);
}

#[test]
fn large_guests_load_from_the_precompiled_cache() {
    // The persistent test cache: the first runtime compiles (or finds last run's
    // artifact), a second one, like a restarted host, must load the artifact.
    let cache = root().join("target/test-cache/polyglot-reload");
    for wasm in ["extensions/python-pool.wasm", "extensions/js-tiered.wasm"] {
        let path = built(wasm);
        let first = runtime(&cache)
            .load_spec(spec(&path, "first", &[], None))
            .unwrap();
        assert!(
            matches!(
                first.artifact_source(),
                ArtifactSource::Compiled | ArtifactSource::Cache
            ),
            "{wasm}"
        );
        let restarted = runtime(&cache);
        let warm = restarted
            .load_spec(spec(&path, "restarted", &[], None))
            .unwrap();
        assert_eq!(
            warm.artifact_source(),
            &ArtifactSource::Cache,
            "{wasm}: a restarted host loads the artifact"
        );
        assert_eq!(restarted.cache_stats().compiled, 0);
        assert!(warm.estimate_cost(&request(1, 512, 60)).is_ok());
    }
}

/// Runs `sandboxer extensions check FILE`, with the precompiled artifacts kept under
/// target/ between runs; returns whether it passed and its output.
fn check(file: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sandboxer"))
        .env(
            "SANDBOXER_STATE_DIR",
            root().join("target/test-cache/polyglot-state"),
        )
        .args(["extensions", "check"])
        .arg(file)
        .output()
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `sandboxer extensions check FILE.wasm` on each template, built unchanged.
#[test]
fn templates_built_unchanged_pass_the_check() {
    for lang in ["rust", "python", "javascript"] {
        let (passed, report) = check(&built(&format!("target/templates/template-{lang}.wasm")));
        assert!(passed, "template {lang} fails the check:\n{report}");
    }
}

/// The shipped Python and JavaScript extensions pass the conformance check: python-pool
/// as configured by its sidecar, js-tiered bare.
#[test]
fn python_and_javascript_extensions_pass_the_check() {
    built("extensions/python-pool.wasm");
    for file in [
        root().join("extensions/python-pool.toml"),
        built("extensions/js-tiered.wasm"),
    ] {
        let (passed, report) = check(&file);
        assert!(passed, "{} fails the check:\n{report}", file.display());
    }
}

/// CPython and SpiderMonkey fit the host's default memory cap (64 MiB) with room to spare,
/// also after many calls in one warm instance; the cap is real for them (8 MiB is refused).
#[test]
fn python_and_javascript_run_under_the_default_memory_cap() {
    let rt = shared();
    for wasm in ["extensions/python-pool.wasm", "extensions/js-tiered.wasm"] {
        let ext = rt
            .load_spec(spec(&built(wasm), "default-cap", &[], None))
            .unwrap();
        assert_eq!(
            ext.limits().memory_limit_mib,
            RuntimeConfig::default().limits.memory_limit_mib
        );
        for i in 0..1000u32 {
            ext.estimate_cost(&request(1 + i % 4, 512, 60 + u64::from(i)))
                .unwrap();
        }
        let err = rt
            .load_spec(spec(&built(wasm), "tiny-cap", &[], Some(8)))
            .unwrap_err();
        assert!(
            err.to_string().contains("memory limit of 8 MiB"),
            "{wasm}: {err}"
        );
    }
}

/// `sandboxer extensions check FILE --json [ARGS]`: whether it passed, and the report.
fn check_json(file: &Path, args: &[&str]) -> (bool, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_sandboxer"))
        .env(
            "SANDBOXER_STATE_DIR",
            root().join("target/test-cache/polyglot-state"),
        )
        .args(["extensions", "check", "--json"])
        .arg(file)
        .args(args)
        .output()
        .unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), report)
}

/// The checks of a report that failed, by name, with their detail.
fn failed_checks(report: &serde_json::Value) -> Vec<(String, String)> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["passed"] == false)
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["detail"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The conformance suite an author relies on: every function checked and timed, malformed
/// requests refused with `invalid-request`, idempotent destroy, estimate ≥ meter; a guest
/// that accepts malformed requests, or prices with a float or without a currency, fails
/// with a message naming the function and the value.
#[test]
fn the_check_holds_extensions_to_the_contract() {
    let misbehave = built("tests/guests/misbehave.wasm");
    let (passed, report) = check_json(&misbehave, &["--config", "mode=ok"]);
    assert!(passed, "{report:#}");
    let names: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for expected in [
        "load",
        "info",
        "estimate-cost",
        "create",
        "status",
        "destroy",
        "destroy-twice",
        "meter-actual",
        "estimate-covers-meter",
        "invalid-requests",
        "capacity",
    ] {
        assert!(names.contains(&expected), "{expected} missing: {names:?}");
    }
    for c in report["checks"].as_array().unwrap() {
        assert!(c["micros"].as_u64().is_some(), "untimed check {c}");
    }
    let invalid = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "invalid-requests")
        .unwrap();
    assert!(
        invalid["detail"]
            .as_str()
            .unwrap()
            .starts_with("6 malformed"),
        "{invalid}"
    );

    // A backend that accepts malformed requests fails that check only, naming each case.
    let (passed, report) = check_json(&misbehave, &["--config", "mode=lax"]);
    assert!(!passed, "{report:#}");
    let failed = failed_checks(&report);
    assert_eq!(failed.len(), 1, "{failed:?}");
    let (name, detail) = &failed[0];
    assert_eq!(name, "invalid-requests");
    for needle in [
        "estimate-cost with resources.vcpus = 0",
        "create with resources.vcpus = 0",
        "create with max-duration-secs = 0",
        "estimate-cost with resources.memory-mib = 0",
    ] {
        assert!(detail.contains(needle), "{needle:?} not in {detail}");
    }

    // Deliberate pricing bugs: the failing check names the function and the value.
    for (mode, value) in [("float", "\"1e-5\""), ("no-currency", "currency: \"\"")] {
        let (passed, report) = check_json(&misbehave, &["--config", &format!("mode={mode}")]);
        assert!(!passed, "{mode}: {report:#}");
        let failed = failed_checks(&report);
        let (_, detail) = failed
            .iter()
            .find(|(name, _)| name == "estimate-cost")
            .unwrap_or_else(|| panic!("{mode}: estimate-cost passed: {failed:?}"));
        assert!(
            detail.contains("estimate-cost") && detail.contains(value),
            "{mode}: {detail}"
        );
        let (_, detail) = failed
            .iter()
            .find(|(name, _)| name == "meter-actual")
            .unwrap_or_else(|| panic!("{mode}: meter-actual passed: {failed:?}"));
        assert!(
            detail.contains("meter-actual") && detail.contains(value),
            "{mode}: {detail}"
        );
    }

    // The real Python and JavaScript backends refuse malformed requests properly.
    for file in [
        root().join("extensions/python-pool.toml"),
        built("extensions/js-tiered.wasm"),
    ] {
        let (passed, report) = check_json(&file, &[]);
        assert!(passed, "{}: {report:#}", file.display());
        assert!(
            names_passed(&report).contains(&"invalid-requests".to_owned()),
            "{report:#}"
        );
    }
}

fn names_passed(report: &serde_json::Value) -> Vec<String> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["passed"] == true)
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect()
}

/// A service must not wait for a large guest to compile before serving the others: with
/// the service's `defer_compile_above_bytes` (4 MiB) and an empty cache, a host opens as
/// soon as the small saas-stub is compiled, routes to it while the 18 MB python-pool
/// compiles in the background, then routes to python-pool as soon as it is loaded.
#[test]
fn a_slow_compile_does_not_hold_up_the_other_extensions() {
    let dir = tempfile::tempdir().unwrap();
    let ext = dir.path().join("extensions");
    let prof = dir.path().join("profiles");
    std::fs::create_dir_all(&ext).unwrap();
    std::fs::create_dir_all(&prof).unwrap();
    let component = |rel: &str| format!("component = {:?}\n", built(rel).display().to_string());
    std::fs::write(
        ext.join("saas-stub.toml"),
        component("extensions/saas-stub.wasm"),
    )
    .unwrap();
    let shipped = std::fs::read_to_string(root().join("extensions/python-pool.toml")).unwrap();
    std::fs::write(
        ext.join("python-pool.toml"),
        component("extensions/python-pool.wasm") + &shipped,
    )
    .unwrap();
    for (id, target) in [("stub", "saas-stub"), ("pool", "python-pool")] {
        std::fs::write(
            prof.join(format!("{id}.toml")),
            format!(
                "id = \"{id}\"\ndescription = \"{target} only\"\ntemplate = \"base\"\nmax_duration_secs = 3600\n[resources]\nvcpus = 1\nmemory_mib = 512\n[route]\nstrategy = \"explicit\"\nexplicit = \"{target}\"\nfallback = false\n"
            ),
        )
        .unwrap();
    }
    // An empty cache: both components must be compiled.
    let cache = dir.path().join("cache");
    let settings = Settings {
        extensions_dir: ext.clone(),
        profiles_dir: prof,
        state_dir: dir.path().join("state"),
    };
    let options = AppOptions {
        cache_dir: Some(cache.clone()),
        defer_compile_above_bytes: Some(DEFER_COMPILE_ABOVE_BYTES),
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let app = App::open(&settings, options);
    app.start().unwrap();
    let opened = started.elapsed();
    let pending = || app.extensions(&Scope::Operator).unwrap().pending;
    assert_eq!(pending(), ["python-pool"]);
    assert_eq!(loaded_ids(&app), ["saas-stub"]);
    for profile in ["stub", "pool"] {
        let warnings = app
            .explain_route(&acme(), &SandboxSpec::of_profile(profile))
            .unwrap()
            .warnings;
        assert!(
            warnings.is_empty(),
            "a pending extension is not reported missing: {warnings:?}"
        );
    }
    give(&app, "10");
    let acme_scope = Scope::Tenant(acme());
    let st = app
        .create_sandbox(&acme(), &SandboxSpec::of_profile("stub"), None)
        .unwrap();
    assert_eq!(st.extension_id.as_deref(), Some("saas-stub"));
    app.destroy_sandbox(&acme_scope, &st.id).unwrap();
    let served = started.elapsed();
    assert_eq!(
        pending(),
        ["python-pool"],
        "the stub served while python-pool was still compiling"
    );
    assert!(
        app.create_sandbox(&acme(), &SandboxSpec::of_profile("pool"), None)
            .is_err(),
        "python-pool is not routed to before it is loaded"
    );

    assert!(
        app.wait_for_extensions(std::time::Duration::from_secs(300))
            .unwrap(),
        "python-pool never finished loading"
    );
    let compiled = started.elapsed();
    let skipped: Vec<_> = app
        .extensions(&Scope::Operator)
        .unwrap()
        .extensions
        .into_iter()
        .filter(|r| r.status == ExtensionStatus::Skipped)
        .collect();
    assert!(skipped.is_empty(), "{skipped:?}");
    let st = app
        .create_sandbox(&acme(), &SandboxSpec::of_profile("pool"), None)
        .unwrap();
    assert_eq!(st.extension_id.as_deref(), Some("python-pool"));
    let done = app.destroy_sandbox(&acme_scope, &st.id).unwrap();
    assert_eq!(done.state, SandboxState::Destroyed);
    println!(
        "host opened in {opened:?}, saas-stub lifecycle done at {served:?}, python-pool routed to at {compiled:?}"
    );
}

/// The same through the real `sandboxer-host run`: with python-pool not compiled yet, the
/// service answers a saas-stub create at once, lists python-pool once compiled (its
/// maintenance tick registers it), and then routes to it.
#[test]
fn the_service_serves_while_a_large_guest_compiles() {
    let setup = http_host::Setup::with_extensions(&[
        "saas-stub.wasm",
        "python-pool.wasm",
        "python-pool.toml",
    ]);
    std::fs::write(
        setup.profiles().join("pool.toml"),
        "id = \"pool\"\ndescription = \"python-pool only\"\ntemplate = \"base\"\nmax_duration_secs = 3600\n[resources]\nvcpus = 1\nmemory_mib = 512\n[route]\nstrategy = \"explicit\"\nexplicit = \"python-pool\"\nfallback = false\n",
    )
    .unwrap();
    let started = std::time::Instant::now();
    let h = http_host::Host::start(&setup);
    h.grant("a", "5.00");
    let (status, sb) = h.post(
        "/v1/sandboxes",
        http_host::TOKEN_A,
        r#"{"profile":"saas-stub"}"#,
    );
    assert_eq!(status, 201, "{sb}");
    assert_eq!(sb["extension_id"], "saas-stub");
    let served = started.elapsed();
    let listed = |h: &http_host::Host| -> Vec<String> {
        let (s, v) = h.get("/v1/extensions", http_host::TOKEN_A);
        assert_eq!(s, 200, "{v}");
        v["extensions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        listed(&h),
        ["saas-stub"],
        "python-pool (cold compile: seconds) is not loaded yet after {served:?}"
    );
    h.wait_for(std::time::Duration::from_secs(180), || {
        listed(&h).contains(&"python-pool".to_owned()).then_some(())
    });
    let ready = started.elapsed();
    let (status, sb) = h.post("/v1/sandboxes", http_host::TOKEN_A, r#"{"profile":"pool"}"#);
    assert_eq!(status, 201, "{sb}");
    assert_eq!(sb["extension_id"], "python-pool");
    // Loaded in the background, it is instrumented like the others: its calls show in
    // /metrics.
    let m = h.metrics();
    assert!(
        m.lines()
            .any(|l| l.starts_with("sandboxer_extension_call_seconds_count{")
                && l.contains("extension=\"python-pool\"")
                && l.contains("function=\"create\"")),
        "python-pool's create is not in /metrics:\n{m}"
    );
    println!(
        "service: saas-stub sandbox created {served:?} after start; python-pool routed to after {ready:?}"
    );
    assert!(h.terminate(), "the service exits cleanly");
}
