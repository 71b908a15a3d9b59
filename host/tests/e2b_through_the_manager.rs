//! The real E2B component (`extensions/e2b.wasm`) behind the app's lifecycle, against the
//! fake E2B API on loopback, loaded from sidecars that grant `http://127.0.0.1:*`: a
//! lifecycle is routed, held, created, destroyed and settled from the host-measured
//! lifetime; a wrong key is final (no failover, hold voided); 429 and 503 fail over to the
//! next candidate; a sandbox that vanished is settled from its recorded lifetime; two
//! instances of the component (SaaS and self-hosted) route per `prefer-self-hosted`; and
//! the API key appears nowhere in what the real `sandboxer` CLI prints or logs.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::str::FromStr;
use std::time::Duration;

use fake_e2b::{FakeE2b, Fault as FakeFault, Route};
use rust_decimal::Decimal;
use sandboxer_host::Settings;
use sandboxer_host::app::{App, AppError, AppOptions, GrantRequest};
use sandboxer_host::domain::{
    Currency, Money, SandboxSpec, SandboxState, SandboxStatus, Scope, TenantId,
};
use sandboxer_host::layers::payments::{CreditsStore, HoldState, SqliteCreditsStore};
use support::logs::{captured_logs, logs};

const KEY: &str = "e2b_manager_test_key_7c21";

/// An e2b-only route (no fallback).
const E2B_ONLY: &str = r#"
id = "e2b-only"
description = "E2B, nothing else"
template = "base"
max_duration_secs = 3600
[resources]
vcpus = 2
memory_mib = 512
[route]
strategy = "explicit"
explicit = "e2b"
fallback = false
"#;

/// E2B first, the saas-stub when E2B fails retryably.
const E2B_THEN_STUB: &str = r#"
id = "e2b-then-stub"
description = "E2B, then the saas-stub"
template = "base"
max_duration_secs = 3600
[resources]
vcpus = 2
memory_mib = 512
[route]
strategy = "explicit"
explicit = "e2b"
candidates = ["saas-stub"]
fallback = true
max_attempts = 2
"#;

/// The operator's own E2B deployment first, E2B's SaaS when it is full.
const BURST_E2B: &str = r#"
id = "burst-e2b"
description = "Own E2B cluster first, E2B SaaS when full"
template = "base"
max_duration_secs = 3600
[resources]
vcpus = 2
memory_mib = 512
[route]
strategy = "prefer-self-hosted"
candidates = ["e2b", "e2b-own"]
fallback = true
max_attempts = 2
"#;

/// A host folder (extensions with sidecars, profiles, state) around a fake E2B.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    /// `e2b` (SaaS, key `key`) against `fake`, the saas-stub, and the three profiles.
    fn new(fake: &FakeE2b, key: &str) -> Self {
        logs();
        let dir = tempfile::tempdir().unwrap();
        let ext = dir.path().join("extensions");
        let prof = dir.path().join("profiles");
        std::fs::create_dir_all(&ext).unwrap();
        std::fs::create_dir_all(&prof).unwrap();
        std::fs::copy(
            support::built("extensions/saas-stub.wasm"),
            ext.join("saas-stub.wasm"),
        )
        .unwrap();
        let f = Self { dir };
        f.add_e2b("e2b", fake, key, "");
        for (name, text) in [
            ("e2b-only", E2B_ONLY),
            ("e2b-then-stub", E2B_THEN_STUB),
            ("burst-e2b", BURST_E2B),
        ] {
            std::fs::write(prof.join(format!("{name}.toml")), text).unwrap();
        }
        f
    }

    fn extensions(&self) -> PathBuf {
        self.dir.path().join("extensions")
    }

    /// A sidecar `ID.toml` for the e2b component against `fake`; the key is read from a
    /// file beside it.
    fn add_e2b(&self, id: &str, fake: &FakeE2b, key: &str, config: &str) {
        let ext = self.extensions();
        std::fs::write(ext.join(format!("{id}.key")), format!("{key}\n")).unwrap();
        std::fs::write(
            ext.join(format!("{id}.toml")),
            format!(
                "component = {:?}\nid = \"{id}\"\ncall_timeout_ms = 10000\nallowed_outbound_hosts = [\"http://127.0.0.1:*\"]\n[secrets]\napi_key = {{ file = \"{id}.key\" }}\n[config]\nbase_url = \"{}\"\n{config}",
                support::built("extensions/e2b.wasm").display().to_string(),
                fake.base_url()
            ),
        )
        .unwrap();
    }

    fn settings(&self) -> Settings {
        Settings {
            extensions_dir: self.extensions(),
            profiles_dir: self.dir.path().join("profiles"),
            state_dir: self.dir.path().join("state"),
        }
    }

    /// The app over this folder (compiled components are shared between tests), opened,
    /// with 10 USD for `acme`.
    fn host(&self) -> Host {
        let options = AppOptions {
            cache_dir: Some(support::root().join("target/test-cache/e2b-manager")),
            ..Default::default()
        };
        let app = App::open(&self.settings(), options);
        let started = app.start().unwrap();
        assert!(started.skipped.is_empty(), "{:?}", started.skipped);
        app.grant_credits(
            &tenant(),
            &GrantRequest {
                amount: usd("10"),
                note: "test credits".into(),
                idempotency_key: Some("grant-acme".into()),
            },
        )
        .unwrap();
        let ledger = SqliteCreditsStore::open(self.settings().ledger_path()).unwrap();
        Host { app, ledger }
    }

    /// Runs the real `sandboxer` binary on this folder with debug logs on stderr.
    fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_sandboxer"))
            .arg("--extensions-dir")
            .arg(self.extensions())
            .arg("--profiles-dir")
            .arg(self.dir.path().join("profiles"))
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .args(args)
            .env("RUST_LOG", "debug")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

fn usd(s: &str) -> Money {
    Money {
        amount: dec(s),
        currency: Currency::new("USD").unwrap(),
    }
}

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

/// The app, and the ledger file it writes (for what only the ledger records: holds).
struct Host {
    app: App,
    ledger: SqliteCreditsStore,
}

impl Host {
    fn ledger(&self) -> &SqliteCreditsStore {
        &self.ledger
    }
}

fn tenant() -> TenantId {
    TenantId::parse("acme").unwrap()
}

fn acme() -> Scope {
    Scope::Tenant(tenant())
}

fn create(host: &Host, profile: &str) -> Result<SandboxStatus, AppError> {
    host.app
        .create_sandbox(&tenant(), &SandboxSpec::of_profile(profile), None)
}

fn e2b_id(handle: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(handle).unwrap();
    v["id"].as_str().unwrap().to_owned()
}

fn held(host: &Host) -> Decimal {
    host.ledger()
        .balance("acme", &Currency::new("USD").unwrap())
        .unwrap()
        .held
}

/// The meter is E2B's per-second price of the host-measured lifetime at the allocated size.
fn assert_billed_for_lifetime(st: &SandboxStatus) {
    let meter = st
        .meter
        .as_ref()
        .expect("destroyed sandboxes carry a meter");
    let lived_ms = st.destroy_at_ms.unwrap() - st.started_at_ms.unwrap();
    assert_eq!(meter.usage.duration_ms, lived_ms);
    let secs = Decimal::from(lived_ms) / Decimal::from(1000);
    let measure = |name: &str| {
        meter
            .usage
            .measures
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no {name} in {:?}", meter.usage))
            .quantity
    };
    // 2 vCPUs and 0.5 GiB as read right after create.
    assert_eq!(measure("vcpu-seconds"), secs * Decimal::from(2));
    assert_eq!(measure("gib-seconds"), secs * dec("0.5"));
    let expected = secs * Decimal::from(2) * dec("0.000014") + secs * dec("0.5") * dec("0.0000045");
    assert_eq!(meter.exact, expected);
    assert_eq!(
        meter.total.amount,
        expected.round_dp_with_strategy(
            meter.total.amount.scale(),
            rust_decimal::RoundingStrategy::MidpointAwayFromZero
        )
    );
}

#[test]
fn create_status_destroy_settles_the_lifetime() {
    let fake = FakeE2b::start(KEY).unwrap();
    let f = Fixture::new(&fake, KEY);
    let host = f.host();

    let st = create(&host, "e2b-only").unwrap();
    assert_eq!(st.state, SandboxState::Running);
    assert_eq!(st.extension_id.as_deref(), Some("e2b"));
    // The estimate for the hour is held: 2 × 3600 × 0.000014 + 0.5 × 3600 × 0.0000045.
    assert_eq!(st.estimate.as_ref().unwrap().total.amount, dec("0.1089"));
    assert_eq!(held(&host), st.held.as_ref().unwrap().amount);
    let e2b = e2b_id(st.handle.as_deref().unwrap());
    let record = fake.sandbox(&e2b).unwrap();
    assert_eq!(
        record.metadata.get("sandboxer_id").map(String::as_str),
        Some(st.id.as_str())
    );
    assert_eq!(
        record.metadata.get("sandboxer_tenant").map(String::as_str),
        Some("acme")
    );
    assert_eq!(
        host.app.sandbox(&acme(), &st.id).unwrap().state,
        SandboxState::Running
    );

    std::thread::sleep(Duration::from_millis(1200));
    let done = host.app.destroy_sandbox(&acme(), &st.id).unwrap();
    assert_eq!(done.state, SandboxState::Destroyed);
    assert!(
        fake.sandbox(&e2b).unwrap().killed_at.is_some(),
        "DELETE reached E2B"
    );
    assert!(fake.running().is_empty());
    assert_billed_for_lifetime(&done);
    let lived = done.destroy_at_ms.unwrap() - done.started_at_ms.unwrap();
    assert!(lived >= 1200, "lifetime {lived} ms shorter than the sleep");

    // Settled: the hold is posted, nothing stays held, the charge left the balance.
    let hold = host.ledger().hold_for_sandbox(&st.id).unwrap().unwrap();
    assert_eq!(hold.state, HoldState::Posted);
    assert_eq!(held(&host), Decimal::ZERO);
    let b = host
        .ledger()
        .balance("acme", &Currency::new("USD").unwrap())
        .unwrap();
    assert_eq!(
        b.posted,
        dec("10") - done.meter.as_ref().unwrap().total.amount
    );
    assert!(host.ledger().verify().unwrap().ok, "ledger verifies");
    // A second destroy answers the same and charges nothing more.
    assert_eq!(
        host.app.destroy_sandbox(&acme(), &st.id).unwrap().meter,
        done.meter
    );
    assert_eq!(
        host.ledger()
            .balance("acme", &Currency::new("USD").unwrap())
            .unwrap()
            .posted,
        b.posted
    );
}

#[test]
fn a_wrong_key_is_final_no_failover_and_the_hold_is_voided() {
    let fake = FakeE2b::start(KEY).unwrap();
    // The fake quotes the wrong key back in its 401: the host must scrub it everywhere.
    fake.echo_key_in_errors(true);
    let f = Fixture::new(&fake, "e2b_not_the_key");
    let host = f.host();
    let err = create(&host, "e2b-then-stub").unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("[redacted]") && !text.contains("e2b_not_the_key"),
        "{text}"
    );
    let AppError::CreateFailed { status, .. } = err else {
        panic!("expected CreateFailed, got {err}");
    };
    assert_eq!(status.state, SandboxState::Failed);
    assert_eq!(
        status.attempts.len(),
        1,
        "no failover on unauthorized: {:?}",
        status.attempts
    );
    let attempt = &status.attempts[0];
    assert_eq!(attempt.extension_id, "e2b");
    assert!(!attempt.retryable);
    assert!(
        attempt.error.as_deref().unwrap().contains("unauthorized"),
        "{:?}",
        attempt.error
    );
    assert_eq!(fake.created_count(), 0);
    let hold = host.ledger().hold_for_sandbox(&status.id).unwrap().unwrap();
    assert_eq!(hold.state, HoldState::Voided);
    assert_eq!(held(&host), Decimal::ZERO);
    assert!(host.ledger().open_holds().unwrap().is_empty());
    let recorded =
        serde_json::to_string(&host.app.sandbox(&Scope::Operator, &status.id).unwrap()).unwrap();
    assert!(!recorded.contains("e2b_not_the_key"), "{recorded}");
    assert!(!captured_logs().contains("e2b_not_the_key"));
    assert!(
        host.app
            .all_sandboxes(&acme(), Some(SandboxState::Running), None)
            .unwrap()
            .0
            .is_empty()
    );
}

#[test]
fn rate_limits_and_outages_fail_over_to_the_next_candidate() {
    let fake = FakeE2b::start(KEY).unwrap();
    let f = Fixture::new(&fake, KEY);
    let host = f.host();
    for fault in [FakeFault::status(429), FakeFault::status(503)] {
        fake.inject(Route::Create, fault.clone(), 1);
        let st = create(&host, "e2b-then-stub").unwrap();
        assert_eq!(st.extension_id.as_deref(), Some("saas-stub"), "{fault:?}");
        assert_eq!(st.attempts.len(), 2, "{fault:?}: {:?}", st.attempts);
        let first = &st.attempts[0];
        assert_eq!(first.extension_id, "e2b");
        assert!(first.retryable, "{fault:?}: {first:?}");
        // The first try's hold was voided; exactly one hold (the serving try's) is open.
        let first_hold = first.hold_id.as_deref().unwrap();
        let open = host.ledger().open_holds().unwrap();
        assert!(open.iter().all(|h| h.id != first_hold));
        assert_eq!(open.iter().filter(|h| h.sandbox_id == st.id).count(), 1);
        host.app.destroy_sandbox(&acme(), &st.id).unwrap();
    }
    assert_eq!(fake.created_count(), 0);
    assert!(host.ledger().open_holds().unwrap().is_empty());
    // Faults spent: E2B serves again.
    let st = create(&host, "e2b-then-stub").unwrap();
    assert_eq!(st.extension_id.as_deref(), Some("e2b"));
    assert_eq!(st.attempts.len(), 1);
}

#[test]
fn a_vanished_sandbox_is_settled_from_the_recorded_lifetime() {
    let fake = FakeE2b::start(KEY).unwrap();
    let f = Fixture::new(&fake, KEY);
    let host = f.host();
    let st = create(&host, "e2b-only").unwrap();
    // E2B killed it on its own (timeout, crash): DELETE and GET now answer 404.
    assert!(fake.vanish(&e2b_id(st.handle.as_deref().unwrap())));
    std::thread::sleep(Duration::from_millis(300));
    let done = host.app.destroy_sandbox(&acme(), &st.id).unwrap();
    assert_eq!(done.state, SandboxState::Destroyed);
    assert_billed_for_lifetime(&done);
    assert!(done.meter.as_ref().unwrap().exact > Decimal::ZERO);
    assert_eq!(
        host.ledger()
            .hold_for_sandbox(&st.id)
            .unwrap()
            .unwrap()
            .state,
        HoldState::Posted
    );
}

#[test]
fn saas_and_self_hosted_instances_route_per_prefer_self_hosted() {
    let saas = FakeE2b::start(KEY).unwrap();
    let own = FakeE2b::start("e2b_own_cluster_key").unwrap();
    let f = Fixture::new(&saas, KEY);
    f.add_e2b(
        "e2b-own",
        &own,
        "e2b_own_cluster_key",
        "kind = \"self-hosted\"\nprice_vcpu_second = \"0.000002\"\nprice_gib_second = \"0\"\nmax_sandboxes = \"2\"\n",
    );
    let host = f.host();
    let a = create(&host, "burst-e2b").unwrap();
    let b = create(&host, "burst-e2b").unwrap();
    let c = create(&host, "burst-e2b").unwrap();
    let served: Vec<_> = [&a, &b, &c]
        .iter()
        .map(|s| s.extension_id.clone().unwrap())
        .collect();
    assert_eq!(
        served,
        ["e2b-own", "e2b-own", "e2b"],
        "own pool first, SaaS when full"
    );
    assert_eq!((own.created_count(), saas.created_count()), (2, 1));
    // The own cluster's price: 2 × 3600 × 0.000002.
    assert_eq!(a.estimate.as_ref().unwrap().total.amount, dec("0.0144"));
    // A slot frees: the next one goes back to the own cluster.
    host.app.destroy_sandbox(&acme(), &a.id).unwrap();
    let d = create(&host, "burst-e2b").unwrap();
    assert_eq!(d.extension_id.as_deref(), Some("e2b-own"));
}

#[test]
fn the_api_key_never_appears_in_cli_output_errors_or_logs() {
    let secret = "e2b_cli_secret_5d0e44";
    let wrong = "e2b_cli_wrong_secret_81fa2b";
    let fake = FakeE2b::start(secret).unwrap();
    // On a 401 the fake quotes the key it received, as a careless API might.
    fake.echo_key_in_errors(true);
    let f = Fixture::new(&fake, secret);
    f.add_e2b("e2b-bad", &fake, wrong, "");
    std::fs::write(
        f.dir.path().join("profiles/e2b-bad.toml"),
        E2B_ONLY
            .replace("\"e2b-only\"", "\"e2b-bad\"")
            .replace("explicit = \"e2b\"", "explicit = \"e2b-bad\""),
    )
    .unwrap();
    let mut seen = String::new();
    let mut run = |args: &[&str]| {
        let (ok, out, err) = f.cli(args);
        seen.push_str(&out);
        seen.push_str(&err);
        (ok, out, err)
    };
    let (ok, out, err) = run(&["credits", "add", "acme", "10"]);
    assert!(ok, "{out}{err}");
    for profile in ["e2b-only", "e2b-bad"] {
        let (ok, out, err) = run(&["route", "explain", "--profile", profile, "--tenant", "acme"]);
        assert!(ok, "{out}{err}");
        assert!(out.contains("e2b"), "{out}");
        let (ok, out, err) = run(&[
            "route",
            "explain",
            "--profile",
            profile,
            "--tenant",
            "acme",
            "--json",
        ]);
        assert!(ok, "{out}{err}");
    }
    let (ok, out, err) = run(&[
        "sandbox",
        "create",
        "--profile",
        "e2b-only",
        "--tenant",
        "acme",
        "--json",
    ]);
    assert!(ok, "{out}{err}");
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let (ok, out, err) = run(&["sandbox", "status", &id, "--json"]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = run(&["sandbox", "status", &id]);
    assert!(ok, "{out}{err}");
    // The wrong key is sent, quoted back by the fake, and scrubbed by the host.
    let (ok, out, err) = run(&[
        "sandbox",
        "create",
        "--profile",
        "e2b-bad",
        "--tenant",
        "acme",
    ]);
    assert!(!ok, "{out}{err}");
    assert!(
        err.contains("[redacted]") || out.contains("[redacted]"),
        "{out}{err}"
    );
    assert!(
        fake.requests().iter().any(|r| r.status == 401),
        "the wrong key reached the fake"
    );
    let (ok, out, err) = run(&["sandbox", "list", "--json"]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = run(&["sandbox", "destroy", &id, "--json"]);
    assert!(ok, "{out}{err}");
    assert!(seen.contains("DEBUG"), "debug logs were captured:\n{seen}");
    for key in [secret, wrong] {
        assert!(!seen.contains(key), "{key} leaked:\n{seen}");
    }
    assert!(fake.requests().iter().any(|r| r.authorized));
}
