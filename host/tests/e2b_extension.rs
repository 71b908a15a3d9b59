//! The E2B extension (`extensions/e2b`, a Rust component speaking `wasi:http`) against the
//! fake E2B API (`tests/fake-e2b`) on loopback, loaded through sidecars with per-extension
//! grants: the lifecycle is billed from the lifetime, API errors map onto the contract's
//! variants (final vs retryable), outbound requests are bounded in time and size, hosts not
//! granted are denied inside the guest and logged, and the API key never leaks into errors
//! or logs. The same component serves a self-hosted deployment by configuration alone.
//!
//! `extensions/e2b.wasm` is built by `scripts/build-extensions.sh` (`make test` runs it).

mod support;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fake_e2b::{FakeE2b, Fault as FakeFault, Route};
use rust_decimal::Decimal;
use sandboxer_host::domain::{
    BackendError, BackendState, ExtensionError, Fault, Kind, Resources, SandboxContext,
    SandboxRequest,
};
use sandboxer_host::layers::runtime::{Extension, ExtensionSpec, Runtime, RuntimeConfig};
use support::logs::{captured_logs, logs};

const KEY: &str = "e2b_test_key_4f9a1c";

fn wasm() -> std::path::PathBuf {
    support::built("extensions/e2b.wasm")
}

/// A folder with a sidecar `NAME.toml` pointing at the built component.
struct Setup {
    dir: tempfile::TempDir,
    runtime: Runtime,
}

impl Setup {
    fn new() -> Self {
        logs();
        let dir = tempfile::tempdir().unwrap();
        let runtime =
            Runtime::new(RuntimeConfig::with_cache_dir(dir.path().join("cache"))).unwrap();
        Self { dir, runtime }
    }

    fn sidecar_path(&self, id: &str, body: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{id}.toml"));
        let text = format!(
            "component = {:?}\ncall_timeout_ms = 10000\n{body}",
            wasm().display().to_string()
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    fn load(&self, id: &str, body: &str) -> Arc<Extension> {
        let spec = ExtensionSpec::from_sidecar(&self.sidecar_path(id, body)).unwrap();
        self.runtime.load_spec(spec).unwrap()
    }

    /// The usual E2B sidecar against `fake`, the key read from a file beside the sidecar.
    fn e2b(&self, id: &str, fake: &FakeE2b, key: &str, extra: &str) -> Arc<Extension> {
        std::fs::write(
            self.dir.path().join(format!("{id}.key")),
            format!("{key}\n"),
        )
        .unwrap();
        self.load(
            id,
            &format!(
                "allowed_outbound_hosts = [\"http://127.0.0.1:*\"]\n{extra}\n[secrets]\napi_key = {{ file = \"{id}.key\" }}\n[config]\nbase_url = \"{}\"\n",
                fake.base_url()
            ),
        )
    }
}

fn request(id: &str) -> SandboxRequest {
    SandboxRequest {
        sandbox_id: id.into(),
        tenant: "acme".into(),
        profile: "burst-sandbox".into(),
        template: "base".into(),
        resources: Resources {
            vcpus: 2,
            memory_mib: 512,
            disk_mib: 0,
            gpu: None,
        },
        max_duration_secs: 3600,
        region: None,
        env: vec![("MODE".into(), "ci".into())],
        metadata: vec![("team".into(), "ml".into())],
        byok: Default::default(),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn backend_error(err: ExtensionError) -> BackendError {
    match err.fault {
        Fault::Backend(e) => e,
        other => panic!("expected the extension's error variant, got {other}"),
    }
}

fn e2b_id(handle: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(handle).unwrap();
    v["id"].as_str().unwrap().to_owned()
}

#[test]
fn create_status_destroy_bills_the_lifetime() {
    let fake = FakeE2b::start(KEY).unwrap();
    let setup = Setup::new();
    let ext = setup.e2b("e2b", &fake, KEY, "");
    assert_eq!(ext.info().kind, Kind::Saas);

    let req = request("sb-life-1");
    let estimate = ext.estimate_cost(&req).unwrap();
    // 2 vCPU × 3600 s × 0.000014 + 0.5 GiB × 3600 s × 0.0000045
    assert_eq!(estimate.total.amount, dec("0.1089"));

    let created = ext.create(&req).unwrap();
    let id = e2b_id(&created.handle);
    let sandbox = fake.sandbox(&id).expect("the fake has the sandbox");
    assert_eq!(
        sandbox.metadata.get("sandboxer_id").map(String::as_str),
        Some("sb-life-1")
    );
    assert_eq!(
        sandbox.metadata.get("sandboxer_tenant").map(String::as_str),
        Some("acme")
    );
    assert_eq!(sandbox.metadata.get("team").map(String::as_str), Some("ml"));
    assert_eq!(sandbox.env_vars.get("MODE").map(String::as_str), Some("ci"));
    assert_eq!(
        (sandbox.end_at - sandbox.started_at).num_seconds(),
        3600,
        "timeout = the request's max duration"
    );
    let posts: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert_eq!(posts.len(), 1);
    assert!(posts[0].authorized, "X-API-Key carried the granted secret");
    assert_eq!(posts[0].body.as_ref().unwrap()["templateID"], "base");

    let created_at_ms = now_ms() - 90_000;
    let ctx = |now| SandboxContext {
        request: req.clone(),
        handle: created.handle.clone(),
        created_at_ms,
        now_ms: now,
    };
    let status = ext.status(&ctx(now_ms())).unwrap();
    assert_eq!(status.state, BackendState::Running);

    let destroyed_at = created_at_ms + 90_000;
    let usage = ext.destroy(&ctx(destroyed_at)).unwrap();
    assert_eq!(usage.duration_ms, 90_000);
    let measure = |name: &str| {
        usage
            .measures
            .iter()
            .find(|m| m.name == name)
            .unwrap()
            .quantity
    };
    assert_eq!(measure("vcpu-seconds"), dec("180"));
    assert_eq!(measure("gib-seconds"), dec("45"));
    assert!(
        fake.sandbox(&id).unwrap().killed_at.is_some(),
        "DELETE reached the fake"
    );
    assert!(fake.running().is_empty());

    let meter = ext.meter_actual(&req, &usage).unwrap();
    assert_eq!(meter.total.amount, dec("0.0027225")); // 180 × 0.000014 + 45 × 0.0000045
    assert!(meter.total.amount <= estimate.total.amount);

    // Destroy again: E2B answers 404, the usage is the same.
    assert_eq!(ext.destroy(&ctx(destroyed_at)).unwrap(), usage);
    assert_eq!(
        ext.status(&ctx(now_ms())).unwrap().state,
        BackendState::Stopped
    );
}

#[test]
fn a_vanished_sandbox_is_settled_from_the_recorded_lifetime() {
    let fake = FakeE2b::start(KEY).unwrap();
    let setup = Setup::new();
    let ext = setup.e2b("e2b", &fake, KEY, "");
    let req = request("sb-vanish");
    let created = ext.create(&req).unwrap();
    assert!(fake.vanish(&e2b_id(&created.handle)));
    let ctx = SandboxContext {
        request: req.clone(),
        handle: created.handle,
        created_at_ms: 1_000_000,
        now_ms: 1_030_500,
    };
    let usage = ext.destroy(&ctx).unwrap();
    assert_eq!(usage.duration_ms, 30_500);
    let meter = ext.meter_actual(&req, &usage).unwrap();
    // 61 vCPU-s × 0.000014 + 15.25 GiB-s × 0.0000045
    assert_eq!(meter.total.amount, dec("0.000922625"));
}

#[test]
fn api_errors_map_onto_final_and_retryable_variants() {
    let fake = FakeE2b::start(KEY).unwrap();
    let setup = Setup::new();

    // A wrong key: unauthorized, final, nothing created.
    let wrong = setup.e2b("e2b-wrong", &fake, "e2b_not_the_key", "");
    let err = wrong.create(&request("sb-401")).unwrap_err();
    assert!(!err.is_retryable() && !err.counts_against_health(), "{err}");
    assert!(matches!(backend_error(err), BackendError::Unauthorized(_)));
    assert_eq!(fake.created_count(), 0);

    let ext = setup.e2b("e2b", &fake, KEY, "");
    let cases = [
        (FakeFault::status(429), "capacity"),
        (
            FakeFault::with_code(503, "sandbox_capacity_unavailable"),
            "capacity",
        ),
        (FakeFault::status(503), "unavailable"),
        (FakeFault::status(500), "unavailable"),
        (FakeFault::status(400), "invalid"),
    ];
    for (fault, expected) in cases {
        fake.inject(Route::Create, fault.clone(), 1);
        let err = ext.create(&request("sb-fault")).unwrap_err();
        let retryable = err.is_retryable();
        let e = backend_error(err);
        let ok = match expected {
            "capacity" => matches!(e, BackendError::CapacityExhausted(_)) && retryable,
            "unavailable" => matches!(e, BackendError::Unavailable(_)) && retryable,
            _ => matches!(e, BackendError::InvalidRequest(_)) && !retryable,
        };
        assert!(
            ok,
            "{fault:?} gave {e:?} (retryable {retryable}), expected {expected}"
        );
    }
    assert_eq!(fake.created_count(), 0);
    // Once the faults are spent, the same extension creates normally.
    ext.create(&request("sb-after")).unwrap();
    assert_eq!(fake.created_count(), 1);

    // A request the template cannot serve is `unsupported`, before any HTTP call.
    let before = fake.requests().len();
    let mut big = request("sb-big");
    big.resources.vcpus = 8;
    assert!(matches!(
        backend_error(ext.create(&big).unwrap_err()),
        BackendError::Unsupported(_)
    ));
    assert!(matches!(
        backend_error(ext.estimate_cost(&big).unwrap_err()),
        BackendError::Unsupported(_)
    ));
    assert_eq!(fake.requests().len(), before);
}

#[test]
fn a_slow_server_times_out_within_the_configured_bound() {
    let fake = FakeE2b::start(KEY).unwrap();
    let setup = Setup::new();
    let ext = setup.e2b("e2b-slow", &fake, KEY, "outbound_timeout_ms = 300");
    fake.set_delay(Duration::from_secs(3));
    let started = Instant::now();
    let err = ext.create(&request("sb-slow")).unwrap_err();
    let elapsed = started.elapsed();
    assert!(err.is_retryable(), "{err}");
    let e = backend_error(err);
    assert!(
        matches!(&e, BackendError::Unavailable(m) if m.contains("timed out")),
        "{e:?}"
    );
    assert!(elapsed < Duration::from_millis(2000), "took {elapsed:?}");
    assert!(elapsed >= Duration::from_millis(250), "took {elapsed:?}");
    assert!(captured_logs().contains("outbound request timed out"));
}

#[test]
fn oversized_answers_fail_inside_the_guest() {
    let fake = FakeE2b::start(KEY).unwrap();
    let setup = Setup::new();
    // The 201 body of a create is about 250 bytes.
    let ext = setup.e2b("e2b-tiny", &fake, KEY, "max_response_bytes = 64");
    let e = backend_error(ext.create(&request("sb-big-answer")).unwrap_err());
    assert!(
        matches!(&e, BackendError::Unavailable(m) if m.contains("BodySize")),
        "{e:?}"
    );
}

#[test]
fn a_host_not_granted_is_denied_inside_the_guest_and_logged() {
    let fake = FakeE2b::start(KEY).unwrap();
    let setup = Setup::new();
    std::fs::write(setup.dir.path().join("k"), KEY).unwrap();
    let ext = setup.load(
        "e2b-denied",
        &format!(
            "allowed_outbound_hosts = [\"https://api.e2b.app\"]\n[secrets]\napi_key = {{ file = \"k\" }}\n[config]\nbase_url = \"{}\"\n",
            fake.base_url()
        ),
    );
    let e = backend_error(ext.create(&request("sb-denied")).unwrap_err());
    assert!(
        matches!(&e, BackendError::Unavailable(m) if m.contains("denied")),
        "{e:?}"
    );
    assert!(fake.requests().is_empty(), "nothing reached the server");
    let logs = captured_logs();
    let line = logs
        .lines()
        .find(|l| l.contains("outbound request denied") && l.contains("e2b-denied"))
        .unwrap_or_else(|| panic!("no denial logged in:\n{logs}"));
    assert!(line.contains(&fake.addr().to_string()), "{line}");

    // No grants at all: nothing is reachable.
    let bare = setup.load(
        "e2b-bare",
        &format!(
            "[config]\nbase_url = \"{}\"\napi_key = \"{KEY}\"\n",
            fake.base_url()
        ),
    );
    let e = backend_error(bare.create(&request("sb-bare")).unwrap_err());
    assert!(
        matches!(&e, BackendError::Unavailable(m) if m.contains("denied")),
        "{e:?}"
    );
    assert!(fake.requests().is_empty());
}

#[test]
fn a_granted_name_that_resolves_to_an_internal_address_is_refused() {
    let fake = FakeE2b::start(KEY).unwrap();
    let setup = Setup::new();
    std::fs::write(setup.dir.path().join("k"), KEY).unwrap();
    let port = fake.addr().port();
    // `localhost` is granted by name, and resolves to loopback: not what a name grants.
    let ext = setup.load(
        "e2b-rebound",
        &format!(
            "allowed_outbound_hosts = [\"http://localhost:*\"]\n[secrets]\napi_key = {{ file = \"k\" }}\n[config]\nbase_url = \"http://localhost:{port}\"\n"
        ),
    );
    let e = backend_error(ext.create(&request("sb-rebound")).unwrap_err());
    assert!(
        matches!(&e, BackendError::Unavailable(m) if m.contains("denied")),
        "{e:?}"
    );
    assert!(fake.requests().is_empty(), "nothing reached the server");
    let logs = captured_logs();
    let line = logs
        .lines()
        .find(|l| l.contains("internal address") && l.contains("e2b-rebound"))
        .unwrap_or_else(|| panic!("no refusal logged in:\n{logs}"));
    assert!(line.contains("localhost resolves to"), "{line}");

    // The same server granted by its address is reached.
    let ext = setup.e2b("e2b-by-address", &fake, KEY, "");
    let created = ext.create(&request("sb-by-address")).unwrap();
    assert!(!created.handle.is_empty());
    assert!(!fake.requests().is_empty());
}

#[test]
fn the_api_key_never_appears_in_errors_or_logs() {
    let secret = "e2b_leaky_secret_93b1d7";
    let fake = FakeE2b::start(KEY).unwrap();
    fake.echo_key_in_errors(true);
    let setup = Setup::new();
    // SAFETY: set before any secret is resolved; the name is unique to this test and no
    // other code of this binary reads it.
    unsafe { std::env::set_var("E2B_TEST_LEAKY_KEY", secret) };
    let path = setup.sidecar_path(
        "e2b-leaky",
        &format!(
            "allowed_outbound_hosts = [\"http://127.0.0.1:*\"]\n[secrets]\napi_key = {{ env = \"E2B_TEST_LEAKY_KEY\" }}\n[config]\nbase_url = \"{}\"\n",
            fake.base_url()
        ),
    );
    let spec = ExtensionSpec::from_sidecar(&path).unwrap();
    assert!(!format!("{spec:?}").contains(secret));
    assert!(!serde_json::to_string(&spec).unwrap().contains(secret));
    let ext = setup.runtime.load_spec(spec).unwrap();

    let err = ext.create(&request("sb-leak")).unwrap_err();
    // The fake did quote the key it received…
    let answered = fake.requests();
    assert_eq!(answered.last().map(|r| r.status), Some(401));
    // …and the host scrubbed it.
    let text = err.to_string();
    assert!(text.contains("[redacted]"), "{text}");
    assert!(!text.contains(secret), "{text}");
    assert!(!serde_json::to_string(&err).unwrap().contains(secret));
    assert!(!format!("{err:?}").contains(secret));
    assert!(!format!("{:?}", ext.health()).contains(secret));
    assert!(!format!("{ext:?}").contains(secret));
    assert!(
        !captured_logs().contains(secret),
        "a log line holds the secret"
    );
}

#[test]
fn bad_grants_fail_the_load_naming_the_key() {
    let fake = FakeE2b::start(KEY).unwrap();
    let setup = Setup::new();
    let load = |id: &str, body: &str| {
        let spec = ExtensionSpec::from_sidecar(&setup.sidecar_path(id, body));
        match spec {
            Err(e) => e.to_string(),
            Ok(spec) => setup
                .runtime
                .load_spec(spec)
                .map(|_| ())
                .unwrap_err()
                .to_string(),
        }
    };
    let base = format!("[config]\nbase_url = \"{}\"\n", fake.base_url());
    let err = load(
        "a",
        &format!("[secrets]\napi_key = {{ env = \"E2B_TEST_UNSET_KEY\" }}\n{base}"),
    );
    assert!(
        err.contains("secrets.api_key") && err.contains("E2B_TEST_UNSET_KEY"),
        "{err}"
    );
    let err = load(
        "b",
        &format!("allowed_outbound_hosts = [\"api.e2b.app\"]\n{base}"),
    );
    assert!(
        err.contains("allowed_outbound_hosts") && err.contains("api.e2b.app"),
        "{err}"
    );
    let err = load(
        "c",
        &format!("[secrets]\napi_key = {{ file = \"missing.key\" }}\n{base}"),
    );
    assert!(err.contains("missing.key"), "{err}");
}

#[test]
fn the_same_component_serves_a_self_hosted_deployment_by_config_alone() {
    let saas_api = FakeE2b::start(KEY).unwrap();
    let own_api = FakeE2b::start("e2b_own_cluster_key").unwrap();
    let setup = Setup::new();
    let saas = setup.e2b("e2b", &saas_api, KEY, "");
    std::fs::write(setup.dir.path().join("own.key"), "e2b_own_cluster_key").unwrap();
    let own = setup.load(
        "e2b-own",
        &format!(
            "allowed_outbound_hosts = [\"http://127.0.0.1:{}\"]\n[secrets]\napi_key = {{ file = \"own.key\" }}\n[config]\nbase_url = \"{}\"\nkind = \"self-hosted\"\nprice_vcpu_second = \"0.000002\"\nprice_gib_second = \"0\"\nmax_sandboxes = \"3\"\n",
            own_api.addr().port(),
            own_api.base_url()
        ),
    );
    assert_eq!(saas.info().kind, Kind::Saas);
    assert_eq!(own.info().kind, Kind::SelfHosted);
    assert_eq!(own.capacity().unwrap().max_sandboxes, Some(3));
    assert_eq!(saas.capacity().unwrap().max_sandboxes, None);
    let req = request("sb-own");
    assert_eq!(own.estimate_cost(&req).unwrap().total.amount, dec("0.0144")); // 7200 × 0.000002
    assert!(
        own.estimate_cost(&req).unwrap().total.amount
            < saas.estimate_cost(&req).unwrap().total.amount
    );
    own.create(&req).unwrap();
    assert_eq!((own_api.created_count(), saas_api.created_count()), (1, 0));
    // Its grant names its own port only: the SaaS fake is out of reach for it.
    assert!(own_api.addr().port() != saas_api.addr().port());
}
