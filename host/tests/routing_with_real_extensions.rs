//! Routing over real components: the saas-stub loaded under several ids with different
//! sidecar configurations, the misbehave guest as the looping / failing candidate, and the
//! real `sandboxer route explain` binary. Build the components first
//! (`scripts/build-extensions.sh`, or `make test`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sandboxer_host::domain::{
    DropReason, HealthStatus, Outcome, RouteDecision, RouteError, SandboxSpec,
};
use sandboxer_host::layers::routing::{
    HealthConfig, HealthTracker, LoadedExtensions, ManualClock, Profile, load_profile_file,
    resolve_extension,
};
use sandboxer_host::layers::runtime::{Runtime, RuntimeConfig};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn component(rel: &str) -> PathBuf {
    let path = repo().join(rel);
    assert!(
        path.is_file(),
        "{} is missing: run `scripts/build-extensions.sh` (or `make test`) first",
        path.display()
    );
    path
}

/// A temp extensions folder holding saas-stub.wasm and misbehave.wasm plus sidecars.
struct Fixture {
    dir: tempfile::TempDir,
    runtime: Runtime,
}

const SIDECARS: &[(&str, &str)] = &[
    (
        "pool",
        r#"component = "saas-stub.wasm"
kind = "self-hosted"
[config]
kind = "self-hosted"
capacity = "2"
price_vcpu_second = "0.000002"
price_gib_second = "0.0000005"
startup_latency_ms = "20"
"#,
    ),
    (
        "saas",
        r#"component = "saas-stub.wasm"
[config]
startup_latency_ms = "150"
"#,
    ),
    (
        "cheap-saas",
        r#"component = "saas-stub.wasm"
[config]
price_vcpu_second = "0.000001"
price_gib_second = "0.0000001"
startup_latency_ms = "400"
"#,
    ),
    (
        "premium",
        r#"component = "saas-stub.wasm"
[config]
price_vcpu_second = "0.00005"
price_gib_second = "0.00001"
startup_latency_ms = "5"
"#,
    ),
    ("twin-a", "component = \"saas-stub.wasm\"\n"),
    ("twin-b", "component = \"saas-stub.wasm\"\n"),
    (
        "looper",
        r#"component = "misbehave.wasm"
call_timeout_ms = 50
[config]
mode = "loop"
"#,
    ),
    ("flaky", FLAKY_BROKEN),
];

const FLAKY_BROKEN: &str =
    "component = \"misbehave.wasm\"\n[config]\nmode = \"fail-unavailable\"\n";
const FLAKY_FIXED: &str = "component = \"misbehave.wasm\"\n[config]\nmode = \"ok\"\n";

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ext = dir.path().join("extensions");
        std::fs::create_dir_all(&ext).unwrap();
        std::fs::copy(
            component("extensions/saas-stub.wasm"),
            ext.join("saas-stub.wasm"),
        )
        .unwrap();
        std::fs::copy(
            component("tests/guests/misbehave.wasm"),
            ext.join("misbehave.wasm"),
        )
        .unwrap();
        for (id, text) in SIDECARS {
            std::fs::write(ext.join(format!("{id}.toml")), text).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("profiles")).unwrap();
        let runtime =
            Runtime::new(RuntimeConfig::with_cache_dir(dir.path().join("cache"))).unwrap();
        Self { dir, runtime }
    }

    fn extensions_dir(&self) -> PathBuf {
        self.dir.path().join("extensions")
    }

    fn load(&self) -> LoadedExtensions {
        let report = self.runtime.load_dir(&self.extensions_dir()).unwrap();
        assert!(report.skipped.is_empty(), "{:?}", report.skipped);
        LoadedExtensions::new(report.loaded)
    }

    /// Writes `profiles/<id>.toml` (2 vCPU, 2 GiB, 1 h) with this `[route]` body.
    fn profile(&self, id: &str, route: &str) -> Profile {
        let file = self.dir.path().join("profiles").join(format!("{id}.toml"));
        let text = format!(
            "template = \"base\"\nmax_duration_secs = 3600\n[resources]\nvcpus = 2\nmemory_mib = 2048\n[route]\n{route}\n"
        );
        std::fs::write(&file, text).unwrap();
        load_profile_file(&file).unwrap()
    }
}

fn route(
    p: &Profile,
    view: &LoadedExtensions,
    health: &HealthTracker,
) -> Result<RouteDecision, RouteError> {
    let req = p
        .request("acme", "sb-test", &SandboxSpec::default())
        .unwrap();
    resolve_extension(p, &req, view, health)
}

fn order(d: &RouteDecision) -> Vec<&str> {
    d.attempts.iter().map(|a| a.extension_id.as_str()).collect()
}

fn outcome<'a>(candidates: &'a [sandboxer_host::domain::CandidateReport], id: &str) -> &'a Outcome {
    &candidates
        .iter()
        .find(|c| c.extension_id == id)
        .unwrap_or_else(|| panic!("no candidate {id}"))
        .outcome
}

/// What the manager will do with a decision: try the attempts in order, feeding health.
/// Returns the extension that created the sandbox.
fn create_like_the_manager(
    p: &Profile,
    d: &RouteDecision,
    view: &LoadedExtensions,
    health: &HealthTracker,
) -> Option<String> {
    let req = p
        .request("acme", "sb-test", &SandboxSpec::default())
        .unwrap();
    for attempt in &d.attempts {
        if !health.acquire(&attempt.extension_id) {
            continue;
        }
        let ext = view.get(&attempt.extension_id).unwrap();
        let started = Instant::now();
        match ext.create(&req) {
            Ok(_) => {
                health.record_success(&attempt.extension_id, started.elapsed());
                return Some(attempt.extension_id.clone());
            }
            Err(e) => {
                health.record_failure(&attempt.extension_id, &e);
                if !e.is_retryable() {
                    return None;
                }
            }
        }
    }
    None
}

#[test]
fn each_strategy_picks_what_its_rule_says() {
    let fx = Fixture::new();
    let view = fx.load();
    let health = HealthTracker::default();
    let four = "candidates = [\"saas\", \"premium\", \"cheap-saas\", \"pool\"]\nmax_attempts = 4";

    let d = route(
        &fx.profile("cost", &format!("strategy = \"lowest-cost\"\n{four}")),
        &view,
        &health,
    )
    .unwrap();
    assert_eq!(order(&d), ["cheap-saas", "pool", "saas", "premium"]);
    // The estimates are the component's real prices: 2 vCPU × 3600 s × 0.000002 +
    // 2 GiB × 3600 s × 0.0000005 for the pool.
    let pool = d
        .attempts
        .iter()
        .find(|a| a.extension_id == "pool")
        .unwrap();
    assert_eq!(pool.estimate.total.amount.normalize().to_string(), "0.018");
    assert_eq!(pool.cost_per_hour.amount.to_string(), "0.018");

    let d = route(
        &fx.profile(
            "burst",
            &format!("strategy = \"prefer-self-hosted\"\n{four}"),
        ),
        &view,
        &health,
    )
    .unwrap();
    assert_eq!(order(&d), ["pool", "cheap-saas", "saas", "premium"]);

    let d = route(
        &fx.profile("fast", &format!("strategy = \"lowest-latency\"\n{four}")),
        &view,
        &health,
    )
    .unwrap();
    assert_eq!(order(&d), ["premium", "pool", "saas", "cheap-saas"]);

    let p = fx.profile("only", "strategy = \"explicit\"\nexplicit = \"saas\"");
    let d = route(&p, &view, &health).unwrap();
    assert_eq!(order(&d), ["saas"]);
    assert_eq!(
        d.candidates.len(),
        1,
        "explicit without fallbacks considers nobody else"
    );

    // Observed latency replaces the declared one once creates have been measured.
    health.record_success("premium", Duration::from_millis(900));
    let d = route(
        &fx.profile("fast2", &format!("strategy = \"lowest-latency\"\n{four}")),
        &view,
        &health,
    )
    .unwrap();
    assert_eq!(order(&d), ["pool", "saas", "cheap-saas", "premium"]);
}

#[test]
fn burst_goes_to_the_pool_until_it_is_full_then_to_saas() {
    let fx = Fixture::new();
    let mut view = fx.load();
    let health = HealthTracker::default();
    let p = fx.profile(
        "burst",
        "strategy = \"prefer-self-hosted\"\ncandidates = [\"pool\", \"saas\"]\nmax_attempts = 2",
    );
    let mut placed = Vec::new();
    let mut pool_in_use = 0;
    for _ in 0..3 {
        let d = route(&p, &view, &health).unwrap();
        let id = create_like_the_manager(&p, &d, &view, &health).unwrap();
        if id == "pool" {
            pool_in_use += 1;
            view.set_in_use("pool", pool_in_use);
        }
        placed.push(id);
    }
    assert_eq!(placed, ["pool", "pool", "saas"]);
    let d = route(&p, &view, &health).unwrap();
    assert_eq!(
        outcome(&d.candidates, "pool"),
        &Outcome::Dropped {
            reason: DropReason::NoCapacity { in_use: 2, max: 2 }
        }
    );
    // One pool sandbox destroyed: the pool is first again.
    view.set_in_use("pool", 1);
    assert_eq!(order(&route(&p, &view, &health).unwrap()), ["pool", "saas"]);
}

#[test]
fn the_price_cap_drops_an_expensive_candidate_with_the_reason() {
    let fx = Fixture::new();
    let view = fx.load();
    let health = HealthTracker::default();
    let p = fx.profile(
        "capped",
        "strategy = \"lowest-latency\"\ncandidates = [\"premium\", \"saas\"]\nmax_cost_per_hour = \"0.20\"",
    );
    let d = route(&p, &view, &health).unwrap();
    assert_eq!(order(&d), ["saas"]);
    let reason = outcome(&d.candidates, "premium").to_string();
    assert_eq!(
        reason,
        "dropped: over the price cap: 0.432 USD/h > max_cost_per_hour 0.2 USD"
    );
    // The dropped candidate still shows its estimate in the report.
    let premium = d
        .candidates
        .iter()
        .find(|c| c.extension_id == "premium")
        .unwrap();
    assert_eq!(
        premium
            .estimate
            .as_ref()
            .unwrap()
            .amount
            .normalize()
            .to_string(),
        "0.432"
    );
}

#[test]
fn a_looping_extension_is_dropped_and_its_circuit_opens() {
    let fx = Fixture::new();
    let view = fx.load();
    let clock = Arc::new(ManualClock::new());
    let health = HealthTracker::with_clock(HealthConfig::default(), clock.clone());
    let p = fx.profile(
        "loopy",
        "strategy = \"lowest-cost\"\ncandidates = [\"looper\", \"saas\"]",
    );
    for i in 1..=3 {
        let d = route(&p, &view, &health).unwrap();
        assert_eq!(order(&d), ["saas"]);
        let reason = outcome(&d.candidates, "looper").to_string();
        assert!(
            reason.contains(
                "estimate failed: estimate-cost: interrupted after its 50 ms time budget"
            ),
            "{reason}"
        );
        if i < 3 {
            assert_eq!(
                health.status("looper"),
                HealthStatus::Closed {
                    consecutive_failures: i
                }
            );
        }
    }
    assert!(matches!(
        health.status("looper"),
        HealthStatus::Open {
            retry_in_ms: 30_000,
            ..
        }
    ));
    // Open: the router no longer calls it (no estimate), it says why.
    let d = route(&p, &view, &health).unwrap();
    let looper = d
        .candidates
        .iter()
        .find(|c| c.extension_id == "looper")
        .unwrap();
    assert!(
        matches!(
            looper.outcome,
            Outcome::Dropped {
                reason: DropReason::CircuitOpen { .. }
            }
        ),
        "{looper:?}"
    );
    assert!(looper.estimate.is_none());
    assert_eq!(order(&d), ["saas"]);
}

#[test]
fn a_failing_extension_opens_then_a_trial_closes_its_circuit() {
    let fx = Fixture::new();
    let view = fx.load();
    let clock = Arc::new(ManualClock::new());
    let health = HealthTracker::with_clock(HealthConfig::default(), clock.clone());
    let p = fx.profile(
        "flaky",
        "strategy = \"lowest-cost\"\ncandidates = [\"flaky\", \"saas\"]",
    );

    // Flaky is the cheapest, its create fails `unavailable`: the manager fails over to saas.
    for _ in 0..3 {
        let d = route(&p, &view, &health).unwrap();
        assert_eq!(order(&d), ["flaky", "saas"]);
        assert_eq!(
            create_like_the_manager(&p, &d, &view, &health).as_deref(),
            Some("saas")
        );
    }
    assert!(matches!(
        health.status("flaky"),
        HealthStatus::Open {
            retry_in_ms: 30_000,
            ..
        }
    ));
    let d = route(&p, &view, &health).unwrap();
    assert_eq!(order(&d), ["saas"]);

    // After the cool-down one trial goes through; it fails: open again, twice as long.
    clock.advance(Duration::from_secs(30));
    let d = route(&p, &view, &health).unwrap();
    assert_eq!(order(&d), ["flaky", "saas"]);
    assert_eq!(
        create_like_the_manager(&p, &d, &view, &health).as_deref(),
        Some("saas")
    );
    assert!(matches!(
        health.status("flaky"),
        HealthStatus::Open {
            retry_in_ms: 60_000,
            ..
        }
    ));

    // The backend recovers (its configuration is fixed and the folder reloaded).
    std::fs::write(fx.extensions_dir().join("flaky.toml"), FLAKY_FIXED).unwrap();
    let view = fx.load();
    clock.advance(Duration::from_secs(59));
    assert_eq!(
        order(&route(&p, &view, &health).unwrap()),
        ["saas"],
        "still cooling down"
    );
    clock.advance(Duration::from_secs(1));
    let d = route(&p, &view, &health).unwrap();
    assert_eq!(
        create_like_the_manager(&p, &d, &view, &health).as_deref(),
        Some("flaky")
    );
    assert_eq!(
        health.status("flaky"),
        HealthStatus::Closed {
            consecutive_failures: 0
        }
    );
}

#[test]
fn explicit_to_a_missing_extension_is_a_clear_error() {
    let fx = Fixture::new();
    let view = fx.load();
    let health = HealthTracker::default();
    let err = route(
        &fx.profile("ghostly", "strategy = \"explicit\"\nexplicit = \"ghost\""),
        &view,
        &health,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "profile \"ghostly\" routes explicitly to \"ghost\", which cannot serve: not loaded (no extension has \
         this id) (no fallbacks listed)"
    );
    // Listing a fallback makes it serve instead.
    let p = fx.profile(
        "ghostly2",
        "strategy = \"explicit\"\nexplicit = \"ghost\"\ncandidates = [\"saas\"]",
    );
    assert_eq!(order(&route(&p, &view, &health).unwrap()), ["saas"]);
}

#[test]
fn ties_are_ordered_deterministically() {
    let fx = Fixture::new();
    let view = fx.load();
    let health = HealthTracker::default();
    let p = fx.profile(
        "twins",
        "strategy = \"lowest-cost\"\ncandidates = [\"twin-b\", \"saas\", \"twin-a\"]",
    );
    for _ in 0..5 {
        let d = route(&p, &view, &health).unwrap();
        // Same price and declared latency for all three: by id.
        assert_eq!(order(&d), ["saas", "twin-a", "twin-b"]);
    }
}

/// The fixture profiles (burst-sandbox over local-pool and saas-stub; the shipped
/// saas-stub) and the local-pool fixture sidecar, in a temp folder.
fn shipped_folders() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let ext = dir.path().join("extensions");
    std::fs::create_dir_all(&ext).unwrap();
    let prof = dir.path().join("profiles");
    std::fs::create_dir_all(&prof).unwrap();
    for f in [
        "tests/fixtures/profiles/burst-sandbox.toml",
        "profiles/saas-stub.toml",
    ] {
        let from = repo().join(f);
        std::fs::copy(&from, prof.join(from.file_name().unwrap())).unwrap();
    }
    std::fs::copy(
        component("extensions/saas-stub.wasm"),
        ext.join("saas-stub.wasm"),
    )
    .unwrap();
    std::fs::copy(
        repo().join("tests/fixtures/extensions/local-pool.toml"),
        ext.join("local-pool.toml"),
    )
    .unwrap();
    dir
}

fn sandboxer(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sandboxer"))
        .args(args)
        .arg("--extensions-dir")
        .arg(dir.join("extensions"))
        .arg("--profiles-dir")
        .arg(dir.join("profiles"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .env("COLUMNS", "120")
        .output()
        .unwrap()
}

#[test]
fn route_explain_prints_every_candidate_and_creates_nothing() {
    let dir = shipped_folders();
    let out = sandboxer(
        dir.path(),
        &["route", "explain", "--profile", "burst-sandbox"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "Profile burst-sandbox (prefer-self-hosted)",
        "Request: 2 vCPU, 2048 MiB, up to 3600 s",
        "local-pool",
        "self-hosted",
        "0/2 in use",
        "chosen",
        "fallback #2",
        "Order: self-hosted pools with free capacity first",
        "Would try: local-pool → saas-stub.",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }

    let out = sandboxer(
        dir.path(),
        &[
            "route",
            "explain",
            "--profile",
            "burst-sandbox",
            "--vcpus",
            "4",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["request"]["resources"]["vcpus"], 4);
    assert_eq!(
        json["decision"]["attempts"][0]["extension_id"],
        "local-pool"
    );
    assert_eq!(
        json["decision"]["candidates"][1]["extension_id"],
        "saas-stub"
    );
    assert_eq!(json["decision"]["candidates"][1]["outcome"], "ordered");
    // 4 vCPU × 3600 s × 0.000002 + 2 GiB × 3600 s × 0.0000005
    assert_eq!(
        json["decision"]["attempts"][0]["estimate"]["total"]["amount"],
        "0.0324"
    );

    // Nothing created, nothing held: explain opens the same host as real routing (so it
    // sees the pool's real in-use count), but no sandbox, hold or event results.
    let state = dir.path().join("state");
    assert!(!state.join("events.jsonl").exists());
    let list = sandboxer(dir.path(), &["sandbox", "list", "--json"]);
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&list.stdout).unwrap(),
        serde_json::json!([])
    );
    let verify = sandboxer(dir.path(), &["credits", "verify", "--json"]);
    let verify: serde_json::Value = serde_json::from_slice(&verify.stdout).unwrap();
    assert_eq!(verify["transfers"], 0);
    assert_eq!(verify["open_holds"], 0);
}

#[test]
fn route_explain_refuses_bad_input_clearly() {
    let dir = shipped_folders();
    let out = sandboxer(
        dir.path(),
        &[
            "route",
            "explain",
            "--profile",
            "burst-sandbox",
            "--vcpus",
            "0",
        ],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("profile \"burst-sandbox\": vcpus 0 is out of range"),
        "{stderr}"
    );

    let out = sandboxer(dir.path(), &["route", "explain", "--profile", "nope"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no profile \"nope\"") && stderr.contains("burst-sandbox, saas-stub"),
        "{stderr}"
    );

    // Without the pool, burst-sandbox still routes (to SaaS) and says why the pool is out.
    std::fs::remove_file(dir.path().join("extensions/local-pool.toml")).unwrap();
    let out = sandboxer(
        dir.path(),
        &["route", "explain", "--profile", "burst-sandbox"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("  local-pool dropped: not loaded (no extension has this id)"),
        "{stdout}"
    );
    assert!(stdout.contains("Would try: saas-stub."), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("candidate \"local-pool\" is not provided by any loaded extension"),
        "{stderr}"
    );
}
