//! Unit tests of the ordering logic over a small in-memory view. The integration tests
//! in `tests/routing_*.rs` run the same code over real components.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rust_decimal::Decimal;

use super::health::{HealthConfig, ManualClock};
use super::profile::parse_profile;
use super::*;
use crate::domain::{
    BackendError, Capability, Capacity, Cost, Currency, DropReason, ExtensionError, ExtensionInfo,
    Fault, Function, HealthStatus, Kind, LatencySource, Money, Outcome, RouteDecision, RouteError,
    SandboxRequest, SandboxSpec,
};

struct Fake {
    kind: Kind,
    /// Price per vCPU-hour; `None` = estimate fails with `unavailable`.
    price: Option<Decimal>,
    capacity: Option<u32>,
    in_use: u32,
    regions: Vec<String>,
    latency_ms: u32,
    /// Whose key it would use for tenant `t` (`byok` not `never`).
    key: crate::domain::KeyUse,
    info: ExtensionInfo,
}

#[derive(Default)]
struct View(HashMap<String, Fake>);

impl View {
    fn add(
        mut self,
        id: &str,
        kind: Kind,
        price: Option<&str>,
        capacity: Option<u32>,
        latency_ms: u32,
    ) -> Self {
        let info = ExtensionInfo {
            id: id.into(),
            name: id.into(),
            version: "0".into(),
            kind,
            currency: Currency::new("USD").unwrap(),
            regions: vec![],
            startup_latency_ms: latency_ms,
            capabilities: if capacity.is_some() {
                vec![Capability::Capacity]
            } else {
                vec![]
            },
        };
        let price = price.map(|p| p.parse().unwrap());
        self.0.insert(
            id.into(),
            Fake {
                kind,
                price,
                capacity,
                in_use: 0,
                regions: vec![],
                latency_ms,
                key: crate::domain::KeyUse::None,
                info,
            },
        );
        self
    }
    fn set(mut self, id: &str, f: impl FnOnce(&mut Fake)) -> Self {
        let fake = self.0.get_mut(id).unwrap();
        f(fake);
        fake.info.regions = fake.regions.clone();
        fake.info.kind = fake.kind;
        fake.info.startup_latency_ms = fake.latency_ms;
        self
    }
}

impl ExtensionView for View {
    fn extension_ids(&self) -> Vec<String> {
        let mut ids: Vec<_> = self.0.keys().cloned().collect();
        ids.sort();
        ids
    }
    fn info(&self, id: &str) -> Option<&ExtensionInfo> {
        self.0.get(id).map(|f| &f.info)
    }
    fn estimate_cost(&self, id: &str, req: &SandboxRequest) -> Result<Cost, ExtensionError> {
        let f = &self.0[id];
        let Some(price) = f.price else {
            return Err(ExtensionError {
                extension: id.into(),
                function: Function::EstimateCost,
                fault: Fault::Backend(BackendError::Unavailable("down".into())),
            });
        };
        let amount =
            price * Decimal::from(req.resources.vcpus) * Decimal::from(req.max_duration_secs)
                / Decimal::from(3600);
        Ok(Cost {
            total: Money {
                amount,
                currency: Currency::new("USD").unwrap(),
            },
            line_items: vec![],
        })
    }
    fn capacity(&self, id: &str) -> Result<Capacity, ExtensionError> {
        Ok(Capacity {
            max_sandboxes: self.0[id].capacity,
        })
    }
    fn in_use(&self, id: &str) -> u32 {
        self.0[id].in_use
    }
    fn keys(&self, id: &str, req: &SandboxRequest) -> super::view::KeyView {
        use crate::domain::KeyUse;
        let key = match (self.0[id].key, req.key_tenant()) {
            (KeyUse::Tenant, None) => KeyUse::Operator,
            (k, _) => k,
        };
        super::view::KeyView {
            key,
            takes_keys: self.0[id].key != KeyUse::None,
            error: None,
        }
    }
}

fn profile(route: &str) -> Profile {
    let text = format!(
        "template = \"base\"\nmax_duration_secs = 7200\n[resources]\nvcpus = 1\nmemory_mib = 512\n[route]\n{route}\n"
    );
    parse_profile(&text, Path::new("p.toml")).unwrap()
}

fn route(p: &Profile, view: &View, health: &HealthTracker) -> Result<RouteDecision, RouteError> {
    let req = p.request("t", "sb", &SandboxSpec::default()).unwrap();
    resolve_extension(p, &req, view, health)
}

fn order(d: &RouteDecision) -> Vec<&str> {
    d.attempts.iter().map(|a| a.extension_id.as_str()).collect()
}

fn three() -> View {
    View::default()
        .add("pool", Kind::SelfHosted, Some("0.2"), Some(2), 20)
        .add("cheap-saas", Kind::Saas, Some("0.1"), None, 300)
        .add("fast-saas", Kind::Saas, Some("0.5"), None, 50)
}

#[test]
fn each_strategy_orders_by_its_rule() {
    let h = HealthTracker::default();
    let v = three();
    let cases: [(&str, [&str; 3]); 3] = [
        ("prefer-self-hosted", ["pool", "cheap-saas", "fast-saas"]),
        ("lowest-cost", ["cheap-saas", "pool", "fast-saas"]),
        ("lowest-latency", ["pool", "fast-saas", "cheap-saas"]),
    ];
    for (strategy, expected) in cases {
        let spec = format!("strategy = \"{strategy}\"\nmax_attempts = 3");
        let d = route(&profile(&spec), &v, &h).unwrap();
        assert_eq!(order(&d), expected, "{strategy}");
    }
    let d = route(
        &profile("strategy = \"explicit\"\nexplicit = \"fast-saas\"\ncandidates = [\"pool\"]"),
        &v,
        &h,
    )
    .unwrap();
    assert_eq!(order(&d), ["fast-saas", "pool"]);
}

#[test]
fn full_pool_is_dropped_and_saas_takes_over() {
    let h = HealthTracker::default();
    let v = three().set("pool", |f| f.in_use = 2);
    let d = route(&profile("strategy = \"prefer-self-hosted\""), &v, &h).unwrap();
    assert_eq!(order(&d)[0], "cheap-saas");
    let pool = d
        .candidates
        .iter()
        .find(|c| c.extension_id == "pool")
        .unwrap();
    assert_eq!(
        pool.outcome,
        Outcome::Dropped {
            reason: DropReason::NoCapacity { in_use: 2, max: 2 }
        }
    );
}

#[test]
fn observed_latency_replaces_declared() {
    let clock = Arc::new(ManualClock::new());
    let h = HealthTracker::with_clock(HealthConfig::default(), clock);
    h.record_success("pool", Duration::from_millis(900));
    let d = route(
        &profile("strategy = \"lowest-latency\"\nmax_attempts = 3"),
        &three(),
        &h,
    )
    .unwrap();
    assert_eq!(order(&d), ["fast-saas", "cheap-saas", "pool"]);
    let pool = d
        .candidates
        .iter()
        .find(|c| c.extension_id == "pool")
        .unwrap();
    assert_eq!(
        pool.latency.unwrap().source,
        LatencySource::Observed { samples: 1 }
    );
}

#[test]
fn ties_are_broken_deterministically() {
    let h = HealthTracker::default();
    let v = View::default()
        .add("b", Kind::Saas, Some("0.1"), None, 100)
        .add("a", Kind::Saas, Some("0.1"), None, 100)
        .add("c", Kind::Saas, Some("0.1"), None, 50);
    for _ in 0..5 {
        let d = route(
            &profile("strategy = \"lowest-cost\"\nmax_attempts = 3"),
            &v,
            &h,
        )
        .unwrap();
        assert_eq!(order(&d), ["c", "a", "b"]);
    }
}

#[test]
fn price_cap_region_failures_and_missing_are_dropped_with_reasons() {
    let h = HealthTracker::default();
    let v = three()
        .set("fast-saas", |f| f.regions = vec!["us-east".into()])
        .add("broken", Kind::Saas, None, None, 10);
    let mut p = profile(
        "strategy = \"lowest-cost\"\ncandidates = [\"pool\", \"cheap-saas\", \"fast-saas\", \"broken\", \"ghost\"]\nmax_cost_per_hour = \"0.15\"",
    );
    p.regions = vec!["eu-west".into()];
    let d = route(&p, &v, &h).unwrap();
    assert_eq!(order(&d), ["cheap-saas"]);
    let reason = |id: &str| {
        d.candidates
            .iter()
            .find(|c| c.extension_id == id)
            .unwrap()
            .outcome
            .to_string()
    };
    for (id, why) in [
        (
            "pool",
            "over the price cap: 0.2 USD/h > max_cost_per_hour 0.15 USD",
        ),
        ("fast-saas", "serves us-east only"),
        ("broken", "estimate failed"),
        ("ghost", "not loaded"),
    ] {
        assert!(reason(id).contains(why), "{id}: {}", reason(id));
    }
    // The failed estimate counted against health.
    assert_eq!(
        h.status("broken"),
        HealthStatus::Closed {
            consecutive_failures: 1
        }
    );
}

#[test]
fn fallback_off_and_max_attempts_limit_attempts() {
    let h = HealthTracker::default();
    let d = route(
        &profile("strategy = \"lowest-cost\"\nfallback = false"),
        &three(),
        &h,
    )
    .unwrap();
    assert_eq!(order(&d), ["cheap-saas"]);
    assert_eq!(
        d.candidates[1].outcome,
        Outcome::Ordered {
            rank: 2,
            attempted: false
        }
    );
    let d = route(
        &profile("strategy = \"lowest-cost\"\nmax_attempts = 2"),
        &three(),
        &h,
    )
    .unwrap();
    assert_eq!(order(&d), ["cheap-saas", "pool"]);
}

#[test]
fn explicit_to_a_missing_extension_is_a_clear_error() {
    let h = HealthTracker::default();
    let err = route(
        &profile("strategy = \"explicit\"\nexplicit = \"nope\""),
        &three(),
        &h,
    )
    .unwrap_err();
    assert!(matches!(err, RouteError::ExplicitUnavailable { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("\"nope\"") && msg.contains("not loaded"),
        "{msg}"
    );
    // With listed fallbacks that cannot serve either, the general error lists them all.
    let err = route(
        &profile("strategy = \"explicit\"\nexplicit = \"nope\"\ncandidates = [\"ghost\"]"),
        &three(),
        &h,
    )
    .unwrap_err();
    assert!(matches!(err, RouteError::NoCandidate { .. }), "{err}");
    assert!(
        err.to_string().contains("nope dropped: not loaded")
            && err.to_string().contains("ghost dropped")
    );
    // With a listed fallback the fallback serves.
    let d = route(
        &profile("strategy = \"explicit\"\nexplicit = \"nope\"\ncandidates = [\"pool\"]"),
        &three(),
        &h,
    )
    .unwrap();
    assert_eq!(order(&d), ["pool"]);
}

#[test]
fn open_circuit_drops_then_half_open_admits() {
    let clock = Arc::new(ManualClock::new());
    let h = HealthTracker::with_clock(HealthConfig::default(), clock.clone());
    let e = ExtensionError {
        extension: "cheap-saas".into(),
        function: Function::Create,
        fault: Fault::Timeout { budget_ms: 1000 },
    };
    for _ in 0..3 {
        h.record_failure("cheap-saas", &e);
    }
    let p = profile("strategy = \"lowest-cost\"");
    let d = route(&p, &three(), &h).unwrap();
    assert_eq!(order(&d)[0], "pool");
    clock.advance(Duration::from_secs(30));
    let d = route(&p, &three(), &h).unwrap();
    assert_eq!(order(&d)[0], "cheap-saas");
    assert!(h.acquire("cheap-saas"));
    let d = route(&p, &three(), &h).unwrap();
    assert_eq!(
        order(&d)[0],
        "pool",
        "the trial is out: nobody else routes there"
    );
}

#[test]
fn no_candidate_lists_every_reason() {
    let h = HealthTracker::default();
    let err = route(
        &profile("strategy = \"lowest-cost\"\nmax_cost_per_hour = \"0.01\""),
        &three(),
        &h,
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("no extension can serve"), "{msg}");
    assert_eq!(err.candidates().len(), 3);
}

#[test]
fn a_profile_requiring_exec_drops_backends_without_it_and_says_why() {
    let text = "template = \"base\"\nmax_duration_secs = 600\nrequires = [\"exec\", \"files\"]\n[resources]\nvcpus = 1\nmemory_mib = 512\n[route]\nstrategy = \"lowest-cost\"\n";
    let p = parse_profile(text, Path::new("p.toml")).unwrap();
    assert_eq!(p.requires, vec![Capability::Exec, Capability::Files]);
    let view = View::default()
        .add("runs-code", Kind::Saas, Some("0.3"), None, 10)
        .add("cheap-stub", Kind::Saas, Some("0.1"), None, 10)
        .set("runs-code", |f| {
            f.info.capabilities = vec![Capability::Exec, Capability::ExecStream, Capability::Files];
        });
    let health = HealthTracker::new(HealthConfig::default());
    let d = route(&p, &view, &health).unwrap();
    assert_eq!(order(&d), ["runs-code"]);
    let dropped = d
        .candidates
        .iter()
        .find(|c| c.extension_id == "cheap-stub")
        .unwrap();
    match &dropped.outcome {
        Outcome::Dropped {
            reason: reason @ DropReason::MissingCapability { missing },
        } => {
            assert_eq!(missing, &[Capability::Exec, Capability::Files]);
            let text = reason.to_string();
            assert!(text.contains("requires exec, files"), "{text}");
        }
        other => panic!("expected a missing-capability drop, got {other:?}"),
    }
    // An unknown capability is refused with the key named.
    let bad = text.replace("\"files\"", "\"teleport\"");
    let e = parse_profile(&bad, Path::new("p.toml")).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("requires"), "{e}");
}

#[test]
fn byok_prefer_ranks_own_keys_first_require_drops_the_rest_never_ignores_them() {
    use crate::domain::{ByokMode, KeyUse};
    let view = three()
        .set("fast-saas", |f| f.key = KeyUse::Tenant)
        .set("cheap-saas", |f| f.key = KeyUse::Operator);
    let health = HealthTracker::default();
    let p = profile("strategy = \"prefer-self-hosted\"\ncandidates = [\"*\"]");
    let routed = |byok: Option<ByokMode>| {
        let spec = SandboxSpec {
            byok,
            ..SandboxSpec::default()
        };
        let req = p.request("t", "sb", &spec).unwrap();
        resolve_extension(&p, &req, &view, &health)
    };
    // prefer (the default): the candidate with the tenant's key first, then the strategy.
    let d = routed(None).unwrap();
    assert_eq!(order(&d), ["fast-saas", "pool", "cheap-saas"]);
    let keys: Vec<_> = d.candidates.iter().map(|c| c.key).collect();
    assert_eq!(
        keys,
        [
            Some(KeyUse::Tenant),
            Some(KeyUse::None),
            Some(KeyUse::Operator)
        ]
    );
    // never: the strategy's order, the operator's key everywhere.
    let d = routed(Some(ByokMode::Never)).unwrap();
    assert_eq!(order(&d), ["pool", "cheap-saas", "fast-saas"]);
    assert!(d.candidates.iter().all(|c| c.key != Some(KeyUse::Tenant)));
    // require: only the one with the key.
    let d = routed(Some(ByokMode::Require)).unwrap();
    assert_eq!(order(&d), ["fast-saas"]);
    // require with no key anywhere: its own error naming the extensions that take keys.
    let none = three().set("cheap-saas", |f| f.key = KeyUse::Operator);
    let req = p
        .request(
            "t",
            "sb",
            &SandboxSpec {
                byok: Some(ByokMode::Require),
                ..SandboxSpec::default()
            },
        )
        .unwrap();
    match resolve_extension(&p, &req, &none, &health) {
        Err(RouteError::OwnKeyRequired { extensions, .. }) => {
            assert_eq!(extensions, ["cheap-saas"]);
        }
        other => panic!("{other:?}"),
    }
    // A profile's byok is the default of its requests; a request's wins.
    let p = profile("strategy = \"lowest-cost\"\ncandidates = [\"*\"]\nbyok = \"never\"");
    let req = p.request("t", "sb", &SandboxSpec::default()).unwrap();
    assert_eq!(req.byok, ByokMode::Never);
    let spec = SandboxSpec {
        byok: Some(ByokMode::Require),
        ..SandboxSpec::default()
    };
    assert_eq!(p.request("t", "sb", &spec).unwrap().byok, ByokMode::Require);
    assert!(
        parse_profile(
            "template = \"b\"\nmax_duration_secs = 60\n[resources]\nvcpus = 1\nmemory_mib = 512\n[route]\nstrategy = \"lowest-cost\"\nbyok = \"always\"\n",
            Path::new("p.toml")
        )
        .is_err()
    );
}
